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

/// A caller-chosen client id: SuperMQ accepts a UUID only, in its canonical lowercase
/// 8-4-4-4-12 form (`api/http/common.go`, `ValidateUUID`: parsed, then compared with its
/// `String()`), so that is the rule here too.
pub fn validate_client_id(id: &str) -> Result<(), AuthError> {
    let canonical = id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    if !canonical {
        return Err(AuthError::Invalid(format!(
            "the client id `{}` must be a UUID in lowercase 8-4-4-4-12 form (SuperMQ's rule)",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// Most tags an entity carries, and the longest tag (SuperMQ sets no bound; the store does).
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 128;

/// Tags of a client or channel: at most [`MAX_TAGS`], each 1 to [`MAX_TAG_LEN`] bytes without
/// control characters.
pub fn validate_tags(tags: &[String]) -> Result<(), AuthError> {
    if tags.len() > MAX_TAGS {
        return Err(AuthError::Invalid(format!(
            "at most {MAX_TAGS} tags (got {})",
            tags.len()
        )));
    }
    for t in tags {
        if t.is_empty() {
            return Err(AuthError::Invalid("a tag must not be empty".into()));
        }
        validate_text("tag", t, MAX_TAG_LEN)?;
    }
    Ok(())
}
