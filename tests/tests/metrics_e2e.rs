//! End to end: the per-adapter counters and the DTLS session gauge of the real
//! `edgegw run --dev`. The demo sensor publishes once (and fails once) over plain CoAP and
//! CoAPS-PSK (`coap-client-openssl`), a serial pty and HTTP (curl); `GET /metrics` and
//! `edgegw status --json` must move by exactly those amounts. A CoAPS Observe client holds a
//! session: the gauge shows it, and goes back to 0 after idle eviction.

use gateway::auth::DEV_DOMAIN;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::pty::{Sensor, WAIT};
use system_tests::{Daemon, demo_secret, edgegw, free_udp_port, http_port};

const IDLE: &str = "4s";

struct Gateway {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    daemon: Daemon,
    secret: String,
    coap: u16,
    coaps: u16,
    http: String,
}

type Samples = BTreeMap<String, f64>;

impl Gateway {
    fn start(link_sensor: impl FnOnce(&Path) -> Sensor) -> (Self, Sensor) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let link = dir.join("ttySENSOR");
        let sensor = link_sensor(&link);
        let config = dir.join("edgegw.toml");
        std::fs::write(
            &config,
            format!(
                "[[serial.ports]]\npath = \"{}\"\nbaud = 115200\n",
                link.display()
            ),
        )
        .expect("write config");
        let (coap, coaps) = (free_udp_port(), free_udp_port());
        let mut cmd = edgegw(&dir);
        cmd.arg("--config")
            .arg(&config)
            .args(["--dev", "run"])
            .env(
                "EDGEGW_GATEWAY_LOG_LEVEL",
                "info,gateway::adapters::coap=debug",
            )
            .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{coap}"))
            .env("EDGEGW_COAP_DTLS_BIND", format!("127.0.0.1:{coaps}"))
            .env("EDGEGW_COAP_DTLS_IDLE_TIMEOUT", IDLE)
            .env("EDGEGW_COAP_DTLS_HANDSHAKE_TIMEOUT", "2s")
            .env("EDGEGW_HTTP_BIND", "127.0.0.1:0")
            .env("EDGEGW_HTTP_MAX_BODY", "1KiB")
            .env("EDGEGW_AUTH_FAILURE_BURST", "100000");
        let mut daemon = Daemon::start(cmd);
        let secret = demo_secret(&daemon.wait_for_log("demo sensor provisioned", WAIT));
        let port = http_port(&daemon.wait_for_log("HTTP API listening", WAIT));
        daemon.wait_for_log("coaps listening", WAIT);
        daemon.wait_for_log("coap listening", WAIT);
        daemon.wait_for_log("serial port open", WAIT);
        daemon.wait_for_log("ready", WAIT);
        (
            Self {
                _tmp: tmp,
                dir,
                config,
                daemon,
                secret,
                coap,
                coaps,
                http: format!("http://127.0.0.1:{port}"),
            },
            sensor,
        )
    }

    /// `curl`, proxies off; returns (status, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "-w", "\n%{http_code}"])
            .args(args)
            .arg(format!("{}{path}", self.http));
        for var in ["http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"] {
            cmd.env_remove(var);
        }
        let out = cmd.output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (status, body.to_owned())
    }

    /// `GET /metrics` as `name{labels}` → value; checks HELP/TYPE once per family.
    fn metrics(&self) -> Samples {
        let (status, text) = self.curl(&[], "/metrics");
        assert_eq!(status, 200, "{text}");
        let mut types = BTreeMap::new();
        let mut samples = Samples::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("TYPE name").to_owned();
                assert!(types.insert(name, ()).is_none(), "TYPE twice: {line}");
            } else if !line.starts_with('#') && !line.is_empty() {
                let (key, value) = line.rsplit_once(' ').expect("sample");
                let family = key.split('{').next().expect("name");
                assert!(types.contains_key(family), "no TYPE before {line}");
                samples.insert(key.to_owned(), value.parse().expect("number"));
            }
        }
        samples
    }

    fn status(&self, json: bool) -> String {
        let mut cmd = edgegw(&self.dir);
        cmd.arg("--config").arg(&self.config);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .args(["status", "--dev"])
            .output()
            .expect("edgegw status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.status(true)).expect("status JSON")
    }

    /// Polls `/metrics` until every `expected` delta from `base` holds (the counters are
    /// updated right after the answer is sent, so a reply can arrive a moment before them).
    fn expect_deltas(&self, base: &Samples, expected: &[(&str, f64)]) -> Samples {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.metrics();
            let wrong: Vec<String> = expected
                .iter()
                .filter_map(|(k, want)| {
                    let got = now.get(*k).copied().unwrap_or(f64::NAN)
                        - base.get(*k).copied().unwrap_or(0.0);
                    (got != *want).then(|| format!("{k}: moved by {got}, expected {want}"))
                })
                .collect();
            if wrong.is_empty() {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "metrics did not move as expected:\n{}",
                wrong.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A libcoap client run to completion; returns its output (its exit status says nothing).
fn coap_client(args: &[&str]) -> String {
    system_tests::coap_client("coap-client-openssl", args)
}

/// Ends a child this test started, by its own handle.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_adapter_moves_its_counters_and_the_dtls_gauge_follows_sessions() {
    let (mut gw, mut sensor) = Gateway::start(Sensor::plug_in);
    let secret = gw.secret.clone();
    let base = gw.metrics();
    let base_status = gw.status_json();
    assert_eq!(base.get("edgegw_dtls_sessions"), Some(&0.0));

    // Plain CoAP: one accepted, one wrong secret (4.01).
    let url = |q: &str| {
        format!(
            "coap://127.0.0.1:{}/m/{DEV_DOMAIN}/c/demo?auth={q}",
            gw.coap
        )
    };
    let out = coap_client(&["-m", "post", "-e", "coap-ok", &url(&secret)]);
    assert!(!out.contains("4.01"), "{out}");
    let out = coap_client(&["-m", "post", "-e", "coap-bad", &url("wrong-secret")]);
    assert!(out.contains("4.01"), "wrong secret not refused: {out}");

    // CoAPS-PSK: one accepted, one wrong key (the handshake fails on authentication).
    let coaps = format!("coaps://127.0.0.1:{}/m/{DEV_DOMAIN}/c/demo", gw.coaps);
    coap_client(&[
        "-m",
        "post",
        "-e",
        "coaps-ok",
        "-u",
        "demo-sensor",
        "-k",
        &secret,
        &coaps,
    ]);
    coap_client(&[
        "-m",
        "post",
        "-e",
        "coaps-bad",
        "-u",
        "demo-sensor",
        "-k",
        "not-the-key",
        &coaps,
    ]);

    // Serial: a refused AUTH, then AUTH + PUB.
    assert_eq!(sensor.ask("AUTH demo-sensor wrong-secret"), "ERR auth");
    assert_eq!(sensor.ask(&format!("AUTH demo-sensor {secret}")), "OK");
    let ok = sensor.ask("PUB demo serial-ok");
    assert!(ok.starts_with("OK "), "{ok}");

    // HTTP adapter: accepted, wrong secret (401), body over http.max_body (413).
    let client = format!("authorization: Client {secret}");
    let post = |auth: &str, body: &str| {
        gw.curl(
            &[
                "-X",
                "POST",
                "-H",
                auth,
                "-H",
                "content-type: text/plain",
                "--data-binary",
                body,
            ],
            &format!("/m/{DEV_DOMAIN}/c/demo"),
        )
        .0
    };
    assert_eq!(post(&client, "http-ok"), 202);
    assert_eq!(post("authorization: Client wrong-secret", "http-bad"), 401);
    assert_eq!(post(&client, &"x".repeat(2048)), 413);

    let after = gw.expect_deltas(
        &base,
        &[
            ("edgegw_messages_in_total{adapter=\"coap\"}", 1.0),
            ("edgegw_messages_in_total{adapter=\"coaps\"}", 1.0),
            ("edgegw_messages_in_total{adapter=\"serial\"}", 1.0),
            ("edgegw_messages_in_total{adapter=\"http\"}", 1.0),
            (
                "edgegw_messages_refused_total{adapter=\"coap\",reason=\"auth\"}",
                1.0,
            ),
            (
                "edgegw_messages_refused_total{adapter=\"serial\",reason=\"auth\"}",
                1.0,
            ),
            (
                "edgegw_messages_refused_total{adapter=\"http\",reason=\"auth\"}",
                1.0,
            ),
            (
                "edgegw_messages_refused_total{adapter=\"http\",reason=\"too_large\"}",
                1.0,
            ),
            (
                "edgegw_messages_refused_total{adapter=\"coaps\",reason=\"auth\"}",
                0.0,
            ),
            ("edgegw_auth_failures_total{adapter=\"coap\"}", 1.0),
            ("edgegw_auth_failures_total{adapter=\"coaps\"}", 1.0),
            ("edgegw_auth_failures_total{adapter=\"serial\"}", 1.0),
            ("edgegw_auth_failures_total{adapter=\"http\"}", 1.0),
            ("edgegw_dtls_handshakes_total{result=\"completed\"}", 1.0),
            ("edgegw_dtls_handshakes_total{result=\"failed\"}", 1.0),
            ("edgegw_outbox_accepted_total", 4.0),
            ("edgegw_messages_out_total{uplink=\"mqtt\"}", 0.0),
            // The names that existed before stay.
            ("edgegw_http_messages_in_total", 1.0),
            ("edgegw_http_auth_failures_total", 1.0),
        ],
    );
    // Nothing else was refused.
    let refused = |s: &Samples| -> f64 {
        s.iter()
            .filter(|(k, _)| k.starts_with("edgegw_messages_refused_total{"))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(refused(&after) - refused(&base), 4.0);

    // `edgegw status --json` reads the same counters.
    let status = gw.status_json();
    for adapter in ["coap", "coaps", "serial", "http"] {
        let get = |v: &serde_json::Value, k: &str| v["adapters"][adapter][k].as_u64();
        assert_eq!(
            get(&status, "messages_in").map(|n| n - get(&base_status, "messages_in").unwrap()),
            Some(1),
            "{adapter}: {status}"
        );
        let refused = if adapter == "http" {
            2
        } else if adapter == "coaps" {
            0
        } else {
            1
        };
        assert_eq!(
            get(&status, "refused_total").map(|n| n - get(&base_status, "refused_total").unwrap()),
            Some(refused),
            "{adapter}: {status}"
        );
    }
    assert_eq!(status["adapters"]["http"]["refused"]["too_large"], 1);
    assert_eq!(status["adapters"]["coaps"]["auth_failures"], 1);
    let human = gw.status(false);
    assert!(
        human.contains("adapter coap") && human.contains("1 in, 1 refused (auth 1)"),
        "{human}"
    );
    assert!(human.contains("dtls sessions"), "{human}");

    // DTLS gauge: wait until the publish sessions are gone (closed or idle-evicted), then an
    // Observe client holds one session.
    let table = |sessions: u32| format!("coaps session table: sessions={sessions} handshakes=0");
    gw.daemon.wait_for_log(&table(0), WAIT);
    assert_eq!(gw.metrics().get("edgegw_dtls_sessions"), Some(&0.0));
    let zero_lines = gw
        .daemon
        .log()
        .iter()
        .filter(|l| l.contains(&table(0)))
        .count();
    let ones = gw
        .daemon
        .log()
        .iter()
        .filter(|l| l.contains(&table(1)))
        .count();
    let evicted = "dtls session idle; evicted";
    let evictions = gw
        .daemon
        .log()
        .iter()
        .filter(|l| l.contains(evicted))
        .count();
    let _observer = Reaped(
        Command::new("coap-client-openssl")
            .args([
                "-B",
                "60",
                "-s",
                "60",
                "-m",
                "get",
                "-u",
                "demo-sensor",
                "-k",
            ])
            .arg(&secret)
            .arg(&coaps)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coap-client-openssl"),
    );
    gw.daemon.wait_for_nth_log(&table(1), ones + 1, WAIT);
    let held = gw.metrics();
    assert_eq!(held.get("edgegw_dtls_sessions"), Some(&1.0), "{held:?}");
    assert_eq!(gw.status_json()["dtls"]["sessions"], 1);
    // The client stays silent: idle eviction ends the session and the gauge returns to 0.
    gw.daemon
        .wait_for_nth_log(evicted, evictions + 1, Duration::from_secs(30));
    gw.daemon.wait_for_nth_log(&table(0), zero_lines + 1, WAIT);
    assert_eq!(gw.metrics().get("edgegw_dtls_sessions"), Some(&0.0));
    gw.expect_deltas(
        &after,
        &[("edgegw_dtls_handshakes_total{result=\"completed\"}", 1.0)],
    );
    assert_eq!(gw.status_json()["dtls"]["sessions"], 0);

    gw.daemon.signal("TERM");
    let exit = gw.daemon.wait_exit(WAIT).expect("no exit after SIGTERM");
    assert_eq!(exit.code(), Some(0));
}
