//! What a stored report means for the dashboard.
//!
//! The ingest pipeline stores a report first and asks this module second, in
//! commit order, so that "changed" always means "changed compared with the
//! newest report stored before it". A late report (lower `seq` than the newest
//! stored heartbeat) is kept in history and announced as a heartbeat, but does
//! not move the lock's state backwards or raise alerts.

use crate::registry::LockRecord;
use schemas::event::{
    self, ActivityEntry, ActivityEventBatch, BatteryLowEvent, HeartbeatEvent, StateChangedEvent,
    Transport,
};
use schemas::{topic, ActivityLogBatch, DoorState, Heartbeat, LockState};
use serde::Serialize;

/// The newest known state of a lock: what change detection compares against.
/// Kept in memory for every lock, so it is small (12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatestState {
    pub seq: u32,
    pub lock_state: LockState,
    pub door_state: DoorState,
    pub battery_low: bool,
}

impl LatestState {
    pub fn of(hb: &Heartbeat) -> Self {
        LatestState {
            seq: hb.seq,
            lock_state: hb.lock_state,
            door_state: hb.door_state,
            battery_low: hb.battery.is_low(),
        }
    }
}

/// Where a report came from, for the event's metadata.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub transport: Transport,
    pub bridge: Option<&'a str>,
    pub received_at_ms: u64,
}

/// An event for the dashboard, with the topic it goes to.
#[derive(Clone, Debug, PartialEq)]
pub enum DashboardEvent {
    Heartbeat(HeartbeatEvent),
    Activity(ActivityEventBatch),
    StateChanged(StateChangedEvent),
    BatteryLow(BatteryLowEvent),
}

impl DashboardEvent {
    pub fn topic(&self) -> String {
        match self {
            DashboardEvent::Heartbeat(e) => topic::events::heartbeat(&e.org, &e.lock_id),
            DashboardEvent::Activity(e) => topic::events::activity(&e.org, &e.lock_id),
            DashboardEvent::StateChanged(e) => topic::events::state(&e.org, &e.lock_id),
            DashboardEvent::BatteryLow(e) => topic::events::battery_low(&e.org, &e.lock_id),
        }
    }

    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DashboardEvent::Heartbeat(_) => "heartbeat",
            DashboardEvent::Activity(_) => "activity",
            DashboardEvent::StateChanged(_) => "state",
            DashboardEvent::BatteryLow(_) => "battery_low",
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        fn ser<T: Serialize>(v: &T) -> Vec<u8> {
            // Infallible: plain structs of strings, numbers and enums.
            serde_json::to_vec(v).expect("event types always serialise")
        }
        match self {
            DashboardEvent::Heartbeat(e) => ser(e),
            DashboardEvent::Activity(e) => ser(e),
            DashboardEvent::StateChanged(e) => ser(e),
            DashboardEvent::BatteryLow(e) => ser(e),
        }
    }
}

/// Events for a newly stored heartbeat, and the lock's state afterwards.
pub fn on_heartbeat(
    lock: &LockRecord,
    hb: &Heartbeat,
    origin: Origin<'_>,
    previous: Option<LatestState>,
) -> (Vec<DashboardEvent>, Option<LatestState>) {
    let org = lock.org.to_string();
    let mut events = vec![DashboardEvent::Heartbeat(HeartbeatEvent {
        event_id: event::event_id("heartbeat", &hb.lock_id, hb.seq),
        org: org.clone(),
        departments: lock.departments.to_vec(),
        lock_id: hb.lock_id.clone(),
        model: lock.model,
        seq: hb.seq,
        device_time: hb.device_time,
        received_at_ms: origin.received_at_ms,
        transport: origin.transport,
        bridge_id: origin.bridge.map(String::from),
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
    })];
    if previous.is_some_and(|p| p.seq >= hb.seq) {
        return (events, None);
    }
    let now = LatestState::of(hb);
    let changed =
        previous.is_none_or(|p| p.lock_state != now.lock_state || p.door_state != now.door_state);
    if changed {
        events.push(DashboardEvent::StateChanged(StateChangedEvent {
            event_id: event::event_id("state", &hb.lock_id, hb.seq),
            org: org.clone(),
            departments: lock.departments.to_vec(),
            lock_id: hb.lock_id.clone(),
            seq: hb.seq,
            device_time: hb.device_time,
            lock_state: now.lock_state,
            door_state: now.door_state,
            previous_lock_state: previous.map(|p| p.lock_state),
            previous_door_state: previous.map(|p| p.door_state),
        }));
    }
    if now.battery_low && !previous.is_some_and(|p| p.battery_low) {
        events.push(DashboardEvent::BatteryLow(BatteryLowEvent {
            event_id: event::event_id("battery-low", &hb.lock_id, hb.seq),
            org,
            departments: lock.departments.to_vec(),
            lock_id: hb.lock_id.clone(),
            model: lock.model,
            seq: hb.seq,
            device_time: hb.device_time,
            battery: hb.battery,
        }));
    }
    (events, Some(now))
}

/// The event for a stored activity-log batch, carrying only the entries that
/// were new (`is_new` says which); `None` when every entry was already stored.
pub fn on_activity(
    lock: &LockRecord,
    batch: &ActivityLogBatch,
    origin: Origin<'_>,
    is_new: impl Fn(u32) -> bool,
) -> Option<DashboardEvent> {
    let events: Vec<ActivityEntry> = batch
        .events
        .iter()
        .filter(|e| is_new(e.seq))
        .map(|e| ActivityEntry {
            seq: e.seq,
            time: e.time,
            kind: e.kind,
            actor: e.actor.clone(),
        })
        .collect();
    if events.is_empty() {
        return None;
    }
    Some(DashboardEvent::Activity(ActivityEventBatch {
        event_id: event::event_id("activity", &batch.lock_id, batch.seq),
        org: lock.org.to_string(),
        departments: lock.departments.to_vec(),
        lock_id: batch.lock_id.clone(),
        seq: batch.seq,
        received_at_ms: origin.received_at_ms,
        transport: origin.transport,
        bridge_id: origin.bridge.map(String::from),
        events,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::lock;
    use schemas::{
        ActivityEvent, ActivityKind, ActivityLogInterval, Battery, BatteryLevel, HeartbeatInterval,
        LockModel, SignalQuality,
    };

    fn hb(seq: u32, lock_state: LockState, battery: Battery) -> Heartbeat {
        Heartbeat {
            lock_id: "L1".into(),
            seq,
            device_time: 1000 + u64::from(seq),
            battery,
            signal_db: 10,
            signal_quality: SignalQuality::Fair,
            carrier: "Singtel".into(),
            channel: None,
            lock_state,
            door_state: DoorState::Closed,
            firmware: "1.0".into(),
            heartbeat_interval: HeartbeatInterval::DEFAULT,
            activity_log_interval: ActivityLogInterval::DEFAULT,
        }
    }

    const ORIGIN: Origin<'static> = Origin {
        transport: Transport::Coap,
        bridge: None,
        received_at_ms: 5,
    };
    const OK: Battery = Battery::Level(BatteryLevel::High);

    fn kinds(events: &[DashboardEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind()).collect()
    }

    #[test]
    fn first_heartbeat_announces_state() {
        let (ev, latest) = on_heartbeat(
            &lock("L1", LockModel::Inb1, None),
            &hb(1, LockState::Locked, OK),
            ORIGIN,
            None,
        );
        assert_eq!(kinds(&ev), ["heartbeat", "state"]);
        assert_eq!(latest.unwrap().seq, 1);
    }

    #[test]
    fn unchanged_state_is_only_a_heartbeat() {
        let l = lock("L1", LockModel::Inb1, None);
        let prev = LatestState::of(&hb(1, LockState::Locked, OK));
        let (ev, _) = on_heartbeat(&l, &hb(2, LockState::Locked, OK), ORIGIN, Some(prev));
        assert_eq!(kinds(&ev), ["heartbeat"]);
        let (ev, _) = on_heartbeat(&l, &hb(3, LockState::Unlocked, OK), ORIGIN, Some(prev));
        assert_eq!(kinds(&ev), ["heartbeat", "state"]);
    }

    #[test]
    fn late_heartbeat_does_not_move_state_back() {
        let prev = LatestState::of(&hb(5, LockState::Locked, OK));
        let (ev, latest) = on_heartbeat(
            &lock("L1", LockModel::Inb1, None),
            &hb(4, LockState::Unlocked, Battery::Level(BatteryLevel::Low)),
            ORIGIN,
            Some(prev),
        );
        assert_eq!(kinds(&ev), ["heartbeat"]);
        assert_eq!(latest, None);
    }

    #[test]
    fn low_battery_alerts_once_on_the_way_down() {
        let l = lock("L1", LockModel::Sp2e, Some("B1"));
        let (ev, s1) = on_heartbeat(
            &l,
            &hb(1, LockState::Locked, Battery::Percent(31)),
            ORIGIN,
            None,
        );
        assert_eq!(kinds(&ev), ["heartbeat", "state"]);
        let (ev, s2) = on_heartbeat(
            &l,
            &hb(2, LockState::Locked, Battery::Percent(29)),
            ORIGIN,
            s1,
        );
        assert_eq!(kinds(&ev), ["heartbeat", "battery_low"]);
        let (ev, _) = on_heartbeat(
            &l,
            &hb(3, LockState::Locked, Battery::Percent(28)),
            ORIGIN,
            s2,
        );
        assert_eq!(kinds(&ev), ["heartbeat"]);
    }

    #[test]
    fn activity_event_carries_only_new_entries() {
        let l = lock("L1", LockModel::Inb1, None);
        let batch = ActivityLogBatch {
            lock_id: "L1".into(),
            seq: 9,
            events: (1..=3)
                .map(|s| ActivityEvent {
                    seq: s,
                    time: 1,
                    kind: ActivityKind::Locked,
                    actor: None,
                })
                .collect(),
        };
        let Some(DashboardEvent::Activity(e)) = on_activity(&l, &batch, ORIGIN, |s| s != 2) else {
            panic!()
        };
        assert_eq!(e.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3]);
        assert!(on_activity(&l, &batch, ORIGIN, |_| false).is_none());
    }

    #[test]
    fn topics_are_per_org_and_lock() {
        let (ev, _) = on_heartbeat(
            &lock("L1", LockModel::Inb1, None),
            &hb(1, LockState::Locked, OK),
            ORIGIN,
            None,
        );
        assert_eq!(ev[0].topic(), "events/v1/org-1/lock/L1/heartbeat");
        assert_eq!(ev[1].topic(), "events/v1/org-1/lock/L1/state");
    }
}
