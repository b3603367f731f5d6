use std::net::{IpAddr, Ipv4Addr};

use super::testkit::{Fixture, LONELY_SECRET, OFF_SECRET, OutboxState, SECRET};
use super::*;

const PEER: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));

fn target(channel: &str, subtopic: &str) -> Target {
    Target {
        domain: Some("dom".into()),
        channel: channel.into(),
        subtopic: subtopic.into(),
    }
}

fn secret(s: &str) -> Credentials<'_> {
    Credentials::Secret(s.as_bytes())
}

#[tokio::test]
async fn an_admitted_message_is_durable_with_the_channel_domain_and_normalised_subtopic() {
    let f = Fixture::new(OutboxState::Open);
    let admitted = f
        .intake
        .admit(
            PEER,
            secret(SECRET),
            &target("temps", "room.1"),
            Op::Publish,
        )
        .expect("admitted");
    assert_eq!(admitted.client.identity, "sensor-1");
    assert_eq!(admitted.domain_id, "dom");
    assert_eq!(admitted.subtopic, "room/1");
    let seq = f
        .intake
        .publish(
            admitted,
            Bytes::from_static(b"21.5"),
            Some("text/plain".into()),
        )
        .expect("accepted")
        .await
        .expect("durable");
    let entries = f.outbox.fetch_after(0, 10).expect("read");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].seq, seq);
    assert_eq!(entries[0].message.channel_id, f.channel_id);
    assert_eq!(&entries[0].message.payload[..], b"21.5");
}

#[test]
fn every_refusal_of_admission_is_one_variant() {
    let f = Fixture::new(OutboxState::Open);
    let t = target("temps", "");
    let admit = |c: Credentials<'_>, t: &Target| f.intake.admit(PEER, c, t, Op::Publish).err();
    assert_eq!(admit(Credentials::None, &t), Some(Refusal::Unauthenticated));
    assert_eq!(
        admit(secret("not-a-secret"), &t),
        Some(Refusal::Unauthenticated)
    );
    // Disabled: the same answer as a wrong secret.
    assert_eq!(
        admit(secret(OFF_SECRET), &t),
        Some(Refusal::Unauthenticated)
    );
    assert_eq!(admit(secret(LONELY_SECRET), &t), Some(Refusal::Forbidden));
    assert_eq!(
        admit(secret(SECRET), &target("no-such-channel", "")),
        Some(Refusal::Forbidden)
    );
    let mut other_domain = target("temps", "");
    other_domain.domain = Some("other".into());
    assert_eq!(
        admit(secret(SECRET), &other_domain),
        Some(Refusal::Forbidden)
    );
    assert_eq!(
        admit(secret(SECRET), &target("temps", "a+b")),
        Some(Refusal::BadRequest)
    );
}

#[test]
fn a_full_outbox_is_busy_and_a_closed_one_unavailable() {
    for (state, expected) in [
        (OutboxState::Full, RefusalKind::Busy),
        (OutboxState::Closed, RefusalKind::Unavailable),
    ] {
        let f = Fixture::new(state);
        let admitted = f
            .intake
            .admit(PEER, secret(SECRET), &target("temps", ""), Op::Publish)
            .expect("admitted");
        let refusal = f
            .intake
            .publish(admitted, Bytes::from_static(b"x"), None)
            .expect_err("refused");
        assert_eq!(refusal.kind(), expected, "{state:?}");
        assert!(refusal.retry_after().is_some(), "{state:?}: {refusal:?}");
    }
}

#[test]
fn storage_failure_and_shutdown_are_the_same_refusal() {
    let storage = ingest_refusal(&IngestError::storage_for_tests());
    let closed = ingest_refusal(&IngestError::Closed);
    assert_eq!(storage.kind(), RefusalKind::Unavailable);
    assert_eq!(closed.kind(), RefusalKind::Unavailable);
    assert_eq!(storage.retry_after(), Some(STORAGE_RETRY_AFTER));
    assert_eq!(closed.retry_after(), Some(SHUTDOWN_RETRY_AFTER));
    assert_eq!(
        ingest_refusal(&IngestError::TooLarge { max: 9 }),
        Refusal::TooLarge { max: 9 }
    );
}

#[test]
fn an_authenticated_session_is_not_throttled_but_still_rechecked() {
    let config = crate::config::AuthConfig {
        failure_burst: 1,
        ..crate::config::AuthConfig::default()
    };
    let f = Fixture::with_auth(OutboxState::Open, &config);
    // Somebody guesses sensor-1's secret under its identity until it is throttled.
    for _ in 0..3 {
        let _ = f.intake.authenticate(
            PEER,
            Credentials::IdentitySecret {
                identity: "sensor-1",
                secret: b"wrong-guess-000000",
            },
        );
    }
    assert!(matches!(
        f.intake.authenticate(
            PEER,
            Credentials::IdentitySecret {
                identity: "sensor-1",
                secret: SECRET.as_bytes(),
            },
        ),
        Err(Refusal::Throttled { .. })
    ));
    // Its live session (DTLS principal, serial AUTH) keeps working ...
    let me = crate::auth::ClientRef {
        id: f.sensor_id.clone(),
        identity: "sensor-1".into(),
    };
    let t = target("temps", "");
    assert!(
        f.intake
            .admit(PEER, Credentials::Session(&me), &t, Op::Publish)
            .is_ok()
    );
    // ... until the client is disabled.
    f.change(|db| {
        db.set_client_enabled("sensor-1", false).expect("disable");
    });
    assert_eq!(
        f.intake
            .admit(PEER, Credentials::Session(&me), &t, Op::Publish)
            .err(),
        Some(Refusal::Unauthenticated)
    );
}

#[test]
fn a_bound_port_needs_an_enabled_client() {
    let f = Fixture::new(OutboxState::Open);
    assert!(
        f.intake
            .authenticate(None, Credentials::Bound("sensor-1"))
            .is_ok()
    );
    assert_eq!(
        f.intake
            .authenticate(None, Credentials::Bound("sensor-off"))
            .err(),
        Some(Refusal::Unauthenticated)
    );
    assert_eq!(
        f.intake
            .authenticate(None, Credentials::Bound("nobody"))
            .err(),
        Some(Refusal::Unauthenticated)
    );
}

/// Issues 20.13 / 21.4: a channel without a domain goes upstream in `gateway.domain_id`
/// whichever path a sensor used; a path naming another domain is refused, and with no domain
/// at all the path's domain is accepted but never becomes the upstream domain.
#[test]
fn the_upstream_domain_is_the_channels_effective_domain_never_the_paths() {
    let f = Fixture::new(OutboxState::Open);
    let demo_secret = f.auth.ensure_demo("").unwrap().expect("demo created");
    f.auth.reload_now().unwrap();
    let at = |domain: Option<&str>| Target {
        domain: domain.map(str::to_owned),
        channel: crate::auth::DEMO_CHANNEL.into(),
        subtopic: String::new(),
    };
    let with_gw =
        Intake::new(f.auth.clone(), f.outbox.clone(), f.hub.clone()).with_gateway_domain("gw-dom");
    let admit =
        |intake: &Intake, t: &Target| intake.admit(PEER, secret(&demo_secret), t, Op::Publish);
    assert_eq!(
        admit(&with_gw, &at(Some("gw-dom"))).unwrap().domain_id,
        "gw-dom"
    );
    assert_eq!(admit(&with_gw, &at(None)).unwrap().domain_id, "gw-dom");
    assert_eq!(
        admit(&with_gw, &at(Some("other-tenant"))),
        Err(Refusal::Forbidden)
    );
    let no_domain = Intake::new(f.auth.clone(), f.outbox.clone(), f.hub.clone());
    assert_eq!(
        admit(&no_domain, &at(Some("other-tenant")))
            .unwrap()
            .domain_id,
        ""
    );
    assert_eq!(admit(&no_domain, &at(None)).unwrap().domain_id, "");
}

/// `hc/<domain>`: the gateway's domain, or a domain of one of the client's channels; another
/// domain is unauthenticated without charging the throttle (the secret was right); a session
/// client that was disabled since is refused.
#[test]
fn health_check_is_authentication_in_a_domain() {
    let f = Fixture::new(OutboxState::Open);
    let intake = f.intake.clone().with_gateway_domain("gw-dom");
    assert!(intake.check_health(PEER, secret(SECRET), "gw-dom").is_ok());
    assert!(intake.check_health(PEER, secret(SECRET), "dom").is_ok());
    for _ in 0..20 {
        assert_eq!(
            intake.check_health(PEER, secret(SECRET), "elsewhere"),
            Err(Refusal::Unauthenticated)
        );
    }
    // Not throttled by the wrong-domain answers above.
    assert!(intake.check_health(PEER, secret(SECRET), "dom").is_ok());
    // Connected to nothing: only the gateway's domain.
    assert!(
        intake
            .check_health(PEER, secret(LONELY_SECRET), "gw-dom")
            .is_ok()
    );
    assert_eq!(
        intake.check_health(PEER, secret(LONELY_SECRET), "dom"),
        Err(Refusal::Unauthenticated)
    );
    // No domain anywhere (no gateway domain, a client without channels): any domain.
    assert!(
        f.intake
            .check_health(PEER, secret(LONELY_SECRET), "whatever")
            .is_ok()
    );
    assert_eq!(
        f.intake
            .check_health(PEER, secret(OFF_SECRET), "dom")
            .map(|c| c.identity),
        Err(Refusal::Unauthenticated)
    );
    let client = f.intake.authenticate(PEER, secret(SECRET)).expect("client");
    f.change(|db| {
        db.set_client_enabled("sensor-1", false).expect("disable");
    });
    assert_eq!(
        f.intake
            .check_health(PEER, Credentials::Session(&client), "dom")
            .map(|c| c.identity),
        Err(Refusal::Unauthenticated)
    );
}

/// Issue 20.5: failures spoofed from a sensor's own address (plain CoAP proves no source) use
/// up that address's budget, but the sensor's right credentials still go through there; a
/// client that never authenticated from that address stays throttled, right secret or not.
#[test]
fn failures_spoofed_from_a_sensors_address_do_not_lock_it_out() {
    let config = crate::config::AuthConfig {
        failure_burst: 2,
        ..crate::config::AuthConfig::default()
    };
    let f = Fixture::with_auth(OutboxState::Open, &config);
    assert!(f.intake.authenticate(PEER, secret(SECRET)).is_ok());
    for _ in 0..5 {
        let _ = f.intake.authenticate(PEER, secret("spoofed-junk-00000000"));
    }
    assert!(matches!(
        f.intake.authenticate(PEER, secret("spoofed-junk-00000000")),
        Err(Refusal::Throttled { .. })
    ));
    assert!(f.intake.authenticate(PEER, secret(SECRET)).is_ok());
    let by_identity = Credentials::IdentitySecret {
        identity: "sensor-1",
        secret: SECRET.as_bytes(),
    };
    assert!(f.intake.authenticate(PEER, by_identity).is_ok());
    assert!(matches!(
        f.intake.authenticate(PEER, secret(LONELY_SECRET)),
        Err(Refusal::Throttled { .. })
    ));
    let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8)));
    assert!(
        f.intake
            .authenticate(elsewhere, secret(LONELY_SECRET))
            .is_ok()
    );
}
