//! The `channels` table.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    /// The channel's id on the upstream platform (uplink topics use it); the local id unless
    /// the channel was created with another one.
    pub upstream_id: String,
    pub metadata: serde_json::Value,
    pub tags: Vec<String>,
    /// Unix seconds, shown as RFC 3339 (`2026-12-02T00:47:45Z`) in JSON.
    #[serde(serialize_with = "super::serialize_rfc3339")]
    pub created_at: i64,
    #[serde(serialize_with = "super::serialize_rfc3339")]
    pub updated_at: i64,
}

/// What [`Db::add_channel_as`] creates.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewChannel<'a> {
    pub name: &'a str,
    pub domain_id: &'a str,
    pub metadata: Option<&'a str>,
    /// Caller-chosen local id (default: a new UUID).
    pub id: Option<&'a str>,
    /// The channel's id upstream (default: the local id).
    pub upstream_id: Option<&'a str>,
    pub tags: &'a [String],
}

impl Db {
    pub fn add_channel(
        &mut self,
        name: &str,
        domain_id: &str,
        metadata: Option<&str>,
    ) -> Result<Channel, AuthError> {
        self.add_channel_as(&NewChannel {
            name,
            domain_id,
            metadata,
            id: None,
            upstream_id: None,
            tags: &[],
        })
    }

    /// Creates a channel with a caller-chosen id and/or upstream channel id (a mirror of a
    /// SuperMQ channel); without them the id is a new UUID and the upstream id is the id.
    pub fn add_channel_as(&mut self, new: &NewChannel<'_>) -> Result<Channel, AuthError> {
        validate_channel_name(new.name)?;
        validate_domain(new.domain_id)?;
        let metadata = parse_metadata(new.metadata)?;
        validate_tags(new.tags)?;
        let now = now_unix();
        let id = match new.id {
            Some(id) => {
                validate_channel_id("id", id)?;
                id.to_owned()
            }
            None => secret::new_uuid()?,
        };
        let upstream_id = match new.upstream_id {
            Some(up) => {
                validate_channel_id("upstream id", up)?;
                up.to_owned()
            }
            None => id.clone(),
        };
        let result = self.conn.execute(
            "INSERT INTO channels (id, domain_id, name, metadata, created_at, updated_at, upstream_id, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
            params![
                id,
                new.domain_id,
                new.name,
                metadata.to_string(),
                now,
                upstream_id,
                tags_text(new.tags)
            ],
        );
        match result {
            Ok(_) => self.channel(&id),
            Err(e) if is_unique(&e, "channels.name") => Err(AuthError::Duplicate {
                what: "channel",
                value: new.name.to_owned(),
            }),
            Err(e) if is_unique(&e, "channels.id") => Err(AuthError::Duplicate {
                what: "channel",
                value: id,
            }),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Sets a channel's name, domain and upstream id (bootstrap keeps mirrored channels in
    /// step with the platform). Unchanged values do not bump the change generation.
    pub fn update_channel_upstream(
        &mut self,
        key: &str,
        name: &str,
        domain_id: &str,
        upstream_id: &str,
    ) -> Result<Channel, AuthError> {
        validate_channel_name(name)?;
        validate_domain(domain_id)?;
        validate_channel_id("upstream id", upstream_id)?;
        let channel = self.channel(key)?;
        if channel.name == name
            && channel.domain_id == domain_id
            && channel.upstream_id == upstream_id
        {
            return Ok(channel);
        }
        let result = self.conn.execute(
            "UPDATE channels SET name = ?2, domain_id = ?3, upstream_id = ?4, updated_at = ?5
             WHERE id = ?1",
            params![channel.id, name, domain_id, upstream_id, now_unix()],
        );
        match result {
            Ok(_) => self.channel(&channel.id),
            Err(e) if is_unique(&e, "channels.name") => Err(AuthError::Duplicate {
                what: "channel",
                value: name.to_owned(),
            }),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Changes a channel's name, metadata and/or tags (management API `PATCH /channels/{id}`).
    pub fn update_channel(
        &mut self,
        key: &str,
        name: Option<&str>,
        metadata: Option<&str>,
        tags: Option<&[String]>,
    ) -> Result<Channel, AuthError> {
        let channel = self.channel(key)?;
        let name = name.unwrap_or(&channel.name);
        validate_channel_name(name)?;
        let metadata = match metadata {
            Some(m) => parse_metadata(Some(m))?,
            None => channel.metadata.clone(),
        };
        let tags = tags.unwrap_or(&channel.tags);
        validate_tags(tags)?;
        let result = self.conn.execute(
            "UPDATE channels SET name = ?2, metadata = ?3, tags = ?4, updated_at = ?5 WHERE id = ?1",
            params![channel.id, name, metadata.to_string(), tags_text(tags), now_unix()],
        );
        match result {
            Ok(_) => self.channel(&channel.id),
            Err(e) if is_unique(&e, "channels.name") => Err(AuthError::Duplicate {
                what: "channel",
                value: name.to_owned(),
            }),
            Err(e) => Err(self.err(e).into()),
        }
    }

    /// Replaces a channel's tags (SuperMQ's `PATCH /channels/{id}/tags`).
    pub fn set_channel_tags(&mut self, key: &str, tags: &[String]) -> Result<Channel, AuthError> {
        self.update_channel(key, None, None, Some(tags))
    }

    pub fn list_channels(&self) -> Result<Vec<Channel>, AuthError> {
        self.rows(&format!("{CHANNEL_SELECT} ORDER BY name"), channel_row)
    }

    /// A channel by id or name (an id wins).
    pub fn channel(&self, key: &str) -> Result<Channel, AuthError> {
        self.by_id_or_name(CHANNEL_SELECT, "name", key, "channel", channel_row)
    }

    pub fn remove_channel(&mut self, key: &str) -> Result<Channel, AuthError> {
        let channel = self.channel(key)?;
        self.conn
            .execute("DELETE FROM channels WHERE id = ?1", [&channel.id])
            .map_err(|e| self.fail(e))?;
        Ok(channel)
    }
}

pub(super) const CHANNEL_SELECT: &str =
    "SELECT id, name, domain_id, metadata, created_at, updated_at, upstream_id, tags FROM channels";

/// A row of [`CHANNEL_SELECT`]'s columns, in its order (`connections_of` selects the same
/// eight first).
pub(super) fn channel_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Channel> {
    let id: String = r.get(0)?;
    let upstream_id: String = r.get(6)?;
    Ok(Channel {
        upstream_id: if upstream_id.is_empty() {
            id.clone()
        } else {
            upstream_id
        },
        id,
        name: r.get(1)?,
        domain_id: r.get(2)?,
        metadata: json_column(r, 3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        tags: tags_column(r, 7)?,
    })
}
