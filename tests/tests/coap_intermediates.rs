//! CoAPS certificate mode with an intermediate CA: root CA → intermediate → device leaf.
//! dimpl hands the gateway only the client's leaf, so intermediates come from
//! `coap_dtls.client_intermediate_certs`. Driven by libcoap's `coap-client-openssl` and
//! `coap-client-gnutls` against the real `edgegw run --dev`; a publish counts as accepted only
//! if it is in `outbox.db`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway::auth::CertificateRecord;
use system_tests::devpki::{Device, dev_auth_store, make_ca, make_device};
use system_tests::{Daemon, coap_client, dev_cli, edgegw, free_udp_port};

const CLIENTS: [&str; 2] = ["coap-client-openssl", "coap-client-gnutls"];

struct Setup {
    dir: tempfile::TempDir,
    pki: PathBuf,
    /// Leaf under the valid intermediate, leaf under the expired one.
    good: Device,
    under_expired: Device,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let pki = root.join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        dev_cli(root, &["channel", "add", "chan-a"]);
        let out = dev_cli(root, &["--json", "client", "add", "sensor-a"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let client_id = v["id"].as_str().expect("id").to_owned();
        dev_cli(root, &["connect", "sensor-a", "chan-a"]);

        let ca = make_ca("device-root", (2020, 2099), None);
        let other = make_ca("other-root", (2020, 2099), None);
        let intermediate = make_ca("device-intermediate", (2020, 2099), Some(&ca));
        let expired = make_ca("expired-intermediate", (2020, 2021), Some(&ca));
        std::fs::write(pki.join("root.crt"), &ca.pem).expect("write");
        std::fs::write(pki.join("other-root.crt"), &other.pem).expect("write");
        std::fs::write(pki.join("intermediate.crt"), &intermediate.pem).expect("write");
        std::fs::write(
            pki.join("both-intermediates.crt"),
            format!("{}{}", intermediate.pem, expired.pem),
        )
        .expect("write");

        ca.write_server(&pki, "server", "localhost", "edgegw");

        let good = make_device(
            &pki,
            "good",
            "sensor-a",
            [0x71, 1, 0x01],
            (2020, 2099),
            Some(&intermediate),
        );
        let under_expired = make_device(
            &pki,
            "under-expired",
            "sensor-a",
            [0x71, 2, 0x01],
            (2020, 2099),
            Some(&expired),
        );
        let store = dev_auth_store(root);
        for dev in [&good, &under_expired] {
            // Recorded, so a refusal proves the chain check, not a missing record.
            let rec = CertificateRecord {
                client_id: client_id.clone(),
                ..dev.record.clone()
            };
            store.record_certificate(&rec).expect("record certificate");
        }
        Self {
            dir,
            pki,
            good,
            under_expired,
        }
    }

    /// `edgegw run --dev` with CoAPS trusting `ca` and, if given, `intermediates`; returns
    /// the daemon and the CoAPS port.
    fn start(&self, ca: &str, intermediates: Option<&str>) -> (Daemon, u16) {
        let coaps = free_udp_port();
        let mut cmd = edgegw(self.dir.path());
        cmd.args(["--dev", "run"])
            .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{}", free_udp_port()))
            .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
            .env("EDGEGW_COAP_DTLS_CERT", self.pki.join("server.crt"))
            .env("EDGEGW_COAP_DTLS_KEY", self.pki.join("server.key"))
            .env("EDGEGW_COAP_DTLS_CLIENT_CA_CERTS", self.pki.join(ca))
            .env("EDGEGW_COAP_DTLS_HANDSHAKE_TIMEOUT", "2s")
            .env("EDGEGW_AUTH_FAILURE_BURST", "100000");
        if let Some(file) = intermediates {
            cmd.env(
                "EDGEGW_COAP_DTLS_CLIENT_INTERMEDIATE_CERTS",
                self.pki.join(file),
            );
        }
        let mut daemon = Daemon::start(cmd);
        daemon.wait_for_log("coaps listening", Duration::from_secs(20));
        (daemon, coaps)
    }

    fn is_stored(&self, payload: &str) -> bool {
        let db = self.dir.path().join(".edgegw-dev/state/outbox.db");
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open outbox.db");
        conn.query_row(
            "SELECT count(*) FROM outbox WHERE payload = ?1",
            [payload.as_bytes()],
            |r| r.get::<_, i64>(0),
        )
        .expect("count")
            > 0
    }

    /// Publishes `payload` with `dev`'s certificate; returns the client's output.
    fn publish(&self, client: &str, port: u16, dev: &Device, payload: &str) -> String {
        let utf8 = |p: &Path| p.to_str().expect("test paths are UTF-8").to_owned();
        let (cert, key, root) = (
            utf8(&dev.cert),
            utf8(&dev.key),
            utf8(&self.pki.join("root.crt")),
        );
        let url = format!("coaps://127.0.0.1:{port}/m/dom/c/chan-a");
        coap_client(
            client,
            &[
                "-m", "post", "-e", payload, "-c", &cert, "-j", &key, "-C", &root, &url,
            ],
        )
    }
}

#[test]
fn a_device_certificate_under_an_intermediate_needs_the_configured_valid_intermediate() {
    let setup = Setup::new();

    // Intermediates configured (the valid one and the expired one): only the chain through
    // the valid one passes.
    let (daemon, port) = setup.start("root.crt", Some("both-intermediates.crt"));
    for client in CLIENTS {
        let ok = format!("via-intermediate-{client}");
        let out = setup.publish(client, port, &setup.good, &ok);
        assert!(setup.is_stored(&ok), "{client}: not stored: {out}");
        let bad = format!("via-expired-{client}");
        let out = setup.publish(client, port, &setup.under_expired, &bad);
        assert!(
            !setup.is_stored(&bad),
            "{client}: leaf under an expired intermediate accepted: {out}"
        );
    }
    drop(daemon);

    // Without the intermediate the leaf cannot be chained to the root.
    let (daemon, port) = setup.start("root.crt", None);
    for client in CLIENTS {
        let bad = format!("no-intermediate-{client}");
        let out = setup.publish(client, port, &setup.good, &bad);
        assert!(
            !setup.is_stored(&bad),
            "{client}: accepted without the intermediate: {out}"
        );
    }
    drop(daemon);

    // An intermediate is not a trust anchor: under another root, it does not help.
    let (daemon, port) = setup.start("other-root.crt", Some("intermediate.crt"));
    let bad = "intermediate-as-anchor";
    let out = setup.publish(CLIENTS[0], port, &setup.good, bad);
    assert!(
        !setup.is_stored(bad),
        "the intermediate was trusted on its own: {out}"
    );
    drop(daemon);
}

#[test]
fn an_unreadable_or_unparsable_intermediate_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    for file in [dir.path().join("missing.pem"), garbage] {
        let out = edgegw(dir.path())
            .args(["--dev", "check-config"])
            .env("EDGEGW_COAP_DTLS_CLIENT_INTERMEDIATE_CERTS", &file)
            .output()
            .expect("run edgegw");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{file:?}: {stderr}");
        assert!(
            stderr.contains("coap_dtls.client_intermediate_certs")
                && stderr.contains(&*file.to_string_lossy()),
            "{file:?}: the error must name the key and the file: {stderr}"
        );
    }
}
