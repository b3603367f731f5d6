use super::*;
use crate::adapters::serial::status::SerialStatus;
use hal::serial::FakeDevice;
use std::sync::Mutex;

#[derive(Default)]
struct FakeBackend {
    published: Mutex<Vec<(String, Target, Vec<u8>)>>,
    busy: std::sync::atomic::AtomicBool,
}

impl Backend for FakeBackend {
    fn authenticate(&self, identity: &str, secret: &[u8]) -> Result<Client, Refusal> {
        (identity == "sensor-1" && secret == b"right-secret")
            .then(|| Client {
                id: "id-1".into(),
                identity: identity.into(),
            })
            .ok_or(Refusal::Unauthenticated)
    }
    fn bound_client(&self, identity: &str) -> Result<Client, Refusal> {
        Ok(Client {
            id: format!("id-{identity}"),
            identity: identity.into(),
        })
    }
    fn publish(
        &self,
        client: &Client,
        target: &Target,
        payload: Vec<u8>,
    ) -> Result<Durable, Refusal> {
        if target.channel != "temp" {
            return Err(Refusal::Forbidden);
        }
        if self.busy.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refusal::Busy {
                retry_after: Duration::from_secs(1),
            });
        }
        let mut list = self.published.lock().unwrap();
        list.push((client.identity.clone(), target.clone(), payload));
        let seq = list.len() as u64;
        Ok(Box::pin(async move { Ok(seq) }))
    }
    fn downlink(&self, _client: &Client) -> Vec<DownlinkStream> {
        Vec::new()
    }
}

fn config() -> AdapterConfig {
    AdapterConfig {
        max_line: 128,
        max_pending: 8,
        reopen_min: Duration::from_millis(10),
        reopen_max: Duration::from_millis(40),
    }
}

fn spec(path: &str, client: Option<&str>) -> PortSpec {
    let mut settings = SerialSettings::new(9600).unwrap();
    settings.timeout = Duration::from_millis(20);
    PortSpec {
        path: path.into(),
        settings,
        client: client.map(str::to_owned),
    }
}

const WAIT: Duration = Duration::from_secs(5);

async fn line(dev: &FakeDevice) -> String {
    let dev = dev.clone();
    tokio::task::spawn_blocking(move || dev.wait_line(WAIT))
        .await
        .unwrap()
        .expect("no answer from the adapter")
}

async fn opened(dev: &FakeDevice, n: usize) {
    let dev = dev.clone();
    assert!(
        tokio::task::spawn_blocking(move || dev.wait_opens(n, WAIT))
            .await
            .unwrap(),
        "port not opened {n} times"
    );
}

#[tokio::test]
async fn auth_pub_and_errors_over_a_fake_port_then_unplug_and_recover() {
    let dev = FakeDevice::new("/dev/ttyFAKE0");
    let backend = Arc::new(FakeBackend::default());
    let cancel = CancellationToken::new();
    let status = SerialStatus::default();
    let task = spawn_port(
        spec("/dev/ttyFAKE0", None),
        config(),
        Arc::new(dev.opener()),
        backend.clone(),
        status.register("/dev/ttyFAKE0"),
        cancel.clone(),
    );
    opened(&dev, 1).await;
    dev.send(b"PUB temp 1\n");
    assert_eq!(line(&dev).await, "ERR not-authenticated");
    dev.send(b"AUTH sensor-1 wrong-secret\nAUTH sensor-1 right-secret\nPUB temp/x 21.5\nPUB hum 3\nNOPE\n");
    assert_eq!(line(&dev).await, "ERR auth");
    assert_eq!(line(&dev).await, "OK");
    assert_eq!(line(&dev).await, "OK 1");
    assert_eq!(line(&dev).await, "ERR not-connected");
    assert_eq!(line(&dev).await, "ERR unknown-command");
    backend
        .busy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    dev.send(b"PUB temp 2\n");
    assert_eq!(line(&dev).await, "ERR busy");
    backend
        .busy
        .store(false, std::sync::atomic::Ordering::SeqCst);

    dev.unplug();
    dev.plug();
    opened(&dev, 2).await;
    // A new connection: authentication starts over.
    dev.send(b"PUB temp 3\nAUTH sensor-1 right-secret\nPUB temp 4\n");
    assert_eq!(line(&dev).await, "ERR not-authenticated");
    assert_eq!(line(&dev).await, "OK");
    assert_eq!(line(&dev).await, "OK 2");
    let published = backend.published.lock().unwrap().clone();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].1.subtopic, "x");
    assert_eq!(published[0].2, b"21.5");
    assert_eq!(published[1].2, b"4");
    let port = &status.snapshot()[0];
    assert_eq!(
        (port.state, port.opens, port.published),
        ("open", 2, 2),
        "{port:?}"
    );
    assert_eq!(port.client.as_deref(), Some("sensor-1"));
    assert_eq!(port.errors, 6, "{port:?}");
    assert!(port.last_close.is_some());
    cancel.cancel();
    task.await.unwrap();
}

/// Publishes become durable only when the test says so.
struct GatedBackend {
    published: tokio::sync::Notify,
    release: Arc<tokio::sync::Semaphore>,
}

impl Backend for GatedBackend {
    fn authenticate(&self, _: &str, _: &[u8]) -> Result<Client, Refusal> {
        Err(Refusal::Unauthenticated)
    }
    fn bound_client(&self, identity: &str) -> Result<Client, Refusal> {
        Ok(Client {
            id: identity.into(),
            identity: identity.into(),
        })
    }
    fn publish(&self, _: &Client, _: &Target, _: Vec<u8>) -> Result<Durable, Refusal> {
        self.published.notify_one();
        let release = Arc::clone(&self.release);
        Ok(Box::pin(async move {
            let _permit = release.acquire().await.map_err(|_| Refusal::Unavailable {
                retry_after: Duration::from_secs(1),
            })?;
            Ok(7)
        }))
    }
    fn downlink(&self, _: &Client) -> Vec<DownlinkStream> {
        Vec::new()
    }
}

#[tokio::test]
async fn at_shutdown_pending_pubs_are_still_answered() {
    let dev = FakeDevice::new("/dev/ttyGATED");
    let backend = Arc::new(GatedBackend {
        published: tokio::sync::Notify::new(),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    });
    let cancel = CancellationToken::new();
    let task = spawn_port(
        spec("/dev/ttyGATED", Some("bound")),
        config(),
        Arc::new(dev.opener()),
        backend.clone(),
        SerialStatus::default().register("/dev/ttyGATED"),
        cancel.clone(),
    );
    dev.send(b"PUB temp 1\n");
    backend.published.notified().await;
    // Intake stops while the message is not yet durable ...
    cancel.cancel();
    // ... then it becomes durable: the sensor still hears about it.
    backend.release.add_permits(1);
    assert_eq!(line(&dev).await, "OK 7");
    task.await.unwrap();
}

#[tokio::test]
async fn a_missing_port_does_not_affect_another_and_is_opened_when_it_appears() {
    let good = FakeDevice::new("/dev/ttyGOOD");
    let late = FakeDevice::new("/dev/ttyLATE");
    late.unplug();
    let opener: Arc<dyn SerialOpener> = Arc::new(good.opener().with(&late));
    let backend = Arc::new(FakeBackend::default());
    let cancel = CancellationToken::new();
    let status = SerialStatus::default();
    let a = spawn_port(
        spec("/dev/ttyLATE", Some("bound-1")),
        config(),
        opener.clone(),
        backend.clone(),
        status.register("/dev/ttyLATE"),
        cancel.clone(),
    );
    let b = spawn_port(
        spec("/dev/ttyGOOD", Some("bound-2")),
        config(),
        opener,
        backend.clone(),
        status.register("/dev/ttyGOOD"),
        cancel.clone(),
    );
    opened(&good, 1).await;
    // Bound port: no AUTH needed.
    good.send(b"PUB temp hello\n");
    assert_eq!(line(&good).await, "OK 1");
    let ports = status.snapshot();
    assert_eq!(ports[0].state, "waiting", "{ports:?}");
    assert_eq!(ports[1].client.as_deref(), Some("bound-2"));
    late.plug();
    opened(&late, 1).await;
    late.send(b"PUB temp late\n");
    assert_eq!(line(&late).await, "OK 2");
    let published = backend.published.lock().unwrap().clone();
    assert_eq!(published[0].0, "bound-2");
    assert_eq!(published[1].0, "bound-1");
    cancel.cancel();
    a.await.unwrap();
    b.await.unwrap();
}
