//! The `clients` table.

use super::*;

/// A client row. The secret is never serialized: only `client add` / `rotate-secret` show it,
/// explicitly.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Client {
    pub id: String,
    pub identity: String,
    pub name: String,
    #[serde(skip)]
    pub secret: String,
    #[serde(rename = "status", serialize_with = "status")]
    pub enabled: bool,
    pub metadata: serde_json::Value,
    pub tags: Vec<String>,
    /// Unix seconds, shown as RFC 3339 (`2026-12-02T00:47:45Z`) in JSON.
    #[serde(serialize_with = "super::serialize_rfc3339")]
    pub created_at: i64,
    #[serde(serialize_with = "super::serialize_rfc3339")]
    pub updated_at: i64,
}

/// What [`Db::add_client_as`] creates.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewClient<'a> {
    pub identity: &'a str,
    pub name: Option<&'a str>,
    /// Generated when `None`.
    pub secret: Option<&'a str>,
    pub metadata: Option<&'a str>,
    /// Caller-chosen id (a UUID, SuperMQ's rule; default: a new UUID).
    pub id: Option<&'a str>,
    pub tags: &'a [String],
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

pub(super) fn status<S: serde::Serializer>(enabled: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *enabled { "enabled" } else { "disabled" })
}

impl Db {
    /// Adds a client; the secret is generated when `secret` is `None`. Returns the row with
    /// its secret.
    pub fn add_client(
        &mut self,
        identity: &str,
        name: Option<&str>,
        secret: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<Client, AuthError> {
        self.add_client_as(&NewClient {
            identity,
            name,
            secret,
            metadata,
            id: None,
            tags: &[],
        })
    }

    /// Adds a client with a caller-chosen id and/or tags. A chosen id already used as another
    /// client's id or identity is a duplicate: lookups take either, so it would be ambiguous.
    pub fn add_client_as(&mut self, new: &NewClient<'_>) -> Result<Client, AuthError> {
        let identity = new.identity;
        validate_identity(identity)?;
        let name = new.name.unwrap_or(identity);
        validate_text("name", name, 256)?;
        validate_tags(new.tags)?;
        if let Some(id) = new.id {
            validate_client_id(id)?;
            match self.client(id) {
                Ok(_) => {
                    return Err(AuthError::Duplicate {
                        what: "client",
                        value: id.to_owned(),
                    });
                }
                Err(AuthError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let secret = match new.secret {
            Some(s) => {
                secret::validate(s)?;
                s.to_owned()
            }
            None => secret::generate()?,
        };
        let metadata = parse_metadata(new.metadata)?;
        let now = now_unix();
        let id = match new.id {
            Some(id) => id.to_owned(),
            None => secret::new_uuid()?,
        };
        let result = self.conn.execute(
            "INSERT INTO clients (id, identity, name, secret, enabled, metadata, created_at, updated_at, tags)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6, ?7)",
            params![id, identity, name, secret, metadata.to_string(), now, tags_text(new.tags)],
        );
        match result {
            Ok(_) => {}
            Err(e) if is_unique(&e, "clients.id") => {
                return Err(AuthError::Duplicate {
                    what: "client",
                    value: id,
                });
            }
            Err(e) if is_unique(&e, "clients.identity") => {
                return Err(AuthError::Duplicate {
                    what: "client",
                    value: identity.to_owned(),
                });
            }
            Err(e) if is_unique(&e, "clients.secret") => {
                return Err(Invalid::SecretInUse.into());
            }
            Err(e) => return Err(self.fail(e)),
        }
        self.client(identity)
    }

    pub fn list_clients(&self) -> Result<Vec<Client>, AuthError> {
        self.rows(&format!("{CLIENT_SELECT} ORDER BY identity"), client_row)
    }

    /// A client by id or identity (an id wins).
    pub fn client(&self, key: &str) -> Result<Client, AuthError> {
        self.by_id_or_name(CLIENT_SELECT, "identity", key, "client", client_row)
    }

    pub fn set_client_enabled(&mut self, key: &str, enabled: bool) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        self.conn
            .execute(
                "UPDATE clients SET enabled = ?2, updated_at = ?3 WHERE id = ?1",
                params![client.id, enabled, now_unix()],
            )
            .map_err(|e| self.fail(e))?;
        self.client(&client.id)
    }

    pub fn remove_client(&mut self, key: &str) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        self.conn
            .execute("DELETE FROM clients WHERE id = ?1", [&client.id])
            .map_err(|e| self.fail(e))?;
        Ok(client)
    }

    /// Changes a client's name, metadata and/or tags (management API `PATCH /clients/{id}`).
    pub fn update_client(
        &mut self,
        key: &str,
        name: Option<&str>,
        metadata: Option<&str>,
        tags: Option<&[String]>,
    ) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        let name = name.unwrap_or(&client.name);
        validate_text("name", name, 256)?;
        let metadata = match metadata {
            Some(m) => parse_metadata(Some(m))?,
            None => client.metadata.clone(),
        };
        let tags = tags.unwrap_or(&client.tags);
        validate_tags(tags)?;
        self.conn
            .execute(
                "UPDATE clients SET name = ?2, metadata = ?3, tags = ?4, updated_at = ?5 WHERE id = ?1",
                params![client.id, name, metadata.to_string(), tags_text(tags), now_unix()],
            )
            .map_err(|e| self.fail(e))?;
        self.client(&client.id)
    }

    /// Replaces a client's tags (SuperMQ's `PATCH /clients/{id}/tags`).
    pub fn set_client_tags(&mut self, key: &str, tags: &[String]) -> Result<Client, AuthError> {
        self.update_client(key, None, None, Some(tags))
    }

    /// Replaces a client's secret (generated when `secret` is `None`); returns the row with the
    /// new secret.
    pub fn rotate_secret(&mut self, key: &str, secret: Option<&str>) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        let secret = match secret {
            Some(s) => {
                secret::validate(s)?;
                s.to_owned()
            }
            None => secret::generate()?,
        };
        let result = self.conn.execute(
            "UPDATE clients SET secret = ?2, updated_at = ?3 WHERE id = ?1",
            params![client.id, secret, now_unix()],
        );
        match result {
            Ok(_) => self.client(&client.id),
            Err(e) if is_unique(&e, "clients.secret") => Err(Invalid::SecretInUse.into()),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// What the in-memory snapshot keeps of a client: no name, metadata, tags or times, so a
/// (re)load with many clients does not parse two JSON columns per row only to drop them.
pub struct AuthClient {
    pub id: String,
    pub identity: String,
    pub secret: String,
    pub enabled: bool,
}

/// Never shows the secret.
impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

pub(super) const AUTH_CLIENT_SELECT: &str = "SELECT id, identity, secret, enabled FROM clients";

pub(super) fn auth_client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuthClient> {
    Ok(AuthClient {
        id: r.get(0)?,
        identity: r.get(1)?,
        secret: r.get(2)?,
        enabled: r.get(3)?,
    })
}

pub(super) const CLIENT_SELECT: &str = "SELECT id, identity, name, secret, enabled, metadata, created_at, updated_at, tags FROM clients";

pub(super) fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Client> {
    Ok(Client {
        id: r.get(0)?,
        identity: r.get(1)?,
        name: r.get(2)?,
        secret: r.get(3)?,
        enabled: r.get(4)?,
        metadata: json_column(r, 5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        tags: tags_column(r, 8)?,
    })
}
