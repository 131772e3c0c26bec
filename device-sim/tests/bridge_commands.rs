//! Bridges relaying the gateway's commands, on a real broker: Mosquitto at
//! 127.0.0.1:1883 (as `.ci/run` starts it), the test playing the gateway.
//! It protects commands under each bridge's context with its own sequence
//! numbers, publishes them on `br/{bridge}/cmd`, and verifies the job
//! reports the bridge publishes on `br/{bridge}/up/jr` as the gateway does.
//!
//! * A command is carried out once at the linked lock and reported; a
//!   replayed copy is dropped and counted; a job delivered again is
//!   answered from the lock's memory without being applied again; a command
//!   for a lock the bridge is not linked to is rejected.
//! * A bridge taken offline says so, hears no command, keeps its reports,
//!   and once back sends them and carries out what the broker kept for it.
//!
//! Mosquitto is shared with other test processes (and the gateway's tests,
//! whose gateways may refuse this run's reports as unknown devices on this
//! run's error topics), so every device id carries a random per-run tag,
//! the test subscribes to its own bridge's topics only, and asserts nothing
//! that such a refusal would change. Each test removes its devices'
//! persistent sessions from the broker when it ends.

mod common;

use common::server_context;
use device_sim::fleet::{generate, Fleet, FleetSpec};
use device_sim::run::{self, RunHandle, SimConfig};
use device_sim::{BleDelay, BridgeHandle, LockHandle, Reporting};
use lockfleet_oscore::{
    protect_request, protect_response, unprotect_request, InnerMessage, OscoreOption, PartialIv,
    RequestId, SecurityContext, CODE_CHANGED, CODE_POST,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use schemas::device::{
    encode, BridgeCommand, DeviceJob, JobAction, JobOutcome, JobReport, JobResult, PinType,
};
use schemas::security::{decode_protected, encode_protected};
use schemas::topic::down;
use schemas::{ActivityLogInterval, Downlink, HeartbeatInterval, LockState};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The shared broker, as `.ci/run` starts it (anonymous: the devices'
/// logins are accepted unchecked; OSCORE still protects every payload).
const MOSQUITTO_HOST: &str = "127.0.0.1";
const MOSQUITTO_PORT: u16 = 1883;

/// Longest wait for a connection, a report or a state: generous for a
/// loaded machine, never reached when the simulator works.
const WAIT: Duration = Duration::from_secs(15);
/// How long we watch to prove that nothing arrives: several times the
/// longest Bluetooth delay of these tests plus a broker round trip.
const QUIET: Duration = Duration::from_millis(800);
/// Pause between looks while waiting for a state.
const POLL: Duration = Duration::from_millis(20);

/// A random tag for this run's ids (hex: valid in device ids and topics).
fn tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Two bridges, each with its lock(s), every id tagged for this run.
fn tagged_fleet(seed: u64) -> Fleet {
    let mut fleet = generate(&FleetSpec {
        locks: 3,
        bridges: 2,
        orgs: 1,
        mqtt_share: 0.0,
        seed,
    })
    .unwrap();
    let t = tag();
    for b in &mut fleet.bridges {
        b.id = format!("{}-{t}", b.id);
    }
    for l in &mut fleet.locks {
        l.id = format!("{}-{t}", l.id);
        if let Some(b) = &mut l.bridge_id {
            *b = format!("{b}-{t}");
        }
    }
    fleet
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn job(id: u64, action: JobAction) -> DeviceJob {
    DeviceJob {
        id,
        attempt: 1,
        action,
        access: None,
        pin: None,
        pin_type: None,
        start: None,
        end: None,
        heartbeat_interval: None,
        activity_log_interval: None,
        issued: now_s() - 1,
    }
}

fn create_pin(id: u64, access: &str, digits: &str) -> DeviceJob {
    DeviceJob {
        access: Some(access.into()),
        pin: Some(digits.into()),
        pin_type: Some(PinType::Permanent),
        start: Some(now_s() - 60),
        ..job(id, JobAction::CreatePin)
    }
}

fn delete_pin(id: u64, access: &str) -> DeviceJob {
    DeviceJob {
        access: Some(access.into()),
        ..job(id, JobAction::DeletePin)
    }
}

/// The test's gateway for one bridge: its end of the bridge's context, its
/// own sequence numbers, and what the broker delivers on the bridge's job
/// report and status topics.
struct Gateway {
    bridge: String,
    ctx: SecurityContext,
    client: AsyncClient,
    next_seq: u64,
    reports: mpsc::UnboundedReceiver<Vec<u8>>,
    statuses: mpsc::UnboundedReceiver<String>,
}

impl Gateway {
    async fn connect(fleet: &Fleet, bridge: &str) -> Gateway {
        let secret = &fleet
            .bridges
            .iter()
            .find(|b| b.id == bridge)
            .unwrap()
            .master_secret;
        let ctx = server_context(&format!("br/{bridge}"), secret);
        let mut opts = MqttOptions::new(format!("gw-{bridge}"), MOSQUITTO_HOST, MOSQUITTO_PORT);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let jr_topic = format!("br/{bridge}/up/jr");
        let status_topic = down::bridge_status(bridge);
        client
            .subscribe(jr_topic.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .subscribe(status_topic.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (report_tx, reports) = mpsc::unbounded_channel();
        let (status_tx, statuses) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut subacks = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks == 2 {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == jr_topic => {
                        let _ = report_tx.send(p.payload.to_vec());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == status_topic => {
                        let _ = status_tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                    Ok(_) => {}
                    Err(_) if report_tx.is_closed() => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, ready)
            .await
            .expect("Mosquitto at 127.0.0.1:1883 answers")
            .unwrap();
        Gateway {
            bridge: bridge.to_string(),
            ctx,
            client,
            next_seq: 1,
            reports,
            statuses,
        }
    }

    /// `job` for `lock` as the gateway protects it: 0.02 POST with the
    /// bridge command, under the gateway's next sequence number, no kid
    /// context.
    fn seal(&mut self, lock: &str, job: DeviceJob) -> Vec<u8> {
        let command = BridgeCommand {
            lock_id: lock.to_string(),
            job,
        };
        let plaintext = InnerMessage::bare(CODE_POST, encode(&command))
            .encode()
            .unwrap();
        let piv = PartialIv::from_seq(self.next_seq).unwrap();
        self.next_seq += 1;
        let (p, _) = protect_request(&self.ctx, piv, &plaintext, false, &[]).unwrap();
        encode_protected(&p.option, &p.ciphertext)
    }

    async fn publish(&self, payload: Vec<u8>) {
        self.client
            .publish(
                down::bridge_command(&self.bridge),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    /// Protects and publishes `job` for `lock`; returns the bytes sent.
    async fn command(&mut self, lock: &str, job: DeviceJob) -> Vec<u8> {
        let payload = self.seal(lock, job);
        self.publish(payload.clone()).await;
        payload
    }

    /// The next job report, verified as the gateway verifies an uplink.
    async fn report(&mut self) -> (JobReport, RequestId) {
        let payload = tokio::time::timeout(WAIT, self.reports.recv())
            .await
            .expect("a job report")
            .unwrap();
        let (option, ciphertext) = decode_protected(&payload).expect("a protected message");
        let option = OscoreOption::decode(&option).unwrap();
        assert_eq!(
            option.kid_context.as_deref(),
            Some(format!("br/{}", self.bridge).as_bytes()),
            "protected under the bridge's context"
        );
        let (request, plaintext) = unprotect_request(&self.ctx, &option, &ciphertext, &[])
            .expect("the bridge's report verifies");
        let inner = InnerMessage::decode(&plaintext).unwrap();
        assert_eq!(inner.code, CODE_POST);
        (JobReport::decode(&inner.payload).unwrap(), request)
    }

    /// Answers a job report as the gateway does: a protected Downlink
    /// without jobs on `br/{bridge}/ack/{lock}/jr`.
    async fn ack(&self, report: &JobReport, request: RequestId) {
        let downlink = Downlink {
            server_time: now_s(),
            heartbeat_interval: HeartbeatInterval::DEFAULT,
            activity_log_interval: ActivityLogInterval::DEFAULT,
            seq: report.seq,
            jobs: vec![],
            more: false,
            next_heartbeat_at: None,
        };
        let plaintext = InnerMessage::bare(CODE_CHANGED, encode(&downlink))
            .encode()
            .unwrap();
        let sealed = protect_response(&self.ctx, request, None, &plaintext, &[]).unwrap();
        self.client
            .publish(
                down::bridge_job_report_ack(&self.bridge, &report.lock_id),
                QoS::AtLeastOnce,
                false,
                encode_protected(&sealed.option, &sealed.ciphertext),
            )
            .await
            .unwrap();
    }

    /// The next report, which must be the only result of job `id`, acked.
    async fn expect_result(&mut self, lock: &str, id: u64) -> JobResult {
        let (report, request) = self.report().await;
        assert_eq!(report.lock_id, lock);
        let [result] = report.results.as_slice() else {
            panic!("one result per command: {report:?}");
        };
        assert_eq!((result.id, result.attempt), (id, 1));
        let result = result.clone();
        self.ack(&report, request).await;
        result
    }

    /// Asserts that no job report arrives for a while.
    async fn expect_no_report(&mut self, what: &str) {
        if let Ok(Some(_)) = tokio::time::timeout(QUIET, self.reports.recv()).await {
            panic!("{what}: a job report arrived");
        }
    }

    /// Waits for `status` on `br/{bridge}/status`.
    async fn expect_status(&mut self, status: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.statuses.recv()).await {
                Ok(Some(s)) if s == status => return,
                Ok(Some(_)) => {}
                _ => panic!("no {status:?} on br/{}/status", self.bridge),
            }
        }
    }
}

fn done(id: u64) -> JobResult {
    JobResult {
        id,
        attempt: 1,
        outcome: JobOutcome::Done,
        detail: None,
    }
}

/// A run of `fleet` against Mosquitto in which locks report only when told
/// and nobody visits them.
async fn start(fleet: &Fleet, ble_delay: BleDelay) -> RunHandle {
    let cfg = SimConfig {
        gateway: MOSQUITTO_HOST.into(),
        mqtt_port: MOSQUITTO_PORT,
        speedup: 1.0,
        reporting: Reporting::OnDemand,
        visits_per_hour: Some(0.0),
        drain_timeout: Duration::ZERO,
        mqtt_ack_timeout: Duration::from_secs(10),
        ble_delay,
        ..SimConfig::default()
    };
    run::start(cfg, fleet.clone()).await.unwrap()
}

/// Waits until `check` holds of the bridge's status.
async fn until_bridge(
    bridge: &BridgeHandle,
    what: &str,
    check: impl Fn(&device_sim::BridgeStatus) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = bridge.status().await.unwrap();
        if check(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {status:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the lock's bolt is `state`.
async fn until_lock(lock: &LockHandle, state: LockState) {
    let deadline = Instant::now() + WAIT;
    while lock.status().await.unwrap().lock_state != state {
        assert!(Instant::now() < deadline, "the lock never became {state:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Ends the run and removes its bridges' persistent sessions from the
/// broker (a clean-session connection with the same client id does).
async fn finish(sim: RunHandle, fleet: &Fleet) {
    sim.stop();
    sim.finish().await.unwrap();
    for b in &fleet.bridges {
        let mut opts = MqttOptions::new(b.id.clone(), MOSQUITTO_HOST, MOSQUITTO_PORT);
        opts.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 10);
        let _ = tokio::time::timeout(WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_disconnect();
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_carries_out_each_command_once_and_reports_its_result() {
    let fleet = tagged_fleet(21);
    let bridge_id = fleet.bridges[0].id.clone();
    let linked = fleet.locks_of_bridge(&bridge_id).next().unwrap().id.clone();
    let other = fleet
        .locks_of_bridge(&fleet.bridges[1].id)
        .next()
        .unwrap()
        .id
        .clone();
    let mut gw = Gateway::connect(&fleet, &bridge_id).await;
    let delay = BleDelay::new(Duration::from_millis(20), Duration::from_millis(60)).unwrap();
    let sim = start(&fleet, delay).await;
    let bridge = sim.bridge(&bridge_id).unwrap();
    let lock = sim.lock(&linked).expect("a bridged lock has a handle");
    until_bridge(&bridge, "online", |s| s.online).await;
    assert_eq!(bridge.status().await.unwrap().locks.first(), Some(&linked));
    let before = lock.status().await.unwrap();
    assert_eq!(before.lock_state, LockState::Locked);

    // Unlock: done, reported under the lock's next report seq.
    let unlock = gw.command(&linked, job(1, JobAction::Unlock)).await;
    let (report, request) = gw.report().await;
    assert_eq!(
        report,
        JobReport {
            lock_id: linked.clone(),
            seq: before.counters.next_seq,
            results: vec![done(1)],
        }
    );
    gw.ack(&report, request).await;
    assert_eq!(lock.status().await.unwrap().lock_state, LockState::Unlocked);

    // The same protected bytes again: a replay, dropped unanswered.
    gw.publish(unlock).await;
    gw.expect_no_report("a replayed command").await;
    until_bridge(&bridge, "the replay counted", |s| s.commands_refused == 1).await;

    // A PIN, deleted, then the create again under a new sequence number
    // (its result was lost): the remembered result, and no PIN comes back.
    gw.command(&linked, create_pin(2, "acc-2", "482916")).await;
    assert_eq!(gw.expect_result(&linked, 2).await, done(2));
    assert_eq!(lock.status().await.unwrap().pin_accesses, vec!["acc-2"]);
    gw.command(&linked, delete_pin(3, "acc-2")).await;
    assert_eq!(gw.expect_result(&linked, 3).await, done(3));
    gw.command(&linked, create_pin(2, "acc-2", "482916")).await;
    assert_eq!(gw.expect_result(&linked, 2).await, done(2));
    let after = lock.status().await.unwrap();
    assert_eq!(after.pin_count, 0, "not applied twice");
    assert!(!lock.enter_pin("482916").await.unwrap());

    // A lock linked to another bridge.
    gw.command(&other, job(4, JobAction::Lock)).await;
    let (rejected, _) = gw.report().await;
    assert_eq!(rejected.lock_id, other);
    assert_eq!(
        rejected.results,
        vec![JobResult {
            id: 4,
            attempt: 1,
            outcome: JobOutcome::Rejected,
            detail: Some(format!("lock {other} is not linked to this bridge")),
        }]
    );

    let status = bridge.status().await.unwrap();
    assert_eq!(
        (
            status.commands_received,
            status.commands_refused,
            status.commands_applied,
            status.commands_repeated,
            status.commands_unlinked
        ),
        (6, 1, 3, 1, 1),
        "{status:?}"
    );
    let stats = sim.snapshot();
    assert_eq!(stats.bridge_commands_refused, 1, "{stats}");
    assert_eq!(
        stats.errors.get("bridge_command:replay"),
        Some(&1),
        "{stats}"
    );
    finish(sim, &fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_taken_offline_hears_nothing_keeps_its_reports_and_catches_up_when_back() {
    let fleet = tagged_fleet(22);
    let bridge_id = fleet.bridges[0].id.clone();
    let linked = fleet.locks_of_bridge(&bridge_id).next().unwrap().id.clone();
    let mut gw = Gateway::connect(&fleet, &bridge_id).await;
    // Long enough to take the bridge offline while the link works.
    let fixed = Duration::from_millis(300);
    let sim = start(&fleet, BleDelay::new(fixed, fixed).unwrap()).await;
    let bridge = sim.bridge(&bridge_id).unwrap();
    let lock = sim.lock(&linked).unwrap();
    until_bridge(&bridge, "online", |s| s.online).await;
    gw.expect_status("online").await;

    // An unlock reaches the bridge; it goes offline before the link is done.
    gw.command(&linked, job(1, JobAction::Unlock)).await;
    until_bridge(&bridge, "the command queued", |s| s.commands_queued == 1).await;
    bridge.go_offline().await.unwrap();
    gw.expect_status("offline").await;
    let offline = bridge.status().await.unwrap();
    assert!(!offline.online && offline.held_offline, "{offline:?}");

    // The lock is unlocked all the same; its report waits in the outbox.
    until_lock(&lock, LockState::Unlocked).await;
    until_bridge(&bridge, "the report kept", |s| s.outbox == 1).await;
    gw.expect_no_report("a bridge offline").await;

    // A command published now does not reach it: nothing is applied.
    gw.command(&linked, job(2, JobAction::Lock)).await;
    gw.expect_no_report("a command for a bridge offline").await;
    let still = bridge.status().await.unwrap();
    assert_eq!(still.commands_received, 1, "{still:?}");
    assert_eq!(lock.status().await.unwrap().lock_state, LockState::Unlocked);
    assert!(!still.online);

    // Back: `online`, the kept report, then the command the broker kept
    // for the bridge's persistent session, carried out now.
    bridge.go_online().await.unwrap();
    gw.expect_status("online").await;
    assert!(bridge.status().await.unwrap().online);
    // One report in flight at a time: each is answered as it comes.
    let mut results = Vec::new();
    for _ in 0..2 {
        let (report, request) = gw.report().await;
        assert_eq!(report.lock_id, linked);
        results.extend(report.results.iter().map(|r| (r.id, r.outcome)));
        gw.ack(&report, request).await;
    }
    results.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(results, vec![(1, JobOutcome::Done), (2, JobOutcome::Done)]);
    until_lock(&lock, LockState::Locked).await;
    until_bridge(&bridge, "every report settled", |s| s.outbox == 0).await;
    let end = bridge.status().await.unwrap();
    assert_eq!(
        (end.commands_received, end.commands_applied),
        (2, 2),
        "{end:?}"
    );

    // Offline twice, online twice: each answers at once the second time.
    bridge.go_offline().await.unwrap();
    bridge.go_offline().await.unwrap();
    gw.expect_status("offline").await;
    bridge.go_online().await.unwrap();
    bridge.go_online().await.unwrap();
    gw.expect_status("online").await;
    finish(sim, &fleet).await;
}
