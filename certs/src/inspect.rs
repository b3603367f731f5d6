//! Reading certificates: the few facts the gateway records and shows (CN, serial, SHA-256
//! fingerprint, validity). Parsing only; no verification here.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

/// What the gateway knows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's first common name (empty if it has none).
    pub common_name: String,
    /// Serial number: lowercase hex, no colons, no leading zero bytes (what `openssl x509
    /// -serial` prints, lowercased).
    pub serial_hex: String,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub fingerprint_sha256_hex: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
}

impl CertInfo {
    /// Whole days from `now` (unix seconds) until `not_after`; negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// Reads the facts of one DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate {
        reason: e.to_string(),
    })?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let validity = cert.validity();
    Ok(CertInfo {
        common_name,
        serial_hex: serial_to_hex(cert.raw_serial()),
        fingerprint_sha256_hex: sha256_hex(der),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        is_ca: cert.is_ca(),
    })
}

/// Reads the first certificate of a PEM text.
pub fn inspect_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let der = first_cert_der(pem)?;
    inspect_der(&der)
}

/// Reads the first certificate of a PEM file.
pub fn inspect_file(path: &std::path::Path) -> Result<CertInfo, PkiError> {
    let certs = crate::load_certificates(path)?;
    let first = certs
        .first()
        .ok_or_else(|| PkiError::BadCertificate {
            reason: format!("{} holds no certificate", path.display()),
        })?
        .clone();
    inspect_der(&first)
}

pub(crate) fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadCertificate {
        reason: format!("not a PEM certificate: {e}"),
    })
}

/// Lowercase hex of a DER INTEGER's content bytes without leading zero bytes.
pub(crate) fn serial_to_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex(&raw[start..])
}

/// Parses a serial written as hex (colons and case ignored; `0x` prefix allowed).
pub fn serial_from_hex(text: &str) -> Option<Vec<u8>> {
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|&c| c != ':')
        .collect();
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok())
        .collect()
}

/// SHA-256 of `bytes`, lowercase hex: the fingerprint form the auth store records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_print_without_leading_zeros_and_parse_back() {
        assert_eq!(serial_to_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_to_hex(&[0x00]), "00");
        assert_eq!(serial_from_hex("8F:01").unwrap(), vec![0x8f, 0x01]);
        assert_eq!(serial_from_hex("0x1").unwrap(), vec![0x01]);
        assert!(serial_from_hex("device-1").is_none());
        assert!(serial_from_hex("").is_none());
    }

    #[test]
    fn days_left_rounds_down_and_goes_negative_after_expiry() {
        let info = CertInfo {
            common_name: String::new(),
            serial_hex: String::new(),
            fingerprint_sha256_hex: String::new(),
            not_before: 0,
            not_after: 10 * 86_400,
            is_ca: false,
        };
        assert_eq!(info.days_left(0), 10);
        assert_eq!(info.days_left(86_400 + 1), 8);
        assert_eq!(info.days_left(11 * 86_400), -1);
    }
}
