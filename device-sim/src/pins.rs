//! A lock's PIN table: the custom PINs its jobs created, at most
//! [`MAX_PINS`], and the rules by which an entered PIN opens the lock. Pure:
//! the time to judge a PIN at is an argument, in the clock PIN validity is
//! written in (the server's Unix seconds, [`crate::lock::Lock::wall_clock`]).
//!
//! This module owns neither the activity log nor the job memory
//! ([`crate::jobs`] decides what a job does to the table; the lock records
//! what an entered PIN did).

use minicbor::{Decode, Encode};
use schemas::device::{PinType, MAX_PIN_DIGITS, MIN_PIN_DIGITS};
use std::fmt;

/// PIN slots of a lock. The guide: 199 active PINs per lock.
pub const MAX_PINS: usize = 199;

/// How long a one-time PIN opens after its start (the guide: "valid for 24
/// hours"), in seconds.
pub const ONE_TIME_WINDOW_S: u64 = 24 * 3600;

/// Longest access id a lock stores. A lock's memory is small; the
/// dashboard's ids are far shorter (and this is the wire's id limit).
pub const MAX_ACCESS_BYTES: usize = schemas::device::MAX_ID_LEN;

/// One custom PIN. `Debug` never shows the digits.
#[derive(Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Pin {
    /// The access id the dashboard knows the PIN by (the activity log's actor).
    #[n(0)]
    pub access: String,
    #[n(1)]
    pub digits: String,
    #[n(2)]
    pub pin_type: PinType,
    /// Unix seconds from which it opens.
    #[n(3)]
    pub start: u64,
    /// Unix seconds at which a duration PIN stops opening (exclusive);
    /// `None` for the other types.
    #[n(4)]
    pub end: Option<u64>,
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pin")
            .field("access", &self.access)
            .field("digits", &"<redacted>")
            .field("pin_type", &self.pin_type)
            .field("start", &self.start)
            .field("end", &self.end)
            .finish()
    }
}

impl Pin {
    /// True if the PIN opens the lock at `now_s`: a one-time PIN within
    /// [`ONE_TIME_WINDOW_S`] of its start, a duration PIN from its start to
    /// its end, a permanent PIN from its start on.
    pub fn opens_at(&self, now_s: u64) -> bool {
        if now_s < self.start {
            return false;
        }
        match self.pin_type {
            PinType::OneTime => now_s - self.start < ONE_TIME_WINDOW_S,
            PinType::Duration => self.end.is_some_and(|end| now_s < end),
            PinType::Permanent => true,
        }
    }
}

/// True for digits a lock's keypad can take: [`MIN_PIN_DIGITS`] to
/// [`MAX_PIN_DIGITS`] ASCII digits.
pub fn valid_digits(digits: &str) -> bool {
    (MIN_PIN_DIGITS..=MAX_PIN_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Every slot is taken and the PIN is not a replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("all {MAX_PINS} PIN slots are taken")]
pub struct SlotsFull;

/// The custom PINs of one lock, in the order they were created (a
/// replacement keeps its slot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(transparent)]
pub struct PinTable {
    #[n(0)]
    pins: Vec<Pin>,
}

impl PinTable {
    /// Stores `pin`, replacing the PIN of the same access if there is one.
    /// Returns whether it replaced one.
    pub fn insert(&mut self, pin: Pin) -> Result<bool, SlotsFull> {
        if let Some(old) = self.pins.iter_mut().find(|p| p.access == pin.access) {
            *old = pin;
            return Ok(true);
        }
        if self.pins.len() >= MAX_PINS {
            return Err(SlotsFull);
        }
        self.pins.push(pin);
        Ok(false)
    }

    /// Removes the PIN of `access`; false if there was none.
    pub fn remove(&mut self, access: &str) -> bool {
        let before = self.pins.len();
        self.pins.retain(|p| p.access != access);
        self.pins.len() != before
    }

    /// Someone typed `digits` at `now_s`: the access id of the first PIN
    /// that opens, or `None`. A one-time PIN is consumed by opening.
    pub fn open(&mut self, digits: &str, now_s: u64) -> Option<String> {
        let i = self
            .pins
            .iter()
            .position(|p| p.digits == digits && p.opens_at(now_s))?;
        let access = self.pins[i].access.clone();
        if self.pins[i].pin_type == PinType::OneTime {
            self.pins.remove(i);
        }
        Some(access)
    }

    pub fn get(&self, access: &str) -> Option<&Pin> {
        self.pins.iter().find(|p| p.access == access)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pin> {
        self.pins.iter()
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    pub fn clear(&mut self) {
        self.pins.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn pin(access: &str, digits: &str, pin_type: PinType, start: u64, end: Option<u64>) -> Pin {
        Pin {
            access: access.into(),
            digits: digits.into(),
            pin_type,
            start,
            end,
        }
    }

    #[test]
    fn digits_are_4_to_10_ascii_digits() {
        for ok in ["1234", "0000", "1234567890"] {
            assert!(valid_digits(ok), "{ok}");
        }
        for bad in ["123", "12345678901", "12a4", "", "１２３４", "12 34"] {
            assert!(!valid_digits(bad), "{bad}");
        }
    }

    #[test]
    fn a_one_time_pin_opens_once_within_24_hours_of_its_start() {
        let mut t = PinTable::default();
        t.insert(pin("a1", "1111", PinType::OneTime, T0, None))
            .unwrap();
        assert_eq!(t.open("1111", T0 - 1), None, "not before its start");
        assert_eq!(t.open("1111", T0 + ONE_TIME_WINDOW_S), None, "24 h later");
        assert_eq!(t.len(), 1, "a refused PIN is not consumed");
        assert_eq!(
            t.open("1111", T0 + ONE_TIME_WINDOW_S - 1),
            Some("a1".into())
        );
        assert_eq!(t.open("1111", T0 + 10), None, "consumed");
        assert!(t.is_empty());
    }

    #[test]
    fn a_duration_pin_opens_from_start_to_end_and_again() {
        let mut t = PinTable::default();
        t.insert(pin("d1", "22222", PinType::Duration, T0, Some(T0 + 3600)))
            .unwrap();
        assert_eq!(t.open("22222", T0 - 1), None);
        assert_eq!(t.open("22222", T0), Some("d1".into()));
        assert_eq!(t.open("22222", T0 + 3599), Some("d1".into()));
        assert_eq!(t.open("22222", T0 + 3600), None, "end is exclusive");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_permanent_pin_opens_from_its_start_on() {
        let mut t = PinTable::default();
        t.insert(pin("p1", "987654", PinType::Permanent, T0, None))
            .unwrap();
        assert_eq!(t.open("987654", T0 - 60), None);
        assert_eq!(t.open("987654", T0), Some("p1".into()));
        assert_eq!(t.open("987654", T0 + 10 * 365 * 86_400), Some("p1".into()));
        assert_eq!(t.open("987655", T0), None, "other digits");
    }

    #[test]
    fn a_duration_pin_without_an_end_never_opens() {
        assert!(!pin("d", "1234", PinType::Duration, T0, None).opens_at(T0));
    }

    #[test]
    fn the_table_holds_199_and_replacing_an_access_keeps_its_slot() {
        let mut t = PinTable::default();
        for i in 0..MAX_PINS {
            let replaced = t
                .insert(pin(&format!("a{i}"), "1234", PinType::Permanent, T0, None))
                .unwrap();
            assert!(!replaced);
        }
        assert_eq!(
            t.insert(pin("one-too-many", "1234", PinType::Permanent, T0, None)),
            Err(SlotsFull)
        );
        assert_eq!(
            t.insert(pin("a7", "5555", PinType::OneTime, T0, None)),
            Ok(true),
            "a replacement fits a full table"
        );
        assert_eq!(t.len(), MAX_PINS);
        assert_eq!(t.get("a7").unwrap().digits, "5555");
        assert_eq!(t.iter().nth(7).unwrap().access, "a7");
        assert!(t.remove("a0"));
        assert!(!t.remove("a0"));
        assert!(t
            .insert(pin("new", "1234", PinType::Permanent, T0, None))
            .is_ok());
    }

    #[test]
    fn debug_never_shows_the_digits() {
        let p = pin("a1", "482916", PinType::Permanent, T0, None);
        let shown = format!(
            "{p:?} {:?}",
            PinTable {
                pins: vec![p.clone()]
            }
        );
        assert!(!shown.contains("482916"), "{shown}");
        assert!(shown.contains("a1"));
    }
}
