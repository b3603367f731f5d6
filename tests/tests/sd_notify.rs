//! The test plays systemd: it binds the `NOTIFY_SOCKET` datagram socket, starts the real
//! `edgegw run --dev` with `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` set as the
//! service manager does, and checks what the daemon reports: READY (with STATUS) before any
//! WATCHDOG ping, pings while running, RELOADING…READY around SIGHUP, STOPPING and
//! EXTEND_TIMEOUT_USEC on SIGTERM. A `WATCHDOG_PID` naming another process means no pings.
//! A failed assertion drops the `Daemon`, which kills it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use system_tests::{Daemon, edgegw_bin};

/// systemd's watchdog timeout for the test: the daemon pings every half of it.
const WATCHDOG_USEC: &str = "2000000";

struct ServiceManager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl ServiceManager {
    fn bind(dir: &Path) -> (Self, std::path::PathBuf) {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        (
            Self {
                socket,
                seen: Vec::new(),
            },
            path,
        )
    }

    /// Receives datagrams until one satisfies `pred` (returned), panicking after `timeout`.
    fn until(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {timeout:?}; received so far: {:#?}",
                self.seen
            );
            self.socket
                .set_read_timeout(Some(left))
                .expect("set the notify socket timeout");
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(datagram.clone());
                    if pred(&datagram) {
                        return datagram;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    }

    /// Everything received during `window`, for asserting something does NOT happen.
    fn during(&mut self, window: Duration) -> Vec<String> {
        let start = self.seen.len();
        let deadline = Instant::now() + window;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.seen[start..].to_vec();
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("set the notify socket timeout");
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

fn has_line(datagram: &str, line: &str) -> bool {
    datagram.lines().any(|l| l == line)
}

/// `edgegw run --dev` in `dir` as systemd would start it. `watchdog_pid`: `None` sets
/// `WATCHDOG_PID` to the daemon's own pid (the shell `exec`s the binary, keeping its pid).
fn start(dir: &Path, notify_socket: &Path, watchdog_pid: Option<u32>) -> Daemon {
    let mut cmd = Command::new("/bin/sh");
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("EDGEGW_")
            || k.starts_with("WATCHDOG_")
            || k == "JOURNAL_STREAM"
            || k == "NOTIFY_SOCKET"
        {
            cmd.env_remove(key);
        }
    }
    let pid = watchdog_pid.map_or_else(|| "$$".to_owned(), |p| p.to_string());
    cmd.arg("-c")
        .arg(format!("WATCHDOG_PID={pid} exec \"$0\" run --dev"))
        .arg(edgegw_bin())
        // Port 0 for every listener, as the harness does: parallel tests never collide.
        .env("EDGEGW_COAP_BIND", "127.0.0.1:0")
        .env("EDGEGW_COAP_DTLS_BIND", "127.0.0.1:0")
        .env("EDGEGW_HTTP_BIND", "127.0.0.1:0")
        .env("NOTIFY_SOCKET", notify_socket)
        .env("WATCHDOG_USEC", WATCHDOG_USEC);
    Daemon::start(cmd)
}

#[test]
fn plays_the_service_manager_ready_watchdog_reload_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut manager, socket) = ServiceManager::bind(dir.path());
    let mut daemon = start(dir.path(), &socket, None);

    let ready = manager.until("READY=1", Duration::from_secs(20), |d| {
        has_line(d, "READY=1")
    });
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.len() > 7),
        "READY carries a STATUS: {ready:?}"
    );
    assert!(
        !manager.seen.iter().any(|d| has_line(d, "WATCHDOG=1")),
        "WATCHDOG=1 before READY=1: {:#?}",
        manager.seen
    );
    // Pings every second (half of WATCHDOG_USEC) while the supervisor loop makes progress.
    for _ in 0..2 {
        manager.until("WATCHDOG=1", Duration::from_secs(5), |d| {
            has_line(d, "WATCHDOG=1")
        });
    }

    daemon.signal("HUP");
    let reloading = manager.until("RELOADING=1", Duration::from_secs(5), |d| {
        has_line(d, "RELOADING=1")
    });
    let monotonic: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(monotonic > 0);
    let reready = manager.until("READY=1 after the reload", Duration::from_secs(5), |d| {
        has_line(d, "READY=1")
    });
    let mode = ready.lines().find(|l| l.starts_with("STATUS="));
    assert_eq!(
        reready.lines().find(|l| l.starts_with("STATUS=")),
        mode,
        "the mode survives a reload"
    );
    manager.until("WATCHDOG=1 after the reload", Duration::from_secs(5), |d| {
        has_line(d, "WATCHDOG=1")
    });

    daemon.signal("TERM");
    manager.until("STOPPING=1", Duration::from_secs(5), |d| {
        has_line(d, "STOPPING=1")
    });
    let extend = manager.until("EXTEND_TIMEOUT_USEC", Duration::from_secs(5), |d| {
        d.starts_with("EXTEND_TIMEOUT_USEC=")
    });
    let usec: u64 = extend["EXTEND_TIMEOUT_USEC=".len()..]
        .trim()
        .parse()
        .unwrap();
    assert!(
        usec >= 10_000_000,
        "covers the default 10 s drain: {extend}"
    );
    let status = daemon
        .wait_exit(Duration::from_secs(15))
        .expect("still running after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log().join("\n"));
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut manager, socket) = ServiceManager::bind(dir.path());
    // Our own pid: certainly alive, certainly not the daemon.
    let mut daemon = start(dir.path(), &socket, Some(std::process::id()));
    manager.until("READY=1", Duration::from_secs(20), |d| {
        has_line(d, "READY=1")
    });
    // Four ping periods of silence.
    let window = manager.during(Duration::from_secs(4));
    assert!(
        !window.iter().any(|d| has_line(d, "WATCHDOG=1")),
        "pinged a watchdog meant for another pid: {window:#?}"
    );
    daemon.signal("TERM");
    manager.until("STOPPING=1", Duration::from_secs(5), |d| {
        has_line(d, "STOPPING=1")
    });
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );
}
