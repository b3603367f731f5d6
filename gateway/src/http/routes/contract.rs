//! The router's answers against `docs/openapi.yaml`'s documented status codes (issue 20 item
//! 16: schemathesis found ~70 undocumented codes). Every operation in [`ROUTES`] is probed with
//! the requests that make the server refuse — no credentials, a PAT without scopes, unknown ids,
//! a foreign domain, a body without Content-Type, with broken JSON, with the wrong shape, one
//! over `http.max_body`, a bad query string — and every status it answers must be documented
//! for that operation; every operation but the public ones must answer 401 without
//! credentials, and none may answer 5xx.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::{ROUTES, router};
use crate::http::test_state;

const OPENAPI: &str = include_str!("../../../../docs/openapi.yaml");
const DOMAIN: &str = "6e5e10b3-d4df-4758-b426-4929d55ad740";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// (method, path) → the status codes its `responses:` list.
fn documented_codes() -> BTreeMap<(String, String), BTreeSet<u16>> {
    let mut out: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    let mut in_paths = false;
    let mut path = None;
    let mut op: Option<(String, String)> = None;
    let mut in_responses = false;
    for line in OPENAPI.lines() {
        if !line.starts_with(' ') {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
            op = None;
            continue;
        }
        if let Some(m) = line.strip_prefix("    ")
            && !m.starts_with(' ')
        {
            let key = m.split(':').next().unwrap_or_default();
            op = ["get", "post", "patch", "put", "delete"]
                .contains(&key)
                .then(|| (key.to_owned(), path.clone().unwrap_or_default()));
            in_responses = false;
            continue;
        }
        let Some(key) = &op else { continue };
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent == 6 {
            in_responses = trimmed.starts_with("responses:");
        }
        if !in_responses {
            continue;
        }
        // `"201": …` keys, inline (`responses: { "200": …, "404": … }`) or one per line.
        let codes = out.entry(key.clone()).or_default();
        let mut rest = line;
        while let Some(i) = rest.find('"') {
            let after = &rest[i + 1..];
            if after.len() > 4
                && after.as_bytes()[3] == b'"'
                && after.as_bytes()[4] == b':'
                && let Ok(code) = after[..3].parse::<u16>()
            {
                codes.insert(code);
            }
            rest = after;
        }
    }
    out
}

/// A body each operation accepts (so the probe reaches authentication), by its domain-less path.
fn valid_body(method: &str, path: &str) -> Value {
    let path = path.strip_prefix("/{domainID}").unwrap_or(path);
    match (method, path) {
        ("post", "/users/tokens/issue") => json!({ "username": "x@example.com", "password": "no" }),
        ("post", "/clients") => json!({ "name": "probe" }),
        ("post", "/channels") => json!({ "name": "probe" }),
        ("post", "/connect" | "/disconnect" | "/channels/connect" | "/channels/disconnect") => {
            json!({ "client_ids": ["no-such-client"], "channel_ids": ["no-such-channel"] })
        }
        ("post", "/channels/{id}/connect" | "/channels/{id}/disconnect") => {
            json!({ "client_ids": ["no-such-client"] })
        }
        ("post", "/certs") | ("delete", "/certs/revoke") => json!({ "client_id": "no-such" }),
        ("post", "/pats") => json!({ "name": "probe" }),
        ("patch", "/pats/{id}/name") => json!({ "name": "renamed" }),
        ("patch", "/pats/{id}/description") => json!({ "description": "described" }),
        _ => json!({}),
    }
}

/// Every field any request body has, with a value of the wrong type: the shape refusal.
fn wrong_shape() -> Value {
    let mut m = serde_json::Map::new();
    for f in [
        "name",
        "username",
        "password",
        "client_ids",
        "channel_ids",
        "types",
        "client_id",
        "ttl",
        "csr",
        "description",
        "duration",
        "scopes",
        "scopes_id",
        "tags",
        "metadata",
        "secret",
        "credentials",
        "revoke_previous",
        "id",
        "status",
        "domain_id",
    ] {
        m.insert(f.to_owned(), json!({ "wrong": [1] }));
    }
    Value::Object(m)
}

fn concrete(path: &str, domain: &str) -> String {
    // Quarantined messages are numbered: a word there is answered 400 before authentication.
    let id = if path.starts_with("/quarantine") {
        "999999"
    } else {
        "no-such-id"
    };
    path.replace("{domainID}", domain)
        .replace("{domain}", DOMAIN)
        .replace("{subtopic}", "a/b")
        .replace("{channel}", "no-such-channel")
        .replace("{entity_id}", "no-such-client")
        .replace("{serial}", "00ff")
        .replace("{id}", id)
}

/// How a probe authenticates.
#[derive(Clone, Copy)]
enum Who<'a> {
    Nobody,
    Bearer(&'a str),
}

/// Body of a probe.
enum Payload {
    None,
    Json(Value),
    /// Bytes with no Content-Type.
    Untyped(&'static [u8]),
    /// Bytes sent as `application/json`.
    Raw(Vec<u8>),
}

struct Prober {
    app: Router,
    /// Each probe comes from its own address, so a per-address throttle never answers for
    /// the probe before it.
    next_peer: AtomicU32,
}

impl Prober {
    async fn call(&self, method: &str, uri: &str, who: Who<'_>, payload: Payload) -> u16 {
        let mut req = axum::http::Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(uri);
        if let Who::Bearer(t) = who {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match payload {
            Payload::None => Body::empty(),
            Payload::Json(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            Payload::Untyped(b) => Body::from(b),
            Payload::Raw(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b)
            }
        };
        let mut req = req.body(body).unwrap();
        let n = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let peer = SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 40000));
        req.extensions_mut().insert(ConnectInfo(peer));
        self.app
            .clone()
            .oneshot(req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn every_answer_of_every_operation_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (mut state, _worker) = test_state(dir.path());
    let config = crate::config::load_from(
        &crate::config::Source::None,
        crate::config::Profile::Production,
        vec![
            ("EDGEGW_STANDALONE_EMAIL", "admin@example.com"),
            ("EDGEGW_STANDALONE_TOKEN", ADMIN_TOKEN),
            ("EDGEGW_GATEWAY_DOMAIN_ID", DOMAIN),
            ("EDGEGW_HTTP_MAX_BODY", "4KiB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect::<Vec<(std::ffi::OsString, std::ffi::OsString)>>(),
    )
    .unwrap();
    Arc::get_mut(&mut state)
        .expect("invariant: the fresh state is not shared yet")
        .config = config;
    let now = crate::auth::store::now_unix();
    let (_pat, pat) = state
        .pats
        .create("probe", "", std::time::Duration::from_secs(3600), now)
        .unwrap();
    let p = Prober {
        app: router(Arc::clone(&state)),
        next_peer: AtomicU32::new(1),
    };
    let documented = documented_codes();
    let public = [
        ("get", "/health"),
        ("get", "/metrics"),
        ("post", "/users/tokens/issue"),
    ];
    let mut seen: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    let oversize = vec![b' '; 8 * 1024];

    // Pass 1: everything but the administrator's calls (which may change what pass 1 meets,
    // e.g. `DELETE /pats` removes the probing PAT).
    for &(method, path) in ROUTES {
        let uri = concrete(path, DOMAIN);
        let body = valid_body(method, path);
        let mut codes = vec![
            p.call(method, &uri, Who::Nobody, Payload::None).await,
            p.call(method, &uri, Who::Nobody, Payload::Json(body.clone()))
                .await,
            p.call(
                method,
                &uri,
                Who::Bearer("not-a-token"),
                Payload::Json(body.clone()),
            )
            .await,
            p.call(method, &uri, Who::Bearer(&pat), Payload::Json(body.clone()))
                .await,
            p.call(method, &uri, Who::Bearer(&pat), Payload::Untyped(b"{}"))
                .await,
            p.call(
                method,
                &uri,
                Who::Bearer(&pat),
                Payload::Raw(b"{not json".to_vec()),
            )
            .await,
            p.call(
                method,
                &uri,
                Who::Bearer(&pat),
                Payload::Json(wrong_shape()),
            )
            .await,
            p.call(
                method,
                &uri,
                Who::Bearer(&pat),
                Payload::Raw(oversize.clone()),
            )
            .await,
        ];
        if method == "get" {
            let q = format!("{uri}?offset=-1&limit=many");
            codes.push(p.call(method, &q, Who::Bearer(&pat), Payload::None).await);
        }
        if path.starts_with("/{domainID}") {
            let foreign = concrete(path, "00000000-0000-4000-8000-000000000000");
            codes.push(
                p.call(method, &foreign, Who::Nobody, Payload::Json(body.clone()))
                    .await,
            );
            codes.push(
                p.call(
                    method,
                    &foreign,
                    Who::Bearer(ADMIN_TOKEN),
                    Payload::Json(body),
                )
                .await,
            );
        }
        seen.entry((method.to_owned(), path.to_owned()))
            .or_default()
            .extend(codes);
    }
    // Pass 2: the administrator, with unknown ids and bodies that pass extraction.
    for &(method, path) in ROUTES {
        let uri = concrete(path, DOMAIN);
        let code = p
            .call(
                method,
                &uri,
                Who::Bearer(ADMIN_TOKEN),
                Payload::Json(valid_body(method, path)),
            )
            .await;
        seen.entry((method.to_owned(), path.to_owned()))
            .or_default()
            .insert(code);
    }

    let mut undocumented = Vec::new();
    let mut problems = Vec::new();
    for (key, codes) in &seen {
        let doc = documented.get(key).cloned().unwrap_or_default();
        let missing: Vec<u16> = codes.difference(&doc).copied().collect();
        if !missing.is_empty() {
            undocumented.push(format!("{} {}: {missing:?}", key.0, key.1));
        }
        if codes.iter().any(|c| *c >= 500) {
            problems.push(format!("{} {} answered {codes:?}", key.0, key.1));
        }
        let is_public = public.contains(&(key.0.as_str(), key.1.as_str()));
        if !is_public && !codes.contains(&401) {
            problems.push(format!("{} {} never answered 401: {codes:?}", key.0, key.1));
        }
    }
    assert!(
        seen.len() == ROUTES.len(),
        "probed {} of {}",
        seen.len(),
        ROUTES.len()
    );
    assert!(
        undocumented.is_empty(),
        "answered but not documented in docs/openapi.yaml:\n{}",
        undocumented.join("\n")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
