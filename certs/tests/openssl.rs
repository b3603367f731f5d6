//! The crate's output as openssl sees it: a CRL from `Authority::crl_pem` parses with
//! `openssl crl`, is signed by the CA, lists exactly the revoked serials, and makes
//! `openssl verify -crl_check` refuse the revoked certificate but not the others.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use certs::{Authority, Revoked};

fn openssl(args: &[&str], files: &[&Path]) -> Output {
    Command::new("openssl")
        .args(args)
        .args(files)
        .output()
        .expect("openssl is installed")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs(),
    )
    .expect("clock after 1970")
}

#[test]
fn a_crl_parses_with_openssl_lists_the_revoked_serials_and_blocks_them() {
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let ca = Authority::generate("crl CA", Duration::from_secs(365 * 86_400), now - 60).unwrap();
    let revoked = ca
        .issue_device("revoked", Duration::from_secs(86_400), now - 60)
        .unwrap();
    let kept = ca
        .issue_device("kept", Duration::from_secs(86_400), now - 60)
        .unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_path = write("ca.crt", ca.cert_pem());
    let revoked_path = write("revoked.crt", &revoked.cert_pem);
    let kept_path = write("kept.crt", &kept.cert_pem);
    let crl = ca
        .crl_pem(
            &[Revoked {
                serial_hex: revoked.info.serial_hex.clone(),
                revoked_at: now - 30,
            }],
            Duration::from_secs(7 * 86_400),
            now - 10,
        )
        .unwrap();
    let crl_path = write("crl.pem", &crl);

    let shown = openssl(
        &["crl", "-noout", "-text", "-CAfile"],
        &[&ca_path, Path::new("-in"), &crl_path],
    );
    let shown_text = text(&shown);
    assert!(shown.status.success(), "{shown_text}");
    assert!(shown_text.contains("verify OK"), "{shown_text}");
    let upper = revoked.info.serial_hex.to_uppercase();
    assert!(
        shown_text.contains(&format!("Serial Number: {upper}")),
        "{shown_text}"
    );
    assert!(
        !shown_text.contains(&kept.info.serial_hex.to_uppercase()),
        "{shown_text}"
    );

    let check = |cert: &Path| {
        openssl(
            &["verify", "-crl_check", "-CAfile"],
            &[&ca_path, Path::new("-CRLfile"), &crl_path, cert],
        )
    };
    let out = check(&revoked_path);
    assert!(!out.status.success(), "revoked certificate verified");
    assert!(text(&out).contains("certificate revoked"), "{}", text(&out));
    let out = check(&kept_path);
    assert!(out.status.success(), "{}", text(&out));
}
