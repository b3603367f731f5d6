//! The bootstrap answer (`gateway::bootstrap::decode`, plain and AES-CFB): see `fuzz/src/bodies.rs`.
#![no_main]

#[path = "../src/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::bootstrap_answer(data));
