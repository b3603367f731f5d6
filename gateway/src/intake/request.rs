//! Where a sensor request goes, as every adapter parses it. Pure data (no tokio), so the
//! sans-IO cores can name it.

/// Where a message goes: `m/<domain>/c/<channel>[/<subtopic>]` (CoAP, HTTP), the legacy CoAP
/// path `channels/<channel>/messages[/<subtopic>]` or a serial `PUB <channel>[/<subtopic>]`
/// (no domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub domain: Option<String>,
    /// Channel id or local name, as the sensor wrote it.
    pub channel: String,
    /// `/`-joined remaining segments, not yet validated; may be empty.
    pub subtopic: String,
}
