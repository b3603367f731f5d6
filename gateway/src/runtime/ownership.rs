//! Provisioning commands run as root on an installed gateway (`sudo edgegw client add …`)
//! must not leave files in the state directory that the service user cannot open: SQLite
//! creates `auth.db` (first provisioning) and its `-wal`/`-shm` files as the calling user, and
//! a daemon running as `edgegw` then fails on them. After such a command, those files, when
//! root owns them, are handed to the owner of the state directory.
//!
//! The state directory is writable by the service account, which root must not trust: it
//! can plant links, hard links and directories there and swap them while root works
//! (`renameat2(RENAME_EXCHANGE)`). So nothing here walks paths: the directory is opened once
//! (`O_NOFOLLOW`), each of the store's own file names is opened relative to that descriptor
//! (`O_NOFOLLOW`, so a link is never followed), checked on the open descriptor (a regular
//! file, root's, one link) and changed through the same descriptor (`fchown`). Whatever is
//! swapped in between, root only ever changes the inode it checked, and never one outside.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

/// The files the provisioning commands create in the state directory: the auth store and
/// SQLite's companions (WAL mode; `-journal` while a migration runs in rollback mode).
fn store_files() -> [String; 4] {
    let db = crate::auth::FILE_NAME;
    [
        db.to_owned(),
        format!("{db}-wal"),
        format!("{db}-shm"),
        format!("{db}-journal"),
    ]
}

/// When running as root and `state_dir` belongs to another user: gives the store's files in
/// it that root owns to that user (and group). Returns how many changed hands; nothing happens
/// (0) when not root, when the folder is missing, a link, or root's own.
pub fn hand_over_to_state_owner(state_dir: &Path) -> std::io::Result<usize> {
    if !rustix::process::geteuid().is_root() {
        return Ok(0);
    }
    let dir = match rustix::fs::open(
        state_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let owner = rustix::fs::fstat(&dir)?;
    if owner.st_uid == 0 {
        return Ok(0);
    }
    let (uid, gid) = (
        rustix::process::Uid::from_raw(owner.st_uid),
        rustix::process::Gid::from_raw(owner.st_gid),
    );
    let mut changed = 0;
    for name in store_files() {
        let Some(file) = open_own_file(&dir, &name)? else {
            continue;
        };
        rustix::fs::fchown(&file, Some(uid), Some(gid))?;
        changed += 1;
    }
    Ok(changed)
}

/// `name` in `dir`, opened without following a link, if it is a regular file root owns with
/// no other name (a hard link planted by the service account to a file elsewhere has two).
fn open_own_file(dir: &OwnedFd, name: &str) -> std::io::Result<Option<OwnedFd>> {
    // O_NONBLOCK: a FIFO planted under the name must not block root; O_NOCTTY: nor a tty
    // become its terminal.
    let file = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Missing, or a link (ELOOP under O_NOFOLLOW): not the store's file.
        Err(Errno::NOENT | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&file)?;
    let own = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && st.st_uid == 0
        && st.st_nlink == 1;
    Ok(own.then_some(file))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn nothing_changes_hands_when_the_state_dir_is_missing_or_roots_own() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            hand_over_to_state_owner(&dir.path().join("missing")).unwrap(),
            0
        );
        std::fs::write(dir.path().join("auth.db"), b"x").unwrap();
        // As root the folder is root's own; as anyone else nothing is done at all.
        assert_eq!(hand_over_to_state_owner(dir.path()).unwrap(), 0);
    }

    const SERVICE: u32 = 65534;

    /// A state directory owned by the service user (`nobody`) inside a root-only scratch
    /// folder, and a root-only file beside it that the service user must never get.
    fn scene() -> Option<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root (the hand-over only runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(SERVICE), Some(SERVICE)).unwrap();
        let outside = dir.path().join("shadow");
        std::fs::write(&outside, b"root only").unwrap();
        Some((dir, state, outside))
    }

    fn uid(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().uid()
    }

    #[test]
    fn the_store_files_change_hands_and_planted_links_do_not_lead_outside() {
        let Some((dir, state, outside)) = scene() else {
            return;
        };
        std::fs::write(state.join("auth.db"), b"db").unwrap();
        // The service user plants a link under a store name, a hard link under another,
        // and a link to a folder holding an `auth.db` (the old walk went through it).
        std::os::unix::fs::symlink(&outside, state.join("auth.db-wal")).unwrap();
        std::fs::hard_link(&outside, state.join("auth.db-shm")).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("auth.db"), b"root only").unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join("pki")).unwrap();

        assert_eq!(hand_over_to_state_owner(&state).unwrap(), 1);
        assert_eq!(uid(&state.join("auth.db")), SERVICE);
        assert_eq!(
            uid(&outside),
            0,
            "root gave away a file outside the state dir"
        );
        assert_eq!(uid(&elsewhere.join("auth.db")), 0);
        assert_eq!(uid(&state.join("auth.db-wal")), 0, "the link itself stays");
    }

    /// The race of issue 20.3: while root hands the store over, the service user swaps a
    /// folder of the state directory with a link to a root-only folder, over and over
    /// (`RENAME_EXCHANGE`), so a walk that checked the folder then enters the link. Root
    /// changes only the store files it checked through one descriptor, so the outside file
    /// keeps its owner in every run.
    #[test]
    fn a_racing_exchange_with_a_link_never_gives_away_the_outside_file() {
        let Some((dir, state, outside)) = scene() else {
            return;
        };
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let shadow = etc.join("shadow");
        std::fs::rename(&outside, &shadow).unwrap();
        std::fs::create_dir(state.join("sub")).unwrap();
        std::os::unix::fs::symlink(&etc, state.join("swap")).unwrap();
        let db = state.join("auth.db");
        std::fs::write(&db, b"db").unwrap();
        let stop = AtomicBool::new(false);
        let runs = 10_000;
        let mut handed = 0;
        std::thread::scope(|s| {
            s.spawn(|| {
                let dir =
                    rustix::fs::open(&state, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                        .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    rustix::fs::renameat_with(
                        &dir,
                        "sub",
                        &dir,
                        "swap",
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                }
            });
            for run in 0..runs {
                // Root's store file, fresh each run.
                std::os::unix::fs::chown(&db, Some(0), Some(0)).unwrap();
                handed += hand_over_to_state_owner(&state).unwrap();
                if uid(&shadow) != 0 {
                    stop.store(true, Ordering::Relaxed);
                    panic!("run {run}: root gave away the file outside the state dir");
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(uid(&db), SERVICE);
        assert_eq!(handed, runs, "the store file changed hands in every run");
    }
}
