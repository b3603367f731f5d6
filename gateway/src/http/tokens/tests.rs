use super::*;
use std::time::Duration;

fn tokens(access: u64) -> Tokens {
    Tokens::new(
        &[7u8; 32],
        Duration::from_secs(access),
        Duration::from_secs(86_400),
    )
}

#[test]
fn access_and_refresh_are_not_interchangeable() {
    let t = tokens(3600);
    let pair = t.issue("admin@example.com").unwrap();
    assert_eq!(
        t.verify(&pair.access_token, Kind::Access).unwrap(),
        "admin@example.com"
    );
    assert_eq!(
        t.verify(&pair.refresh_token, Kind::Refresh).unwrap(),
        "admin@example.com"
    );
    assert!(matches!(
        t.verify(&pair.refresh_token, Kind::Access),
        Err(TokenError::WrongKind { .. })
    ));
    assert!(matches!(
        t.verify(&pair.access_token, Kind::Refresh),
        Err(TokenError::WrongKind { .. })
    ));
}

#[test]
fn other_key_and_garbage_are_refused() {
    let pair = tokens(3600).issue("a@b.c").unwrap();
    let other = Tokens::new(&[8u8; 32], Duration::from_secs(1), Duration::from_secs(1));
    assert!(matches!(
        other.verify(&pair.access_token, Kind::Access),
        Err(TokenError::Invalid)
    ));
    assert!(matches!(
        other.verify("x.y.z", Kind::Access),
        Err(TokenError::Invalid)
    ));
}

#[test]
fn key_is_created_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let a = load_or_create_key(dir.path()).unwrap();
    let b = load_or_create_key(dir.path()).unwrap();
    assert_eq!(a, b);
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn rotation_keeps_the_previous_key_until_the_next_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tokens::open(
        dir.path(),
        Duration::from_secs(60),
        Duration::from_secs(60),
        b"cred",
    )
    .unwrap();
    let first = t.key_ids();
    assert_eq!(first.previous_kid, None);
    let old = t.issue("a@b.c").unwrap();
    let ids = t.rotate(false).unwrap();
    assert_ne!(ids.kid, first.kid);
    assert_eq!(ids.previous_kid.as_deref(), Some(first.kid.as_str()));
    // Issued before: still valid; issued now: signed with the new key.
    assert_eq!(t.verify(&old.access_token, Kind::Access).unwrap(), "a@b.c");
    assert_eq!(
        t.verify(&old.refresh_token, Kind::Refresh).unwrap(),
        "a@b.c"
    );
    let new = t.issue("a@b.c").unwrap();
    let header = jsonwebtoken::decode_header(&new.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(ids.kid.as_str()));
    // The file holds both, 0600, and a restart sees the same keys.
    let path = dir.path().join(KEY_FILE);
    assert_eq!(std::fs::read(&path).unwrap().len(), 2 * KEY_LEN);
    assert_eq!(mode(&path), 0o600);
    let again = Tokens::open(
        dir.path(),
        Duration::from_secs(60),
        Duration::from_secs(60),
        b"cred",
    )
    .unwrap();
    assert_eq!(again.key_ids(), ids);
    assert!(again.verify(&old.access_token, Kind::Access).is_ok());
    // A second rotation drops the first key.
    t.rotate(false).unwrap();
    assert!(matches!(
        t.verify(&old.access_token, Kind::Access),
        Err(TokenError::Invalid)
    ));
    assert!(t.verify(&new.access_token, Kind::Access).is_ok());
}

#[test]
fn rotation_with_revoke_previous_invalidates_every_older_token() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tokens::open(
        dir.path(),
        Duration::from_secs(60),
        Duration::from_secs(60),
        b"cred",
    )
    .unwrap();
    let old = t.issue("a@b.c").unwrap();
    let ids = t.rotate(true).unwrap();
    assert_eq!(ids.previous_kid, None);
    assert!(t.verify(&old.access_token, Kind::Access).is_err());
    assert!(t.verify(&old.refresh_token, Kind::Refresh).is_err());
    let path = dir.path().join(KEY_FILE);
    assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn reload_picks_up_a_replaced_file_and_keeps_keys_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tokens::open(
        dir.path(),
        Duration::from_secs(60),
        Duration::from_secs(60),
        b"cred",
    )
    .unwrap();
    let old = t.issue("a@b.c").unwrap();
    let path = dir.path().join(KEY_FILE);
    // A broken file: refused, the keys in use stay.
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(
        t.reload(),
        Err(TokenError::KeyLength { len: 5, .. })
    ));
    assert!(t.verify(&old.access_token, Kind::Access).is_ok());
    // Replaced by the operator: old tokens are refused after the reload.
    std::fs::write(&path, [9u8; KEY_LEN]).unwrap();
    let ids = t.reload().unwrap();
    assert_eq!(ids.kid, key_id(&[9u8; KEY_LEN]));
    assert!(t.verify(&old.access_token, Kind::Access).is_err());
    // Deleted: a new key is made.
    std::fs::remove_file(&path).unwrap();
    let made = t.reload().unwrap();
    assert_ne!(made.kid, ids.kid);
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn tokens_without_kid_are_checked_against_the_current_key_and_unknown_kids_refused() {
    let key = [7u8; 32];
    let t = tokens(3600);
    // A live session's id: the token is refused for its kid only, not its session.
    let (sid, _, _) = t.sessions().start(now_secs(), 3600).unwrap();
    let claims = Claims {
        sub: "a@b.c".into(),
        typ: Kind::Access,
        iat: now_secs(),
        exp: now_secs() + 60,
        iss: ISSUER.into(),
        sid,
        jti: String::new(),
    };
    let legacy = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key),
    )
    .unwrap();
    assert!(t.verify(&legacy, Kind::Access).is_ok());
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("0011223344556677".into());
    let unknown = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&key)).unwrap();
    assert!(matches!(
        t.verify(&unknown, Kind::Access),
        Err(TokenError::Invalid)
    ));
}

/// Issue 20.10: a refresh token is good once; presenting it again ends its session, so
/// the access and refresh tokens of that family are all refused, while another login's
/// are not.
#[test]
fn a_reused_refresh_token_is_refused_and_ends_its_family() {
    let t = tokens(3600);
    let first = t.issue("a@b.c").unwrap();
    let other = t.issue("a@b.c").unwrap();
    let (sub, second) = t.refresh(&first.refresh_token).unwrap();
    assert_eq!(sub, "a@b.c");
    assert!(t.verify(&second.access_token, Kind::Access).is_ok());
    assert!(matches!(
        t.refresh(&first.refresh_token),
        Err(TokenError::Reused)
    ));
    for token in [&first.access_token, &second.access_token] {
        assert!(t.verify(token, Kind::Access).is_err());
    }
    assert!(t.refresh(&second.refresh_token).is_err());
    assert!(t.verify(&other.access_token, Kind::Access).is_ok());
    assert!(t.refresh(&other.refresh_token).is_ok());
}

/// Refreshing does not make a session last forever: no token outlives the age cap.
#[test]
fn refreshes_do_not_outlive_the_session_age_cap() {
    let t = tokens(3600);
    let cap = super::super::sessions::max_age(Duration::from_secs(86_400));
    let start = 1_000_000;
    let mut pair = t.issue_at("a@b.c", start).unwrap();
    let mut now = start;
    while now + 3_000 < start + cap {
        now += 3_000;
        pair = t.refresh_at(&pair.refresh_token, now).unwrap().1;
        assert!(t.verify_at(&pair.access_token, Kind::Access, now).is_ok());
    }
    let end = start + cap;
    assert!(t.verify_at(&pair.access_token, Kind::Access, end).is_err());
    assert!(t.refresh_at(&pair.refresh_token, end).is_err());
    let claims = t.decode(&pair.refresh_token, Kind::Refresh, now).unwrap();
    assert!(claims.exp <= end, "exp {} past the cap {end}", claims.exp);
}

/// A daemon started with another standalone token refuses every token issued before.
#[test]
fn tokens_are_refused_after_the_standalone_token_changes() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    let before = Tokens::open(dir.path(), ttl, ttl, b"a@b.c\0token-one")
        .unwrap()
        .issue("a@b.c")
        .unwrap();
    let same = Tokens::open(dir.path(), ttl, ttl, b"a@b.c\0token-one").unwrap();
    assert!(same.verify(&before.access_token, Kind::Access).is_ok());
    let changed = Tokens::open(dir.path(), ttl, ttl, b"a@b.c\0token-two").unwrap();
    assert!(changed.verify(&before.access_token, Kind::Access).is_err());
    assert!(changed.refresh(&before.refresh_token).is_err());
}

#[test]
fn debug_output_shows_key_ids_only() {
    let t = tokens(60);
    let shown = format!("{t:?}");
    assert!(shown.contains(&key_id(&[7u8; 32])), "{shown}");
    assert!(!shown.contains("7, 7"), "{shown}");
}
