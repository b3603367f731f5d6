//! The adapter's [`Backend`] on the real gateway: the auth store decides, the outbox stores,
//! the downlink hub delivers commands.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::codec::{Reason, Target};
use super::proto::Client;
use super::task::{Backend, Downlink, Durable};
use crate::auth::{AuthError, AuthStore, ClientRef, Op};
use crate::downlink::DownlinkHub;
use crate::outbox::{IngestError, Message, Outbox};

/// Commands queued per serial session before the hub keeps them as backlog.
const DOWNLINK_QUEUE: usize = 16;

#[derive(Debug, Clone)]
pub struct GatewayBackend {
    auth: AuthStore,
    outbox: Outbox,
    downlink: DownlinkHub,
}

impl GatewayBackend {
    pub fn new(auth: AuthStore, outbox: Outbox, downlink: DownlinkHub) -> Arc<Self> {
        Arc::new(Self {
            auth,
            outbox,
            downlink,
        })
    }
}

fn client_ref(client: &Client) -> ClientRef {
    ClientRef {
        id: client.id.clone(),
        identity: client.identity.clone(),
    }
}

fn from_ref(client: ClientRef) -> Client {
    Client {
        id: client.id,
        identity: client.identity,
    }
}

fn ingest_reason(e: &IngestError) -> Reason {
    match e {
        IngestError::Busy { .. } => Reason::Busy,
        IngestError::TooLarge { .. } => Reason::TooLarge,
        IngestError::Closed | IngestError::Storage(_) => Reason::Unavailable,
    }
}

fn auth_reason(e: &AuthError) -> Reason {
    if e.is_forbidden() {
        Reason::NotConnected
    } else if e.is_unauthenticated() {
        // Disabled or removed since its AUTH.
        Reason::NotAuthenticated
    } else {
        Reason::Unavailable
    }
}

impl Backend for GatewayBackend {
    fn authenticate(&self, identity: &str, secret: &[u8]) -> Result<Client, Reason> {
        if self.auth.throttle_check(None, Some(identity)).is_err() {
            return Err(Reason::Throttled);
        }
        match self.auth.authenticate(identity, secret) {
            Ok(client) => Ok(from_ref(client)),
            // Unknown identity, wrong secret, disabled: the same word on the wire.
            Err(e) if e.is_unauthenticated() => Err(Reason::Auth),
            Err(_) => Err(Reason::Unavailable),
        }
    }

    fn bound_client(&self, identity: &str) -> Result<Client, Reason> {
        // A bound port trusts the line itself: look the client up (enabled, present) without
        // charging the throttle or the audit log for a secret nobody sent.
        let secret = self.auth.psk_for_identity(identity).ok_or(Reason::Auth)?;
        self.auth
            .snapshot()
            .authenticate(identity, &secret)
            .map(from_ref)
            .map_err(|_| Reason::Auth)
    }

    fn publish(
        &self,
        client: &Client,
        target: &Target,
        payload: Vec<u8>,
    ) -> Result<Durable, Reason> {
        let channel = self
            .auth
            .authorize(&client_ref(client), &target.channel, Op::Publish)
            .map_err(|e| auth_reason(&e))?;
        let subtopic =
            crate::topic::validate_subtopic(&target.subtopic).map_err(|_| Reason::BadRequest)?;
        let receipt = self
            .outbox
            .accept(Message {
                client_id: client.id.clone(),
                channel_id: channel.id,
                domain_id: channel.domain_id,
                subtopic,
                content_format: None,
                payload: payload.into(),
                received_at: SystemTime::now(),
            })
            .map_err(|e| ingest_reason(&e))?;
        Ok(Box::pin(async move {
            receipt.await.map_err(|e| ingest_reason(&e))
        }))
    }

    fn downlink(&self, client: &Client) -> Option<mpsc::Receiver<Downlink>> {
        let who = client_ref(client);
        let channels: Vec<_> = self
            .auth
            .subscribed_channels()
            .borrow()
            .iter()
            .filter(|ch| self.auth.authorize(&who, &ch.id, Op::Subscribe).is_ok())
            .cloned()
            .collect();
        if channels.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(DOWNLINK_QUEUE);
        for channel in channels {
            let mut sub = self.downlink.subscribe(&client.id, &channel.id);
            let tx = tx.clone();
            // The sensor knows the channel by the name it publishes to.
            let shown = if channel.name.is_empty() {
                channel.id.clone()
            } else {
                channel.name.clone()
            };
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        // The session ended: drop the subscription so the hub keeps later
                        // commands for the next one.
                        () = tx.closed() => break,
                        cmd = sub.recv() => {
                            let Some(cmd) = cmd else { break };
                            let down = Downlink {
                                target: Target { channel: shown.clone(), subtopic: cmd.subtopic },
                                payload: cmd.payload.to_vec(),
                            };
                            if tx.send(down).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        Some(rx)
    }
}
