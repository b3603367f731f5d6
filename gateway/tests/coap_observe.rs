//! Observe (RFC 7641) downlink through the real async shell on a real UDP socket, observed by
//! libcoap's `coap-client-openssl -s`: commands handed to the subscription arrive at the
//! client as notifications, in order; a refused subscription gets its error code.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::coap::proto::{Credentials, Failure, ServerConfig, Target};
use gateway::coap::task::{Backend, Downlink, Principal, PublishFuture, Who, serve_plain};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Told once the first subscription is accepted: its target and the command sender.
type Subscribed = oneshot::Sender<(Target, mpsc::Sender<Downlink>)>;

#[derive(Default)]
struct Fake {
    subscribed: Mutex<Option<Subscribed>>,
}

impl Backend for Fake {
    fn publish(
        &self,
        _: SocketAddr,
        _: Who<'_>,
        _: &Target,
        _: Option<u16>,
        _: Vec<u8>,
    ) -> PublishFuture {
        Box::pin(async { Ok(()) })
    }

    fn subscribe(
        &self,
        _: SocketAddr,
        who: Who<'_>,
        target: &Target,
    ) -> Result<mpsc::Receiver<Downlink>, Failure> {
        match who {
            Who::Query(Credentials::Secret(s)) if s == b"good" => {}
            _ => return Err(Failure::Unauthenticated),
        }
        let (tx, rx) = mpsc::channel(8);
        if let Some(done) = self.subscribed.lock().expect("lock").take() {
            let _ = done.send((target.clone(), tx));
        }
        Ok(rx)
    }

    fn psk(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn psk_principal(&self, _: &str) -> Option<Principal> {
        None
    }

    fn certificate_principal(&self, _: &str, _: &str, _: &str) -> Result<Principal, Failure> {
        Err(Failure::Unauthenticated)
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
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    let (done_tx, done_rx) = oneshot::channel();
    let backend = Arc::new(Fake {
        subscribed: Mutex::new(Some(done_tx)),
    });
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve_plain(
        socket,
        ServerConfig::default(),
        backend,
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

    let mut client = Command::new("coap-client-openssl")
        .args(["-B", "20", "-s", "20", "-w", "-m", "get"])
        .arg(format!("coap://127.0.0.1:{port}/m/d/c/ch/cmd?auth=good"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coap-client-openssl");
    let lines = lines_of(&mut client);
    let (target, commands) = tokio::time::timeout(Duration::from_secs(10), done_rx)
        .await
        .expect("no Observe registration within 10 s")
        .expect("subscribed");
    assert_eq!(target.channel, "ch");
    assert_eq!(target.subtopic, "cmd");
    for n in 1..=3 {
        commands
            .send(Downlink {
                payload: format!("cmd-{n}").into_bytes(),
                content_format: Some(0),
            })
            .await
            .expect("observer alive");
    }
    let got = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        while got.len() < 3 {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(l) if l.starts_with("cmd-") => got.push(l),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        got
    })
    .await
    .expect("reader");
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(got, ["cmd-1", "cmd-2", "cmd-3"]);
    cancel.cancel();
    server.await.expect("join").expect("serve");
}
