//! CoAP wire helpers shared by the core's parts: reading a received message in place,
//! packet and uint-option encoding.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

pub(super) fn encode(p: &Packet) -> Vec<u8> {
    // Our own responses are small and well-formed; the codec's size limit does not apply to
    // them, but a failure must not panic the adapter.
    p.to_bytes_unlimited().unwrap_or_default()
}

/// CoAP uint option encoding: big-endian, no leading zero bytes.
pub(super) fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

pub(super) fn decode_uint(v: &[u8]) -> Option<u32> {
    if v.len() > 4 {
        return None;
    }
    Some(v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// A received CoAP message, read in place: header fields, token, options and payload are
/// views into the datagram. Parsing allocates nothing (coap_lite's `Packet::from_bytes`
/// copied the token, the payload and every option value into their own `Vec`s, in a
/// linked list per option number in a `BTreeMap`: ~15 allocations for a typical publish).
///
/// It accepts and refuses exactly what `Packet::from_bytes` of coap_lite 0.13 does (the
/// property test below compares the two on arbitrary bytes), so replacing it changed no
/// answer: 4-byte header, token length at most 8, option delta and length nibble 15
/// refused, extended delta/length that run past the end refused, option numbers that
/// overflow `u16` refused; a payload marker ends the options (an empty payload after it is
/// accepted, as coap_lite does).
#[derive(Debug, Clone, Copy)]
pub(super) struct Message<'a> {
    first: u8,
    code: u8,
    pub message_id: u16,
    token: &'a [u8],
    /// The validated option bytes (between token and payload marker).
    options: &'a [u8],
    payload: &'a [u8],
}

/// One option as it is on the wire, decoded: (number, value, bytes it took).
fn next_option(buf: &[u8], number: u16) -> Result<(u16, &[u8], usize), ()> {
    let byte = *buf.first().ok_or(())?;
    let mut idx = 1;
    let mut extended = |nibble: u8| -> Result<u16, ()> {
        match nibble {
            13 => {
                let b = *buf.get(idx).ok_or(())?;
                idx += 1;
                Ok(u16::from(b) + 13)
            }
            14 => {
                let (Some(hi), Some(lo)) = (buf.get(idx), buf.get(idx + 1)) else {
                    return Err(());
                };
                idx += 2;
                u16::from_be_bytes([*hi, *lo]).checked_add(269).ok_or(())
            }
            15 => Err(()),
            n => Ok(u16::from(n)),
        }
    };
    let delta = extended(byte >> 4)?;
    let length = usize::from(extended(byte & 0xF)?);
    let number = number.checked_add(delta).ok_or(())?;
    let value = buf.get(idx..idx + length).ok_or(())?;
    Ok((number, value, idx + length))
}

impl<'a> Message<'a> {
    pub(super) fn parse(buf: &'a [u8]) -> Result<Self, ()> {
        if buf.len() < 4 {
            return Err(());
        }
        let tkl = usize::from(buf[0] & 0x0F);
        if tkl > 8 || 4 + tkl > buf.len() {
            return Err(());
        }
        let token = &buf[4..4 + tkl];
        let rest = &buf[4 + tkl..];
        let mut idx = 0;
        let mut number = 0u16;
        while idx < rest.len() && rest[idx] != 0xFF {
            let (n, _, used) = next_option(&rest[idx..], number)?;
            number = n;
            idx += used;
        }
        let payload = rest.get(idx + 1..).unwrap_or_default();
        Ok(Self {
            first: buf[0],
            code: buf[1],
            message_id: u16::from_be_bytes([buf[2], buf[3]]),
            token,
            options: &rest[..idx],
            payload,
        })
    }

    pub(super) fn version(&self) -> u8 {
        self.first >> 6
    }

    pub(super) fn message_type(&self) -> MessageType {
        match (self.first >> 4) & 3 {
            0 => MessageType::Confirmable,
            1 => MessageType::NonConfirmable,
            2 => MessageType::Acknowledgement,
            _ => MessageType::Reset,
        }
    }

    pub(super) fn code(&self) -> MessageClass {
        MessageClass::from(self.code)
    }

    pub(super) fn token(&self) -> &'a [u8] {
        self.token
    }

    pub(super) fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Every option in wire order, which is ascending number order (deltas are unsigned).
    pub(super) fn options(&self) -> Options<'a> {
        Options {
            rest: self.options,
            number: 0,
        }
    }

    /// The values of one option, in order.
    pub(super) fn option(&self, option: CoapOption) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let wanted = u16::from(option);
        self.options()
            .skip_while(move |(n, _)| *n < wanted)
            .take_while(move |(n, _)| *n == wanted)
            .map(|(_, v)| v)
    }

    pub(super) fn first_option(&self, option: CoapOption) -> Option<&'a [u8]> {
        self.option(option).next()
    }
}

/// Iterator over a [`Message`]'s options: (number, value).
#[derive(Debug, Clone)]
pub(super) struct Options<'a> {
    rest: &'a [u8],
    number: u16,
}

impl<'a> Iterator for Options<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // Validated by `Message::parse`: an error here cannot happen, and would end the list.
        let (number, value, used) = next_option(self.rest, self.number).ok()?;
        self.number = number;
        self.rest = &self.rest[used..];
        Some((number, value))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Compares a parse with coap_lite's `Packet::from_bytes` (what the core used before).
    fn same_as_coap_lite(buf: &[u8]) -> Result<(), TestCaseError> {
        let ours = Message::parse(buf);
        let theirs = Packet::from_bytes(buf);
        prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "accepts {:02x?}", buf);
        let (Ok(m), Ok(p)) = (ours, theirs) else {
            return Ok(());
        };
        prop_assert_eq!(m.version(), p.header.get_version());
        prop_assert_eq!(m.message_type(), p.header.get_type());
        prop_assert_eq!(m.code(), p.header.code);
        prop_assert_eq!(m.message_id, p.header.message_id);
        prop_assert_eq!(m.token(), p.get_token());
        prop_assert_eq!(m.payload(), &p.payload[..]);
        let ours: Vec<(u16, Vec<u8>)> = m.options().map(|(n, v)| (n, v.to_vec())).collect();
        let theirs: Vec<(u16, Vec<u8>)> = p
            .options()
            .flat_map(|(n, list)| list.iter().map(|v| (*n, v.clone())))
            .collect();
        prop_assert_eq!(&ours, &theirs);
        for option in [
            CoapOption::UriPath,
            CoapOption::UriQuery,
            CoapOption::ContentFormat,
            CoapOption::Block1,
            CoapOption::Observe,
        ] {
            let ours: Vec<&[u8]> = m.option(option).collect();
            let theirs: Vec<&[u8]> = p
                .get_option(option)
                .map(|l| l.iter().map(Vec::as_slice).collect())
                .unwrap_or_default();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(
                m.first_option(option),
                p.get_first_option(option).map(Vec::as_slice)
            );
        }
        Ok(())
    }

    /// Option bytes biased towards the interesting nibbles (13, 14, 15, 0xFF marker).
    fn option_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                any::<u8>(),
                (0u8..16, 0u8..16).prop_map(|(d, l)| (d << 4) | l),
                Just(0xFF),
                Just(0xD0),
                Just(0x0D),
                Just(0xEE),
            ],
            0..48,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_parse_as_coap_lite_parses_them(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            same_as_coap_lite(&buf)?;
        }

        #[test]
        fn well_formed_headers_with_arbitrary_options_parse_as_coap_lite_parses_them(
            ty in 0u8..4,
            tkl in 0u8..10,
            code in any::<u8>(),
            mid in any::<u16>(),
            rest in option_bytes(),
        ) {
            let mut buf = vec![0x40 | (ty << 4) | tkl, code, (mid >> 8) as u8, mid as u8];
            buf.extend(std::iter::repeat_n(0xAB, usize::from(tkl.min(8))));
            buf.extend(rest);
            same_as_coap_lite(&buf)?;
        }
    }

    #[test]
    fn requests_built_by_coap_lite_read_back() {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(coap_lite::RequestType::Post);
        p.header.message_id = 0xBEEF;
        p.set_token(vec![1, 2, 3, 4]);
        for s in ["m", "dom", "c", "chan", "a", "b"] {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p.add_option(CoapOption::ContentFormat, vec![0x01, 0x10]);
        p.add_option(CoapOption::UriQuery, b"auth=s3cr3t".to_vec());
        // A value long enough for a two-byte extended length.
        p.add_option(CoapOption::UriQuery, vec![b'x'; 300]);
        p.payload = b"[{\"n\":\"t\",\"v\":1}]".to_vec();
        let bytes = p.to_bytes().unwrap();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.message_id, 0xBEEF);
        assert_eq!(m.token(), [1, 2, 3, 4]);
        let path: Vec<&[u8]> = m.option(CoapOption::UriPath).collect();
        assert_eq!(path, [&b"m"[..], b"dom", b"c", b"chan", b"a", b"b"]);
        assert_eq!(
            m.first_option(CoapOption::ContentFormat),
            Some(&[0x01, 0x10][..])
        );
        assert_eq!(
            m.option(CoapOption::UriQuery).nth(1).map(<[u8]>::len),
            Some(300)
        );
        assert_eq!(m.payload(), p.payload.as_slice());
        same_as_coap_lite(&bytes).unwrap();
    }
}
