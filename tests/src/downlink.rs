//! Setup for the downlink tests (commands from the upstream broker to sensors): a real
//! mosquitto with mTLS, the uplink environment for the daemon, channel `lamps` (in domain
//! `dom` unless told otherwise) and client `lamp-1` connected to it; a CoAP Observe held by a
//! libcoap client; publishing a command until a sensor shows it arrived.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::mosquitto::{Mosquitto, free_port, publish};
use crate::pki::Pki;
use crate::uplink::env;
use crate::{Daemon, edgegw, json_cli};

/// Broker, PKI and gateway state in a scratch directory (removed last, on drop).
#[derive(Debug)]
pub struct Downlink {
    pub broker: Mosquitto,
    pub pki: Pki,
    /// The daemon's environment for the uplink (`EDGEGW_UPLINK_*`, and
    /// `EDGEGW_GATEWAY_DOMAIN_ID` when one was given).
    pub vars: Vec<(String, String)>,
    /// The id of channel `lamps`.
    pub channel_id: String,
    /// `lamp-1`'s secret.
    pub secret: String,
    pub dir: tempfile::TempDir,
}

impl Downlink {
    /// Channel `lamps` in domain `dom`.
    pub fn new() -> Self {
        Self::with_domains("dom", None)
    }

    /// Channel `lamps` with `domain_id = channel_domain` (may be empty), the gateway's
    /// `gateway.domain_id` set to `gateway_domain` when given.
    pub fn with_domains(channel_domain: &str, gateway_domain: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(&dir.path().join("pki"));
        let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
        let mut vars = env(dir.path(), &broker, &pki);
        if let Some(d) = gateway_domain {
            vars.push(("EDGEGW_GATEWAY_DOMAIN_ID".into(), d.into()));
        }
        let channel = json_cli(
            dir.path(),
            &vars,
            &["channel", "add", "lamps", "--domain", channel_domain],
        );
        let channel_id = channel["id"].as_str().expect("channel id").to_owned();
        let client = json_cli(dir.path(), &vars, &["client", "add", "lamp-1"]);
        let secret = client["secret"].as_str().expect("secret").to_owned();
        json_cli(dir.path(), &vars, &["connect", "lamp-1", "lamps"]);
        Self {
            broker,
            pki,
            vars,
            channel_id,
            secret,
            dir,
        }
    }

    /// The scratch directory (the daemon's working directory).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `edgegw --json <args>` with the uplink environment.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        json_cli(self.path(), &self.vars, args)
    }

    /// `edgegw [--config <config>] run` with the uplink environment, plain CoAP on a port of
    /// its own (returned) and `extra` settings; returns once the uplink is connected. Started
    /// under the pty fork lock, so a pty master of a parallel test is not inherited.
    pub fn run(&self, config: Option<&Path>, extra: &[(&str, &str)]) -> (Daemon, u16) {
        let port = free_port();
        let mut cmd = edgegw(self.path());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("run")
            .envs(self.vars.iter().cloned())
            .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{port}"))
            .envs(extra.iter().copied());
        let guard = crate::pty::FORK_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut daemon = Daemon::start(cmd);
        drop(guard);
        daemon.wait_for_log("uplink connected", Duration::from_secs(30));
        (daemon, port)
    }

    /// Publishes `payload` on `topic` (as the broker's other client) until `arrived(wait)`
    /// says a sensor got it, waiting `wait` each round: the uplink subscribes asynchronously.
    /// Whether it arrived within `timeout`.
    pub fn command_until(
        &self,
        topic: &str,
        payload: &str,
        timeout: Duration,
        mut arrived: impl FnMut(Duration) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            publish(&self.broker, &self.pki, topic, payload);
            if arrived(Duration::from_millis(500)) {
                return true;
            }
        }
        false
    }

    /// One command on `topic`, published once.
    pub fn command(&self, topic: &str, payload: &str) {
        publish(&self.broker, &self.pki, topic, payload);
    }
}

impl Default for Downlink {
    fn default() -> Self {
        Self::new()
    }
}

/// A CoAP Observe registration held by a libcoap client (`-s 60 -w`): its output lines are
/// the notifications' payloads. Killed on drop.
#[derive(Debug)]
pub struct Observer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl Observer {
    /// `client` (`coap-client-notls`, `coap-client-openssl`, …) with `args` before `url`.
    pub fn start(client: &str, args: &[&str], url: &str) -> Self {
        let mut child = Command::new(client)
            .args(["-B", "60", "-s", "60", "-w", "-m", "get"])
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{client} (apt-get install libcoap3-bin): {e}"));
        let out = child.stdout.take().expect("invariant: piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads notifications for up to `wait` (less once `payload` shows up); whether a
    /// notification with exactly `payload` was seen, now or before.
    pub fn saw(&mut self, payload: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.seen.iter().any(|l| l == payload) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return false,
            }
        }
    }

    /// Whether the client process has exited (libcoap's client exits when its observation
    /// is ended with an error response).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
