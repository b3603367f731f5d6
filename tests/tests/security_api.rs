//! End to end, issue 20's management-side items against the real `edgegw` binary: root
//! provisioning next to a hostile service account (20.3), brute force on the management API
//! (20.6), token lifetime and reuse (20.10), idle connections (20.12: from one address, and
//! from 64 addresses holding every slot), secrets in config
//! errors and `check-config` (20.14). The API is driven by curl (a real HTTP client).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use system_tests::api::{ADMIN_TOKEN, Api, EMAIL, Reply, bearer, run};
use system_tests::{Daemon, edgegw};

fn start(dir: &Path, extra: &[(&str, &str)]) -> Daemon {
    let mut cmd = edgegw(dir);
    cmd.args(["--dev", "run"])
        .env("EDGEGW_STANDALONE_EMAIL", EMAIL)
        .env("EDGEGW_STANDALONE_TOKEN", ADMIN_TOKEN);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Daemon::start(cmd)
}

fn is_root() -> bool {
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id");
    out.stdout.trim_ascii() == b"0"
}

/// 20.3: `sudo edgegw channel add` against a state directory the service user (`nobody`)
/// owns and has filled with traps: a folder holding a hard link to a root-only file, and a
/// link to a root-only folder. The command hands its own store files over and nothing else:
/// the root-only files keep their owner.
#[test]
fn root_provisioning_hands_over_only_its_store_files() {
    if !is_root() {
        eprintln!("skipped: needs root (the hand-over only runs as root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret_dir = dir.path().join("etc");
    std::fs::create_dir(&secret_dir).expect("etc");
    let shadow = secret_dir.join("shadow");
    std::fs::write(&shadow, b"root only").expect("shadow");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // What the service user planted (as root here, standing in for fs.protected_hardlinks=0).
    let trap = state.join("backup");
    std::fs::create_dir(&trap).expect("trap dir");
    std::fs::hard_link(&shadow, trap.join("shadow")).expect("hard link");
    std::os::unix::fs::symlink(&secret_dir, state.join("pki")).expect("symlink");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");

    let out = edgegw(dir.path())
        .env("EDGEGW_GATEWAY_STATE_DIR", &state)
        .env("EDGEGW_GATEWAY_RUNTIME_DIR", dir.path().join("run"))
        .args(["channel", "add", "chan-a"])
        .output()
        .expect("run edgegw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("handed to its owner"), "{stderr}");
    let owner = |p: &Path| std::fs::symlink_metadata(p).expect("metadata").uid();
    assert_eq!(
        owner(&state.join("auth.db")),
        65534,
        "the store changed hands"
    );
    assert_eq!(
        owner(&shadow),
        0,
        "root gave away a file outside the state dir"
    );
    assert_eq!(
        owner(&trap),
        0,
        "a folder the command did not create changed hands"
    );
}

/// The API of `daemon` at 127.0.0.1 (the tests also call it from 127.0.0.2, another address).
fn api_at(daemon: &mut Daemon) -> (Api, String) {
    let api = Api::new(daemon, "http");
    let port = api.base.rsplit(':').next().expect("port").to_owned();
    (
        Api {
            base: format!("http://127.0.0.1:{port}"),
            cacert: None,
        },
        port,
    )
}

/// `api.call` from the local address `from`, with the response headers in `text`.
fn call_from(
    api: &Api,
    from: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut cmd: Command = api.curl(method, path, auth);
    cmd.args(["--interface", from, "-D", "-"]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    run(cmd)
}

fn retry_after(reply: &Reply) -> Option<u64> {
    reply.text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// 20.6: wrong passwords on `/users/tokens/issue` and wrong bearer tokens and PATs use up the
/// address's failure budget (`auth.failure_burst`); then every request of that address with
/// credentials is 429 with Retry-After — the right password too, so a guess cannot be
/// confirmed — while another address still logs in.
#[test]
fn management_api_brute_force_is_throttled_per_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(
        dir.path(),
        &[
            ("EDGEGW_AUTH_FAILURE_BURST", "6"),
            ("EDGEGW_AUTH_FAILURE_REFILL", "1h"),
        ],
    );
    let (api, _) = api_at(&mut daemon);
    let wrong = json!({ "email": EMAIL, "password": "not-the-admin-token" });
    let right = json!({ "email": EMAIL, "password": ADMIN_TOKEN });
    let attacker = "127.0.0.1";
    for _ in 0..2 {
        let r = call_from(
            &api,
            attacker,
            "POST",
            "/users/tokens/issue",
            None,
            Some(&wrong),
        );
        assert_eq!(r.status, 401, "{}", r.text);
        let r = call_from(
            &api,
            attacker,
            "GET",
            "/clients",
            Some(&bearer("eyJ.x.y")),
            None,
        );
        assert_eq!(r.status, 401, "{}", r.text);
        let r = call_from(
            &api,
            attacker,
            "GET",
            "/clients",
            Some(&bearer("pat_a_b")),
            None,
        );
        assert_eq!(r.status, 401, "{}", r.text);
    }
    for (path, auth, body) in [
        ("/users/tokens/issue", None, Some(&wrong)),
        ("/users/tokens/issue", None, Some(&right)),
        ("/clients", Some(bearer(ADMIN_TOKEN)), None),
    ] {
        let method = if body.is_some() { "POST" } else { "GET" };
        let r = call_from(&api, attacker, method, path, auth.as_deref(), body);
        assert_eq!(r.status, 429, "{path}: {}", r.text);
        let after = retry_after(&r).unwrap_or_else(|| panic!("no Retry-After: {}", r.text));
        assert!((1..=3600).contains(&after), "Retry-After {after}");
    }
    let r = call_from(
        &api,
        "127.0.0.2",
        "POST",
        "/users/tokens/issue",
        None,
        Some(&right),
    );
    assert_eq!(r.status, 201, "another address: {}", r.text);
}

/// 20.10: a refresh token is good for one refresh; presenting it again is refused and ends
/// its session, so the access token the first refresh gave is refused too.
#[test]
fn a_reused_refresh_token_is_refused_and_ends_its_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[]);
    let (api, _) = api_at(&mut daemon);
    let (_, refresh) = api.login();
    let r = api.call(
        "POST",
        "/users/tokens/refresh",
        Some(&bearer(&refresh)),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let access = r.body["access_token"].as_str().expect("access").to_owned();
    let next = r.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_eq!(
        api.call("GET", "/clients", Some(&bearer(&access)), None)
            .status,
        200
    );
    let r = api.call(
        "POST",
        "/users/tokens/refresh",
        Some(&bearer(&refresh)),
        None,
    );
    assert_eq!(r.status, 401, "reused refresh token: {}", r.text);
    let r = api.call("GET", "/clients", Some(&bearer(&access)), None);
    assert_eq!(
        r.status, 401,
        "access token of the ended session: {}",
        r.text
    );
    let r = api.call("POST", "/users/tokens/refresh", Some(&bearer(&next)), None);
    assert_eq!(
        r.status, 401,
        "later refresh token of the ended session: {}",
        r.text
    );
    // A new login works.
    let (access, _) = api.login();
    assert_eq!(
        api.call("GET", "/clients", Some(&bearer(&access)), None)
            .status,
        200
    );
}

/// 20.10: tokens issued under one standalone token are refused once the daemon runs with
/// another (same state directory, same signing key).
#[test]
fn tokens_are_refused_after_the_standalone_token_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[]);
    let (api, _) = api_at(&mut daemon);
    let (access, refresh) = api.login();
    assert_eq!(
        api.call("GET", "/clients", Some(&bearer(&access)), None)
            .status,
        200
    );
    daemon.signal("TERM");
    assert!(
        daemon.wait_exit(Duration::from_secs(20)).is_some(),
        "stopped"
    );
    drop(daemon);
    let new_token = "a-new-admin-token-9876543210";
    let mut daemon = start(dir.path(), &[("EDGEGW_STANDALONE_TOKEN", new_token)]);
    let (api, _) = api_at(&mut daemon);
    let r = api.call("GET", "/clients", Some(&bearer(&access)), None);
    assert_eq!(r.status, 401, "old access token: {}", r.text);
    let r = api.call(
        "POST",
        "/users/tokens/refresh",
        Some(&bearer(&refresh)),
        None,
    );
    assert_eq!(r.status, 401, "old refresh token: {}", r.text);
    let r = api.call(
        "POST",
        "/users/tokens/issue",
        None,
        Some(&json!({ "email": EMAIL, "password": new_token })),
    );
    assert_eq!(r.status, 201, "{}", r.text);
}

/// `count` TCP connections to `port` that never send a byte, from local addresses `from(i)`.
fn idle_connections(
    rt: &tokio::runtime::Runtime,
    port: &str,
    count: usize,
    from: impl Fn(usize) -> String,
) -> Vec<tokio::net::TcpStream> {
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..count {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(format!("{}:0", from(i)).parse().expect("source"))
                .expect("bind source");
            held.push(socket.connect(target).await.expect("connect"));
        }
        held
    })
}

/// A request from 127.0.0.1, bounded by a generous 30 s (the idle connections are held for
/// `http.request_timeout` = 120 s on a server without the limits).
fn health_is_answered(api: &Api) -> Reply {
    let mut cmd = api.curl("GET", "/health", None);
    cmd.args(["--max-time", "30"]);
    run(cmd)
}

/// 20.12: 64 connections that never send anything, from one address, take only that
/// address's share of the slots: a normal client is answered.
#[test]
fn idle_connections_from_one_address_do_not_block_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[("EDGEGW_HTTP_REQUEST_TIMEOUT", "120s")]);
    let (api, port) = api_at(&mut daemon);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _idle = idle_connections(&rt, &port, 64, |_| "127.0.0.2".to_owned());
    let r = health_is_answered(&api);
    assert_eq!(r.status, 200, "with 64 idle connections open: {}", r.text);
}

/// 20.12: silent connections are closed by the gateway after the header timeout (5 s), not
/// after `http.request_timeout` (120 s here): each read on them ends (EOF) within a generous
/// 30 s bound.
#[test]
fn idle_connections_from_many_addresses_are_closed_after_the_header_timeout() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[("EDGEGW_HTTP_REQUEST_TIMEOUT", "120s")]);
    let (api, port) = api_at(&mut daemon);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let idle = idle_connections(&rt, &port, 64, |i| format!("127.0.1.{}", i + 1));
    let idle: Vec<std::net::TcpStream> = rt.block_on(async {
        idle.into_iter()
            .map(|s| s.into_std().expect("std socket"))
            .collect()
    });
    for (i, s) in idle.iter().enumerate() {
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        match (&*s).read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("idle connection {i} got {n} bytes"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "idle connection {i} still open after 30 s: {e}"
            ),
        }
    }
    let r = health_is_answered(&api);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Whether the server closed `stream` (EOF or reset) by now; false while it is open and has
/// sent nothing (a non-blocking read would block).
fn closed_by_server(stream: &std::net::TcpStream) -> bool {
    use std::io::Read as _;
    let mut buf = [0u8; 16];
    match (&*stream).read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("{n} bytes sent on a connection that never sent a request"),
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// 20.12: 63 silent connections from 63 addresses (127.0.0.2 … 127.0.0.64) and one in the
/// middle of a request (header sent, body not yet) take every slot (`http.max_connections` =
/// 64). A normal client is still answered, because the gateway closes the silent connection
/// that has been open longest to admit it, and only that one: the other silent ones are still
/// open when the answer comes, and the request in progress, older than all of them, is not cut
/// (its body is sent afterwards and it gets its answer). A gateway that only waits for the
/// header timeout answers after closing many of them.
#[test]
fn a_client_is_answered_while_idle_connections_hold_every_slot() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[("EDGEGW_HTTP_REQUEST_TIMEOUT", "120s")]);
    let (api, port) = api_at(&mut daemon);
    // The request in progress: `Expect: 100-continue`, so the gateway's "100 Continue" shows
    // that it is handling the request (the handler is waiting for the body).
    let body = format!(r#"{{"email":"{EMAIL}","password":"not-the-token-0000"}}"#);
    let mut busy = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect busy");
    busy.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        busy,
        "POST /users/tokens/issue HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .expect("send header");
    let mut reader = std::io::BufReader::new(busy.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("100 Continue");
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    reader
        .read_line(&mut line)
        .expect("end of the interim answer");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let idle = idle_connections(&rt, &port, 63, |i| format!("127.0.0.{}", i + 2));
    let r = health_is_answered(&api);
    assert_eq!(r.status, 200, "with every slot taken: {}", r.text);
    // Plain non-blocking sockets: each read asks the kernel, no reactor in between. The
    // gateway closes the connection it drops before it serves the new one, so its FIN is here.
    let idle: Vec<std::net::TcpStream> = rt.block_on(async {
        idle.into_iter()
            .map(|s| s.into_std().expect("std socket"))
            .collect()
    });
    let closed: Vec<usize> = (0..idle.len())
        .filter(|i| closed_by_server(&idle[*i]))
        .collect();
    // Exactly the longest-open silent one made room. A gateway that waits for the header
    // timeout has closed the oldest several by the time it serves the request (their timers
    // run out back to back: 19 of 64 in a run on the code before the fix).
    assert_eq!(
        closed,
        [0],
        "silent connections closed by the time the request was answered (by index, oldest 0)"
    );
    // The request in progress was not cut: it gets its answer (401, a wrong password).
    busy.write_all(body.as_bytes()).expect("send body");
    let mut status = String::new();
    reader.read_line(&mut status).expect("the answer");
    assert!(
        status.starts_with("HTTP/1.1 401"),
        "the request in progress got {status:?}"
    );
    let _ = reader.read(&mut [0u8; 1024]);
}

/// 20.14: `check-config` on a file whose token line has a syntax error says where (exit 78)
/// without printing the line; with a URL holding a password it prints the URL without it.
#[test]
fn check_config_never_prints_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgegw.toml");
    std::fs::write(
        &path,
        "[standalone]\nemail = \"admin@example.com\"\ntoken = \"s3cret-admin-token-0123456789\n",
    )
    .expect("write config");
    let out = edgegw(dir.path())
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .expect("run edgegw");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(78), "{all}");
    assert!(all.contains("line 3"), "{all}");
    assert!(!all.contains("s3cret"), "{all}");

    std::fs::write(
        &path,
        "[uplink]\nurl = \"mqtt://gw:url-s3cret@broker.example:1883\"\ninsecure = true\n",
    )
    .expect("write config");
    let out = edgegw(dir.path())
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .expect("run edgegw");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("broker.example:1883"), "{all}");
    assert!(!all.contains("url-s3cret"), "{all}");
}
