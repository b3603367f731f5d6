//! The serial line codec (`gateway::serial::codec`): any byte stream from a sensor must decode
//! to frames or errors without panicking, consume at least one byte per step, never exceed
//! the line limit, and every decoded line must re-encode to something that decodes the same.
#![no_main]

use gateway::serial::codec::{decode, decode_line, encode};
use libfuzzer_sys::fuzz_target;

const MAX_LINE: usize = 256;

fuzz_target!(|data: &[u8]| {
    let _ = decode_line(data);
    let mut buf = data;
    while !buf.is_empty() {
        match decode(buf, MAX_LINE) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && used <= buf.len(), "consumed {used} of {}", buf.len());
                let again = encode(&frame.line, frame.checksummed);
                let (back, n) = decode(&again, usize::MAX)
                    .expect("an encoded line decodes")
                    .expect("an encoded line is complete");
                assert_eq!(n, again.len());
                assert_eq!(back, frame, "round trip of {:?}", String::from_utf8_lossy(&again));
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
});
