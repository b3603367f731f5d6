//! The CoAP shell driven over a real socket against the intake test fixture.

use super::*;
use crate::adapters::coap::backend::StoreBackend;
use crate::intake::testkit::{Fixture, LONELY_SECRET, OFF_SECRET, OutboxState, SECRET};
use crate::runtime::metrics::Refusal as Kind;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

fn post(secret: &str) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = 7;
    p.set_token(vec![1]);
    for seg in ["m", "dom", "c", "temps"] {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.add_option(CoapOption::UriQuery, format!("auth={secret}").into_bytes());
    p.payload = b"21.5".to_vec();
    p.to_bytes().unwrap()
}

/// Disabled client, not connected, outbox full, shutdown: each answered as README
/// "Refusals" says and counted once in the metrics (adapter `coap`), under its kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_has_its_documented_code_and_is_counted_once() {
    let cases = [
        (
            OutboxState::Open,
            OFF_SECRET,
            ResponseType::Unauthorized,
            Kind::Unauthenticated,
            false,
        ),
        (
            OutboxState::Open,
            LONELY_SECRET,
            ResponseType::Forbidden,
            Kind::Forbidden,
            false,
        ),
        (
            OutboxState::Full,
            SECRET,
            ResponseType::ServiceUnavailable,
            Kind::Busy,
            true,
        ),
        (
            OutboxState::Closed,
            SECRET,
            ResponseType::ServiceUnavailable,
            Kind::Unavailable,
            true,
        ),
    ];
    for (outbox, secret, code, kind, max_age) in cases {
        let f = Fixture::new(outbox);
        let metrics = Metrics::new();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            socket,
            ServerConfig::default(),
            None,
            Arc::new(StoreBackend {
                auth: f.auth.clone(),
            }),
            f.intake.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
        let sensor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sensor.send_to(&post(secret), addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(Duration::from_secs(10), sensor.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let resp = Packet::from_bytes(&buf[..n]).unwrap();
        assert_eq!(resp.header.code, MessageClass::Response(code), "{kind:?}");
        assert_eq!(
            resp.get_first_option(CoapOption::MaxAge).is_some(),
            max_age,
            "{kind:?}"
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
        let snap = metrics.snapshot();
        let coap = &snap.adapters["coap"];
        assert_eq!(coap.refused[kind.label()], 1, "{kind:?}: {coap:?}");
        assert_eq!(coap.refused_total, 1, "{kind:?}: counted once");
        assert_eq!(coap.messages_in, 0);
    }
    // A storage failure is the shutdown answer: 5.03 with Max-Age.
    let storage = crate::intake::ingest_refusal(&crate::outbox::IngestError::storage_for_tests());
    let answer = super::super::proto::coap_answer(&storage);
    assert_eq!(answer.code, ResponseType::ServiceUnavailable);
    assert_eq!(answer.max_age, Some(Duration::from_secs(30)));
}
