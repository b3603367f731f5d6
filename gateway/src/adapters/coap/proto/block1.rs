//! Block1 (RFC 7959) reassembly of POST payloads.
//!
//! No state is kept for an unauthenticated peer: block 0 of a multi-block POST is first
//! handed to the shell as [`Event::Authorize`] (authenticate, authorize publish), and only
//! [`Outcome::Authorized`](super::Outcome::Authorized) creates the transfer. Transfers are
//! capped overall (5.03 beyond) and per IP address (its least recently active one is
//! dropped), and dropped after `block_idle_timeout` without a block.

use std::time::{Duration, Instant};

use coap_lite::{CoapOption, ResponseType};

use super::dedup::DedupState;
use super::wire::Message;
use super::{
    Credentials, Event, Kind, Outcome, Pending, Refusal, RefusalKind, Request, Server, Target,
    decode_uint, encode_uint,
};

#[derive(Debug)]
pub(super) struct BlockTransfer {
    pub(super) expires: Instant,
    pub(super) buffer: Vec<u8>,
}

/// Block 0 of a transfer while the shell decides whether the peer may publish.
#[derive(Debug)]
pub(super) struct BlockStart {
    key: (std::net::SocketAddr, String),
    /// The Block1 option value to echo in the 2.31.
    value: u32,
    payload: Vec<u8>,
}

/// Key of a Block1 transfer: the request URI without the Block options (RFC 7959 §2.4).
fn block_key(packet: &Message<'_>) -> String {
    let mut key = String::new();
    for (n, v) in packet.options() {
        if matches!(n, 11 | 15) {
            key.push_str(&n.to_string());
            key.push(':');
            key.push_str(&String::from_utf8_lossy(v));
            key.push('\u{0}');
        }
    }
    key
}

impl Server {
    pub(super) fn handle_post(
        &mut self,
        req: Request,
        target: Target,
        credentials: Credentials,
        packet: &Message<'_>,
        now: Instant,
    ) {
        let max = self.config.max_payload;
        let content_format = packet
            .first_option(CoapOption::ContentFormat)
            .and_then(decode_uint)
            .and_then(|v| u16::try_from(v).ok());
        let too_large = |s: &mut Self, req: &Request| {
            s.respond_failure_req(req, Refusal::TooLarge { max }, now);
        };
        if let Some(size1) = packet.first_option(CoapOption::Size1).and_then(decode_uint)
            && size1 as usize > max
        {
            too_large(self, &req);
            return;
        }
        let Some(block1) = packet.first_option(CoapOption::Block1) else {
            if packet.payload().len() > max {
                too_large(self, &req);
                return;
            }
            let payload = packet.payload().to_vec();
            self.start_exchange(req, Kind::Publish, None, now, |exchange, peer| {
                Event::Publish {
                    exchange,
                    peer,
                    target,
                    credentials,
                    content_format,
                    payload,
                }
            });
            return;
        };
        let Some(value) = decode_uint(block1) else {
            self.respond_failure_req(&req, Refusal::BadRequest, now);
            return;
        };
        let num = value >> 4;
        let more = value & 0x8 != 0;
        let szx = (value & 0x7) as u8;
        if szx == 7 {
            self.respond_failure_req(&req, Refusal::BadRequest, now);
            return;
        }
        let size = 16usize << szx;
        if more && packet.payload().len() != size {
            self.respond_failure_req(&req, Refusal::BadRequest, now);
            return;
        }
        let key = (req.peer, block_key(packet));
        if num == 0 && more {
            // Nothing is kept before the shell authenticated the peer.
            self.blocks.remove(&key);
            let start = BlockStart {
                key,
                value,
                payload: packet.payload().to_vec(),
            };
            self.start_exchange(
                req,
                Kind::BlockStart(Box::new(start)),
                None,
                now,
                |exchange, peer| Event::Authorize {
                    exchange,
                    peer,
                    target,
                    credentials,
                },
            );
            return;
        }
        if num == 0 {
            // A one-block transfer: published (and authenticated) like a plain POST.
            self.blocks.insert(
                key.clone(),
                BlockTransfer {
                    expires: now + self.config.block_idle_timeout,
                    buffer: Vec::new(),
                },
            );
        }
        let Some(transfer) = self.blocks.get_mut(&key) else {
            self.respond_now(
                &req,
                ResponseType::RequestEntityIncomplete,
                RefusalKind::BadRequest,
                |_| {},
            );
            return;
        };
        // A client may lower the block size mid-transfer (RFC 7959 §2.5): what must line up is
        // the byte offset, not the block number.
        let offset = (num as usize).saturating_mul(size);
        if offset != transfer.buffer.len() || (!more && packet.payload().len() > size) {
            self.blocks.remove(&key);
            self.respond_now(
                &req,
                ResponseType::RequestEntityIncomplete,
                RefusalKind::BadRequest,
                |_| {},
            );
            return;
        }
        if transfer.buffer.len() + packet.payload().len() > max {
            self.blocks.remove(&key);
            too_large(self, &req);
            return;
        }
        transfer.buffer.extend_from_slice(packet.payload());
        transfer.expires = now + self.config.block_idle_timeout;
        if more {
            let mut resp = self.response_to_req(&req, ResponseType::Continue);
            resp.add_option(CoapOption::Block1, encode_uint(value));
            self.send_answer(req.peer, req.message_id, &resp, DedupState::Continue);
            return;
        }
        let Some(transfer) = self.blocks.remove(&key) else {
            return;
        };
        let payload = transfer.buffer;
        self.start_exchange(req, Kind::Publish, Some(value), now, |exchange, peer| {
            Event::Publish {
                exchange,
                peer,
                target,
                credentials,
                content_format,
                payload,
            }
        });
    }
}

impl Server {
    /// The shell's decision about block 0 (see [`Event::Authorize`]).
    pub(super) fn complete_block_start(&mut self, p: Pending, outcome: Outcome, now: Instant) {
        let Kind::BlockStart(start) = &p.kind else {
            return;
        };
        match outcome {
            Outcome::Authorized => {}
            Outcome::Refused(refusal) => {
                self.respond_failure(&p, refusal, now);
                return;
            }
            // An outcome that does not fit the request is a shell bug: 5.03, retry later.
            _ => {
                self.respond_failure(
                    &p,
                    Refusal::Unavailable {
                        retry_after: crate::intake::refusal::SHUTDOWN_RETRY_AFTER,
                    },
                    now,
                );
                return;
            }
        }
        let ip = start.key.0.ip();
        let per_peer = self.config.max_block_transfers_per_peer.max(1);
        let mut mine: Vec<_> = self
            .blocks
            .iter()
            .filter(|((peer, _), _)| peer.ip() == ip)
            .map(|(k, b)| (b.expires, k.clone()))
            .collect();
        if mine.len() >= per_peer {
            // The address's least recently active transfers make room for this one.
            mine.sort();
            let excess = mine.len() + 1 - per_peer;
            for (_, k) in mine.into_iter().take(excess) {
                self.blocks.remove(&k);
            }
        }
        if self.blocks.len() >= self.config.max_block_transfers {
            self.respond_failure(
                &p,
                Refusal::Busy {
                    retry_after: Duration::from_secs(5),
                },
                now,
            );
            return;
        }
        self.blocks.insert(
            start.key.clone(),
            BlockTransfer {
                expires: now + self.config.block_idle_timeout,
                buffer: start.payload.clone(),
            },
        );
        let mut resp = self.response_to(&p, ResponseType::Continue);
        resp.add_option(CoapOption::Block1, encode_uint(start.value));
        self.send_answer(p.peer, p.message_id, &resp, DedupState::Continue);
    }
}
