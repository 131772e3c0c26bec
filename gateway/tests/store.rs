//! The store against real engines: every behaviour test runs on SQLite (a
//! file in a temporary directory) and on PostgreSQL (a fresh database on the
//! server named by `LOCKFLEET_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; unreachable means failed, not
//! skipped).

use dispatcher::import::ParsedFleet;
use dispatcher::{BridgeId, BridgeRecord, LockId, LockRecord, LockRegistration, OrgId, ReportPath};
use gateway::store::testing::{bridge_status, event_row, heartbeat_row, registration, TestDb};
use gateway::store::{
    Batch, BridgeStatus, Change, Committed, OnlineCounts, Purged, Store, StoreError,
};
use schemas::event::Transport;
use schemas::{
    ActivityLogInterval, Battery, BatteryLevel, DoorState, HeartbeatInterval, LockModel, LockState,
};
use std::future::Future;

/// Run `body` (given the database URL) on a fresh database, then remove it.
/// A panicking body leaves the removal to `TestDb`'s `Drop`.
async fn run<F, Fut>(db: TestDb, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    body(db.url.clone()).await;
    db.cleanup().await;
}

/// One `#[tokio::test]` per engine for each named body.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::run(gateway::store::testing::TestDb::sqlite().await, super::$name).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::run(gateway::store::testing::TestDb::postgres().await, super::$name).await;
            })*
        }
    };
}

on_both_engines!(
    opening_twice_keeps_the_data_and_migrates_once,
    import_then_load_registry_round_trips_every_field,
    reimport_updates_fields_and_counts_updates,
    commit_stores_new_rows_and_flags_each_one,
    same_seq_twice_in_a_batch_is_stored_once,
    recommitting_the_same_rows_stores_nothing_new,
    lock_state_keeps_the_highest_seq_even_when_an_older_heartbeat_arrives_later,
    bridge_statuses_are_decided_against_the_stored_status,
    a_status_received_before_the_stored_change_is_placed_after_it,
    concurrent_commits_of_one_bridge_keep_its_history_alternating,
    locks_before_is_each_lock_s_stored_state_before_the_batch,
    online_locks_and_bridges_are_counted_in_the_database,
    low_battery_locks_and_pending_jobs_by_age_are_counted_in_the_database,
    keys_are_stored_wrapped_and_open_to_the_server_key_only,
    a_new_device_without_a_secret_is_refused_and_nothing_is_registered,
    a_different_secret_rotates_the_key_and_the_same_secret_keeps_it,
    rotation_and_deregistration_replace_and_remove_keys,
    keys_load_a_page_at_a_time_in_order_each_with_its_window,
    purge_deletes_only_old_rows_and_respects_max_rows,
    failed_commit_stores_nothing,
    batch_larger_than_one_statement_is_stored_whole,
    nul_in_device_text_does_not_fail_the_commit,
    a_command_that_fails_in_a_group_is_rolled_back_alone,
    commands_queued_at_once_all_commit,
);

fn lock(id: &str, model: LockModel, bridge: Option<&str>) -> LockRegistration {
    registration(LockRecord {
        id: LockId::new(id),
        model,
        org: OrgId::new("org-1"),
        departments: vec!["dept-1".into(), "dept-2".into()].into(),
        time_zone: "Asia/Singapore".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
        bridge: bridge.map(BridgeId::new),
        path: if bridge.is_some() {
            ReportPath::Bridge
        } else {
            ReportPath::Coap
        },
    })
}

fn bridge(id: &str) -> BridgeRecord {
    BridgeRecord {
        id: BridgeId::new(id),
        org: OrgId::new("org-1"),
    }
}

/// L1 (INB1, CoAP), L2 (SP2E behind B1, flat organisation), L3 (INB1-2FA over
/// MQTT with non-default intervals); bridges B1 and B2.
fn fleet() -> ParsedFleet {
    let mut l2 = lock("L2", LockModel::Sp2e, Some("B1"));
    l2.record.departments = vec![].into();
    let mut l3 = lock("L3", LockModel::Inb1TwoFactor, None);
    l3.record.path = ReportPath::Mqtt;
    l3.record.heartbeat_interval = HeartbeatInterval::from_hours(2).unwrap();
    l3.record.activity_log_interval = ActivityLogInterval::from_minutes(10).unwrap();
    l3.record.time_zone = "UTC".into();
    ParsedFleet {
        locks: vec![lock("L1", LockModel::Inb1, None), l2, l3],
        bridges: vec![bridge("B1"), bridge("B2")],
        ..ParsedFleet::default()
    }
}

async fn open(url: &str) -> Store {
    Store::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// Run one statement through the store's own pool (test set-up only).
async fn execute(store: &Store, sql: &'static str) {
    match store {
        Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Every stored lock's id, IMEI and Bluetooth id.
async fn lock_identifiers(store: &Store) -> Vec<(String, Option<String>, String)> {
    const SQL: &str = "SELECT lock_id, imei, bluetooth_id FROM locks";
    match store {
        Store::Sqlite(p) => sqlx::query_as(SQL).fetch_all(p).await,
        Store::Postgres(p) => sqlx::query_as(SQL).fetch_all(p).await,
    }
    .unwrap_or_else(|e| panic!("{SQL}: {e}"))
}

fn keys(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
    pairs.iter().map(|(l, s)| (l.to_string(), *s)).collect()
}

async fn opening_twice_keeps_the_data_and_migrates_once(url: String) {
    let store = open(&url).await;
    store.ping().await.unwrap();
    gateway::store::testing::register(&store, &fleet()).await;
    let batch = Batch {
        heartbeats: vec![heartbeat_row("L1", 1)],
        ..Batch::default()
    };
    store.commit(&batch).await.unwrap();
    store.close().await;

    let store = open(&url).await;
    assert_eq!(
        store.engine(),
        if url.starts_with("sqlite") {
            "sqlite"
        } else {
            "postgres"
        }
    );
    assert_eq!(store.audit().await.unwrap().heartbeats, keys(&[("L1", 1)]));
    assert_eq!(store.load_registry().await.unwrap().lock_count(), 3);
    // A second store on the same database at once is fine too.
    let other = open(&url).await;
    other.ping().await.unwrap();
    other.close().await;
    store.close().await;
}

async fn import_then_load_registry_round_trips_every_field(url: String) {
    let store = open(&url).await;
    let v0 = store.registry_version().await.unwrap();
    let summary = gateway::store::testing::register(&store, &fleet()).await;
    assert_eq!(
        (
            summary.locks_inserted,
            summary.locks_updated,
            summary.bridges_inserted,
            summary.bridges_updated
        ),
        (3, 0, 2, 0)
    );
    assert!(store.registry_version().await.unwrap() > v0);

    let registry = store.load_registry().await.unwrap();
    assert_eq!(registry.lock_count(), 3);
    assert_eq!(registry.bridge_count(), 2);
    let f = fleet();
    for l in &f.locks {
        assert_eq!(
            registry.lock(l.record.id.as_str()).map(|r| &**r),
            Some(&l.record)
        );
    }
    // What only the database keeps (the registry in memory does not).
    let mut stored = lock_identifiers(&store).await;
    let mut registered: Vec<_> = f
        .locks
        .iter()
        .map(|l| {
            (
                l.record.id.to_string(),
                l.imei.clone(),
                l.bluetooth_id.clone(),
            )
        })
        .collect();
    stored.sort();
    registered.sort();
    assert_eq!(stored, registered);
    for b in &f.bridges {
        assert_eq!(registry.bridge(b.id.as_str()).map(|r| &**r), Some(b));
    }
    store.close().await;
}

async fn reimport_updates_fields_and_counts_updates(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let v1 = store.registry_version().await.unwrap();

    let mut f = fleet();
    f.locks[0].record.heartbeat_interval = HeartbeatInterval::from_hours(5).unwrap();
    f.locks[0].record.departments = vec!["dept-9".into()].into();
    // L2 moves from B1 to B2.
    f.locks[1].record.bridge = Some(BridgeId::new("B2"));
    f.locks.push(lock("L4", LockModel::Inb1, None));
    f.bridges.truncate(1);
    let summary = gateway::store::testing::register(&store, &f).await;
    assert_eq!(
        (
            summary.locks_inserted,
            summary.locks_updated,
            summary.bridges_inserted,
            summary.bridges_updated
        ),
        (1, 3, 0, 1)
    );
    assert!(
        summary.to_string().contains("1 new and 3 updated lock(s)"),
        "{summary}"
    );
    assert!(store.registry_version().await.unwrap() > v1);

    let registry = store.load_registry().await.unwrap();
    assert_eq!(registry.lock_count(), 4);
    assert_eq!(
        registry.bridge_count(),
        2,
        "bridges absent from the file stay registered"
    );
    for l in &f.locks {
        assert_eq!(
            registry.lock(l.record.id.as_str()).map(|r| &**r),
            Some(&l.record)
        );
    }
    store.close().await;
}

async fn commit_stores_new_rows_and_flags_each_one(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let mut bridged = heartbeat_row("L2", 4);
    bridged.transport = Transport::Bridge;
    bridged.bridge_id = Some("B1".into());
    bridged.hb.channel = None;
    bridged.hb.battery = Battery::Percent(28);
    let batch = Batch {
        heartbeats: vec![heartbeat_row("L1", 1), heartbeat_row("L1", 2), bridged],
        events: vec![
            event_row("L1", 10),
            event_row("L1", 11),
            event_row("L3", 10),
        ],
        bridge_statuses: vec![],
        protections: vec![],
    };
    let committed = store.commit(&batch).await.unwrap();
    assert_eq!(
        committed,
        Committed {
            heartbeats_inserted: vec![true, true, true],
            events_inserted: vec![true, true, true],
            ..Committed::default()
        }
    );
    let audit = store.audit().await.unwrap();
    assert_eq!(audit.heartbeats, keys(&[("L1", 1), ("L1", 2), ("L2", 4)]));
    assert_eq!(audit.events, keys(&[("L1", 10), ("L1", 11), ("L3", 10)]));
    assert_eq!(audit.bridge_changes, 0);

    let latest = store.load_latest().await.unwrap();
    assert_eq!(latest.len(), 2);
    assert_eq!(latest["L1"].state.seq, 2);
    assert!(latest["L2"].state.battery_low, "SP2E at 28 % is low");
    assert!(!latest["L1"].state.battery_low);
    // Presence after a restart needs when the newest heartbeat arrived and its interval.
    assert_eq!(latest["L1"].received_at_ms, 1_790_000_000_000 + 2);
    assert_eq!(latest["L1"].heartbeat_interval, HeartbeatInterval::DEFAULT);
    // An empty batch is answered without touching the database.
    assert_eq!(
        store.commit(&Batch::default()).await.unwrap(),
        Committed::default()
    );
    store.close().await;
}

async fn same_seq_twice_in_a_batch_is_stored_once(url: String) {
    let store = open(&url).await;
    let mut second = heartbeat_row("L1", 1);
    second.hb.lock_state = LockState::Unlocked;
    let batch = Batch {
        heartbeats: vec![heartbeat_row("L1", 1), heartbeat_row("L1", 2), second],
        events: vec![event_row("L1", 5), event_row("L1", 5), event_row("L1", 6)],
        bridge_statuses: vec![],
        protections: vec![],
    };
    let committed = store.commit(&batch).await.unwrap();
    assert_eq!(committed.heartbeats_inserted, [true, true, false]);
    assert_eq!(committed.events_inserted, [true, false, true]);
    let audit = store.audit().await.unwrap();
    assert_eq!(audit.heartbeats, keys(&[("L1", 1), ("L1", 2)]));
    assert_eq!(audit.events, keys(&[("L1", 5), ("L1", 6)]));
    store.close().await;
}

async fn recommitting_the_same_rows_stores_nothing_new(url: String) {
    let store = open(&url).await;
    let batch = Batch {
        heartbeats: vec![heartbeat_row("L1", 1), heartbeat_row("L3", 7)],
        events: vec![event_row("L1", 1), event_row("L1", 2)],
        bridge_statuses: vec![],
        protections: vec![],
    };
    store.commit(&batch).await.unwrap();
    let before = store.audit().await.unwrap();

    let again = store.commit(&batch).await.unwrap();
    assert_eq!(again.heartbeats_inserted, [false, false]);
    assert_eq!(again.events_inserted, [false, false]);
    // Mixed: one old row, one new row.
    let mixed = Batch {
        heartbeats: vec![heartbeat_row("L1", 1), heartbeat_row("L1", 2)],
        events: vec![event_row("L1", 2), event_row("L1", 3)],
        bridge_statuses: vec![],
        protections: vec![],
    };
    let c = store.commit(&mixed).await.unwrap();
    assert_eq!(c.heartbeats_inserted, [false, true]);
    assert_eq!(c.events_inserted, [false, true]);

    let after = store.audit().await.unwrap();
    assert_eq!(before.heartbeats.len() + 1, after.heartbeats.len());
    assert_eq!(after.events, keys(&[("L1", 1), ("L1", 2), ("L1", 3)]));
    store.close().await;
}

async fn lock_state_keeps_the_highest_seq_even_when_an_older_heartbeat_arrives_later(url: String) {
    let store = open(&url).await;
    let commit_one = |seq: u32, state: LockState| {
        let mut r = heartbeat_row("L1", seq);
        r.hb.lock_state = state;
        Batch {
            heartbeats: vec![r],
            ..Batch::default()
        }
    };
    store
        .commit(&commit_one(5, LockState::Locked))
        .await
        .unwrap();
    let late = store
        .commit(&commit_one(3, LockState::Unlocked))
        .await
        .unwrap();
    assert_eq!(
        late.heartbeats_inserted,
        [true],
        "a late heartbeat is still history"
    );
    let latest = store.load_latest().await.unwrap();
    assert_eq!(
        (latest["L1"].state.seq, latest["L1"].state.lock_state),
        (5, LockState::Locked)
    );

    // Several new heartbeats of one lock in one batch, out of order: the highest wins.
    let mut nine = heartbeat_row("L1", 9);
    nine.hb.lock_state = LockState::Jammed;
    nine.hb.door_state = DoorState::Open;
    nine.hb.battery = Battery::Level(BatteryLevel::Low);
    let batch = Batch {
        heartbeats: vec![
            commit_one(7, LockState::Unlocked).heartbeats.remove(0),
            nine,
            heartbeat_row("L1", 8),
        ],
        ..Batch::default()
    };
    store.commit(&batch).await.unwrap();
    let l = store.load_latest().await.unwrap()["L1"].state;
    assert_eq!(
        (l.seq, l.lock_state, l.door_state, l.battery_low),
        (9, LockState::Jammed, DoorState::Open, true)
    );
    store.close().await;
}

async fn bridge_statuses_are_decided_against_the_stored_status(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    assert!(
        store.load_bridge_status().await.unwrap().is_empty(),
        "never seen = absent"
    );

    let batch = Batch {
        bridge_statuses: vec![
            bridge_status("B1", true, 1000),
            bridge_status("B2", true, 1000),
            bridge_status("B1", false, 2000),
            bridge_status("B1", false, 2500),
        ],
        ..Batch::default()
    };
    let c = store.commit(&batch).await.unwrap();
    assert!(c.heartbeats_inserted.is_empty() && c.events_inserted.is_empty());
    let at = |c: &Option<Change>| c.map(|c| (c.online, c.at_ms));
    assert_eq!(
        c.bridge_changes.iter().map(at).collect::<Vec<_>>(),
        [
            Some((true, 1000)),
            Some((true, 1000)),
            Some((false, 2000)),
            None
        ],
        "a repeated status is no change"
    );
    let status = store.load_bridge_status().await.unwrap();
    assert_eq!(status.len(), 2);
    assert_eq!(
        status["B1"],
        BridgeStatus {
            online: false,
            changed_at_ms: 2000
        }
    );
    assert!(status["B2"].online);
    assert_eq!(store.audit().await.unwrap().bridge_changes, 3);

    // The next batch compares with what is stored, not with its own first row.
    let again = Batch {
        bridge_statuses: vec![
            bridge_status("B1", false, 3000),
            bridge_status("B2", false, 3000),
        ],
        ..Batch::default()
    };
    let c = store.commit(&again).await.unwrap();
    assert_eq!(
        c.bridge_changes.iter().map(at).collect::<Vec<_>>(),
        [None, Some((false, 3000))]
    );
    store.close().await;
}

async fn a_status_received_before_the_stored_change_is_placed_after_it(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let one = |online, at| Batch {
        bridge_statuses: vec![bridge_status("B1", online, at)],
        ..Batch::default()
    };
    store.commit(&one(true, 5000)).await.unwrap();
    // Another instance received a disconnect earlier but commits it after:
    // it still changes the status, and its time keeps the history ordered.
    let c = store.commit(&one(false, 4000)).await.unwrap();
    assert_eq!(c.bridge_changes[0].map(|c| c.at_ms), Some(5001));
    assert_eq!(
        store.load_bridge_status().await.unwrap()["B1"],
        BridgeStatus {
            online: false,
            changed_at_ms: 5001
        }
    );
    assert_eq!(store.audit().await.unwrap().bridge_changes, 2);
    store.close().await;
}

/// Two store handles (two instances) commit statuses of one bridge at once.
/// Each commit decides against what the other committed, so the history
/// alternates, its times strictly increase, and every change was reported
/// to exactly one of them.
async fn concurrent_commits_of_one_bridge_keep_its_history_alternating(url: String) {
    const ROUNDS: u64 = 40;
    let a = open(&url).await;
    gateway::store::testing::register(&a, &fleet()).await;
    let b = open(&url).await;
    let run = |store: Store, offset: u64| {
        tokio::spawn(async move {
            let mut changes = Vec::new();
            for i in 0..ROUNDS {
                let batch = Batch {
                    bridge_statuses: vec![bridge_status(
                        "B1",
                        (i + offset).is_multiple_of(2),
                        1000 + i,
                    )],
                    ..Batch::default()
                };
                changes.extend(
                    store
                        .commit(&batch)
                        .await
                        .unwrap()
                        .bridge_changes
                        .into_iter()
                        .flatten(),
                );
            }
            store.close().await;
            changes
        })
    };
    let (from_a, from_b) = tokio::join!(run(a, 0), run(b, 1));
    let mut changes: Vec<Change> = from_a.unwrap().into_iter().chain(from_b.unwrap()).collect();
    changes.sort_by_key(|c| c.at_ms);
    assert!(!changes.is_empty());
    for pair in changes.windows(2) {
        assert!(
            pair[0].at_ms < pair[1].at_ms,
            "times strictly increase: {pair:?}"
        );
        assert_ne!(
            pair[0].online, pair[1].online,
            "each change flips the status: {pair:?}"
        );
    }
    let store = open(&url).await;
    assert_eq!(
        store.audit().await.unwrap().bridge_changes,
        changes.len() as u64
    );
    let last = changes.last().unwrap();
    assert_eq!(
        store.load_bridge_status().await.unwrap()["B1"],
        BridgeStatus {
            online: last.online,
            changed_at_ms: last.at_ms
        }
    );
    store.close().await;
}

async fn locks_before_is_each_lock_s_stored_state_before_the_batch(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let c = store
        .commit(&Batch {
            heartbeats: vec![heartbeat_row("L1", 1)],
            ..Batch::default()
        })
        .await
        .unwrap();
    assert!(
        c.locks_before.is_empty(),
        "nothing stored before the first heartbeat"
    );

    let mut second = heartbeat_row("L1", 2);
    second.hb.lock_state = LockState::Unlocked;
    let c = store
        .commit(&Batch {
            heartbeats: vec![second, heartbeat_row("L2", 1)],
            ..Batch::default()
        })
        .await
        .unwrap();
    assert_eq!(c.locks_before.len(), 1, "{:?}", c.locks_before);
    let before = c.locks_before["L1"];
    assert_eq!(
        (before.seq, before.lock_state),
        (1, heartbeat_row("L1", 1).hb.lock_state)
    );
    assert_eq!(
        store.load_latest().await.unwrap()["L1"].state.lock_state,
        LockState::Unlocked
    );
    store.close().await;
}

async fn online_locks_and_bridges_are_counted_in_the_database(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let mut l1 = heartbeat_row("L1", 1);
    l1.hb.heartbeat_interval = HeartbeatInterval::from_hours(1).unwrap();
    let mut l2 = heartbeat_row("L2", 1);
    l2.hb.heartbeat_interval = HeartbeatInterval::from_hours(24).unwrap();
    let heard = l1.received_at_ms;
    let batch = Batch {
        heartbeats: vec![l1, l2],
        bridge_statuses: vec![
            bridge_status("B1", true, heard),
            bridge_status("B2", false, heard),
        ],
        ..Batch::default()
    };
    store.commit(&batch).await.unwrap();
    let until = |lock: &str, h: u64| {
        dispatcher::presence::online_until_ms(
            lock,
            heard,
            HeartbeatInterval::from_hours(h as u16).unwrap(),
        )
    };
    let count = |now| {
        let store = store.clone();
        async move { store.count_online(now).await.unwrap() }
    };
    assert_eq!(
        count(heard + 1).await,
        OnlineCounts {
            locks: 2,
            bridges: 1
        }
    );
    assert_eq!(
        count(until("L1", 1)).await.locks,
        1,
        "the 1 h lock is overdue at its deadline"
    );
    assert_eq!(count(until("L2", 24)).await.locks, 0);
    store.close().await;
}

/// The clock of the pending-jobs rows below, Unix milliseconds.
const JOBS_NOW_MS: u64 = 1_000_000_000;

async fn low_battery_locks_and_pending_jobs_by_age_are_counted_in_the_database(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    assert_eq!(store.count_low_battery().await.unwrap(), 0);
    // L1 low by level, L2 low by percent (below 30), L3 at 30: not low.
    let mut rows = vec![
        heartbeat_row("L1", 1),
        heartbeat_row("L2", 1),
        heartbeat_row("L3", 1),
    ];
    rows[0].hb.battery = Battery::Level(BatteryLevel::Low);
    rows[1].hb.battery = Battery::Percent(29);
    rows[2].hb.battery = Battery::Percent(30);
    let batch = Batch {
        heartbeats: rows,
        ..Batch::default()
    };
    store.commit(&batch).await.unwrap();
    assert_eq!(store.count_low_battery().await.unwrap(), 2);
    // L1's newer heartbeat is high: one low lock left.
    let mut again = heartbeat_row("L1", 2);
    again.hb.battery = Battery::Level(BatteryLevel::High);
    let batch = Batch {
        heartbeats: vec![again],
        ..Batch::default()
    };
    store.commit(&batch).await.unwrap();
    assert_eq!(store.count_low_battery().await.unwrap(), 1);

    let ages = [60_000, 600_000, 3_600_000, 86_400_000];
    let none = store.pending_ages(JOBS_NOW_MS, ages).await.unwrap();
    assert_eq!(none.total, 0);
    assert_eq!(none.oldest_issued_ms, None);
    // Pending jobs issued 30 s, 5 min, 30 min, 2 h and 2 days before
    // JOBS_NOW_MS, and a completed one (not counted).
    execute(
        &store,
        "INSERT INTO jobs (org, lock_id, kind, state, attempt, created_at_ms, created_by, \
         description, issued_at_ms, version, updated_at_ms) VALUES \
         ('org-1', 'L1', 'create_custom_pin', 'pending', 1, 1, 't', 'd', 999970000, 1, 1), \
         ('org-1', 'L1', 'create_custom_pin', 'pending', 1, 1, 't', 'd', 999700000, 1, 1), \
         ('org-1', 'L1', 'create_custom_pin', 'pending', 1, 1, 't', 'd', 998200000, 1, 1), \
         ('org-1', 'L1', 'create_custom_pin', 'pending', 2, 1, 't', 'd', 992800000, 1, 1), \
         ('org-1', 'L1', 'create_custom_pin', 'pending', 1, 1, 't', 'd', 827200000, 1, 1), \
         ('org-1', 'L1', 'create_custom_pin', 'completed', 1, 1, 't', 'd', 100, 1, 1)",
    )
    .await;
    let p = store.pending_ages(JOBS_NOW_MS, ages).await.unwrap();
    assert_eq!(p.total, 5);
    assert_eq!(p.younger, [1, 2, 3, 4]);
    assert_eq!(p.oldest_issued_ms, Some(827_200_000));
    assert_eq!(p.by_age(), [1, 1, 1, 1, 1]);
    store.close().await;
}

async fn purge_deletes_only_old_rows_and_respects_max_rows(url: String) {
    let store = open(&url).await;
    // Heartbeats and events received at 1000, 2000, ... 10000 ms.
    let mut batch = Batch::default();
    for i in 1..=10u32 {
        let mut hb = heartbeat_row("L1", i);
        hb.received_at_ms = u64::from(i) * 1000;
        batch.heartbeats.push(hb);
        let mut ev = event_row("L1", i);
        ev.received_at_ms = u64::from(i) * 1000;
        batch.events.push(ev);
        batch
            .bridge_statuses
            .push(bridge_status("B1", i % 2 == 1, u64::from(i) * 1000));
    }
    store.commit(&batch).await.unwrap();

    // Six rows per table are older than 6500 ms; take at most 4 per call.
    let p = store.purge_before(6500, 4).await.unwrap();
    assert_eq!(
        p,
        Purged {
            heartbeats: 4,
            activity_events: 4,
            bridge_connectivity: 4,
            ..Purged::default()
        }
    );
    let p = store.purge_before(6500, 4).await.unwrap();
    assert_eq!(
        (p.heartbeats, p.activity_events, p.bridge_connectivity),
        (2, 2, 2)
    );
    let p = store.purge_before(6500, 4).await.unwrap();
    assert_eq!(p, Purged::default());

    let audit = store.audit().await.unwrap();
    assert_eq!(
        audit.heartbeats,
        keys(&[("L1", 7), ("L1", 8), ("L1", 9), ("L1", 10)])
    );
    assert_eq!(
        audit.events,
        keys(&[("L1", 7), ("L1", 8), ("L1", 9), ("L1", 10)])
    );
    assert_eq!(audit.bridge_changes, 4);
    // Retention never touches the newest state.
    assert_eq!(store.load_latest().await.unwrap()["L1"].state.seq, 10);
    store.close().await;
}

async fn failed_commit_stores_nothing(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    // Make the last statements of the commit fail, after heartbeats, lock
    // state and events were written in the same transaction.
    match store.engine() {
        "sqlite" => {
            execute(
                &store,
                "CREATE TRIGGER refuse BEFORE INSERT ON bridge_connectivity \
                 BEGIN SELECT RAISE(ABORT, 'forced failure'); END",
            )
            .await
        }
        _ => {
            execute(
                &store,
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql \
                 AS $$ BEGIN RAISE EXCEPTION 'forced failure'; END $$",
            )
            .await;
            execute(
                &store,
                "CREATE TRIGGER refuse BEFORE INSERT ON bridge_connectivity \
                 FOR EACH STATEMENT EXECUTE FUNCTION refuse()",
            )
            .await;
        }
    }
    let batch = Batch {
        heartbeats: vec![heartbeat_row("L1", 1), heartbeat_row("L3", 1)],
        events: vec![event_row("L1", 1)],
        bridge_statuses: vec![bridge_status("B1", true, 1000)],
        protections: vec![],
    };
    let err = store.commit(&batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Failed { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("forced failure"), "{err}");

    let audit = store.audit().await.unwrap();
    assert!(
        audit.heartbeats.is_empty() && audit.events.is_empty(),
        "{audit:?}"
    );
    assert_eq!(audit.bridge_changes, 0);
    assert!(store.load_latest().await.unwrap().is_empty());
    assert!(store.load_bridge_status().await.unwrap().is_empty());

    // Once the database accepts it again, the same batch is wholly new.
    match store.engine() {
        "sqlite" => execute(&store, "DROP TRIGGER refuse").await,
        _ => execute(&store, "DROP TRIGGER refuse ON bridge_connectivity").await,
    }
    let c = store.commit(&batch).await.unwrap();
    assert_eq!(c.heartbeats_inserted, [true, true]);
    assert_eq!(c.events_inserted, [true]);
    store.close().await;
}

async fn batch_larger_than_one_statement_is_stored_whole(url: String) {
    let store = open(&url).await;
    // More rows than one SQLite statement can bind (1638 heartbeats, 3640
    // events), with a duplicate of every tenth heartbeat at the end.
    let mut batch = Batch::default();
    for i in 0..2000u32 {
        batch
            .heartbeats
            .push(heartbeat_row(&format!("L{}", i % 50), i));
    }
    for i in 0..4000u32 {
        batch.events.push(event_row(&format!("L{}", i % 7), i));
    }
    for i in (0..2000u32).step_by(10) {
        batch
            .heartbeats
            .push(heartbeat_row(&format!("L{}", i % 50), i));
    }
    let c = store.commit(&batch).await.unwrap();
    assert_eq!(c.heartbeats_inserted.iter().filter(|f| **f).count(), 2000);
    assert!(c.heartbeats_inserted[..2000].iter().all(|f| *f));
    assert!(c.heartbeats_inserted[2000..].iter().all(|f| !*f));
    assert!(c.events_inserted.iter().all(|f| *f));
    let audit = store.audit().await.unwrap();
    assert_eq!((audit.heartbeats.len(), audit.events.len()), (2000, 4000));
    let latest = store.load_latest().await.unwrap();
    assert_eq!(latest.len(), 50);
    assert_eq!(latest["L7"].state.seq, 1957);
    store.close().await;
}

async fn nul_in_device_text_does_not_fail_the_commit(url: String) {
    let store = open(&url).await;
    let mut hb = heartbeat_row("L1", 1);
    hb.hb.firmware = "1.0\0evil".into();
    hb.hb.carrier = "\0".into();
    let mut ev = event_row("L1", 1);
    ev.event.actor = Some("slot\0".into());
    ev.event.time = u64::MAX;
    hb.hb.device_time = u64::MAX;
    let c = store
        .commit(&Batch {
            heartbeats: vec![hb],
            events: vec![ev],
            bridge_statuses: vec![],
            protections: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        (c.heartbeats_inserted, c.events_inserted),
        (vec![true], vec![true])
    );
    store.close().await;
}

#[tokio::test]
async fn unsupported_url_says_what_to_use() {
    let err = Store::open("mysql://u:secret@h/db").await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("sqlite://") && msg.contains("postgres://"),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "the password is not echoed: {msg}");
}

#[tokio::test]
async fn sqlite_creates_missing_directories() {
    let db = TestDb::sqlite().await;
    let nested = db.url.replace("gateway.db", "a/b/c/gateway.db");
    let store = open(&nested).await;
    store.ping().await.unwrap();
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_directory_that_cannot_be_created_is_named() {
    let db = TestDb::sqlite().await;
    // A regular file where a directory should be.
    let file = db.url.trim_start_matches("sqlite://").to_string();
    std::fs::write(&file, b"not a directory").unwrap();
    let err = Store::open(&format!("sqlite://{file}/sub/x.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("gateway.db/sub"), "{err}");
    db.cleanup().await;
}

#[tokio::test]
async fn unreachable_postgres_names_host_and_port() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let err = Store::open("postgres://postgres:pw@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ConnectPostgres { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{msg}"
    );
    assert!(msg.contains("is PostgreSQL running"), "{msg}");
}

#[tokio::test]
async fn missing_postgres_database_says_to_create_it() {
    let db = TestDb::postgres().await;
    let missing = match db.url.split_once('?') {
        Some((base, query)) => format!("{base}_missing?{query}"),
        None => format!("{}_missing", db.url),
    };
    let err = Store::open(&missing).await.unwrap_err();
    assert!(
        err.to_string().contains("create the database first"),
        "{err}"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_is_opened_for_durability() {
    let db = TestDb::sqlite().await;
    let store = open(&db.url).await;
    let Store::Sqlite(pool) = &store else {
        panic!("expected SQLite")
    };
    let mut conn = pool.acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        (mode.as_str(), sync, fk),
        ("wal", 2, 1),
        "WAL, synchronous=FULL, foreign keys"
    );
    assert!(busy >= 1000, "busy_timeout {busy} ms");
    drop(conn);
    store.close().await;
    db.cleanup().await;
}

async fn keys_are_stored_wrapped_and_open_to_the_server_key_only(url: String) {
    use gateway::store::testing::{secret_for, server_key};
    let store = open(&url).await;
    let summary = gateway::store::testing::register(&store, &fleet()).await;
    assert_eq!((summary.keys_new, summary.keys_rotated), (5, 0));
    let keys = store.load_keys().await.unwrap();
    assert_eq!(keys.len(), 5, "3 locks and 2 bridges");
    for k in &keys {
        assert_eq!(k.generation, 1);
        assert_eq!(k.wrapped.kek_id, server_key().id());
        let secret = secret_for(&k.device);
        assert_ne!(
            k.wrapped.ciphertext[..32],
            secret.as_bytes()[..],
            "{}: stored wrapped",
            k.device
        );
        assert_eq!(
            server_key()
                .unwrap(&k.device, k.generation, &k.wrapped)
                .unwrap(),
            secret
        );
        let password = schemas::security::mqtt_password(secret.as_bytes());
        assert!(
            gateway::keys::password::verify(&password, &k.mqtt_password_hash),
            "{}",
            k.device
        );
        assert!(k.mqtt_password_hash.starts_with("$argon2id$"));
    }
    store.close().await;
}

async fn a_new_device_without_a_secret_is_refused_and_nothing_is_registered(url: String) {
    let store = open(&url).await;
    let err = store
        .import_fleet(&fleet(), &gateway::store::testing::server_key())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MissingSecret { .. }), "{err:?}");
    assert!(err.to_string().contains("--secrets-out"), "{err}");
    assert_eq!(store.load_registry().await.unwrap().lock_count(), 0);
    assert!(store.load_keys().await.unwrap().is_empty());
    store.close().await;
}

async fn a_different_secret_rotates_the_key_and_the_same_secret_keeps_it(url: String) {
    use dispatcher::keys::{DeviceRef, MasterSecret};
    use gateway::store::testing::{server_key, with_secrets};
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    // The same file again: nothing changes.
    let again = store
        .import_fleet(&with_secrets(fleet()), &server_key())
        .await
        .unwrap();
    assert_eq!((again.keys_new, again.keys_rotated), (0, 0));
    // Without secrets: registered devices keep their keys.
    let bare = store.import_fleet(&fleet(), &server_key()).await.unwrap();
    assert_eq!((bare.keys_new, bare.keys_rotated), (0, 0));
    // L1 re-paired with another secret: its key is rotated, the others kept.
    let mut repaired = with_secrets(fleet());
    let l1 = DeviceRef::Lock(LockId::new("L1"));
    let fresh = MasterSecret::from_bytes([9; 32]);
    for (d, s) in repaired.secrets.iter_mut() {
        if *d == l1 {
            *s = fresh.clone();
        }
    }
    let summary = store.import_fleet(&repaired, &server_key()).await.unwrap();
    assert_eq!((summary.keys_new, summary.keys_rotated), (0, 1));
    let k = store
        .load_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.device == l1)
        .unwrap();
    assert_eq!(k.generation, 2);
    assert_eq!(server_key().unwrap(&l1, 2, &k.wrapped).unwrap(), fresh);
    store.close().await;
}

async fn keys_load_a_page_at_a_time_in_order_each_with_its_window(url: String) {
    use dispatcher::keys::DeviceRef;
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    execute(
        &store,
        "INSERT INTO oscore_replay (device_kind, device_id, generation, highest, window_bits) \
         VALUES ('lock', 'L2', 1, 40, 1)",
    )
    .await;
    let mut seen = Vec::new();
    let mut after: Option<DeviceRef> = None;
    let mut pages = 0;
    loop {
        let page = store.load_keys_page(after.as_ref(), 2).await.unwrap();
        pages += 1;
        assert!(page.len() <= 2, "a page holds at most its limit");
        after = page.last().map(|(k, _)| k.device.clone());
        let full = page.len() == 2;
        seen.extend(page);
        if !full {
            break;
        }
    }
    // 2 bridges and 3 locks: pages of 2, 2 and 1, in (kind, id) order.
    assert_eq!(pages, 3);
    let order: Vec<String> = seen
        .iter()
        .map(|(k, _)| format!("{}/{}", k.device.kind(), k.device.id()))
        .collect();
    assert_eq!(
        order,
        ["bridge/B1", "bridge/B2", "lock/L1", "lock/L2", "lock/L3"]
    );
    let everything = store.load_keys().await.unwrap();
    for (key, window) in &seen {
        let whole = everything.iter().find(|k| k.device == key.device).unwrap();
        assert_eq!(
            (key.generation, &key.wrapped),
            (whole.generation, &whole.wrapped)
        );
        match key.device.id() {
            "L2" => {
                let (generation, w) = window.expect("L2's stored window comes with its key");
                assert_eq!((generation, w.highest()), (1, Some(40)));
                assert!(w.check(40).is_err(), "40 was accepted: a replay");
                assert!(w.check(41).is_ok());
            }
            _ => assert!(window.is_none(), "{}: no stored window", key.device.id()),
        }
    }
    store.close().await;
}

async fn rotation_and_deregistration_replace_and_remove_keys(url: String) {
    use dispatcher::keys::{DeviceRef, MasterSecret};
    use gateway::store::testing::server_key;
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let b1 = DeviceRef::Bridge(BridgeId::new("B1"));
    let version = store.registry_version().await.unwrap();
    let generation = store
        .rotate_key(&server_key(), &b1, &MasterSecret::from_bytes([3; 32]))
        .await
        .unwrap();
    assert_eq!(generation, 2);
    assert!(
        store.registry_version().await.unwrap() > version,
        "running instances notice"
    );
    let k = store
        .load_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.device == b1)
        .unwrap();
    assert_eq!(
        server_key().unwrap(&b1, 2, &k.wrapped).unwrap(),
        MasterSecret::from_bytes([3; 32])
    );

    // B1 links L2: deregistering the bridge unlinks it and drops the bridge's key.
    store
        .commit(&Batch {
            heartbeats: vec![heartbeat_row("L1", 1)],
            ..Batch::default()
        })
        .await
        .unwrap();
    assert!(store.deregister(&b1).await.unwrap());
    let registry = store.load_registry().await.unwrap();
    assert!(registry.bridge("B1").is_none());
    assert_eq!(registry.lock("L2").unwrap().bridge, None);
    assert!(store
        .load_keys()
        .await
        .unwrap()
        .iter()
        .all(|k| k.device != b1));
    let l1 = DeviceRef::Lock(LockId::new("L1"));
    assert!(store.deregister(&l1).await.unwrap());
    assert!(!store.deregister(&l1).await.unwrap(), "already gone");
    assert_eq!(
        store.audit().await.unwrap().heartbeats,
        keys(&[("L1", 1)]),
        "history stays"
    );
    let err = store
        .rotate_key(&server_key(), &l1, &MasterSecret::from_bytes([4; 32]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotRegistered { .. }), "{err:?}");
    store.close().await;
}

/// `PRAGMA wal_autocheckpoint` of the store's (one) SQLite connection.
async fn autocheckpoint(store: &Store) -> i64 {
    let Store::Sqlite(pool) = store else {
        panic!("a SQLite store")
    };
    sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// SQLite under a serving gateway: the writer's commits stop checkpointing
/// and the checkpointer copies their WAL pages into the database file
/// (which therefore grows while the store is open); stopping it gives the
/// writer its autocheckpoint back. PostgreSQL has none.
#[tokio::test]
async fn sqlite_wal_checkpoints_run_beside_the_writer() {
    let db = TestDb::sqlite().await;
    let store = open(&db.url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let file = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    // Start from an empty WAL, so that only the checkpointer can grow the file.
    let Store::Sqlite(pool) = &store else {
        panic!("a SQLite store")
    };
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
        .unwrap();
    let before = std::fs::metadata(&file).unwrap().len();

    let stop = tokio_util::sync::CancellationToken::new();
    let checkpointer = store
        .spawn_checkpointer(stop.clone())
        .await
        .unwrap()
        .expect("SQLite checkpoints beside the writer");
    assert_eq!(
        autocheckpoint(&store).await,
        0,
        "the writer's autocheckpoint is off"
    );
    for chunk in (1..=4_000u32).collect::<Vec<_>>().chunks(500) {
        let batch = Batch {
            heartbeats: chunk.iter().map(|s| heartbeat_row("L1", *s)).collect(),
            ..Batch::default()
        };
        store.commit(&batch).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = std::fs::metadata(&file).unwrap().len();
        if now > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpointer never copied the WAL into {} ({before} bytes)",
            file.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    checkpointer.await.unwrap();
    assert_eq!(
        autocheckpoint(&store).await,
        1000,
        "SQLite's default autocheckpoint is back"
    );
    assert_eq!(store.audit().await.unwrap().heartbeats.len(), 4_000);
    store.close().await;
    db.cleanup().await;

    let db = TestDb::postgres().await;
    let store = open(&db.url).await;
    let none = store
        .spawn_checkpointer(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(none.is_none(), "PostgreSQL has no checkpointer of ours");
    store.close().await;
    db.cleanup().await;
}

/// A dashboard request setting `lock`'s heartbeat interval.
fn set_intervals(key: &str, lock: &str) -> schemas::command::CommandRequest {
    serde_json::from_value(serde_json::json!({
        "correlation_id": key,
        "idempotency_key": key,
        "requested_by": "Ana",
        "department": "dept-1",
        "command": {"type": "set_intervals", "lock_id": lock, "heartbeat_interval_h": 2},
    }))
    .unwrap()
}

/// What a command is prepared with: `lock`'s record from `registry`.
fn prepared_for(registry: &dispatcher::Registry, lock: &str) -> gateway::store::jobs::Prepared {
    gateway::store::jobs::Prepared {
        lock: registry.lock(lock).cloned(),
        ..Default::default()
    }
}

async fn a_command_that_fails_in_a_group_is_rolled_back_alone(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    // A real database error for L3's job alone: a trigger refuses it.
    match &store {
        Store::Sqlite(p) => {
            sqlx::query(
                "CREATE TRIGGER refuse_l3 BEFORE INSERT ON jobs WHEN NEW.lock_id = 'L3' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            )
            .execute(p)
            .await
            .unwrap();
        }
        Store::Postgres(p) => {
            for sql in [
                "CREATE FUNCTION refuse_l3() RETURNS trigger AS $$ BEGIN \
                 IF NEW.lock_id = 'L3' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_l3 BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse_l3()",
            ] {
                sqlx::query(sql).execute(p).await.unwrap();
            }
        }
    }
    let registry = store.load_registry().await.unwrap();
    let requests = [
        set_intervals("k1", "L1"),
        set_intervals("k3", "L3"),
        set_intervals("k1", "L1"),
    ];
    let prepared: Vec<_> = ["L1", "L3", "L1"]
        .iter()
        .map(|l| prepared_for(&registry, l))
        .collect();
    let group: Vec<_> = requests
        .iter()
        .zip(&prepared)
        .map(|(request, prepared)| gateway::store::jobs::QueuedCommand {
            org: "org-1",
            request,
            prepared,
            now_ms: 1_790_000_000_000,
        })
        .collect();
    let outcomes = store.run_commands(&group).await.unwrap();
    let first = outcomes[0].as_ref().expect("L1's job is created");
    assert!(first.answer.error.is_none() && !first.replayed, "{first:?}");
    let failed = outcomes[1].as_ref().expect_err("L3's insert is refused");
    assert!(
        failed.to_string().contains("refused by the test"),
        "{failed}"
    );
    // The same key later in the group sees the first one's stored answer.
    let again = outcomes[2].as_ref().unwrap();
    assert!(again.replayed);
    assert_eq!(again.answer, first.answer);
    // L1's job and key committed; nothing of L3's (its key is free again).
    let stored: Vec<(String, String)> = match &store {
        Store::Sqlite(p) => sqlx::query_as(COMMITTED).fetch_all(p).await,
        Store::Postgres(p) => sqlx::query_as(COMMITTED).fetch_all(p).await,
    }
    .unwrap();
    assert_eq!(stored, [("k1".to_string(), "L1".to_string())]);
    store.close().await;
}

/// Every stored idempotency key beside every job Ana's requests created
/// (one row when one command committed).
const COMMITTED: &str = "SELECT c.idempotency_key, j.lock_id FROM commands c \
     JOIN jobs j ON j.created_by = 'Ana' ORDER BY c.idempotency_key";

/// The answer stored under an idempotency key.
const ANSWER_OF: &str = "SELECT answer FROM commands WHERE idempotency_key = $1";

async fn commands_queued_at_once_all_commit(url: String) {
    let store = open(&url).await;
    gateway::store::testing::register(&store, &fleet()).await;
    let registry = store.load_registry().await.unwrap();
    let queue = store.command_queue();
    let prepared = prepared_for(&registry, "L1");
    let mut runs = tokio::task::JoinSet::new();
    for n in 0..40 {
        let (queue, prepared) = (queue.clone(), prepared.clone());
        runs.spawn(async move {
            let key = format!("key-{n}");
            let request = set_intervals(&key, "L1");
            let done = queue
                .run("org-1", &request, &prepared, 1_790_000_000_000)
                .await;
            (key, done)
        });
    }
    let mut job_ids = std::collections::BTreeSet::new();
    while let Some(done) = runs.join_next().await {
        let (key, done) = done.unwrap();
        let done = done.expect("committed");
        // Each asker hears its own command's answer: the one stored under
        // its key.
        let stored: String = match &store {
            Store::Sqlite(p) => sqlx::query_scalar(ANSWER_OF).bind(&key).fetch_one(p).await,
            Store::Postgres(p) => sqlx::query_scalar(ANSWER_OF).bind(&key).fetch_one(p).await,
        }
        .unwrap();
        let stored: gateway::store::jobs::Answer = serde_json::from_str(&stored).unwrap();
        assert_eq!(stored, done.answer, "{key}");
        assert!(done.answer.error.is_none() && !done.replayed, "{done:?}");
        let Some(schemas::command::CommandResult::Job { job }) = &done.answer.result else {
            panic!("a job: {:?}", done.answer);
        };
        job_ids.insert(job.job_id);
    }
    assert_eq!(job_ids.len(), 40, "forty distinct jobs");
    let keys: i64 = match &store {
        Store::Sqlite(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM commands")
                .fetch_one(p)
                .await
        }
        Store::Postgres(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM commands")
                .fetch_one(p)
                .await
        }
    }
    .unwrap();
    assert_eq!(keys, 40);
    drop(queue);
    store.close().await;
}
