//! RFC 7252 §4.5 message deduplication, sans I/O.
//!
//! Every confirmable or non-confirmable request is remembered by
//! (peer endpoint, message id) for as long as a retransmission of it may still
//! arrive. A copy that arrives while the first is still being handled is
//! ignored (the answer is coming); a copy that arrives after the answer gets
//! the very same bytes again and is not processed a second time.
//!
//! Time is an argument (quinn-proto style): the table never reads a clock, so
//! tests drive it with a fake one. Expiry is two FIFO queues of deadlines, one
//! per lifetime; with a fixed lifetime each queue is already sorted, so expiry
//! and eviction are O(1) per exchange, with no timer or task per exchange.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8.2 EXCHANGE_LIFETIME with the default transmission
/// parameters: how long after the first transmission a retransmission of a
/// confirmable message may still arrive.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// RFC 7252 §4.8.2 NON_LIFETIME: the same for non-confirmable messages.
pub const NON_LIFETIME: Duration = Duration::from_secs(145);

/// Most exchanges remembered at once; when full, the oldest is forgotten first.
///
/// 2^20 entries hold a little over 60 s of the fleet's average 17 k messages
/// a second (DESIGN.md), more than a compliant client's whole retransmission
/// window (MAX_TRANSMIT_SPAN, 45 s), at about 250 bytes each (~250 MiB).
/// Forgetting an exchange early only costs a second submit of a retransmission,
/// which the store answers as a duplicate because reports are keyed by
/// (lock, seq): never a double store.
///
/// There is deliberately no per-peer cap below the one the protocol gives: a
/// peer has 65 536 message ids, so it can never hold more than 1/16 of the
/// table. A tighter cap per address would punish locks behind carrier-grade
/// NAT and the simulator, which share one address among many locks.
pub const MAX_EXCHANGES: usize = 1 << 20;

/// (peer endpoint, message id): RFC 7252 §4.5's duplicate-detection key.
pub type ExchangeKey = (SocketAddr, u16);

/// What to do with an incoming request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First copy: handle it, then call [`ExchangeTable::complete`].
    New,
    /// A confirmable copy of a request still being handled: ignore it, the
    /// answer is on its way.
    InProgress,
    /// A confirmable copy of an answered request: send these bytes again.
    Replay(Bytes),
    /// A copy of a non-confirmable request: ignore it (§4.5).
    Duplicate,
}

#[derive(Debug)]
enum State {
    Handling,
    Answered(Bytes),
}

#[derive(Debug)]
struct Entry {
    /// Insertion number: tells a live queue slot from a stale one.
    id: u64,
    confirmable: bool,
    state: State,
}

#[derive(Debug)]
struct Slot {
    expires: Instant,
    key: ExchangeKey,
    id: u64,
}

/// The remembered exchanges of one endpoint. Not thread-safe by itself; the
/// server keeps it behind a mutex held only for the duration of one call.
#[derive(Debug)]
pub struct ExchangeTable {
    entries: HashMap<ExchangeKey, Entry>,
    /// Deadlines of confirmable exchanges, oldest first.
    con_queue: VecDeque<Slot>,
    /// Deadlines of non-confirmable exchanges, oldest first.
    non_queue: VecDeque<Slot>,
    next_id: u64,
    capacity: usize,
    evicted: u64,
}

impl Default for ExchangeTable {
    fn default() -> Self {
        ExchangeTable::new(MAX_EXCHANGES)
    }
}

impl ExchangeTable {
    /// A table that remembers at most `capacity` exchanges (at least one).
    pub fn new(capacity: usize) -> Self {
        ExchangeTable {
            entries: HashMap::new(),
            con_queue: VecDeque::new(),
            non_queue: VecDeque::new(),
            next_id: 0,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// RFC 7252 §4.5: decide what to do with a request from `peer` carrying
    /// `message_id`, received at `now`. A [`Verdict::New`] request is
    /// remembered as being handled from now on.
    pub fn on_request(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        message_id: u16,
        confirmable: bool,
    ) -> Verdict {
        self.expire(now);
        let key = (peer, message_id);
        if let Some(entry) = self.entries.get(&key) {
            return match (&entry.state, entry.confirmable) {
                (_, false) => Verdict::Duplicate,
                (State::Handling, true) => Verdict::InProgress,
                (State::Answered(bytes), true) => Verdict::Replay(bytes.clone()),
            };
        }
        while self.entries.len() >= self.capacity {
            if !self.evict_oldest() {
                break;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let (lifetime, queue) = if confirmable {
            (EXCHANGE_LIFETIME, &mut self.con_queue)
        } else {
            (NON_LIFETIME, &mut self.non_queue)
        };
        queue.push_back(Slot {
            expires: now + lifetime,
            key,
            id,
        });
        self.entries.insert(
            key,
            Entry {
                id,
                confirmable,
                state: State::Handling,
            },
        );
        Verdict::New
    }

    /// Record the answer sent for a request, so that retransmissions of a
    /// confirmable one get the same bytes. Answers to non-confirmable
    /// requests are not kept (their copies are ignored). Does nothing if the
    /// exchange was forgotten meanwhile.
    pub fn complete(&mut self, peer: SocketAddr, message_id: u16, response: Bytes) {
        if let Some(entry) = self.entries.get_mut(&(peer, message_id)) {
            if entry.confirmable && matches!(entry.state, State::Handling) {
                entry.state = State::Answered(response);
            }
        }
    }

    /// Forget a request whose handling ended without an answer (its task was
    /// cancelled), so that a retransmission is handled afresh.
    pub fn abandon(&mut self, peer: SocketAddr, message_id: u16) {
        let key = (peer, message_id);
        if matches!(
            self.entries.get(&key),
            Some(Entry {
                state: State::Handling,
                ..
            })
        ) {
            self.entries.remove(&key);
        }
    }

    /// Forget every exchange whose lifetime ended at or before `now`.
    /// Returns how many were forgotten.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        for queue in [&mut self.con_queue, &mut self.non_queue] {
            while let Some(slot) = queue.front() {
                if slot.expires > now {
                    break;
                }
                if remove_live(&mut self.entries, slot) {
                    removed += 1;
                }
                queue.pop_front();
            }
        }
        removed
    }

    /// Forget the exchange remembered first. False when there is none.
    fn evict_oldest(&mut self) -> bool {
        loop {
            // The older of the two queue heads is the oldest insertion.
            let from_con = match (self.con_queue.front(), self.non_queue.front()) {
                (None, None) => return false,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(c), Some(n)) => c.id < n.id,
            };
            let queue = if from_con {
                &mut self.con_queue
            } else {
                &mut self.non_queue
            };
            let Some(slot) = queue.pop_front() else {
                return false;
            };
            if remove_live(&mut self.entries, &slot) {
                self.evicted += 1;
                return true;
            }
        }
    }

    /// Exchanges remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Exchanges forgotten before their lifetime because the table was full,
    /// since it was created.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Remove the entry `slot` points at, if the slot is not stale.
fn remove_live(entries: &mut HashMap<ExchangeKey, Entry>, slot: &Slot) -> bool {
    if entries.get(&slot.key).is_some_and(|e| e.id == slot.id) {
        entries.remove(&slot.key);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    struct Clock(Instant);
    impl Clock {
        fn at(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    fn clock() -> Clock {
        Clock(Instant::now())
    }

    #[test]
    fn first_copy_is_new_and_remembered() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        assert_eq!(t.on_request(c.at(0), peer(1), 7, true), Verdict::New);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn duplicate_while_in_progress_is_ignored() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 7, true);
        assert_eq!(t.on_request(c.at(3), peer(1), 7, true), Verdict::InProgress);
    }

    #[test]
    fn retransmission_within_lifetime_replays_the_same_bytes() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 7, true);
        t.complete(peer(1), 7, Bytes::from_static(b"ack"));
        let last = EXCHANGE_LIFETIME.as_secs() - 1;
        assert_eq!(
            t.on_request(c.at(last), peer(1), 7, true),
            Verdict::Replay(Bytes::from_static(b"ack"))
        );
    }

    #[test]
    fn retransmission_after_lifetime_is_new() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 7, true);
        t.complete(peer(1), 7, Bytes::from_static(b"ack"));
        let after = EXCHANGE_LIFETIME.as_secs();
        assert_eq!(t.on_request(c.at(after), peer(1), 7, true), Verdict::New);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn same_message_id_from_another_peer_is_new() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 7, true);
        assert_eq!(t.on_request(c.at(0), peer(2), 7, true), Verdict::New);
    }

    #[test]
    fn non_duplicate_is_ignored_even_after_the_answer() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 9, false);
        assert_eq!(t.on_request(c.at(1), peer(1), 9, false), Verdict::Duplicate);
        t.complete(peer(1), 9, Bytes::from_static(b"non answer"));
        assert_eq!(t.on_request(c.at(2), peer(1), 9, false), Verdict::Duplicate);
    }

    #[test]
    fn non_lifetime_is_shorter() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 1, true);
        t.on_request(c.at(0), peer(1), 2, false);
        assert_eq!(t.expire(c.at(NON_LIFETIME.as_secs())), 1);
        assert_eq!(
            t.on_request(c.at(NON_LIFETIME.as_secs()), peer(1), 2, false),
            Verdict::New
        );
        assert_eq!(
            t.on_request(c.at(NON_LIFETIME.as_secs()), peer(1), 1, true),
            Verdict::InProgress
        );
    }

    #[test]
    fn full_table_evicts_the_oldest_first() {
        let (c, mut t) = (clock(), ExchangeTable::new(3));
        t.on_request(c.at(0), peer(1), 1, true);
        t.on_request(c.at(1), peer(1), 2, false);
        t.on_request(c.at(2), peer(1), 3, true);
        t.on_request(c.at(3), peer(1), 4, true);
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted(), 1);
        // The oldest (1) is gone; the NON (2), younger, is still remembered.
        assert_eq!(t.on_request(c.at(4), peer(1), 2, false), Verdict::Duplicate);
        assert_eq!(t.on_request(c.at(4), peer(1), 1, true), Verdict::New);
        // Remembering 1 again evicted the next oldest, the NON (2).
        assert_eq!(t.evicted(), 2);
        assert_eq!(t.on_request(c.at(5), peer(1), 3, true), Verdict::InProgress);
        assert_eq!(t.on_request(c.at(5), peer(1), 2, false), Verdict::New);
    }

    #[test]
    fn abandoned_request_is_handled_afresh() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 7, true);
        t.abandon(peer(1), 7);
        assert!(t.is_empty());
        assert_eq!(t.on_request(c.at(1), peer(1), 7, true), Verdict::New);
        // The stale deadline of the first copy must not forget the second early.
        t.complete(peer(1), 7, Bytes::from_static(b"ack"));
        assert_eq!(t.expire(c.at(EXCHANGE_LIFETIME.as_secs())), 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(c.at(EXCHANGE_LIFETIME.as_secs() + 1)), 1);
    }

    #[test]
    fn abandon_keeps_answered_exchanges() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        t.on_request(c.at(0), peer(1), 7, true);
        t.complete(peer(1), 7, Bytes::from_static(b"ack"));
        t.abandon(peer(1), 7);
        assert!(matches!(
            t.on_request(c.at(1), peer(1), 7, true),
            Verdict::Replay(_)
        ));
    }

    #[test]
    fn complete_after_eviction_does_nothing() {
        let (c, mut t) = (clock(), ExchangeTable::new(1));
        t.on_request(c.at(0), peer(1), 1, true);
        t.on_request(c.at(0), peer(1), 2, true);
        t.complete(peer(1), 1, Bytes::from_static(b"late"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.on_request(c.at(1), peer(1), 2, true), Verdict::InProgress);
    }

    #[test]
    fn expiry_empties_the_table() {
        let (c, mut t) = (clock(), ExchangeTable::default());
        for mid in 0..100 {
            t.on_request(c.at(0), peer(mid), mid, mid % 2 == 0);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.expire(c.at(EXCHANGE_LIFETIME.as_secs())), 100);
        assert!(t.is_empty());
    }
}
