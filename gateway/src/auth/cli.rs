//! `edgegw client|channel|connect|disconnect`: provisioning the auth store from the command
//! line. Works whether or not the daemon runs (WAL + busy timeout; the daemon picks changes up
//! within a second). Human output by default, JSON with `--json`. A client's secret is printed
//! only by `client add` and `client rotate-secret`.

use std::fmt::Write as _;

use serde_json::json;

use super::store::{AuditEvent, Channel, Client, Db, Grant, NewChannel};
use crate::cli::{ChannelCommand, ClientCommand, ConnectArgs};
use crate::config::Config;

fn open(config: &Config) -> anyhow::Result<Db> {
    Ok(Db::open(&super::path_in(&config.gateway.state_dir))?)
}

/// Records a management action made from the command line in the audit table, actor `cli`.
/// Written directly (the CLI has no audit thread; WAL and the busy timeout let it write while
/// the daemon runs). The change itself is already committed, so a failed audit write is a
/// warning, not a failed command. No-op when `auth.audit_max_events = 0`.
pub fn record_audit(
    db: &mut Db,
    config: &Config,
    action: &str,
    entity_type: &str,
    entity_id: &str,
) {
    let keep = config.auth.audit_max_events;
    if keep == 0 {
        return;
    }
    let event = AuditEvent::management(
        "cli",
        "cli",
        action,
        entity_type,
        Some(entity_id.to_owned()),
    );
    if let Err(e) = db.append_audit(&[event], keep) {
        tracing::warn!("{action} {entity_id}: done, but the audit event was not written: {e}");
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn client_json(c: &Client, secret: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if secret && let Some(obj) = v.as_object_mut() {
        obj.insert("secret".into(), json!(c.secret));
    }
    v
}

fn status(c: &Client) -> &'static str {
    if c.enabled { "enabled" } else { "disabled" }
}

fn rights(g: &Grant) -> &'static str {
    match (g.publish, g.subscribe) {
        (true, true) => "publish, subscribe",
        (true, false) => "publish",
        (false, true) => "subscribe",
        (false, false) => "none",
    }
}

fn client_text(c: &Client) -> String {
    format!(
        "id:        {}\nidentity:  {}\nname:      {}\nstatus:    {}\nmetadata:  {}\n",
        c.id,
        c.identity,
        c.name,
        status(c),
        c.metadata
    )
}

/// The secret to store: the given one, a generated PSK-compatible one (16 characters), or
/// `None` for the store to generate the default (43 characters).
fn chosen_secret(given: Option<&str>, psk_compatible: bool) -> anyhow::Result<Option<String>> {
    Ok(match (given, psk_compatible) {
        (Some(s), _) => Some(s.to_owned()),
        (None, true) => Some(super::secret::generate_kind(
            super::secret::SecretKind::PskCompatible,
        )?),
        (None, false) => None,
    })
}

/// `edgegw client …`
pub fn client(config: &Config, json: bool, cmd: &ClientCommand) -> anyhow::Result<()> {
    let mut db = open(config)?;
    match cmd {
        ClientCommand::Add {
            identity,
            name,
            secret,
            psk_compatible,
            metadata,
        } => {
            let secret = chosen_secret(secret.as_deref(), *psk_compatible)?;
            let c = db.add_client(
                identity,
                name.as_deref(),
                secret.as_deref(),
                metadata.as_deref(),
            )?;
            record_audit(&mut db, config, "client.create", "clients", &c.id);
            if json {
                print_json(&client_json(&c, true));
            } else {
                print!(
                    "client added\n{}secret:    {}\n\nThe secret is shown only now (and by `client rotate-secret`); store it.\n",
                    client_text(&c),
                    c.secret
                );
            }
        }
        ClientCommand::List => {
            let list = db.list_clients()?;
            if json {
                print_json(&json!(
                    list.iter()
                        .map(|c| client_json(c, false))
                        .collect::<Vec<_>>()
                ));
            } else if list.is_empty() {
                println!("no clients");
            } else {
                let mut out = format!("{:<36}  {:<8}  {:<24}  NAME\n", "ID", "STATUS", "IDENTITY");
                for c in &list {
                    let _ = writeln!(
                        out,
                        "{:<36}  {:<8}  {:<24}  {}",
                        c.id,
                        status(c),
                        c.identity,
                        c.name
                    );
                }
                print!("{out}");
            }
        }
        ClientCommand::Show { client } => {
            let c = db.client(client)?;
            let conns = db.connections_of(&c.id)?;
            if json {
                let mut v = client_json(&c, false);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(
                        "connections".into(),
                        json!(
                            conns
                                .iter()
                                .map(|(ch, g)| json!({
                                    "channel_id": ch.id,
                                    "channel": ch.name,
                                    "publish": g.publish,
                                    "subscribe": g.subscribe,
                                }))
                                .collect::<Vec<_>>()
                        ),
                    );
                }
                print_json(&v);
            } else {
                let mut out = client_text(&c);
                if conns.is_empty() {
                    out.push_str("connections: none\n");
                } else {
                    out.push_str("connections:\n");
                    for (ch, g) in &conns {
                        let _ = writeln!(out, "  {} ({}): {}", ch.name, ch.id, rights(g));
                    }
                }
                print!("{out}");
            }
        }
        ClientCommand::Enable { client } | ClientCommand::Disable { client } => {
            let enable = matches!(cmd, ClientCommand::Enable { .. });
            let c = db.set_client_enabled(client, enable)?;
            let action = if enable {
                "client.enable"
            } else {
                "client.disable"
            };
            record_audit(&mut db, config, action, "clients", &c.id);
            if json {
                print_json(&client_json(&c, false));
            } else {
                println!("client {} ({}) {}", c.identity, c.id, status(&c));
            }
        }
        ClientCommand::Remove { client } => {
            let c = db.remove_client(client)?;
            record_audit(&mut db, config, "client.delete", "clients", &c.id);
            if json {
                print_json(&client_json(&c, false));
            } else {
                println!("client {} ({}) removed", c.identity, c.id);
            }
        }
        ClientCommand::RotateSecret {
            client,
            secret,
            psk_compatible,
        } => {
            let secret = chosen_secret(secret.as_deref(), *psk_compatible)?;
            let c = db.rotate_secret(client, secret.as_deref())?;
            record_audit(&mut db, config, "client.rotate_secret", "clients", &c.id);
            if json {
                print_json(&json!({"id": c.id, "identity": c.identity, "secret": c.secret}));
            } else {
                println!(
                    "new secret for {} ({}): {}\nThe old secret no longer works; the new one is shown only now.",
                    c.identity, c.id, c.secret
                );
            }
        }
    }
    Ok(())
}

fn channel_text(ch: &Channel) -> String {
    format!(
        "id:          {}\nname:        {}\ndomain_id:   {}\nupstream_id: {}\nmetadata:    {}\n",
        ch.id, ch.name, ch.domain_id, ch.upstream_id, ch.metadata
    )
}

/// `edgegw channel …`
pub fn channel(config: &Config, json: bool, cmd: &ChannelCommand) -> anyhow::Result<()> {
    let mut db = open(config)?;
    match cmd {
        ChannelCommand::Add {
            name,
            domain,
            metadata,
            id,
            upstream_id,
        } => {
            let domain = domain.as_deref().unwrap_or(&config.gateway.domain_id);
            super::check_upstream_domain(config, domain)?;
            let ch = db.add_channel_as(&NewChannel {
                name,
                domain_id: domain,
                metadata: metadata.as_deref(),
                id: id.as_deref(),
                upstream_id: upstream_id.as_deref(),
            })?;
            record_audit(&mut db, config, "channel.create", "channels", &ch.id);
            if json {
                print_json(&json!(ch));
            } else {
                print!("channel added\n{}", channel_text(&ch));
            }
        }
        ChannelCommand::List => {
            let list = db.list_channels()?;
            if json {
                print_json(&json!(list));
            } else if list.is_empty() {
                println!("no channels");
            } else {
                let mut out = format!(
                    "{:<36}  {:<24}  {:<36}  UPSTREAM ID\n",
                    "ID", "NAME", "DOMAIN"
                );
                for ch in &list {
                    let _ = writeln!(
                        out,
                        "{:<36}  {:<24}  {:<36}  {}",
                        ch.id, ch.name, ch.domain_id, ch.upstream_id
                    );
                }
                print!("{out}");
            }
        }
        ChannelCommand::Remove { channel } => {
            let ch = db.remove_channel(channel)?;
            record_audit(&mut db, config, "channel.delete", "channels", &ch.id);
            if json {
                print_json(&json!(ch));
            } else {
                println!("channel {} ({}) removed", ch.name, ch.id);
            }
        }
    }
    Ok(())
}

/// `edgegw connect` (`grant`) and `edgegw disconnect`: neither flag means both.
pub fn connect(config: &Config, json: bool, args: &ConnectArgs, grant: bool) -> anyhow::Result<()> {
    let mut db = open(config)?;
    let (publish, subscribe) = match (args.publish, args.subscribe) {
        (false, false) => (true, true),
        flags => flags,
    };
    let client = db.client(&args.client)?;
    let channel = db.channel(&args.channel)?;
    let remaining = if grant {
        Some(db.connect(&client.id, &channel.id, publish, subscribe)?)
    } else {
        db.disconnect(&client.id, &channel.id, publish, subscribe)?
    };
    record_audit(
        &mut db,
        config,
        if grant {
            "connection.create"
        } else {
            "connection.delete"
        },
        "connections",
        &format!("{}>{}", client.id, channel.id),
    );
    let remaining = remaining.unwrap_or(Grant {
        client_id: client.id.clone(),
        channel_id: channel.id.clone(),
        publish: false,
        subscribe: false,
    });
    if json {
        print_json(&json!({
            "client_id": client.id,
            "client": client.identity,
            "channel_id": channel.id,
            "channel": channel.name,
            "publish": remaining.publish,
            "subscribe": remaining.subscribe,
        }));
    } else {
        println!(
            "{} on {}: {}",
            client.identity,
            channel.name,
            rights(&remaining)
        );
    }
    Ok(())
}
