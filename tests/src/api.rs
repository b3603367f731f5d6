//! The management API through curl (a real HTTP client; proxies disabled), for end-to-end tests
//! of a running `edgegw run --dev`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Daemon;

/// The development profile's administrator, as the tests start it.
pub const EMAIL: &str = "admin@example.com";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// The API of one daemon.
#[derive(Debug)]
pub struct Api {
    pub base: String,
    /// CA bundle curl verifies an HTTPS server with (`--cacert`).
    pub cacert: Option<PathBuf>,
}

/// Status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The body as received.
    pub text: String,
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Unix seconds of an RFC 3339 time in an API answer (SuperMQ's JSON times are Go `time.Time`,
/// RFC 3339 strings); panics naming the value when it is not one (an integer included).
pub fn rfc3339(v: &Value) -> i64 {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("not an RFC 3339 string: {v}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"))
        .unix_timestamp()
}

/// Runs a curl command made by [`Api::curl`] and parses its reply.
pub fn run(mut cmd: Command) -> Reply {
    let out = cmd.output().expect("run curl");
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (text, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    let status = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl failed: {all} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Reply {
        status,
        body: serde_json::from_str(text).unwrap_or(Value::Null),
        text: text.to_owned(),
    }
}

impl Api {
    /// Waits for the daemon's "HTTP API listening" line and takes the port from it.
    pub fn from_log(daemon: &mut Daemon) -> Self {
        Self::new(daemon, "http")
    }

    /// Like [`Api::from_log`], with `scheme` (`http` or `https`).
    pub fn new(daemon: &mut Daemon, scheme: &str) -> Self {
        let line = daemon.wait_for_log("HTTP API listening", Duration::from_secs(20));
        let port = crate::http_port(&line);
        Self {
            base: format!("{scheme}://localhost:{port}"),
            cacert: None,
        }
    }

    /// `auth` is a full Authorization header value; `body` is sent as JSON.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut cmd = self.curl(method, path, auth);
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        run(cmd)
    }

    /// A curl command for `method` on `path` (proxies off; prints the status code on a last
    /// line), for a test to add its own arguments to; run it with [`run`].
    pub fn curl(&self, method: &str, path: &str, auth: Option<&str>) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--noproxy",
            "*",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        if let Some(ca) = &self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some(a) = auth {
            cmd.arg("-H").arg(format!("authorization: {a}"));
        }
        cmd.arg(format!("{}{path}", self.base));
        cmd
    }

    /// Issues a token pair with the administrator's credentials: (access, refresh).
    pub fn login(&self) -> (String, String) {
        let r = self.call(
            "POST",
            "/users/tokens/issue",
            None,
            Some(&json!({ "email": EMAIL, "password": ADMIN_TOKEN })),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        let field = |name: &str| {
            r.body[name]
                .as_str()
                .unwrap_or_else(|| panic!("{name} in {}", r.text))
                .to_owned()
        };
        (field("access_token"), field("refresh_token"))
    }
}
