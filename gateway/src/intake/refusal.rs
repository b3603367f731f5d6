//! The one refusal vocabulary of sensor requests, shared by every adapter, plus plain
//! (non-atomic) counts of it for the sans-IO cores. Pure data: no tokio, no I/O, no wire
//! knowledge. Each adapter maps a [`Refusal`] to its wire answer in one function
//! (`coap::proto::coap_answer`, `serial::proto::wire_reason`, `http::adapter::http_answer`);
//! `crate::runtime::metrics` counts refusals by [`RefusalKind`], once, where that mapping happens.

use std::time::Duration;

/// Why a sensor request was refused. See the module docs of [`crate::intake`] for the wire
/// answer of each variant on CoAP, serial and HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed request: path, query, options, subtopic, content type, checksum.
    BadRequest,
    /// Missing, wrong or unknown credentials; disabled or removed client.
    Unauthenticated,
    /// Authenticated, but not allowed on that channel (or the channel is unknown, or in
    /// another domain).
    Forbidden,
    /// No such resource (a path the adapter does not serve).
    NotFound,
    /// Payload (or line) larger than `max` bytes.
    TooLarge { max: usize },
    /// The gateway is overloaded (outbox full, state disk full, too many requests waiting,
    /// tables full): back-pressure, retry later.
    Busy { retry_after: Duration },
    /// Too many failed authentications from that address or identity.
    Throttled { retry_after: Duration },
    /// The gateway cannot take it now: storage failure, shutting down.
    Unavailable { retry_after: Duration },
}

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::BadRequest => RefusalKind::BadRequest,
            Refusal::Unauthenticated => RefusalKind::Unauthenticated,
            Refusal::Forbidden => RefusalKind::Forbidden,
            Refusal::NotFound => RefusalKind::NotFound,
            Refusal::TooLarge { .. } => RefusalKind::TooLarge,
            Refusal::Busy { .. } => RefusalKind::Busy,
            Refusal::Throttled { .. } => RefusalKind::Throttled,
            Refusal::Unavailable { .. } => RefusalKind::Unavailable,
        }
    }

    /// The wait to ask for, for the variants that carry one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Busy { retry_after }
            | Refusal::Throttled { retry_after }
            | Refusal::Unavailable { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// How long a sensor is asked to wait while the gateway shuts down (it restarts soon).
pub const SHUTDOWN_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a sensor is asked to wait after a storage failure.
pub const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(30);

const KINDS: usize = 8;

/// A [`Refusal`] without its data: the `reason` label of `edgegw_messages_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    Unauthenticated,
    Forbidden,
    TooLarge,
    Busy,
    BadRequest,
    Throttled,
    Unavailable,
    NotFound,
}

impl RefusalKind {
    pub const ALL: [RefusalKind; KINDS] = [
        RefusalKind::Unauthenticated,
        RefusalKind::Forbidden,
        RefusalKind::TooLarge,
        RefusalKind::Busy,
        RefusalKind::BadRequest,
        RefusalKind::Throttled,
        RefusalKind::Unavailable,
        RefusalKind::NotFound,
    ];

    /// The metrics label (`auth` for unauthenticated: the label predates this enum).
    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::Unauthenticated => "auth",
            RefusalKind::Forbidden => "forbidden",
            RefusalKind::TooLarge => "too_large",
            RefusalKind::Busy => "busy",
            RefusalKind::BadRequest => "bad_request",
            RefusalKind::Throttled => "throttled",
            RefusalKind::Unavailable => "unavailable",
            RefusalKind::NotFound => "not_found",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Plain refusal counts by kind, kept by the sans-IO cores in their stats; their shells add
/// the differences to `crate::runtime::metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; KINDS]);

impl RefusalCounts {
    pub fn record(&mut self, kind: RefusalKind) {
        self.0[kind.index()] += 1;
    }

    pub fn get(&self, kind: RefusalKind) -> u64 {
        self.0[kind.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}
