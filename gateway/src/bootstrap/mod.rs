//! Bootstrap provisioning from SuperMQ's bootstrap service: a gateway flashed with only
//! `[bootstrap]` (url, external id, external key) fetches its upstream identity, channels,
//! certificates and a config fragment, validates them exactly like the config file, persists
//! them and uses them offline from then on.
//!
//! Split: [`fetch`] (the HTTP(S) GET, bounded), [`decode`] (AES-CFB, the answer's JSON, the
//! content fragment: pure), [`apply`] (what the answer means: the persisted record, the config
//! layer, the changes: pure), this file (the writes: files, channels, the record), [`task`]
//! (the daemon's loop: first start, SIGHUP, periodic re-check, backoff). The applied record
//! becomes a [`crate::config::Layer`] under the config file, so the running daemon, a restart
//! and `check-config` all see one validated configuration. This module never logs a secret.

pub mod apply;
pub mod command;
pub mod decode;
pub mod fetch;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apply::{Applied, Plan, PlanContext};
use decode::Answer;
use fetch::{Endpoint, FetchError};

use crate::auth::AuthError;
use crate::auth::store::{Db, NewChannel};
use crate::config::{BootstrapConfig, Config, ConfigError, Profile, Source};

/// The answer's body limit: certificates, a key and a config fragment fit many times over.
pub const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("bootstrap service {origin}: {source}")]
    Fetch {
        origin: String,
        #[source]
        source: FetchError,
    },
    #[error(
        "bootstrap service {origin} refused the external key for external id `{external_id}` \
         (HTTP 403): check bootstrap.external_key{hint}"
    )]
    KeyRefused {
        origin: String,
        external_id: String,
        hint: &'static str,
    },
    #[error("bootstrap service {origin} saw no external key (HTTP 401)")]
    KeyMissing { origin: String },
    #[error(
        "bootstrap service {origin} has no bootstrap config for external id `{external_id}` \
         (HTTP 404): register one on the platform, or set bootstrap.external_id"
    )]
    UnknownId { origin: String, external_id: String },
    #[error("bootstrap service {origin} answered HTTP {status}")]
    Status { origin: String, status: u16 },
    #[error("bootstrap service {origin}: {source}")]
    Decode {
        origin: String,
        #[source]
        source: decode::DecodeError,
    },
    #[error(transparent)]
    Plan(#[from] apply::PlanError),
    #[error("the bootstrap config is refused, the previous configuration stays in use: {0}")]
    Invalid(#[source] ConfigError),
    #[error(
        "the bootstrap config's channel {id} cannot be mirrored: a local channel `{name}` with \
         another id ({local_id}) exists; rename or remove it"
    )]
    ChannelClash {
        id: String,
        name: String,
        local_id: String,
    },
    #[error("cannot mirror the bootstrap channels into the auth store: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bootstrap record {path} cannot be used: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("bootstrap TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the secure request's key cannot be encrypted: {0}")]
    Encrypt(decode::DecodeError),
    #[error("bootstrap.url: {0}")]
    Url(#[from] crate::config::UrlError),
    #[error("the apply step did not finish: {0}")]
    ApplyTask(String),
}

/// `<state_dir>/bootstrap.json`.
pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(apply::STATE_FILE)
}

/// The applied record, if there is one. A record that does not parse is an error (it is never
/// silently replaced: the operator decides, e.g. by deleting it).
pub fn read_applied(state_dir: &Path) -> Result<Option<Applied>, BootstrapError> {
    let path = record_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(BootstrapError::Record {
                path,
                reason: e.to_string(),
            });
        }
    };
    let applied: Applied = serde_json::from_slice(&bytes).map_err(|e| BootstrapError::Record {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if applied.version != apply::VERSION {
        return Err(BootstrapError::Record {
            path,
            reason: format!(
                "record version {} (this edgegw reads {})",
                applied.version,
                apply::VERSION
            ),
        });
    }
    Ok(Some(applied))
}

/// The loaded `config` with the applied bootstrap record layered under the file, when
/// `[bootstrap]` is configured and a record exists; `config` itself otherwise.
pub fn layered(config: Config, source: &Source) -> Result<Config, BootstrapError> {
    if !config.bootstrap.enabled() {
        return Ok(config);
    }
    let Some(applied) = read_applied(&config.gateway.state_dir)? else {
        return Ok(config);
    };
    crate::config::load_layered(
        source,
        config.profile.clone(),
        std::env::vars_os(),
        Some(&applied.layer()),
    )
    .map_err(BootstrapError::Invalid)
}

/// The result of one successful bootstrap.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub applied: Applied,
    /// What changed against the previous record; empty: nothing (nothing was written).
    pub changes: Vec<String>,
}

/// Fetches and applies bootstrap configs for one gateway.
#[derive(Debug)]
pub struct Bootstrapper {
    config: BootstrapConfig,
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    state_dir: PathBuf,
    source: Source,
    profile: Profile,
}

impl Bootstrapper {
    /// `None` when `[bootstrap]` is not configured.
    pub fn new(config: &Config, source: Source) -> Result<Option<Self>, BootstrapError> {
        let Some(url) = &config.bootstrap.url else {
            return Ok(None);
        };
        let endpoint = Endpoint::parse(url)?;
        let tls = if endpoint.tls {
            Some(crate::tls::https_client(
                config.bootstrap.ca_certs.as_deref(),
            )?)
        } else {
            None
        };
        Ok(Some(Self {
            config: config.bootstrap.clone(),
            endpoint,
            tls,
            state_dir: config.gateway.state_dir.clone(),
            source,
            profile: config.profile.clone(),
        }))
    }

    /// The service's origin (`https://host:port`), for logs and the status.
    pub fn origin(&self) -> String {
        self.endpoint.origin()
    }

    pub fn external_id(&self) -> &str {
        &self.config.external_id
    }

    pub fn settings(&self) -> &BootstrapConfig {
        &self.config
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// One GET of this gateway's bootstrap config, decrypted and checked.
    pub async fn fetch(&self) -> Result<Answer, BootstrapError> {
        let origin = self.origin();
        let id = fetch::path_segment(&self.config.external_id);
        let (path, key) = if self.config.secure {
            let mut iv = [0u8; decode::IV_LEN];
            getrandom::fill(&mut iv)
                .map_err(|_| BootstrapError::Encrypt(decode::DecodeError::Cipher))?;
            let key = decode::secure_key(
                self.config.encryption_key.expose().as_bytes(),
                self.config.external_key.expose(),
                iv,
            )
            .map_err(BootstrapError::Encrypt)?;
            (format!("/clients/bootstrap/secure/{id}"), key)
        } else {
            (
                format!("/clients/bootstrap/{id}"),
                self.config.external_key.expose().to_owned(),
            )
        };
        let authorization = zeroize::Zeroizing::new(format!("Client {key}"));
        drop(zeroize::Zeroizing::new(key));
        let (status, body) = fetch::get(
            &self.endpoint,
            self.tls.clone(),
            &path,
            &authorization,
            self.config.timeout.get(),
            MAX_BODY,
        )
        .await
        .map_err(|source| BootstrapError::Fetch {
            origin: origin.clone(),
            source,
        })?;
        match status {
            200 => {}
            401 => return Err(BootstrapError::KeyMissing { origin }),
            403 => {
                return Err(BootstrapError::KeyRefused {
                    origin,
                    external_id: self.config.external_id.clone(),
                    hint: if self.config.secure {
                        " and bootstrap.encryption_key"
                    } else {
                        ""
                    },
                });
            }
            404 => {
                return Err(BootstrapError::UnknownId {
                    origin,
                    external_id: self.config.external_id.clone(),
                });
            }
            status => return Err(BootstrapError::Status { origin, status }),
        }
        let body = zeroize::Zeroizing::new(body);
        let decoded = if self.config.secure {
            zeroize::Zeroizing::new(
                decode::decrypt(self.config.encryption_key.expose().as_bytes(), &body).map_err(
                    |source| BootstrapError::Decode {
                        origin: origin.clone(),
                        source,
                    },
                )?,
            )
        } else {
            body
        };
        decode::parse_answer(&decoded).map_err(|source| BootstrapError::Decode { origin, source })
    }

    /// Applies `answer` over `previous` (blocking: files, SQLite). Nothing is written when
    /// nothing changed; on any refusal nothing that the previous record uses is touched and
    /// no new record is written.
    pub fn apply(
        &self,
        answer: &Answer,
        previous: Option<&Applied>,
    ) -> Result<Outcome, BootstrapError> {
        // The local settings without any bootstrap layer: the fallback domain.
        let base = crate::config::load_layered(
            &self.source,
            self.profile.clone(),
            std::env::vars_os(),
            None,
        )
        .map_err(BootstrapError::Invalid)?;
        let origin = self.origin();
        let plan = apply::plan(
            answer,
            &PlanContext {
                state_dir: &self.state_dir,
                origin: &origin,
                external_id: &self.config.external_id,
                secure: self.config.secure,
                local_domain: &base.gateway.domain_id,
                now_unix: crate::auth::store::now_unix(),
            },
        )?;
        let changes = apply::changes(previous, &plan.applied);
        if changes.is_empty() {
            return Ok(Outcome {
                applied: previous.cloned().unwrap_or(plan.applied),
                changes,
            });
        }
        self.commit(answer, &plan, previous)?;
        Ok(Outcome {
            applied: plan.applied,
            changes,
        })
    }

    fn commit(
        &self,
        answer: &Answer,
        plan: &Plan,
        previous: Option<&Applied>,
    ) -> Result<(), BootstrapError> {
        let mut db = Db::open(&crate::auth::path_in(&self.state_dir)).map_err(AuthError::from)?;
        // Read-only checks first: a clash refuses before anything is written.
        for ch in &plan.applied.channels {
            match db.channel(&ch.name) {
                Ok(local) if local.id != ch.id => {
                    return Err(BootstrapError::ChannelClash {
                        id: ch.id.clone(),
                        name: ch.name.clone(),
                        local_id: local.id,
                    });
                }
                Ok(_) | Err(AuthError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let in_use: Vec<&PathBuf> = previous.map(|p| p.files().collect()).unwrap_or_default();
        let dir = self.state_dir.join(apply::FILES_DIR);
        certs::files::ensure_private_dir(&dir).map_err(|source| BootstrapError::Write {
            path: dir.clone(),
            source,
        })?;
        let discard_new = || {
            for f in &plan.files {
                if !in_use.contains(&&f.path) {
                    let _ = std::fs::remove_file(&f.path);
                }
            }
        };
        for f in &plan.files {
            if std::fs::read(&f.path).is_ok_and(|b| b == f.bytes) {
                continue;
            }
            if let Err(source) = certs::files::write_atomic(&f.path, &f.bytes, 0o600) {
                discard_new();
                return Err(BootstrapError::Write {
                    path: f.path.clone(),
                    source,
                });
            }
        }
        // Validated exactly like the config file: the same loader, with the new layer.
        if let Err(e) = crate::config::load_layered(
            &self.source,
            self.profile.clone(),
            std::env::vars_os(),
            Some(&plan.applied.layer()),
        ) {
            discard_new();
            return Err(BootstrapError::Invalid(e));
        }
        for (ch, given) in plan.applied.channels.iter().zip(&answer.channels) {
            let exists = matches!(db.channel(&ch.id), Ok(local) if local.id == ch.id);
            if exists {
                db.update_channel_upstream(&ch.id, &ch.name, &ch.domain_id, &ch.id)?;
            } else {
                let metadata = match &given.metadata {
                    serde_json::Value::Null => None,
                    m => Some(m.to_string()),
                };
                db.add_channel_as(&NewChannel {
                    name: &ch.name,
                    domain_id: &ch.domain_id,
                    metadata: metadata.as_deref(),
                    id: Some(&ch.id),
                    upstream_id: Some(&ch.id),
                })?;
            }
        }
        // The commit point: the record names the new files.
        let record =
            zeroize::Zeroizing::new(serde_json::to_vec_pretty(&plan.applied).map_err(|e| {
                BootstrapError::Record {
                    path: record_path(&self.state_dir),
                    reason: e.to_string(),
                }
            })?);
        let path = record_path(&self.state_dir);
        certs::files::write_atomic(&path, &record, 0o600)
            .map_err(|source| BootstrapError::Write { path, source })?;
        for old in in_use {
            if !plan.files.iter().any(|f| &f.path == old) {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(())
    }
}
