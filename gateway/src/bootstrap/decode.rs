//! Pure decoding of the bootstrap exchange: the secure variant's AES-CFB128 (key encrypted in
//! the request, answer encrypted in the response: 16-byte IV first, then the ciphertext), the
//! answer's JSON, and the `content` TOML fragment. No IO; every input is untrusted.
//!
//! SuperMQ source (github.com/absmach/supermq HEAD, same in magistrala v0.20.0):
//! `bootstrap/reader.go` (`bootstrapRes`, `channelRes`, `encrypt`: AES-CFB, IV first),
//! `bootstrap/service.go` (`dec`: the secure request's key is hex(IV ‖ AES-CFB(key))).

use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
    UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use serde::Deserialize;

use crate::config::value::Secret;

/// AES block size: the IV that opens every encrypted message.
pub const IV_LEN: usize = 16;
/// Bounds of an answer's parts (the whole body is bounded by the fetch).
pub const MAX_CHANNELS: usize = 1024;
pub const MAX_CONTENT: usize = 64 * 1024;
const MAX_SECRET: usize = 1024;
const MAX_PEM: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the encryption key must be 16, 24 or 32 bytes")]
    KeyLength,
    #[error("the encrypted answer is shorter than its 16-byte IV")]
    Short,
    #[error("AES-CFB failed")]
    Cipher,
    #[error(
        "the answer is not the bootstrap JSON (client_id, client_secret, channels, …): {0} \
         (with bootstrap.secure = true: is bootstrap.encryption_key the service's key?)"
    )]
    Json(String),
    #[error("the answer's {field} is invalid: {reason}")]
    Field { field: String, reason: String },
    #[error("the answer's content is not a TOML fragment of edgegw config: {0}")]
    ContentSyntax(String),
    #[error(
        "the answer's content sets `{0}`, which bootstrap content may not set (allowed: \
         [gateway] domain_id, log_level; [uplink] everything but username, password, \
         client_cert, client_key, ca_certs, insecure)"
    )]
    ContentKey(String),
}

fn cipher_key(key: &[u8]) -> Result<UnboundCipherKey, DecodeError> {
    let algorithm = match key.len() {
        16 => &AES_128,
        24 => &AES_192,
        32 => &AES_256,
        _ => return Err(DecodeError::KeyLength),
    };
    UnboundCipherKey::new(algorithm, key).map_err(|_| DecodeError::Cipher)
}

/// `iv ‖ AES-CFB128(key, iv, plain)`.
pub fn encrypt(key: &[u8], iv: [u8; IV_LEN], plain: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let enc = EncryptingKey::cfb128(cipher_key(key)?).map_err(|_| DecodeError::Cipher)?;
    let mut out = Vec::with_capacity(IV_LEN + plain.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(plain);
    enc.less_safe_encrypt(
        &mut out[IV_LEN..],
        EncryptionContext::Iv128(FixedLength::from(iv)),
    )
    .map_err(|_| DecodeError::Cipher)?;
    Ok(out)
}

/// The plain text of `iv ‖ AES-CFB128(key, iv, plain)`.
pub fn decrypt(key: &[u8], message: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let dec = DecryptingKey::cfb128(cipher_key(key)?).map_err(|_| DecodeError::Cipher)?;
    let (iv, body) = message
        .split_first_chunk::<IV_LEN>()
        .ok_or(DecodeError::Short)?;
    let mut plain = body.to_vec();
    dec.decrypt(&mut plain, DecryptionContext::Iv128(FixedLength::from(*iv)))
        .map_err(|_| DecodeError::Cipher)?;
    Ok(plain)
}

/// The `Authorization: Client …` value of a secure request: hex(IV ‖ AES-CFB(external key)).
pub fn secure_key(
    encryption_key: &[u8],
    external_key: &str,
    iv: [u8; IV_LEN],
) -> Result<String, DecodeError> {
    Ok(hex(&encrypt(encryption_key, iv, external_key.as_bytes())?))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One channel of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerChannel {
    pub id: String,
    pub name: String,
    /// `metadata.domain_id` when the channel's metadata names one.
    pub domain_id: Option<String>,
    pub metadata: serde_json::Value,
}

/// A validated bootstrap answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub client_id: String,
    pub client_secret: Secret,
    pub channels: Vec<AnswerChannel>,
    /// The content fragment as sent (text) and parsed (table).
    pub content: String,
    pub content_table: toml::Table,
    pub client_cert: Option<String>,
    pub client_key: Option<Secret>,
    pub ca_cert: Option<String>,
}

#[derive(Deserialize)]
struct RawAnswer {
    client_id: String,
    client_secret: String,
    #[serde(default)]
    channels: Option<Vec<RawChannel>>,
    #[serde(default)]
    content: String,
    #[serde(default)]
    client_cert: String,
    #[serde(default)]
    client_key: String,
    #[serde(default)]
    ca_cert: String,
}

#[derive(Deserialize)]
struct RawChannel {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

fn field(field: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Field {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Parses and checks an answer body (plain JSON, already decrypted if it was secure).
pub fn parse_answer(json: &[u8]) -> Result<Answer, DecodeError> {
    let raw: RawAnswer = serde_json::from_slice(json).map_err(|e| {
        // serde_json's message names a position, never the input.
        DecodeError::Json(e.to_string())
    })?;
    if raw.client_id.is_empty()
        || raw.client_id.len() > 128
        || raw
            .client_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '+' | '#'))
    {
        return Err(field(
            "client_id",
            "must be 1 to 128 bytes without spaces, '/', '+' or '#'",
        ));
    }
    if raw.client_secret.is_empty() || raw.client_secret.len() > MAX_SECRET {
        return Err(field(
            "client_secret",
            format!("must be 1 to {MAX_SECRET} bytes"),
        ));
    }
    let raw_channels = raw.channels.unwrap_or_default();
    if raw_channels.len() > MAX_CHANNELS {
        return Err(field("channels", format!("more than {MAX_CHANNELS}")));
    }
    let mut channels: Vec<AnswerChannel> = Vec::with_capacity(raw_channels.len());
    for (i, ch) in raw_channels.into_iter().enumerate() {
        let at = format!("channels[{i}]");
        crate::auth::store::validate_channel_id("id", &ch.id)
            .map_err(|e| field(&format!("{at}.id"), e.to_string()))?;
        let name = if ch.name.is_empty() {
            ch.id.clone()
        } else {
            ch.name
        };
        crate::auth::store::validate_channel_name(&name)
            .map_err(|e| field(&format!("{at}.name"), e.to_string()))?;
        let domain_id = match ch.metadata.get("domain_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(d)) if valid_domain(d) => Some(d.clone()),
            Some(_) => {
                return Err(field(
                    &format!("{at}.metadata.domain_id"),
                    "must be a domain id (letters, digits, '-', '_')",
                ));
            }
        };
        if !matches!(
            ch.metadata,
            serde_json::Value::Object(_) | serde_json::Value::Null
        ) {
            return Err(field(&format!("{at}.metadata"), "must be a JSON object"));
        }
        if channels.iter().any(|c| c.id == ch.id || c.name == name) {
            return Err(field(&at, "repeats the id or name of another channel"));
        }
        channels.push(AnswerChannel {
            id: ch.id,
            name,
            domain_id,
            metadata: ch.metadata,
        });
    }
    if raw.content.len() > MAX_CONTENT {
        return Err(field(
            "content",
            format!("is larger than {MAX_CONTENT} bytes"),
        ));
    }
    let content_table = parse_content(&raw.content)?;
    let pem = |name: &str, v: String| -> Result<Option<String>, DecodeError> {
        if v.trim().is_empty() {
            return Ok(None);
        }
        if v.len() > MAX_PEM || !v.contains("-----BEGIN ") {
            return Err(field(name, "must be PEM text"));
        }
        Ok(Some(v))
    };
    let client_cert = pem("client_cert", raw.client_cert)?;
    let client_key = pem("client_key", raw.client_key)?.map(Secret::new);
    if client_cert.is_some() != client_key.is_some() {
        return Err(field(
            "client_cert",
            "client_cert and client_key must come together",
        ));
    }
    Ok(Answer {
        client_id: raw.client_id,
        client_secret: Secret::new(raw.client_secret),
        channels,
        content: raw.content,
        content_table,
        client_cert,
        client_key,
        ca_cert: pem("ca_cert", raw.ca_cert)?,
    })
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 64
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Keys bootstrap content may not set: credentials and files come from the answer's own
/// fields, and a downgrade to plain MQTT is a local decision.
const UPLINK_DENIED: &[&str] = &[
    "username",
    "password",
    "client_cert",
    "client_key",
    "ca_certs",
    "insecure",
];
const GATEWAY_ALLOWED: &[&str] = &["domain_id", "log_level"];

/// The content fragment: empty, or TOML with only `[gateway]` (`domain_id`, `log_level`) and
/// `[uplink]` keys. Values are checked later, by the config loader itself.
pub fn parse_content(text: &str) -> Result<toml::Table, DecodeError> {
    if text.trim().is_empty() {
        return Ok(toml::Table::new());
    }
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        DecodeError::ContentSyntax(e.message().trim_end().to_owned())
    })?;
    for (section, value) in &table {
        let toml::Value::Table(keys) = value else {
            return Err(DecodeError::ContentKey(section.clone()));
        };
        for key in keys.keys() {
            let allowed = match section.as_str() {
                "gateway" => GATEWAY_ALLOWED.contains(&key.as_str()),
                "uplink" => !UPLINK_DENIED.contains(&key.as_str()),
                _ => false,
            };
            if !allowed {
                return Err(DecodeError::ContentKey(format!("{section}.{key}")));
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"1234567891011121";

    #[test]
    fn cfb_round_trips_with_the_iv_first_and_matches_a_known_vector() {
        // NIST SP 800-38A F.3.13 (CFB128-AES128.Encrypt), first block.
        let key = [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ];
        let iv: [u8; 16] = core::array::from_fn(|i| u8::try_from(i).unwrap());
        let plain = [
            0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93,
            0x17, 0x2a,
        ];
        let sealed = encrypt(&key, iv, &plain).unwrap();
        assert_eq!(&sealed[..16], &iv);
        assert_eq!(hex(&sealed[16..]), "3b3fd92eb72dad20333449f8e83cfb4a");
        assert_eq!(decrypt(&key, &sealed).unwrap(), plain);
        // Not a multiple of the block size: CFB is a stream mode.
        let odd = encrypt(KEY, [7; 16], b"{\"client_id\":1}").unwrap();
        assert_eq!(decrypt(KEY, &odd).unwrap(), b"{\"client_id\":1}");
        assert_eq!(decrypt(KEY, &[0; 15]), Err(DecodeError::Short));
        assert_eq!(decrypt(b"short", &[0; 20]), Err(DecodeError::KeyLength));
    }

    #[test]
    fn secure_key_is_hex_of_iv_and_ciphertext() {
        let k = secure_key(KEY, "external-key", [1; 16]).unwrap();
        assert_eq!(k.len(), 2 * (16 + "external-key".len()));
        assert!(k.starts_with(&"01".repeat(16)));
        let raw: Vec<u8> = (0..k.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&k[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(decrypt(KEY, &raw).unwrap(), b"external-key");
    }

    fn answer(extra: &str) -> String {
        format!(
            r#"{{"client_id":"c1","client_secret":"s3cret","channels":[{{"id":"ch-1","name":"temp","metadata":{{"domain_id":"dom-2"}}}},{{"id":"ch-2"}}]{extra}}}"#
        )
    }

    #[test]
    fn answers_parse_with_defaults_and_channel_domains() {
        let a =
            parse_answer(answer(r#","content":"[uplink]\nurl = \"mqtts://x:8883\"""#).as_bytes())
                .unwrap();
        assert_eq!(a.client_id, "c1");
        assert_eq!(a.client_secret.expose(), "s3cret");
        assert_eq!(a.channels[0].domain_id.as_deref(), Some("dom-2"));
        // A channel without a name is named by its id.
        assert_eq!(a.channels[1].name, "ch-2");
        assert_eq!(
            a.content_table["uplink"]["url"].as_str(),
            Some("mqtts://x:8883")
        );
        assert!(a.client_cert.is_none() && a.ca_cert.is_none());
    }

    #[test]
    fn bad_answers_are_refused_naming_the_field_never_the_secret() {
        for (body, needle) in [
            ("not json".to_owned(), "not the bootstrap JSON"),
            (
                r#"{"client_id":"","client_secret":"x"}"#.to_owned(),
                "client_id",
            ),
            (
                r#"{"client_id":"a/b","client_secret":"x"}"#.to_owned(),
                "client_id",
            ),
            (
                r#"{"client_id":"a","client_secret":""}"#.to_owned(),
                "client_secret",
            ),
            (
                r#"{"client_id":"a","client_secret":"topsecret","channels":[{"id":"a b"}]}"#
                    .to_owned(),
                "channels[0].id",
            ),
            (
                r#"{"client_id":"a","client_secret":"topsecret","channels":[{"id":"x"},{"id":"x"}]}"#
                    .to_owned(),
                "channels[1]",
            ),
            (
                answer(r#","client_cert":"-----BEGIN CERTIFICATE-----""#),
                "client_key must come together",
            ),
            (answer(r#","content":"[outbox]\nmax_messages = 1""#), "outbox.max_messages"),
            (answer(r#","content":"[uplink]\npassword = \"x\"""#), "uplink.password"),
            (answer(r#","content":"[uplink""#), "not a TOML fragment"),
        ] {
            let e = parse_answer(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(needle), "{body}: {e}");
            assert!(!e.contains("topsecret") && !e.contains("s3cret"), "{e}");
        }
    }
}
