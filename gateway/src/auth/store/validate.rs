//! Input validation for the store's rows: each refusal is an [`Invalid`] variant.

use crate::auth::Invalid;

/// Serial numbers: hex, lowercase, no colons, no leading zero bytes beyond one.
pub fn normalize_serial(s: &str) -> Result<String, Invalid> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::Serial {
            value: s.to_owned(),
        });
    }
    Ok(hex)
}

pub(super) fn validate_text(what: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(Invalid::TooLong { what, max });
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::ControlCharacters { what });
    }
    Ok(())
}

/// Identities travel as DTLS-PSK identity, certificate CN and in serial `AUTH` lines.
pub fn validate_identity(identity: &str) -> Result<(), Invalid> {
    if identity.is_empty() || identity.len() > 128 {
        return Err(Invalid::IdentityLength);
    }
    if identity
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Invalid::IdentityCharacters {
            identity: identity.to_owned(),
        });
    }
    Ok(())
}

/// Channel names appear in CoAP paths, serial `PUB` lines and MQTT topics.
pub fn validate_channel_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 128 {
        return Err(Invalid::ChannelNameLength);
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#' | '?'))
    {
        return Err(Invalid::ChannelNameCharacters {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A channel id chosen by the caller (or an upstream channel id): it becomes an MQTT topic
/// level, so 1 to 64 bytes of letters, digits, `-` and `_` (a UUID fits).
pub fn validate_channel_id(what: &'static str, id: &str) -> Result<(), Invalid> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Invalid::ChannelId {
            what,
            id: id.to_owned(),
        });
    }
    Ok(())
}

pub(super) fn validate_domain(domain: &str) -> Result<(), Invalid> {
    if domain.len() > 128
        || domain
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#'))
    {
        return Err(Invalid::Domain {
            domain: domain.to_owned(),
        });
    }
    Ok(())
}

/// Metadata: a JSON object of at most 64 KiB (`{}` when absent).
pub fn parse_metadata(text: Option<&str>) -> Result<serde_json::Value, Invalid> {
    let Some(text) = text else {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    };
    if text.len() > 64 * 1024 {
        return Err(Invalid::MetadataTooLarge);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(Invalid::MetadataNotObject),
        Err(e) => Err(Invalid::MetadataJson {
            line: e.line(),
            column: e.column(),
        }),
    }
}
