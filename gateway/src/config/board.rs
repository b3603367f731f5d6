//! `[board]`: the optional hardware watchdog and status LED. Both off by default: systemd
//! usually owns `/dev/watchdog` (`RuntimeWatchdogSec=`), and LED names differ per board.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Check;
use super::value::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBoard {
    watchdog_device: Option<PathBuf>,
    watchdog_interval: Option<Duration>,
    status_led: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoardConfig {
    /// Hardware watchdog device to arm (e.g. `/dev/watchdog`); unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog_device: Option<PathBuf>,
    /// How often the watchdog is kicked while the daemon's runtime makes progress.
    pub watchdog_interval: Duration,
    /// LED under `/sys/class/leds` switched on while the daemon runs (e.g. `ACT`); unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_led: Option<String>,
}

impl RawBoard {
    pub fn validate(self, check: &mut Check<'_>) -> BoardConfig {
        let watchdog_device = self.watchdog_device.filter(|p| !p.as_os_str().is_empty());
        let watchdog_interval = self.watchdog_interval.unwrap_or(Duration::from_secs(5));
        if watchdog_interval.get().is_zero() {
            check.invalid("board.watchdog_interval", "must be more than 0s");
        }
        let status_led = self.status_led.filter(|s| !s.is_empty());
        if let Some(name) = &status_led
            && (name.contains('/') || name == "." || name == "..")
        {
            check.invalid(
                "board.status_led",
                format!("`{name}` must be a name under /sys/class/leds, not a path"),
            );
        }
        BoardConfig {
            watchdog_device,
            watchdog_interval,
            status_led,
        }
    }
}
