//! End to end against an upstream that enforces SuperMQ's rules (tests/src/supermq_upstream.rs:
//! mosquitto with a password file and an ACL of the gateway client's connected channels,
//! behind an mTLS front that closes the connection on an unauthorized PUBLISH/SUBSCRIBE as
//! SuperMQ v0.19.1's mgate proxy does). The real `edgegw` with `uplink.platform = "supermq"`:
//! - sensors on CoAP, CoAPS (PSK) and serial (a pty) publish; every acknowledged message
//!   arrives on `m/<domain>/c/<upstream channel id>/…`, none is lost, and the status topic
//!   (a mirrored channel's) never trips the disconnect;
//! - a message for a channel the platform refuses is quarantined after
//!   `uplink.quarantine_after` tries while the other channels' messages all arrive; `edgegw
//!   quarantine list` shows it; once the channel is connected upstream, `edgegw quarantine
//!   requeue` delivers it.
//! - with `{client}` in the topic template the sensor stays visible upstream (issue 15.5).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coap_lite::MessageType;
use system_tests::pki::Pki;
use system_tests::pty::{FORK_LOCK, Sensor};
use system_tests::sensor::{Credential, DtlsClient, answer, coap_post};
use system_tests::supermq_upstream::{READER, SupermqUpstream};
use system_tests::{Daemon, edgegw, free_udp_port, stdout_of};

const DOMAIN: &str = "0f7c3a2e-5d1b-4c8e-9a6f-2b4d8e1c7a90";
const GATEWAY_CLIENT: &str = "7d3e9b21-4c5a-4f8e-b2d6-1a9c0e8f3b47";
const GATEWAY_SECRET: &str = "gateway-client-secret-5f2a9c";
const UP_COAP: &str = "a1c2e3f4-1111-4aaa-8bbb-000000000001";
const UP_DTLS: &str = "a1c2e3f4-2222-4aaa-8bbb-000000000002";
const UP_SERIAL: &str = "a1c2e3f4-3333-4aaa-8bbb-000000000003";
const UP_STATUS: &str = "a1c2e3f4-4444-4aaa-8bbb-000000000004";
const UP_REFUSED: &str = "a1c2e3f4-5555-4aaa-8bbb-000000000005";
const WAIT: Duration = Duration::from_secs(60);

/// `mosquitto_sub -v` as the test's reader on the broker's plain listener.
struct Reader {
    child: Child,
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Reader {
    fn start(up: &SupermqUpstream) -> Self {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p"])
            .arg(up.broker_port.to_string())
            .args(["-u", READER.0, "-P", READER.1, "-q", "1", "-v"])
            .args(["-t", "m/#", "-t", "probe/#"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut r = Self {
            child,
            rx,
            lines: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p"])
                .arg(up.broker_port.to_string())
                .args(["-u", READER.0, "-P", READER.1])
                .args(["-t", "probe/ready", "-m", "ready"])
                .status()
                .expect("mosquitto_pub");
            assert!(status.success());
            if r.wait_until(Duration::from_millis(500), |l| {
                l.iter().any(|x| x == "probe/ready ready")
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
        }
        r
    }

    fn wait_until(&mut self, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.lines) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(_) => return done(&self.lines),
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `edgegw --dev --json <args>` with the test's environment.
fn cli(root: &Path, vars: &[(String, String)], args: &[&str]) -> serde_json::Value {
    let out = stdout_of(
        edgegw(root)
            .args(["--dev", "--json"])
            .args(args)
            .envs(vars.iter().cloned()),
    );
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

/// A local channel mirroring upstream channel `upstream` and a client connected to it; the
/// client's secret.
fn mirror(root: &Path, vars: &[(String, String)], name: &str, upstream: &str) -> String {
    cli(
        root,
        vars,
        &[
            "channel",
            "add",
            name,
            "--upstream-id",
            upstream,
            "--domain",
            DOMAIN,
        ],
    );
    let client = cli(root, vars, &["client", "add", &format!("sensor-{name}")]);
    // The refused channel's sensor only publishes: no command subscription on it upstream
    // (that one would be refused too; subscriptions.rs handles it, tested in the gateway).
    let rights: &[&str] = if name == "refused" {
        &["--publish"]
    } else {
        &[]
    };
    let sensor = format!("sensor-{name}");
    let mut args = vec!["connect", &sensor, name];
    args.extend_from_slice(rights);
    cli(root, vars, &args);
    client["secret"].as_str().expect("secret").to_owned()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    vars: Vec<(String, String)>,
    up: SupermqUpstream,
    coap: SocketAddr,
    coaps: SocketAddr,
    secrets: Vec<(String, String)>,
    serial: Option<Sensor>,
    daemon: Daemon,
}

impl Setup {
    fn secret(&self, name: &str) -> &str {
        &self
            .secrets
            .iter()
            .find(|(n, _)| n == name)
            .expect("known channel")
            .1
    }
}

/// The local channels (name, upstream id) every test mirrors.
const MIRRORED: [(&str, &str); 4] = [
    ("coap", UP_COAP),
    ("dtls", UP_DTLS),
    ("serial", UP_SERIAL),
    ("status", UP_STATUS),
];

/// Upstream connected to `connected`; local channels `mirrored` mirror upstream ones; the
/// daemon runs with `extra` settings.
fn setup(mirrored: &[(&str, &str)], connected: &[&str], extra: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let pki = Pki::new(&root.join("pki"));
    let up = SupermqUpstream::start(
        &root.join("upstream"),
        &pki,
        DOMAIN,
        GATEWAY_CLIENT,
        GATEWAY_SECRET,
        connected,
    );
    let mut vars = up.gateway_env(&pki);
    vars.extend(
        [
            (
                "EDGEGW_UPLINK_STATUS_TOPIC",
                format!("m/{DOMAIN}/c/{UP_STATUS}/status"),
            ),
            ("EDGEGW_UPLINK_STATUS_INTERVAL", "1s".into()),
            ("EDGEGW_UPLINK_RECONNECT_MIN", "100ms".into()),
            ("EDGEGW_UPLINK_RECONNECT_MAX", "300ms".into()),
            ("EDGEGW_UPLINK_CLIENT_ID", "edgegw-supermq-test".into()),
            ("EDGEGW_GATEWAY_DOMAIN_ID", DOMAIN.into()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut secrets = Vec::new();
    for (name, upstream) in mirrored {
        secrets.push(((*name).to_owned(), mirror(&root, &vars, name, upstream)));
    }
    // The dev profile's demo sensor exists already: no demo channel is made (the platform
    // would have to connect the gateway's client to it too).
    cli(&root, &vars, &["client", "add", "demo-sensor"]);
    let link = root.join("ttySENSOR");
    let serial = Sensor::plug_in(&link);
    let config = root.join("edgegw.toml");
    std::fs::write(
        &config,
        format!(
            "[serial]\nreopen_min = \"100ms\"\nreopen_max = \"200ms\"\n\
             [[serial.ports]]\npath = \"{}\"\nbaud = 115200\n",
            link.display()
        ),
    )
    .expect("config");
    let coap: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
        .parse()
        .expect("addr");
    let coaps: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
        .parse()
        .expect("addr");
    let mut cmd = edgegw(&root);
    cmd.arg("--config")
        .arg(&config)
        .args(["--dev", "run"])
        .envs(vars.iter().cloned())
        .env("EDGEGW_COAP_BIND", coap.to_string())
        .env("EDGEGW_COAP_DTLS_BIND", coaps.to_string());
    let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut daemon = Daemon::start(cmd);
    drop(guard);
    daemon.wait_for_log("serial port open", WAIT);
    daemon.wait_for_log("coaps listening", WAIT);
    daemon.wait_for_log("uplink connected", WAIT);
    Setup {
        _dir: dir,
        root,
        vars,
        up,
        coap,
        coaps,
        secrets,
        serial: Some(serial),
        daemon,
    }
}

/// Plain CoAP POSTs of `numbers` on local channel `channel`: the numbers answered 2.04.
fn coap_publish(s: &Setup, channel: &str, sub: &str, numbers: std::ops::Range<u64>) -> Vec<u64> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut acked = Vec::new();
    for n in numbers {
        let mid = u16::try_from(n % 60_000).expect("small");
        let msg = coap_post(
            mid,
            MessageType::Confirmable,
            Some(s.secret(channel)),
            &["m", DOMAIN, "c", channel, sub],
            n,
        );
        sock.send_to(&msg, s.coap).expect("send");
        let mut buf = [0u8; 1500];
        while let Ok(len) = sock.recv(&mut buf) {
            if let Some(code) = answer(&buf[..len], mid) {
                if code == "2.04" {
                    acked.push(n);
                }
                break;
            }
        }
    }
    acked
}

/// Messages seen on `topic` with numeric payloads.
fn numbers_on(lines: &[String], topic: &str) -> BTreeSet<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(topic)?.strip_prefix(' ')?.parse().ok())
        .collect()
}

#[test]
fn every_acknowledged_message_from_coap_coaps_and_serial_arrives_on_upstream_channel_topics() {
    let mut s = setup(&MIRRORED, &[UP_COAP, UP_DTLS, UP_SERIAL, UP_STATUS], &[]);
    let mut reader = Reader::start(&s.up);

    let coap_acked = coap_publish(&s, "coap", "temp", 0..50);
    // CoAPS with the client's DTLS-PSK identity (its identity is `sensor-dtls`).
    let mut dtls = DtlsClient::connect(
        s.coaps,
        &Credential::psk("sensor-dtls", s.secret("dtls")),
        Duration::from_secs(10),
    )
    .expect("DTLS-PSK handshake");
    let mut dtls_acked = Vec::new();
    for n in 100..150u64 {
        let mid = u16::try_from(n).expect("small");
        let msg = coap_post(
            mid,
            MessageType::Confirmable,
            None,
            &["m", DOMAIN, "c", "dtls", "hum"],
            n,
        );
        if dtls.request(&msg, mid, Duration::from_secs(5)).as_deref() == Some("2.04") {
            dtls_acked.push(n);
        }
    }
    dtls.close();
    // Serial: AUTH, then PUB lines answered `OK <seq>` once durable.
    let secret = s.secret("serial").to_owned();
    let mut serial_acked = Vec::new();
    {
        let port = s.serial.as_mut().expect("serial sensor");
        assert_eq!(port.ask(&format!("AUTH sensor-serial {secret}")), "OK");
        for n in 200..250u64 {
            if port
                .ask(&format!("PUB serial/level {n}"))
                .starts_with("OK ")
            {
                serial_acked.push(n);
            }
        }
    }
    assert_eq!(coap_acked.len(), 50, "CoAP answers");
    assert_eq!(dtls_acked.len(), 50, "CoAPS answers");
    assert_eq!(serial_acked.len(), 50, "serial answers");

    let want = [
        (format!("m/{DOMAIN}/c/{UP_COAP}/temp"), coap_acked),
        (format!("m/{DOMAIN}/c/{UP_DTLS}/hum"), dtls_acked),
        (format!("m/{DOMAIN}/c/{UP_SERIAL}/level"), serial_acked),
    ];
    let arrived = reader.wait_until(WAIT, |lines| {
        want.iter().all(|(topic, acked)| {
            let seen = numbers_on(lines, topic);
            acked.iter().all(|n| seen.contains(n))
        })
    });
    for (topic, acked) in &want {
        let seen = numbers_on(&reader.lines, topic);
        let missing: Vec<_> = acked.iter().filter(|n| !seen.contains(n)).collect();
        assert!(
            arrived && missing.is_empty(),
            "missing on {topic}: {missing:?}; the front closed on {:?}; gateway log:\n{}",
            s.up.closes(),
            s.daemon.log().join("\n")
        );
    }
    // Statistics went out on the status channel's topic (status_interval 1s) ...
    let stats = format!("m/{DOMAIN}/c/{UP_STATUS}/status/stats");
    assert!(
        reader.wait_until(WAIT, |l| l.iter().any(|x| x.starts_with(&stats))),
        "no statistics on {stats}"
    );
    // ... and nothing ever tripped the front's disconnect: one connection all along, and
    // nothing upstream outside m/<domain>/c/<connected channel>/.
    assert_eq!(s.up.closes(), Vec::<String>::new());
    assert_eq!(
        s.daemon
            .log()
            .iter()
            .filter(|l| l.contains("uplink connected"))
            .count(),
        1,
        "reconnected: {:?}",
        s.daemon.log()
    );
    let allowed = [UP_COAP, UP_DTLS, UP_SERIAL, UP_STATUS].map(|c| format!("m/{DOMAIN}/c/{c}"));
    for line in reader.lines.iter().filter(|l| l.starts_with("m/")) {
        assert!(
            allowed.iter().any(|a| line.starts_with(&format!("{a}/"))),
            "outside the connected channels: {line}"
        );
    }
    // Every acknowledgement reaches the outbox (deleted with a later group commit).
    let deadline = Instant::now() + WAIT;
    let mut status = cli(&s.root, &s.vars, &["status"]);
    while status["outbox"]["queued"] != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        status = cli(&s.root, &s.vars, &["status"]);
    }
    assert_eq!(status["outbox"]["queued"], 0, "{status}");
    assert_eq!(status["outbox"]["quarantined"], 0, "{status}");
}

#[test]
fn a_refused_channels_message_is_quarantined_the_others_flow_and_requeue_delivers_it_once_allowed()
{
    let mut mirrored = MIRRORED.to_vec();
    mirrored.push(("refused", UP_REFUSED));
    let mut s = setup(
        &mirrored,
        &[UP_COAP, UP_DTLS, UP_SERIAL, UP_STATUS],
        &[("EDGEGW_UPLINK_QUARANTINE_AFTER", "3")],
    );
    let mut reader = Reader::start(&s.up);
    // One message for the channel the platform has not connected the gateway to, then the
    // other channels' traffic behind it.
    assert_eq!(coap_publish(&s, "refused", "alarm", 7..8), vec![7]);
    let acked = coap_publish(&s, "coap", "temp", 1000..1040);
    assert_eq!(acked.len(), 40);
    let topic = format!("m/{DOMAIN}/c/{UP_COAP}/temp");
    let arrived = reader.wait_until(WAIT, |l| {
        let seen = numbers_on(l, &topic);
        acked.iter().all(|n| seen.contains(n))
    });
    assert!(
        arrived,
        "the other channel's messages did not all arrive; front closed on {:?}; log:\n{}",
        s.up.closes(),
        s.daemon.log().join("\n")
    );
    let refused_topic = format!("m/{DOMAIN}/c/{UP_REFUSED}/alarm");
    // The front closed the connection on it quarantine_after times while it was alone in
    // flight, plus once more if the first close came while other messages were in flight
    // too (then nobody is blamed and they are probed one at a time); on nothing else.
    let closes = s.up.closes();
    let on_it = closes
        .iter()
        .filter(|c| **c == format!("publish {refused_topic}"))
        .count();
    assert!(
        (3..=4).contains(&on_it) && on_it == closes.len(),
        "{closes:?}"
    );
    // Listed by the CLI with the reason, the attempts and the payload.
    let mut list = cli(&s.root, &s.vars, &["quarantine", "list"]);
    let deadline = Instant::now() + WAIT;
    while list["total"] != 1 && Instant::now() < deadline {
        // The move is durable with the outbox's next group commit.
        std::thread::sleep(Duration::from_millis(50));
        list = cli(&s.root, &s.vars, &["quarantine", "list"]);
    }
    assert_eq!(list["total"], 1, "{list}");
    let q = &list["quarantine"][0];
    assert_eq!(q["payload"], "7", "{q}");
    assert_eq!(q["attempts"], 3, "{q}");
    assert_eq!(q["subtopic"], "alarm", "{q}");
    assert!(
        q["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("closed the connection"),
        "{q}"
    );
    let id = q["id"].as_u64().expect("id");
    let status = cli(&s.root, &s.vars, &["status"]);
    assert_eq!(status["outbox"]["quarantined"], 1, "{status}");
    assert_eq!(status["outbox"]["quarantined_total"], 1, "{status}");
    assert!(!numbers_on(&reader.lines, &refused_topic).contains(&7));

    // The operator connects the gateway's client to the channel upstream, then re-queues.
    s.up.connect_channel(UP_REFUSED);
    let requeued = cli(
        &s.root,
        &s.vars,
        &["quarantine", "requeue", &id.to_string()],
    );
    assert!(
        requeued["requeued_as"].as_u64().expect("new seq") > id,
        "{requeued}"
    );
    assert!(
        reader.wait_until(WAIT, |l| numbers_on(l, &refused_topic).contains(&7)),
        "re-queued message not delivered; log:\n{}",
        s.daemon.log().join("\n")
    );
    let list = cli(&s.root, &s.vars, &["quarantine", "list"]);
    assert_eq!(list["total"], 0, "{list}");
    let status = cli(&s.root, &s.vars, &["status"]);
    assert_eq!(status["outbox"]["requeued_total"], 1, "{status}");
}
