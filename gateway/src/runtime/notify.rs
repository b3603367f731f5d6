//! Service-manager notifications (`sd_notify(3)`): `READY=1`, `STATUS=`, `RELOADING=1`,
//! `STOPPING=1`, `EXTEND_TIMEOUT_USEC=` and `WATCHDOG=1`, through the `sd-notify` crate.
//!
//! A [`Notifier`] is cheap to clone and hand to any module that changes the daemon's mode (the
//! uplink going up or down, the outbox filling): they call [`Notifier::status`]. Without
//! `NOTIFY_SOCKET` every call is a no-op, so the daemon behaves the same outside systemd.
//! Sending never fails the caller: a lost notification is logged, never fatal.
//!
//! This module does not decide *when* to ping the watchdog: [`crate::runtime::watchdog`] does, from the
//! progress of the daemon's loops. It only knows the period systemd asked for
//! (`WATCHDOG_USEC`, honoured only when `WATCHDOG_PID` is unset or names this process).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Where notifications go.
enum Sink {
    /// No `NOTIFY_SOCKET`: not started by a service manager.
    Disabled,
    /// The datagram socket named by `NOTIFY_SOCKET`.
    Systemd,
    /// In-memory record, one entry per datagram (tests).
    Record(Mutex<Vec<String>>),
}

struct Inner {
    sink: Sink,
    watchdog: Option<Duration>,
    ready: watch::Sender<bool>,
    /// The last mode reported with `ready`/`status`, re-sent after a reload or a stall.
    mode: Mutex<String>,
    /// One warning per process when sending fails; further failures go to debug.
    warned: AtomicBool,
}

/// Handle for sending notifications to the service manager. Clone freely.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sink = match self.inner.sink {
            Sink::Disabled => "disabled",
            Sink::Systemd => "systemd",
            Sink::Record(_) => "record",
        };
        f.debug_struct("Notifier")
            .field("sink", &sink)
            .field("watchdog", &self.inner.watchdog)
            .finish()
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Self::disabled()
    }
}

impl Notifier {
    fn with(sink: Sink, watchdog: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                sink,
                watchdog,
                ready: watch::Sender::new(false),
                mode: Mutex::new(String::new()),
                warned: AtomicBool::new(false),
            }),
        }
    }

    /// From the environment systemd sets: `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Self::disabled();
        }
        // sd-notify checks WATCHDOG_PID against our pid; a zero period means "no watchdog".
        let watchdog = sd_notify::watchdog_enabled().filter(|period| !period.is_zero());
        Self::with(Sink::Systemd, watchdog)
    }

    /// Sends nothing.
    pub fn disabled() -> Self {
        Self::with(Sink::Disabled, None)
    }

    /// Records every datagram in memory instead of sending it (for tests of other modules).
    pub fn recording(watchdog: Option<Duration>) -> Self {
        Self::with(Sink::Record(Mutex::new(Vec::new())), watchdog)
    }

    /// The datagrams recorded so far (empty unless built with [`Notifier::recording`]).
    pub fn recorded(&self) -> Vec<String> {
        match &self.inner.sink {
            Sink::Record(log) => log.lock().map(|l| l.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.inner.sink, Sink::Disabled)
    }

    /// The watchdog timeout systemd enforces (`WATCHDOG_USEC`), if any. Ping at half of it.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.inner.watchdog
    }

    /// `READY=1` with a status line: stores are open and listeners bound. Also releases the
    /// watchdog pinger, which never pings before the daemon is ready.
    pub fn ready(&self, status: &str) {
        self.remember(status);
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.inner.ready.send_replace(true);
    }

    /// `READY=1` after a reload, with the mode from before it.
    pub fn reloaded(&self) {
        let mode = self.mode();
        self.send(&[NotifyState::Ready, NotifyState::Status(&mode)]);
    }

    fn remember(&self, status: &str) {
        if let Ok(mut mode) = self.inner.mode.lock() {
            status.clone_into(&mut mode);
        }
    }

    fn mode(&self) -> String {
        self.inner
            .mode
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Waits until [`Notifier::ready`] was called.
    pub async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// `STATUS=…`: a one-line human description of the current mode (shown by
    /// `systemctl status`). Call on every mode change: uplink up/down, outbox depth, …
    pub fn status(&self, status: &str) {
        self.remember(status);
        self.send(&[NotifyState::Status(status)]);
    }

    /// A passing condition (`stalled: …`) that does not replace the mode.
    pub(crate) fn transient_status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Re-sends the mode after a transient status cleared.
    pub(crate) fn restore_status(&self) {
        let mode = self.mode();
        self.send(&[NotifyState::Status(&mode)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (required by `Type=notify-reload`, systemd 253+).
    /// Follow with [`Notifier::ready`] once the reload is done.
    pub fn reloading(&self) {
        self.send(&[
            NotifyState::Reloading,
            NotifyState::MonotonicUsec(monotonic_usec()),
            NotifyState::Status("reloading"),
        ]);
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `EXTEND_TIMEOUT_USEC=…`: the stop (or start) job may take `by` longer from now.
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// `WATCHDOG=1`. Only [`crate::runtime::watchdog`] should call this, and only on progress.
    pub fn watchdog_ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        match &self.inner.sink {
            Sink::Disabled => {}
            Sink::Systemd => {
                if let Err(e) = sd_notify::notify(states) {
                    if self.inner.warned.swap(true, Ordering::Relaxed) {
                        debug!("cannot notify the service manager: {e}");
                    } else {
                        warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
                    }
                }
            }
            Sink::Record(log) => {
                let datagram = states
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                if let Ok(mut log) = log.lock() {
                    log.push(datagram);
                }
            }
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd compares it. Computed here in 64 bits because
/// sd-notify 0.5's `monotonic_usec_now` multiplies a 32-bit `time_t` and overflows on armv7.
fn monotonic_usec() -> i128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(now.tv_sec) * 1_000_000 + i128::from(now.tv_nsec) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_sends_nothing_and_has_no_watchdog() {
        let n = Notifier::disabled();
        n.ready("ready");
        n.status("x");
        assert!(!n.is_enabled());
        assert!(n.recorded().is_empty());
        assert_eq!(n.watchdog_timeout(), None);
    }

    #[test]
    fn datagrams_carry_the_sd_notify_fields() {
        let n = Notifier::recording(None);
        n.ready("ready: no uplink");
        n.reloading();
        n.stopping("stopping");
        n.extend_timeout(Duration::from_secs(15));
        n.status("uplink up");
        n.transient_status("stalled: uplink");
        n.reloaded();
        n.restore_status();
        let got = n.recorded();
        assert_eq!(got[0], "READY=1\nSTATUS=ready: no uplink");
        assert!(
            got[1].starts_with("RELOADING=1\nMONOTONIC_USEC=")
                && got[1].ends_with("STATUS=reloading"),
            "{}",
            got[1]
        );
        let usec: u64 = got[1].lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec > 0);
        assert_eq!(got[2], "STOPPING=1\nSTATUS=stopping");
        assert_eq!(got[3], "EXTEND_TIMEOUT_USEC=15000000");
        assert_eq!(
            got[4..],
            [
                "STATUS=uplink up",
                "STATUS=stalled: uplink",
                "READY=1\nSTATUS=uplink up",
                "STATUS=uplink up"
            ]
        );
    }

    #[tokio::test]
    async fn wait_ready_returns_only_after_ready() {
        let n = Notifier::recording(None);
        let waiter = tokio::spawn({
            let n = n.clone();
            async move { n.wait_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        n.ready("ready");
        waiter.await.unwrap();
    }
}
