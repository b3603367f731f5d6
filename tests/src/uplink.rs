//! Helpers of the uplink tests: the gateway's configuration pointed at a test broker, an
//! in-process pipeline (the same composition `edgegw run` uses, without adapters), test
//! messages, and the delivery check (every message, order per channel, duplicates counted).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, SystemTime};

use gateway::config::{Config, Profile, Source};
use gateway::outbox::Message;
use gateway::pipeline::Pipeline;
use gateway::runtime::supervisor::{Shutdown, Signal, Supervisor};
use tokio::sync::mpsc;

use crate::mosquitto::Mosquitto;
use crate::pki::Pki;

/// The domain of the test messages; topics are `m/dom/c/ch<N>/t`.
pub const DOMAIN: &str = "dom";

/// `EDGEGW_*` settings for a gateway rooted at `root` that talks to `broker` with `pki`.
pub fn env(root: &Path, broker: &Mosquitto, pki: &Pki) -> Vec<(String, String)> {
    vec![
        (
            "EDGEGW_GATEWAY_STATE_DIR".into(),
            root.join("state").display().to_string(),
        ),
        (
            "EDGEGW_GATEWAY_RUNTIME_DIR".into(),
            root.join("run").display().to_string(),
        ),
        ("EDGEGW_UPLINK_URL".into(), broker.url()),
        (
            "EDGEGW_UPLINK_CLIENT_CERT".into(),
            pki.client.cert.display().to_string(),
        ),
        (
            "EDGEGW_UPLINK_CLIENT_KEY".into(),
            pki.client.key.display().to_string(),
        ),
        (
            "EDGEGW_UPLINK_CA_CERTS".into(),
            pki.ca.cert.display().to_string(),
        ),
        ("EDGEGW_UPLINK_CLIENT_ID".into(), "gw-test".into()),
        ("EDGEGW_UPLINK_RECONNECT_MAX".into(), "2s".into()),
        ("EDGEGW_UPLINK_STATUS_INTERVAL".into(), "2s".into()),
    ]
}

/// Loads the gateway configuration from `vars` only (no file), dev profile in `root`.
pub fn config(root: &Path, vars: &[(String, String)]) -> Config {
    gateway::config::load_from(
        &Source::None,
        Profile::Dev {
            root: root.to_owned(),
        },
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    )
    .expect("test configuration is valid")
}

/// A pipeline running in the current tokio runtime under a real supervisor.
#[derive(Debug)]
pub struct Gateway {
    pub pipeline: Pipeline,
    signals: mpsc::Sender<Signal>,
    run: tokio::task::JoinHandle<Shutdown>,
}

impl Gateway {
    /// Creates the directories and starts the pipeline (outbox, uplink, control socket).
    pub fn start(config: &Config) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        for dir in [&config.gateway.state_dir, &config.gateway.runtime_dir] {
            certs::files::ensure_private_dir(dir).expect("cannot create the gateway dirs");
        }
        let supervisor = Supervisor::new();
        let pipeline = gateway::pipeline::start(
            config,
            &supervisor,
            None,
            gateway::runtime::control::bind(&config.gateway.runtime_dir)
                .expect("control socket binds"),
            gateway::runtime::status::BoardStatus::default(),
            None,
        )
        .expect("pipeline starts");
        let (signals, rx) = mpsc::channel(4);
        let drain = config.gateway.drain_timeout.get();
        let run = tokio::spawn(supervisor.run(rx, drain));
        Self {
            pipeline,
            signals,
            run,
        }
    }

    /// SIGHUP as the supervisor sees it.
    pub async fn reload(&self) {
        self.signals
            .send(Signal::Reload)
            .await
            .expect("supervisor running");
    }

    /// SIGTERM: orderly shutdown; returns how it ended.
    pub async fn stop(self) -> Shutdown {
        self.signals
            .send(Signal::Terminate)
            .await
            .expect("supervisor running");
        self.run.await.expect("supervisor task")
    }

    /// Accepts `msg`, retrying while the outbox is busy; resolves once durable.
    pub async fn ingest(&self, msg: Message) -> u64 {
        loop {
            match self.pipeline.outbox.accept(msg.clone()) {
                Ok(receipt) => return receipt.await.expect("durable"),
                Err(gateway::outbox::IngestError::Busy { retry_after }) => {
                    tokio::time::sleep(retry_after.min(Duration::from_millis(100))).await;
                }
                Err(e) => panic!("accept failed: {e}"),
            }
        }
    }
}

/// Test message number `i` on channel `ch<i % channels>`; the payload is `i`.
pub fn message(i: u64, channels: u64) -> Message {
    Message {
        client_id: "sensor-1".into(),
        channel_id: format!("ch{}", i % channels),
        domain_id: DOMAIN.into(),
        subtopic: "t".into(),
        content_format: Some("text/plain".into()),
        payload: bytes::Bytes::from(i.to_string()),
        received_at: SystemTime::now(),
    }
}

/// What a subscriber saw, compared with what was expected.
#[derive(Debug, Default)]
pub struct Delivery {
    pub received: usize,
    pub duplicates: usize,
    pub missing: Vec<u64>,
    /// (channel, message) pairs that arrived first after a later message of the same channel.
    pub out_of_order: Vec<(String, u64)>,
}

/// Checks subscriber lines (`m/dom/c/<channel>/t <i>`) against the expected message numbers.
pub fn check_delivery(lines: &[String], expected: impl IntoIterator<Item = u64>) -> Delivery {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut d = Delivery::default();
    for line in lines {
        let Some((topic, payload)) = line.split_once(' ') else {
            continue;
        };
        let Some(channel) = topic
            .strip_prefix(&format!("m/{DOMAIN}/c/"))
            .and_then(|rest| rest.strip_suffix("/t"))
        else {
            continue;
        };
        let Ok(i) = payload.parse::<u64>() else {
            continue;
        };
        d.received += 1;
        let count = seen.entry(i).or_default();
        *count += 1;
        if *count > 1 {
            d.duplicates += 1;
            continue;
        }
        // First arrival of i: every earlier first arrival on this channel must be smaller.
        if let Some(&prev) = last.get(channel)
            && prev > i
        {
            d.out_of_order.push((channel.to_owned(), i));
        }
        last.insert(channel.to_owned(), i);
    }
    d.missing = expected
        .into_iter()
        .filter(|i| !seen.contains_key(i))
        .collect();
    d
}

/// Whether every expected message has arrived.
pub fn all_arrived(lines: &[String], expected: impl IntoIterator<Item = u64>) -> bool {
    check_delivery(lines, expected).missing.is_empty()
}
