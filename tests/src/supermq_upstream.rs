//! An upstream that enforces SuperMQ's rules for a gateway's MQTT connection, emulated from
//! SuperMQ's source (github.com/absmach/supermq tag v0.19.1, github.com/absmach/mgate,
//! github.com/absmach/fluxmq; read, not copied):
//!
//! - **Authentication** (supermq `mqtt/handler.go`, `AuthConnect`): CONNECT carries username
//!   = the client's id and password = its secret (SuperMQ checks them as BasicAuth against
//!   the clients service). Here: mosquitto's `password_file` with the gateway's client UUID
//!   and secret, `allow_anonymous false`. The TLS client certificate is transport only (the
//!   front below requires one, as the existing uplink tests' mosquitto does).
//! - **Topics** (supermq `pkg/messaging/topics.go`, `ParseTopic`, `ParsePublishSubtopic`,
//!   `ParseSubscribeSubtopic`): `m/<domain>/c/<channel>[/<subtopic>]`, optional leading `/`;
//!   the domain is what stands before the first `/c/` and must not be empty, the channel must
//!   not be empty; a subtopic has no empty level (its `/` become `.` and `..` is refused), no
//!   space, `#`, `+`, `*` or `>` when publishing, and wildcards only as whole levels when
//!   subscribing.
//! - **Authorization** (supermq `mqtt/handler.go`, `AuthPublish` / `AuthSubscribe` →
//!   `authAccess` → the channels service's `Authorize`): every PUBLISH and SUBSCRIBE is
//!   authorized for the connected client on (domain, channel) of its topic: the gateway's
//!   client must be connected to the channel. Here: the front's set of connected channels,
//!   and mosquitto's `acl_file` allowing the gateway only `m/<domain>/c/<channel>/#` of those.
//! - **Refusal on MQTT 3.1.1** (mgate `pkg/session/stream.go`, `stream` → `authorize`): a
//!   packet from the client that fails authorization is not forwarded and the stream ends,
//!   which closes both connections (mgate `pkg/mqtt/mqtt.go`, `handle`). Packets are handled in
//!   order, so everything the client sent before it was forwarded. FluxMQ does the same for a
//!   3.1.1 publish (`mqtt/broker/v3_handler.go` returns `ErrNotAuthorized`).
//! - **Refusal on MQTT 5** (fluxmq `mqtt/broker/v5_handler.go`): a PUBACK with reason 0x87
//!   (not authorized), the connection stays. Here the front forwards MQTT 5 packets and
//!   mosquitto's ACL answers the same PUBACK 0x87.
//!
//! The front is an mTLS (rustls) MQTT proxy on a loopback port in front of mosquitto's plain
//! loopback listener, run on its own tokio runtime; it records why it closed each connection
//! it closed. Everything is stopped on drop.

use std::collections::BTreeSet;
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::mosquitto::free_port;
use crate::pki::Pki;

/// User name and password of the test's own reader (mosquitto_sub on the plain listener).
pub const READER: (&str, &str) = ("reader", "reader-password-0123");

/// The largest packet the front reads (the gateway's are far smaller).
const MAX_PACKET: usize = 1 << 20;

/// What SuperMQ's topic parser makes of a topic: (domain, channel, subtopic).
pub fn parse_topic(topic: &str) -> Option<(&str, &str, &str)> {
    let t = topic.strip_prefix('/').unwrap_or(topic);
    let rest = t.strip_prefix("m/")?;
    let (domain, rest) = rest.split_once("/c/")?;
    if domain.is_empty() {
        return None;
    }
    let (channel, subtopic) = rest.split_once('/').unwrap_or((rest, ""));
    if channel.is_empty() {
        return None;
    }
    Some((domain, channel, subtopic))
}

/// `ParsePublishSubtopic` / `ParseSubscribeSubtopic`: `true` if SuperMQ accepts it.
pub fn subtopic_ok(subtopic: &str, subscribe: bool) -> bool {
    let s = subtopic.trim_matches('/').trim();
    if s.is_empty() {
        return true;
    }
    // SuperMQ turns `/` into `.` and refuses `..`: no empty level, whatever spells it.
    if s.replace('/', ".").contains("..") || s.contains(' ') {
        return false;
    }
    s.split('/').all(|level| {
        if subscribe {
            level == "+" || level == "#" || !level.contains(['+', '#', '*', '>'])
        } else {
            !level.contains(['+', '#', '*', '>'])
        }
    })
}

/// The authorization state of the emulated platform.
#[derive(Debug)]
struct Rules {
    domain: String,
    /// Upstream channel ids the gateway's client is connected to.
    connected: Mutex<BTreeSet<String>>,
    /// Why the front closed connections: `publish <topic>` / `subscribe <filter>`.
    closes: Mutex<Vec<String>>,
}

impl Rules {
    /// Whether the gateway's client may use `topic` (SuperMQ's parse, then authorize).
    fn allows(&self, topic: &str, subscribe: bool) -> bool {
        let Some((domain, channel, subtopic)) = parse_topic(topic) else {
            return false;
        };
        subtopic_ok(subtopic, subscribe)
            && domain == self.domain
            && self
                .connected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(channel)
    }
}

/// mosquitto with a password file and an ACL, behind the SuperMQ-rules front.
#[derive(Debug)]
pub struct SupermqUpstream {
    broker: Option<Child>,
    /// mosquitto's plain loopback port (the test's reader uses it).
    pub broker_port: u16,
    /// The front's mTLS port (the gateway's `uplink.url`).
    pub port: u16,
    pub domain: String,
    pub client_id: String,
    pub client_secret: String,
    dir: PathBuf,
    rules: Arc<Rules>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SupermqUpstream {
    /// Starts mosquitto and the front in `dir`: the gateway's SuperMQ client `client_id` /
    /// `client_secret` in `domain`, connected to the upstream channels `connected`.
    pub fn start(
        dir: &Path,
        pki: &Pki,
        domain: &str,
        client_id: &str,
        client_secret: &str,
        connected: &[&str],
    ) -> Self {
        std::fs::create_dir_all(dir).expect("cannot create the upstream directory");
        let passwd = dir.join("passwd");
        for (i, (user, pass)) in [(client_id, client_secret), READER].iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd
                .arg("-b")
                .arg(&passwd)
                .args([user, pass])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("cannot run mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd failed");
        }
        let broker_port = free_port();
        let user = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("cannot run id")
                .stdout,
        )
        .expect("invariant: user names are UTF-8");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user {user}\n\
                 listener {broker_port} 127.0.0.1\n\
                 allow_anonymous false\n\
                 password_file {passwd}\n\
                 acl_file {acl}\n\
                 persistence false\n\
                 max_queued_messages 1000000\n\
                 log_dest file {dir}/mosquitto.log\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 connection_messages true\n",
                user = user.trim(),
                passwd = passwd.display(),
                acl = dir.join("acl").display(),
                dir = dir.display(),
            ),
        )
        .expect("cannot write mosquitto.conf");
        let rules = Arc::new(Rules {
            domain: domain.to_owned(),
            connected: Mutex::new(connected.iter().map(|c| (*c).to_owned()).collect()),
            closes: Mutex::new(Vec::new()),
        });
        let mut upstream = Self {
            broker: None,
            broker_port,
            port: 0,
            domain: domain.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            dir: dir.to_owned(),
            rules,
            runtime: None,
        };
        upstream.write_acl();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mosquitto (apt-get install mosquitto)");
        upstream.broker = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while StdTcpStream::connect(("127.0.0.1", broker_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto does not listen on {broker_port}; log:\n{}",
                upstream.broker_log()
            );
            // Readiness of another process's listener has no event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        }
        upstream.start_front(pki);
        upstream
    }

    fn write_acl(&self) {
        let mut acl = format!("user {}\n", self.client_id);
        for channel in self
            .rules
            .connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            acl.push_str(&format!(
                "topic readwrite m/{}/c/{channel}/#\n",
                self.domain
            ));
        }
        acl.push_str(&format!("\nuser {}\ntopic readwrite #\n", READER.0));
        std::fs::write(self.dir.join("acl"), acl).expect("cannot write the acl file");
    }

    fn start_front(&mut self, pki: &Pki) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in certs::load_certificates(&pki.ca.cert).expect("test CA") {
            roots.add(c).expect("test CA is a valid root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .expect("client verifier");
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs::load_certificates(&pki.broker.cert).expect("broker cert"),
                certs::load_private_key(&pki.broker.key).expect("broker key"),
            )
            .expect("front TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("front runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("front binds");
        self.port = listener.local_addr().expect("front address").port();
        let rules = Arc::clone(&self.rules);
        let broker_port = self.broker_port;
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let rules = Arc::clone(&rules);
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        relay(tls, broker_port, &rules).await;
                    }
                });
            }
        });
        self.runtime = Some(runtime);
    }

    /// `mqtts://127.0.0.1:<front port>`.
    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// Connects the gateway's client to upstream channel `channel` (as `POST
    /// /channels/{id}/connect` would on the platform): the front allows it at once, mosquitto
    /// once it has re-read its ACL (waited for).
    pub fn connect_channel(&self, channel: &str) {
        self.rules
            .connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.to_owned());
        self.write_acl();
        let reloads = self.broker_log().matches("Reloading config").count();
        let child = self.broker.as_ref().expect("mosquitto is running");
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -HUP mosquitto failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.broker_log().matches("Reloading config").count() <= reloads {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not reload its ACL"
            );
            // The log file is the only sign of a finished reload.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Why the front closed connections so far (`publish <topic>`, `subscribe <filter>`).
    pub fn closes(&self) -> Vec<String> {
        self.rules
            .closes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn broker_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// The `EDGEGW_*` settings that point a gateway's uplink here with the SuperMQ profile.
    pub fn gateway_env(&self, pki: &Pki) -> Vec<(String, String)> {
        vec![
            ("EDGEGW_UPLINK_PLATFORM".into(), "supermq".into()),
            ("EDGEGW_UPLINK_URL".into(), self.url()),
            ("EDGEGW_UPLINK_USERNAME".into(), self.client_id.clone()),
            ("EDGEGW_UPLINK_PASSWORD".into(), self.client_secret.clone()),
            (
                "EDGEGW_UPLINK_CLIENT_CERT".into(),
                pki.client.cert.display().to_string(),
            ),
            (
                "EDGEGW_UPLINK_CLIENT_KEY".into(),
                pki.client.key.display().to_string(),
            ),
            (
                "EDGEGW_UPLINK_CA_CERTS".into(),
                pki.ca.cert.display().to_string(),
            ),
        ]
    }
}

impl Drop for SupermqUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(mut child) = self.broker.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One MQTT packet as read from the client: its first byte and body, and the raw bytes.
struct Packet {
    kind: u8,
    body: Vec<u8>,
    raw: Vec<u8>,
}

async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Option<Packet> {
    let first = r.read_u8().await.ok()?;
    let mut raw = vec![first];
    let mut len = 0usize;
    for shift in 0..4 {
        let b = r.read_u8().await.ok()?;
        raw.push(b);
        len |= usize::from(b & 0x7f) << (7 * shift);
        if b & 0x80 == 0 {
            break;
        }
        if shift == 3 {
            return None;
        }
    }
    if len > MAX_PACKET {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    raw.extend_from_slice(&body);
    Some(Packet {
        kind: first >> 4,
        body,
        raw,
    })
}

/// A length-prefixed string at `at`: (the string, the offset after it).
fn string_at(b: &[u8], at: usize) -> Option<(&str, usize)> {
    let len = usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
    let s = b.get(at + 2..at + 2 + len)?;
    Some((std::str::from_utf8(s).ok()?, at + 2 + len))
}

/// A variable byte integer at `at` (MQTT 5 property lengths): (value, offset after it).
fn varint_at(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for i in 0..4 {
        let byte = *b.get(at + i)?;
        v |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, at + i + 1));
        }
    }
    None
}

/// The topics a packet asks to use: a PUBLISH's topic, a SUBSCRIBE's filters.
fn topics(p: &Packet, v5: bool) -> Option<(bool, Vec<String>)> {
    match p.kind {
        3 => Some((false, vec![string_at(&p.body, 0)?.0.to_owned()])),
        8 => {
            let mut at = 2;
            if v5 {
                let (len, after) = varint_at(&p.body, at)?;
                at = after + len;
            }
            let mut out = Vec::new();
            while at < p.body.len() {
                let (t, after) = string_at(&p.body, at)?;
                out.push(t.to_owned());
                at = after + 1;
            }
            Some((true, out))
        }
        _ => Some((false, Vec::new())),
    }
}

/// Relays one client connection to mosquitto, checking every packet the client sends.
async fn relay<S>(client: S, broker_port: u16, rules: &Rules)
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
        return;
    };
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_broker, mut to_broker) = broker.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let mut v5 = false;
    while let Some(p) = read_packet(&mut from_client).await {
        if p.kind == 1 {
            // CONNECT: protocol name, then the level (4: 3.1.1, 5: MQTT 5).
            v5 = string_at(&p.body, 0).and_then(|(_, at)| p.body.get(at)) == Some(&5);
        }
        let Some((subscribe, wanted)) = topics(&p, v5) else {
            break;
        };
        let refused = wanted.iter().find(|t| !rules.allows(t, subscribe));
        if let Some(t) = refused
            && !v5
        {
            // mgate: the packet is not forwarded and the connection is closed.
            let what = if subscribe { "subscribe" } else { "publish" };
            rules
                .closes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{what} {t}"));
            break;
        }
        if to_broker.write_all(&p.raw).await.is_err() {
            break;
        }
    }
    down.abort();
    let _ = down.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_as_supermqs_parser_reads_them() {
        assert_eq!(parse_topic("m/d/c/ch"), Some(("d", "ch", "")));
        assert_eq!(parse_topic("/m/d/c/ch/a/b"), Some(("d", "ch", "a/b")));
        for bad in [
            "m//c/ch",
            "m/d/c/",
            "m/d/x/ch",
            "edgegw/gw/status",
            "m/c/ch",
        ] {
            assert_eq!(parse_topic(bad), None, "{bad}");
        }
        assert!(subtopic_ok("a/b", false));
        assert!(!subtopic_ok("a//b", false));
        assert!(!subtopic_ok("a/+", false));
        assert!(subtopic_ok("cmd/#", true));
        assert!(!subtopic_ok("cmd/a#", true));
    }
}
