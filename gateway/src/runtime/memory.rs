//! Allocator housekeeping (issue 18, footprint; docs/benchmarks.md "Footprint").
//!
//! glibc keeps memory that was freed inside its heaps resident until the top of a heap is free
//! (`M_TRIM_THRESHOLD`); start-up (the auth snapshot built from its table rows, TLS and DTLS
//! configs) and a load peak leave such holes behind. `malloc_trim(0)` hands every free page
//! back to the kernel (`madvise(MADV_DONTNEED)`), in every arena. The daemon calls it once
//! when it is ready and then every [`TRIM_INTERVAL`]: a walk over the free lists, well under a
//! millisecond on a heap of a few MiB, holding one arena's lock at a time. On other C
//! libraries this does nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free heap pages go back to the kernel.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// Returns freed heap memory to the kernel now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists (under its locks).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_INTERVAL`] until `token` is cancelled.
pub async fn trim_task(token: CancellationToken) {
    let mut every = tokio::time::interval(TRIM_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = every.tick() => trim(),
        }
    }
}
