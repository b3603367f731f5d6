//! A status LED through the kernel LED class (`/sys/class/leds/<name>/{brightness,trigger}`),
//! read through the injectable [`SysRoot`] so tests use a fake tree. Off by default: the LED
//! names differ per board (`ACT`, `led0`, `green:status`), and the default triggers are useful.

use std::path::PathBuf;

use crate::identity::SysRoot;

#[derive(Debug, thiserror::Error)]
pub enum LedError {
    #[error("LED name `{0}` is not a plain name under /sys/class/leds")]
    BadName(String),
    #[error("LED {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An LED that can be switched on and off.
pub trait Led: Send {
    fn set(&mut self, on: bool) -> Result<(), LedError>;
}

/// A kernel LED class device.
#[derive(Debug)]
pub struct SysfsLed {
    dir: PathBuf,
    max: String,
}

impl SysfsLed {
    /// Takes control of `/sys/class/leds/<name>`: sets its trigger to `none` so the kernel stops
    /// driving it.
    pub fn open(root: &SysRoot, name: &str) -> Result<Self, LedError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(LedError::BadName(name.to_owned()));
        }
        let dir = root.join("/sys/class/leds").join(name);
        let io = |path: PathBuf| move |source| LedError::Io { path, source };
        let max_path = dir.join("max_brightness");
        let max = std::fs::read_to_string(&max_path)
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| s.parse::<u32>().is_ok_and(|n| n > 0))
            .unwrap_or_else(|| "1".to_owned());
        let trigger = dir.join("trigger");
        std::fs::write(&trigger, "none").map_err(io(trigger))?;
        Ok(Self { dir, max })
    }

    /// Hands the LED back to a kernel trigger (e.g. `heartbeat`, `mmc0`).
    pub fn set_trigger(&mut self, trigger: &str) -> Result<(), LedError> {
        let path = self.dir.join("trigger");
        std::fs::write(&path, trigger).map_err(|source| LedError::Io { path, source })
    }
}

impl Led for SysfsLed {
    fn set(&mut self, on: bool) -> Result<(), LedError> {
        let path = self.dir.join("brightness");
        let value = if on { self.max.as_str() } else { "0" };
        std::fs::write(&path, value).map_err(|source| LedError::Io { path, source })
    }
}

/// Records LED states for tests.
#[derive(Debug, Default, Clone)]
pub struct FakeLed {
    states: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
}

impl FakeLed {
    pub fn states(&self) -> Vec<bool> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Led for FakeLed {
    fn set(&mut self, on: bool) -> Result<(), LedError> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(on);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_led(root: &std::path::Path, name: &str, max: &str) {
        let dir = root.join("sys/class/leds").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trigger"), "[mmc0] none heartbeat").unwrap();
        std::fs::write(dir.join("brightness"), "0").unwrap();
        std::fs::write(dir.join("max_brightness"), max).unwrap();
    }

    #[test]
    fn sysfs_led_takes_the_trigger_and_switches_brightness() {
        let dir = tempfile::tempdir().unwrap();
        fake_led(dir.path(), "ACT", "255\n");
        let base = dir.path().join("sys/class/leds/ACT");
        let mut led = SysfsLed::open(&SysRoot::at(dir.path()), "ACT").unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("trigger")).unwrap(),
            "none"
        );
        led.set(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("brightness")).unwrap(),
            "255"
        );
        led.set(false).unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("brightness")).unwrap(),
            "0"
        );
        led.set_trigger("heartbeat").unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("trigger")).unwrap(),
            "heartbeat"
        );
    }

    #[test]
    fn missing_led_and_path_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::at(dir.path());
        assert!(matches!(
            SysfsLed::open(&root, "ACT"),
            Err(LedError::Io { .. })
        ));
        for bad in ["", "..", "../../etc", "a/b"] {
            assert!(matches!(
                SysfsLed::open(&root, bad),
                Err(LedError::BadName(_))
            ));
        }
    }

    #[test]
    fn fake_led_records() {
        let fake = FakeLed::default();
        let mut led: Box<dyn Led> = Box::new(fake.clone());
        led.set(true).unwrap();
        led.set(false).unwrap();
        assert_eq!(fake.states(), vec![true, false]);
    }
}
