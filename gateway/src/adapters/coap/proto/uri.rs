//! Request target (Uri-Path) and credential (Uri-Query) parsing, critical-option checks.

use coap_lite::{CoapOption, Packet, ResponseType};

use super::{Credentials, Target};

/// 4.02 for a critical option we do not implement (RFC 7252 §5.4.1).
pub(super) fn unsupported_critical_option(packet: &Packet) -> Option<ResponseType> {
    // Uri-Host 3, Observe 6 (elective), Uri-Port 7, Uri-Path 11, Uri-Query 15, Accept 17,
    // Block2 23, Block1 27.
    const UNDERSTOOD_CRITICAL: [u16; 6] = [3, 7, 11, 15, 17, 27];
    for (number, _) in packet.options() {
        if number % 2 == 1 && !UNDERSTOOD_CRITICAL.contains(number) && *number != 23 {
            return Some(ResponseType::BadOption);
        }
    }
    None
}

pub(super) enum PathError {
    NotFound,
    Bad,
}

fn segments(packet: &Packet) -> Result<Vec<String>, PathError> {
    let Some(list) = packet.get_option(CoapOption::UriPath) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|s| String::from_utf8(s.clone()).map_err(|_| PathError::Bad))
        .collect()
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains(['+', '#', '/', '*', '>'])
        && !s.chars().any(char::is_control)
}

/// `m/<domain>/c/<channel>[/<subtopic>]` or `channels/<channel>/messages[/<subtopic>]`.
pub(super) fn parse_path(packet: &Packet) -> Result<Target, PathError> {
    let segs = segments(packet)?;
    let (domain, channel, rest) = match segs.as_slice() {
        [m, domain, c, channel, rest @ ..] if m == "m" && c == "c" => {
            (Some(domain.clone()), channel.clone(), rest)
        }
        [ch, channel, msgs, rest @ ..] if ch == "channels" && msgs == "messages" => {
            (None, channel.clone(), rest)
        }
        _ => return Err(PathError::NotFound),
    };
    if domain.as_deref().is_some_and(|d| !valid_segment(d)) || !valid_segment(&channel) {
        return Err(PathError::Bad);
    }
    if !rest.iter().all(|s| valid_segment(s)) {
        return Err(PathError::Bad);
    }
    Ok(Target {
        domain,
        channel,
        subtopic: rest.join("/"),
    })
}

/// Uri-Query: `auth=<secret>` or `username=<client>&password=<secret>`. Each key at most once;
/// both forms at once, or unknown credential keys alongside, are a bad request.
pub(super) fn parse_query(packet: &Packet) -> Result<Credentials, ()> {
    let mut auth = None;
    let mut username = None;
    let mut password = None;
    if let Some(list) = packet.get_option(CoapOption::UriQuery) {
        for q in list {
            let Some(eq) = q.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (k, v) = (&q[..eq], q[eq + 1..].to_vec());
            let slot = match k {
                b"auth" => &mut auth,
                b"password" => &mut password,
                b"username" => {
                    if username.is_some() {
                        return Err(());
                    }
                    username = Some(String::from_utf8(v).map_err(|_| ())?);
                    continue;
                }
                _ => continue,
            };
            if slot.is_some() {
                return Err(());
            }
            *slot = Some(v);
        }
    }
    match (auth, username, password) {
        (None, None, None) => Ok(Credentials::None),
        (Some(secret), None, None) => Ok(Credentials::Secret(secret)),
        (None, Some(username), Some(password)) => {
            Ok(Credentials::UsernamePassword { username, password })
        }
        _ => Err(()),
    }
}
