//! The development PKI: one directory holding a CA and every certificate a local setup needs
//! (DTLS server, uplink client, a broker for tests, an example device).
//!
//! `init_dev` refuses to touch a directory that already holds any of these files: re-running it
//! never overwrites silently. `open_or_init_dev` (used by `run --dev`) reuses a complete
//! existing PKI and creates one only where none of the files exist.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::authority::Authority;
use crate::{PkiError, files};

/// CA validity in the dev PKI.
pub const DEV_CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// Validity of the dev leaf certificates (server, client, device example).
pub const DEV_LEAF_VALIDITY: Duration = Duration::from_secs(825 * 86_400);
/// The example device's identity (its certificate's CN).
pub const DEV_DEVICE_IDENTITY: &str = "device-example";

/// Every file of a dev PKI, relative to its directory. Keys are 0600, certificates 0644.
pub const DEV_FILES: [&str; 10] = [
    "ca.crt",
    "ca.key",
    "dtls-server.crt",
    "dtls-server.key",
    "uplink-client.crt",
    "uplink-client.key",
    "broker.crt",
    "broker.key",
    "device-example.crt",
    "device-example.key",
];

/// SANs of the dev server certificates (DTLS server and broker).
pub const DEV_SERVER_SANS: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// A dev PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    pub dir: PathBuf,
    /// Whether this call created it (false: an existing one is reused).
    pub created: bool,
}

impl DevPki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn dtls_server_cert(&self) -> PathBuf {
        self.dir.join("dtls-server.crt")
    }
    pub fn dtls_server_key(&self) -> PathBuf {
        self.dir.join("dtls-server.key")
    }
    pub fn uplink_client_cert(&self) -> PathBuf {
        self.dir.join("uplink-client.crt")
    }
    pub fn uplink_client_key(&self) -> PathBuf {
        self.dir.join("uplink-client.key")
    }
    pub fn broker_cert(&self) -> PathBuf {
        self.dir.join("broker.crt")
    }
    pub fn broker_key(&self) -> PathBuf {
        self.dir.join("broker.key")
    }
    pub fn device_cert(&self) -> PathBuf {
        self.dir.join("device-example.crt")
    }
    pub fn device_key(&self) -> PathBuf {
        self.dir.join("device-example.key")
    }
}

/// Creates a dev PKI in `dir` (created 0700 if missing). Refuses with
/// [`PkiError::AlreadyExists`] if any of [`DEV_FILES`] is already there.
pub fn init_dev(dir: &Path, now: i64) -> Result<DevPki, PkiError> {
    if let Some(existing) = DEV_FILES.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
        return Err(PkiError::AlreadyExists {
            path: existing.display().to_string(),
        });
    }
    let ca = Authority::generate("edgegw development CA", DEV_CA_VALIDITY, now)?;
    let dtls = ca.issue_server(
        "edgegw DTLS server",
        &DEV_SERVER_SANS,
        DEV_LEAF_VALIDITY,
        now,
    )?;
    let uplink = ca.issue_client("edgegw-uplink", DEV_LEAF_VALIDITY, now)?;
    let broker = ca.issue_server("localhost", &DEV_SERVER_SANS, DEV_LEAF_VALIDITY, now)?;
    let device = ca.issue_device(DEV_DEVICE_IDENTITY, DEV_LEAF_VALIDITY, now)?;

    files::ensure_private_dir(dir).map_err(|source| PkiError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    // ca.crt last: a crash part-way leaves an incomplete set that open_or_init_dev reports.
    let mut writes: Vec<(&str, &str, u32)> = Vec::new();
    for (stem, issued) in [
        ("dtls-server", &dtls),
        ("uplink-client", &uplink),
        ("broker", &broker),
        ("device-example", &device),
    ] {
        writes.push((stem, issued.cert_pem.as_str(), 0o644));
        if let Some(key) = &issued.key_pem {
            writes.push((stem, key.as_str(), 0o600));
        }
    }
    writes.push(("ca", ca.key_pem(), 0o600));
    writes.push(("ca", ca.cert_pem(), 0o644));
    for (stem, pem, mode) in writes {
        let ext = if mode == 0o600 { "key" } else { "crt" };
        let path = dir.join(format!("{stem}.{ext}"));
        files::write_atomic(&path, pem.as_bytes(), mode).map_err(|source| PkiError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(DevPki {
        dir: dir.to_owned(),
        created: true,
    })
}

/// Reuses the dev PKI in `dir` if it is complete (and its CA key matches its certificate),
/// creates it if none of its files exist, and refuses a partial one.
pub fn open_or_init_dev(dir: &Path, now: i64) -> Result<DevPki, PkiError> {
    let missing: Vec<String> = DEV_FILES
        .iter()
        .filter(|f| !dir.join(f).exists())
        .map(|f| (*f).to_owned())
        .collect();
    if missing.len() == DEV_FILES.len() {
        return init_dev(dir, now);
    }
    if !missing.is_empty() {
        return Err(PkiError::Incomplete {
            dir: dir.display().to_string(),
            missing,
        });
    }
    let pki = DevPki {
        dir: dir.to_owned(),
        created: false,
    };
    Authority::load(&pki.ca_cert(), &pki.ca_key())?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_dev_writes_every_file_with_the_right_modes_and_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = init_dev(&dir, NOW).unwrap();
        assert!(pki.created);
        assert_eq!(mode(&dir), 0o700);
        for file in DEV_FILES {
            let path = dir.join(file);
            let expected = if file.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode(&path), expected, "{file}");
        }
        let ca = Authority::load(&pki.ca_cert(), &pki.ca_key()).unwrap();
        assert_eq!(ca.info().not_after - ca.info().not_before, 3650 * 86_400);
        for (cert, key) in [
            (pki.dtls_server_cert(), pki.dtls_server_key()),
            (pki.uplink_client_cert(), pki.uplink_client_key()),
            (pki.broker_cert(), pki.broker_key()),
            (pki.device_cert(), pki.device_key()),
        ] {
            let info = crate::inspect_file(&cert).unwrap();
            assert!(!info.is_ca);
            crate::load_private_key(&key).unwrap();
        }
        assert_eq!(
            crate::inspect_file(&pki.device_cert()).unwrap().common_name,
            DEV_DEVICE_IDENTITY
        );
    }

    #[test]
    fn init_dev_refuses_an_existing_pki_and_open_reuses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let first = open_or_init_dev(&dir, NOW).unwrap();
        assert!(first.created);
        let ca_before = std::fs::read(first.ca_cert()).unwrap();
        let err = init_dev(&dir, NOW).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        let again = open_or_init_dev(&dir, NOW + 10).unwrap();
        assert!(!again.created);
        assert_eq!(std::fs::read(again.ca_cert()).unwrap(), ca_before);
        std::fs::remove_file(again.broker_key()).unwrap();
        let err = open_or_init_dev(&dir, NOW).unwrap_err();
        assert!(
            matches!(&err, PkiError::Incomplete { missing, .. } if missing == &["broker.key"]),
            "{err}"
        );
        // A lone file from somewhere else also stops init_dev.
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("ca.key"), "mine").unwrap();
        assert!(matches!(
            init_dev(&other, NOW),
            Err(PkiError::AlreadyExists { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(other.join("ca.key")).unwrap(),
            "mine"
        );
    }
}
