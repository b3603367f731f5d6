//! `edgegw certs …` on the real binary, checked with openssl: init-dev, issue (generated key
//! and CSR), TTL limits, the dev profile's CA, and the daemon's expiry checks (warn at 10 days
//! left, not at 60; an expired uplink certificate with refuse_expired = true exits 78).
//! Issuing records in the auth store; revoke, list and the CRL read it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use system_tests::{Daemon, edgegw};

const DAY: u64 = 86_400;

fn openssl(args: &[&str], files: &[&Path]) -> Output {
    Command::new("openssl")
        .args(args)
        .args(files)
        .output()
        .expect("openssl is installed (scripts/test installs it)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn verify(ca: &Path, cert: &Path) -> Output {
    openssl(&["verify", "-CAfile"], &[ca, cert])
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("test setup")
        .permissions()
        .mode()
        & 0o777
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("test setup")
            .as_secs(),
    )
    .expect("test setup")
}

/// A dev PKI in `dir/pki` made by the CLI, and a config file whose device CA is its CA.
fn pki_with_config(dir: &Path) -> (PathBuf, PathBuf) {
    let out = edgegw(dir)
        .args(["certs", "init-dev", "pki"])
        .output()
        .expect("test setup");
    assert!(out.status.success(), "{}", text(&out));
    let pki = dir.join("pki");
    let config = dir.join("edgegw.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n\n\
             [certs]\ndevice_ca_cert = \"{p}/ca.crt\"\ndevice_ca_key = \"{p}/ca.key\"\n",
            d = dir.display(),
            p = pki.display()
        ),
    )
    .expect("test setup");
    (pki, config)
}

/// Adds clients to the auth store (`certs issue` only issues for known clients).
fn add_clients(dir: &Path, config_args: &[&std::ffi::OsStr], clients: &[&str]) {
    for client in clients {
        let out = edgegw(dir)
            .args(["client", "add", client])
            .args(config_args)
            .output()
            .expect("run edgegw");
        assert!(out.status.success(), "{}", text(&out));
    }
}

fn issue(dir: &Path, config: &Path, args: &[&str]) -> Output {
    edgegw(dir)
        .args(["certs", "issue"])
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run edgegw")
}

#[test]
fn init_dev_creates_a_pki_that_openssl_verifies_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgegw(dir.path())
        .args(["certs", "init-dev", "pki"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let pki = dir.path().join("pki");
    assert_eq!(mode(&pki), 0o700);
    let ca = pki.join("ca.crt");
    for name in [
        "ca",
        "dtls-server",
        "uplink-client",
        "broker",
        "device-example",
    ] {
        assert_eq!(mode(&pki.join(format!("{name}.crt"))), 0o644, "{name}.crt");
        assert_eq!(mode(&pki.join(format!("{name}.key"))), 0o600, "{name}.key");
        let out = verify(&ca, &pki.join(format!("{name}.crt")));
        assert!(out.status.success(), "{name}: {}", text(&out));
        // Each key belongs to its certificate.
        let cert_pub = openssl(
            &["x509", "-noout", "-pubkey", "-in"],
            &[&pki.join(format!("{name}.crt"))],
        );
        let key_pub = openssl(
            &["pkey", "-pubout", "-in"],
            &[&pki.join(format!("{name}.key"))],
        );
        assert_eq!(
            cert_pub.stdout, key_pub.stdout,
            "{name}: key does not match"
        );
    }
    let broker = text(&openssl(
        &["x509", "-noout", "-text", "-in"],
        &[&pki.join("broker.crt")],
    ));
    for san in [
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:localhost",
    ] {
        assert!(broker.contains(san), "broker lacks {san}:\n{broker}");
    }
    assert!(broker.contains("TLS Web Server Authentication"), "{broker}");
    let uplink = text(&openssl(
        &["x509", "-noout", "-text", "-in"],
        &[&pki.join("uplink-client.crt")],
    ));
    assert!(uplink.contains("TLS Web Client Authentication"), "{uplink}");
    let ca_text = text(&openssl(&["x509", "-noout", "-text", "-in"], &[&ca]));
    assert!(
        ca_text.contains("CA:TRUE") && ca_text.contains("prime256v1"),
        "{ca_text}"
    );

    let before = std::fs::read(pki.join("ca.key")).unwrap();
    let out = edgegw(dir.path())
        .args(["certs", "init-dev", "pki"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "re-running init-dev succeeded");
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(
        std::fs::read(pki.join("ca.key")).unwrap(),
        before,
        "CA key overwritten"
    );
}

#[test]
fn an_issued_device_certificate_has_the_cn_client_auth_and_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, config) = pki_with_config(dir.path());
    add_clients(
        dir.path(),
        &["--config".as_ref(), config.as_os_str()],
        &["sensor-1", "sensor-2"],
    );
    let out = issue(
        dir.path(),
        &config,
        &["sensor-1", "--ttl", "30d", "--out", "out", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cert = dir.path().join("out/sensor-1.crt");
    let key = dir.path().join("out/sensor-1.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);

    let ok = verify(&pki.join("ca.crt"), &cert);
    assert!(ok.status.success(), "{}", text(&ok));
    let other = tempfile::tempdir().unwrap();
    let (other_pki, _) = pki_with_config(other.path());
    assert!(
        !verify(&other_pki.join("ca.crt"), &cert).status.success(),
        "verified against an unrelated CA"
    );

    let shown = text(&openssl(&["x509", "-noout", "-text", "-in"], &[&cert]));
    assert!(shown.contains("Subject: CN = sensor-1"), "{shown}");
    assert!(shown.contains("TLS Web Client Authentication"), "{shown}");
    assert!(!shown.contains("TLS Web Server Authentication"), "{shown}");
    // Validity: 30 days from now, within the test's runtime.
    let not_before = issued["not_before"].as_i64().unwrap();
    let not_after = issued["not_after"].as_i64().unwrap();
    assert_eq!(not_after - not_before, 30 * 86_400);
    assert!((now() - not_before).abs() < 120, "not_before {not_before}");
    let alive = |secs: u64| {
        openssl(
            &["x509", "-noout", "-checkend", &secs.to_string(), "-in"],
            &[&cert],
        )
        .status
        .success()
    };
    assert!(alive(29 * DAY), "expires before 29 days");
    assert!(!alive(30 * DAY + 300), "still valid after 30 days");
    // Serial and fingerprint as recorded are openssl's, lowercased, without colons.
    let serial = text(&openssl(&["x509", "-noout", "-serial", "-in"], &[&cert]));
    assert_eq!(
        serial.trim().trim_start_matches("serial=").to_lowercase(),
        issued["serial"].as_str().unwrap()
    );
    let fp = text(&openssl(
        &["x509", "-noout", "-fingerprint", "-sha256", "-in"],
        &[&cert],
    ));
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(fp, issued["fingerprint_sha256"].as_str().unwrap());
    // 8760h is accepted too; the same files again are not overwritten.
    let out = issue(
        dir.path(),
        &config,
        &["sensor-2", "--ttl", "8760h", "--out", "out"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = issue(dir.path(), &config, &["sensor-1", "--out", "out"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
}

#[test]
fn a_csr_is_signed_and_the_key_never_leaves_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, config) = pki_with_config(dir.path());
    add_clients(
        dir.path(),
        &["--config".as_ref(), config.as_os_str()],
        &["sensor-3", "sensor-4"],
    );
    let key = dir.path().join("device.key");
    let csr = dir.path().join("device.csr");
    let out = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=sensor-3",
            "-keyout",
        ],
        &[&key, Path::new("-out"), &csr],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = issue(
        dir.path(),
        &config,
        &[
            "sensor-3",
            "--ttl",
            "7d",
            "--out",
            "out",
            "--csr",
            csr.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let cert = dir.path().join("out/sensor-3.crt");
    assert!(
        !dir.path().join("out/sensor-3.key").exists(),
        "a key was written for a CSR"
    );
    let ok = verify(&pki.join("ca.crt"), &cert);
    assert!(ok.status.success(), "{}", text(&ok));
    let cert_pub = openssl(&["x509", "-noout", "-pubkey", "-in"], &[&cert]);
    let key_pub = openssl(&["pkey", "-pubout", "-in"], &[&key]);
    assert_eq!(cert_pub.stdout, key_pub.stdout, "not the CSR's key");
    let shown = text(&openssl(&["x509", "-noout", "-text", "-in"], &[&cert]));
    assert!(
        shown.contains("CN = sensor-3") && shown.contains("TLS Web Client Authentication"),
        "{shown}"
    );

    // A CSR naming someone else is refused.
    let out = issue(
        dir.path(),
        &config,
        &["sensor-4", "--out", "out", "--csr", csr.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("sensor-3"), "{}", text(&out));
    assert!(!dir.path().join("out/sensor-4.crt").exists());
}

#[test]
fn a_ttl_beyond_the_ca_or_without_unit_is_refused_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = pki_with_config(dir.path());
    add_clients(
        dir.path(),
        &["--config".as_ref(), config.as_os_str()],
        &["sensor-1"],
    );
    // The dev CA lives 3650 days.
    let out = issue(
        dir.path(),
        &config,
        &["sensor-1", "--ttl", "3651d", "--out", "out"],
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("beyond the CA"), "{}", text(&out));
    assert!(!dir.path().join("out/sensor-1.crt").exists());
    let out = issue(
        dir.path(),
        &config,
        &["sensor-1", "--ttl", "30", "--out", "out"],
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let out = issue(
        dir.path(),
        &config,
        &["sensor-1", "--ttl", "0d", "--out", "out"],
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

#[test]
fn issuing_without_a_device_ca_is_a_config_error_but_dev_uses_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = issue(dir.path(), &empty, &["sensor-1"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("certs.device_ca_cert"),
        "{}",
        text(&out)
    );

    add_clients(dir.path(), &["--dev".as_ref()], &["sensor-1"]);
    let out = edgegw(dir.path())
        .args([
            "certs", "issue", "sensor-1", "--ttl", "1d", "--out", "out", "--dev",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let ca = dir.path().join(".edgegw-dev/pki/ca.crt");
    let ok = verify(&ca, &dir.path().join("out/sensor-1.crt"));
    assert!(ok.status.success(), "{}", text(&ok));
}

/// Writes an uplink client certificate valid `days` from `not_before` (unix seconds) and a
/// config that uses it; returns the config path.
fn uplink_config(dir: &Path, not_before: i64, days: u64, refuse_expired: bool) -> PathBuf {
    let ca = certs::Authority::generate(
        "test CA",
        Duration::from_secs(1000 * DAY),
        not_before - 86_400,
    )
    .expect("test setup");
    let issued = ca
        .issue_client("uplink", Duration::from_secs(days * DAY), not_before)
        .expect("test setup");
    let cert = dir.join("uplink.crt");
    let key = dir.join("uplink.key");
    std::fs::write(&cert, &issued.cert_pem).expect("test setup");
    std::fs::write(&key, issued.key_pem.expect("test setup")).expect("test setup");
    let config = dir.join("edgegw.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n\n\
             [uplink]\nclient_cert = \"{c}\"\nclient_key = \"{k}\"\nrefuse_expired = {refuse_expired}\n",
            d = dir.display(),
            c = cert.display(),
            k = key.display()
        ),
    )
    .expect("test setup");
    config
}

fn start(dir: &Path, config: &Path) -> Daemon {
    let mut cmd = edgegw(dir);
    cmd.arg("run").arg("--config").arg(config);
    Daemon::start(cmd)
}

#[test]
fn an_uplink_certificate_ending_in_10_days_is_warned_about_and_60_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = uplink_config(dir.path(), now(), 10, false);
    let mut daemon = start(dir.path(), &config);
    let line = daemon.wait_for_log("expires in", Duration::from_secs(20));
    assert!(
        line.contains("WARN") && line.contains("10 days") && line.contains("uplink.crt"),
        "{line}"
    );
    daemon.wait_for_log("ready", Duration::from_secs(20));
    daemon.signal("TERM");
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = uplink_config(dir.path(), now(), 60, false);
    let mut daemon = start(dir.path(), &config);
    let line = daemon.wait_for_log("certificate valid", Duration::from_secs(20));
    assert!(line.contains("days_left=60"), "{line}");
    daemon.wait_for_log("ready", Duration::from_secs(20));
    assert!(
        !daemon
            .log()
            .iter()
            // Other warnings (e.g. "the CoAPS (DTLS) listener is off") are not about expiry.
            .any(|l| l.contains("expires in") || (l.contains("WARN") && l.contains("certificate"))),
        "warned about a certificate with 60 days left:\n{}",
        daemon.log().join("\n")
    );
}

#[test]
fn an_expired_uplink_certificate_exits_78_only_with_refuse_expired() {
    let dir = tempfile::tempdir().unwrap();
    let config = uplink_config(dir.path(), now() - 100 * 86_400, 10, true);
    let out = edgegw(dir.path())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("uplink.crt") && text(&out).contains("refuse_expired"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.path().join("state").exists(),
        "a refused start created state"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = uplink_config(dir.path(), now() - 100 * 86_400, 10, false);
    let mut daemon = start(dir.path(), &config);
    let line = daemon.wait_for_log("has expired", Duration::from_secs(20));
    assert!(line.contains("ERROR"), "{line}");
    daemon.wait_for_log("ready", Duration::from_secs(20));
    daemon.signal("TERM");
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn run_dev_creates_the_dev_pki_once_and_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = edgegw(dir.path());
    cmd.args(["run", "--dev"]);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("created the development PKI", Duration::from_secs(20));
    daemon.wait_for_log("ready", Duration::from_secs(20));
    daemon.signal("TERM");
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
    let ca = dir.path().join(".edgegw-dev/pki/ca.crt");
    let pem = std::fs::read(&ca).unwrap();
    assert_eq!(mode(&dir.path().join(".edgegw-dev/pki/ca.key")), 0o600);

    let mut cmd = edgegw(dir.path());
    cmd.args(["run", "--dev"]);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log(
        "using the existing development PKI",
        Duration::from_secs(20),
    );
    daemon.wait_for_log("ready", Duration::from_secs(20));
    daemon.signal("TERM");
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        pem,
        "the dev CA was regenerated"
    );
}

fn list(dir: &Path, config: &Path) -> Vec<serde_json::Value> {
    let out = edgegw(dir)
        .args(["certs", "list", "--json", "--config"])
        .arg(config)
        .output()
        .expect("certs list --json output");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("certs list --json output")
        .as_array()
        .expect("certs list --json output")
        .clone()
}

#[test]
fn issue_is_recorded_then_revoke_shows_in_list_and_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, config) = pki_with_config(dir.path());
    for client in ["sensor-1", "sensor-2"] {
        let out = edgegw(dir.path())
            .args(["client", "add", client, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut serials = Vec::new();
    for client in ["sensor-1", "sensor-2"] {
        let out = issue(
            dir.path(),
            &config,
            &[client, "--ttl", "30d", "--out", "out", "--json"],
        );
        assert!(out.status.success(), "{}", text(&out));
        let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(issued["recorded"], true);
        serials.push(issued["serial"].as_str().unwrap().to_owned());
    }
    // An unknown client gets no certificate.
    let out = issue(dir.path(), &config, &["nobody", "--out", "out"]);
    assert!(!out.status.success());
    assert!(!dir.path().join("out/nobody.crt").exists());

    let listed = list(dir.path(), &config);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|c| c["status"] == "valid"), "{listed:?}");
    let mut identities: Vec<&str> = listed
        .iter()
        .map(|c| c["identity"].as_str().unwrap())
        .collect();
    identities.sort_unstable();
    assert_eq!(identities, ["sensor-1", "sensor-2"]);

    // Revoke by client, then by serial.
    let out = edgegw(dir.path())
        .args(["certs", "revoke", "sensor-1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed = list(dir.path(), &config);
    let status = |serial: &str| {
        listed
            .iter()
            .find(|c| c["serial"] == serial)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status(&serials[0]).as_deref(), Some("revoked"));
    assert_eq!(status(&serials[1]).as_deref(), Some("valid"));
    let out = edgegw(dir.path())
        .args(["certs", "revoke", "ffff0000", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "revoking an unknown serial succeeded"
    );

    let crl = dir.path().join("crl.pem");
    let out = edgegw(dir.path())
        .args(["certs", "crl", "--out"])
        .arg(&crl)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shown = openssl(
        &["crl", "-noout", "-text", "-CAfile"],
        &[&pki.join("ca.crt"), Path::new("-in"), &crl],
    );
    let shown = text(&shown);
    assert!(shown.contains("verify OK"), "{shown}");
    assert!(shown.contains(&serials[0].to_uppercase()), "{shown}");
    assert!(!shown.contains(&serials[1].to_uppercase()), "{shown}");
    let out = openssl(
        &["verify", "-crl_check", "-CAfile"],
        &[
            &pki.join("ca.crt"),
            Path::new("-CRLfile"),
            &crl,
            &dir.path().join("out/sensor-1.crt"),
        ],
    );
    assert!(text(&out).contains("certificate revoked"), "{}", text(&out));

    // Each issue and revoke is in the audit table, actor `cli`; the failed revoke is not.
    let db = rusqlite::Connection::open(dir.path().join("state/auth.db")).unwrap();
    let mut st = db
        .prepare(
            "SELECT action, entity_id FROM audit_events
             WHERE method = 'cli' AND actor = 'cli' AND entity_type = 'certs' ORDER BY id",
        )
        .unwrap();
    let audited: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        audited,
        [
            ("cert.issue".to_owned(), serials[0].clone()),
            ("cert.issue".to_owned(), serials[1].clone()),
            ("cert.revoke".to_owned(), serials[0].clone()),
        ]
    );
}
