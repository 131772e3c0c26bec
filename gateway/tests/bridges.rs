//! Jobs through bridges, with the simulator's bridges and locks, against the
//! real server over real sockets (the bridges on MQTT through the front,
//! every command and report OSCORE-protected; the dashboard's commands over
//! MQTT), on SQLite and PostgreSQL:
//!
//! * unlock through an online bridge: pending, delivered, completed within
//!   seconds, and the simulated lock is open;
//! * a Custom PIN through the bridge completes and opens the lock;
//! * the bridge goes offline: unlock is refused at once (`bridge_offline`),
//!   a PIN job stays pending, and reaches the lock once the bridge is back;
//! * a lock without a bridge: unlock refused (`no_bridge`);
//! * an unlock a bridge never answers is sent again on timeout, fails once
//!   its time to live has passed, and is never sent after.

mod common;

use common::{now_s, request, Dashboard, Engine, Harness, Options};
use device_sim::fleet::{generate, FleetSpec};
use device_sim::run::{self, SimConfig};
use device_sim::Reporting;
use schemas::LockState;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// "Within seconds": the simulated Bluetooth link takes 200 to 1 500 ms.
const SECONDS: u64 = 15;

fn create_pin(lock: &str, pin: &str) -> Value {
    json!({
        "type": "create_custom_pin",
        "lock_id": lock,
        "pin_name": "Courier",
        "pin": pin,
        "pin_type": "permanent",
        // A little in the past (the rule allows 60 s of skew), so the PIN
        // is valid on the lock's clock the moment it is stored.
        "start_s": now_s() - 30,
    })
}

/// The newest job event of `job_id`.
fn last_event(d: &Dashboard, job_id: u64) -> Option<Value> {
    d.with_suffix("/job")
        .into_iter()
        .rfind(|e| e["job"]["job_id"] == job_id)
}

async fn wait_state(d: &Dashboard, job_id: u64, state: &str) -> Value {
    d.wait_for(SECONDS, &format!("job {job_id} {state}"), |msgs| {
        msgs.iter().any(|(t, p)| {
            t.ends_with("/job")
                && serde_json::from_slice::<Value>(p)
                    .is_ok_and(|e| e["job"]["job_id"] == job_id && e["job"]["state"] == state)
        })
    })
    .await;
    last_event(d, job_id).unwrap()
}

async fn wait_connectivity(d: &Dashboard, bridge: &str, online: bool) {
    let suffix = format!("/bridge/{bridge}/connectivity");
    d.wait_for(
        SECONDS,
        &format!("bridge {bridge} online={online}"),
        |msgs| {
            msgs.iter()
                .rev()
                .find(|(t, _)| t.ends_with(&suffix))
                .is_some_and(|(_, p)| {
                    serde_json::from_slice::<Value>(p).is_ok_and(|e| e["online"] == online)
                })
        },
    )
    .await;
}

/// A bridge that logs in, says `online`, and counts the commands it gets
/// without ever answering one.
struct SilentBridge {
    client: rumqttc::AsyncClient,
    commands: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentBridge {
    fn commands(&self) -> usize {
        self.commands.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
    }
}

async fn silent_bridge(
    mqtt: std::net::SocketAddr,
    spec: &device_sim::fleet::BridgeSpec,
) -> SilentBridge {
    use rumqttc::{Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(spec.id.clone(), mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials(
        spec.id.clone(),
        schemas::security::mqtt_password(spec.master_secret.as_bytes()),
    );
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
    let commands = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    {
        let (client, commands, id) = (client.clone(), commands.clone(), spec.id.clone());
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .subscribe(format!("br/{id}/cmd"), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        client
                            .publish(format!("br/{id}/status"), QoS::AtLeastOnce, false, "online")
                            .await
                            .unwrap();
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/cmd") => {
                        // Protected: an OSCORE message, never plain CBOR.
                        assert_eq!(p.payload[0] >> 5, 4, "a protected-message array");
                        commands.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("the silent bridge is connected")
        .unwrap();
    SilentBridge { client, commands }
}

async fn jobs_go_through_bridges(engine: Engine) {
    let fleet = generate(&FleetSpec {
        locks: 8,
        bridges: 3,
        orgs: 1,
        mqtt_share: 0.0,
        seed: 23,
    })
    .unwrap();
    let mut csv = Vec::new();
    fleet.write_to(&mut csv).unwrap();
    let parsed =
        dispatcher::import::read_fleet(&csv[..], &dispatcher::Registry::default()).unwrap();
    // A bridged lock in at most one department (a Custom PIN's rule), and
    // a lock with no bridge.
    let bridged = parsed
        .locks
        .iter()
        .find(|l| l.record.bridge.is_some() && l.record.departments.len() <= 1)
        .expect("the fleet has a bridged lock in one department")
        .clone();
    let lone = parsed
        .locks
        .iter()
        .find(|l| l.record.bridge.is_none())
        .expect("the fleet has a lock without a bridge")
        .clone();
    // A second bridge with a lock, left out of the simulation.
    let silent_lock_rec = parsed
        .locks
        .iter()
        .find(|l| {
            l.record
                .bridge
                .as_ref()
                .is_some_and(|b| Some(b) != bridged.record.bridge.as_ref())
        })
        .expect("the fleet has a second bridge with a lock")
        .clone();
    let silent_lock = silent_lock_rec.record.id.to_string();
    let silent_dept = silent_lock_rec.record.departments.first().cloned();
    let silent_id = silent_lock_rec.record.bridge.as_ref().unwrap().to_string();
    let silent_spec = fleet
        .bridges
        .iter()
        .find(|b| b.id == silent_id)
        .unwrap()
        .clone();
    let mut simulated = fleet.clone();
    simulated.bridges.retain(|b| b.id != silent_id);
    simulated
        .locks
        .retain(|l| l.bridge_id.as_deref() != Some(silent_id.as_str()));
    let (lock_id, org) = (
        bridged.record.id.to_string(),
        bridged.record.org.to_string(),
    );
    let bridge_id = bridged.record.bridge.as_ref().unwrap().to_string();
    let dept = bridged.record.departments.first().map(String::as_str);

    let h = Harness::start_with(
        engine,
        &parsed,
        Options {
            // Short enough for the expiry to be seen here.
            bridge_action_ttl_secs: Some(4),
            bridge_timeout_ms: Some(1_500),
            ..Options::default()
        },
    )
    .await;
    let d = Dashboard::subscribe(h.server.mqtt_addr, &["events/v1/#", "rsp/v1/#"]).await;
    let sim = run::start(
        SimConfig {
            gateway: "127.0.0.1".into(),
            coap_port: h.server.coap_addr.port(),
            mqtt_port: h.server.mqtt_addr.port(),
            reporting: Reporting::OnDemand,
            visits_per_hour: Some(0.0),
            ack_timeout: Duration::from_millis(500),
            ..SimConfig::default()
        },
        simulated,
    )
    .await
    .unwrap();
    let lock = sim.lock(&lock_id).expect("the simulated lock");
    let bridge = sim.bridge(&bridge_id).expect("the simulated bridge");
    wait_connectivity(&d, &bridge_id, true).await;

    // Unlock through the online bridge: done within seconds.
    let asked = Instant::now();
    let answer = d
        .command(
            &org,
            request("u1", dept, json!({"type": "unlock", "lock_id": lock_id})),
        )
        .await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let job = &answer["result"]["job"];
    assert_eq!(job["state"], "pending", "{answer}");
    assert_eq!(job["kind"], "unlock");
    let expected = job["expected_delivery_ms"].as_u64().expect("due now");
    assert!(
        expected.abs_diff(now_s() * 1000) < 5_000,
        "expected now: {answer}"
    );
    let unlock_id = job["job_id"].as_u64().unwrap();
    let done = wait_state(&d, unlock_id, "completed").await;
    let took = asked.elapsed();
    assert_eq!(done["job"]["last_sync_by"], "bridge", "{done}");
    assert_eq!(
        lock.status().await.unwrap().lock_state,
        LockState::Unlocked,
        "the simulated lock is open"
    );
    eprintln!("unlock through the bridge took {took:?}");

    // A Custom PIN through the bridge opens the lock.
    let answer = d
        .command(&org, request("p1", dept, create_pin(&lock_id, "580213")))
        .await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let pin_job = answer["result"]["job"]["job_id"].as_u64().unwrap();
    wait_state(&d, pin_job, "completed").await;
    assert!(lock.enter_pin("580213").await.unwrap(), "the PIN opens");

    // The bridge goes offline: unlock is refused at once, a PIN waits.
    bridge.go_offline().await.unwrap();
    wait_connectivity(&d, &bridge_id, false).await;
    let refused = d
        .command(
            &org,
            request("u2", dept, json!({"type": "unlock", "lock_id": lock_id})),
        )
        .await;
    assert_eq!(refused["status"], "refused", "{refused}");
    assert_eq!(refused["error"]["rule"], "bridge_offline", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&bridge_id),
        "{refused}"
    );
    let answer = d
        .command(&org, request("p2", dept, create_pin(&lock_id, "7319")))
        .await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let waiting = answer["result"]["job"]["job_id"].as_u64().unwrap();
    assert!(
        answer["result"]["job"]["expected_delivery_ms"].is_null(),
        "no delivery time while the bridge is offline: {answer}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = d
        .command(
            &org,
            request("g1", dept, json!({"type": "get_job", "job_id": waiting})),
        )
        .await;
    assert_eq!(still["result"]["job"]["state"], "pending", "{still}");
    assert_eq!(still["result"]["job"]["deliveries"], 0, "{still}");
    assert!(
        !lock.enter_pin("7319").await.unwrap(),
        "not before delivery"
    );
    // Back online: the PIN reaches the lock.
    bridge.go_online().await.unwrap();
    wait_state(&d, waiting, "completed").await;
    assert!(
        lock.enter_pin("7319").await.unwrap(),
        "delivered after reconnect"
    );

    // A lock without a bridge: lock/unlock/sync have no route.
    let lone_dept = lone.record.departments.first().map(String::as_str);
    let refused = d
        .command(
            &lone.record.org.to_string(),
            request(
                "u3",
                lone_dept,
                json!({"type": "lock", "lock_id": lone.record.id.to_string()}),
            ),
        )
        .await;
    assert_eq!(refused["error"]["rule"], "no_bridge", "{refused}");

    // A bridge that says it is online and never answers (not simulated: a
    // bare MQTT client logged in as it): the unlock goes out, is tried
    // again on timeout, fails at its time to live, and is never sent after.
    let silent = silent_bridge(h.server.mqtt_addr, &silent_spec).await;
    wait_connectivity(&d, &silent_spec.id, true).await;
    let answer = d
        .command(
            &org,
            request(
                "u4",
                silent_dept.as_deref(),
                json!({"type": "unlock", "lock_id": silent_lock}),
            ),
        )
        .await;
    assert_eq!(answer["status"], "ok", "{answer}");
    let unanswered = answer["result"]["job"]["job_id"].as_u64().unwrap();
    let failed = wait_state(&d, unanswered, "failed").await;
    assert!(
        failed["job"]["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("Not delivered in time"),
        "{failed}"
    );
    let sent = silent.commands();
    assert!(
        (2..=3).contains(&sent),
        "sent, then sent again on timeout until the time to live: {sent}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(silent.commands(), sent, "never sent after it failed");
    silent.close().await;

    // Nothing the dashboard saw carries a PIN.
    for (topic, payload) in d.snapshot() {
        let text = String::from_utf8_lossy(&payload);
        assert!(
            !text.contains("580213") && !text.contains("\"7319\""),
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
async fn sqlite_jobs_go_through_bridges() {
    jobs_go_through_bridges(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_jobs_go_through_bridges() {
    jobs_go_through_bridges(Engine::Postgres).await
}
