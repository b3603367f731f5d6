//! A full state partition is back-pressure, not an internal error: CoAP answers 5.03 with
//! Max-Age (not 5.00), the daemon logs the episode once, and accepts again once space is
//! freed; the HTTP adapter answers 503 with Retry-After. Root only (it mounts a small tmpfs as the state directory): run with
//! `cargo test -p system-tests --test coap_disk_full -- --ignored` as root.

use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use system_tests::{Daemon, edgegw, stdout_of};

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs failed");
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn cli(dir: &Path, state: &Path, args: &[&str]) -> String {
    stdout_of(
        edgegw(dir)
            .arg("--dev")
            .args(args)
            .env("EDGEGW_GATEWAY_STATE_DIR", state),
    )
}

/// One CON POST over a real UDP socket; returns the response (code and options readable).
fn post(daemon: &mut Daemon, socket: &UdpSocket, mid: u16, secret: &str, payload: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    for seg in ["m", "dom", "c", "chan-a"] {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.add_option(CoapOption::UriQuery, format!("auth={secret}").into_bytes());
    p.payload = payload.to_vec();
    socket
        .send(&p.to_bytes().expect("encode"))
        .expect("send request");
    let mut buf = [0u8; 2048];
    loop {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "message {mid}: no response ({e}); log:\n{}",
                daemon.log().join("\n")
            )
        });
        let resp = Packet::from_bytes(&buf[..n]).expect("decode response");
        if resp.header.message_id == mid {
            return resp;
        }
    }
}

/// The HTTP adapter's publish with curl; (status, Retry-After header).
fn http_publish(port: u16, secret: &str) -> (u16, Option<String>) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--noproxy", "*", "-X", "POST", "-H"])
        .arg(format!("authorization: Client {secret}"))
        .args(["--data-binary", "21.5"])
        .arg(format!("http://127.0.0.1:{port}/m/dom/c/chan-a"))
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status: {text}"));
    let retry_after = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    (status, retry_after)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
#[ignore = "root only: mounts a tmpfs as the state directory"]
fn a_full_state_disk_answers_5_03_with_max_age_and_recovers_when_freed() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let _mount = Tmpfs::mount(&state, "4m");
    cli(dir.path(), &state, &["channel", "add", "chan-a"]);
    let out = cli(dir.path(), &state, &["--json", "client", "add", "sensor-a"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let secret = v["secret"].as_str().expect("secret").to_owned();
    cli(dir.path(), &state, &["connect", "sensor-a", "chan-a"]);

    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free tcp port")
        .port();
    let mut cmd = edgegw(dir.path());
    cmd.args(["--dev", "run"])
        .env("EDGEGW_GATEWAY_STATE_DIR", &state)
        .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{port}"))
        .env("EDGEGW_HTTP_BIND", format!("127.0.0.1:{http_port}"));
    let mut daemon = Daemon::start(cmd);
    // Fully started (it writes its JWT key into the state directory before "ready"; a disk
    // that is full by then is a start-up failure, not this test's subject).
    daemon.wait_for_log("edgegw: ready", Duration::from_secs(20));

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(("127.0.0.1", port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let payload = vec![b'x'; 1000];
    let first = post(&mut daemon, &socket, 1, &secret, &payload);
    assert_eq!(
        first.header.code,
        MessageClass::Response(ResponseType::Changed)
    );

    // Fill the partition.
    let filler = state.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    // SQLite may still fit a few commits into pages it has: post until refused.
    let mut refused = None;
    for mid in 2..2000u16 {
        let resp = post(&mut daemon, &socket, mid, &secret, &payload);
        match resp.header.code {
            MessageClass::Response(ResponseType::Changed) => {}
            MessageClass::Response(ResponseType::ServiceUnavailable) => {
                refused = Some((mid, resp));
                break;
            }
            other => panic!(
                "message {mid}: expected 2.04 or 5.03, got {other}; log:\n{}",
                daemon.log().join("\n")
            ),
        }
    }
    let (mid, resp) = refused.expect("never refused on a full disk");
    let max_age = resp
        .get_first_option(CoapOption::MaxAge)
        .expect("5.03 carries Max-Age");
    let secs = max_age.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
    assert_eq!(secs, 30, "Max-Age");
    // More refusals in the same episode: still 5.03, but one warning only.
    for m in mid + 1..mid + 6 {
        let resp = post(&mut daemon, &socket, m, &secret, &payload);
        assert_eq!(
            resp.header.code,
            MessageClass::Response(ResponseType::ServiceUnavailable)
        );
    }
    let warnings = daemon
        .log()
        .iter()
        .filter(|l| l.contains("the state disk is full"))
        .count();
    assert_eq!(warnings, 1, "log:\n{}", daemon.log().join("\n"));
    assert!(
        !daemon
            .log()
            .iter()
            .any(|l| l.contains("outbox commit failed")),
        "a full disk was logged as a failure"
    );
    let (status, retry_after) = http_publish(http_port, &secret);
    assert_eq!(status, 503, "HTTP adapter on a full disk");
    assert_eq!(retry_after.as_deref(), Some("30"), "HTTP Retry-After");

    // Freed: accepted again.
    std::fs::remove_file(&filler).expect("remove filler");
    let resp = post(&mut daemon, &socket, mid + 10, &secret, &payload);
    assert_eq!(
        resp.header.code,
        MessageClass::Response(ResponseType::Changed),
        "not accepted after space was freed; log:\n{}",
        daemon.log().join("\n")
    );
    daemon.wait_for_log("the state disk has room again", Duration::from_secs(5));
    drop(daemon);
}
