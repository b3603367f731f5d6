//! The command line: `edgegw <command>`. Parsing only; main.rs dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "edgegw",
    version,
    about = "IoT edge gateway: CoAP, CoAPS and serial sensors in; durable, mutual-TLS MQTT out"
)]
#[command(propagate_version = true, disable_help_subcommand = true)]
pub struct Cli {
    /// Configuration file [default: /etc/edgegw/edgegw.toml; none with --dev].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Development profile: state in ./.edgegw-dev/, loopback listeners, no root needed.
    #[arg(long, global = true)]
    pub dev: bool,
    /// Machine-readable JSON output for commands that list or create something.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon.
    Run,
    /// Validate the configuration and print it with secrets redacted (exit 78 if invalid).
    CheckConfig,
    /// Manage clients (sensors) in the local auth store.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage channels in the local auth store.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Allow a client to publish and/or subscribe on a channel (both when neither flag is given).
    Connect(ConnectArgs),
    /// Revoke a client's publish and/or subscribe right on a channel (both when neither is given).
    Disconnect(ConnectArgs),
    /// PKI: development CA, device certificates, revocation.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Ask the running daemon for its state (uplink, queue depth, certificate expiry).
    Status,
    /// Messages the upstream refused (uplink.quarantine_after times): list, re-queue, drop.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Fetch this gateway's config from the bootstrap service ([bootstrap]) and apply it now;
    /// a running daemon picks it up on SIGHUP.
    Bootstrap,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Add a client; its secret is generated unless given, and printed once.
    Add {
        /// Unique identity (DTLS-PSK identity, certificate CN, serial AUTH name).
        identity: String,
        #[arg(long)]
        name: Option<String>,
        /// Use this secret (at least 16 bytes) instead of generating one.
        #[arg(long)]
        secret: Option<String>,
        /// Generate a 16-character secret (96 bits) instead of 43 (256 bits): usable as the
        /// DTLS-PSK key of tinydtls-based sensors, which keep at most 16 key bytes.
        #[arg(long, conflicts_with = "secret")]
        psk_compatible: bool,
        /// Metadata as a JSON object.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
    },
    /// List clients.
    List,
    /// Show one client (by id or identity).
    Show { client: String },
    /// Enable a client.
    Enable { client: String },
    /// Disable a client: refused from its next message on.
    Disable { client: String },
    /// Remove a client and its connections.
    Remove { client: String },
    /// Replace a client's secret; the new one is printed once.
    RotateSecret {
        client: String,
        #[arg(long)]
        secret: Option<String>,
        /// Generate a 16-character secret (see `client add --psk-compatible`).
        #[arg(long, conflicts_with = "secret")]
        psk_compatible: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Add a channel with a unique local name.
    Add {
        name: String,
        /// Upstream domain id [default: gateway.domain_id].
        #[arg(long)]
        domain: Option<String>,
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// Local channel id [default: a new UUID]; use the SuperMQ channel id to mirror a
        /// platform channel under the same id.
        #[arg(long)]
        id: Option<String>,
        /// The channel's id on the upstream platform, used in uplink topics [default: the
        /// local id].
        #[arg(long, value_name = "ID")]
        upstream_id: Option<String>,
    },
    /// List channels.
    List,
    /// Remove a channel (by id or name) and its connections.
    Remove { channel: String },
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Client id or identity.
    pub client: String,
    /// Channel id or name.
    pub channel: String,
    #[arg(long)]
    pub publish: bool,
    #[arg(long)]
    pub subscribe: bool,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined messages (oldest first): id, channel, reason, attempts, payload.
    List {
        /// Only ids above this one (paging: at most 1000 per answer).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Queue a quarantined message again (at the end of the queue); do this once the upstream
    /// allows it (e.g. the gateway's client was connected to the channel).
    Requeue { id: u64 },
    /// Drop a quarantined message for good (counted in edgegw_outbox_quarantine_dropped_total).
    Drop { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a development PKI in DIR (CA, DTLS server, uplink client, broker, device example).
    InitDev { dir: PathBuf },
    /// Issue a device certificate for a client from the device CA.
    Issue {
        client: String,
        /// Validity, e.g. 8760h or 30d.
        #[arg(long, default_value = "8760h")]
        ttl: String,
        /// Directory to write the certificate (and key) into [default: current directory].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sign this CSR (PEM) instead of generating a key: the key never leaves the device.
        #[arg(long)]
        csr: Option<PathBuf>,
    },
    /// Revoke a device certificate (by client or serial).
    Revoke { target: String },
    /// List issued device certificates.
    List,
    /// Export a signed certificate revocation list.
    Crl {
        #[arg(long)]
        out: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dev_flag_is_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from(["edgegw", "run", "--dev"]).unwrap();
        assert!(cli.dev);
        assert!(matches!(cli.command, Command::Run));
        let cli =
            Cli::try_parse_from(["edgegw", "client", "list", "--json", "--config", "/x.toml"])
                .unwrap();
        assert!(cli.json);
        assert_eq!(cli.config, Some(PathBuf::from("/x.toml")));
    }
}
