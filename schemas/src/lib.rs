//! The wire contract between the gateway, the devices and the dashboard backend.
//!
//! * [`device`]: what locks and bridges send (compact CBOR, integer map keys) and
//!   what the server answers. Spec: `spec/device.cddl`.
//! * [`command`]: the dashboard's command API (JSON requests, answers and
//!   job events). Spec: `spec/commands/`, `spec/events/job.schema.json`.
//! * [`event`]: the JSON events the dashboard backend receives. Spec:
//!   `spec/events/*.schema.json`.
//! * [`topic`]: every MQTT topic, built and parsed in one place. Spec:
//!   `spec/asyncapi.yaml`.
//! * [`twofa`]: 2FA unlock: the lock's passcode and OTP entries and their
//!   answers (CBOR), the 2FA events and the notifier's OTP message (JSON).
//! * [`security`]: the device security profile: what a device derives from
//!   its pairing secret (OSCORE ids, MQTT password).
//! * [`units`]: the domain's small value types (intervals, battery, lock state)
//!   shared by both encodings.
//!
//! This crate imports nothing of ours and does no I/O, so it can be fuzzed and
//! benchmarked alone. Tests in `tests/` hold the code and the specs to each other.

pub mod command;
pub mod device;
pub mod event;
pub mod fleet;
pub mod security;
pub mod spec;
pub mod topic;
pub mod twofa;
pub mod units;

pub use device::{
    ActivityEvent, ActivityKind, ActivityLogBatch, BridgeCommand, DecodeError, DeviceJob, Downlink,
    Heartbeat, JobAction, JobOutcome, JobReport, JobResult, LogAck, PinType, Uplink,
};
pub use units::{
    ActivityLogInterval, Battery, BatteryLevel, ChannelInfo, DoorState, HeartbeatInterval,
    LockModel, LockState, SignalQuality,
};
