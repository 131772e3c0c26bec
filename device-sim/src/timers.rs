//! One ordered set of deadlines per task, so a task with thousands of locks
//! sleeps on a single `sleep_until(next_deadline)` instead of a timer per lock.
//! Pure data structure: it never reads the clock.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Deadlines keyed by `K`; each key has at most one deadline. O(log n) per
/// operation.
#[derive(Debug)]
pub struct TimerQueue<K> {
    order: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K: Copy + Ord + Hash> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            order: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Copy + Ord + Hash> TimerQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or moves) the deadline of `key`.
    pub fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.order.remove(&(old, key));
        }
        self.order.insert((at, key));
    }

    /// Moves the deadline of `key` earlier only: keeps whichever is sooner.
    pub fn set_earlier(&mut self, key: K, at: Instant) {
        match self.by_key.get(&key) {
            Some(old) if *old <= at => {}
            _ => self.set(key, at),
        }
    }

    pub fn cancel(&mut self, key: K) {
        if let Some(old) = self.by_key.remove(&key) {
            self.order.remove(&(old, key));
        }
    }

    pub fn deadline(&self, key: K) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// The soonest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Removes and returns one key whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let (at, key) = *self.order.first()?;
        if at > now {
            return None;
        }
        self.order.remove(&(at, key));
        self.by_key.remove(&key);
        Some(key)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_moves_keys() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut q = TimerQueue::new();
        q.set(1u32, t0 + 3 * s);
        q.set(2, t0 + s);
        q.set(3, t0 + 2 * s);
        q.set(1, t0); // moved earlier
        q.set_earlier(3, t0 + 5 * s); // ignored: later
        assert_eq!(q.next_deadline(), Some(t0));
        assert_eq!(q.pop_due(t0 + 2 * s), Some(1));
        assert_eq!(q.pop_due(t0 + 2 * s), Some(2));
        assert_eq!(q.pop_due(t0 + 2 * s), Some(3));
        assert_eq!(q.pop_due(t0 + 9 * s), None);
        assert!(q.is_empty());
    }

    #[test]
    fn cancel_removes_the_deadline() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        q.set(7u32, t0);
        q.cancel(7);
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.len(), 0);
    }
}
