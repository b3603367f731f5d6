//! Issue 20.1: a client that loses its subscribe grant stops receiving commands on sessions it
//! already holds. An existing CoAP Observe and an authenticated serial session each stop
//! getting commands after `client disable`, after `disconnect --subscribe` and after `client
//! remove`, while a client that kept its grant still gets them; a CoAPS (DTLS-PSK) session is
//! ended when its subscribe grant is removed. Real mosquitto with mTLS, libcoap clients, pty
//! pairs.

use std::time::Duration;

use system_tests::downlink::{Downlink, Observer};
use system_tests::pty::{self, Sensor, WAIT};
use system_tests::{Daemon, free_udp_port, stdout_of};

/// The three ways to lose the grant, by tag.
const HOW: [&str; 3] = ["dis", "unsub", "rm"];

/// `client disable`, `disconnect … --subscribe` or `client remove`.
fn revoke(setup: &Downlink, how: &str, client: &str) {
    match how {
        "dis" => setup.cli(&["client", "disable", client]),
        "unsub" => setup.cli(&["disconnect", client, "lamps", "--subscribe"]),
        _ => setup.cli(&["client", "remove", client]),
    };
}

/// Adds `identity`, connected to `lamps`: (id, secret).
fn add_client(setup: &Downlink, identity: &str) -> (String, String) {
    let c = setup.cli(&["client", "add", identity]);
    setup.cli(&["connect", identity, "lamps"]);
    let field = |k: &str| c[k].as_str().expect("client field").to_owned();
    (field("id"), field("secret"))
}

/// Publishes `payload` until the control observer (`lamp-1`, never revoked) has it, so every
/// recipient the hub chose has been handed it too.
fn command_seen_by_control(
    setup: &Downlink,
    control: &mut Observer,
    payload: &str,
    daemon: &mut Daemon,
) {
    let topic = format!("m/dom/c/{}/cmd", setup.channel_id);
    let got = setup.command_until(&topic, payload, Duration::from_secs(30), |wait| {
        control.saw(payload, wait)
    });
    assert!(
        got,
        "control never got {payload:?}; log:\n{}",
        daemon.log().join("\n")
    );
}

/// The `CMD` lines a serial sensor received within `wait`.
fn serial_lines(sensor: &mut Sensor, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(line) = sensor.line_within(wait) {
        out.push(line);
    }
    out
}

#[test]
fn coap_observations_and_serial_sessions_stop_getting_commands_once_the_grant_is_gone() {
    let setup = Downlink::new();
    let dir = setup.path().to_owned();
    let mut coap = Vec::new();
    for tag in HOW {
        let id = format!("coap-{tag}");
        let (_, secret) = add_client(&setup, &id);
        coap.push((id, secret));
    }
    let mut serial = Vec::new();
    let mut links = Vec::new();
    for tag in HOW {
        let id = format!("ser-{tag}");
        let (_, secret) = add_client(&setup, &id);
        let link = dir.join(format!("tty-{tag}"));
        serial.push((id, secret, Sensor::plug_in(&link)));
        links.push(link);
    }
    let link_refs: Vec<&std::path::Path> = links.iter().map(|l| l.as_path()).collect();
    let config = pty::port_config(&dir, &link_refs);
    let (mut daemon, port) = setup.run(Some(&config), &[]);
    daemon.wait_for_nth_log("serial port open", 3, WAIT);

    for (id, secret, sensor) in &mut serial {
        assert_eq!(sensor.ask(&format!("AUTH {id} {secret}")), "OK", "{id}");
    }
    let url = |secret: &str| format!("coap://127.0.0.1:{port}/m/dom/c/lamps/cmd?auth={secret}");
    let mut control = Observer::start("coap-client-notls", &[], &url(&setup.secret));
    let mut observers: Vec<Observer> = coap
        .iter()
        .map(|(_, secret)| Observer::start("coap-client-notls", &[], &url(secret)))
        .collect();

    // Before: every session gets commands (each observer until it has one: registrations
    // complete in their own time).
    command_seen_by_control(&setup, &mut control, "before", &mut daemon);
    let topic = format!("m/dom/c/{}/cmd", setup.channel_id);
    for (o, (id, _)) in observers.iter_mut().zip(&coap) {
        let got = setup.command_until(&topic, "before", Duration::from_secs(30), |wait| {
            o.saw("before", wait)
        });
        assert!(got, "{id} never registered: {:?}", o.seen);
    }
    for (id, _, sensor) in &mut serial {
        let line = sensor.line();
        assert_eq!(line, "CMD lamps before", "{id}");
    }

    // Revoke each pair's grant in its own way; the daemon ends each observation and serial
    // downlink (its log says so).
    for (i, how) in HOW.iter().enumerate() {
        revoke(&setup, how, &coap[i].0);
        revoke(&setup, how, &serial[i].0);
    }
    daemon.wait_for_nth_log(
        "observation ended: the client lost its subscribe grant",
        3,
        WAIT,
    );
    daemon.wait_for_nth_log(
        "serial downlink ended: the client lost its subscribe grant",
        3,
        WAIT,
    );

    // After: the control still gets a new command, no revoked session does.
    command_seen_by_control(&setup, &mut control, "after-revoke", &mut daemon);
    for (o, (id, _)) in observers.iter_mut().zip(&coap) {
        assert!(
            !o.saw("after-revoke", Duration::from_secs(1)),
            "{id} still got a command: {:?}",
            o.seen
        );
    }
    for (id, _, sensor) in &mut serial {
        let lines = serial_lines(sensor, Duration::from_secs(1));
        assert!(
            !lines.iter().any(|l| l.contains("after-revoke")),
            "{id} still got a command: {lines:?}"
        );
    }
    // A disabled client that comes back does not find the commands of its revoked time kept
    // for it: a poll answers empty.
    let reloads = daemon
        .log()
        .iter()
        .filter(|l| l.contains("auth store reloaded"))
        .count();
    setup.cli(&["client", "enable", "coap-dis"]);
    daemon.wait_for_nth_log("auth store reloaded", reloads + 1, WAIT);
    let poll = system_tests::coap_client("coap-client-notls", &["-m", "get", &url(&coap[0].1)]);
    assert!(!poll.contains("4.0"), "the poll was refused: {poll}");
    assert!(
        !poll.contains("after-revoke"),
        "kept for a disabled client: {poll}"
    );
}

#[test]
fn a_coaps_session_ends_when_its_subscribe_grant_is_removed() {
    let setup = Downlink::new();
    let dir = setup.path().to_owned();
    let pki = dir.join("dtls-pki");
    stdout_of(
        system_tests::edgegw(&dir)
            .args(["certs", "init-dev"])
            .arg(&pki),
    );
    let (psk_id, secret) = add_client(&setup, "psk-1");
    let coaps = free_udp_port();
    let (mut daemon, port) = setup.run(
        None,
        &[
            ("EDGEGW_COAP_DTLS_BIND", &format!("127.0.0.1:{coaps}")),
            (
                "EDGEGW_COAP_DTLS_CERT",
                pki.join("dtls-server.crt").to_str().expect("utf8"),
            ),
            (
                "EDGEGW_COAP_DTLS_KEY",
                pki.join("dtls-server.key").to_str().expect("utf8"),
            ),
        ],
    );
    let mut control = Observer::start(
        "coap-client-notls",
        &[],
        &format!(
            "coap://127.0.0.1:{port}/m/dom/c/lamps/cmd?auth={}",
            setup.secret
        ),
    );
    let mut psk = Observer::start(
        "coap-client-openssl",
        &["-u", "psk-1", "-k", &secret],
        &format!("coaps://127.0.0.1:{coaps}/m/dom/c/lamps/cmd"),
    );
    let topic = format!("m/dom/c/{}/cmd", setup.channel_id);
    let got = setup.command_until(&topic, "before", Duration::from_secs(30), |wait| {
        psk.saw("before", wait)
    });
    assert!(
        got,
        "no command over CoAPS; log:\n{}",
        daemon.log().join("\n")
    );

    setup.cli(&["disconnect", "psk-1", "lamps", "--subscribe"]);
    daemon.wait_for_log(
        "observation ended: the client lost its subscribe grant",
        WAIT,
    );
    let ended = daemon.wait_for_log("dtls session ended", WAIT);
    assert!(ended.contains(&psk_id), "{ended}");
    command_seen_by_control(&setup, &mut control, "after-revoke", &mut daemon);
    assert!(
        !psk.saw("after-revoke", Duration::from_secs(1)),
        "the CoAPS session still got a command: {:?}",
        psk.seen
    );
}
