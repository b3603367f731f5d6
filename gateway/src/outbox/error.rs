//! The outbox's errors: why a message was refused, why the store cannot be opened.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::store;

/// Why a message was not accepted. The adapter maps it to its protocol (5.03 + Max-Age,
/// `ERR busy`, 4.13).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("outbox full, retry after {retry_after:?}")]
    Busy { retry_after: Duration },
    #[error("payload larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("outbox closed (shutting down)")]
    Closed,
    /// The commit failed; every append of that commit shares the one SQLite error.
    #[error("outbox storage failed: {0}")]
    Storage(#[source] Arc<rusqlite::Error>),
}

/// Equal variants with equal fields; two storage failures are equal when they are the same
/// failure (one commit's), since SQLite errors have no equality of their own.
impl PartialEq for IngestError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Busy { retry_after: a }, Self::Busy { retry_after: b }) => a == b,
            (Self::TooLarge { max: a }, Self::TooLarge { max: b }) => a == b,
            (Self::Closed, Self::Closed) => true,
            (Self::Storage(a), Self::Storage(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for IngestError {}

impl IngestError {
    /// A storage failure as the adapters see it (for their refusal-mapping tests).
    #[cfg(test)]
    pub(crate) fn storage_for_tests() -> Self {
        Self::Storage(Arc::new(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some("disk I/O error".into()),
        )))
    }
}

/// How long a sensor is asked to wait when the state partition is full.
pub const DISK_FULL_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The refusal for the appends of a failed commit. A full state disk is back-pressure like a
/// full outbox (`Busy`: CoAP 5.03 + Max-Age, serial `ERR busy`, HTTP 503 + Retry-After): the
/// sensor keeps the message and retries once space is freed. Anything else is a storage failure.
pub(super) fn commit_refusal(e: &Arc<rusqlite::Error>) -> IngestError {
    if store::is_disk_full(e) {
        IngestError::Busy {
            retry_after: DISK_FULL_RETRY_AFTER,
        }
    } else {
        IngestError::Storage(Arc::clone(e))
    }
}

/// Why the outbox cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "outbox {path} is corrupt ({reason}); it is kept as it is. Stop edgegw, move it aside \
         (mv {path} {path}.corrupt; also its -wal and -shm files) and start again: a new, empty \
         outbox is created and the old file can be inspected or recovered with `sqlite3 .recover`"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot open outbox {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("outbox query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("cannot start the outbox writer thread: {0}")]
    Thread(std::io::Error),
}
