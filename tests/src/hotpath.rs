//! Pieces of the hot-path benchmark (`hotpath`): pipelined load (CoAP over UDP and MQTT QoS 1,
//! many requests in flight per sensor, closed loop or open loop at a fixed rate), a 64-byte
//! SenML payload that carries the message number, a counting MQTT subscriber that is not the
//! bottleneck (MQTT 3.1.1 over mTLS, QoS 1, parses and acknowledges in batches on one thread),
//! and the gateway process's CPU time and peak RSS from `/proc`.
//!
//! Asserts nothing about speed: it measures.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pki::Pki;
use crate::sensor::Seen;

/// Bytes of every benchmark payload.
pub const PAYLOAD_LEN: usize = 64;

/// A 64-byte SenML (JSON) pack carrying `n` as the record's time, padded with JSON whitespace.
pub fn senml(n: u64) -> Vec<u8> {
    let mut p = format!("[{{\"bn\":\"bench:\",\"n\":\"t\",\"u\":\"Cel\",\"v\":21.5,\"t\":{n}}}]")
        .into_bytes();
    let len = PAYLOAD_LEN.max(p.len());
    p.resize(len, b' ');
    p
}

/// The number a [`senml`] payload carries.
pub fn senml_number(payload: &[u8]) -> Option<u64> {
    let key = b"\"t\":";
    let at = payload.windows(key.len()).rposition(|w| w == key)? + key.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

// ---- CoAP, encoded by hand (the load generator must cost less than the gateway) ----

fn coap_option(out: &mut Vec<u8>, delta: usize, value: &[u8]) {
    let nibble = |v: usize| match v {
        0..=12 => (v as u8, None),
        13..=268 => (13, Some(vec![(v - 13) as u8])),
        _ => (14, Some(((v - 269) as u16).to_be_bytes().to_vec())),
    };
    let (d, dx) = nibble(delta);
    let (l, lx) = nibble(value.len());
    out.push(d << 4 | l);
    out.extend(dx.into_iter().flatten());
    out.extend(lx.into_iter().flatten());
    out.extend_from_slice(value);
}

/// The options of a POST to `path` (Uri-Path segments) with `auth=<secret>` (Uri-Query) when
/// given: encoded once per sensor.
pub fn coap_options(path: &[&str], secret: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut last = 0;
    for seg in path {
        coap_option(&mut out, 11 - last, seg.as_bytes());
        last = 11;
    }
    if let Some(s) = secret {
        coap_option(&mut out, 15 - last, format!("auth={s}").as_bytes());
    }
    out
}

/// A POST (CON or NON) with a 4-byte token `token` (message id = its low 16 bits).
pub fn coap_request(
    out: &mut Vec<u8>,
    confirmable: bool,
    token: u32,
    options: &[u8],
    payload: &[u8],
) {
    out.clear();
    out.push(0x40 | if confirmable { 0 } else { 0x10 } | 4);
    out.push(0x02); // POST
    out.extend_from_slice(&(token as u16).to_be_bytes());
    out.extend_from_slice(&token.to_be_bytes());
    out.extend_from_slice(options);
    out.push(0xFF);
    out.extend_from_slice(payload);
}

/// (token, code) of a response with a 4-byte token; code as class*32+detail (2.04 = 0x44).
pub fn coap_answer(d: &[u8]) -> Option<(u32, u8)> {
    if d.len() < 8 || d[0] >> 6 != 1 || d[0] & 0x0F != 4 {
        return None;
    }
    Some((u32::from_be_bytes([d[4], d[5], d[6], d[7]]), d[1]))
}

/// The 2.04 Changed code byte.
pub const CHANGED: u8 = 0x44;

/// How a load run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub sensors: u64,
    /// Requests in flight per sensor (closed loop); the cap on them in open loop.
    pub window: usize,
    pub seconds: f64,
    /// Open loop: this many messages per second over all sensors, at fixed intervals, latency
    /// measured from the scheduled send time. `None`: closed loop.
    pub rate: Option<f64>,
}

/// How long an unanswered request is waited for before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What one sensor tracks about its requests in flight.
struct InFlight {
    by_token: HashMap<u32, (u64, Instant)>,
    seen: Seen,
}

impl InFlight {
    fn new() -> Self {
        Self {
            by_token: HashMap::new(),
            seen: Seen::default(),
        }
    }
    fn answered(&mut self, token: u32, ok: bool) {
        if let Some((n, at)) = self.by_token.remove(&token) {
            if ok {
                self.seen.latencies.push(at.elapsed());
                self.seen.acked.push(n);
            } else {
                self.seen.errors += 1;
            }
        }
    }
}

/// The send schedule of one sensor: closed loop (keep `window` in flight) or open loop.
struct Schedule {
    until: Instant,
    window: usize,
    period: Option<Duration>,
    next: Instant,
}

impl Schedule {
    fn new(load: &Load, k: u64, start: Instant) -> Self {
        let period = load
            .rate
            .map(|r| Duration::from_secs_f64(load.sensors as f64 / r.max(1.0)));
        // Open-loop sensors start spread over one period, not all at once.
        let offset = period.map_or(Duration::ZERO, |p| {
            p.mul_f64(k as f64 / load.sensors as f64)
        });
        Self {
            until: start + Duration::from_secs_f64(load.seconds),
            window: load.window.max(1),
            period,
            next: start + offset,
        }
    }
    /// Send times due now (`Some(scheduled)` each), given `inflight` requests.
    fn due(&mut self, inflight: usize, now: Instant) -> Option<Instant> {
        if now >= self.until || inflight >= self.window {
            return None;
        }
        match self.period {
            None => Some(now),
            Some(p) if self.next <= now => {
                let at = self.next;
                self.next += p;
                Some(at)
            }
            Some(_) => None,
        }
    }
    /// When to wake up next for sending (open loop), if at all.
    fn wake(&self) -> Option<Instant> {
        self.period.map(|_| self.next).filter(|&n| n < self.until)
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("invariant: a runtime starts")
}

/// Runs `load` against a CoAP server at `gw` (POSTs to `options`, CON or NON), each sensor on
/// its own UDP socket, on a runtime of `threads` threads; numbers from `base + k*1e6 + 1`.
/// Returns what the sensors saw (latencies sorted) and the wall time of the load.
pub fn coap_load(
    gw: SocketAddr,
    options: Vec<u8>,
    confirmable: bool,
    load: Load,
    base: u64,
    threads: usize,
) -> (Seen, f64) {
    let rt = runtime(threads);
    let options = Arc::new(options);
    let start = Instant::now();
    let seen = rt.block_on(async move {
        let tasks: Vec<_> = (0..load.sensors)
            .map(|k| {
                let options = options.clone();
                tokio::spawn(coap_sensor(
                    gw,
                    options,
                    confirmable,
                    load,
                    base + k * 1_000_000,
                    k,
                    start,
                ))
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap_or_else(|_| Seen {
                errors: 1,
                ..Seen::default()
            }));
        }
        Seen::merge(all)
    });
    (seen, start.elapsed().as_secs_f64())
}

async fn coap_sensor(
    gw: SocketAddr,
    options: Arc<Vec<u8>>,
    confirmable: bool,
    load: Load,
    base: u64,
    k: u64,
    start: Instant,
) -> Seen {
    let mut f = InFlight::new();
    let Ok(sock) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        f.seen.errors += 1;
        return f.seen;
    };
    if sock.connect(gw).await.is_err() {
        f.seen.errors += 1;
        return f.seen;
    }
    let mut sched = Schedule::new(&load, k, start);
    let mut n = base;
    let mut token = (k as u32) << 20;
    let mut out = Vec::with_capacity(256);
    let mut buf = vec![0u8; 2048];
    let mut last_answer = Instant::now();
    loop {
        let now = Instant::now();
        while let Some(at) = sched.due(f.by_token.len(), now) {
            n += 1;
            token = token.wrapping_add(1);
            coap_request(&mut out, confirmable, token, &options, &senml(n));
            if sock.send(&out).await.is_err() {
                f.seen.errors += 1;
                continue;
            }
            f.by_token.insert(token, (n, at));
        }
        if now >= sched.until && f.by_token.is_empty() {
            break;
        }
        if now.duration_since(last_answer) > ANSWER_TIMEOUT && !f.by_token.is_empty() {
            // Unanswered: counted, and the window refilled (the sensor would retransmit).
            f.seen.errors += f.by_token.len() as u64;
            f.by_token.clear();
            last_answer = now;
            continue;
        }
        let wake = sched
            .wake()
            .unwrap_or(now + Duration::from_millis(500))
            .min(now + Duration::from_millis(500));
        tokio::select! {
            r = sock.recv(&mut buf) => {
                if let Ok(len) = r
                    && let Some((t, code)) = coap_answer(&buf[..len])
                {
                    last_answer = Instant::now();
                    f.answered(t, code == CHANGED);
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
    f.seen
}

// ---- MQTT 3.1.1 QoS 1 publishers (the sensors of the usual pipeline) ----

fn mqtt_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn mqtt_connect(id: &str, clean: bool) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str("MQTT", &mut body);
    // level 4, clean session flag, keepalive 0 (off: the benchmark's connections are busy)
    body.extend_from_slice(&[4, if clean { 0x02 } else { 0 }, 0, 0]);
    mqtt_str(id, &mut body);
    let mut pkt = vec![0x10];
    mqtt_len(body.len(), &mut pkt);
    pkt.extend_from_slice(&body);
    pkt
}

/// Runs `load` as MQTT QoS 1 publishers on `topic` to a plain-TCP broker on `port` (each
/// sensor its own connection, up to `window` PUBLISH waiting for PUBACK).
pub fn mqtt_load(port: u16, topic: &str, load: Load, base: u64, threads: usize) -> (Seen, f64) {
    let rt = runtime(threads);
    let topic = Arc::new(topic.to_owned());
    let start = Instant::now();
    let seen = rt.block_on(async move {
        let tasks: Vec<_> = (0..load.sensors)
            .map(|k| {
                let topic = topic.clone();
                tokio::spawn(mqtt_sensor(
                    port,
                    topic,
                    load,
                    base + k * 1_000_000,
                    k,
                    start,
                ))
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap_or_else(|_| Seen {
                errors: 1,
                ..Seen::default()
            }));
        }
        Seen::merge(all)
    });
    (seen, start.elapsed().as_secs_f64())
}

async fn mqtt_sensor(
    port: u16,
    topic: Arc<String>,
    load: Load,
    base: u64,
    k: u64,
    start: Instant,
) -> Seen {
    let mut f = InFlight::new();
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        f.seen.errors += 1;
        return f.seen;
    };
    let _ = s.set_nodelay(true);
    let mut ack = [0u8; 4];
    if s.write_all(&mqtt_connect(&format!("bench-{base}"), true))
        .await
        .is_err()
        || s.read_exact(&mut ack).await.is_err()
        || ack[3] != 0
    {
        f.seen.errors += 1;
        return f.seen;
    }
    let (mut rd, mut wr) = s.into_split();
    let mut sched = Schedule::new(&load, k, start);
    let mut n = base;
    let mut pid: u16 = 0;
    let mut out = Vec::with_capacity(256);
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    let mut last_answer = Instant::now();
    loop {
        let now = Instant::now();
        out.clear();
        while let Some(at) = sched.due(f.by_token.len(), now) {
            n += 1;
            pid = pid.wrapping_add(1).max(1);
            let payload = senml(n);
            let mut body = Vec::with_capacity(96);
            mqtt_str(&topic, &mut body);
            body.extend_from_slice(&pid.to_be_bytes());
            body.extend_from_slice(&payload);
            out.push(0x32); // PUBLISH QoS 1
            mqtt_len(body.len(), &mut out);
            out.extend_from_slice(&body);
            f.by_token.insert(u32::from(pid), (n, at));
        }
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            f.seen.errors += f.by_token.len() as u64;
            break;
        }
        if now >= sched.until && f.by_token.is_empty() {
            break;
        }
        if now.duration_since(last_answer) > ANSWER_TIMEOUT && !f.by_token.is_empty() {
            f.seen.errors += f.by_token.len() as u64;
            break;
        }
        let wake = sched
            .wake()
            .unwrap_or(now + Duration::from_millis(500))
            .min(now + Duration::from_millis(500));
        tokio::select! {
            r = rd.read(&mut buf[have..]) => match r {
                Ok(0) | Err(_) => {
                    f.seen.errors += f.by_token.len() as u64;
                    break;
                }
                Ok(len) => {
                    have += len;
                    let mut at = 0;
                    // PUBACKs are 4 bytes: 0x40 0x02 pkid.
                    while have - at >= 4 {
                        if buf[at] == 0x40 {
                            let p = u16::from_be_bytes([buf[at + 2], buf[at + 3]]);
                            f.answered(u32::from(p), true);
                            last_answer = Instant::now();
                        }
                        at += 4;
                    }
                    buf.copy_within(at..have, 0);
                    have -= at;
                }
            },
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
    f.seen
}

// ---- the counting subscriber ----

/// An MQTT 3.1.1 subscriber over mTLS (QoS 1) on its own thread that records, for every
/// [`senml`] payload, its number and when it arrived. Acknowledges each read's publishes in one
/// write, so it keeps up with far more than the pipelines under test.
#[derive(Debug)]
pub struct Counter {
    arrivals: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What arrived of a set of acknowledged numbers.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Distinct acknowledged numbers that arrived.
    pub arrived: usize,
    /// Acknowledged but not arrived (after waiting).
    pub lost: usize,
    /// When the last of them arrived.
    pub last: Instant,
}

impl Counter {
    /// Connects to the broker on `port` as the `pki` subscriber and subscribes to `filter`.
    pub fn start(port: u16, pki: &Pki, filter: &str) -> Self {
        let chain = certs::load_certificates(&pki.subscriber.cert).expect("subscriber cert");
        let key = certs::load_private_key(&pki.subscriber.key).expect("subscriber key");
        let mut roots = rustls::RootCertStore::empty();
        for c in certs::load_certificates(&pki.ca.cert).expect("CA cert") {
            roots.add(c).expect("CA cert usable");
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client certificate usable");
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("invariant: an IP"),
        )
        .expect("TLS client");
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the upstream");
        let _ = tcp.set_nodelay(true);
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&mqtt_connect(
            &format!("counter-{}", std::process::id()),
            true,
        ))
        .expect("CONNECT");
        let mut connack = [0u8; 4];
        tls.read_exact(&mut connack).expect("CONNACK");
        assert_eq!(connack[3], 0, "upstream refused the counting subscriber");
        let mut body = vec![0, 1];
        mqtt_str(filter, &mut body);
        body.push(1);
        let mut pkt = vec![0x82];
        mqtt_len(body.len(), &mut pkt);
        pkt.extend_from_slice(&body);
        tls.write_all(&pkt).expect("SUBSCRIBE");
        let mut suback = [0u8; 5];
        tls.read_exact(&mut suback).expect("SUBACK");
        assert_eq!(suback[0], 0x90, "SUBACK expected");
        tls.sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (arrivals.clone(), stop.clone());
        let thread = std::thread::spawn(move || count_loop(tls, &a, &s));
        Self {
            arrivals,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (up to `patience` without progress) until every number in `acked` arrived.
    pub fn delivered(&self, acked: &[u64], patience: Duration) -> Delivery {
        let mut want: std::collections::HashSet<u64> = acked.iter().copied().collect();
        let total = want.len();
        let mut last = None::<Instant>;
        let mut taken = 0;
        let mut progress = Instant::now();
        loop {
            {
                let arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
                for &(n, at) in &arrivals[taken..] {
                    if want.remove(&n) {
                        last = Some(last.map_or(at, |l| l.max(at)));
                        progress = Instant::now();
                    }
                }
                taken = arrivals.len();
            }
            if want.is_empty() || progress.elapsed() > patience {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Delivery {
            arrived: total - want.len(),
            lost: want.len(),
            last: last.unwrap_or_else(Instant::now),
        }
    }

    /// Forgets what arrived so far (between runs).
    pub fn clear(&self) {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn count_loop(
    mut tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    arrivals: &Mutex<Vec<(u64, Instant)>>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut have = 0;
    let mut acks = Vec::with_capacity(16 * 1024);
    let mut got = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match tls.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        }
        let now = Instant::now();
        let mut at = 0;
        loop {
            // Fixed header: type/flags, remaining length (varint).
            let Some((len, hdr)) = remaining_length(&buf[at..have]) else {
                break;
            };
            if have - at < hdr + len {
                break;
            }
            let first = buf[at];
            let body = &buf[at + hdr..at + hdr + len];
            if first >> 4 == 3 && body.len() >= 2 {
                let qos = (first >> 1) & 3;
                let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut p = 2 + tlen;
                if qos > 0 && body.len() >= p + 2 {
                    acks.extend_from_slice(&[0x40, 2, body[p], body[p + 1]]);
                    p += 2;
                }
                if let Some(n) = body.get(p..).and_then(senml_number) {
                    got.push((n, now));
                }
            }
            at += hdr + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if !acks.is_empty() {
            if tls.write_all(&acks).is_err() {
                break;
            }
            acks.clear();
        }
        if !got.is_empty() {
            arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut got);
        }
    }
}

/// (remaining length, header bytes) of an MQTT fixed header, if complete.
fn remaining_length(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((len, 2 + i));
        }
    }
    None
}

// ---- the gateway process ----

/// (CPU seconds so far, peak RSS KiB) of a process, from /proc.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the `)`; clock ticks of 1/100 s.
    let ticks: f64 = f.get(11..13).map_or(0.0, |v| {
        v.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_senml_payload_is_64_bytes_and_carries_its_number() {
        for n in [0, 7, 3_000_000_123, 9_999_999_999_999] {
            let p = senml(n);
            assert_eq!(p.len(), PAYLOAD_LEN);
            assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
            assert_eq!(senml_number(&p), Some(n));
        }
    }

    #[test]
    fn hand_encoded_requests_decode_as_coap() {
        let opts = coap_options(&["m", "dom", "c", "ch0", "t"], Some("s3cr3t-that-is-long"));
        let mut out = Vec::new();
        coap_request(&mut out, true, 0x0102_0304, &opts, &senml(42));
        let p = coap_lite::Packet::from_bytes(&out).unwrap();
        assert_eq!(p.header.message_id, 0x0304);
        assert_eq!(p.get_token(), [1, 2, 3, 4]);
        let path: Vec<_> = p
            .get_option(coap_lite::CoapOption::UriPath)
            .unwrap()
            .iter()
            .map(|s| String::from_utf8(s.clone()).unwrap())
            .collect();
        assert_eq!(path, ["m", "dom", "c", "ch0", "t"]);
        let q = p.get_option(coap_lite::CoapOption::UriQuery).unwrap();
        assert_eq!(q.front().unwrap(), b"auth=s3cr3t-that-is-long");
        assert_eq!(senml_number(&p.payload), Some(42));
    }
}
