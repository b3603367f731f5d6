//! Block1 (RFC 7959) reassembly of POST payloads.

use std::time::{Duration, Instant};

use coap_lite::{CoapOption, Packet, ResponseType};

use super::dedup::DedupState;
use super::{
    Credentials, Event, Kind, Refusal, RefusalKind, Request, Server, Target, decode_uint,
    encode_uint,
};

#[derive(Debug)]
pub(super) struct BlockTransfer {
    pub(super) expires: Instant,
    pub(super) buffer: Vec<u8>,
}

/// Key of a Block1 transfer: the request URI without the Block options (RFC 7959 §2.4).
fn block_key(packet: &Packet) -> String {
    let mut key = String::new();
    for (n, list) in packet.options() {
        if matches!(*n, 11 | 15) {
            for v in list {
                key.push_str(&n.to_string());
                key.push(':');
                key.push_str(&String::from_utf8_lossy(v));
                key.push('\u{0}');
            }
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
        packet: &Packet,
        now: Instant,
    ) {
        let max = self.config.max_payload;
        let content_format = packet
            .get_first_option(CoapOption::ContentFormat)
            .and_then(|v| decode_uint(v))
            .and_then(|v| u16::try_from(v).ok());
        let too_large = |s: &mut Self, req: &Request| {
            s.respond_failure_req(req, Refusal::TooLarge { max }, now);
        };
        if let Some(size1) = packet
            .get_first_option(CoapOption::Size1)
            .and_then(|v| decode_uint(v))
            && size1 as usize > max
        {
            too_large(self, &req);
            return;
        }
        let Some(block1) = packet.get_first_option(CoapOption::Block1) else {
            if packet.payload.len() > max {
                too_large(self, &req);
                return;
            }
            let payload = packet.payload.clone();
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
        if more && packet.payload.len() != size {
            self.respond_failure_req(&req, Refusal::BadRequest, now);
            return;
        }
        let key = (req.peer, block_key(packet));
        if num == 0 {
            if !self.blocks.contains_key(&key)
                && self.blocks.len() >= self.config.max_block_transfers
            {
                self.respond_failure_req(
                    &req,
                    Refusal::Busy {
                        retry_after: Duration::from_secs(5),
                    },
                    now,
                );
                return;
            }
            self.blocks.insert(
                key.clone(),
                BlockTransfer {
                    expires: now + self.config.exchange_lifetime,
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
        if offset != transfer.buffer.len() || (!more && packet.payload.len() > size) {
            self.blocks.remove(&key);
            self.respond_now(
                &req,
                ResponseType::RequestEntityIncomplete,
                RefusalKind::BadRequest,
                |_| {},
            );
            return;
        }
        if transfer.buffer.len() + packet.payload.len() > max {
            self.blocks.remove(&key);
            too_large(self, &req);
            return;
        }
        transfer.buffer.extend_from_slice(&packet.payload);
        transfer.expires = now + self.config.exchange_lifetime;
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
