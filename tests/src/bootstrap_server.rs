//! A bootstrap service for the tests that answers as SuperMQ's does (a hyper server, plain
//! HTTP or HTTPS with a test CA). Each rule names the SuperMQ source it follows
//! (github.com/absmach/supermq HEAD; the same files in github.com/absmach/magistrala v0.20.0,
//! which carried the service in the v0.19 era):
//!
//! - Routes `GET /clients/bootstrap/{externalID}` and `GET /clients/bootstrap/secure/
//!   {externalID}` (`bootstrap/api/transport.go`, `MakeHandler`, route `/clients/bootstrap`).
//! - The key is the `Authorization` header after the `Client ` prefix, else empty
//!   (`api/http/util/token.go`, `ExtractClientSecret`).
//! - An empty key is checked before the id: 401, then an empty id: 400
//!   (`bootstrap/api/requests.go`, `bootstrapReq.validate`; statuses as
//!   `bootstrap/api/endpoint_test.go`, `TestBootstrap`, expects them).
//! - Unknown external id → 404; a key that does not match → 403 (`bootstrap/service.go`,
//!   `Bootstrap`: `ErrExternalKey` is an authorization error, `api/http/common.go`,
//!   `EncodeError`: authorization → 403, not found → 404).
//! - Secure: the request's key is hex(IV ‖ AES-CFB(key)) with the service's encryption key;
//!   a key that does not decrypt to the stored one → 403 (`bootstrap/service.go`, `dec`,
//!   `ErrExternalKeySecure`).
//! - The answer is `{client_id, client_secret, channels: [{id, name, metadata}], content,
//!   client_cert, client_key, ca_cert}` (`bootstrap/reader.go`, `bootstrapRes`, `channelRes`),
//!   JSON; on the secure route the same JSON, AES-CFB encrypted, 16-byte random IV first,
//!   `Content-Type: application/octet-stream` (`bootstrap/reader.go`, `encrypt`;
//!   `bootstrap/api/transport.go`, `encodeSecureRes`).
//!
//! The AES-CFB here is `openssl enc` (not the gateway's code), so the two implementations
//! check each other.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// The one bootstrap config the service holds, and what it answers with.
#[derive(Debug, Clone)]
pub struct Registration {
    pub external_id: String,
    pub external_key: String,
    /// The service's encryption key (`SMQ_BOOTSTRAP_ENCRYPT_KEY`): 16, 24 or 32 bytes.
    pub encryption_key: Vec<u8>,
    /// The `bootstrapRes` JSON.
    pub answer: serde_json::Value,
}

/// One request as the service saw it: path and the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub status: u16,
}

#[derive(Debug)]
struct Shared {
    registration: Mutex<Registration>,
    seen: Mutex<Vec<Seen>>,
}

/// A running bootstrap service; dropping it stops it.
#[derive(Debug)]
pub struct BootstrapServer {
    pub addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// AES-CFB128 with the `openssl` CLI (`decrypt`: `-d`).
fn openssl_cfb(key: &[u8], iv: &[u8], input: &[u8], decrypt: bool) -> Option<Vec<u8>> {
    let cipher = match key.len() {
        16 => "-aes-128-cfb",
        24 => "-aes-192-cfb",
        32 => "-aes-256-cfb",
        _ => return None,
    };
    let mut cmd = Command::new("openssl");
    cmd.args(["enc", cipher, "-nosalt", "-K", &hex(key), "-iv", &hex(iv)]);
    if decrypt {
        cmd.arg("-d");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// `IV ‖ AES-CFB(key, IV, plain)` with a random IV, as `bootstrap/reader.go` `encrypt`.
pub fn seal(key: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut iv = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut iv))
        .expect("random IV");
    let mut out = iv.to_vec();
    out.extend(openssl_cfb(key, &iv, plain, false).expect("openssl enc"));
    out
}

/// The inverse of [`seal`], as `bootstrap/service.go` `dec` (after hex decoding).
pub fn open(key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (iv, body) = sealed.split_at_checked(16)?;
    openssl_cfb(key, iv, body, true)
}

type Answer = (u16, &'static str, Vec<u8>);

fn json(status: u16, message: &str) -> Answer {
    (
        status,
        "application/json",
        serde_json::json!({ "error": "", "message": message })
            .to_string()
            .into_bytes(),
    )
}

/// The service's decision for one request (the rules in the module docs).
fn decide(reg: &Registration, method: &str, path: &str, authorization: Option<&str>) -> Answer {
    let Some(rest) = path.strip_prefix("/clients/bootstrap") else {
        return json(404, "not found");
    };
    if method != "GET" {
        return json(405, "method not allowed");
    }
    let (secure, id) = match rest.strip_prefix("/secure/") {
        Some(id) => (true, id),
        None => (false, rest.strip_prefix('/').unwrap_or(rest)),
    };
    // Percent-decoding of the id: the tests' ids need none but ':' (kept as is).
    let key = authorization
        .and_then(|a| a.strip_prefix("Client "))
        .unwrap_or("");
    if key.is_empty() {
        return json(401, "missing or invalid bearer entity key");
    }
    if id.is_empty() {
        return json(400, "missing entity id");
    }
    if id != reg.external_id {
        return json(404, "entity not found");
    }
    let key = if secure {
        let Some(plain) = unhex(key).and_then(|k| open(&reg.encryption_key, &k)) else {
            return json(
                403,
                "failed to get bootstrap configuration for given encrypted external key",
            );
        };
        plain
    } else {
        key.as_bytes().to_vec()
    };
    if key != reg.external_key.as_bytes() {
        return json(
            403,
            "failed to get bootstrap configuration for given external key",
        );
    }
    let body = reg.answer.to_string().into_bytes();
    if secure {
        (
            200,
            "application/octet-stream",
            seal(&reg.encryption_key, &body),
        )
    } else {
        (200, "application/json", body)
    }
}

impl BootstrapServer {
    /// Plain HTTP on 127.0.0.1, a free port.
    pub fn start(registration: Registration) -> Self {
        Self::start_inner(registration, None)
    }

    /// HTTPS on 127.0.0.1 with `cert` / `key` (PEM files).
    pub fn start_tls(registration: Registration, cert: &Path, key: &Path) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let chain = certs::load_certificates(cert).expect("server certificate");
        let key = certs::load_private_key(key).expect("server key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_inner(registration, Some(Arc::new(config)))
    }

    fn start_inner(registration: Registration, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let shared = Arc::new(Shared {
            registration: Mutex::new(registration),
            seen: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = oneshot::channel::<()>();
        let is_tls = tls.is_some();
        let state = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let state = Arc::clone(&state);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, std::convert::Infallible>(handle(&state, &req)) }
                        });
                        let builder = hyper::server::conn::http1::Builder::new();
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(s) = acceptor.accept(stream).await {
                                    let _ =
                                        builder.serve_connection(TokioIo::new(s), service).await;
                                }
                            }
                            None => {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
            });
        });
        Self {
            addr,
            tls: is_tls,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http[s]://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Replaces the answer (a changed bootstrap config on the platform).
    pub fn set_answer(&self, answer: serde_json::Value) {
        self.shared
            .registration
            .lock()
            .expect("registration")
            .answer = answer;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen").clone()
    }

    /// Stops listening (connections are refused from now on).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BootstrapServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reg = shared.registration.lock().expect("registration").clone();
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let path = req.uri().path().to_owned();
    let (status, content_type, body) = decide(&reg, req.method().as_str(), &path, auth);
    shared
        .seen
        .lock()
        .expect("seen")
        .push(Seen { path, status });
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registration {
        Registration {
            external_id: "aa:bb".into(),
            external_key: "key-1".into(),
            encryption_key: b"1234567891011121".to_vec(),
            answer: serde_json::json!({ "client_id": "c", "client_secret": "s", "channels": [] }),
        }
    }

    #[test]
    fn statuses_follow_supermq() {
        let r = reg();
        let st = |path: &str, auth: Option<&str>| decide(&r, "GET", path, auth).0;
        assert_eq!(st("/clients/bootstrap/aa:bb", Some("Client key-1")), 200);
        assert_eq!(st("/clients/bootstrap/aa:bb", Some("Client nope")), 403);
        assert_eq!(st("/clients/bootstrap/aa:bb", Some("Bearer key-1")), 401);
        assert_eq!(st("/clients/bootstrap/aa:bb", None), 401);
        assert_eq!(st("/clients/bootstrap/", Some("Client key-1")), 400);
        assert_eq!(st("/clients/bootstrap/other", Some("Client key-1")), 404);
        // The secure route wants the key encrypted.
        assert_eq!(
            st("/clients/bootstrap/secure/aa:bb", Some("Client key-1")),
            403
        );
        let sealed = hex(&seal(&r.encryption_key, b"key-1"));
        let (status, ct, body) = decide(
            &r,
            "GET",
            "/clients/bootstrap/secure/aa:bb",
            Some(&format!("Client {sealed}")),
        );
        assert_eq!((status, ct), (200, "application/octet-stream"));
        let plain = open(&r.encryption_key, &body).expect("decrypts");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&plain).unwrap()["client_id"],
            "c"
        );
    }
}
