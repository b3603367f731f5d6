//! Input validation for the store's rows.

use super::*;

/// Serial numbers: hex, lowercase, no colons, no leading zero bytes beyond one.
pub fn normalize_serial(s: &str) -> Result<String, AuthError> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Invalid(format!(
            "`{s}` is not a hexadecimal serial number"
        )));
    }
    Ok(hex)
}

pub(super) fn validate_text(what: &str, value: &str, max: usize) -> Result<(), AuthError> {
    if value.len() > max {
        return Err(AuthError::Invalid(format!(
            "the {what} is too long (at most {max} bytes)"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!(
            "the {what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Identities travel as DTLS-PSK identity, certificate CN and in serial `AUTH` lines.
pub fn validate_identity(identity: &str) -> Result<(), AuthError> {
    if identity.is_empty() || identity.len() > 128 {
        return Err(AuthError::Invalid(
            "the identity must be 1 to 128 bytes".into(),
        ));
    }
    if identity
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AuthError::Invalid(format!(
            "the identity `{}` must not contain spaces or control characters",
            identity.escape_debug()
        )));
    }
    Ok(())
}

/// Channel names appear in CoAP paths, serial `PUB` lines and MQTT topics.
pub fn validate_channel_name(name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > 128 {
        return Err(AuthError::Invalid(
            "the channel name must be 1 to 128 bytes".into(),
        ));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#' | '?'))
    {
        return Err(AuthError::Invalid(format!(
            "the channel name `{}` must not contain spaces, '/', '+', '#' or '?'",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// A channel id chosen by the caller (or an upstream channel id): it becomes an MQTT topic
/// level, so 1 to 64 bytes of letters, digits, `-` and `_` (a UUID fits).
pub fn validate_channel_id(what: &str, id: &str) -> Result<(), AuthError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(AuthError::Invalid(format!(
            "the channel {what} `{}` must be 1 to 64 bytes of letters, digits, '-' or '_' (a SuperMQ channel id is a UUID)",
            id.escape_debug()
        )));
    }
    Ok(())
}

pub(super) fn validate_domain(domain: &str) -> Result<(), AuthError> {
    if domain.len() > 128
        || domain
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#'))
    {
        return Err(AuthError::Invalid(format!(
            "the domain id `{}` must be at most 128 bytes without spaces, '/', '+' or '#'",
            domain.escape_debug()
        )));
    }
    Ok(())
}

/// Metadata: a JSON object of at most 64 KiB (`{}` when absent).
pub fn parse_metadata(text: Option<&str>) -> Result<serde_json::Value, AuthError> {
    let Some(text) = text else {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    };
    if text.len() > 64 * 1024 {
        return Err(AuthError::Invalid(
            "the metadata is larger than 64 KiB".into(),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(AuthError::Invalid(
            "the metadata must be a JSON object".into(),
        )),
        Err(e) => Err(AuthError::Invalid(format!(
            "the metadata is not valid JSON: {e}"
        ))),
    }
}
