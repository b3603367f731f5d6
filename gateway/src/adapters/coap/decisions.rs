//! The CoAP shell's publish decisions: publishes handed to the outbox, awaited in the order
//! they were handed over (one writer commits them in that order, so the front one resolves
//! first). One queue polled from the shell's `select!`, no task per message (issue 17).

use std::collections::VecDeque;
use std::task::Poll;

use super::proto::{ExchangeId, Refusal};
use crate::intake::Durable;

/// Waits until the oldest pending publish decision resolves, then moves it and every
/// following one that has resolved too into `decided`.
pub async fn next(
    pending: &mut VecDeque<(ExchangeId, Durable)>,
    decided: &mut Vec<(ExchangeId, Result<u64, Refusal>)>,
) {
    std::future::poll_fn(|cx| {
        while let Some((_, durable)) = pending.front_mut() {
            let Poll::Ready(result) = std::pin::Pin::new(durable).poll(cx) else {
                break;
            };
            if let Some((exchange, _)) = pending.pop_front() {
                decided.push((exchange, result));
            }
        }
        if decided.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}
