//! Overdue locks, on SQLite and PostgreSQL, with two instances on one
//! database (each with its own embedded broker): a lock whose newest heartbeat is older than its due heartbeat
//! plus the grace is reported overdue once (event and gauge), and reported
//! back once when it is heard again, whichever instance notices.

mod common;

use common::{Dashboard, Engine, Harness, JobLock};
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{LockRecord, ReportPath};
use dispatcher::{LockId, OrgId};
use gateway::store::testing::registration;
use gateway::store::{Batch, HeartbeatRow};
use schemas::event::Transport;
use schemas::*;
use std::time::Duration;

const ORG: &str = "org-1";

fn fleet() -> ParsedFleet {
    let lock = |id: &str| {
        registration(LockRecord {
            id: LockId::new(id),
            model: LockModel::Inb1,
            org: OrgId::new(ORG),
            departments: vec!["d1".into()].into(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(1).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(60).unwrap(),
            bridge: None,
            path: ReportPath::Coap,
        })
    };
    ParsedFleet {
        locks: vec![lock("L1"), lock("L2")],
        ..ParsedFleet::default()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A heartbeat of `lock` on a 1 h interval, stored as received at `at_ms`.
fn old_heartbeat(lock: &str, seq: u32, at_ms: u64) -> HeartbeatRow {
    HeartbeatRow {
        hb: Heartbeat {
            lock_id: lock.into(),
            seq,
            device_time: at_ms / 1000,
            battery: Battery::Level(BatteryLevel::High),
            signal_db: 9,
            signal_quality: SignalQuality::Fair,
            carrier: "Singtel".into(),
            channel: None,
            lock_state: LockState::Locked,
            door_state: DoorState::Closed,
            firmware: "1.4.2".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(1).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(60).unwrap(),
        },
        transport: Transport::Coap,
        bridge_id: None,
        received_at_ms: at_ms,
    }
}

/// Overdue events seen on either instance's broker (each instance
/// publishes on its own embedded broker), in arrival order per broker.
fn overdue_events(d: &Dashboard, d2: &Dashboard) -> Vec<serde_json::Value> {
    let mut all = d.with_suffix("/overdue");
    all.extend(d2.with_suffix("/overdue"));
    all.sort_by_key(|e| e["at_ms"].as_u64());
    all
}

async fn a_late_lock_is_reported_overdue_once_and_back_once(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let second = h.second_instance().await;
    let d = Dashboard::subscribe(h.server.mqtt_addr, &["events/v1/#"]).await;
    let d2 = Dashboard::subscribe(second.mqtt_addr, &["events/v1/#"]).await;
    // L1 was last heard three hours ago on a 1 h interval: well past its
    // due heartbeat plus the 10 min grace. L2 was heard just now.
    let heard = now_ms() - 3 * 3_600_000;
    let batch = Batch {
        heartbeats: vec![
            old_heartbeat("L1", 0, heard),
            old_heartbeat("L2", 0, now_ms()),
        ],
        ..Batch::default()
    };
    h.server.store.commit(&batch).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while overdue_events(&d, &d2).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no overdue event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both instances look every few seconds; the report is claimed once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let events = overdue_events(&d, &d2);
    assert_eq!(events.len(), 1, "claimed once by one instance: {events:?}");
    let e = &events[0];
    assert_eq!(e["lock_id"], "L1");
    assert_eq!(e["overdue"], true);
    assert_eq!(e["org"], ORG);
    assert_eq!(e["departments"], serde_json::json!(["d1"]));
    assert_eq!(e["last_heard_ms"], heard);
    let due = e["due_ms"].as_u64().unwrap();
    assert!(
        due >= heard + 3_600_000 && due <= heard + 5_400_000,
        "{due}"
    );
    assert_eq!(h.metric("lockfleet_locks_overdue").await, 1.0);

    // Heard again: reported back, once.
    let mut l1 = JobLock::new(h.server.coap_addr, "L1").await;
    l1.heartbeat().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while overdue_events(&d, &d2).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no return event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let events = overdue_events(&d, &d2);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["overdue"], false);
    assert_eq!(events[1]["due_ms"], serde_json::Value::Null);
    assert!(events[1]["last_heard_ms"].as_u64().unwrap() > heard);
    assert_eq!(h.metric("lockfleet_locks_overdue").await, 0.0);
    d.assert_all_valid();
    d2.assert_all_valid();
    d.close().await;
    d2.close().await;
    second.shutdown().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_late_lock_is_reported_overdue_once_and_back_once() {
    a_late_lock_is_reported_overdue_once_and_back_once(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_late_lock_is_reported_overdue_once_and_back_once() {
    a_late_lock_is_reported_overdue_once_and_back_once(Engine::Postgres).await
}
