//! Provisioning commands run as root on an installed gateway (`sudo edgegw client add …`)
//! must not leave files in the state directory that the service user cannot open: SQLite
//! creates `auth.db` (first provisioning) and its `-wal`/`-shm` files as the calling user, and
//! a daemon running as `edgegw` then fails on them. After such a command, files and folders
//! in the state directory owned by root are handed to the owner of the state directory.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// Deepest folder level visited below the state directory (it holds a few flat folders).
const MAX_DEPTH: usize = 4;

/// When running as root and `state_dir` belongs to another user: gives every root-owned
/// entry below it to that user (and group). Returns how many entries changed hands; nothing
/// happens (0) when not root, when the folder is missing or root's own.
pub fn hand_over_to_state_owner(state_dir: &Path) -> std::io::Result<usize> {
    if !rustix::process::geteuid().is_root() {
        return Ok(0);
    }
    let Ok(meta) = std::fs::symlink_metadata(state_dir) else {
        return Ok(0);
    };
    if !meta.is_dir() || meta.uid() == 0 {
        return Ok(0);
    }
    hand_over(state_dir, meta.uid(), meta.gid(), 0)
}

fn hand_over(dir: &Path, uid: u32, gid: u32, depth: usize) -> std::io::Result<usize> {
    let mut changed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Not following links: a link planted in the state directory must not make root
        // give away a file elsewhere.
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.uid() == 0 {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            changed += 1;
        }
        if meta.is_dir() && depth < MAX_DEPTH {
            changed += hand_over(&path, uid, gid, depth + 1)?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
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
}
