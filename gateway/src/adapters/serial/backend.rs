//! The adapter's [`Backend`] on the real gateway: [`Intake`] decides, stores and hands out
//! downlink commands; this file only translates the serial session's types.

use std::sync::Arc;

use super::codec::Target;
use super::proto::{Client, Refusal};
use super::task::{Backend, DownlinkStream, Durable};
use crate::auth::{ClientRef, Op};
use crate::intake::{self, Credentials, Intake};

#[derive(Debug, Clone)]
pub struct GatewayBackend {
    intake: Intake,
}

impl GatewayBackend {
    pub fn new(intake: Intake) -> Arc<Self> {
        Arc::new(Self { intake })
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

impl Backend for GatewayBackend {
    fn authenticate(&self, identity: &str, secret: &[u8]) -> Result<Client, Refusal> {
        // A serial line has no address: only the identity is throttled.
        self.intake
            .authenticate(None, Credentials::IdentitySecret { identity, secret })
            .map(from_ref)
    }

    fn bound_client(&self, identity: &str) -> Result<Client, Refusal> {
        self.intake
            .authenticate(None, Credentials::Bound(identity))
            .map(from_ref)
    }

    fn publish(
        &self,
        client: &Client,
        target: &Target,
        payload: Vec<u8>,
    ) -> Result<Durable, Refusal> {
        let who = client_ref(client);
        let target = intake::Target {
            domain: None,
            channel: target.channel.clone(),
            subtopic: target.subtopic.clone(),
        };
        let admitted = self
            .intake
            .admit(None, Credentials::Session(&who), &target, Op::Publish)?;
        let durable = self.intake.publish(admitted, payload.into(), None)?;
        Ok(Box::pin(durable))
    }

    fn downlink(&self, client: &Client) -> Vec<DownlinkStream> {
        self.intake
            .subscribable(&client_ref(client))
            .into_iter()
            .map(|admitted| DownlinkStream {
                // The sensor knows the channel by the name it publishes to.
                shown: if admitted.channel.name.is_empty() {
                    admitted.channel.id.clone()
                } else {
                    admitted.channel.name.clone()
                },
                commands: self.intake.subscribe(&admitted),
                admitted,
            })
            .collect()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        Some(self.intake.changes())
    }

    fn still_subscribed(&self, stream: &DownlinkStream) -> bool {
        self.intake.still_subscribed(&stream.admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::serial::task::{AdapterConfig, PortSpec, spawn_port};
    use crate::auth::AuthStore;
    use crate::config::{AuthConfig, OutboxConfig};
    use crate::downlink::{Command, DownlinkHub, DownlinkLimits};
    use crate::outbox::Outbox;
    use hal::serial::{FakeDevice, SerialSettings};
    use std::time::Duration;
    use std::time::SystemTime;
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
        let backend =
            GatewayBackend::new(Intake::new(auth, outbox.clone(), DownlinkHub::default()));
        assert_eq!(
            backend.authenticate("nobody", b"x").err(),
            Some(Refusal::Unauthenticated)
        );
        assert_eq!(
            backend.authenticate("demo-sensor", b"wrong").err(),
            Some(Refusal::Unauthenticated)
        );
        assert_eq!(
            backend.authenticate("demo-sensor", b"wrong").err(),
            Some(Refusal::Unauthenticated)
        );
        // Budget used up: even the right secret waits.
        assert!(matches!(
            backend.authenticate("demo-sensor", secret.as_bytes()).err(),
            Some(Refusal::Throttled { .. })
        ));
        // Other identities are not affected.
        assert_eq!(
            backend.authenticate("someone-else", b"x").err(),
            Some(Refusal::Unauthenticated)
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
        let backend = GatewayBackend::new(Intake::new(auth.clone(), outbox.clone(), hub.clone()));

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
                crate::adapters::serial::SerialStatus::default().register(path),
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

    /// Disabled client, not connected, outbox full, shutdown: each answered as README
    /// "Refusals" says and counted once in the metrics (adapter `serial`), under its kind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_refusal_has_its_documented_word_and_is_counted_once() {
        use crate::intake::testkit::{Fixture, LONELY_SECRET, OFF_SECRET, OutboxState, SECRET};
        use crate::runtime::metrics::{Metrics, Refusal as Kind};
        let cases = [
            (
                OutboxState::Open,
                "sensor-off",
                OFF_SECRET,
                "ERR auth",
                Kind::Unauthenticated,
            ),
            (
                OutboxState::Open,
                "sensor-lonely",
                LONELY_SECRET,
                "ERR not-connected",
                Kind::Forbidden,
            ),
            (
                OutboxState::Full,
                "sensor-1",
                SECRET,
                "ERR busy",
                Kind::Busy,
            ),
            (
                OutboxState::Closed,
                "sensor-1",
                SECRET,
                "ERR unavailable",
                Kind::Unavailable,
            ),
        ];
        for (outbox, identity, secret, expected, kind) in cases {
            let f = Fixture::new(outbox);
            let metrics = Metrics::new();
            let status = crate::adapters::serial::SerialStatus::with_metrics(metrics.clone());
            let dev = FakeDevice::new("/dev/ttyMAP");
            let mut settings = SerialSettings::new(9600).unwrap();
            settings.timeout = Duration::from_millis(20);
            let cancel = CancellationToken::new();
            let task = spawn_port(
                PortSpec {
                    path: "/dev/ttyMAP".into(),
                    settings,
                    client: None,
                },
                AdapterConfig {
                    max_line: 256,
                    max_pending: 8,
                    reopen_min: Duration::from_millis(10),
                    reopen_max: Duration::from_millis(50),
                },
                Arc::new(dev.opener()),
                GatewayBackend::new(f.intake.clone()),
                status.register("/dev/ttyMAP"),
                cancel.clone(),
            );
            dev.send(format!("AUTH {identity} {secret}\n").as_bytes());
            let auth = line(&dev, "AUTH").await;
            let answer = if auth == "OK" {
                dev.send(b"PUB temps 21.5\n");
                line(&dev, "PUB").await
            } else {
                auth
            };
            assert_eq!(answer, expected, "{kind:?}");
            cancel.cancel();
            task.await.unwrap();
            let snap = metrics.snapshot();
            let serial = &snap.adapters["serial"];
            assert_eq!(serial.refused[kind.label()], 1, "{kind:?}: {serial:?}");
            assert_eq!(serial.refused_total, 1, "{kind:?}: counted once");
            assert_eq!(serial.messages_in, 0);
        }
        // A storage failure is the shutdown answer.
        let storage =
            crate::intake::ingest_refusal(&crate::outbox::IngestError::storage_for_tests());
        assert_eq!(
            crate::adapters::serial::proto::wire_reason(
                &storage,
                crate::adapters::serial::proto::Answering::Pub
            ),
            crate::adapters::serial::codec::Reason::Unavailable
        );
    }
}
