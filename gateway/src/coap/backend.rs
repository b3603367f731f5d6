//! The [`Backend`] of the CoAP adapters over the real components: the local auth store
//! (throttle, authentication, authorization), the outbox (durable accept) and the downlink hub.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::proto::{Credentials, Failure, Target};
use super::task::{Backend, Downlink, Principal, PublishFuture, Who};
use crate::auth::{AuthError, AuthStore, ChannelRef, ClientRef, Op};
use crate::downlink::DownlinkHub;
use crate::outbox::{IngestError, Message, Outbox};

/// Commands buffered per CoAP observer between the hub and the listener.
const OBSERVER_QUEUE: usize = 16;

/// Auth store + outbox + downlink hub, shared by both listeners.
#[derive(Debug, Clone)]
pub struct StoreBackend {
    pub auth: AuthStore,
    pub outbox: Outbox,
    pub downlink: DownlinkHub,
}

fn auth_failure(e: &AuthError) -> Failure {
    if e.is_forbidden() {
        Failure::NotConnected
    } else if e.is_unauthenticated() {
        Failure::Unauthenticated
    } else {
        Failure::Internal
    }
}

/// A well-known CoAP Content-Format number as a media type (RFC 7252 §12.3, RFC 8428).
fn content_format_name(cf: u16) -> String {
    match cf {
        0 => "text/plain;charset=utf-8".into(),
        40 => "application/link-format".into(),
        41 => "application/xml".into(),
        42 => "application/octet-stream".into(),
        50 => "application/json".into(),
        60 => "application/cbor".into(),
        110 => "application/senml+json".into(),
        112 => "application/senml+cbor".into(),
        other => other.to_string(),
    }
}

impl StoreBackend {
    /// Throttle, then authenticate (query credentials or the DTLS principal), then authorize.
    fn admit(
        &self,
        peer: SocketAddr,
        who: Who<'_>,
        target: &Target,
        op: Op,
    ) -> Result<(ClientRef, ChannelRef), Failure> {
        let ip = Some(peer.ip());
        let identity = match who {
            Who::Query(Credentials::UsernamePassword { username, .. }) => Some(username.as_str()),
            Who::Session(p) => Some(p.identity.as_str()),
            _ => None,
        };
        self.auth
            .throttle_check(ip, identity)
            .map_err(|t| Failure::Throttled {
                retry_after: t.retry_after,
            })?;
        let client = match who {
            Who::Query(Credentials::None) => return Err(Failure::Unauthenticated),
            Who::Query(Credentials::Secret(secret)) => {
                self.auth.authenticate_secret_from(ip, secret)
            }
            Who::Query(Credentials::UsernamePassword { username, password }) => {
                self.auth.authenticate_from(ip, username, password)
            }
            Who::Session(p) => Ok(ClientRef {
                id: p.client_id.clone(),
                identity: p.identity.clone(),
            }),
        }
        .map_err(|e| auth_failure(&e))?;
        let channel = self
            .auth
            .authorize(&client, &target.channel, op)
            .map_err(|e| auth_failure(&e))?;
        if let Some(domain) = &target.domain
            && !channel.domain_id.is_empty()
            && *domain != channel.domain_id
        {
            return Err(Failure::NotConnected);
        }
        Ok((client, channel))
    }
}

impl Backend for StoreBackend {
    fn publish(
        &self,
        peer: SocketAddr,
        who: Who<'_>,
        target: &Target,
        content_format: Option<u16>,
        payload: Vec<u8>,
    ) -> PublishFuture {
        let admitted = self
            .admit(peer, who, target, Op::Publish)
            .and_then(|(c, ch)| {
                let subtopic = crate::topic::validate_subtopic(&target.subtopic)
                    .map_err(|_| Failure::BadRequest)?;
                let domain_id = if ch.domain_id.is_empty() {
                    target.domain.clone().unwrap_or_default()
                } else {
                    ch.domain_id
                };
                let msg = Message {
                    client_id: c.id,
                    channel_id: ch.id,
                    domain_id,
                    subtopic,
                    content_format: content_format.map(content_format_name),
                    payload: Bytes::from(payload),
                    received_at: SystemTime::now(),
                };
                self.outbox.accept(msg).map_err(|e| ingest_failure(&e))
            });
        Box::pin(async move {
            let receipt = admitted?;
            receipt.await.map(drop).map_err(|e| ingest_failure(&e))
        })
    }

    fn subscribe(
        &self,
        peer: SocketAddr,
        who: Who<'_>,
        target: &Target,
    ) -> Result<mpsc::Receiver<Downlink>, Failure> {
        let (client, channel) = self.admit(peer, who, target, Op::Subscribe)?;
        let mut sub = self.downlink.subscribe(&client.id, &channel.id);
        let (tx, rx) = mpsc::channel(OBSERVER_QUEUE);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    cmd = sub.recv() => match cmd {
                        Some(cmd) => {
                            let d = Downlink { payload: cmd.payload.to_vec(), content_format: None };
                            if tx.send(d).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            // Dropping `sub` marks the client offline: later commands are kept for it.
        });
        Ok(rx)
    }

    /// A GET without Observe takes the oldest kept command of (client, channel) from the hub,
    /// after the same checks as an Observe registration (subscribe permission). Like Observe
    /// it is channel-wide: a subtopic in the path does not filter. The command leaves the hub
    /// here and goes into this one response (at most once: see README "Polling for commands").
    fn poll(
        &self,
        peer: SocketAddr,
        who: Who<'_>,
        target: &Target,
    ) -> Result<Option<Downlink>, Failure> {
        let (client, channel) = self.admit(peer, who, target, Op::Subscribe)?;
        Ok(self
            .downlink
            .take(&client.id, &channel.id)
            .map(|cmd| Downlink {
                payload: cmd.payload.to_vec(),
                content_format: None,
            }))
    }

    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let identity = std::str::from_utf8(identity).ok()?;
        self.auth.psk_for_identity(identity)
    }

    fn psk_principal(&self, identity: &str) -> Option<Principal> {
        let key = self.auth.psk_for_identity(identity)?;
        let client = self.auth.authenticate(identity, &key).ok()?;
        Some(Principal {
            client_id: client.id,
            identity: client.identity,
            serial: None,
        })
    }

    fn certificate_principal(
        &self,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: &str,
    ) -> Result<Principal, Failure> {
        self.auth
            .authenticate_certificate(cn, serial_hex, fingerprint_sha256_hex)
            .map(|c| Principal {
                client_id: c.id,
                identity: c.identity,
                serial: Some(serial_hex.to_owned()),
            })
            .map_err(|e| auth_failure(&e))
    }

    fn still_valid(&self, principal: &Principal) -> bool {
        // The cached snapshot, not the audited entry points: this runs for every session.
        let snap = self.auth.snapshot();
        match &principal.serial {
            Some(serial) => snap
                .authenticate_certificate(
                    &principal.identity,
                    serial,
                    // Compared at the handshake; this re-check is for revocation and expiry.
                    None,
                    crate::auth::store::now_unix(),
                )
                .is_ok(),
            None => snap.psk_for_identity(&principal.identity).is_some(),
        }
    }

    fn ended_clients(&self) -> Option<mpsc::Receiver<String>> {
        let mut revocations = self.auth.revocations();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match revocations.recv().await {
                    Ok(rec) => {
                        if tx.send(rec.client_id).await.is_err() {
                            break;
                        }
                    }
                    // Missed some: the periodic sweep catches them.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Some(rx)
    }
}

fn ingest_failure(e: &IngestError) -> Failure {
    match e {
        IngestError::Busy { retry_after } => Failure::Busy {
            retry_after: *retry_after,
        },
        IngestError::TooLarge { .. } => Failure::TooLarge,
        IngestError::Closed => Failure::Busy {
            retry_after: Duration::from_secs(5),
        },
        IngestError::Storage(_) => Failure::Internal,
    }
}
