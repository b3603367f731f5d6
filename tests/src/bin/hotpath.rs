//! Hot-path benchmark (`scripts/bench`, issue 17): durable messages per second end to end with
//! many requests in flight, edgegw against the mosquitto-bridge pipeline **in the same run**,
//! into the same upstream mosquitto (mTLS), counted by one subscriber that is not the
//! bottleneck (`system_tests::hotpath::Counter`). 64-byte SenML payloads.
//!
//! Rows, each `SECONDS` long:
//! - edgegw (`edgegw run --dev`, outbox `fsync`, uplink mTLS QoS 1): CoAP CON 256 sensors × 1
//!   in flight (RFC 7252 NSTART = 1), CoAP CON 32 × 8, CoAPS-PSK 32 × 8, and an open-loop CoAP
//!   CON run at half the 32 × 8 end-to-end rate (fixed send intervals, latency from the
//!   scheduled send time) for the ack p99;
//! - with `BENCH_BEFORE=<another edgegw binary>` the same rows for that binary too, each row
//!   of the two binaries run back to back (A/B in one run on a shared machine);
//! - the usual pipeline: MQTT 3.1.1 QoS 1 publishers (same shapes) → local mosquitto
//!   (`persistence true`) → mTLS QoS 1 bridge → the upstream.
//!
//! Columns: acked (2.04 / PUBACK at the sensor), e2e msgs/s (acknowledged messages that arrived
//! upstream ÷ time from the start of the row to the last arrival), ack p50/p99, gateway CPU
//! µs per delivered message (user + system of the gateway-side process over the row until
//! the last arrival, `/proc/<pid>/stat`), peak RSS (VmHWM so far), drain (time from the end of
//! the load to the last arrival: the uplink's lag), lost (acknowledged, never arrived within
//! 30 s without progress), errors (refused or unanswered requests).
//!
//! usage: hotpath [SECONDS] (default 10); `BENCH_ROUNDS` (default 1) repeats every row and
//! prints the median per row; `BENCH_LOAD_THREADS` (default 1) threads of the load generator.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::hotpath::{Counter, Load, coap_load, coap_options, mqtt_load, proc_usage};
use system_tests::mosquitto::{Mosquitto, free_port};
use system_tests::pki::Pki;
use system_tests::sensor::{Credential, Seen, dtls_pipelined};
use system_tests::{Daemon, edgegw_with, free_udp_port};

const PATH: &[&str] = &["m", "dom", "c", "ch0", "t"];

#[derive(Debug, Clone)]
struct Row {
    name: String,
    load: String,
    acked: usize,
    acked_rate: f64,
    e2e: f64,
    p50: Duration,
    p99: Duration,
    cpu_us: f64,
    rss_kib: u64,
    drain: f64,
    lost: usize,
    errors: u64,
}

struct Gateway {
    label: String,
    bin: PathBuf,
    root: PathBuf,
    vars: Vec<(String, String)>,
    coap: SocketAddr,
    coaps: SocketAddr,
    secret: String,
    daemon: Option<Daemon>,
}

impl Gateway {
    fn command(&self) -> Command {
        let mut cmd = edgegw_with(&self.bin, &self.root);
        cmd.arg("--dev").envs(self.vars.iter().cloned());
        cmd
    }

    fn cli(&self, args: &[&str]) -> String {
        system_tests::stdout_of(self.command().args(args))
    }

    fn new(label: &str, bin: &Path, dir: &Path, upstream: &Mosquitto, pki: &Pki, n: usize) -> Self {
        let root = dir.join(format!("gw-{n}"));
        std::fs::create_dir_all(&root).expect("dir");
        let system_tests::pki::Issued { cert, key } =
            system_tests::pki::self_signed(&root.join("dtls"), "gw", 30);
        let (coap, coaps) = (free_udp_port(), free_udp_port());
        let s = |p: &Path| p.display().to_string();
        let vars = vec![
            ("EDGEGW_GATEWAY_STATE_DIR".into(), s(&root.join("state"))),
            ("EDGEGW_GATEWAY_RUNTIME_DIR".into(), s(&root.join("run"))),
            ("EDGEGW_GATEWAY_DOMAIN_ID".into(), "dom".into()),
            ("EDGEGW_GATEWAY_LOG_LEVEL".into(), "warn".into()),
            ("EDGEGW_OUTBOX_DURABILITY".into(), "fsync".into()),
            ("EDGEGW_UPLINK_URL".into(), upstream.url()),
            ("EDGEGW_UPLINK_CLIENT_CERT".into(), s(&pki.client.cert)),
            ("EDGEGW_UPLINK_CLIENT_KEY".into(), s(&pki.client.key)),
            ("EDGEGW_UPLINK_CA_CERTS".into(), s(&pki.ca.cert)),
            ("EDGEGW_UPLINK_CLIENT_ID".into(), format!("gw-hotpath-{n}")),
            ("EDGEGW_COAP_BIND".into(), format!("127.0.0.1:{coap}")),
            ("EDGEGW_COAP_DTLS_BIND".into(), format!("127.0.0.1:{coaps}")),
            ("EDGEGW_COAP_DTLS_CERT".into(), s(&cert)),
            ("EDGEGW_COAP_DTLS_KEY".into(), s(&key)),
            // The 32 CoAPS-PSK sensors are one client ("sensor"): above the default per-client
            // cap of 16 sessions the newest evicts the oldest, and the row measured evictions.
            (
                "EDGEGW_COAP_DTLS_MAX_SESSIONS_PER_CLIENT".into(),
                "64".into(),
            ),
        ];
        let mut gw = Self {
            label: label.to_owned(),
            bin: bin.to_owned(),
            root,
            vars,
            coap: ([127, 0, 0, 1], coap).into(),
            coaps: ([127, 0, 0, 1], coaps).into(),
            secret: String::new(),
            daemon: None,
        };
        let added = gw.cli(&["--json", "client", "add", "sensor"]);
        let v: serde_json::Value = serde_json::from_str(&added).expect("json");
        gw.secret = v["secret"].as_str().expect("secret").to_owned();
        gw.cli(&["channel", "add", "ch0"]);
        gw.cli(&["connect", "sensor", "ch0"]);
        let d = Daemon::start({
            let mut c = gw.command();
            c.arg("run");
            c
        });
        gw.daemon = Some(d);
        gw
    }

    /// Waits until a message gets through to `counter` (the uplink is connected).
    fn probe(&self, counter: &Counter, base: u64) {
        let load = Load {
            sensors: 1,
            window: 1,
            seconds: 0.2,
            rate: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (seen, _) = coap_load(
                self.coap,
                coap_options(PATH, Some(&self.secret)),
                true,
                load,
                base,
                1,
            );
            if !seen.acked.is_empty()
                && counter
                    .delivered(&seen.acked, Duration::from_secs(20))
                    .arrived
                    > 0
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: nothing got through to the upstream",
                self.label
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Daemon::pid)
    }
}

/// One row: runs `go` (the load), waits for delivery, and measures the process `pid`.
fn measure(
    name: &str,
    load: &Load,
    pid: u32,
    counter: &Counter,
    go: impl FnOnce() -> (Seen, f64),
) -> Row {
    counter.clear();
    let c0 = proc_usage(pid).0;
    let start = Instant::now();
    let (seen, secs) = go();
    let ended = Instant::now();
    let d = counter.delivered(&seen.acked, Duration::from_secs(30));
    let (c1, rss) = proc_usage(pid);
    let span = d
        .last
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-3);
    Row {
        name: name.to_owned(),
        load: match load.rate {
            Some(r) => format!("{}x{} @{:.0}/s", load.sensors, load.window, r),
            None => format!("{}x{}", load.sensors, load.window),
        },
        acked: seen.acked.len(),
        acked_rate: seen.acked.len() as f64 / secs,
        e2e: d.arrived as f64 / span,
        p50: seen.percentile(0.5),
        p99: seen.percentile(0.99),
        cpu_us: (c1 - c0) * 1e6 / (d.arrived.max(1) as f64),
        rss_kib: rss,
        drain: d.last.saturating_duration_since(ended).as_secs_f64(),
        lost: d.lost,
        errors: seen.errors,
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<30} {:>14} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7} {:>5} {:>6}",
        "pipeline",
        "load",
        "acked",
        "acked/s",
        "e2e msg/s",
        "ack p50",
        "ack p99",
        "CPU µs/m",
        "peak RSS",
        "drain s",
        "lost",
        "errors"
    );
    for r in rows {
        println!(
            "{:<30} {:>14} {:>8} {:>8.0} {:>9.0} {:>9.2?} {:>9.2?} {:>8.1} {:>5} MiB {:>7.2} {:>5} {:>6}",
            r.name,
            r.load,
            r.acked,
            r.acked_rate,
            r.e2e,
            r.p50,
            r.p99,
            r.cpu_us,
            r.rss_kib / 1024,
            r.drain,
            r.lost,
            r.errors
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn local_bridge(dir: &Path, upstream: &Mosquitto, pki: &Pki) -> (Child, u16) {
    std::fs::create_dir_all(dir).expect("dir");
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    let user = String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout)
        .unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "user {user}\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
             persistence true\npersistence_location {d}/\nmax_queued_messages 0\n\
             max_inflight_messages 100\nlog_dest file {d}/mosquitto.log\n\
             connection bridge-up\naddress 127.0.0.1:{up}\ntopic m/# out 1\n\
             bridge_cafile {ca}\nbridge_certfile {cert}\nbridge_keyfile {key}\n\
             bridge_protocol_version mqttv311\ncleansession false\nremote_clientid bridge-hotpath\n\
             bridge_max_packet_size 0\n",
            user = user.trim(),
            d = dir.display(),
            up = upstream.port,
            ca = pki.ca.cert.display(),
            cert = pki.client.cert.display(),
            key = pki.client.key.display(),
        ),
    )
    .expect("conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        // Another process's listener has no readiness event.
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10.0);
    let env_num = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env_num("BENCH_ROUNDS", 1).max(1);
    let threads = env_num("BENCH_LOAD_THREADS", 1);
    let after = system_tests::edgegw_bin();
    let before = std::env::var_os("BENCH_BEFORE").map(PathBuf::from);
    // BENCH_ROWS=256x1,32x8,bridge,psk,open: only those rows (all when unset), e.g. to
    // profile one of them alone.
    let rows_wanted = std::env::var("BENCH_ROWS").ok();
    let want = |tag: &str| {
        rows_wanted
            .as_deref()
            .is_none_or(|w| w.split(',').any(|t| t.trim() == tag))
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let upstream = Mosquitto::start(&dir.path().join("upstream"), &pki);
    let counter = Counter::start(upstream.port, &pki, "m/#");

    let mut gws = vec![Gateway::new(
        "edgegw",
        &after,
        dir.path(),
        &upstream,
        &pki,
        0,
    )];
    if let Some(b) = &before {
        gws.push(Gateway::new(
            "edgegw (before)",
            b,
            dir.path(),
            &upstream,
            &pki,
            1,
        ));
    }
    for (i, gw) in gws.iter().enumerate() {
        gw.probe(&counter, 990_000_000_000 + i as u64 * 1_000_000_000);
    }
    let (mut bridge, bridge_port) = local_bridge(&dir.path().join("local"), &upstream, &pki);
    let bridge_pid = bridge.id();
    // The bridge is up once a message gets through.
    {
        let probe = Load {
            sensors: 1,
            window: 1,
            seconds: 0.2,
            rate: None,
        };
        let (seen, _) = mqtt_load(bridge_port, "m/dom/c/ch0/t", probe, 999_000_000_000, 1);
        counter.delivered(&seen.acked, Duration::from_secs(20));
    }

    let shapes = [
        Load {
            sensors: 256,
            window: 1,
            seconds,
            rate: None,
        },
        Load {
            sensors: 32,
            window: 8,
            seconds,
            rate: None,
        },
    ];
    let mut rows: Vec<Row> = Vec::new();
    let mut base = 0u64;
    let mut next_base = || {
        base += 1_000_000_000;
        base
    };
    for round in 0..rounds {
        let mut this = Vec::new();
        let mut max_rate = std::collections::HashMap::new();
        for load in shapes {
            let shape = format!("{}x{}", load.sensors, load.window);
            for gw in gws.iter().filter(|_| want(&shape)) {
                let options = coap_options(PATH, Some(&gw.secret));
                let b = next_base();
                let (at, name) = (gw.coap, format!("{} CoAP CON", gw.label));
                let r = measure(&name, &load, gw.pid(), &counter, || {
                    coap_load(at, options, true, load, b, threads)
                });
                if load.window > 1 {
                    max_rate.insert(gw.label.clone(), r.e2e);
                }
                this.push(r);
            }
            if !want("bridge") {
                continue;
            }
            let b = next_base();
            this.push(measure(
                "mosquitto QoS1 bridge",
                &load,
                bridge_pid,
                &counter,
                || mqtt_load(bridge_port, "m/dom/c/ch0/t", load, b, threads),
            ));
        }
        let psk_load = Load {
            sensors: 32,
            window: 8,
            seconds,
            rate: None,
        };
        for gw in gws.iter().filter(|_| want("psk")) {
            let cred = Credential::psk("sensor", &gw.secret);
            let options = coap_options(PATH, None);
            let b = next_base();
            let at = gw.coaps;
            this.push(measure(
                &format!("{} CoAPS-PSK", gw.label),
                &psk_load,
                gw.pid(),
                &counter,
                || {
                    let (seen, secs) = system_tests::sensor::run_sensors(
                        psk_load.sensors,
                        seconds.ceil() as u64,
                        b,
                        // Each sensor from a loopback address of its own (127.0.0.2…):
                        // 32 hosts, not 32 handshakes from one address (the gateway keeps at
                        // most 8 of those in progress, evicting the oldest).
                        move |k, base, until| {
                            let local = std::net::Ipv4Addr::new(127, 0, 0, 2 + (k % 250) as u8);
                            dtls_pipelined(local.into(), at, &cred, &options, 8, base, until)
                        },
                    );
                    (seen, secs)
                },
            ));
        }
        for gw in gws.iter().filter(|_| want("open")) {
            let half = max_rate.get(&gw.label).copied().unwrap_or(10_000.0) / 2.0;
            let load = Load {
                sensors: 32,
                window: 64,
                seconds,
                rate: Some(half),
            };
            let options = coap_options(PATH, Some(&gw.secret));
            let b = next_base();
            let at = gw.coap;
            this.push(measure(
                &format!("{} CoAP CON open loop", gw.label),
                &load,
                gw.pid(),
                &counter,
                || coap_load(at, options, true, load, b, threads),
            ));
        }
        println!(
            "\nround {} of {rounds}: {seconds} s per row, 64-byte SenML, load average {}",
            round + 1,
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        print_rows(&this);
        rows.extend(this);
    }
    if rounds > 1 {
        println!("\nmedians over {rounds} rounds:");
        let mut names: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let key = (
                r.name.clone(),
                r.load.split(" @").next().unwrap_or("").to_owned(),
            );
            if !names.contains(&key) {
                names.push(key);
            }
        }
        let med: Vec<Row> = names
            .iter()
            .map(|(name, load)| {
                let of: Vec<&Row> = rows
                    .iter()
                    .filter(|r| &r.name == name && r.load.split(" @").next() == Some(load))
                    .collect();
                let m = |f: fn(&Row) -> f64| median(of.iter().map(|r| f(r)).collect());
                Row {
                    name: name.clone(),
                    load: load.clone(),
                    acked: m(|r| r.acked as f64) as usize,
                    acked_rate: m(|r| r.acked_rate),
                    e2e: m(|r| r.e2e),
                    p50: Duration::from_secs_f64(m(|r| r.p50.as_secs_f64())),
                    p99: Duration::from_secs_f64(m(|r| r.p99.as_secs_f64())),
                    cpu_us: m(|r| r.cpu_us),
                    rss_kib: of.iter().map(|r| r.rss_kib).max().unwrap_or(0),
                    drain: m(|r| r.drain),
                    lost: of.iter().map(|r| r.lost).sum(),
                    errors: of.iter().map(|r| r.errors).sum(),
                }
            })
            .collect();
        print_rows(&med);
    }
    let e2e = |name: &str| {
        rows.iter()
            .filter(|r| r.name == name && r.load == "32x8")
            .map(|r| r.e2e)
            .collect::<Vec<_>>()
    };
    let (gw, br) = (
        median(e2e("edgegw CoAP CON")),
        median(e2e("mosquitto QoS1 bridge")),
    );
    let psk = median(e2e("edgegw CoAPS-PSK"));
    println!(
        "\nedgegw CoAP CON 32x8 / bridge 32x8: {:.2}x; CoAPS-PSK / CoAP: {:.2}",
        gw / br.max(1.0),
        psk / gw.max(1.0)
    );
    for gw in &mut gws {
        if let Some(d) = gw.daemon.as_mut() {
            d.signal("TERM");
            let _ = d.wait_exit(Duration::from_secs(15));
        }
    }
    let _ = bridge.kill();
    let _ = bridge.wait();
}
