//! The real `edgegw run` with an uplink: connects over mTLS and announces `online`;
//! `edgegw status` (human and `--json`) reports the uplink and the queue; without a daemon it
//! says so (exit 69); a corrupt outbox stops the start (exit 78) with how to move it aside.

use std::time::Duration;

use system_tests::mosquitto::{Mosquitto, Subscriber};
use system_tests::pki::Pki;
use system_tests::uplink::env;
use system_tests::{Daemon, edgegw};

#[test]
fn the_daemon_connects_and_status_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut status_sub = Subscriber::start(&broker, &pki, "edgegw/gw-test/#");
    let vars = env(dir.path(), &broker, &pki);
    let mut cmd = edgegw(dir.path());
    cmd.arg("run").envs(vars.iter().cloned());
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("uplink connected", Duration::from_secs(30));
    assert!(
        status_sub.wait_until(Duration::from_secs(10), |l| l
            .iter()
            .any(|x| x == "edgegw/gw-test/status online")),
        "{:?}",
        status_sub.lines
    );
    // The retained statistics on <status_topic>/stats.
    assert!(
        status_sub.wait_until(Duration::from_secs(10), |l| l
            .iter()
            .any(|x| x.starts_with("edgegw/gw-test/status/stats {"))),
        "{:?}",
        status_sub.lines
    );

    let out = edgegw(dir.path())
        .args(["status", "--json"])
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["uplink"]["state"], "connected", "{json}");
    assert_eq!(json["outbox"]["queued"], 0, "{json}");
    assert_eq!(json["uplink"]["cert"]["subject"], "CN=uplink-1", "{json}");
    assert!(
        json["cert_expires_in_days"].as_i64().unwrap() >= 363,
        "{json}"
    );

    let out = edgegw(dir.path())
        .arg("status")
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "uplink               connected",
        "queue depth",
        "oldest queued",
        "cert expires in",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }

    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}: {:?}", daemon.log());
    assert!(
        status_sub.wait_until(Duration::from_secs(10), |l| l
            .iter()
            .any(|x| x == "edgegw/gw-test/status offline")),
        "{:?}",
        status_sub.lines
    );

    let out = edgegw(dir.path())
        .arg("status")
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("edgegw is not running"), "{err}");
}

#[test]
fn a_corrupt_outbox_stops_the_start_and_says_how_to_move_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let garbage = b"definitely not sqlite ".repeat(300);
    std::fs::write(state.join("outbox.db"), &garbage).unwrap();
    let out = edgegw(dir.path())
        .arg("run")
        .env("EDGEGW_GATEWAY_STATE_DIR", &state)
        .env("EDGEGW_GATEWAY_RUNTIME_DIR", dir.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("is corrupt") && err.contains("move it aside"),
        "{err}"
    );
    assert_eq!(std::fs::read(state.join("outbox.db")).unwrap(), garbage);
}
