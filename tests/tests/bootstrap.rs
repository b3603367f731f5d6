//! End to end: bootstrap provisioning against a bootstrap service that follows SuperMQ's API
//! (`system_tests::bootstrap_server`, rules and their SuperMQ source files named there). The
//! real `edgegw run`, started with a config file holding only `[bootstrap]` (plus its
//! directories and a CoAP port), provisions itself over HTTPS with a test CA, delivers a
//! sensor's message to a real mosquitto with mTLS on `m/<domain>/c/<upstream channel id>`,
//! picks up a changed bootstrap config on SIGHUP, refuses a bad one keeping the previous, and
//! restarts offline from the persisted result. A wrong key is a clear error, retried, and
//! leaves no state; the `/secure/` route works with the service's encryption key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use system_tests::bootstrap_server::{BootstrapServer, Registration};
use system_tests::mosquitto::{Mosquitto, Subscriber};
use system_tests::pki::{Ca, Pki};
use system_tests::{Daemon, coap_client, edgegw, free_udp_port, stdout_of};

const DOMAIN: &str = "6e5e10b3-d4df-4758-b426-4929d55ad740";
const CLIENT_ID: &str = "4c1f3a6e-0d55-4c6b-9a1e-5b0f4f1e2a11";
const CH1: &str = "9a2b7c1d-1111-4e5f-8a9b-0c1d2e3f4a5b";
const CH2: &str = "9a2b7c1d-2222-4e5f-8a9b-0c1d2e3f4a5b";
const EXTERNAL_ID: &str = "dc:a6:32:01:02:03";
const KEY: &str = "ext-key-0123456789";
const ENC_KEY: &str = "12345678910111213141516171819202";
const SENSOR_SECRET: &str = "0123456789abcdef-sensor";

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).expect("read pem")
}

fn answer(
    pki: &Pki,
    broker: &Mosquitto,
    channels: serde_json::Value,
    extra: &str,
) -> serde_json::Value {
    json!({
        "client_id": CLIENT_ID,
        "client_secret": "upstream-secret-1",
        "channels": channels,
        "content": format!(
            "[gateway]\ndomain_id = \"{DOMAIN}\"\n[uplink]\nurl = \"{}\"\nreconnect_max = \"2s\"\n{extra}",
            broker.url()
        ),
        "client_cert": read(&pki.client.cert),
        "client_key": read(&pki.client.key),
        "ca_cert": read(&pki.ca.cert),
    })
}

/// A config file with only `[bootstrap]` besides where state lives and the CoAP port.
fn write_config(root: &Path, coap: u16, bootstrap: &str) -> PathBuf {
    let path = root.join("edgegw.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nstate_dir = \"{root}/state\"\nruntime_dir = \"{root}/run\"\n\
             [coap]\nbind = \"127.0.0.1:{coap}\"\n[bootstrap]\n{bootstrap}\n",
            root = root.display()
        ),
    )
    .expect("write config");
    path
}

fn start(root: &Path, config: &Path) -> Daemon {
    let mut cmd = edgegw(root);
    // The CoAP port comes from the file (the harness's ephemeral default would win).
    cmd.env_remove("EDGEGW_COAP_BIND");
    cmd.arg("--config").arg(config).arg("run");
    Daemon::start(cmd)
}

fn cli(root: &Path, config: &Path, args: &[&str]) -> String {
    let mut cmd = edgegw(root);
    cmd.env_remove("EDGEGW_COAP_BIND");
    stdout_of(cmd.arg("--config").arg(config).args(args))
}

fn status(root: &Path, config: &Path) -> serde_json::Value {
    serde_json::from_str(&cli(root, config, &["--json", "status"])).expect("status json")
}

fn post(coap: u16, channel: &str, payload: &str) -> String {
    coap_client(
        "coap-client-openssl",
        &[
            "-m",
            "post",
            "-e",
            payload,
            &format!("coap://127.0.0.1:{coap}/m/{DOMAIN}/c/{channel}?auth={SENSOR_SECRET}"),
        ],
    )
}

fn arrived(sub: &mut Subscriber, topic: &str, payload: &str) -> bool {
    let want = format!("{topic} {payload}");
    sub.wait_until(Duration::from_secs(30), |lines| lines.contains(&want))
}

#[test]
fn provisions_over_https_delivers_follows_sighup_and_restarts_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let broker = Mosquitto::start(&root.join("broker"), &pki);
    let mut sub = Subscriber::start(&broker, &pki, "m/#");
    // The bootstrap service's own CA, distinct from the broker's.
    let bs_ca = Ca::new(&root.join("bs-pki"), "bootstrap-ca");
    let bs_cert = bs_ca.issue("bootstrap", "bootstrap", Some("IP:127.0.0.1"), 30);
    let mut bs = BootstrapServer::start_tls(
        Registration {
            external_id: EXTERNAL_ID.into(),
            external_key: KEY.into(),
            encryption_key: ENC_KEY.as_bytes().to_vec(),
            answer: answer(
                &pki,
                &broker,
                json!([{ "id": CH1, "name": "temp", "metadata": { "unit": "C" } }]),
                "",
            ),
        },
        &bs_cert.cert,
        &bs_cert.key,
    );
    let coap = free_udp_port();
    let config = write_config(
        root,
        coap,
        &format!(
            "url = \"{}\"\nexternal_id = \"{EXTERNAL_ID}\"\nexternal_key = \"{KEY}\"\n\
             ca_certs = \"{}\"\nretry_min = \"200ms\"\nretry_max = \"1s\"",
            bs.url(),
            bs_ca.cert.display()
        ),
    );

    // First start: nothing applied → fetch, apply, restart in place with the uplink.
    let mut daemon = start(root, &config);
    daemon.wait_for_log("first bootstrap: client", Duration::from_secs(30));
    daemon.wait_for_log("restarting in place", Duration::from_secs(30));
    daemon.wait_for_nth_log("ready", 2, Duration::from_secs(30));
    assert!(
        daemon
            .log()
            .iter()
            .all(|l| !l.contains("upstream-secret-1") && !l.contains(KEY)),
        "a secret was logged:\n{}",
        daemon.log().join("\n")
    );
    assert_eq!(
        bs.seen()[0].path,
        format!("/clients/bootstrap/{EXTERNAL_ID}")
    );
    // The record and key are private.
    use std::os::unix::fs::PermissionsExt as _;
    let record = root.join("state/bootstrap.json");
    assert_eq!(
        std::fs::metadata(&record)
            .expect("record")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    for f in std::fs::read_dir(root.join("state/bootstrap")).expect("files") {
        let meta = f.expect("entry").metadata().expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    // The channel is mirrored with its upstream id and name.
    let channels: serde_json::Value =
        serde_json::from_str(&cli(root, &config, &["--json", "channel", "list"])).expect("json");
    let ch = channels
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["id"] == CH1)
        .unwrap_or_else(|| panic!("{channels}"));
    assert_eq!(
        (ch["name"].as_str(), ch["domain_id"].as_str()),
        (Some("temp"), Some(DOMAIN))
    );
    // check-config shows the layered result, secrets redacted.
    let shown = cli(root, &config, &["check-config"]);
    assert!(
        shown.contains(&format!("username = \"{CLIENT_ID}\"")),
        "{shown}"
    );
    assert!(shown.contains("platform = \"supermq\""), "{shown}");
    assert!(
        shown.contains("# with the bootstrap config applied"),
        "{shown}"
    );
    assert!(
        !shown.contains("upstream-secret-1") && !shown.contains(KEY),
        "{shown}"
    );

    // A sensor on the bootstrapped channel: its message reaches the broker on the upstream
    // channel id in the bootstrapped domain.
    cli(
        root,
        &config,
        &["client", "add", "s1", "--secret", SENSOR_SECRET],
    );
    cli(root, &config, &["connect", "s1", "temp", "--publish"]);
    daemon.wait_for_log("connections=1", Duration::from_secs(10));
    let out = post(coap, "temp", "hello-1");
    assert!(out.is_empty() || !out.contains("4."), "{out}");
    assert!(
        arrived(&mut sub, &format!("m/{DOMAIN}/c/{CH1}"), "hello-1"),
        "not delivered: {:?}\n{}",
        sub.lines,
        daemon.log().join("\n")
    );
    let st = status(root, &config);
    assert_eq!(st["bootstrap"]["state"], "applied", "{st}");
    assert_eq!(st["bootstrap"]["url"], bs.url(), "{st}");
    assert_eq!(st["bootstrap"]["client_id"], CLIENT_ID, "{st}");
    assert_eq!(
        st["bootstrap"]["channels"],
        json!([format!("temp ({CH1})")]),
        "{st}"
    );
    let human = cli(root, &config, &["status"]);
    assert!(
        human.contains("bootstrap channels") && human.contains(CH1),
        "{human}"
    );

    // Unchanged on SIGHUP: nothing restarts.
    daemon.signal("HUP");
    daemon.wait_for_log("bootstrap config unchanged", Duration::from_secs(20));

    // A bad fragment is refused with the reason; the previous config stays in use.
    bs.set_answer(answer(
        &pki,
        &broker,
        json!([{ "id": CH1, "name": "temp" }]),
        "topic_template = \"legacy/{channel}\"",
    ));
    daemon.signal("HUP");
    let refused = daemon.wait_for_log("bootstrap failed", Duration::from_secs(20));
    assert!(
        refused.contains("refused") && refused.contains("uplink.topic_template"),
        "{refused}"
    );
    assert!(refused.contains("bootstrap config ("), "{refused}");
    // Still the old record, still delivering.
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("record")).expect("json");
    assert_eq!(again["channels"].as_array().map(Vec::len), Some(1));
    post(coap, "temp", "hello-2");
    assert!(arrived(&mut sub, &format!("m/{DOMAIN}/c/{CH1}"), "hello-2"));

    // A changed config (a second channel, the first renamed) is picked up on SIGHUP.
    bs.set_answer(answer(
        &pki,
        &broker,
        json!([
            { "id": CH1, "name": "temperature" },
            { "id": CH2, "name": "humidity" }
        ]),
        "",
    ));
    daemon.signal("HUP");
    daemon.wait_for_log("channel added: humidity", Duration::from_secs(20));
    daemon.wait_for_log("name `temp` -> `temperature`", Duration::from_secs(5));
    daemon.wait_for_nth_log("restarting in place", 2, Duration::from_secs(30));
    daemon.wait_for_nth_log("ready", 3, Duration::from_secs(30));
    cli(root, &config, &["connect", "s1", "humidity", "--publish"]);
    daemon.wait_for_log("connections=2", Duration::from_secs(10));
    post(coap, "humidity", "hello-3");
    assert!(arrived(&mut sub, &format!("m/{DOMAIN}/c/{CH2}"), "hello-3"));

    // Offline restart: the service is gone; the persisted result is used.
    bs.stop();
    daemon.signal("TERM");
    assert!(
        daemon
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let mut daemon = start(root, &config);
    daemon.wait_for_log("ready", Duration::from_secs(30));
    post(coap, "temperature", "hello-4");
    assert!(
        arrived(&mut sub, &format!("m/{DOMAIN}/c/{CH1}"), "hello-4"),
        "{}",
        daemon.log().join("\n")
    );
    assert_eq!(status(root, &config)["bootstrap"]["state"], "applied");
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn wrong_key_is_retried_and_leaves_no_state_then_the_secure_route_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let bs = BootstrapServer::start(Registration {
        external_id: EXTERNAL_ID.into(),
        external_key: KEY.into(),
        encryption_key: ENC_KEY.as_bytes().to_vec(),
        answer: json!({
            "client_id": CLIENT_ID,
            "client_secret": "upstream-secret-1",
            "channels": [{ "id": CH1, "name": "temp" }],
            "content": format!("[gateway]\ndomain_id = \"{DOMAIN}\""),
        }),
    });
    let coap = free_udp_port();
    let settings = |key: &str| {
        format!(
            "url = \"{}\"\nexternal_id = \"{EXTERNAL_ID}\"\nexternal_key = \"{key}\"\n\
             secure = true\nencryption_key = \"{ENC_KEY}\"\nretry_min = \"200ms\"\nretry_max = \"400ms\"",
            bs.url()
        )
    };
    let config = write_config(root, coap, &settings("wrong-key-000"));
    let mut daemon = start(root, &config);
    let line = daemon.wait_for_nth_log("bootstrap failed", 2, Duration::from_secs(30));
    assert!(
        line.contains("refused the external key") && line.contains("403"),
        "{line}"
    );
    assert!(line.contains("bootstrap.external_key"), "{line}");
    assert!(!line.contains("wrong-key-000"), "{line}");
    // Retried, and refused each time, on the secure route.
    let seen = bs.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter().all(
            |s| s.status == 403 && s.path == format!("/clients/bootstrap/secure/{EXTERNAL_ID}")
        ),
        "{seen:?}"
    );
    // No partial state: no record, no files, no channel.
    assert!(!root.join("state/bootstrap.json").exists());
    assert!(
        std::fs::read_dir(root.join("state/bootstrap"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
    let channels = cli(root, &config, &["--json", "channel", "list"]);
    assert!(!channels.contains(CH1), "{channels}");
    let st = status(root, &config);
    assert_eq!(st["bootstrap"]["state"], "failing", "{st}");
    assert!(st["bootstrap"]["failures"].as_u64() >= Some(2), "{st}");
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());

    // The right key: `edgegw bootstrap --json` applies it from the command line.
    let config = write_config(root, coap, &settings(KEY));
    let out: serde_json::Value =
        serde_json::from_str(&cli(root, &config, &["--json", "bootstrap"])).expect("json");
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["client_id"], CLIENT_ID, "{out}");
    assert_eq!(out["channels"][0]["id"], CH1, "{out}");
    assert_eq!(out["domain_id"], DOMAIN, "{out}");
    assert!(!out.to_string().contains("upstream-secret-1"), "{out}");
    // Asked again: unchanged.
    let out: serde_json::Value =
        serde_json::from_str(&cli(root, &config, &["--json", "bootstrap"])).expect("json");
    assert_eq!(out["changed"], false, "{out}");
    let last = bs.seen().last().cloned().expect("seen");
    assert_eq!(last.status, 200, "{last:?}");
    // The daemon starts from it without asking (no uplink URL in this content).
    let before = bs.seen().len();
    let mut daemon = start(root, &config);
    daemon.wait_for_log("ready", Duration::from_secs(30));
    assert_eq!(status(root, &config)["bootstrap"]["state"], "applied");
    assert_eq!(bs.seen().len(), before);
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());
}

/// mosquitto with two mTLS listeners (`per_listener_settings`): one where the gateway must
/// log in with a username and password from a mosquitto password file (as SuperMQ checks the
/// CONNECT's client id and secret, `mqtt/handler.go` in v0.19.1), one for the test's own
/// subscriber (certificate identity). Killed on drop.
struct PasswordBroker {
    child: std::process::Child,
    gateway_port: u16,
    sub_port: u16,
    dir: PathBuf,
}

impl PasswordBroker {
    fn start(dir: &Path, pki: &Pki, user: &str, password: &str) -> Self {
        use system_tests::mosquitto::free_port;
        std::fs::create_dir_all(dir).expect("broker dir");
        let passwd = dir.join("passwd");
        let ok = std::process::Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd");
        assert!(ok.success());
        let (gateway_port, sub_port) = (free_port(), free_port());
        let me = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .expect("id")
                .stdout,
        )
        .expect("utf8");
        let tls = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.ca.cert.display(),
            pki.broker.cert.display(),
            pki.broker.key.display()
        );
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user {me}\nper_listener_settings true\n\
                 log_dest file {d}/mosquitto.log\nconnection_messages true\n\
                 listener {gateway_port} 127.0.0.1\n{tls}password_file {p}\nallow_anonymous false\n\
                 listener {sub_port} 127.0.0.1\n{tls}use_identity_as_username true\nallow_anonymous true\n",
                me = me.trim(),
                d = dir.display(),
                p = passwd.display(),
            ),
        )
        .expect("conf");
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", sub_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", gateway_port)).is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto does not listen"
            );
            // Another process's listener has no readiness event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            gateway_port,
            sub_port,
            dir: dir.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// `mosquitto_sub -v` on the subscriber listener; lines arrive on the receiver.
    fn subscribe(
        &self,
        pki: &Pki,
        filter: &str,
    ) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &self.sub_port.to_string(),
            ])
            .arg("--cafile")
            .arg(&pki.ca.cert)
            .arg("--cert")
            .arg(&pki.subscriber.cert)
            .arg("--key")
            .arg(&pki.subscriber.key)
            .args(["-q", "1", "-v", "-t", filter])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

impl Drop for PasswordBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, want: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == want => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

#[test]
fn connects_upstream_as_the_bootstrapped_client_and_a_recheck_follows_a_new_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let broker = PasswordBroker::start(&root.join("broker"), &pki, CLIENT_ID, "the-right-secret");
    let (mut sub, lines) = broker.subscribe(&pki, "m/#");
    let with_secret = |secret: &str| {
        json!({
            "client_id": CLIENT_ID,
            "client_secret": secret,
            "channels": [{ "id": CH1, "name": "temp" }],
            "content": format!(
                "[gateway]\ndomain_id = \"{DOMAIN}\"\n[uplink]\nurl = \"mqtts://127.0.0.1:{}\"\nreconnect_max = \"1s\"",
                broker.gateway_port
            ),
            "client_cert": read(&pki.client.cert),
            "client_key": read(&pki.client.key),
            "ca_cert": read(&pki.ca.cert),
        })
    };
    let bs = BootstrapServer::start(Registration {
        external_id: EXTERNAL_ID.into(),
        external_key: KEY.into(),
        encryption_key: ENC_KEY.as_bytes().to_vec(),
        answer: with_secret("a-stale-secret"),
    });
    let coap = free_udp_port();
    let config = write_config(
        root,
        coap,
        &format!(
            "url = \"{}\"\nexternal_id = \"{EXTERNAL_ID}\"\nexternal_key = \"{KEY}\"\n\
             recheck_interval = \"1s\"",
            bs.url()
        ),
    );
    let mut daemon = start(root, &config);
    daemon.wait_for_nth_log("ready", 2, Duration::from_secs(30));
    cli(
        root,
        &config,
        &["client", "add", "s1", "--secret", SENSOR_SECRET],
    );
    cli(root, &config, &["connect", "s1", "temp", "--publish"]);
    daemon.wait_for_log("connections=1", Duration::from_secs(10));
    // Accepted (durable) while the broker refuses the stale secret.
    post(coap, "temp", "queued-1");
    let refused = daemon.wait_for_log("NotAuthorized", Duration::from_secs(30));
    assert!(!refused.contains("a-stale-secret"), "{refused}");
    assert!(broker.log().contains("not authorised"), "{}", broker.log());

    // The platform rotates the secret; the periodic re-check picks it up, the queued message
    // goes out.
    bs.set_answer(with_secret("the-right-secret"));
    daemon.wait_for_log("client secret changed", Duration::from_secs(20));
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("reason=\"periodic re-check\"")),
        "{}",
        daemon.log().join("\n")
    );
    let topic = format!("m/{DOMAIN}/c/{CH1}");
    assert!(
        wait_line(&lines, &format!("{topic} queued-1")),
        "not delivered; broker log:\n{}\ngateway log:\n{}",
        broker.log(),
        daemon.log().join("\n")
    );
    assert!(
        broker.log().contains(&format!("u'{CLIENT_ID}'")),
        "CONNECT username is not the client id:\n{}",
        broker.log()
    );
    post(coap, "temp", "live-2");
    assert!(wait_line(&lines, &format!("{topic} live-2")));
    let _ = sub.kill();
    let _ = sub.wait();
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());
}
