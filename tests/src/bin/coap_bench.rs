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
use std::time::Duration;

use coap_lite::MessageType;
use system_tests::sensor::{Credential, Seen, coap_sensor, dtls_sensor, run_sensors};
use system_tests::{free_udp_port, stdout_of};

/// Where the sensors publish: the SuperMQ path, domain `bench`, channel `chan-bench`.
const PATH: &[&str] = &["m", "bench", "c", "chan-bench"];

fn edgegw_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(system_tests::BIN_OVERRIDE) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("invariant: a path");
    exe.with_file_name("edgegw")
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

fn report(label: &str, sensors: u32, seen: &Seen, elapsed: f64, pid: u32) {
    println!(
        "{label:<12} sensors={sensors:<4} msgs={:<7} msgs/s={:<8.0} ack p50={:?} p99={:?} errors={} daemon RSS={} KiB",
        seen.acked.len(),
        seen.acked.len() as f64 / elapsed,
        seen.percentile(0.50),
        seen.percentile(0.99),
        seen.errors,
        rss_kib(pid),
    );
}

fn cli(dir: &std::path::Path, args: &[&str]) -> String {
    stdout_of(
        Command::new(edgegw_bin())
            .current_dir(dir)
            .arg("--dev")
            .args(args),
    )
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
    // The DTLS server certificate is never checked by the PSK clients, but the listener
    // needs one.
    let server = system_tests::pki::self_signed(&root.join("pki"), "bench", 2);
    let (coap, coaps) = (free_udp_port(), free_udp_port());
    let mut daemon = Command::new(edgegw_bin())
        .current_dir(root)
        .args(["--dev", "run"])
        .env("EDGEGW_GATEWAY_LOG_LEVEL", "warn")
        .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{coap}"))
        .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
        .env("EDGEGW_COAP_DTLS_CERT", &server.cert)
        .env("EDGEGW_COAP_DTLS_KEY", &server.key)
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
    let secret_psk = secret.clone();
    let (seen, secs) = run_sensors(sensors.into(), seconds, 0, move |_, base, until| {
        coap_sensor(
            gw_plain,
            PATH,
            &secret,
            MessageType::Confirmable,
            base,
            until,
        )
    });
    report("coap", sensors, &seen, secs, pid);

    let gw_dtls: SocketAddr = ([127, 0, 0, 1], coaps).into();
    let cred = Credential::psk("bench-sensor", &secret_psk);
    let (seen, secs) = run_sensors(sensors.into(), seconds, 0, move |_, base, until| {
        dtls_sensor(gw_dtls, &cred, PATH, base, until)
    });
    report("coaps-psk", sensors, &seen, secs, pid);

    let _ = daemon.kill();
    let _ = daemon.wait();
}
