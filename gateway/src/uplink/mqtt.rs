//! A thin layer over rumqttc that hides the MQTT 3.1.1 / 5 split from the uplink task: one
//! client handle, one event loop, and the few events the uplink cares about.

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

pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// The request queue between the client handle and the event loop: room for a full window
/// plus status and subscription requests.
fn request_capacity(inflight: u16) -> usize {
    usize::from(inflight) + 64
}

pub fn connect(p: &ConnectParams) -> (Client, EventLoop) {
    let transport = match &p.tls {
        Some(config) => Transport::Tls(TlsConfiguration::Rustls(config.clone())),
        None => Transport::Tcp,
    };
    let secs = p.connect_timeout.as_secs().max(1);
    match p.version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&p.client_id, &p.host, p.port);
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
            (Client::V4(c), EventLoop::V4(Box::new(l)))
        }
        MqttVersion::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&p.client_id, &p.host, p.port);
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
            (Client::V5(c), EventLoop::V5(Box::new(l)))
        }
    }
}

/// The request queue is full (cannot happen while the window is respected).
#[derive(Debug, thiserror::Error)]
#[error("MQTT request queue full or closed")]
pub struct QueueFull;

impl Client {
    /// QoS 1 publish. `content_type` goes into the MQTT 5 property of that name (3.1.1 has
    /// nowhere to put it).
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
        content_type: Option<&str>,
    ) -> Result<(), QueueFull> {
        match self {
            Self::V4(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
                .map_err(|_| QueueFull),
            Self::V5(c) => {
                let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
                match content_type {
                    Some(ct) => c.try_publish_with_properties(
                        topic,
                        qos,
                        retain,
                        payload,
                        rumqttc::v5::mqttbytes::v5::PublishProperties {
                            content_type: Some(ct.to_owned()),
                            ..Default::default()
                        },
                    ),
                    None => c.try_publish(topic, qos, retain, payload),
                }
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
        f.write_str(match self {
            Self::V4(_) => "EventLoop(MQTT 3.1.1)",
            Self::V5(_) => "EventLoop(MQTT 5)",
        })
    }
}

impl EventLoop {
    pub async fn poll(&mut self) -> Result<Event, ConnectionFailed> {
        match self {
            Self::V4(l) => {
                use rumqttc::{Event as E, Packet};
                match l.poll().await {
                    Ok(E::Incoming(Packet::ConnAck(_))) => Ok(Event::ConnAck),
                    Ok(E::Incoming(Packet::PubAck(a))) => Ok(Event::PubAck {
                        pkid: a.pkid,
                        ok: true,
                        reason: String::new(),
                    }),
                    Ok(E::Incoming(Packet::Publish(p))) => Ok(Event::Publish {
                        topic: p.topic,
                        payload: p.payload,
                    }),
                    Ok(E::Incoming(Packet::SubAck(a))) => Ok(Event::SubAck {
                        ok: !a
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)),
                        reason: format!("{:?}", a.return_codes),
                    }),
                    Ok(E::Outgoing(Outgoing::Publish(pkid))) => Ok(Event::Sent(pkid)),
                    Ok(E::Outgoing(Outgoing::Disconnect)) => Ok(Event::Disconnected),
                    Ok(_) => Ok(Event::Other),
                    Err(e) => Err(ConnectionFailed::new(error_chain(&e))),
                }
            }
            Self::V5(l) => {
                use rumqttc::v5::Event as E;
                use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
                match l.poll().await {
                    Ok(E::Incoming(Packet::ConnAck(_))) => Ok(Event::ConnAck),
                    Ok(E::Incoming(Packet::PubAck(a))) => Ok(Event::PubAck {
                        pkid: a.pkid,
                        ok: matches!(
                            a.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ),
                        reason: format!("{:?}", a.reason),
                    }),
                    Ok(E::Incoming(Packet::Publish(p))) => Ok(Event::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload,
                    }),
                    Ok(E::Incoming(Packet::SubAck(a))) => Ok(Event::SubAck {
                        ok: a.return_codes.iter().all(|c| {
                            matches!(
                                c,
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                            )
                        }),
                        reason: format!("{:?}", a.return_codes),
                    }),
                    Ok(E::Outgoing(Outgoing::Publish(pkid))) => Ok(Event::Sent(pkid)),
                    Ok(E::Outgoing(Outgoing::Disconnect)) => Ok(Event::Disconnected),
                    Ok(_) => Ok(Event::Other),
                    Err(e) => Err(ConnectionFailed::new(error_chain(&e))),
                }
            }
        }
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
