use std::ffi::OsString;
use std::io::Write;

use super::*;

fn env(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    list.iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn defaults_depend_on_the_profile() {
    let prod = load_from(&Source::None, Profile::Production, env(&[])).unwrap();
    assert_eq!(prod.gateway.state_dir, PathBuf::from("/var/lib/edgegw"));
    assert_eq!(prod.gateway.runtime_dir, PathBuf::from("/run/edgegw"));
    assert_eq!(prod.gateway.drain_timeout.get().as_secs(), 10);
    let dev = load_from(&Source::None, Profile::dev_in_current_dir(), env(&[])).unwrap();
    assert_eq!(dev.gateway.state_dir, PathBuf::from(".edgegw-dev/state"));
    assert!(dev.profile.is_dev());
}

#[test]
fn environment_overrides_the_file() {
    let f = file("[gateway]\nlog_level = \"debug\"\ndrain_timeout = \"5s\"\n");
    let config = load_from(
        &Source::Explicit(f.path().into()),
        Profile::Production,
        env(&[("EDGEGW_GATEWAY_DRAIN_TIMEOUT", "2m")]),
    )
    .unwrap();
    assert_eq!(config.gateway.log_level, "debug");
    assert_eq!(config.gateway.drain_timeout.to_string(), "2m");
}

#[test]
fn unknown_key_in_the_file_is_named() {
    let f = file("[uplink]\nurl = \"mqtts://broker:8883\"\nbogus_key = 1\n");
    let err = load_from(
        &Source::Explicit(f.path().into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("uplink.bogus_key"), "{text}");
    assert!(text.contains(&f.path().display().to_string()), "{text}");
}

#[test]
fn unknown_section_is_named() {
    let f = file("[nonsense]\nx = 1\n");
    let err = load_from(
        &Source::Explicit(f.path().into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nonsense"), "{err}");
}

#[test]
fn unknown_key_from_the_environment_names_the_variable() {
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_UPLINK_NOPE", "x")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("EDGEGW_UPLINK_NOPE"), "{err}");
    assert!(err.to_string().contains("uplink.nope"), "{err}");
}

#[test]
fn bad_value_from_the_environment_names_the_variable() {
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_GATEWAY_DRAIN_TIMEOUT", "soon")]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("EDGEGW_GATEWAY_DRAIN_TIMEOUT"),
        "{err}"
    );
}

#[test]
fn booleans_from_the_environment_are_parsed() {
    let config = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            ("EDGEGW_UPLINK_URL", "mqtt://127.0.0.1:1883"),
            ("EDGEGW_UPLINK_INSECURE", "true"),
        ]),
    )
    .unwrap();
    assert!(config.uplink.insecure);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_UPLINK_INSECURE", "maybe")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("maybe"), "{err}");
}

#[test]
fn plain_mqtt_without_insecure_is_refused() {
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_UPLINK_URL", "mqtt://broker:1883")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("uplink.insecure"), "{err}");
}

#[test]
fn unreadable_certificate_path_is_refused_with_the_file_named() {
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            ("EDGEGW_UPLINK_URL", "mqtts://broker:8883"),
            ("EDGEGW_UPLINK_CA_CERTS", "/nonexistent/ca.pem"),
        ]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/ca.pem") && text.contains("uplink.ca_certs"),
        "{text}"
    );
}

#[test]
fn certificate_without_its_key_is_refused_and_all_problems_are_listed() {
    let garbage = file("garbage\n");
    let path = garbage.path().display().to_string();
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            ("EDGEGW_UPLINK_CLIENT_CERT", &path),
            ("EDGEGW_STANDALONE_EMAIL", "admin@example.com"),
        ]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ConfigError::Several { count: 3, .. }),
        "{text}"
    );
    assert!(text.contains("uplink.client_key"), "{text}");
    assert!(text.contains("no PEM certificate"), "{text}");
    assert!(text.contains("standalone.token"), "{text}");
}

#[test]
fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
    let err = load_from(
        &Source::Explicit("/nonexistent/edgegw.toml".into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
    let config = load_from(
        &Source::Default("/nonexistent/edgegw.toml".into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap();
    assert!(config.source.is_none());
}

#[test]
fn syntax_errors_name_the_file() {
    let f = file("[gateway\n");
    let err = load_from(
        &Source::Explicit(f.path().into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains(&f.path().display().to_string()));
}

#[test]
fn redacted_output_hides_secrets() {
    let config = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            ("EDGEGW_STANDALONE_EMAIL", "admin@example.com"),
            ("EDGEGW_STANDALONE_TOKEN", "a-very-long-admin-token-123"),
            ("EDGEGW_UPLINK_PASSWORD", "mqtt-password-xyz"),
        ]),
    )
    .unwrap();
    let text = config.to_redacted_toml();
    assert!(!text.contains("a-very-long-admin-token-123"), "{text}");
    assert!(!text.contains("mqtt-password-xyz"), "{text}");
    assert!(text.contains("admin@example.com"), "{text}");
    // The output is itself a valid config (secrets aside).
    assert!(text.parse::<toml::Table>().is_ok());
}

#[test]
fn the_shipped_sample_config_is_valid_and_documents_every_key() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/edgegw.toml");
    let text = std::fs::read_to_string(sample).unwrap();
    // Uncomment every `# key = value` line: the documented keys must all be accepted.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut table: toml::Table = uncommented.parse().unwrap();
    // Certificate files do not exist on the build machine: the keys must exist, the files not.
    if let Some(toml::Value::Table(uplink)) = table.get_mut("uplink") {
        for key in ["client_cert", "client_key", "ca_certs"] {
            assert!(
                uplink.remove(key).is_some(),
                "sample does not document uplink.{key}"
            );
        }
    }
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).unwrap();
    let _ = raw;
    // And every key of the defaults appears in the sample.
    let defaults = load_from(&Source::None, Profile::Production, env(&[])).unwrap();
    let rendered: toml::Table = defaults.to_redacted_toml().parse().unwrap();
    for (section, keys) in rendered {
        let toml::Value::Table(keys) = keys else {
            continue;
        };
        for key in keys.keys() {
            let needle = format!("{key} = ");
            assert!(
                text.contains(&format!("[{section}]")),
                "sample lacks [{section}]"
            );
            assert!(text.contains(&needle), "sample lacks {section}.{key}");
        }
    }
}

#[test]
fn coap_defaults_follow_the_profile_and_dtls_is_off_without_cert_and_key() {
    let prod = load_from(&Source::None, Profile::Production, env(&[])).unwrap();
    assert_eq!(prod.coap.bind.to_string(), "[::]:5683");
    assert_eq!(prod.coap_dtls.bind.to_string(), "[::]:5684");
    assert_eq!(prod.coap.max_payload.0, 64 * 1024);
    assert!(!prod.coap_dtls.enabled());
    assert!(
        prod.coap_dtls.server_only_auth,
        "SuperMQ's CoAPS model is on by default"
    );
    let off = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_COAP_DTLS_SERVER_ONLY_AUTH", "false")]),
    )
    .unwrap();
    assert!(!off.coap_dtls.server_only_auth);
    let bad = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_COAP_DTLS_SERVER_ONLY_AUTH", "maybe")]),
    )
    .unwrap_err();
    assert!(bad.to_string().contains("server_only_auth"), "{bad}");
    let dev = load_from(&Source::None, Profile::dev_in_current_dir(), env(&[])).unwrap();
    assert_eq!(dev.coap.bind.to_string(), "127.0.0.1:5683");
    assert_eq!(dev.coap_dtls.bind.to_string(), "127.0.0.1:5684");
    assert_eq!(
        prod.coap_dtls.disabled_reason(),
        Some("coap_dtls.cert and coap_dtls.key are not set")
    );
    // A named file is checked even when its partner is unset (the listener would be off).
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_COAP_DTLS_CERT", "/nonexistent/cert.pem")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[test]
fn coap_bad_values_and_unreadable_dtls_files_are_refused_by_key() {
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            ("EDGEGW_COAP_BIND", "nowhere"),
            ("EDGEGW_COAP_MAX_PAYLOAD", "2MiB"),
            ("EDGEGW_COAP_MAX_DEDUP_ENTRIES", "1048577"),
            ("EDGEGW_COAP_DTLS_MAX_SESSIONS", "0"),
            ("EDGEGW_COAP_DTLS_CERT", "/nonexistent/dtls.crt"),
            ("EDGEGW_COAP_DTLS_KEY", "/nonexistent/dtls.key"),
            ("EDGEGW_COAP_DTLS_CLIENT_CA_CERTS", "/nonexistent/ca.pem"),
        ]),
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "coap.bind",
        "coap.max_payload",
        "coap.max_dedup_entries",
        "coap_dtls.max_sessions",
        "/nonexistent/dtls.crt",
        "/nonexistent/dtls.key",
        "/nonexistent/ca.pem",
        "EDGEGW_COAP_DTLS_CERT",
    ] {
        assert!(err.contains(needle), "{needle} missing in: {err}");
    }
}

#[test]
fn serial_ports_are_validated_and_every_problem_is_named() {
    let f = file(
        "[serial]\nmax_line = 128\n\
         [[serial.ports]]\npath = \"/dev/serial/by-id/usb-FTDI-if00\"\nbaud = 115200\nparity = \"even\"\nclient = \"weather-1\"\n\
         [[serial.ports]]\npath = \"/dev/ttyAMA0\"\n",
    );
    let config = load_from(
        &Source::Explicit(f.path().into()),
        Profile::Production,
        env(&[("EDGEGW_SERIAL_MAX_PENDING", "4")]),
    )
    .unwrap();
    assert_eq!(config.serial.max_line, 128);
    assert_eq!(config.serial.max_pending, 4);
    assert_eq!(config.serial.ports.len(), 2);
    let p = &config.serial.ports[0];
    assert_eq!(p.settings.baud(), 115_200);
    assert_eq!(p.settings.parity, hal::serial::Parity::Even);
    assert_eq!(p.client.as_deref(), Some("weather-1"));
    assert_eq!(config.serial.ports[1].settings.baud(), 9600);
    assert!(
        config.warnings.iter().any(|w| w.contains("weather-1")),
        "binding a port is warned about: {:?}",
        config.warnings
    );

    let bad = file(
        "[serial]\nreopen_min = \"10s\"\nreopen_max = \"1s\"\n\
         [[serial.ports]]\npath = \"/dev/ttyUSB0\"\nbaud = 0\n\
         [[serial.ports]]\npath = \"ttyUSB1\"\ndata_bits = 9\nparity = \"mark\"\nstop_bits = 3\nflow_control = \"magic\"\n\
         [[serial.ports]]\nbaud = 9600\n",
    );
    let err = load_from(
        &Source::Explicit(bad.path().into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    for key in [
        "serial.reopen_max",
        "serial.ports[0].baud",
        "serial.ports[1].path",
        "serial.ports[1].data_bits",
        "serial.ports[1].parity",
        "serial.ports[1].stop_bits",
        "serial.ports[1].flow_control",
        "serial.ports[2].path",
    ] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    let unknown = file("[[serial.ports]]\npath = \"/dev/ttyS0\"\nspeed = 9600\n");
    let err = load_from(
        &Source::Explicit(unknown.path().into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("speed"), "{err}");
}

#[test]
fn uplink_session_retry_and_downlink_bounds_are_configurable_and_checked() {
    let config = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            ("EDGEGW_UPLINK_SESSION_EXPIRY", "0s"),
            ("EDGEGW_UPLINK_REFUSED_RETRY", "5s"),
            ("EDGEGW_UPLINK_QUARANTINE_AFTER", "2"),
            ("EDGEGW_UPLINK_DOWNLINK_QUEUE", "4"),
            ("EDGEGW_UPLINK_DOWNLINK_BACKLOG", "0"),
            ("EDGEGW_UPLINK_DOWNLINK_MAX_AGE", "10m"),
        ]),
    )
    .unwrap();
    assert!(config.uplink.session_expiry.get().is_zero());
    assert_eq!(config.uplink.refused_retry.get().as_secs(), 5);
    assert_eq!(config.uplink.quarantine_after, 2);
    let limits = config.uplink.downlink_limits();
    assert_eq!((limits.queue, limits.backlog), (4, 0));
    assert_eq!(limits.max_age.as_secs(), 600);
    let defaults = load_from(&Source::None, Profile::Production, env(&[])).unwrap();
    assert_eq!(defaults.uplink.session_expiry.get().as_secs(), 86_400);
    assert_eq!(defaults.uplink.downlink_limits().backlog, 32);
    assert_eq!(defaults.uplink.quarantine_after, 5);
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            ("EDGEGW_UPLINK_REFUSED_RETRY", "0s"),
            ("EDGEGW_UPLINK_QUARANTINE_AFTER", "0"),
            ("EDGEGW_UPLINK_DOWNLINK_QUEUE", "0"),
            ("EDGEGW_UPLINK_DOWNLINK_BACKLOG", "5000"),
            ("EDGEGW_UPLINK_DOWNLINK_MAX_AGE", "0s"),
            ("EDGEGW_UPLINK_SESSION_EXPIRY", "50000d"),
        ]),
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "uplink.refused_retry",
        "uplink.quarantine_after",
        "uplink.downlink_queue",
        "uplink.downlink_backlog",
        "uplink.downlink_max_age",
        "uplink.session_expiry",
    ] {
        assert!(err.contains(needle), "{needle} missing in: {err}");
    }
}

/// Issue 20.14: a syntax error on a secret's line says where and why, not the line itself.
#[test]
fn syntax_errors_do_not_echo_the_line() {
    for text in [
        "[standalone]\nemail = \"a@b.c\"\ntoken = \"hunter2-secret-token-value\n",
        "[standalone]\ntoken = hunter2-secret-token-value\n",
        "[uplink]\npassword = 'hunter2-secret-token-value\" x\n",
    ] {
        let f = file(text);
        let err = load_from(
            &Source::Explicit(f.path().into()),
            Profile::Production,
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("line "), "{err}");
    }
}

/// A secret of the wrong type is refused without its value.
#[test]
fn type_errors_on_secrets_do_not_echo_the_value() {
    let f = file("[standalone]\ntoken = 987654321987654321\n[uplink]\npassword = 123456789123\n");
    let err = load_from(
        &Source::Explicit(f.path().into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("standalone.token"), "{err}");
    assert!(!err.contains("987654321987654321"), "{err}");
    let f = file("[uplink]\npassword = 123456789123\n");
    let err = load_from(
        &Source::Explicit(f.path().into()),
        Profile::Production,
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("uplink.password"), "{err}");
    assert!(!err.contains("123456789123"), "{err}");
}

/// `check-config` and URL errors show `uplink.url` without its userinfo.
#[test]
fn uplink_url_userinfo_is_redacted() {
    let config = load_from(
        &Source::None,
        Profile::Production,
        env(&[
            (
                "EDGEGW_UPLINK_URL",
                "mqtt://gw:url-pass-42@broker.example:1883/x",
            ),
            ("EDGEGW_UPLINK_INSECURE", "true"),
        ]),
    )
    .unwrap();
    let text = config.to_redacted_toml();
    assert!(!text.contains("url-pass-42"), "{text}");
    assert!(
        text.contains("mqtt://<redacted>@broker.example:1883/x"),
        "{text}"
    );
    assert!(text.parse::<toml::Table>().is_ok());
    let warnings = config.warnings.join("\n");
    assert!(!warnings.contains("url-pass-42"), "{warnings}");
    let err = load_from(
        &Source::None,
        Profile::Production,
        env(&[("EDGEGW_UPLINK_URL", "tcp://gw:url-pass-42@broker.example")]),
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains("url-pass-42"), "{err}");
    assert_eq!(
        value::redact_userinfo("mqtts://host:8883"),
        "mqtts://host:8883"
    );
    assert_eq!(
        value::redact_userinfo("mqtts://host:8883/a@b"),
        "mqtts://host:8883/a@b"
    );
}

/// A `bootstrap.url` with userinfo is refused (the key goes in `external_key`), and neither
/// the refusal nor the plain-HTTP warning shows the password.
#[test]
fn bootstrap_url_userinfo_is_refused_and_redacted() {
    let ids = [
        ("EDGEGW_BOOTSTRAP_EXTERNAL_ID", "gw-1"),
        ("EDGEGW_BOOTSTRAP_EXTERNAL_KEY", "external-key-000000"),
    ];
    for url in [
        "http://op:bs-pass-42@bs.example:9013",
        "ftp://op:bs-pass-42@bs.example",
    ] {
        let mut vars = vec![("EDGEGW_BOOTSTRAP_URL", url)];
        vars.extend(ids);
        let err = load_from(&Source::None, Profile::Production, env(&vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap.url"), "{err}");
        assert!(!err.contains("bs-pass-42"), "{err}");
    }
    let mut vars = vec![("EDGEGW_BOOTSTRAP_URL", "http://bs.example:9013")];
    vars.extend(ids);
    let config = load_from(&Source::None, Profile::Production, env(&vars)).unwrap();
    assert!(config.warnings.join("\n").contains("plain HTTP"));
}
