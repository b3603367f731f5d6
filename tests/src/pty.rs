//! A serial sensor simulated on a pty pair: the test keeps the master, the daemon opens the
//! slave through a symlink.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serialport::{SerialPort as _, TTYPort};

/// How long [`Sensor::line`] waits for an answer.
pub const WAIT: Duration = Duration::from_secs(20);

/// Held while a pty master exists without close-on-exec, so no daemon started by a parallel
/// test inherits it (an inherited master keeps the pty "plugged in" after the test drops it).
/// Hold it while starting a daemon too.
pub static FORK_LOCK: Mutex<()> = Mutex::new(());

/// The sensor's end of a pty pair.
#[derive(Debug)]
pub struct Sensor {
    master: TTYPort,
    buf: Vec<u8>,
}

impl Sensor {
    /// A new pty pair; `link` is (re)pointed at its slave side.
    pub fn plug_in(link: &Path) -> Self {
        let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let (mut master, slave) = TTYPort::pair().expect("cannot open a pty pair");
        // SAFETY: fcntl on an fd this process owns; no memory is involved.
        let rc = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        assert_eq!(rc, 0, "cannot set FD_CLOEXEC on the pty master");
        drop(guard);
        let name = slave.name().expect("pty slave has a name");
        // The daemon opens the slave by path; the test keeps only the master.
        drop(slave);
        master
            .set_timeout(Duration::from_millis(100))
            .expect("pty timeout");
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).expect("symlink");
        std::fs::rename(&tmp, link).expect("rename symlink");
        Self {
            master,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes to the daemon.
    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to pty");
    }

    /// The next line from the daemon (without the newline); panics after [`WAIT`].
    pub fn line(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return String::from_utf8_lossy(&line[..pos]).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no answer within {WAIT:?}; got so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            let mut chunk = [0u8; 256];
            match self.master.read(&mut chunk) {
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("pty read failed: {e}"),
            }
        }
    }

    /// The next line from the daemon within `wait`, or `None`.
    pub fn line_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 256];
            match self.master.read(&mut chunk) {
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("pty read failed: {e}"),
            }
        }
    }

    /// Sends one line and returns the answer.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.line()
    }
}

/// Writes `<dir>/serial.toml`: one serial port behind each of `links` (reopened quickly after
/// an unplug), for `edgegw --config`. Returns its path.
pub fn port_config(dir: &Path, links: &[&Path]) -> std::path::PathBuf {
    let config = dir.join("serial.toml");
    let mut text = String::from("[serial]\nreopen_min = \"100ms\"\nreopen_max = \"200ms\"\n");
    for link in links {
        text.push_str(&format!(
            "[[serial.ports]]\npath = \"{}\"\nbaud = 115200\n",
            link.display()
        ));
    }
    std::fs::write(&config, text).expect("write serial config");
    config
}
