//! De-duplication of (peer, message id) and the stored answers re-sent for duplicates.

use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::Packet;

use super::{Server, Transmit, encode};

#[derive(Debug)]
pub(super) enum DedupState {
    /// The shell has not decided yet: duplicates get nothing.
    Processing,
    /// The response we sent, sent again verbatim for a duplicate.
    Answered(Vec<u8>),
    /// A non-final Block1 block: the 2.31 we sent.
    Continue(Vec<u8>),
}

#[derive(Debug)]
pub(super) struct DedupEntry {
    pub(super) expires: Instant,
    pub(super) state: DedupState,
}

impl Server {
    /// Records (peer, mid); for a duplicate, re-sends the stored answer and returns true.
    pub(super) fn is_duplicate(&mut self, peer: SocketAddr, mid: u16, now: Instant) -> bool {
        let key = (peer, mid);
        if let Some(entry) = self.dedup.get(&key) {
            self.stats.duplicates += 1;
            match &entry.state {
                DedupState::Processing => {}
                DedupState::Answered(bytes) | DedupState::Continue(bytes) => {
                    self.transmits.push_back(Transmit {
                        peer,
                        payload: bytes.clone(),
                    });
                }
            }
            return true;
        }
        while self.dedup.len() >= self.config.max_dedup_entries {
            let Some((old, _)) = self.dedup_order.pop_front() else {
                break;
            };
            self.dedup.remove(&old);
        }
        let expires = now + self.config.exchange_lifetime;
        self.dedup.insert(
            key,
            DedupEntry {
                expires,
                state: DedupState::Processing,
            },
        );
        self.dedup_order.push_back((key, expires));
        false
    }

    /// Sends `resp` to `peer` and keeps it (as `state`) for a duplicate of message `mid`.
    pub(super) fn send_answer(
        &mut self,
        peer: SocketAddr,
        mid: u16,
        resp: &Packet,
        state: fn(Vec<u8>) -> DedupState,
    ) {
        let bytes = encode(resp);
        if let Some(entry) = self.dedup.get_mut(&(peer, mid)) {
            entry.state = state(bytes.clone());
        }
        self.transmits.push_back(Transmit {
            peer,
            payload: bytes,
        });
    }
}
