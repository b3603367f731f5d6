use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use tower::ServiceExt as _;

use super::*;
use crate::intake::testkit::{Fixture, LONELY_SECRET, OFF_SECRET, OutboxState, SECRET};
use crate::runtime::metrics::Refusal as Kind;

async fn post(state: &Arc<AppState>, auth: &str, path: &str) -> Response {
    let mut req = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "text/plain");
    if !auth.is_empty() {
        req = req.header("authorization", auth);
    }
    let mut req = req.body(Body::from("21.5")).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))));
    crate::http::router(Arc::clone(state))
        .oneshot(req)
        .await
        .unwrap()
}

fn refused(state: &AppState, kind: Kind) -> u64 {
    state.adapters.snapshot().adapters["http"].refused[kind.label()]
}

/// Disabled client, not connected, outbox full, shutdown / storage failure: each answered as
/// README "Refusals" says and counted once in `/metrics`, under its kind.
#[tokio::test]
async fn each_refusal_has_its_documented_status_and_is_counted_once() {
    let cases = [
        (
            OutboxState::Open,
            OFF_SECRET,
            StatusCode::UNAUTHORIZED,
            Kind::Unauthenticated,
            false,
        ),
        (
            OutboxState::Open,
            LONELY_SECRET,
            StatusCode::FORBIDDEN,
            Kind::Forbidden,
            false,
        ),
        (
            OutboxState::Full,
            SECRET,
            StatusCode::SERVICE_UNAVAILABLE,
            Kind::Busy,
            true,
        ),
        (
            OutboxState::Closed,
            SECRET,
            StatusCode::SERVICE_UNAVAILABLE,
            Kind::Unavailable,
            true,
        ),
    ];
    for (outbox, secret, status, kind, retry_after) in cases {
        let f = Fixture::new(outbox);
        let state = crate::http::test_state_over(f.dir.path(), f.auth.clone(), f.outbox.clone());
        let r = post(&state, &format!("Client {secret}"), "/m/dom/c/temps").await;
        assert_eq!(r.status(), status, "{kind:?}");
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).is_some(),
            retry_after,
            "{kind:?}"
        );
        let snap = state.adapters.snapshot();
        assert_eq!(refused(&state, kind), 1, "{kind:?}: {snap:?}");
        assert_eq!(
            snap.adapters["http"].refused_total, 1,
            "{kind:?}: counted once"
        );
        assert_eq!(snap.adapters["http"].messages_in, 0);
    }
    // The storage-failure refusal is the shutdown one: same status, Retry-After.
    let storage = crate::intake::ingest_refusal(&crate::outbox::IngestError::storage_for_tests());
    let r = http_answer(&storage, "x");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[header::RETRY_AFTER], "30");
}

#[tokio::test]
async fn client_basic_and_bare_secret_are_accepted_and_counted_as_messages() {
    let f = Fixture::new(OutboxState::Open);
    let state = crate::http::test_state_over(f.dir.path(), f.auth.clone(), f.outbox.clone());
    let basic_id =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{SECRET}", f.sensor_id));
    let basic_identity =
        base64::engine::general_purpose::STANDARD.encode(format!("sensor-1:{SECRET}"));
    for auth in [
        format!("Client {SECRET}"),
        SECRET.to_owned(),
        format!("Basic {basic_identity}"),
        format!("Basic {basic_id}"),
    ] {
        let r = post(&state, &auth, "/m/dom/c/temps/room").await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{auth}");
    }
    let wrong = base64::engine::general_purpose::STANDARD.encode("sensor-1:wrong-secret-0000");
    assert_eq!(
        post(&state, &format!("Basic {wrong}"), "/m/dom/c/temps")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&state, "Bearer abc", "/m/dom/c/temps").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let snap = state.adapters.snapshot();
    assert_eq!(snap.adapters["http"].messages_in, 4);
    assert_eq!(snap.adapters["http"].refused["auth"], 2);
    assert_eq!(f.outbox.fetch_after(0, 10).unwrap().len(), 4);
}

#[test]
fn authorization_values_parse_to_sensor_credentials() {
    assert_eq!(credentials(""), SensorCredentials::None);
    assert_eq!(
        credentials("Client abc"),
        SensorCredentials::Secret(b"abc".to_vec())
    );
    assert_eq!(
        credentials("abc"),
        SensorCredentials::Secret(b"abc".to_vec())
    );
    assert_eq!(
        credentials("Basic dTpwYXNz"),
        SensorCredentials::UserSecret {
            user: "u".into(),
            secret: b"pass".to_vec()
        }
    );
    // `u?>:p` is `dT8+OnA=` in standard base64, `dT8-OnA=` in the URL-safe alphabet.
    for encoded in ["dT8+OnA=", "dT8-OnA="] {
        assert_eq!(
            credentials(&format!("Basic {encoded}")),
            SensorCredentials::UserSecret {
                user: "u?>".into(),
                secret: b"p".to_vec()
            },
            "{encoded}"
        );
    }
    assert_eq!(credentials("Basic !!!"), SensorCredentials::None);
    assert_eq!(
        credentials("Basic dTo="),
        SensorCredentials::None,
        "empty secret"
    );
    assert_eq!(credentials("Bearer t"), SensorCredentials::None);
}

/// `POST /hc/{domain}` (supermq v0.19.1 `http/api/transport.go`, `http/api/response.go`: 200,
/// empty body): every credential form authenticates, a domain the client is not in and bad
/// credentials are 401 like a publish, refusals are counted, nothing is stored.
#[tokio::test]
async fn health_check_authenticates_in_the_domain_and_stores_nothing() {
    let f = Fixture::new(OutboxState::Open);
    let state = crate::http::test_state_over(f.dir.path(), f.auth.clone(), f.outbox.clone());
    let basic_id =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{SECRET}", f.sensor_id));
    for auth in [
        format!("Client {SECRET}"),
        SECRET.to_owned(),
        format!("Basic {basic_id}"),
    ] {
        let r = post(&state, &auth, "/hc/dom").await;
        assert_eq!(r.status(), StatusCode::OK, "{auth}");
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert!(body.is_empty(), "SuperMQ's healthCheckRes is empty");
    }
    let cases = [
        // sensor-1's channels are all in `dom`.
        (format!("Client {SECRET}"), "/hc/other-domain"),
        (format!("Client {OFF_SECRET}"), "/hc/dom"),
        ("Client wrong-secret-0123456789".to_owned(), "/hc/dom"),
        (String::new(), "/hc/dom"),
    ];
    for (auth, path) in &cases {
        let r = post(&state, auth, path).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?} {path}");
    }
    let snap = state.adapters.snapshot();
    assert_eq!(snap.adapters["http"].refused["auth"], 4);
    assert_eq!(snap.adapters["http"].messages_in, 0);
    assert!(f.outbox.fetch_after(0, 10).unwrap().is_empty());
    // A GET is not the health check.
    let req = axum::http::Request::builder()
        .method("GET")
        .uri("/hc/dom")
        .header("authorization", format!("Client {SECRET}"))
        .body(Body::empty())
        .unwrap();
    let r = crate::http::router(Arc::clone(&state))
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}
