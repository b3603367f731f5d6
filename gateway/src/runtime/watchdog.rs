//! Progress watchdog: systemd's `WATCHDOG=1` is sent only while every registered loop of the
//! daemon makes progress, never from a blind timer.
//!
//! A main loop (supervisor, outbox writer, uplink, adapters) takes a [`Heartbeat`] from
//! [`Watchdog::register`] and calls [`Heartbeat::beat`] each time it goes round, and at least
//! every [`Watchdog::beat_interval`] while idle (a `tokio::time::interval` arm in its
//! `select!`). Dropping the heartbeat unregisters the loop. [`run_pinger`] checks, every half of
//! `WATCHDOG_USEC`, that every registered loop beat within that half-period; if one did not, it
//! stops pinging and names the stalled loop, and systemd restarts the service once the timeout
//! passes. A stall that clears resumes the pings.
//!
//! The health decision ([`Watchdog::stalled`]) is pure bookkeeping over timestamps; only
//! [`run_pinger`] touches time and the notifier. No hardware watchdog here (that is `hal`'s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::runtime::notify::Notifier;

/// Used when systemd asked for no watchdog: loops still beat, just with nobody checking.
const DEFAULT_CHECK_PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Slot {
    name: &'static str,
    /// Milliseconds since the registry's epoch at the last beat.
    last_ms: AtomicU64,
}

#[derive(Debug)]
struct Registry {
    epoch: Instant,
    /// How often the pinger checks; a loop must beat at least this often to count as alive.
    check_period: Duration,
    loops: Mutex<Vec<Weak<Slot>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The set of loops whose progress keeps the service alive. Clone freely.
#[derive(Debug, Clone)]
pub struct Watchdog {
    registry: Arc<Registry>,
}

/// One loop's heartbeat. [`Heartbeat::beat`] on progress; drop to unregister.
#[derive(Debug)]
pub struct Heartbeat {
    slot: Arc<Slot>,
    registry: Arc<Registry>,
}

impl Heartbeat {
    /// Records progress now.
    pub fn beat(&self) {
        self.slot
            .last_ms
            .store(self.registry.now_ms(), Ordering::Relaxed);
    }

    /// The loop's name, as logged when it stalls.
    pub fn name(&self) -> &'static str {
        self.slot.name
    }
}

/// Runs `fut` to completion, beating `heartbeat` every `interval` while the task that awaits it
/// is being polled. For loops that wait on slow peers in many places (the uplink's connect,
/// backoff and session): a task that blocks its thread, or a stalled runtime, stops the beats;
/// a long but healthy wait (a 60 s reconnect backoff) does not.
pub async fn beat_while<F: std::future::Future>(
    heartbeat: Heartbeat,
    interval: Duration,
    fut: F,
) -> F::Output {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => heartbeat.beat(),
        }
    }
}

impl Watchdog {
    /// A watchdog that checks progress every `check_period` (half of `WATCHDOG_USEC`).
    pub fn new(check_period: Duration) -> Self {
        Self {
            registry: Arc::new(Registry {
                epoch: Instant::now(),
                check_period,
                loops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// For the period systemd enforces (`WATCHDOG_USEC`, from the notifier): checks at half
    /// of it. Without one, a default period that only paces the loops' beats.
    pub fn for_timeout(timeout: Option<Duration>) -> Self {
        Self::new(timeout.map_or(DEFAULT_CHECK_PERIOD, |t| t / 2))
    }

    /// How often the pinger checks.
    pub fn check_period(&self) -> Duration {
        self.registry.check_period
    }

    /// How often an idle loop must beat to stay healthy: half the check period, so one late
    /// wake-up does not cost a ping.
    pub fn beat_interval(&self) -> Duration {
        self.registry.check_period / 2
    }

    /// Registers a loop; registration counts as its first beat.
    pub fn register(&self, name: &'static str) -> Heartbeat {
        let slot = Arc::new(Slot {
            name,
            last_ms: AtomicU64::new(self.registry.now_ms()),
        });
        if let Ok(mut loops) = self.registry.loops.lock() {
            loops.retain(|w| w.strong_count() > 0);
            loops.push(Arc::downgrade(&slot));
        }
        Heartbeat {
            slot,
            registry: self.registry.clone(),
        }
    }

    /// Names of registered loops that did not beat within the last check period. Empty means
    /// healthy. Unregistered (dropped) heartbeats are forgotten.
    pub fn stalled(&self) -> Vec<&'static str> {
        let now = self.registry.now_ms();
        let limit = u64::try_from(self.registry.check_period.as_millis()).unwrap_or(u64::MAX);
        let Ok(mut loops) = self.registry.loops.lock() else {
            // A panic while holding this short lock: report the registry itself as stalled.
            return vec!["watchdog registry"];
        };
        loops.retain(|w| w.strong_count() > 0);
        loops
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|slot| now.saturating_sub(slot.last_ms.load(Ordering::Relaxed)) > limit)
            .map(|slot| slot.name)
            .collect()
    }

    /// How many loops are registered.
    pub fn registered(&self) -> usize {
        self.registry
            .loops
            .lock()
            .map(|l| l.iter().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }
}

/// Pings `WATCHDOG=1` every check period while every registered loop made progress, starting
/// only once the notifier reported ready. Returns when `token` is cancelled. Does nothing (but
/// wait) when systemd asked for no watchdog.
pub async fn run_pinger(watchdog: Watchdog, notifier: Notifier, token: CancellationToken) {
    if notifier.watchdog_timeout().is_none() {
        token.cancelled().await;
        return;
    }
    tokio::select! {
        () = token.cancelled() => return,
        () = notifier.wait_ready() => {}
    }
    let mut tick = tokio::time::interval(watchdog.check_period());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut was_stalled = false;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stalled = watchdog.stalled();
        if stalled.is_empty() {
            if was_stalled {
                info!("watchdog: all loops make progress again; resuming pings");
                notifier.restore_status();
                was_stalled = false;
            }
            notifier.watchdog_ping();
        } else if !was_stalled {
            let names = stalled.join(", ");
            warn!("watchdog: no progress from {names}; withholding WATCHDOG=1");
            notifier.transient_status(&format!("stalled: {names}"));
            was_stalled = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pings(n: &Notifier) -> usize {
        n.recorded().iter().filter(|d| *d == "WATCHDOG=1").count()
    }

    #[tokio::test(start_paused = true)]
    async fn beat_while_beats_as_long_as_the_awaited_future_is_polled() {
        let wd = Watchdog::new(Duration::from_secs(10));
        let idle = wd.register("idle");
        let busy = wd.register("uplink");
        let every = wd.beat_interval();
        let waited = tokio::spawn(beat_while(
            busy,
            every,
            tokio::time::sleep(Duration::from_secs(60)),
        ));
        tokio::time::sleep(Duration::from_secs(30)).await;
        // 30 s into a 60 s wait the awaited loop is healthy; the one nobody beats is not.
        assert_eq!(wd.stalled(), vec!["idle"]);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(waited.is_finished());
        drop(idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_beating_is_reported_until_it_beats_again() {
        let wd = Watchdog::new(Duration::from_secs(10));
        let a = wd.register("outbox");
        let b = wd.register("uplink");
        assert!(wd.stalled().is_empty());
        tokio::time::advance(Duration::from_secs(8)).await;
        a.beat();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(wd.stalled(), vec!["uplink"]);
        b.beat();
        assert!(wd.stalled().is_empty());
        drop(a);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(wd.stalled(), vec!["uplink"], "a dropped loop is forgotten");
        drop(b);
        assert!(wd.stalled().is_empty());
        assert_eq!(wd.registered(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pinger_waits_for_ready_pings_on_progress_and_stops_on_a_stall() {
        let notifier = Notifier::recording(Some(Duration::from_secs(20)));
        let wd = Watchdog::for_timeout(notifier.watchdog_timeout());
        assert_eq!(wd.check_period(), Duration::from_secs(10));
        let token = CancellationToken::new();
        let beating = wd.register("supervisor");
        let stuck = wd.register("uplink");
        let pinger = tokio::spawn(run_pinger(wd.clone(), notifier.clone(), token.clone()));

        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(pings(&notifier), 0, "no ping before READY");

        notifier.ready("ready");
        // Both loops beat every 5 s for 30 s: a ping per 10 s check.
        for _ in 0..6 {
            beating.beat();
            stuck.beat();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let healthy = pings(&notifier);
        assert!(healthy >= 3, "expected pings while healthy, got {healthy}");

        // `stuck` stops beating: after at most one more check, pings stop.
        for _ in 0..8 {
            beating.beat();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let after_stall = pings(&notifier);
        assert!(after_stall <= healthy + 1, "{after_stall} vs {healthy}");
        assert!(
            notifier
                .recorded()
                .iter()
                .any(|d| d == "STATUS=stalled: uplink"),
            "{:?}",
            notifier.recorded()
        );
        for _ in 0..4 {
            beating.beat();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert_eq!(pings(&notifier), after_stall, "no pings while stalled");

        // It recovers.
        for _ in 0..6 {
            beating.beat();
            stuck.beat();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert!(
            pings(&notifier) > after_stall,
            "pings resume after recovery"
        );

        token.cancel();
        pinger.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_watchdog_the_pinger_never_pings() {
        let notifier = Notifier::recording(None);
        let wd = Watchdog::for_timeout(None);
        let token = CancellationToken::new();
        let pinger = tokio::spawn(run_pinger(wd.clone(), notifier.clone(), token.clone()));
        notifier.ready("ready");
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(pings(&notifier), 0);
        token.cancel();
        pinger.await.unwrap();
    }
}
