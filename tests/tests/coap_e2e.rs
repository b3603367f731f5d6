//! End to end: the real `edgegw run --dev` with its CoAP (udp) and CoAPS (DTLS) listeners,
//! driven by libcoap's `coap-client-openssl` and `coap-client-gnutls`. Every answer the sensor
//! got as 2.04 must be in `outbox.db` (read directly with SQLite); refused ones must not.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use gateway::auth::CertificateRecord;
use system_tests::devpki::{Device, dev_auth_store, make_ca, make_device};
use system_tests::{Daemon, coap_client, dev_cli, edgegw, free_udp_port};

const CLIENTS: [&str; 2] = ["coap-client-openssl", "coap-client-gnutls"];

fn json_field(json: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("json output");
    v[field].as_str().expect("string field").to_owned()
}

struct Gateway {
    dir: tempfile::TempDir,
    daemon: Daemon,
    coap: u16,
    coaps: u16,
    /// identity → secret
    secrets: Vec<(String, String)>,
    devices: Vec<(&'static str, Device)>,
}

impl Gateway {
    fn secret(&self, identity: &str) -> &str {
        &self
            .secrets
            .iter()
            .find(|(i, _)| i == identity)
            .expect("known identity")
            .1
    }

    fn device(&self, name: &str) -> &Device {
        &self
            .devices
            .iter()
            .find(|(n, _)| *n == name)
            .expect("known device")
            .1
    }

    /// Payloads stored in the outbox.
    fn stored(&self) -> Vec<String> {
        let db = self.dir.path().join(".edgegw-dev/state/outbox.db");
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open outbox.db");
        let mut stmt = conn
            .prepare("SELECT payload FROM outbox ORDER BY seq")
            .expect("query");
        stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .expect("rows")
            .map(|p| String::from_utf8_lossy(&p.expect("row")).into_owned())
            .collect()
    }

    fn is_stored(&self, payload: &str) -> bool {
        self.stored().iter().any(|p| p == payload)
    }
}

fn start() -> Gateway {
    start_with(&[])
}

fn start_with(extra_env: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let pki = root.join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");

    // Clients and channels, before the daemon starts (the CLI opens auth.db itself).
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    dev_cli(root, &["channel", "add", "chan-a"]);
    for identity in ["sensor-a", "sensor-off", "sensor-nc", "sensor-rev"] {
        let out = dev_cli(root, &["--json", "client", "add", identity]);
        secrets.push((identity.to_owned(), json_field(&out, "secret")));
        ids.push((identity, json_field(&out, "id")));
    }
    for identity in ["sensor-a", "sensor-off", "sensor-rev"] {
        dev_cli(root, &["connect", identity, "chan-a"]);
    }
    dev_cli(root, &["client", "disable", "sensor-off"]);

    // PKI: device CA, another CA, DTLS server cert, device certificates.
    let ca = make_ca("device-ca", (2020, 2099), None);
    ca.write(&pki, "device-ca");
    let other = make_ca("other-ca", (2020, 2099), None);
    other.write(&pki, "other-ca");
    ca.write_server(&pki, "server", "localhost", "edgegw");

    let devices = vec![
        (
            "good",
            make_device(
                &pki,
                "good",
                "sensor-a",
                [0x70, 1, 0x01],
                (2020, 2099),
                Some(&ca),
            ),
        ),
        (
            "self",
            make_device(
                &pki,
                "self",
                "sensor-a",
                [0x70, 2, 0x01],
                (2020, 2099),
                None,
            ),
        ),
        (
            "other",
            make_device(
                &pki,
                "other",
                "sensor-a",
                [0x70, 3, 0x01],
                (2020, 2099),
                Some(&other),
            ),
        ),
        (
            "expired",
            make_device(
                &pki,
                "expired",
                "sensor-a",
                [0x70, 4, 0x01],
                (2020, 2021),
                Some(&ca),
            ),
        ),
        (
            "notyet",
            make_device(
                &pki,
                "notyet",
                "sensor-a",
                [0x70, 5, 0x01],
                (2098, 2099),
                Some(&ca),
            ),
        ),
        (
            "unknown",
            make_device(
                &pki,
                "unknown",
                "nobody",
                [0x70, 6, 0x01],
                (2020, 2099),
                Some(&ca),
            ),
        ),
        (
            "revoked",
            make_device(
                &pki,
                "revoked",
                "sensor-rev",
                [0x70, 7, 0x01],
                (2020, 2099),
                Some(&ca),
            ),
        ),
        (
            "disabled",
            make_device(
                &pki,
                "disabled",
                "sensor-off",
                [0x70, 8, 0x01],
                (2020, 2099),
                Some(&ca),
            ),
        ),
        // Same CA, CN and serial as "good", another key: not the recorded certificate.
        (
            "twin",
            make_device(
                &pki,
                "twin",
                "sensor-a",
                [0x70, 1, 0x01],
                (2020, 2099),
                Some(&ca),
            ),
        ),
    ];
    {
        let store = dev_auth_store(root);
        for (name, dev) in &devices {
            // Every certificate is recorded (except the unknown CN's, and the twin whose serial is
            // the good one's), so a refusal proves the chain / validity / fingerprint check.
            let cn_owner = match *name {
                "unknown" | "twin" => continue,
                "revoked" => "sensor-rev",
                "disabled" => "sensor-off",
                _ => "sensor-a",
            };
            let id = &ids.iter().find(|(i, _)| *i == cn_owner).expect("id").1;
            let rec = CertificateRecord {
                client_id: id.clone(),
                ..dev.record.clone()
            };
            store.record_certificate(&rec).expect("record certificate");
        }
        store
            .revoke_certificate(&devices[6].1.record.serial_hex)
            .expect("revoke");
    }

    let coap = free_udp_port();
    let coaps = free_udp_port();
    let mut cmd = edgegw(root);
    cmd.args(["--dev", "run"])
        .env(
            "EDGEGW_GATEWAY_LOG_LEVEL",
            "info,gateway::adapters::coap=debug",
        )
        .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{coap}"))
        .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
        .env("EDGEGW_COAP_DTLS_CERT", pki.join("server.crt"))
        .env("EDGEGW_COAP_DTLS_KEY", pki.join("server.key"))
        .env(
            "EDGEGW_COAP_DTLS_CLIENT_CA_CERTS",
            pki.join("device-ca.crt"),
        )
        .env("EDGEGW_COAP_DTLS_HANDSHAKE_TIMEOUT", "2s")
        // Many deliberate failures from 127.0.0.1: keep the failure throttle out of the way.
        .env("EDGEGW_AUTH_FAILURE_BURST", "100000");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("coaps listening", Duration::from_secs(20));
    daemon.wait_for_log("coap listening", Duration::from_secs(5));
    Gateway {
        dir,
        daemon,
        coap,
        coaps,
        secrets,
        devices,
    }
}

#[test]
fn plain_coap_query_forms_and_refusals() {
    let gw = start();
    let secret = gw.secret("sensor-a");
    for (i, client) in CLIENTS.iter().enumerate() {
        // auth=<secret> on the SuperMQ path, username/password on the legacy path.
        let p1 = format!("plain-auth-{i}");
        let out = coap_client(
            client,
            &[
                "-m",
                "post",
                "-e",
                &p1,
                &format!(
                    "coap://127.0.0.1:{}/m/dom/c/chan-a/sub?auth={secret}",
                    gw.coap
                ),
            ],
        );
        assert!(gw.is_stored(&p1), "{client}: auth= not stored: {out}");
        let p2 = format!("plain-userpass-{i}");
        let out = coap_client(
            client,
            &[
                "-m",
                "post",
                "-e",
                &p2,
                &format!(
                    "coap://127.0.0.1:{}/channels/chan-a/messages?username=sensor-a&password={secret}",
                    gw.coap
                ),
            ],
        );
        assert!(
            gw.is_stored(&p2),
            "{client}: username/password not stored: {out}"
        );

        let cases = [
            ("4.01", format!("m/dom/c/chan-a?auth=wrong-secret-{i}")),
            (
                "4.01",
                format!(
                    "m/dom/c/chan-a?username=sensor-off&password={}",
                    gw.secret("sensor-off")
                ),
            ),
            (
                "4.03",
                format!(
                    "m/dom/c/chan-a?username=sensor-nc&password={}",
                    gw.secret("sensor-nc")
                ),
            ),
            ("4.01", "m/dom/c/chan-a".to_owned()),
        ];
        for (n, (code, path)) in cases.iter().enumerate() {
            let payload = format!("refused-{i}-{n}");
            let out = coap_client(
                client,
                &[
                    "-m",
                    "post",
                    "-e",
                    &payload,
                    &format!("coap://127.0.0.1:{}/{path}", gw.coap),
                ],
            );
            assert!(
                out.contains(code),
                "{client}: expected {code} for case {n}, got: {out}"
            );
            assert!(
                !gw.is_stored(&payload),
                "{client}: refused message {n} was stored"
            );
        }
    }
}

#[test]
fn dtls_psk_right_key_is_stored_wrong_key_and_unknown_identity_fail() {
    let gw = start();
    let secret = gw.secret("sensor-a");
    let url = format!("coaps://127.0.0.1:{}/m/dom/c/chan-a", gw.coaps);
    for client in CLIENTS {
        let ok = format!("psk-ok-{client}");
        let out = coap_client(
            client,
            &[
                "-m", "post", "-e", &ok, "-u", "sensor-a", "-k", secret, &url,
            ],
        );
        assert!(gw.is_stored(&ok), "{client}: PSK publish not stored: {out}");

        for (n, (identity, key)) in [
            ("sensor-a", "definitely-the-wrong-key"),
            ("no-such-sensor", secret),
            ("sensor-off", gw.secret("sensor-off")),
        ]
        .iter()
        .enumerate()
        {
            let bad = format!("psk-bad-{client}-{n}");
            let started = Instant::now();
            let out = coap_client(
                client,
                &["-m", "post", "-e", &bad, "-u", identity, "-k", key, &url],
            );
            assert!(
                !gw.is_stored(&bad),
                "{client}: refused PSK message {n} stored: {out}"
            );
            // The fatal alert makes the client give up at once instead of retrying for -B.
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{client}: case {n} took {:?} (no alert?): {out}",
                started.elapsed()
            );
        }
    }
}

#[test]
fn dtls_certificates_only_ca_signed_valid_known_unrevoked_pass() {
    let gw = start();
    let url = format!("coaps://127.0.0.1:{}/m/dom/c/chan-a", gw.coaps);
    let ca = gw.dir.path().join("pki/device-ca.crt");
    for client in CLIENTS {
        let good = gw.device("good");
        let ok = format!("cert-ok-{client}");
        let out = coap_client(
            client,
            &[
                "-m",
                "post",
                "-e",
                &ok,
                "-c",
                good.cert.to_str().expect("utf8"),
                "-j",
                good.key.to_str().expect("utf8"),
                "-C",
                ca.to_str().expect("utf8"),
                &url,
            ],
        );
        assert!(
            gw.is_stored(&ok),
            "{client}: certificate publish not stored: {out}"
        );

        for name in [
            "self", "other", "expired", "notyet", "unknown", "revoked", "disabled", "twin",
        ] {
            let dev = gw.device(name);
            let bad = format!("cert-bad-{client}-{name}");
            let out = coap_client(
                client,
                &[
                    "-m",
                    "post",
                    "-e",
                    &bad,
                    "-c",
                    dev.cert.to_str().expect("utf8"),
                    "-j",
                    dev.key.to_str().expect("utf8"),
                    "-C",
                    ca.to_str().expect("utf8"),
                    &url,
                ],
            );
            assert!(
                !gw.is_stored(&bad),
                "{client}: {name} certificate accepted: {out}"
            );
        }
        // No client certificate at all (and no PSK): refused.
        let none = format!("cert-none-{client}");
        let out = coap_client(client, &["-m", "post", "-e", &none, &url]);
        assert!(
            !gw.is_stored(&none),
            "{client}: anonymous DTLS accepted: {out}"
        );
    }
}

/// A syntactically valid DTLS 1.2 ClientHello offering `suite`, no cookie, no extensions.
fn client_hello(suite: u16, seq: u8) -> Vec<u8> {
    let mut body = vec![0xFE, 0xFD];
    body.extend_from_slice(&[seq; 32]); // random
    body.push(0); // session id
    body.push(0); // cookie
    body.extend_from_slice(&2u16.to_be_bytes());
    body.extend_from_slice(&suite.to_be_bytes());
    body.extend_from_slice(&[1, 0]); // compression: null
    let len = body.len() as u32;
    let mut hs = vec![1];
    hs.extend_from_slice(&len.to_be_bytes()[1..]);
    hs.extend_from_slice(&[0, 0]); // message_seq
    hs.extend_from_slice(&[0, 0, 0]); // fragment offset
    hs.extend_from_slice(&len.to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, u16::from(seq) as u8];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 24) as u8
        })
        .collect()
}

fn last_session_line(daemon: &mut Daemon) -> Option<String> {
    daemon
        .log()
        .iter()
        .rev()
        .find(|l| l.contains("coaps session table"))
        .cloned()
}

#[test]
fn garbage_and_truncated_handshakes_never_crash_and_sessions_return_to_zero() {
    let mut gw = start();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut sent = 0;
    for i in 0..3000u32 {
        let len = (i as usize * 7) % 1400 + 1;
        let mut d = noise(&mut state, len);
        match i % 5 {
            // Records that look like DTLS handshake / application data.
            0 => {
                d[0] = 22;
                if d.len() > 2 {
                    d[1] = 0xFE;
                    d[2] = 0xFD;
                }
            }
            1 => d[0] = 23,
            // Truncated ClientHellos, and whole ones that never continue (half-open).
            2 => {
                let hello = client_hello(if i % 2 == 0 { 0xC0A8 } else { 0xC02B }, i as u8);
                d = hello[..(i as usize % hello.len()).max(1)].to_vec();
            }
            3 => d = client_hello(0xC0A8, i as u8),
            _ => {}
        }
        sock.send_to(&d, ("127.0.0.1", gw.coaps)).expect("send");
        // CoAP listener too: arbitrary bytes and CoAP-looking headers.
        if i % 2 == 0 {
            d[0] = 0x40 | (d[0] & 0x3F);
        }
        sock.send_to(&d, ("127.0.0.1", gw.coap)).expect("send");
        sent += 2;
    }
    // Half-open handshakes from many source ports, all abandoned.
    for i in 0..200u8 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.send_to(&client_hello(0xC0A8, i), ("127.0.0.1", gw.coaps))
            .expect("send");
        sent += 1;
    }
    assert!(sent > 6000);

    // Still serving: a real PSK publish goes through.
    let secret = gw.secret("sensor-a").to_owned();
    let url = format!("coaps://127.0.0.1:{}/m/dom/c/chan-a", gw.coaps);
    let out = coap_client(
        CLIENTS[0],
        &[
            "-m",
            "post",
            "-e",
            "after-flood",
            "-u",
            "sensor-a",
            "-k",
            &secret,
            &url,
        ],
    );
    assert!(
        gw.is_stored("after-flood"),
        "daemon stopped serving after the flood: {out}"
    );
    let out = coap_client(
        CLIENTS[1],
        &[
            "-m",
            "post",
            "-e",
            "after-flood-plain",
            &format!("coap://127.0.0.1:{}/m/d/c/chan-a?auth={secret}", gw.coap),
        ],
    );
    assert!(
        gw.is_stored("after-flood-plain"),
        "plain CoAP stopped after the flood: {out}"
    );

    // Every half-open handshake times out (2 s): the table drains to zero.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = last_session_line(&mut gw.daemon);
        if line
            .as_deref()
            .is_some_and(|l| l.contains("sessions=0 handshakes=0"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session table did not drain; last: {line:?}"
        );
        // Log lines are the event here; re-read them a few times a second.
        std::thread::sleep(Duration::from_millis(200));
    }
    let peak = gw
        .daemon
        .log()
        .iter()
        .filter_map(|l| l.split("handshakes=").nth(1))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    assert!(peak > 0, "the flood never opened a handshake");
    assert!(peak <= 256, "half-open handshakes exceeded the cap: {peak}");
    assert!(
        gw.daemon.wait_exit(Duration::from_millis(1)).is_none(),
        "daemon exited"
    );
}

/// A long-lived CoAPS session (an Observe registration keeps the client running).
fn observe_over_dtls(gw: &Gateway, auth: &[&str]) -> std::process::Child {
    Command::new("coap-client-openssl")
        .args(["-B", "30", "-s", "30", "-m", "get"])
        .args(auth)
        .arg(format!("coaps://127.0.0.1:{}/m/dom/c/chan-a", gw.coaps))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("coap-client-openssl")
}

#[test]
fn revoking_a_certificate_or_disabling_a_client_ends_live_sessions() {
    let mut gw = start();
    let good = gw.device("good");
    let ca = gw.dir.path().join("pki/device-ca.crt");
    let (cert, key) = (
        good.cert.to_str().expect("utf8").to_owned(),
        good.key.to_str().expect("utf8").to_owned(),
    );
    let serial = good.record.serial_hex.clone();
    let mut observer = observe_over_dtls(
        &gw,
        &["-c", &cert, "-j", &key, "-C", ca.to_str().expect("utf8")],
    );
    gw.daemon
        .wait_for_log("mode=Certificate", Duration::from_secs(15));
    {
        let store = dev_auth_store(gw.dir.path());
        store.revoke_certificate(&serial).expect("revoke");
    }
    gw.daemon
        .wait_for_log("dtls session ended: client", Duration::from_secs(10));
    let _ = observer.kill();
    let _ = observer.wait();

    // PSK: disabling the client ends its session.
    let secret = gw.secret("sensor-a").to_owned();
    let mut observer = observe_over_dtls(&gw, &["-u", "sensor-a", "-k", &secret]);
    gw.daemon.wait_for_log("mode=Psk", Duration::from_secs(15));
    let before = session_ends(&mut gw.daemon);
    dev_cli(gw.dir.path(), &["client", "disable", "sensor-a"]);
    wait_for_another_session_end(&mut gw.daemon, before, "a disabled client");
    let _ = observer.kill();
    let _ = observer.wait();

    // PSK: rotating the secret ends the session that used the old one.
    let secret = gw.secret("sensor-rev").to_owned();
    let mut observer = observe_over_dtls(&gw, &["-u", "sensor-rev", "-k", &secret]);
    gw.daemon
        .wait_for_log("client=sensor-rev mode=Psk", Duration::from_secs(15));
    let before = session_ends(&mut gw.daemon);
    dev_cli(gw.dir.path(), &["client", "rotate-secret", "sensor-rev"]);
    wait_for_another_session_end(&mut gw.daemon, before, "a rotated secret");
    let _ = observer.kill();
    let _ = observer.wait();
}

fn session_ends(daemon: &mut Daemon) -> usize {
    daemon
        .log()
        .iter()
        .filter(|l| l.contains("dtls session ended: client"))
        .count()
}

fn wait_for_another_session_end(daemon: &mut Daemon, before: usize, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while session_ends(daemon) <= before {
        assert!(
            Instant::now() < deadline,
            "PSK session still alive after {why}"
        );
        // The daemon's log is the event; re-read it a few times a second.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_taken_port_stops_a_production_daemon_but_only_warns_in_dev() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = edgegw(dir.path())
        .arg("run")
        .env("EDGEGW_GATEWAY_STATE_DIR", dir.path().join("state"))
        .env("EDGEGW_GATEWAY_RUNTIME_DIR", dir.path().join("run"))
        .env("EDGEGW_COAP_BIND", &addr)
        .output()
        .expect("run edgegw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a taken port: {stderr}");
    assert!(
        stderr.contains(&format!("cannot bind the CoAP listener to udp {addr}")),
        "{stderr}"
    );

    let mut cmd = edgegw(dir.path());
    cmd.args(["--dev", "run"]).env("EDGEGW_COAP_BIND", &addr);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("the CoAP listener is off", Duration::from_secs(20));
    daemon.wait_for_log("edgegw: ready", Duration::from_secs(20));
    daemon.signal("TERM");
    let code = daemon
        .wait_exit(Duration::from_secs(10))
        .and_then(|s| s.code());
    assert_eq!(code, Some(0), "log:\n{}", daemon.log().join("\n"));
}

#[test]
fn block1_transfers_are_reassembled_up_to_max_payload() {
    let gw = start();
    let secret = gw.secret("sensor-a");
    let url = format!("coap://127.0.0.1:{}/m/dom/c/chan-a?auth={secret}", gw.coap);
    let dir = gw.dir.path();
    // 10 000 bytes in 256-byte blocks: stored whole.
    let big: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(dir.join("big.txt"), &big).expect("write");
    for client in CLIENTS {
        let before = gw.stored().len();
        let out = coap_client(
            client,
            &[
                "-m",
                "post",
                "-b",
                "256",
                "-f",
                dir.join("big.txt").to_str().expect("utf8"),
                &url,
            ],
        );
        let stored = gw.stored();
        assert_eq!(stored.len(), before + 1, "{client}: {out}");
        assert_eq!(
            stored.last().map(String::len),
            Some(10_000),
            "{client}: {out}"
        );
        assert_eq!(
            stored.last(),
            Some(&big),
            "{client}: reassembled payload differs"
        );
    }
    // 70 000 bytes: beyond coap.max_payload (64 KiB) → 4.13, nothing stored.
    let huge = "x".repeat(70_000);
    std::fs::write(dir.join("huge.txt"), &huge).expect("write");
    for client in CLIENTS {
        let before = gw.stored().len();
        let out = coap_client(
            client,
            &[
                "-m",
                "post",
                "-b",
                "1024",
                "-f",
                dir.join("huge.txt").to_str().expect("utf8"),
                &url,
            ],
        );
        assert!(out.contains("4.13"), "{client}: expected 4.13: {out}");
        assert_eq!(
            gw.stored().len(),
            before,
            "{client}: oversize message stored"
        );
    }
}

#[test]
fn a_full_outbox_answers_5_03_and_stores_nothing_more() {
    let gw = start_with(&[
        ("EDGEGW_OUTBOX_MAX_BYTES", "2KiB"),
        ("EDGEGW_OUTBOX_MAX_MESSAGE_SIZE", "1KiB"),
    ]);
    let secret = gw.secret("sensor-a");
    let url = format!("coap://127.0.0.1:{}/m/dom/c/chan-a?auth={secret}", gw.coap);
    let mut busy = None;
    for n in 0..10 {
        let payload = format!("{n:03}{}", "p".repeat(600));
        let out = coap_client(CLIENTS[0], &["-m", "post", "-e", &payload, &url]);
        if out.contains("5.03") {
            assert!(!gw.is_stored(&payload), "a 5.03'd message was stored");
            busy = Some(n);
            break;
        }
        assert!(
            gw.is_stored(&payload),
            "message {n} neither stored nor refused: {out}"
        );
    }
    let n = busy.expect("the outbox never reported full");
    assert!(n >= 2, "refused too early ({n})");
}

/// `client_hello` with a cookie and a message sequence number (the hello after a
/// HelloVerifyRequest), offering `suite`.
fn client_hello_with_cookie(suite: u16, random: u8, cookie: &[u8], message_seq: u8) -> Vec<u8> {
    let mut body = vec![0xFE, 0xFD];
    body.extend_from_slice(&[random; 32]);
    body.push(0);
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    body.extend_from_slice(&2u16.to_be_bytes());
    body.extend_from_slice(&suite.to_be_bytes());
    body.extend_from_slice(&[1, 0]);
    let len = body.len() as u32;
    let mut hs = vec![1];
    hs.extend_from_slice(&len.to_be_bytes()[1..]);
    hs.extend_from_slice(&[0, message_seq]);
    hs.extend_from_slice(&[0, 0, 0]);
    hs.extend_from_slice(&len.to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, message_seq];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn a_hello_offering_no_usable_suite_gets_handshake_failure_at_once() {
    let gw = start();
    // Crafted: PSK-AES128-GCM-SHA256 (0x00A8) only. First the cookie exchange (so the alert
    // cannot be reflected at a spoofed address), then the alert.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.send_to(&client_hello(0x00A8, 3), ("127.0.0.1", gw.coaps))
        .expect("send");
    let mut buf = [0u8; 2048];
    let n = sock
        .recv(&mut buf)
        .expect("a HelloVerifyRequest, not silence");
    let hvr = &buf[..n];
    assert_eq!(
        (hvr[0], hvr[13]),
        (22, 3),
        "not a HelloVerifyRequest: {hvr:02x?}"
    );
    let cookie = hvr[13 + 12 + 3..13 + 12 + 3 + usize::from(hvr[13 + 12 + 2])].to_vec();
    let sent = Instant::now();
    sock.send_to(
        &client_hello_with_cookie(0x00A8, 3, &cookie, 1),
        ("127.0.0.1", gw.coaps),
    )
    .expect("send");
    let n = sock.recv(&mut buf).expect("an alert (got silence)");
    let waited = sent.elapsed();
    let alert = &buf[..n];
    assert_eq!(
        (alert[0], alert.get(13..15)),
        (21, Some(&[2u8, 40][..])),
        "not a fatal handshake_failure alert: {alert:02x?}"
    );
    // The bound is read from the alert's arrival: before, the client heard nothing until its
    // handshake timed out (10 s).
    assert!(waited < Duration::from_secs(2), "alert after {waited:?}");

    // A real peer: `openssl s_client` offering only that suite fails with handshake_failure,
    // and its output says so soon after it started (the time is read when that line arrives).
    let secret = gw.secret("sensor-a").to_owned();
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let started = Instant::now();
    let mut child = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-dtls1_2", "-connect"])
        .arg(format!("127.0.0.1:{}", gw.coaps))
        .args(["-psk_identity", "sensor-a", "-psk", &hex])
        .args(["-cipher", "PSK-AES128-GCM-SHA256"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let stderr = child.stderr.take().expect("stderr");
    let mut failed_at = None;
    let mut text = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let Ok(line) = line else { break };
        if failed_at.is_none() && line.contains("handshake failure") {
            failed_at = Some(started.elapsed());
        }
        text.push_str(&line);
        text.push('\n');
    }
    let _ = child.wait();
    let failed_at = failed_at.unwrap_or_else(|| panic!("no handshake_failure: {text}"));
    assert!(
        failed_at < Duration::from_secs(3),
        "s_client heard handshake_failure only after {failed_at:?}: {text}"
    );
}

#[test]
fn a_flood_of_spoofed_hellos_does_not_stop_a_real_psk_handshake() {
    let gw = start();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], gw.coaps));
    // Senders on other addresses of 127.0.0.0/8 (and other ports of 127.0.0.1) that never
    // answer a HelloVerifyRequest: what a spoofer can send without seeing replies.
    let sockets: Vec<UdpSocket> = (0..600u32)
        .map(|i| {
            let ip = if i % 10 == 0 {
                [127, 0, 0, 1]
            } else {
                [127, 0, (2 + i / 200) as u8, (2 + i % 200) as u8]
            };
            UdpSocket::bind(std::net::SocketAddr::from((ip, 0))).expect("bind 127/8")
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, s) in sockets.iter().enumerate() {
                    let hello = client_hello(0xC0A8, (sent as u8) ^ (i as u8));
                    let _ = s.send_to(&hello, target);
                    sent += 1;
                    // A steady few thousand hellos a second (no gaps a retransmission could
                    // slip through): far beyond 256 slots in a 2 s handshake timeout.
                    if i % 4 == 0 {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            }
            sent
        })
    };
    // Let the flood fill what it can fill.
    std::thread::sleep(Duration::from_secs(1));
    let secret = gw.secret("sensor-a").to_owned();
    let url = format!("coaps://127.0.0.1:{}/m/dom/c/chan-a", gw.coaps);
    let mut outs = Vec::new();
    for (i, client) in CLIENTS.iter().enumerate() {
        let payload = format!("during-flood-{i}");
        let out = coap_client(
            client,
            &[
                "-m", "post", "-e", &payload, "-u", "sensor-a", "-k", &secret, &url,
            ],
        );
        outs.push((payload, out));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().expect("flood thread");
    for (payload, out) in outs {
        assert!(
            gw.is_stored(&payload),
            "a real handshake failed under the hello flood ({sent} hellos): {out}"
        );
    }
    assert!(sent > 2000, "flood too small: {sent}");
}
