//! The CoAP core's decode path: any datagram (or several from a few peers) must be answered
//! or dropped without panicking, and every request the shell completes must be answerable.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway::adapters::coap::proto::{Event, Outcome, Server, ServerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut server = Server::new(ServerConfig {
        max_payload: 4096,
        max_dedup_entries: 64,
        max_pending: 8,
        ..ServerConfig::default()
    });
    let start = Instant::now();
    // Split the input into datagrams on 0xFF 0xFE, spread over three peers.
    for (i, datagram) in data.split(|b| *b == 0xFE).enumerate() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000 + (i % 3) as u16));
        let now = start + Duration::from_millis(i as u64 * 10);
        server.handle_datagram(peer, datagram, now);
        while let Some(ev) = server.poll_event() {
            match ev {
                Event::Publish { exchange, .. } => server.complete(exchange, Outcome::Stored, now),
                Event::HealthCheck { exchange, .. } => {
                    server.complete(exchange, Outcome::Checked, now);
                }
                Event::Authorize { exchange, .. } => {
                    server.complete(exchange, Outcome::Authorized, now);
                }
                Event::Subscribe { exchange, .. } => {
                    server.complete(exchange, Outcome::Subscribed, now);
                    let _ = server.notify(exchange, b"cmd".to_vec(), None, now);
                }
                Event::Poll { exchange, .. } => server.complete(
                    exchange,
                    Outcome::Content {
                        payload: Vec::new(),
                        content_format: None,
                    },
                    now,
                ),
                Event::ObserveEnded { .. } => {}
            }
        }
        while server.poll_transmit().is_some() {}
        server.handle_timeout(now);
    }
});
