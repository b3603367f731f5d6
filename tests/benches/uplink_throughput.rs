//! Benchmark (prints numbers; asserts nothing about speed): outbox group commits with fsync,
//! and sustained end-to-end messages/s from the Ingest API into a real mosquitto over mTLS
//! (counted at PUBACK, i.e. when the broker has taken responsibility and the outbox entry is
//! deleted). Run: `cargo bench -p system-tests --bench uplink_throughput` (see README,
//! "Benchmarks", for the numbers and the machine).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::Durability;
use system_tests::mosquitto::Mosquitto;
use system_tests::pki::Pki;
use system_tests::uplink::{Gateway, config, env, message};

const PRODUCERS: u64 = 64;

/// `PRODUCERS` tasks, each accepting and awaiting its receipt before the next message (a
/// sensor waiting for 2.04), `total` messages in all. Returns elapsed time.
async fn produce(gw: &Arc<Gateway>, total: u64) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < total {
                gw.ingest(message(i, 16)).await;
                i += PRODUCERS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
    started.elapsed()
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let mut broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "machine: {} CPUs ({}), outbox on {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default(),
        dir.path().display()
    );
    println!(
        "method: {PRODUCERS} concurrent producers, each awaiting its Receipt; 16 channels; 2-4 byte payloads"
    );

    for durability in [Durability::Fsync, Durability::Os] {
        // Outbox only: the uplink is down (broker stopped), so nothing is deleted meanwhile.
        broker.stop();
        let root = dir.path().join(format!("outbox-{durability:?}"));
        let mut vars = env(&root, &broker, &pki);
        vars.push((
            "EDGEGW_OUTBOX_DURABILITY".into(),
            format!("{durability:?}").to_lowercase(),
        ));
        let cfg = config(&root, &vars);
        let total = 50_000;
        let (elapsed, commits) = rt.block_on(async {
            let gw = Arc::new(Gateway::start(&cfg));
            let elapsed = produce(&gw, total).await;
            let commits = gw.pipeline.outbox.stats().commits_total;
            (elapsed, commits)
        });
        println!(
            "outbox durability={durability:?}: {total} messages durable in {:.2}s = {:.0} msgs/s, {commits} commits = {:.0} commits/s ({:.1} msgs/commit)",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            commits as f64 / elapsed.as_secs_f64(),
            total as f64 / commits.max(1) as f64,
        );
        broker.restart();
    }

    // End to end: ingest while the uplink delivers; time until the last PUBACK.
    let root = dir.path().join("e2e");
    let cfg = config(&root, &env(&root, &broker, &pki));
    let total = 100_000;
    let (ingest, e2e, commits) = rt.block_on(async {
        let gw = Arc::new(Gateway::start(&cfg));
        // Let the uplink connect first.
        while gw.pipeline.status.report().uplink.state != gateway::uplink::UplinkState::Connected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let ingest = produce(&gw, total).await;
        let mut committed = gw.pipeline.outbox.committed();
        while gw.pipeline.outbox.stats().acked_total < total {
            let _ = tokio::time::timeout(Duration::from_millis(5), committed.changed()).await;
        }
        (
            ingest,
            started.elapsed(),
            gw.pipeline.outbox.stats().commits_total,
        )
    });
    println!(
        "end to end (fsync, mqtts to mosquitto on loopback, QoS 1, inflight 64): {total} messages accepted in {:.2}s ({:.0} msgs/s), all PUBACKed after {:.2}s = {:.0} msgs/s sustained; {commits} outbox commits ({:.0}/s, inserts and deletes)",
        ingest.as_secs_f64(),
        total as f64 / ingest.as_secs_f64(),
        e2e.as_secs_f64(),
        total as f64 / e2e.as_secs_f64(),
        commits as f64 / e2e.as_secs_f64(),
    );
}
