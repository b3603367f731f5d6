//! The serial line codec (`gateway::adapters::serial::codec`): see `fuzz/src/bodies.rs`.
#![no_main]

#[path = "../src/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::serial_codec(data));
