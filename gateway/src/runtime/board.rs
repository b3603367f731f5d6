//! The board the gateway runs on: the optional hardware watchdog and status LED (`[board]`, both off by default). Device access itself is
//! in `hal`; this module only decides when to kick and what the LED shows.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use hal::identity::SysRoot;
use hal::led::{Led, SysfsLed};
use hal::watchdog::{DeviceWatchdog, Watchdog};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BoardConfig, ConfigFileError};

/// The watchdog and LED, as started by [`start`]; [`Board::stop`] disarms and switches off.
#[derive(Debug)]
pub struct Board {
    alive: Option<std_mpsc::SyncSender<()>>,
    kicker: Option<std::thread::JoinHandle<()>>,
    led: Option<SysfsLed>,
}

/// Opens what `[board]` enables. A configured device that cannot be opened stops the daemon
/// (exit 78): a watchdog the operator asked for must not silently be missing.
pub fn start(config: &BoardConfig, root: &SysRoot) -> Result<Board, ConfigFileError> {
    let mut board = Board {
        alive: None,
        kicker: None,
        led: None,
    };
    if let Some(path) = &config.watchdog_device {
        let wd = DeviceWatchdog::open(path).map_err(|e| ConfigFileError {
            what: "watchdog device",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = std_mpsc::sync_channel(1);
        let kicker = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || kick_loop(Box::new(wd), &rx))
            .map_err(|e| ConfigFileError {
                what: "watchdog device",
                path: path.display().to_string(),
                reason: format!("cannot start its thread: {e}"),
            })?;
        info!(device = %path.display(), "hardware watchdog armed");
        board.alive = Some(tx);
        board.kicker = Some(kicker);
    }
    if let Some(name) = &config.status_led {
        let mut led = SysfsLed::open(root, name).map_err(|e| ConfigFileError {
            what: "status LED",
            path: root
                .join("/sys/class/leds")
                .join(name)
                .display()
                .to_string(),
            reason: e.to_string(),
        })?;
        if let Err(e) = led.set(true) {
            warn!("status LED: {e}");
        }
        board.led = Some(led);
    }
    Ok(board)
}

/// Kicks once per "alive" from the runtime; the channel closing means a clean stop.
fn kick_loop(mut wd: Box<dyn Watchdog>, alive: &std_mpsc::Receiver<()>) {
    while alive.recv().is_ok() {
        if let Err(e) = wd.kick() {
            warn!("hardware watchdog: {e}");
        }
    }
    match wd.disarm() {
        Ok(()) => info!("hardware watchdog disarmed"),
        Err(e) => warn!("hardware watchdog: {e}"),
    }
}

impl Board {
    /// The async heartbeat: every `interval`, proves the runtime is alive to the kicker
    /// thread. If the runtime stalls, the kicks stop and the board resets.
    pub fn heartbeat(
        &self,
        interval: Duration,
        cancel: CancellationToken,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let alive = self.alive.clone()?;
        Some(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => {
                        // Full means a kick is already pending: nothing to add.
                        let _ = alive.try_send(());
                    }
                }
            }
        })
    }

    /// Clean stop: magic close of the watchdog, LED off.
    pub fn stop(mut self) {
        self.alive = None;
        if let Some(kicker) = self.kicker.take()
            && kicker.join().is_err()
        {
            warn!("watchdog thread panicked");
        }
        if let Some(led) = self.led.as_mut()
            && let Err(e) = led.set(false)
        {
            warn!("status LED: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::Duration as ConfigDuration;

    #[tokio::test(start_paused = true)]
    async fn watchdog_is_kicked_by_the_heartbeat_and_magic_closed_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let wd = root.join("watchdog");
        std::fs::write(&wd, "").unwrap();
        let led_dir = root.join("sys/class/leds/ACT");
        std::fs::create_dir_all(&led_dir).unwrap();
        std::fs::write(led_dir.join("trigger"), "mmc0").unwrap();
        std::fs::write(led_dir.join("brightness"), "0").unwrap();
        let config = BoardConfig {
            watchdog_device: Some(wd.clone()),
            watchdog_interval: ConfigDuration::from_secs(5),
            status_led: Some("ACT".into()),
        };
        let board = start(&config, &SysRoot::at(root)).unwrap();
        assert_eq!(
            std::fs::read_to_string(led_dir.join("brightness")).unwrap(),
            "1"
        );
        let cancel = CancellationToken::new();
        let beat = tokio::spawn(
            board
                .heartbeat(Duration::from_secs(5), cancel.clone())
                .unwrap(),
        );
        // Virtual time: ticks at 0, 5 and 10 s. Each either queues a kick or finds one queued.
        tokio::time::sleep(Duration::from_secs(12)).await;
        cancel.cancel();
        beat.await.unwrap();
        // Joins the kicker, which handles the queued kick before it sees the channel close.
        board.stop();
        let written = std::fs::read(&wd).unwrap();
        assert_eq!(written.last(), Some(&b'V'), "magic close last: {written:?}");
        assert!(written.len() >= 2, "at least one kick: {written:?}");
        assert!(written[..written.len() - 1].iter().all(|&b| b == 0));
        assert_eq!(
            std::fs::read_to_string(led_dir.join("brightness")).unwrap(),
            "0"
        );
    }

    #[test]
    fn a_configured_but_missing_watchdog_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = BoardConfig {
            watchdog_device: Some(dir.path().join("watchdog")),
            watchdog_interval: ConfigDuration::from_secs(5),
            status_led: None,
        };
        let err = start(&config, &SysRoot::at(dir.path())).unwrap_err();
        assert!(err.to_string().contains("watchdog"), "{err}");
    }
}
