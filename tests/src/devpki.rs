//! Device PKI for the CoAPS certificate-mode tests, made in memory with rcgen (aws-lc-rs):
//! CAs (self-signed or intermediate) and client certificates for sensors, with the
//! `CertificateRecord` the gateway's auth store expects for each.

use std::path::{Path, PathBuf};

use gateway::auth::{AuthStore, CertificateRecord};
use gateway::config::AuthConfig;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SerialNumber, date_time_ymd,
};

/// A CA: its parameters and key (to sign with) and its certificate as PEM.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("pem", &self.pem).finish()
    }
}

impl Ca {
    /// Writes the certificate as `{dir}/{name}.crt`.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.crt")), &self.pem).expect("write ca");
    }

    /// A server certificate for DNS name `dns` with CN `cn`, signed by this CA, written as
    /// `{dir}/{file}.crt` and `{dir}/{file}.key` (the daemon's DTLS identity).
    pub fn write_server(&self, dir: &Path, file: &str, dns: &str, cn: &str) {
        let mut server = CertificateParams::new(vec![dns.to_owned()]).expect("params");
        server.distinguished_name.push(DnType::CommonName, cn);
        let server_key = KeyPair::generate().expect("key");
        let server_cert = server
            .signed_by(&server_key, &Issuer::from_params(&self.params, &self.key))
            .expect("server cert");
        std::fs::write(dir.join(format!("{file}.crt")), server_cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}.key")), server_key.serialize_pem()).expect("write");
    }
}

/// `params` with `key`, signed by `issuer` or self-signed.
fn sign(params: &CertificateParams, key: &KeyPair, issuer: Option<&Ca>) -> Certificate {
    match issuer {
        Some(ca) => params
            .signed_by(key, &Issuer::from_params(&ca.params, &ca.key))
            .expect("sign"),
        None => params.self_signed(key).expect("self-sign"),
    }
}

/// The auth store of a `--dev` daemon working in `root`, to record device certificates in.
pub fn dev_auth_store(root: &Path) -> AuthStore {
    AuthStore::open(
        &root.join(".edgegw-dev/state/auth.db"),
        &AuthConfig::default(),
    )
    .expect("open auth store")
}

/// A CA named `name`, valid from 1 January `years.0` to 1 January `years.1`, self-signed or
/// signed by `issuer`.
pub fn make_ca(name: &str, years: (i32, i32), issuer: Option<&Ca>) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = date_time_ymd(years.0, 1, 1);
    params.not_after = date_time_ymd(years.1, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = sign(&params, &key, issuer);
    Ca {
        pem: cert.pem(),
        params,
        key,
    }
}

/// A device certificate and key on disk, and its record for the auth store.
#[derive(Debug)]
pub struct Device {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub record: CertificateRecord,
}

/// A client certificate for CN `cn` with serial `serial` (big-endian bytes, first below 0x80),
/// valid from 1 January `years.0` to 1 January `years.1`, signed by `issuer` (or self-signed),
/// written as `{dir}/{file}.crt` and `{dir}/{file}.key`.
pub fn make_device(
    dir: &Path,
    file: &str,
    cn: &str,
    serial: [u8; 3],
    years: (i32, i32),
    issuer: Option<&Ca>,
) -> Device {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from(serial.to_vec()));
    params.not_before = date_time_ymd(years.0, 1, 1);
    params.not_after = date_time_ymd(years.1, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = sign(&params, &key, issuer);
    let cert_path = dir.join(format!("{file}.crt"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    Device {
        cert: cert_path,
        key: key_path,
        record: CertificateRecord {
            serial_hex: serial.iter().map(|b| format!("{b:02x}")).collect(),
            client_id: String::new(),
            fingerprint_sha256_hex: certs::inspect_der(cert.der())
                .expect("inspect device certificate")
                .fingerprint_sha256_hex,
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
            revoked_at: None,
        },
    }
}
