//! The standalone auth store on the real binary: the provisioning CLI against a state dir while
//! the daemon runs and another connection holds the database open; the daemon picking CLI
//! changes up within a second; the dev demo sensor; and refusal of a corrupt, truncated or
//! too-new `auth.db` (exit 78, file named, bytes unchanged).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use system_tests::{Daemon, edgegw};

fn cli(dir: &Path, args: &[&str]) -> Output {
    edgegw(dir)
        .arg("--dev")
        .args(args)
        .output()
        .expect("cannot run edgegw")
}

fn ok_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = cli(dir, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fails(dir: &Path, args: &[&str], code: i32, needle: &str) {
    let out = cli(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join(".edgegw-dev/state/auth.db")
}

fn start_dev(dir: &Path) -> Daemon {
    let mut cmd = edgegw(dir);
    cmd.args(["run", "--dev"]);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("ready", Duration::from_secs(20));
    daemon
}

fn stop(mut daemon: Daemon) {
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("no exit");
    assert_eq!(status.code(), Some(0), "{}", daemon.log().join("\n"));
}

#[test]
fn cli_provisions_while_the_daemon_runs_and_a_reader_holds_the_db() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut daemon = start_dev(dir);
    let demo_line = daemon.wait_for_log("demo sensor provisioned", Duration::from_secs(1));
    let demo_secret = system_tests::demo_secret(&demo_line);
    assert_eq!(demo_secret.len(), 43, "{demo_line}");

    // Another connection holds a read transaction open the whole time.
    let reader = rusqlite::Connection::open(db_path(dir)).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let before: i64 = reader
        .query_row("SELECT count(*) FROM clients", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, 1);

    let added = ok_json(
        dir,
        &[
            "client",
            "add",
            "sensor-1",
            "--name",
            "Boiler room",
            "--metadata",
            r#"{"room":"b1"}"#,
        ],
    );
    let secret = added["secret"].as_str().expect("secret printed by add");
    assert!(secret.len() >= 43, "{added}");
    assert_eq!(added["identity"], "sensor-1");
    assert_eq!(added["status"], "enabled");
    assert_eq!(added["metadata"]["room"], "b1");
    let id = added["id"].as_str().unwrap().to_owned();
    daemon.wait_for_log("clients=2 disabled=0", Duration::from_secs(1));

    // Disabled by the CLI: the running daemon knows within a second.
    let disabled = ok_json(dir, &["client", "disable", "sensor-1"]);
    assert_eq!(disabled["status"], "disabled");
    daemon.wait_for_log("clients=2 disabled=1", Duration::from_secs(1));
    ok_json(dir, &["client", "enable", &id]);
    daemon.wait_for_log(
        "clients=2 disabled=0 channels=1 connections=1 generation",
        Duration::from_secs(1),
    );

    let channel = ok_json(dir, &["channel", "add", "boiler", "--domain", "dom-1"]);
    assert_eq!(channel["domain_id"], "dom-1");
    // Neither flag means both.
    let both = ok_json(dir, &["connect", "sensor-1", "boiler"]);
    assert_eq!(
        (both["publish"].as_bool(), both["subscribe"].as_bool()),
        (Some(true), Some(true))
    );
    let left = ok_json(dir, &["disconnect", "sensor-1", "boiler", "--publish"]);
    assert_eq!(
        (left["publish"].as_bool(), left["subscribe"].as_bool()),
        (Some(false), Some(true))
    );
    daemon.wait_for_log("channels=2 connections=2", Duration::from_secs(1));

    let shown = ok_json(dir, &["client", "show", "sensor-1"]);
    assert_eq!(shown["connections"][0]["channel"], "boiler");
    assert!(
        !shown.to_string().contains(secret),
        "show leaked the secret"
    );
    let human = cli(dir, &["client", "show", "sensor-1"]);
    assert!(human.status.success());
    assert!(!String::from_utf8_lossy(&human.stdout).contains(secret));
    let list = ok_json(dir, &["client", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert!(!list.to_string().contains(secret) && !list.to_string().contains(&demo_secret));
    let channels = ok_json(dir, &["channel", "list"]);
    assert_eq!(channels.as_array().map(Vec::len), Some(2));

    let rotated = ok_json(dir, &["client", "rotate-secret", "sensor-1"]);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.len() >= 43 && new_secret != secret);

    // Clear errors: duplicates and unknown names exit 1, bad input 64.
    fails(dir, &["client", "add", "sensor-1"], 1, "already exists");
    fails(
        dir,
        &["client", "add", "sensor-2", "--secret", "short-secret"],
        64,
        "too short",
    );
    fails(
        dir,
        &["client", "add", "sensor-2", "--metadata", "{broken"],
        64,
        "not valid JSON",
    );
    fails(dir, &["client", "show", "ghost"], 1, "no client `ghost`");
    fails(
        dir,
        &["connect", "sensor-1", "ghost-channel"],
        1,
        "no channel `ghost-channel`",
    );
    fails(dir, &["channel", "add", "boiler"], 1, "already exists");

    // The reader's snapshot was never disturbed, and it did not block the writers.
    let still: i64 = reader
        .query_row("SELECT count(*) FROM clients", [], |r| r.get(0))
        .unwrap();
    assert_eq!(still, 1);
    reader.execute_batch("COMMIT").unwrap();

    ok_json(dir, &["client", "remove", "sensor-1"]);
    ok_json(dir, &["channel", "remove", "boiler"]);
    daemon.wait_for_log(
        "clients=1 disabled=0 channels=1 connections=1",
        Duration::from_secs(1),
    );
    let log = daemon.log().join("\n");
    for s in [secret, new_secret] {
        assert!(!log.contains(s), "daemon log contains a client secret");
    }
    stop(daemon);

    // Second start: the demo sensor exists, its secret is not printed again.
    let mut daemon = start_dev(dir);
    daemon.wait_for_log("auth store open", Duration::from_secs(1));
    assert!(
        !daemon.log().join("\n").contains(&demo_secret),
        "demo secret printed again"
    );
    stop(daemon);
    let out = cli(dir, &["client", "show", "demo-sensor"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&demo_secret));
    let out = cli(dir, &["client", "rotate-secret", "demo-sensor"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("new secret for demo-sensor"));
}

/// A state dir whose auth.db spans many pages (checkpointed: no CLI is running).
fn populated(dir: &Path) -> Vec<u8> {
    for i in 0..40 {
        let out = cli(
            dir,
            &[
                "client",
                "add",
                &format!("bulk-{i:02}"),
                "--metadata",
                &format!(r#"{{"pad":"{}"}}"#, "x".repeat(200)),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bytes = std::fs::read(db_path(dir)).expect("read auth.db");
    assert!(bytes.len() >= 4 * 4096, "{}", bytes.len());
    bytes
}

fn run_refuses(dir: &Path, contents: &[u8], needle: &str) {
    let path = db_path(dir);
    std::fs::write(&path, contents).expect("write auth.db");
    let started = Instant::now();
    let out = edgegw(dir)
        .args(["run", "--dev"])
        .output()
        .expect("run edgegw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(".edgegw-dev/state/auth.db") && stderr.contains(needle),
        "{stderr}"
    );
    assert!(!stderr.contains("ready"), "{stderr}");
    assert_eq!(
        std::fs::read(&path).expect("read auth.db"),
        contents,
        "auth.db was modified"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn run_refuses_a_truncated_corrupt_or_newer_auth_db_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let good = populated(dir);
    run_refuses(dir, &good[..good.len() / 2], "corrupt");
    run_refuses(dir, &good[..good.len() - 4096], "corrupt");
    run_refuses(dir, &[], "corrupt");
    let mut garbage = good.clone();
    for b in &mut garbage[4096..] {
        *b = 0xa5;
    }
    run_refuses(dir, &garbage, "corrupt");

    std::fs::write(db_path(dir), &good).unwrap();
    {
        let conn = rusqlite::Connection::open(db_path(dir)).unwrap();
        conn.execute_batch("PRAGMA user_version = 7; PRAGMA journal_mode = DELETE;")
            .unwrap();
    }
    let newer = std::fs::read(db_path(dir)).unwrap();
    run_refuses(dir, &newer, "schema version 7");

    // The intact file still works.
    std::fs::write(db_path(dir), &good).unwrap();
    let out = cli(dir, &["client", "show", "bulk-07"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run as root against a state directory that belongs to the service user, a provisioning
/// command hands the files it created to that user, so the daemon (as that user) can open
/// them. Here the service user is `nobody` (65534); the check reads the store as `nobody`.
#[test]
fn provisioning_as_root_leaves_the_state_files_to_the_state_dirs_owner() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id");
    if uid.stdout.trim_ascii() != b"0" {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");
    let run = |args: &[&str]| {
        edgegw(dir.path())
            .env("EDGEGW_GATEWAY_STATE_DIR", &state)
            .env("EDGEGW_GATEWAY_RUNTIME_DIR", dir.path().join("run"))
            .args(args)
            .output()
            .expect("cannot run edgegw")
    };
    let out = run(&["channel", "add", "chan-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("handed to its owner"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for entry in std::fs::read_dir(&state).expect("read state") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65534),
            "{} still belongs to root",
            entry.path().display()
        );
    }
    // The service user can work with what root created.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(system_tests::edgegw_bin())
        .args(["--json", "channel", "list"])
        .env("EDGEGW_GATEWAY_STATE_DIR", &state)
        .env("EDGEGW_GATEWAY_RUNTIME_DIR", dir.path().join("run"))
        .output()
        .expect("setpriv");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("chan-a"),
        "as nobody: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `client add --id` (a UUID, SuperMQ's rule) and `--tag`, for clients and channels: honoured,
/// a taken id refused, a non-UUID refused, tags in `--json` and in the list tables; times in
/// `--json` are RFC 3339 like the API's.
#[test]
fn chosen_client_ids_and_tags_from_the_command_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let id = "0b7d3c1e-5f2a-4e6b-8c9d-1a2b3c4d5e6f";
    let added = ok_json(
        dir,
        &[
            "client", "add", "pump", "--id", id, "--tag", "water", "--tag", "roof",
        ],
    );
    assert_eq!(added["id"], id);
    assert_eq!(added["tags"], serde_json::json!(["water", "roof"]));
    system_tests::api::rfc3339(&added["created_at"]);
    fails(
        dir,
        &["client", "add", "pump-2", "--id", id],
        1,
        "already exists",
    );
    fails(
        dir,
        &["client", "add", "pump-3", "--id", "pump"],
        64,
        "UUID",
    );
    let ch = ok_json(dir, &["channel", "add", "tank", "--tag", "level"]);
    assert_eq!(ch["tags"], serde_json::json!(["level"]));
    system_tests::api::rfc3339(&ch["updated_at"]);
    let list = cli(dir, &["client", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.ends_with("water,roof"), "{text}");
    let list = cli(dir, &["channel", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines().next().is_some_and(|h| h.ends_with("TAGS")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("tank") && l.ends_with("level")),
        "{text}"
    );
}
