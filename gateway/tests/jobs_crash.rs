//! kill -9 with pending and in-flight jobs, on SQLite and PostgreSQL: the
//! `gateway serve` binary is killed with SIGKILL after one lock's jobs went
//! out without their results (in flight) and while another lock's job is
//! still pending; a new process on the same database delivers both again,
//! and each job ends exactly once: one completed event per job, results
//! repeated after the end change nothing, and nothing completed goes out
//! again.

mod common;

use common::process::GatewayProcess as Process;
use common::{done, now_s, Dashboard, Engine, JobLock};
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{LockRecord, ReportPath};
use dispatcher::{LockId, OrgId};
use gateway::store::testing::registration;
use schemas::*;
use serde_json::{json, Value};
use std::time::Duration;

const ORG: &str = "org-1";

fn fleet() -> ParsedFleet {
    let lock = |id: &str| {
        registration(LockRecord {
            id: LockId::new(id),
            model: LockModel::Inb1,
            org: OrgId::new(ORG),
            departments: vec![].into(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(24).unwrap(),
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

fn request(key: &str, command: Value) -> Value {
    json!({
        "correlation_id": format!("c-{key}"),
        "idempotency_key": key,
        "requested_by": "Mark Tan",
        "command": command,
    })
}

async fn each_job_ends_exactly_once_after_kill_9(engine: Engine) {
    let db = engine.db().await;
    let store = gateway::store::Store::open(&db.url).await.unwrap();
    gateway::store::testing::register(&store, &fleet()).await;
    store.close().await;
    let dir = tempfile::tempdir().unwrap();

    let first = Process::start(&db.url, dir.path()).await;
    let d = Dashboard::subscribe(first.mqtt, &["rsp/v1/#"]).await;
    let mut ids = Vec::new();
    for (n, lock) in ["L1", "L1", "L1", "L2"].iter().enumerate() {
        let answer = d
            .command(
                ORG,
                request(
                    &format!("k{n}"),
                    json!({"type": "create_custom_pin", "lock_id": lock, "pin_name": "Guest",
                           "pin": format!("{:06}", 200_000 + n), "pin_type": "permanent", "start_s": now_s()}),
                ),
            )
            .await;
        assert_eq!(answer["status"], "ok", "{answer}");
        ids.push(answer["result"]["job"]["job_id"].as_u64().unwrap());
    }
    // L1's three jobs go out; its report never comes (in flight). L2 is
    // not heard: its job stays pending.
    let mut l1 = JobLock::new(first.coap, "L1").await;
    let delivered = l1.heartbeat().await;
    assert_eq!(delivered.jobs.len(), 3);
    d.close().await;
    first.kill_9().await;

    let second = Process::start(&db.url, dir.path()).await;
    let d = Dashboard::subscribe(second.mqtt, &["events/v1/#", "rsp/v1/#"]).await;
    // The lock keeps its sequence numbers (and OSCORE context) across the
    // server's crash; only the server's address is new.
    l1.reconnect(second.coap).await;
    let mut l2 = JobLock::new(second.coap, "L2").await;

    let again = l1.heartbeat().await;
    let again_ids: Vec<u64> = again.jobs.iter().map(|j| j.id).collect();
    assert_eq!(
        again_ids,
        ids[..3],
        "in-flight jobs go out again after the crash"
    );
    let results: Vec<JobResult> = again.jobs.iter().map(done).collect();
    assert!(l1.report(results.clone()).await.jobs.is_empty());
    // The lock repeats its results (its answer was lost): nothing changes.
    l1.report(results).await;
    let l2_jobs = l2.heartbeat().await;
    assert_eq!(l2_jobs.jobs.len(), 1);
    assert_eq!(l2_jobs.jobs[0].id, ids[3]);
    l2.report(l2_jobs.jobs.iter().map(done).collect()).await;
    // Nothing completed is delivered again.
    assert!(l1.heartbeat().await.jobs.is_empty());
    assert!(l2.heartbeat().await.jobs.is_empty());

    d.wait_for(20, "a completed event per job", |m| {
        m.iter()
            .filter(|(t, p)| {
                t.ends_with("/job") && String::from_utf8_lossy(p).contains("\"completed\"")
            })
            .count()
            >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        let completed = d
            .with_suffix("/job")
            .into_iter()
            .filter(|e| e["job"]["job_id"] == *id && e["change"] == "completed")
            .count();
        assert_eq!(completed, 1, "job {id} completed exactly once");
        let got = d
            .command(
                ORG,
                request(&format!("g{id}"), json!({"type": "get_job", "job_id": id})),
            )
            .await;
        assert_eq!(got["result"]["job"]["state"], "completed", "{got}");
    }
    d.close().await;
    second.kill_9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_each_job_ends_exactly_once_after_kill_9() {
    each_job_ends_exactly_once_after_kill_9(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_each_job_ends_exactly_once_after_kill_9() {
    each_job_ends_exactly_once_after_kill_9(Engine::Postgres).await
}
