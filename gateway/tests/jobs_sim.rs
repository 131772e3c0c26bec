//! The guide's job flows with the simulator's lock, against the real server
//! over real sockets (OSCORE-protected CoAP, the dashboard's commands over
//! MQTT), on SQLite and PostgreSQL: a Custom PIN created on the dashboard is
//! pending, reaches the lock at its heartbeat, completes, and then opens the
//! simulated lock; a hard reset wipes the lock and fails the job issued
//! before it with the reason; the recreated job completes and its PIN opens.

mod common;

use common::{now_s, request, Dashboard, Engine, Harness};
use device_sim::fleet::{generate, FleetSpec};
use device_sim::run::{self, SimConfig};
use device_sim::Reporting;
use serde_json::{json, Value};
use std::time::Duration;

const TALK: Duration = Duration::from_secs(20);

fn create_pin(lock: &str, pin: &str) -> Value {
    json!({
        "type": "create_custom_pin",
        "lock_id": lock,
        "pin_name": "Cleaner",
        "pin": pin,
        "pin_type": "permanent",
        "start_s": now_s(),
    })
}

async fn job_state(d: &Dashboard, org: &str, dept: Option<&str>, key: &str, id: u64) -> Value {
    let got = d
        .command(
            org,
            request(key, dept, json!({"type": "get_job", "job_id": id})),
        )
        .await;
    assert_eq!(got["status"], "ok", "{got}");
    got["result"]["job"].clone()
}

async fn pins_open_the_simulated_lock_and_hard_resets_fail_jobs(engine: Engine) {
    let fleet = generate(&FleetSpec {
        locks: 6,
        bridges: 0,
        orgs: 1,
        mqtt_share: 0.0,
        seed: 17,
    })
    .unwrap();
    let mut csv = Vec::new();
    fleet.write_to(&mut csv).unwrap();
    let parsed =
        dispatcher::import::read_fleet(&csv[..], &dispatcher::Registry::default()).unwrap();
    // An NB-IoT lock in at most one department (a Custom PIN's rule).
    let rec = parsed
        .locks
        .iter()
        .find(|l| l.record.model.is_nb_iot() && l.record.departments.len() <= 1)
        .expect("the fleet has an NB-IoT lock in one department")
        .clone();
    let (lock_id, org) = (rec.record.id.to_string(), rec.record.org.to_string());
    let dept = rec.record.departments.first().map(String::as_str);

    let h = Harness::start(engine, &parsed).await;
    let d = Dashboard::subscribe(h.server.mqtt_addr, &["events/v1/#", "rsp/v1/#"]).await;
    let sim = run::start(
        SimConfig {
            gateway: "127.0.0.1".into(),
            coap_port: h.server.coap_addr.port(),
            mqtt_port: h.server.mqtt_addr.port(),
            reporting: Reporting::OnDemand,
            visits_per_hour: Some(0.0),
            ack_timeout: Duration::from_millis(300),
            ..SimConfig::default()
        },
        fleet.clone(),
    )
    .await
    .unwrap();
    let lock = sim.lock(&lock_id).expect("the simulated lock");

    // Create -> pending -> heartbeat -> completed -> the PIN opens the lock.
    let answer = d
        .command(&org, request("k1", dept, create_pin(&lock_id, "2468013")))
        .await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let first = answer["result"]["job"]["job_id"].as_u64().unwrap();
    assert_eq!(answer["result"]["job"]["state"], "pending");
    assert!(
        !lock.enter_pin("2468013").await.unwrap(),
        "not before the job"
    );
    let talk = tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .expect("the lock's conversation ends")
        .unwrap();
    assert_eq!(talk.results().count(), 1, "one job applied");
    assert_eq!(
        job_state(&d, &org, dept, "g1", first).await["state"],
        "completed"
    );
    assert!(
        lock.enter_pin("2468013").await.unwrap(),
        "the PIN opens the lock"
    );
    assert!(
        !lock.enter_pin("1111").await.unwrap(),
        "a wrong PIN does not"
    );

    // A job issued, then the lock hard reset: the job fails with the reason.
    let answer = d
        .command(&org, request("k2", dept, create_pin(&lock_id, "97531")))
        .await;
    let second = answer["result"]["job"]["job_id"].as_u64().unwrap();
    lock.hard_reset_as_of(now_s() + 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .expect("the lock's conversation ends")
        .unwrap();
    let failed = job_state(&d, &org, dept, "g2", second).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("Lock was hard reset"),
        "{failed}"
    );
    assert!(
        !lock.enter_pin("2468013").await.unwrap(),
        "the hard reset wiped the first PIN"
    );

    // Recreate: pending, delivered at the next heartbeat, completed, opens.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let re = d
        .command(
            &org,
            request(
                "r1",
                dept,
                json!({"type": "recreate_job", "job_id": second}),
            ),
        )
        .await;
    assert_eq!(re["result"]["job"]["attempt"], 2, "{re}");
    tokio::time::timeout(TALK, lock.heartbeat_now())
        .await
        .expect("the lock's conversation ends")
        .unwrap();
    assert_eq!(
        job_state(&d, &org, dept, "g3", second).await["state"],
        "completed"
    );
    assert!(
        lock.enter_pin("97531").await.unwrap(),
        "the recreated PIN opens"
    );
    let again = d
        .command(
            &org,
            request(
                "r2",
                dept,
                json!({"type": "recreate_job", "job_id": second}),
            ),
        )
        .await;
    assert_eq!(again["error"]["rule"], "not_failed", "{again}");

    // Nothing the dashboard saw carries a PIN.
    for (topic, payload) in d.snapshot() {
        let text = String::from_utf8_lossy(&payload);
        assert!(
            !text.contains("2468013") && !text.contains("97531"),
            "{topic} carries PIN digits"
        );
    }
    d.assert_all_valid();
    sim.stop();
    let _ = sim.finish().await;
    d.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pins_open_the_simulated_lock_and_hard_resets_fail_jobs() {
    pins_open_the_simulated_lock_and_hard_resets_fail_jobs(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pins_open_the_simulated_lock_and_hard_resets_fail_jobs() {
    pins_open_the_simulated_lock_and_hard_resets_fail_jobs(Engine::Postgres).await
}
