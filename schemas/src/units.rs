//! Small value types from the dashboard guides, shared by the CBOR and JSON encodings.

use minicbor::{Decode, Encode};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How often an INB1 lock sends its heartbeat (the only moment it receives jobs).
/// The guide allows exactly 1, 2, 5, 12 and 24 hours. Encoded as the number of hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct HeartbeatInterval(u8);

impl HeartbeatInterval {
    /// The intervals the dashboard offers, in hours.
    pub const ALLOWED_HOURS: [u8; 5] = [1, 2, 5, 12, 24];
    /// The default the guide recommends: the longest, to save battery.
    pub const DEFAULT: HeartbeatInterval = HeartbeatInterval(24);

    pub fn from_hours(hours: u16) -> Result<Self, UnitError> {
        Self::ALLOWED_HOURS
            .iter()
            .find(|h| u16::from(**h) == hours)
            .map(|h| HeartbeatInterval(*h))
            .ok_or(UnitError::HeartbeatInterval(hours))
    }
    pub fn hours(self) -> u16 {
        u16::from(self.0)
    }
    pub fn as_secs(self) -> u64 {
        u64::from(self.0) * 3600
    }
}

impl TryFrom<u16> for HeartbeatInterval {
    type Error = UnitError;
    fn try_from(h: u16) -> Result<Self, UnitError> {
        Self::from_hours(h)
    }
}
impl From<HeartbeatInterval> for u16 {
    fn from(h: HeartbeatInterval) -> u16 {
        h.hours()
    }
}

/// How often an INB1 lock uploads its activity log: 1, 10 or 30 minutes, or
/// 1 to 24 whole hours. Encoded as minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct ActivityLogInterval(u16);

impl ActivityLogInterval {
    pub const DEFAULT: ActivityLogInterval = ActivityLogInterval(60);

    pub fn from_minutes(minutes: u16) -> Result<Self, UnitError> {
        let ok = matches!(minutes, 1 | 10 | 30)
            || (minutes.is_multiple_of(60) && (60..=1440).contains(&minutes));
        if ok {
            Ok(ActivityLogInterval(minutes))
        } else {
            Err(UnitError::ActivityLogInterval(minutes))
        }
    }
    pub fn minutes(self) -> u16 {
        self.0
    }
    pub fn as_secs(self) -> u64 {
        u64::from(self.0) * 60
    }
}

impl TryFrom<u16> for ActivityLogInterval {
    type Error = UnitError;
    fn try_from(m: u16) -> Result<Self, UnitError> {
        Self::from_minutes(m)
    }
}
impl From<ActivityLogInterval> for u16 {
    fn from(m: ActivityLogInterval) -> u16 {
        m.minutes()
    }
}

macro_rules! cbor_via_u16 {
    ($t:ty, $ctor:path) => {
        impl<C> Encode<C> for $t {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut minicbor::Encoder<W>,
                _: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                e.u16(u16::from(*self))?;
                Ok(())
            }
        }
        impl<'b, C> Decode<'b, C> for $t {
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                _: &mut C,
            ) -> Result<Self, minicbor::decode::Error> {
                let pos = d.position();
                let v = d.u16()?;
                $ctor(v).map_err(|e| minicbor::decode::Error::message(e.to_string()).at(pos))
            }
        }
    };
}
cbor_via_u16!(HeartbeatInterval, HeartbeatInterval::from_hours);
cbor_via_u16!(ActivityLogInterval, ActivityLogInterval::from_minutes);

/// A value outside what the guides allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("heartbeat interval {0} h is not allowed: use 1, 2, 5, 12 or 24 hours")]
    HeartbeatInterval(u16),
    #[error("activity-log interval {0} min is not allowed: use 1, 10 or 30 minutes or 1 to 24 whole hours (60..1440 in steps of 60)")]
    ActivityLogInterval(u16),
    #[error("battery percent {0} is out of range: use 0 to 100")]
    BatteryPercent(u8),
    #[error("unknown lock model {0:?}: expected one of INB1, INB1-2FA, SP2E, SP2, KEYBOX3, DEADBOLT2E, PADLOCK2")]
    LockModel(String),
}

/// Lock models. INB1 speaks NB-IoT; the 2FA variant also supports 2FA access;
/// the others are Bluetooth locks that reach us only through a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockModel {
    #[serde(rename = "INB1")]
    Inb1,
    #[serde(rename = "INB1-2FA")]
    Inb1TwoFactor,
    #[serde(rename = "SP2E")]
    Sp2e,
    #[serde(rename = "SP2")]
    Sp2,
    #[serde(rename = "KEYBOX3")]
    Keybox3,
    #[serde(rename = "DEADBOLT2E")]
    Deadbolt2e,
    #[serde(rename = "PADLOCK2")]
    Padlock2,
}

impl LockModel {
    pub const ALL: [LockModel; 7] = [
        LockModel::Inb1,
        LockModel::Inb1TwoFactor,
        LockModel::Sp2e,
        LockModel::Sp2,
        LockModel::Keybox3,
        LockModel::Deadbolt2e,
        LockModel::Padlock2,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LockModel::Inb1 => "INB1",
            LockModel::Inb1TwoFactor => "INB1-2FA",
            LockModel::Sp2e => "SP2E",
            LockModel::Sp2 => "SP2",
            LockModel::Keybox3 => "KEYBOX3",
            LockModel::Deadbolt2e => "DEADBOLT2E",
            LockModel::Padlock2 => "PADLOCK2",
        }
    }
    /// NB-IoT locks report on their own; the others only through a bridge.
    pub fn is_nb_iot(self) -> bool {
        matches!(self, LockModel::Inb1 | LockModel::Inb1TwoFactor)
    }
    /// The guide: "Battery strength of SP2E will be shown in percentage (less
    /// than 30%) while other lock models will be showing Low".
    pub fn reports_battery_percent(self) -> bool {
        matches!(self, LockModel::Sp2e)
    }
}

impl fmt::Display for LockModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockModel {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        LockModel::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnitError::LockModel(s.to_string()))
    }
}

/// Coarse battery level, as the dashboard shows it for models without a percentage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum BatteryLevel {
    #[n(0)]
    Low,
    #[n(1)]
    Moderate,
    #[n(2)]
    High,
}

/// Battery as the lock reports it: a percentage (SP2E) or a level (other models).
/// CBOR: `[0, percent]` or `[1, level]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Battery {
    Percent(u8),
    Level(BatteryLevel),
}

/// The guide's threshold for SP2E: shown in the low-battery list below 30 %.
pub const LOW_BATTERY_PERCENT: u8 = 30;

impl Battery {
    /// True when the dashboard must raise a low-battery alert for this reading.
    pub fn is_low(self) -> bool {
        match self {
            Battery::Percent(p) => p < LOW_BATTERY_PERCENT,
            Battery::Level(l) => l == BatteryLevel::Low,
        }
    }
}

impl<C> Encode<C> for Battery {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.array(2)?;
        match self {
            Battery::Percent(p) => e.u8(0)?.u8(*p)?,
            Battery::Level(l) => {
                e.u8(1)?;
                l.encode(e, ctx)?;
                e
            }
        };
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for Battery {
    fn decode(d: &mut minicbor::Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let pos = d.position();
        if d.array()? != Some(2) {
            return Err(minicbor::decode::Error::message(
                "battery must be a 2-element array [kind, value]",
            )
            .at(pos));
        }
        match d.u8()? {
            0 => {
                let p = d.u8()?;
                if p > 100 {
                    return Err(minicbor::decode::Error::message(
                        UnitError::BatteryPercent(p).to_string(),
                    )
                    .at(pos));
                }
                Ok(Battery::Percent(p))
            }
            1 => Ok(Battery::Level(BatteryLevel::decode(d, ctx)?)),
            k => Err(minicbor::decode::Error::message(format!(
                "battery kind {k} is unknown: use 0 (percent) or 1 (level)"
            ))
            .at(pos)),
        }
    }
}

/// The signal-quality label the lock's modem reports beside the dB figure
/// (the dashboard shows e.g. "6 dB Poor").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum SignalQuality {
    #[n(0)]
    Poor,
    #[n(1)]
    Fair,
    #[n(2)]
    Good,
    #[n(3)]
    Excellent,
}

impl SignalQuality {
    /// The modem's classification of an SNR reading, used by the simulator.
    pub fn from_db(db: i16) -> Self {
        match db {
            i16::MIN..=6 => SignalQuality::Poor,
            7..=12 => SignalQuality::Fair,
            13..=20 => SignalQuality::Good,
            _ => SignalQuality::Excellent,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    #[n(0)]
    Locked,
    #[n(1)]
    Unlocked,
    #[n(2)]
    Jammed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum DoorState {
    #[n(0)]
    Closed,
    #[n(1)]
    Open,
    /// The lock has no door sensor.
    #[n(2)]
    Unknown,
}

/// The NB-IoT cell the lock is camped on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct ChannelInfo {
    /// E-UTRA absolute radio-frequency channel number.
    #[n(0)]
    pub earfcn: u32,
    /// Physical cell id (0..503).
    #[n(1)]
    pub pci: u16,
    /// E-UTRAN cell identifier.
    #[n(2)]
    pub cell_id: u32,
    /// LTE band number.
    #[n(3)]
    pub band: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_intervals_are_exactly_the_guides() {
        for h in [1, 2, 5, 12, 24] {
            assert_eq!(HeartbeatInterval::from_hours(h).unwrap().hours(), h);
        }
        for h in [0, 3, 4, 6, 25, 48] {
            assert_eq!(
                HeartbeatInterval::from_hours(h),
                Err(UnitError::HeartbeatInterval(h))
            );
        }
    }

    #[test]
    fn activity_intervals_are_exactly_the_guides() {
        let ok: Vec<u16> = (0..=1500)
            .filter(|m| ActivityLogInterval::from_minutes(*m).is_ok())
            .collect();
        let mut expected = vec![1, 10, 30];
        expected.extend((1..=24).map(|h| h * 60));
        assert_eq!(ok, expected);
    }

    #[test]
    fn low_battery_follows_the_guide() {
        assert!(Battery::Percent(29).is_low());
        assert!(!Battery::Percent(30).is_low());
        assert!(Battery::Level(BatteryLevel::Low).is_low());
        assert!(!Battery::Level(BatteryLevel::Moderate).is_low());
    }

    #[test]
    fn battery_percent_over_100_is_refused() {
        let bytes = [0x82, 0x00, 0x18, 0x65]; // [0, 101]
        let err = minicbor::decode::<Battery>(&bytes).unwrap_err();
        assert!(err.to_string().contains("0 to 100"), "{err}");
    }

    #[test]
    fn lock_model_parses_case_insensitively() {
        assert_eq!("sp2e".parse::<LockModel>().unwrap(), LockModel::Sp2e);
        assert!("XYZ".parse::<LockModel>().is_err());
    }
}
