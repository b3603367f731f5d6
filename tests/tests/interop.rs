//! Issue 21, interoperability with peers nobody here wrote.
//!
//! 21.3: on shutdown the uplink ends TLS with close_notify after DISCONNECT (a rustls server
//! tells a clean end from a truncated one).
//!
//! 21.2: tinydtls (aiocoap's DTLS, many constrained-device stacks) keeps at most 16 PSK key
//! bytes. A secret made by `client add --psk-compatible` (CLI) or `POST
//! /clients?psk_compatible=true` (API) has 16 characters and a DTLS client using it as a
//! 16-byte key (libcoap's `coap-client-openssl -k`, no tinydtls client being installed here)
//! publishes; the default secret cut to 16 bytes, which is what such a stack would send, fails.

use std::time::Duration;

use serde_json::json;
use system_tests::api::{Api, bearer};
use system_tests::{Daemon, coap_client, dev_cli, edgegw, free_udp_port};

/// Channel `psk` in the dev profile's `gateway.domain_id`.
const PSK_PATH: &str = "m/00000000-0000-4000-8000-00000000d0e0/c/psk";

fn stored(dir: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join(".edgegw-dev/state/outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open outbox.db");
    let mut stmt = conn
        .prepare("SELECT payload FROM outbox ORDER BY seq")
        .expect("query");
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("rows")
        .map(|p| String::from_utf8_lossy(&p.expect("row")).into_owned())
        .collect()
}

fn secret_of(json: &serde_json::Value) -> String {
    json["secret"]
        .as_str()
        .or_else(|| json["credentials"]["secret"].as_str())
        .unwrap_or_else(|| panic!("no secret in {json}"))
        .to_owned()
}

#[test]
fn a_psk_compatible_secret_is_a_16_byte_dtls_psk_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    dev_cli(root, &["channel", "add", "psk"]);
    let cli: serde_json::Value = serde_json::from_str(&dev_cli(
        root,
        &["--json", "client", "add", "tiny-1", "--psk-compatible"],
    ))
    .expect("client add JSON");
    let tiny = secret_of(&cli);
    assert_eq!(tiny.len(), 16, "{cli}");
    let full: serde_json::Value =
        serde_json::from_str(&dev_cli(root, &["--json", "client", "add", "full-1"]))
            .expect("client add JSON");
    let full = secret_of(&full);
    assert_eq!(full.len(), 43);
    for c in ["tiny-1", "full-1"] {
        dev_cli(root, &["connect", c, "psk"]);
    }

    let coaps = free_udp_port();
    let mut cmd = edgegw(root);
    cmd.args(["--dev", "run"])
        .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
        .env("EDGEGW_STANDALONE_EMAIL", system_tests::api::EMAIL)
        .env("EDGEGW_STANDALONE_TOKEN", system_tests::api::ADMIN_TOKEN);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("coaps listening", Duration::from_secs(20));
    let api = Api::from_log(&mut daemon);
    let url = format!("coaps://127.0.0.1:{coaps}/{PSK_PATH}");

    // The CLI's 16-character secret, as a 16-byte key.
    let out = coap_client(
        "coap-client-openssl",
        &[
            "-m", "post", "-e", "tiny-cli", "-u", "tiny-1", "-k", &tiny, &url,
        ],
    );
    assert!(
        stored(root).contains(&"tiny-cli".to_owned()),
        "16-byte PSK refused: {out}"
    );
    // A default secret cut to the 16 bytes a tinydtls sensor keeps: the handshake fails.
    let out = coap_client(
        "coap-client-openssl",
        &[
            "-m",
            "post",
            "-e",
            "full-cut",
            "-u",
            "full-1",
            "-k",
            &full[..16],
            &url,
        ],
    );
    assert!(
        !stored(root).contains(&"full-cut".to_owned()),
        "a cut secret was accepted: {out}"
    );

    // The API: `?psk_compatible=true` on creation and on rotation.
    let (token, _) = api.login();
    let r = api.call(
        "POST",
        "/clients?psk_compatible=true",
        Some(&bearer(&token)),
        Some(&json!({ "name": "tiny-2", "credentials": { "identity": "tiny-2" } })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let api_secret = secret_of(&r.body);
    assert_eq!(api_secret.len(), 16, "{}", r.text);
    let r = api.call(
        "PATCH",
        "/clients/tiny-2/secret?psk_compatible=true",
        Some(&bearer(&token)),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let rotated = secret_of(&r.body);
    assert_eq!(rotated.len(), 16, "{}", r.text);
    assert_ne!(rotated, api_secret);
    // Through the API, so the daemon has the grant at once (a CLI change is picked up within
    // a second, by polling).
    let id = r.body["id"].as_str().expect("client id").to_owned();
    let r = api.call(
        "POST",
        "/channels/psk/connect",
        Some(&bearer(&token)),
        Some(&json!({ "client_ids": [id], "types": ["publish"] })),
    );
    assert!(r.status < 300, "{} {}", r.status, r.text);
    let out = coap_client(
        "coap-client-openssl",
        &[
            "-m", "post", "-e", "tiny-api", "-u", "tiny-2", "-k", &rotated, &url,
        ],
    );
    assert!(
        stored(root).contains(&"tiny-api".to_owned()),
        "16-byte PSK from the API refused: {out}"
    );
}

/// How the gateway's TLS connection to a minimal MQTT 3.1.1 broker ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// close_notify, then EOF (rustls reads `Ok(0)`).
    CloseNotify,
    /// TCP closed without close_notify (rustls reports `UnexpectedEof`).
    Truncated(String),
}

/// A TLS server (rustls, the broker certificate of `pki`) that answers CONNECT, SUBSCRIBE,
/// PUBLISH QoS 1 and PINGREQ like a broker and reports, per connection, whether a DISCONNECT
/// was seen and how TLS ended. Only what the uplink sends at start and stop is understood.
fn minimal_broker(
    pki: &system_tests::pki::Pki,
) -> (u16, std::sync::mpsc::Receiver<(bool, Ending)>) {
    use std::io::{Read as _, Write as _};
    let chain = certs::load_certificates(&pki.broker.cert).expect("broker certificate");
    let key = certs::load_private_key(&pki.broker.key).expect("broker key");
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let (config, tx) = (config.clone(), tx.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).expect("server connection");
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut disconnected = false;
                let ending = loop {
                    match tls.read(&mut chunk) {
                        Ok(0) => break Ending::CloseNotify,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) => break Ending::Truncated(e.to_string()),
                    }
                    // Packets: type byte, remaining length (varint), body.
                    loop {
                        let (mut len, mut shift, mut i) = (0usize, 0, 1);
                        let complete = loop {
                            let Some(&b) = buf.get(i) else { break false };
                            len |= usize::from(b & 0x7f) << shift;
                            shift += 7;
                            i += 1;
                            if b & 0x80 == 0 {
                                break true;
                            }
                        };
                        if !complete || buf.len() < i + len {
                            break;
                        }
                        let (kind, body) = (buf[0], buf[i..i + len].to_vec());
                        buf.drain(..i + len);
                        let reply: Vec<u8> = match kind >> 4 {
                            1 => vec![0x20, 2, 0, 0],
                            8 => vec![0x90, 3, body[0], body[1], 1],
                            3 if kind & 0x06 != 0 => {
                                let t = usize::from(u16::from_be_bytes([body[0], body[1]]));
                                vec![0x40, 2, body[2 + t], body[3 + t]]
                            }
                            12 => vec![0xd0, 0],
                            14 => {
                                disconnected = true;
                                Vec::new()
                            }
                            _ => Vec::new(),
                        };
                        if !reply.is_empty() {
                            let _ = tls.write_all(&reply);
                        }
                    }
                };
                let _ = tx.send((disconnected, ending));
            });
        }
    });
    (port, rx)
}

/// 21.3: on shutdown the gateway sends MQTT DISCONNECT and then a TLS close_notify before its
/// FIN, seen by a TLS server that tells a clean TLS end (close_notify) from a truncated one.
#[test]
fn uplink_shutdown_ends_tls_with_close_notify() {
    use system_tests::pki::Pki;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (port, endings) = minimal_broker(&pki);
    let mut cmd = edgegw(dir.path());
    cmd.arg("run")
        .env("EDGEGW_GATEWAY_STATE_DIR", dir.path().join("state"))
        .env("EDGEGW_GATEWAY_RUNTIME_DIR", dir.path().join("run"))
        .env("EDGEGW_UPLINK_URL", format!("mqtts://127.0.0.1:{port}"))
        .env("EDGEGW_UPLINK_CLIENT_CERT", &pki.client.cert)
        .env("EDGEGW_UPLINK_CLIENT_KEY", &pki.client.key)
        .env("EDGEGW_UPLINK_CA_CERTS", &pki.ca.cert)
        .env("EDGEGW_UPLINK_CLIENT_ID", "gw-test")
        .env("EDGEGW_UPLINK_MQTT_VERSION", "3");
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("uplink connected", Duration::from_secs(30));
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("no exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", daemon.log().join("\n"));
    let (disconnected, ending) = endings
        .recv_timeout(Duration::from_secs(10))
        .expect("the gateway's connection never ended");
    assert!(disconnected, "no MQTT DISCONNECT");
    assert_eq!(ending, Ending::CloseNotify, "{}", daemon.log().join("\n"));
}
