//! A thin layer over rumqttc that hides the MQTT 3.1.1 / 5 split from the uplink task: one
//! client handle, one event loop, and the few events the uplink cares about.
//!
//! TLS is ours, not rumqttc's: rumqttc 0.25 owns the stream it opens and drops it without a
//! TLS close_notify (issue 21.3), and offers no hook to shut it down. So rumqttc talks plain
//! MQTT over a Unix socket in a private (0700) directory (under `gateway.runtime_dir`, else
//! the temporary directory) to [`close_notify::Bridge`], which holds the TCP + TLS connection
//! to the broker (built from the one uplink rustls config) and, when rumqttc's side closes
//! after DISCONNECT, ends TLS with close_notify before the FIN.
//!
//! rumqttc 0.25 accepts no stream of ours (its `Network` is not constructible outside the
//! crate; its transports are TCP, its own TLS, a Unix socket path, WebSockets), so the hop
//! cannot be an in-process duplex. It does not cost throughput: rumqttc flushes once per
//! publish, and the bridge reads what queued up meanwhile in one go and writes it as one TLS
//! record, where rumqttc's own TLS writes a record and a syscall per publish; with the bridge
//! the gateway used ~20 % less CPU per message (docs/benchmarks.md, Hot path).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{Outgoing, TlsConfiguration, Transport};

use crate::config::MqttVersion;

/// What the uplink needs to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    /// `None`: plain TCP (only with `uplink.insecure`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    pub keep_alive: Duration,
    pub version: MqttVersion,
    pub inflight: u16,
    pub username: Option<String>,
    pub password: String,
    /// Last will: retained `offline` on this topic (none: no last will).
    pub will_topic: Option<String>,
    pub connect_timeout: Duration,
    pub max_packet: usize,
    /// Zero: clean session. Otherwise the broker keeps the session (subscriptions, queued
    /// QoS 1 commands) this long after a disconnect (MQTT 5; 3.1.1 brokers decide themselves).
    pub session_expiry: Duration,
    /// Where the TLS bridge's socket directory goes (`gateway.runtime_dir`); `None` or
    /// unusable: the temporary directory.
    pub socket_dir: Option<std::path::PathBuf>,
}

/// Events of the connection that the uplink acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ConnAck,
    /// A QoS 1 publish was written with this packet id (in request order).
    Sent(u16),
    PubAck {
        pkid: u16,
        ok: bool,
        reason: String,
    },
    Publish {
        topic: String,
        payload: Bytes,
    },
    /// SUBACK of one filter (the uplink subscribes one at a time).
    SubAck {
        ok: bool,
        reason: String,
    },
    /// Our DISCONNECT was written.
    Disconnected,
    Other,
}

#[derive(Debug)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub struct EventLoop {
    inner: Inner,
    /// The TLS side of the connection (`None`: plain TCP, or the bridge could not be set up
    /// and rumqttc does TLS itself).
    bridge: Option<close_notify::Bridge>,
}

enum Inner {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// The request queue between the client handle and the event loop: room for a full window
/// plus status and subscription requests.
fn request_capacity(inflight: u16) -> usize {
    usize::from(inflight) + 64
}

pub fn connect(p: &ConnectParams) -> (Client, EventLoop) {
    let bridge = p.tls.as_ref().and_then(|config| {
        close_notify::Bridge::start(&p.host, p.port, config.clone(), p.socket_dir.as_deref())
            .map_err(|e| {
                tracing::warn!(
                    "uplink: cannot set up the TLS bridge ({e}); TLS ends without close_notify"
                );
            })
            .ok()
    });
    let (transport, addr) = match (&p.tls, &bridge) {
        (_, Some(b)) => (Transport::Unix, b.path().display().to_string()),
        (Some(config), None) => (
            Transport::Tls(TlsConfiguration::Rustls(config.clone())),
            p.host.clone(),
        ),
        (None, None) => (Transport::Tcp, p.host.clone()),
    };
    let (client, inner) = connect_inner(p, transport, &addr);
    (client, EventLoop { inner, bridge })
}

fn connect_inner(p: &ConnectParams, transport: Transport, addr: &str) -> (Client, Inner) {
    let secs = p.connect_timeout.as_secs().max(1);
    match p.version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&p.client_id, addr, p.port);
            o.set_transport(transport)
                .set_keep_alive(p.keep_alive)
                .set_clean_session(p.session_expiry.is_zero())
                .set_inflight(p.inflight.saturating_add(8))
                .set_max_packet_size(p.max_packet, p.max_packet);
            if let Some(will) = &p.will_topic {
                o.set_last_will(rumqttc::LastWill::new(
                    will,
                    "offline",
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            }
            if let Some(user) = &p.username {
                o.set_credentials(user, &p.password);
            }
            let (c, mut l) = rumqttc::AsyncClient::new(o, request_capacity(p.inflight));
            l.network_options.set_connection_timeout(secs);
            (Client::V4(c), Inner::V4(Box::new(l)))
        }
        MqttVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&p.client_id, addr, p.port);
            o.set_transport(transport)
                .set_keep_alive(p.keep_alive)
                .set_clean_start(p.session_expiry.is_zero())
                .set_outgoing_inflight_upper_limit(p.inflight.saturating_add(8))
                .set_max_packet_size(Some(u32::try_from(p.max_packet).unwrap_or(u32::MAX)));
            if let Some(will) = &p.will_topic {
                o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    will,
                    "offline",
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            o.set_connection_timeout(secs);
            if !p.session_expiry.is_zero() {
                o.set_session_expiry_interval(Some(
                    u32::try_from(p.session_expiry.as_secs()).unwrap_or(u32::MAX),
                ));
            }
            if let Some(user) = &p.username {
                o.set_credentials(user, &p.password);
            }
            let (c, l) = rumqttc::v5::AsyncClient::new(o, request_capacity(p.inflight));
            (Client::V5(c), Inner::V5(Box::new(l)))
        }
    }
}

/// The MQTT 5 user property that names the sensor (its local client id) on every message, so
/// the sensor stays visible upstream although one connection publishes for all.
pub const SENSOR_PROPERTY: &str = "edgegw-client";

/// The request queue is full (cannot happen while the window is respected).
#[derive(Debug, thiserror::Error)]
#[error("MQTT request queue full or closed")]
pub struct QueueFull;

impl Client {
    /// QoS 1 publish of the uplink's own messages (status, statistics).
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
        content_type: Option<&str>,
    ) -> Result<(), QueueFull> {
        self.publish_for(topic.to_owned(), payload, retain, content_type, None)
    }

    /// QoS 1 publish. `content_type` goes into the MQTT 5 property of that name, `sensor`
    /// (the local client id of the sensor that sent it) into the MQTT 5 user property
    /// [`SENSOR_PROPERTY`]; MQTT 3.1.1 has nowhere to put either. The topic is taken by
    /// value: rumqttc wants an owned `String` and would copy a borrowed one.
    pub fn publish_for(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
        content_type: Option<&str>,
        sensor: Option<&str>,
    ) -> Result<(), QueueFull> {
        match self {
            Self::V4(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
                .map_err(|_| QueueFull),
            Self::V5(c) => {
                let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
                if content_type.is_none() && sensor.is_none() {
                    return c
                        .try_publish(topic, qos, retain, payload)
                        .map_err(|_| QueueFull);
                }
                c.try_publish_with_properties(
                    topic,
                    qos,
                    retain,
                    payload,
                    rumqttc::v5::mqttbytes::v5::PublishProperties {
                        content_type: content_type.map(str::to_owned),
                        user_properties: sensor
                            .map(|s| vec![(SENSOR_PROPERTY.to_owned(), s.to_owned())])
                            .unwrap_or_default(),
                        ..Default::default()
                    },
                )
                .map_err(|_| QueueFull)
            }
        }
    }

    pub fn subscribe(&self, filter: &str) -> Result<(), QueueFull> {
        match self {
            Self::V4(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|_| QueueFull),
            Self::V5(c) => c
                .try_subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|_| QueueFull),
        }
    }

    pub fn unsubscribe(&self, filter: &str) -> Result<(), QueueFull> {
        match self {
            Self::V4(c) => c.try_unsubscribe(filter).map_err(|_| QueueFull),
            Self::V5(c) => c.try_unsubscribe(filter).map_err(|_| QueueFull),
        }
    }

    pub fn disconnect(&self) -> Result<(), QueueFull> {
        match self {
            Self::V4(c) => c.try_disconnect().map_err(|_| QueueFull),
            Self::V5(c) => c.try_disconnect().map_err(|_| QueueFull),
        }
    }
}

/// A failed connection, with a hint for the operator when the cause is recognisable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}{hint}")]
pub struct ConnectionFailed {
    pub message: String,
    pub hint: &'static str,
}

impl ConnectionFailed {
    fn new(message: String) -> Self {
        let lower = message.to_ascii_lowercase();
        let hint = if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            " (the broker's certificate does not match the host name in uplink.url)"
        } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            " (the broker's certificate is not signed by a CA in uplink.ca_certs)"
        } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
            " (the broker requires a client certificate: set uplink.client_cert and uplink.client_key)"
        } else if lower.contains("unknownca")
            || lower.contains("unknown ca")
            || lower.contains("badcertificate")
            || lower.contains("bad certificate")
            || lower.contains("decrypterror")
        {
            " (the broker refused our client certificate: is it signed by a CA the broker trusts?)"
        } else if lower.contains("connection refused") && !lower.contains("return code") {
            " (nothing listens at uplink.url)"
        } else if lower.contains("return code") {
            " (the broker refused the MQTT session: check uplink.username/password and client id)"
        } else {
            ""
        };
        Self { message, hint }
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::V4(_) => "EventLoop(MQTT 3.1.1)",
            Inner::V5(_) => "EventLoop(MQTT 5)",
        })
    }
}

impl EventLoop {
    pub async fn poll(&mut self) -> Result<Event, ConnectionFailed> {
        let r = self.poll_inner().await;
        // A failure on the TLS side shows in rumqttc as a closed Unix socket: report the
        // bridge's own error (with its certificate hints) instead.
        r.map_err(|e| {
            match self
                .bridge
                .as_ref()
                .and_then(close_notify::Bridge::take_error)
            {
                Some(message) => ConnectionFailed::new(message),
                None => e,
            }
        })
    }

    /// Closes the connection after DISCONNECT: rumqttc's side first, then (bounded) the TLS
    /// side with close_notify.
    pub async fn close(&mut self) {
        match &mut self.inner {
            Inner::V4(l) => l.clean(),
            Inner::V5(l) => l.clean(),
        }
        if let Some(b) = self.bridge.as_ref() {
            b.finish(Duration::from_secs(2)).await;
        }
    }

    async fn poll_inner(&mut self) -> Result<Event, ConnectionFailed> {
        let failed = |e: &dyn std::error::Error| ConnectionFailed::new(error_chain(e));
        match &mut self.inner {
            Inner::V4(l) => l.poll().await.map(event_v4).map_err(|e| failed(&e)),
            Inner::V5(l) => l.poll().await.map(event_v5).map_err(|e| failed(&e)),
        }
    }

    /// The next event rumqttc has already decoded (it reads up to ten packets per network
    /// read, e.g. a run of PUBACKs, and hands them out one per `poll`), without I/O: what the
    /// next [`Self::poll`] would return at once, so the uplink handles a run in one wake-up.
    pub fn next_buffered(&mut self) -> Option<Event> {
        match &mut self.inner {
            Inner::V4(l) => l.state.events.pop_front().map(event_v4),
            Inner::V5(l) => l.state.events.pop_front().map(event_v5),
        }
    }
}

fn event_v4(e: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Packet};
    match e {
        E::Incoming(Packet::ConnAck(_)) => Event::ConnAck,
        E::Incoming(Packet::PubAck(a)) => Event::PubAck {
            pkid: a.pkid,
            ok: true,
            reason: String::new(),
        },
        E::Incoming(Packet::Publish(p)) => Event::Publish {
            topic: p.topic,
            payload: p.payload,
        },
        E::Incoming(Packet::SubAck(a)) => Event::SubAck {
            ok: !a
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)),
            reason: format!("{:?}", a.return_codes),
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(Outgoing::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

fn event_v5(e: rumqttc::v5::Event) -> Event {
    use rumqttc::v5::Event as E;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
    match e {
        E::Incoming(Packet::ConnAck(_)) => Event::ConnAck,
        E::Incoming(Packet::PubAck(a)) => Event::PubAck {
            pkid: a.pkid,
            ok: matches!(
                a.reason,
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
            ),
            reason: format!("{:?}", a.reason),
        },
        E::Incoming(Packet::Publish(p)) => Event::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
        },
        E::Incoming(Packet::SubAck(a)) => Event::SubAck {
            ok: a
                .return_codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
            reason: format!("{:?}", a.return_codes),
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(Outgoing::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    // rustls puts the useful part in Debug only for some errors (alerts).
    let debug = format!("{e:?}");
    if debug.contains("AlertReceived") || debug.contains("InvalidCertificate") {
        out.push_str(&format!(" [{debug}]"));
    }
    out
}

mod close_notify;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;

    use super::close_notify::Bridge;

    fn config() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    /// What rumqttc decoded and queued is handed out in order, mapped as `poll` maps it, and
    /// nothing is made up once the queue is empty.
    #[test]
    fn buffered_events_come_out_in_order_and_mapped() {
        use rumqttc::Event as E;
        let mut v4 = rumqttc::EventLoop::new(rumqttc::MqttOptions::new("t", "localhost", 1883), 4);
        v4.state
            .events
            .push_back(E::Incoming(rumqttc::Packet::PubAck(rumqttc::PubAck::new(
                7,
            ))));
        v4.state
            .events
            .push_back(E::Outgoing(rumqttc::Outgoing::Publish(8)));
        let mut events = super::EventLoop {
            inner: super::Inner::V4(Box::new(v4)),
            bridge: None,
        };
        assert_eq!(
            events.next_buffered(),
            Some(super::Event::PubAck {
                pkid: 7,
                ok: true,
                reason: String::new()
            })
        );
        assert_eq!(events.next_buffered(), Some(super::Event::Sent(8)));
        assert_eq!(events.next_buffered(), None);

        use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason};
        let mut v5 =
            rumqttc::v5::EventLoop::new(rumqttc::v5::MqttOptions::new("t", "localhost", 1883), 4);
        let mut refused = PubAck::new(9, None);
        refused.reason = PubAckReason::NotAuthorized;
        v5.state
            .events
            .push_back(rumqttc::v5::Event::Incoming(Packet::PubAck(refused)));
        let mut events = super::EventLoop {
            inner: super::Inner::V5(Box::new(v5)),
            bridge: None,
        };
        assert_eq!(
            events.next_buffered(),
            Some(super::Event::PubAck {
                pkid: 9,
                ok: false,
                reason: "NotAuthorized".to_owned()
            })
        );
        assert_eq!(events.next_buffered(), None);
    }

    #[tokio::test]
    async fn bridge_socket_lives_in_the_runtime_dir_and_goes_with_the_bridge() {
        let run = tempfile::tempdir().expect("tempdir");
        let bridge = Bridge::start("localhost", 8883, config(), Some(run.path())).expect("start");
        let dir = bridge.path().parent().expect("dir").to_owned();
        assert_eq!(dir.parent(), Some(run.path()));
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(bridge.path().exists());
        drop(bridge);
        assert!(
            !dir.exists(),
            "the socket directory is removed with the bridge"
        );
    }

    #[tokio::test]
    async fn bridge_falls_back_to_the_temp_dir_when_the_runtime_dir_is_unusable() {
        let run = tempfile::tempdir().expect("tempdir");
        let missing = run.path().join("not-there");
        let bridge = Bridge::start("localhost", 8883, config(), Some(&missing)).expect("start");
        assert!(bridge.path().starts_with(std::env::temp_dir()));
        assert!(!missing.exists());
    }
}
