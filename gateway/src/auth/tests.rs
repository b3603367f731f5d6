use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::store::Db;
use super::*;

fn config() -> AuthConfig {
    AuthConfig::default()
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join(FILE_NAME);
    (dir, path)
}

/// Polls `cond` every 10 ms until it holds; false after `within`.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

const SECRET: &str = "0123456789abcdef-secret";

/// A store with client `s1` (secret SECRET) connected to `ch1` for publish only, and `ch2`.
fn provisioned(path: &Path) -> Db {
    let mut db = Db::open(path).unwrap();
    db.add_client("s1", None, Some(SECRET), None).unwrap();
    db.add_channel("ch1", "dom", None).unwrap();
    db.add_channel("ch2", "dom", None).unwrap();
    db.connect("s1", "ch1", true, false).unwrap();
    db
}

#[test]
fn creates_the_file_0600_in_a_0700_directory() {
    let (_dir, path) = tmp();
    let _store = AuthStore::open(&path, &config()).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// SHA-256 fingerprints of the recorded test certificates (lowercase hex, as the DTLS
/// listener computes them; records may be stored in either case).
const FP_0ABC: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
const FP_01: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

#[test]
fn authenticate_by_identity_secret_and_certificate() {
    let (_dir, path) = tmp();
    let mut db = provisioned(&path);
    let s1 = db.client("s1").unwrap();
    let now = store::now_unix();
    db.record_certificate(&CertificateRecord {
        serial_hex: "0A:BC".into(),
        client_id: s1.id.clone(),
        fingerprint_sha256_hex: FP_0ABC.to_ascii_uppercase(),
        not_before: now - 10,
        not_after: now + 3600,
        revoked_at: None,
    })
    .unwrap();
    db.record_certificate(&CertificateRecord {
        serial_hex: "01".into(),
        client_id: s1.id.clone(),
        fingerprint_sha256_hex: FP_01.into(),
        not_before: now - 7200,
        not_after: now - 3600,
        revoked_at: None,
    })
    .unwrap();
    let store = AuthStore::open(&path, &config()).unwrap();
    let me = ClientRef {
        id: s1.id.clone(),
        identity: "s1".into(),
    };
    assert_eq!(store.authenticate("s1", SECRET.as_bytes()).unwrap(), me);
    assert!(matches!(
        store.authenticate("s1", b"0123456789abcdef-secreT"),
        Err(Denied::BadSecret)
    ));
    let unknown = store.authenticate("nobody", SECRET.as_bytes()).unwrap_err();
    assert!(matches!(unknown, Denied::UnknownIdentity));
    // To a sensor both look the same.
    assert!(unknown.is_unauthenticated() && Denied::BadSecret.is_unauthenticated());
    assert_eq!(store.authenticate_secret(SECRET.as_bytes()).unwrap(), me);
    assert!(matches!(
        store.authenticate_secret(b"not-the-secret-at-all"),
        Err(Denied::BadSecret)
    ));
    assert_eq!(
        store
            .authenticate_certificate("s1", "0abc", FP_0ABC)
            .unwrap(),
        me
    );
    assert!(matches!(
        store.authenticate_certificate("s1", "01", FP_01),
        Err(Denied::CertExpired)
    ));
    assert!(matches!(
        store.authenticate_certificate("s1", "02", FP_0ABC),
        Err(Denied::CertUnknown)
    ));
    assert!(matches!(
        store.authenticate_certificate("other", "0abc", FP_0ABC),
        Err(Denied::CertUnknown)
    ));
    // The recorded serial on a certificate that is not the recorded one (another CA in the
    // bundle, same serial): refused.
    assert!(matches!(
        store.authenticate_certificate("s1", "0abc", &"ab".repeat(32)),
        Err(Denied::CertUnknown)
    ));
    assert_eq!(
        store.psk_for_identity("s1").as_deref(),
        Some(SECRET.as_bytes())
    );
    assert_eq!(store.psk_for_identity("nobody"), None);
}

#[test]
fn authorize_by_channel_id_or_name_and_operation() {
    let (_dir, path) = tmp();
    let db = provisioned(&path);
    let ch1 = db.channel("ch1").unwrap();
    let store = AuthStore::open(&path, &config()).unwrap();
    let me = store.authenticate("s1", SECRET.as_bytes()).unwrap();
    let by_name = store.authorize(&me, "ch1", Op::Publish).unwrap();
    assert_eq!(by_name.id, ch1.id);
    assert_eq!(by_name.domain_id, "dom");
    assert_eq!(store.authorize(&me, &ch1.id, Op::Publish).unwrap(), by_name);
    assert!(matches!(
        store.authorize(&me, "ch1", Op::Subscribe),
        Err(Denied::NotConnected)
    ));
    assert!(matches!(
        store.authorize(&me, "ch2", Op::Publish),
        Err(Denied::NotConnected)
    ));
    assert!(matches!(
        store.authorize(&me, "nope", Op::Publish),
        Err(Denied::UnknownChannel)
    ));
}

#[test]
fn cli_style_changes_from_another_connection_apply_within_a_second() {
    let (_dir, path) = tmp();
    let mut db = provisioned(&path);
    let store = AuthStore::open(&path, &config()).unwrap();
    let me = store.authenticate("s1", SECRET.as_bytes()).unwrap();
    let mut subscribed = store.subscribed_channels();
    assert!(subscribed.borrow_and_update().is_empty());

    db.set_client_enabled("s1", false).unwrap();
    assert!(
        eventually(Duration::from_secs(1), || matches!(
            store.authorize(&me, "ch1", Op::Publish),
            Err(Denied::ClientDisabled)
        )),
        "disable not seen within 1 s"
    );
    assert!(matches!(
        store.authenticate("s1", SECRET.as_bytes()),
        Err(Denied::ClientDisabled)
    ));
    assert_eq!(store.psk_for_identity("s1"), None);

    db.set_client_enabled("s1", true).unwrap();
    db.connect("s1", "ch2", false, true).unwrap();
    assert!(eventually(Duration::from_secs(1), || subscribed
        .has_changed()
        .unwrap()));
    let names: Vec<String> = subscribed
        .borrow_and_update()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(names, ["ch2"]);
    assert!(store.authorize(&me, "ch2", Op::Subscribe).is_ok());

    db.remove_client("s1").unwrap();
    assert!(
        eventually(Duration::from_secs(1), || matches!(
            store.authorize(&me, "ch2", Op::Subscribe),
            Err(Denied::UnknownIdentity)
        )),
        "removal not seen within 1 s"
    );
    assert!(eventually(Duration::from_secs(1), || subscribed
        .has_changed()
        .unwrap()));
    assert!(subscribed.borrow_and_update().is_empty());
}

#[test]
fn a_revocation_by_another_process_is_broadcast_and_refused() {
    let (_dir, path) = tmp();
    let db = provisioned(&path);
    let s1 = db.client("s1").unwrap();
    drop(db);
    let daemon = AuthStore::open(&path, &config()).unwrap();
    let cli = AuthStore::open(&path, &config()).unwrap();
    let now = store::now_unix();
    cli.record_certificate(&CertificateRecord {
        serial_hex: "beef".into(),
        client_id: s1.id.clone(),
        fingerprint_sha256_hex: "aa".repeat(32),
        not_before: now - 1,
        not_after: now + 3600,
        revoked_at: None,
    })
    .unwrap();
    assert!(eventually(Duration::from_secs(1), || daemon
        .authenticate_certificate("s1", "beef", &"aa".repeat(32))
        .is_ok()));
    let mut revocations = daemon.revocations();
    let revoked = cli.revoke_certificate("s1").unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].serial_hex, "beef");
    let deadline = Instant::now() + Duration::from_secs(1);
    let event = loop {
        match revocations.try_recv() {
            Ok(ev) => break ev,
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no revocation event within 1 s: {e:?}"),
        }
    };
    assert_eq!(event.serial_hex, "beef");
    assert!(event.revoked_at.is_some());
    assert!(matches!(
        daemon.authenticate_certificate("s1", "beef", &"aa".repeat(32)),
        Err(Denied::CertRevoked { serial }) if serial == "beef"
    ));
    // Revoking again finds nothing new; the list still shows it.
    assert!(cli.revoke_certificate("beef").unwrap().is_empty());
    assert_eq!(daemon.list_certificates().unwrap().len(), 1);
    assert!(matches!(
        cli.revoke_certificate("nothing-like-it"),
        Err(AuthError::NotFound { .. })
    ));
}

#[test]
fn store_refuses_duplicates_bad_input_and_unknown_names() {
    let (_dir, path) = tmp();
    let mut db = provisioned(&path);
    assert!(matches!(
        db.add_client("s1", None, None, None),
        Err(AuthError::Duplicate { what: "client", .. })
    ));
    assert!(matches!(
        db.add_client("s2", None, Some(SECRET), None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        db.add_client("s2", None, Some("too-short"), None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        db.add_client("s2", None, None, Some("{not json")),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        db.add_client("has space", None, None, None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        db.add_channel("ch1", "", None),
        Err(AuthError::Duplicate {
            what: "channel",
            ..
        })
    ));
    assert!(matches!(
        db.add_channel("a/b", "", None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        db.connect("ghost", "ch1", true, true),
        Err(AuthError::NotFound { what: "client", .. })
    ));
    assert!(matches!(
        db.disconnect("s1", "ch2", true, true),
        Err(AuthError::NotFound {
            what: "connection",
            ..
        })
    ));
    // Partial disconnect keeps the other right; removing the channel removes the connection.
    db.connect("s1", "ch1", false, true).unwrap();
    let left = db.disconnect("s1", "ch1", true, false).unwrap().unwrap();
    assert!(!left.publish && left.subscribe);
    db.remove_channel("ch1").unwrap();
    let s1 = db.client("s1").unwrap();
    assert!(db.connections_of(&s1.id).unwrap().is_empty());
}

#[test]
fn rotate_secret_replaces_the_old_one() {
    let (_dir, path) = tmp();
    let mut db = provisioned(&path);
    let store = AuthStore::open(&path, &config()).unwrap();
    let rotated = db.rotate_secret("s1", None).unwrap();
    assert_ne!(rotated.secret, SECRET);
    assert!(eventually(Duration::from_secs(1), || store
        .authenticate("s1", rotated.secret.as_bytes())
        .is_ok()));
    assert!(store.authenticate("s1", SECRET.as_bytes()).is_err());
}

#[test]
fn failed_authentications_are_throttled_per_identity_and_address() {
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let cfg = AuthConfig {
        failure_burst: 3,
        failure_refill: crate::config::value::Duration::from_secs(60),
        ..config()
    };
    let store = AuthStore::open(&path, &cfg).unwrap();
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let other: IpAddr = "192.0.2.8".parse().unwrap();
    for _ in 0..3 {
        store.throttle_check(Some(ip), Some("s1")).unwrap();
        let _ = store.authenticate_from(Some(ip), "s1", b"wrong-secret-wrong");
    }
    let t = store.throttle_check(Some(ip), None).unwrap_err();
    assert!(t.retry_after > Duration::from_secs(50), "{t:?}");
    assert!(store.throttle_check(Some(other), Some("s1")).is_err());
    assert!(store.throttle_check(Some(other), Some("s2")).is_ok());
    // Successes cost nothing.
    for _ in 0..10 {
        store
            .authenticate_from(Some(other), "s1", SECRET.as_bytes())
            .unwrap();
    }
    assert!(store.throttle_check(Some(other), None).is_ok());
}

/// Issue 20.5: wrong secrets for a sensor's identity from other addresses do not lock out
/// the sensor (it authenticated from its own address before); made-up identities get no
/// bucket of their own.
#[test]
fn others_guessing_an_identity_do_not_lock_out_the_sensor_and_unknown_identities_cost_nothing() {
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let cfg = AuthConfig {
        failure_burst: 3,
        failure_refill: crate::config::value::Duration::from_secs(60),
        ..config()
    };
    let store = AuthStore::open(&path, &cfg).unwrap();
    let sensor: IpAddr = "192.0.2.20".parse().unwrap();
    store
        .authenticate_from(Some(sensor), "s1", SECRET.as_bytes())
        .unwrap();
    for i in 0..12u8 {
        let attacker = IpAddr::from([198, 51, 100, i]);
        let _ = store.authenticate_from(Some(attacker), "s1", b"wrong-secret-wrong");
        let _ = store.authenticate_from(Some(attacker), "nobody", b"wrong-secret-wrong");
    }
    assert!(
        store
            .throttle_check(Some("198.51.100.200".parse().unwrap()), Some("s1"))
            .is_err(),
        "the identity bucket is charged for a known identity"
    );
    store.throttle_check(Some(sensor), Some("s1")).unwrap();
    store
        .throttle_check(Some("198.51.100.201".parse().unwrap()), Some("nobody"))
        .unwrap();
}

/// Issue 20.4: failed DTLS-PSK handshakes are audited (`psk`) and charged like any other
/// failure; a known identity's bucket is charged, an unknown one's is not.
#[test]
fn failed_psk_handshakes_are_audited_and_throttled() {
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let cfg = AuthConfig {
        failure_burst: 3,
        failure_refill: crate::config::value::Duration::from_secs(60),
        ..config()
    };
    let store = AuthStore::open(&path, &cfg).unwrap();
    let ip: IpAddr = "192.0.2.30".parse().unwrap();
    for _ in 0..2 {
        store.psk_failed_from(ip, "s1");
    }
    store.psk_failed_from(ip, "nobody");
    assert!(
        store.throttle_check(Some(ip), None).is_err(),
        "address not charged"
    );
    let elsewhere: IpAddr = "192.0.2.31".parse().unwrap();
    assert!(store.throttle_check(Some(elsewhere), Some("s1")).is_ok());
    store.psk_failed_from(elsewhere, "s1");
    assert!(
        store.throttle_check(Some(elsewhere), Some("s1")).is_err(),
        "identity not charged"
    );
    assert!(
        store
            .throttle_check(Some(elsewhere), Some("nobody"))
            .is_ok()
    );
    assert!(store.psk_succeeded_from(elsewhere, "s1").is_some());
    drop(store);
    let db = Db::open(&path).unwrap();
    let events = db.recent_audit(100).unwrap();
    let psk: Vec<_> = events.iter().filter(|e| e.method == "psk").collect();
    let sum = |outcome: &str| -> u64 {
        psk.iter()
            .filter(|e| e.outcome == outcome)
            .map(|e| e.count)
            .sum()
    };
    assert_eq!(sum("bad_secret"), 3, "{psk:?}");
    assert_eq!(sum("unknown_identity"), 1, "{psk:?}");
    assert_eq!(sum("ok"), 1, "{psk:?}");
}

/// Issue 20.5 for DTLS-PSK: junk charged to a sensor's address (plain CoAP, spoofable) does
/// not stop the sensor's next handshake from there, once it authenticated from there; its own
/// failed handshakes from there (a guesser behind the same NAT) end the pass after the burst.
#[test]
fn a_trusted_psk_pair_passes_a_throttled_address_until_its_own_failures_use_up_the_burst() {
    let (_dir, path) = tmp();
    let mut db = provisioned(&path);
    db.add_client("s2", None, Some("another-secret-of-16+"), None)
        .unwrap();
    drop(db);
    let cfg = AuthConfig {
        failure_burst: 3,
        failure_refill: crate::config::value::Duration::from_secs(600),
        ..config()
    };
    let store = AuthStore::open(&path, &cfg).unwrap();
    let ip: IpAddr = "192.0.2.40".parse().unwrap();
    assert!(store.psk_succeeded_from(ip, "s1").is_some());
    for _ in 0..5 {
        let _ = store.authenticate_from(Some(ip), "nobody", b"spoofed-junk-0000");
    }
    assert!(store.throttle_check(Some(ip), Some("s1")).is_err());
    store.psk_throttle_check(ip, "s1").unwrap();
    assert!(
        store.psk_throttle_check(ip, "s2").is_err(),
        "an untrusted pair passed the throttled address"
    );
    for n in 0..3 {
        store
            .psk_throttle_check(ip, "s1")
            .unwrap_or_else(|e| panic!("refused after {n} own failures: {e}"));
        store.psk_failed_from(ip, "s1");
    }
    assert!(
        store.psk_throttle_check(ip, "s1").is_err(),
        "the pass outlived the pair's own burst"
    );
}

#[test]
fn audit_records_successes_and_failures_without_secrets_and_rotates() {
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let cfg = AuthConfig {
        audit_max_events: 5,
        ..config()
    };
    let store = AuthStore::open(&path, &cfg).unwrap();
    let ip: IpAddr = "2001:db8::1".parse().unwrap();
    store
        .authenticate_from(Some(ip), "s1", SECRET.as_bytes())
        .unwrap();
    let _ = store.authenticate_from(Some(ip), "s1", b"a-wrong-secret-given");
    let _ = store.authenticate_secret(b"some-unknown-secret-x");
    drop(store); // flushes the audit queue
    let db = Db::open(&path).unwrap();
    let events = db.recent_audit(10).unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2].outcome, "ok");
    assert_eq!(events[2].remote.as_deref(), Some("2001:db8::1"));
    assert_eq!(events[1].outcome, "bad_secret");
    assert_eq!(events[0].method, "secret");
    assert_eq!(events[0].identity, None);
    let dump = format!("{events:?}");
    assert!(!dump.contains(SECRET) && !dump.contains("a-wrong-secret-given"));
    drop(db);

    // Rotation: failures from a source that authenticated are one row each (successes and
    // other failures are aggregated, see below).
    let store = AuthStore::open(&path, &cfg).unwrap();
    store
        .authenticate_from(Some(ip), "s1", SECRET.as_bytes())
        .unwrap();
    for _ in 0..20 {
        let _ = store.authenticate_from(Some(ip), "s1", b"a-wrong-secret-given");
    }
    drop(store);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.audit_count().unwrap(), 5);
    let events = db.recent_audit(10).unwrap();
    assert!(
        events.iter().all(|e| e.outcome == "bad_secret"),
        "{events:?}"
    );
}

/// Issue 20.5: a flood of sensor failures must not rotate management events out: they have
/// their own retention of `audit_max_events`.
#[test]
fn management_events_survive_a_flood_of_sensor_failures() {
    let (_dir, path) = tmp();
    let mut db = provisioned(&path);
    let keep = 50;
    let mut management = Vec::new();
    for i in 0..10 {
        let e = AuditEvent::management(
            "api",
            "admin",
            "client.create",
            "client",
            Some(format!("c{i}")),
        );
        management.push(e.clone());
        db.append_audit(&[e], keep).unwrap();
    }
    let failure = |n: u64| AuditEvent {
        at_ms: 1,
        method: "identity",
        identity: Some(format!("guess-{n}")),
        remote: Some("198.51.100.7".into()),
        outcome: "unknown_identity",
        ..AuditEvent::default()
    };
    let mut rotated = 0;
    for batch in 0..40u64 {
        let events: Vec<_> = (0..100).map(|n| failure(batch * 100 + n)).collect();
        db.append_audit_from(&events, keep, &mut rotated).unwrap();
    }
    let all = db.recent_audit(10_000).unwrap();
    let kept_management = all.iter().filter(|e| e.is_management()).count();
    let kept_failures = all.iter().filter(|e| !e.is_management()).count();
    assert_eq!(
        kept_management, 10,
        "management events rotated out by sensor failures"
    );
    assert!(kept_failures <= 50, "{kept_failures}");
    assert!(kept_failures >= 40, "{kept_failures}");
    // Management events rotate among themselves.
    for i in 0..60 {
        let e = AuditEvent::management(
            "cli",
            "cli",
            "client.remove",
            "client",
            Some(format!("r{i}")),
        );
        db.append_audit(&[e], keep).unwrap();
    }
    let all = db.recent_audit(10_000).unwrap();
    let kept: Vec<_> = all.iter().filter(|e| e.is_management()).collect();
    assert_eq!(kept.len(), 50);
    assert!(
        kept.iter().all(|e| e.method == "cli"),
        "the oldest went first"
    );
}

/// Issue 20.5: failures from sources that never authenticated are summed per method ×
/// outcome × remote × identity and interval, and beyond the key cap per method × outcome,
/// so a flood of them writes a bounded number of rows; the counts still add up.
#[test]
fn failures_from_unauthenticated_sources_are_summed_and_bounded() {
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let store = AuthStore::open(&path, &config()).unwrap();
    let attacker: IpAddr = "198.51.100.9".parse().unwrap();
    for _ in 0..500 {
        let _ = store.authenticate_from(Some(attacker), "s1", b"a-wrong-secret-given");
    }
    let flood = audit::MAX_KEYS as u32 + 3000;
    for i in 0..flood {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
        let _ = store.authenticate_secret_from(Some(ip), b"some-unknown-secret-x");
    }
    let dropped = store.audit_dropped();
    drop(store); // flushes the queue and the interval's sums
    let db = Db::open(&path).unwrap();
    let events = db.recent_audit(100_000).unwrap();
    let from_attacker: Vec<_> = events
        .iter()
        .filter(|e| e.remote.as_deref() == Some("198.51.100.9"))
        .collect();
    assert_eq!(from_attacker.len(), 2, "{from_attacker:?}");
    assert_eq!(from_attacker.iter().map(|e| e.count).sum::<u64>(), 500);
    let secret_rows: Vec<_> = events.iter().filter(|e| e.method == "secret").collect();
    assert!(
        secret_rows.len() <= audit::MAX_KEYS,
        "{} rows for {flood} failures",
        secret_rows.len()
    );
    // Nothing is lost uncounted: what was written plus what the full queue dropped.
    let written: u64 = secret_rows.iter().map(|e| e.count).sum();
    assert_eq!(written + dropped, u64::from(flood));
    assert!(
        secret_rows
            .iter()
            .any(|e| e.remote.is_none() && e.count > 1)
    );
}

#[test]
fn audit_sums_successes_per_client_remote_and_method_and_keeps_every_failure() {
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let store = AuthStore::open(&path, &config()).unwrap();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    for _ in 0..100 {
        store
            .authenticate_from(Some(a), "s1", SECRET.as_bytes())
            .unwrap();
    }
    for _ in 0..3 {
        store
            .authenticate_from(Some(b), "s1", SECRET.as_bytes())
            .unwrap();
    }
    store
        .authenticate_secret_from(Some(a), SECRET.as_bytes())
        .unwrap();
    for _ in 0..4 {
        let _ = store.authenticate_from(Some(a), "s1", b"a-wrong-secret-given");
    }
    drop(store); // flushes the queue and the interval's sums
    let db = Db::open(&path).unwrap();
    let events = db.recent_audit(100).unwrap();
    let ok: Vec<_> = events.iter().filter(|e| e.outcome == "ok").collect();
    // Per client × remote × method: the first success as a row of its own (count 1), the
    // rest of the interval summed into one more row; a single success is one row.
    assert_eq!(ok.len(), 5, "{ok:?}");
    let sum = |ip: &str, method: &str| -> (usize, u64) {
        let rows: Vec<_> = ok
            .iter()
            .filter(|e| e.remote.as_deref() == Some(ip) && e.method == method)
            .collect();
        (rows.len(), rows.iter().map(|e| e.count).sum())
    };
    let password = "identity";
    assert_eq!(sum("192.0.2.1", password), (2, 100));
    assert_eq!(sum("192.0.2.2", password), (2, 3));
    assert_eq!(sum("192.0.2.1", "secret"), (1, 1));
    assert!(
        ok.iter()
            .all(|e| e.client_id.is_some() && e.identity.as_deref() == Some("s1"))
    );
    let failures: Vec<_> = events.iter().filter(|e| e.outcome != "ok").collect();
    assert_eq!(failures.len(), 4, "every failure is a row");
    assert!(failures.iter().all(|e| e.count == 1));
}

#[test]
fn dev_demo_is_created_once() {
    let (_dir, path) = tmp();
    let store = AuthStore::open(&path, &config()).unwrap();
    let secret = store
        .ensure_demo("")
        .unwrap()
        .expect("created on first start");
    assert_eq!(store.ensure_demo("").unwrap(), None);
    let me = store
        .authenticate(DEMO_IDENTITY, secret.as_bytes())
        .unwrap();
    store.authorize(&me, DEMO_CHANNEL, Op::Publish).unwrap();
    store.authorize(&me, DEMO_CHANNEL, Op::Subscribe).unwrap();
    assert_eq!(store.subscribed_channels().borrow().len(), 1);
}

fn valid_store_bytes() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let (dir, path) = tmp();
    let mut db = provisioned(&path);
    for i in 0..200 {
        db.add_client(
            &format!("bulk-{i}"),
            None,
            None,
            Some(r#"{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#),
        )
        .unwrap();
    }
    drop(db); // checkpoints the WAL into the file
    let bytes = std::fs::read(&path).unwrap();
    (dir, path, bytes)
}

fn assert_refused_unchanged(path: &Path, bytes: &[u8], want: &str) {
    let err = AuthStore::open(path, &config()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(want), "{text}");
    // The edge maps both to exit 78 (main.rs's exit table, tested there).
    assert!(
        matches!(
            err,
            StoreError::Corrupt { .. } | StoreError::SchemaTooNew { .. }
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read(path).unwrap(), bytes, "file was modified");
}

#[test]
fn truncated_corrupt_empty_and_foreign_files_are_refused_untouched() {
    let (_dir, path, good) = valid_store_bytes();
    assert!(good.len() > 8 * 4096, "{}", good.len());
    for cut in [good.len() / 2, good.len() - 4096, 4096 + 10, 50, 0] {
        std::fs::write(&path, &good[..cut]).unwrap();
        assert_refused_unchanged(&path, &good[..cut], "corrupt");
    }
    let mut garbage = good.clone();
    for b in &mut garbage[4096..] {
        *b = 0x5a;
    }
    std::fs::write(&path, &garbage).unwrap();
    assert_refused_unchanged(&path, &garbage, "corrupt");
    std::fs::write(
        &path,
        b"this is not a database at all, just text\n".repeat(100),
    )
    .unwrap();
    let text = std::fs::read(&path).unwrap();
    assert_refused_unchanged(&path, &text, "corrupt");
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let (_dir, path, _) = valid_store_bytes();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99; PRAGMA journal_mode = DELETE;")
            .unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let err = AuthStore::open(&path, &config()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: super::store::SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

// ---- property test: the cache decides exactly what a plain model of the store says ----

#[derive(Debug, Clone)]
enum Action {
    AddClient(u8),
    AddChannel(u8),
    Connect(u8, u8, bool, bool),
    Disconnect(u8, u8, bool, bool),
    SetEnabled(u8, bool),
    RemoveClient(u8),
    RemoveChannel(u8),
}

fn action() -> impl Strategy<Value = Action> {
    let k = 0u8..4;
    prop_oneof![
        k.clone().prop_map(Action::AddClient),
        k.clone().prop_map(Action::AddChannel),
        (k.clone(), k.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, p, s)| Action::Connect(a, b, p, s)),
        (k.clone(), k.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, p, s)| Action::Disconnect(a, b, p, s)),
        (k.clone(), any::<bool>()).prop_map(|(a, e)| Action::SetEnabled(a, e)),
        k.clone().prop_map(Action::RemoveClient),
        k.prop_map(Action::RemoveChannel),
    ]
}

#[derive(Debug, Default)]
struct Model {
    clients: std::collections::BTreeMap<u8, bool>,
    channels: std::collections::BTreeSet<u8>,
    grants: std::collections::BTreeMap<(u8, u8), (bool, bool)>,
}

fn secret_of(i: u8) -> String {
    format!("secret-of-client-{i:02}-padding")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn cache_matches_a_model_after_any_sequence(actions in proptest::collection::vec(action(), 1..40)) {
        let (_dir, path) = tmp();
        let mut db = Db::open(&path).unwrap();
        let mut m = Model::default();
        let mut ids = std::collections::BTreeMap::new();
        for a in actions {
            match a {
                Action::AddClient(c) => {
                    let r = db.add_client(&format!("c{c}"), None, Some(&secret_of(c)), None);
                    prop_assert_eq!(r.is_ok(), !m.clients.contains_key(&c));
                    if let Ok(row) = r { ids.insert(c, row.id); m.clients.insert(c, true); }
                }
                Action::AddChannel(h) => {
                    let r = db.add_channel(&format!("h{h}"), "d", None);
                    prop_assert_eq!(r.is_ok(), m.channels.insert(h));
                }
                Action::Connect(c, h, p, s) => {
                    let r = db.connect(&format!("c{c}"), &format!("h{h}"), p, s);
                    let ok = m.clients.contains_key(&c) && m.channels.contains(&h) && (p || s);
                    prop_assert_eq!(r.is_ok(), ok);
                    if ok {
                        let g = m.grants.entry((c, h)).or_default();
                        g.0 |= p; g.1 |= s;
                    }
                }
                Action::Disconnect(c, h, p, s) => {
                    let r = db.disconnect(&format!("c{c}"), &format!("h{h}"), p, s);
                    prop_assert_eq!(r.is_ok(), m.grants.contains_key(&(c, h)));
                    if let Some(g) = m.grants.get_mut(&(c, h)) {
                        g.0 &= !p; g.1 &= !s;
                        if !g.0 && !g.1 { m.grants.remove(&(c, h)); }
                    }
                }
                Action::SetEnabled(c, e) => {
                    let r = db.set_client_enabled(&format!("c{c}"), e);
                    prop_assert_eq!(r.is_ok(), m.clients.contains_key(&c));
                    if let Some(v) = m.clients.get_mut(&c) { *v = e; }
                }
                Action::RemoveClient(c) => {
                    let r = db.remove_client(&format!("c{c}"));
                    prop_assert_eq!(r.is_ok(), m.clients.remove(&c).is_some());
                    m.grants.retain(|(gc, _), _| *gc != c);
                }
                Action::RemoveChannel(h) => {
                    let r = db.remove_channel(&format!("h{h}"));
                    prop_assert_eq!(r.is_ok(), m.channels.remove(&h));
                    m.grants.retain(|(_, gh), _| *gh != h);
                }
            }
        }
        let snap = Snapshot::build(db.load().unwrap());
        let mut want_subscribed = Vec::new();
        for h in &m.channels {
            if m.grants.iter().any(|((_, gh), g)| gh == h && g.1) {
                want_subscribed.push(format!("h{h}"));
            }
        }
        let got: Vec<String> = snap.subscribed.iter().map(|c| c.name.clone()).collect();
        prop_assert_eq!(got, want_subscribed);
        for c in 0u8..4 {
            let auth = snap.authenticate(&format!("c{c}"), secret_of(c).as_bytes());
            match m.clients.get(&c) {
                None => prop_assert!(matches!(auth, Err(Denied::UnknownIdentity))),
                Some(false) => prop_assert!(matches!(auth, Err(Denied::ClientDisabled))),
                Some(true) => prop_assert!(auth.is_ok()),
            }
            let identity = format!("c{c}");
            prop_assert!(snap.authenticate(&identity, b"wrong-secret-wrong!").is_err());
            let Some(id) = ids.get(&c) else { continue };
            let me = ClientRef { id: id.clone(), identity: format!("c{c}") };
            for h in 0u8..4 {
                for (op, idx) in [(Op::Publish, 0), (Op::Subscribe, 1)] {
                    let got = snap.authorize(&me, &format!("h{h}"), op);
                    let want = match m.clients.get(&c) {
                        None => "unknown_identity",
                        Some(false) => "disabled",
                        Some(true) if !m.channels.contains(&h) => "unknown_channel",
                        Some(true) => match m.grants.get(&(c, h)) {
                            Some(g) if (if idx == 0 { g.0 } else { g.1 }) => "ok",
                            _ => "not_connected",
                        },
                    };
                    let got = match got {
                        Ok(_) => "ok",
                        Err(Denied::UnknownIdentity) => "unknown_identity",
                        Err(Denied::ClientDisabled) => "disabled",
                        Err(Denied::UnknownChannel) => "unknown_channel",
                        Err(Denied::NotConnected) => "not_connected",
                        Err(e) => panic!("unexpected {e}"),
                    };
                    prop_assert_eq!(got, want, "client c{} channel h{} {:?}", c, h, op);
                }
            }
        }
    }
}

#[test]
fn the_store_handle_is_send_sync_and_clones_share_state() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    send_sync::<AuthStore>();
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let store = AuthStore::open(&path, &config()).unwrap();
    let clone = store.clone();
    let handle = std::thread::spawn(move || clone.authenticate("s1", SECRET.as_bytes()).is_ok());
    assert!(handle.join().unwrap());
    let other = store.clone();
    assert!(other.psk_for_identity(DEMO_IDENTITY).is_none());
    store.ensure_demo("").unwrap();
    // Another clone sees this process's own write at once (no watcher delay).
    assert!(other.psk_for_identity(DEMO_IDENTITY).is_some());
}

#[test]
fn a_debug_print_of_the_store_or_its_snapshot_shows_no_secret() {
    let (_dir, path) = tmp();
    drop(provisioned(&path));
    let store = AuthStore::open(&path, &config()).unwrap();
    assert!(store.authenticate_secret(SECRET.as_bytes()).is_ok());
    let snapshot = format!("{:?}", store.snapshot());
    assert!(
        snapshot.contains("s1"),
        "the snapshot is printed: {snapshot}"
    );
    assert!(!snapshot.contains(SECRET), "{snapshot}");
    // Nor as the bytes a derived Debug of a byte slice would print.
    let bytes = format!("{:?}", SECRET.as_bytes());
    let bytes = bytes.trim_start_matches('[').trim_end_matches(']');
    assert!(!snapshot.contains(bytes), "{snapshot}");
    assert!(!format!("{store:?}").contains(SECRET));
}

#[test]
fn channels_carry_a_chosen_id_and_their_upstream_identity() {
    let (_dir, path) = tmp();
    let mut db = Db::open(&path).unwrap();
    let plain = db.add_channel("plain", "dom", None).unwrap();
    assert_eq!(plain.upstream_id, plain.id);
    let mirrored = db
        .add_channel_as(&store::NewChannel {
            name: "temps",
            domain_id: "dom",
            id: Some("0f6c5a2e-1111-4222-8333-444455556666"),
            upstream_id: Some("9a8b7c6d-aaaa-4bbb-8ccc-ddddeeeeffff"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(mirrored.id, "0f6c5a2e-1111-4222-8333-444455556666");
    assert_eq!(mirrored.upstream_id, "9a8b7c6d-aaaa-4bbb-8ccc-ddddeeeeffff");
    // The same id twice, or an id that cannot be a topic level, is refused.
    assert!(matches!(
        db.add_channel_as(&store::NewChannel {
            name: "other",
            id: Some("0f6c5a2e-1111-4222-8333-444455556666"),
            ..Default::default()
        }),
        Err(AuthError::Duplicate { .. })
    ));
    for bad in ["a/b", "a+", "", "x y"] {
        assert!(
            matches!(
                db.add_channel_as(&store::NewChannel {
                    name: "bad",
                    upstream_id: Some(bad),
                    ..Default::default()
                }),
                Err(AuthError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let updated = db
        .update_channel_upstream("temps", "temps2", "dom2", "up-2")
        .unwrap();
    assert_eq!(
        (
            updated.name.as_str(),
            updated.domain_id.as_str(),
            updated.upstream_id.as_str()
        ),
        ("temps2", "dom2", "up-2")
    );
    // The cache hands the upstream identity to the uplink.
    drop(db);
    let store = AuthStore::open(&path, &config()).unwrap();
    let dir = store.channel_directory().borrow().clone();
    let m = dir.iter().find(|c| c.name == "temps2").unwrap();
    assert_eq!(m.upstream_id, "up-2");
}

#[test]
fn a_store_of_the_previous_schema_keeps_its_channels_with_their_ids_upstream() {
    let (_dir, path) = tmp();
    {
        // Schema 3 (before upstream ids), written by hand as an older binary did.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        for (i, m) in store::migrations_for_tests().iter().take(3).enumerate() {
            conn.execute_batch(m).unwrap();
            conn.execute_batch(&format!("PRAGMA user_version = {};", i + 1))
                .unwrap();
        }
        conn.execute_batch(
            "PRAGMA application_id = 1162297685;
             INSERT INTO channels (id, domain_id, name, metadata, created_at, updated_at)
             VALUES ('old-id', 'dom', 'old', '{}', 1, 1);",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let ch = db.channel("old").unwrap();
    assert_eq!(
        (ch.id.as_str(), ch.upstream_id.as_str()),
        ("old-id", "old-id")
    );
}
