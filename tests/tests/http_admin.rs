//! End to end, on the real `edgegw run --dev` with curl: rotation of the JWT signing key
//! (older tokens stay valid after a normal rotation, are refused after one with
//! `revoke_previous`, a PAT cannot rotate, the key file stays 0600, SIGHUP picks up a replaced
//! file) and the audit of management actions made over HTTP and with the CLI.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use system_tests::api::{ADMIN_TOKEN, Api, EMAIL, bearer};
use system_tests::{Daemon, edgegw};

fn start(dir: &Path) -> Daemon {
    let mut cmd = edgegw(dir);
    cmd.args(["--dev", "run"])
        .env("EDGEGW_STANDALONE_EMAIL", EMAIL)
        .env("EDGEGW_STANDALONE_TOKEN", ADMIN_TOKEN);
    Daemon::start(cmd)
}

fn key_file(dir: &Path) -> PathBuf {
    dir.join(".edgegw-dev/state/http-jwt.key")
}

fn mode_and_len(path: &Path) -> (u32, u64) {
    let meta = std::fs::metadata(path).expect("key file");
    (meta.permissions().mode() & 0o777, meta.len())
}

/// GET /clients with this access token: the status.
fn clients_status(api: &Api, access: &str) -> u16 {
    api.call("GET", "/clients", Some(&bearer(access)), None)
        .status
}

/// A PAT with every scope; returns (id, secret).
fn full_pat(api: &Api, admin: &str) -> (String, String) {
    let created = api.call(
        "POST",
        "/pats",
        Some(admin),
        Some(&json!({ "name": "all", "duration": "1h" })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let secret = created.body["secret"].as_str().expect("secret").to_owned();
    let add = api.call(
        "PATCH",
        &format!("/pats/{id}/scope/add"),
        Some(admin),
        Some(&json!({ "scopes": [{ "entity_type": "*", "operation": "*", "entity_id": "*" }] })),
    );
    assert_eq!(add.status, 200, "{}", add.text);
    (id, secret)
}

#[test]
fn key_rotation_keeps_older_tokens_valid_unless_the_previous_key_is_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path());
    let api = Api::from_log(&mut daemon);
    let (first_access, first_refresh) = api.login();
    assert_eq!(clients_status(&api, &first_access), 200);
    assert_eq!(mode_and_len(&key_file(dir.path())), (0o600, 32));

    // A PAT, even one with every scope, cannot rotate the key.
    let (_, pat) = full_pat(&api, &bearer(&first_access));
    assert_eq!(clients_status(&api, &pat), 200);
    let refused = api.call(
        "POST",
        "/users/tokens/rotate-key",
        Some(&bearer(&pat)),
        Some(&json!({ "revoke_previous": true })),
    );
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(clients_status(&api, &first_access), 200);
    assert_eq!(
        api.call("POST", "/users/tokens/rotate-key", None, None)
            .status,
        401
    );

    // A normal rotation (access token, no body): tokens issued before still work, the
    // refresh token too, and new tokens carry the new key.
    let rotated = api.call(
        "POST",
        "/users/tokens/rotate-key",
        Some(&bearer(&first_access)),
        None,
    );
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let kid = rotated.body["kid"].as_str().expect("kid").to_owned();
    let old_kid = rotated.body["previous_kid"]
        .as_str()
        .expect("previous_kid")
        .to_owned();
    assert_ne!(kid, old_kid);
    assert_eq!(rotated.body["revoked_previous"], false);
    assert_eq!(mode_and_len(&key_file(dir.path())), (0o600, 64));
    assert_eq!(clients_status(&api, &first_access), 200);
    let refreshed = api.call(
        "POST",
        "/users/tokens/refresh",
        Some(&bearer(&first_refresh)),
        None,
    );
    assert_eq!(refreshed.status, 201, "{}", refreshed.text);
    let (second_access, _) = api.login();
    assert_eq!(clients_status(&api, &second_access), 200);

    // Compromise: rotate with revoke_previous (standalone token): every older token → 401.
    let revoked = api.call(
        "POST",
        "/users/tokens/rotate-key",
        Some(&bearer(ADMIN_TOKEN)),
        Some(&json!({ "revoke_previous": true })),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(revoked.body["previous_kid"], Value::Null);
    assert_ne!(revoked.body["kid"], kid.as_str());
    assert_eq!(clients_status(&api, &first_access), 401);
    assert_eq!(clients_status(&api, &second_access), 401);
    assert_eq!(
        api.call(
            "POST",
            "/users/tokens/refresh",
            Some(&bearer(&first_refresh)),
            None
        )
        .status,
        401
    );
    assert_eq!(mode_and_len(&key_file(dir.path())), (0o600, 32));
    // The PAT and the standalone token do not depend on the signing key; new logins work.
    assert_eq!(clients_status(&api, &pat), 200);
    assert_eq!(clients_status(&api, ADMIN_TOKEN), 200);
    let (third_access, _) = api.login();
    assert_eq!(clients_status(&api, &third_access), 200);

    // No key material in the log.
    let key = std::fs::read(key_file(dir.path())).expect("key");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let log = daemon.log().join("\n");
    assert!(log.contains("JWT signing key rotated"), "{log}");
    assert!(!log.contains(&hex), "{log}");

    // A restart keeps the current key.
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(10)).is_some());
    let mut daemon = start(dir.path());
    let api = Api::from_log(&mut daemon);
    assert_eq!(clients_status(&api, &third_access), 200);
}

#[test]
fn sighup_reloads_a_replaced_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path());
    let api = Api::from_log(&mut daemon);
    let (access, _) = api.login();
    assert_eq!(clients_status(&api, &access), 200);

    // The operator replaces the file (a new key, 0600) and sends SIGHUP.
    let path = key_file(dir.path());
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, [0x5a_u8; 32]).expect("write key");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&tmp, &path).expect("rename");
    // Not picked up before the signal.
    assert_eq!(clients_status(&api, &access), 200);
    daemon.signal("HUP");
    daemon.wait_for_log("JWT signing keys reloaded", Duration::from_secs(10));
    assert_eq!(clients_status(&api, &access), 401);
    let (fresh, _) = api.login();
    assert_eq!(clients_status(&api, &fresh), 200);
    assert_eq!(mode_and_len(&path), (0o600, 32));

    // A broken file on SIGHUP: refused with a warning, the keys in use stay.
    std::fs::write(&path, b"too short").expect("write");
    daemon.signal("HUP");
    daemon.wait_for_log("JWT signing keys not reloaded", Duration::from_secs(10));
    assert_eq!(clients_status(&api, &fresh), 200);
}

fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let out = edgegw(dir)
        .arg("--dev")
        .args(args)
        .arg("--json")
        .output()
        .expect("run edgegw");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The newest audit events until one matches `pred` (refusals are written by the audit
/// thread, shortly after the answer); panics after 10 s.
fn audit_until(api: &Api, auth: &str, pred: impl Fn(&[Value]) -> bool) -> (Vec<Value>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = api.call("GET", "/audit?limit=1000", Some(auth), None);
        assert_eq!(r.status, 200, "{}", r.text);
        let events = r.body["events"].as_array().expect("events").clone();
        if pred(&events) {
            return (events, r.text);
        }
        assert!(Instant::now() < deadline, "not in the audit: {}", r.text);
        // The audit writer has no completion signal visible over HTTP; poll it.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find<'a>(events: &'a [Value], method: &str, action: &str, entity_id: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["method"] == method && e["action"] == action && e["entity_id"] == entity_id)
}

#[test]
fn management_actions_over_http_and_the_cli_are_audited_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path());
    let api = Api::from_log(&mut daemon);
    let (access, _) = api.login();
    let admin = bearer(&access);
    let http_secret = "http-client-secret-0123456789";
    let cli_secret = "cli-client-secret-9876543210";

    // Over HTTP: create and delete a client.
    let created = api.call(
        "POST",
        "/clients",
        Some(&admin),
        Some(&json!({ "credentials": { "identity": "audited-http", "secret": http_secret } })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let http_id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        api.call("DELETE", &format!("/clients/{http_id}"), Some(&admin), None)
            .status,
        204
    );

    // With the CLI, while the daemon runs: create and delete a client.
    let added = cli_json(
        dir.path(),
        &["client", "add", "audited-cli", "--secret", cli_secret],
    );
    let cli_id = added["id"].as_str().expect("id").to_owned();
    cli_json(dir.path(), &["client", "remove", &cli_id]);

    // Refusals: a PAT without the scope, and a failed login.
    let pat = api.call(
        "POST",
        "/pats",
        Some(&admin),
        Some(&json!({ "name": "reader", "duration": "1h" })),
    );
    assert_eq!(pat.status, 201, "{}", pat.text);
    let pat_id = pat.body["id"].as_str().expect("id").to_owned();
    let pat_secret = pat.body["secret"].as_str().expect("secret").to_owned();
    assert_eq!(
        api.call(
            "POST",
            "/clients",
            Some(&bearer(&pat_secret)),
            Some(&json!({ "credentials": { "identity": "not-allowed" } }))
        )
        .status,
        403
    );
    let wrong_password = "wrong-password-abcdef";
    assert_eq!(
        api.call(
            "POST",
            "/users/tokens/issue",
            None,
            Some(&json!({ "email": EMAIL, "password": wrong_password }))
        )
        .status,
        401
    );

    let pat_actor = format!("pat:{pat_id}");
    let (events, text) = audit_until(&api, &admin, |events| {
        events
            .iter()
            .any(|e| e["action"] == "client.create" && e["actor"] == pat_actor.as_str())
            && events
                .iter()
                .any(|e| e["action"] == "token.issue" && e["outcome"] == "refused")
    });

    let ev = find(&events, "api", "client.create", &http_id).expect("HTTP create");
    assert_eq!(ev["actor"], "admin", "{ev}");
    assert_eq!(ev["entity_type"], "clients");
    assert_eq!(ev["outcome"], "ok");
    assert_eq!(ev["remote"], "127.0.0.1");
    let ev = find(&events, "api", "client.delete", &http_id).expect("HTTP delete");
    assert_eq!(ev["actor"], "admin", "{ev}");
    assert_eq!(ev["outcome"], "ok");
    let ev = find(&events, "cli", "client.create", &cli_id).expect("CLI create");
    assert_eq!(ev["actor"], "cli", "{ev}");
    assert_eq!(ev["entity_type"], "clients");
    assert_eq!(ev["outcome"], "ok");
    assert_eq!(ev["remote"], Value::Null);
    let ev = find(&events, "cli", "client.delete", &cli_id).expect("CLI delete");
    assert_eq!(ev["actor"], "cli", "{ev}");
    let ev = find(&events, "api", "pat.create", &pat_id).expect("PAT create");
    assert_eq!(ev["actor"], "admin", "{ev}");
    let ev = events
        .iter()
        .find(|e| e["action"] == "client.create" && e["actor"] == pat_actor.as_str())
        .expect("refused create");
    assert_eq!(ev["outcome"], "refused", "{ev}");
    assert_eq!(ev["reason"], "forbidden", "{ev}");
    let ev = events
        .iter()
        .find(|e| e["action"] == "token.issue" && e["outcome"] == "refused")
        .expect("refused login");
    assert_eq!(ev["actor"], "anonymous", "{ev}");
    assert_eq!(ev["reason"], "unauthenticated", "{ev}");
    let ev = events
        .iter()
        .find(|e| e["action"] == "token.issue" && e["outcome"] == "ok")
        .expect("login");
    assert_eq!(ev["actor"], "admin", "{ev}");

    // No secret anywhere in the audit: not the clients', the PAT's, the admin's or a token.
    for secret in [
        http_secret,
        cli_secret,
        &pat_secret,
        ADMIN_TOKEN,
        wrong_password,
        &access,
    ] {
        assert!(!text.contains(secret), "a secret in the audit: {text}");
    }
    // And none in the table itself (every column).
    let db = rusqlite::Connection::open(dir.path().join(".edgegw-dev/state/auth.db")).expect("db");
    let mut st = db.prepare("SELECT * FROM audit_events").expect("prepare");
    let columns = st.column_count();
    let rows: Vec<String> = st
        .query_map([], |r| {
            let mut row = String::new();
            for i in 0..columns {
                let v: rusqlite::types::Value = r.get(i)?;
                row.push_str(&format!("{v:?}|"));
            }
            Ok(row)
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(rows.len() >= 8, "{rows:?}");
    let dump = rows.join("\n");
    for secret in [
        http_secret,
        cli_secret,
        &pat_secret,
        ADMIN_TOKEN,
        wrong_password,
    ] {
        assert!(!dump.contains(secret), "a secret in audit_events: {dump}");
    }
}
