//! Which upstream topic a message, a command subscription and the gateway status use: the
//! topic template filled with each channel's **upstream** identity (its domain and upstream
//! channel id from the auth store's directory), and, with `uplink.platform = "supermq"`, the
//! checks that keep every topic inside SuperMQ's `m/<domain>/c/<channel>[/<subtopic>]` space
//! (SuperMQ's MQTT adapter closes the connection on anything else). Pure: no I/O.

use std::collections::HashMap;

use crate::auth::ChannelRef;
use crate::config::{Platform, supermq_channel_topic};
use crate::outbox::Message;
use crate::topic::{TopicParts, TopicTemplate};

/// Why a message has no upstream topic (it cannot be published as it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicRefusal {
    #[error(
        "channel {channel} has no domain: SuperMQ topics need m/<domain>/c/<channel>; give the channel a domain (channel add --domain, or gateway.domain_id)"
    )]
    NoDomain { channel: String },
    #[error("topic `{topic}` is not a SuperMQ channel topic m/<domain>/c/<channel>[/<subtopic>]")]
    NotChannelTopic { topic: String },
}

/// The topic rules of one uplink.
#[derive(Debug, Clone)]
pub struct Topics {
    platform: Platform,
    template: TopicTemplate,
    downlink_subtopic: String,
    /// Local channel id → channel (with its upstream domain and id).
    directory: HashMap<String, ChannelRef>,
    /// `gateway.domain_id`: the domain of channels that have none.
    gateway_domain: String,
}

impl Topics {
    pub fn new(platform: Platform, template: TopicTemplate, downlink_subtopic: String) -> Self {
        Self {
            platform,
            template,
            downlink_subtopic,
            directory: HashMap::new(),
            gateway_domain: String::new(),
        }
    }

    /// Sets `gateway.domain_id` (`topic::effective_domain`).
    pub fn set_gateway_domain(&mut self, domain: &str) {
        domain.clone_into(&mut self.gateway_domain);
    }

    /// The one upstream domain of a channel (its own, else `gateway.domain_id`).
    pub fn domain_of<'a>(&'a self, c: &'a ChannelRef) -> &'a str {
        crate::topic::effective_domain(&c.domain_id, &self.gateway_domain)
    }

    /// The auth store's channels changed.
    pub fn handle_directory(&mut self, channels: &[ChannelRef]) {
        self.directory = channels.iter().map(|c| (c.id.clone(), c.clone())).collect();
    }

    /// The (domain, upstream channel id) of a local channel; a channel no longer in the store
    /// keeps the identity its messages were stored with.
    fn upstream<'a>(&'a self, channel_id: &'a str, domain_id: &'a str) -> (&'a str, &'a str) {
        match self.directory.get(channel_id) {
            Some(c) => (
                match self.domain_of(c) {
                    "" => domain_id,
                    d => d,
                },
                &c.upstream_id,
            ),
            None => (domain_id, channel_id),
        }
    }

    /// The topic of a stored message.
    pub fn message(&self, m: &Message) -> Result<String, TopicRefusal> {
        let (domain, channel) = self.upstream(&m.channel_id, &m.domain_id);
        if self.platform == Platform::Supermq && domain.is_empty() {
            return Err(TopicRefusal::NoDomain {
                channel: m.channel_id.clone(),
            });
        }
        let topic = self.template.render(TopicParts {
            domain,
            channel,
            subtopic: &m.subtopic,
            client: &m.client_id,
        });
        self.checked(topic)
    }

    fn checked(&self, topic: String) -> Result<String, TopicRefusal> {
        if self.platform == Platform::Supermq && supermq_channel_topic(&topic).is_none() {
            return Err(TopicRefusal::NotChannelTopic { topic });
        }
        Ok(topic)
    }

    /// `<channel topic>/<downlink_subtopic>` of a channel (subscribed with `/#`).
    pub fn command_prefix(&self, c: &ChannelRef) -> Result<String, TopicRefusal> {
        let (domain, channel) = self.upstream(&c.id, &c.domain_id);
        if self.platform == Platform::Supermq && domain.is_empty() {
            return Err(TopicRefusal::NoDomain {
                channel: c.id.clone(),
            });
        }
        let prefix = format!(
            "{}/{}",
            self.template.channel_filter(domain, channel),
            self.downlink_subtopic
        );
        self.checked(prefix)
    }

    /// Whether the status topic may be used now: always on a generic broker; with SuperMQ
    /// only on a channel topic of a channel the gateway mirrors (its SuperMQ client is
    /// connected to every mirrored channel), so the status can never get the connection
    /// closed.
    pub fn status_allowed(&self, topic: &str) -> bool {
        match self.platform {
            Platform::Mqtt => true,
            Platform::Supermq => supermq_channel_topic(topic).is_some_and(|(domain, channel)| {
                self.directory
                    .values()
                    .any(|c| self.domain_of(c) == domain && c.upstream_id == channel)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;

    fn channel(id: &str, domain: &str, upstream: &str) -> ChannelRef {
        ChannelRef {
            id: id.into(),
            name: format!("n-{id}"),
            domain_id: domain.into(),
            upstream_id: upstream.into(),
        }
    }

    fn message(channel: &str, domain: &str, subtopic: &str) -> Message {
        Message {
            client_id: "k1".into(),
            channel_id: channel.into(),
            domain_id: domain.into(),
            subtopic: subtopic.into(),
            content_format: None,
            payload: Bytes::from_static(b"x"),
            received_at: SystemTime::now(),
        }
    }

    fn topics(platform: Platform, template: &str) -> Topics {
        let mut t = Topics::new(
            platform,
            TopicTemplate::parse(template).unwrap(),
            "cmd".into(),
        );
        t.handle_directory(&[
            channel("local-1", "dom", "up-1"),
            channel("local-2", "", "local-2"),
        ]);
        t
    }

    #[test]
    fn messages_go_to_the_upstream_channel_id() {
        let t = topics(Platform::Supermq, "default");
        assert_eq!(
            t.message(&message("local-1", "", "temp")).unwrap(),
            "m/dom/c/up-1/temp"
        );
        assert_eq!(
            t.message(&message("local-1", "", "")).unwrap(),
            "m/dom/c/up-1"
        );
        assert_eq!(
            t.command_prefix(&channel("local-1", "dom", "up-1"))
                .unwrap(),
            "m/dom/c/up-1/cmd"
        );
        // A removed channel keeps the identity its messages were stored with.
        assert_eq!(
            t.message(&message("gone", "d2", "a")).unwrap(),
            "m/d2/c/gone/a"
        );
    }

    #[test]
    fn supermq_never_gets_a_topic_with_an_empty_domain() {
        let t = topics(Platform::Supermq, "default");
        assert_eq!(
            t.message(&message("local-2", "", "a")),
            Err(TopicRefusal::NoDomain {
                channel: "local-2".into()
            })
        );
        assert!(
            t.command_prefix(&channel("local-2", "", "local-2"))
                .is_err()
        );
        // The message's own domain (from the request path) fills in.
        assert_eq!(
            t.message(&message("local-2", "d9", "a")).unwrap(),
            "m/d9/c/local-2/a"
        );
        // A generic broker keeps today's behaviour (empty levels collapsed).
        let generic = topics(Platform::Mqtt, "default");
        assert_eq!(
            generic.message(&message("local-2", "", "a")).unwrap(),
            "m/c/local-2/a"
        );
    }

    #[test]
    fn per_sensor_identity_in_the_subtopic_stays_a_channel_topic() {
        let t = topics(
            Platform::Supermq,
            "m/{domain}/c/{channel}/{client}/{subtopic}",
        );
        assert_eq!(
            t.message(&message("local-1", "", "t")).unwrap(),
            "m/dom/c/up-1/k1/t"
        );
    }

    #[test]
    fn the_status_topic_must_be_a_mirrored_channel_with_supermq() {
        let t = topics(Platform::Supermq, "default");
        assert!(t.status_allowed("m/dom/c/up-1/status"));
        assert!(!t.status_allowed("m/dom/c/other/status"));
        assert!(!t.status_allowed("m/other/c/up-1/status"));
        assert!(!t.status_allowed("edgegw/gw/status"));
        assert!(topics(Platform::Mqtt, "default").status_allowed("edgegw/gw/status"));
    }
}
