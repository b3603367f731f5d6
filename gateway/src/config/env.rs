//! The `EDGEGW_<SECTION>_<KEY>` environment overlay. Every variable with the prefix must name a
//! known section; the key is checked by the section's own `deny_unknown_fields`. Values are
//! inserted as strings: the raw structs accept strings for numbers and booleans.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::ConfigError;

pub const PREFIX: &str = "EDGEGW_";

/// Where each overridden key came from, as `section.key` → variable name, so errors name the
/// variable instead of the file.
pub type Origins = BTreeMap<String, String>;

pub fn overlay(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    sections: &[&str],
) -> Result<Origins, ConfigError> {
    // Longest section first, so `COAP_DTLS_CERT` is section `coap_dtls`, not `coap` + `dtls_cert`.
    let mut ordered: Vec<&str> = sections.to_vec();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.len()));

    let mut origins = Origins::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::EnvNotUtf8 {
            var: name.to_owned(),
        })?;
        let rest_lower = rest.to_ascii_lowercase();
        let Some((section, key)) = ordered.iter().find_map(|s| {
            rest_lower
                .strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .filter(|k| !k.is_empty())
                .map(|k| (*s, k.to_owned()))
        }) else {
            return Err(ConfigError::UnknownEnv {
                var: name.to_owned(),
                sections: sections.join(", "),
            });
        };
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Invalid {
                origin: "config file".into(),
                key: section.to_owned(),
                message: "must be a table ([section])".into(),
            });
        };
        section_table.insert(key.clone(), toml::Value::String(value));
        origins.insert(format!("{section}.{key}"), name.to_owned());
    }
    Ok(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn longest_section_wins_and_origins_are_recorded() {
        let mut t = toml::Table::new();
        let origins = overlay(
            &mut t,
            vars(&[
                ("EDGEGW_COAP_DTLS_CLIENT_CA_CERTS", "/ca.pem"),
                ("PATH", "/bin"),
                ("EDGEGW_COAP_BIND", "x"),
            ]),
            &["coap", "coap_dtls"],
        )
        .unwrap();
        assert_eq!(t["coap_dtls"]["client_ca_certs"].as_str(), Some("/ca.pem"));
        assert_eq!(t["coap"]["bind"].as_str(), Some("x"));
        assert_eq!(
            origins["coap_dtls.client_ca_certs"],
            "EDGEGW_COAP_DTLS_CLIENT_CA_CERTS"
        );
    }

    #[test]
    fn unknown_section_is_an_error_naming_the_variable() {
        let mut t = toml::Table::new();
        let err = overlay(&mut t, vars(&[("EDGEGW_NOPE_KEY", "1")]), &["uplink"]).unwrap_err();
        assert!(err.to_string().contains("EDGEGW_NOPE_KEY"), "{err}");
        let err = overlay(&mut t, vars(&[("EDGEGW_UPLINK", "1")]), &["uplink"]).unwrap_err();
        assert!(err.to_string().contains("EDGEGW_UPLINK"), "{err}");
    }
}
