//! Intake: the one place every sensor request goes through, whichever adapter it came on
//! (CoAP, CoAPS, serial, the HTTP adapter). Adapters translate wire ↔ domain and nothing else.
//!
//! - [`Intake::admit`]: throttle → authenticate (query secret `auth=`, `username=&password=`,
//!   HTTP `Client`/Basic, an already authenticated session: DTLS principal or serial `AUTH`,
//!   a serial port bound to a client) → authorize → domain and subtopic checks.
//! - [`Intake::check_health`]: `hc/<domain>`, throttle → authenticate → domain membership.
//! - [`Intake::publish`]: builds the [`Message`], hands it to the outbox and returns a
//!   [`Durable`] future that resolves once the message is durable.
//! - [`Intake::subscribe`] / [`Intake::take`]: the downlink hub's commands, handed straight
//!   to the adapter (its task polls the [`Subscription`]s itself; no forwarder tasks).
//!
//! Every refusal is one [`Refusal`]. Each adapter maps it to its wire answer in one
//! function and counts it there, once, by [`RefusalKind`] (`crate::runtime::metrics`):
//!
//! | refusal | CoAP / CoAPS | serial | HTTP adapter |
//! |---|---|---|---|
//! | `BadRequest` | 4.00 | `ERR bad-request` | 400 |
//! | `Unauthenticated` | 4.01 | `ERR auth` (AUTH), `ERR not-authenticated` (PUB) | 401 |
//! | `Forbidden` | 4.03 | `ERR not-connected` | 403 |
//! | `NotFound` | 4.04 | `ERR bad-request` | 404 |
//! | `TooLarge{max}` | 4.13 + Size1 = max | `ERR too-large` | 413 |
//! | `Throttled{retry_after}` | 4.29 + Max-Age | `ERR throttled` | 429 + Retry-After |
//! | `Busy{retry_after}` (outbox full, state disk full) | 5.03 + Max-Age | `ERR busy` | 503 + Retry-After |
//! | `Unavailable{retry_after}` (storage failure, shutting down) | 5.03 + Max-Age | `ERR unavailable` | 503 + Retry-After |
//!
//! Storage failure and shutdown are the same answer everywhere: the gateway cannot take the
//! message now, retry after `retry_after` (30 s after a storage failure, 5 s while shutting
//! down). Nothing of it is stored; a sensor that retries is not a duplicate.

pub mod refusal;
pub mod request;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;

pub use refusal::{Refusal, RefusalCounts, RefusalKind, SHUTDOWN_RETRY_AFTER, STORAGE_RETRY_AFTER};
pub use request::Target;

use crate::auth::{AuthStore, ChannelRef, ClientRef, Denied, Op};
use crate::downlink::{Command, DownlinkHub, Subscription};
use crate::outbox::{IngestError, Message, Outbox, Receipt};

/// What a request authenticates with.
#[derive(Clone, Copy)]
pub enum Credentials<'a> {
    /// Nothing given.
    None,
    /// A client secret alone (CoAP `auth=`, HTTP `Client <secret>` or a bare secret).
    Secret(&'a [u8]),
    /// A client (by identity, or by id) and its secret (CoAP `username=&password=`, HTTP
    /// Basic, serial `AUTH`).
    IdentitySecret { identity: &'a str, secret: &'a [u8] },
    /// Authenticated by the transport or earlier on this session (DTLS principal, serial
    /// `AUTH`): not throttled, but still re-checked (present, enabled) by authorization.
    Session(&'a ClientRef),
    /// A serial port bound to this client identity by configuration.
    Bound(&'a str),
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Secret(_) => f.write_str("Secret(<redacted>)"),
            Self::IdentitySecret { identity, .. } => f
                .debug_struct("IdentitySecret")
                .field("identity", identity)
                .finish_non_exhaustive(),
            Self::Session(c) => f.debug_tuple("Session").field(&c.identity).finish(),
            Self::Bound(identity) => f.debug_tuple("Bound").field(identity).finish(),
        }
    }
}

/// A request that passed every check: who, on which channel, and where it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub client: ClientRef,
    pub channel: std::sync::Arc<ChannelRef>,
    /// The upstream domain: `topic::effective_domain` of the channel (never the request's path).
    pub domain_id: String,
    /// Validated and normalised (`room.1` → `room/1`).
    pub subtopic: String,
}

/// Resolves once the accepted message is durable: its outbox sequence number.
#[derive(Debug)]
pub struct Durable(Receipt);

impl Future for Durable {
    type Output = Result<u64, Refusal>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|e| ingest_refusal(&e)))
    }
}

/// The intake service over the auth store, the outbox and the downlink hub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Intake {
    auth: AuthStore,
    outbox: Outbox,
    downlink: DownlinkHub,
    /// `gateway.domain_id`: the domain of channels that have none.
    gateway_domain: String,
}

impl Intake {
    pub fn new(auth: AuthStore, outbox: Outbox, downlink: DownlinkHub) -> Self {
        Self {
            auth,
            outbox,
            downlink,
            gateway_domain: String::new(),
        }
    }

    /// Sets `gateway.domain_id`, the upstream domain of channels without one.
    #[must_use]
    pub fn with_gateway_domain(mut self, domain: &str) -> Self {
        self.gateway_domain = domain.to_owned();
        self
    }

    fn domain_of(&self, channel: &ChannelRef) -> String {
        crate::topic::effective_domain(&channel.domain_id, &self.gateway_domain).to_owned()
    }

    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// Throttle, then authenticate. Unknown identity, wrong secret and disabled client are
    /// the same [`Refusal::Unauthenticated`].
    pub fn authenticate(
        &self,
        peer: Option<IpAddr>,
        credentials: Credentials<'_>,
    ) -> Result<ClientRef, Refusal> {
        match credentials {
            Credentials::None => Err(Refusal::Unauthenticated),
            Credentials::Session(client) => Ok(client.clone()),
            Credentials::Bound(identity) => {
                // A bound port trusts the line itself: look the client up (enabled, present)
                // without charging the throttle or the audit log for a secret nobody sent.
                let secret = self
                    .auth
                    .psk_for_identity(identity)
                    .ok_or(Refusal::Unauthenticated)?;
                self.auth
                    .snapshot()
                    .authenticate(identity, &secret)
                    .map_err(|_| Refusal::Unauthenticated)
            }
            Credentials::Secret(secret) => {
                let result = self.auth.snapshot().authenticate_secret(secret);
                self.past_throttle(peer, None, &result)?;
                self.auth
                    .concluded_secret(peer, result)
                    .map_err(|e| auth_refusal(&e))
            }
            Credentials::IdentitySecret { identity, secret } => {
                // `username=` and Basic may name the client by id or by identity (issue 16):
                // both reach the same throttle bucket and audit identity.
                let snapshot = self.auth.snapshot();
                let identity = snapshot.resolve_identity(identity).unwrap_or(identity);
                let result = snapshot.authenticate(identity, secret);
                self.past_throttle(peer, Some(identity), &result)?;
                self.auth
                    .concluded_identity(peer, identity, result)
                    .map_err(|e| auth_refusal(&e))
            }
        }
    }

    /// The throttle, given the authentication's `result` (decided against the snapshot, not
    /// yet audited or charged: the caller hands it on to the store's `concluded_*` when this
    /// lets it through). Not throttled: through. Throttled: through only when the credentials
    /// proved right for a client that authenticated from this very address recently, so
    /// failures spoofed from a sensor's address (plain CoAP has no proof of source) cannot
    /// lock that sensor out; anything else stays throttled, right or wrong, neither audited
    /// nor charged (issue 20.5).
    fn past_throttle(
        &self,
        peer: Option<IpAddr>,
        identity: Option<&str>,
        result: &Result<ClientRef, Denied>,
    ) -> Result<(), Refusal> {
        let Err(throttled) = self.throttle(peer, identity) else {
            return Ok(());
        };
        match (peer, result) {
            (Some(ip), Ok(client)) if self.auth.is_trusted_pair(ip, &client.identity) => Ok(()),
            _ => Err(throttled),
        }
    }

    fn throttle(&self, peer: Option<IpAddr>, identity: Option<&str>) -> Result<(), Refusal> {
        self.auth
            .throttle_check(peer, identity)
            .map_err(|t| Refusal::Throttled {
                retry_after: t.retry_after,
            })
    }

    /// Throttle → authenticate → authorize `op` on the target's channel → domain and
    /// subtopic checks.
    pub fn admit(
        &self,
        peer: Option<IpAddr>,
        credentials: Credentials<'_>,
        target: &Target,
        op: Op,
    ) -> Result<Admitted, Refusal> {
        let client = self.authenticate(peer, credentials)?;
        let channel = self
            .auth
            .authorize(&client, &target.channel, op)
            .map_err(|e| auth_refusal(&e))?;
        // One channel, one upstream domain: a path naming another domain is refused. With no
        // domain at all (channel and gateway), any path domain is accepted but the message
        // still goes upstream with the one (empty) effective domain.
        let domain_id = self.domain_of(&channel);
        if let Some(domain) = &target.domain
            && !domain_id.is_empty()
            && *domain != domain_id
        {
            return Err(Refusal::Forbidden);
        }
        let subtopic =
            crate::topic::validate_subtopic(&target.subtopic).map_err(|_| Refusal::BadRequest)?;
        Ok(Admitted {
            client,
            channel,
            domain_id,
            subtopic,
        })
    }

    /// `hc/<domain>`, SuperMQ's health (authentication) check (supermq v0.19.1
    /// `pkg/messaging/topics.go` `HealthType`; `coap/adapter.go` and `http/handler.go`: the
    /// client authenticates *in that domain*, no channel authorization, nothing published).
    /// Throttle → authenticate as [`Intake::authenticate`]; then the client must belong to
    /// `domain`: the gateway's `gateway.domain_id`, or the upstream domain of a channel it is
    /// connected to. When neither the gateway nor any of its channels has a domain, any domain
    /// is accepted (as [`Intake::admit`] accepts any path domain then). Another domain is
    /// [`Refusal::Unauthenticated`], as in SuperMQ (domain authentication fails: 401 / 4.01);
    /// the secret itself was right, so it is not charged to the failure throttle.
    pub fn check_health(
        &self,
        peer: Option<IpAddr>,
        credentials: Credentials<'_>,
        domain: &str,
    ) -> Result<ClientRef, Refusal> {
        let client = self.authenticate(peer, credentials)?;
        let snapshot = self.auth.snapshot();
        if let Credentials::Session(_) = credentials
            && snapshot.psk_for_identity(&client.identity).is_none()
        {
            // A session authenticated earlier: the client must still be present and enabled.
            return Err(Refusal::Unauthenticated);
        }
        if !self.gateway_domain.is_empty() && domain == self.gateway_domain {
            return Ok(client);
        }
        let mut known = !self.gateway_domain.is_empty();
        for channel in snapshot.directory() {
            let connected = [Op::Publish, Op::Subscribe]
                .into_iter()
                .any(|op| snapshot.authorize(&client, &channel.id, op).is_ok());
            let channel_domain = self.domain_of(&channel);
            if !connected || channel_domain.is_empty() {
                continue;
            }
            if channel_domain == domain {
                return Ok(client);
            }
            known = true;
        }
        if known {
            Err(Refusal::Unauthenticated)
        } else {
            Ok(client)
        }
    }

    /// Hands an admitted message to the outbox; the returned future resolves once durable.
    pub fn publish(
        &self,
        admitted: Admitted,
        payload: Bytes,
        content_format: Option<String>,
    ) -> Result<Durable, Refusal> {
        // Taken by value: the admission's strings move into the message; of the channel,
        // shared with the auth snapshot, only the id is copied.
        let msg = Message {
            client_id: admitted.client.id,
            channel_id: admitted.channel.id.clone(),
            domain_id: admitted.domain_id,
            subtopic: admitted.subtopic,
            content_format,
            payload,
            received_at: SystemTime::now(),
        };
        self.outbox
            .accept(msg)
            .map(Durable)
            .map_err(|e| ingest_refusal(&e))
    }

    /// The admitted client's commands on the admitted channel (kept ones first). The adapter
    /// polls it itself; dropping it marks the client offline (later commands are kept).
    pub fn subscribe(&self, admitted: &Admitted) -> Subscription {
        self.downlink
            .subscribe(&admitted.client.id, &admitted.channel.id)
    }

    /// A poll: the oldest kept command of (client, channel), handed out once.
    pub fn take(&self, admitted: &Admitted) -> Option<Command> {
        self.downlink
            .take(&admitted.client.id, &admitted.channel.id)
    }

    /// Every channel `client` may subscribe to, admitted (serial sessions subscribe to all).
    pub fn subscribable(&self, client: &ClientRef) -> Vec<Admitted> {
        self.auth
            .subscribed_channels()
            .borrow()
            .iter()
            .filter_map(|ch| {
                let channel = self.auth.authorize(client, &ch.id, Op::Subscribe).ok()?;
                Some(Admitted {
                    client: client.clone(),
                    domain_id: self.domain_of(&channel),
                    channel,
                    subtopic: String::new(),
                })
            })
            .collect()
    }

    /// Fires on every change of the auth store: re-check live subscriptions then.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<i64> {
        self.auth.changes()
    }

    /// Whether an admitted subscription is still allowed (client present and enabled, still
    /// subscribe-connected): checked on every store change, so a revoked client stops
    /// receiving commands.
    pub fn still_subscribed(&self, admitted: &Admitted) -> bool {
        self.auth
            .authorize(&admitted.client, &admitted.channel.id, Op::Subscribe)
            .is_ok()
    }
}

/// An auth store decision as a refusal.
pub fn auth_refusal(e: &Denied) -> Refusal {
    if e.is_forbidden() {
        Refusal::Forbidden
    } else if e.is_unauthenticated() {
        Refusal::Unauthenticated
    } else {
        tracing::warn!("auth store failed during intake: {e}");
        Refusal::Unavailable {
            retry_after: STORAGE_RETRY_AFTER,
        }
    }
}

/// An outbox refusal as a refusal.
pub fn ingest_refusal(e: &IngestError) -> Refusal {
    match e {
        IngestError::Busy { retry_after } => Refusal::Busy {
            retry_after: *retry_after,
        },
        IngestError::TooLarge { max } => Refusal::TooLarge { max: *max },
        IngestError::Closed => Refusal::Unavailable {
            retry_after: SHUTDOWN_RETRY_AFTER,
        },
        IngestError::Storage(_) => Refusal::Unavailable {
            retry_after: STORAGE_RETRY_AFTER,
        },
    }
}
