//! The supervisor: owns every task of the daemon (long-running ones and those they spawn per
//! connection or delivery, through [`Supervisor::tracker`]), forwards SIGHUP as a reload
//! generation, and shuts down in order. It does not restart tasks: listeners handle their own
//! transient errors (an accept error backs off inside the loop), and restarting the whole
//! daemon is systemd's (`Restart=on-failure`, the watchdog).
//!
//! Tasks run in one of two stages. Shutdown: stop the **intake** stage (adapters stop
//! accepting), wait for it, then cancel the **pipeline** stage (outbox and uplink flush and
//! disconnect), all within the drain deadline. A second SIGTERM during the drain ends it at once.
//! Nothing is lost by a deadline or a forced exit: acknowledged messages are already durable.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::runtime::notify::Notifier;
use crate::runtime::watchdog::{self, Heartbeat, Watchdog};

/// Which shutdown stage a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Adapters: stopped first.
    Intake,
    /// Outbox and uplink: stopped once intake has stopped.
    Pipeline,
}

/// Process signals as the supervisor sees them (main forwards SIGTERM/SIGINT and SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Reload,
    /// Stop in order to start again in place (bootstrap applied a changed config): told to the
    /// service manager as a reload (`RELOADING=1`), not a stop, so it waits for the new
    /// `READY=1` instead of ending the service.
    Restart,
}

/// How shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every task finished within the deadline.
    Clean,
    /// The drain deadline passed with tasks still running.
    DrainTimeout,
    /// A second terminate signal arrived during the drain.
    Forced,
}

#[derive(Debug, Default)]
struct Group {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Owns the tasks of the daemon. See the module docs for the shutdown order.
#[derive(Debug)]
pub struct Supervisor {
    intake: Group,
    pipeline: Group,
    reload: watch::Sender<u64>,
    notifier: Notifier,
    watchdog: Watchdog,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            intake: Group::default(),
            pipeline: Group::default(),
            reload: watch::Sender::new(0),
            notifier: Notifier::disabled(),
            watchdog: Watchdog::for_timeout(None),
        }
    }

    /// A supervisor that reports to the service manager through `notifier` (RELOADING/READY
    /// around SIGHUP, STOPPING and EXTEND_TIMEOUT_USEC at shutdown) and pings its watchdog
    /// while every loop registered with [`Supervisor::heartbeat`] makes progress.
    pub fn with_notifier(notifier: Notifier) -> Self {
        Self {
            watchdog: Watchdog::for_timeout(notifier.watchdog_timeout()),
            notifier,
            ..Self::new()
        }
    }

    /// The notifier, for modules that report mode changes (`STATUS=`).
    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    /// Registers a main loop with the progress watchdog. The loop calls `beat()` as it goes
    /// round and at least every [`Supervisor::beat_interval`] while idle.
    pub fn heartbeat(&self, name: &'static str) -> Heartbeat {
        self.watchdog.register(name)
    }

    /// How often an idle registered loop must beat.
    pub fn beat_interval(&self) -> Duration {
        self.watchdog.beat_interval()
    }

    fn group(&self, stage: Stage) -> &Group {
        match stage {
            Stage::Intake => &self.intake,
            Stage::Pipeline => &self.pipeline,
        }
    }

    /// The token cancelled when `stage` must stop.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.group(stage).token.clone()
    }

    /// The tracker of `stage`, for tasks a stage's task spawns itself (one per connection, one
    /// per delivery): shutdown waits for them like for the stage's own tasks.
    pub fn tracker(&self, stage: Stage) -> TaskTracker {
        self.group(stage).tracker.clone()
    }

    /// Reload requests (SIGHUP): the value is a generation counter that increments per request.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reload.subscribe()
    }

    /// Runs `task` once in `stage`. It must return soon after the stage's token is cancelled.
    pub fn spawn<F>(&self, stage: Stage, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.group(stage).tracker.spawn(task);
    }

    /// Serves until a terminate signal (or the signal source closes), answering reload signals
    /// on the way, then shuts down in order within `drain`.
    pub async fn run(self, mut signals: mpsc::Receiver<Signal>, drain: Duration) -> Shutdown {
        self.spawn(
            Stage::Pipeline,
            watchdog::run_pinger(
                self.watchdog.clone(),
                self.notifier.clone(),
                self.token(Stage::Pipeline),
            ),
        );
        // The supervisor's own loop counts as progress only while it keeps answering.
        let heartbeat = self.heartbeat("supervisor");
        let mut restart = false;
        let mut beat = tokio::time::interval(self.beat_interval());
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signal = tokio::select! {
                signal = signals.recv() => signal,
                _ = beat.tick() => {
                    heartbeat.beat();
                    continue;
                }
            };
            heartbeat.beat();
            match signal {
                Some(Signal::Reload) => {
                    info!("reload requested (SIGHUP)");
                    self.notifier.reloading();
                    self.reload.send_modify(|generation| *generation += 1);
                    // Consumers pick the new generation up on their own; the mode stays.
                    self.notifier.reloaded();
                }
                Some(Signal::Restart) => {
                    restart = true;
                    break;
                }
                Some(Signal::Terminate) | None => break,
            }
        }
        // systemd stops watching during the stop job; the drain has its own deadline.
        drop(heartbeat);
        if restart {
            self.notifier.reloading();
        } else {
            self.notifier.stopping("stopping: draining the pipeline");
        }
        // Allow the whole drain plus a margin, whatever TimeoutStopSec says.
        self.notifier
            .extend_timeout(drain.saturating_add(Duration::from_secs(5)));
        self.shutdown(signals, drain).await
    }

    async fn shutdown(self, mut signals: mpsc::Receiver<Signal>, drain: Duration) -> Shutdown {
        info!("shutting down: stopping intake (drain deadline {drain:?})");
        self.intake.token.cancel();
        self.intake.tracker.close();
        self.pipeline.tracker.close();
        let ordered = async {
            self.intake.tracker.wait().await;
            info!("intake stopped; flushing the pipeline");
            self.pipeline.token.cancel();
            self.pipeline.tracker.wait().await;
        };
        let second_terminate = async {
            loop {
                match signals.recv().await {
                    Some(Signal::Terminate) => break,
                    Some(Signal::Reload | Signal::Restart) => {}
                    // The source is gone: only the deadline can end the drain now.
                    None => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            () = ordered => {
                info!("shutdown complete");
                Shutdown::Clean
            }
            () = tokio::time::sleep(drain) => {
                warn!(
                    intake = self.intake.tracker.len(),
                    pipeline = self.pipeline.tracker.len(),
                    "drain deadline passed with tasks still running; exiting (queued messages stay in the outbox)"
                );
                Shutdown::DrainTimeout
            }
            () = second_terminate => {
                warn!("second terminate signal: exiting at once");
                Shutdown::Forced
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_intake_before_cancelling_the_pipeline() {
        let sup = Supervisor::new();
        let order = Arc::new(std::sync::Mutex::new(Vec::<&str>::new()));
        let (intake_token, pipeline_token) = (sup.token(Stage::Intake), sup.token(Stage::Pipeline));
        let o = order.clone();
        let pipeline_seen = pipeline_token.clone();
        sup.spawn(Stage::Intake, async move {
            intake_token.cancelled().await;
            // Intake takes a while to stop; the pipeline must still be running meanwhile.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(
                !pipeline_seen.is_cancelled(),
                "pipeline cancelled before intake stopped"
            );
            o.lock().unwrap().push("intake stopped");
        });
        let o = order.clone();
        sup.spawn(Stage::Pipeline, async move {
            pipeline_token.cancelled().await;
            o.lock().unwrap().push("pipeline flushed");
        });
        let (tx, rx) = mpsc::channel(4);
        tx.send(Signal::Terminate).await.unwrap();
        let outcome = sup.run(rx, Duration::from_secs(10)).await;
        assert_eq!(outcome, Shutdown::Clean);
        assert_eq!(
            *order.lock().unwrap(),
            vec!["intake stopped", "pipeline flushed"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_deadline_ends_a_stuck_shutdown() {
        let sup = Supervisor::new();
        sup.spawn(Stage::Pipeline, std::future::pending());
        let (tx, rx) = mpsc::channel(4);
        tx.send(Signal::Terminate).await.unwrap();
        let started = Instant::now();
        let outcome = sup.run(rx, Duration::from_secs(3)).await;
        assert_eq!(outcome, Shutdown::DrainTimeout);
        assert_eq!(started.elapsed().as_secs(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn service_manager_sees_reloading_ready_and_stopping() {
        let notifier = Notifier::recording(Some(Duration::from_secs(20)));
        let sup = Supervisor::with_notifier(notifier.clone());
        let mut reloads = sup.reloads();
        notifier.ready("ready");
        let (tx, rx) = mpsc::channel(4);
        let run = tokio::spawn(sup.run(rx, Duration::from_secs(7)));
        tokio::time::sleep(Duration::from_secs(25)).await;
        tx.send(Signal::Reload).await.unwrap();
        reloads.changed().await.unwrap();
        tx.send(Signal::Terminate).await.unwrap();
        assert_eq!(run.await.unwrap(), Shutdown::Clean);
        let got = notifier.recorded();
        let pos = |pred: &dyn Fn(&String) -> bool| got.iter().position(pred);
        let first_ping =
            pos(&|d| d == "WATCHDOG=1").expect("the supervisor loop keeps the pings going");
        let reloading = pos(&|d| d.starts_with("RELOADING=1\nMONOTONIC_USEC=")).expect("RELOADING");
        // The second READY (the first is the test's own), carrying the mode from before.
        let reready = got
            .iter()
            .enumerate()
            .filter(|(_, d)| *d == "READY=1\nSTATUS=ready")
            .nth(1)
            .map(|(i, _)| i)
            .expect("READY with the mode from before, after the reload");
        let stopping = pos(&|d| d.starts_with("STOPPING=1")).expect("STOPPING");
        let extend = pos(&|d| d == "EXTEND_TIMEOUT_USEC=12000000").expect("EXTEND_TIMEOUT_USEC");
        assert!(
            first_ping < reloading
                && reloading < reready
                && reready < stopping
                && stopping < extend,
            "{got:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_drains_as_a_reload_not_a_stop() {
        let notifier = Notifier::recording(None);
        let sup = Supervisor::with_notifier(notifier.clone());
        let (tx, rx) = mpsc::channel(4);
        tx.send(Signal::Restart).await.unwrap();
        assert_eq!(sup.run(rx, Duration::from_secs(3)).await, Shutdown::Clean);
        let got = notifier.recorded();
        assert!(got.iter().any(|d| d.starts_with("RELOADING=1")), "{got:?}");
        assert!(!got.iter().any(|d| d.starts_with("STOPPING=1")), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn second_terminate_forces_exit() {
        let sup = Supervisor::new();
        sup.spawn(Stage::Intake, std::future::pending());
        let (tx, rx) = mpsc::channel(4);
        tx.send(Signal::Terminate).await.unwrap();
        tx.send(Signal::Terminate).await.unwrap();
        assert_eq!(
            sup.run(rx, Duration::from_secs(3600)).await,
            Shutdown::Forced
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reload_signals_bump_the_generation_and_do_not_stop() {
        let sup = Supervisor::new();
        let mut reloads = sup.reloads();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let token = sup.token(Stage::Pipeline);
        sup.spawn(Stage::Pipeline, async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    changed = reloads.changed() => {
                        changed.unwrap();
                        s.store(usize::try_from(*reloads.borrow()).unwrap(), Ordering::SeqCst);
                    }
                }
            }
        });
        let (tx, rx) = mpsc::channel(4);
        let run = tokio::spawn(sup.run(rx, Duration::from_secs(5)));
        tx.send(Signal::Reload).await.unwrap();
        tx.send(Signal::Reload).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        assert!(!run.is_finished());
        tx.send(Signal::Terminate).await.unwrap();
        assert_eq!(run.await.unwrap(), Shutdown::Clean);
    }
}
