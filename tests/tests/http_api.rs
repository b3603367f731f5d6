//! End to end: the management API and HTTP adapter of the real `edgegw run --dev`, driven by
//! curl (a real HTTP client; proxies disabled). Tokens, CRUD round trips, PAT scopes and
//! revocation, adapter publish → row in `outbox.db`, 413, HTTPS with the dev PKI, and the
//! refusal of plain HTTP on a non-loopback address (exit 78).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::api::{ADMIN_TOKEN, Api, EMAIL, bearer, rfc3339, run};
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

fn outbox_rows(dir: &Path) -> Vec<(String, String, String, Vec<u8>)> {
    let db =
        rusqlite::Connection::open(dir.join(".edgegw-dev/state/outbox.db")).expect("open outbox");
    let mut st = db
        .prepare("SELECT channel_id, subtopic, content_format, payload FROM outbox ORDER BY seq")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn tokens_issue_refresh_and_kinds_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[]);
    let api = Api::new(&mut daemon, "http");

    assert_eq!(api.call("GET", "/health", None, None).status, 200);
    let wrong = api.call(
        "POST",
        "/users/tokens/issue",
        None,
        Some(&json!({ "email": EMAIL, "password": "not-the-admin-token" })),
    );
    assert_eq!(wrong.status, 401);
    let wrong_user = api.call(
        "POST",
        "/users/tokens/issue",
        None,
        Some(&json!({ "username": "other@example.com", "password": ADMIN_TOKEN })),
    );
    assert_eq!(wrong_user.status, 401);

    let (access, refresh) = api.login();
    assert_eq!(
        api.call("GET", "/clients", Some(&bearer(&access)), None)
            .status,
        200
    );
    assert_eq!(api.call("GET", "/clients", None, None).status, 401);
    assert_eq!(
        api.call("GET", "/clients", Some("Bearer garbage"), None)
            .status,
        401
    );
    // The refresh token is not an access token, and the other way round.
    assert_eq!(
        api.call("GET", "/clients", Some(&bearer(&refresh)), None)
            .status,
        401
    );
    assert_eq!(
        api.call(
            "POST",
            "/users/tokens/refresh",
            Some(&bearer(&access)),
            None
        )
        .status,
        401
    );
    let refreshed = api.call(
        "POST",
        "/users/tokens/refresh",
        Some(&bearer(&refresh)),
        None,
    );
    assert_eq!(refreshed.status, 201, "{}", refreshed.body);
    let new_access = refreshed.body["access_token"].as_str().expect("access");
    assert_eq!(
        api.call("GET", "/clients", Some(&bearer(new_access)), None)
            .status,
        200
    );
    // The standalone token itself is accepted as a Bearer token.
    assert_eq!(
        api.call("GET", "/channels", Some(&bearer(ADMIN_TOKEN)), None)
            .status,
        200
    );
}

#[test]
fn expired_access_token_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[("EDGEGW_HTTP_ACCESS_TOKEN_TTL", "1s")]);
    let api = Api::new(&mut daemon, "http");
    let (access, _) = api.login();
    // Valid when issued (unless this machine is very slow; then the loop below still proves it).
    let first = api
        .call("GET", "/clients", Some(&bearer(&access)), None)
        .status;
    assert!(first == 200 || first == 401);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = api
            .call("GET", "/clients", Some(&bearer(&access)), None)
            .status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "token still accepted 10 s after a 1 s TTL"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn crud_round_trips_and_adapter_publish_reach_the_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[("EDGEGW_HTTP_MAX_BODY", "4KiB")]);
    let api = Api::new(&mut daemon, "http");
    let (access, _) = api.login();
    let auth = bearer(&access);
    let auth = Some(auth.as_str());

    // Clients: create (generated secret), get, list with paging, update, disable/enable.
    let created = api.call(
        "POST",
        "/clients",
        auth,
        Some(&json!({
            "name": "Kitchen", "credentials": { "identity": "kitchen" }, "metadata": { "room": 1 }
        })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let secret = created.body["credentials"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_eq!(created.body["status"], "enabled");
    // Times are RFC 3339 strings; no tags given → none.
    let created_at = rfc3339(&created.body["created_at"]);
    assert_eq!(created_at, rfc3339(&created.body["updated_at"]));
    assert_eq!(created.body["tags"], json!([]));
    let dup = api.call(
        "POST",
        "/clients",
        auth,
        Some(&json!({ "credentials": { "identity": "kitchen" } })),
    );
    assert_eq!(dup.status, 409);
    let given = api.call(
        "POST",
        "/clients",
        auth,
        Some(&json!({
            "credentials": { "identity": "hall", "secret": "hall-secret-0123456789" },
            "tags": ["hall", "floor-1"]
        })),
    );
    assert_eq!(given.status, 201);
    assert_eq!(given.body["tags"], json!(["hall", "floor-1"]));
    assert_eq!(
        given.body["credentials"]["secret"],
        "hall-secret-0123456789"
    );

    let got = api.call("GET", &format!("/clients/{id}"), auth, None);
    assert_eq!(got.status, 200);
    assert_eq!(got.body["credentials"]["identity"], "kitchen");
    assert!(
        got.body["credentials"].get("secret").is_none(),
        "secret only shown on create/rotate"
    );
    let page = api.call("GET", "/clients?offset=1&limit=1", auth, None);
    assert_eq!(page.status, 200);
    assert_eq!(page.body["total"], 3); // demo-sensor, hall, kitchen
    assert_eq!(page.body["clients"].as_array().expect("array").len(), 1);
    assert_eq!(page.body["clients"][0]["identity"], "hall");
    assert_eq!(page.body["clients"][0]["tags"], json!(["hall", "floor-1"]));
    let updated = api.call(
        "PATCH",
        &format!("/clients/{id}"),
        auth,
        Some(&json!({ "name": "Kitchen 2" })),
    );
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["name"], "Kitchen 2");
    assert_eq!(updated.body["metadata"]["room"], 1);
    assert_eq!(rfc3339(&updated.body["created_at"]), created_at);
    assert!(rfc3339(&updated.body["updated_at"]) >= created_at);
    // Tags through PATCH /clients/{id} too; 65 tags are refused (the store's bound).
    let tagged = api.call(
        "PATCH",
        &format!("/clients/{id}"),
        auth,
        Some(&json!({ "tags": ["a"] })),
    );
    assert_eq!(
        (tagged.status, &tagged.body["tags"], &tagged.body["name"]),
        (200, &json!(["a"]), &json!("Kitchen 2"))
    );
    let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let too_many = api.call(
        "PATCH",
        &format!("/clients/{id}/tags"),
        auth,
        Some(&json!({ "tags": many })),
    );
    assert_eq!(too_many.status, 400, "{}", too_many.text);

    // Channel and connection.
    let ch = api.call("POST", "/channels", auth, Some(&json!({ "name": "temps" })));
    assert_eq!(ch.status, 201, "{}", ch.body);
    let ch_id = ch.body["id"].as_str().expect("channel id").to_owned();
    let domain = ch.body["domain_id"].as_str().expect("domain").to_owned();
    assert_eq!(
        api.call("GET", &format!("/channels/{ch_id}"), auth, None)
            .body["name"],
        "temps"
    );

    let publish = |path: &str, secret: &str, body: &[u8]| {
        let mut cmd = api.curl("POST", path, Some(&format!("Client {secret}")));
        cmd.args([
            "-H",
            "content-type: application/senml+json",
            "--data-binary",
            "@-",
        ]);
        let file = dir.path().join("payload");
        std::fs::write(&file, body).expect("payload");
        cmd.stdin(std::fs::File::open(&file).expect("open payload"));
        run(cmd).status
    };
    let path = format!("/m/{domain}/c/{ch_id}/room/1");
    // Not connected yet: 403. Wrong secret: 401.
    assert_eq!(publish(&path, &secret, b"[]"), 403);
    assert_eq!(publish(&path, "wrong-secret-0123456789", b"[]"), 401);
    let connect = api.call(
        "POST",
        "/connect",
        auth,
        Some(&json!({
            "client_ids": [id], "channel_ids": [ch_id], "types": ["publish"]
        })),
    );
    assert_eq!(connect.status, 201, "{}", connect.body);
    let conns = api.call("GET", &format!("/clients/{id}/connections"), auth, None);
    assert_eq!(
        conns.body["connections"][0]["channel"]["id"],
        ch_id.as_str()
    );

    assert_eq!(publish(&path, &secret, br#"[{"n":"t","v":21.5}]"#), 202);
    // By channel name, no subtopic.
    assert_eq!(publish(&format!("/m/{domain}/c/temps"), &secret, b"2"), 202);
    // Too large: 413, nothing stored.
    assert_eq!(publish(&path, &secret, &vec![b'x'; 8192]), 413);
    let rows = outbox_rows(dir.path());
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, ch_id);
    assert_eq!(rows[0].1, "room/1");
    assert_eq!(rows[0].2, "application/senml+json");
    assert_eq!(rows[0].3, br#"[{"n":"t","v":21.5}]"#);

    // Certificates: issue with a ttl (dev CA), list, revoke, revoke again → 404.
    let cert = api.call(
        "POST",
        "/certs",
        auth,
        Some(&json!({ "client_id": "kitchen", "ttl": "8760h" })),
    );
    assert_eq!(cert.status, 201, "{}", cert.body);
    let serial = cert.body["serial"].as_str().expect("serial").to_owned();
    assert!(
        cert.body["certificate"]
            .as_str()
            .expect("pem")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(
        cert.body["key"]
            .as_str()
            .expect("key")
            .contains("PRIVATE KEY")
    );
    let lifetime = rfc3339(&cert.body["not_after"]) - rfc3339(&cert.body["not_before"]);
    assert!((lifetime - 8760 * 3600).abs() < 600, "lifetime {lifetime}");
    let bad_ttl = api.call(
        "POST",
        "/certs",
        auth,
        Some(&json!({ "client_id": "kitchen", "ttl": "soon" })),
    );
    assert_eq!(bad_ttl.status, 400);
    assert_eq!(
        api.call(
            "POST",
            "/certs",
            auth,
            Some(&json!({ "client_id": "nobody" }))
        )
        .status,
        404
    );
    let certs = api.call("GET", "/certs", auth, None);
    assert_eq!(certs.body["certs"][0]["serial_hex"], serial.as_str());
    let revoked = api.call("DELETE", &format!("/certs/{serial}"), auth, None);
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let revoked_at = rfc3339(&revoked.body["revoked"][0]["revoked_at"]);
    assert!(
        (revoked_at - rfc3339(&cert.body["not_before"])).abs() < 600,
        "{}",
        revoked.body
    );
    assert_eq!(
        api.call("DELETE", &format!("/certs/{serial}"), auth, None)
            .status,
        404
    );

    // Disable → 401 on publish; enable → accepted again.
    assert_eq!(
        api.call("POST", &format!("/clients/{id}/disable"), auth, None)
            .body["status"],
        "disabled"
    );
    assert_eq!(publish(&path, &secret, b"3"), 401);
    assert_eq!(
        api.call("POST", &format!("/clients/{id}/enable"), auth, None)
            .body["status"],
        "enabled"
    );
    assert_eq!(publish(&path, &secret, b"4"), 202);
    // Rotate: the old secret stops working.
    let rotated = api.call("PATCH", &format!("/clients/{id}/secret"), auth, None);
    assert_eq!(rotated.status, 200);
    let new_secret = rotated.body["credentials"]["secret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(publish(&path, &secret, b"5"), 401);
    assert_eq!(publish(&path, &new_secret, b"6"), 202);
    // Disconnect → 403; delete → 404.
    let disc = api.call(
        "POST",
        "/disconnect",
        auth,
        Some(&json!({
            "client_ids": [id], "channel_ids": [ch_id], "types": ["publish"]
        })),
    );
    assert_eq!(disc.status, 204);
    assert_eq!(publish(&path, &new_secret, b"7"), 403);
    assert_eq!(outbox_rows(dir.path()).len(), 4);
    assert_eq!(
        api.call("DELETE", &format!("/clients/{id}"), auth, None)
            .status,
        204
    );
    assert_eq!(
        api.call("GET", &format!("/clients/{id}"), auth, None)
            .status,
        404
    );
    assert_eq!(
        api.call("DELETE", &format!("/channels/{ch_id}"), auth, None)
            .status,
        204
    );
    assert_eq!(
        api.call("GET", &format!("/channels/{ch_id}"), auth, None)
            .status,
        404
    );

    // Audit trail of the adapter's authentications is readable.
    let audit = api.call("GET", "/audit?limit=50", auth, None);
    assert_eq!(audit.status, 200);
    let events = audit.body["events"].as_array().expect("events");
    assert!(!events.is_empty(), "{}", audit.text);
    for e in events {
        assert!(rfc3339(&e["at"]) >= created_at - 60, "{e}");
    }
    let metrics = api.curl("GET", "/metrics", None).output().expect("metrics");
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(text.contains("edgegw_http_messages_in_total 4"), "{text}");
    assert!(text.contains("edgegw_outbox_queued 4"), "{text}");
    assert!(
        text.contains("edgegw_uplink_state{state=\"disabled\"} 1"),
        "{text}"
    );
}

#[test]
fn pat_scopes_allow_and_deny_and_revoke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path(), &[]);
    let api = Api::new(&mut daemon, "http");
    let (access, _) = api.login();
    let admin = bearer(&access);
    let admin = Some(admin.as_str());

    let created = api.call(
        "POST",
        "/pats",
        admin,
        Some(&json!({
            "name": "ci", "description": "provisioning", "duration": "24h"
        })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let pat_id = created.body["id"].as_str().expect("id").to_owned();
    let secret = created.body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("pat_"));
    let pat = bearer(&secret);
    let pat = Some(pat.as_str());

    // No scopes yet: authenticated but forbidden.
    assert_eq!(api.call("GET", "/clients", pat, None).status, 403);
    let add = api.call(
        "PATCH",
        &format!("/pats/{pat_id}/scope/add"),
        admin,
        Some(&json!({
            "scopes": [{ "entity_type": "clients", "operation": "read", "entity_id": "*" }]
        })),
    );
    assert_eq!(add.status, 200, "{}", add.body);
    assert_eq!(api.call("GET", "/clients", pat, None).status, 200);
    assert_eq!(
        api.call(
            "POST",
            "/clients",
            pat,
            Some(&json!({ "credentials": { "identity": "x1" } }))
        )
        .status,
        403
    );
    assert_eq!(api.call("GET", "/channels", pat, None).status, 403);
    // A PAT cannot manage PATs.
    assert_eq!(api.call("GET", "/pats", pat, None).status, 403);
    let listed = api.call("GET", "/pats", admin, None);
    assert_eq!(listed.body["total"], 1);
    assert!(!listed.body.to_string().contains(&secret));

    // Revoked → 401; reset → a new secret works, the old one does not.
    assert_eq!(
        api.call(
            "PATCH",
            &format!("/pats/{pat_id}/secret/revoke"),
            admin,
            None
        )
        .status,
        // SuperMQ answers 204 (auth/api/http/pats/responses.go, revokePatSecretRes).
        204
    );
    assert_eq!(api.call("GET", "/clients", pat, None).status, 401);
    let reset = api.call(
        "PATCH",
        &format!("/pats/{pat_id}/secret/reset"),
        admin,
        Some(&json!({ "duration": "1h" })),
    );
    assert_eq!(reset.status, 200);
    let new = bearer(reset.body["secret"].as_str().expect("secret"));
    assert_eq!(api.call("GET", "/clients", Some(&new), None).status, 200);
    assert_eq!(api.call("GET", "/clients", pat, None).status, 401);
    // Scope removed → 403 again; unknown PAT → 401.
    let remove = api.call(
        "PATCH",
        &format!("/pats/{pat_id}/scope/remove"),
        admin,
        Some(&json!({
            "scopes": [{ "entity_type": "clients", "operation": "read", "entity_id": "*" }]
        })),
    );
    assert_eq!(remove.status, 200);
    assert_eq!(api.call("GET", "/clients", Some(&new), None).status, 403);
    assert_eq!(
        api.call("GET", "/clients", Some("Bearer pat_00_11"), None)
            .status,
        401
    );
    // The PAT file holds no secret.
    let stored =
        std::fs::read_to_string(dir.path().join(".edgegw-dev/state/pats.json")).expect("pats.json");
    assert!(!stored.contains(new.trim_start_matches("Bearer ")));
}

#[test]
fn https_with_the_dev_pki() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = edgegw(dir.path())
        .args(["--dev", "certs", "init-dev", ".edgegw-dev/pki"])
        .output()
        .expect("init-dev");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pki = dir.path().join(".edgegw-dev/pki");
    let cert = pki.join("dtls-server.crt");
    let key = pki.join("dtls-server.key");
    let mut daemon = start(
        dir.path(),
        &[
            ("EDGEGW_HTTP_SERVER_CERT", cert.to_str().expect("utf8")),
            ("EDGEGW_HTTP_SERVER_KEY", key.to_str().expect("utf8")),
        ],
    );
    let mut api = Api::new(&mut daemon, "https");
    // Without the dev CA, curl refuses the certificate (status 000 = no HTTP exchange).
    assert_eq!(api.call("GET", "/health", None, None).status, 0);
    api.cacert = Some(pki.join("ca.crt"));
    let health = api.call("GET", "/health", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "pass");
    let (access, _) = api.login();
    assert_eq!(
        api.call("GET", "/clients", Some(&bearer(&access)), None)
            .status,
        200
    );
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = Api {
        base: api.base.replace("https://", "http://"),
        cacert: None,
    };
    assert_ne!(plain.call("GET", "/health", None, None).status, 200);
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = edgegw(dir.path())
        .args(["--dev", "run"])
        .env("EDGEGW_HTTP_BIND", "0.0.0.0:0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.bind") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(
        dir.path(),
        &[
            ("EDGEGW_HTTP_REQUEST_TIMEOUT", "1s"),
            ("EDGEGW_HTTP_MAX_CONNECTIONS", "1"),
        ],
    );
    let api = Api::new(&mut daemon, "http");
    let port = api.base.rsplit(':').next().expect("port").to_owned();
    let mut slow = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("partial headers");
    // The server closes it (header read timeout); the read returns instead of timing out.
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut rest = Vec::new();
    let read = slow.read_to_end(&mut rest);
    assert!(read.is_ok(), "connection still open after 15 s: {read:?}");
    // With the only connection slot free again, a normal request is served.
    assert_eq!(api.call("GET", "/health", None, None).status, 200);
}
