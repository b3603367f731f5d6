//! Cached auth decisions: ns/op of `authenticate` (right and wrong secret, unknown identity),
//! `authenticate_secret` and `authorize` on a store of 1000 clients and 100 channels, with the
//! audit writer running as in the daemon. Prints numbers; asserts nothing about time.
//!
//!     cargo bench -p gateway --bench auth

use std::hint::black_box;
use std::time::Instant;

use gateway::auth::store::{AuditEvent, Db};
use gateway::auth::{AuthStore, Op};
use gateway::config::AuthConfig;

const CLIENTS: usize = 1000;
const CHANNELS: usize = 100;
const ITERS: u32 = 1_000_000;

fn measure(name: &str, iters: u32, mut f: impl FnMut(u32)) {
    for i in 0..iters / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    println!("{name:<44} {ns:>9.0} ns/op  ({:>10.0} ops/s)", 1e9 / ns);
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.db");
    let mut secrets = Vec::new();
    {
        let mut db = Db::open(&path).expect("open");
        for c in 0..CHANNELS {
            db.add_channel(&format!("ch{c}"), "dom", None)
                .expect("channel");
        }
        for i in 0..CLIENTS {
            let client = db
                .add_client(&format!("sensor-{i}"), None, None, None)
                .expect("client");
            db.connect(&client.id, &format!("ch{}", i % CHANNELS), true, false)
                .expect("connect");
            secrets.push(client.secret);
        }
    }
    let store = AuthStore::open(&path, &AuthConfig::default()).expect("store");
    let identities: Vec<String> = (0..CLIENTS).map(|i| format!("sensor-{i}")).collect();
    let refs: Vec<_> = (0..CLIENTS)
        .map(|i| {
            store
                .authenticate(&identities[i], secrets[i].as_bytes())
                .expect("auth")
        })
        .collect();
    let channels: Vec<String> = (0..CLIENTS)
        .map(|i| format!("ch{}", i % CHANNELS))
        .collect();

    println!(
        "auth bench: {CLIENTS} clients, {CHANNELS} channels, {ITERS} iterations each, one thread; \
         audit writer on"
    );
    measure("authenticate (identity, secret) ok", ITERS, |i| {
        let k = i as usize % CLIENTS;
        black_box(store.authenticate(&identities[k], secrets[k].as_bytes())).ok();
    });
    measure("authenticate wrong secret", ITERS / 10, |i| {
        let k = i as usize % CLIENTS;
        black_box(store.authenticate(
            &identities[k],
            b"wrong-secret-of-the-same-len-as-real-one!!",
        ))
        .ok();
    });
    measure("authenticate unknown identity", ITERS / 10, |i| {
        black_box(store.authenticate(
            &identities[i as usize % CLIENTS][1..],
            b"x-secret-x-secret-x",
        ))
        .ok();
    });
    measure("authenticate_secret (auth=) ok", ITERS, |i| {
        let k = i as usize % CLIENTS;
        black_box(store.authenticate_secret(secrets[k].as_bytes())).ok();
    });
    measure("authorize publish by channel name ok", ITERS, |i| {
        let k = i as usize % CLIENTS;
        black_box(store.authorize(&refs[k], &channels[k], Op::Publish)).ok();
    });
    measure("authorize subscribe (not connected)", ITERS, |i| {
        let k = i as usize % CLIENTS;
        black_box(store.authorize(&refs[k], &channels[k], Op::Subscribe)).ok();
    });
    println!(
        "audit events dropped (queue full): {}",
        store.audit_dropped()
    );
    drop(store);

    // What the audit writer can persist: batches of 512 in one transaction each, with rotation.
    let mut db = Db::open(&path).expect("open");
    let batch: Vec<AuditEvent> = (0..512)
        .map(|i| AuditEvent {
            at_ms: i,
            method: "identity",
            identity: Some(format!("sensor-{i}")),
            client_id: Some("00000000-0000-4000-8000-000000000000".into()),
            remote: Some("192.0.2.1".into()),
            outcome: "ok",
            ..AuditEvent::default()
        })
        .collect();
    let batches = 200u32;
    let start = Instant::now();
    for _ in 0..batches {
        db.append_audit(&batch, 100_000).expect("audit");
    }
    let per_s = f64::from(batches) * 512.0 / start.elapsed().as_secs_f64();
    println!("audit writer: {per_s:.0} events/s persisted (batches of 512, WAL, synchronous=FULL)");
}
