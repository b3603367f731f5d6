//! The DTLS session table: arbitrary datagrams (ClientHello-shaped or not) from a few peers
//! must never panic outside the per-session containment, and leave no session behind once
//! the handshake deadline has passed.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::adapters::coap::dtls::{DtlsCredentials, DtlsSettings, Principal, Sessions};
use libfuzzer_sys::fuzz_target;

/// Knows no client: every PSK identity and certificate is refused.
struct Deny;

impl DtlsCredentials for Deny {
    fn psk(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn psk_principal(&self, _: &str) -> Option<Principal> {
        None
    }
    fn principal_for_certificate(&self, _: &str, _: &str, _: &str) -> Option<Principal> {
        None
    }
    fn still_valid(&self, _: &Principal) -> bool {
        false
    }
}

fuzz_target!(|data: &[u8]| {
    let settings = DtlsSettings {
        certificate: dimpl::DtlsCertificate {
            certificate: vec![0],
            private_key: vec![0],
        },
        client_cas: Vec::new(),
        client_intermediates: Vec::new(),
        max_sessions: 4,
        max_handshakes: 4,
        max_sessions_per_client: 16,
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        server_only_auth: false,
    };
    let Ok(mut table) = Sessions::new(settings, Arc::new(Deny)) else {
        return;
    };
    let start = Instant::now();
    for (i, datagram) in data.split(|b| *b == 0xFE).enumerate() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 6000 + (i % 3) as u16));
        let now = start + Duration::from_millis(i as u64);
        table.handle_datagram(peer, datagram, now);
        while table.poll_transmit().is_some() {}
        while table.poll_event().is_some() {}
    }
    let later = start + Duration::from_secs(6);
    table.handle_timeout(later);
    table.sweep(later);
    assert_eq!(
        table.counts(),
        (0, 0),
        "a session outlived the handshake deadline"
    );
});
