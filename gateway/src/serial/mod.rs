//! The serial sensor adapter: newline-framed text over UARTs and USB-serial adapters.
//!
//! `codec` (pure line codec), `proto` (sans-IO session: authentication state, answers in
//! order, durability), `task` (threads per port, reopen with backoff, the async shell).
//! It decides nothing about who may publish: the auth store does, through [`task::Backend`].

pub mod codec;
pub mod proto;
pub mod task;
