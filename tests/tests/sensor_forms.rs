//! End to end (issue 16, sensor side): a SuperMQ user's devices work unchanged against the
//! real `edgegw run`, with a real mosquitto (mTLS) upstream, curl and libcoap's
//! `coap-client-openssl`:
//!
//! - HTTP adapter credentials as SuperMQ takes them (supermq v0.19.1 `http/handler.go`
//!   `authAccess`, `http/api/transport.go` `decodePublishReq`): Basic `<client id>:<secret>`
//!   and the bare secret as the `Authorization` value → 202 and the message upstream.
//! - CoAP `?username=<client id>&password=<secret>` (SuperMQ ≥ 0.20 / FluxMQ,
//!   supermq HEAD `fluxmq/api/grpc/server.go` `Authenticate`: the username is the client id).
//! - `hc/<domain>` (supermq v0.19.1 `pkg/messaging/topics.go` `HealthType`,
//!   `http/api/response.go` `healthCheckRes` → 200, `coap/api/transport.go` POST → 2.01,
//!   `coap/adapter.go` `Publish`: domain authentication only).
//! - Server-only CoAPS: DTLS with the server certificate only (`coap-client-openssl -n`, or
//!   `-R ca` to verify the server), the secret in `?auth=` in each request (supermq v0.19.1
//!   `coap/api/transport.go` `parseKey`; mgate `pkg/tls/tls.go`: no client CA, no client
//!   certificate), on the one port with PSK and device-certificate clients; throttled like
//!   plain CoAP; off with `coap_dtls.server_only_auth = false`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use gateway::auth::{AuthStore, CertificateRecord};
use gateway::config::AuthConfig;
use system_tests::api::{ADMIN_TOKEN, Api, EMAIL, run};
use system_tests::devpki::{Device, make_ca, make_device};
use system_tests::mosquitto::{Mosquitto, Subscriber};
use system_tests::pki::Pki;
use system_tests::uplink::env;
use system_tests::{Daemon, coap_client, edgegw, free_udp_port, json_cli};

const DOMAIN: &str = "dom-sf";
const CLIENT: &str = "coap-client-openssl";

/// A daemon with every sensor listener, one client (`sf-1`, publish on channel `sf`, a
/// recorded device certificate), a mosquitto upstream and a subscriber on `m/#`.
struct Gateway {
    _dir: tempfile::TempDir,
    _broker: Mosquitto,
    daemon: Daemon,
    sub: Subscriber,
    api: Api,
    coap: u16,
    coaps: u16,
    /// The client's id and secret.
    id: String,
    secret: String,
    /// The channel's id: upstream topics are `m/dom-sf/c/<channel_id>/…`.
    channel_id: String,
    server_ca: PathBuf,
    device: Device,
}

impl Gateway {
    fn start(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let pki = Pki::new(&root.join("pki"));
        let broker = Mosquitto::start(&root.join("broker"), &pki);
        let mut vars = env(root, &broker, &pki);
        vars.push(("EDGEGW_GATEWAY_DOMAIN_ID".into(), DOMAIN.into()));
        let channel = json_cli(root, &vars, &["channel", "add", "sf"]);
        let client = json_cli(root, &vars, &["client", "add", "sf-1"]);
        json_cli(
            root,
            &vars,
            &["connect", "sf-1", "sf", "--publish", "--subscribe"],
        );
        let text = |v: &serde_json::Value, k: &str| v[k].as_str().expect(k).to_owned();
        let (id, secret) = (text(&client, "id"), text(&client, "secret"));

        // DTLS server identity and device PKI (the device certificate recorded for sf-1).
        let dtls = root.join("dtls");
        std::fs::create_dir_all(&dtls).expect("dtls dir");
        let ca = make_ca("sf-device-ca", (2020, 2099), None);
        ca.write(&dtls, "device-ca");
        ca.write_server(&dtls, "server", "localhost", "edgegw");
        let device = make_device(&dtls, "sf-1", "sf-1", [0x51, 1, 1], (2020, 2099), Some(&ca));
        AuthStore::open(&root.join("state/auth.db"), &AuthConfig::default())
            .expect("auth store")
            .record_certificate(&CertificateRecord {
                client_id: id.clone(),
                ..device.record.clone()
            })
            .expect("record certificate");

        let sub = Subscriber::start(&broker, &pki, "m/#");
        let (coap, coaps) = (free_udp_port(), free_udp_port());
        let mut cmd = edgegw(root);
        cmd.arg("run")
            .envs(vars.iter().cloned())
            .env("EDGEGW_STANDALONE_EMAIL", EMAIL)
            .env("EDGEGW_STANDALONE_TOKEN", ADMIN_TOKEN)
            .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{coap}"))
            .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
            .env("EDGEGW_COAP_DTLS_CERT", dtls.join("server.crt"))
            .env("EDGEGW_COAP_DTLS_KEY", dtls.join("server.key"))
            .env(
                "EDGEGW_COAP_DTLS_CLIENT_CA_CERTS",
                dtls.join("device-ca.crt"),
            );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut daemon = Daemon::start(cmd);
        daemon.wait_for_log("coaps listening", Duration::from_secs(20));
        daemon.wait_for_log("coap listening", Duration::from_secs(5));
        let api = Api::from_log(&mut daemon);
        Self {
            _dir: dir,
            _broker: broker,
            daemon,
            sub,
            api,
            coap,
            coaps,
            id,
            secret,
            channel_id: text(&channel, "id"),
            server_ca: dtls.join("device-ca.crt"),
            device,
        }
    }

    fn coaps_url(&self, path: &str) -> String {
        format!("coaps://127.0.0.1:{}/{path}", self.coaps)
    }

    fn coap_url(&self, path: &str) -> String {
        format!("coap://127.0.0.1:{}/{path}", self.coap)
    }

    /// Waits until every `payload` arrived upstream on `m/dom-sf/c/<channel id>/<subtopic>`.
    fn upstream(&mut self, subtopic: &str, payloads: &[&str]) -> bool {
        let topic = format!("m/{DOMAIN}/c/{}/{subtopic}", self.channel_id);
        let want: Vec<String> = payloads.iter().map(|p| format!("{topic} {p}")).collect();
        self.sub.wait_until(Duration::from_secs(30), |lines| {
            want.iter().all(|w| lines.iter().any(|l| l == w))
        })
    }

    fn seen_upstream(&self, payload: &str) -> bool {
        self.sub
            .lines
            .iter()
            .any(|l| l.ends_with(&format!(" {payload}")))
    }
}

/// A libcoap request at verbosity 6, which prints the response PDU (`c:2.04`).
fn coap(args: &[&str]) -> String {
    coap_with(CLIENT, args)
}

fn coap_with(client: &str, args: &[&str]) -> String {
    let mut all = vec!["-v", "6"];
    all.extend_from_slice(args);
    coap_client(client, &all)
}

/// The response code libcoap printed (`2.04`, `4.01`, …), if any.
fn code(out: &str) -> Option<String> {
    out.lines()
        .filter(|l| l.contains("t:ACK") || l.contains("t:NON"))
        .filter_map(|l| l.split(" c:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .next_back()
}

fn post_http(gw: &Gateway, path: &str, extra: &[&str], payload: &str) -> u16 {
    let mut cmd = gw.api.curl("POST", path, None);
    cmd.args(["-H", "content-type: application/senml+json"])
        .args(extra)
        .args(["--data-binary", payload]);
    run(cmd).status
}

#[test]
fn http_basic_and_bare_secret_publish_202_and_reach_the_broker() {
    let mut gw = Gateway::start(&[]);
    let path = format!("/m/{DOMAIN}/c/sf/http");
    // Basic <client id>:<secret> (curl -u builds it), then the bare secret as the header.
    let basic = format!("{}:{}", gw.id, gw.secret);
    let bare = format!("authorization: {}", gw.secret);
    assert_eq!(post_http(&gw, &path, &["-u", &basic], "http-basic"), 202);
    assert_eq!(post_http(&gw, &path, &["-H", &bare], "http-bare"), 202);
    assert!(
        gw.upstream("http", &["http-basic", "http-bare"]),
        "not upstream: {:?}",
        gw.sub.lines
    );
    // The same forms with a wrong secret: 401, nothing upstream.
    let wrong = format!("{}:wrong-secret-0123456789", gw.id);
    assert_eq!(post_http(&gw, &path, &["-u", &wrong], "http-wrong"), 401);
    assert!(!gw.seen_upstream("http-wrong"));
}

#[test]
fn server_only_coaps_with_a_query_secret_works_beside_psk_and_certificates() {
    let mut gw = Gateway::start(&[]);
    let ca = gw.server_ca.to_str().expect("utf8").to_owned();
    let publish = format!("m/{DOMAIN}/c/sf/coaps");
    let auth = format!("{publish}?auth={}", gw.secret);
    // libcoap 4.3 drops URI query parts past ~100 bytes (a 36-character id plus a 43-character
    // secret is more): Uri-Query options given with -O 15 (as mgate's examples do) instead.
    let username = format!("15,username={}", gw.id);
    let password = format!("15,password={}", gw.secret);
    let cases: [(&str, Vec<&str>, String); 4] = [
        // No client certificate, server not verified (the issue's command).
        ("server-only-n", vec!["-n"], gw.coaps_url(&auth)),
        // No client certificate, the server verified against its CA.
        (
            "server-only-r",
            vec!["-R", &ca, "-O", &username, "-O", &password],
            gw.coaps_url(&publish),
        ),
        (
            "psk",
            vec!["-u", "sf-1", "-k", &gw.secret],
            gw.coaps_url(&publish),
        ),
        (
            "cert",
            vec![
                "-c",
                gw.device.cert.to_str().expect("utf8"),
                "-j",
                gw.device.key.to_str().expect("utf8"),
                "-C",
                &ca,
            ],
            gw.coaps_url(&publish),
        ),
    ];
    for (payload, creds, url) in &cases {
        let mut args = vec!["-m", "post", "-e", payload];
        args.extend(creds.iter().copied());
        args.push(url);
        let out = coap(&args);
        assert_eq!(code(&out).as_deref(), Some("2.04"), "{payload}: {out}");
    }
    // GnuTLS's client in the same mode (no credentials at all: `-n`, secret in the query).
    let auth_option = format!("15,auth={}", gw.secret);
    let out = coap_with(
        "coap-client-gnutls",
        &[
            "-n",
            "-m",
            "post",
            "-e",
            "server-only-gnutls",
            "-O",
            &auth_option,
            &gw.coaps_url(&publish),
        ],
    );
    assert_eq!(code(&out).as_deref(), Some("2.04"), "gnutls: {out}");
    let mut payloads = cases.map(|(p, ..)| p).to_vec();
    payloads.push("server-only-gnutls");
    assert!(
        gw.upstream("coaps", &payloads),
        "not upstream: {:?}",
        gw.sub.lines
    );

    // A session without a certificate authenticates nothing: no secret, a wrong one, 4.01.
    for (payload, url) in [
        ("server-only-none", gw.coaps_url(&publish)),
        (
            "server-only-wrong",
            gw.coaps_url(&format!("{publish}?auth=wrong-secret-0123456789")),
        ),
    ] {
        let out = coap(&["-n", "-m", "post", "-e", payload, &url]);
        assert_eq!(code(&out).as_deref(), Some("4.01"), "{payload}: {out}");
    }
    // hc/<domain> in a server-only session: 2.01 Created.
    let hc = gw.coaps_url(&format!("hc/{DOMAIN}?auth={}", gw.secret));
    let out = coap(&["-n", "-m", "post", &hc]);
    assert_eq!(code(&out).as_deref(), Some("2.01"), "{out}");
    // Let the last publishes reach the broker if they (wrongly) were accepted.
    assert!(gw.upstream("coaps", &["cert"]));
    assert!(!gw.seen_upstream("server-only-none") && !gw.seen_upstream("server-only-wrong"));
    gw.daemon.wait_for_log(
        "dtls session established without a client certificate",
        Duration::from_secs(5),
    );
}

#[test]
fn coap_username_is_the_client_id_and_hc_answers_on_both_adapters() {
    let mut gw = Gateway::start(&[]);
    // `-O 15,…`: see `server_only_coaps_with_a_query_secret_works_beside_psk_and_certificates`.
    let username = format!("15,username={}", gw.id);
    let password = format!("15,password={}", gw.secret);
    let url = gw.coap_url(&format!("m/{DOMAIN}/c/sf/coap"));
    let out = coap(&[
        "-m",
        "post",
        "-e",
        "coap-by-id",
        "-O",
        &username,
        "-O",
        &password,
        &url,
    ]);
    assert_eq!(code(&out).as_deref(), Some("2.04"), "{out}");
    assert!(gw.upstream("coap", &["coap-by-id"]), "{:?}", gw.sub.lines);

    // CoAP hc: 2.01 in the gateway's domain, 4.01 in another or with a wrong secret.
    let auth = format!("15,auth={}", gw.secret);
    for (query, domain, want) in [
        (vec![auth.as_str()], DOMAIN, "2.01"),
        (vec![username.as_str(), password.as_str()], DOMAIN, "2.01"),
        (vec![auth.as_str()], "another-domain", "4.01"),
        (vec!["15,auth=wrong-secret-0123456789"], DOMAIN, "4.01"),
    ] {
        let mut args = vec!["-m", "post"];
        for q in &query {
            args.extend(["-O", q]);
        }
        let url = gw.coap_url(&format!("hc/{domain}"));
        args.push(&url);
        let out = coap(&args);
        assert_eq!(code(&out).as_deref(), Some(want), "hc/{domain}: {out}");
    }

    // HTTP hc: 200 with an empty body; 401 for another domain or a wrong secret.
    let hc = |path: &str, auth: &str| {
        let mut cmd = gw.api.curl("POST", path, Some(auth));
        cmd.args(["--data-binary", ""]);
        run(cmd)
    };
    let ok = hc(&format!("/hc/{DOMAIN}"), &format!("Client {}", gw.secret));
    assert_eq!((ok.status, ok.text.as_str()), (200, ""), "{ok:?}");
    assert_eq!(hc(&format!("/hc/{DOMAIN}"), &gw.secret).status, 200);
    assert_eq!(
        hc("/hc/another-domain", &format!("Client {}", gw.secret)).status,
        401
    );
    assert_eq!(
        hc(&format!("/hc/{DOMAIN}"), "Client wrong-secret-0123456789").status,
        401
    );
    // Health checks publish nothing.
    assert!(
        !gw.sub.lines.iter().any(|l| l.contains("/hc")),
        "{:?}",
        gw.sub.lines
    );
}

/// The failure throttle (`auth.failure_burst`) counts wrong secrets in server-only CoAPS
/// sessions as it counts them on plain CoAP: 4.01 up to the burst, then 4.29 with Max-Age,
/// also for the right secret, per remote address (each sensor here has its own address).
#[test]
fn wrong_secrets_in_server_only_sessions_are_throttled_like_plain_coap() {
    let gw = Gateway::start(&[
        ("EDGEGW_AUTH_FAILURE_BURST", "3"),
        ("EDGEGW_AUTH_FAILURE_REFILL", "1h"),
    ]);
    let publish = format!("m/{DOMAIN}/c/sf/throttle");
    let wrong = format!("{publish}?auth=wrong-secret-0123456789");
    let right = format!("{publish}?auth={}", gw.secret);
    let mut seen = Vec::new();
    for (source, dtls, base) in [
        ("127.0.0.2", true, gw.coaps_url("")),
        ("127.0.0.3", false, gw.coap_url("")),
    ] {
        let mut codes = Vec::new();
        for path in [&wrong, &wrong, &wrong, &wrong, &right] {
            let mut args = vec!["-a", source, "-m", "post", "-e", "t"];
            if dtls {
                args.push("-n");
            }
            let url = format!("{base}{path}");
            args.push(&url);
            let out = coap(&args);
            codes.push(code(&out).unwrap_or_else(|| format!("no answer: {out}")));
        }
        assert_eq!(
            codes,
            ["4.01", "4.01", "4.01", "4.29", "4.29"],
            "from {source} (dtls: {dtls})"
        );
        seen.push(codes);
    }
    assert_eq!(seen[0], seen[1], "CoAPS server-only and plain CoAP alike");
    // Another address is not throttled by those.
    let out = coap(&["-n", "-m", "post", "-e", "t", &gw.coaps_url(&right)]);
    assert_eq!(code(&out).as_deref(), Some("2.04"), "{out}");
}

#[test]
fn server_only_auth_false_refuses_certificate_less_sessions_but_keeps_psk() {
    let mut gw = Gateway::start(&[("EDGEGW_COAP_DTLS_SERVER_ONLY_AUTH", "false")]);
    let publish = format!("m/{DOMAIN}/c/sf/off");
    let out = coap(&[
        "-n",
        "-m",
        "post",
        "-e",
        "off-server-only",
        &gw.coaps_url(&format!("{publish}?auth={}", gw.secret)),
    ]);
    assert_eq!(code(&out), None, "no CoAP answer without a session: {out}");
    let out = coap(&[
        "-m",
        "post",
        "-e",
        "off-psk",
        "-u",
        "sf-1",
        "-k",
        &gw.secret,
        &gw.coaps_url(&publish),
    ]);
    assert_eq!(code(&out).as_deref(), Some("2.04"), "{out}");
    assert!(gw.upstream("off", &["off-psk"]), "{:?}", gw.sub.lines);
    assert!(!gw.seen_upstream("off-server-only"));
    assert!(
        !gw.daemon
            .log()
            .iter()
            .any(|l| l.contains("without a client certificate")),
        "a server-only session was established"
    );
}

/// Server-only sessions authenticate nobody, so they may hold at most half of
/// `coap_dtls.max_sessions`: with 2, two held server-only observers leave room for a PSK
/// sensor (the quieter one gives way) instead of filling the table.
#[test]
fn server_only_sessions_hold_at_most_half_of_the_table() {
    let mut gw = Gateway::start(&[("EDGEGW_COAP_DTLS_MAX_SESSIONS", "2")]);
    let observe = gw.coaps_url(&format!("m/{DOMAIN}/c/sf?auth={}", gw.secret));
    let hold = |source: &str| {
        Command::new(CLIENT)
            .args([
                "-a", source, "-n", "-B", "30", "-s", "30", "-m", "get", &observe,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coap-client-openssl")
    };
    let needle = "dtls session established without a client certificate";
    let mut first = hold("127.0.0.5");
    gw.daemon
        .wait_for_nth_log(needle, 1, Duration::from_secs(15));
    let mut second = hold("127.0.0.6");
    gw.daemon
        .wait_for_nth_log(needle, 2, Duration::from_secs(15));
    let out = coap(&[
        "-m",
        "post",
        "-e",
        "psk-beside-server-only",
        "-u",
        "sf-1",
        "-k",
        &gw.secret,
        &gw.coaps_url(&format!("m/{DOMAIN}/c/sf/cap")),
    ]);
    for child in [&mut first, &mut second] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = gw.daemon.log().join("\n");
    assert!(
        !log.contains("session limit reached"),
        "the PSK sensor found the table full: {out}"
    );
    assert_eq!(code(&out).as_deref(), Some("2.04"), "{out}");
    assert!(log.contains("server-only sessions at their cap"), "{log}");
}
