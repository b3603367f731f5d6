//! Tests of the server loop: shutdown with a request in flight, the failed-authentication
//! throttle, the per-address connection cap and the store connection pool.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::runtime::supervisor::{Shutdown, Signal, Stage, Supervisor};

#[test]
fn one_address_holds_at_most_its_share_of_the_connections() {
    assert_eq!(per_peer_limit(64), 16);
    assert_eq!(per_peer_limit(1), 1);
    let table = Arc::new(PerPeer::new(2));
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    let first = PerPeer::take(&table, a).unwrap();
    let _second = PerPeer::take(&table, mapped).unwrap();
    assert!(
        PerPeer::take(&table, a).is_none(),
        "the same address, v4-mapped"
    );
    let _other = PerPeer::take(&table, b).unwrap();
    drop(first);
    assert!(
        PerPeer::take(&table, a).is_some(),
        "a closed connection frees its slot"
    );
}

/// Issue 20.15: the handlers reuse one checked `auth.db` connection instead of opening
/// (and checking) the store on every request, and a PAT refused by its scopes costs no
/// store work at all.
#[tokio::test]
async fn requests_reuse_one_store_connection_and_refused_pats_open_none() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _worker) = test_state_with(
        dir.path(),
        &[
            ("EDGEGW_STANDALONE_EMAIL", "admin@example.com"),
            ("EDGEGW_STANDALONE_TOKEN", "the-admin-token-0123"),
        ],
    );
    let app = router(Arc::clone(&state));
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let t = Duration::from_secs(10);
    let (pat, secret) = state
        .pats
        .create(
            "ch",
            "",
            Duration::from_secs(3600),
            crate::auth::store::now_unix(),
        )
        .unwrap();
    state
        .pats
        .add_scopes(
            &pat.id,
            &[pats::Scope {
                entity_type: "channels".into(),
                operation: "read".into(),
                entity_id: "*".into(),
            }],
        )
        .unwrap();
    let get = |path: &str, auth: &str| {
        hyper::Request::get(path)
            .header("authorization", auth)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let r = answer(
        app.clone(),
        &state,
        peer,
        get("/clients", &format!("Bearer {secret}")),
        t,
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(state.db.opens(), 0, "a refused PAT opened the store");
    for i in 0..5 {
        let r = answer(
            app.clone(),
            &state,
            peer,
            request(
                "/channels",
                Some("Bearer the-admin-token-0123"),
                &format!(r#"{{"name":"ch-{i}"}}"#),
            ),
            t,
        )
        .await;
        assert_eq!(r.status(), 201);
        let r = answer(
            app.clone(),
            &state,
            peer,
            get("/clients", "Bearer the-admin-token-0123"),
            t,
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(state.db.opens(), 1, "one connection, reused");
}

fn request(path: &str, auth: Option<&str>, body: &str) -> axum::extract::Request {
    let mut b = hyper::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(axum::body::Body::from(body.to_owned())).unwrap()
}

/// Issue 20.6: after `auth.failure_burst` failed authentications from one address (wrong
/// passwords, wrong bearer tokens, wrong PATs), its requests with credentials are 429 with
/// Retry-After, the right password included; another address and credential-less
/// requests are not affected.
#[tokio::test]
async fn failed_authentications_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _worker) = test_state_with(
        dir.path(),
        &[
            ("EDGEGW_STANDALONE_EMAIL", "admin@example.com"),
            ("EDGEGW_STANDALONE_TOKEN", "the-admin-token-0123"),
            ("EDGEGW_AUTH_FAILURE_BURST", "3"),
            ("EDGEGW_AUTH_FAILURE_REFILL", "1h"),
        ],
    );
    let app = router(Arc::clone(&state));
    let t = Duration::from_secs(10);
    let attacker: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let other: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
    let wrong = r#"{"email":"admin@example.com","password":"guess"}"#;
    let right = r#"{"email":"admin@example.com","password":"the-admin-token-0123"}"#;
    let call = |peer, req| answer(app.clone(), &state, peer, req, t);
    // Three kinds of failure, one token each.
    let r = call(attacker, request("/users/tokens/issue", None, wrong)).await;
    assert_eq!(r.status(), 401);
    let r = call(
        attacker,
        request("/clients", Some("Bearer not-a-jwt"), "{}"),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = call(attacker, request("/clients", Some("Bearer pat_x_y"), "{}")).await;
    assert_eq!(r.status(), 401);
    for req in [
        request("/users/tokens/issue", None, wrong),
        request("/users/tokens/issue", None, right),
        request("/clients", Some("Bearer the-admin-token-0123"), "{}"),
    ] {
        let r = call(attacker, req).await;
        assert_eq!(r.status(), 429);
        let after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3000..=3600).contains(&after), "Retry-After {after}");
    }
    // Without credentials nothing is checked (and there is nothing to guess).
    let health = hyper::Request::get("/health")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(call(attacker, health).await.status(), 200);
    // Another address logs in.
    let r = call(other, request("/users/tokens/issue", None, right)).await;
    assert_eq!(r.status(), 201);
}

/// A publish whose body is still arriving when SIGTERM comes is answered (202, durable),
/// and the pipeline stage is not cancelled while it is open: the connection task is tracked by the
/// supervisor's intake stage, so the ordered shutdown waits for it.
#[tokio::test]
async fn shutdown_waits_for_an_http_publish_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _worker) = test_state(dir.path());
    let secret = state
        .auth
        .ensure_demo(&state.config.gateway.domain_id)
        .unwrap()
        .expect("demo sensor created");
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = Listener {
        listener: tcp,
        tls: None,
        state: Arc::clone(&state),
    };
    let supervisor = Supervisor::new();
    let (intake, pipeline) = (
        supervisor.token(Stage::Intake),
        supervisor.token(Stage::Pipeline),
    );
    supervisor.spawn(
        Stage::Intake,
        serve(listener, supervisor.tracker(Stage::Intake), intake.clone()),
    );
    let (signals, rx) = tokio::sync::mpsc::channel(4);
    let run = tokio::spawn(supervisor.run(rx, Duration::from_secs(30)));

    let body = b"{\"t\":21.5}";
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /m/{}/c/demo HTTP/1.1\r\nHost: gw\r\nAuthorization: Client {secret}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        state.config.gateway.domain_id,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // `100 Continue` comes once the handler reads the body: the request is in flight (a
    // request whose head the server has not read yet is not, and may be refused).
    let mut continued = Vec::new();
    while !continued.ends_with(b"\r\n\r\n") {
        let mut byte = [0; 1];
        let n = conn.read(&mut byte).await.unwrap();
        assert!(n > 0, "closed before 100 Continue");
        continued.push(byte[0]);
    }
    assert!(
        continued.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&continued)
    );
    conn.write_all(&body[..4]).await.unwrap();
    signals.send(Signal::Terminate).await.unwrap();
    intake.cancelled().await;
    // The request is open: the pipeline must not be cancelled while it is. Without
    // tracking it is cancelled at once (the accept loop has ended); a second is ample.
    let cancelled_early = tokio::time::timeout(Duration::from_secs(1), pipeline.cancelled())
        .await
        .is_ok();
    if cancelled_early {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.read_to_end(&mut got)).await;
        panic!(
            "pipeline cancelled with a publish in flight; the connection got: {}",
            String::from_utf8_lossy(&got)
        );
    }
    conn.write_all(&body[4..]).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(run.await.unwrap(), Shutdown::Clean);
    assert_eq!(state.outbox.stats().queued, 1, "the message is durable");
}
