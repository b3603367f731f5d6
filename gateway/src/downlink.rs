//! Downlink: commands from the upstream platform (MQTT `<channel topic>/<downlink_subtopic>/…`)
//! handed to the adapters (CoAP Observe, serial `CMD`). The uplink delivers into the
//! [`DownlinkHub`]; each (client, channel) that subscribed gets a bounded receiver. Commands for
//! a client whose subscription is gone (sensor offline) are kept, bounded in count and age,
//! and handed over when it subscribes again, or taken one at a time by a sensor that polls
//! (CoAP `GET` without Observe). Commands are kept for every client the hub's
//! [`Recipients`] function (given at construction) names for the channel (its
//! subscribe-connected clients), so a sensor that only polls finds commands published before
//! its first poll.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

/// A channel the uplink subscribes to for commands (it has at least one subscribe-connected
/// client): the auth store's own type, whose `subscribed_channels()` watch feeds the uplink.
pub use crate::auth::ChannelRef;

/// The channels to subscribe to for commands.
pub type ChannelSet = Arc<Vec<ChannelRef>>;

/// One command for the sensors of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub domain_id: String,
    pub channel_id: String,
    pub subtopic: String,
    pub payload: Bytes,
    pub received_at: SystemTime,
}

/// Bounds of the downlink queues.
#[derive(Debug, Clone, Copy)]
pub struct DownlinkLimits {
    /// Commands waiting in a live subscription's receiver.
    pub queue: usize,
    /// Commands kept for a client that is not subscribed right now.
    pub backlog: usize,
    /// Kept commands older than this are dropped.
    pub max_age: Duration,
}

impl Default for DownlinkLimits {
    fn default() -> Self {
        Self {
            queue: 16,
            backlog: 32,
            max_age: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Default)]
struct Mailbox {
    tx: Option<mpsc::Sender<Command>>,
    backlog: VecDeque<Command>,
}

/// The client ids that may receive a channel's commands (given the channel id).
pub type Recipients = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// Where commands go. Cheap to clone.
#[derive(Clone, Default)]
pub struct DownlinkHub {
    limits: DownlinkLimits,
    mailboxes: Arc<Mutex<HashMap<(String, String), Mailbox>>>,
    recipients: Option<Recipients>,
}

impl std::fmt::Debug for DownlinkHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownlinkHub")
            .field("limits", &self.limits)
            .field("recipients", &self.recipients.is_some())
            .finish_non_exhaustive()
    }
}

/// A client's commands on one channel. Dropping it marks the client offline: later commands
/// are kept (bounded) for its next subscription.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Command>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<Command> {
        self.rx.recv().await
    }

    /// For a task that polls many subscriptions itself (the adapters' shells).
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Command>> {
        self.rx.poll_recv(cx)
    }

    pub fn try_recv(&mut self) -> Option<Command> {
        self.rx.try_recv().ok()
    }
}

impl DownlinkHub {
    /// A hub without a recipients function: only clients that subscribed or polled before
    /// are kept for (harnesses without an auth store).
    pub fn new(limits: DownlinkLimits) -> Self {
        Self {
            limits,
            mailboxes: Arc::default(),
            recipients: None,
        }
    }

    /// A hub whose `recipients` (the auth store's subscribe-connected clients of a channel)
    /// get a mailbox for the channel's commands even before subscribing or polling.
    pub fn with_recipients(limits: DownlinkLimits, recipients: Recipients) -> Self {
        Self {
            limits,
            mailboxes: Arc::default(),
            recipients: Some(recipients),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Mailbox>> {
        self.mailboxes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribes `client_id` to commands of `channel_id`; kept commands come first.
    pub fn subscribe(&self, client_id: &str, channel_id: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(self.limits.queue);
        let mut boxes = self.lock();
        let mailbox = boxes
            .entry((client_id.to_owned(), channel_id.to_owned()))
            .or_default();
        mailbox.tx = Some(tx);
        flush(mailbox, &self.limits, SystemTime::now());
        Subscription { rx }
    }

    /// Hands a command to every client known on its channel (with a recipients function: to
    /// its current recipients only); returns how many got it at once.
    pub fn deliver(&self, cmd: &Command) -> usize {
        let now = SystemTime::now();
        // Asked before taking the lock: it reads the auth snapshot.
        let recipients = self
            .recipients
            .as_ref()
            .map(|f| f(&cmd.channel_id))
            .unwrap_or_default();
        let mut boxes = self.lock();
        if self.recipients.is_some() {
            // Only the channel's current recipients: a client that lost its grant
            // (disabled, removed, disconnected) gets nothing more, and its live stream ends.
            boxes.retain(|(client, channel), _| {
                *channel != cmd.channel_id || recipients.contains(client)
            });
        }
        for client in recipients {
            boxes.entry((client, cmd.channel_id.clone())).or_default();
        }
        let mut delivered = 0;
        for ((_, channel), mailbox) in boxes.iter_mut() {
            if *channel != cmd.channel_id {
                continue;
            }
            mailbox.backlog.push_back(cmd.clone());
            while mailbox.backlog.len() > self.limits.backlog {
                mailbox.backlog.pop_front();
            }
            delivered += flush(mailbox, &self.limits, now);
        }
        delivered
    }

    /// A poll (CoAP `GET` without Observe): removes and returns the oldest kept, unexpired
    /// command for `client_id` on `channel_id`; the other kept commands stay, in order. The
    /// caller hands it to the sensor at once: once taken it is the caller's (at most once).
    /// Also marks the client as one to keep later commands for.
    pub fn take(&self, client_id: &str, channel_id: &str) -> Option<Command> {
        let mut boxes = self.lock();
        let mailbox = boxes
            .entry((client_id.to_owned(), channel_id.to_owned()))
            .or_default();
        expire(mailbox, &self.limits, SystemTime::now());
        mailbox.backlog.pop_front()
    }

    /// Commands kept for `client_id` on `channel_id` (offline), for status and tests.
    pub fn kept(&self, client_id: &str, channel_id: &str) -> usize {
        self.lock()
            .get(&(client_id.to_owned(), channel_id.to_owned()))
            .map_or(0, |m| m.backlog.len())
    }
}

/// Moves what fits from the backlog into the live receiver; drops expired commands.
fn flush(mailbox: &mut Mailbox, limits: &DownlinkLimits, now: SystemTime) -> usize {
    expire(mailbox, limits, now);
    let mut moved = 0;
    if let Some(tx) = &mailbox.tx {
        while let Some(cmd) = mailbox.backlog.pop_front() {
            match tx.try_send(cmd) {
                Ok(()) => moved += 1,
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    mailbox.backlog.push_front(cmd);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(cmd)) => {
                    mailbox.backlog.push_front(cmd);
                    mailbox.tx = None;
                    break;
                }
            }
        }
    }
    moved
}

/// Drops kept commands older than `max_age`.
fn expire(mailbox: &mut Mailbox, limits: &DownlinkLimits, now: SystemTime) {
    mailbox.backlog.retain(|c| {
        now.duration_since(c.received_at)
            .is_ok_and(|age| age <= limits.max_age)
            || c.received_at > now
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(channel: &str, payload: &str) -> Command {
        Command {
            domain_id: "d".into(),
            channel_id: channel.into(),
            subtopic: "cmd".into(),
            payload: Bytes::from(payload.to_owned()),
            received_at: SystemTime::now(),
        }
    }

    fn limits() -> DownlinkLimits {
        DownlinkLimits {
            queue: 2,
            backlog: 3,
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn subscribers_of_the_channel_get_its_commands_only() {
        let hub = DownlinkHub::new(limits());
        let mut a = hub.subscribe("a", "c1");
        let mut b = hub.subscribe("b", "c2");
        assert_eq!(hub.deliver(&cmd("c1", "on")), 1);
        assert_eq!(a.try_recv().unwrap().payload, Bytes::from("on"));
        assert!(b.try_recv().is_none());
    }

    #[test]
    fn commands_for_an_offline_client_are_kept_bounded_until_it_returns() {
        let hub = DownlinkHub::new(limits());
        drop(hub.subscribe("a", "c1"));
        for i in 0..5 {
            assert_eq!(hub.deliver(&cmd("c1", &i.to_string())), 0);
        }
        assert_eq!(hub.kept("a", "c1"), 3, "backlog bounded at 3");
        let mut a = hub.subscribe("a", "c1");
        // Receiver holds 2; the third waits in the backlog until there is room.
        let got: Vec<_> = std::iter::from_fn(|| a.try_recv()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload, Bytes::from("2"), "oldest kept first");
        assert_eq!(hub.deliver(&cmd("c1", "5")), 2);
        let got: Vec<_> = std::iter::from_fn(|| a.try_recv()).collect();
        assert_eq!(
            got.iter().map(|c| c.payload.clone()).collect::<Vec<_>>(),
            vec![Bytes::from("4"), Bytes::from("5")]
        );
    }

    #[test]
    fn kept_commands_expire() {
        let hub = DownlinkHub::new(limits());
        drop(hub.subscribe("a", "c1"));
        let mut old = cmd("c1", "old");
        old.received_at = SystemTime::now() - Duration::from_secs(120);
        hub.deliver(&old);
        let mut a = hub.subscribe("a", "c1");
        assert!(a.try_recv().is_none(), "an expired command was delivered");
        assert_eq!(hub.kept("a", "c1"), 0);
    }

    #[test]
    fn take_hands_out_the_oldest_kept_command_once_and_keeps_the_rest() {
        let hub = DownlinkHub::new(limits());
        assert!(hub.take("a", "c1").is_none(), "nothing kept yet");
        // The first poll made "a" a client to keep for.
        hub.deliver(&cmd("c1", "1"));
        hub.deliver(&cmd("c1", "2"));
        hub.deliver(&cmd("c2", "other channel"));
        assert_eq!(hub.take("a", "c1").unwrap().payload, Bytes::from("1"));
        assert_eq!(hub.kept("a", "c1"), 1, "the second command is still kept");
        assert_eq!(hub.take("a", "c1").unwrap().payload, Bytes::from("2"));
        assert!(
            hub.take("a", "c1").is_none(),
            "each command handed out once"
        );
    }

    #[test]
    fn take_does_not_touch_other_clients_or_hand_out_expired_commands() {
        let hub = DownlinkHub::new(limits());
        hub.take("a", "c1");
        hub.take("b", "c1");
        let mut old = cmd("c1", "old");
        old.received_at = SystemTime::now() - Duration::from_secs(120);
        hub.deliver(&old);
        hub.deliver(&cmd("c1", "new"));
        assert_eq!(hub.take("a", "c1").unwrap().payload, Bytes::from("new"));
        assert_eq!(
            hub.kept("b", "c1"),
            1,
            "b keeps its own copy; the expired one is gone"
        );
        assert_eq!(hub.take("b", "c1").unwrap().payload, Bytes::from("new"));
        assert!(hub.take("b", "c1").is_none());
    }

    #[test]
    fn recipients_get_commands_kept_before_they_ever_poll() {
        let hub = DownlinkHub::with_recipients(
            limits(),
            Arc::new(|channel: &str| {
                if channel == "c1" {
                    vec!["a".to_owned()]
                } else {
                    Vec::new()
                }
            }),
        );
        assert_eq!(hub.deliver(&cmd("c1", "on")), 0, "nobody subscribed");
        hub.deliver(&cmd("c2", "not for a"));
        assert_eq!(hub.take("a", "c1").unwrap().payload, Bytes::from("on"));
        assert!(hub.take("a", "c2").is_none());
        assert!(hub.take("b", "c1").is_none(), "b is not a recipient");
    }

    #[test]
    fn a_live_subscription_still_gets_commands_first_hand() {
        let hub = DownlinkHub::new(limits());
        let mut a = hub.subscribe("a", "c1");
        hub.deliver(&cmd("c1", "on"));
        assert!(hub.take("a", "c1").is_none(), "already in the subscription");
        assert_eq!(a.try_recv().unwrap().payload, Bytes::from("on"));
    }
}
