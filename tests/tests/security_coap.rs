//! Issue 20 (security hardening), the CoAP / CoAPS items, end to end against the real
//! `edgegw run --dev`: libcoap's `coap-client-openssl` (bound to other loopback addresses with
//! `-a` where a test needs several sources) and raw UDP datagrams built with coap-lite.
//!
//! - 20.4: wrong-key DTLS-PSK handshakes are audited and throttled; the right key is then
//!   refused until the throttle's window passes.
//! - 20.5: wrong passwords for a sensor's identity from other addresses do not lock the
//!   sensor out; junk from a sensor's own address does not either (plain CoAP and DTLS-PSK,
//!   where a guesser at the same address gets no more than the burst).
//! - 20.8: Block1 block 0 without credentials is 4.01 and holds nothing; one peer cannot hold
//!   every transfer slot.
//! - 20.9: one client registering many observations does not block another client's Observe.
//! - 20.15: one PSK credential from many ports cannot take every DTLS session slot.
//!
//! Every source address used is on the loopback interface (127.0.0.0/8), so no test needs
//! raw sockets or root.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use system_tests::pki::self_signed;
use system_tests::{Daemon, coap_client, dev_cli, edgegw, free_udp_port};

const CLIENT: &str = "coap-client-openssl";

struct Gateway {
    dir: tempfile::TempDir,
    _daemon: Daemon,
    coap: u16,
    coaps: u16,
    /// identity → secret
    secrets: Vec<(String, String)>,
}

impl Gateway {
    fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        dev_cli(root, &["channel", "add", "chan-a"]);
        let mut secrets = Vec::new();
        for identity in ["sensor-a", "sensor-b"] {
            let out = dev_cli(root, &["--json", "client", "add", identity]);
            let v: serde_json::Value = serde_json::from_str(&out).expect("json");
            secrets.push((
                identity.to_owned(),
                v["secret"].as_str().expect("secret").to_owned(),
            ));
            dev_cli(root, &["connect", identity, "chan-a"]);
        }
        let server = self_signed(&root.join("dtls"), "edgegw", 30);
        let (coap, coaps) = (free_udp_port(), free_udp_port());
        let mut cmd = edgegw(root);
        cmd.args(["--dev", "run"])
            .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{coap}"))
            .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
            .env("EDGEGW_COAP_DTLS_CERT", &server.cert)
            .env("EDGEGW_COAP_DTLS_KEY", &server.key);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut daemon = Daemon::start(cmd);
        daemon.wait_for_log("coaps listening", Duration::from_secs(30));
        daemon.wait_for_log("coap listening", Duration::from_secs(5));
        Self {
            dir,
            _daemon: daemon,
            coap,
            coaps,
            secrets,
        }
    }

    fn secret(&self, identity: &str) -> &str {
        &self
            .secrets
            .iter()
            .find(|(i, _)| i == identity)
            .expect("known identity")
            .1
    }

    fn state(&self, file: &str) -> PathBuf {
        self.dir.path().join(".edgegw-dev/state").join(file)
    }

    fn stored(&self) -> Vec<String> {
        let conn = rusqlite::Connection::open_with_flags(
            self.state("outbox.db"),
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

    fn is_stored(&self, payload: &str) -> bool {
        self.stored().iter().any(|p| p == payload)
    }

    /// (rows, sum of `count`) of audit rows with this method, outcome and remote.
    fn audited(&self, method: &str, outcome: &str, remote: &str) -> (u64, u64) {
        let conn = rusqlite::Connection::open_with_flags(
            self.state("auth.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open auth.db");
        conn.query_row(
            "SELECT count(*), coalesce(sum(count), 0) FROM audit_events
             WHERE method = ?1 AND outcome = ?2 AND remote = ?3",
            [method, outcome, remote],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .expect("audit query")
    }

    fn coaps_url(&self) -> String {
        format!("coaps://127.0.0.1:{}/m/dom/c/chan-a", self.coaps)
    }

    /// A CoAPS-PSK POST of `payload`; the client's output.
    fn psk_post(&self, identity: &str, key: &str, payload: &str) -> String {
        coap_client(
            CLIENT,
            &[
                "-m",
                "post",
                "-e",
                payload,
                "-u",
                identity,
                "-k",
                key,
                &self.coaps_url(),
            ],
        )
    }

    /// A CoAPS-PSK POST of `payload` sent from `source` (a loopback address).
    fn psk_post_from(&self, source: &str, identity: &str, key: &str, payload: &str) -> String {
        coap_client(
            CLIENT,
            &[
                "-a",
                source,
                "-m",
                "post",
                "-e",
                payload,
                "-u",
                identity,
                "-k",
                key,
                &self.coaps_url(),
            ],
        )
    }

    /// A plain-CoAP POST with `username=&password=`, sent from `source` (a loopback address).
    fn plain_post(&self, source: &str, identity: &str, password: &str, payload: &str) -> String {
        let url = format!(
            "coap://127.0.0.1:{}/m/dom/c/chan-a?username={identity}&password={password}",
            self.coap
        );
        coap_client(CLIENT, &["-a", source, "-m", "post", "-e", payload, &url])
    }
}

/// Waits for `cond` (the audit writer and the outbox are asynchronous); false if it never
/// held within `within`.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn wrong_psk_handshakes_are_audited_and_throttled_until_the_window_passes() {
    let refill = Duration::from_secs(15);
    let gw = Gateway::start(&[
        ("EDGEGW_AUTH_FAILURE_BURST", "3"),
        ("EDGEGW_AUTH_FAILURE_REFILL", "15s"),
    ]);
    let secret = gw.secret("sensor-a").to_owned();
    let out = gw.psk_post("sensor-a", &secret, "right-key-first");
    assert!(gw.is_stored("right-key-first"), "PSK publish failed: {out}");

    for n in 0..8 {
        let payload = format!("guess-{n}");
        let started = Instant::now();
        let out = gw.psk_post("sensor-a", "definitely-the-wrong-key", &payload);
        assert!(!gw.is_stored(&payload), "wrong key stored: {out}");
        // Refused with a fatal alert, not left to time out (-B 10).
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "guess {n} took {:?}: {out}",
            started.elapsed()
        );
    }
    // Each charged guess is audited (the first three: the rest were refused by the throttle
    // itself, which charges nothing more).
    assert!(
        eventually(Duration::from_secs(10), || gw
            .audited("psk", "bad_secret", "127.0.0.1")
            .1
            >= 3),
        "wrong-key handshakes not audited: {:?}",
        gw.audited("psk", "bad_secret", "127.0.0.1")
    );
    let (_, charged) = gw.audited("psk", "bad_secret", "127.0.0.1");
    assert!(charged <= 8, "{charged} audited for 8 guesses");

    // The right key now fails too: the address used up its budget.
    let out = gw.psk_post("sensor-a", &secret, "right-key-while-throttled");
    assert!(
        !gw.is_stored("right-key-while-throttled"),
        "the right key was accepted right after the guesses: {out}"
    );
    // Once a token came back (one per refill), the right key works again.
    let deadline = Instant::now() + refill * 4;
    let mut n = 0;
    let stored = loop {
        n += 1;
        let payload = format!("right-key-after-{n}");
        gw.psk_post("sensor-a", &secret, &payload);
        if gw.is_stored(&payload) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(stored, "the right key stayed refused after the window");
}

#[test]
fn wrong_passwords_from_other_addresses_do_not_lock_out_the_sensor() {
    let gw = Gateway::start(&[
        ("EDGEGW_AUTH_FAILURE_BURST", "3"),
        ("EDGEGW_AUTH_FAILURE_REFILL", "10m"),
    ]);
    let secret = gw.secret("sensor-a").to_owned();
    let out = gw.plain_post("127.0.0.1", "sensor-a", &secret, "before-guessing");
    assert!(gw.is_stored("before-guessing"), "{out}");

    // 12 wrong passwords for sensor-a's identity from 12 other addresses.
    let mut answers = Vec::new();
    for i in 2..14 {
        let out = gw.plain_post(&format!("127.0.0.{i}"), "sensor-a", "wrong-password", "x");
        answers.push(out);
    }
    assert!(
        answers.iter().any(|a| a.contains("4.29")),
        "the identity was never throttled: {answers:?}"
    );
    // The sensor itself, from its own address: not locked out, on CoAP and CoAPS.
    let out = gw.plain_post("127.0.0.1", "sensor-a", &secret, "after-guessing");
    assert!(
        gw.is_stored("after-guessing"),
        "the sensor was locked out by others' guesses: {out}"
    );
    let out = gw.psk_post("sensor-a", &secret, "after-guessing-coaps");
    assert!(gw.is_stored("after-guessing-coaps"), "{out}");
    // The identity's budget still protects it from an address it never authenticated from.
    let out = gw.plain_post("127.0.0.30", "sensor-a", &secret, "from-a-new-address");
    assert!(out.contains("4.29"), "{out}");
    assert!(!gw.is_stored("from-a-new-address"));
}

/// Six wrong-password posts over plain CoAP from `ip` (junk anyone could spoof from there):
/// the address must end up throttled.
fn junk_until_throttled(gw: &Gateway, ip: &str) {
    let answers: Vec<String> = (0..6)
        .map(|_| gw.plain_post(ip, "nobody", "wrong-password-00000", "x"))
        .collect();
    assert!(
        answers.iter().any(|a| a.contains("4.29")),
        "the address was never throttled: {answers:?}"
    );
}

/// Issue 20.5: junk sent from a sensor's own address (plain CoAP proves no source, so anyone
/// can spoof it) uses up that address's budget, but not the sensor's: its right credentials
/// still go through there, while a client that never authenticated from that address stays
/// throttled there. Fails on a gateway that checks the address bucket before the credentials.
#[test]
fn junk_from_a_sensors_own_address_does_not_lock_it_out() {
    let gw = Gateway::start(&[
        ("EDGEGW_AUTH_FAILURE_BURST", "3"),
        ("EDGEGW_AUTH_FAILURE_REFILL", "10m"),
    ]);
    let ip = "127.0.0.40";
    let secret = gw.secret("sensor-a").to_owned();
    let out = gw.plain_post(ip, "sensor-a", &secret, "before-junk");
    assert!(gw.is_stored("before-junk"), "{out}");
    junk_until_throttled(&gw, ip);
    let out = gw.plain_post(ip, "sensor-a", &secret, "after-junk");
    assert!(
        gw.is_stored("after-junk"),
        "the sensor was locked out by junk from its address: {out}"
    );
    let b_secret = gw.secret("sensor-b").to_owned();
    let out = gw.plain_post(ip, "sensor-b", &b_secret, "b-from-there");
    assert!(out.contains("4.29"), "{out}");
    assert!(!gw.is_stored("b-from-there"));
}

/// Issue 20.5 for DTLS-PSK: junk sent over plain CoAP from a PSK sensor's address (anyone can
/// spoof it) uses up that address's budget, but the sensor's next handshake still succeeds
/// (the handshake is past its cookie exchange, so its source is proven, and the pair
/// authenticated from there before). The pass is bounded: a guesser at the same address (same
/// NAT) naming the sensor's identity gets `auth.failure_burst` failed handshakes, then the
/// pair is refused like anyone else, the right key included, and another client that never
/// authenticated from there stays throttled. Fails on a gateway whose PSK throttle has no
/// trusted-pair pass (the handshake after the junk is refused).
#[test]
fn junk_from_a_psk_sensors_address_does_not_delay_its_next_handshake() {
    let gw = Gateway::start(&[
        ("EDGEGW_AUTH_FAILURE_BURST", "3"),
        ("EDGEGW_AUTH_FAILURE_REFILL", "10m"),
    ]);
    let ip = "127.0.0.60";
    let secret = gw.secret("sensor-a").to_owned();
    let out = gw.psk_post_from(ip, "sensor-a", &secret, "psk-before-junk");
    assert!(gw.is_stored("psk-before-junk"), "PSK publish failed: {out}");
    junk_until_throttled(&gw, ip);
    let out = gw.psk_post_from(ip, "sensor-a", &secret, "psk-after-junk");
    assert!(
        gw.is_stored("psk-after-junk"),
        "the PSK sensor's handshake was refused after junk from its address: {out}"
    );
    // sensor-b never authenticated from there: the address's budget holds for it.
    let b_secret = gw.secret("sensor-b").to_owned();
    let out = gw.psk_post_from(ip, "sensor-b", &b_secret, "psk-b-from-there");
    assert!(
        !gw.is_stored("psk-b-from-there"),
        "another client passed the throttled address: {out}"
    );

    // A guesser sharing the sensor's address: its wrong keys are charged and audited.
    for n in 0..6 {
        let payload = format!("nat-guess-{n}");
        let out = gw.psk_post_from(ip, "sensor-a", "definitely-the-wrong-key", &payload);
        assert!(!gw.is_stored(&payload), "wrong key stored: {out}");
    }
    assert!(
        eventually(Duration::from_secs(10), || gw
            .audited("psk", "bad_secret", ip)
            .1
            >= 3),
        "the guesses were not audited: {:?}",
        gw.audited("psk", "bad_secret", ip)
    );
    // Only the burst's worth got as far as the key: the rest were refused by the throttle,
    // which charges (and audits) nothing more.
    let (_, charged) = gw.audited("psk", "bad_secret", ip);
    assert_eq!(charged, 3, "failed handshakes audited for 6 guesses");
    // The pass ended with the pair's own failures: the right key waits for a token too.
    let out = gw.psk_post_from(ip, "sensor-a", &secret, "psk-after-guessing");
    assert!(
        !gw.is_stored("psk-after-guessing"),
        "the pair kept its pass after using up its burst: {out}"
    );
}

/// What a request carries beside path and query.
#[derive(Clone, Copy)]
enum Extra {
    /// Block1 (num, more, szx).
    Block1(u32, bool, u32),
    Observe(u32),
}

/// A confirmable request to `path` (segments) with `query`, a token and a Block1 or Observe
/// option.
fn request(
    method: RequestType,
    mid: u16,
    token: &[u8],
    (path, query): (&[&str], &[String]),
    extra: Extra,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    if let Extra::Observe(o) = extra {
        p.set_observe_value(o);
    }
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for q in query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    if let Extra::Block1(num, more, szx) = extra {
        let v = (num << 4) | (u32::from(more) << 3) | szx;
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        p.add_option(CoapOption::Block1, bytes[skip..].to_vec());
    }
    p.payload = payload.to_vec();
    p.to_bytes().expect("encode")
}

fn socket(ip: [u8; 4]) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::from((ip, 0))).expect("bind loopback");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Reads datagrams until the answer with `token`; its code ("2.31", "4.01", …) and packet.
/// Other datagrams (final notifications of ended observations) are returned in `others`.
fn answer(s: &UdpSocket, token: &[u8], others: &mut Vec<Packet>) -> (String, Packet) {
    let mut buf = [0u8; 2048];
    loop {
        let n = s.recv(&mut buf).expect("an answer");
        let p = Packet::from_bytes(&buf[..n]).expect("a CoAP answer");
        if p.get_token() == token {
            return (p.header.code.to_string(), p);
        }
        others.push(p);
    }
}

#[test]
fn block1_needs_credentials_at_block_0_and_one_peer_cannot_hold_every_slot() {
    let gw = Gateway::start(&[]);
    let to = SocketAddr::from(([127, 0, 0, 1], gw.coap));
    let path = ["m", "dom", "c", "chan-a"];
    let mut others = Vec::new();

    // No credentials: 4.01 at block 0 (before: 2.31, and a slot held for 247 s).
    let anon = socket([127, 0, 0, 40]);
    let first = request(
        RequestType::Post,
        1,
        b"an",
        (&path[..], &[]),
        Extra::Block1(0, true, 2),
        &[7; 64],
    );
    anon.send_to(&first, to).expect("send");
    let (code, _) = answer(&anon, b"an", &mut others);
    assert_eq!(code, "4.01", "unauthenticated block 0");
    let wrong = vec!["auth=not-a-secret-of-anyone".to_owned()];
    let first = request(
        RequestType::Post,
        2,
        b"aw",
        (&path[..], &wrong),
        Extra::Block1(0, true, 2),
        &[7; 64],
    );
    anon.send_to(&first, to).expect("send");
    assert_eq!(
        answer(&anon, b"aw", &mut others).0,
        "4.01",
        "wrong secret at block 0"
    );

    // One authenticated peer opens more transfers than there are slots (256), from one
    // address and several ports, and never finishes them.
    let hog_auth = vec![format!("auth={}", gw.secret("sensor-a"))];
    let hogs: Vec<UdpSocket> = (0..3).map(|_| socket([127, 0, 0, 41])).collect();
    let mut busy = 0;
    for i in 0..300u16 {
        let sub = format!("t{i}");
        let hog_path = ["m", "dom", "c", "chan-a", &sub];
        let token = i.to_be_bytes();
        let s = &hogs[usize::from(i) % 3];
        s.send_to(
            &request(
                RequestType::Post,
                100 + i,
                &token,
                (&hog_path[..], &hog_auth),
                Extra::Block1(0, true, 2),
                &[1; 64],
            ),
            to,
        )
        .expect("send");
        if answer(s, &token, &mut others).0 == "5.03" {
            busy += 1;
        }
    }
    assert_eq!(
        busy, 0,
        "the hog itself was refused {busy} times (its oldest should go)"
    );

    // Another sensor's Block1 transfer still succeeds.
    let b = socket([127, 0, 0, 42]);
    let b_auth = vec![format!("auth={}", gw.secret("sensor-b"))];
    let body: Vec<u8> = (0..100u8).collect();
    b.send_to(
        &request(
            RequestType::Post,
            1,
            b"b0",
            (&path[..], &b_auth),
            Extra::Block1(0, true, 2),
            &body[..64],
        ),
        to,
    )
    .expect("send");
    let (code, _) = answer(&b, b"b0", &mut others);
    assert_eq!(
        code, "2.31",
        "another sensor's block 0 while one peer holds transfers"
    );
    b.send_to(
        &request(
            RequestType::Post,
            2,
            b"b1",
            (&path[..], &b_auth),
            Extra::Block1(1, false, 2),
            &body[64..],
        ),
        to,
    )
    .expect("send");
    let (code, _) = answer(&b, b"b1", &mut others);
    assert_eq!(code, "2.04");
    let stored = gw.stored();
    assert!(
        stored.iter().any(|p| p.as_bytes() == &body[..]),
        "the reassembled payload is not in the outbox"
    );
}

#[test]
fn one_client_registering_many_observations_does_not_block_another_clients_observe() {
    // A small table (coap.max_observers) and a client connected to more channels than it
    // holds: one registration per channel (the downlink hub keeps one stream per client and
    // channel, so registrations on one channel replace each other anyway).
    let gw = Gateway::start(&[("EDGEGW_COAP_MAX_OBSERVERS", "32")]);
    let channels: Vec<String> = (0..40).map(|i| format!("obs-{i}")).collect();
    for ch in &channels {
        dev_cli(gw.dir.path(), &["channel", "add", ch]);
        dev_cli(gw.dir.path(), &["connect", "sensor-a", ch]);
    }
    // The running daemon sees the CLI's changes within its poll interval.
    let to = SocketAddr::from(([127, 0, 0, 1], gw.coap));
    let a_auth = vec![format!("auth={}", gw.secret("sensor-a"))];
    let register = |s: &UdpSocket, mid: u16, token: &[u8], channel: &str, auth: &[String]| {
        // The legacy path names no domain (channels added while the dev daemon runs get the
        // dev domain, not `dom`).
        let path = ["channels", channel, "messages"];
        s.send_to(
            &request(
                RequestType::Get,
                mid,
                token,
                (&path[..], auth),
                Extra::Observe(0),
                &[],
            ),
            to,
        )
        .expect("send");
    };
    let a = socket([127, 0, 0, 50]);
    let mut others = Vec::new();
    let last = channels.last().expect("channels");
    let mut probe_mid = 1000;
    assert!(
        eventually(Duration::from_secs(10), || {
            // A new message id each time: a repeated one would get the first answer again.
            probe_mid += 1;
            register(&a, probe_mid, b"probe", last, &a_auth);
            let (code, _) = answer(&a, b"probe", &mut others);
            code == "2.05"
        }),
        "the daemon never saw the new channels"
    );
    others.clear();
    // sensor-a: one registration on each of 40 channels, half from a second socket.
    let a2 = socket([127, 0, 0, 51]);
    let mut codes = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let s = if i % 2 == 0 { &a } else { &a2 };
        let token = [0xA0, i as u8];
        register(s, 10 + i as u16, &token, ch, &a_auth);
        codes.push(answer(s, &token, &mut others).0);
    }
    // sensor-b's Observe is accepted (before: 5.03 until a restart).
    let b = socket([127, 0, 0, 52]);
    let b_auth = vec![format!("auth={}", gw.secret("sensor-b"))];
    register(&b, 1, b"ob", "chan-a", &b_auth);
    let (code, resp) = answer(&b, b"ob", &mut Vec::new());
    assert_eq!(
        code, "2.05",
        "another client's Observe after sensor-a's registrations {codes:?}"
    );
    assert!(
        resp.get_observe_value().is_some(),
        "not an Observe registration"
    );
    // sensor-a kept its newest 16 (coap.max_observers_per_client); each one replaced was told
    // with a final 5.03, not dropped silently.
    assert!(codes.iter().all(|c| c == "2.05"), "{codes:?}");
    for s in [&a, &a2] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        while let Ok(n) = s.recv(&mut buf) {
            if let Ok(p) = Packet::from_bytes(&buf[..n]) {
                others.push(p);
            }
        }
    }
    let told = others
        .iter()
        .filter(|p| p.header.code.to_string() == "5.03")
        .count();
    // The probe's registration on the last channel counts as sensor-a's too: 41 in all.
    assert_eq!(told, 41 - 16, "replaced registrations told with 5.03");
}

#[test]
fn one_psk_credential_from_many_ports_cannot_take_every_dtls_session() {
    use system_tests::sensor::{Credential, DtlsClient};
    let gw = Gateway::start(&[
        ("EDGEGW_COAP_DTLS_MAX_SESSIONS", "8"),
        ("EDGEGW_COAP_DTLS_MAX_SESSIONS_PER_CLIENT", "2"),
    ]);
    let to = SocketAddr::from(([127, 0, 0, 1], gw.coaps));
    let a = Credential::psk("sensor-a", gw.secret("sensor-a"));
    // sensor-a opens 12 sessions, one port each, and keeps them.
    let mut held = Vec::new();
    for n in 0..12 {
        let c = DtlsClient::connect(to, &a, Duration::from_secs(10));
        assert!(c.is_some(), "sensor-a's session {n} was refused");
        held.push(c);
    }
    // Another client still gets a session (before: all 8 slots held by sensor-a).
    let b = Credential::psk("sensor-b", gw.secret("sensor-b"));
    let mut session = DtlsClient::connect(to, &b, Duration::from_secs(10))
        .expect("sensor-b's handshake refused: sessions full of sensor-a's");
    assert!(
        session.ping(1, Duration::from_secs(5)),
        "sensor-b's session is not served"
    );
    // sensor-a's newest session works; its oldest was ended.
    let newest = held.last_mut().and_then(Option::as_mut).expect("newest");
    assert!(newest.ping(2, Duration::from_secs(5)));
    let oldest = held.first_mut().and_then(Option::as_mut).expect("oldest");
    assert!(
        !oldest.ping(3, Duration::from_secs(2)),
        "sensor-a's oldest session still served"
    );
}
