use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::cli::{file_stem, parse_ttl, status_of};
use super::registry::CertificateRecord;
use super::*;
use crate::config::{Source, load_from};
use certs::Authority;

const DAY: i64 = 86_400;

fn config(vars: &[(&str, &Path)], profile: Profile) -> Config {
    let vars: Vec<(OsString, OsString)> = vars
        .iter()
        .map(|(k, v)| (OsString::from(k), v.as_os_str().to_owned()))
        .collect();
    load_from(&Source::None, profile, vars).unwrap()
}

/// Writes an uplink client certificate valid from `not_before` for `days`, and its key.
fn uplink_cert(dir: &Path, name: &str, not_before: i64, days: u64) -> (PathBuf, PathBuf) {
    let ca = Authority::generate(
        "test CA",
        Duration::from_secs(1000 * 86_400),
        not_before - 10 * DAY,
    )
    .unwrap();
    let issued = ca
        .issue_client("uplink", Duration::from_secs(days * 86_400), not_before)
        .unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, issued.key_pem.unwrap()).unwrap();
    (cert, key)
}

fn uplink_config(cert: &Path, key: &Path, refuse: Option<&Path>) -> Config {
    let mut vars = vec![
        ("EDGEGW_UPLINK_CLIENT_CERT", cert),
        ("EDGEGW_UPLINK_CLIENT_KEY", key),
    ];
    if let Some(flag) = refuse {
        vars.push(("EDGEGW_UPLINK_REFUSE_EXPIRED", flag));
    }
    config(&vars, Profile::Production)
}

#[test]
fn ttls_take_hours_or_days_and_a_bare_number_is_a_usage_error() {
    assert_eq!(Ttl::parse("8760h").unwrap().get().as_secs(), 8760 * 3600);
    assert_eq!(Ttl::parse("30d").unwrap().get().as_secs(), 30 * 86_400);
    let err = Ttl::parse("30").unwrap_err();
    // A usage error at the edge (exit 64, main.rs's exit table), in the API's words.
    assert!(
        matches!(&err, CertError::BadTtl { ttl, problem: TtlProblem::Syntax } if ttl == "30"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("--ttl"), "{err}");
    // The CLI names its flag around it.
    let flagged = parse_ttl("30").unwrap_err();
    assert!(flagged.to_string().contains("--ttl 30"), "{flagged}");
    assert!(flagged.downcast_ref::<CertError>().is_some(), "{flagged:?}");
}

#[test]
fn file_names_from_identities_are_safe() {
    assert_eq!(file_stem("sensor-1"), "sensor-1");
    assert_eq!(file_stem("../../etc/passwd"), "_.._etc_passwd");
    assert_eq!(file_stem("a b/c"), "a_b_c");
    assert_eq!(file_stem(".."), "device");
}

#[test]
fn a_certificate_ending_in_10_days_warns_and_one_ending_in_60_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let window = Duration::from_secs(30 * 86_400);
    let (cert, key) = uplink_cert(dir.path(), "soon", now, 10);
    let report = expiry_report(&uplink_config(&cert, &key, None), now);
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].what, "uplink client");
    assert_eq!(report[0].path, cert);
    assert_eq!(report[0].days_left, 10);
    assert_eq!(report[0].state(now, window), ExpiryState::ExpiresSoon);

    let (cert, key) = uplink_cert(dir.path(), "later", now, 60);
    let report = expiry_report(&uplink_config(&cert, &key, None), now);
    assert_eq!(report[0].days_left, 60);
    assert_eq!(report[0].state(now, window), ExpiryState::Valid);
    // The same certificate is within the window 31 days later.
    assert_eq!(
        report[0].state(now + 31 * DAY, window),
        ExpiryState::ExpiresSoon
    );
    assert_eq!(
        report[0].state(now + 61 * DAY, window),
        ExpiryState::Expired
    );
}

#[test]
fn an_expired_uplink_certificate_stops_the_start_only_with_refuse_expired() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let (cert, key) = uplink_cert(dir.path(), "old", now - 100 * DAY, 10);
    let lenient = uplink_config(&cert, &key, None);
    assert!(!lenient.uplink.refuse_expired);
    assert!(expiry_report(&lenient, now)[0].days_left < 0);
    check_expiry(&lenient, now, true).expect("default: start anyway");

    let strict = uplink_config(&cert, &key, Some(Path::new("true")));
    let err = check_expiry(&strict, now, true).unwrap_err();
    assert!(err.to_string().contains("refuse_expired"), "{err}");
    // A ConfigFileError: exit 78 at the edge.
    assert_eq!(err.what, "uplink client certificate");
    // The daily check while running never stops the daemon.
    check_expiry(&strict, now, false).unwrap();
}

#[test]
fn the_device_ca_is_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::init_dev(&dir.path().join("pki"), now_unix()).unwrap();
    let config = config(
        &[
            ("EDGEGW_CERTS_DEVICE_CA_CERT", &pki.ca_cert()),
            ("EDGEGW_CERTS_DEVICE_CA_KEY", &pki.ca_key()),
        ],
        Profile::Production,
    );
    let report = expiry_report(&config, now_unix());
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].what, "device CA");
    assert!(report[0].days_left >= 3649, "{report:?}");
}

#[test]
fn the_dev_profile_creates_its_pki_once_and_uses_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".edgegw-dev");
    let base = config(&[], Profile::Dev { root: root.clone() });
    assert!(base.certs.device_ca_cert.is_none());
    let first = with_dev_pki(&base).unwrap();
    let ca = root.join("pki/ca.crt");
    assert_eq!(first.certs.device_ca_cert.as_deref(), Some(ca.as_path()));
    assert_eq!(
        first.certs.device_ca_key.as_deref(),
        Some(root.join("pki/ca.key").as_path())
    );
    let pem = std::fs::read(&ca).unwrap();
    let second = with_dev_pki(&base).unwrap();
    assert_eq!(second.certs.device_ca_cert, first.certs.device_ca_cert);
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        pem,
        "the dev CA was regenerated"
    );
    // Production is left alone and creates nothing.
    let prod = config(&[], Profile::Production);
    assert!(with_dev_pki(&prod).unwrap().certs.device_ca_cert.is_none());
}

#[test]
fn listed_status_is_revoked_expired_or_valid() {
    let rec = CertificateRecord {
        serial_hex: "01".into(),
        client_id: "c".into(),
        fingerprint_sha256_hex: "ff".into(),
        not_before: 0,
        not_after: 100,
        revoked_at: None,
    };
    assert_eq!(status_of(&rec, 50), "valid");
    assert_eq!(status_of(&rec, 100), "expired");
    let revoked = CertificateRecord {
        revoked_at: Some(10),
        ..rec
    };
    assert_eq!(status_of(&revoked, 50), "revoked");
}

#[tokio::test(start_paused = true)]
async fn expiry_is_rechecked_daily_and_on_reload_until_cancelled() {
    let checks = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = watch::channel(0u64);
    let counter = Arc::clone(&checks);
    let task = tokio::spawn(expiry_loop(
        EXPIRY_CHECK_PERIOD,
        token.clone(),
        reload_rx,
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    ));
    tokio::time::sleep(EXPIRY_CHECK_PERIOD - Duration::from_secs(1)).await;
    assert_eq!(
        checks.load(Ordering::SeqCst),
        0,
        "checked before a day passed"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(checks.load(Ordering::SeqCst), 1);
    reload_tx.send_modify(|g| *g += 1);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(checks.load(Ordering::SeqCst), 2, "SIGHUP did not re-check");
    // Losing the reload sender keeps the daily check and does not spin.
    drop(reload_tx);
    tokio::time::sleep(EXPIRY_CHECK_PERIOD).await;
    assert_eq!(checks.load(Ordering::SeqCst), 3);
    token.cancel();
    task.await.unwrap();
}
