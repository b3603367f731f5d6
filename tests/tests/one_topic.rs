//! Issues 21.4 / 20.13: one channel has one upstream topic whichever path a sensor used. A
//! channel without a domain goes upstream in `gateway.domain_id` over CoAP's SuperMQ path and
//! the legacy path alike, a path naming another domain is refused (4.03) and never chooses the
//! upstream domain, and a command on that one topic's `/cmd` reaches an observing sensor.
//! Real mosquitto with mTLS, libcoap's `coap-client-notls`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::mosquitto::{Mosquitto, Subscriber, free_port, publish};
use system_tests::pki::Pki;
use system_tests::uplink::env;
use system_tests::{Daemon, edgegw, json_cli};

const GW_DOMAIN: &str = "gw-dom";

fn coap(args: &[&str]) -> String {
    let out = Command::new("coap-client-notls")
        .args(["-B", "5"])
        .args(args)
        .output()
        .expect("coap-client-notls (apt-get install libcoap3-bin)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_path_of_a_channel_goes_upstream_on_one_topic_and_commands_come_back_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut vars = env(dir.path(), &broker, &pki);
    vars.push(("EDGEGW_GATEWAY_DOMAIN_ID".into(), GW_DOMAIN.into()));
    // A channel with an empty domain_id (created with `--domain ""`).
    let channel = json_cli(
        dir.path(),
        &vars,
        &["channel", "add", "mixed", "--domain", ""],
    );
    let id = channel["id"].as_str().expect("channel id").to_owned();
    let client = json_cli(dir.path(), &vars, &["client", "add", "mix-1"]);
    let secret = client["secret"].as_str().expect("secret").to_owned();
    json_cli(dir.path(), &vars, &["connect", "mix-1", "mixed"]);

    let mut sub = Subscriber::start(&broker, &pki, "#");
    let port = free_port();
    let mut cmd = edgegw(dir.path());
    cmd.arg("run")
        .envs(vars.iter().cloned())
        .env("EDGEGW_COAP_BIND", format!("127.0.0.1:{port}"));
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("uplink connected", Duration::from_secs(30));

    let url = |path: &str| format!("coap://127.0.0.1:{port}/{path}?auth={secret}");
    coap(&[
        "-m",
        "post",
        "-e",
        "via-supermq-path",
        &url(&format!("m/{GW_DOMAIN}/c/mixed")),
    ]);
    coap(&[
        "-m",
        "post",
        "-e",
        "via-legacy-path",
        &url("channels/mixed/messages"),
    ]);
    let foreign = coap(&[
        "-m",
        "post",
        "-e",
        "via-foreign",
        &url("m/other-tenant/c/mixed"),
    ]);
    assert!(
        foreign.contains("4.03"),
        "foreign domain not refused: {foreign}"
    );

    let topic = format!("m/{GW_DOMAIN}/c/{id}");
    let want = [
        format!("{topic} via-supermq-path"),
        format!("{topic} via-legacy-path"),
    ];
    let seen = sub.wait_until(Duration::from_secs(30), |l| {
        want.iter().all(|w| l.contains(w))
    });
    assert!(seen, "not both on {topic}: {:?}", sub.lines);
    assert!(
        !sub.lines
            .iter()
            .any(|l| l.contains("via-foreign") || l.contains("other-tenant")),
        "{:?}",
        sub.lines
    );

    // A command on that one topic reaches a sensor observing on the legacy path.
    let mut observer = Command::new("coap-client-notls")
        .args(["-B", "60", "-s", "60", "-w", "-m", "get"])
        .arg(url("channels/mixed/messages/cmd"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coap-client-notls");
    let out = observer.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        publish(&broker, &pki, &format!("{topic}/cmd"), "one-topic-cmd");
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            if line.contains("one-topic-cmd") {
                got = Some(line);
                break;
            }
        }
    }
    let _ = observer.kill();
    let _ = observer.wait();
    assert_eq!(
        got.as_deref(),
        Some("one-topic-cmd"),
        "command on {topic}/cmd not delivered; log:\n{}",
        daemon.log().join("\n")
    );
}
