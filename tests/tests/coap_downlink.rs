//! Downlink end to end: a command published on the upstream broker (real mosquitto, mTLS)
//! reaches a CoAP sensor that registered Observe on its channel, as a notification to
//! libcoap's `coap-client-openssl -s`.

use std::time::Duration;

use system_tests::downlink::{Downlink, Observer};

#[test]
fn a_broker_command_reaches_an_observing_coap_sensor() {
    let setup = Downlink::new();
    let (channel_id, secret) = (&setup.channel_id, &setup.secret);
    let (mut daemon, port) = setup.run(None, &[]);

    let mut observer = Observer::start(
        "coap-client-openssl",
        &[],
        &format!("coap://127.0.0.1:{port}/m/dom/c/lamps/cmd?auth={secret}"),
    );
    let got = setup.command_until(
        &format!("m/dom/c/{channel_id}/cmd"),
        "lamp-on",
        Duration::from_secs(30),
        |wait| observer.saw("lamp-on", wait),
    );
    assert!(
        got,
        "no notification ({:?}); log:\n{}",
        observer.seen,
        daemon.log().join("\n")
    );
    drop(observer);
    // The delivery is counted for the adapter (metrics): `edgegw status --json`.
    let status = setup.cli(&["status"]);
    let delivered = status["adapters"]["coap"]["downlink_delivered"]
        .as_u64()
        .expect("adapters.coap.downlink_delivered");
    assert!(delivered >= 1, "{status}");
    assert_eq!(status["adapters"]["coaps"]["downlink_delivered"], 0);
}
