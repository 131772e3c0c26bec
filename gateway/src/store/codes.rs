//! How domain values become column values and back: enums as their
//! snake_case (serde) names, unsigned numbers as `BIGINT`, device text
//! cleaned of what PostgreSQL refuses.

use schemas::event::ConnectivityCause;
use schemas::{BatteryLevel, DoorState, LockState, SignalQuality};
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::de::DeserializeOwned;
use std::borrow::Cow;

pub(crate) fn lock_state(v: LockState) -> &'static str {
    match v {
        LockState::Locked => "locked",
        LockState::Unlocked => "unlocked",
        LockState::Jammed => "jammed",
    }
}

pub(crate) fn door_state(v: DoorState) -> &'static str {
    match v {
        DoorState::Closed => "closed",
        DoorState::Open => "open",
        DoorState::Unknown => "unknown",
    }
}

pub(crate) fn signal_quality(v: SignalQuality) -> &'static str {
    match v {
        SignalQuality::Poor => "poor",
        SignalQuality::Fair => "fair",
        SignalQuality::Good => "good",
        SignalQuality::Excellent => "excellent",
    }
}

pub(crate) fn battery_level(v: BatteryLevel) -> &'static str {
    match v {
        BatteryLevel::Low => "low",
        BatteryLevel::Moderate => "moderate",
        BatteryLevel::High => "high",
    }
}

pub(crate) fn cause(v: ConnectivityCause) -> &'static str {
    match v {
        ConnectivityCause::Connected => "connected",
        ConnectivityCause::Disconnected => "disconnected",
        ConnectivityCause::LastWill => "last_will",
    }
}

/// Read a unit enum back from its serde name (the names written above).
pub(crate) fn parse<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    T::deserialize(StrDeserializer::<ValueError>::new(s)).map_err(|e| e.to_string())
}

/// An unsigned protocol number as `BIGINT`. Values above `i64::MAX` (only a
/// broken or hostile device clock sends them) are stored as `i64::MAX`
/// rather than failing the whole group commit.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `BIGINT` column back into a `u32`.
pub(crate) fn u32_of(v: i64) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{v} is not a 32-bit unsigned number"))
}

/// Device-supplied text as stored: PostgreSQL `TEXT` cannot hold NUL, and
/// one NUL would fail every report of a group commit, so NUL becomes U+FFFD
/// on both engines.
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn serde_name<T: Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn names_are_the_serde_names_and_read_back() {
        for v in [LockState::Locked, LockState::Unlocked, LockState::Jammed] {
            assert_eq!(lock_state(v), serde_name(v));
            assert_eq!(parse::<LockState>(lock_state(v)), Ok(v));
        }
        for v in [DoorState::Closed, DoorState::Open, DoorState::Unknown] {
            assert_eq!(door_state(v), serde_name(v));
            assert_eq!(parse::<DoorState>(door_state(v)), Ok(v));
        }
        for v in [
            SignalQuality::Poor,
            SignalQuality::Fair,
            SignalQuality::Good,
            SignalQuality::Excellent,
        ] {
            assert_eq!(signal_quality(v), serde_name(v));
            assert_eq!(parse::<SignalQuality>(signal_quality(v)), Ok(v));
        }
        for v in [
            BatteryLevel::Low,
            BatteryLevel::Moderate,
            BatteryLevel::High,
        ] {
            assert_eq!(battery_level(v), serde_name(v));
            assert_eq!(parse::<BatteryLevel>(battery_level(v)), Ok(v));
        }
        for v in [
            ConnectivityCause::Connected,
            ConnectivityCause::Disconnected,
            ConnectivityCause::LastWill,
        ] {
            assert_eq!(cause(v), serde_name(v));
        }
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(parse::<LockState>("ajar").is_err());
    }

    #[test]
    fn huge_numbers_saturate_and_nul_is_replaced() {
        assert_eq!(int(u64::MAX), i64::MAX);
        assert_eq!(int(7), 7);
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(text("ab"), Cow::Borrowed("ab")));
        assert!(u32_of(-1).is_err());
    }
}
