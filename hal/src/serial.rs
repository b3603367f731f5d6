//! Serial ports: validated line settings, a blocking [`SerialPort`] trait with read/write
//! timeouts, the Linux implementation on `serialport` (no libudev), and a fake for tests.
//!
//! Stable names: a configured path such as `/dev/serial/by-id/usb-FTDI_…-if00-port0` is a
//! symlink maintained by udev; it is resolved at every open, so a device that re-enumerates as
//! another `/dev/ttyUSBn` after a replug is found again. Nothing here knows about protocols.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Why a port cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial port {path}: no such device")]
    NotFound { path: PathBuf },
    #[error("serial port {path}: permission denied (is the daemon in the `dialout` group?)")]
    PermissionDenied { path: PathBuf },
    #[error("serial port {path}: cannot open: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("serial port {name}: device disconnected")]
    Disconnected { name: String },
    #[error("serial port {name}: I/O error: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    #[error("invalid serial setting: {0}")]
    InvalidSetting(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataBits {
    Five,
    Six,
    Seven,
    Eight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBits {
    One,
    Two,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

impl DataBits {
    pub fn from_number(n: u8) -> Result<Self, SerialError> {
        match n {
            5 => Ok(Self::Five),
            6 => Ok(Self::Six),
            7 => Ok(Self::Seven),
            8 => Ok(Self::Eight),
            _ => Err(SerialError::InvalidSetting(format!(
                "data bits {n}: must be 5, 6, 7 or 8"
            ))),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Self::Five => 5,
            Self::Six => 6,
            Self::Seven => 7,
            Self::Eight => 8,
        }
    }
}

impl StopBits {
    pub fn from_number(n: u8) -> Result<Self, SerialError> {
        match n {
            1 => Ok(Self::One),
            2 => Ok(Self::Two),
            _ => Err(SerialError::InvalidSetting(format!(
                "stop bits {n}: must be 1 or 2"
            ))),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Self::One => 1,
            Self::Two => 2,
        }
    }
}

impl FromStr for Parity {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, SerialError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "n" => Ok(Self::None),
            "odd" | "o" => Ok(Self::Odd),
            "even" | "e" => Ok(Self::Even),
            other => Err(SerialError::InvalidSetting(format!(
                "parity `{other}`: must be none, odd or even"
            ))),
        }
    }
}

impl fmt::Display for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Odd => "odd",
            Self::Even => "even",
        })
    }
}

impl FromStr for FlowControl {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, SerialError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "software" | "xonxoff" => Ok(Self::Software),
            "hardware" | "rtscts" => Ok(Self::Hardware),
            other => Err(SerialError::InvalidSetting(format!(
                "flow control `{other}`: must be none, software or hardware"
            ))),
        }
    }
}

impl fmt::Display for FlowControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Software => "software",
            Self::Hardware => "hardware",
        })
    }
}

/// Line settings of a port. Build with [`SerialSettings::new`], which validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialSettings {
    baud: u32,
    pub data_bits: DataBits,
    pub parity: Parity,
    pub stop_bits: StopBits,
    pub flow_control: FlowControl,
    /// How long one `read` waits for data before returning `Ok(0)`, and one `write` may block.
    pub timeout: Duration,
}

/// Slowest and fastest rates accepted: below 50 is not a UART, above 4 Mbaud no Pi-class UART
/// or USB bridge goes.
pub const BAUD_RANGE: std::ops::RangeInclusive<u32> = 50..=4_000_000;

impl SerialSettings {
    /// 8N1 without flow control at `baud`, 200 ms timeout.
    pub fn new(baud: u32) -> Result<Self, SerialError> {
        if !BAUD_RANGE.contains(&baud) {
            return Err(SerialError::InvalidSetting(format!(
                "baud {baud}: must be between {} and {}",
                BAUD_RANGE.start(),
                BAUD_RANGE.end()
            )));
        }
        Ok(Self {
            baud,
            data_bits: DataBits::Eight,
            parity: Parity::None,
            stop_bits: StopBits::One,
            flow_control: FlowControl::None,
            timeout: Duration::from_millis(200),
        })
    }

    pub fn baud(&self) -> u32 {
        self.baud
    }
}

/// An open serial port. Blocking, with the timeouts of its settings.
pub trait SerialPort: Send {
    /// Reads what is available. `Ok(0)` means the timeout passed with no data; a device that
    /// went away is `Err(SerialError::Disconnected)`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SerialError>;
    /// Writes all of `data` (each chunk within the timeout).
    fn write_all(&mut self, data: &[u8]) -> Result<(), SerialError>;
    /// The device actually opened (the by-id symlink resolved).
    fn device(&self) -> &Path;
    /// A second handle on the same open port, so one thread can write while another blocks
    /// in `read`.
    fn try_clone(&self) -> Result<Box<dyn SerialPort>, SerialError>;
}

/// Opens ports: the Linux implementation, or a fake.
pub trait SerialOpener: Send + Sync {
    fn open(
        &self,
        path: &Path,
        settings: &SerialSettings,
    ) -> Result<Box<dyn SerialPort>, SerialError>;
}

/// Resolves symlinks (`/dev/serial/by-id/…`) to the device node, now.
pub fn resolve(path: &Path) -> Result<PathBuf, SerialError> {
    std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SerialError::NotFound {
            path: path.to_owned(),
        },
        std::io::ErrorKind::PermissionDenied => SerialError::PermissionDenied {
            path: path.to_owned(),
        },
        _ => SerialError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

/// Real ports through the `serialport` crate (termios; exclusive open).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxSerial;

impl SerialOpener for LinuxSerial {
    fn open(
        &self,
        path: &Path,
        settings: &SerialSettings,
    ) -> Result<Box<dyn SerialPort>, SerialError> {
        let device = resolve(path)?;
        let port = serialport::new(device.to_string_lossy(), settings.baud)
            .data_bits(match settings.data_bits {
                DataBits::Five => serialport::DataBits::Five,
                DataBits::Six => serialport::DataBits::Six,
                DataBits::Seven => serialport::DataBits::Seven,
                DataBits::Eight => serialport::DataBits::Eight,
            })
            .parity(match settings.parity {
                Parity::None => serialport::Parity::None,
                Parity::Odd => serialport::Parity::Odd,
                Parity::Even => serialport::Parity::Even,
            })
            .stop_bits(match settings.stop_bits {
                StopBits::One => serialport::StopBits::One,
                StopBits::Two => serialport::StopBits::Two,
            })
            .flow_control(match settings.flow_control {
                FlowControl::None => serialport::FlowControl::None,
                FlowControl::Software => serialport::FlowControl::Software,
                FlowControl::Hardware => serialport::FlowControl::Hardware,
            })
            .timeout(settings.timeout)
            .open_native()
            .map_err(|e| match e.kind() {
                serialport::ErrorKind::NoDevice => SerialError::NotFound {
                    path: path.to_owned(),
                },
                serialport::ErrorKind::Io(std::io::ErrorKind::NotFound) => SerialError::NotFound {
                    path: path.to_owned(),
                },
                serialport::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
                    SerialError::PermissionDenied {
                        path: path.to_owned(),
                    }
                }
                _ => SerialError::Open {
                    path: path.to_owned(),
                    reason: e.to_string(),
                },
            })?;
        let name = device.display().to_string();
        Ok(Box::new(LinuxPort { port, device, name }))
    }
}

struct LinuxPort {
    port: serialport::TTYPort,
    device: PathBuf,
    name: String,
}

impl SerialPort for LinuxPort {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SerialError> {
        match self.port.read(buf) {
            // A tty read of 0 after poll said readable: the other end is gone.
            Ok(0) if !buf.is_empty() => Err(SerialError::Disconnected {
                name: self.name.clone(),
            }),
            Ok(n) => Ok(n),
            Err(e) => match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted => Ok(0),
                std::io::ErrorKind::WouldBlock => Ok(0),
                // POLLHUP (BrokenPipe), EIO after a USB unplug or pty close, ENXIO, ENODEV.
                _ => Err(SerialError::Disconnected {
                    name: self.name.clone(),
                }),
            },
        }
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), SerialError> {
        self.port.write_all(data).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => SerialError::Io {
                name: self.name.clone(),
                source: e,
            },
            _ => SerialError::Disconnected {
                name: self.name.clone(),
            },
        })
    }

    fn device(&self) -> &Path {
        &self.device
    }

    fn try_clone(&self) -> Result<Box<dyn SerialPort>, SerialError> {
        let port = self.port.try_clone_native().map_err(|e| SerialError::Io {
            name: self.name.clone(),
            source: e.into(),
        })?;
        Ok(Box::new(LinuxPort {
            port,
            device: self.device.clone(),
            name: self.name.clone(),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Fake

#[derive(Debug, Default)]
struct FakeState {
    /// Bytes the device sent, waiting for the port to read.
    to_port: VecDeque<u8>,
    /// Bytes the port wrote.
    from_port: Vec<u8>,
    plugged: bool,
    /// Bumped by every unplug: handles opened before it stay dead, like a real fd.
    generation: u64,
    /// How many times the port was opened.
    opens: usize,
}

#[derive(Debug, Default)]
struct FakeShared {
    state: Mutex<FakeState>,
    changed: Condvar,
}

impl FakeShared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fake serial device for tests: the test holds the `FakeDevice`, the code under test opens
/// it through [`FakeDevice::opener`]. Unplugging makes reads fail with `Disconnected` and opens
/// fail with `NotFound` until it is plugged again.
#[derive(Debug, Clone)]
pub struct FakeDevice {
    shared: Arc<FakeShared>,
    path: PathBuf,
}

impl FakeDevice {
    /// A plugged-in fake device at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let shared = Arc::new(FakeShared::default());
        shared.lock().plugged = true;
        Self {
            shared,
            path: path.into(),
        }
    }

    /// An opener that knows only this device.
    pub fn opener(&self) -> FakeOpener {
        FakeOpener {
            devices: vec![self.clone()],
        }
    }

    /// The device sends bytes to the port.
    pub fn send(&self, bytes: &[u8]) {
        self.shared.lock().to_port.extend(bytes);
        self.shared.changed.notify_all();
    }

    /// Takes everything the port wrote so far.
    pub fn take_written(&self) -> Vec<u8> {
        std::mem::take(&mut self.shared.lock().from_port)
    }

    /// Waits until the port has written a complete line (`\n`), up to `timeout`; returns it
    /// without the newline.
    pub fn wait_line(&self, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(pos) = state.from_port.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = state.from_port.drain(..=pos).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn unplug(&self) {
        let mut state = self.shared.lock();
        state.plugged = false;
        state.generation += 1;
        state.to_port.clear();
        drop(state);
        self.shared.changed.notify_all();
    }

    pub fn plug(&self) {
        self.shared.lock().plugged = true;
        self.shared.changed.notify_all();
    }

    /// How many times the port was opened.
    pub fn opens(&self) -> usize {
        self.shared.lock().opens
    }

    /// Waits until the port has been opened at least `n` times.
    pub fn wait_opens(&self, n: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.opens < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Opens [`FakeDevice`]s by path.
#[derive(Debug, Clone, Default)]
pub struct FakeOpener {
    devices: Vec<FakeDevice>,
}

impl FakeOpener {
    pub fn with(mut self, device: &FakeDevice) -> Self {
        self.devices.push(device.clone());
        self
    }
}

impl SerialOpener for FakeOpener {
    fn open(
        &self,
        path: &Path,
        settings: &SerialSettings,
    ) -> Result<Box<dyn SerialPort>, SerialError> {
        let device = self
            .devices
            .iter()
            .find(|d| d.path == path)
            .ok_or_else(|| SerialError::NotFound {
                path: path.to_owned(),
            })?;
        let mut state = device.shared.lock();
        if !state.plugged {
            return Err(SerialError::NotFound {
                path: path.to_owned(),
            });
        }
        state.opens += 1;
        let generation = state.generation;
        drop(state);
        device.shared.changed.notify_all();
        Ok(Box::new(FakePort {
            shared: Arc::clone(&device.shared),
            path: path.to_owned(),
            timeout: settings.timeout,
            generation,
        }))
    }
}

struct FakePort {
    shared: Arc<FakeShared>,
    path: PathBuf,
    timeout: Duration,
    generation: u64,
}

impl FakePort {
    fn alive(&self, state: &FakeState) -> bool {
        state.plugged && state.generation == self.generation
    }
}

impl SerialPort for FakePort {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SerialError> {
        let deadline = std::time::Instant::now() + self.timeout;
        let mut state = self.shared.lock();
        loop {
            if !self.alive(&state) {
                return Err(SerialError::Disconnected {
                    name: self.path.display().to_string(),
                });
            }
            if !state.to_port.is_empty() {
                let n = buf.len().min(state.to_port.len());
                for (slot, byte) in buf.iter_mut().zip(state.to_port.drain(..n)) {
                    *slot = byte;
                }
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(0);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), SerialError> {
        let mut state = self.shared.lock();
        if !self.alive(&state) {
            return Err(SerialError::Disconnected {
                name: self.path.display().to_string(),
            });
        }
        state.from_port.extend_from_slice(data);
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn device(&self) -> &Path {
        &self.path
    }

    fn try_clone(&self) -> Result<Box<dyn SerialPort>, SerialError> {
        Ok(Box::new(FakePort {
            shared: Arc::clone(&self.shared),
            path: self.path.clone(),
            timeout: self.timeout,
            generation: self.generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        assert!(SerialSettings::new(115_200).is_ok());
        assert!(SerialSettings::new(0).is_err());
        assert!(SerialSettings::new(10_000_000).is_err());
        assert!(DataBits::from_number(9).is_err());
        assert_eq!(DataBits::from_number(7).unwrap().number(), 7);
        assert!(StopBits::from_number(3).is_err());
        assert_eq!("EVEN".parse::<Parity>().unwrap(), Parity::Even);
        assert!("mark".parse::<Parity>().is_err());
        assert_eq!(
            "rtscts".parse::<FlowControl>().unwrap(),
            FlowControl::Hardware
        );
        assert!("magic".parse::<FlowControl>().is_err());
    }

    #[test]
    fn by_id_symlinks_resolve_to_the_device_at_open_time() {
        let dir = tempfile::tempdir().unwrap();
        let by_id = dir.path().join("by-id");
        std::fs::create_dir(&by_id).unwrap();
        std::fs::write(dir.path().join("ttyUSB0"), "").unwrap();
        std::fs::write(dir.path().join("ttyUSB1"), "").unwrap();
        let link = by_id.join("usb-FTDI_FT232R-if00-port0");
        std::os::unix::fs::symlink("../ttyUSB0", &link).unwrap();
        assert!(resolve(&link).unwrap().ends_with("ttyUSB0"));
        // Replugged: udev points the link at the new node.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("../ttyUSB1", &link).unwrap();
        assert!(resolve(&link).unwrap().ends_with("ttyUSB1"));
        std::fs::remove_file(&link).unwrap();
        assert!(matches!(resolve(&link), Err(SerialError::NotFound { .. })));
    }

    #[test]
    fn linux_open_of_a_missing_device_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SerialSettings::new(9600).unwrap();
        let err = LinuxSerial
            .open(&dir.path().join("ttyNOPE"), &settings)
            .err()
            .unwrap();
        assert!(matches!(err, SerialError::NotFound { .. }), "{err}");
    }

    #[test]
    fn fake_port_reads_writes_times_out_and_unplugs() {
        let dev = FakeDevice::new("/dev/ttyFAKE0");
        let opener = dev.opener();
        let mut settings = SerialSettings::new(9600).unwrap();
        settings.timeout = Duration::from_millis(10);
        let mut port = opener.open(Path::new("/dev/ttyFAKE0"), &settings).unwrap();
        assert_eq!(dev.opens(), 1);
        let mut buf = [0u8; 4];
        assert_eq!(port.read(&mut buf).unwrap(), 0, "timeout reads nothing");
        dev.send(b"hello");
        assert_eq!(port.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"hell");
        assert_eq!(port.read(&mut buf).unwrap(), 1);
        port.try_clone().unwrap().write_all(b"OK 1\n").unwrap();
        assert_eq!(
            dev.wait_line(Duration::from_secs(1)).as_deref(),
            Some("OK 1")
        );
        dev.unplug();
        assert!(matches!(
            port.read(&mut buf),
            Err(SerialError::Disconnected { .. })
        ));
        assert!(opener.open(Path::new("/dev/ttyFAKE0"), &settings).is_err());
        dev.plug();
        assert!(
            port.write_all(b"x").is_err(),
            "a handle from before the unplug stays dead"
        );
        assert!(opener.open(Path::new("/dev/ttyFAKE0"), &settings).is_ok());
        assert_eq!(dev.opens(), 2);
        assert!(opener.open(Path::new("/dev/ttyOTHER"), &settings).is_err());
    }
}
