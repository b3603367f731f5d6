//! The configuration parser (`gateway::config::load_from` on arbitrary TOML text): see `fuzz/src/bodies.rs`.
#![no_main]

#[path = "../src/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::config_toml(data));
