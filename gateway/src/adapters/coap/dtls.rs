//! The DTLS 1.2 session table of the CoAPS listener, over dimpl (sans-IO, aws-lc-rs).
//!
//! One port serves every mode: the ClientHello's offered cipher suites decide between a PSK
//! engine (`Dtls::new_12_psk`, which keeps only PSK suites) and a certificate engine
//! (`Dtls::new_12`, certificate suites only, client certificate requested), so a PSK offer can
//! never skip the certificate checks. With `server_only_auth` the certificate engine also
//! accepts a client that sends no certificate (SuperMQ's CoAPS: server certificate only, the
//! secret in each request's `?auth=`; supermq v0.19.1 `coap/api/transport.go` `parseKey`):
//! such a session has no [`Principal`] and authenticates nothing by itself
//! ([`Sessions::is_server_only`]); a certificate that is sent is verified as always. dimpl verifies handshake signatures but no PKI: the
//! leaf certificate is verified here with rustls-webpki against `coap_dtls.client_ca_certs`,
//! through the intermediates of `coap_dtls.client_intermediate_certs` (dimpl hands over the
//! peer's leaf only, so a chain the client sends is not seen),
//! then its CN and serial go to the [`DtlsCredentials`] port the table declares (no tokio,
//! no shell type here). Every dimpl call runs under `catch_unwind`,
//! so a panic inside it drops only that session. The table is bounded (handshakes, sessions),
//! handshakes time out, idle sessions are evicted, and a failed authentication is answered
//! with a fatal alert (dimpl sends none) so clients fail fast.
//!
//! Like the CoAP core it owns no socket or clock: datagrams in, [`Transmit`]s and
//! [`SessionEvent`]s out. Under a flood of ClientHellos it answers with stateless cookies
//! (see [`Sessions::handle_datagram`]). Files: `record` (record layer bytes), `cookie`
//! (stateless HelloVerifyRequest keys), `psk` (the shared resolver), `verify` (device
//! certificates), this file (the table).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dimpl::{Config as DimplConfig, Dtls, DtlsCertificate, Output};
use rustls_pki_types::CertificateDer;
use tracing::{debug, info, warn};

use super::proto::Transmit;

mod admission;
mod cookie;
mod drain;
mod psk;
mod record;
mod verify;

use psk::{CurrentSlot, PskSlot, key_hash, psk_config, set_current};
pub use record::client_hello_suites;
use record::{epoch0_max_seq, has_ccs, only_epoch0};
pub use verify::subject_cn_and_serial;
use verify::verify_certificate;

/// A sensor authenticated by its DTLS session (PSK identity or certificate CN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    pub identity: String,
    /// Certificate serial (lowercase hex) for certificate sessions; `None` for PSK.
    pub serial: Option<String>,
}

/// What the session table needs to know about credentials: the port it declares, with plain
/// types (the shell adapts its backend to it). Called synchronously from inside handshakes,
/// so implementations must be cheap (cached).
pub trait DtlsCredentials: Send + Sync + 'static {
    /// DTLS-PSK: the key for an identity (an enabled client's secret), or `None`.
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>>;
    /// DTLS-PSK: the principal of an identity whose key just proved right.
    fn psk_principal(&self, identity: &str) -> Option<Principal>;
    /// A chain-verified certificate's CN, serial (lowercase hex) and SHA-256 fingerprint →
    /// the principal of a known enabled client whose unrevoked certificate it is.
    fn principal_for_certificate(
        &self,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: &str,
    ) -> Option<Principal>;
    /// Whether a live session's principal is still acceptable (client enabled, certificate
    /// not revoked). Checked about once a second for every session.
    fn still_valid(&self, principal: &Principal) -> bool;
    /// DTLS-PSK from `remote`: the principal of an identity whose key just proved right.
    fn psk_principal_from(&self, remote: IpAddr, identity: &str) -> Option<Principal> {
        let _ = remote;
        self.psk_principal(identity)
    }
    /// DTLS-PSK: whether the handshake from `remote` naming `identity` is throttled (the
    /// handshake then fails as with a wrong key). Asked at the key exchange, so `remote` is
    /// proven (past the cookie exchange). See `psk`.
    fn psk_throttled(&self, remote: IpAddr, identity: &str) -> bool {
        let _ = (remote, identity);
        false
    }
    /// DTLS-PSK: a handshake from `remote` naming `identity` failed (wrong key, unknown
    /// identity, abandoned after the key exchange): audit it and charge the throttle.
    fn psk_failed(&self, remote: IpAddr, identity: &str) {
        let _ = (remote, identity);
    }
}

/// TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655), the CoAP mandatory PSK suite.
const PSK_AES128_CCM_8: u16 = 0xC0A8;
/// The ECDHE-ECDSA suites dimpl implements (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305).
const ECDHE_ECDSA_SUITES: [u16; 3] = [0xC02B, 0xC02C, 0xCCA9];
/// Handshakes in progress from one IP address (any port); the oldest is evicted beyond it.
const HANDSHAKES_PER_ADDRESS: usize = 8;
/// A ClientHello without a valid cookie from the address of a live session is answered only
/// once that session has been quiet this long (a rebooted sensor retransmits its hello), and
/// then at most once per this period: a spoofed hello must not push HelloVerifyRequests into a
/// working session.
const LIVE_HELLO_QUIET: Duration = Duration::from_secs(5);
/// Largest DTLS output dimpl may hand us in one poll (a peer certificate is copied into it).
const POLL_BUFFER: usize = 64 * 1024;

/// Alert descriptions (RFC 5246 §7.2).
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_DECRYPT_ERROR: u8 = 51;
const ALERT_INTERNAL_ERROR: u8 = 80;

/// Why the DTLS listener cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DtlsSetupError {
    #[error("DTLS configuration refused by dimpl: {0}")]
    Engine(#[source] dimpl::Error),
    #[error("client CA certificate {index} is not a usable trust anchor: {reason}")]
    TrustAnchor { index: usize, reason: String },
    #[error(transparent)]
    Cookie(#[from] cookie::NoRandomness),
}

/// Limits and identity of the DTLS listener.
#[derive(Debug, Clone)]
pub struct DtlsSettings {
    /// Server certificate (leaf, DER) and its private key (PKCS#8 or SEC1 DER).
    pub certificate: DtlsCertificate,
    /// Device CA certificates (DER). Empty: certificate mode is refused.
    pub client_cas: Vec<CertificateDer<'static>>,
    /// Intermediate CA certificates (DER) between the device CAs and device leaves: used to
    /// build the chain, never trusted on their own.
    pub client_intermediates: Vec<CertificateDer<'static>>,
    pub max_sessions: usize,
    pub max_handshakes: usize,
    /// Established sessions of one client; a new one beyond it ends the client's least
    /// recently active session (`drain`).
    pub max_sessions_per_client: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Accept certificate-mode clients that send no certificate (server-only sessions).
    pub server_only_auth: bool,
}

/// What the table reports to the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Decrypted application data (a CoAP message) from an established session.
    Data { peer: SocketAddr, data: Vec<u8> },
    /// A session ended (closed, evicted, revoked, replaced by a failed one is not reported).
    Closed { peer: SocketAddr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Psk,
    Certificate,
}

struct Conn {
    dtls: Dtls,
    mode: Mode,
    psk: Option<Arc<PskSlot>>,
    /// Principal from a verified certificate, confirmed at `Connected`.
    cert_principal: Option<Principal>,
    principal: Option<Principal>,
    /// Handshake complete and the peer accepted. With no `principal` this is a server-only
    /// session (`server_only_auth`): every request must carry its own credentials.
    established: bool,
    next_timer: Option<Instant>,
    started: Instant,
    last_activity: Instant,
    /// Highest epoch-0 record sequence number we sent (for our own fatal alert).
    epoch0_seq: u64,
    /// The peer sent ChangeCipherSpec to this (pending) handshake.
    saw_ccs: bool,
    /// The peer proved it receives at its address: it returned a cookie (ours, or dimpl's
    /// once dimpl answered with a ServerHello). Handshakes not yet proven never evict
    /// proven ones.
    proven: bool,
}

/// Per-peer DTLS sessions. See the module docs.
pub struct Sessions {
    settings: DtlsSettings,
    backend: Arc<dyn DtlsCredentials>,
    cert_config: Option<Arc<DimplConfig>>,
    /// The one PSK config, and the slot its resolver records into.
    psk_config: Arc<DimplConfig>,
    psk_current: CurrentSlot,
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    live: HashMap<SocketAddr, Box<Conn>>,
    /// Handshakes in progress, including a re-handshake from an address with a live session.
    pending: HashMap<SocketAddr, Box<Conn>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SessionEvent>,
    /// dimpl timers (deadline, peer, in `pending`?), min-first; entries may be stale.
    timers: BinaryHeap<Reverse<(Instant, SocketAddr, bool)>>,
    buf: Vec<u8>,
    wall_clock: Box<dyn Fn() -> SystemTime + Send + Sync>,
    panics: u64,
    /// Handshakes completed / not completed (for metrics).
    handshakes: crate::runtime::metrics::HandshakeCounts,
    /// The server-wide key of stateless HelloVerifyRequest cookies.
    cookies: cookie::CookieKeys,
    /// Last stateless HelloVerifyRequest sent to a live session's address.
    live_hvr: HashMap<SocketAddr, Instant>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.live.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(
        settings: DtlsSettings,
        backend: Arc<dyn DtlsCredentials>,
    ) -> Result<Self, DtlsSetupError> {
        let anchors = settings
            .client_cas
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| DtlsSetupError::TrustAnchor {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Device CAs: request a certificate (and, server-only on, accept none). No device CA
        // but server-only on: ask for none (a certificate could not be verified anyway).
        let cert_config = match (anchors.is_empty(), settings.server_only_auth) {
            (true, false) => None,
            (no_anchors, server_only) => Some(Arc::new(
                base_config(&settings)
                    .require_client_certificate(!no_anchors)
                    .accept_no_client_certificate(server_only)
                    .build()
                    .map_err(DtlsSetupError::Engine)?,
            )),
        };
        let psk_current = CurrentSlot::default();
        let psk_config = Arc::new(
            psk_config(&settings, psk_current.clone(), backend.clone())
                .map_err(DtlsSetupError::Engine)?,
        );
        Ok(Self {
            settings,
            backend,
            cert_config,
            psk_config,
            psk_current,
            anchors,
            live: HashMap::new(),
            pending: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            buf: vec![0; POLL_BUFFER],
            wall_clock: Box::new(SystemTime::now),
            panics: 0,
            handshakes: crate::runtime::metrics::HandshakeCounts::default(),
            cookies: cookie::CookieKeys::new()?,
            live_hvr: HashMap::new(),
        })
    }

    /// Replaces the wall clock used for certificate validity (tests).
    pub fn set_wall_clock(&mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) {
        self.wall_clock = Box::new(clock);
    }

    /// (established sessions, handshakes in progress).
    pub fn counts(&self) -> (usize, usize) {
        (self.live.len(), self.pending.len())
    }

    /// Panics contained so far (each dropped one session).
    pub fn panics(&self) -> u64 {
        self.panics
    }

    /// Handshakes completed, failed, and failed on authentication so far.
    pub fn handshakes(&self) -> crate::runtime::metrics::HandshakeCounts {
        self.handshakes
    }

    /// Counts a handshake that ends without completing. A PSK handshake whose identity was
    /// already looked up failed on its key (or an unknown identity): an authentication failure.
    fn handshake_failed(&mut self, conn: &Conn) {
        self.handshakes.failed += 1;
        self.psk_failed(conn);
        if conn
            .psk
            .as_ref()
            .is_some_and(|slot| slot.identity.lock().is_ok_and(|g| g.is_some()))
        {
            self.handshakes.auth_failed += 1;
        }
    }

    pub fn principal(&self, peer: SocketAddr) -> Option<&Principal> {
        self.live.get(&peer).and_then(|c| c.principal.as_ref())
    }

    /// Whether `peer` has an established session without a client certificate
    /// (`server_only_auth`): the handshake authenticated only the server, so each request
    /// must authenticate itself (its Uri-Query secret).
    pub fn is_server_only(&self, peer: SocketAddr) -> bool {
        self.live
            .get(&peer)
            .is_some_and(|c| c.established && c.principal.is_none())
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// The earliest dimpl timer (retransmissions). It may be an entry that went stale since,
    /// which only means an early wake-up. Handshake deadlines and idle eviction are coarser
    /// and run in [`Sessions::sweep`], so this stays O(log n) with thousands of sessions.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Feeds one datagram received from `peer`.
    ///
    /// A ClientHello from an address without a handshake in progress is answered in one of
    /// two ways. Normally dimpl answers it (its own HelloVerifyRequest) from a new, not yet
    /// proven handshake. When not-proven handshakes hold half of `max_handshakes` (a flood of
    /// spoofed hellos), or the hello offers no suite we could use, the table answers with a
    /// stateless HelloVerifyRequest instead, keeping nothing: only a hello that returns that
    /// cookie gets a handshake (then dimpl's own cookie exchange follows, one more round
    /// trip), like TCP SYN cookies under a SYN flood.
    pub fn handle_datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        let hello = record::client_hello(datagram);
        if self.pending.contains_key(&peer) {
            let to_pending = hello.is_some()
                || !self.live.contains_key(&peer)
                || only_epoch0(datagram)
                // The handshake's own ChangeCipherSpec (a live session never sees one), and
                // everything after it, belongs to the new handshake.
                || has_ccs(datagram)
                || self.pending.get(&peer).is_some_and(|c| c.saw_ccs);
            if to_pending {
                if has_ccs(datagram)
                    && let Some(c) = self.pending.get_mut(&peer)
                {
                    c.saw_ccs = true;
                }
                self.feed(peer, true, datagram, now);
                return;
            }
        } else if let Some(hello) = hello {
            // A ClientHello from a new address, or a new handshake from a live one: the live
            // session stays until the new handshake completes.
            self.handle_hello(peer, &hello, datagram, now);
            return;
        }
        if self.live.contains_key(&peer) {
            self.feed(peer, false, datagram, now);
        }
        // Anything else from an unknown address is noise: dropped without state.
    }

    /// Encrypts and queues application data (a CoAP message) to an established session.
    pub fn send(&mut self, peer: SocketAddr, data: &[u8], now: Instant) {
        let Some(conn) = self.live.get_mut(&peer) else {
            return;
        };
        conn.last_activity = now;
        let result = catch_unwind(AssertUnwindSafe(|| conn.dtls.send_application_data(data)));
        match result {
            Ok(Ok(_)) => self.drain(peer, false, now),
            Ok(Err(e)) => {
                debug!(%peer, "dtls send failed: {e}");
                self.drop_live(peer);
            }
            Err(_) => {
                self.panics += 1;
                warn!(%peer, "dtls engine panicked; session dropped");
                self.drop_live(peer);
            }
        }
    }

    /// Runs the dimpl timers that are due (each connection at most once per call, so an
    /// engine that re-arms a timer in the past cannot spin here).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((t, peer, pending))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            due.push((t, peer, pending));
        }
        let current = self.psk_current.clone();
        for (t, peer, pending) in due {
            let Some(conn) = self.table_mut(pending).get_mut(&peer) else {
                continue; // stale: the connection is gone
            };
            if conn.next_timer != Some(t) {
                continue; // stale: the timer moved
            }
            conn.next_timer = None;
            set_current(&current, conn.psk.clone());
            let result = catch_unwind(AssertUnwindSafe(|| conn.dtls.handle_timeout(now)));
            set_current(&current, None);
            self.after_call(peer, pending, result, now);
        }
    }

    /// Housekeeping, about once a second: handshakes past `handshake_timeout`, sessions idle
    /// past `idle_timeout`, and sessions whose principal is no longer valid.
    pub fn sweep(&mut self, now: Instant) {
        self.cookies.rotate(now);
        self.live_hvr
            .retain(|_, t| now.saturating_duration_since(*t) < LIVE_HELLO_QUIET);
        let hs = self.settings.handshake_timeout;
        let idle = self.settings.idle_timeout;
        let expired: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, c)| c.started + hs <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            debug!(%peer, "dtls handshake timed out");
            if let Some(conn) = self.pending.remove(&peer) {
                self.handshake_failed(&conn);
            }
        }
        let idle_peers: Vec<_> = self
            .live
            .iter()
            .filter(|(_, c)| c.last_activity + idle <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in idle_peers {
            debug!(%peer, "dtls session idle; evicted");
            self.close_live(peer, now);
        }
        self.revalidate(now);
        // Stale timer entries beyond a few per connection: rebuild the heap.
        let conns = self.live.len() + self.pending.len();
        if self.timers.len() > 4 * conns + 64 {
            let mut fresh = BinaryHeap::with_capacity(conns);
            for (pending, table) in [(true, &self.pending), (false, &self.live)] {
                for (peer, c) in table {
                    if let Some(t) = c.next_timer {
                        fresh.push(Reverse((t, *peer, pending)));
                    }
                }
            }
            self.timers = fresh;
        }
    }

    /// Server-only sessions authenticate nobody, so anyone who reaches the port can open one:
    /// they may hold at most half of `max_sessions` (the rest stays for PSK and certificate
    /// sessions). Called before a new one goes live: at the cap, the server-only session
    /// quiet the longest gives way.
    fn cap_server_only(&mut self, now: Instant) {
        let cap = (self.settings.max_sessions / 2).max(1);
        let mut count = 0;
        let mut quietest: Option<(Instant, SocketAddr)> = None;
        for (peer, c) in &self.live {
            if c.established && c.principal.is_none() {
                count += 1;
                if quietest.is_none_or(|(t, _)| c.last_activity < t) {
                    quietest = Some((c.last_activity, *peer));
                }
            }
        }
        if count >= cap
            && let Some((_, peer)) = quietest
        {
            info!(%peer, "dtls session ended: server-only sessions at their cap (half of coap_dtls.max_sessions)");
            self.close_live(peer, now);
        }
    }

    /// Ends every session of a client (revoked certificate, disabled client).
    pub fn end_client(&mut self, client_id: &str, now: Instant) {
        let peers: Vec<_> = self
            .live
            .iter()
            .filter(|(_, c)| {
                c.principal
                    .as_ref()
                    .is_some_and(|p| p.client_id == client_id)
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in peers {
            info!(%peer, client = client_id, "dtls session ended: client revoked or disabled");
            self.close_live(peer, now);
        }
    }

    /// Ends sessions whose client was disabled or removed, or whose certificate was revoked
    /// or expired since the handshake.
    fn revalidate(&mut self, now: Instant) {
        let backend = self.backend.clone();
        let peers: Vec<_> = self
            .live
            .iter()
            .filter(|(_, c)| {
                let Some(p) = c.principal.as_ref() else {
                    return false;
                };
                if !backend.still_valid(p) {
                    return true;
                }
                // PSK: the client's current secret must still be the session's key.
                c.psk.as_ref().is_some_and(|slot| {
                    let used = slot.key_hash.lock().ok().and_then(|g| *g);
                    let current = backend.psk(p.identity.as_bytes()).map(|k| key_hash(&k));
                    used != current
                })
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in peers {
            info!(%peer, "dtls session ended: client disabled, removed, revoked or its secret rotated");
            self.close_live(peer, now);
        }
    }

    fn table_mut(&mut self, pending: bool) -> &mut HashMap<SocketAddr, Box<Conn>> {
        if pending {
            &mut self.pending
        } else {
            &mut self.live
        }
    }

    fn feed(&mut self, peer: SocketAddr, pending: bool, datagram: &[u8], now: Instant) {
        // The PSK resolver runs only inside a handshake (the pending table): established
        // sessions' datagrams skip pointing it at their slot.
        let current = pending.then(|| self.psk_current.clone());
        let Some(conn) = self.table_mut(pending).get_mut(&peer) else {
            return;
        };
        conn.last_activity = now;
        if let Some(current) = &current {
            set_current(current, conn.psk.clone());
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            conn.dtls.handle_timeout(now)?;
            conn.dtls.handle_packet(datagram)
        }));
        if let Some(current) = &current {
            set_current(current, None);
        }
        self.after_call(peer, pending, result, now);
    }

    fn after_call(
        &mut self,
        peer: SocketAddr,
        pending: bool,
        result: std::thread::Result<Result<(), dimpl::Error>>,
        now: Instant,
    ) {
        match result {
            Ok(Ok(())) => self.drain(peer, pending, now),
            Ok(Err(e)) => {
                // Flush what dimpl queued (it may have sent its own alert), then our alert.
                self.drain(peer, pending, now);
                if let Some(conn) = self.table_mut(pending).remove(&peer) {
                    let alert = if conn.established {
                        None
                    } else {
                        Some(match conn.mode {
                            Mode::Psk => ALERT_DECRYPT_ERROR,
                            Mode::Certificate => ALERT_HANDSHAKE_FAILURE,
                        })
                    };
                    debug!(%peer, mode = ?conn.mode, "dtls session failed: {e}");
                    if pending {
                        self.handshake_failed(&conn);
                    }
                    if let Some(alert) = alert {
                        self.send_alert(peer, conn.epoch0_seq + 1, alert);
                    }
                    if !pending {
                        self.events.push_back(SessionEvent::Closed { peer });
                    }
                }
            }
            Err(_) => {
                self.panics += 1;
                warn!(%peer, "dtls engine panicked; session dropped");
                match self.table_mut(pending).remove(&peer) {
                    Some(conn) if pending => self.handshake_failed(&conn),
                    Some(_) => self.events.push_back(SessionEvent::Closed { peer }),
                    None => {}
                }
            }
        }
    }

    fn close_live(&mut self, peer: SocketAddr, now: Instant) {
        if let Some(conn) = self.live.get_mut(&peer) {
            let _ = catch_unwind(AssertUnwindSafe(|| conn.dtls.close()));
            // Flush the close_notify, then forget the session.
            let _ = now;
            let mut buf = std::mem::take(&mut self.buf);
            loop {
                let out =
                    catch_unwind(AssertUnwindSafe(|| match conn.dtls.poll_output(&mut buf) {
                        Output::Packet(p) => Some(p.to_vec()),
                        _ => None,
                    }));
                match out {
                    Ok(Some(p)) => self.transmits.push_back(Transmit { peer, payload: p }),
                    _ => break,
                }
            }
            self.buf = buf;
        }
        self.drop_live(peer);
    }

    fn drop_live(&mut self, peer: SocketAddr) {
        if self.live.remove(&peer).is_some() {
            self.events.push_back(SessionEvent::Closed { peer });
        }
    }

    /// A plaintext fatal alert in epoch 0 (no keys are shared with a peer that failed).
    fn send_alert(&mut self, peer: SocketAddr, seq: u64, description: u8) {
        self.transmits.push_back(Transmit {
            peer,
            payload: record::fatal_alert(seq, description),
        });
    }
}

pub(super) fn base_config(settings: &DtlsSettings) -> dimpl::ConfigBuilder {
    DimplConfig::builder()
        .use_server_cookie(true)
        .handshake_timeout(settings.handshake_timeout)
        .mtu(1150)
}

#[cfg(test)]
mod tests;
