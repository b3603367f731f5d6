//! Files that hold keys and secrets: private directories (0700) and atomic, durable writes
//! (tmp → fsync → rename → fsync dir) with the final mode set before any byte is written.
//! Shared by `certs` (keys, certificates) and `gateway` (state dir, signing keys).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and parents) with mode 0700 if missing. An existing directory is left as it
/// is; the returned flag says whether it is readable by others (the caller warns).
pub fn ensure_private_dir(dir: &Path) -> io::Result<PrivateDir> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(PrivateDir {
            created: false,
            others_can_read: meta.permissions().mode() & 0o077 != 0,
        }),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            // recursive() applies the mode to every created parent, but umask may have
            // narrowed it further; set it exactly on the leaf.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            Ok(PrivateDir {
                created: true,
                others_can_read: false,
            })
        }
        Err(e) => Err(e),
    }
}

/// What [`ensure_private_dir`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateDir {
    pub created: bool,
    pub others_can_read: bool,
}

/// Writes `bytes` to `path` atomically and durably with the given mode (0600 for keys and
/// secrets, 0644 for certificates). A crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by umask; make it exact.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("certs-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn private_dir_is_created_0700_and_existing_loose_dir_is_reported() {
        let base = scratch("dir");
        let dir = base.join("a/b");
        let made = ensure_private_dir(&dir).unwrap();
        assert!(made.created && !made.others_can_read);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let again = ensure_private_dir(&dir).unwrap();
        assert!(!again.created && again.others_can_read);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn atomic_write_sets_mode_replaces_content_and_leaves_no_temp_file() {
        let dir = scratch("write");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(entries.len(), 1, "temp file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_that_is_a_file_is_not_a_private_dir() {
        let dir = scratch("notdir");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(ensure_private_dir(&file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
