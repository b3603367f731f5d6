//! The hardware watchdog (`/dev/watchdog`): once opened, the board reboots unless it is kicked
//! within the driver's timeout. Closing it cleanly requires the "magic close" (writing `V`
//! first); a crash without it leaves the watchdog armed, which is the point.
//!
//! Off by default: on most systems systemd already owns the hardware watchdog
//! (`RuntimeWatchdogSec=`), and the device can be opened only once.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("watchdog {path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("watchdog {path}: write failed: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A watchdog that must be kicked regularly.
pub trait Watchdog: Send {
    /// Resets the countdown.
    fn kick(&mut self) -> Result<(), WatchdogError>;
    /// Magic close: tells the driver the stop is intended, then closes.
    fn disarm(self: Box<Self>) -> Result<(), WatchdogError>;
}

/// `/dev/watchdog` (or another watchdog device node).
#[derive(Debug)]
pub struct DeviceWatchdog {
    file: File,
    path: PathBuf,
}

impl DeviceWatchdog {
    /// Opens (and thereby arms) the watchdog.
    pub fn open(path: &Path) -> Result<Self, WatchdogError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| WatchdogError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    fn write(&mut self, byte: u8) -> Result<(), WatchdogError> {
        self.file
            .write_all(&[byte])
            .and_then(|()| self.file.flush())
            .map_err(|source| WatchdogError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

impl Watchdog for DeviceWatchdog {
    fn kick(&mut self) -> Result<(), WatchdogError> {
        // Any byte other than 'V' is a keep-alive.
        self.write(b'\0')
    }

    fn disarm(mut self: Box<Self>) -> Result<(), WatchdogError> {
        self.write(b'V')
    }
}

/// What a [`FakeWatchdog`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeWatchdogLog {
    pub kicks: usize,
    pub disarmed: bool,
}

/// Records kicks for tests.
#[derive(Debug, Default, Clone)]
pub struct FakeWatchdog {
    log: Arc<Mutex<FakeWatchdogLog>>,
}

impl FakeWatchdog {
    pub fn log(&self) -> FakeWatchdogLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Watchdog for FakeWatchdog {
    fn kick(&mut self) -> Result<(), WatchdogError> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).kicks += 1;
        Ok(())
    }

    fn disarm(self: Box<Self>) -> Result<(), WatchdogError> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).disarmed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_watchdog_writes_keepalives_then_the_magic_close() {
        // A regular file stands in for the device node: the bytes written are the protocol.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watchdog");
        std::fs::write(&path, "").unwrap();
        let mut wd = Box::new(DeviceWatchdog::open(&path).unwrap());
        wd.kick().unwrap();
        wd.kick().unwrap();
        wd.disarm().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
    }

    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = DeviceWatchdog::open(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn fake_watchdog_counts() {
        let fake = FakeWatchdog::default();
        let mut wd: Box<dyn Watchdog> = Box::new(fake.clone());
        wd.kick().unwrap();
        assert_eq!(fake.log().kicks, 1);
        wd.disarm().unwrap();
        assert!(fake.log().disarmed);
    }
}
