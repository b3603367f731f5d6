//! The control socket (`<runtime_dir>/control.sock`, a Unix stream socket, 0600 in a 0700
//! directory) and `edgegw status`: the daemon answers one line `status` with one JSON line —
//! uplink state, queue depth, oldest queued age, rates, uplink certificate expiry. It only
//! presents: the report is built by [`crate::runtime::status`] (also what the uplink publishes,
//! retained, on `<status_topic>/stats`) and rendered for people by [`crate::runtime::status::render`].
//! It also serves `edgegw quarantine`: `quarantine list [after]`, `quarantine requeue <id>`,
//! `quarantine drop <id>` (one JSON line each; the outbox does the work).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::runtime::status::StatusHandle;

/// The socket's file name inside the runtime directory.
pub const SOCKET_NAME: &str = "control.sock";

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
    BadAnswer(#[source] serde_json::Error),
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
/// Each connection runs on `tracker`, so shutdown waits for answers in flight.
pub async fn serve(
    listener: UnixListener,
    status: StatusHandle,
    tracker: TaskTracker,
    token: CancellationToken,
) {
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
                    tracker.spawn(async move {
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
        q if q.starts_with("quarantine ") => {
            quarantine(status.outbox(), q.trim_start_matches("quarantine ")).await
        }
        other => format!(
            "{{\"error\":\"unknown request {:?}\"}}",
            other.chars().take(32).collect::<String>()
        ),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// One quarantine request, answered as one JSON object (`error` set when it did nothing).
async fn quarantine(outbox: &crate::outbox::Outbox, request: &str) -> String {
    use crate::outbox::QuarantineError;
    let mut words = request.split_whitespace();
    let (verb, id) = (words.next(), words.next().map(str::parse::<u64>));
    let answer = match (verb, id) {
        (Some("list"), after @ (None | Some(Ok(_)))) => {
            let after = after.and_then(Result::ok).unwrap_or(0);
            let outbox2 = outbox.clone();
            match tokio::task::spawn_blocking(move || {
                outbox2.quarantined(after, crate::outbox::quarantine::LIST_MAX)
            })
            .await
            {
                Ok(Ok(list)) => serde_json::json!({
                    "total": outbox.stats().quarantined,
                    "quarantine": list,
                }),
                Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }
        }
        (Some(verb @ ("requeue" | "drop")), Some(Ok(id))) => {
            let done = if verb == "requeue" {
                outbox.requeue(id).await
            } else {
                outbox.discard(id).await
            };
            match done {
                Ok(seq) if verb == "requeue" => serde_json::json!({ "id": id, "requeued_as": seq }),
                Ok(_) => serde_json::json!({ "id": id, "dropped": true }),
                Err(e @ QuarantineError::NotFound(_)) => {
                    serde_json::json!({ "error": e.to_string(), "not_found": true })
                }
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }
        }
        _ => serde_json::json!({
            "error": "quarantine requests: list [after] | requeue <id> | drop <id>"
        }),
    };
    answer.to_string()
}

/// Asks the daemon whose runtime directory is `runtime_dir` for its status (blocking).
pub fn query(runtime_dir: &Path) -> Result<serde_json::Value, ControlError> {
    request(runtime_dir, "status")
}

/// Sends one request line to the daemon whose runtime directory is `runtime_dir` and reads
/// its one JSON line (blocking).
pub fn request(runtime_dir: &Path, line: &str) -> Result<serde_json::Value, ControlError> {
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
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, 1 << 20))
        .read_line(&mut line)
        .map_err(io)?;
    serde_json::from_str(&line).map_err(ControlError::BadAnswer)
}
