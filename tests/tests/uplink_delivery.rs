//! The outbox + uplink against a real mosquitto with mutual TLS: 10,000 messages through the
//! Ingest API arrive in order per channel with no loss; a 30 s broker outage mid-stream loses
//! nothing; downlink commands reach a subscription.

use std::time::Duration;

use system_tests::mosquitto::{Mosquitto, Subscriber, publish};
use system_tests::pki::Pki;
use system_tests::uplink::{Gateway, all_arrived, check_delivery, config, env, message};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn ten_thousand_messages_arrive_in_order_per_channel_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut sub = Subscriber::start(&broker, &pki, "m/#");
    let rt = runtime();
    let cfg = config(dir.path(), &env(dir.path(), &broker, &pki));
    const N: u64 = 10_000;
    let gw = rt.block_on(async {
        let gw = Gateway::start(&cfg);
        let mut pending = Vec::new();
        for i in 0..N {
            loop {
                match gw.pipeline.outbox.accept(message(i, 7)) {
                    Ok(r) => {
                        pending.push(r);
                        break;
                    }
                    Err(gateway::outbox::IngestError::Busy { .. }) => {
                        for r in pending.drain(..) {
                            r.await.unwrap();
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        for r in pending {
            r.await.unwrap();
        }
        gw
    });
    let arrived = sub.wait_until(Duration::from_secs(120), |lines| {
        check_delivery(lines, 0..N).missing.is_empty()
    });
    let d = check_delivery(&sub.lines, 0..N);
    assert!(
        arrived,
        "{} of {N} missing (first: {:?}); gateway: {}; broker log:\n{}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(10)],
        serde_json::to_string(&gw.pipeline.status.report()).unwrap(),
        broker
            .log()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        d.out_of_order.is_empty(),
        "out of order: {:?}",
        &d.out_of_order[..d.out_of_order.len().min(10)]
    );
    assert_eq!(d.duplicates, 0, "no reconnect happened, so no duplicates");
    // Every PUBACK deletes: the outbox drains to empty.
    let drained = rt.block_on(async {
        for _ in 0..100 {
            if gw.pipeline.outbox.stats().queued == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(
        drained,
        "outbox still holds {:?}",
        gw.pipeline.outbox.stats()
    );
    let report = gw.pipeline.status.report();
    assert_eq!(report.uplink.delivered_total, N);
    rt.block_on(gw.stop());
    // A clean shutdown leaves the retained `offline` on the status topic.
    let mut status = Subscriber::start(&broker, &pki, "edgegw/gw-test/status");
    assert!(
        status.wait_until(Duration::from_secs(5), |l| l
            .iter()
            .any(|x| x == "edgegw/gw-test/status offline")),
        "{:?}",
        status.lines
    );
}

#[test]
fn a_broker_outage_of_30_seconds_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let mut broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut sub = Subscriber::start(&broker, &pki, "m/#");
    let rt = runtime();
    let cfg = config(dir.path(), &env(dir.path(), &broker, &pki));
    let gw = rt.block_on(async { Gateway::start(&cfg) });
    const N: u64 = 3000;
    // First third with the broker up.
    rt.block_on(async {
        for i in 0..N / 3 {
            gw.ingest(message(i, 5)).await;
        }
    });
    broker.stop();
    let outage = std::time::Instant::now();
    // Second third while it is down: accepted, durable, queued.
    rt.block_on(async {
        for i in N / 3..2 * N / 3 {
            gw.ingest(message(i, 5)).await;
        }
    });
    let queued_during_outage = gw.pipeline.outbox.stats().queued;
    assert!(
        queued_during_outage >= N / 3,
        "queued {queued_during_outage}"
    );
    let left = Duration::from_secs(30).saturating_sub(outage.elapsed());
    std::thread::sleep(left); // the outage itself is the thing under test
    let status = gw.pipeline.status.report();
    assert_ne!(
        status.uplink.state,
        gateway::uplink::UplinkState::Connected,
        "uplink claims to be connected to a stopped broker"
    );
    broker.restart();
    rt.block_on(async {
        for i in 2 * N / 3..N {
            gw.ingest(message(i, 5)).await;
        }
    });
    let arrived = sub.wait_until(Duration::from_secs(90), |lines| {
        check_delivery(lines, 0..N).missing.is_empty()
    });
    let d = check_delivery(&sub.lines, 0..N);
    assert!(
        arrived,
        "{} missing: {:?}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(10)]
    );
    assert!(d.out_of_order.is_empty(), "{:?}", d.out_of_order);
    eprintln!(
        "broker outage: {} received, {} duplicates",
        d.received, d.duplicates
    );
    rt.block_on(gw.stop());
}

#[test]
fn downlink_commands_reach_the_subscribed_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let rt = runtime();
    let cfg = config(dir.path(), &env(dir.path(), &broker, &pki));
    let gw = rt.block_on(async { Gateway::start(&cfg) });
    let mut sensor = gw.pipeline.downlink.subscribe("sensor-1", "ch1");
    gw.pipeline
        .channels
        .send_replace(std::sync::Arc::new(vec![gateway::downlink::ChannelRef {
            id: "ch1".into(),
            name: "lights".into(),
            domain_id: "dom".into(),
            upstream_id: "ch1".into(),
        }]));
    // The subscription goes out asynchronously; publish until the command comes through.
    let cmd = rt
        .block_on(async {
            for _ in 0..50 {
                publish(&broker, &pki, "m/dom/c/ch1/cmd/lamp", "on");
                if let Ok(Some(cmd)) =
                    tokio::time::timeout(Duration::from_millis(200), sensor.recv()).await
                {
                    return Some(cmd);
                }
            }
            None
        })
        .expect("no command arrived");
    assert_eq!(cmd.channel_id, "ch1");
    assert_eq!(cmd.subtopic, "lamp");
    assert_eq!(&cmd.payload[..], b"on");
    // Another channel's commands do not reach it.
    publish(&broker, &pki, "m/dom/c/ch2/cmd/lamp", "off");
    assert!(sensor.try_recv().is_none());
    rt.block_on(gw.stop());
}

#[test]
fn mqtt_5_delivers_too() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut sub = Subscriber::start(&broker, &pki, "m/#");
    let rt = runtime();
    let mut vars = env(dir.path(), &broker, &pki);
    vars.push(("EDGEGW_UPLINK_MQTT_VERSION".into(), "5".into()));
    let cfg = config(dir.path(), &vars);
    let gw = rt.block_on(async {
        let gw = Gateway::start(&cfg);
        for i in 0..500 {
            gw.ingest(message(i, 3)).await;
        }
        gw
    });
    assert!(sub.wait_until(Duration::from_secs(30), |l| {
        check_delivery(l, 0..500).missing.is_empty()
    }));
    let d = check_delivery(&sub.lines, 0..500);
    assert!(d.out_of_order.is_empty());
    assert!(
        broker.log().contains("as gw-test (p5"),
        "not MQTT 5:\n{}",
        broker.log()
    );
    rt.block_on(gw.stop());
}

/// The broker's ACL admits channels ch0 and ch2 but not ch1 for the gateway (CN uplink-1).
const ACL_WITHOUT_CH1: &str = "user uplink-1\n\
    topic write m/dom/c/ch0/#\n\
    topic write m/dom/c/ch2/#\n\
    topic readwrite edgegw/#\n\
    user subscriber\n\
    topic read #\n\
    topic readwrite probe/#\n";

#[test]
fn mqtt_5_messages_the_broker_refuses_stay_queued_do_not_stall_the_rest_and_are_resent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start_with_acl(&dir.path().join("broker"), &pki, ACL_WITHOUT_CH1);
    let mut sub = Subscriber::start(&broker, &pki, "m/#");
    let rt = runtime();
    let mut vars = env(dir.path(), &broker, &pki);
    vars.push(("EDGEGW_UPLINK_MQTT_VERSION".into(), "5".into()));
    // A window smaller than the refused messages: were refused entries to keep their slot,
    // ch0 and ch2 would stall behind them.
    vars.push(("EDGEGW_UPLINK_INFLIGHT".into(), "4".into()));
    vars.push(("EDGEGW_UPLINK_REFUSED_RETRY".into(), "2s".into()));
    let cfg = config(dir.path(), &vars);
    const N: u64 = 300;
    let gw = rt.block_on(async {
        let gw = Gateway::start(&cfg);
        for i in 0..N {
            gw.ingest(message(i, 3)).await;
        }
        gw
    });
    let admitted: Vec<u64> = (0..N).filter(|i| i % 3 != 1).collect();
    let refused: Vec<u64> = (0..N).filter(|i| i % 3 == 1).collect();
    assert!(
        sub.wait_until(Duration::from_secs(30), |l| all_arrived(
            l,
            admitted.clone()
        )),
        "ch0/ch2 stalled behind refused ch1: {} missing; {:?}; broker log:\n{}",
        check_delivery(&sub.lines, admitted.clone()).missing.len(),
        gw.pipeline.status.report().uplink,
        broker.log()
    );
    let d = check_delivery(&sub.lines, refused.clone());
    assert_eq!(d.missing.len(), refused.len(), "the ACL let ch1 through");
    // The refusals' PUBACKs may still be in flight when the others have arrived: wait for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut report = gw.pipeline.status.report();
    while report.uplink.refused_total < refused.len() as u64 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        report = gw.pipeline.status.report();
    }
    assert!(
        report.uplink.refused_total >= refused.len() as u64,
        "{report:?}"
    );
    // Acks of the delivered ones are committed in batches: wait for the last batch.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.pipeline.outbox.stats().queued > refused.len() as u64
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        gw.pipeline.outbox.stats().queued,
        refused.len() as u64,
        "refused messages must stay in the outbox, and only they"
    );
    // The broker admits ch1 now: the held messages go out on the next retry round, in order.
    broker.reload_acl(&ACL_WITHOUT_CH1.replace("ch2/#\n", "ch2/#\ntopic write m/dom/c/ch1/#\n"));
    assert!(
        sub.wait_until(Duration::from_secs(30), |l| all_arrived(l, 0..N)),
        "refused messages were not sent again: {:?} missing",
        check_delivery(&sub.lines, 0..N).missing.len()
    );
    let d = check_delivery(&sub.lines, 0..N);
    assert!(d.out_of_order.is_empty(), "{:?}", d.out_of_order);
    rt.block_on(gw.stop());
}

#[test]
fn commands_sent_while_the_gateway_is_offline_arrive_when_it_is_back_mqtt_5() {
    commands_sent_while_offline_arrive("5");
}

#[test]
fn commands_sent_while_the_gateway_is_offline_arrive_when_it_is_back_mqtt_3() {
    commands_sent_while_offline_arrive("3");
}

fn commands_sent_while_offline_arrive(mqtt_version: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let mut broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let rt = runtime();
    let mut vars = env(dir.path(), &broker, &pki);
    vars.push(("EDGEGW_UPLINK_MQTT_VERSION".into(), mqtt_version.into()));
    let cfg = config(dir.path(), &vars);
    let lights = || {
        std::sync::Arc::new(vec![gateway::downlink::ChannelRef {
            id: "ch1".into(),
            name: "lights".into(),
            domain_id: "dom".into(),
            upstream_id: "ch1".into(),
        }])
    };
    // First run: the gateway subscribes for ch1's commands (the broker keeps that session).
    let gw = rt.block_on(async { Gateway::start(&cfg) });
    let mut sensor = gw.pipeline.downlink.subscribe("sensor-1", "ch1");
    gw.pipeline.channels.send_replace(lights());
    let subscribed = rt.block_on(async {
        for _ in 0..50 {
            publish(&broker, &pki, "m/dom/c/ch1/cmd/probe", "probe");
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), sensor.recv()).await
            {
                return true;
            }
        }
        false
    });
    assert!(subscribed, "the first run never got a command");
    drop(sensor);
    rt.block_on(gw.stop());
    // Offline: a command is published upstream, then the broker restarts (its persistence
    // keeps the session) so that the new gateway's sensor is ready before the uplink connects.
    publish(&broker, &pki, "m/dom/c/ch1/cmd/lamp", "on");
    broker.stop();
    let gw = rt.block_on(async { Gateway::start(&cfg) });
    let mut sensor = gw.pipeline.downlink.subscribe("sensor-1", "ch1");
    gw.pipeline.channels.send_replace(lights());
    broker.restart();
    let cmd = rt
        .block_on(async {
            loop {
                match tokio::time::timeout(Duration::from_secs(20), sensor.recv()).await {
                    Ok(Some(cmd)) if cmd.subtopic == "probe" => {}
                    Ok(Some(cmd)) => return Some(cmd),
                    _ => return None,
                }
            }
        })
        .expect("the command sent while the gateway was offline never arrived");
    assert_eq!(cmd.subtopic, "lamp");
    assert_eq!(&cmd.payload[..], b"on");
    rt.block_on(gw.stop());
}
