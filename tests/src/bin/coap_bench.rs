//! Benchmark of the CoAP adapters: N simulated sensors publish to a real `edgegw run --dev`
//! over plain CoAP and over CoAPS (DTLS-PSK), each sending confirmable POSTs one after another
//! (waiting for the 2.04, which the gateway sends only once the message is durable). Prints
//! messages per second, ack latency p50/p99 and the daemon's RSS.
//!
//! `cargo build --release -p gateway -p system-tests && target/release/coap_bench [SENSORS] [SECONDS]`
//! (the `edgegw` next to this binary is used, or `$SYSTEM_TESTS_EDGEGW_BIN`).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use dimpl::{Config, Dtls, Output, PskResolver};

fn edgegw_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(system_tests::BIN_OVERRIDE) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("invariant: a path");
    exe.with_file_name("edgegw")
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn post(mid: u16, token: u32, secret: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(token.to_be_bytes().to_vec());
    for seg in ["m", "bench", "c", "chan-bench"] {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    if let Some(s) = secret {
        p.add_option(CoapOption::UriQuery, format!("auth={s}").into_bytes());
    }
    p.payload = payload.to_vec();
    p.to_bytes().expect("encode")
}

/// For the response to `mid`: whether it is 2.04 (otherwise the code is counted).
fn is_changed_ack(bytes: &[u8], mid: u16) -> Option<bool> {
    let p = Packet::from_bytes(bytes).ok()?;
    (p.header.message_id == mid).then(|| {
        let code = p.header.code.to_string();
        if code != "2.04" {
            eprintln!("response {code}");
        }
        code == "2.04"
    })
}

struct Result {
    latencies: Vec<Duration>,
    errors: u64,
}

fn plain_sensor(gw: SocketAddr, secret: String, until: Instant, id: u32) -> Result {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    let mut out = Result {
        latencies: Vec::new(),
        errors: 0,
    };
    let mut mid = (id as u16).wrapping_mul(4099);
    while Instant::now() < until {
        mid = mid.wrapping_add(1);
        let msg = post(mid, id, Some(&secret), b"{\"t\":21.5,\"h\":40}");
        let start = Instant::now();
        sock.send_to(&msg, gw).expect("send");
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => match is_changed_ack(&buf[..n], mid) {
                    Some(true) => {
                        out.latencies.push(start.elapsed());
                        break;
                    }
                    Some(false) => {
                        out.errors += 1;
                        break;
                    }
                    None => {}
                },
                Err(_) => {
                    eprintln!("no response within 2 s");
                    out.errors += 1;
                    break;
                }
            }
        }
    }
    out
}

struct Key(Vec<u8>);
impl PskResolver for Key {
    fn resolve(&self, _: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

/// Drives the client engine: sends its output, feeds datagrams until `done` says so.
fn dtls_exchange(
    dtls: &mut Dtls,
    sock: &UdpSocket,
    gw: SocketAddr,
    mut done: impl FnMut(&Output<'_>) -> bool,
) -> bool {
    let mut out = vec![0u8; 16 * 1024];
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = dtls.handle_timeout(Instant::now());
        loop {
            let o = dtls.poll_output(&mut out);
            if done(&o) {
                return true;
            }
            match o {
                Output::Packet(p) => {
                    let _ = sock.send_to(p, gw);
                }
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        if let Ok(n) = sock.recv(&mut buf)
            && dtls.handle_packet(&buf[..n]).is_err()
        {
            return false;
        }
    }
}

fn dtls_sensor(gw: SocketAddr, identity: String, key: Vec<u8>, until: Instant, id: u32) -> Result {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut out = Result {
        latencies: Vec::new(),
        errors: 0,
    };
    let cfg = Config::builder()
        .with_psk_client(identity.into_bytes(), Arc::new(Key(key)))
        .build()
        .expect("config");
    let mut dtls = Dtls::new_12_psk(Arc::new(cfg), Instant::now());
    dtls.set_active(true);
    if !dtls_exchange(&mut dtls, &sock, gw, |o| matches!(o, Output::Connected)) {
        eprintln!("handshake failed");
        out.errors += 1;
        return out;
    }
    let mut mid = (id as u16).wrapping_mul(4099);
    while Instant::now() < until {
        mid = mid.wrapping_add(1);
        let msg = post(mid, id, None, b"{\"t\":21.5,\"h\":40}");
        let start = Instant::now();
        if dtls.send_application_data(&msg).is_err() {
            out.errors += 1;
            break;
        }
        let mut ok = None;
        let got = dtls_exchange(&mut dtls, &sock, gw, |o| {
            if let Output::ApplicationData(d) = o {
                ok = is_changed_ack(d, mid);
                ok.is_some()
            } else {
                false
            }
        });
        match (got, ok) {
            (true, Some(true)) => out.latencies.push(start.elapsed()),
            (false, _) => {
                eprintln!("no response within 10 s");
                out.errors += 1;
            }
            _ => out.errors += 1,
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn report(label: &str, results: Vec<Result>, elapsed: Duration, pid: u32) {
    let mut all: Vec<Duration> = results.iter().flat_map(|r| r.latencies.clone()).collect();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{label:<12} sensors={:<4} msgs={:<7} msgs/s={:<8.0} ack p50={:?} p99={:?} errors={errors} daemon RSS={} KiB",
        results.len(),
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        rss_kib(pid),
    );
}

fn cli(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(edgegw_bin())
        .current_dir(dir)
        .arg("--dev")
        .args(args)
        .output()
        .expect("edgegw");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sensors: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    cli(root, &["channel", "add", "chan-bench"]);
    let added = cli(root, &["--json", "client", "add", "bench-sensor"]);
    let secret = added
        .split("\"secret\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("secret in output")
        .to_owned();
    cli(root, &["connect", "bench-sensor", "chan-bench"]);
    // The DTLS server certificate is never used in PSK mode, but the listener needs one.
    let pki = root.join("pki");
    std::fs::create_dir_all(&pki).expect("dir");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=bench", "-days", "2"])
        .arg("-keyout")
        .arg(pki.join("k.pem"))
        .arg("-out")
        .arg(pki.join("c.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let (coap, coaps) = (free_port(), free_port());
    let mut daemon = Command::new(edgegw_bin())
        .current_dir(root)
        .args(["--dev", "run"])
        .env("EDGEGW_GATEWAY_LOG_LEVEL", "warn")
        .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{coap}"))
        .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
        .env("EDGEGW_COAP_DTLS_CERT", pki.join("c.pem"))
        .env("EDGEGW_COAP_DTLS_KEY", pki.join("k.pem"))
        .env(
            "EDGEGW_COAP_DTLS_MAX_HANDSHAKES",
            sensors.max(256).to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start edgegw");
    let pid = daemon.id();
    // Wait until the plain listener answers (a ping: empty CON → RST).
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut up = false;
    for _ in 0..100 {
        let _ = probe.send_to(&[0x40, 0, 0, 1], ("127.0.0.1", coap));
        let mut b = [0u8; 16];
        if probe.recv(&mut b).is_ok() {
            up = true;
            break;
        }
    }
    assert!(up, "edgegw did not start");
    std::thread::sleep(Duration::from_millis(300)); // the CoAPS task binds next to it
    println!(
        "edgegw {} · {} sensors · {} s per mode · {} CPUs · idle RSS {} KiB",
        edgegw_bin().display(),
        sensors,
        seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rss_kib(pid)
    );

    let gw_plain: SocketAddr = ([127, 0, 0, 1], coap).into();
    let until = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..sensors)
        .map(|i| {
            let s = secret.clone();
            std::thread::spawn(move || plain_sensor(gw_plain, s, until, i))
        })
        .collect();
    let results = handles
        .into_iter()
        .map(|h| h.join().expect("sensor"))
        .collect();
    report("coap", results, start.elapsed(), pid);

    let gw_dtls: SocketAddr = ([127, 0, 0, 1], coaps).into();
    let until = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..sensors)
        .map(|i| {
            let key = secret.clone().into_bytes();
            std::thread::spawn(move || dtls_sensor(gw_dtls, "bench-sensor".into(), key, until, i))
        })
        .collect();
    let results = handles
        .into_iter()
        .map(|h| h.join().expect("sensor"))
        .collect();
    report("coaps-psk", results, start.elapsed(), pid);

    let _ = daemon.kill();
    let _ = daemon.wait();
}
