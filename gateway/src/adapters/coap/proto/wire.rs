//! CoAP wire helpers shared by the core's parts: packet and uint-option encoding.

use coap_lite::Packet;

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
