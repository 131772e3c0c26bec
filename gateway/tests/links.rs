//! Linking locks and bridges by dashboard command, on SQLite and
//! PostgreSQL: at most 2 locks per bridge and 1 bridge per lock, bridges of
//! the lock's organisation only, each refusal named; a link is stored (the
//! registry a restarted server loads has it).

mod common;

use common::{Dashboard, Engine, Harness};
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{BridgeRecord, LockRecord, ReportPath};
use dispatcher::{BridgeId, LockId, OrgId};
use gateway::store::testing::registration;
use schemas::*;
use serde_json::{json, Value};

const ORG: &str = "org-1";

fn fleet() -> ParsedFleet {
    let lock = |id: &str| {
        registration(LockRecord {
            id: LockId::new(id),
            model: LockModel::Sp2e,
            org: OrgId::new(ORG),
            departments: vec![].into(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(24).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(60).unwrap(),
            bridge: None,
            path: ReportPath::Bridge,
        })
    };
    let bridge = |id: &str, org: &str| BridgeRecord {
        id: BridgeId::new(id),
        org: OrgId::new(org),
    };
    ParsedFleet {
        locks: vec![lock("L1"), lock("L2"), lock("L3"), lock("L4")],
        bridges: vec![bridge("B1", ORG), bridge("B2", ORG), bridge("B9", "org-2")],
        ..ParsedFleet::default()
    }
}

fn link(key: &str, lock: &str, bridge: &str) -> Value {
    json!({"correlation_id": key, "idempotency_key": key, "requested_by": "Mark Tan",
           "command": {"type": "link_bridge", "lock_id": lock, "bridge_id": bridge}})
}

fn unlink(key: &str, lock: &str) -> Value {
    json!({"correlation_id": key, "idempotency_key": key, "requested_by": "Mark Tan",
           "command": {"type": "unlink_bridge", "lock_id": lock}})
}

fn rule(answer: &Value) -> &str {
    answer["error"]["rule"].as_str().unwrap_or("ok")
}

async fn links_follow_the_guide(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let d = Dashboard::subscribe(h.server.mqtt_addr, &["rsp/v1/#"]).await;
    let ok = d.command(ORG, link("a1", "L1", "B1")).await;
    assert_eq!(
        ok["result"],
        json!({"type": "link", "lock_id": "L1", "bridge_id": "B1"})
    );
    assert_eq!(rule(&d.command(ORG, link("a2", "L2", "B1")).await), "ok");
    assert_eq!(
        rule(&d.command(ORG, link("a3", "L3", "B1")).await),
        "bridge_full"
    );
    assert_eq!(
        rule(&d.command(ORG, link("a4", "L1", "B2")).await),
        "lock_already_linked"
    );
    assert_eq!(
        rule(&d.command(ORG, link("a5", "L4", "B9")).await),
        "unknown_bridge"
    );
    assert_eq!(
        rule(&d.command(ORG, link("a6", "L4", "B404")).await),
        "unknown_bridge"
    );
    assert_eq!(
        rule(&d.command(ORG, unlink("a7", "L4")).await),
        "not_linked"
    );
    assert_eq!(rule(&d.command(ORG, unlink("a8", "L1")).await), "ok");
    assert_eq!(rule(&d.command(ORG, link("a9", "L3", "B1")).await), "ok");
    // Linking again to the same bridge is no change, not a refusal.
    assert_eq!(rule(&d.command(ORG, link("a10", "L3", "B1")).await), "ok");

    let registry = h.server.store.load_registry().await.unwrap();
    let bridge_of = |l: &str| {
        registry
            .lock(l)
            .unwrap()
            .bridge
            .as_ref()
            .map(|b| b.to_string())
    };
    assert_eq!(bridge_of("L1"), None);
    assert_eq!(bridge_of("L2").as_deref(), Some("B1"));
    assert_eq!(bridge_of("L3").as_deref(), Some("B1"));
    assert_eq!(bridge_of("L4"), None);
    d.assert_all_valid();
    d.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_links_follow_the_guide() {
    links_follow_the_guide(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_links_follow_the_guide() {
    links_follow_the_guide(Engine::Postgres).await
}
