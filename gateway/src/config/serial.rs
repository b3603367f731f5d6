//! `[serial]` and `[[serial.ports]]`: the serial sensor adapter. Ports are an array of tables,
//! so they can only come from the config file (an environment variable cannot describe one);
//! the adapter-wide keys can be overridden by `EDGEGW_SERIAL_<KEY>` as usual.

use std::path::PathBuf;

use hal::serial::{DataBits, FlowControl, Parity, SerialSettings, StopBits};
use serde::{Deserialize, Deserializer, Serialize};

use super::Check;
use super::value::{Duration, number};

/// Shortest and longest accepted `serial.max_line`.
const MAX_LINE_RANGE: std::ops::RangeInclusive<usize> = 16..=65_536;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSerial {
    #[serde(deserialize_with = "opt_number")]
    max_line: Option<usize>,
    #[serde(deserialize_with = "opt_number")]
    max_pending: Option<usize>,
    reopen_min: Option<Duration>,
    reopen_max: Option<Duration>,
    ports: Vec<RawPort>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPort {
    path: Option<PathBuf>,
    #[serde(deserialize_with = "opt_number")]
    baud: Option<u32>,
    #[serde(deserialize_with = "opt_number")]
    data_bits: Option<u8>,
    parity: Option<String>,
    #[serde(deserialize_with = "opt_number")]
    stop_bits: Option<u8>,
    flow_control: Option<String>,
    client: Option<String>,
}

fn opt_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + TryFrom<i64>,
    <T as std::str::FromStr>::Err: std::fmt::Display,
{
    number(d).map(Some)
}

/// The serial adapter. No ports: the adapter does not run.
#[derive(Debug, Clone, Serialize)]
pub struct SerialConfig {
    /// Longest accepted line in bytes (without the newline); longer lines get `ERR too-long`.
    pub max_line: usize,
    /// PUBs per port waiting for durability before the adapter stops reading that port.
    pub max_pending: usize,
    /// First and longest wait between attempts to reopen a port that is missing or unplugged.
    pub reopen_min: Duration,
    pub reopen_max: Duration,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<SerialPortConfig>,
}

/// One `[[serial.ports]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct SerialPortConfig {
    pub path: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: String,
    pub stop_bits: u8,
    pub flow_control: String,
    /// Lines on this port publish as this client without AUTH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip)]
    pub settings: SerialSettings,
}

impl RawSerial {
    pub fn validate(self, check: &mut Check<'_>) -> SerialConfig {
        let max_line = self.max_line.unwrap_or(1024);
        if !MAX_LINE_RANGE.contains(&max_line) {
            check.invalid(
                "serial.max_line",
                format!(
                    "{max_line} must be between {} and {}",
                    MAX_LINE_RANGE.start(),
                    MAX_LINE_RANGE.end()
                ),
            );
        }
        let max_pending = self.max_pending.unwrap_or(32);
        if !(1..=4096).contains(&max_pending) {
            check.invalid(
                "serial.max_pending",
                format!("{max_pending} must be between 1 and 4096"),
            );
        }
        let reopen_min = self.reopen_min.unwrap_or(Duration::from_secs(1));
        let reopen_max = self.reopen_max.unwrap_or(Duration::from_secs(30));
        if reopen_min.get().is_zero() {
            check.invalid("serial.reopen_min", "must be more than 0s");
        }
        if reopen_max < reopen_min {
            check.invalid(
                "serial.reopen_max",
                format!("{reopen_max} is shorter than serial.reopen_min ({reopen_min})"),
            );
        }
        let mut ports: Vec<SerialPortConfig> = Vec::new();
        for (i, raw) in self.ports.into_iter().enumerate() {
            let key = |k: &str| format!("serial.ports[{i}].{k}");
            let Some(path) = raw.path.filter(|p| !p.as_os_str().is_empty()) else {
                check.invalid(&key("path"), "is required (prefer /dev/serial/by-id/…)");
                continue;
            };
            if !path.is_absolute() {
                check.invalid(
                    &key("path"),
                    format!("{} must be an absolute path", path.display()),
                );
            }
            if ports.iter().any(|p| p.path == path) {
                check.invalid(
                    &key("path"),
                    format!("{} is configured twice", path.display()),
                );
            }
            let baud = raw.baud.unwrap_or(9600);
            let mut settings = match SerialSettings::new(baud) {
                Ok(s) => s,
                Err(e) => {
                    check.invalid(&key("baud"), e.to_string());
                    continue;
                }
            };
            let data_bits = raw.data_bits.unwrap_or(8);
            match DataBits::from_number(data_bits) {
                Ok(bits) => settings.data_bits = bits,
                Err(e) => check.invalid(&key("data_bits"), e.to_string()),
            }
            let stop_bits = raw.stop_bits.unwrap_or(1);
            match StopBits::from_number(stop_bits) {
                Ok(bits) => settings.stop_bits = bits,
                Err(e) => check.invalid(&key("stop_bits"), e.to_string()),
            }
            match raw.parity.as_deref().unwrap_or("none").parse::<Parity>() {
                Ok(p) => settings.parity = p,
                Err(e) => check.invalid(&key("parity"), e.to_string()),
            }
            match raw
                .flow_control
                .as_deref()
                .unwrap_or("none")
                .parse::<FlowControl>()
            {
                Ok(f) => settings.flow_control = f,
                Err(e) => check.invalid(&key("flow_control"), e.to_string()),
            }
            let client = raw.client.map(|c| c.trim().to_owned());
            if let Some(c) = &client
                && (c.is_empty() || !c.bytes().all(|b| b.is_ascii_graphic()))
            {
                check.invalid(&key("client"), "must be a client identity (no spaces)");
            }
            if let Some(c) = &client {
                check.warn(format!(
                    "serial port {} is bound to client `{c}`: anything attached to it publishes \
                     as that client without a secret",
                    path.display()
                ));
            }
            ports.push(SerialPortConfig {
                path,
                baud,
                data_bits,
                parity: settings.parity.to_string(),
                stop_bits,
                flow_control: settings.flow_control.to_string(),
                client,
                settings,
            });
        }
        SerialConfig {
            max_line,
            max_pending,
            reopen_min,
            reopen_max,
            ports,
        }
    }
}
