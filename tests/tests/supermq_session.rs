//! End to end: a SuperMQ user's session, as SuperMQ's docs and scripts write it, against the
//! real `edgegw run --dev` through curl. Every request uses SuperMQ's path, body shape and
//! expects SuperMQ's status; the comment on each step names the SuperMQ v0.19.1 source file
//! (github.com/absmach/supermq) the expected answer comes from.

use std::path::Path;

use serde_json::json;
use system_tests::api::{ADMIN_TOKEN, Api, EMAIL, bearer, rfc3339};
use system_tests::{Daemon, edgegw};

const DOMAIN: &str = "6e5e10b3-d4df-4758-b426-4929d55ad740";
/// A client id chosen by the caller, as SuperMQ scripts mirror a platform client.
const CHOSEN_ID: &str = "1c0de5e1-2b7a-4c3d-9e8f-a0b1c2d3e4f5";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .try_into()
        .expect("fits")
}

/// A time in an answer is RFC 3339 (Go's `time.Time` in SuperMQ's JSON: `clients/clients.go`,
/// `Client.CreatedAt`) and about now.
fn recent(v: &serde_json::Value) -> i64 {
    let t = rfc3339(v);
    assert!((t - now()).abs() < 600, "{v} is not about now");
    t
}

fn start(dir: &Path) -> Daemon {
    let mut cmd = edgegw(dir);
    cmd.args(["--dev", "run"])
        .env("EDGEGW_STANDALONE_EMAIL", EMAIL)
        .env("EDGEGW_STANDALONE_TOKEN", ADMIN_TOKEN)
        .env("EDGEGW_GATEWAY_DOMAIN_ID", DOMAIN);
    Daemon::start(cmd)
}

#[test]
fn supermq_users_session_answers_as_supermq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path());
    let api = Api::new(&mut daemon, "http");
    let d = |path: &str| format!("/{DOMAIN}{path}");

    // Token issue with `username` (an email here) → 201 (users/api/responses.go, tokenRes).
    let issued = api.call(
        "POST",
        "/users/tokens/issue",
        None,
        Some(&json!({ "username": EMAIL, "password": ADMIN_TOKEN })),
    );
    assert_eq!(issued.status, 201, "{}", issued.text);
    let refresh = issued.body["refresh_token"].as_str().expect("refresh");
    // Refresh → 201 (same tokenRes).
    let refreshed = api.call(
        "POST",
        "/users/tokens/refresh",
        Some(&bearer(refresh)),
        None,
    );
    assert_eq!(refreshed.status, 201, "{}", refreshed.text);
    let access = bearer(refreshed.body["access_token"].as_str().expect("access"));
    let admin = Some(access.as_str());

    // Create a client under the domain, with a name that has spaces and no identity
    // (SuperMQ generates what is missing) → 201 (clients/api/http/responses.go,
    // createClientRes); the identity we generate is valid and returned.
    let client = api.call(
        "POST",
        &d("/clients"),
        admin,
        Some(
            &json!({ "name": "kitchen sensor", "credentials": { "secret": "0123456789abcdef-k" } }),
        ),
    );
    assert_eq!(client.status, 201, "{}", client.text);
    let client_id = client.body["id"].as_str().expect("id").to_owned();
    let identity = client.body["credentials"]["identity"]
        .as_str()
        .expect("identity");
    assert!(
        !identity.contains(' ') && !identity.is_empty(),
        "{identity}"
    );
    // Times are RFC 3339 strings (clients/clients.go: `CreatedAt time.Time`).
    assert_eq!(
        recent(&client.body["created_at"]),
        recent(&client.body["updated_at"])
    );

    // A caller-chosen id (a UUID: api/http/common.go, ValidateUUID, called by
    // clients/api/http/requests.go, createClientReq.validate) and tags (clients/clients.go,
    // `Tags []string`) → 201 with both honoured.
    let chosen = api.call(
        "POST",
        &d("/clients"),
        admin,
        Some(&json!({
            "id": CHOSEN_ID, "name": "boiler", "tags": ["heating", "basement"],
            "credentials": { "identity": "boiler-1", "secret": "0123456789abcdef-b" }
        })),
    );
    assert_eq!(chosen.status, 201, "{}", chosen.text);
    assert_eq!(chosen.body["id"], CHOSEN_ID);
    assert_eq!(chosen.body["tags"], json!(["heating", "basement"]));
    // The same id again → 409 (apidocs/openapi/clients.yaml, createClient: "409 Failed due to
    // using an existing identity"); an id that is not a UUID → 400 (ErrInvalidIDFormat is a
    // request error: api/http/common.go, EncodeError).
    let again = api.call(
        "POST",
        &d("/clients"),
        admin,
        Some(&json!({ "id": CHOSEN_ID, "credentials": { "identity": "boiler-2" } })),
    );
    assert_eq!(again.status, 409, "{}", again.text);
    for bad in [
        "boiler",
        "1C0DE5E1-2B7A-4C3D-9E8F-A0B1C2D3E4F5",
        "1c0de5e12b7a4c3d9e8fa0b1c2d3e4f5",
    ] {
        let refused = api.call(
            "POST",
            &d("/clients"),
            admin,
            Some(&json!({ "id": bad, "credentials": { "identity": "boiler-3" } })),
        );
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text);
    }
    // `PATCH /{d}/clients/{id}/tags` replaces them → 200 and the client
    // (clients/api/http/clients.go, "update_client_tags"; responses.go, updateClientRes).
    let retagged = api.call(
        "PATCH",
        &d(&format!("/clients/{CHOSEN_ID}/tags")),
        admin,
        Some(&json!({ "tags": ["heating"] })),
    );
    assert_eq!(retagged.status, 200, "{}", retagged.text);
    assert_eq!(retagged.body["tags"], json!(["heating"]));
    assert!(rfc3339(&retagged.body["updated_at"]) >= rfc3339(&chosen.body["created_at"]));
    // Viewed (viewClientRes) and listed (clientsPageRes) with them.
    let viewed = api.call("GET", &d(&format!("/clients/{CHOSEN_ID}")), admin, None);
    assert_eq!(viewed.status, 200, "{}", viewed.text);
    assert_eq!(viewed.body["tags"], json!(["heating"]));
    let listed = api.call("GET", &d("/clients?limit=100"), admin, None);
    let row = listed.body["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["id"] == CHOSEN_ID)
        .cloned()
        .expect("listed");
    assert_eq!(row["tags"], json!(["heating"]));
    recent(&row["created_at"]);

    // Create a channel under the domain → 201 (channels/api/http/responses.go,
    // createChannelRes); it belongs to the path's domain.
    let channel = api.call(
        "POST",
        &d("/channels"),
        admin,
        Some(&json!({ "name": "kitchen", "tags": ["indoor"] })),
    );
    assert_eq!(channel.status, 201, "{}", channel.text);
    let channel_id = channel.body["id"].as_str().expect("id").to_owned();
    assert_eq!(channel.body["domain_id"], DOMAIN);
    assert_eq!(channel.body["tags"], json!(["indoor"]));
    recent(&channel.body["created_at"]);
    let view = api.call("GET", &d(&format!("/channels/{channel_id}")), admin, None);
    assert_eq!(view.status, 200, "{}", view.text);
    assert_eq!(view.body["tags"], json!(["indoor"]));
    // Tags replaced (`PATCH /{d}/channels/{id}/tags`, channels/api/http/transport.go) and the
    // channel updated (`PATCH /{d}/channels/{id}`, updateChannelReq: name, metadata, tags)
    // → 200 and the channel (responses.go, updateChannelRes).
    let retagged = api.call(
        "PATCH",
        &d(&format!("/channels/{channel_id}/tags")),
        admin,
        Some(&json!({ "tags": ["indoor", "ground-floor"] })),
    );
    assert_eq!(retagged.status, 200, "{}", retagged.text);
    assert_eq!(retagged.body["tags"], json!(["indoor", "ground-floor"]));
    let updated = api.call(
        "PATCH",
        &d(&format!("/channels/{channel_id}")),
        admin,
        Some(&json!({ "name": "kitchen-main", "metadata": { "floor": 0 } })),
    );
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(
        (
            &updated.body["name"],
            &updated.body["metadata"]["floor"],
            &updated.body["tags"]
        ),
        (
            &json!("kitchen-main"),
            &json!(0),
            &json!(["indoor", "ground-floor"])
        )
    );
    let listed = api.call("GET", &d("/channels"), admin, None);
    let row = listed.body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .find(|c| c["id"] == channel_id.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(row["tags"], json!(["indoor", "ground-floor"]));

    // Another domain: authenticated → 403 (api/http/common.go, EncodeError: authorization
    // errors are 403); no credentials → 401 (authentication comes first).
    let other = "/00000000-0000-4000-8000-000000000000/clients";
    assert_eq!(api.call("GET", other, admin, None).status, 403);
    assert_eq!(api.call("GET", other, None, None).status, 401);
    // The domain-less path keeps working.
    assert_eq!(api.call("GET", "/clients", admin, None).status, 200);

    // Connect → 201 (channels/api/http/responses.go, connectChannelClientsRes).
    let connected = api.call(
        "POST",
        &d("/channels/connect"),
        admin,
        Some(&json!({
            "client_ids": [client_id], "channel_ids": [channel_id], "types": ["publish"]
        })),
    );
    assert_eq!(connected.status, 201, "{}", connected.text);

    // Issue a certificate → 201 (certs/api/http/responses.go, issueCertRes), revoke → 204
    // (revokeCertRes), then it is listed as revoked (listCertsRes, 200).
    let cert = api.call(
        "POST",
        &d(&format!("/certs/issue/{client_id}")),
        admin,
        Some(&json!({ "ttl": "10h" })),
    );
    assert_eq!(cert.status, 201, "{}", cert.text);
    let serial = cert.body["serial"].as_str().expect("serial").to_owned();
    // RFC 3339 validity, ten hours (give or take the backdating of not_before) apart.
    let lifetime = rfc3339(&cert.body["not_after"]) - rfc3339(&cert.body["not_before"]);
    assert!((lifetime - 10 * 3600).abs() < 600, "{}", cert.text);
    let revoked = api.call("PATCH", &d(&format!("/certs/{serial}/revoke")), admin, None);
    assert_eq!(revoked.status, 204, "{}", revoked.text);
    let certs = api.call("GET", &d("/certs"), admin, None);
    assert_eq!(certs.status, 200);
    let listed = certs.body["certs"]
        .as_array()
        .expect("certs")
        .iter()
        .find(|c| c["serial_hex"] == serial.as_str())
        .cloned()
        .expect("listed");
    recent(&listed["revoked_at"]);

    // Create a PAT → 201 (auth/api/http/pats/responses.go, createPatRes).
    let pat = api.call(
        "POST",
        "/pats",
        admin,
        Some(&json!({ "name": "ci", "description": "pipeline", "duration": "1h" })),
    );
    assert_eq!(pat.status, 201, "{}", pat.text);
    // RFC 3339 times one hour apart (auth/pat.go, `PAT`: IssuedAt / ExpiresAt time.Time).
    assert_eq!(
        rfc3339(&pat.body["expires_at"]) - recent(&pat.body["issued_at"]),
        3600
    );
    let pat_id = pat.body["id"].as_str().expect("id").to_owned();
    let pat_auth = bearer(pat.body["secret"].as_str().expect("secret"));
    let pat_auth = Some(pat_auth.as_str());

    // SuperMQ-shaped scopes: v0.19.1 (`domain_id`, operation `view`) and ≤ 0.18
    // (`optional_domain_id`, `list`) → 200 (scopeRes); auth/pat.go defines both shapes.
    let scoped = api.call(
        "PATCH",
        &format!("/pats/{pat_id}/scope/add"),
        admin,
        Some(&json!({ "scopes": [
            { "domain_id": DOMAIN, "entity_type": "clients", "operation": "view", "entity_id": "*" },
            { "optional_domain_id": DOMAIN, "entity_type": "channels", "operation": "list", "entity_id": "*" }
        ]})),
    );
    assert_eq!(scoped.status, 200, "{}", scoped.text);
    // A scope for another domain can never apply: refused.
    let foreign = api.call(
        "PATCH",
        &format!("/pats/{pat_id}/scope/add"),
        admin,
        Some(&json!({ "scopes": [
            { "domain_id": "elsewhere", "entity_type": "clients", "operation": "view", "entity_id": "*" }
        ]})),
    );
    assert_eq!(foreign.status, 400, "{}", foreign.text);
    // Listed with ids (listScopeRes, 200).
    let listed = api.call("GET", &format!("/pats/{pat_id}/scope"), admin, None);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["total"], 2, "{}", listed.text);

    // Use it: in scope → 200; out of scope → 403 (api/http/common.go).
    assert_eq!(api.call("GET", &d("/clients"), pat_auth, None).status, 200);
    assert_eq!(api.call("GET", &d("/channels"), pat_auth, None).status, 200);
    let denied = api.call(
        "POST",
        &d("/clients"),
        pat_auth,
        Some(&json!({ "name": "intruder" })),
    );
    assert_eq!(denied.status, 403, "{}", denied.text);

    // Revoke → 204 (revokePatSecretRes); the PAT is then unauthenticated → 401.
    let revoke = api.call(
        "PATCH",
        &format!("/pats/{pat_id}/secret/revoke"),
        admin,
        None,
    );
    assert_eq!(revoke.status, 204, "{}", revoke.text);
    assert_eq!(api.call("GET", &d("/clients"), pat_auth, None).status, 401);

    // Revoke all (DELETE /pats, clearAllRes) → 200; none left.
    let second = api.call("POST", "/pats", admin, Some(&json!({ "name": "other" })));
    assert_eq!(second.status, 201);
    let all = api.call("DELETE", "/pats", admin, None);
    assert_eq!(all.status, 200, "{}", all.text);
    let left = api.call("GET", "/pats", admin, None);
    assert_eq!(left.body["total"], 0, "{}", left.text);
    let second_auth = bearer(second.body["secret"].as_str().expect("secret"));
    assert_eq!(
        api.call("GET", "/clients", Some(&second_auth), None).status,
        401
    );
}

#[test]
fn walkthrough_aliases_and_older_certificate_forms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = start(dir.path());
    let api = Api::new(&mut daemon, "http");
    let (access, _) = api.login();
    let admin = bearer(&access);
    let admin = Some(admin.as_str());

    let client = api.call(
        "POST",
        &format!("/{DOMAIN}/clients"),
        admin,
        Some(&json!({ "credentials": { "identity": "boiler" } })),
    );
    assert_eq!(client.status, 201, "{}", client.text);
    // Magistrala's older `POST /{d}/certs {client_id, ttl}` → 201, twice.
    for _ in 0..2 {
        let c = api.call(
            "POST",
            &format!("/{DOMAIN}/certs"),
            admin,
            Some(&json!({ "client_id": "boiler", "ttl": "1h" })),
        );
        assert_eq!(c.status, 201, "{}", c.text);
    }
    // The walkthroughs' `DELETE /certs/revoke {"client_id"}` revokes both.
    let mut cmd = api.curl("DELETE", "/certs/revoke", admin);
    cmd.args(["-H", "content-type: application/json", "--data-binary"])
        .arg(json!({ "client_id": "boiler" }).to_string());
    let revoked = system_tests::api::run(cmd);
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(
        revoked.body["revoked"].as_array().map(Vec::len),
        Some(2),
        "{}",
        revoked.text
    );
    // Nothing left to revoke by the older `DELETE /{d}/certs/{clientID}` → 404.
    assert_eq!(
        api.call("DELETE", &format!("/{DOMAIN}/certs/boiler"), admin, None)
            .status,
        404
    );

    // PAT walkthrough aliases and the name / description endpoints (202: updatePatNameRes).
    let pat = api.call("POST", "/pats", admin, Some(&json!({ "name": "a" })));
    let id = pat.body["id"].as_str().expect("id").to_owned();
    let renamed = api.call(
        "PATCH",
        &format!("/pats/{id}/name"),
        admin,
        Some(&json!({ "name": "b" })),
    );
    assert_eq!(renamed.status, 202, "{}", renamed.text);
    assert_eq!(renamed.body["name"], "b");
    let described = api.call(
        "PATCH",
        &format!("/pats/{id}/description"),
        admin,
        Some(&json!({ "description": "d" })),
    );
    assert_eq!(described.status, 202);
    assert_eq!(described.body["description"], "d");
    assert_eq!(
        api.call("PATCH", &format!("/pats/{id}/revoke"), admin, None)
            .status,
        204
    );
    let reset = api.call("PATCH", &format!("/pats/{id}/reset"), admin, None);
    assert_eq!(reset.status, 200, "{}", reset.text);
    let new = bearer(reset.body["secret"].as_str().expect("secret"));
    // Un-revoked but without scopes: authenticated, forbidden.
    assert_eq!(api.call("GET", "/clients", Some(&new), None).status, 403);
    // Clear the scopes (DELETE /pats/{id}/scope, clearAllRes 200).
    assert_eq!(
        api.call("DELETE", &format!("/pats/{id}/scope"), admin, None)
            .status,
        200
    );

    // A short secret is refused, and the error says why.
    let short = api.call(
        "POST",
        "/clients",
        admin,
        Some(&json!({ "credentials": { "identity": "s", "secret": "short" } })),
    );
    assert_eq!(short.status, 400);
    assert!(short.text.contains("DTLS-PSK"), "{}", short.text);
}
