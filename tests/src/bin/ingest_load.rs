//! Test-only load generator (not shipped: it lives in the `system-tests` package). Runs the
//! gateway's pipeline (outbox + uplink, configured from `EDGEGW_*` like the daemon), accepts
//! `count` messages numbered from `start` over `channels` channels through the Ingest API, and
//! prints `ACK <i> <seq>` once each one's Receipt resolved (durable). Then waits until the
//! outbox is empty and prints `DRAINED`, and keeps running until SIGTERM. SIGHUP is a reload,
//! as in the daemon. The SIGKILL test kills it at random moments.
//!
//! usage: ingest_load <start> <count> <channels>

use std::io::Write;

use gateway::config::{Profile, Source};
use gateway::runtime::supervisor::{Signal, Supervisor};
use tokio::sync::mpsc;

fn main() -> std::process::ExitCode {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("usage: ingest_load <start> <count> <channels>")
        })
        .collect();
    let [start, count, channels] = args[..] else {
        eprintln!("usage: ingest_load <start> <count> <channels>");
        return std::process::ExitCode::from(64);
    };
    let config = gateway::config::load(&Source::None, Profile::dev_in_current_dir())
        .expect("configuration from EDGEGW_* is valid");
    gateway::runtime::logging::init(&config.gateway.log_level);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    for dir in [&config.gateway.state_dir, &config.gateway.runtime_dir] {
        certs::files::ensure_private_dir(dir).expect("cannot create the gateway dirs");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let supervisor = Supervisor::new();
        let pipeline = gateway::pipeline::start(
            &config,
            &supervisor,
            None,
            gateway::runtime::control::bind(&config.gateway.runtime_dir)
                .expect("control socket binds"),
            gateway::runtime::status::BoardStatus::default(),
            None,
        )
        .expect("pipeline starts");
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(forward_signals(tx));
        let outbox = pipeline.outbox.clone();
        let producer = tokio::spawn(async move {
            let mut stdout = std::io::stdout();
            let mut i = start;
            while i < start + count {
                let end = (i + 200).min(start + count);
                let mut receipts = Vec::new();
                while i < end {
                    match outbox.accept(system_tests::uplink::message(i, channels)) {
                        Ok(r) => {
                            receipts.push((i, r));
                            i += 1;
                        }
                        Err(gateway::outbox::IngestError::Busy { retry_after }) => {
                            tokio::time::sleep(
                                retry_after.min(std::time::Duration::from_millis(50)),
                            )
                            .await;
                            break;
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                for (n, r) in receipts {
                    let seq = r.await.expect("durable");
                    let _ = writeln!(stdout, "ACK {n} {seq}");
                }
                let _ = stdout.flush();
            }
            let mut committed = outbox.committed();
            loop {
                if outbox.stats().queued == 0 {
                    let _ = writeln!(stdout, "DRAINED");
                    let _ = stdout.flush();
                    break;
                }
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(100),
                    committed.changed(),
                )
                .await;
            }
        });
        let outcome = supervisor.run(rx, config.gateway.drain_timeout.get()).await;
        producer.abort();
        drop(pipeline);
        eprintln!("ingest_load: {outcome:?}");
    });
    std::process::ExitCode::SUCCESS
}

async fn forward_signals(tx: mpsc::Sender<Signal>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        let sig = tokio::select! {
            _ = term.recv() => Signal::Terminate,
            _ = hup.recv() => Signal::Reload,
        };
        if tx.send(sig).await.is_err() {
            break;
        }
    }
}
