//! Admission policy of the outbox, pure: given what is queued and what arrives, accept, refuse
//! as busy, or accept and make room by dropping the oldest. No I/O, no clock.

use std::time::Duration;

use crate::config::FullPolicy;

/// At most this many messages wait in RAM for the next group commit; beyond that the adapters
/// are told to retry (the writer is behind, e.g. a slow SD card).
pub const MAX_PENDING: usize = 20_000;

/// What the outbox holds and what waits for the next commit, in bytes and messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub stored_bytes: u64,
    pub pending_bytes: u64,
    pub pending_count: usize,
}

/// The admission decision for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Refuse; the sender may retry after the given time.
    Busy {
        retry_after: Duration,
    },
    TooLarge {
        max: usize,
    },
}

/// Limits the policy enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_message_size: usize,
    pub full_policy: FullPolicy,
}

/// Decides whether a message of `weight` bytes (payload `payload_len`) is admitted.
pub fn admit(limits: &Limits, load: &Load, payload_len: usize, weight: u64) -> Admission {
    if payload_len > limits.max_message_size {
        return Admission::TooLarge {
            max: limits.max_message_size,
        };
    }
    if load.pending_count >= MAX_PENDING {
        return Admission::Busy {
            retry_after: Duration::from_millis(200),
        };
    }
    let after = load.stored_bytes + load.pending_bytes + weight;
    match limits.full_policy {
        FullPolicy::Reject if after > limits.max_bytes => Admission::Busy {
            retry_after: Duration::from_secs(5),
        },
        // drop_oldest: the writer deletes the oldest entries before inserting. Only what waits
        // in RAM must itself fit.
        FullPolicy::DropOldest if load.pending_bytes + weight > limits.max_bytes => {
            Admission::Busy {
                retry_after: Duration::from_millis(200),
            }
        }
        _ => Admission::Accept,
    }
}

/// How many bytes must be dropped from the stored entries so that `incoming` fits.
pub fn bytes_to_drop(max_bytes: u64, stored: u64, incoming: u64) -> u64 {
    (stored + incoming).saturating_sub(max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(policy: FullPolicy) -> Limits {
        Limits {
            max_bytes: 1000,
            max_message_size: 100,
            full_policy: policy,
        }
    }

    #[test]
    fn reject_refuses_as_busy_when_full_and_never_drops() {
        let l = limits(FullPolicy::Reject);
        let load = Load {
            stored_bytes: 900,
            pending_bytes: 50,
            pending_count: 1,
        };
        assert_eq!(admit(&l, &load, 40, 50), Admission::Accept);
        assert!(matches!(admit(&l, &load, 40, 51), Admission::Busy { .. }));
        assert_eq!(admit(&l, &load, 101, 101), Admission::TooLarge { max: 100 });
    }

    #[test]
    fn drop_oldest_accepts_when_stored_is_full() {
        let l = limits(FullPolicy::DropOldest);
        let load = Load {
            stored_bytes: 1000,
            pending_bytes: 0,
            pending_count: 0,
        };
        assert_eq!(admit(&l, &load, 80, 100), Admission::Accept);
        assert_eq!(bytes_to_drop(1000, 1000, 100), 100);
        assert_eq!(bytes_to_drop(1000, 100, 100), 0);
    }

    #[test]
    fn a_full_ram_queue_is_busy_under_any_policy() {
        for policy in [FullPolicy::Reject, FullPolicy::DropOldest] {
            let load = Load {
                stored_bytes: 0,
                pending_bytes: 0,
                pending_count: MAX_PENDING,
            };
            assert!(matches!(
                admit(&limits(policy), &load, 1, 1),
                Admission::Busy { .. }
            ));
        }
    }
}
