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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthConfig, OutboxConfig};
    use crate::downlink::{Command, DownlinkLimits};
    use crate::serial::task::{AdapterConfig, PortSpec, spawn_port};
    use hal::serial::{FakeDevice, SerialSettings};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    const WAIT: Duration = Duration::from_secs(10);

    async fn line(dev: &FakeDevice, step: &str) -> String {
        let dev = dev.clone();
        let waited = dev.clone();
        tokio::task::spawn_blocking(move || waited.wait_line(WAIT))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{step}: no answer from the adapter on {dev:?}"))
    }

    /// The real auth store, outbox and downlink hub behind a fake port: AUTH, PUB into the
    /// outbox, downlink commands as CMD lines, and a port bound to a client.
    #[test]
    fn repeated_wrong_secrets_are_throttled_and_look_like_any_other_failure() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig {
            failure_burst: 2,
            ..AuthConfig::default()
        };
        let auth = AuthStore::open(&dir.path().join("auth.db"), &config).unwrap();
        let secret = auth.ensure_demo("").unwrap().expect("demo created");
        let (outbox, worker) =
            Outbox::open(&dir.path().join("outbox.db"), &OutboxConfig::default()).unwrap();
        let backend = GatewayBackend::new(auth, outbox.clone(), DownlinkHub::default());
        assert_eq!(
            backend.authenticate("nobody", b"x").err(),
            Some(Reason::Auth)
        );
        assert_eq!(
            backend.authenticate("demo-sensor", b"wrong").err(),
            Some(Reason::Auth)
        );
        assert_eq!(
            backend.authenticate("demo-sensor", b"wrong").err(),
            Some(Reason::Auth)
        );
        // Budget used up: even the right secret waits.
        assert_eq!(
            backend.authenticate("demo-sensor", secret.as_bytes()).err(),
            Some(Reason::Throttled)
        );
        // Other identities are not affected.
        assert_eq!(
            backend.authenticate("someone-else", b"x").err(),
            Some(Reason::Auth)
        );
        outbox.close();
        worker.join();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_store_outbox_and_downlink_behind_a_fake_port() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthStore::open(&dir.path().join("auth.db"), &AuthConfig::default()).unwrap();
        let secret = auth.ensure_demo("dom-1").unwrap().expect("demo created");
        let (outbox, worker) =
            Outbox::open(&dir.path().join("outbox.db"), &OutboxConfig::default()).unwrap();
        let hub = DownlinkHub::new(DownlinkLimits::default());
        let backend = GatewayBackend::new(auth.clone(), outbox.clone(), hub.clone());

        let dev = FakeDevice::new("/dev/ttyFAKE");
        let bound = FakeDevice::new("/dev/ttyBOUND");
        let opener = Arc::new(dev.opener().with(&bound));
        let mut settings = SerialSettings::new(9600).unwrap();
        settings.timeout = Duration::from_millis(20);
        let config = AdapterConfig {
            max_line: 256,
            max_pending: 8,
            reopen_min: Duration::from_millis(10),
            reopen_max: Duration::from_millis(50),
        };
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        for (path, client) in [
            ("/dev/ttyFAKE", None),
            ("/dev/ttyBOUND", Some("demo-sensor")),
        ] {
            tasks.push(spawn_port(
                PortSpec {
                    path: path.into(),
                    settings,
                    client: client.map(str::to_owned),
                },
                config.clone(),
                opener.clone(),
                backend.clone(),
                crate::serial::SerialStatus::default().register(path),
                cancel.clone(),
            ));
        }

        // The bound port first: once it answered, its session (and its downlink subscription)
        // exists, so the AUTH below is the client's most recent session.
        bound.send(b"PUB demo from-bound-port\n");
        let bound_seq: u64 = line(&bound, "bound PUB")
            .await
            .strip_prefix("OK ")
            .and_then(|s| s.parse().ok())
            .expect("OK <seq>");
        dev.send(format!("AUTH demo-sensor {secret}\n").as_bytes());
        assert_eq!(line(&dev, "AUTH").await, "OK");
        dev.send(b"PUB demo/room.1 21.5\n");
        let seq: u64 = line(&dev, "PUB")
            .await
            .strip_prefix("OK ")
            .and_then(|s| s.parse().ok())
            .expect("OK <seq>");
        dev.send(b"PUB demo/bad+level 1\n");
        assert_eq!(line(&dev, "bad PUB").await, "ERR bad-request");
        assert!(seq > bound_seq);

        let reader = outbox.clone();
        let entries = tokio::task::spawn_blocking(move || reader.fetch_after(0, 10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(&entries[0].message.payload[..], b"from-bound-port");
        assert_eq!(entries[1].seq, seq);
        assert_eq!(entries[1].message.subtopic, "room/1");
        assert_eq!(entries[1].message.domain_id, "dom-1");
        assert_eq!(&entries[1].message.payload[..], b"21.5");

        // Downlink: the demo channel has a subscribe connection. The hub keeps one live
        // subscription per (client, channel): the most recent session (the AUTH on ttyFAKE)
        // gets the command.
        let channel = auth
            .subscribed_channels()
            .borrow()
            .first()
            .cloned()
            .unwrap();
        let delivered = hub.deliver(&Command {
            domain_id: "dom-1".into(),
            channel_id: channel.id.clone(),
            subtopic: "cmd".into(),
            payload: bytes::Bytes::from_static(b"reboot"),
            received_at: SystemTime::now(),
        });
        assert_eq!(delivered, 1);
        assert_eq!(line(&dev, "CMD").await, "CMD demo/cmd reboot");

        cancel.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        outbox.close();
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .unwrap();
    }
}
