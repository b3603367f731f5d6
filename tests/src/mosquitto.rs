//! A real mosquitto for the uplink tests: TLS listener on a free loopback port with
//! `require_certificate true` and `use_identity_as_username true` (its log names the client
//! certificate's CN), persistence in a scratch directory, killed by PID on drop. And a
//! `mosquitto_sub` subscriber whose output lines the test reads.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::pki::{Issued, Pki};

/// A free TCP port on 127.0.0.1 (bound and released; the broker binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port()
}

/// A running mosquitto.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto in `dir` with the broker certificate of `pki`.
    pub fn start(dir: &Path, pki: &Pki) -> Self {
        Self::start_with(dir, &pki.ca.cert, &pki.broker)
    }

    /// Starts mosquitto in `dir` with the broker certificate of `pki` and the access control
    /// list `acl` (mosquitto's acl_file syntax; user names are certificate CNs).
    pub fn start_with_acl(dir: &Path, pki: &Pki, acl: &str) -> Self {
        std::fs::create_dir_all(dir).expect("cannot create the broker directory");
        std::fs::write(dir.join("acl"), acl).expect("cannot write the acl file");
        Self::start_with(dir, &pki.ca.cert, &pki.broker)
    }

    /// Replaces the access control list and has the running broker reload it (SIGHUP).
    pub fn reload_acl(&self, acl: &str) {
        std::fs::write(self.dir.join("acl"), acl).expect("cannot write the acl file");
        let child = self.child.as_ref().expect("mosquitto is running");
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status();
    }

    /// Starts mosquitto trusting client certificates from `client_ca`, presenting `server`.
    pub fn start_with(dir: &Path, client_ca: &Path, server: &Issued) -> Self {
        std::fs::create_dir_all(dir).expect("cannot create the broker directory");
        let port = free_port();
        let user = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("cannot run id")
                .stdout,
        )
        .expect("invariant: user names are UTF-8");
        let conf = dir.join("mosquitto.conf");
        // max_queued_messages is large rather than 0 (unlimited): mosquitto 2.0.11 compares
        // it with the client's queue after an ACL-denied QoS 1 publish and, with 0, drops the
        // connection instead of answering PUBACK "not authorized".
        let acl = dir.join("acl");
        let acl = if acl.exists() {
            format!("acl_file {}\n", acl.display())
        } else {
            String::new()
        };
        let text = format!(
            "user {user}\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             max_queued_messages 1000000\n\
             max_inflight_messages 100\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n\
             {acl}",
            user = user.trim(),
            ca = client_ca.display(),
            cert = server.cert.display(),
            key = server.key.display(),
            dir = dir.display(),
        );
        std::fs::write(&conf, text).expect("cannot write mosquitto.conf");
        let mut broker = Self {
            child: None,
            port,
            dir: dir.to_owned(),
            conf,
        };
        broker.restart();
        broker
    }

    /// Restarts the broker with `line` added to its configuration (e.g. `tls_version tlsv1.2`).
    pub fn add_config(&mut self, line: &str) {
        self.stop();
        let mut text = std::fs::read_to_string(&self.conf).expect("read mosquitto.conf");
        text.push_str(line);
        text.push('\n');
        std::fs::write(&self.conf, text).expect("write mosquitto.conf");
        self.restart();
    }

    /// Starts (again) on the same port with the same persistence.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mosquitto exited at start ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto does not listen on {}; log:\n{}",
                self.port,
                self.log()
            );
            // Readiness of another process's listener has no event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with SIGTERM (it saves its persistence) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Waits until the broker log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // A log file has no change notification here; poll it.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `mosquitto_sub -v` on a filter with a persistent session (QoS 1): survives broker restarts
/// without losing messages.
#[derive(Debug)]
pub struct Subscriber {
    child: Child,
    rx: mpsc::Receiver<String>,
    /// Every line seen so far: `topic payload`.
    pub lines: Vec<String>,
}

impl Subscriber {
    pub fn start(broker: &Mosquitto, pki: &Pki, filter: &str) -> Self {
        let id = format!("sub-{}-{}", std::process::id(), broker.port);
        // mosquitto_sub block-buffers stdout into a pipe: force line buffering.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .arg("--cafile")
            .arg(&pki.ca.cert)
            .arg("--cert")
            .arg(&pki.subscriber.cert)
            .arg("--key")
            .arg(&pki.subscriber.key)
            .args([
                "-q", "1", "-v", "-c", "-i", &id, "-t", filter, "-t", "probe/#",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mosquitto_sub (apt-get install mosquitto-clients)");
        let stdout = child.stdout.take().expect("invariant: piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = Self {
            child,
            rx,
            lines: Vec::new(),
        };
        // Subscribed once a probe published after start comes back.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            publish(broker, pki, "probe/ready", "ready");
            if sub.wait_until(Duration::from_millis(500), |l| {
                l.iter().any(|x| x == "probe/ready ready")
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
        }
        sub
    }

    /// Reads output until `done(lines)` holds or `timeout` passes; returns whether it held.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.lines) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line);
                    // Check once per burst, not per line: `done` may scan everything.
                    while let Ok(line) = self.rx.try_recv() {
                        self.lines.push(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return done(&self.lines),
                Err(mpsc::RecvTimeoutError::Disconnected) => return done(&self.lines),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message with `mosquitto_pub` (as the subscriber identity).
pub fn publish(broker: &Mosquitto, pki: &Pki, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .arg("--cafile")
        .arg(&pki.ca.cert)
        .arg("--cert")
        .arg(&pki.subscriber.cert)
        .arg("--key")
        .arg(&pki.subscriber.key)
        .args(["-q", "1", "-t", topic, "-m", payload, "-i"])
        .arg(format!("pub-{}", std::process::id()))
        .status()
        .expect("cannot run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}
