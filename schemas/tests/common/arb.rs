//! proptest strategies for every wire type: valid values only, across the
//! whole range the specs allow (every enum variant and interval, integer
//! limits, ids using every allowed character, optional fields both ways).
//!
//! The `ALL_*` lists are paired with exhaustive matches, so adding a variant
//! to a Rust enum fails to compile here until the list (and so the tests
//! that walk it) includes it. The 2FA payloads and events are in
//! `arb/twofa.rs`, the dashboard's commands and their 2FA answers in
//! `arb/commands.rs`.

use proptest::prelude::*;
use proptest::sample::select;
use schemas::command::{JobState, PinKind};
use schemas::event::{
    self, ActivityEntry, ActivityEventBatch, BatteryLowEvent, BridgeConnectivityEvent,
    ConnectivityCause, DeviceError, HeartbeatEvent, StateChangedEvent, Transport,
};
use schemas::{
    ActivityEvent, ActivityKind, ActivityLogBatch, ActivityLogInterval, Battery, BatteryLevel,
    ChannelInfo, DoorState, Downlink, Heartbeat, HeartbeatInterval, LockModel, LockState, LogAck,
    PinType, SignalQuality,
};

macro_rules! all_variants {
    ($name:ident: $t:ty = [$($v:path),+ $(,)?]) => {
        pub const $name: &[$t] = &[$($v),+];
        // Fails to compile when the enum gains a variant the list lacks.
        #[allow(dead_code)]
        const _: fn($t) = |x| match x { $($v)|+ => {} };
    };
}

all_variants!(ALL_KINDS: ActivityKind = [
    ActivityKind::Locked, ActivityKind::UnlockedPin, ActivityKind::UnlockedBluetooth,
    ActivityKind::Unlocked2fa, ActivityKind::UnlockedKeypad, ActivityKind::UnlockedKeyfob,
    ActivityKind::UnlockedManual, ActivityKind::AutoRelocked, ActivityKind::DoorOpened,
    ActivityKind::DoorClosed, ActivityKind::WrongPin, ActivityKind::Tamper,
]);
all_variants!(ALL_LEVELS: BatteryLevel = [BatteryLevel::Low, BatteryLevel::Moderate, BatteryLevel::High]);
all_variants!(ALL_QUALITIES: SignalQuality = [
    SignalQuality::Poor, SignalQuality::Fair, SignalQuality::Good, SignalQuality::Excellent,
]);
all_variants!(ALL_LOCK_STATES: LockState = [LockState::Locked, LockState::Unlocked, LockState::Jammed]);
all_variants!(ALL_DOOR_STATES: DoorState = [DoorState::Closed, DoorState::Open, DoorState::Unknown]);
all_variants!(ALL_TRANSPORTS: Transport = [Transport::Coap, Transport::Mqtt, Transport::Bridge]);
all_variants!(ALL_CAUSES: ConnectivityCause = [
    ConnectivityCause::Connected, ConnectivityCause::Disconnected, ConnectivityCause::LastWill,
]);
all_variants!(ALL_PIN_TYPES: PinType = [PinType::OneTime, PinType::Duration, PinType::Permanent]);
all_variants!(ALL_PIN_KINDS: PinKind = [PinKind::Custom, PinKind::Algo]);
all_variants!(ALL_JOB_STATES: JobState = [
    JobState::Pending, JobState::Completed, JobState::Failed, JobState::Deleted,
]);
all_variants!(ALL_MODELS: LockModel = [
    LockModel::Inb1, LockModel::Inb1TwoFactor, LockModel::Sp2e, LockModel::Sp2,
    LockModel::Keybox3, LockModel::Deadbolt2e, LockModel::Padlock2,
]);

mod commands;
mod twofa;
// Each test binary uses a subset of them.
#[allow(unused_imports)]
pub use commands::*;
#[allow(unused_imports)]
pub use twofa::*;

/// Every activity-log interval the guide allows, in minutes.
pub fn all_activity_minutes() -> Vec<u16> {
    let mut m = vec![1, 10, 30];
    m.extend((1..=24).map(|h| h * 60));
    m
}

/// A lock, bridge, org or department id: every allowed character, 1 to 64.
pub fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

/// Free text (carrier, firmware, actor): any Unicode, short.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "\\PC{1,16}", "[ -~]{1,16}"]
}

pub fn battery() -> impl Strategy<Value = Battery> {
    prop_oneof![
        (0u8..=100).prop_map(Battery::Percent),
        select(ALL_LEVELS).prop_map(Battery::Level),
    ]
}

/// A battery reading the dashboard lists as low.
pub fn low_battery() -> impl Strategy<Value = Battery> {
    prop_oneof![
        (0u8..schemas::units::LOW_BATTERY_PERCENT).prop_map(Battery::Percent),
        Just(Battery::Level(BatteryLevel::Low)),
    ]
}

pub fn heartbeat_interval() -> impl Strategy<Value = HeartbeatInterval> {
    select(HeartbeatInterval::ALLOWED_HOURS.to_vec())
        .prop_map(|h| HeartbeatInterval::from_hours(h.into()).expect("allowed by construction"))
}

pub fn activity_log_interval() -> impl Strategy<Value = ActivityLogInterval> {
    select(all_activity_minutes())
        .prop_map(|m| ActivityLogInterval::from_minutes(m).expect("allowed by construction"))
}

pub fn channel() -> impl Strategy<Value = ChannelInfo> {
    (any::<u32>(), any::<u16>(), any::<u32>(), any::<u8>()).prop_map(
        |(earfcn, pci, cell_id, band)| ChannelInfo {
            earfcn,
            pci,
            cell_id,
            band,
        },
    )
}

pub fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    let head = (id(), any::<u32>(), any::<u64>(), battery(), any::<i16>());
    let radio = (
        select(ALL_QUALITIES),
        text(),
        proptest::option::of(channel()),
    );
    let state = (
        select(ALL_LOCK_STATES),
        select(ALL_DOOR_STATES),
        text(),
        heartbeat_interval(),
        activity_log_interval(),
    );
    (head, radio, state).prop_map(
        |(
            (lock_id, seq, device_time, battery, signal_db),
            (signal_quality, carrier, channel),
            (lock_state, door_state, firmware, heartbeat_interval, activity_log_interval),
        )| Heartbeat {
            lock_id,
            seq,
            device_time,
            battery,
            signal_db,
            signal_quality,
            carrier,
            channel,
            lock_state,
            door_state,
            firmware,
            heartbeat_interval,
            activity_log_interval,
        },
    )
}

pub fn activity_event() -> impl Strategy<Value = ActivityEvent> {
    (
        any::<u32>(),
        any::<u64>(),
        select(ALL_KINDS),
        proptest::option::of(text()),
    )
        .prop_map(|(seq, time, kind, actor)| ActivityEvent {
            seq,
            time,
            kind,
            actor,
        })
}

/// A batch of 0 to 64 events; long ones may exceed the uplink byte budget.
pub fn activity_log_batch() -> impl Strategy<Value = ActivityLogBatch> {
    (
        id(),
        any::<u32>(),
        prop::collection::vec(activity_event(), 0..=schemas::device::MAX_EVENTS_PER_BATCH),
    )
        .prop_map(|(lock_id, seq, events)| ActivityLogBatch {
            lock_id,
            seq,
            events,
        })
}

pub fn downlink() -> impl Strategy<Value = Downlink> {
    (
        any::<u64>(),
        heartbeat_interval(),
        activity_log_interval(),
        any::<u32>(),
    )
        .prop_map(
            |(server_time, heartbeat_interval, activity_log_interval, seq)| Downlink {
                server_time,
                heartbeat_interval,
                activity_log_interval,
                seq,
                jobs: vec![],
                more: false,
                next_heartbeat_at: None,
            },
        )
}

pub fn log_ack() -> impl Strategy<Value = LogAck> {
    (any::<u64>(), any::<u16>(), any::<u32>()).prop_map(|(server_time, stored, seq)| LogAck {
        server_time,
        stored,
        seq,
    })
}

// ---------------------------------------------------------------------------
// Dashboard events, built the way the dispatcher builds them
// ---------------------------------------------------------------------------

/// Who a report came from, beyond its payload.
#[derive(Clone, Debug)]
pub struct Origin {
    pub org: String,
    pub departments: Vec<String>,
    pub model: LockModel,
    pub transport: Transport,
    pub bridge_id: Option<String>,
    pub received_at_ms: u64,
}

pub fn origin() -> impl Strategy<Value = Origin> {
    (
        id(),
        prop::collection::vec(id(), 0..4),
        select(ALL_MODELS),
        select(ALL_TRANSPORTS),
        id(),
        any::<u64>(),
    )
        .prop_map(
            |(org, departments, model, transport, bridge, received_at_ms)| Origin {
                org,
                departments,
                model,
                bridge_id: (transport == Transport::Bridge).then_some(bridge),
                transport,
                received_at_ms,
            },
        )
}

pub fn heartbeat_event_of(hb: &Heartbeat, o: &Origin) -> HeartbeatEvent {
    HeartbeatEvent {
        event_id: event::event_id("heartbeat", &hb.lock_id, hb.seq),
        org: o.org.clone(),
        departments: o.departments.clone(),
        lock_id: hb.lock_id.clone(),
        model: o.model,
        seq: hb.seq,
        device_time: hb.device_time,
        received_at_ms: o.received_at_ms,
        transport: o.transport,
        bridge_id: o.bridge_id.clone(),
        battery: hb.battery,
        battery_low: hb.battery.is_low(),
        signal_db: hb.signal_db,
        signal_quality: hb.signal_quality,
        carrier: hb.carrier.clone(),
        channel: hb.channel.clone(),
        lock_state: hb.lock_state,
        door_state: hb.door_state,
        firmware: hb.firmware.clone(),
        heartbeat_interval_h: hb.heartbeat_interval.hours(),
        activity_log_interval_min: hb.activity_log_interval.minutes(),
    }
}

pub fn heartbeat_event() -> impl Strategy<Value = HeartbeatEvent> {
    (heartbeat(), origin()).prop_map(|(hb, o)| heartbeat_event_of(&hb, &o))
}

/// An activity event carries 1 to 64 newly stored entries.
pub fn activity_event_batch() -> impl Strategy<Value = ActivityEventBatch> {
    (
        activity_log_batch()
            .prop_filter("an event has at least one entry", |b| !b.events.is_empty()),
        origin(),
    )
        .prop_map(|(b, o)| ActivityEventBatch {
            event_id: event::event_id("activity", &b.lock_id, b.seq),
            org: o.org,
            departments: o.departments,
            lock_id: b.lock_id,
            seq: b.seq,
            received_at_ms: o.received_at_ms,
            transport: o.transport,
            bridge_id: o.bridge_id,
            events: b
                .events
                .into_iter()
                .map(|e| ActivityEntry {
                    seq: e.seq,
                    time: e.time,
                    kind: e.kind,
                    actor: e.actor,
                })
                .collect(),
        })
}

pub fn state_changed_event() -> impl Strategy<Value = StateChangedEvent> {
    (
        heartbeat(),
        origin(),
        proptest::option::of((select(ALL_LOCK_STATES), select(ALL_DOOR_STATES))),
    )
        .prop_map(|(hb, o, previous)| StateChangedEvent {
            event_id: event::event_id("state", &hb.lock_id, hb.seq),
            org: o.org,
            departments: o.departments,
            lock_id: hb.lock_id,
            seq: hb.seq,
            device_time: hb.device_time,
            lock_state: hb.lock_state,
            door_state: hb.door_state,
            previous_lock_state: previous.map(|p| p.0),
            previous_door_state: previous.map(|p| p.1),
        })
}

pub fn battery_low_event() -> impl Strategy<Value = BatteryLowEvent> {
    (heartbeat(), origin(), low_battery()).prop_map(|(hb, o, battery)| BatteryLowEvent {
        event_id: event::event_id("battery-low", &hb.lock_id, hb.seq),
        org: o.org,
        departments: o.departments,
        lock_id: hb.lock_id,
        model: o.model,
        seq: hb.seq,
        device_time: hb.device_time,
        battery,
    })
}

pub fn connectivity_event() -> impl Strategy<Value = BridgeConnectivityEvent> {
    (id(), id(), select(ALL_CAUSES), any::<u64>()).prop_map(|(org, bridge, cause, at_ms)| {
        BridgeConnectivityEvent {
            // As the gateway derives it: the receive time in seconds stands in for a seq.
            event_id: event::event_id("connectivity", &bridge, at_ms),
            org,
            bridge_id: bridge,
            online: cause == ConnectivityCause::Connected,
            cause,
            at_ms,
        }
    })
}

/// A device topic the gateway may refuse a publish on.
pub fn device_topic() -> impl Strategy<Value = String> {
    (
        id(),
        select(vec![
            "lk/{}/up/hb",
            "lk/{}/up/log",
            "lk/{}/up/jr",
            "br/{}/up/hb",
            "br/{}/up/log",
            "br/{}/up/jr",
            "br/{}/status",
        ]),
    )
        .prop_map(|(id, pattern)| pattern.replace("{}", &id))
}

pub fn device_error() -> impl Strategy<Value = DeviceError> {
    (device_topic(), "[a-z][a-z0-9_]{0,24}", "\\PC{1,80}").prop_map(|(topic, reason, message)| {
        DeviceError {
            topic,
            reason,
            message,
        }
    })
}
