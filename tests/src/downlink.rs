//! Setup for the downlink tests (commands from the upstream broker to CoAP sensors): a real
//! mosquitto with mTLS, the uplink environment for the daemon, channel `lamps` in domain `dom`
//! and client `lamp-1` connected to it.

use std::path::Path;

use crate::json_cli;
use crate::mosquitto::Mosquitto;
use crate::pki::Pki;
use crate::uplink::env;

/// Broker, PKI and gateway state in a scratch directory (removed last, on drop).
#[derive(Debug)]
pub struct Downlink {
    pub broker: Mosquitto,
    pub pki: Pki,
    /// The daemon's environment for the uplink (`EDGEGW_UPLINK_*`).
    pub vars: Vec<(String, String)>,
    /// The id of channel `lamps`.
    pub channel_id: String,
    /// `lamp-1`'s secret.
    pub secret: String,
    pub dir: tempfile::TempDir,
}

impl Downlink {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(&dir.path().join("pki"));
        let broker = Mosquitto::start(&dir.path().join("broker"), &pki);
        let vars = env(dir.path(), &broker, &pki);
        let channel = json_cli(
            dir.path(),
            &vars,
            &["channel", "add", "lamps", "--domain", "dom"],
        );
        let channel_id = channel["id"].as_str().expect("channel id").to_owned();
        let client = json_cli(dir.path(), &vars, &["client", "add", "lamp-1"]);
        let secret = client["secret"].as_str().expect("secret").to_owned();
        json_cli(dir.path(), &vars, &["connect", "lamp-1", "lamps"]);
        Self {
            broker,
            pki,
            vars,
            channel_id,
            secret,
            dir,
        }
    }

    /// The scratch directory (the daemon's working directory).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `edgegw --json <args>` with the uplink environment.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        json_cli(self.path(), &self.vars, args)
    }
}

impl Default for Downlink {
    fn default() -> Self {
        Self::new()
    }
}
