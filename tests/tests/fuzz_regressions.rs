//! Replays every input saved by `scripts/fuzz` in `fuzz/regressions/<target>/` (crashes it
//! found) and the hand-written seeds in `fuzz/seeds/<target>/` through the same bodies the fuzz
//! targets run (`fuzz/src/bodies.rs`), on stable, in `cargo test`.

#[path = "../../fuzz/src/bodies.rs"]
mod bodies;

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).expect("readable regression input");
            eprintln!("{target}: {}", entry.path().display());
            body(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn serial_codec_regressions() {
    assert!(
        replay("serial_codec", bodies::serial_codec) > 0,
        "no seeds found"
    );
}

#[test]
fn config_toml_regressions() {
    assert!(
        replay("config_toml", bodies::config_toml) > 0,
        "no seeds found"
    );
}

#[test]
fn topic_regressions() {
    assert!(replay("topic", bodies::topic) > 0, "no seeds found");
}

#[test]
fn bootstrap_answer_regressions() {
    assert!(
        replay("bootstrap_answer", bodies::bootstrap_answer) > 0,
        "no seeds found"
    );
}
