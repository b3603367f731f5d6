//! The foundation's promises, on the real binary: help and version, check-config with a good
//! and a bad configuration (exit 78 naming the problem), and `run --dev` start/stop.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use system_tests::{Daemon, edgegw};

fn sample_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/edgegw.toml")
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgegw(dir.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in [
        "run",
        "check-config",
        "client",
        "channel",
        "connect",
        "disconnect",
        "certs",
        "status",
    ] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
    }
    let out = edgegw(dir.path()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("edgegw {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_the_sample_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgegw(dir.path())
        .args(["check-config", "--config"])
        .arg(sample_config())
        .env("EDGEGW_STANDALONE_EMAIL", "admin@example.com")
        .env("EDGEGW_STANDALONE_TOKEN", "this-is-the-admin-token-42")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[gateway]") && stdout.contains("state_dir = \"/var/lib/edgegw\""),
        "{stdout}"
    );
    assert!(stdout.contains("admin@example.com"), "{stdout}");
    assert!(
        !stdout.contains("this-is-the-admin-token-42"),
        "secret leaked:\n{stdout}"
    );
    assert!(stdout.contains("<redacted>"), "{stdout}");
}

#[test]
fn check_config_refuses_an_unknown_key_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgegw.toml");
    std::fs::write(&path, "[gateway]\nlog_levle = \"debug\"\n").unwrap();
    let out = edgegw(dir.path())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gateway.log_levle") && stderr.contains(&path.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_unreadable_certificate_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgegw(dir.path())
        .args(["run", "--dev"])
        .env("EDGEGW_UPLINK_URL", "mqtts://127.0.0.1:8883")
        .env("EDGEGW_UPLINK_CA_CERTS", "/nonexistent/upstream-ca.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/upstream-ca.pem") && stderr.contains("uplink.ca_certs"),
        "{stderr}"
    );
    assert!(
        !dir.path().join(".edgegw-dev").exists(),
        "a refused start must not create state"
    );
}

#[test]
fn an_unknown_environment_variable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = edgegw(dir.path())
        .args(["check-config", "--dev"])
        .env("EDGEGW_UPLNK_URL", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EDGEGW_UPLNK_URL"));
}

#[test]
fn run_dev_starts_and_exits_0_within_2s_of_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = edgegw(dir.path());
    cmd.args(["run", "--dev"]);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("ready", Duration::from_secs(20));
    let state = dir.path().join(".edgegw-dev/state");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "state dir mode {mode:o}");
    daemon.signal("TERM");
    let sent = Instant::now();
    let status = daemon
        .wait_exit(Duration::from_secs(2))
        .expect("still running 2 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log().join("\n"));
    assert!(sent.elapsed() < Duration::from_secs(2));
    daemon.wait_for_log("shutdown complete", Duration::from_secs(1));
}

#[test]
fn sighup_is_a_reload_not_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = edgegw(dir.path());
    cmd.args(["run", "--dev"]);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("ready", Duration::from_secs(20));
    daemon.signal("HUP");
    daemon.wait_for_log("reload requested", Duration::from_secs(5));
    assert!(
        daemon.wait_exit(Duration::from_millis(300)).is_none(),
        "SIGHUP stopped the daemon"
    );
    daemon.signal("TERM");
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
}
