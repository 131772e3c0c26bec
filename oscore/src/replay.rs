//! Sequence-number state as plain data the caller persists: the recipient's
//! replay window (RFC 8613 §7.4) and the sender's sequence number with the
//! reservation scheme of Appendix B.1.1.
//!
//! Neither type writes anything anywhere. The caller stores
//! [`ReplayWindow::to_parts`] durably — in the same commit as the request's
//! effects, before the response is released — and stores each
//! [`Next::NeedsPersist`] limit before using any number under it. Then a
//! restart never accepts a request twice and never reuses a nonce.

use crate::MAX_SEQ;

/// Width of the replay window in sequence numbers. RFC 8613 §7.4 suggests
/// 32; 64 costs the same (one `u64`) and tolerates more reordering of a
/// device's uplinks across retransmissions.
pub const REPLAY_WINDOW_WIDTH: u64 = 64;

/// Sequence numbers reserved per durable write by default (Appendix
/// B.1.1's `K`): a crash skips at most this many numbers out of 2^40, and a
/// sender writes its state once per this many messages.
pub const DEFAULT_RESERVATION_STEP: u64 = 1024;

/// A Partial IV the window refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// This sequence number was accepted before.
    #[error("replayed sequence number {seq}: already accepted")]
    AlreadySeen {
        /// The refused sequence number.
        seq: u64,
    },
    /// The sequence number is older than the window can tell about.
    #[error("sequence number {seq} is below the replay window (lowest acceptable {lowest})")]
    BelowWindow {
        /// The refused sequence number.
        seq: u64,
        /// The lowest sequence number the window could still accept.
        lowest: u64,
    },
    /// Above 2^40 − 1: no Partial IV encodes it.
    #[error("sequence number {seq} exceeds 2^40 - 1")]
    OutOfRange {
        /// The refused sequence number.
        seq: u64,
    },
}

/// Stored window parts that no sequence of accepts can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored replay window is inconsistent: highest {highest:?}, bits {bits:#018x}")]
pub struct InvalidWindowParts {
    /// The stored highest sequence number.
    pub highest: Option<u64>,
    /// The stored bitmap.
    pub bits: u64,
}

/// A 64-wide sliding replay window (RFC 8613 §7.4). Bit `i` of `bits` set
/// means `highest − i` was accepted; `highest` itself always is, so a
/// window that accepted something has bit 0 set, and `bits == 0` is the
/// window that accepted nothing (`highest` is then 0 and means nothing).
/// Two integers, 16 bytes: a gateway holds one window per device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    bits: u64,
}

impl ReplayWindow {
    /// A window that has accepted nothing (a fresh context).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `seq` may be accepted: not seen before and not older than the
    /// window. Changes nothing; call before decrypting.
    pub fn check(&self, seq: u64) -> Result<(), Replay> {
        if seq > MAX_SEQ {
            return Err(Replay::OutOfRange { seq });
        }
        let Some(highest) = self.highest() else {
            return Ok(());
        };
        if seq > highest {
            return Ok(());
        }
        let age = highest - seq;
        if age >= REPLAY_WINDOW_WIDTH {
            return Err(Replay::BelowWindow {
                seq,
                lowest: highest + 1 - REPLAY_WINDOW_WIDTH,
            });
        }
        if self.bits & (1 << age) != 0 {
            return Err(Replay::AlreadySeen { seq });
        }
        Ok(())
    }

    /// Records `seq` as accepted. Call only after the message verified, and
    /// persist [`Self::to_parts`] before releasing the response. Re-checks,
    /// so a second accept of the same number (a concurrent duplicate) fails.
    pub fn accept(&mut self, seq: u64) -> Result<(), Replay> {
        self.check(seq)?;
        match self.highest() {
            Some(highest) if seq <= highest => self.bits |= 1 << (highest - seq),
            Some(highest) => {
                let shift = seq - highest;
                self.bits = if shift >= REPLAY_WINDOW_WIDTH {
                    1
                } else {
                    self.bits << shift | 1
                };
                self.highest = seq;
            }
            None => {
                self.bits = 1;
                self.highest = seq;
            }
        }
        Ok(())
    }

    /// The highest accepted sequence number, if any.
    pub fn highest(&self) -> Option<u64> {
        (self.bits != 0).then_some(self.highest)
    }

    /// The two integers to store: the highest accepted sequence number
    /// (`None` before the first) and the bitmap.
    pub fn to_parts(&self) -> (Option<u64>, u64) {
        (self.highest(), self.bits)
    }

    /// Restores a window stored with [`Self::to_parts`]. Refuses parts no
    /// window can have (a bitmap without a highest number, `highest` not
    /// marked, bits below sequence number 0, `highest` out of range), so a
    /// corrupted store is noticed rather than silently widening what is
    /// accepted.
    pub fn from_parts(highest: Option<u64>, bits: u64) -> Result<Self, InvalidWindowParts> {
        let invalid = InvalidWindowParts { highest, bits };
        match highest {
            None if bits != 0 => Err(invalid),
            None => Ok(Self::default()),
            Some(h) if h > MAX_SEQ || bits & 1 == 0 => Err(invalid),
            // Bit i stands for h - i; for h < 63, bits past i = h stand for
            // negative numbers and must be clear.
            Some(h) if h < REPLAY_WINDOW_WIDTH - 1 && bits >> (h + 1) != 0 => Err(invalid),
            Some(h) => Ok(Self { highest: h, bits }),
        }
    }
}

/// The sender sequence space (2^40) is used up: the context must be
/// re-keyed (RFC 8613 §7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sender sequence numbers exhausted (2^40 used); the context must be re-keyed")]
pub struct Exhausted;

/// What [`SenderSequence::next`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Next {
    /// Use this sequence number; it is covered by a durable reservation.
    Seq(u64),
    /// Nothing may be sent until this new limit is stored durably; then
    /// call [`SenderSequence::reservation_persisted`] and `next` again.
    NeedsPersist(u64),
}

/// A sender sequence number with the reservation scheme of RFC 8613
/// Appendix B.1.1: the stored value is a limit, every number below it may
/// have been used, and numbers are handed out only below a stored limit. A
/// crash therefore skips numbers but never reuses one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderSequence {
    next: u64,
    limit: u64,
    step: u64,
}

impl SenderSequence {
    /// Resumes from the stored limit (0 for a fresh context), with
    /// [`DEFAULT_RESERVATION_STEP`]. The first `next` asks for a new
    /// reservation: numbers below the stored limit may have been used.
    pub fn restore(persisted_limit: u64) -> Self {
        Self::restore_with_step(persisted_limit, DEFAULT_RESERVATION_STEP)
    }

    /// As [`Self::restore`], reserving `step` numbers (at least 1) per write.
    pub fn restore_with_step(persisted_limit: u64, step: u64) -> Self {
        Self {
            next: persisted_limit,
            limit: persisted_limit,
            step: step.max(1),
        }
    }

    /// The next sequence number, or the limit to persist before one can be
    /// handed out. Refuses past [`MAX_SEQ`].
    #[expect(
        clippy::should_implement_trait,
        reason = "not an Iterator: it withholds numbers until a reservation is stored"
    )]
    pub fn next(&mut self) -> Result<Next, Exhausted> {
        if self.next > MAX_SEQ {
            return Err(Exhausted);
        }
        if self.next >= self.limit {
            let new_limit = self.next.saturating_add(self.step).min(MAX_SEQ + 1);
            return Ok(Next::NeedsPersist(new_limit));
        }
        let seq = self.next;
        self.next += 1;
        Ok(Next::Seq(seq))
    }

    /// Tells that `limit` is now stored durably. A smaller limit than one
    /// already confirmed changes nothing.
    pub fn reservation_persisted(&mut self, limit: u64) {
        self.limit = self.limit.max(limit.min(MAX_SEQ + 1));
    }

    /// The limit last confirmed as stored.
    pub fn persisted_limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(window: &mut ReplayWindow, seq: u64) {
        window.accept(seq).expect("fresh sequence number");
    }

    #[test]
    fn a_sequence_number_is_accepted_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(5), Ok(()));
        accepted(&mut w, 5);
        assert_eq!(w.check(5), Err(Replay::AlreadySeen { seq: 5 }));
        assert_eq!(w.accept(5), Err(Replay::AlreadySeen { seq: 5 }));
    }

    #[test]
    fn reordered_numbers_inside_the_window_are_accepted_once() {
        let mut w = ReplayWindow::new();
        for seq in [10, 12, 11, 3] {
            accepted(&mut w, seq);
        }
        for seq in [10, 11, 12, 3] {
            assert_eq!(w.check(seq), Err(Replay::AlreadySeen { seq }));
        }
        assert_eq!(w.check(4), Ok(()));
    }

    #[test]
    fn numbers_below_the_window_are_refused() {
        let mut w = ReplayWindow::new();
        accepted(&mut w, 100);
        assert_eq!(w.check(37), Ok(()));
        assert_eq!(
            w.check(36),
            Err(Replay::BelowWindow {
                seq: 36,
                lowest: 37
            })
        );
        accepted(&mut w, 100 + REPLAY_WINDOW_WIDTH + 5);
        assert_eq!(
            w.check(100),
            Err(Replay::BelowWindow {
                seq: 100,
                lowest: 106
            })
        );
    }

    #[test]
    fn a_restored_window_refuses_what_it_accepted() {
        let mut w = ReplayWindow::new();
        for seq in [0, 1, 7] {
            accepted(&mut w, seq);
        }
        let (highest, bits) = w.to_parts();
        let restored = ReplayWindow::from_parts(highest, bits).expect("stored by to_parts");
        for seq in [0, 1, 7] {
            assert_eq!(restored.check(seq), Err(Replay::AlreadySeen { seq }));
        }
        assert_eq!(restored.check(2), Ok(()));
    }

    #[test]
    fn a_window_is_two_integers_and_knows_when_it_accepted_nothing() {
        assert_eq!(std::mem::size_of::<ReplayWindow>(), 16);
        let mut w = ReplayWindow::new();
        assert_eq!((w.highest(), w.to_parts()), (None, (None, 0)));
        // Sequence number 0 is a real first acceptance, not "nothing".
        accepted(&mut w, 0);
        assert_eq!((w.highest(), w.to_parts()), (Some(0), (Some(0), 1)));
        assert_eq!(w.check(0), Err(Replay::AlreadySeen { seq: 0 }));
        assert_eq!(ReplayWindow::from_parts(None, 0), Ok(ReplayWindow::new()));
    }

    #[test]
    fn inconsistent_stored_parts_are_refused() {
        for (highest, bits) in [
            (None, 1),
            (Some(5), 0b10),
            (Some(2), 0b1001),
            (Some(MAX_SEQ + 1), 1),
        ] {
            assert_eq!(
                ReplayWindow::from_parts(highest, bits),
                Err(InvalidWindowParts { highest, bits })
            );
        }
        assert!(ReplayWindow::from_parts(Some(63), u64::MAX).is_ok());
        assert!(ReplayWindow::from_parts(Some(2), 0b111).is_ok());
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        assert_eq!(
            ReplayWindow::new().check(MAX_SEQ + 1),
            Err(Replay::OutOfRange { seq: MAX_SEQ + 1 })
        );
    }

    #[test]
    fn sender_sequence_needs_a_durable_reservation_before_each_block() {
        let mut s = SenderSequence::restore_with_step(0, 3);
        assert_eq!(s.next(), Ok(Next::NeedsPersist(3)));
        // Not persisted yet: still nothing to hand out.
        assert_eq!(s.next(), Ok(Next::NeedsPersist(3)));
        s.reservation_persisted(3);
        assert_eq!(s.next(), Ok(Next::Seq(0)));
        assert_eq!(s.next(), Ok(Next::Seq(1)));
        assert_eq!(s.next(), Ok(Next::Seq(2)));
        assert_eq!(s.next(), Ok(Next::NeedsPersist(6)));
    }

    #[test]
    fn sender_sequence_after_a_crash_skips_but_never_reuses() {
        let mut s = SenderSequence::restore_with_step(0, 10);
        assert_eq!(s.next(), Ok(Next::NeedsPersist(10)));
        s.reservation_persisted(10);
        assert_eq!(s.next(), Ok(Next::Seq(0)));
        // Crash: only the limit 10 survived.
        let mut s = SenderSequence::restore_with_step(10, 10);
        assert_eq!(s.next(), Ok(Next::NeedsPersist(20)));
        s.reservation_persisted(20);
        assert_eq!(s.next(), Ok(Next::Seq(10)));
    }

    #[test]
    fn sender_sequence_stops_at_2_pow_40_minus_1() {
        let mut s = SenderSequence::restore_with_step(MAX_SEQ - 1, 10);
        assert_eq!(s.next(), Ok(Next::NeedsPersist(MAX_SEQ + 1)));
        s.reservation_persisted(MAX_SEQ + 1);
        assert_eq!(s.next(), Ok(Next::Seq(MAX_SEQ - 1)));
        assert_eq!(s.next(), Ok(Next::Seq(MAX_SEQ)));
        assert_eq!(s.next(), Err(Exhausted));
        assert_eq!(SenderSequence::restore(MAX_SEQ + 1).next(), Err(Exhausted));
    }
}
