//! `[standalone]`: the single local administrator of standalone mode
//! (`EDGEGW_STANDALONE_EMAIL`, `EDGEGW_STANDALONE_TOKEN`).

use serde::{Deserialize, Serialize};

use super::Check;
use super::value::Secret;

/// Shortest admin token accepted: it is a password that guards the whole gateway.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStandalone {
    email: Option<String>,
    token: Option<Secret>,
}

/// The local administrator. Both fields empty means no administrator is configured (the
/// management API then refuses every token request).
#[derive(Debug, Clone, Serialize)]
pub struct StandaloneConfig {
    pub email: String,
    pub token: Secret,
}

impl RawStandalone {
    pub fn validate(self, check: &mut Check<'_>) -> StandaloneConfig {
        let email = self.email.unwrap_or_default().trim().to_owned();
        let token = self.token.unwrap_or_default();
        match (email.is_empty(), token.is_empty()) {
            (true, true) => {}
            (false, true) => check.invalid(
                "standalone.token",
                "is required when standalone.email is set",
            ),
            (true, false) => check.invalid(
                "standalone.email",
                "is required when standalone.token is set",
            ),
            (false, false) => {
                let valid_email = email.split_once('@').is_some_and(|(user, host)| {
                    !user.is_empty() && host.contains('.') && !email.contains(char::is_whitespace)
                });
                if !valid_email {
                    check.invalid(
                        "standalone.email",
                        format!("`{email}` is not an email address"),
                    );
                }
                if token.expose().len() < MIN_TOKEN_LEN {
                    check.invalid(
                        "standalone.token",
                        format!("is too short (at least {MIN_TOKEN_LEN} characters)"),
                    );
                }
            }
        }
        StandaloneConfig { email, token }
    }
}
