//! A certificate authority held in memory: generate one (ECDSA P-256), load one from PEM, and
//! issue from it: server and client certificates with SANs and EKUs, device certificates with a
//! TTL (never beyond the CA's own validity), certificates for CSRs, and signed CRLs.
//!
//! Times are unix seconds passed in by the caller (`now`), so tests control the clock.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

use crate::PkiError;
use crate::inspect::{CertInfo, first_cert_der, inspect_der, serial_from_hex};

/// Longest common name accepted (X.520 ub-common-name).
pub const MAX_COMMON_NAME: usize = 64;

/// A freshly issued certificate: PEM text, its key if we generated one, and its facts.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// PKCS#8 PEM; `None` when a CSR was signed (the key stayed on the device).
    pub key_pem: Option<String>,
    pub info: CertInfo,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("info", &self.info)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Hex serial (as [`CertInfo::serial_hex`]).
    pub serial_hex: String,
    /// Unix seconds.
    pub revoked_at: i64,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Server,
    Client,
}

/// A CA certificate with its private key.
pub struct Authority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    info: CertInfo,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Generates a self-signed CA (ECDSA P-256) valid from `now` for `validity`.
    pub fn generate(common_name: &str, validity: Duration, now: i64) -> Result<Self, PkiError> {
        check_common_name(common_name)?;
        let key = KeyPair::generate().map_err(generate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.not_before = datetime(now)?;
        params.not_after = datetime(add_ttl(now, validity)?)?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(generate_error)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and private key (PEM). The key must match the
    /// certificate, and the certificate must be a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = first_cert_der(cert_pem)?;
        let info = inspect_der(&der)?;
        if !info.is_ca {
            return Err(PkiError::NotACa {
                common_name: info.common_name,
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey {
            reason: e.to_string(),
        })?;
        let (_, x509) = X509Certificate::from_der(&der).map_err(|e| PkiError::BadCertificate {
            reason: e.to_string(),
        })?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::BadCertificate {
            reason: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
            info,
        })
    }

    /// Loads a CA from files.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, PkiError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM), for writing it 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Issues a TLS server certificate for `sans` (IP addresses or DNS names).
    pub fn issue_server(
        &self,
        common_name: &str,
        sans: &[&str],
        validity: Duration,
        now: i64,
    ) -> Result<Issued, PkiError> {
        self.issue_with_key(common_name, sans, Purpose::Server, validity, now)
    }

    /// Issues a TLS client certificate (clientAuth EKU), e.g. for the uplink.
    pub fn issue_client(
        &self,
        common_name: &str,
        validity: Duration,
        now: i64,
    ) -> Result<Issued, PkiError> {
        self.issue_with_key(common_name, &[], Purpose::Client, validity, now)
    }

    /// Issues a device certificate: CN = `identity`, clientAuth EKU, valid `ttl` from `now`.
    /// A TTL reaching beyond the CA's own not_after is refused.
    pub fn issue_device(
        &self,
        identity: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<Issued, PkiError> {
        self.issue_with_key(identity, &[], Purpose::Client, ttl, now)
    }

    /// Signs a device's CSR (PEM): the subject becomes CN = `identity` whatever the CSR asked,
    /// extensions are ours (clientAuth), only the public key is taken from the CSR. The CSR's
    /// signature must verify, its key must be ECDSA P-256, and a CN it names must equal
    /// `identity`.
    pub fn sign_device_csr(
        &self,
        identity: &str,
        csr_pem: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<Issued, PkiError> {
        use rustls_pki_types::CertificateSigningRequestDer;
        use rustls_pki_types::pem::PemObject;

        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
                PkiError::BadCsr {
                    reason: format!("not a PEM certificate request: {e}"),
                }
            })?;
        let (_, parsed) =
            X509CertificationRequest::from_der(der.as_ref()).map_err(|e| PkiError::BadCsr {
                reason: e.to_string(),
            })?;
        let spki = &parsed.certification_request_info.subject_pki;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            return Err(PkiError::CsrKeyNotP256);
        }
        if let Some(cn) = parsed
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
        {
            let cn = cn.as_str().unwrap_or_default();
            if cn != identity {
                return Err(PkiError::CsrSubjectMismatch {
                    csr_common_name: cn.to_owned(),
                    identity: identity.to_owned(),
                });
            }
        }
        // Proof of possession: the CSR is signed by the key it carries.
        parsed.verify_signature().map_err(|e| PkiError::BadCsr {
            reason: format!("its signature does not verify: {e}"),
        })?;
        let public_key =
            SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| PkiError::BadCsr {
                reason: e.to_string(),
            })?;
        // Requested extensions are ignored on purpose: the CA decides what a device gets.
        let params = self.leaf_params(identity, &[], Purpose::Client, ttl, now)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(generate_error)?;
        Ok(Issued {
            info: inspect_der(cert.der())?,
            cert_pem: cert.pem(),
            key_pem: None,
        })
    }

    /// A CRL signed by this CA listing `revoked`, valid from `now` for `validity`. The CRL
    /// number is `now`, so later CRLs have larger numbers.
    pub fn crl_pem(
        &self,
        revoked: &[Revoked],
        validity: Duration,
        now: i64,
    ) -> Result<String, PkiError> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let serial = serial_from_hex(&r.serial_hex).ok_or_else(|| PkiError::BadSerial {
                    serial: r.serial_hex.clone(),
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: datetime(r.revoked_at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let number = u64::try_from(now).unwrap_or_default().to_be_bytes();
        let params = CertificateRevocationListParams {
            this_update: datetime(now)?,
            next_update: datetime(add_ttl(now, validity)?)?,
            crl_number: SerialNumber::from_slice(&number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(generate_error)?;
        crl.pem().map_err(generate_error)
    }

    fn issue_with_key(
        &self,
        common_name: &str,
        sans: &[&str],
        purpose: Purpose,
        validity: Duration,
        now: i64,
    ) -> Result<Issued, PkiError> {
        let params = self.leaf_params(common_name, sans, purpose, validity, now)?;
        let key = KeyPair::generate().map_err(generate_error)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error)?;
        Ok(Issued {
            info: inspect_der(cert.der())?,
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
        })
    }

    fn leaf_params(
        &self,
        common_name: &str,
        sans: &[&str],
        purpose: Purpose,
        validity: Duration,
        now: i64,
    ) -> Result<CertificateParams, PkiError> {
        check_common_name(common_name)?;
        if validity.is_zero() {
            return Err(PkiError::ZeroTtl);
        }
        let not_after = add_ttl(now, validity)?;
        if not_after > self.info.not_after {
            return Err(PkiError::TtlBeyondCa {
                requested_not_after: not_after,
                ca_not_after: self.info.not_after,
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.not_before = datetime(now)?;
        params.not_after = datetime(not_after)?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match purpose {
            Purpose::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Purpose::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Some(*san)
                    .filter(|s| is_dns_name(s))
                    .and_then(|s| s.try_into().ok())
                    .map(SanType::DnsName)
                    .ok_or_else(|| PkiError::BadSan {
                        san: (*san).to_owned(),
                    }),
            })
            .collect::<Result<_, _>>()?;
        Ok(params)
    }
}

/// Serials are 16 random bytes with the top bit clear (positive, no padding byte) and a non-zero
/// first byte, so the hex we record is exactly what `openssl x509 -serial` prints.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Generate {
        reason: "the system random generator failed".to_owned(),
    })?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

/// A DNS name (RFC 1123 labels, optional leading `*.`), at most 253 bytes.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn check_common_name(cn: &str) -> Result<(), PkiError> {
    let reason = if cn.trim().is_empty() {
        "is empty"
    } else if cn.len() > MAX_COMMON_NAME {
        "is longer than 64 bytes"
    } else if cn.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidName {
        name: cn.to_owned(),
        reason,
    })
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn add_ttl(now: i64, ttl: Duration) -> Result<i64, PkiError> {
    i64::try_from(ttl.as_secs())
        .ok()
        .and_then(|secs| now.checked_add(secs))
        .filter(|&t| t < 253_402_300_800) // 9999-12-31: the end of X.509 time
        .ok_or(PkiError::TtlOutOfRange)
}

fn datetime(unix: i64) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|_| PkiError::TtlOutOfRange)
}

fn generate_error(e: rcgen::Error) -> PkiError {
    PkiError::Generate {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn ca() -> Authority {
        Authority::generate("test CA", Duration::from_secs(365 * DAY), NOW).unwrap()
    }

    fn der_of(pem: &str) -> Vec<u8> {
        first_cert_der(pem).unwrap().to_vec()
    }

    #[test]
    fn a_generated_ca_is_a_p256_ca_with_its_validity() {
        let ca = ca();
        let info = ca.info();
        assert!(info.is_ca);
        assert_eq!(info.common_name, "test CA");
        assert_eq!(info.not_before, NOW);
        assert_eq!(info.not_after, NOW + 365 * 86_400);
        let der = der_of(ca.cert_pem());
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key()
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap(),
            OID_EC_P256
        );
        cert.verify_signature(None).expect("self-signed");
    }

    #[test]
    fn a_device_certificate_has_the_identity_client_auth_and_the_ttl() {
        let ca = ca();
        let issued = ca
            .issue_device("sensor-7", Duration::from_secs(30 * DAY), NOW)
            .unwrap();
        assert!(issued.key_pem.as_deref().unwrap().contains("PRIVATE KEY"));
        assert_eq!(issued.info.common_name, "sensor-7");
        assert_eq!(issued.info.not_before, NOW);
        assert_eq!(issued.info.not_after, NOW + 30 * 86_400);
        assert!(!issued.info.is_ca);
        let der = der_of(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            issued.info.serial_hex,
            crate::inspect::serial_to_hex(cert.raw_serial())
        );
        assert_eq!(issued.info.fingerprint_sha256_hex.len(), 64);
        let ca_der = der_of(ca.cert_pem());
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA");
        assert_eq!(cert.issuer(), ca_cert.subject());
        // A different CA's key does not verify it.
        let other = Authority::generate("other", Duration::from_secs(DAY), NOW).unwrap();
        let other_der = der_of(other.cert_pem());
        let (_, other_cert) = X509Certificate::from_der(&other_der).unwrap();
        assert!(
            cert.verify_signature(Some(other_cert.public_key()))
                .is_err()
        );
    }

    #[test]
    fn serials_are_unique_and_positive() {
        let ca = ca();
        let a = ca.issue_device("a", Duration::from_secs(DAY), NOW).unwrap();
        let b = ca.issue_device("a", Duration::from_secs(DAY), NOW).unwrap();
        assert_ne!(a.info.serial_hex, b.info.serial_hex);
        assert_eq!(a.info.serial_hex.len(), 32);
        assert!(u8::from_str_radix(&a.info.serial_hex[..2], 16).unwrap() < 0x80);
    }

    #[test]
    fn a_ttl_beyond_the_ca_or_zero_is_refused() {
        let ca = ca();
        let err = ca
            .issue_device("d", Duration::from_secs(366 * DAY), NOW)
            .unwrap_err();
        assert!(
            matches!(err, PkiError::TtlBeyondCa { ca_not_after, .. } if ca_not_after == NOW + 365 * 86_400),
            "{err}"
        );
        // Exactly up to the CA's end is fine; later in the CA's life less remains.
        ca.issue_device("d", Duration::from_secs(365 * DAY), NOW)
            .unwrap();
        assert!(
            ca.issue_device("d", Duration::from_secs(300 * DAY), NOW + 100 * 86_400)
                .is_err()
        );
        assert!(matches!(
            ca.issue_device("d", Duration::ZERO, NOW).unwrap_err(),
            PkiError::ZeroTtl
        ));
        assert!(matches!(
            ca.issue_device("", Duration::from_secs(DAY), NOW)
                .unwrap_err(),
            PkiError::InvalidName { .. }
        ));
    }

    #[test]
    fn server_certificates_carry_ip_and_dns_sans_and_server_auth() {
        let ca = ca();
        let issued = ca
            .issue_server(
                "broker",
                &["127.0.0.1", "::1", "localhost"],
                Duration::from_secs(DAY),
                NOW,
            )
            .unwrap();
        let der = der_of(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(sans.contains(&GeneralName::IPAddress(
            &std::net::Ipv6Addr::LOCALHOST.octets()
        )));
        assert!(sans.contains(&GeneralName::DNSName("localhost")));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(matches!(
            ca.issue_server("x", &["not a name!"], Duration::from_secs(DAY), NOW),
            Err(PkiError::BadSan { .. })
        ));
    }

    fn csr(cn: Option<&str>, alg: &'static rcgen::SignatureAlgorithm) -> (String, KeyPair) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        (params.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    #[test]
    fn a_csr_is_signed_with_our_subject_and_its_key() {
        let ca = ca();
        let (pem, key) = csr(Some("sensor-9"), &rcgen::PKCS_ECDSA_P256_SHA256);
        let issued = ca
            .sign_device_csr("sensor-9", &pem, Duration::from_secs(DAY), NOW)
            .unwrap();
        assert!(issued.key_pem.is_none());
        assert_eq!(issued.info.common_name, "sensor-9");
        let der = der_of(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );
        // Requested extensions are not copied; a CSR without CN gets the identity.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 1],
                vec![5, 0],
            ));
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca
            .sign_device_csr("sensor-11", &pem, Duration::from_secs(DAY), NOW)
            .unwrap();
        let der = der_of(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        assert!(cert.subject_alternative_name().unwrap().is_none());
        assert_eq!(cert.extensions().len(), 5, "{:?}", cert.extensions());
        assert_eq!(issued.info.common_name, "sensor-11");
        let (pem, _) = csr(None, &rcgen::PKCS_ECDSA_P256_SHA256);
        let issued = ca
            .sign_device_csr("sensor-10", &pem, Duration::from_secs(DAY), NOW)
            .unwrap();
        assert_eq!(issued.info.common_name, "sensor-10");
    }

    #[test]
    fn a_csr_for_another_name_another_curve_or_garbage_is_refused() {
        let ca = ca();
        let (pem, _) = csr(Some("intruder"), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(matches!(
            ca.sign_device_csr("sensor-9", &pem, Duration::from_secs(DAY), NOW),
            Err(PkiError::CsrSubjectMismatch { .. })
        ));
        let (pem, _) = csr(Some("sensor-9"), &rcgen::PKCS_ECDSA_P384_SHA384);
        assert!(matches!(
            ca.sign_device_csr("sensor-9", &pem, Duration::from_secs(DAY), NOW),
            Err(PkiError::CsrKeyNotP256)
        ));
        assert!(matches!(
            ca.sign_device_csr("sensor-9", "hello", Duration::from_secs(DAY), NOW),
            Err(PkiError::BadCsr { .. })
        ));
        // A tampered CSR fails its signature check.
        let (pem, _) = csr(Some("sensor-9"), &rcgen::PKCS_ECDSA_P256_SHA256);
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 5;
        bytes[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64(&bytes)
        );
        assert!(matches!(
            ca.sign_device_csr("sensor-9", &tampered, Duration::from_secs(DAY), NOW),
            Err(PkiError::BadCsr { .. })
        ));
    }

    use rustls_pki_types::pem::PemObject as _;

    fn base64(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn a_crl_lists_the_revoked_serials_and_is_signed_by_the_ca() {
        let ca = ca();
        let a = ca.issue_device("a", Duration::from_secs(DAY), NOW).unwrap();
        let b = ca.issue_device("b", Duration::from_secs(DAY), NOW).unwrap();
        let pem = ca
            .crl_pem(
                &[Revoked {
                    serial_hex: a.info.serial_hex.clone(),
                    revoked_at: NOW + 60,
                }],
                Duration::from_secs(7 * DAY),
                NOW + 120,
            )
            .unwrap();
        let der =
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| crate::inspect::serial_to_hex(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![a.info.serial_hex.clone()]);
        assert!(!serials.contains(&b.info.serial_hex));
        let revoked = crl.iter_revoked_certificates().next().unwrap();
        assert_eq!(revoked.revocation_date.timestamp(), NOW + 60);
        assert_eq!(crl.last_update().timestamp(), NOW + 120);
        assert_eq!(
            crl.next_update().unwrap().timestamp(),
            NOW + 120 + 7 * 86_400
        );
        let ca_der = der_of(ca.cert_pem());
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        crl.verify_signature(ca_cert.public_key())
            .expect("CRL signed by the CA");
        assert!(matches!(
            ca.crl_pem(
                &[Revoked {
                    serial_hex: "zz".into(),
                    revoked_at: NOW
                }],
                Duration::from_secs(DAY),
                NOW
            ),
            Err(PkiError::BadSerial { .. })
        ));
    }

    #[test]
    fn a_ca_loads_only_with_its_own_key_and_only_if_it_is_a_ca() {
        let ca = ca();
        let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.info(), ca.info());
        let other = Authority::generate("other", Duration::from_secs(DAY), NOW).unwrap();
        assert!(matches!(
            Authority::from_pem(ca.cert_pem(), other.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        let leaf = ca
            .issue_device("leaf", Duration::from_secs(DAY), NOW)
            .unwrap();
        assert!(matches!(
            Authority::from_pem(&leaf.cert_pem, leaf.key_pem.as_deref().unwrap()),
            Err(PkiError::NotACa { .. })
        ));
        // The key never shows in Debug.
        assert!(!format!("{ca:?}{leaf:?}").contains("PRIVATE KEY"));
    }
}
