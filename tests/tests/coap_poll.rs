//! Polling for commands: a sensor without Observe support sends `GET` on its channel path and
//! gets the oldest command waiting for it (2.05 with the payload), once; with none waiting,
//! 2.05 with an empty payload. Commands come from the upstream broker (real mosquitto, mTLS),
//! polled with libcoap's `coap-client-openssl` over plain CoAP and CoAPS-PSK.

use std::process::Command;
use std::time::{Duration, Instant};

use system_tests::downlink::Downlink;
use system_tests::mosquitto::publish;
use system_tests::pki::self_signed;
use system_tests::{Daemon, edgegw, free_udp_port};

/// One confirmable GET; (stdout = the payload, stderr = libcoap's diagnostics).
fn get(args: &[&str]) -> (String, String) {
    let out = Command::new("timeout")
        .arg("30")
        .arg("coap-client-openssl")
        .args(["-B", "10", "-m", "get"])
        .args(args)
        .output()
        .expect("coap-client-openssl");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls until a non-empty payload comes back (the command travels broker → gateway
/// asynchronously) or the deadline passes.
fn poll_until_command(args: &[&str]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (payload, err) = get(args);
        assert!(
            !err.contains("4.0") && !err.contains("5.0"),
            "poll refused: {err}"
        );
        if !payload.is_empty() {
            return Some(payload);
        }
    }
    None
}

#[test]
fn a_sensor_without_observe_polls_each_command_once_over_coap_and_coaps_psk() {
    let setup = Downlink::new();
    let (channel_id, secret) = (&setup.channel_id, setup.secret.as_str());
    let other = setup.cli(&["client", "add", "lamp-2"]);
    let other_secret = other["secret"].as_str().expect("secret").to_owned();
    setup.cli(&["connect", "lamp-2", "lamps", "--publish"]);

    let server = self_signed(&setup.path().join("dtls"), "edgegw", 30);
    let (coap, coaps) = (free_udp_port(), free_udp_port());
    let mut cmd = edgegw(setup.path());
    cmd.arg("run")
        .envs(setup.vars.iter().cloned())
        .env("EDGEGW_GATEWAY_LOG_LEVEL", "info,gateway::uplink=debug")
        .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{coap}"))
        .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
        .env("EDGEGW_COAP_DTLS_CERT", &server.cert)
        .env("EDGEGW_COAP_DTLS_KEY", &server.key);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("coaps listening", Duration::from_secs(30));
    daemon.wait_for_log("uplink: subscribed for commands", Duration::from_secs(30));

    let plain_url = format!("coap://127.0.0.1:{coap}/m/dom/c/lamps/cmd?auth={secret}");
    let plain: Vec<&str> = vec![&plain_url];
    let coaps_url = format!("coaps://127.0.0.1:{coaps}/m/dom/c/lamps/cmd");
    let psk: Vec<&str> = vec!["-u", "lamp-1", "-k", secret, &coaps_url];
    let topic = format!("m/dom/c/{channel_id}/cmd");

    // Published before the sensor ever polled: kept for it (it is subscribe-connected).
    publish(&setup.broker, &setup.pki, &topic, "plain-1");
    let got = poll_until_command(&plain);
    assert_eq!(
        got.as_deref(),
        Some("plain-1"),
        "no command over CoAP; log:\n{}",
        daemon.log().join("\n")
    );
    let (again, err) = get(&plain);
    assert_eq!(again, "", "a command was handed out twice: {err}");

    publish(&setup.broker, &setup.pki, &topic, "psk-1");
    publish(&setup.broker, &setup.pki, &format!("{topic}/led"), "psk-2");
    let got = poll_until_command(&psk);
    assert_eq!(
        got.as_deref(),
        Some("psk-1"),
        "no command over CoAPS-PSK; log:\n{}",
        daemon.log().join("\n")
    );
    assert_eq!(
        poll_until_command(&psk).as_deref(),
        Some("psk-2"),
        "the second command (another subtopic) waits, in order"
    );
    let (again, err) = get(&psk);
    assert_eq!(again, "", "a command was handed out twice: {err}");

    // The same checks as Observe: wrong secret 4.01, no subscribe permission 4.03.
    let (_, err) = get(&[&format!(
        "coap://127.0.0.1:{coap}/m/dom/c/lamps?auth=not-the-secret"
    )]);
    assert!(err.contains("4.01"), "wrong secret: {err}");
    let (_, err) = get(&[&format!(
        "coap://127.0.0.1:{coap}/m/dom/c/lamps?auth={other_secret}"
    )]);
    assert!(err.contains("4.03"), "publish-only client: {err}");
}
