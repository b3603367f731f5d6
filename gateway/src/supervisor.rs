//! The supervisor: owns every long-running task, restarts failed adapter tasks with backoff,
//! forwards SIGHUP as a reload generation, and shuts down in order.
//!
//! Tasks run in one of two stages. Shutdown: stop the **intake** stage (adapters stop
//! accepting), wait for it, then cancel the **pipeline** stage (outbox and uplink flush and
//! disconnect), all within the drain deadline. A second SIGTERM during the drain ends it at once.
//! Nothing is lost by a deadline or a forced exit: acknowledged messages are already durable.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

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

/// Restart policy for a supervised task: exponential from `initial` to `max`, reset once a run
/// lasted `healthy_after`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
        }
    }
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
        }
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

    /// Runs a task built by `make` in `stage`, restarting it with `backoff` whenever it fails,
    /// panics or returns while the stage is still running.
    pub fn spawn_restarting<F, Fut>(
        &self,
        stage: Stage,
        name: &'static str,
        backoff: Backoff,
        mut make: F,
    ) where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.token(stage);
        self.group(stage).tracker.spawn(async move {
            let mut delay = backoff.initial;
            loop {
                let started = Instant::now();
                // A separate task, so a panic inside it is caught here as a JoinError.
                let outcome = tokio::spawn(make(token.clone())).await;
                if token.is_cancelled() {
                    if let Ok(Err(e)) = outcome {
                        warn!(task = name, "stopped with an error during shutdown: {e:#}");
                    }
                    break;
                }
                match outcome {
                    Ok(Ok(())) => warn!(task = name, "stopped unexpectedly"),
                    Ok(Err(e)) => error!(task = name, "failed: {e:#}"),
                    Err(e) if e.is_panic() => error!(task = name, "panicked"),
                    Err(e) => error!(task = name, "ended: {e}"),
                }
                if started.elapsed() >= backoff.healthy_after {
                    delay = backoff.initial;
                }
                info!(task = name, "restarting in {delay:?}");
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(backoff.max);
            }
        });
    }

    /// Serves until a terminate signal (or the signal source closes), answering reload signals
    /// on the way, then shuts down in order within `drain`.
    pub async fn run(self, mut signals: mpsc::Receiver<Signal>, drain: Duration) -> Shutdown {
        while let Some(Signal::Reload) = signals.recv().await {
            info!("reload requested (SIGHUP)");
            self.reload.send_modify(|generation| *generation += 1);
        }
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
                    Some(Signal::Reload) => {}
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

    use super::*;

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            healthy_after: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_and_panicking_tasks_are_restarted_with_growing_backoff() {
        let sup = Supervisor::new();
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = starts.clone();
        sup.spawn_restarting(Stage::Intake, "flaky", fast(), move |_token| {
            let record = record.clone();
            async move {
                let n = {
                    let mut starts = record.lock().unwrap();
                    starts.push(Instant::now());
                    starts.len()
                };
                match n {
                    1 => anyhow::bail!("first run fails"),
                    2 => panic!("second run panics"),
                    3 | 4 => Ok(()),
                    _ => std::future::pending().await,
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 5, "expected 5 starts, got {}", starts.len());
        let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, vec![1, 2, 4, 4], "backoff doubles and caps at max");
    }

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
