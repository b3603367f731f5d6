//! The fault suite (`scripts/faults`): a real `edgegw run --dev` with its CoAP listeners and
//! its uplink to a real mosquitto (mTLS, loopback, started here), under load from simulated
//! CoAP sensors (confirmable POSTs; a 2.04 means durable). Scenarios:
//!
//! 1. `kill`: SIGKILL the daemon at random moments N times, restarting it on the same state;
//! 2. `broker`: stop the upstream broker for a while under load, then start it again;
//! 3. `disk`: the state dir on a small tmpfs (root only), filled up under load, then freed;
//! 4. `corrupt`: garbage in `outbox.db` / `auth.db` before start: a clear refusal is expected;
//! 5. `flood`: malformed CoAP and DTLS datagrams next to the legitimate load.
//!
//! For each it compares the messages the sensors got a 2.04 for with what a `mosquitto_sub`
//! on the upstream received (none may be missing; duplicates are counted, allowed), and says
//! whether the daemon stayed up (or refused clearly). Prints a table; exits 1 if any failed.
//!
//! usage: faults [quick|full] [SCENARIO...]   (`$SYSTEM_TESTS_EDGEGW_BIN` picks the binary)

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use system_tests::mosquitto::{Mosquitto, Subscriber};
use system_tests::pki::Pki;
use system_tests::uplink::check_delivery;
use system_tests::{Daemon, edgegw, free_udp_port};

const SENSORS: u64 = 4;
/// Sensor `k` numbers its messages from `k * STRIDE`.
const STRIDE: u64 = 100_000_000;

/// A small xorshift generator; the seed is printed so a run can be replayed (`FAULTS_SEED`).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.below(256) as u8).collect()
    }
}

/// One scenario's line of the table.
struct Row {
    name: String,
    acked: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    daemon: String,
    pass: bool,
}

/// A gateway rooted in `root` (state in `state`), its ports, the client secret.
struct Gw {
    root: PathBuf,
    vars: Vec<(String, String)>,
    coap: u16,
    coaps: u16,
    secret: String,
}

impl Gw {
    fn new(root: &Path, state: &Path, broker: &Mosquitto, pki: &Pki) -> Self {
        std::fs::create_dir_all(root).expect("root dir");
        let (coap, coaps) = (free_udp_port(), free_udp_port());
        let dtls = root.join("dtls");
        let dtls_id = system_tests::pki::self_signed(&dtls, "gw", 30);
        let s = |p: &Path| p.display().to_string();
        let vars = vec![
            ("EDGEGW_GATEWAY_STATE_DIR".into(), s(state)),
            ("EDGEGW_GATEWAY_RUNTIME_DIR".into(), s(&root.join("run"))),
            ("EDGEGW_GATEWAY_DOMAIN_ID".into(), "dom".into()),
            ("EDGEGW_GATEWAY_LOG_LEVEL".into(), "warn".into()),
            ("EDGEGW_UPLINK_URL".into(), broker.url()),
            ("EDGEGW_UPLINK_CLIENT_CERT".into(), s(&pki.client.cert)),
            ("EDGEGW_UPLINK_CLIENT_KEY".into(), s(&pki.client.key)),
            ("EDGEGW_UPLINK_CA_CERTS".into(), s(&pki.ca.cert)),
            ("EDGEGW_UPLINK_CLIENT_ID".into(), "gw-faults".into()),
            ("EDGEGW_UPLINK_RECONNECT_MAX".into(), "1s".into()),
            ("EDGEGW_COAP_BIND".into(), format!("127.0.0.1:{coap}")),
            ("EDGEGW_COAP_DTLS_BIND".into(), format!("127.0.0.1:{coaps}")),
            ("EDGEGW_COAP_DTLS_CERT".into(), s(&dtls_id.cert)),
            ("EDGEGW_COAP_DTLS_KEY".into(), s(&dtls_id.key)),
        ];
        let mut gw = Self {
            root: root.to_owned(),
            vars,
            coap,
            coaps,
            secret: String::new(),
        };
        let added = gw.cli(&["--json", "client", "add", "sensor"]);
        let v: serde_json::Value = serde_json::from_str(&added).expect("json from client add");
        gw.secret = v["secret"].as_str().expect("secret").to_owned();
        for k in 0..SENSORS {
            let ch = format!("ch{k}");
            gw.cli(&["channel", "add", &ch]);
            gw.cli(&["connect", "sensor", &ch]);
        }
        gw
    }

    fn command(&self) -> Command {
        let mut cmd = edgegw(&self.root);
        cmd.arg("--dev").envs(self.vars.iter().cloned());
        cmd
    }

    fn cli(&self, args: &[&str]) -> String {
        system_tests::stdout_of(self.command().args(args))
    }

    /// Starts `edgegw run` and waits until its CoAP listener answers a ping.
    fn start(&self) -> Daemon {
        let mut cmd = self.command();
        cmd.arg("run");
        let mut d = Daemon::start(cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ping(self.coap) {
            if let Some(status) = d.wait_exit(Duration::ZERO) {
                panic!("edgegw exited at start ({status}):\n{}", d.log().join("\n"));
            }
            assert!(Instant::now() < deadline, "edgegw did not start");
        }
        d
    }
}

/// An empty CON (CoAP ping) answered by a RST within 100 ms.
fn ping(port: u16) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.send_to(&[0x40, 0, 0, 1], ("127.0.0.1", port));
    let mut b = [0u8; 16];
    s.recv(&mut b).is_ok()
}

fn post(mid: u16, secret: &str, channel: &str, n: u64) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    for seg in ["m", "dom", "c", channel, "t"] {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.add_option(CoapOption::UriQuery, format!("auth={secret}").into_bytes());
    p.payload = n.to_string().into_bytes();
    p.to_bytes().expect("encode")
}

/// Sensors posting in a closed loop (one request in flight each, `pace` between messages):
/// a message counts as acknowledged only when its 2.04 arrived.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    refused: Arc<AtomicU64>,
    codes: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    unanswered: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, secret: &str, pace: Duration, base: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let codes = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let unanswered = Arc::new(AtomicU64::new(0));
        let gw: SocketAddr = ([127, 0, 0, 1], port).into();
        let threads = (0..SENSORS)
            .map(|k| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let (refused, unanswered) = (refused.clone(), unanswered.clone());
                let codes = codes.clone();
                let secret = secret.to_owned();
                std::thread::spawn(move || {
                    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
                    sock.set_read_timeout(Some(Duration::from_millis(500)))
                        .expect("timeout");
                    let channel = format!("ch{k}");
                    let mut buf = [0u8; 1500];
                    let mut n = base + k * STRIDE;
                    let mut mid = (k as u16).wrapping_mul(16381);
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        mid = mid.wrapping_add(1);
                        let _ = sock.send_to(&post(mid, &secret, &channel, n), gw);
                        let answer = loop {
                            match sock.recv(&mut buf) {
                                Ok(len) => match Packet::from_bytes(&buf[..len]) {
                                    Ok(p) if p.header.message_id == mid => {
                                        break Some(p.header.code.to_string());
                                    }
                                    _ => {}
                                },
                                Err(_) => break None,
                            }
                        };
                        match answer.as_deref() {
                            Some("2.04") => acked.lock().expect("lock").push(n),
                            Some(code) => {
                                *codes
                                    .lock()
                                    .expect("lock")
                                    .entry(code.to_owned())
                                    .or_default() += 1;
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                unanswered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Load shaping, not synchronisation.
                        std::thread::sleep(pace);
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            refused,
            codes,
            unanswered,
            threads,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Stops the sensors; returns the acknowledged message numbers.
    fn finish(self) -> (Vec<u64>, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let acked = std::mem::take(&mut *self.acked.lock().expect("lock"));
        (
            acked,
            self.refused.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed),
        )
    }
}

/// Waits (up to `wait`) until every acknowledged message reached the subscriber; the row.
fn verdict(
    name: &str,
    sub: &mut Subscriber,
    acked: &[u64],
    wait: Duration,
    daemon_ok: bool,
) -> Row {
    let set: BTreeSet<u64> = acked.iter().copied().collect();
    sub.wait_until(wait, |l| {
        check_delivery(l, set.iter().copied()).missing.is_empty()
    });
    let d = check_delivery(&sub.lines, set.iter().copied());
    let lost = d.missing.len();
    if lost > 0 {
        eprintln!(
            "{name}: {lost} acknowledged messages never arrived, e.g. {:?}",
            &d.missing[..lost.min(10)]
        );
    }
    Row {
        name: name.to_owned(),
        acked: set.len(),
        delivered: set.len() - lost,
        lost,
        duplicates: d.duplicates,
        daemon: String::new(),
        pass: lost == 0 && daemon_ok,
    }
}

struct Suite {
    dir: PathBuf,
    pki: Pki,
    broker: Mosquitto,
    full: bool,
    rng: Rng,
    pace: Duration,
    scenario: u64,
}

impl Suite {
    /// Message numbers never repeat across scenarios (the subscriber's session is shared).
    fn next_base(&mut self) -> u64 {
        self.scenario += 1;
        self.scenario * SENSORS * STRIDE
    }

    /// A fresh subscriber per scenario (its own lines only) and a fresh gateway.
    fn subscriber(&self) -> Subscriber {
        Subscriber::start(&self.broker, &self.pki, "m/#")
    }

    fn kill(&mut self) -> Row {
        let rounds = if self.full { 10 } else { 4 };
        let root = self.dir.join("kill");
        let gw = Gw::new(&root, &root.join("state"), &self.broker, &self.pki);
        let mut sub = self.subscriber();
        let mut daemon = gw.start();
        let load = Load::start(gw.coap, &gw.secret, self.pace, self.next_base());
        for _ in 0..rounds {
            let before = load.acked_count();
            // Random moment: after 20..1000 more acknowledgements.
            let after = 20 + self.rng.below(980) as usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            while load.acked_count() < before + after && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            daemon.signal("KILL");
            let _ = daemon.wait_exit(Duration::from_secs(5));
            daemon = gw.start();
        }
        let (acked, _, _) = load.finish();
        let mut row = verdict(
            &format!("1 SIGKILL x{rounds}"),
            &mut sub,
            &acked,
            Duration::from_secs(90),
            true,
        );
        let alive = daemon.wait_exit(Duration::ZERO).is_none();
        row.daemon = format!("restarted {rounds}x, {}", up(alive));
        row.pass &= alive;
        daemon.signal("TERM");
        let _ = daemon.wait_exit(Duration::from_secs(15));
        row
    }

    fn broker_outage(&mut self) -> Row {
        let secs = if self.full { 60 } else { 10 };
        let root = self.dir.join("broker");
        let gw = Gw::new(&root, &root.join("state"), &self.broker, &self.pki);
        let mut sub = self.subscriber();
        let mut daemon = gw.start();
        let load = Load::start(gw.coap, &gw.secret, self.pace, self.next_base());
        std::thread::sleep(Duration::from_secs(2));
        self.broker.stop();
        let at_stop = load.acked_count();
        std::thread::sleep(Duration::from_secs(secs));
        let during = load.acked_count() - at_stop;
        self.broker.restart();
        std::thread::sleep(Duration::from_secs(2));
        let (acked, _, _) = load.finish();
        let alive = daemon.wait_exit(Duration::ZERO).is_none();
        let mut row = verdict(
            &format!("2 upstream down {secs}s"),
            &mut sub,
            &acked,
            Duration::from_secs(120),
            alive,
        );
        row.daemon = format!("{}, {during} acked while down", up(alive));
        daemon.signal("TERM");
        let _ = daemon.wait_exit(Duration::from_secs(15));
        row
    }

    fn disk_full(&mut self) -> Row {
        let name = "3 state disk full".to_owned();
        let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
        if !uid.is_ok_and(|u| u.trim_ascii() == b"0") {
            return Row {
                name,
                acked: 0,
                delivered: 0,
                lost: 0,
                duplicates: 0,
                daemon: "SKIPPED: needs root (tmpfs mount)".into(),
                pass: true,
            };
        }
        let root = self.dir.join("disk");
        let mnt = root.join("statefs");
        std::fs::create_dir_all(&mnt).expect("dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "edgegw-faults"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            return Row {
                name,
                acked: 0,
                delivered: 0,
                lost: 0,
                duplicates: 0,
                daemon: "SKIPPED: mount -t tmpfs failed".into(),
                pass: true,
            };
        }
        let _unmount = Unmount(mnt.clone());
        let gw = Gw::new(&root, &mnt.join("state"), &self.broker, &self.pki);
        let mut sub = self.subscriber();
        let mut daemon = gw.start();
        let load = Load::start(gw.coap, &gw.secret, self.pace, self.next_base());
        std::thread::sleep(Duration::from_secs(2));
        // Fill what is left of the file system, and stop the upstream so that the outbox
        // has to grow (SQLite reuses its WAL otherwise and never needs a new page).
        self.broker.stop();
        let filler = mnt.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let refused_before = load.refused.load(Ordering::Relaxed);
        let acked_before = load.acked_count();
        std::thread::sleep(Duration::from_secs(if self.full { 20 } else { 5 }));
        let refused_full = load.refused.load(Ordering::Relaxed) - refused_before;
        let acked_full = load.acked_count() - acked_before;
        let _ = std::fs::remove_file(&filler);
        self.broker.restart();
        std::thread::sleep(Duration::from_secs(3));
        let acked_after_free = load.acked_count();
        std::thread::sleep(Duration::from_secs(2));
        let recovered = load.acked_count() > acked_after_free;
        let codes = format!("{:?}", load.codes.lock().expect("lock"));
        let (acked, _, _) = load.finish();
        let alive = daemon.wait_exit(Duration::ZERO).is_none();
        if !recovered {
            let log = daemon.log();
            eprintln!(
                "disk: edgegw log (last lines):\n{}",
                log[log.len().saturating_sub(8)..].join("\n")
            );
        }
        let mut row = verdict(
            &name,
            &mut sub,
            &acked,
            Duration::from_secs(60),
            alive && recovered,
        );
        row.daemon = format!(
            "{}; while full: {acked_full} acked, {refused_full} refused {codes}; {}",
            up(alive),
            if recovered {
                "accepts again when freed"
            } else {
                "NOT accepting after space freed"
            }
        );
        daemon.signal("TERM");
        let _ = daemon.wait_exit(Duration::from_secs(15));
        row
    }

    fn corrupt(&mut self) -> Vec<Row> {
        let mut rows = Vec::new();
        for file in ["outbox.db", "auth.db"] {
            let root = self
                .dir
                .join(format!("corrupt-{}", file.trim_end_matches(".db")));
            let state = root.join("state");
            let gw = Gw::new(&root, &state, &self.broker, &self.pki);
            // One clean run so both databases exist with content.
            let mut daemon = gw.start();
            daemon.signal("TERM");
            let _ = daemon.wait_exit(Duration::from_secs(15));
            let path = state.join(file);
            let mut bytes = std::fs::read(&path).unwrap_or_default();
            let garbage = self.rng.bytes(bytes.len().clamp(512, 4096));
            let len = garbage.len().min(bytes.len());
            bytes[..len].copy_from_slice(&garbage[..len]);
            if bytes.is_empty() {
                bytes = garbage;
            }
            std::fs::write(&path, &bytes).expect("corrupt");
            let mut cmd = gw.command();
            cmd.arg("run");
            let mut d = Daemon::start(cmd);
            let status = d.wait_exit(Duration::from_secs(20));
            let log = d.log().join("\n");
            let refused = matches!(status, Some(s) if !s.success());
            let mentions = log.contains(file);
            let first = log
                .lines()
                .find(|l| l.contains(file) && !l.contains(" WARN "))
                .or_else(|| log.lines().last())
                .unwrap_or("")
                .replace("edgegw: error: ", "")
                .replace(&state.display().to_string(), "$STATE")
                .chars()
                .take(110)
                .collect::<String>();
            rows.push(Row {
                name: format!("4 corrupt {file}"),
                acked: 0,
                delivered: 0,
                lost: 0,
                duplicates: 0,
                daemon: match status {
                    Some(s) if !s.success() => {
                        format!("refused, exit {}: {first}", s.code().unwrap_or(-1))
                    }
                    Some(_) => "exited 0 (no refusal)".into(),
                    None => "KEPT RUNNING on a corrupt file".into(),
                },
                pass: refused && mentions,
            });
        }
        rows
    }

    fn flood(&mut self) -> Row {
        let root = self.dir.join("flood");
        let gw = Gw::new(&root, &root.join("state"), &self.broker, &self.pki);
        let mut sub = self.subscriber();
        let mut daemon = gw.start();
        let load = Load::start(gw.coap, &gw.secret, self.pace, self.next_base());
        let per_kind: usize = if self.full { 200_000 } else { 20_000 };
        let socks: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let start = Instant::now();
        let acked_before = load.acked_count();
        for i in 0..per_kind {
            let s = &socks[i % socks.len()];
            let len = 1 + self.rng.below(300) as usize;
            let mut coap = self.rng.bytes(len);
            if i % 2 == 0 {
                // Version 1 and a request code: deeper into the decoder.
                coap[0] = 0x40 | (coap[0] & 0x3f);
                if len > 1 {
                    coap[1] = 0x02;
                }
            }
            let _ = s.send_to(&coap, ("127.0.0.1", gw.coap));
            let dlen = 14 + self.rng.below(200) as usize;
            let mut dtls = self.rng.bytes(dlen);
            // A DTLS 1.2 record header (handshake / alert / app data), random after it.
            dtls[0] = [0x16, 0x15, 0x17, 0x14][i % 4];
            dtls[1] = 0xfe;
            dtls[2] = 0xfd;
            if i % 3 == 0 {
                // A ClientHello-looking handshake header.
                dtls[13] = 0x01;
            }
            let _ = s.send_to(&dtls, ("127.0.0.1", gw.coaps));
        }
        let secs = start.elapsed().as_secs_f64();
        let during = load.acked_count() - acked_before;
        // The socket's queue still holds the flood's tail: the daemon must answer again once it
        // has drained it (a ping every 100 ms for up to 3 s), not within one 100 ms try.
        let answers_ping = (0..30).any(|_| ping(gw.coap));
        std::thread::sleep(Duration::from_secs(1));
        let (acked, _, _) = load.finish();
        let alive = daemon.wait_exit(Duration::ZERO).is_none();
        let mut row = verdict(
            &format!("5 flood {}k+{}k bad", per_kind / 1000, per_kind / 1000),
            &mut sub,
            &acked,
            Duration::from_secs(60),
            alive && answers_ping,
        );
        row.daemon = format!(
            "{}; {:.0} bad dgrams/s; {during} acked meanwhile",
            match (alive, answers_ping) {
                (false, _) => "DIED",
                (true, false) => "NO ANSWER to CoAP ping within 3 s",
                (true, true) => up(true),
            },
            2.0 * per_kind as f64 / secs
        );
        daemon.signal("TERM");
        let _ = daemon.wait_exit(Duration::from_secs(15));
        row
    }
}

fn up(alive: bool) -> &'static str {
    if alive { "stayed up" } else { "DIED" }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(system_tests::BIN_OVERRIDE).is_none() {
        let exe = std::env::current_exe().expect("invariant: a path");
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var(system_tests::BIN_OVERRIDE, exe.with_file_name("edgegw")) };
    }
    let mut args = std::env::args().skip(1).peekable();
    let full = match args.peek().map(String::as_str) {
        Some("full") => {
            args.next();
            true
        }
        Some("quick") => {
            args.next();
            false
        }
        _ => false,
    };
    let wanted: Vec<String> = args.collect();
    let want = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
    println!(
        "fault suite ({} mode) · edgegw {} · FAULTS_SEED={seed} · {SENSORS} CoAP CON sensors",
        if full { "full" } else { "quick" },
        system_tests::edgegw_bin().display()
    );
    let mut suite = Suite {
        dir: dir.path().to_owned(),
        pki,
        broker,
        full,
        rng: Rng(seed),
        pace: Duration::from_millis(2),
        scenario: 0,
    };
    let mut rows = Vec::new();
    let started = Instant::now();
    if want("kill") {
        rows.push(suite.kill());
    }
    if want("broker") {
        rows.push(suite.broker_outage());
    }
    if want("disk") {
        rows.push(suite.disk_full());
    }
    if want("corrupt") {
        rows.extend(suite.corrupt());
    }
    if want("flood") {
        rows.push(suite.flood());
    }
    println!();
    println!(
        "{:<22} {:>7} {:>9} {:>5} {:>5}  {:<4}  daemon",
        "scenario", "acked", "delivered", "lost", "dups", "ok"
    );
    for r in &rows {
        println!(
            "{:<22} {:>7} {:>9} {:>5} {:>5}  {:<4}  {}",
            r.name,
            r.acked,
            r.delivered,
            r.lost,
            r.duplicates,
            if r.pass { "PASS" } else { "FAIL" },
            r.daemon
        );
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    if rows.iter().all(|r| r.pass) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
