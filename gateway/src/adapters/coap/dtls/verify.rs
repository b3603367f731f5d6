//! Device certificates: dimpl verifies handshake signatures but no PKI, so the leaf it hands
//! over is verified here with rustls-webpki (chain to a device CA through the configured
//! intermediates, validity, clientAuth), then its CN and serial are looked up.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use tracing::debug;

use super::{
    ALERT_BAD_CERTIFICATE, ALERT_CERTIFICATE_EXPIRED, ALERT_UNKNOWN_CA, DtlsCredentials, Principal,
};

/// Chain to a device CA (through configured intermediates), validity of every certificate
/// in the chain, clientAuth EKU; then CN + serial → a known enabled client.
pub(super) fn verify_certificate(
    der: &[u8],
    anchors: &[rustls_pki_types::TrustAnchor<'static>],
    intermediates: &[CertificateDer<'static>],
    now: SystemTime,
    credentials: &dyn DtlsCredentials,
) -> Result<Principal, u8> {
    if anchors.is_empty() {
        return Err(ALERT_UNKNOWN_CA);
    }
    let cert = CertificateDer::from(der);
    let ee = webpki::EndEntityCert::try_from(&cert).map_err(|_| ALERT_BAD_CERTIFICATE)?;
    let time = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
        webpki::aws_lc_rs::ECDSA_P256_SHA256,
        webpki::aws_lc_rs::ECDSA_P256_SHA384,
        webpki::aws_lc_rs::ECDSA_P384_SHA256,
        webpki::aws_lc_rs::ECDSA_P384_SHA384,
        webpki::aws_lc_rs::ED25519,
    ];
    ee.verify_for_usage(
        algs,
        anchors,
        intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        debug!("device certificate refused: {e}");
        match e {
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                ALERT_CERTIFICATE_EXPIRED
            }
            webpki::Error::UnknownIssuer => ALERT_UNKNOWN_CA,
            _ => ALERT_BAD_CERTIFICATE,
        }
    })?;
    let (cn, serial) = subject_cn_and_serial(der).ok_or(ALERT_BAD_CERTIFICATE)?;
    // Unknown CN, unrecorded or revoked certificate, disabled client: one answer for all.
    credentials
        .principal_for_certificate(&cn, &serial, &certs::sha256_hex(der))
        .ok_or(ALERT_BAD_CERTIFICATE)
}

/// The subject CN and the serial (lowercase hex, no colons, no leading zero bytes).
pub fn subject_cn_and_serial(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let raw = cert.raw_serial();
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    let serial = trimmed.iter().map(|b| format!("{b:02x}")).collect();
    Some((cn, serial))
}
