//! The session table driven in memory against a dimpl PSK client, with virtual time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dimpl::{Config as DimplConfig, Dtls, DtlsCertificate, Output, PskResolver};
use proptest::prelude::*;

use super::*;

const KEY: &[u8] = b"sensor-a-secret-0123456789";
const KEY_B: &[u8] = b"sensor-b-secret-9876543210";

#[derive(Default)]
struct Fake {
    valid: AtomicBool,
    panic_in_psk: bool,
    rotated: AtomicBool,
    /// The throttle refuses every PSK handshake.
    throttled: AtomicBool,
    /// Failed PSK handshakes reported to the port: (address, identity).
    failed: std::sync::Mutex<Vec<(std::net::IpAddr, String)>>,
}

impl DtlsCredentials for Fake {
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        assert!(
            !self.panic_in_psk,
            "backend panicked inside the PSK resolver"
        );
        let key: &[u8] = if self.rotated.load(Ordering::SeqCst) {
            b"rotated-secret-0123456789"
        } else {
            KEY
        };
        match identity {
            b"sensor-a" => Some(key.to_vec()),
            b"sensor-b" => Some(KEY_B.to_vec()),
            _ => None,
        }
    }
    fn psk_principal(&self, identity: &str) -> Option<Principal> {
        let client_id = match identity {
            "sensor-a" => "id-a",
            "sensor-b" => "id-b",
            _ => return None,
        };
        Some(Principal {
            client_id: client_id.into(),
            identity: identity.into(),
            serial: None,
        })
    }
    fn principal_for_certificate(&self, _: &str, _: &str, _: &str) -> Option<Principal> {
        None
    }
    fn still_valid(&self, _: &Principal) -> bool {
        self.valid.load(Ordering::SeqCst)
    }
    fn psk_throttled(&self, _: std::net::IpAddr, _: &str) -> bool {
        self.throttled.load(Ordering::SeqCst)
    }
    fn psk_failed(&self, remote: std::net::IpAddr, identity: &str) {
        self.failed
            .lock()
            .unwrap()
            .push((remote, identity.to_owned()));
    }
}

fn settings() -> DtlsSettings {
    DtlsSettings {
        // Certificate mode is off (no client CAs): the server certificate is never used.
        certificate: DtlsCertificate {
            certificate: vec![0],
            private_key: vec![0],
        },
        client_cas: Vec::new(),
        client_intermediates: Vec::new(),
        max_sessions: 8,
        max_handshakes: 4,
        max_sessions_per_client: 16,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(600),
        server_only_auth: false,
    }
}

fn table(backend: Fake) -> (Sessions, Arc<Fake>) {
    let backend = Arc::new(backend);
    backend.valid.store(true, Ordering::SeqCst);
    let s = Sessions::new(settings(), backend.clone()).expect("table");
    (s, backend)
}

struct Key(Vec<u8>);
impl PskResolver for Key {
    fn resolve(&self, _: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

fn client(identity: &str, key: &[u8], now: Instant) -> Dtls {
    let cfg = DimplConfig::builder()
        .with_psk_client(identity.as_bytes().to_vec(), Arc::new(Key(key.to_vec())))
        .build()
        .expect("client config");
    let mut c = Dtls::new_12_psk(Arc::new(cfg), now);
    c.set_active(true);
    c
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// Client output → table, table output → client, until quiet. Returns (connected, alerts seen).
fn pump(s: &mut Sessions, c: &mut Dtls, from: SocketAddr, now: Instant) -> (bool, usize) {
    let mut connected = false;
    let mut alerts = 0;
    for _ in 0..20 {
        if !step(s, c, from, now, &mut connected, &mut alerts) {
            break;
        }
    }
    (connected, alerts)
}

/// One round trip of `pump`; false once nothing moved.
fn step(
    s: &mut Sessions,
    c: &mut Dtls,
    from: SocketAddr,
    now: Instant,
    connected: &mut bool,
    alerts: &mut usize,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = c.handle_timeout(now);
    let mut to_server = Vec::new();
    loop {
        match c.poll_output(&mut buf) {
            Output::Packet(p) => to_server.push(p.to_vec()),
            Output::Connected => *connected = true,
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    for p in &to_server {
        s.handle_datagram(from, p, now);
    }
    let mut any = !to_server.is_empty();
    while let Some(t) = s.poll_transmit() {
        any = true;
        if t.payload.first() == Some(&21) && only_epoch0(&t.payload) {
            *alerts += 1;
        }
        let _ = c.handle_packet(&t.payload);
    }
    any
}

#[test]
fn interleaved_psk_handshakes_each_get_their_own_identity() {
    // One PSK config serves every handshake; the identity each resolver call sees must land
    // in the session whose datagram is being handled.
    let now = Instant::now();
    let (mut s, _) = table(Fake::default());
    let mut a = client("sensor-a", KEY, now);
    let mut b = client("sensor-b", KEY_B, now);
    let (mut a_up, mut b_up, mut alerts) = (false, false, 0);
    for _ in 0..20 {
        let moved_b = step(&mut s, &mut b, peer(2), now, &mut b_up, &mut alerts);
        let moved_a = step(&mut s, &mut a, peer(1), now, &mut a_up, &mut alerts);
        if !moved_a && !moved_b {
            break;
        }
    }
    assert!(a_up && b_up, "both connect");
    assert_eq!(alerts, 0);
    assert_eq!(
        s.principal(peer(1)).map(|p| p.client_id.as_str()),
        Some("id-a")
    );
    assert_eq!(
        s.principal(peer(2)).map(|p| p.client_id.as_str()),
        Some("id-b")
    );
}

#[test]
fn psk_session_is_established_and_carries_data_both_ways() {
    let now = Instant::now();
    let (mut s, _) = table(Fake::default());
    let mut c = client("sensor-a", KEY, now);
    let (connected, alerts) = pump(&mut s, &mut c, peer(1), now);
    assert!(connected);
    assert_eq!(alerts, 0);
    assert_eq!(s.counts(), (1, 0));
    let hs = s.handshakes();
    assert_eq!((hs.completed, hs.failed, hs.auth_failed), (1, 0, 0));
    assert_eq!(
        s.principal(peer(1)).map(|p| p.client_id.as_str()),
        Some("id-a")
    );
    // A PSK session authenticates its client: it is not a server-only one.
    assert!(!s.is_server_only(peer(1)));
    assert!(!s.is_server_only(peer(2)), "no session at all");
    c.send_application_data(b"coap bytes").expect("send");
    pump(&mut s, &mut c, peer(1), now);
    assert_eq!(
        s.poll_event(),
        Some(SessionEvent::Data {
            peer: peer(1),
            data: b"coap bytes".to_vec()
        })
    );
    s.send(peer(1), b"reply", now);
    let t = s.poll_transmit().expect("encrypted reply");
    c.handle_packet(&t.payload).expect("client decrypts");
    let mut buf = vec![0u8; 4096];
    let mut got = None;
    loop {
        match c.poll_output(&mut buf) {
            Output::ApplicationData(d) => got = Some(d.to_vec()),
            Output::Timeout(_) => break,
            _ => {}
        }
    }
    assert_eq!(got.as_deref(), Some(&b"reply"[..]));
}

#[test]
fn wrong_key_and_unknown_identity_fail_alike_with_a_fatal_alert() {
    for (identity, key) in [("sensor-a", &b"wrong-key-wrong-key"[..]), ("nobody", KEY)] {
        let now = Instant::now();
        let (mut s, _) = table(Fake::default());
        let mut c = client(identity, key, now);
        let (connected, alerts) = pump(&mut s, &mut c, peer(1), now);
        assert!(!connected, "{identity}");
        assert_eq!(alerts, 1, "{identity}: no fatal alert");
        assert_eq!(s.counts(), (0, 0), "{identity}");
        // One failed handshake, counted as an authentication failure (metrics).
        let hs = s.handshakes();
        assert_eq!(
            (hs.completed, hs.failed, hs.auth_failed),
            (0, 1, 1),
            "{identity}"
        );
    }
}

#[test]
fn a_new_hello_from_a_live_address_keeps_the_session_until_it_completes() {
    let now = Instant::now();
    let (mut s, _) = table(Fake::default());
    let mut c = client("sensor-a", KEY, now);
    pump(&mut s, &mut c, peer(1), now);
    assert_eq!(s.counts(), (1, 0));
    // A hello from a session that is in use is ignored (possibly spoofed): nothing answered.
    let mut early = client("sensor-a", KEY, now);
    let (connected, _) = pump(&mut s, &mut early, peer(1), now);
    assert!(!connected);
    assert_eq!(s.counts(), (1, 0));
    // Once the session has been quiet (a rebooted sensor), a new handshake is answered.
    let later = now + LIVE_HELLO_QUIET;
    // A failing handshake from the same address: the live session survives it.
    let mut bad = client("sensor-a", b"wrong-key-wrong-key", later);
    let (connected, _) = pump(&mut s, &mut bad, peer(1), later);
    assert!(!connected);
    assert_eq!(s.counts(), (1, 0));
    c.send_application_data(b"still here").expect("send");
    pump(&mut s, &mut c, peer(1), later);
    assert!(matches!(s.poll_event(), Some(SessionEvent::Data { .. })));
    // A successful one replaces it.
    let again_at = later + LIVE_HELLO_QUIET;
    let mut again = client("sensor-a", KEY, again_at);
    let (connected, _) = pump(&mut s, &mut again, peer(1), again_at);
    assert!(connected);
    assert_eq!(s.counts(), (1, 0));
    assert_eq!(s.poll_event(), Some(SessionEvent::Closed { peer: peer(1) }));
}

fn first_flight(identity: &str, now: Instant) -> Vec<u8> {
    let mut c = client(identity, KEY, now);
    let mut buf = vec![0u8; 4096];
    let _ = c.handle_timeout(now);
    loop {
        match c.poll_output(&mut buf) {
            Output::Packet(p) => return p.to_vec(),
            Output::Timeout(_) => panic!("no ClientHello"),
            _ => {}
        }
    }
}

#[test]
fn half_open_handshakes_are_capped_and_time_out() {
    let now = Instant::now();
    let (mut s, _) = table(Fake::default());
    let hello = first_flight("sensor-a", now);
    assert!(client_hello_suites(&hello).is_some_and(|s| s.contains(&PSK_AES128_CCM_8)));
    let mut stateless = 0;
    for port in 0..10 {
        s.handle_datagram(peer(100 + port), &hello, now);
        while let Some(t) = s.poll_transmit() {
            assert!(record::is_hello_verify_request(&t.payload));
            stateless += 1;
        }
    }
    // Half of max_handshakes (4) for hellos not yet proven; the rest answered statelessly
    // (dimpl's answers from the two engines are counted here too).
    assert_eq!(s.counts(), (0, 2), "cap of 2 not-proven handshakes");
    assert_eq!(stateless, 10);
    let deadline = s.poll_timeout().expect("a retransmission timer");
    assert!(deadline <= now + Duration::from_secs(10));
    s.handle_timeout(deadline);
    s.sweep(now + Duration::from_secs(9));
    assert_eq!(s.counts(), (0, 2), "expired before handshake_timeout");
    s.sweep(now + Duration::from_secs(10));
    assert_eq!(s.counts(), (0, 0));
    // Timed out before any PSK identity was seen: failed, but not an authentication failure.
    let hs = s.handshakes();
    assert_eq!((hs.completed, hs.failed, hs.auth_failed), (0, 2, 0));
}

#[test]
fn idle_sessions_are_evicted_and_invalid_principals_ended() {
    let now = Instant::now();
    let (mut s, backend) = table(Fake::default());
    let mut c = client("sensor-a", KEY, now);
    pump(&mut s, &mut c, peer(1), now);
    let mut c2 = client("sensor-a", KEY, now);
    pump(&mut s, &mut c2, peer(2), now);
    assert_eq!(s.counts(), (2, 0));
    backend.valid.store(false, Ordering::SeqCst);
    s.sweep(now);
    assert_eq!(s.counts(), (0, 0));
    backend.valid.store(true, Ordering::SeqCst);
    let mut c3 = client("sensor-a", KEY, now);
    pump(&mut s, &mut c3, peer(3), now);
    assert_eq!(s.counts(), (1, 0));
    s.sweep(now + Duration::from_secs(601));
    assert_eq!(s.counts(), (0, 0));
    while let Some(ev) = s.poll_event() {
        assert!(matches!(ev, SessionEvent::Closed { .. }));
    }
}

#[test]
fn a_panic_inside_the_engine_drops_only_that_session() {
    let now = Instant::now();
    let backend = Arc::new(Fake {
        panic_in_psk: true,
        ..Fake::default()
    });
    let mut s = Sessions::new(settings(), backend).expect("table");
    let mut c = client("sensor-a", KEY, now);
    let (connected, _) = pump(&mut s, &mut c, peer(1), now);
    assert!(!connected);
    assert_eq!(s.panics(), 1);
    assert_eq!(s.counts(), (0, 0));
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic_or_leak(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..40),
        hello_mutations in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
    ) {
        let now = Instant::now();
        let (mut s, _) = table(Fake::default());
        let mut hello = first_flight("sensor-a", now);
        for (i, b) in hello_mutations {
            let len = hello.len();
            hello[i % len] ^= b;
        }
        s.handle_datagram(peer(1), &hello, now);
        for (i, d) in datagrams.iter().enumerate() {
            s.handle_datagram(peer(1 + (i % 3) as u16), d, now);
            while s.poll_transmit().is_some() {}
        }
        prop_assert_eq!(s.panics(), 0);
        s.handle_timeout(now + Duration::from_secs(11));
        s.sweep(now + Duration::from_secs(11));
        prop_assert_eq!(s.counts(), (0, 0));
    }
}

#[test]
fn a_rotated_secret_ends_the_psk_session() {
    let now = Instant::now();
    let (mut s, backend) = table(Fake::default());
    let mut c = client("sensor-a", KEY, now);
    pump(&mut s, &mut c, peer(1), now);
    s.sweep(now);
    assert_eq!(s.counts(), (1, 0), "unchanged secret ended the session");
    backend.rotated.store(true, Ordering::SeqCst);
    s.sweep(now);
    assert_eq!(s.counts(), (0, 0));
}

/// A syntactically valid DTLS 1.2 ClientHello offering `suites`, with `cookie`.
fn crafted_hello(suites: &[u16], random: u8, cookie: &[u8], message_seq: u16) -> Vec<u8> {
    let mut body = vec![0xFE, 0xFD];
    body.extend_from_slice(&[random; 32]);
    body.push(0); // session id
    body.push(u8::try_from(cookie.len()).expect("cookie"));
    body.extend_from_slice(cookie);
    body.extend_from_slice(
        &u16::try_from(suites.len() * 2)
            .expect("suites")
            .to_be_bytes(),
    );
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let len = u32::try_from(body.len()).expect("len").to_be_bytes();
    let mut hs = vec![1];
    hs.extend_from_slice(&len[1..]);
    hs.extend_from_slice(&message_seq.to_be_bytes());
    hs.extend_from_slice(&[0, 0, 0]);
    hs.extend_from_slice(&len[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![
        22,
        0xFE,
        0xFF,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        u8::try_from(message_seq).expect("seq"),
    ];
    rec.extend_from_slice(&u16::try_from(hs.len()).expect("hs").to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// The cookie of a HelloVerifyRequest record.
fn hvr_cookie(datagram: &[u8]) -> Vec<u8> {
    assert!(
        record::is_hello_verify_request(datagram),
        "not a HelloVerifyRequest"
    );
    let body = &datagram[13 + 12..];
    body[3..3 + usize::from(body[2])].to_vec()
}

#[test]
fn a_hello_with_no_usable_suite_gets_a_fatal_alert_after_the_cookie_exchange() {
    let now = Instant::now();
    let (mut s, _) = table(Fake::default());
    // PSK-AES128-GCM-SHA256 only (what `openssl s_client -cipher PSK-AES128-GCM-SHA256` offers).
    let first = crafted_hello(&[0x00A8], 7, &[], 0);
    s.handle_datagram(peer(1), &first, now);
    let hvr = s
        .poll_transmit()
        .expect("a HelloVerifyRequest, not silence");
    assert!(s.poll_transmit().is_none());
    assert_eq!(s.counts(), (0, 0), "a hello without cookie keeps no state");
    let cookie = hvr_cookie(&hvr.payload);
    // The cookie is bound to the address: from elsewhere it is not accepted (another HVR).
    let second = crafted_hello(&[0x00A8], 7, &cookie, 1);
    s.handle_datagram(peer(2), &second, now);
    let t = s.poll_transmit().expect("answer");
    assert!(record::is_hello_verify_request(&t.payload));
    assert_eq!(s.handshakes().no_common_suite, 0);
    // From the address it was given to: an immediate handshake_failure alert.
    s.handle_datagram(peer(1), &second, now);
    let t = s.poll_transmit().expect("an alert");
    assert!(record::is_plain_alert(&t.payload));
    assert_eq!(t.payload.last(), Some(&ALERT_HANDSHAKE_FAILURE));
    assert_eq!(s.counts(), (0, 0));
    assert_eq!(s.handshakes().no_common_suite, 1);
    // A changed parameter (another random) does not carry the cookie over.
    let forged = crafted_hello(&[0x00A8], 8, &cookie, 1);
    s.handle_datagram(peer(1), &forged, now);
    let t = s.poll_transmit().expect("answer");
    assert!(record::is_hello_verify_request(&t.payload));
    // Certificate suites with certificate mode off: refused the same way.
    let ecdsa = crafted_hello(&[0xC02B], 9, &[], 0);
    s.handle_datagram(peer(3), &ecdsa, now);
    let cookie = hvr_cookie(&s.poll_transmit().expect("hvr").payload);
    s.handle_datagram(peer(3), &crafted_hello(&[0xC02B], 9, &cookie, 1), now);
    assert!(record::is_plain_alert(
        &s.poll_transmit().expect("alert").payload
    ));
    assert_eq!(s.handshakes().no_common_suite, 2);
}

#[test]
fn spoofed_hellos_keep_no_state_beyond_half_the_cap_and_never_evict_a_proven_handshake() {
    let now = Instant::now();
    let (mut s, _) = table(Fake::default());
    // A flood from many ports of one address and from other addresses: no round trip.
    for i in 0..200u16 {
        let from = SocketAddr::from(([10, 0, (i % 7) as u8, 2], 1000 + i));
        s.handle_datagram(
            from,
            &crafted_hello(&[PSK_AES128_CCM_8], i as u8, &[], 0),
            now,
        );
        while s.poll_transmit().is_some() {}
    }
    assert_eq!(
        s.counts(),
        (0, 2),
        "not-proven handshakes stay at half of max_handshakes"
    );
    // A real peer returns our cookie: it gets a proven handshake, which dimpl continues with
    // its own HelloVerifyRequest (message_seq 1, the one the client expects next).
    let real = peer(9);
    let hello = crafted_hello(&[PSK_AES128_CCM_8], 0xAA, &[], 0);
    s.handle_datagram(real, &hello, now);
    let cookie = hvr_cookie(&s.poll_transmit().expect("hvr").payload);
    s.handle_datagram(
        real,
        &crafted_hello(&[PSK_AES128_CCM_8], 0xAA, &cookie, 1),
        now,
    );
    let t = s.poll_transmit().expect("dimpl's HelloVerifyRequest");
    assert!(record::is_hello_verify_request(&t.payload));
    assert_eq!(
        u16::from_be_bytes([t.payload[17], t.payload[18]]),
        1,
        "message_seq"
    );
    assert!(
        s.poll_transmit().is_none(),
        "the warm-up hello's answer leaked"
    );
    assert_eq!(s.counts(), (0, 3));
    // More floods (and more proven handshakes from other peers) up to the cap: the first
    // proven handshake is never the one evicted by a not-proven hello.
    for i in 0..500u16 {
        let from = SocketAddr::from(([10, 1, (i % 9) as u8, 3], 2000 + i));
        s.handle_datagram(
            from,
            &crafted_hello(&[PSK_AES128_CCM_8], i as u8, &[], 0),
            now,
        );
        while s.poll_transmit().is_some() {}
    }
    assert!(
        s.pending.get(&real).is_some_and(|c| c.proven),
        "proven handshake evicted"
    );
    assert!(s.counts().1 <= 4);
    // A proven handshake from another peer when the table is full evicts the oldest
    // not-proven one, not the first proven one.
    let other = peer(10);
    s.handle_datagram(
        other,
        &crafted_hello(&[PSK_AES128_CCM_8], 0xBB, &[], 0),
        now,
    );
    let cookie = hvr_cookie(&s.poll_transmit().expect("hvr").payload);
    s.handle_datagram(
        other,
        &crafted_hello(&[PSK_AES128_CCM_8], 0xBB, &cookie, 1),
        now,
    );
    assert!(s.pending.contains_key(&real) && s.pending.contains_key(&other));
    assert!(s.counts().1 <= 4);
}

#[test]
fn many_handshakes_from_one_address_evict_their_oldest() {
    let now = Instant::now();
    let mut settings = settings();
    settings.max_handshakes = 64;
    let backend = Arc::new(Fake::default());
    let mut s = Sessions::new(settings, backend).expect("table");
    for port in 0..20u16 {
        let from = peer(3000 + port);
        let now = now + Duration::from_millis(u64::from(port));
        // A stale cookie (not ours): answered statelessly, whatever the table holds.
        let stale = [0u8; 32];
        s.handle_datagram(
            from,
            &crafted_hello(&[PSK_AES128_CCM_8], port as u8, &stale, 0),
            now,
        );
        let cookie = hvr_cookie(&s.poll_transmit().expect("hvr").payload);
        s.handle_datagram(
            from,
            &crafted_hello(&[PSK_AES128_CCM_8], port as u8, &cookie, 1),
            now,
        );
        while s.poll_transmit().is_some() {}
    }
    assert_eq!(s.counts().1, HANDSHAKES_PER_ADDRESS);
    assert!(
        s.pending.contains_key(&peer(3019)),
        "the newest was refused"
    );
    assert!(!s.pending.contains_key(&peer(3000)), "the oldest was kept");
}

/// Issue 20.4: a failed PSK handshake is reported to the credentials port (which audits it
/// and charges the throttle), with the peer's address and the identity it named; once the
/// throttle refuses, even the right key fails at once (fatal alert) and is not charged again.
#[test]
fn psk_failures_are_reported_and_a_throttled_handshake_fails_even_with_the_right_key() {
    let now = Instant::now();
    let (mut s, backend) = table(Fake::default());
    let mut c = client("sensor-a", b"wrong-key-wrong-key", now);
    let (connected, alerts) = pump(&mut s, &mut c, peer(1), now);
    assert!(!connected);
    assert_eq!(alerts, 1);
    let mut c = client("nobody", KEY, now);
    pump(&mut s, &mut c, peer(2), now);
    assert_eq!(
        *backend.failed.lock().unwrap(),
        vec![
            (peer(1).ip(), "sensor-a".to_owned()),
            (peer(2).ip(), "nobody".to_owned())
        ]
    );
    backend.throttled.store(true, Ordering::SeqCst);
    let mut c = client("sensor-a", KEY, now);
    let (connected, alerts) = pump(&mut s, &mut c, peer(3), now);
    assert!(!connected, "a throttled identity got a session");
    assert_eq!(alerts, 1, "no fatal alert for the throttled handshake");
    assert_eq!(backend.failed.lock().unwrap().len(), 2, "charged again");
    backend.throttled.store(false, Ordering::SeqCst);
    let mut c = client("sensor-a", KEY, now);
    assert!(pump(&mut s, &mut c, peer(4), now).0);
    assert_eq!(backend.failed.lock().unwrap().len(), 2);
}

/// Issue 20.15: one credential from many ports keeps at most `max_sessions_per_client`
/// sessions (its least recently active end), so other clients still get theirs.
#[test]
fn sessions_are_capped_per_client() {
    let now = Instant::now();
    let backend = Arc::new(Fake::default());
    backend.valid.store(true, Ordering::SeqCst);
    let mut s = Sessions::new(
        DtlsSettings {
            max_sessions: 4,
            max_sessions_per_client: 2,
            ..settings()
        },
        backend.clone(),
    )
    .expect("table");
    let mut t = now;
    for port in 1..=10u16 {
        t += Duration::from_millis(10);
        let mut c = client("sensor-a", KEY, t);
        assert!(
            pump(&mut s, &mut c, peer(port), t).0,
            "sensor-a from port {port}"
        );
    }
    assert_eq!(s.counts().0, 2);
    assert!(s.principal(peer(10)).is_some() && s.principal(peer(9)).is_some());
    assert!(s.principal(peer(1)).is_none());
    let mut b = client("sensor-b", KEY_B, t);
    assert!(
        pump(&mut s, &mut b, peer(100), t).0,
        "another client was refused"
    );
    assert_eq!(
        s.principal(peer(100)).map(|p| p.client_id.as_str()),
        Some("id-b")
    );
}
