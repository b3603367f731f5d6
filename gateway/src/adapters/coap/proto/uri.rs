//! Request target (Uri-Path) and credential (Uri-Query) parsing, critical-option checks.

use coap_lite::{CoapOption, ResponseType};

use super::wire::Message;
use super::{Credentials, Target};

/// 4.02 for a critical option we do not implement (RFC 7252 §5.4.1).
pub(super) fn unsupported_critical_option(packet: &Message<'_>) -> Option<ResponseType> {
    // Uri-Host 3, Observe 6 (elective), Uri-Port 7, Uri-Path 11, Uri-Query 15, Accept 17,
    // Block2 23, Block1 27.
    const UNDERSTOOD_CRITICAL: [u16; 6] = [3, 7, 11, 15, 17, 27];
    for (number, _) in packet.options() {
        if number % 2 == 1 && !UNDERSTOOD_CRITICAL.contains(&number) && number != 23 {
            return Some(ResponseType::BadOption);
        }
    }
    None
}

pub(super) enum PathError {
    NotFound,
    Bad,
}

/// The Uri-Path segments, borrowed from the datagram (one allocation: the list).
fn segments<'a>(packet: &Message<'a>) -> Result<Vec<&'a str>, PathError> {
    packet
        .option(CoapOption::UriPath)
        .map(|s| std::str::from_utf8(s).map_err(|_| PathError::Bad))
        .collect()
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains(['+', '#', '/', '*', '>'])
        && !s.chars().any(char::is_control)
}

/// What a request's Uri-Path names.
pub(super) enum Resource {
    /// A channel: publish, Observe, poll.
    Channel(Target),
    /// `hc/<domain>`: SuperMQ's health (authentication) check (supermq v0.19.1
    /// `pkg/messaging/topics.go` `ParseTopic`: exactly `hc/<domain_id>`, anything else under
    /// `hc` is a malformed topic, 4.00 in `coap/api/transport.go`).
    Health { domain: String },
}

/// A channel path (see [`parse_segments`]) or `hc/<domain>`.
pub(super) fn parse_resource(packet: &Message<'_>) -> Result<Resource, PathError> {
    let segs = segments(packet)?;
    match segs.as_slice() {
        ["hc", domain] => {
            if valid_segment(domain) {
                Ok(Resource::Health {
                    domain: (*domain).to_owned(),
                })
            } else {
                Err(PathError::Bad)
            }
        }
        ["hc", ..] => Err(PathError::Bad),
        _ => parse_segments(&segs).map(Resource::Channel),
    }
}

/// `m/<domain>/c/<channel>[/<subtopic>]` or `channels/<channel>/messages[/<subtopic>]`.
fn parse_segments(segs: &[&str]) -> Result<Target, PathError> {
    let (domain, channel, rest) = match segs {
        ["m", domain, "c", channel, rest @ ..] => (Some(*domain), *channel, rest),
        ["channels", channel, "messages", rest @ ..] => (None, *channel, rest),
        _ => return Err(PathError::NotFound),
    };
    if domain.is_some_and(|d| !valid_segment(d)) || !valid_segment(channel) {
        return Err(PathError::Bad);
    }
    if !rest.iter().all(|s| valid_segment(s)) {
        return Err(PathError::Bad);
    }
    Ok(Target {
        domain: domain.map(str::to_owned),
        channel: channel.to_owned(),
        subtopic: rest.join("/"),
    })
}

/// Uri-Query: `auth=<secret>` or `username=<client>&password=<secret>`. Each key at most once;
/// both forms at once, or unknown credential keys alongside, are a bad request.
pub(super) fn parse_query(packet: &Message<'_>) -> Result<Credentials, ()> {
    let mut auth: Option<&[u8]> = None;
    let mut username: Option<&str> = None;
    let mut password: Option<&[u8]> = None;
    for q in packet.option(CoapOption::UriQuery) {
        let Some(eq) = q.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (k, v) = (&q[..eq], &q[eq + 1..]);
        let slot = match k {
            b"auth" => &mut auth,
            b"password" => &mut password,
            b"username" => {
                if username.is_some() {
                    return Err(());
                }
                username = Some(std::str::from_utf8(v).map_err(|_| ())?);
                continue;
            }
            _ => continue,
        };
        if slot.is_some() {
            return Err(());
        }
        *slot = Some(v);
    }
    match (auth, username, password) {
        (None, None, None) => Ok(Credentials::None),
        (Some(secret), None, None) => Ok(Credentials::Secret(secret.to_vec())),
        (None, Some(username), Some(password)) => Ok(Credentials::UsernamePassword {
            username: username.to_owned(),
            password: password.to_vec(),
        }),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

    use super::super::{Event, Outcome, Server, ServerConfig};
    use super::*;

    fn request(method: RequestType, mid: u16, path: &str, query: &str) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = mid;
        p.set_token(vec![mid as u8]);
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        p.add_option(CoapOption::UriQuery, query.as_bytes().to_vec());
        p.payload = b"ignored".to_vec();
        p.to_bytes().unwrap()
    }

    fn answer(s: &mut Server) -> MessageClass {
        let t = s.poll_transmit().expect("an answer");
        Packet::from_bytes(&t.payload).unwrap().header.code
    }

    /// `hc/<domain>` (supermq v0.19.1 `pkg/messaging/topics.go` `ParseTopic`,
    /// `coap/api/transport.go`): a POST is a health-check event answered 2.01 Created; other
    /// methods 4.05; `hc` with no domain or more segments is a malformed topic, 4.00.
    #[test]
    fn health_check_path_is_its_own_resource() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        let now = Instant::now();
        let mut s = Server::new(ServerConfig::default());
        s.handle_datagram(
            peer,
            &request(RequestType::Post, 1, "hc/dom", "auth=s3cret"),
            now,
        );
        let Some(Event::HealthCheck {
            exchange,
            domain,
            credentials,
            ..
        }) = s.poll_event()
        else {
            panic!("no health check event");
        };
        assert_eq!(domain, "dom");
        assert_eq!(credentials, Credentials::Secret(b"s3cret".to_vec()));
        assert!(s.poll_transmit().is_none(), "answered before the decision");
        s.complete(exchange, Outcome::Checked, now);
        assert_eq!(
            answer(&mut s),
            MessageClass::Response(ResponseType::Created)
        );

        s.handle_datagram(
            peer,
            &request(RequestType::Post, 2, "hc/dom", "auth=x"),
            now,
        );
        let Some(Event::HealthCheck { exchange, .. }) = s.poll_event() else {
            panic!("no health check event");
        };
        s.complete(
            exchange,
            Outcome::Refused(crate::intake::Refusal::Unauthenticated),
            now,
        );
        assert_eq!(
            answer(&mut s),
            MessageClass::Response(ResponseType::Unauthorized)
        );

        for (mid, method, path, code) in [
            (
                3,
                RequestType::Get,
                "hc/dom",
                ResponseType::MethodNotAllowed,
            ),
            (4, RequestType::Post, "hc", ResponseType::BadRequest),
            (
                5,
                RequestType::Post,
                "hc/dom/more",
                ResponseType::BadRequest,
            ),
            (6, RequestType::Post, "hc/a+b", ResponseType::BadRequest),
        ] {
            s.handle_datagram(peer, &request(method, mid, path, "auth=x"), now);
            assert!(s.poll_event().is_none(), "{path}");
            assert_eq!(answer(&mut s), MessageClass::Response(code), "{path}");
        }
        // A publish with Outcome::Checked is a shell bug, never 2.01.
        s.handle_datagram(
            peer,
            &request(RequestType::Post, 7, "m/dom/c/ch", "auth=x"),
            now,
        );
        let Some(Event::Publish { exchange, .. }) = s.poll_event() else {
            panic!("no publish event");
        };
        s.complete(exchange, Outcome::Checked, now);
        assert_eq!(
            answer(&mut s),
            MessageClass::Response(ResponseType::ServiceUnavailable)
        );
    }
}
