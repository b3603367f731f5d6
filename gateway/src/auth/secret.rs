//! Client secrets and ids: generation from the OS RNG, validation of user-given secrets, and the
//! constant-time comparison every secret check goes through.

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::{AuthError, Invalid};

/// Shortest secret accepted from a user (bytes).
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted (bytes): DTLS-PSK keys and serial `AUTH` lines stay small.
pub const MAX_SECRET_LEN: usize = 128;
/// Random bytes in a generated secret: 256 bits.
const GENERATED_BYTES: usize = 32;
/// Random bytes in a PSK-compatible secret: 96 bits, 16 characters of base64.
const PSK_COMPATIBLE_BYTES: usize = 12;
/// Length of a PSK-compatible secret (characters = key bytes): tinydtls, the DTLS stack of
/// aiocoap and many constrained devices, keeps at most 16 PSK key bytes.
pub const PSK_COMPATIBLE_LEN: usize = 16;

/// How long a generated secret is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// 43 characters, 256 bits: the default.
    Full,
    /// [`PSK_COMPATIBLE_LEN`] characters, 96 bits: usable as a tinydtls DTLS-PSK key.
    PskCompatible,
}

/// A new secret: 256 bits from the OS RNG as URL-safe base64 without padding (43 characters).
pub fn generate() -> Result<String, AuthError> {
    generate_kind(SecretKind::Full)
}

/// A new secret of `kind`, from the OS RNG as URL-safe base64 without padding.
pub fn generate_kind(kind: SecretKind) -> Result<String, AuthError> {
    let mut bytes = [0u8; GENERATED_BYTES];
    let n = match kind {
        SecretKind::Full => GENERATED_BYTES,
        SecretKind::PskCompatible => PSK_COMPATIBLE_BYTES,
    };
    let bytes = &mut bytes[..n];
    getrandom::fill(bytes).map_err(AuthError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Checks a user-given secret: 16..=128 bytes of printable ASCII without spaces (it travels in
/// a serial `AUTH` line and a CoAP Uri-Query).
pub fn validate(secret: &str) -> Result<(), Invalid> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(Invalid::SecretTooShort {
            len: secret.len(),
            min: MIN_SECRET_LEN,
        });
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(Invalid::SecretTooLong {
            len: secret.len(),
            max: MAX_SECRET_LEN,
        });
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::SecretCharacters);
    }
    Ok(())
}

/// A random (version 4) UUID in its hyphenated lowercase form.
pub fn new_uuid() -> Result<String, AuthError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(AuthError::Random)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Constant-time equality (the length is not secret; the content is).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_long_url_safe_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        validate(&a).unwrap();
    }

    #[test]
    fn psk_compatible_secrets_are_sixteen_url_safe_characters_and_valid() {
        let a = generate_kind(SecretKind::PskCompatible).unwrap();
        let b = generate_kind(SecretKind::PskCompatible).unwrap();
        assert_eq!(a.len(), PSK_COMPATIBLE_LEN);
        assert_eq!(PSK_COMPATIBLE_LEN, MIN_SECRET_LEN);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        validate(&a).unwrap();
    }

    #[test]
    fn short_long_and_spaced_secrets_are_refused() {
        assert!(validate("fifteen-bytes!!").is_err());
        assert!(validate("sixteen-bytes!!!").is_ok());
        assert!(validate(&"x".repeat(129)).is_err());
        assert!(validate("has a space in the middle").is_err());
    }

    #[test]
    fn uuids_have_version_and_variant() {
        let u = new_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
