//! The configuration parser: `gateway::config::load_from` on arbitrary TOML text (written to a
//! file, as `--config` does) must return a `Config` or a `ConfigError`, never panic; and a
//! refusal must render to a message.
#![no_main]

use std::io::Write;

use gateway::config::{Profile, Source, load_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("edgegw.toml");
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    drop(file);
    let result = load_from(
        &Source::Explicit(path),
        Profile::Dev {
            root: dir.path().to_owned(),
        },
        std::iter::empty(),
    );
    if let Err(e) = result {
        let _ = e.to_string();
    }
});
