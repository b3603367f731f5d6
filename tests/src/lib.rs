//! Harness for end-to-end tests of the built `edgegw` binary: locate it, run it in a scratch
//! directory with a clean environment, watch its log, signal it, and never leave it running.

pub mod api;
pub mod bootstrap_server;
pub mod devpki;
pub mod downlink;
pub mod hotpath;
pub mod mosquitto;
pub mod pki;
pub mod pty;
pub mod sensor;
pub mod supermq_upstream;
pub mod uplink;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variable that points the tests at another binary (e.g. a release build).
/// Deliberately not `EDGEGW_*`: the daemon refuses unknown variables with that prefix.
pub const BIN_OVERRIDE: &str = "SYSTEM_TESTS_EDGEGW_BIN";

/// The `edgegw` binary: `$SYSTEM_TESTS_EDGEGW_BIN`, or the one cargo built next to this test.
pub fn edgegw_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(BIN_OVERRIDE) {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test> → target/<profile>/edgegw
    let exe = std::env::current_exe().expect("invariant: test has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("invariant: test binary lives in target/*/deps");
    let bin = dir.join("edgegw");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p gateway`), or set {BIN_OVERRIDE}",
        bin.display()
    );
    bin
}

/// An `edgegw` command with a clean environment (no inherited `EDGEGW_*`), run in `cwd`.
pub fn edgegw(cwd: &Path) -> Command {
    edgegw_with(&edgegw_bin(), cwd)
}

/// [`edgegw`] with an explicit binary (the hot-path benchmark runs two builds side by side).
pub fn edgegw_with(bin: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EDGEGW_")
            || key == "JOURNAL_STREAM"
            || key == "NOTIFY_SOCKET"
        {
            cmd.env_remove(key);
        }
    }
    // Tests run many daemons at once: the CoAP listeners take ephemeral ports unless a test
    // sets its own (a later `.env` wins).
    cmd.env("EDGEGW_COAP_BIND", "127.0.0.1:0")
        .env("EDGEGW_COAP_DTLS_BIND", "127.0.0.1:0")
        .env("EDGEGW_HTTP_BIND", "127.0.0.1:0");
    cmd
}

/// A running daemon. Dropping it kills the process, so a failed test leaves nothing behind.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    /// Starts `cmd` with stderr captured.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start edgegw");
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a log line contains `needle`; panics with the log so far after `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits until `n` log lines (counting from the start) contain `needle`; returns the nth.
    /// For events that happen more than once (a port reopened).
    pub fn wait_for_nth_log(&mut self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "fewer than {n} log lines containing {needle:?} within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Everything logged so far.
    pub fn log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// Sends a signal by name (`TERM`, `HUP`, `KILL`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("cannot wait for edgegw") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling a child's exit status has no blocking-with-timeout form in std.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free UDP port on 127.0.0.1 (bound and released; the daemon binds it right after).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port")
        .port()
}

/// Runs `cmd` to completion, asserts it succeeded (showing its stderr if not) and returns its
/// stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run edgegw");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `edgegw --dev <args>` in `dir`: must succeed; its stdout.
pub fn dev_cli(dir: &Path, args: &[&str]) -> String {
    stdout_of(edgegw(dir).arg("--dev").args(args))
}

/// `edgegw --json <args>` in `dir` with the environment `vars`: must succeed; its stdout as
/// JSON (`Null` when it prints none).
pub fn json_cli(dir: &Path, vars: &[(String, String)], args: &[&str]) -> serde_json::Value {
    let out = stdout_of(
        edgegw(dir)
            .arg("--json")
            .args(args)
            .envs(vars.iter().cloned()),
    );
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

/// The demo sensor's secret from the daemon's `demo sensor provisioned … secret `…`` line.
pub fn demo_secret(line: &str) -> String {
    line.split("secret `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .expect("secret in the demo line")
        .to_owned()
}

/// The port from the daemon's `HTTP API listening addr=127.0.0.1:<port>` line.
pub fn http_port(line: &str) -> String {
    line.split("addr=127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("port in log line")
        .to_owned()
}

/// Runs a libcoap client (`coap-client-openssl`, `coap-client-gnutls`) with `-B 10` under a
/// 30 s `timeout`; returns stdout + stderr. The client's exit status says nothing (libcoap 4.3
/// exits 0 on error responses), so callers look at the output.
pub fn coap_client(client: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("30")
        .arg(client)
        .args(["-B", "10"])
        .args(args)
        .output()
        .expect("run libcoap client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
