//! The control socket (`<runtime_dir>/control.sock`, a Unix stream socket, 0600 in a 0700
//! directory) and `edgegw status`: the daemon answers one line `status` with one JSON line —
//! uplink state, queue depth, oldest queued age, rates, uplink certificate expiry. The status
//! report built here is also what the uplink publishes, retained, on `<status_topic>/stats`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::outbox::{Outbox, OutboxStats};
use crate::uplink::UplinkStatus;

/// The socket's file name inside the runtime directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Rates are averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "edgegw is not running (no daemon answers on {path}: {reason}); start it with `edgegw run` \
         or check gateway.runtime_dir"
    )]
    NotRunning { path: PathBuf, reason: String },
    #[error("another edgegw is already running (it answers on {0})")]
    AlreadyRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon sent an unreadable answer: {0}")]
    BadAnswer(String),
}

/// What `edgegw status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub version: &'static str,
    pub uptime_s: u64,
    pub uplink: UplinkStatus,
    pub outbox: OutboxStats,
    /// Age of the oldest queued message in seconds (absent when the queue is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_queued_age_s: Option<u64>,
    /// Messages accepted / delivered (PUBACK) per second over the last minute.
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    /// Days until the uplink client certificate expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_expires_in_days: Option<i64>,
    pub warnings: Vec<String>,
    /// The board: device-tree model and serial, machine id, wired MAC (issue 7).
    pub board: crate::board::BoardStatus,
    /// Serial ports (issue 7).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub serial: Vec<crate::serial::status::PortStatus>,
    /// Per-adapter counts (`adapters`) and the DTLS session table (`dtls`).
    #[serde(flatten)]
    pub metrics: crate::metrics::MetricsSnapshot,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    accepted: u64,
    delivered: u64,
}

/// Builds status reports from the outbox and the uplink status.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    outbox: Outbox,
    uplink: tokio::sync::watch::Receiver<UplinkStatus>,
    samples: Arc<Mutex<VecDeque<Sample>>>,
    started: Instant,
    board: Arc<crate::board::BoardStatus>,
    serial: crate::serial::SerialStatus,
    metrics: crate::metrics::Metrics,
}

impl StatusHandle {
    pub fn new(outbox: Outbox, uplink: tokio::sync::watch::Receiver<UplinkStatus>) -> Self {
        let metrics = crate::metrics::Metrics::new();
        let handle = Self {
            outbox,
            uplink,
            samples: Arc::default(),
            started: Instant::now(),
            // Read once: board identity does not change while the daemon runs.
            board: Arc::new(crate::board::BoardStatus::read(
                &hal::identity::SysRoot::system(),
            )),
            // The serial ports count into the shared metrics through their status handles.
            serial: crate::serial::SerialStatus::with_metrics(metrics.clone()),
            metrics,
        };
        handle.sample();
        handle
    }

    /// Records the counters now (called every few seconds by the pipeline and on each report).
    pub fn sample(&self) -> (f64, f64) {
        let stats = self.outbox.stats();
        let now = Instant::now();
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.push_back(Sample {
            at: now,
            accepted: stats.accepted_total,
            delivered: stats.acked_total,
        });
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|s| now.duration_since(s.at) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
        while samples.len() > 256 {
            samples.pop_front();
        }
        match (samples.front(), samples.back()) {
            (Some(first), Some(last)) if last.at > first.at => {
                let secs = last.at.duration_since(first.at).as_secs_f64();
                (
                    (last.accepted - first.accepted) as f64 / secs,
                    (last.delivered - first.delivered) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        }
    }

    pub fn report(&self) -> StatusReport {
        let (accepted_per_s, delivered_per_s) = self.sample();
        let outbox = self.outbox.stats();
        let uplink = self.uplink.borrow().clone();
        let now = SystemTime::now();
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let oldest_queued_age_s = (outbox.queued > 0 && outbox.oldest_received_ms > 0)
            .then(|| now_ms.saturating_sub(outbox.oldest_received_ms) / 1000);
        let cert_expires_in_days = uplink.cert.as_ref().map(|c| {
            let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
            (c.not_after - now_s).div_euclid(86_400)
        });
        let mut warnings = Vec::new();
        if let Some(w) = &uplink.cert_warning {
            warnings.push(w.clone());
        }
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: self.started.elapsed().as_secs(),
            uplink,
            outbox,
            oldest_queued_age_s,
            accepted_per_s: (accepted_per_s * 10.0).round() / 10.0,
            delivered_per_s: (delivered_per_s * 10.0).round() / 10.0,
            cert_expires_in_days,
            warnings,
            board: (*self.board).clone(),
            serial: self.serial.snapshot(),
            metrics: self.metrics.snapshot(),
        }
    }

    /// Where the serial adapter reports its ports.
    pub fn serial(&self) -> &crate::serial::SerialStatus {
        &self.serial
    }

    /// The counters every adapter shares (one instance per daemon).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }
}

/// Binds the control socket in `runtime_dir`, replacing a stale one left by a crash.
pub fn bind(runtime_dir: &Path) -> Result<UnixListener, ControlError> {
    let path = runtime_dir.join(SOCKET_NAME);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ControlError::AlreadyRunning(path));
        }
        let _ = std::fs::remove_file(&path);
    }
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(listener)
}

/// Answers `status` requests until `token` is cancelled; removes the socket file at the end.
pub async fn serve(listener: UnixListener, status: StatusHandle, token: CancellationToken) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let status = status.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &status).await {
                            debug!("control connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

async fn answer(stream: UnixStream, status: &StatusHandle) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    // One short line, read within 2 s: a stuck or hostile peer cannot hold resources.
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(128);
    tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&status.report()).map_err(std::io::Error::other)?,
        other => format!(
            "{{\"error\":\"unknown request {:?}\"}}",
            other.chars().take(32).collect::<String>()
        ),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Asks the daemon whose runtime directory is `runtime_dir` for its status (blocking).
pub fn query(runtime_dir: &Path) -> Result<serde_json::Value, ControlError> {
    let path = runtime_dir.join(SOCKET_NAME);
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|e| ControlError::NotRunning {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    stream.write_all(b"status\n").map_err(io)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, 1 << 20))
        .read_line(&mut line)
        .map_err(io)?;
    serde_json::from_str(&line).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// The human-readable form of a status report.
pub fn render(v: &serde_json::Value) -> String {
    let get = |path: &[&str]| {
        let mut cur = v;
        for p in path {
            cur = cur.get(p).unwrap_or(&serde_json::Value::Null);
        }
        match cur {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<20} {val}\n"));
    line("version", get(&["version"]));
    line("uptime", format!("{}s", get(&["uptime_s"])));
    line("uplink", get(&["uplink", "state"]));
    line("uplink url", get(&["uplink", "url"]));
    line("uplink last error", get(&["uplink", "last_error"]));
    line(
        "queue depth",
        format!(
            "{} messages, {} bytes",
            get(&["outbox", "queued"]),
            get(&["outbox", "queued_bytes"])
        ),
    );
    line(
        "oldest queued",
        match get(&["oldest_queued_age_s"]).as_str() {
            "-" => "-".to_owned(),
            s => format!("{s}s ago"),
        },
    );
    line(
        "accepted",
        format!(
            "{}/s (total {})",
            get(&["accepted_per_s"]),
            get(&["outbox", "accepted_total"])
        ),
    );
    line(
        "delivered",
        format!(
            "{}/s (total {})",
            get(&["delivered_per_s"]),
            get(&["outbox", "acked_total"])
        ),
    );
    line(
        "dropped / expired",
        format!(
            "{} / {}",
            get(&["outbox", "dropped_total"]),
            get(&["outbox", "expired_total"])
        ),
    );
    line("uplink cert", get(&["uplink", "cert", "subject"]));
    line(
        "cert expires in",
        match get(&["cert_expires_in_days"]).as_str() {
            "-" => "-".to_owned(),
            d => format!("{d} days"),
        },
    );
    line("board", get(&["board", "model"]));
    line("board serial", get(&["board", "serial_number"]));
    line("machine id", get(&["board", "machine_id"]));
    line(
        "wired MAC",
        format!("{} ({})", get(&["board", "mac"]), get(&["board", "nic"])),
    );
    if let Some(ports) = v.get("serial").and_then(|p| p.as_array()) {
        for p in ports {
            let f = |k: &str| match p.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => "-".to_owned(),
                Some(other) => other.to_string(),
            };
            line(
                "serial port",
                format!(
                    "{} {} (device {}, client {}, {} published, {} errors, opened {}x)",
                    f("path"),
                    f("state"),
                    f("device"),
                    f("client"),
                    f("published"),
                    f("errors"),
                    f("opens")
                ),
            );
        }
    }
    crate::metrics::render_status(v, &mut line);
    if let Some(warnings) = v.get("warnings").and_then(|w| w.as_array()) {
        for w in warnings {
            line("WARNING", w.as_str().unwrap_or_default().to_owned());
        }
    }
    out
}
