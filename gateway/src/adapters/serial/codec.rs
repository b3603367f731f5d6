//! The serial line codec: pure functions from bytes to [`Line`]s and back. No I/O, no state
//! beyond what the caller passes in.
//!
//! Framing: one message per line, terminated by `\n` (`\r`s before it are dropped; blank lines
//! are skipped). A line may end in an NMEA-style checksum `*HH`: two hex digits, the XOR of
//! every byte before the `*`. Lines longer than the configured maximum are refused without
//! being buffered: [`decode`] reports [`FrameError::TooLong`] as soon as the limit is passed,
//! and the caller discards input up to the next newline.
//!
//! Messages (the sensor sends the first two, the gateway the others):
//! `AUTH <identity> <secret>`, `PUB <channel>[/<subtopic>] <payload>`,
//! `CMD <channel>[/<subtopic>] <payload>`, `OK [<seq>]`, `ERR <reason>`.

use std::fmt;

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Auth { identity: String, secret: Vec<u8> },
    Pub { target: Target, payload: Vec<u8> },
    Cmd { target: Target, payload: Vec<u8> },
    Ok(Option<u64>),
    Err(Reason),
}

/// `<channel>[/<subtopic>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub channel: String,
    /// Empty, or `/`-separated non-empty segments.
    pub subtopic: String,
}

/// A decoded line and whether it carried a checksum (answers to it then carry one too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub line: Line,
    pub checksummed: bool,
}

/// The `ERR <reason>` words: the serial protocol's documented error vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// AUTH refused: unknown identity, wrong secret or disabled client (indistinguishable).
    Auth,
    /// PUB before a successful AUTH (and the port is not bound to a client).
    NotAuthenticated,
    /// The client is not connected to that channel for publishing, or the channel is unknown.
    NotConnected,
    /// The outbox is full, or too many PUBs are waiting for durability; retry later.
    Busy,
    /// Too many AUTH attempts; retry later.
    Throttled,
    /// The line was longer than `serial.max_line`.
    TooLong,
    /// The `*HH` checksum did not match.
    Checksum,
    /// The first word is not a command.
    UnknownCommand,
    /// A known command with missing or malformed arguments.
    BadRequest,
    /// The message is larger than the outbox accepts.
    TooLarge,
    /// The gateway cannot store the message now (shutting down, storage error).
    Unavailable,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Auth,
        Reason::NotAuthenticated,
        Reason::NotConnected,
        Reason::Busy,
        Reason::Throttled,
        Reason::TooLong,
        Reason::Checksum,
        Reason::UnknownCommand,
        Reason::BadRequest,
        Reason::TooLarge,
        Reason::Unavailable,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::NotAuthenticated => "not-authenticated",
            Reason::NotConnected => "not-connected",
            Reason::Busy => "busy",
            Reason::Throttled => "throttled",
            Reason::TooLong => "too-long",
            Reason::Checksum => "checksum",
            Reason::UnknownCommand => "unknown-command",
            Reason::BadRequest => "bad-request",
            Reason::TooLarge => "too-large",
            Reason::Unavailable => "unavailable",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.word() == word)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// A line that cannot be decoded; the caller answers `ERR <reason>` and drops `consumed` bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("serial line refused: {reason}")]
pub struct DecodeError {
    pub reason: Reason,
    /// Bytes of the input that belong to the refused line (including its newline, if seen).
    pub consumed: usize,
    /// The line was cut off at the limit: discard input up to and including the next newline.
    pub unterminated: bool,
    /// The refused line carried a (valid-looking) checksum suffix: answer with one.
    pub checksummed: bool,
}

/// Framing-level failures, as [`Reason`]s.
pub type FrameError = Reason;

/// Decodes the first line of `buf`. `Ok(None)`: no complete line yet and `buf` is within
/// `max_line`; `consumed` counts any skipped blank lines too.
pub fn decode(buf: &[u8], max_line: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let Some(pos) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > max_line {
                return Err(DecodeError {
                    reason: Reason::TooLong,
                    consumed: buf.len(),
                    unterminated: true,
                    checksummed: false,
                });
            }
            return Ok(None);
        };
        let consumed = start + pos + 1;
        let mut line = &rest[..pos];
        // CRLF, and sloppy devices' CRCRLF: no `\r` survives at the end of a line, so a decoded
        // payload always re-encodes to the same line (found by `scripts/fuzz`).
        while let [head @ .., b'\r'] = line {
            line = head;
        }
        if line.len() > max_line {
            return Err(DecodeError {
                reason: Reason::TooLong,
                consumed,
                unterminated: false,
                checksummed: false,
            });
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            start = consumed;
            continue;
        }
        return match decode_line(line) {
            Ok(frame) => Ok(Some((frame, consumed))),
            Err((reason, checksummed)) => Err(DecodeError {
                reason,
                consumed,
                unterminated: false,
                checksummed,
            }),
        };
    }
}

/// XOR of all bytes (the NMEA checksum).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one complete line (no newline). The error carries whether a checksum was present.
pub fn decode_line(line: &[u8]) -> Result<Frame, (Reason, bool)> {
    let (body, checksummed) = match line {
        [body @ .., b'*', hi, lo] => match (hex_value(*hi), hex_value(*lo)) {
            (Some(hi), Some(lo)) => {
                if checksum(body) != (hi << 4 | lo) {
                    return Err((Reason::Checksum, true));
                }
                (body, true)
            }
            _ => (line, false),
        },
        _ => (line, false),
    };
    parse_body(body)
        .map(|line| Frame { line, checksummed })
        .map_err(|reason| (reason, checksummed))
}

fn split_word(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    }
}

fn parse_body(body: &[u8]) -> Result<Line, Reason> {
    let (command, args) = split_word(body);
    match command {
        b"AUTH" => {
            let (identity, rest) = split_word(args.ok_or(Reason::BadRequest)?);
            let secret = rest.ok_or(Reason::BadRequest)?;
            if secret.is_empty()
                || secret.contains(&b' ')
                || !secret.iter().all(u8::is_ascii_graphic)
            {
                return Err(Reason::BadRequest);
            }
            Ok(Line::Auth {
                identity: token(identity)?,
                secret: secret.to_vec(),
            })
        }
        b"PUB" | b"CMD" => {
            let (target, payload) = split_word(args.ok_or(Reason::BadRequest)?);
            let target = parse_target(target)?;
            let payload = payload.ok_or(Reason::BadRequest)?.to_vec();
            Ok(if command == b"PUB" {
                Line::Pub { target, payload }
            } else {
                Line::Cmd { target, payload }
            })
        }
        b"OK" => match args {
            None => Ok(Line::Ok(None)),
            Some(seq) => std::str::from_utf8(seq)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .map(|seq| Line::Ok(Some(seq)))
                .ok_or(Reason::BadRequest),
        },
        b"ERR" => std::str::from_utf8(args.ok_or(Reason::BadRequest)?)
            .ok()
            .and_then(Reason::from_word)
            .map(Line::Err)
            .ok_or(Reason::BadRequest),
        _ => Err(Reason::UnknownCommand),
    }
}

/// A word of printable ASCII without the characters that mean something in MQTT topics.
fn token(bytes: &[u8]) -> Result<String, Reason> {
    if bytes.is_empty()
        || !bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'/' | b'+' | b'#' | b'*'))
    {
        return Err(Reason::BadRequest);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| Reason::BadRequest)
}

fn parse_target(bytes: &[u8]) -> Result<Target, Reason> {
    let mut parts = bytes.split(|&b| b == b'/');
    let channel = token(parts.next().unwrap_or_default())?;
    let segments = parts.map(token).collect::<Result<Vec<_>, _>>()?;
    Ok(Target {
        channel,
        subtopic: segments.join("/"),
    })
}

/// Why a downlink command cannot be written as one `CMD` line (issue 20.7: anyone who can
/// publish on a channel's command topic upstream must not forge `OK`/`CMD` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeCommand {
    /// The channel name or a subtopic level is not a [`token`] (a space would shift the
    /// fields; `/ + # *`, control and non-ASCII bytes are refused like in `PUB`).
    #[error("the channel or subtopic is not a serial token")]
    Target,
    /// The payload holds `\n` or `\r`, which would end the line (and start a forged one).
    #[error("the payload contains a line break")]
    LineBreak,
    /// Without a checksum, a payload ending in `*HH` would be read as the line's checksum.
    #[error("the payload ends in what reads as a checksum")]
    ChecksumLike,
}

/// Checks that `CMD <target> <payload>` is exactly one line that decodes back to the same
/// target and payload; the gateway refuses (and counts) commands that fail this.
pub fn check_command(
    target: &Target,
    payload: &[u8],
    with_checksum: bool,
) -> Result<(), UnsafeCommand> {
    let levels = std::iter::once(target.channel.as_str()).chain(
        (!target.subtopic.is_empty())
            .then(|| target.subtopic.split('/'))
            .into_iter()
            .flatten(),
    );
    for level in levels {
        token(level.as_bytes()).map_err(|_| UnsafeCommand::Target)?;
    }
    if payload.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Err(UnsafeCommand::LineBreak);
    }
    if !with_checksum
        && let [.., b'*', hi, lo] = payload
        && hex_value(*hi).is_some()
        && hex_value(*lo).is_some()
    {
        return Err(UnsafeCommand::ChecksumLike);
    }
    Ok(())
}

/// Encodes `line` with its newline, and a `*HH` checksum when `with_checksum`.
pub fn encode(line: &Line, with_checksum: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    let target = |out: &mut Vec<u8>, t: &Target| {
        out.extend_from_slice(t.channel.as_bytes());
        if !t.subtopic.is_empty() {
            out.push(b'/');
            out.extend_from_slice(t.subtopic.as_bytes());
        }
    };
    match line {
        Line::Auth { identity, secret } => {
            out.extend_from_slice(b"AUTH ");
            out.extend_from_slice(identity.as_bytes());
            out.push(b' ');
            out.extend_from_slice(secret);
        }
        Line::Pub { target: t, payload } | Line::Cmd { target: t, payload } => {
            out.extend_from_slice(if matches!(line, Line::Pub { .. }) {
                b"PUB "
            } else {
                b"CMD "
            });
            target(&mut out, t);
            out.push(b' ');
            out.extend_from_slice(payload);
        }
        Line::Ok(None) => out.extend_from_slice(b"OK"),
        Line::Ok(Some(seq)) => out.extend_from_slice(format!("OK {seq}").as_bytes()),
        Line::Err(reason) => {
            out.extend_from_slice(b"ERR ");
            out.extend_from_slice(reason.word().as_bytes());
        }
    }
    if with_checksum {
        let sum = checksum(&out);
        out.extend_from_slice(format!("*{sum:02X}").as_bytes());
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(input: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
        decode(input, 64)
    }

    fn with_sum(body: &str) -> String {
        format!("{body}*{:02X}\n", checksum(body.as_bytes()))
    }

    #[test]
    fn auth_and_pub_decode() {
        let (frame, n) = one(b"AUTH sensor-1 s3cr3t\r\nPUB").unwrap().unwrap();
        assert_eq!(n, 22);
        assert_eq!(
            frame,
            Frame {
                line: Line::Auth {
                    identity: "sensor-1".into(),
                    secret: b"s3cr3t".to_vec()
                },
                checksummed: false
            }
        );
        let (frame, _) = one(b"PUB temp/room/1 {\"t\": 21.5}\n").unwrap().unwrap();
        assert_eq!(
            frame.line,
            Line::Pub {
                target: Target {
                    channel: "temp".into(),
                    subtopic: "room/1".into()
                },
                payload: b"{\"t\": 21.5}".to_vec()
            }
        );
    }

    #[test]
    fn every_carriage_return_before_the_newline_is_dropped() {
        let (frame, n) = one(b"PUB ch2/ab 1*ch\r\r\nAUTH").unwrap().unwrap();
        assert_eq!(n, 18);
        let again = encode(&frame.line, false);
        assert_eq!(again, b"PUB ch2/ab 1*ch\n");
        assert_eq!(one(&again).unwrap().unwrap().0, frame);
    }

    #[test]
    fn commands_that_would_forge_lines_or_shift_fields_are_refused() {
        let t = |channel: &str, subtopic: &str| Target {
            channel: channel.into(),
            subtopic: subtopic.into(),
        };
        let ok = t("lamps", "room/1");
        assert_eq!(check_command(&ok, b"on", false), Ok(()));
        assert_eq!(check_command(&ok, b"", false), Ok(()));
        // The reproduction of issue 20.7: forged acknowledgements and commands.
        assert_eq!(
            check_command(&ok, b"on\nOK 999999\nCMD other/x y", true),
            Err(UnsafeCommand::LineBreak)
        );
        assert_eq!(
            check_command(&ok, b"on\rOK 1", false),
            Err(UnsafeCommand::LineBreak)
        );
        for bad in [
            "a b", "a/b c", "a//b", "a/+", "x/#", "x\n", "x\u{7}", "é", "a*1",
        ] {
            assert_eq!(
                check_command(&t("lamps", bad), b"on", false),
                Err(UnsafeCommand::Target),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_command(&t("my lamps", ""), b"on", false),
            Err(UnsafeCommand::Target)
        );
        // "*HH" at the end is only ambiguous without a checksum.
        assert_eq!(
            check_command(&ok, b"dim*4F", false),
            Err(UnsafeCommand::ChecksumLike)
        );
        assert_eq!(check_command(&ok, b"dim*4F", true), Ok(()));
        assert_eq!(check_command(&ok, b"dim*4G", false), Ok(()));
    }

    #[test]
    fn need_more_is_none_and_blank_lines_are_skipped() {
        assert_eq!(one(b"PUB temp 2").unwrap(), None);
        assert_eq!(one(b"").unwrap(), None);
        let (frame, n) = one(b"\n\r\n  \nOK 7\n").unwrap().unwrap();
        assert_eq!(frame.line, Line::Ok(Some(7)));
        assert_eq!(n, 11);
    }

    #[test]
    fn nmea_checksums_are_checked_and_reported() {
        // The classic NMEA example: $GPGLL,5300.97914,N,00259.98174,E,125926,A*28
        assert_eq!(checksum(b"GPGLL,5300.97914,N,00259.98174,E,125926,A"), 0x28);
        let line = with_sum("PUB temp 21.5");
        let (frame, _) = one(line.as_bytes()).unwrap().unwrap();
        assert!(frame.checksummed);
        assert_eq!(
            frame.line,
            Line::Pub {
                target: Target {
                    channel: "temp".into(),
                    subtopic: String::new()
                },
                payload: b"21.5".to_vec()
            }
        );
        // Lowercase hex is accepted too.
        let lower = line.to_ascii_lowercase().replace("pub", "PUB");
        assert!(one(lower.as_bytes()).unwrap().unwrap().0.checksummed);
        let err = one(b"PUB temp 21.5*00\n").unwrap_err();
        assert_eq!(err.reason, Reason::Checksum);
        assert!(err.checksummed);
        assert_eq!(err.consumed, 17);
        // Not hex: part of the payload.
        let (frame, _) = one(b"PUB temp 2*ZZ\n").unwrap().unwrap();
        assert!(!frame.checksummed);
    }

    #[test]
    fn errors_name_the_reason_and_consume_the_line() {
        for (input, reason) in [
            (&b"HELLO world\n"[..], Reason::UnknownCommand),
            (b"\xff\xfe\x00garbage\n", Reason::UnknownCommand),
            (b"pub temp 1\n", Reason::UnknownCommand),
            (b"AUTH onlyidentity\n", Reason::BadRequest),
            (b"AUTH id secret extra\n", Reason::BadRequest),
            (b"PUB temp\n", Reason::BadRequest),
            (b"PUB te+mp 1\n", Reason::BadRequest),
            (b"PUB temp//x 1\n", Reason::BadRequest),
            (b"PUB /x 1\n", Reason::BadRequest),
            (b"ERR nonsense\n", Reason::BadRequest),
        ] {
            let err = one(input).unwrap_err();
            assert_eq!(err.reason, reason, "{input:?}");
            assert_eq!(err.consumed, input.len(), "{input:?}");
        }
    }

    #[test]
    fn overlong_lines_are_refused_without_waiting_for_the_newline() {
        let long = vec![b'x'; 65];
        let err = decode(&long, 64).unwrap_err();
        assert_eq!(err.reason, Reason::TooLong);
        assert!(err.unterminated);
        assert_eq!(err.consumed, 65);
        // Exactly at the limit is fine (the newline and \r do not count).
        let mut exact = b"PUB c ".to_vec();
        exact.resize(64, b'p');
        exact.extend_from_slice(b"\r\n");
        assert!(decode(&exact, 64).unwrap().is_some());
        // Longer, with its newline in the buffer: refused and consumed in one go.
        let mut over = b"PUB c ".to_vec();
        over.resize(70, b'p');
        over.push(b'\n');
        let err = decode(&over, 64).unwrap_err();
        assert_eq!(
            (err.reason, err.consumed, err.unterminated),
            (Reason::TooLong, 71, false)
        );
    }

    #[test]
    fn encode_adds_checksums_that_decode_accepts() {
        assert_eq!(encode(&Line::Ok(Some(42)), false), b"OK 42\n");
        assert_eq!(
            encode(&Line::Err(Reason::NotAuthenticated), false),
            b"ERR not-authenticated\n"
        );
        let ok = encode(&Line::Ok(None), true);
        assert_eq!(ok, with_sum("OK").as_bytes());
        assert_eq!(one(&ok).unwrap().unwrap().0.line, Line::Ok(None));
    }

    fn word() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:-]{1,12}"
    }

    fn target() -> impl Strategy<Value = Target> {
        (word(), proptest::collection::vec(word(), 0..3)).prop_map(|(channel, segs)| Target {
            channel,
            subtopic: segs.join("/"),
        })
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        // Anything but a newline; a trailing "*HH" would read as a checksum, so the round trip
        // below always adds one (which is what a sensor must do for such payloads).
        proptest::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..40,
        )
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            (word(), "[!-~&&[^ ]]{1,20}").prop_map(|(identity, secret)| Line::Auth {
                identity,
                secret: secret.into_bytes()
            }),
            (target(), payload()).prop_map(|(target, payload)| Line::Pub { target, payload }),
            (target(), payload()).prop_map(|(target, payload)| Line::Cmd { target, payload }),
            proptest::option::of(any::<u64>()).prop_map(Line::Ok),
            proptest::sample::select(Reason::ALL.to_vec()).prop_map(Line::Err),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_consumes_within_the_buffer(
            input in proptest::collection::vec(any::<u8>(), 0..300),
            max in 1usize..200,
        ) {
            match decode(&input, max) {
                Ok(Some((_, n))) => prop_assert!(n > 0 && n <= input.len()),
                Ok(None) => prop_assert!(input.len() <= max || input.contains(&b'\n')),
                Err(e) => prop_assert!(e.consumed > 0 && e.consumed <= input.len()),
            }
        }

        #[test]
        fn round_trip_with_checksum(line in line()) {
            let bytes = encode(&line, true);
            let (frame, n) = decode(&bytes, 4096).unwrap().unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert!(frame.checksummed);
            prop_assert_eq!(frame.line, line);
        }

        #[test]
        fn round_trip_without_checksum(line in line()) {
            let bytes = encode(&line, false);
            // Without a checksum, a payload ending in "*HH" is ambiguous: skip those.
            let ambiguous = matches!(&bytes[..bytes.len() - 1], [.., b'*', a, b] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit());
            // A payload with a \r at its end loses it (CRLF tolerance).
            let cr = bytes.len() >= 2 && bytes[bytes.len() - 2] == b'\r';
            prop_assume!(!ambiguous && !cr);
            let (frame, _) = decode(&bytes, 4096).unwrap().unwrap();
            prop_assert!(!frame.checksummed);
            prop_assert_eq!(frame.line, line);
        }

        #[test]
        fn a_command_that_passes_the_check_is_exactly_the_one_line_it_says(
            channel in prop_oneof![word(), "[ -~\t\r\n\x00é]{0,12}"],
            subtopic in prop_oneof![
                Just(String::new()),
                "[a-z0-9]{1,5}(/[a-z0-9]{1,5}){0,2}",
                "[ -~\t\r\n\x00é]{0,20}",
            ],
            payload in prop_oneof![
                "[ -~]{0,30}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..40),
            ],
            with_checksum in any::<bool>(),
        ) {
            let target = Target { channel, subtopic };
            prop_assume!(check_command(&target, &payload, with_checksum).is_ok());
            let line = Line::Cmd { target, payload };
            let bytes = encode(&line, with_checksum);
            prop_assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
            prop_assert!(!bytes.contains(&b'\r'));
            let (frame, n) = decode(&bytes, 4096).unwrap().unwrap();
            prop_assert_eq!(n, bytes.len());
            prop_assert_eq!(frame.checksummed, with_checksum);
            prop_assert_eq!(frame.line, line);
        }

        #[test]
        fn a_flipped_byte_is_caught_by_the_checksum(line in line(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode(&line, true);
            let body_len = bytes.len() - 4; // "*HH\n"
            let i = pos.index(body_len);
            bytes[i] ^= 1 << bit;
            prop_assume!(bytes[i] != b'\n');
            match decode(&bytes, 4096) {
                Ok(Some((frame, _))) => prop_assert!(false, "corruption accepted: {:?}", frame),
                Ok(None) => prop_assert!(false, "need more on a complete line"),
                Err(_) => {}
            }
        }
    }
}
