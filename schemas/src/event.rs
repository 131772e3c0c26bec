//! Events for the dashboard backend: JSON on `events/v1/{org}/...`, QoS 1.
//! Each type has a JSON Schema in `spec/events/`; `tests/spec.rs` validates
//! what these serialise to, and the gateway's integration tests validate every
//! message it actually publishes.
//!
//! Every event has an `event_id` that is stable across redelivery (derived
//! from the lock and the report's sequence number), so a consumer that sees an
//! event twice after a broker failover can drop the copy.

use crate::device::ActivityKind;
use crate::units::{Battery, ChannelInfo, DoorState, LockModel, LockState, SignalQuality};
use serde::{Deserialize, Serialize};

/// How a report reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Coap,
    Mqtt,
    Bridge,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Coap => "coap",
            Transport::Mqtt => "mqtt",
            Transport::Bridge => "bridge",
        }
    }
}

/// `events/v1/{org}/lock/{lock}/heartbeat`: one per stored heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatEvent {
    pub event_id: String,
    pub org: String,
    pub departments: Vec<String>,
    pub lock_id: String,
    pub model: LockModel,
    pub seq: u32,
    pub device_time: u64,
    /// Server receive time, Unix milliseconds.
    pub received_at_ms: u64,
    pub transport: Transport,
    pub bridge_id: Option<String>,
    pub battery: Battery,
    pub battery_low: bool,
    pub signal_db: i16,
    pub signal_quality: SignalQuality,
    pub carrier: String,
    pub channel: Option<ChannelInfo>,
    pub lock_state: LockState,
    pub door_state: DoorState,
    pub firmware: String,
    pub heartbeat_interval_h: u16,
    pub activity_log_interval_min: u16,
}

/// One activity-log entry inside an [`ActivityEventBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityEntry {
    pub seq: u32,
    pub time: u64,
    pub kind: ActivityKind,
    pub actor: Option<String>,
}

/// `events/v1/{org}/lock/{lock}/activity`: the newly stored entries of one
/// stored activity-log batch (entries already stored earlier are left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityEventBatch {
    pub event_id: String,
    pub org: String,
    pub departments: Vec<String>,
    pub lock_id: String,
    pub seq: u32,
    pub received_at_ms: u64,
    pub transport: Transport,
    pub bridge_id: Option<String>,
    pub events: Vec<ActivityEntry>,
}

/// `events/v1/{org}/lock/{lock}/state`: the lock or door state changed
/// compared with the newest stored heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChangedEvent {
    pub event_id: String,
    pub org: String,
    pub departments: Vec<String>,
    pub lock_id: String,
    pub seq: u32,
    pub device_time: u64,
    pub lock_state: LockState,
    pub door_state: DoorState,
    /// Absent for the first heartbeat the server ever stores for this lock.
    pub previous_lock_state: Option<LockState>,
    pub previous_door_state: Option<DoorState>,
}

/// `events/v1/{org}/lock/{lock}/battery-low`: a heartbeat showed a low battery
/// (SP2E below 30 %, other models at level Low) and the previous one did not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatteryLowEvent {
    pub event_id: String,
    pub org: String,
    pub departments: Vec<String>,
    pub lock_id: String,
    pub model: LockModel,
    pub seq: u32,
    pub device_time: u64,
    pub battery: Battery,
}

/// Why a bridge's connectivity changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectivityCause {
    /// The bridge announced itself after connecting.
    Connected,
    /// The bridge said goodbye before a clean disconnect.
    Disconnected,
    /// The broker published the bridge's Last Will: the connection was lost.
    LastWill,
}

/// `events/v1/{org}/bridge/{bridge}/connectivity`: a bridge came online or went offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeConnectivityEvent {
    pub event_id: String,
    pub org: String,
    pub bridge_id: String,
    pub online: bool,
    pub cause: ConnectivityCause,
    pub at_ms: u64,
}

/// `events/v1/{org}/lock/{lock}/overdue`: a lock missed its due heartbeat
/// by the grace (`overdue: true`), or was heard again after that
/// (`overdue: false`). Each is published once, whichever instance saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOverdueEvent {
    /// `overdue:{lock}:{due_ms}` or `returned:{lock}:{last_heard_ms}`.
    pub event_id: String,
    pub org: String,
    pub departments: Vec<String>,
    pub lock_id: String,
    pub overdue: bool,
    /// The heartbeat it missed, Unix milliseconds (overdue events); null
    /// for a return.
    pub due_ms: Option<u64>,
    /// When its newest heartbeat arrived (for a return: the one that
    /// brought it back).
    pub last_heard_ms: u64,
    /// When the gateway noticed, Unix milliseconds.
    pub at_ms: u64,
}

/// Published on a device's `.../err` topic when its publish was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceError {
    /// The topic the refused message was published on.
    pub topic: String,
    /// Stable machine-readable reason, as in the `reason` metric label.
    pub reason: String,
    /// What was wrong and what to do.
    pub message: String,
}

/// The `event_id` for the event of kind `kind` caused by report `seq` of
/// device `id` (for connectivity, the change's time in Unix milliseconds,
/// strictly increasing per bridge).
pub fn event_id(kind: &str, id: &str, seq: impl Into<u64>) -> String {
    format!("{kind}:{id}:{}", seq.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::BatteryLevel;

    #[test]
    fn battery_serialises_as_a_tagged_object() {
        let v = serde_json::to_value(Battery::Percent(28)).unwrap();
        assert_eq!(v, serde_json::json!({"percent": 28}));
        let v = serde_json::to_value(Battery::Level(BatteryLevel::Low)).unwrap();
        assert_eq!(v, serde_json::json!({"level": "low"}));
    }

    #[test]
    fn event_ids_are_stable() {
        assert_eq!(event_id("heartbeat", "L1", 9u32), "heartbeat:L1:9");
    }
}
