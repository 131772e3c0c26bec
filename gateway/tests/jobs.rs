//! Jobs end to end over real sockets, on SQLite and PostgreSQL: the
//! dashboard's commands over MQTT (through the authenticating front), the
//! lock's heartbeat answer carrying its pending jobs (OSCORE-protected
//! CoAP), the lock's job report, and the job events the dashboard sees.
//! The lock here is driven by hand so each protocol step is asserted; the
//! simulator's own tests drive the same flows with a simulated lock.

mod common;

use common::{done, now_s, request, Dashboard, Engine, Harness, JobLock};
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{LockRecord, ReportPath};
use dispatcher::{LockId, OrgId};
use gateway::store::testing::registration;
use schemas::*;
use serde_json::{json, Value};

const ORG: &str = "org-1";
const PIN: &str = "48291637";

fn fleet() -> ParsedFleet {
    let lock = |id: &str, departments: &[&str]| {
        registration(LockRecord {
            id: LockId::new(id),
            model: LockModel::Inb1,
            org: OrgId::new(ORG),
            departments: departments.iter().map(|d| d.to_string()).collect(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(24).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(60).unwrap(),
            bridge: None,
            path: ReportPath::Coap,
        })
    };
    ParsedFleet {
        locks: vec![lock("L1", &["d1"]), lock("L2", &["d1", "d2"])],
        ..ParsedFleet::default()
    }
}

fn create_pin(lock: &str, pin: &str, start: u64) -> Value {
    json!({
        "type": "create_custom_pin",
        "lock_id": lock,
        "pin_name": "Cleaner",
        "pin": pin,
        "pin_type": "duration",
        "start_s": start,
        "end_s": start + 86_400,
    })
}

fn ok_job(answer: &Value) -> Value {
    assert_eq!(answer["status"], "ok", "{answer}");
    answer["result"]["job"].clone()
}

fn refused(answer: &Value) -> String {
    assert_eq!(answer["status"], "refused", "{answer}");
    answer["error"]["rule"].as_str().unwrap().to_string()
}

async fn dashboard(h: &Harness) -> Dashboard {
    Dashboard::subscribe(h.server.mqtt_addr, &["events/v1/#", "rsp/v1/#"]).await
}

/// Job events for `job_id`, in arrival order: (change, state).
fn job_events(d: &Dashboard, job_id: u64) -> Vec<(String, String)> {
    d.with_suffix("/job")
        .into_iter()
        .filter(|e| e["job"]["job_id"] == job_id)
        .map(|e| {
            (
                e["change"].as_str().unwrap().to_string(),
                e["job"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// No message the dashboard received carries the PIN digits.
fn assert_pin_never_published(d: &Dashboard, pin: &str) {
    for (topic, payload) in d.snapshot() {
        assert!(
            !String::from_utf8_lossy(&payload).contains(pin),
            "{topic} carries the PIN digits"
        );
    }
}

async fn custom_pin_reaches_the_lock_at_its_heartbeat(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let d = dashboard(&h).await;
    let mut lock = JobLock::new(h.server.coap_addr, "L1").await;

    let answer = d
        .command(
            ORG,
            request("k1", Some("d1"), create_pin("L1", PIN, now_s())),
        )
        .await;
    let job = ok_job(&answer);
    let id = job["job_id"].as_u64().unwrap();
    assert_eq!(job["state"], "pending");
    assert_eq!(job["description"], "Create custom PIN");
    assert_eq!(job["created_by"], "Mark Tan");
    assert_eq!(job["department"], "d1");

    // No heartbeat yet: nobody knows when the job will land.
    assert_eq!(job["expected_delivery_ms"], Value::Null);
    let dl = lock.heartbeat().await;
    assert_eq!(dl.jobs.len(), 1, "{dl:?}");
    // The answer says when to wake next: on the lock's phase, half to one
    // and a half 24 h intervals from now.
    let wake = dl.next_heartbeat_at.expect("next_heartbeat_at") as i64 - now_s() as i64;
    assert!((12 * 3600 - 5..=36 * 3600 + 5).contains(&wake), "{wake}");
    let j = &dl.jobs[0];
    assert_eq!((j.id, j.attempt, j.action), (id, 1, JobAction::CreatePin));
    assert_eq!(j.pin.as_deref(), Some(PIN));
    assert_eq!(j.pin_type, Some(PinType::Duration));
    assert!(!dl.more);

    let next = lock.report(vec![done(j)]).await;
    assert!(next.jobs.is_empty(), "{next:?}");

    d.wait_for(10, "the completed event", |_| true).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !job_events(&d, id).iter().any(|(c, _)| c == "completed") {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            job_events(&d, id)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        job_events(&d, id),
        [
            ("created".into(), "pending".into()),
            ("delivered".into(), "pending".into()),
            ("completed".into(), "completed".into()),
        ]
    );

    let got = d
        .command(
            ORG,
            request("g1", Some("d1"), json!({"type": "get_job", "job_id": id})),
        )
        .await;
    let job = ok_job(&got);
    assert_eq!(job["state"], "completed");
    assert_eq!(job["deliveries"], 1);
    assert_eq!(job["last_sync_by"], "heartbeat");
    assert!(job["last_sync_ms"].as_u64().is_some());

    // A result for a job already final changes nothing.
    lock.report(vec![JobResult {
        id,
        attempt: 1,
        outcome: JobOutcome::HardReset,
        detail: None,
    }])
    .await;
    let got = d
        .command(
            ORG,
            request("g2", Some("d1"), json!({"type": "get_job", "job_id": id})),
        )
        .await;
    assert_eq!(ok_job(&got)["state"], "completed");

    // Delete the PIN: a job, delivered at the next heartbeat.
    let access = job["access_id"].as_str().unwrap().to_string();
    let del = d
        .command(
            ORG,
            request(
                "k2",
                Some("d1"),
                json!({"type": "delete_pin", "lock_id": "L1", "access_id": access, "pin_kind": "custom"}),
            ),
        )
        .await;
    let del = ok_job(&del);
    assert_eq!(del["description"], "Delete PIN");
    // Expected at the lock's next heartbeat, which the server now knows.
    let expected = del["expected_delivery_ms"]
        .as_u64()
        .expect("expected_delivery_ms");
    assert!(expected > now_s() * 1000 + 11 * 3600 * 1000, "{expected}");
    assert_eq!(del["pin_name"], "Cleaner");
    let dl = lock.heartbeat().await;
    assert_eq!(dl.jobs.len(), 1);
    assert_eq!(dl.jobs[0].action, JobAction::DeletePin);
    assert_eq!(dl.jobs[0].access.as_deref(), Some(access.as_str()));
    assert_eq!(dl.jobs[0].pin, None);
    lock.report(vec![done(&dl.jobs[0])]).await;
    // Deleted: a second delete names no PIN.
    let again = d
        .command(
            ORG,
            request(
                "k3",
                Some("d1"),
                json!({"type": "delete_pin", "lock_id": "L1", "access_id": access, "pin_kind": "custom"}),
            ),
        )
        .await;
    assert_eq!(refused(&again), "unknown_access");

    assert_pin_never_published(&d, PIN);
    d.assert_all_valid();
    d.close().await;
    h.stop().await;
}

async fn hard_reset_fails_the_job_and_recreate_works_once(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let d = dashboard(&h).await;
    let mut lock = JobLock::new(h.server.coap_addr, "L1").await;
    let job = ok_job(
        &d.command(
            ORG,
            request("k1", Some("d1"), create_pin("L1", PIN, now_s())),
        )
        .await,
    );
    let id = job["job_id"].as_u64().unwrap();

    let dl = lock.heartbeat().await;
    lock.report(vec![JobResult {
        id,
        attempt: 1,
        outcome: JobOutcome::HardReset,
        detail: Some("reset button held 10 s".into()),
    }])
    .await;
    let got = ok_job(
        &d.command(
            ORG,
            request("g1", Some("d1"), json!({"type": "get_job", "job_id": id})),
        )
        .await,
    );
    assert_eq!(got["state"], "failed");
    assert_eq!(
        got["failure_reason"],
        "Lock was hard reset: reset button held 10 s"
    );
    assert_eq!(dl.jobs.len(), 1);

    // Recreate: pending again, attempt 2, delivered with the same PIN.
    let re = ok_job(
        &d.command(
            ORG,
            request(
                "r1",
                Some("d1"),
                json!({"type": "recreate_job", "job_id": id}),
            ),
        )
        .await,
    );
    assert_eq!(
        (re["state"].as_str(), re["attempt"].as_u64()),
        (Some("pending"), Some(2))
    );
    // The access-list path is closed now.
    let access = re["access_id"].as_str().unwrap();
    let del = d
        .command(
            ORG,
            request(
                "k2",
                Some("d1"),
                json!({"type": "delete_pin", "lock_id": "L1", "access_id": access, "pin_kind": "custom"}),
            ),
        )
        .await;
    assert_eq!(refused(&del), "recreated_already");

    let dl = lock.heartbeat().await;
    assert_eq!(dl.jobs.len(), 1);
    assert_eq!((dl.jobs[0].id, dl.jobs[0].attempt), (id, 2));
    assert_eq!(dl.jobs[0].pin.as_deref(), Some(PIN));
    // It fails again; a second recreate is refused.
    lock.report(vec![JobResult {
        id,
        attempt: 2,
        outcome: JobOutcome::SlotsFull,
        detail: None,
    }])
    .await;
    let second = d
        .command(
            ORG,
            request(
                "r2",
                Some("d1"),
                json!({"type": "recreate_job", "job_id": id}),
            ),
        )
        .await;
    assert_eq!(refused(&second), "recreated_once");

    // A pending job can be deleted until it is delivered.
    let other = ok_job(
        &d.command(
            ORG,
            request("k3", Some("d1"), create_pin("L1", "5555", now_s())),
        )
        .await,
    );
    let other_id = other["job_id"].as_u64().unwrap();
    let deleted = ok_job(
        &d.command(
            ORG,
            request(
                "x1",
                Some("d1"),
                json!({"type": "delete_job", "job_id": other_id}),
            ),
        )
        .await,
    );
    assert_eq!(deleted["state"], "deleted");
    assert!(lock.heartbeat().await.jobs.is_empty());

    let failed = d
        .command(
            ORG,
            request(
                "l1",
                Some("d1"),
                json!({"type": "list_jobs", "state": "failed"}),
            ),
        )
        .await;
    assert_eq!(failed["result"]["jobs"].as_array().unwrap().len(), 1);
    assert_pin_never_published(&d, PIN);
    d.assert_all_valid();
    d.close().await;
    h.stop().await;
}

async fn rules_are_enforced_with_the_rule_named(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let d = dashboard(&h).await;
    let now = now_s();
    let cases = [
        ("r1", Some("d1"), create_pin("L1", "12", now), "pin_digits"),
        (
            "r2",
            Some("d1"),
            create_pin("L1", "1234", now - 3600),
            "start_in_past",
        ),
        (
            "r3",
            Some("d1"),
            create_pin("L1", "1234", now + 15 * 86_400),
            "start_too_far",
        ),
        (
            "r4",
            None,
            create_pin("L1", "1234", now),
            "department_required",
        ),
        (
            "r5",
            Some("d9"),
            create_pin("L1", "1234", now),
            "department_does_not_hold_lock",
        ),
        (
            "r6",
            Some("d1"),
            create_pin("L2", "1234", now),
            "lock_in_several_departments",
        ),
        (
            "r7",
            Some("d1"),
            create_pin("L404", "1234", now),
            "unknown_lock",
        ),
        (
            "r8",
            Some("d1"),
            json!({"type": "set_intervals", "lock_id": "L1", "heartbeat_interval_h": 3}),
            "bad_interval",
        ),
        (
            "r9",
            Some("d1"),
            json!({"type": "recreate_job", "job_id": 999}),
            "unknown_job",
        ),
    ];
    for (key, dept, cmd, rule) in cases {
        let answer = d.command(ORG, request(key, dept, cmd)).await;
        assert_eq!(refused(&answer), rule, "{key}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }

    // 199 PINs, counting the ones still pending; the 200th is refused.
    for n in 0..199 {
        let pin = format!("{:06}", 100_000 + n);
        let answer = d
            .command(
                ORG,
                request(&format!("p{n}"), Some("d1"), create_pin("L1", &pin, now)),
            )
            .await;
        ok_job(&answer);
    }
    let answer = d
        .command(
            ORG,
            request("p199", Some("d1"), create_pin("L1", "999999", now)),
        )
        .await;
    assert_eq!(refused(&answer), "pin_limit");
    assert!(answer["error"]["message"].as_str().unwrap().contains("199"));

    // The same key again: the first answer, nothing new.
    let first = d
        .command(
            ORG,
            request("p0", Some("d1"), create_pin("L1", "100000", now)),
        )
        .await;
    assert_eq!(first["replayed"], true);
    assert_eq!(first["status"], "ok");
    // Listed in pages, newest first, each page one MQTT message.
    let (mut listed, mut before, mut page) = (Vec::new(), Value::Null, 0);
    loop {
        page += 1;
        let list = d
            .command(
                ORG,
                request(
                    &format!("l{page}"),
                    Some("d1"),
                    json!({"type": "list_jobs", "lock_id": "L1", "limit": 100, "before_job_id": before}),
                ),
            )
            .await;
        let jobs = list["result"]["jobs"].as_array().unwrap();
        assert!(!jobs.is_empty() && jobs.len() <= 100);
        listed.extend(jobs.iter().map(|j| j["job_id"].as_u64().unwrap()));
        before = list["result"]["next_before"].clone();
        if before.is_null() {
            break;
        }
    }
    assert_eq!(listed.len(), 199);
    assert!(
        listed.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    // The same key for another command is refused.
    let reused = d
        .command(
            ORG,
            request("p0", Some("d1"), create_pin("L1", "100000", now + 60)),
        )
        .await;
    assert_eq!(refused(&reused), "idempotency_key_reused");
    d.assert_all_valid();
    d.close().await;
    h.stop().await;
}

async fn many_jobs_go_in_budgeted_downlinks_and_intervals_change_at_the_heartbeat(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let d = dashboard(&h).await;
    let mut lock = JobLock::new(h.server.coap_addr, "L1").await;
    let now = now_s();
    let mut ids = Vec::new();
    for n in 0..12 {
        let job = ok_job(
            &d.command(
                ORG,
                request(
                    &format!("p{n}"),
                    Some("d1"),
                    create_pin("L1", &format!("{:08}", n), now),
                ),
            )
            .await,
        );
        ids.push(job["job_id"].as_u64().unwrap());
    }
    let set = ok_job(
        &d.command(
            ORG,
            request(
                "i1",
                Some("d1"),
                json!({"type": "set_intervals", "lock_id": "L1", "heartbeat_interval_h": 1}),
            ),
        )
        .await,
    );
    ids.push(set["job_id"].as_u64().unwrap());

    let mut seen = Vec::new();
    let mut dl = lock.heartbeat().await;
    assert!(dl.more, "12 PIN jobs do not fit 512 bytes");
    assert!(dl.jobs.len() < 13);
    let mut rounds = 0;
    while !dl.jobs.is_empty() {
        rounds += 1;
        assert!(rounds < 20);
        seen.extend(dl.jobs.iter().map(|j| j.id));
        let results = dl.jobs.iter().map(done).collect();
        dl = lock.report(results).await;
    }
    // Every job once, in creation order.
    assert_eq!(seen, ids);
    // The interval change is in force: the next heartbeat says 1 h.
    let dl = lock.heartbeat().await;
    assert_eq!(dl.heartbeat_interval.hours(), 1);
    assert!(dl.jobs.is_empty());
    d.close().await;
    h.stop().await;
}

async fn an_unanswered_delivery_is_sent_again_and_applied_once(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let d = dashboard(&h).await;
    let mut lock = JobLock::new(h.server.coap_addr, "L1").await;
    let job = ok_job(
        &d.command(
            ORG,
            request("k1", Some("d1"), create_pin("L1", PIN, now_s())),
        )
        .await,
    );
    let id = job["job_id"].as_u64().unwrap();
    // Delivered, but the lock's report never arrives.
    assert_eq!(lock.heartbeat().await.jobs.len(), 1);
    // Not deletable while in flight.
    let del = d
        .command(
            ORG,
            request(
                "x1",
                Some("d1"),
                json!({"type": "delete_job", "job_id": id}),
            ),
        )
        .await;
    assert_eq!(refused(&del), "in_flight");
    // The next heartbeat carries it again; the report completes it.
    let dl = lock.heartbeat().await;
    assert_eq!(dl.jobs.len(), 1);
    assert_eq!(dl.jobs[0].id, id);
    lock.report(vec![done(&dl.jobs[0])]).await;
    let got = ok_job(
        &d.command(
            ORG,
            request("g1", Some("d1"), json!({"type": "get_job", "job_id": id})),
        )
        .await,
    );
    assert_eq!(got["state"], "completed");
    assert_eq!(got["deliveries"], 2);
    d.close().await;
    h.stop().await;
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::Postgres).await })*
        }
    };
}

on_both_engines!(
    custom_pin_reaches_the_lock_at_its_heartbeat,
    hard_reset_fails_the_job_and_recreate_works_once,
    rules_are_enforced_with_the_rule_named,
    many_jobs_go_in_budgeted_downlinks_and_intervals_change_at_the_heartbeat,
    an_unanswered_delivery_is_sent_again_and_applied_once,
);
