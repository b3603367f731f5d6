//! Issues 21.4 / 20.13: one channel has one upstream topic whichever adapter and path a
//! sensor used. A channel without a domain goes upstream in `gateway.domain_id` over CoAP's
//! SuperMQ path and legacy path, the HTTP adapter (channel by name and by id, with a
//! subtopic) and serial alike; a path naming another domain is refused (4.03 / 403) and never
//! chooses the upstream domain; a command on that one topic's `/cmd` reaches an observing
//! CoAP sensor and a serial sensor. Real mosquitto with mTLS, libcoap's `coap-client-notls`,
//! curl, a pty pair.

use std::time::Duration;

use system_tests::api::Api;
use system_tests::downlink::{Downlink, Observer};
use system_tests::pty::{self, Sensor, WAIT};

const GW_DOMAIN: &str = "gw-dom";

fn coap(args: &[&str]) -> String {
    system_tests::coap_client("coap-client-notls", args)
}

#[test]
fn every_path_of_a_channel_goes_upstream_on_one_topic_and_commands_come_back_on_it() {
    // Channel `lamps` with an empty domain_id (created with `--domain ""`).
    let setup = Downlink::with_domains("", Some(GW_DOMAIN));
    let (id, secret) = (setup.channel_id.clone(), setup.secret.clone());
    let link = setup.path().join("ttySENSOR");
    let mut sensor = Sensor::plug_in(&link);
    let config = pty::port_config(setup.path(), &[&link]);
    // The serial sensor is a client of its own: a client has one downlink mailbox per
    // channel, which the CoAP observer below takes.
    let serial = setup.cli(&["client", "add", "lamp-2"]);
    let serial_secret = serial["secret"].as_str().expect("secret").to_owned();
    setup.cli(&["connect", "lamp-2", "lamps"]);

    let mut sub = system_tests::mosquitto::Subscriber::start(&setup.broker, &setup.pki, "#");
    let (mut daemon, port) = setup.run(Some(&config), &[]);
    daemon.wait_for_log("serial port open", WAIT);
    let api = Api::from_log(&mut daemon);

    // CoAP, both paths.
    let url = |path: &str| format!("coap://127.0.0.1:{port}/{path}?auth={secret}");
    coap(&[
        "-m",
        "post",
        "-e",
        "via-supermq-path",
        &url(&format!("m/{GW_DOMAIN}/c/lamps")),
    ]);
    coap(&[
        "-m",
        "post",
        "-e",
        "via-legacy-path",
        &url("channels/lamps/messages"),
    ]);
    let foreign = coap(&[
        "-m",
        "post",
        "-e",
        "via-foreign",
        &url("m/other-tenant/c/lamps"),
    ]);
    assert!(
        foreign.contains("4.03"),
        "foreign domain not refused: {foreign}"
    );
    // HTTP adapter: by name, by id with a subtopic, and a foreign domain.
    let client_auth = format!("Client {secret}");
    for (path, body, want) in [
        (format!("/m/{GW_DOMAIN}/c/lamps"), "via-http-name", 202),
        (format!("/m/{GW_DOMAIN}/c/{id}/sub/t"), "via-http-id", 202),
        (
            "/m/other-tenant/c/lamps".to_owned(),
            "via-http-foreign",
            403,
        ),
    ] {
        let mut cmd = api.curl("POST", &path, Some(&client_auth));
        cmd.args(["--data-binary", body]);
        let r = system_tests::api::run(cmd);
        assert_eq!(r.status, want, "{path}: {}", r.text);
    }
    // Serial.
    assert_eq!(sensor.ask(&format!("AUTH lamp-2 {serial_secret}")), "OK");
    let answer = sensor.ask("PUB lamps via-serial");
    assert!(answer.starts_with("OK "), "{answer}");

    let topic = format!("m/{GW_DOMAIN}/c/{id}");
    let want = [
        format!("{topic} via-supermq-path"),
        format!("{topic} via-legacy-path"),
        format!("{topic} via-http-name"),
        format!("{topic}/sub/t via-http-id"),
        format!("{topic} via-serial"),
    ];
    let seen = sub.wait_until(Duration::from_secs(30), |l| {
        want.iter().all(|w| l.contains(w))
    });
    assert!(seen, "not all on {topic}: {:?}", sub.lines);
    assert!(
        !sub.lines
            .iter()
            .any(|l| l.contains("foreign") || l.contains("other-tenant")),
        "{:?}",
        sub.lines
    );

    // One command on that one topic reaches a sensor observing on the legacy path and the
    // serial sensor.
    let mut observer = Observer::start(
        "coap-client-notls",
        &[],
        &url("channels/lamps/messages/cmd"),
    );
    let got = setup.command_until(
        &format!("{topic}/cmd"),
        "one-topic-cmd",
        Duration::from_secs(30),
        |wait| observer.saw("one-topic-cmd", wait),
    );
    assert!(
        got,
        "command on {topic}/cmd not delivered to CoAP ({:?}); log:\n{}",
        observer.seen,
        daemon.log().join("\n")
    );
    // The serial session subscribed at AUTH, so it got every command published above.
    let line = sensor.line();
    assert_eq!(line, "CMD lamps one-topic-cmd");
}
