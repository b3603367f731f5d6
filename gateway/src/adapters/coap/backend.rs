//! The DTLS credentials [`Backend`] of the CoAPS listener over the local auth store: PSK
//! keys, certificate principals, revalidation of live sessions. Sensor requests (publish,
//! Observe, poll) do not come here: the shell hands them to [`crate::intake`].

use std::net::IpAddr;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proto::Refusal;
use super::task::{Backend, Principal};
use crate::auth::AuthStore;

/// The auth store as the DTLS session table's credential source. Its revocation forwarder
/// runs on `tracker` (the supervisor's intake stage) and ends on `cancel`, so shutdown waits
/// for it and it never outlives the listener.
#[derive(Debug, Clone)]
pub struct StoreBackend {
    pub auth: AuthStore,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl Backend for StoreBackend {
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let identity = std::str::from_utf8(identity).ok()?;
        self.auth.psk_for_identity(identity)
    }

    fn psk_principal(&self, identity: &str) -> Option<Principal> {
        let key = self.auth.psk_for_identity(identity)?;
        let client = self.auth.authenticate(identity, &key).ok()?;
        Some(Principal {
            client_id: client.id,
            identity: client.identity,
            serial: None,
        })
    }

    fn psk_principal_from(&self, remote: IpAddr, identity: &str) -> Option<Principal> {
        let client = self.auth.psk_succeeded_from(remote, identity)?;
        Some(Principal {
            client_id: client.id,
            identity: client.identity,
            serial: None,
        })
    }

    fn psk_throttled(&self, remote: IpAddr, identity: &str) -> bool {
        // The handshake is past its cookie exchange: the address is proven, so a trusted
        // (address, identity) pair gets its pass (issue 20.5).
        self.auth.psk_throttle_check(remote, identity).is_err()
    }

    fn psk_failed(&self, remote: IpAddr, identity: &str) {
        self.auth.psk_failed_from(remote, identity);
    }

    fn certificate_principal(
        &self,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: &str,
    ) -> Result<Principal, Refusal> {
        self.auth
            .authenticate_certificate(cn, serial_hex, fingerprint_sha256_hex)
            .map(|c| Principal {
                client_id: c.id,
                identity: c.identity,
                serial: Some(serial_hex.to_owned()),
            })
            .map_err(|e| crate::intake::auth_refusal(&e))
    }

    fn still_valid(&self, principal: &Principal) -> bool {
        // The cached snapshot, not the audited entry points: this runs for every session.
        let snap = self.auth.snapshot();
        match &principal.serial {
            Some(serial) => snap
                .authenticate_certificate(
                    &principal.identity,
                    serial,
                    // Compared at the handshake; this re-check is for revocation and expiry.
                    None,
                    crate::auth::store::now_unix(),
                )
                .is_ok(),
            None => snap.psk_for_identity(&principal.identity).is_some(),
        }
    }

    fn ended_clients(&self) -> Option<mpsc::Receiver<String>> {
        let mut revocations = self.auth.revocations();
        let (tx, rx) = mpsc::channel(64);
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            loop {
                let received = tokio::select! {
                    () = cancel.cancelled() => break,
                    // The listener is gone: nobody to tell.
                    () = tx.closed() => break,
                    received = revocations.recv() => received,
                };
                match received {
                    Ok(rec) => {
                        if tx.send(rec.client_id).await.is_err() {
                            break;
                        }
                    }
                    // Missed some: the periodic sweep catches them.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Some(rx)
    }
}
