//! The auth store's errors, one type per kind of answer:
//!
//! - [`Denied`]: a *decision* about a sensor (authenticate, authorize). Answered from the
//!   in-memory snapshot, so it never carries a storage failure; the intake maps it to a refusal.
//! - [`StoreError`]: the *storage* failed (the file, SQLite, the filesystem): opening, loading,
//!   writing. Corrupt and too-new stores are the operator's to fix.
//! - [`Invalid`]: *validation* of what a management caller (CLI, API) gave; nothing changed.
//!
//! [`AuthError`] is what a management operation on the store answers: one of the last two, an
//! entity that is missing or already there, or no randomness for a new secret or id.

use std::path::PathBuf;

/// Why a sensor was refused. To a sensor, everything for which
/// [`Denied::is_unauthenticated`] is true must look the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("unknown client identity")]
    UnknownIdentity,
    #[error("wrong client secret")]
    BadSecret,
    #[error("client is disabled")]
    ClientDisabled,
    #[error("client is not connected to the channel for this operation")]
    NotConnected,
    #[error("unknown channel")]
    UnknownChannel,
    #[error("certificate {serial} is revoked")]
    CertRevoked { serial: String },
    #[error("certificate is not recorded for this client")]
    CertUnknown,
    #[error("certificate is not valid now (expired or not yet valid)")]
    CertExpired,
}

impl Denied {
    /// Answered to a sensor as "unauthenticated" (CoAP 4.01, `ERR auth`), indistinguishably.
    pub fn is_unauthenticated(&self) -> bool {
        !self.is_forbidden()
    }

    /// Answered as "forbidden" (CoAP 4.03): authenticated, but not allowed on that channel.
    pub fn is_forbidden(&self) -> bool {
        match self {
            Self::NotConnected | Self::UnknownChannel => true,
            Self::UnknownIdentity
            | Self::BadSecret
            | Self::ClientDisabled
            | Self::CertRevoked { .. }
            | Self::CertUnknown
            | Self::CertExpired => false,
        }
    }

    /// The audit table's outcome word.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Self::UnknownIdentity => "unknown_identity",
            Self::BadSecret => "bad_secret",
            Self::ClientDisabled => "client_disabled",
            Self::CertUnknown => "cert_unknown",
            Self::CertRevoked { .. } => "cert_revoked",
            Self::CertExpired => "cert_expired",
            Self::NotConnected => "not_connected",
            Self::UnknownChannel => "unknown_channel",
        }
    }
}

/// The auth store's file or database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "auth store {} is corrupt: {reason}. It was left unchanged; restore it from a backup, \
         or move it away to start with an empty store", path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "auth store {} has schema version {found}, newer than this edgegw supports \
         ({supported}); it was left unchanged. Run the newer edgegw that wrote it", path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("auth store {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// A store the operator must restore or move away (restarting will not help).
    pub fn needs_operator(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::SchemaTooNew { .. })
    }
}

/// A value a management caller gave that the store does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("`{value}` is not a hexadecimal serial number")]
    Serial { value: String },
    #[error("the {what} is too long (at most {max} bytes)")]
    TooLong { what: &'static str, max: usize },
    #[error("the {what} must not contain control characters")]
    ControlCharacters { what: &'static str },
    #[error("the identity must be 1 to 128 bytes")]
    IdentityLength,
    #[error("the identity `{}` must not contain spaces or control characters", identity.escape_debug())]
    IdentityCharacters { identity: String },
    #[error("the channel name must be 1 to 128 bytes")]
    ChannelNameLength,
    #[error("the channel name `{}` must not contain spaces, '/', '+', '#' or '?'", name.escape_debug())]
    ChannelNameCharacters { name: String },
    #[error(
        "the channel {what} `{}` must be 1 to 64 bytes of letters, digits, '-' or '_' (a SuperMQ \
         channel id is a UUID)", id.escape_debug()
    )]
    ChannelId { what: &'static str, id: String },
    #[error("the domain id `{}` must be at most 128 bytes without spaces, '/', '+' or '#'", domain.escape_debug())]
    Domain { domain: String },
    /// With `uplink.platform = "supermq"`: SuperMQ topics are `m/<domain>/c/<channel>`.
    #[error(
        "with uplink.platform = \"supermq\" a channel needs its SuperMQ domain id: pass \
         --domain <domain id> (API: \"domain_id\") or set gateway.domain_id"
    )]
    DomainRequired,
    #[error("the metadata is larger than 64 KiB")]
    MetadataTooLarge,
    #[error("the metadata must be a JSON object")]
    MetadataNotObject,
    #[error("the metadata is not valid JSON (line {line}, column {column})")]
    MetadataJson { line: usize, column: usize },
    #[error(
        "the secret is too short ({len} bytes; at least {min}: it is also the client's DTLS-PSK \
         key — unlike SuperMQ, which has no minimum)"
    )]
    SecretTooShort { len: usize, min: usize },
    #[error("the secret is too long ({len} bytes; at most {max})")]
    SecretTooLong { len: usize, max: usize },
    #[error("the secret must be printable ASCII without spaces")]
    SecretCharacters,
    #[error("another client already uses this secret")]
    SecretInUse,
    #[error("connect needs publish and/or subscribe")]
    NoOperation,
}

/// What a management operation on the auth store answers.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} `{value}` already exists")]
    Duplicate { what: &'static str, value: String },
    #[error("no {what} `{value}`")]
    NotFound { what: &'static str, value: String },
    #[error("the operating system's random number generator failed: {0}")]
    Random(#[source] getrandom::Error),
}
