use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use proptest::prelude::*;

use super::*;

fn peer(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000 + n))
}

fn request(ty: MessageType, method: RequestType, mid: u16, path: &str, query: &[&str]) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(ty);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = mid;
    p.set_token(vec![0xA1, 0xB2, (mid & 0xff) as u8]);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for q in query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    p
}

fn post(mid: u16, path: &str, query: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut p = request(
        MessageType::Confirmable,
        RequestType::Post,
        mid,
        path,
        query,
    );
    p.payload = payload.to_vec();
    p.to_bytes_unlimited().unwrap()
}

fn decode(t: &Transmit) -> Packet {
    Packet::from_bytes(&t.payload).unwrap()
}

fn code(p: &Packet) -> String {
    p.header.code.to_string()
}

fn only_transmit(s: &mut Server) -> Packet {
    let t = s.poll_transmit().expect("a response");
    assert!(s.poll_transmit().is_none(), "more than one datagram");
    decode(&t)
}

fn publish_event(s: &mut Server) -> (ExchangeId, Target, Credentials, Vec<u8>) {
    match s.poll_event() {
        Some(Event::Publish {
            exchange,
            target,
            credentials,
            payload,
            ..
        }) => (exchange, target, credentials, payload),
        other => panic!("expected Publish, got {other:?}"),
    }
}

#[test]
fn con_post_gets_piggybacked_2_04_with_token_only_after_complete() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    s.handle_datagram(
        peer(1),
        &post(7, "m/dom/c/chan/room/1", &["auth=s3cret"], b"21.5"),
        now,
    );
    assert!(s.poll_transmit().is_none(), "answered before durable");
    let (ex, target, creds, payload) = publish_event(&mut s);
    assert_eq!(
        target,
        Target {
            domain: Some("dom".into()),
            channel: "chan".into(),
            subtopic: "room/1".into()
        }
    );
    assert_eq!(creds, Credentials::Secret(b"s3cret".to_vec()));
    assert_eq!(payload, b"21.5");
    s.complete(ex, Outcome::Stored, now);
    let resp = only_transmit(&mut s);
    assert_eq!(resp.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(resp.header.message_id, 7);
    assert_eq!(resp.get_token(), &[0xA1, 0xB2, 7]);
    assert_eq!(code(&resp), "2.04");
}

#[test]
fn non_post_gets_non_response_with_fresh_message_id() {
    let mut s = Server::new(ServerConfig {
        initial_message_id: 500,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    let mut p = request(
        MessageType::NonConfirmable,
        RequestType::Post,
        9,
        "channels/c1/messages",
        &[],
    );
    p.payload = b"x".to_vec();
    s.handle_datagram(peer(1), &p.to_bytes().unwrap(), now);
    let (ex, target, creds, _) = publish_event(&mut s);
    assert_eq!(target.domain, None);
    assert_eq!(target.channel, "c1");
    assert_eq!(target.subtopic, "");
    assert_eq!(creds, Credentials::None);
    s.complete(ex, Outcome::Stored, now);
    let resp = only_transmit(&mut s);
    assert_eq!(resp.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(resp.header.message_id, 500);
    assert_eq!(code(&resp), "2.04");
}

#[test]
fn username_password_query_form_is_parsed() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    s.handle_datagram(
        peer(1),
        &post(1, "m/d/c/ch", &["username=sensor-1", "password=pw"], b""),
        now,
    );
    let (_, _, creds, _) = publish_event(&mut s);
    assert_eq!(
        creds,
        Credentials::UsernamePassword {
            username: "sensor-1".into(),
            password: b"pw".to_vec()
        }
    );
}

#[test]
fn mixed_or_repeated_credentials_are_a_bad_request() {
    for query in [
        &["auth=a", "username=u", "password=p"][..],
        &["auth=a", "auth=b"][..],
        &["username=u"][..],
    ] {
        let mut s = Server::new(ServerConfig::default());
        s.handle_datagram(peer(1), &post(1, "m/d/c/ch", query, b""), Instant::now());
        assert!(s.poll_event().is_none(), "{query:?}");
        assert_eq!(code(&only_transmit(&mut s)), "4.00", "{query:?}");
    }
}

#[test]
fn unknown_paths_are_4_04_and_wildcards_4_00() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    s.handle_datagram(peer(1), &post(1, "foo/bar", &[], b""), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.04");
    s.handle_datagram(peer(1), &post(2, "m/d/c/ch/a+b", &[], b""), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.00");
    s.handle_datagram(peer(1), &post(3, "m/d/c/#", &[], b""), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.00");
    assert!(s.poll_event().is_none());
}

#[test]
fn refusals_map_to_codes_with_max_age() {
    let cases = [
        (Refusal::BadRequest, "4.00", None),
        (Refusal::Unauthenticated, "4.01", None),
        (Refusal::Forbidden, "4.03", None),
        (Refusal::NotFound, "4.04", None),
        (Refusal::TooLarge { max: 100 }, "4.13", None),
        // Storage failure and shutdown: the same 5.03 + Max-Age as a full outbox.
        (
            Refusal::Unavailable {
                retry_after: Duration::from_secs(30),
            },
            "5.03",
            Some(30),
        ),
        (
            Refusal::Busy {
                retry_after: Duration::from_millis(2500),
            },
            "5.03",
            Some(3),
        ),
        (
            Refusal::Throttled {
                retry_after: Duration::from_secs(7),
            },
            "4.29",
            Some(7),
        ),
    ];
    for (failure, expected, max_age) in cases {
        let mut s = Server::new(ServerConfig::default());
        let now = Instant::now();
        s.handle_datagram(peer(1), &post(1, "m/d/c/ch", &["auth=x"], b"p"), now);
        let (ex, ..) = publish_event(&mut s);
        s.complete(ex, Outcome::Refused(failure), now);
        let resp = only_transmit(&mut s);
        assert_eq!(code(&resp), expected);
        let age = resp
            .get_first_option(CoapOption::MaxAge)
            .map(|v| decode_uint(v).unwrap());
        assert_eq!(age, max_age, "{failure:?}");
        let size1 = resp
            .get_first_option(CoapOption::Size1)
            .map(|v| decode_uint(v).unwrap());
        let expected_size1 = matches!(failure, Refusal::TooLarge { .. }).then_some(100);
        assert_eq!(size1, expected_size1, "{failure:?}");
        assert_eq!(
            s.stats().refused.get(failure.kind()),
            1,
            "{failure:?} counted once"
        );
        assert_eq!(s.stats().refused.total(), 1);
    }
}

#[test]
fn duplicate_con_gets_the_same_response_and_is_not_stored_twice() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let dgram = post(42, "m/d/c/ch", &["auth=x"], b"once");
    s.handle_datagram(peer(1), &dgram, now);
    // Retransmission while still processing: nothing, and no second event.
    s.handle_datagram(peer(1), &dgram, now + Duration::from_secs(2));
    assert!(s.poll_transmit().is_none());
    let (ex, ..) = publish_event(&mut s);
    assert!(s.poll_event().is_none());
    s.complete(ex, Outcome::Stored, now);
    let first = s.poll_transmit().unwrap();
    s.handle_datagram(peer(1), &dgram, now + Duration::from_secs(5));
    let again = s.poll_transmit().unwrap();
    assert_eq!(first, again);
    assert!(s.poll_event().is_none(), "a duplicate was stored twice");
    assert_eq!(s.stats().duplicates, 2);
    // The same message id from another peer is a different message.
    s.handle_datagram(peer(2), &dgram, now);
    publish_event(&mut s);
}

#[test]
fn dedup_entries_expire_after_exchange_lifetime_and_are_capped() {
    let mut s = Server::new(ServerConfig {
        max_dedup_entries: 3,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    for mid in 0..10u16 {
        s.handle_datagram(peer(1), &post(mid, "m/d/c/ch", &[], b""), now);
        let (ex, ..) = publish_event(&mut s);
        s.complete(ex, Outcome::Stored, now);
        s.poll_transmit().unwrap();
        assert!(s.stats().dedup_entries <= 3);
    }
    assert_eq!(s.poll_timeout(), Some(now + EXCHANGE_LIFETIME));
    s.handle_timeout(now + EXCHANGE_LIFETIME);
    assert_eq!(s.stats().dedup_entries, 0);
    // After the lifetime, the same id is a new message.
    s.handle_datagram(
        peer(1),
        &post(9, "m/d/c/ch", &[], b""),
        now + EXCHANGE_LIFETIME,
    );
    publish_event(&mut s);
}

#[test]
fn pending_requests_are_capped_with_5_03() {
    let mut s = Server::new(ServerConfig {
        max_pending: 2,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    for mid in 0..3u16 {
        s.handle_datagram(peer(1), &post(mid, "m/d/c/ch", &[], b""), now);
    }
    let resp = only_transmit(&mut s);
    assert_eq!(code(&resp), "5.03");
    assert!(resp.get_first_option(CoapOption::MaxAge).is_some());
    assert_eq!(s.stats().pending, 2);
}

#[test]
fn empty_con_ping_gets_rst_and_malformed_con_gets_rst() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let mut ping = Packet::new();
    ping.header.set_type(MessageType::Confirmable);
    ping.header.code = MessageClass::Empty;
    ping.header.message_id = 77;
    s.handle_datagram(peer(1), &ping.to_bytes().unwrap(), now);
    let rst = only_transmit(&mut s);
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    assert_eq!(rst.header.message_id, 77);
    // CON with token length 9 (invalid).
    s.handle_datagram(peer(1), &[0x49, 0x02, 0x12, 0x34], now);
    let rst = only_transmit(&mut s);
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    assert_eq!(rst.header.message_id, 0x1234);
    assert_eq!(s.stats().malformed, 1);
}

#[test]
fn unsupported_methods_and_critical_options_are_refused() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let p = request(
        MessageType::Confirmable,
        RequestType::Delete,
        1,
        "m/d/c/ch",
        &[],
    );
    s.handle_datagram(peer(1), &p.to_bytes().unwrap(), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.05");
    let mut p = request(
        MessageType::Confirmable,
        RequestType::Post,
        2,
        "m/d/c/ch",
        &[],
    );
    p.add_option(CoapOption::IfMatch, vec![1]);
    s.handle_datagram(peer(1), &p.to_bytes().unwrap(), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.02");
}

fn block_post(mid: u16, num: u32, more: bool, szx: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = request(
        MessageType::Confirmable,
        RequestType::Post,
        mid,
        "m/d/c/ch",
        &["auth=k"],
    );
    p.add_option(
        CoapOption::Block1,
        encode_uint((num << 4) | (u32::from(more) << 3) | szx),
    );
    p.payload = payload.to_vec();
    p.to_bytes_unlimited().unwrap()
}

/// The shell's side of block 0: authorizes every [`Event::Authorize`] waiting.
fn authorize_all(s: &mut Server, now: Instant) {
    let mut waiting = Vec::new();
    while let Some(ev) = s.poll_event() {
        match ev {
            Event::Authorize { exchange, .. } => waiting.push(exchange),
            other => panic!("expected Authorize, got {other:?}"),
        }
    }
    for ex in waiting {
        s.complete(ex, Outcome::Authorized, now);
    }
}

#[test]
fn block1_transfer_is_reassembled_and_final_response_echoes_block1() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let body: Vec<u8> = (0..100u8).collect();
    let chunks: Vec<&[u8]> = body.chunks(32).collect(); // szx 1 = 32 bytes
    for (i, chunk) in chunks.iter().enumerate() {
        let more = i + 1 < chunks.len();
        let num = u32::try_from(i).unwrap();
        s.handle_datagram(
            peer(1),
            &block_post(100 + num as u16, num, more, 1, chunk),
            now,
        );
        if num == 0 {
            authorize_all(&mut s, now);
        }
        if more {
            let resp = only_transmit(&mut s);
            assert_eq!(code(&resp), "2.31");
            let b1 = decode_uint(resp.get_first_option(CoapOption::Block1).unwrap()).unwrap();
            assert_eq!(b1 >> 4, num);
            assert!(s.poll_event().is_none());
        }
    }
    let (ex, _, _, payload) = publish_event(&mut s);
    assert_eq!(payload, body);
    s.complete(ex, Outcome::Stored, now);
    let resp = only_transmit(&mut s);
    assert_eq!(code(&resp), "2.04");
    let b1 = decode_uint(resp.get_first_option(CoapOption::Block1).unwrap()).unwrap();
    assert_eq!(b1, 3 << 4 | 1);
    assert_eq!(s.stats().block_transfers, 0);
}

#[test]
fn block1_beyond_max_payload_is_4_13_with_size1() {
    let mut s = Server::new(ServerConfig {
        max_payload: 64,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    let chunk = [0u8; 32];
    for num in 0..2u32 {
        s.handle_datagram(peer(1), &block_post(num as u16, num, true, 1, &chunk), now);
        authorize_all(&mut s, now);
        assert_eq!(code(&only_transmit(&mut s)), "2.31");
    }
    s.handle_datagram(peer(1), &block_post(2, 2, true, 1, &chunk), now);
    let resp = only_transmit(&mut s);
    assert_eq!(code(&resp), "4.13");
    assert_eq!(
        decode_uint(resp.get_first_option(CoapOption::Size1).unwrap()),
        Some(64)
    );
    assert_eq!(s.stats().block_transfers, 0);
    // A single datagram beyond the limit too.
    s.handle_datagram(peer(1), &post(50, "m/d/c/ch", &[], &[1u8; 65]), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.13");
    assert!(s.poll_event().is_none());
}

#[test]
fn block1_out_of_order_is_4_08_and_transfers_expire() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    s.handle_datagram(peer(1), &block_post(1, 0, true, 0, &[0; 16]), now);
    authorize_all(&mut s, now);
    only_transmit(&mut s);
    s.handle_datagram(peer(1), &block_post(2, 2, true, 0, &[0; 16]), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.08");
    s.handle_datagram(peer(1), &block_post(3, 0, true, 0, &[0; 16]), now);
    authorize_all(&mut s, now);
    only_transmit(&mut s);
    assert_eq!(s.stats().block_transfers, 1);
    // Idle transfers go after `block_idle_timeout`, well before EXCHANGE_LIFETIME.
    let idle = ServerConfig::default().block_idle_timeout;
    assert!(idle < EXCHANGE_LIFETIME);
    s.handle_timeout(now + idle - Duration::from_secs(1));
    assert_eq!(s.stats().block_transfers, 1);
    s.handle_timeout(now + idle);
    assert_eq!(s.stats().block_transfers, 0);
}

/// Issue 20.8: block 0 from a peer that the shell does not authenticate gets 4.01 and
/// leaves no transfer behind.
#[test]
fn block1_from_an_unauthenticated_peer_is_4_01_before_any_slot_is_held() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    s.handle_datagram(peer(1), &block_post(1, 0, true, 0, &[0; 16]), now);
    assert_eq!(s.stats().block_transfers, 0);
    let ex = match s.poll_event() {
        Some(Event::Authorize { exchange, .. }) => exchange,
        other => panic!("expected Authorize, got {other:?}"),
    };
    s.complete(ex, Outcome::Refused(Refusal::Unauthenticated), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.01");
    assert_eq!(s.stats().block_transfers, 0);
    // Block 1 of it finds nothing.
    s.handle_datagram(peer(1), &block_post(2, 1, true, 0, &[0; 16]), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.08");
}

/// Issue 20.8: one address cannot hold every transfer slot; another peer still transfers.
#[test]
fn block1_transfers_are_capped_per_address() {
    let config = ServerConfig {
        max_block_transfers: 16,
        max_block_transfers_per_peer: 4,
        ..ServerConfig::default()
    };
    let mut s = Server::new(config);
    let now = Instant::now();
    for i in 0..40u16 {
        let mut p = Packet::from_bytes(&block_post(i, 0, true, 0, &[0; 16])).unwrap();
        p.add_option(CoapOption::UriPath, format!("t{i}").into_bytes());
        // Other ports of the same address too.
        s.handle_datagram(
            SocketAddr::from(([192, 0, 2, 1], 4000 + i % 3)),
            &p.to_bytes().unwrap(),
            now,
        );
        authorize_all(&mut s, now);
        assert_eq!(code(&only_transmit(&mut s)), "2.31");
    }
    assert_eq!(s.stats().block_transfers, 4);
    for num in 0..2u32 {
        s.handle_datagram(
            peer(9),
            &block_post(200 + num as u16, num, num == 0, 0, &[0; 16]),
            now,
        );
        if num == 0 {
            authorize_all(&mut s, now);
            assert_eq!(code(&only_transmit(&mut s)), "2.31");
        }
    }
    let (_, _, _, payload) = publish_event(&mut s);
    assert_eq!(payload.len(), 32);
}

fn observe_get(mid: u16, token: u8, observe: u32) -> Vec<u8> {
    let mut p = request(
        MessageType::Confirmable,
        RequestType::Get,
        mid,
        "m/d/c/ch",
        &["auth=k"],
    );
    p.set_token(vec![token]);
    p.set_observe_value(observe);
    p.to_bytes().unwrap()
}

fn subscribe(s: &mut Server, mid: u16, token: u8, now: Instant) -> ExchangeId {
    s.handle_datagram(peer(1), &observe_get(mid, token, 0), now);
    let ex = match s.poll_event() {
        Some(Event::Subscribe { exchange, .. }) => exchange,
        other => panic!("expected Subscribe, got {other:?}"),
    };
    s.complete(ex, Outcome::Subscribed, now);
    let resp = only_transmit(s);
    assert_eq!(code(&resp), "2.05");
    assert!(resp.get_observe_value().is_some());
    ex
}

#[test]
fn observe_notifications_are_confirmable_and_retransmitted_until_acked() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let obs = subscribe(&mut s, 1, 0x55, now);
    s.notify(obs, b"cmd-1".to_vec(), None, now).unwrap();
    s.notify(obs, b"cmd-2".to_vec(), None, now).unwrap();
    let n1 = only_transmit(&mut s);
    assert_eq!(n1.header.get_type(), MessageType::Confirmable);
    assert_eq!(n1.get_token(), &[0x55]);
    assert_eq!(n1.payload, b"cmd-1");
    let seq1 = n1.get_observe_value().unwrap().unwrap();
    // No ACK: retransmitted after ACK_TIMEOUT, then 2x.
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(2)));
    s.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(
        only_transmit(&mut s).header.message_id,
        n1.header.message_id
    );
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(6)));
    // ACK: the next queued notification goes out with a higher sequence number.
    let mut ack = Packet::new();
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.message_id = n1.header.message_id;
    s.handle_datagram(
        peer(1),
        &ack.to_bytes().unwrap(),
        now + Duration::from_secs(3),
    );
    let n2 = only_transmit(&mut s);
    assert_eq!(n2.payload, b"cmd-2");
    assert!(n2.get_observe_value().unwrap().unwrap() > seq1);
}

#[test]
fn unacknowledged_notifications_end_the_observation() {
    let mut s = Server::new(ServerConfig::default());
    let mut now = Instant::now();
    let obs = subscribe(&mut s, 1, 1, now);
    s.notify(obs, b"c".to_vec(), None, now).unwrap();
    let mut sent = 0;
    while let Some(t) = s.poll_timeout() {
        while s.poll_transmit().is_some() {
            sent += 1;
        }
        now = t;
        s.handle_timeout(now);
        if s.stats().observers == 0 {
            break;
        }
    }
    assert_eq!(sent, 1 + 4, "initial + MAX_RETRANSMIT");
    assert_eq!(s.poll_event(), Some(Event::ObserveEnded { observer: obs }));
    assert_eq!(
        s.notify(obs, vec![], None, now),
        Err(NotifyError::UnknownObserver)
    );
}

#[test]
fn rst_to_a_notification_or_deregistration_ends_the_observation() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let obs = subscribe(&mut s, 1, 9, now);
    s.notify(obs, b"c".to_vec(), None, now).unwrap();
    let n = only_transmit(&mut s);
    let mut rst = Packet::new();
    rst.header.set_type(MessageType::Reset);
    rst.header.message_id = n.header.message_id;
    s.handle_datagram(peer(1), &rst.to_bytes().unwrap(), now);
    assert_eq!(s.poll_event(), Some(Event::ObserveEnded { observer: obs }));

    let obs = subscribe(&mut s, 2, 10, now);
    s.handle_datagram(peer(1), &observe_get(3, 10, 1), now);
    assert_eq!(s.poll_event(), Some(Event::ObserveEnded { observer: obs }));
    assert!(matches!(s.poll_event(), Some(Event::Poll { .. })));
    assert_eq!(s.stats().observers, 0);
}

/// Registers an observation from `from` with token `token` (two bytes); returns its id,
/// or the error code answered.
fn subscribe_from(
    s: &mut Server,
    from: SocketAddr,
    mid: u16,
    token: u16,
    now: Instant,
) -> Result<ExchangeId, String> {
    let mut p = Packet::from_bytes(&observe_get(mid, 0, 0)).unwrap();
    p.set_token(token.to_be_bytes().to_vec());
    s.handle_datagram(from, &p.to_bytes().unwrap(), now);
    let ex = loop {
        match s.poll_event() {
            Some(Event::Subscribe { exchange, .. }) => break exchange,
            Some(Event::ObserveEnded { .. }) => {}
            other => panic!("expected Subscribe, got {other:?}"),
        }
    };
    s.complete(ex, Outcome::Subscribed, now);
    let mut answer = None;
    while let Some(t) = s.poll_transmit() {
        let resp = decode(&t);
        if resp.get_token() == token.to_be_bytes() {
            answer = Some(resp);
        }
    }
    let resp = answer.expect("an answer to the registration");
    if code(&resp) == "2.05" {
        Ok(ex)
    } else {
        Err(code(&resp))
    }
}

/// Issue 20.9: one peer registering many observations keeps at most its cap (its oldest are
/// ended with 5.03), so another client's Observe is still accepted.
#[test]
fn one_peer_cannot_fill_the_observe_table() {
    let mut s = Server::new(ServerConfig {
        max_observers: 64,
        max_observers_per_peer: 8,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    let mut ids = Vec::new();
    for i in 0..1100u16 {
        ids.push(subscribe_from(&mut s, peer(1), i, i, now).expect("accepted"));
    }
    assert_eq!(s.stats().observers, 8);
    // The newest are kept; the oldest got a final 5.03 and are gone.
    assert!(s.notify(ids[1099], b"x".to_vec(), None, now).is_ok());
    assert_eq!(
        s.notify(ids[0], b"x".to_vec(), None, now),
        Err(NotifyError::UnknownObserver)
    );
    subscribe_from(&mut s, peer(2), 5000, 1, now).expect("another peer's Observe");
}

/// Issue 20.9: a full table makes room by ending the oldest registration of the peer that
/// holds the most, never by refusing a newcomer.
#[test]
fn a_full_observe_table_replaces_the_biggest_holders_oldest() {
    let mut s = Server::new(ServerConfig {
        max_observers: 16,
        max_observers_per_peer: 16,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    let mut first = None;
    for i in 0..16u16 {
        let id = subscribe_from(&mut s, peer(1), i, i, now).unwrap();
        first.get_or_insert(id);
    }
    let small = subscribe_from(&mut s, peer(3), 100, 1, now);
    assert!(small.is_ok(), "a newcomer was refused: {small:?}");
    assert_eq!(s.stats().observers, 16);
    assert!(s.notify(first.unwrap(), b"x".to_vec(), None, now).is_err());
    // peer 3 (one registration) is never the victim while peer 1 holds more.
    for i in 0..20u16 {
        subscribe_from(&mut s, peer(4), 200 + i, i, now).unwrap();
    }
    assert!(s.notify(small.unwrap(), b"x".to_vec(), None, now).is_ok());
}

/// Issue 20.9: a registration whose peer sent nothing for `observe_idle_timeout` is ended;
/// one whose peer keeps talking is kept.
#[test]
fn idle_observe_registrations_expire() {
    let idle = Duration::from_secs(600);
    let mut s = Server::new(ServerConfig {
        observe_idle_timeout: idle,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    let quiet = subscribe_from(&mut s, peer(1), 1, 1, now).unwrap();
    let chatty = subscribe_from(&mut s, peer(2), 2, 2, now).unwrap();
    let mut t = now;
    while t < now + idle + Duration::from_secs(120) {
        t += Duration::from_secs(30);
        // peer 2 pings now and then.
        s.handle_datagram(peer(2), &[0x40, 0, 0, (t - now).as_secs() as u8], t);
        s.handle_timeout(t);
        while s.poll_transmit().is_some() {}
    }
    assert!(
        s.notify(quiet, b"x".to_vec(), None, t).is_err(),
        "idle registration kept"
    );
    assert!(s.notify(chatty, b"x".to_vec(), None, t).is_ok());
}

#[test]
fn notification_queue_is_bounded() {
    let mut s = Server::new(ServerConfig {
        max_queued_notifications: 2,
        ..ServerConfig::default()
    });
    let now = Instant::now();
    let obs = subscribe(&mut s, 1, 1, now);
    s.notify(obs, b"1".to_vec(), None, now).unwrap(); // in flight
    s.notify(obs, b"2".to_vec(), None, now).unwrap();
    s.notify(obs, b"3".to_vec(), None, now).unwrap();
    assert_eq!(
        s.notify(obs, b"4".to_vec(), None, now),
        Err(NotifyError::QueueFull)
    );
}

#[test]
fn forget_peer_drops_its_state() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let obs = subscribe(&mut s, 1, 1, now);
    s.handle_datagram(peer(1), &post(2, "m/d/c/ch", &[], b""), now);
    publish_event(&mut s);
    s.forget_peer(peer(1));
    let st = s.stats();
    assert_eq!((st.observers, st.pending, st.dedup_entries), (0, 0, 0));
    assert_eq!(s.poll_event(), Some(Event::ObserveEnded { observer: obs }));
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic_and_state_stays_bounded(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..50)
    ) {
        let mut s = Server::new(ServerConfig { max_dedup_entries: 8, max_pending: 4, ..ServerConfig::default() });
        let now = Instant::now();
        for d in &datagrams {
            s.handle_datagram(peer(1), d, now);
            while s.poll_transmit().is_some() {}
        }
        let st = s.stats();
        prop_assert!(st.dedup_entries <= 8);
        prop_assert!(st.pending <= 4);
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..8),
        cut in 0usize..64,
    ) {
        let mut d = post(1, "m/d/c/ch/sub", &["username=u", "password=p"], b"payload");
        for (i, b) in flips {
            let len = d.len();
            d[i % len] ^= b;
        }
        d.truncate(cut.max(1).min(d.len()));
        let mut s = Server::new(ServerConfig::default());
        s.handle_datagram(peer(1), &d, Instant::now());
        while let Some(ev) = s.poll_event() {
            if let Event::Publish { exchange, .. } = ev {
                s.complete(exchange, Outcome::Stored, Instant::now());
            }
        }
    }
}

#[test]
fn refusals_are_counted_by_class_once_even_when_a_duplicate_repeats_them() {
    let config = ServerConfig {
        max_payload: 8,
        ..ServerConfig::default()
    };
    let mut s = Server::new(config);
    let now = Instant::now();
    // Refused by the core itself: too large, then a malformed path.
    let big = post(1, "m/d/c/ch", &["auth=x"], b"far too large");
    s.handle_datagram(peer(1), &big, now);
    assert_eq!(code(&only_transmit(&mut s)), "4.13");
    s.handle_datagram(peer(1), &big, now);
    assert_eq!(
        code(&only_transmit(&mut s)),
        "4.13",
        "duplicate answered again"
    );
    s.handle_datagram(peer(1), &post(2, "m/d/c/+", &["auth=x"], b"p"), now);
    assert_eq!(code(&only_transmit(&mut s)), "4.00");
    // Refused by the shell's decision; a stored message is no refusal.
    s.handle_datagram(peer(1), &post(3, "m/d/c/ch", &["auth=x"], b"p"), now);
    let (ex, ..) = publish_event(&mut s);
    s.complete(ex, Outcome::Refused(Refusal::Unauthenticated), now);
    s.handle_datagram(peer(1), &post(4, "m/d/c/ch", &["auth=x"], b"p"), now);
    let (ex, ..) = publish_event(&mut s);
    s.complete(ex, Outcome::Stored, now);
    let refused = s.stats().refused;
    assert_eq!(refused.get(RefusalKind::TooLarge), 1);
    assert_eq!(refused.get(RefusalKind::BadRequest), 1);
    assert_eq!(refused.get(RefusalKind::Unauthenticated), 1);
    assert_eq!(refused.total(), 3);
}

#[test]
fn a_poll_answer_carries_the_command_once_with_max_age_0_and_a_retransmission_gets_the_same() {
    let mut s = Server::new(ServerConfig::default());
    let now = Instant::now();
    let get = request(
        MessageType::Confirmable,
        RequestType::Get,
        7,
        "m/d/c/ch/cmd",
        &["auth=k"],
    )
    .to_bytes()
    .unwrap();
    s.handle_datagram(peer(1), &get, now);
    let exchange = match s.poll_event() {
        Some(Event::Poll {
            exchange, target, ..
        }) => {
            assert_eq!(target.subtopic, "cmd");
            exchange
        }
        other => panic!("expected Poll, got {other:?}"),
    };
    assert!(s.poll_transmit().is_none(), "no answer before the decision");
    s.complete(
        exchange,
        Outcome::Content {
            payload: b"lamp-on".to_vec(),
            content_format: Some(0),
        },
        now,
    );
    let resp = only_transmit(&mut s);
    assert_eq!(resp.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(resp.header.message_id, 7);
    assert_eq!(code(&resp), "2.05");
    assert_eq!(resp.payload, b"lamp-on");
    assert_eq!(
        resp.get_first_option(CoapOption::MaxAge),
        Some(&Vec::new()),
        "Max-Age 0 (empty uint)"
    );
    assert_eq!(
        resp.get_first_option(CoapOption::ContentFormat),
        Some(&Vec::new()),
        "Content-Format 0"
    );
    // The ACK was lost: the retransmitted CON GET gets the same answer, not a second poll.
    s.handle_datagram(peer(1), &get, now + Duration::from_secs(2));
    assert!(s.poll_event().is_none(), "a duplicate must not poll again");
    assert_eq!(only_transmit(&mut s).payload, b"lamp-on");
}
