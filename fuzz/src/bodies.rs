//! The bodies of the fuzz targets in `fuzz_targets/` written by issue 10, shared with the
//! stable regression test `tests/tests/fuzz_regressions.rs` (which includes this file with
//! `#[path]`): every input saved in `fuzz/regressions/<target>/` is replayed in `cargo test`.
#![allow(dead_code)]

/// The serial line codec: decode without panicking, consume at least one byte per step, and
/// every decoded line re-encodes to something that decodes the same.
pub fn serial_codec(data: &[u8]) {
    use gateway::adapters::serial::codec::{decode, decode_line, encode};
    const MAX_LINE: usize = 256;
    let _ = decode_line(data);
    let mut buf = data;
    while !buf.is_empty() {
        match decode(buf, MAX_LINE) {
            Ok(Some((frame, used))) => {
                assert!(
                    used > 0 && used <= buf.len(),
                    "consumed {used} of {}",
                    buf.len()
                );
                let again = encode(&frame.line, frame.checksummed);
                let (back, n) = decode(&again, usize::MAX)
                    .expect("an encoded line decodes")
                    .expect("an encoded line is complete");
                assert_eq!(n, again.len());
                assert_eq!(
                    back,
                    frame,
                    "round trip of {:?}",
                    String::from_utf8_lossy(&again)
                );
                buf = &buf[used..];
            }
            Ok(None) => break,
            Err(e) => {
                // A bad line is skipped: the decoder must tell how far.
                let skip = e.consumed;
                assert!(skip > 0 && skip <= buf.len());
                buf = &buf[skip..];
            }
        }
    }
}

/// The configuration parser on arbitrary TOML text (written to a file, as `--config` does):
/// a `Config` or a `ConfigError` that renders, never a panic.
pub fn config_toml(data: &[u8]) {
    use gateway::config::{Profile, Source, load_from};
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("edgegw.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
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
}

/// Subtopic validation and topic templates: no panic; an accepted subtopic is normalised
/// (validating it again gives it back) and holds no wildcard, whitespace or empty level; the
/// rendered topic has no empty level and matches itself as a filter.
pub fn topic(data: &[u8]) {
    use gateway::topic::{TopicParts, TopicTemplate, matches_filter, validate_subtopic};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(sub) = validate_subtopic(first) {
        assert_eq!(validate_subtopic(&sub).as_ref(), Ok(&sub), "not idempotent");
        assert!(!sub.contains(['+', '#', '*', '>']));
        assert!(!sub.chars().any(char::is_whitespace));
        assert!(sub.is_empty() || !sub.split('/').any(str::is_empty));
        let template = TopicTemplate::parse(second).unwrap_or_else(|_| {
            TopicTemplate::parse("default").expect("the default template parses")
        });
        let topic = template.render(TopicParts {
            domain: "dom",
            channel: "ch",
            subtopic: &sub,
            client: "c",
        });
        assert!(!topic.contains("//"), "{topic}");
        assert!(
            matches_filter(&topic, &topic),
            "{topic} does not match itself"
        );
        let _ = matches_filter(second, &topic);
    }
}

/// The bootstrap answer (`gateway::bootstrap::decode`): a body as the service sends it, also
/// as the secure route's `IV ‖ AES-CFB` ciphertext. Never panics; what parses keeps its bounds
/// and plans into a config layer.
pub fn bootstrap_answer(data: &[u8]) {
    use gateway::bootstrap::apply::{PlanContext, plan};
    use gateway::bootstrap::decode::{MAX_CHANNELS, decrypt, parse_answer};
    const KEY: &[u8] = b"1234567891011121";
    let decrypted = decrypt(KEY, data).ok();
    for body in [Some(data), decrypted.as_deref()].into_iter().flatten() {
        let Ok(answer) = parse_answer(body) else {
            continue;
        };
        assert!(!answer.client_id.is_empty() && answer.client_id.len() <= 128);
        assert!(answer.channels.len() <= MAX_CHANNELS);
        assert_eq!(answer.client_cert.is_some(), answer.client_key.is_some());
        let ctx = PlanContext {
            state_dir: std::path::Path::new("/state"),
            origin: "https://bs",
            external_id: "id",
            secure: false,
            local_domain: "dom",
            now_unix: 0,
        };
        if let Ok(p) = plan(&answer, &ctx) {
            assert_eq!(p.applied.channels.len(), answer.channels.len());
            assert!(p.applied.channels.iter().all(|c| !c.domain_id.is_empty()));
            let _ = p.applied.layer();
        }
    }
}
