//! Observe (RFC 7641) downlink through the real async shell on a real UDP socket, observed by
//! libcoap's `coap-client-openssl -s`, over the real intake (auth store, outbox, downlink
//! hub): commands arrive at the client as notifications, in order; a refused subscription
//! gets its error code.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway::adapters::coap::backend::StoreBackend;
use gateway::adapters::coap::proto::ServerConfig;
use gateway::adapters::coap::task::serve;
use gateway::auth::AuthStore;
use gateway::auth::store::Db;
use gateway::downlink::{Command as Cmd, DownlinkHub, DownlinkLimits};
use gateway::intake::Intake;
use gateway::outbox::Outbox;
use gateway::runtime::metrics::Metrics;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "good-secret-0123456789";

fn command(channel_id: &str, n: u32) -> Cmd {
    Cmd {
        domain_id: "d".into(),
        channel_id: channel_id.into(),
        subtopic: "cmd".into(),
        payload: format!("cmd-{n}").into(),
        received_at: SystemTime::now(),
    }
}

fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_receive_commands_as_notifications_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.db");
    let channel_id = {
        let mut db = Db::open(&path).expect("auth.db");
        let ch = db.add_channel("ch", "d", None).expect("channel");
        db.add_client("sensor-1", None, Some(SECRET), None)
            .expect("client");
        db.connect("sensor-1", "ch", false, true).expect("connect");
        ch.id
    };
    let auth = AuthStore::open(&path, &Default::default()).expect("auth store");
    let (outbox, worker) =
        Outbox::open(&dir.path().join("outbox.db"), &Default::default()).expect("outbox");
    let recipients = auth.clone();
    let hub = DownlinkHub::with_recipients(
        DownlinkLimits::default(),
        Arc::new(move |ch: &str| recipients.snapshot().subscribers(ch)),
    );
    let intake = Intake::new(auth.clone(), outbox.clone(), hub.clone());
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(
        socket,
        ServerConfig::default(),
        None,
        Arc::new(StoreBackend {
            auth,
            tracker: tokio_util::task::TaskTracker::new(),
            cancel: cancel.clone(),
        }),
        intake,
        Metrics::new(),
        cancel.clone(),
    ));

    // Refused: wrong secret → 4.01, and nothing subscribed.
    let refused = Command::new("coap-client-openssl")
        .args(["-B", "5", "-s", "3", "-m", "get"])
        .arg(format!("coap://127.0.0.1:{port}/m/d/c/ch?auth=bad"))
        .output()
        .expect("coap-client-openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(text.contains("4.01"), "refused observe: {text}");

    // Commands published before the sensor observes are kept for it (a recipient) and come
    // first, in order; one published while it observes follows.
    for n in 1..=3 {
        assert_eq!(
            hub.deliver(&command(&channel_id, n)),
            0,
            "nobody observes yet"
        );
    }
    let mut client = Command::new("coap-client-openssl")
        .args(["-B", "20", "-s", "20", "-w", "-m", "get"])
        .arg(format!(
            "coap://127.0.0.1:{port}/m/d/c/ch/cmd?auth={SECRET}"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coap-client-openssl");
    let lines = lines_of(&mut client);
    let next = |lines: &std::sync::mpsc::Receiver<String>| loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.starts_with("cmd-") => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    };
    let (lines, first) = tokio::task::spawn_blocking(move || {
        let got: Vec<_> = (0..3).map_while(|_| next(&lines)).collect();
        (lines, got)
    })
    .await
    .expect("reader");
    assert_eq!(first, ["cmd-1", "cmd-2", "cmd-3"]);
    assert_eq!(
        hub.deliver(&command(&channel_id, 4)),
        1,
        "the live observation"
    );
    let last = tokio::task::spawn_blocking(move || next(&lines))
        .await
        .expect("reader");
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(last.as_deref(), Some("cmd-4"));
    cancel.cancel();
    server.await.expect("join").expect("serve");
    outbox.close();
    tokio::task::spawn_blocking(move || worker.join())
        .await
        .expect("outbox worker");
}
