//! The session table driven in memory against a dimpl PSK client, with virtual time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::coap::proto::Refusal;
use crate::coap::task::Backend;
use dimpl::{Config as DimplConfig, Dtls, DtlsCertificate, Output, PskResolver};
use proptest::prelude::*;

const KEY: &[u8] = b"sensor-a-secret-0123456789";
const KEY_B: &[u8] = b"sensor-b-secret-9876543210";

#[derive(Default)]
struct Fake {
    valid: AtomicBool,
    panic_in_psk: bool,
    rotated: AtomicBool,
}

impl Backend for Fake {
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
    fn certificate_principal(&self, _: &str, _: &str, _: &str) -> Result<Principal, Refusal> {
        Err(Refusal::Unauthenticated)
    }
    fn still_valid(&self, _: &Principal) -> bool {
        self.valid.load(Ordering::SeqCst)
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
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(600),
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
    // A failing handshake from the same address: the live session survives it.
    let mut bad = client("sensor-a", b"wrong-key-wrong-key", now);
    let (connected, _) = pump(&mut s, &mut bad, peer(1), now);
    assert!(!connected);
    assert_eq!(s.counts(), (1, 0));
    c.send_application_data(b"still here").expect("send");
    pump(&mut s, &mut c, peer(1), now);
    assert!(matches!(s.poll_event(), Some(SessionEvent::Data { .. })));
    // A successful one replaces it.
    let mut again = client("sensor-a", KEY, now);
    let (connected, _) = pump(&mut s, &mut again, peer(1), now);
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
    for port in 0..10 {
        s.handle_datagram(peer(100 + port), &hello, now);
    }
    assert_eq!(s.counts(), (0, 4), "cap of 4 half-open handshakes");
    let deadline = s.poll_timeout().expect("a retransmission timer");
    assert!(deadline <= now + Duration::from_secs(10));
    s.handle_timeout(deadline);
    s.sweep(now + Duration::from_secs(9));
    assert_eq!(s.counts(), (0, 4), "expired before handshake_timeout");
    s.sweep(now + Duration::from_secs(10));
    assert_eq!(s.counts(), (0, 0));
    // Timed out before any PSK identity was seen: failed, but not an authentication failure.
    let hs = s.handshakes();
    assert_eq!((hs.completed, hs.failed, hs.auth_failed), (0, 4, 0));
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
