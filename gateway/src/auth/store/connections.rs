//! The `connections` table (client ↔ channel grants).

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub client_id: String,
    pub channel_id: String,
    pub publish: bool,
    pub subscribe: bool,
}

impl Db {
    /// Grants `publish` and/or `subscribe` (added to what the client already has).
    pub fn connect(
        &mut self,
        client: &str,
        channel: &str,
        publish: bool,
        subscribe: bool,
    ) -> Result<Grant, AuthError> {
        if !publish && !subscribe {
            return Err(Invalid::NoOperation.into());
        }
        let client = self.client(client)?;
        let channel = self.channel(channel)?;
        self.conn
            .execute(
                "INSERT INTO connections (client_id, channel_id, publish, subscribe, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client_id, channel_id) DO UPDATE SET
                   publish = max(publish, excluded.publish),
                   subscribe = max(subscribe, excluded.subscribe)",
                params![client.id, channel.id, publish, subscribe, now_unix()],
            )
            .map_err(|e| self.fail(e))?;
        self.connection(&client.id, &channel.id)?
            .ok_or_else(|| AuthError::NotFound {
                what: "connection",
                value: format!("{} → {}", client.identity, channel.name),
            })
    }

    /// Revokes `publish` and/or `subscribe`; the connection disappears when neither is left.
    /// Returns what remains.
    pub fn disconnect(
        &mut self,
        client: &str,
        channel: &str,
        publish: bool,
        subscribe: bool,
    ) -> Result<Option<Grant>, AuthError> {
        let client = self.client(client)?;
        let channel = self.channel(channel)?;
        let Some(existing) = self.connection(&client.id, &channel.id)? else {
            return Err(AuthError::NotFound {
                what: "connection",
                value: format!("{} → {}", client.identity, channel.name),
            });
        };
        let left_pub = existing.publish && !publish;
        let left_sub = existing.subscribe && !subscribe;
        if left_pub || left_sub {
            self.conn
                .execute(
                    "UPDATE connections SET publish = ?3, subscribe = ?4
                     WHERE client_id = ?1 AND channel_id = ?2",
                    params![client.id, channel.id, left_pub, left_sub],
                )
                .map_err(|e| self.fail(e))?;
        } else {
            self.conn
                .execute(
                    "DELETE FROM connections WHERE client_id = ?1 AND channel_id = ?2",
                    params![client.id, channel.id],
                )
                .map_err(|e| self.fail(e))?;
        }
        self.connection(&client.id, &channel.id)
    }

    fn connection(&self, client_id: &str, channel_id: &str) -> Result<Option<Grant>, AuthError> {
        self.conn
            .query_row(
                "SELECT client_id, channel_id, publish, subscribe FROM connections
                 WHERE client_id = ?1 AND channel_id = ?2",
                [client_id, channel_id],
                connection_row,
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    /// The connections of one client (`client show`), with channel names.
    pub fn connections_of(&self, client_id: &str) -> Result<Vec<(Channel, Grant)>, AuthError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT ch.id, ch.name, ch.domain_id, ch.metadata, ch.created_at, ch.updated_at,
                        ch.upstream_id, c.client_id, c.channel_id, c.publish, c.subscribe
                 FROM connections c JOIN channels ch ON ch.id = c.channel_id
                 WHERE c.client_id = ?1 ORDER BY ch.name",
            )
            .map_err(|e| self.fail(e))?;
        st.query_map([client_id], |r| {
            Ok((
                channel_row(r)?,
                Grant {
                    client_id: r.get(7)?,
                    channel_id: r.get(8)?,
                    publish: r.get(9)?,
                    subscribe: r.get(10)?,
                },
            ))
        })
        .map_err(|e| self.fail(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.fail(e))
    }
}

pub(super) fn connection_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        client_id: r.get(0)?,
        channel_id: r.get(1)?,
        publish: r.get(2)?,
        subscribe: r.get(3)?,
    })
}
