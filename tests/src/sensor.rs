//! Simulated sensors for the benchmarks (`bench`, `coap_bench`): CoAP over UDP and CoAP over
//! DTLS 1.2 (a dimpl client, PSK or ECDSA P-256 certificate), each sensor closed loop (one
//! request in flight, the next only after the answer). Also the DTLS pieces the handshake and
//! session benchmarks need: a full handshake on a fresh source port, a CoAP ping over a held
//! session, a clean close.
//!
//! Payloads are the message number (decimal): the benchmarks look every acknowledged number up
//! at the upstream subscriber.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use dimpl::{Config, Dtls, DtlsCertificate, Output, PskResolver};

/// What one or more sensors saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Ack latencies (sorted after [`Seen::merge`]).
    pub latencies: Vec<Duration>,
    /// Numbers of the messages answered 2.04.
    pub acked: Vec<u64>,
    /// Requests answered with another code, or not at all; failed handshakes.
    pub errors: u64,
}

impl Seen {
    /// All sensors' results in one, latencies sorted.
    pub fn merge(all: Vec<Seen>) -> Seen {
        let mut out = Seen::default();
        for s in all {
            out.latencies.extend(s.latencies);
            out.acked.extend(s.acked);
            out.errors += s.errors;
        }
        out.latencies.sort();
        out
    }

    /// The `p` quantile (0..1) of the latencies; call after [`Seen::merge`].
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The `p` quantile (0..1) of sorted durations; zero if empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Runs `sensors` sensor threads until `seconds` pass: `f(k, base + k * 1_000_000, until)` for
/// sensor `k` (so every sensor numbers its messages in its own range). Returns the merged
/// results and the wall time it took.
pub fn run_sensors<F>(sensors: u64, seconds: u64, base: u64, f: F) -> (Seen, f64)
where
    F: Fn(u64, u64, Instant) -> Seen + Send + Sync + Clone + 'static,
{
    let until = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..sensors)
        .map(|k| {
            let f = f.clone();
            std::thread::spawn(move || f(k, base + k * 1_000_000, until))
        })
        .collect();
    let seen = Seen::merge(
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Seen {
                    errors: 1,
                    ..Seen::default()
                })
            })
            .collect(),
    );
    (seen, start.elapsed().as_secs_f64())
}

/// A CoAP POST to `path` (segments) carrying `n`, token = message id; `secret` as
/// `auth=<secret>` Uri-Query (plain CoAP; over DTLS the session authenticates).
pub fn coap_post(
    mid: u16,
    kind: MessageType,
    secret: Option<&str>,
    path: &[&str],
    n: u64,
) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    if let Some(s) = secret {
        p.add_option(CoapOption::UriQuery, format!("auth={s}").into_bytes());
    }
    p.payload = n.to_string().into_bytes();
    p.to_bytes()
        .expect("invariant: a small CoAP message encodes")
}

/// The response code of the answer to the request with token `mid`, if `bytes` is one.
pub fn answer(bytes: &[u8], mid: u16) -> Option<String> {
    let p = Packet::from_bytes(bytes).ok()?;
    (p.get_token() == mid.to_be_bytes()).then(|| p.header.code.to_string())
}

/// A plain CoAP sensor (secret in the query) until `until`; numbers from `base + 1`.
pub fn coap_sensor(
    gw: SocketAddr,
    path: &[&str],
    secret: &str,
    kind: MessageType,
    base: u64,
    until: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        seen.errors += 1;
        return seen;
    };
    if sock.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        seen.errors += 1;
        return seen;
    }
    let mut buf = [0u8; 1500];
    let mut mid = (base / 1_000_000) as u16;
    let mut n = base;
    while Instant::now() < until {
        n += 1;
        mid = mid.wrapping_add(1);
        let start = Instant::now();
        let _ = sock.send_to(&coap_post(mid, kind, Some(secret), path, n), gw);
        loop {
            match sock.recv(&mut buf) {
                Ok(len) => match answer(&buf[..len], mid).as_deref() {
                    Some("2.04") => {
                        seen.latencies.push(start.elapsed());
                        seen.acked.push(n);
                        break;
                    }
                    Some(_) => {
                        seen.errors += 1;
                        break;
                    }
                    None => {}
                },
                Err(_) => {
                    seen.errors += 1;
                    break;
                }
            }
        }
    }
    seen
}

// ---- DTLS ----

struct Key(Vec<u8>);
impl PskResolver for Key {
    fn resolve(&self, _: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

/// How a DTLS sensor authenticates. Holds the client `Config`, built once: dimpl validates its
/// crypto provider with known-answer tests in `Config::build` (milliseconds of CPU), which
/// must not be charged to every handshake of the load generator.
#[derive(Clone)]
pub enum Credential {
    /// DTLS-PSK: identity = client identity, key = client secret.
    Psk {
        identity: String,
        config: Arc<Config>,
    },
    /// A device certificate (leaf DER) and its private key (DER).
    Cert {
        cert: DtlsCertificate,
        config: Arc<Config>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Psk { identity, .. } => f
                .debug_struct("Psk")
                .field("identity", identity)
                .finish_non_exhaustive(),
            Self::Cert { cert, .. } => f.debug_tuple("Cert").field(cert).finish(),
        }
    }
}

impl Credential {
    pub fn psk(identity: &str, secret: &str) -> Self {
        let config = Config::builder()
            .with_psk_client(
                identity.as_bytes().to_vec(),
                Arc::new(Key(secret.as_bytes().to_vec())),
            )
            .build()
            .expect("invariant: a PSK client config builds");
        Self::Psk {
            identity: identity.to_owned(),
            config: Arc::new(config),
        }
    }

    /// A certificate and key from PEM files (e.g. written by `edgegw certs issue`). No PSK is
    /// configured, so only certificate suites are offered. The server's certificate
    /// (`Output::PeerCert`) is not checked: a benchmark, not a sensor.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Self {
        let chain = certs::load_certificates(cert).expect("device certificate PEM");
        let key = certs::load_private_key(key).expect("device key PEM");
        let config = Config::builder()
            .build()
            .expect("invariant: a default config builds");
        Self::Cert {
            cert: DtlsCertificate {
                certificate: chain
                    .first()
                    .expect("a certificate in the device PEM")
                    .to_vec(),
                private_key: key.secret_der().to_vec(),
            },
            config: Arc::new(config),
        }
    }

    /// A client engine for one handshake.
    fn engine(&self, now: Instant) -> Dtls {
        let mut dtls = match self {
            Self::Psk { config, .. } => Dtls::new_12_psk(config.clone(), now),
            Self::Cert { cert, config } => Dtls::new_12(config.clone(), cert.clone(), now),
        };
        dtls.set_active(true);
        dtls
    }
}

/// A CoAPS client: one UDP socket (its own source port) and one DTLS session.
pub struct DtlsClient {
    sock: UdpSocket,
    dtls: Dtls,
    gw: SocketAddr,
    out: Vec<u8>,
}

impl std::fmt::Debug for DtlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsClient")
            .field("local", &self.sock.local_addr().ok())
            .field("gw", &self.gw)
            .finish_non_exhaustive()
    }
}

impl DtlsClient {
    /// A full handshake from a new source port; `None` on failure or after `timeout`.
    pub fn connect(gw: SocketAddr, cred: &Credential, timeout: Duration) -> Option<Self> {
        Self::connect_from([127, 0, 0, 1].into(), gw, cred, timeout)
    }

    /// [`DtlsClient::connect`] from a port of `local` (another loopback address: a sensor on
    /// a host of its own, as far as the gateway's per-address limits go).
    pub fn connect_from(
        local: std::net::IpAddr,
        gw: SocketAddr,
        cred: &Credential,
        timeout: Duration,
    ) -> Option<Self> {
        let sock = UdpSocket::bind((local, 0)).ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .ok()?;
        let mut c = Self {
            sock,
            dtls: cred.engine(Instant::now()),
            gw,
            out: vec![0u8; 16 * 1024],
        };
        c.until(timeout, |o| matches!(o, Output::Connected).then_some(()))?;
        Some(c)
    }

    /// Drives the engine (sends its output, feeds it datagrams) until `want` returns
    /// something, the engine fails, or `timeout` passes.
    fn until<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Output<'_>) -> Option<T>,
    ) -> Option<T> {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.dtls.handle_timeout(Instant::now());
            loop {
                let o = self.dtls.poll_output(&mut self.out);
                if let Some(t) = want(&o) {
                    return Some(t);
                }
                match o {
                    Output::Packet(p) => {
                        let _ = self.sock.send_to(p, self.gw);
                    }
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            if let Ok(n) = self.sock.recv(&mut buf)
                && self.dtls.handle_packet(&buf[..n]).is_err()
            {
                return None;
            }
        }
    }

    /// Sends one CoAP message and waits up to `timeout` for the answer to token `mid`.
    pub fn request(&mut self, msg: &[u8], mid: u16, timeout: Duration) -> Option<String> {
        self.dtls.send_application_data(msg).ok()?;
        self.until(timeout, |o| match o {
            Output::ApplicationData(d) => answer(d, mid),
            _ => None,
        })
    }

    /// A CoAP ping (empty CON) over the session: true if the gateway answered it (RST).
    pub fn ping(&mut self, mid: u16, timeout: Duration) -> bool {
        let [hi, lo] = mid.to_be_bytes();
        if self.dtls.send_application_data(&[0x40, 0, hi, lo]).is_err() {
            return false;
        }
        self.until(timeout, |o| match o {
            Output::ApplicationData(d) => {
                (d.len() >= 4 && d[2..4] == [hi, lo] && d[1] == 0).then_some(())
            }
            _ => None,
        })
        .is_some()
    }

    /// Sends close_notify, so the gateway ends the session at once.
    pub fn close(mut self) {
        if self.dtls.close().is_ok() {
            loop {
                match self.dtls.poll_output(&mut self.out) {
                    Output::Packet(p) => {
                        let _ = self.sock.send_to(p, self.gw);
                    }
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
        }
    }
}

/// A CoAPS sensor: one handshake, then CON POSTs to `path` until `until`.
pub fn dtls_sensor(
    gw: SocketAddr,
    cred: &Credential,
    path: &[&str],
    base: u64,
    until: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let Some(mut client) = DtlsClient::connect(gw, cred, Duration::from_secs(10)) else {
        seen.errors += 1;
        return seen;
    };
    let mut mid = (base / 1_000_000) as u16;
    let mut n = base;
    while Instant::now() < until {
        n += 1;
        mid = mid.wrapping_add(1);
        let start = Instant::now();
        let msg = coap_post(mid, MessageType::Confirmable, None, path, n);
        match client
            .request(&msg, mid, Duration::from_secs(10))
            .as_deref()
        {
            Some("2.04") => {
                seen.latencies.push(start.elapsed());
                seen.acked.push(n);
            }
            _ => seen.errors += 1,
        }
    }
    client.close();
    seen
}

/// What a handshake loop saw.
#[derive(Debug, Default)]
pub struct Handshakes {
    pub ok: u64,
    pub failed: u64,
    /// Time of each successful handshake (sorted after [`Handshakes::merge`]).
    pub latencies: Vec<Duration>,
}

impl Handshakes {
    pub fn merge(all: Vec<Handshakes>) -> Handshakes {
        let mut out = Handshakes::default();
        for h in all {
            out.ok += h.ok;
            out.failed += h.failed;
            out.latencies.extend(h.latencies);
        }
        out.latencies.sort();
        out
    }
}

/// Full handshakes one after another until `until`, each from a new source port (a new
/// socket), each session closed with close_notify once connected.
pub fn handshake_loop(gw: SocketAddr, cred: &Credential, until: Instant) -> Handshakes {
    let mut h = Handshakes::default();
    while Instant::now() < until {
        let start = Instant::now();
        match DtlsClient::connect(gw, cred, Duration::from_secs(10)) {
            Some(c) => {
                h.latencies.push(start.elapsed());
                h.ok += 1;
                c.close();
            }
            None => h.failed += 1,
        }
    }
    h
}

/// A CoAPS sensor with up to `window` CON POSTs in flight (closed loop): one handshake, then
/// requests to the pre-encoded `options` ([`crate::hotpath::coap_options`]) carrying
/// [`crate::hotpath::senml`] payloads numbered from `base + 1`, until `until`. The sensor sends
/// from `local` (a loopback address of its own: the gateway allows a few handshakes in
/// progress per address, as from hosts behind one NAT).
pub fn dtls_pipelined(
    local: std::net::IpAddr,
    gw: SocketAddr,
    cred: &Credential,
    options: &[u8],
    window: usize,
    base: u64,
    until: Instant,
) -> Seen {
    use crate::hotpath::{CHANGED, coap_answer, coap_request, senml};
    let mut seen = Seen::default();
    let Some(mut client) = DtlsClient::connect_from(local, gw, cred, Duration::from_secs(10))
    else {
        seen.errors += 1;
        return seen;
    };
    if client
        .sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .is_err()
    {
        seen.errors += 1;
        return seen;
    }
    let mut inflight: std::collections::HashMap<u32, (u64, Instant)> = Default::default();
    let mut token = ((base / 1_000_000) as u32) << 20;
    let mut n = base;
    let mut out = Vec::with_capacity(256);
    let mut buf = [0u8; 2048];
    let mut answers = Vec::new();
    let mut last_answer = Instant::now();
    loop {
        let now = Instant::now();
        while now < until && inflight.len() < window.max(1) {
            n += 1;
            token = token.wrapping_add(1);
            coap_request(&mut out, true, token, options, &senml(n));
            if client.dtls.send_application_data(&out).is_err() {
                seen.errors += 1;
                break;
            }
            inflight.insert(token, (n, now));
        }
        if now >= until && inflight.is_empty() {
            break;
        }
        if now.duration_since(last_answer) > Duration::from_secs(5) && !inflight.is_empty() {
            seen.errors += inflight.len() as u64;
            inflight.clear();
            last_answer = now;
            continue;
        }
        let _ = client.dtls.handle_timeout(now);
        loop {
            match client.dtls.poll_output(&mut client.out) {
                Output::Packet(p) => {
                    let _ = client.sock.send_to(p, client.gw);
                }
                Output::ApplicationData(d) => answers.extend(coap_answer(d)),
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        if !answers.is_empty() {
            last_answer = Instant::now();
            for (t, code) in answers.drain(..) {
                if let Some((n, at)) = inflight.remove(&t) {
                    if code == CHANGED {
                        seen.latencies.push(at.elapsed());
                        seen.acked.push(n);
                    } else {
                        seen.errors += 1;
                    }
                }
            }
            continue;
        }
        if let Ok(len) = client.sock.recv(&mut buf)
            && client.dtls.handle_packet(&buf[..len]).is_err()
        {
            seen.errors += inflight.len() as u64 + 1;
            return seen;
        }
    }
    client.close();
    seen
}
