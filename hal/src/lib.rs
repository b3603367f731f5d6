//! Device access for the gateway: serial ports, board identity, hardware watchdog, LEDs.
//!
//! Synchronous and tokio-free, with no protocol knowledge. Each device kind is a trait with a
//! Linux implementation and a fake for tests. `gateway` depends on `hal`, never the reverse.

pub mod identity;
pub mod led;
pub mod serial;
pub mod watchdog;
