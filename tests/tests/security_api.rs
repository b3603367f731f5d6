//! End to end, issue 20's management-side items against the real `edgegw` binary: root
//! provisioning next to a hostile service account (20.3), brute force on the management API
//! (20.6), token lifetime and reuse (20.10), idle connections (20.12), secrets in config
//! errors and `check-config` (20.14). The API is driven by curl (a real HTTP client).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use system_tests::api::{ADMIN_TOKEN, EMAIL};
use system_tests::{Daemon, edgegw};

fn start(dir: &Path, extra: &[(&str, &str)]) -> Daemon {
    let mut cmd = edgegw(dir);
    cmd.args(["--dev", "run"])
        .env("EDGEGW_STANDALONE_EMAIL", EMAIL)
        .env("EDGEGW_STANDALONE_TOKEN", ADMIN_TOKEN);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Daemon::start(cmd)
}

fn is_root() -> bool {
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id");
    out.stdout.trim_ascii() == b"0"
}

/// 20.3: `sudo edgegw channel add` against a state directory the service user (`nobody`)
/// owns and has filled with traps: a folder holding a hard link to a root-only file, and a
/// link to a root-only folder. The command hands its own store files over and nothing else:
/// the root-only files keep their owner.
#[test]
fn root_provisioning_hands_over_only_its_store_files() {
    if !is_root() {
        eprintln!("skipped: needs root (the hand-over only runs as root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret_dir = dir.path().join("etc");
    std::fs::create_dir(&secret_dir).expect("etc");
    let shadow = secret_dir.join("shadow");
    std::fs::write(&shadow, b"root only").expect("shadow");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // What the service user planted (as root here, standing in for fs.protected_hardlinks=0).
    let trap = state.join("backup");
    std::fs::create_dir(&trap).expect("trap dir");
    std::fs::hard_link(&shadow, trap.join("shadow")).expect("hard link");
    std::os::unix::fs::symlink(&secret_dir, state.join("pki")).expect("symlink");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");

    let out = edgegw(dir.path())
        .env("EDGEGW_GATEWAY_STATE_DIR", &state)
        .env("EDGEGW_GATEWAY_RUNTIME_DIR", dir.path().join("run"))
        .args(["channel", "add", "chan-a"])
        .output()
        .expect("run edgegw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("handed to its owner"), "{stderr}");
    let owner = |p: &Path| std::fs::symlink_metadata(p).expect("metadata").uid();
    assert_eq!(
        owner(&state.join("auth.db")),
        65534,
        "the store changed hands"
    );
    assert_eq!(
        owner(&shadow),
        0,
        "root gave away a file outside the state dir"
    );
    assert_eq!(
        owner(&trap),
        0,
        "a folder the command did not create changed hands"
    );
}
