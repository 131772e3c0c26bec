//! Delivering commands to Bluetooth locks through their Wi-Fi bridges: which
//! command goes to which bridge next, which are waiting for a result, and
//! which have timed out.
//!
//! The gateway owns one [`BridgeQueue`] and drives it from its I/O: it
//! [enqueues](BridgeQueue::enqueue) commands, reports bridge connectivity
//! ([`BridgeQueue::bridge_online`], [`BridgeQueue::bridge_offline`]) and lock
//! results ([`BridgeQueue::on_result`]), publishes every [`Transmit`] that
//! [`BridgeQueue::next_sends`] hands out, and arms one timer from
//! [`BridgeQueue::next_deadline_ms`] to call [`BridgeQueue::poll_timeouts`].
//! Like `quinn-proto`, it is driven with the time as an argument and never
//! reads a clock, sleeps or touches a socket. It owns no job state: the store
//! decides what a result or a give-up means for the job.
//!
//! # Rules
//!
//! * A lock has at most one command in flight, and its commands go in the
//!   order they were enqueued. A bridge links at most
//!   [`MAX_LOCKS_PER_BRIDGE`] locks, so at most that many are in flight per
//!   bridge.
//! * Commands go only to an online bridge. A bridge never reported is
//!   offline: after a restart the caller reports the online ones.
//! * A command unanswered [`BridgeQueueConfig::timeout_ms`] after it was
//!   handed out times out. Up to [`BridgeQueueConfig::max_tries`] sends it is
//!   a [`TimedOut::Retry`] and may go again at once (no extra backoff: the
//!   timeout already spaces the tries); then it is a [`TimedOut::GaveUp`],
//!   leaves the queue, and the lock's next command may go. Connectivity never
//!   fails a job: the caller leaves a given-up job pending.
//! * When a bridge goes offline, a command in flight to it is not failed: it
//!   goes back to the head of its lock's queue and is sent again, with the
//!   same job id and attempt, once the bridge is back (the lock applies a job
//!   id at most once). Its tries count again from zero in the new online
//!   stretch.
//!
//! # Payloads
//!
//! The queue holds a job id and attempt per command, never a payload: the
//! caller maps `(id, attempt)` to the job it publishes. That keeps the queue
//! free of schemas, its memory small, and avoids a type parameter.
//!
//! # Fairness and cost
//!
//! Bridges with a command that may go now wait in one ring. Each turn of
//! [`BridgeQueue::next_sends`] takes the bridge at the front, sends one
//! command (alternating between its locks) and puts the bridge at the back if
//! it can send more, so a bridge with a thousand commands waits its turn like
//! one with a single command. An entry whose bridge went offline or was
//! emptied meanwhile is dropped when it reaches the front; a bridge is in the
//! ring at most once, so every send costs `O(1)` amortised, never a scan of
//! the bridges. Deadlines live in an ordered index, so a poll touches only
//! the commands that timed out. Memory is proportional to the queued commands
//! plus the bridges ever reported.

use crate::registry::{BridgeId, LockId, MAX_LOCKS_PER_BRIDGE};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Default [`BridgeQueueConfig::timeout_ms`]: a bridge answers over Wi-Fi and
/// Bluetooth within a few seconds; 10 s leaves room for a slow BLE connect
/// without holding a lock's queue long when the result was lost.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default [`BridgeQueueConfig::max_tries`]: three sends ride out a lost
/// message or two; more would only delay the lock's next command while the
/// bridge is plainly not delivering.
pub const DEFAULT_MAX_TRIES: u8 = 3;

/// How long the queue waits for a result, and how often it tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeQueueConfig {
    /// From handing a command out to timing it out, milliseconds; at least 1.
    pub timeout_ms: u64,
    /// Sends per online stretch before a command is given up; at least 1.
    pub max_tries: u8,
}

impl Default for BridgeQueueConfig {
    fn default() -> Self {
        BridgeQueueConfig {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_tries: DEFAULT_MAX_TRIES,
        }
    }
}

/// A configuration the queue cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the bridge command timeout is 0 ms: set at least 1 ms (default {DEFAULT_TIMEOUT_MS})"
    )]
    ZeroTimeout,
    #[error("the bridge command max tries is 0: set at least 1 (default {DEFAULT_MAX_TRIES})")]
    ZeroTries,
}

/// A command refused by [`BridgeQueue::enqueue`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("job {id} is already queued for lock {lock}: wait for its result or remove it first")]
    Duplicate { id: u64, lock: LockId },
    #[error("lock {lock} has commands queued for bridge {queued_for}, not {bridge}: call unlink_lock and enqueue them again for the new bridge")]
    OtherBridge {
        lock: LockId,
        queued_for: BridgeId,
        bridge: BridgeId,
    },
    #[error("bridge {bridge} already has commands for {MAX_LOCKS_PER_BRIDGE} other locks, and a bridge links at most {MAX_LOCKS_PER_BRIDGE}: unlink one of them before queueing for lock {lock}")]
    BridgeFull { bridge: BridgeId, lock: LockId },
}

/// A job to deliver to `lock` through `bridge`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The job id; unique among queued commands.
    pub id: u64,
    /// The job's attempt (a recreated job is attempt 2); results echo it.
    pub attempt: u8,
    pub lock: LockId,
    pub bridge: BridgeId,
}

/// A command to publish now. Its timeout runs from the `now_ms` given to
/// [`BridgeQueue::next_sends`]; a publish that fails is retried on timeout.
/// (Named as in `quinn-proto`; `Send` would shadow the marker trait.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub id: u64,
    pub attempt: u8,
    pub lock: LockId,
    pub bridge: BridgeId,
    /// 1 for the first send since the bridge last came online, then 2, ...
    pub try_no: u8,
}

/// A command the lock answered; it has left the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    pub command: Command,
    /// Times this queue handed it out (0: sent before a restart).
    pub sends: u16,
}

/// A command whose result did not come back in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimedOut {
    /// It may go again at once; [`BridgeQueue::next_sends`] hands it out.
    Retry { command: Command, tries: u8 },
    /// Sent `tries` times unanswered: it has left the queue and the lock's
    /// next command may go. Leave the job pending (connectivity never fails
    /// a job); enqueue it again to try later, e.g. when the bridge reconnects.
    GaveUp { command: Command, tries: u8 },
}

/// The answer to [`BridgeQueue::remove`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// It was waiting and never sent: it is gone.
    Removed(Command),
    /// It was sent and no result came back (in flight now, or waiting to go
    /// again after a timeout or a reconnect): the lock may apply it, so it
    /// stays until its result or its give-up. Refuse the delete.
    InFlight,
    /// Not in the queue.
    NotQueued,
}

/// A queued command, as the queue keeps it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u64,
    attempt: u8,
    /// Sends in the bridge's current online stretch.
    tries: u8,
    /// Sends ever, by this queue.
    sends: u16,
}

/// The commands of one lock that has any. Dropped when it has none.
#[derive(Debug)]
struct LockState {
    bridge: BridgeId,
    entries: VecDeque<Entry>,
    /// `Some(deadline)`: the front entry is in flight.
    deadline_ms: Option<u64>,
}

impl LockState {
    fn eligible(&self) -> bool {
        self.deadline_ms.is_none() && !self.entries.is_empty()
    }

    fn command(&self, lock: &LockId, e: &Entry) -> Command {
        Command {
            id: e.id,
            attempt: e.attempt,
            lock: lock.clone(),
            bridge: self.bridge.clone(),
        }
    }
}

/// A bridge ever reported or named by a command.
#[derive(Debug, Default)]
struct BridgeState {
    online: bool,
    /// Time of the newest connectivity change applied.
    changed_at_ms: Option<u64>,
    /// The locks with commands, at most [`MAX_LOCKS_PER_BRIDGE`].
    locks: Vec<LockId>,
    /// Which of `locks` goes first on the bridge's next turn.
    turn: usize,
    /// Whether the bridge has an entry in the ring.
    in_ring: bool,
}

/// The bridge command queue; see the module doc.
#[derive(Debug)]
pub struct BridgeQueue {
    config: BridgeQueueConfig,
    locks: HashMap<LockId, LockState>,
    bridges: HashMap<BridgeId, BridgeState>,
    /// The lock of every queued command, by job id.
    lock_of: HashMap<u64, LockId>,
    /// Bridges that may have a command to send now, each at most once.
    ring: VecDeque<BridgeId>,
    /// `(deadline_ms, job id)` of every command in flight.
    deadlines: BTreeSet<(u64, u64)>,
}

impl BridgeQueue {
    pub fn new(config: BridgeQueueConfig) -> Result<Self, ConfigError> {
        if config.timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        if config.max_tries == 0 {
            return Err(ConfigError::ZeroTries);
        }
        Ok(BridgeQueue {
            config,
            locks: HashMap::new(),
            bridges: HashMap::new(),
            lock_of: HashMap::new(),
            ring: VecDeque::new(),
            deadlines: BTreeSet::new(),
        })
    }

    /// Queue `cmd` behind the lock's earlier commands. It goes out through
    /// [`BridgeQueue::next_sends`] as soon as its bridge is online and the
    /// lock has nothing in flight.
    pub fn enqueue(&mut self, cmd: Command) -> Result<(), EnqueueError> {
        if let Some(lock) = self.lock_of.get(&cmd.id) {
            return Err(EnqueueError::Duplicate {
                id: cmd.id,
                lock: lock.clone(),
            });
        }
        if let Some(ls) = self.locks.get(&cmd.lock) {
            if ls.bridge != cmd.bridge {
                return Err(EnqueueError::OtherBridge {
                    lock: cmd.lock,
                    queued_for: ls.bridge.clone(),
                    bridge: cmd.bridge,
                });
            }
        } else {
            let bs = self.bridges.entry(cmd.bridge.clone()).or_default();
            if bs.locks.len() >= MAX_LOCKS_PER_BRIDGE {
                return Err(EnqueueError::BridgeFull {
                    bridge: cmd.bridge,
                    lock: cmd.lock,
                });
            }
            bs.locks.push(cmd.lock.clone());
        }
        let ls = self
            .locks
            .entry(cmd.lock.clone())
            .or_insert_with(|| LockState {
                bridge: cmd.bridge.clone(),
                entries: VecDeque::new(),
                deadline_ms: None,
            });
        ls.entries.push_back(Entry {
            id: cmd.id,
            attempt: cmd.attempt,
            tries: 0,
            sends: 0,
        });
        self.lock_of.insert(cmd.id, cmd.lock);
        self.schedule(&cmd.bridge);
        Ok(())
    }

    /// Up to `max` commands to publish now, one bridge turn each, round-robin
    /// over the bridges that can send. Each is in flight from `now_ms`.
    pub fn next_sends(&mut self, now_ms: u64, max: usize) -> Vec<Transmit> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(bridge) = self.ring.pop_front() else {
                break;
            };
            // Invariant: bridges are never dropped, so a ring entry names one.
            let bs = self.bridges.get_mut(&bridge).expect("ring bridge is known");
            bs.in_ring = false;
            if !bs.online {
                continue;
            }
            let n = bs.locks.len();
            let Some(ix) = (0..n).map(|k| (bs.turn + k) % n).find(|&i| {
                self.locks
                    .get(&bs.locks[i])
                    .is_some_and(LockState::eligible)
            }) else {
                continue;
            };
            bs.turn = ix + 1;
            let lock = bs.locks[ix].clone();
            // Invariant: `find` above saw the lock with a front entry.
            let ls = self.locks.get_mut(&lock).expect("eligible lock exists");
            let e = ls.entries.front_mut().expect("eligible lock has a command");
            e.tries = e.tries.saturating_add(1);
            e.sends = e.sends.saturating_add(1);
            let deadline_ms = now_ms.saturating_add(self.config.timeout_ms);
            ls.deadline_ms = Some(deadline_ms);
            self.deadlines.insert((deadline_ms, e.id));
            out.push(Transmit {
                id: e.id,
                attempt: e.attempt,
                lock,
                bridge: bridge.clone(),
                try_no: e.tries,
            });
            self.schedule(&bridge);
        }
        out
    }

    /// A result from `lock` for job `id`, attempt `attempt`. The command
    /// leaves the queue (if it was in flight, the lock's next may go). A
    /// result for a command not queued for that lock with that attempt
    /// (unknown, stale, already done) changes nothing and returns `None`.
    /// A result for a command not yet sent by this queue also completes it:
    /// it was sent before a restart and the lock applied it.
    pub fn on_result(&mut self, lock: &str, id: u64, attempt: u8) -> Option<Done> {
        let lock = self
            .lock_of
            .get(&id)
            .filter(|l| l.as_str() == lock)?
            .clone();
        let ls = self.locks.get(&lock)?;
        let pos = ls.entries.iter().position(|e| e.id == id)?;
        if ls.entries[pos].attempt != attempt {
            return None;
        }
        let (command, e) = self.take(&lock, pos);
        Some(Done {
            command,
            sends: e.sends,
        })
    }

    /// The commands whose timeout passed by `now_ms`, each a retry or a
    /// give-up. Touches only those.
    pub fn poll_timeouts(&mut self, now_ms: u64) -> Vec<TimedOut> {
        let mut out = Vec::new();
        while let Some(&(deadline_ms, id)) = self.deadlines.first() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.pop_first();
            // Invariant: a deadline names the front entry of a queued lock;
            // every path that ends a flight removes its deadline.
            let lock = self.lock_of[&id].clone();
            let ls = self.locks.get_mut(&lock).expect("in-flight lock exists");
            ls.deadline_ms = None;
            let e = *ls.entries.front().expect("in-flight lock has a command");
            if e.tries < self.config.max_tries {
                let command = ls.command(&lock, &e);
                let bridge = ls.bridge.clone();
                self.schedule(&bridge);
                out.push(TimedOut::Retry {
                    command,
                    tries: e.tries,
                });
            } else {
                let (command, _) = self.take(&lock, 0);
                out.push(TimedOut::GaveUp {
                    command,
                    tries: e.tries,
                });
            }
        }
        out
    }

    /// When [`BridgeQueue::poll_timeouts`] will next have something, for the
    /// caller's timer; `None` when nothing is in flight.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.first().map(|&(deadline_ms, _)| deadline_ms)
    }

    /// The bridge came online at `at_ms`: its locks' next commands may go.
    /// Returns whether this changed its status; a report older than the
    /// newest change applied is ignored.
    pub fn bridge_online(&mut self, bridge: &BridgeId, at_ms: u64) -> bool {
        if !self.set_status(bridge, true, at_ms) {
            return false;
        }
        self.schedule(bridge);
        true
    }

    /// The bridge went offline at `at_ms`. Commands in flight to it go back
    /// to the head of their lock's queue, to be sent again after it
    /// reconnects; their ids are returned. A report older than the newest
    /// change applied is ignored (returns nothing).
    pub fn bridge_offline(&mut self, bridge: &BridgeId, at_ms: u64) -> Vec<u64> {
        if !self.set_status(bridge, false, at_ms) {
            return Vec::new();
        }
        let mut returned = Vec::new();
        // Invariant: `set_status` returned true, so the bridge is known.
        for lock in &self.bridges[bridge].locks {
            let Some(ls) = self.locks.get_mut(lock) else {
                continue;
            };
            let Some(e) = ls.entries.front_mut() else {
                continue;
            };
            e.tries = 0;
            if let Some(deadline_ms) = ls.deadline_ms.take() {
                self.deadlines.remove(&(deadline_ms, e.id));
                returned.push(e.id);
            }
        }
        returned
    }

    /// Withdraw a command (its job was deleted on the dashboard).
    pub fn remove(&mut self, id: u64) -> Removal {
        let Some(lock) = self.lock_of.get(&id).cloned() else {
            return Removal::NotQueued;
        };
        // Invariant: `lock_of` names only locks with that command queued.
        let ls = &self.locks[&lock];
        let pos = ls
            .entries
            .iter()
            .position(|e| e.id == id)
            .expect("indexed command is queued");
        if ls.entries[pos].sends > 0 {
            return Removal::InFlight;
        }
        Removal::Removed(self.take(&lock, pos).0)
    }

    /// The lock was unlinked (or linked to another bridge): all its commands
    /// leave the queue, in their order, the one in flight included. Their
    /// jobs stay pending; enqueue them again for the new bridge. Enqueued
    /// again, a command is new to the queue: [`BridgeQueue::remove`] no
    /// longer knows it was sent, so keep the store's in-flight flag as the
    /// authority on deleting such a job.
    pub fn unlink_lock(&mut self, lock: &str) -> Vec<Command> {
        let Some((lock, ls)) = self.locks.remove_entry(lock) else {
            return Vec::new();
        };
        if let (Some(deadline_ms), Some(e)) = (ls.deadline_ms, ls.entries.front()) {
            self.deadlines.remove(&(deadline_ms, e.id));
        }
        if let Some(bs) = self.bridges.get_mut(&ls.bridge) {
            bs.locks.retain(|l| *l != lock);
        }
        ls.entries
            .iter()
            .map(|e| {
                self.lock_of.remove(&e.id);
                ls.command(&lock, e)
            })
            .collect()
    }

    /// Commands waiting to be sent (not in flight), for a gauge.
    pub fn queued(&self) -> usize {
        self.lock_of.len() - self.deadlines.len()
    }

    /// Commands sent and awaiting their result, for a gauge.
    pub fn in_flight(&self) -> usize {
        self.deadlines.len()
    }

    /// Commands held for `bridge`'s locks, in flight included.
    pub fn depth(&self, bridge: &str) -> usize {
        self.bridges.get(bridge).map_or(0, |bs| {
            bs.locks
                .iter()
                .filter_map(|l| self.locks.get(l))
                .map(|ls| ls.entries.len())
                .sum()
        })
    }

    /// Whether `bridge` is online, as last reported.
    pub fn is_online(&self, bridge: &str) -> bool {
        self.bridges.get(bridge).is_some_and(|bs| bs.online)
    }

    /// Apply a status report; false if stale or unchanged.
    fn set_status(&mut self, bridge: &BridgeId, online: bool, at_ms: u64) -> bool {
        let bs = self.bridges.entry(bridge.clone()).or_default();
        if bs.changed_at_ms.is_some_and(|t| at_ms < t) || bs.online == online {
            return false;
        }
        bs.online = online;
        bs.changed_at_ms = Some(at_ms);
        true
    }

    /// Put `bridge` in the ring if it can send and is not there yet.
    fn schedule(&mut self, bridge: &BridgeId) {
        let Some(bs) = self.bridges.get_mut(bridge) else {
            return;
        };
        if bs.in_ring || !bs.online {
            return;
        }
        if bs
            .locks
            .iter()
            .any(|l| self.locks.get(l).is_some_and(LockState::eligible))
        {
            bs.in_ring = true;
            self.ring.push_back(bridge.clone());
        }
    }

    /// Take the entry at `pos` of `lock`'s queue out, ending its flight if it
    /// is the front one; drops the lock when it has no more commands and lets
    /// the next one go otherwise.
    fn take(&mut self, lock: &LockId, pos: usize) -> (Command, Entry) {
        // Invariant: callers found the entry at `pos` of this lock.
        let ls = self.locks.get_mut(lock).expect("lock is queued");
        let e = ls.entries.remove(pos).expect("entry is queued");
        if pos == 0 {
            if let Some(deadline_ms) = ls.deadline_ms.take() {
                self.deadlines.remove(&(deadline_ms, e.id));
            }
        }
        self.lock_of.remove(&e.id);
        let command = ls.command(lock, &e);
        let bridge = ls.bridge.clone();
        if ls.entries.is_empty() {
            self.locks.remove(lock);
            if let Some(bs) = self.bridges.get_mut(&bridge) {
                bs.locks.retain(|l| l != lock);
            }
        } else {
            self.schedule(&bridge);
        }
        (command, e)
    }
}

#[cfg(test)]
#[path = "bridge_queue_tests.rs"]
mod tests;
