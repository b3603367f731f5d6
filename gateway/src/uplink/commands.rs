//! Commands from the platform over the uplink connection: the SUBSCRIBEs for the channels
//! this gateway mirrors, and each command handed to the downlink hub.

use std::collections::BTreeSet;
use std::time::SystemTime;

use bytes::Bytes;
use tracing::{debug, warn};

use super::{Uplink, mqtt};
use crate::downlink::Command;
use crate::topic::matches_filter;

impl Uplink {
    pub(super) fn sync_subscriptions(&mut self, client: &mqtt::Client) {
        let channels = self.channels.borrow_and_update().clone();
        let mut wanted = BTreeSet::new();
        for c in channels.iter() {
            match self.topics.command_prefix(c) {
                Ok(prefix) => {
                    wanted.insert(format!("{prefix}/#"));
                }
                Err(e) => warn!(channel = %c.id, "uplink: no command subscription: {e}"),
            }
        }
        for filter in self.subs.handle_wanted(wanted) {
            let _ = client.unsubscribe(&filter);
        }
        self.send_subscription(client);
    }

    /// Sends the next wanted SUBSCRIBE if none is waiting for its SUBACK.
    pub(super) fn send_subscription(&mut self, client: &mqtt::Client) {
        if let Some(filter) = self.subs.poll_subscribe() {
            if client.subscribe(&filter).is_err() {
                self.subs.handle_not_sent();
                warn!(filter, "uplink: cannot subscribe now; retried on reconnect");
            } else {
                debug!(filter, "uplink: subscribing for commands");
            }
        }
    }

    pub(super) fn handle_command(&self, topic: &str, payload: Bytes) {
        let channels = self.channels.borrow().clone();
        for c in channels.iter() {
            let Ok(prefix) = self.topics.command_prefix(c) else {
                continue;
            };
            if !matches_filter(&format!("{prefix}/#"), topic) {
                continue;
            }
            let levels = prefix.split('/').count();
            let subtopic = topic.split('/').skip(levels).collect::<Vec<_>>().join("/");
            let cmd = Command {
                domain_id: self.topics.domain_of(c).to_owned(),
                channel_id: c.id.clone(),
                subtopic,
                payload,
                received_at: SystemTime::now(),
            };
            let n = self.hub.deliver(&cmd);
            debug!(channel = %c.id, delivered = n, "downlink command");
            return;
        }
        debug!(topic, "uplink: message on an unknown topic ignored");
    }
}
