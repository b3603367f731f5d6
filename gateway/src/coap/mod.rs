//! CoAP (udp/5683) and CoAP-over-DTLS (udp/5684) adapters: the sensor-facing intake.
//!
//! `proto` is the sans-IO CoAP server core, `dtls` the DTLS session table over dimpl, `task`
//! the async shells that own the sockets. Decisions (authentication, authorization,
//! durability) are made by a [`task::Backend`], so this module never touches SQLite itself.

pub mod dtls;
pub mod proto;
pub mod task;
