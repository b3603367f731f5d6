//! Draining one DTLS engine after it was fed: its packets, timeouts, the handshake's end, the
//! peer certificate, application data and close, turned into the table's transmits, events
//! and session moves (pending -> live). Part of the session table in `dtls.rs`.

use super::*;

impl Sessions {
    /// Drains one engine's output: records to send, data to deliver, state changes.
    pub(super) fn drain(&mut self, peer: SocketAddr, pending: bool, now: Instant) {
        let mut outcome: Option<u8> = None; // fatal alert to send, if authentication failed
        let mut connected = false;
        let mut closed = false;
        {
            let Self {
                live,
                pending: pend,
                transmits,
                events,
                buf,
                anchors,
                settings,
                backend,
                wall_clock,
                panics,
                timers,
                ..
            } = self;
            let table = if pending { pend } else { live };
            let Some(conn) = table.get_mut(&peer) else {
                return;
            };
            loop {
                let out = catch_unwind(AssertUnwindSafe(|| match conn.dtls.poll_output(buf) {
                    Output::Packet(p) => Polled::Packet(p.to_vec()),
                    Output::BufferTooSmall { needed } => Polled::TooSmall(needed),
                    Output::Timeout(t) => Polled::Timeout(t),
                    Output::Connected => Polled::Connected,
                    Output::PeerCert(der) => Polled::PeerCert(der.to_vec()),
                    Output::ApplicationData(d) => Polled::Data(d.to_vec()),
                    Output::CloseNotify => Polled::Close,
                    _ => Polled::Other,
                }));
                let Ok(polled) = out else {
                    *panics += 1;
                    warn!(%peer, "dtls engine panicked; session dropped");
                    closed = true;
                    break;
                };
                match polled {
                    Polled::Packet(p) => {
                        if let Some(seq) = epoch0_max_seq(&p) {
                            conn.epoch0_seq = conn.epoch0_seq.max(seq);
                        }
                        // dimpl answers with a ServerHello only to a hello with its cookie.
                        conn.proven |= record::has_server_hello(&p);
                        transmits.push_back(Transmit { peer, payload: p });
                    }
                    Polled::TooSmall(needed) => {
                        if needed > 4 * POLL_BUFFER {
                            closed = true;
                            break;
                        }
                        buf.resize(needed, 0);
                    }
                    Polled::Timeout(t) => {
                        if conn.next_timer != Some(t) {
                            conn.next_timer = Some(t);
                            timers.push(Reverse((t, peer, pending)));
                        }
                        break;
                    }
                    Polled::Connected => {
                        connected = true;
                    }
                    Polled::PeerCert(der) => {
                        match verify_certificate(
                            &der,
                            anchors,
                            &settings.client_intermediates,
                            (wall_clock)(),
                            backend.as_ref(),
                        ) {
                            Ok(p) => conn.cert_principal = Some(p),
                            Err(alert) => {
                                outcome = Some(alert);
                                break;
                            }
                        }
                    }
                    Polled::Data(d) => {
                        if conn.established {
                            events.push_back(SessionEvent::Data { peer, data: d });
                        }
                    }
                    Polled::Close => {
                        closed = true;
                        break;
                    }
                    Polled::Other => {}
                }
            }
            if connected && outcome.is_none() {
                let principal = match conn.mode {
                    Mode::Psk => conn
                        .psk
                        .as_ref()
                        .and_then(|s| s.identity.lock().ok().and_then(|g| g.clone()))
                        .and_then(|id| backend.psk_principal_from(peer.ip(), &id)),
                    Mode::Certificate => conn.cert_principal.clone(),
                };
                match principal {
                    Some(p) => {
                        conn.principal = Some(p);
                        conn.established = true;
                    }
                    // No certificate was sent (a sent one is verified above or refused) and
                    // server-only sessions are allowed: established, authenticating nothing.
                    None if conn.mode == Mode::Certificate && settings.server_only_auth => {
                        conn.established = true;
                    }
                    None => {
                        outcome = Some(match conn.mode {
                            Mode::Psk => ALERT_DECRYPT_ERROR,
                            Mode::Certificate => ALERT_BAD_CERTIFICATE,
                        });
                    }
                }
            }
        }
        if let Some(alert) = outcome {
            if let Some(conn) = self.table_mut(pending).remove(&peer) {
                info!(%peer, mode = ?conn.mode, "dtls authentication failed");
                self.send_alert(peer, conn.epoch0_seq + 1, alert);
                if pending {
                    self.handshakes.failed += 1;
                    self.handshakes.auth_failed += 1;
                    self.psk_failed(&conn);
                }
                if !pending {
                    self.events.push_back(SessionEvent::Closed { peer });
                }
            }
            return;
        }
        if closed {
            match self.table_mut(pending).remove(&peer) {
                Some(conn) if pending => self.handshake_failed(&conn),
                Some(_) => self.events.push_back(SessionEvent::Closed { peer }),
                None => {}
            }
            return;
        }
        if connected
            && pending
            && let Some(mut conn) = self.pending.remove(&peer)
        {
            conn.last_activity = now;
            if conn.principal.is_none() && !self.live.contains_key(&peer) {
                self.cap_server_only(now);
            }
            if let Some(t) = conn.next_timer {
                self.timers.push(Reverse((t, peer, false)));
            }
            if let Some(p) = &conn.principal {
                info!(%peer, client = %p.identity, mode = ?conn.mode, "dtls session established");
            } else {
                info!(%peer, "dtls session established without a client certificate (server-only: each request needs its secret)");
            }
            self.handshakes.completed += 1;
            if let Some(p) = conn.principal.clone() {
                self.cap_client_sessions(peer, &p.client_id, now);
            }
            if self.live.insert(peer, conn).is_some() {
                // The replaced session's CoAP state belongs to the old session.
                self.events.push_back(SessionEvent::Closed { peer });
            }
        }
    }
}

impl Sessions {
    /// Ends the least recently active sessions of `client_id` (other than `peer`'s, which
    /// the new session replaces) while it holds `max_sessions_per_client`: one credential
    /// from many ports cannot take every session slot.
    fn cap_client_sessions(&mut self, peer: SocketAddr, client_id: &str, now: Instant) {
        let cap = self.settings.max_sessions_per_client.max(1);
        let mut mine: Vec<(Instant, SocketAddr)> = self
            .live
            .iter()
            .filter(|(p, c)| {
                **p != peer
                    && c.principal
                        .as_ref()
                        .is_some_and(|pr| pr.client_id == client_id)
            })
            .map(|(p, c)| (c.last_activity, *p))
            .collect();
        if mine.len() < cap {
            return;
        }
        mine.sort();
        let excess = mine.len() + 1 - cap;
        for (_, old) in mine.into_iter().take(excess) {
            info!(peer = %old, client = client_id, "dtls session ended: the client opened too many");
            self.close_live(old, now);
        }
    }
}

enum Polled {
    Packet(Vec<u8>),
    TooSmall(usize),
    Timeout(Instant),
    Connected,
    PeerCert(Vec<u8>),
    Data(Vec<u8>),
    Close,
    Other,
}
