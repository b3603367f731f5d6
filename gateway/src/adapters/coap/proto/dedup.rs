//! De-duplication of (peer, message id) and the stored answers re-sent for duplicates.
//!
//! Every message is remembered for one EXCHANGE_LIFETIME, at most `max_dedup_entries` of
//! them (the oldest is forgotten first). Under load the table is full all the time, so its
//! memory is what it costs per entry times the cap: entries live in one ring in arrival
//! order (the order they expire in: one lifetime for all), with the answer inline when it
//! is small (a 2.04 ACK is 4 bytes plus the token), and an open-addressing index of 8-byte
//! slots at most half full points into the ring. A `HashMap` keyed by (peer, id) with a
//! separate order queue cost ~89 bytes per bucket at ≤ 7/8 load, doubled to 64 Ki buckets
//! (5.6 MiB, 8.5 MiB while it rehashed) once evictions had left it full of tombstones, plus
//! 56 bytes per entry of order queue and an allocation per stored answer.
//!
//! The entries of a peer whose DTLS session ended are taken out of the index at once (a new
//! session may reuse message ids) but keep their place in the ring until they reach its
//! front, and count against the cap until then: the ring never holds more than the cap.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::Packet;

use super::{Server, Transmit, encode};

/// Answers up to this size are kept inside the entry, larger ones on the heap.
const INLINE: usize = 22;

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stored {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Stored {
    fn new(bytes: &[u8]) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE => {
                let mut inline = [0; INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                Stored::Inline { len, bytes: inline }
            }
            _ => Stored::Heap(bytes.into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Stored::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Stored::Heap(b) => b,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DedupState {
    /// The shell has not decided yet: duplicates get nothing.
    Processing,
    /// The response we sent, sent again verbatim for a duplicate.
    Answered(Stored),
    /// A non-final Block1 block: the 2.31 we sent.
    Continue(Stored),
    /// Forgotten before it expired (its peer's DTLS session ended); not in the index.
    Gone,
}

#[derive(Debug)]
struct Entry {
    peer: SocketAddr,
    mid: u16,
    expires: Instant,
    state: DedupState,
}

/// The de-duplication table. See the module docs.
#[derive(Debug)]
pub(super) struct DedupTable {
    max: usize,
    /// Entries in arrival order; `ring[0]` has sequence number `head`.
    ring: VecDeque<Entry>,
    head: u32,
    /// Entries in the index (the ring also holds `Gone` ones until they reach the front).
    live: usize,
    /// 0 = empty, else `tag << 32 | seq`; `tag` is the key's hash with its top bit set, its
    /// low bits the home slot. Allocated at the first insert, zeroed by the allocator (pages
    /// untouched until used), at least twice the cap so probes stay short.
    slots: Vec<u64>,
    hasher: RandomState,
}

impl DedupTable {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            ring: VecDeque::new(),
            head: 0,
            live: 0,
            slots: Vec::new(),
            hasher: RandomState::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// When the oldest entry expires (a forgotten one may make this early: harmless).
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.ring.front().map(|e| e.expires)
    }

    pub(super) fn get(&self, peer: SocketAddr, mid: u16) -> Option<&DedupState> {
        let (_, seq) = self.find(peer, mid)?;
        Some(&self.entry(seq).state)
    }

    pub(super) fn set(&mut self, peer: SocketAddr, mid: u16, state: DedupState) {
        if let Some((_, seq)) = self.find(peer, mid) {
            let i = self.offset(seq);
            self.ring[i].state = state;
        }
    }

    /// Remembers (peer, mid) until `expires`, forgetting the oldest entries beyond the cap.
    /// The caller has checked that it is not remembered already.
    pub(super) fn insert(&mut self, peer: SocketAddr, mid: u16, expires: Instant) {
        while self.ring.len() >= self.max {
            self.pop_front();
        }
        if self.slots.is_empty() {
            let n = (self.max * 2).next_power_of_two();
            self.slots = vec![0; n];
        }
        let seq = self.head.wrapping_add(self.ring.len() as u32);
        self.ring.push_back(Entry {
            peer,
            mid,
            expires,
            state: DedupState::Processing,
        });
        let tag = self.tag(peer, mid);
        let mask = self.slots.len() - 1;
        let mut i = tag as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = u64::from(tag) << 32 | u64::from(seq);
        self.live += 1;
    }

    /// Forgets every entry that expired by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while self.ring.front().is_some_and(|e| e.expires <= now) {
            self.pop_front();
        }
    }

    /// Forgets every entry of `peer`.
    pub(super) fn forget_peer(&mut self, peer: SocketAddr) {
        for i in 0..self.ring.len() {
            let e = &self.ring[i];
            if e.peer == peer && e.state != DedupState::Gone {
                let (peer, mid) = (e.peer, e.mid);
                self.unindex(peer, mid);
                self.ring[i].state = DedupState::Gone;
            }
        }
        while self
            .ring
            .front()
            .is_some_and(|e| e.state == DedupState::Gone)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.ring.front() {
            if e.state != DedupState::Gone {
                let (peer, mid) = (e.peer, e.mid);
                self.unindex(peer, mid);
            }
            self.ring.pop_front();
            self.head = self.head.wrapping_add(1);
        }
    }

    fn tag(&self, peer: SocketAddr, mid: u16) -> u32 {
        ((self.hasher.hash_one((peer, mid)) >> 32) as u32) | 1 << 31
    }

    fn offset(&self, seq: u32) -> usize {
        seq.wrapping_sub(self.head) as usize
    }

    fn entry(&self, seq: u32) -> &Entry {
        &self.ring[self.offset(seq)]
    }

    /// The slot and sequence number of (peer, mid), if it is remembered.
    fn find(&self, peer: SocketAddr, mid: u16) -> Option<(usize, u32)> {
        if self.slots.is_empty() {
            return None;
        }
        let tag = self.tag(peer, mid);
        let mask = self.slots.len() - 1;
        let mut i = tag as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if (slot >> 32) as u32 == tag {
                let seq = slot as u32;
                let e = self.entry(seq);
                if e.peer == peer && e.mid == mid {
                    return Some((i, seq));
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes (peer, mid) from the index (linear probing, backward-shift deletion: no
    /// tombstones, so lookups never slow down with churn).
    fn unindex(&mut self, peer: SocketAddr, mid: u16) {
        let Some((mut hole, _)) = self.find(peer, mid) else {
            return;
        };
        self.live -= 1;
        let mask = self.slots.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let slot = self.slots[j];
            if slot == 0 {
                break;
            }
            let home = (slot >> 32) as usize & mask;
            // The entry at j may move back into the hole unless its home lies cyclically
            // in (hole, j].
            let stays = if hole < j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = slot;
                hole = j;
            }
        }
        self.slots[hole] = 0;
    }
}

impl Server {
    /// Records (peer, mid); for a duplicate, re-sends the stored answer and returns true.
    pub(super) fn is_duplicate(&mut self, peer: SocketAddr, mid: u16, now: Instant) -> bool {
        if let Some(state) = self.dedup.get(peer, mid) {
            self.stats.duplicates += 1;
            match state {
                DedupState::Processing | DedupState::Gone => {}
                DedupState::Answered(stored) | DedupState::Continue(stored) => {
                    let payload = stored.bytes().to_vec();
                    self.transmits.push_back(Transmit { peer, payload });
                }
            }
            return true;
        }
        let expires = now + self.config.exchange_lifetime;
        self.dedup.insert(peer, mid, expires);
        false
    }

    /// Sends `resp` to `peer` and keeps it (as `state`) for a duplicate of message `mid`.
    pub(super) fn send_answer(
        &mut self,
        peer: SocketAddr,
        mid: u16,
        resp: &Packet,
        state: fn(Stored) -> DedupState,
    ) {
        let bytes = encode(resp);
        self.dedup.set(peer, mid, state(Stored::new(&bytes)));
        self.transmits.push_back(Transmit {
            peer,
            payload: bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn addr(n: u16) -> SocketAddr {
        if n.is_multiple_of(3) {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5000 + n)
        } else {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8)),
                40000,
            )
        }
    }

    #[test]
    fn answers_stay_inline_up_to_the_limit() {
        let small = Stored::new(&[7; INLINE]);
        assert!(matches!(small, Stored::Inline { .. }));
        assert_eq!(small.bytes(), &[7; INLINE]);
        let large = Stored::new(&[9; INLINE + 1]);
        assert!(matches!(large, Stored::Heap(_)));
        assert_eq!(large.bytes(), &[9; INLINE + 1]);
        assert_eq!(Stored::new(&[]).bytes(), &[] as &[u8]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u16),
        Answer(u16, u16, u8),
        Forget(u16),
        Advance(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..12, 0u16..40).prop_map(|(p, m)| Op::Insert(p, m)),
            2 => (0u16..12, 0u16..40, any::<u8>()).prop_map(|(p, m, b)| Op::Answer(p, m, b)),
            1 => (0u16..12).prop_map(Op::Forget),
            1 => (0u8..30).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// The table answers exactly as its rules written out plainly (a list in arrival
        /// order, searched from end to end) would: the oldest forgotten first at the cap,
        /// entries gone after their lifetime or with their peer.
        #[test]
        fn behaves_like_a_bounded_map(max in 1usize..20, ops in proptest::collection::vec(op(), 1..400)) {
            let life = Duration::from_secs(60);
            let mut now = Instant::now();
            let mut table = DedupTable::new(max);
            // The rules in their plainest form: arrival order, forgotten ones keep their
            // place until they reach the front.
            let mut model: VecDeque<((SocketAddr, u16), Instant, DedupState)> = VecDeque::new();
            let live = |m: &VecDeque<((SocketAddr, u16), Instant, DedupState)>, key| {
                m.iter().position(|e| e.0 == key && e.2 != DedupState::Gone)
            };
            for op in ops {
                match op {
                    Op::Insert(p, m) => {
                        let key = (addr(p), m);
                        prop_assert_eq!(table.get(key.0, m).is_some(), live(&model, key).is_some());
                        if live(&model, key).is_none() {
                            table.insert(key.0, m, now + life);
                            while model.len() >= max {
                                model.pop_front();
                            }
                            model.push_back((key, now + life, DedupState::Processing));
                        }
                    }
                    Op::Answer(p, m, b) => {
                        let key = (addr(p), m);
                        let stored = Stored::new(&vec![b; usize::from(b % 40)]);
                        table.set(key.0, m, DedupState::Answered(stored.clone()));
                        if let Some(i) = live(&model, key) {
                            model[i].2 = DedupState::Answered(stored);
                        }
                    }
                    Op::Forget(p) => {
                        table.forget_peer(addr(p));
                        for e in model.iter_mut().filter(|e| e.0.0 == addr(p)) {
                            e.2 = DedupState::Gone;
                        }
                        while model.front().is_some_and(|e| e.2 == DedupState::Gone) {
                            model.pop_front();
                        }
                    }
                    Op::Advance(s) => {
                        now += Duration::from_secs(u64::from(s));
                        table.expire(now);
                        while model.front().is_some_and(|e| e.1 <= now) {
                            model.pop_front();
                        }
                    }
                }
                let alive: Vec<_> = model.iter().filter(|e| e.2 != DedupState::Gone).collect();
                prop_assert_eq!(table.len(), alive.len());
                prop_assert_eq!(table.ring.len(), model.len());
                prop_assert!(table.ring.len() <= max);
                for e in &alive {
                    prop_assert_eq!(table.get(e.0.0, e.0.1), Some(&e.2));
                }
                prop_assert_eq!(table.slots.iter().filter(|s| **s != 0).count(), alive.len());
            }
        }
    }

    #[test]
    fn churn_at_the_cap_keeps_the_index_exact() {
        let mut table = DedupTable::new(1000);
        let now = Instant::now();
        for n in 0..50_000u32 {
            let (peer, mid) = (addr((n % 300) as u16), (n / 300) as u16);
            assert!(table.get(peer, mid).is_none());
            table.insert(peer, mid, now);
            assert_eq!(table.len(), (n as usize + 1).min(1000));
        }
        // The last 1000 are remembered, the one before them is not.
        for n in 49_000..50_000u32 {
            assert!(
                table
                    .get(addr((n % 300) as u16), (n / 300) as u16)
                    .is_some()
            );
        }
        assert!(
            table
                .get(addr((48_999 % 300) as u16), (48_999 / 300) as u16)
                .is_none()
        );
        assert_eq!(table.slots.iter().filter(|s| **s != 0).count(), 1000);
        table.expire(now);
        assert_eq!(table.len(), 0);
        assert!(table.slots.iter().all(|s| *s == 0));
    }
}
