//! A real gateway behind the intake for tests: auth store and outbox on SQLite in a temporary
//! directory, with the clients every refusal needs.

use std::sync::Arc;

use crate::auth::AuthStore;
use crate::auth::store::Db;
use crate::config::{AuthConfig, OutboxConfig};
use crate::downlink::{DownlinkHub, DownlinkLimits};
use crate::outbox::{Outbox, OutboxWorker};

use super::Intake;

/// `sensor-1` may publish and subscribe on `temps` (domain `dom`); `sensor-off` is connected
/// but disabled; `sensor-lonely` is connected to nothing.
pub const SECRET: &str = "sensor-1-secret-0123456789";
pub const OFF_SECRET: &str = "sensor-off-secret-0123456789";
pub const LONELY_SECRET: &str = "sensor-lonely-secret-0123456789";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub auth: AuthStore,
    pub outbox: Outbox,
    worker: Option<OutboxWorker>,
    #[allow(dead_code)]
    pub hub: DownlinkHub,
    pub intake: Intake,
    /// `temps`'s id.
    pub channel_id: String,
    pub sensor_id: String,
}

/// Which outbox the fixture gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Open,
    /// `full_policy = reject` with room for nothing: every message is refused as busy.
    Full,
    /// Closed (the gateway is shutting down).
    Closed,
}

impl Fixture {
    pub fn new(state: OutboxState) -> Self {
        Self::with_auth(state, &AuthConfig::default())
    }

    pub fn with_auth(state: OutboxState, auth_config: &AuthConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.db");
        let (channel_id, sensor_id) = {
            let mut db = Db::open(&path).expect("auth.db");
            let channel = db.add_channel("temps", "dom", None).expect("channel");
            let sensor = db
                .add_client("sensor-1", None, Some(SECRET), None)
                .expect("sensor-1");
            db.connect("sensor-1", "temps", true, true)
                .expect("connect");
            db.add_client("sensor-off", None, Some(OFF_SECRET), None)
                .expect("sensor-off");
            db.connect("sensor-off", "temps", true, true)
                .expect("connect");
            db.set_client_enabled("sensor-off", false).expect("disable");
            db.add_client("sensor-lonely", None, Some(LONELY_SECRET), None)
                .expect("sensor-lonely");
            (channel.id, sensor.id)
        };
        let auth = AuthStore::open(&path, auth_config).expect("auth store");
        let mut outbox_config = OutboxConfig::default();
        if state == OutboxState::Full {
            outbox_config.max_bytes = crate::config::value::ByteSize(1);
            outbox_config.full_policy = crate::config::FullPolicy::Reject;
        }
        let (outbox, worker) =
            Outbox::open(&dir.path().join("outbox.db"), &outbox_config).expect("outbox");
        if state == OutboxState::Closed {
            outbox.close();
        }
        let recipients = auth.clone();
        let hub = DownlinkHub::with_recipients(
            DownlinkLimits::default(),
            Arc::new(move |ch: &str| recipients.snapshot().subscribers(ch)),
        );
        let intake = Intake::new(auth.clone(), outbox.clone(), hub.clone());
        Self {
            dir,
            auth,
            outbox,
            worker: Some(worker),
            hub,
            intake,
            channel_id,
            sensor_id,
        }
    }

    /// Changes the store through another connection (as the CLI or the API do) and waits
    /// until this process's snapshot has it.
    pub fn change(&self, f: impl FnOnce(&mut Db)) {
        let mut db = Db::open(&self.dir.path().join("auth.db")).expect("auth.db");
        f(&mut db);
        self.auth.reload_now().expect("reload");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.outbox.close();
        if let Some(w) = self.worker.take() {
            w.join();
        }
    }
}
