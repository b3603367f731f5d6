//! The refusal → CoAP answer mapping and the error answers built from it.

use std::time::{Duration, Instant};

use coap_lite::{CoapOption, Packet, ResponseType};

use super::dedup::DedupState;
use super::{Kind, Pending, Refusal, RefusalKind, Request, Server, encode_uint};

/// The CoAP answer to a refusal: code, Max-Age, Size1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoapAnswer {
    pub code: ResponseType,
    pub max_age: Option<Duration>,
    pub size1: Option<usize>,
}

/// The one mapping from intake's refusal to the CoAP wire (README "Refusals"): storage
/// failure and shutdown are 5.03 + Max-Age like an outbox that is full.
pub fn coap_answer(refusal: &Refusal) -> CoapAnswer {
    let (code, max_age, size1) = match *refusal {
        Refusal::BadRequest => (ResponseType::BadRequest, None, None),
        Refusal::Unauthenticated => (ResponseType::Unauthorized, None, None),
        Refusal::Forbidden => (ResponseType::Forbidden, None, None),
        Refusal::NotFound => (ResponseType::NotFound, None, None),
        Refusal::TooLarge { max } => (ResponseType::RequestEntityTooLarge, None, Some(max)),
        Refusal::Throttled { retry_after } => {
            (ResponseType::TooManyRequests, Some(retry_after), None)
        }
        Refusal::Busy { retry_after } | Refusal::Unavailable { retry_after } => {
            (ResponseType::ServiceUnavailable, Some(retry_after), None)
        }
    };
    CoapAnswer {
        code,
        max_age,
        size1,
    }
}

fn max_age_secs(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

impl Server {
    pub(super) fn respond_failure_req(&mut self, req: &Request, refusal: Refusal, now: Instant) {
        let p = Pending {
            peer: req.peer,
            message_id: req.message_id,
            confirmable: req.confirmable,
            token: req.token.clone(),
            kind: Kind::Poll,
            block1: None,
        };
        self.respond_failure(&p, refusal, now);
    }

    pub(super) fn respond_failure(&mut self, p: &Pending, refusal: Refusal, now: Instant) {
        let answer = coap_answer(&refusal);
        self.stats.refused.record(refusal.kind());
        let mut resp = self.response_to(p, answer.code);
        if let Some(age) = answer.max_age {
            resp.add_option(CoapOption::MaxAge, encode_uint(max_age_secs(age)));
        }
        if let Some(size) = answer.size1 {
            resp.add_option(
                CoapOption::Size1,
                encode_uint(u32::try_from(size).unwrap_or(u32::MAX)),
            );
        }
        self.finish(p, resp, now);
    }

    /// Answers at once with a code of the CoAP message layer that intake has no word for
    /// (4.02, 4.05, 4.08), counted as `kind`.
    pub(super) fn respond_now(
        &mut self,
        req: &Request,
        code: ResponseType,
        kind: RefusalKind,
        extra: impl FnOnce(&mut Packet),
    ) {
        self.stats.refused.record(kind);
        let mut resp = self.response_to_req(req, code);
        extra(&mut resp);
        self.send_answer(req.peer, req.message_id, &resp, DedupState::Answered);
    }
}
