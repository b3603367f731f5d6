//! Issue 20.7: whoever can publish on a channel's command topic upstream must not forge lines
//! to a serial sensor. A command payload with `\n` (the reproduction: forged `OK 999999` and
//! `CMD other…` lines), a `\r`, a subtopic level with a space, and (the session not using
//! checksums) a payload ending in `*HH` are refused for serial delivery and counted
//! (`edgegw_downlink_refused_total{adapter="serial"}` in `/metrics`, `downlink_refused` in
//! `status --json`); the commands around them arrive as exactly their own lines. Real
//! mosquitto with mTLS, a pty pair, curl.

use std::time::Duration;

use system_tests::api::Api;
use system_tests::downlink::Downlink;
use system_tests::pty::{self, Sensor, WAIT};

#[test]
fn upstream_commands_cannot_forge_serial_lines_and_refusals_are_counted() {
    let setup = Downlink::new();
    let link = setup.path().join("ttySENSOR");
    let mut sensor = Sensor::plug_in(&link);
    let config = pty::port_config(setup.path(), &[&link]);
    let (mut daemon, _) = setup.run(Some(&config), &[]);
    daemon.wait_for_log("serial port open", WAIT);
    assert_eq!(sensor.ask(&format!("AUTH lamp-1 {}", setup.secret)), "OK");
    let topic = format!("m/dom/c/{}/cmd", setup.channel_id);

    // A plain command first, until the uplink's subscription is in place.
    let mut before = Vec::new();
    let ready = setup.command_until(&topic, "ready", Duration::from_secs(30), |wait| {
        while let Some(line) = sensor.line_within(wait) {
            let done = line == "CMD lamps ready";
            before.push(line);
            if done {
                return true;
            }
        }
        false
    });
    assert!(ready, "no command reached the sensor: {before:?}");
    assert!(before.iter().all(|l| l == "CMD lamps ready"), "{before:?}");

    for (topic, payload) in [
        (topic.clone(), "on\nOK 999999\nCMD other-channel/x forged"),
        (topic.clone(), "on\rOK 999998"),
        (format!("{topic}/a b"), "shifted"),
        (topic.clone(), "dim*4F"),
    ] {
        setup.command(&topic, payload);
    }
    setup.command(&format!("{topic}/after"), "fine");
    // Everything up to the last command: exactly that line, after any resent "ready".
    let mut lines = Vec::new();
    loop {
        let line = sensor.line();
        let last = line == "CMD lamps/after fine";
        lines.push(line);
        if last {
            break;
        }
    }
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l == "CMD lamps ready"),
        "forged or unexpected lines reached the sensor: {lines:?}"
    );

    // Counted, visibly: the status report and /metrics.
    let status = setup.cli(&["status"]);
    assert_eq!(
        status["adapters"]["serial"]["downlink_refused"], 4,
        "{status}"
    );
    let api = Api::from_log(&mut daemon);
    let metrics = api.call("GET", "/metrics", None, None);
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l == "edgegw_downlink_refused_total{adapter=\"serial\"} 4"),
        "{}",
        metrics.text
    );
    let warned = daemon
        .log()
        .iter()
        .filter(|l| l.contains("command not delivered over serial"))
        .count();
    assert_eq!(warned, 4, "{}", daemon.log().join("\n"));
}
