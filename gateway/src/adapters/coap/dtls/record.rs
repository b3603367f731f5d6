//! DTLS 1.2 record-layer reading and the few plaintext records the table writes itself
//! (fatal alerts, stateless HelloVerifyRequests). Pure functions over bytes; no state.

/// Record content types (RFC 6347 §4.1).
const CT_CCS: u8 = 20;
const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
/// Handshake message types.
const HT_CLIENT_HELLO: u8 = 1;
const HT_SERVER_HELLO: u8 = 2;
const HT_HELLO_VERIFY_REQUEST: u8 = 3;

/// Record iterator over a datagram: (content type, epoch, sequence number, body).
pub(super) fn records(datagram: &[u8]) -> impl Iterator<Item = (u8, u16, u64, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < 13 {
            return None;
        }
        let ct = rest[0];
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&rest[5..11]);
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let body = rest.get(13..13 + len)?;
        rest = &rest[13 + len..];
        Some((ct, epoch, u64::from_be_bytes(seq), body))
    })
}

pub(super) fn only_epoch0(datagram: &[u8]) -> bool {
    let mut any = false;
    for (_, epoch, _, _) in records(datagram) {
        if epoch != 0 {
            return false;
        }
        any = true;
    }
    any
}

pub(super) fn has_ccs(datagram: &[u8]) -> bool {
    records(datagram).any(|(ct, ..)| ct == CT_CCS)
}

pub(super) fn epoch0_max_seq(datagram: &[u8]) -> Option<u64> {
    records(datagram)
        .filter(|(_, epoch, ..)| *epoch == 0)
        .map(|(_, _, seq, _)| seq)
        .max()
}

/// Whether the datagram carries a plaintext fatal alert (what this table sends on failure).
#[cfg(test)]
pub(super) fn is_plain_alert(datagram: &[u8]) -> bool {
    records(datagram).any(|(ct, epoch, ..)| ct == CT_ALERT && epoch == 0)
}

/// Whether the datagram carries an epoch-0 HelloVerifyRequest.
#[cfg(test)]
pub(super) fn is_hello_verify_request(datagram: &[u8]) -> bool {
    records(datagram).any(|(ct, epoch, _, body)| {
        ct == CT_HANDSHAKE && epoch == 0 && body.first() == Some(&HT_HELLO_VERIFY_REQUEST)
    })
}

/// The fields of an epoch-0 ClientHello's first fragment the table decides on, borrowed from
/// the datagram.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientHello<'a> {
    /// Record sequence number (echoed in a stateless HelloVerifyRequest, RFC 6347 §4.2.1).
    pub record_seq: u64,
    pub message_seq: u16,
    pub version: [u8; 2],
    pub random: &'a [u8],
    pub session_id: &'a [u8],
    pub cookie: &'a [u8],
    /// Cipher suites, two bytes each.
    pub suites: &'a [u8],
    pub compression: &'a [u8],
}

impl ClientHello<'_> {
    pub fn suites(&self) -> impl Iterator<Item = u16> + '_ {
        self.suites
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

/// If the datagram starts with an epoch-0 ClientHello (first fragment, fields up to the
/// compression methods present), those fields.
pub(super) fn client_hello(datagram: &[u8]) -> Option<ClientHello<'_>> {
    let (ct, epoch, record_seq, body) = records(datagram).next()?;
    if ct != CT_HANDSHAKE || epoch != 0 || body.len() < 12 || body[0] != HT_CLIENT_HELLO {
        return None;
    }
    let message_seq = u16::from_be_bytes([body[4], body[5]]);
    let frag_off = u32::from_be_bytes([0, body[6], body[7], body[8]]);
    if frag_off != 0 {
        return None;
    }
    let frag_len = usize::try_from(u32::from_be_bytes([0, body[9], body[10], body[11]])).ok()?;
    let hello = body.get(12..12 + frag_len)?;
    let version = [*hello.first()?, *hello.get(1)?];
    let random = hello.get(2..34)?;
    let mut pos = 34;
    let take = |pos: &mut usize, len: usize| -> Option<&[u8]> {
        let s = hello.get(*pos..*pos + len)?;
        *pos += len;
        Some(s)
    };
    let sid_len = usize::from(*hello.get(pos)?);
    pos += 1;
    let session_id = take(&mut pos, sid_len)?;
    let cookie_len = usize::from(*hello.get(pos)?);
    pos += 1;
    let cookie = take(&mut pos, cookie_len)?;
    let suites_len = usize::from(u16::from_be_bytes([*hello.get(pos)?, *hello.get(pos + 1)?]));
    pos += 2;
    if suites_len % 2 != 0 {
        return None;
    }
    let suites = take(&mut pos, suites_len)?;
    let comp_len = usize::from(*hello.get(pos)?);
    pos += 1;
    let compression = take(&mut pos, comp_len)?;
    Some(ClientHello {
        record_seq,
        message_seq,
        version,
        random,
        session_id,
        cookie,
        suites,
        compression,
    })
}

/// If the datagram starts with an epoch-0 ClientHello (first fragment), its cipher suites.
pub fn client_hello_suites(datagram: &[u8]) -> Option<Vec<u16>> {
    client_hello(datagram).map(|h| h.suites().collect())
}

/// A copy of a datagram whose first record is a ClientHello, with that ClientHello's
/// message_seq replaced (the record is otherwise unchanged).
pub(super) fn with_message_seq(datagram: &[u8], message_seq: u16) -> Vec<u8> {
    let mut copy = datagram.to_vec();
    if let Some(b) = copy.get_mut(13 + 4..13 + 6) {
        b.copy_from_slice(&message_seq.to_be_bytes());
    }
    copy
}

/// A plaintext fatal alert in epoch 0 (no keys are shared with a peer that failed).
pub(super) fn fatal_alert(seq: u64, description: u8) -> Vec<u8> {
    let mut rec = Vec::with_capacity(15);
    rec.extend_from_slice(&[CT_ALERT, 0xFE, 0xFD, 0, 0]);
    rec.extend_from_slice(&seq.to_be_bytes()[2..]);
    rec.extend_from_slice(&[0, 2, 2, description]);
    rec
}

/// A HelloVerifyRequest answering `hello` with `cookie`, sent without keeping any state: the
/// record and message sequence numbers echo the ClientHello's (RFC 6347 §4.2.1, §4.2.2), the
/// version is DTLS 1.0 as the RFC requires of a HelloVerifyRequest.
pub(super) fn hello_verify_request(hello: &ClientHello<'_>, cookie: &[u8]) -> Vec<u8> {
    let cookie_len = u8::try_from(cookie.len()).unwrap_or(u8::MAX);
    let cookie = &cookie[..usize::from(cookie_len)];
    let body_len = 3 + cookie.len();
    let mut rec = Vec::with_capacity(13 + 12 + body_len);
    rec.extend_from_slice(&[CT_HANDSHAKE, 0xFE, 0xFF, 0, 0]);
    rec.extend_from_slice(&hello.record_seq.to_be_bytes()[2..]);
    let frag = u16::try_from(12 + body_len).unwrap_or(u16::MAX);
    rec.extend_from_slice(&frag.to_be_bytes());
    let len24 = u32::try_from(body_len).unwrap_or(0).to_be_bytes();
    rec.push(HT_HELLO_VERIFY_REQUEST);
    rec.extend_from_slice(&len24[1..]);
    rec.extend_from_slice(&hello.message_seq.to_be_bytes());
    rec.extend_from_slice(&[0, 0, 0]);
    rec.extend_from_slice(&len24[1..]);
    rec.extend_from_slice(&[0xFE, 0xFF, cookie_len]);
    rec.extend_from_slice(cookie);
    rec
}

/// Whether the datagram carries an epoch-0 ServerHello.
pub(super) fn has_server_hello(datagram: &[u8]) -> bool {
    records(datagram).any(|(ct, epoch, _, body)| {
        ct == CT_HANDSHAKE && epoch == 0 && body.first() == Some(&HT_SERVER_HELLO)
    })
}
