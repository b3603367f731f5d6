//! Certificate problems are refused with a clear log line and the outbox keeps the data:
//! no client certificate, a client certificate from another CA, a broker whose certificate
//! does not match the host name. And SIGHUP rotation: the broker sees the new certificate,
//! a broken new file keeps the old connection, nothing is lost; expiry within 30 days warns.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gateway::config::value::{ByteSize, Duration as CfgDuration};
use gateway::config::{Durability, FullPolicy, OutboxConfig};
use gateway::outbox::Outbox;
use system_tests::Daemon;
use system_tests::mosquitto::{Mosquitto, Subscriber};
use system_tests::pki::{Ca, Issued, Pki};
use system_tests::uplink::{check_delivery, env};

/// `ingest_load` with the given environment, in `root`.
fn ingest_load(root: &Path, vars: &[(String, String)], start: u64, count: u64) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingest_load"));
    cmd.current_dir(root)
        .args([start.to_string(), count.to_string(), "3".into()]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EDGEGW_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(vars.iter().cloned());
    Daemon::start(cmd)
}

fn set(vars: &mut Vec<(String, String)>, key: &str, value: Option<&Path>) {
    vars.retain(|(k, _)| k != key);
    if let Some(v) = value {
        vars.push((key.to_owned(), v.display().to_string()));
    }
}

/// Messages still in the outbox of the gateway rooted at `root` (after it stopped).
fn queued(root: &Path) -> u64 {
    let config = OutboxConfig {
        durability: Durability::Fsync,
        max_bytes: ByteSize(1 << 30),
        max_age: CfgDuration::from_secs(86_400),
        full_policy: FullPolicy::Reject,
        max_message_size: ByteSize(1 << 16),
    };
    let (outbox, worker) =
        Outbox::open(&root.join("state/outbox.db"), &config).expect("outbox opens");
    let n = outbox.stats().queued;
    outbox.close();
    worker.join();
    n
}

/// Runs the gateway with `vars` against `broker`, accepts 20 messages, and expects the
/// connection to be refused with a log line containing `expected`; the 20 stay queued.
fn refused(root: &Path, vars: &[(String, String)], expected: &str) {
    let mut gw = ingest_load(root, vars, 0, 20);
    gw.wait_for_log("ACK 19 ", Duration::from_secs(20));
    let line = gw.wait_for_log("uplink connection failed", Duration::from_secs(20));
    assert!(
        line.contains(expected),
        "log line does not say {expected:?}: {line}"
    );
    assert!(
        line.contains("queued messages stay in the outbox"),
        "{line}"
    );
    assert!(
        !gw.log().iter().any(|l| l.contains("uplink connected")),
        "connected despite the certificate problem"
    );
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5));
    assert_eq!(queued(root), 20, "the outbox lost data");
}

#[test]
fn a_gateway_without_client_certificate_is_refused_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut vars = env(dir.path(), &broker, &pki);
    set(&mut vars, "EDGEGW_UPLINK_CLIENT_CERT", None);
    set(&mut vars, "EDGEGW_UPLINK_CLIENT_KEY", None);
    refused(dir.path(), &vars, "requires a client certificate");
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let other = Ca::new(&dir.path().join("other"), "other-ca");
    let stranger = other.issue("stranger", "uplink-1", None, 30);
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut vars = env(dir.path(), &broker, &pki);
    set(&mut vars, "EDGEGW_UPLINK_CLIENT_CERT", Some(&stranger.cert));
    set(&mut vars, "EDGEGW_UPLINK_CLIENT_KEY", Some(&stranger.key));
    refused(dir.path(), &vars, "refused our client certificate");
}

#[test]
fn a_broker_certificate_for_another_host_is_refused_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let wrong = pki
        .ca
        .issue("wrong-host", "broker", Some("DNS:broker.example.com"), 30);
    let broker = Mosquitto::start_with(&dir.path().join("broker"), &pki.ca.cert, &wrong);
    let vars = env(dir.path(), &broker, &pki);
    refused(dir.path(), &vars, "does not match the host name");
}

fn install(issued: &Issued, cert: &Path, key: &Path) {
    // Atomic replacement, as an operator's renewal tool would do.
    for (from, to) in [(&issued.cert, cert), (&issued.key, key)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).expect("copy certificate");
        std::fs::rename(&tmp, to).expect("install certificate");
    }
}

#[test]
fn sighup_rotates_the_uplink_certificate_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut sub = Subscriber::start(&broker, &pki, "m/#");
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = (live.join("uplink.crt"), live.join("uplink.key"));
    install(&pki.client, &cert, &key);
    let mut vars = env(dir.path(), &broker, &pki);
    set(&mut vars, "EDGEGW_UPLINK_CLIENT_CERT", Some(&cert));
    set(&mut vars, "EDGEGW_UPLINK_CLIENT_KEY", Some(&key));
    const N: u64 = 3000;
    let mut gw = ingest_load(dir.path(), &vars, 0, N);
    gw.wait_for_log("uplink connected", Duration::from_secs(20));
    assert!(broker.wait_for_log("u'uplink-1'", Duration::from_secs(5)));
    gw.wait_for_log("ACK 500 ", Duration::from_secs(30));

    // A renewed certificate that expires in 10 days: used, and warned about.
    let renewed = pki.ca.issue("uplink-2", "uplink-2", None, 10);
    install(&renewed, &cert, &key);
    gw.signal("HUP");
    assert!(
        broker.wait_for_log("u'uplink-2'", Duration::from_secs(20)),
        "the broker never saw the new certificate; log:\n{}",
        broker.log()
    );
    let warning = gw.wait_for_log("expires in", Duration::from_secs(5));
    assert!(
        warning.contains("uplink-2")
            && (warning.contains(" 9 days") || warning.contains(" 10 days")),
        "{warning}"
    );

    // A broken file: the current connection stays, and the log says why.
    let connects = broker.log().matches("as gw-test").count();
    std::fs::write(&cert, "not a certificate\n").unwrap();
    gw.signal("HUP");
    let line = gw.wait_for_log("keeping the current ones", Duration::from_secs(10));
    assert!(line.contains("uplink.crt"), "{line}");

    gw.wait_for_log("DRAINED", Duration::from_secs(60));
    assert_eq!(
        broker.log().matches("as gw-test").count(),
        connects,
        "a bad file must not cause a reconnect"
    );
    let arrived = sub.wait_until(Duration::from_secs(30), |l| {
        check_delivery(l, 0..N).missing.is_empty()
    });
    let d = check_delivery(&sub.lines, 0..N);
    assert!(
        arrived,
        "{} lost: {:?}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(10)]
    );
    assert!(d.out_of_order.is_empty(), "{:?}", d.out_of_order);
    eprintln!(
        "rotation: {} received, {} duplicates",
        d.received, d.duplicates
    );
}
