//! What an answer means for this gateway, decided without IO: the persisted record
//! ([`Applied`]), the config layer it gives ([`Applied::layer`]), the files to write, the
//! channels to mirror, and what changed against the previous record ([`changes`]). The
//! shell (`super::commit`) does the writing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::decode::{Answer, hex};
use crate::config::Layer;

/// The record format version of `bootstrap.json`.
pub const VERSION: u32 = 1;
/// Under the state directory: the record and the files it names.
pub const STATE_FILE: &str = "bootstrap.json";
pub const FILES_DIR: &str = "bootstrap";

/// A mirrored channel: local id = upstream id = the SuperMQ channel id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedChannel {
    pub id: String,
    pub name: String,
    pub domain_id: String,
}

/// The applied bootstrap answer as persisted (`<state_dir>/bootstrap.json`, 0600: it holds
/// the client secret). A restart builds its config layer from this, offline.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u32,
    /// Unix seconds of the fetch that produced it.
    pub applied_at: i64,
    /// Where from: the service origin (no key) and the external id.
    pub origin: String,
    pub external_id: String,
    pub secure: bool,
    pub client_id: String,
    pub client_secret: String,
    pub domain_id: String,
    pub channels: Vec<AppliedChannel>,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied")
            .field("applied_at", &self.applied_at)
            .field("origin", &self.origin)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.client_secret);
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "channel `{channel}` has no SuperMQ domain id: set `[gateway] domain_id` in the bootstrap \
         config's content (or `domain_id` in the channel's metadata, or gateway.domain_id locally)"
    )]
    NoDomain { channel: String },
    #[error("the content's gateway.domain_id must be a string")]
    DomainType,
}

/// A file the plan writes (0600), named by its content so a new version never overwrites
/// the one in use.
#[derive(Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for PlannedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedFile")
            .field("path", &self.path)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// What applying an answer does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub applied: Applied,
    pub files: Vec<PlannedFile>,
}

/// Where the answer came from and what it falls back to.
#[derive(Debug, Clone)]
pub struct PlanContext<'a> {
    pub state_dir: &'a Path,
    pub origin: &'a str,
    pub external_id: &'a str,
    pub secure: bool,
    /// gateway.domain_id from the local config (file or environment).
    pub local_domain: &'a str,
    pub now_unix: i64,
}

fn file_for(dir: &Path, stem: &str, bytes: &[u8]) -> PlannedFile {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let short = hex(&digest.as_ref()[..8]);
    PlannedFile {
        path: dir.join(format!("{stem}-{short}.pem")),
        bytes: bytes.to_vec(),
    }
}

/// Decides what `answer` means. Domain of each channel: its metadata's `domain_id`, else the
/// content's `[gateway] domain_id`, else the local gateway.domain_id.
pub fn plan(answer: &Answer, ctx: &PlanContext<'_>) -> Result<Plan, PlanError> {
    let content_domain = match answer
        .content_table
        .get("gateway")
        .and_then(|g| g.get("domain_id"))
    {
        None => None,
        Some(toml::Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(PlanError::DomainType),
    };
    let domain_id = content_domain
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ctx.local_domain.to_owned());
    let mut channels = Vec::with_capacity(answer.channels.len());
    for ch in &answer.channels {
        let domain = ch.domain_id.clone().unwrap_or_else(|| domain_id.clone());
        if domain.is_empty() {
            return Err(PlanError::NoDomain {
                channel: ch.id.clone(),
            });
        }
        channels.push(AppliedChannel {
            id: ch.id.clone(),
            name: ch.name.clone(),
            domain_id: domain,
        });
    }
    let dir = ctx.state_dir.join(FILES_DIR);
    let mut files = Vec::new();
    let mut file = |stem: &str, bytes: Option<&[u8]>| {
        bytes.map(|b| {
            let f = file_for(&dir, stem, b);
            let path = f.path.clone();
            files.push(f);
            path
        })
    };
    let client_cert = file(
        "client-cert",
        answer.client_cert.as_deref().map(str::as_bytes),
    );
    let client_key = file(
        "client-key",
        answer.client_key.as_ref().map(|k| k.expose().as_bytes()),
    );
    let ca_cert = file("ca-cert", answer.ca_cert.as_deref().map(str::as_bytes));
    Ok(Plan {
        applied: Applied {
            version: VERSION,
            applied_at: ctx.now_unix,
            origin: ctx.origin.to_owned(),
            external_id: ctx.external_id.to_owned(),
            secure: ctx.secure,
            client_id: answer.client_id.clone(),
            client_secret: answer.client_secret.expose().to_owned(),
            domain_id,
            channels,
            content: answer.content.clone(),
            client_cert,
            client_key,
            ca_cert,
        },
        files,
    })
}

fn path_value(p: &Path) -> toml::Value {
    toml::Value::String(p.display().to_string())
}

impl Applied {
    /// The config layer this record gives (under the file and environment): the content,
    /// then `uplink.platform = "supermq"`, the client id and secret as MQTT username and
    /// password, the certificate files, and `gateway.domain_id`.
    pub fn layer(&self) -> Layer {
        // The content was checked when it was applied; a record edited by hand that no longer
        // parses gives just the identity part (and the loader reports its own errors).
        let mut table = super::decode::parse_content(&self.content).unwrap_or_default();
        let uplink = table
            .entry("uplink")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(uplink) = uplink {
            uplink
                .entry("platform")
                .or_insert_with(|| toml::Value::String("supermq".into()));
            uplink.insert(
                "username".into(),
                toml::Value::String(self.client_id.clone()),
            );
            uplink.insert(
                "password".into(),
                toml::Value::String(self.client_secret.clone()),
            );
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                uplink.insert("client_cert".into(), path_value(cert));
                uplink.insert("client_key".into(), path_value(key));
            }
            if let Some(ca) = &self.ca_cert {
                uplink.insert("ca_certs".into(), path_value(ca));
            }
        }
        if !self.domain_id.is_empty() {
            let gateway = table
                .entry("gateway")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(gateway) = gateway {
                gateway.insert(
                    "domain_id".into(),
                    toml::Value::String(self.domain_id.clone()),
                );
            }
        }
        Layer {
            table,
            label: format!(
                "bootstrap config ({} for {})",
                self.origin, self.external_id
            ),
        }
    }

    /// The files this record names.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.client_cert, &self.client_key, &self.ca_cert]
            .into_iter()
            .flatten()
    }
}

/// What differs from `old` to `new`, one line per change, never a secret's value.
pub fn changes(old: Option<&Applied>, new: &Applied) -> Vec<String> {
    let Some(old) = old else {
        return vec![format!(
            "first bootstrap: client {}, {} channel(s)",
            new.client_id,
            new.channels.len()
        )];
    };
    let mut out = Vec::new();
    if old.client_id != new.client_id {
        out.push(format!("client id {} -> {}", old.client_id, new.client_id));
    }
    if old.client_secret != new.client_secret {
        out.push("client secret changed".into());
    }
    if old.domain_id != new.domain_id {
        out.push(format!(
            "domain id `{}` -> `{}`",
            old.domain_id, new.domain_id
        ));
    }
    for ch in &new.channels {
        match old.channels.iter().find(|o| o.id == ch.id) {
            None => out.push(format!("channel added: {} ({})", ch.name, ch.id)),
            Some(o) if o != ch => {
                let mut what = Vec::new();
                if o.name != ch.name {
                    what.push(format!("name `{}` -> `{}`", o.name, ch.name));
                }
                if o.domain_id != ch.domain_id {
                    what.push(format!("domain `{}` -> `{}`", o.domain_id, ch.domain_id));
                }
                out.push(format!("channel {} changed: {}", ch.id, what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for o in &old.channels {
        if !new.channels.iter().any(|c| c.id == o.id) {
            out.push(format!(
                "channel no longer in the bootstrap config (kept locally): {} ({})",
                o.name, o.id
            ));
        }
    }
    if old.content != new.content {
        let old_t = super::decode::parse_content(&old.content).unwrap_or_default();
        let new_t = super::decode::parse_content(&new.content).unwrap_or_default();
        let mut keys = Vec::new();
        for section in old_t.keys().chain(new_t.keys()) {
            let o = old_t.get(section).and_then(toml::Value::as_table);
            let n = new_t.get(section).and_then(toml::Value::as_table);
            let names = o.into_iter().chain(n).flat_map(|t| t.keys());
            for key in names {
                let name = format!("{section}.{key}");
                if o.and_then(|t| t.get(key)) != n.and_then(|t| t.get(key)) && !keys.contains(&name)
                {
                    keys.push(name);
                }
            }
        }
        out.push(format!("content changed: {}", keys.join(", ")));
    }
    for (what, o, n) in [
        ("client certificate", &old.client_cert, &new.client_cert),
        ("client key", &old.client_key, &new.client_key),
        ("CA certificate", &old.ca_cert, &new.ca_cert),
    ] {
        if o != n {
            out.push(format!("{what} changed"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::decode::parse_answer;

    fn ctx(dir: &Path) -> PlanContext<'_> {
        PlanContext {
            state_dir: dir,
            origin: "https://bs:9013",
            external_id: "aa:bb",
            secure: false,
            local_domain: "",
            now_unix: 1_700_000_000,
        }
    }

    const PEM_C: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const PEM_K: &str = "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n";

    fn answer(content: &str, cert: bool) -> Answer {
        let certs = if cert {
            format!(
                r#","client_cert":{},"client_key":{}"#,
                serde_json::to_string(PEM_C).unwrap(),
                serde_json::to_string(PEM_K).unwrap()
            )
        } else {
            String::new()
        };
        parse_answer(
            format!(
                r#"{{"client_id":"gw-1","client_secret":"pw-1","channels":[{{"id":"ch-1","name":"temp"}},{{"id":"ch-2","metadata":{{"domain_id":"d2"}}}}],"content":{}{certs}}}"#,
                serde_json::to_string(content).unwrap()
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn domain_comes_from_channel_metadata_then_content_then_local() {
        let dir = Path::new("/state");
        let p = plan(&answer("[gateway]\ndomain_id = \"d1\"", false), &ctx(dir)).unwrap();
        let domains: Vec<_> = p
            .applied
            .channels
            .iter()
            .map(|c| c.domain_id.as_str())
            .collect();
        assert_eq!(domains, ["d1", "d2"]);
        let e = plan(&answer("", false), &ctx(dir)).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoDomain {
                channel: "ch-1".into()
            }
        );
        let local = PlanContext {
            local_domain: "d0",
            ..ctx(dir)
        };
        assert_eq!(
            plan(&answer("", false), &local).unwrap().applied.channels[0].domain_id,
            "d0"
        );
    }

    #[test]
    fn the_layer_carries_identity_files_platform_and_content() {
        let dir = Path::new("/state");
        let p = plan(
            &answer(
                "[gateway]\ndomain_id = \"d1\"\n[uplink]\nurl = \"mqtts://b:8883\"",
                true,
            ),
            &ctx(dir),
        )
        .unwrap();
        assert_eq!(p.files.len(), 2);
        assert!(
            p.files
                .iter()
                .all(|f| f.path.starts_with("/state/bootstrap"))
        );
        let layer = p.applied.layer();
        let up = layer.table["uplink"].as_table().unwrap();
        assert_eq!(up["platform"].as_str(), Some("supermq"));
        assert_eq!(up["username"].as_str(), Some("gw-1"));
        assert_eq!(up["password"].as_str(), Some("pw-1"));
        assert_eq!(up["url"].as_str(), Some("mqtts://b:8883"));
        assert_eq!(
            up["client_cert"].as_str().map(PathBuf::from),
            p.applied.client_cert.clone()
        );
        assert_eq!(layer.table["gateway"]["domain_id"].as_str(), Some("d1"));
        // Content may choose the generic profile.
        let p = plan(
            &answer(
                "[gateway]\ndomain_id = \"d1\"\n[uplink]\nplatform = \"mqtt\"",
                false,
            ),
            &ctx(dir),
        )
        .unwrap();
        assert_eq!(
            p.applied.layer().table["uplink"]["platform"].as_str(),
            Some("mqtt")
        );
        assert!(!format!("{:?}", p.applied).contains("pw-1"));
    }

    #[test]
    fn changes_name_what_differs_without_secrets() {
        let dir = Path::new("/state");
        let a = plan(&answer("[gateway]\ndomain_id = \"d1\"", false), &ctx(dir))
            .unwrap()
            .applied;
        assert!(changes(Some(&a), &a).is_empty());
        assert!(changes(None, &a)[0].starts_with("first bootstrap"));
        let mut b = a.clone();
        b.client_secret = "pw-2".into();
        b.channels[0].name = "temperature".into();
        b.channels.pop();
        b.content = "[gateway]\ndomain_id = \"d1\"\n[uplink]\ntopic_template = \"m/{domain}/c/{channel}/x\"".into();
        let c = changes(Some(&a), &b).join("\n");
        assert!(c.contains("client secret changed"), "{c}");
        assert!(!c.contains("pw-"), "{c}");
        assert!(c.contains("name `temp` -> `temperature`"), "{c}");
        assert!(
            c.contains("no longer in the bootstrap config (kept locally): ch-2"),
            "{c}"
        );
        assert!(c.contains("content changed: uplink.topic_template"), "{c}");
    }
}
