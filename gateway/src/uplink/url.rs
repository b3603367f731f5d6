//! `uplink.url`: `mqtts://host[:port]` (or `mqtt://` with `uplink.insecure`) split for the
//! MQTT client.

use super::UplinkError;

/// Splits `mqtts://host:port` into (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), UplinkError> {
    let bad = || UplinkError::BadUrl(url.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let tls = match scheme {
        "mqtts" => true,
        "mqtt" => false,
        _ => return Err(bad()),
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (host.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (rest.to_owned(), default_port),
        }
    };
    if host.is_empty() || host.contains(['/', '@']) {
        return Err(bad());
    }
    Ok((tls, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_host_and_port() {
        assert_eq!(
            parse_url("mqtts://broker.example:8884").unwrap(),
            (true, "broker.example".into(), 8884)
        );
        assert_eq!(
            parse_url("mqtts://broker").unwrap(),
            (true, "broker".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1884").unwrap(),
            (false, "::1".into(), 1884)
        );
        for bad in ["http://x", "mqtts://", "mqtts://h:port", "mqtts://u@h:1"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
