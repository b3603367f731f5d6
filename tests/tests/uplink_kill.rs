//! SIGKILL at random moments under load, restarted on the same outbox, while the uplink
//! drains into a real mosquitto: every message whose Receipt completed (printed `ACK`) arrives,
//! in order per channel; duplicates are allowed and counted.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use system_tests::Daemon;
use system_tests::mosquitto::{Mosquitto, Subscriber};
use system_tests::pki::Pki;
use system_tests::uplink::{check_delivery, env};

fn ingest_load(root: &Path, vars: &[(String, String)], start: u64, count: u64) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingest_load"));
    cmd.current_dir(root)
        .args([start.to_string(), count.to_string(), "4".into()]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EDGEGW_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(vars.iter().cloned());
    Daemon::start(cmd)
}

/// A small xorshift generator seeded from the clock: different kill points on every run,
/// and the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    let mut sub = Subscriber::start(&broker, &pki, "m/#");
    let vars = env(dir.path(), &broker, &pki);
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let mut acked = BTreeSet::new();
    const ROUNDS: u64 = 10;
    const PER_ROUND: u64 = 3000;
    for round in 0..ROUNDS {
        let start = round * 100_000;
        let mut gw = ingest_load(dir.path(), &vars, start, PER_ROUND);
        // Kill somewhere between the 50th and the 2500th receipt of this round.
        let kill_after = 50 + rng.next(2450);
        gw.wait_for_log(
            &format!("ACK {} ", start + kill_after),
            Duration::from_secs(60),
        );
        gw.signal("KILL");
        assert!(gw.wait_exit(Duration::from_secs(5)).is_some());
        for line in gw.log() {
            if let Some(rest) = line.strip_prefix("ACK ")
                && let Some(n) = rest.split(' ').next()
            {
                acked.insert(n.parse::<u64>().unwrap());
            }
        }
        eprintln!("round {round}: killed after ACK {}", start + kill_after);
    }
    // A last run without new messages drains what is left.
    let mut gw = ingest_load(dir.path(), &vars, 0, 0);
    gw.wait_for_log("DRAINED", Duration::from_secs(120));
    let arrived = sub.wait_until(Duration::from_secs(60), |l| {
        check_delivery(l, acked.iter().copied()).missing.is_empty()
    });
    let d = check_delivery(&sub.lines, acked.iter().copied());
    assert!(
        arrived,
        "{} acknowledged messages lost: {:?}",
        d.missing.len(),
        &d.missing[..d.missing.len().min(20)]
    );
    assert!(
        d.out_of_order.is_empty(),
        "{:?}",
        &d.out_of_order[..d.out_of_order.len().min(20)]
    );
    eprintln!(
        "kill -9 x{ROUNDS}: {} acknowledged, {} received, {} duplicates",
        acked.len(),
        d.received,
        d.duplicates
    );
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(15)).is_some());
}
