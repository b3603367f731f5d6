//! The serial adapter of the real binary over pseudo-terminal pairs: the test holds the master
//! side and plays the sensor; the daemon opens the slave side through a symlink (as it would a
//! `/dev/serial/by-id/…` name). AUTH + PUB reach the outbox with and without checksums; bad
//! input gets the documented `ERR` and the port keeps working; a closed pty is reopened when
//! it comes back; a missing port does not disturb the others.

use std::path::PathBuf;

use system_tests::pty::{FORK_LOCK, Sensor, WAIT};
use system_tests::{Daemon, demo_secret, edgegw};

fn checksum(body: &str) -> String {
    format!("{body}*{:02X}", body.bytes().fold(0u8, |a, b| a ^ b))
}

struct Gateway {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    link: PathBuf,
    daemon: Daemon,
    secret: String,
}

/// `run --dev` with one port behind `<dir>/ttySENSOR` (the pty is created first) and one that
/// does not exist.
fn start() -> (Gateway, Sensor) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let link = dir.join("ttySENSOR");
    let sensor = Sensor::plug_in(&link);
    let config = dir.join("edgegw.toml");
    std::fs::write(
        &config,
        format!(
            "[serial]\nmax_line = 64\nreopen_min = \"100ms\"\nreopen_max = \"200ms\"\n\
             [[serial.ports]]\npath = \"{}\"\nbaud = 115200\n\
             [[serial.ports]]\npath = \"{}\"\n",
            link.display(),
            dir.join("ttyMISSING").display()
        ),
    )
    .expect("write config");
    let mut cmd = edgegw(&dir);
    cmd.arg("--config").arg(&config).args(["run", "--dev"]);
    let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut daemon = Daemon::start(cmd);
    drop(guard);
    let secret = demo_secret(&daemon.wait_for_log("demo sensor provisioned", WAIT));
    daemon.wait_for_log("serial port open", WAIT);
    (
        Gateway {
            _dir: tmp,
            dir,
            config,
            link,
            daemon,
            secret,
        },
        sensor,
    )
}

impl Gateway {
    /// (subtopic, payload) of every message in the outbox, in order.
    fn outbox(&self) -> Vec<(String, Vec<u8>)> {
        let db = rusqlite::Connection::open_with_flags(
            self.dir.join(".edgegw-dev/state/outbox.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open outbox.db");
        let mut stmt = db
            .prepare("SELECT subtopic, payload FROM outbox ORDER BY seq")
            .expect("query outbox");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("read outbox")
            .collect::<Result<_, _>>()
            .expect("outbox row")
    }

    /// `edgegw status --json` of the running daemon.
    fn status(&self) -> serde_json::Value {
        let out = edgegw(&self.dir)
            .arg("--config")
            .arg(&self.config)
            .args(["--json", "status", "--dev"])
            .output()
            .expect("run edgegw status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn stop(mut self) {
        self.daemon.signal("TERM");
        let status = self.daemon.wait_exit(WAIT).expect("no exit after SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", self.daemon.log().join("\n"));
    }
}

fn seq_of(answer: &str) -> u64 {
    answer
        .strip_prefix("OK ")
        .and_then(|s| s.split('*').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not `OK <seq>`: {answer:?}"))
}

#[test]
fn auth_and_pub_reach_the_outbox_with_and_without_checksums() {
    let (gw, mut sensor) = start();
    // The missing port is retried in the background and disturbs nothing.
    let mut gw = gw;
    gw.daemon.wait_for_log("cannot open serial port", WAIT);

    assert_eq!(sensor.ask(&format!("AUTH demo-sensor {}", gw.secret)), "OK");
    let first = seq_of(&sensor.ask("PUB demo/room1 21.5"));
    // With a checksum: the answer carries one too, and it is right.
    let answer = sensor.ask(&checksum("PUB demo/room2 {\"t\":22}"));
    let (body, sum) = answer.split_once('*').expect("checksummed answer");
    assert_eq!(answer, checksum(body), "answer checksum");
    assert_eq!(sum.len(), 2);
    let second = seq_of(body);
    assert!(second > first, "{first} then {second}");
    // CRLF line endings are fine.
    sensor.send(b"PUB demo 23\r\n");
    let third = seq_of(&sensor.line());
    assert!(third > second);

    let stored = gw.outbox();
    assert_eq!(
        stored,
        vec![
            ("room1".to_owned(), b"21.5".to_vec()),
            ("room2".to_owned(), b"{\"t\":22}".to_vec()),
            (String::new(), b"23".to_vec()),
        ]
    );
    // The status report lists both ports.
    let status = gw.status();
    let ports = status["serial"].as_array().expect("serial ports in status");
    assert_eq!(ports.len(), 2, "{status}");
    assert_eq!(ports[0]["state"], "open", "{status}");
    assert_eq!(ports[0]["client"], "demo-sensor", "{status}");
    assert_eq!(ports[0]["published"], 3, "{status}");
    assert_eq!(ports[1]["state"], "waiting", "{status}");
    gw.stop();
}

#[test]
fn bad_input_gets_the_documented_errors_and_the_port_keeps_working() {
    let (gw, mut sensor) = start();
    assert_eq!(sensor.ask("PUB demo 1"), "ERR not-authenticated");
    assert_eq!(
        sensor.ask("AUTH demo-sensor wrong-secret-0123456789"),
        "ERR auth"
    );
    assert_eq!(
        sensor.ask("AUTH nobody wrong-secret-0123456789"),
        "ERR auth",
        "unknown identity looks like a wrong secret"
    );
    assert_eq!(sensor.ask(&format!("AUTH demo-sensor {}", gw.secret)), "OK");
    // Bad checksum: refused, answered with a checksum.
    assert_eq!(sensor.ask("PUB demo 21.5*00"), checksum("ERR checksum"));
    // Overlong (max_line = 64), sent in pieces: refused once, the rest of it discarded.
    sensor.send(format!("PUB demo {}", "x".repeat(100)).as_bytes());
    sensor.send(format!("{}\n", "y".repeat(300)).as_bytes());
    assert_eq!(sensor.line(), "ERR too-long");
    // Garbage bytes and unknown commands.
    sensor.send(b"\x00\xff\xfe\x1b[2J\x07garbage\n");
    assert_eq!(sensor.line(), "ERR unknown-command");
    assert_eq!(sensor.ask("SUBSCRIBE demo"), "ERR unknown-command");
    assert_eq!(sensor.ask("PUB demo"), "ERR bad-request");
    assert_eq!(sensor.ask("PUB no-such-channel 1"), "ERR not-connected");
    // Still working, still authenticated.
    let seq = seq_of(&sensor.ask("PUB demo/after ok"));
    assert!(seq > 0);
    assert_eq!(
        gw.outbox(),
        vec![("after".to_owned(), b"ok".to_vec())],
        "nothing refused was stored"
    );
    gw.stop();
}

#[test]
fn the_adapter_recovers_when_the_pty_is_closed_and_reopened() {
    let (mut gw, mut sensor) = start();
    assert_eq!(sensor.ask(&format!("AUTH demo-sensor {}", gw.secret)), "OK");
    seq_of(&sensor.ask("PUB demo before"));
    // Unplug: the sensor end goes away.
    drop(sensor);
    gw.daemon.wait_for_log("serial port closed", WAIT);
    // Plug back in (a new pty behind the same name, like a by-id link after a replug).
    let mut sensor = Sensor::plug_in(&gw.link);
    gw.daemon.wait_for_nth_log("serial port open", 2, WAIT);
    // A new connection must authenticate again (this time with a checksum).
    assert_eq!(sensor.ask("PUB demo x"), "ERR not-authenticated");
    assert_eq!(
        sensor.ask(&checksum(&format!("AUTH demo-sensor {}", gw.secret))),
        checksum("OK")
    );
    seq_of(&sensor.ask("PUB demo after"));
    let payloads: Vec<Vec<u8>> = gw.outbox().into_iter().map(|(_, p)| p).collect();
    assert_eq!(payloads, vec![b"before".to_vec(), b"after".to_vec()]);
    gw.stop();
}
