//! Board identity read through an injectable root, so tests point it at a fake `/etc` tree.

use std::path::{Path, PathBuf};

/// Where board identity files are read from: `/` on a device, a temporary tree in tests.
#[derive(Debug, Clone)]
pub struct SysRoot(PathBuf);

impl SysRoot {
    /// The real root filesystem.
    pub fn system() -> Self {
        Self(PathBuf::from("/"))
    }

    /// A fake root (tests).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel.trim_start_matches('/'))
    }
}

/// The host's machine id (`/etc/machine-id`), trimmed; `None` when absent or empty.
pub fn machine_id(root: &SysRoot) -> Option<String> {
    read_trimmed(&root.join("/etc/machine-id"))
}

fn read_trimmed(path: &Path) -> Option<String> {
    // Identity files are tiny; cap the read so a strange file cannot blow up memory.
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_read_from_the_injected_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), "0123abcd\n").unwrap();
        assert_eq!(
            machine_id(&SysRoot::at(dir.path())).as_deref(),
            Some("0123abcd")
        );
    }

    #[test]
    fn missing_or_blank_machine_id_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(machine_id(&SysRoot::at(dir.path())), None);
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), " \n").unwrap();
        assert_eq!(machine_id(&SysRoot::at(dir.path())), None);
    }
}
