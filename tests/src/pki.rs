//! Throwaway PKI for the uplink tests, made with the `openssl` CLI: a CA, a broker certificate
//! (SAN 127.0.0.1 and localhost unless told otherwise) and client certificates. ECDSA P-256.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority on disk.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

fn openssl(args: &[&str], cwd: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("cannot run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("invariant: test paths are UTF-8")
}

/// A self-signed leaf certificate (ECDSA P-256, CN `cn`) and its key in `dir`, as `c.pem` /
/// `k.pem`: a server identity where nothing has to verify the chain (the bench and fault
/// suite's DTLS listener, whose clients use PSK).
pub fn self_signed(dir: &Path, cn: &str, days: u32) -> Issued {
    std::fs::create_dir_all(dir).expect("cannot create the certificate directory");
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            &days.to_string(),
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&cert),
        ],
        dir,
    );
    Issued { cert, key }
}

impl Ca {
    /// A new self-signed CA named `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("cannot create the PKI directory");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&cert),
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "400",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir,
        );
        Self {
            cert,
            key,
            dir: dir.to_owned(),
        }
    }

    /// Issues a leaf certificate `name` with common name `cn`, valid `days` days. `san`:
    /// subjectAltName for a server certificate (e.g. `IP:127.0.0.1,DNS:localhost`); `None`
    /// makes a client certificate.
    pub fn issue(&self, name: &str, cn: &str, san: Option<&str>, days: u32) -> Issued {
        let cert = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
                "-subj",
                &format!("/CN={cn}"),
            ],
            &self.dir,
        );
        let extensions = match san {
            Some(san) => format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n"
            ),
            None => "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n".to_owned(),
        };
        std::fs::write(&ext, extensions).expect("cannot write the extensions file");
        let serial = format!(
            "0x{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("invariant: after 1970")
                .as_nanos()
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&self.cert),
                "-CAkey",
                path_str(&self.key),
                "-set_serial",
                &serial,
                "-days",
                &days.to_string(),
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&cert),
            ],
            &self.dir,
        );
        Issued { cert, key }
    }
}

/// The usual set: CA, broker certificate for 127.0.0.1/localhost, uplink client `uplink-1`,
/// and a subscriber client for the test's own mosquitto_sub.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: Ca,
    pub broker: Issued,
    pub client: Issued,
    pub subscriber: Issued,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let ca = Ca::new(dir, "test-ca");
        let broker = ca.issue("broker", "broker", Some("IP:127.0.0.1,DNS:localhost"), 365);
        let client = ca.issue("uplink", "uplink-1", None, 365);
        let subscriber = ca.issue("subscriber", "subscriber", None, 365);
        Self {
            ca,
            broker,
            client,
            subscriber,
        }
    }
}
