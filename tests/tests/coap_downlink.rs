//! Downlink end to end: a command published on the upstream broker (real mosquitto, mTLS)
//! reaches a CoAP sensor that registered Observe on its channel, as a notification to
//! libcoap's `coap-client-openssl -s`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::downlink::Downlink;
use system_tests::mosquitto::{free_port, publish};
use system_tests::{Daemon, edgegw};

#[test]
fn a_broker_command_reaches_an_observing_coap_sensor() {
    let setup = Downlink::new();
    let (channel_id, secret) = (&setup.channel_id, &setup.secret);

    let port = free_port();
    let mut cmd = edgegw(setup.path());
    cmd.arg("run")
        .envs(setup.vars.iter().cloned())
        .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{port}"));
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("uplink connected", Duration::from_secs(30));

    let mut observer = Command::new("coap-client-openssl")
        .args(["-B", "60", "-s", "60", "-w", "-m", "get"])
        .arg(format!(
            "coap://127.0.0.1:{port}/m/dom/c/lamps/cmd?auth={secret}"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coap-client-openssl");
    let out = observer.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The uplink subscribes asynchronously: publish until the command comes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        publish(
            &setup.broker,
            &setup.pki,
            &format!("m/dom/c/{channel_id}/cmd"),
            "lamp-on",
        );
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            if line.contains("lamp-on") {
                got = Some(line);
                break;
            }
        }
    }
    let _ = observer.kill();
    let _ = observer.wait();
    assert_eq!(
        got.as_deref(),
        Some("lamp-on"),
        "no notification; log:\n{}",
        daemon.log().join("\n")
    );
    // The delivery is counted for the adapter (metrics): `edgegw status --json`.
    let status = setup.cli(&["status"]);
    let delivered = status["adapters"]["coap"]["downlink_delivered"]
        .as_u64()
        .expect("adapters.coap.downlink_delivered");
    assert!(delivered >= 1, "{status}");
    assert_eq!(status["adapters"]["coaps"]["downlink_delivered"], 0);
}
