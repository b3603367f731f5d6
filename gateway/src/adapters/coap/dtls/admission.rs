//! Admission of new handshakes: which ClientHello gets an engine (cookie checks, cipher
//! suites, caps per address and overall, eviction of the oldest) and which only a stateless
//! HelloVerifyRequest or an alert.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use dimpl::{Dtls, Output};
use tracing::{debug, warn};

use super::record::{self, ClientHello};
use super::{
    ALERT_HANDSHAKE_FAILURE, ALERT_INTERNAL_ERROR, Conn, ECDHE_ECDSA_SUITES,
    HANDSHAKES_PER_ADDRESS, LIVE_HELLO_QUIET, Mode, PSK_AES128_CCM_8, PskSlot, Sessions,
    set_current,
};
use crate::adapters::coap::proto::Transmit;

impl Sessions {
    /// A ClientHello from an address without a handshake in progress. See
    /// [`Sessions::handle_datagram`].
    pub(super) fn handle_hello(
        &mut self,
        peer: SocketAddr,
        hello: &ClientHello<'_>,
        datagram: &[u8],
        now: Instant,
    ) {
        let mode = self.mode_for(hello);
        if self.cookies.verify(peer, hello) {
            // The peer returned our cookie: it receives at this address.
            let Some(mode) = mode else {
                debug!(%peer, "dtls handshake refused: no common cipher suite");
                self.send_alert(peer, hello.record_seq, ALERT_HANDSHAKE_FAILURE);
                self.handshakes.no_common_suite += 1;
                return;
            };
            // dimpl keeps its cookie secret per engine, so the new engine does its own
            // cookie exchange: it is first shown the hellos the client sent before (message
            // sequence numbers 0..this one, answers discarded), so that its
            // HelloVerifyRequest carries the sequence number the client expects next.
            if hello.message_seq == 0 || hello.message_seq > 4 {
                return;
            }
            if !self.start_handshake(peer, mode, true, now) {
                return;
            }
            for seq in 0..hello.message_seq {
                let earlier = record::with_message_seq(datagram, seq);
                self.feed_silently(peer, &earlier, now);
            }
            self.feed(peer, true, datagram, now);
            return;
        }
        let unproven = self.pending.values().filter(|c| !c.proven).count();
        let stateless = mode.is_none()
            || !hello.cookie.is_empty()
            || unproven >= (self.settings.max_handshakes / 2).max(1)
            || self.pending_from(peer.ip(), false) >= HANDSHAKES_PER_ADDRESS;
        if let Some(live) = self.live.get(&peer) {
            // Possibly spoofed: a working session must not receive HelloVerifyRequests.
            let quiet = now.saturating_duration_since(live.last_activity) >= LIVE_HELLO_QUIET;
            let recent = self
                .live_hvr
                .get(&peer)
                .is_some_and(|t| now.saturating_duration_since(*t) < LIVE_HELLO_QUIET);
            if !quiet || recent {
                debug!(%peer, "dtls hello from a live session's address ignored");
                return;
            }
            self.live_hvr.insert(peer, now);
        }
        if stateless {
            self.send_hello_verify(peer, hello);
            return;
        }
        let Some(mode) = mode else { return };
        if self.start_handshake(peer, mode, false, now) {
            self.feed(peer, true, datagram, now);
        }
    }

    fn send_hello_verify(&mut self, peer: SocketAddr, hello: &ClientHello<'_>) {
        let cookie = self.cookies.cookie(peer, hello);
        self.transmits.push_back(Transmit {
            peer,
            payload: record::hello_verify_request(hello, &cookie),
        });
    }

    /// The mode a hello's suites select, or `None` when it offers nothing we can do (the
    /// PSK suite, or an ECDHE-ECDSA suite while certificate mode is on).
    fn mode_for(&self, hello: &ClientHello<'_>) -> Option<Mode> {
        let mut ecdsa = false;
        for suite in hello.suites() {
            if suite == PSK_AES128_CCM_8 {
                return Some(Mode::Psk);
            }
            ecdsa |= ECDHE_ECDSA_SUITES.contains(&suite);
        }
        (ecdsa && self.cert_config.is_some()).then_some(Mode::Certificate)
    }

    /// Handshakes in progress from `ip` (proven ones only, or all).
    fn pending_from(&self, ip: std::net::IpAddr, proven_only: bool) -> usize {
        self.pending
            .iter()
            .filter(|(p, c)| p.ip() == ip && (c.proven || !proven_only))
            .count()
    }

    /// Feeds an engine input whose output the peer must not see.
    fn feed_silently(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        let Some(conn) = self.pending.get_mut(&peer) else {
            return;
        };
        let current = self.psk_current.clone();
        set_current(&current, conn.psk.clone());
        let result = catch_unwind(AssertUnwindSafe(|| {
            conn.dtls.handle_timeout(now)?;
            conn.dtls.handle_packet(datagram)?;
            let mut buf = vec![0u8; 4096];
            while let Output::Packet(_) = conn.dtls.poll_output(&mut buf) {}
            Ok::<(), dimpl::Error>(())
        }));
        set_current(&current, None);
        if !matches!(result, Ok(Ok(()))) {
            if result.is_err() {
                self.panics += 1;
            }
            if let Some(conn) = self.pending.remove(&peer) {
                self.handshake_failed(&conn);
            }
        }
    }

    /// Makes room for one more handshake from `peer`: evicts the oldest handshake of the same
    /// address beyond [`HANDSHAKES_PER_ADDRESS`], then the oldest overall beyond
    /// `max_handshakes`. A not-proven handshake never evicts a proven one. False: no room.
    fn make_room(&mut self, peer: SocketAddr, proven: bool) -> bool {
        let ip = peer.ip();
        let per_address = |p: &SocketAddr| p.ip() == ip;
        if self.pending.keys().filter(|p| per_address(p)).count() >= HANDSHAKES_PER_ADDRESS
            && !self.evict_oldest(proven, per_address)
        {
            return false;
        }
        if self.pending.len() >= self.settings.max_handshakes.max(1)
            && !self.evict_oldest(proven, |_| true)
        {
            return false;
        }
        true
    }

    /// Evicts the oldest not-proven handshake matching `filter`, else (if `proven` may
    /// evict proven ones) the oldest proven one.
    fn evict_oldest(&mut self, proven: bool, filter: impl Fn(&SocketAddr) -> bool) -> bool {
        let oldest = |want_proven: bool| {
            self.pending
                .iter()
                .filter(|(p, c)| filter(p) && c.proven == want_proven)
                .min_by_key(|(_, c)| c.started)
                .map(|(p, _)| *p)
        };
        let victim = oldest(false).or_else(|| if proven { oldest(true) } else { None });
        let Some(victim) = victim else {
            return false;
        };
        debug!(peer = %victim, "dtls handshake evicted: too many in progress");
        if let Some(mut conn) = self.pending.remove(&victim) {
            // Evicted, not refused: no authentication failure to charge or audit.
            conn.psk = None;
            self.handshake_failed(&conn);
        }
        true
    }

    /// Creates the engine for a new ClientHello; false if refused (caps).
    fn start_handshake(
        &mut self,
        peer: SocketAddr,
        mode: Mode,
        proven: bool,
        now: Instant,
    ) -> bool {
        if !self.live.contains_key(&peer) && self.live.len() >= self.settings.max_sessions {
            warn!(%peer, "dtls handshake refused: session limit reached");
            self.send_alert(peer, 0, ALERT_INTERNAL_ERROR);
            self.handshakes.failed += 1;
            return false;
        }
        if !self.make_room(peer, proven) {
            debug!(%peer, "dtls handshake refused: too many in progress");
            return false;
        }
        let built = match mode {
            Mode::Psk => {
                let cfg = self.psk_config.clone();
                catch_unwind(AssertUnwindSafe(|| Dtls::new_12_psk(cfg, now)))
                    .map(|d| (d, Some(Arc::new(PskSlot::new(peer.ip())))))
                    .map_err(|_| "panic".to_owned())
            }
            Mode::Certificate => match &self.cert_config {
                Some(cfg) => {
                    let cert = self.settings.certificate.clone();
                    catch_unwind(AssertUnwindSafe(|| Dtls::new_12(cfg.clone(), cert, now)))
                        .map(|d| (d, None))
                        .map_err(|_| "panic".to_owned())
                }
                None => Err("certificate mode is off (no coap_dtls.client_ca_certs)".to_owned()),
            },
        };
        let (dtls, psk) = match built {
            Ok(x) => x,
            Err(e) => {
                debug!(%peer, "dtls handshake refused: {e}");
                self.send_alert(peer, 0, ALERT_HANDSHAKE_FAILURE);
                self.handshakes.failed += 1;
                return false;
            }
        };
        // Boxed: the tables keep one pointer per slot, free slots included (issue 18).
        self.pending.insert(
            peer,
            Box::new(Conn {
                dtls,
                mode,
                psk,
                cert_principal: None,
                principal: None,
                established: false,
                next_timer: None,
                started: now,
                last_activity: now,
                epoch0_seq: 0,
                saw_ccs: false,
                proven,
            }),
        );
        true
    }
}
