//! The gateway on a real external broker: Mosquitto at 127.0.0.1:1883 (as
//! `.ci/run` starts it) and PostgreSQL, the "real engines at scale" shape of
//! DESIGN.md: instances that share a database and a broker, and split the
//! device topics through a shared subscription (`$share/{group}/...`).
//!
//! * Two instances answer, store and announce every report exactly once,
//!   and both take a share of the load.
//! * A restarted instance answers the reports devices published while it was
//!   down (the persistent session is for that), and loses none afterwards.
//! * An unreachable broker: the server starts, is not ready, keeps serving
//!   CoAP, and becomes ready and announces what it stored once the broker is
//!   reachable.
//!
//! Each instance's MQTT client id is its `mqtt_client_id` setting (default
//! `lockfleet-gateway-{hostname}`): the same across its restarts, so a
//! restarted instance resumes its persistent session, and distinct per
//! instance, so instances never take each other's session over. Every
//! instance here is given its own id explicitly (`Settings::mqtt_client_id`,
//! `--mqtt-client-id`), and a restarted one the id it had. Instances are
//! `gateway serve` processes where `/metrics` matters: the metrics recorder is
//! global, so gateways in one process share one `/metrics`.
//!
//! Mosquitto is shared by every test run and possibly by other processes on
//! the machine, so every id here (org, locks, shared group, MQTT client ids)
//! carries a random per-run tag, the dashboard subscribes only to this run's
//! org, and only this run's devices' topics are asserted on. The gateway
//! subscribes to every device topic (`lk/+/up/+`, ...): other users' reports
//! reach it as unknown devices and are refused on their own error topics,
//! and this run's reports reach other users' gateways (other test processes
//! under `cargo nextest`, which runs each test in a process of its own) and
//! are refused as unknown devices on this run's error topics, so assertions
//! on refusals leave `unknown_device` out ([`Lock::refusals`]). The tests of
//! one test process run one at a time ([`SERIAL`]), and each removes the
//! gateways' persistent sessions from the broker when it ends ([`Sessions`]).

mod common;

use coap_lite::{MessageClass, RequestType, ResponseType};
use common::{CoapClient, Dashboard, OscoreDevice};
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{LockRecord, ReportPath};
use dispatcher::{LockId, OrgId};
use gateway::config::{Config, Settings};
use gateway::server::Running;
use gateway::store::testing::{registration, TestDb};
use gateway::store::Store;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use schemas::device::encode;
use schemas::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The shared broker, as `.ci/run` starts it.
const MOSQUITTO_HOST: &str = "127.0.0.1";
const MOSQUITTO_PORT: u16 = 1883;

/// Locks of the two-instance test: enough that a shared subscription's
/// round robin gives both instances work many times over. Odd, so that
/// Mosquitto's round robin sends a lock's consecutive heartbeats (published
/// in rounds, one per lock) to alternate instances: with an even number per
/// round, each lock would stick to one instance, and the test would never
/// see one lock's reports handled by both.
const FLEET_SIZE: usize = 21;
/// Heartbeats, and activity-log batches, each lock of the two-instance test publishes.
const REPORTS_PER_LOCK: u32 = 10;
/// Locks of the restart test.
const RESTART_FLEET_SIZE: usize = 5;
/// Heartbeats each lock publishes once the restarted instance is up.
const REPORTS_AFTER_RESTART: u32 = 4;

/// Longest wait for answers, events, readiness or an exit: generous for a
/// loaded 2-core machine, never reached when the gateway works.
const WAIT: Duration = Duration::from_secs(20);
/// How long we watch to prove that nothing more arrives (or that a state
/// holds). Answers through Mosquitto on loopback take milliseconds.
const QUIET: Duration = Duration::from_millis(300);
/// Pause between looks while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Serialises the tests of this file: they share Mosquitto, and in one test
/// process (`cargo test`) in-process gateways would share one `/metrics`.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn mosquitto() -> SocketAddr {
    SocketAddr::new(MOSQUITTO_HOST.parse().unwrap(), MOSQUITTO_PORT)
}

/// A random tag for this run's ids (hex digits: valid in device ids, topics
/// and group names).
fn tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// This run's org, shared group, INB1 locks and gateway client ids.
struct Run {
    tag: String,
    org: String,
    group: String,
    locks: Vec<String>,
}

impl Run {
    fn new(locks: usize) -> Run {
        let t = tag();
        Run {
            org: format!("org-{t}"),
            group: format!("gw-{t}"),
            locks: (0..locks).map(|i| format!("L{i}-{t}")).collect(),
            tag: t,
        }
    }

    /// The MQTT client id of this run's gateway `instance` (`a`, `b`, ...),
    /// the same for every start of that instance.
    fn client_id(&self, instance: &str) -> String {
        format!("lockfleet-gateway-{}-{instance}", self.tag)
    }

    /// The fleet; lock `i` reports over `path(i)`.
    fn fleet(&self, path: impl Fn(usize) -> ReportPath) -> ParsedFleet {
        ParsedFleet {
            locks: self
                .locks
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    registration(LockRecord {
                        id: LockId::new(id),
                        model: LockModel::Inb1,
                        org: OrgId::new(&self.org),
                        departments: vec!["dept-1".into()].into(),
                        time_zone: "Asia/Singapore".into(),
                        heartbeat_interval: HeartbeatInterval::from_hours(12).unwrap(),
                        activity_log_interval: ActivityLogInterval::from_minutes(30).unwrap(),
                        bridge: None,
                        path: path(i),
                    })
                })
                .collect(),
            bridges: vec![],
            ..ParsedFleet::default()
        }
    }

    /// A fresh PostgreSQL database with this run's fleet, and a store on it.
    async fn database(&self, path: impl Fn(usize) -> ReportPath) -> (TestDb, Store) {
        let db = TestDb::postgres().await;
        let store = Store::open(&db.url).await.unwrap();
        gateway::store::testing::register(&store, &self.fleet(path)).await;
        (db, store)
    }

    /// The dashboard's filter: this run's org only.
    fn events(&self) -> String {
        format!("{}/{}/#", topic::EVENTS_PREFIX, self.org)
    }

    /// `(lock, seq)` for every lock and every seq in `seqs`, in the store's
    /// audit order (lock id, then seq).
    fn keys(&self, seqs: impl Iterator<Item = u32> + Clone) -> Vec<(String, u32)> {
        let mut keys: Vec<(String, u32)> = self
            .locks
            .iter()
            .flat_map(|l| seqs.clone().map(move |s| (l.clone(), s)))
            .collect();
        keys.sort();
        keys
    }
}

/// An INB1 heartbeat with a low battery. The lock state alternates with the
/// seq (odd locked, even unlocked), so in seq order every heartbeat is a
/// state change.
fn heartbeat(lock: &str, seq: u32) -> Heartbeat {
    Heartbeat {
        lock_id: lock.into(),
        seq,
        device_time: 1_790_000_000 + u64::from(seq),
        battery: Battery::Level(BatteryLevel::Low),
        signal_db: 6,
        signal_quality: SignalQuality::Poor,
        carrier: "Singtel".into(),
        channel: None,
        lock_state: lock_state(seq),
        door_state: DoorState::Closed,
        firmware: "1.4.2".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
    }
}

fn lock_state(seq: u32) -> LockState {
    if seq % 2 == 1 {
        LockState::Locked
    } else {
        LockState::Unlocked
    }
}

/// Batch `seq` carries one entry, also numbered `seq`.
fn batch(lock: &str, seq: u32) -> ActivityLogBatch {
    ActivityLogBatch {
        lock_id: lock.into(),
        seq,
        events: vec![ActivityEvent {
            seq,
            time: 1_790_000_000 + u64::from(seq),
            kind: ActivityKind::UnlockedPin,
            actor: Some(format!("slot-{seq}")),
        }],
    }
}

// ---------------------------------------------------------------------------
// Devices

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT-modem lock's session on Mosquitto (client id = lock id, unique
/// per run), subscribed to its answers and its error topic.
struct Lock {
    id: String,
    client: AsyncClient,
    received: Received,
    task: JoinHandle<()>,
}

impl Lock {
    async fn connect(id: &str) -> Lock {
        let mut opts = MqttOptions::new(id, MOSQUITTO_HOST, MOSQUITTO_PORT);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let filters = vec![
            SubscribeFilter::new(format!("lk/{id}/ack/+"), QoS::AtLeastOnce),
            SubscribeFilter::new(topic::down::error(&format!("lk/{id}")), QoS::AtLeastOnce),
        ];
        let task = {
            let (client, received) = (client.clone(), received.clone());
            tokio::spawn(async move {
                let mut subscribed_tx = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client.try_subscribe_many(filters.clone()).unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => received
                            .lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec())),
                        // Written: the session is over.
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        tokio::time::timeout(WAIT, subscribed_rx)
            .await
            .unwrap_or_else(|_| panic!("lock {id} connected to Mosquitto and subscribed"))
            .unwrap();
        Lock {
            id: id.to_string(),
            client,
            received,
            task,
        }
    }

    /// Publish on `lk/{id}/up/{kind}` at QoS 1, as the modem does.
    async fn publish(&self, kind: &str, payload: Vec<u8>) {
        self.client
            .publish(
                format!("lk/{}/up/{kind}", self.id),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    async fn heartbeat(&self, seq: u32) {
        self.publish("hb", encode(&heartbeat(&self.id, seq))).await;
    }

    async fn log(&self, seq: u32) {
        self.publish("log", encode(&batch(&self.id, seq))).await;
    }

    fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The seqs the heartbeat answers received so far answer, sorted.
    fn heartbeat_answers(&self) -> Vec<u32> {
        let mut seqs: Vec<u32> = self
            .on(&topic::down::lock_heartbeat_ack(&self.id))
            .iter()
            .map(|p| Downlink::decode(p).unwrap().seq)
            .collect();
        seqs.sort();
        seqs
    }

    /// The seqs the activity-log answers received so far answer, sorted.
    fn log_answers(&self) -> Vec<u32> {
        let mut seqs: Vec<u32> = self
            .on(&topic::down::lock_log_ack(&self.id))
            .iter()
            .map(|p| LogAck::decode(p).unwrap().seq)
            .collect();
        seqs.sort();
        seqs
    }

    /// Refusals on the lock's error topic, except `unknown_device`: this
    /// run's gateways know every lock of the run, and the gateways of other
    /// runs on the broker refuse it as unknown. A report one of ours refused
    /// for that reason would also go unanswered, which the tests assert on.
    fn refusals(&self) -> Vec<String> {
        self.on(&topic::down::error(&format!("lk/{}", self.id)))
            .iter()
            .filter(|p| {
                serde_json::from_slice::<serde_json::Value>(p)
                    .map_or(true, |e| e["reason"] != "unknown_device")
            })
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

async fn connect_all(locks: &[String]) -> Vec<Lock> {
    let mut connected = Vec::new();
    for id in locks {
        connected.push(Lock::connect(id).await);
    }
    connected
}

async fn close_all(locks: Vec<Lock>) {
    for l in locks {
        l.close().await;
    }
}

/// Every lock's answers: `lock -> (heartbeat seqs, log seqs)`, for messages.
fn answers(locks: &[Lock]) -> BTreeMap<String, (Vec<u32>, Vec<u32>)> {
    locks
        .iter()
        .map(|l| (l.id.clone(), (l.heartbeat_answers(), l.log_answers())))
        .collect()
}

/// Wait until `done` holds, or [`WAIT`] passed; returns whether it held.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `(lock_id, seq)` of every event on topics ending with `/{kind}`, sorted.
fn event_keys(dash: &Dashboard, kind: &str) -> Vec<(String, u32)> {
    let mut keys: Vec<(String, u32)> = dash
        .with_suffix(&format!("/{kind}"))
        .iter()
        .map(|e| {
            (
                e["lock_id"].as_str().unwrap().to_string(),
                e["seq"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    keys.sort();
    keys
}

// ---------------------------------------------------------------------------
// Gateways

fn settings(
    database_url: &str,
    dir: &Path,
    broker: &str,
    group: &str,
    client_id: &str,
) -> Settings {
    Settings {
        coap_listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        mqtt_broker: Some(broker.into()),
        mqtt_shared_group: Some(group.into()),
        mqtt_client_id: Some(client_id.into()),
        database_url: Some(database_url.into()),
        data_dir: Some(dir.to_path_buf()),
        registry_refresh_secs: Some(1),
        server_key_file: Some(gateway::store::testing::server_key_file(dir)),
        // The devices here publish plain CBOR: these tests hold the
        // behaviour with an external broker (sessions, shared groups,
        // outages); payload protection is held by `mqtt_secure.rs`.
        insecure_dev: true,
        ..Default::default()
    }
}

fn mosquitto_settings(database_url: &str, dir: &Path, group: &str, client_id: &str) -> Settings {
    settings(
        database_url,
        dir,
        &format!("{MOSQUITTO_HOST}:{MOSQUITTO_PORT}"),
        group,
        client_id,
    )
}

/// A gateway instance with its configured MQTT client id.
struct Gateway {
    client_id: String,
    instance: Instance,
}

/// Where the instance runs: in this process, or a `gateway serve` process as
/// it is deployed (with its own `/metrics`).
enum Instance {
    InProcess(Running),
    Process(GatewayProcess),
}

impl Gateway {
    async fn in_process(settings: Settings) -> Gateway {
        let config = Config::from_settings(settings).unwrap();
        let client_id = config.mqtt_client_id.clone();
        let running = gateway::server::start(config).await.unwrap();
        Gateway {
            client_id,
            instance: Instance::InProcess(running),
        }
    }

    fn http(&self) -> SocketAddr {
        match &self.instance {
            Instance::InProcess(r) => r.http_addr,
            Instance::Process(p) => p.http,
        }
    }

    /// The MQTT client id the gateway connects with: the one it was given.
    fn client_id(&self) -> String {
        self.client_id.clone()
    }

    async fn stop(self) {
        match self.instance {
            Instance::InProcess(r) => r.shutdown().await,
            Instance::Process(p) => p.stop().await,
        }
    }
}

/// A `gateway serve` process on Mosquitto. Dropping it kills the process.
struct GatewayProcess {
    child: Child,
    pid: u32,
    log: Arc<Mutex<Vec<String>>>,
    http: SocketAddr,
}

impl GatewayProcess {
    async fn start(database_url: &str, dir: &Path, group: &str, client_id: &str) -> Gateway {
        let broker = format!("{MOSQUITTO_HOST}:{MOSQUITTO_PORT}");
        let key_file = gateway::store::testing::server_key_file(dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LOCKFLEET_") {
                cmd.env_remove(key);
            }
        }
        cmd.args([
            "serve",
            "--coap-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-broker",
            &broker,
            "--mqtt-shared-group",
            group,
            "--mqtt-client-id",
            client_id,
            "--database-url",
            database_url,
            "--data-dir",
            dir.to_str().expect("temporary paths are UTF-8"),
            "--server-key-file",
            key_file.to_str().expect("temporary paths are UTF-8"),
            "--insecure-dev",
        ])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().expect("the gateway binary starts");
        let pid = child.id().expect("a started child has a pid");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut p = GatewayProcess {
            child,
            pid,
            log,
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        // HTTP is bound last: once it is logged, the server is up.
        let line = p.wait_for_line("metrics and health on http://").await;
        p.http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr=HOST:PORT in {line:?}"));
        // The session `Sessions` removes must be the one the process uses.
        let line = p.wait_for_line("MQTT client id").await;
        assert!(
            line.split_whitespace()
                .any(|w| w == format!("client_id={client_id}")),
            "the process connects as {client_id}: {line:?}"
        );
        Gateway {
            client_id: client_id.to_string(),
            instance: Instance::Process(p),
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gateway exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not log {needle:?} within {WAIT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM (with kill(1): the workspace forbids `unsafe`), then a drain
    /// and a clean exit.
    async fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("gateway did not exit:\n{}", self.log_text()))
            .expect("waiting for the gateway");
        assert_eq!(status.code(), Some(0), "{}", self.log_text());
    }
}

async fn readyz(http: SocketAddr) -> (u16, String) {
    common::http_get(http, "/readyz")
        .await
        .unwrap_or((0, String::new()))
}

async fn wait_ready(http: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = readyz(http).await;
        if code == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{http} not ready within {WAIT:?}: {code} {body}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The value of one series (`name{labels}`) in `/metrics`, 0 if absent.
fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The gateways' persistent sessions on Mosquitto. They outlive the gateways
/// (that is what they are for), so a test removes them when it ends, and
/// Drop does it for a test that failed before that.
#[derive(Default)]
struct Sessions(Vec<String>);

impl Sessions {
    fn add(&mut self, client_id: String) {
        if !self.0.contains(&client_id) {
            self.0.push(client_id);
        }
    }

    async fn forget(mut self) {
        for id in std::mem::take(&mut self.0) {
            forget_session(&id).await.unwrap();
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.0);
        if ids.is_empty() {
            return;
        }
        // Drop cannot await: a runtime of its own, on a thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    for id in ids {
                        let _ = forget_session(&id).await;
                    }
                });
            }
        })
        .join();
    }
}

/// Remove a persistent session from Mosquitto: a clean-session CONNECT with
/// its client id discards what the broker kept for it (MQTT 3.1.1 §3.1.2.4).
async fn forget_session(client_id: &str) -> Result<(), String> {
    let mut opts = MqttOptions::new(client_id, MOSQUITTO_HOST, MOSQUITTO_PORT);
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    let forget = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.try_disconnect().map_err(|e| e.to_string())?
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("removing session {client_id}: {e}")),
            }
        }
    };
    tokio::time::timeout(WAIT, forget)
        .await
        .unwrap_or_else(|_| Err(format!("removing session {client_id} timed out")))
}

// ---------------------------------------------------------------------------
// Two instances

/// The rule-derived events (state, battery-low) the dashboard saw are right
/// whichever instance handled which heartbeat: each commit compares with the
/// state stored in the database, its lock's row locked. A lock's heartbeats
/// may commit out of seq order across instances (a late, older one causes no
/// event), so the number of state events varies; what must hold is that, per
/// lock, the state events in seq order form a chain (each one's previous
/// state is the one before's new state, and each is a real change) ending in
/// the lock's newest state, and that each lock's low battery is announced
/// once. Returns a summary for the log.
fn assert_rule_events_consistent(dash: &Dashboard, locks: &[String], reports: u32) -> String {
    let mut chains: BTreeMap<String, Vec<(u32, serde_json::Value, serde_json::Value)>> =
        BTreeMap::new();
    for e in dash.with_suffix("/state") {
        let lock = e["lock_id"].as_str().unwrap().to_string();
        let seq = e["seq"].as_u64().unwrap() as u32;
        chains.entry(lock).or_default().push((
            seq,
            e["previous_lock_state"].clone(),
            e["lock_state"].clone(),
        ));
    }
    let mut state_events = 0;
    for lock in locks {
        let chain = chains
            .get_mut(lock)
            .unwrap_or_else(|| panic!("{lock}: no state event at all"));
        chain.sort_by_key(|(seq, ..)| *seq);
        state_events += chain.len();
        let mut previous = serde_json::Value::Null;
        let mut last_seq = 0;
        for (seq, from, to) in chain.iter() {
            assert!(
                *seq > last_seq,
                "{lock}: one state event per heartbeat at most: {chain:?}"
            );
            assert_eq!(
                from, &previous,
                "{lock}: seq {seq} names the state stored before it: {chain:?}"
            );
            assert_ne!(from, to, "{lock}: seq {seq} is a real change: {chain:?}");
            previous = to.clone();
            last_seq = *seq;
        }
        assert_eq!(
            previous,
            serde_json::to_value(lock_state(reports)).unwrap(),
            "{lock}: the chain ends in the newest heartbeat's state: {chain:?}"
        );
    }
    let mut low_per_lock: BTreeMap<String, usize> = BTreeMap::new();
    for e in dash.with_suffix("/battery-low") {
        *low_per_lock
            .entry(e["lock_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for lock in locks {
        assert_eq!(
            low_per_lock.get(lock),
            Some(&1),
            "{lock}: its low battery is announced once"
        );
    }
    format!(
        "state events: {state_events} (one instance in seq order: {}), each lock's a consistent chain; \
         battery-low: one per lock",
        locks.len() as u32 * reports
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_postgres_and_mosquitto_store_and_answer_each_report_once() {
    let _serial = SERIAL.lock().await;
    let run = Run::new(FLEET_SIZE);
    let (db, store) = run.database(|_| ReportPath::Mqtt).await;
    let mut sessions = Sessions::default();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = GatewayProcess::start(&db.url, dir_a.path(), &run.group, &run.client_id("a")).await;
    sessions.add(a.client_id());
    let b = GatewayProcess::start(&db.url, dir_b.path(), &run.group, &run.client_id("b")).await;
    sessions.add(b.client_id());
    wait_ready(a.http()).await;
    wait_ready(b.http()).await;
    let dash = Dashboard::subscribe(mosquitto(), &[&run.events()]).await;
    let locks = connect_all(&run.locks).await;

    let started = Instant::now();
    for seq in 1..=REPORTS_PER_LOCK {
        for lock in &locks {
            lock.heartbeat(seq).await;
        }
    }
    for seq in 1..=REPORTS_PER_LOCK {
        for lock in &locks {
            lock.log(seq).await;
        }
    }
    let every: Vec<u32> = (1..=REPORTS_PER_LOCK).collect();
    let n = REPORTS_PER_LOCK as usize;
    let all_answered = eventually(|| {
        locks
            .iter()
            .all(|l| l.heartbeat_answers().len() >= n && l.log_answers().len() >= n)
    })
    .await;
    assert!(all_answered, "every report answered: {:?}", answers(&locks));
    let answered_in = started.elapsed();
    let total = FLEET_SIZE * n;
    let all_announced = eventually(|| {
        dash.with_suffix("/heartbeat").len() >= total
            && dash.with_suffix("/activity").len() >= total
    })
    .await;
    assert!(
        all_announced,
        "every report announced: {} heartbeat and {} activity events of {total}",
        dash.with_suffix("/heartbeat").len(),
        dash.with_suffix("/activity").len()
    );
    tokio::time::sleep(QUIET).await;

    for lock in &locks {
        assert_eq!(
            (lock.heartbeat_answers(), lock.log_answers()),
            (every.clone(), every.clone()),
            "{}: exactly one answer per heartbeat and per batch",
            lock.id
        );
        assert_eq!(
            lock.refusals(),
            Vec::<String>::new(),
            "{}: no refusals by this run's gateways",
            lock.id
        );
    }
    let audit = store.audit().await.unwrap();
    let keys = run.keys(1..=REPORTS_PER_LOCK);
    assert_eq!(audit.heartbeats, keys, "every heartbeat stored once");
    assert_eq!(audit.events, keys, "every activity entry stored once");
    assert_eq!(
        event_keys(&dash, "heartbeat"),
        keys,
        "every heartbeat announced exactly once"
    );
    assert_eq!(
        event_keys(&dash, "activity"),
        keys,
        "every batch announced exactly once"
    );
    for e in dash.with_suffix("/activity") {
        assert_eq!(e["events"].as_array().map(Vec::len), Some(1), "{e}");
        assert_eq!(e["events"][0]["seq"], e["seq"], "{e}");
    }
    dash.assert_all_valid();

    // Both did work: the shared subscription spread the reports. Received
    // counts every message the instance got (other users' too); committed
    // counts only new rows of our database, so the two add up exactly.
    let mut committed = (0.0, 0.0);
    let mut split = Vec::new();
    for g in [&a, &b] {
        let (code, body) = common::http_get(g.http(), "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let received = metric(
            &body,
            "lockfleet_uplinks_received_total{transport=\"mqtt\"}",
        );
        let hb = metric(
            &body,
            "lockfleet_reports_committed_total{kind=\"heartbeat\"}",
        );
        let logs = metric(
            &body,
            "lockfleet_reports_committed_total{kind=\"activity_log\"}",
        );
        assert!(
            received > 0.0 && hb + logs > 0.0,
            "{} took a share of the reports: received {received}, committed {hb} heartbeats and {logs} batches",
            g.client_id()
        );
        committed.0 += hb;
        committed.1 += logs;
        split.push((received, hb, logs));
    }
    assert_eq!(committed, (total as f64, total as f64));
    eprintln!(
        "two instances: {} reports answered in {answered_in:?}; (received, committed heartbeats, \
         committed batches) per instance: {split:?}; {}",
        2 * total,
        assert_rule_events_consistent(&dash, &run.locks, REPORTS_PER_LOCK)
    );

    close_all(locks).await;
    dash.close().await;
    a.stop().await;
    b.stop().await;
    sessions.forget().await;
    store.close().await;
    db.cleanup().await;
}

/// Two instances in one process (as replicas whose process ids match, each
/// pid 1 in its own container) with their own client ids keep their own
/// broker sessions: neither CONNECT closes the other's connection (MQTT
/// 3.1.1 §3.1.4), both stay connected and ready, and the shared group hands
/// each report to one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_with_their_own_client_ids_keep_separate_mqtt_sessions() {
    let _serial = SERIAL.lock().await;
    let run = Run::new(FLEET_SIZE);
    let (db, store) = run.database(|_| ReportPath::Mqtt).await;
    let mut sessions = Sessions::default();
    let dir = tempfile::tempdir().unwrap();
    let a = Gateway::in_process(mosquitto_settings(
        &db.url,
        dir.path(),
        &run.group,
        &run.client_id("a"),
    ))
    .await;
    sessions.add(a.client_id());
    wait_ready(a.http()).await;
    let b = Gateway::in_process(mosquitto_settings(
        &db.url,
        dir.path(),
        &run.group,
        &run.client_id("b"),
    ))
    .await;
    sessions.add(b.client_id());
    wait_ready(b.http()).await;

    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        let (ra, rb) = (readyz(a.http()).await, readyz(b.http()).await);
        assert_eq!(
            (ra.0, rb.0),
            (200, 200),
            "both instances stay connected (client ids {} and {}): {ra:?} {rb:?}",
            a.client_id(),
            b.client_id()
        );
        tokio::time::sleep(POLL).await;
    }
    let locks = connect_all(&run.locks).await;
    for seq in 1..=REPORTS_PER_LOCK {
        for lock in &locks {
            lock.heartbeat(seq).await;
        }
    }
    let n = REPORTS_PER_LOCK as usize;
    eventually(|| locks.iter().all(|l| l.heartbeat_answers().len() >= n)).await;
    tokio::time::sleep(QUIET).await;
    let every: Vec<u32> = (1..=REPORTS_PER_LOCK).collect();
    for lock in &locks {
        assert_eq!(
            lock.heartbeat_answers(),
            every,
            "{}: one answer each",
            lock.id
        );
    }

    close_all(locks).await;
    a.stop().await;
    b.stop().await;
    sessions.forget().await;
    store.close().await;
    db.cleanup().await;
}

// ---------------------------------------------------------------------------
// Restart

/// How the instance is restarted; either way with the client id it had.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// A new `gateway serve` process: a real restart (deploy, crash, reboot).
    NewProcess,
    /// `Running::shutdown` and `server::start` again in this process.
    SameProcess,
}

async fn start_for_restart(
    how: Restart,
    db_url: &str,
    dir: &Path,
    group: &str,
    client_id: &str,
) -> Gateway {
    let g = match how {
        Restart::NewProcess => GatewayProcess::start(db_url, dir, group, client_id).await,
        Restart::SameProcess => {
            Gateway::in_process(mosquitto_settings(db_url, dir, group, client_id)).await
        }
    };
    wait_ready(g.http()).await;
    g
}

/// One instance on Mosquitto, stopped; the locks publish while it is down;
/// it starts again with the same settings (its client id among them): the
/// reports published while it was down wait in its persistent session and
/// are answered and stored once it is back, and every report after that too.
async fn restart_loses_no_device_report(how: Restart) {
    let _serial = SERIAL.lock().await;
    let run = Run::new(RESTART_FLEET_SIZE);
    let (db, store) = run.database(|_| ReportPath::Mqtt).await;
    let mut sessions = Sessions::default();
    let dir = tempfile::tempdir().unwrap();
    let client_id = run.client_id("a");
    let first = start_for_restart(how, &db.url, dir.path(), &run.group, &client_id).await;
    let first_id = first.client_id();
    sessions.add(first_id.clone());
    let locks = connect_all(&run.locks).await;
    for lock in &locks {
        lock.heartbeat(1).await;
    }
    assert!(
        eventually(|| locks.iter().all(|l| l.heartbeat_answers() == [1])).await,
        "answered before the restart: {:?}",
        answers(&locks)
    );
    first.stop().await;

    // Published while the gateway is down: Mosquitto acknowledges them to
    // the locks and keeps them for the gateway's session.
    for lock in &locks {
        lock.heartbeat(2).await;
        lock.log(2).await;
    }
    tokio::time::sleep(QUIET).await;
    assert!(
        locks
            .iter()
            .all(|l| l.heartbeat_answers() == [1] && l.log_answers().is_empty()),
        "nobody answers while the gateway is down: {:?}",
        answers(&locks)
    );

    let second = start_for_restart(how, &db.url, dir.path(), &run.group, &client_id).await;
    let second_id = second.client_id();
    sessions.add(second_id.clone());
    let last = 2 + REPORTS_AFTER_RESTART;
    for seq in 3..=last {
        for lock in &locks {
            lock.heartbeat(seq).await;
        }
    }
    let expected: BTreeMap<String, (Vec<u32>, Vec<u32>)> = run
        .locks
        .iter()
        .map(|l| (l.clone(), ((1..=last).collect(), vec![2])))
        .collect();
    eventually(|| answers(&locks) == expected).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        answers(&locks),
        expected,
        "{how:?}: every report answered once, those published while the gateway was down \
         (heartbeat 2, batch 2) and those after the restart (heartbeats 3..={last}); \
         client id before the restart {first_id}, after {second_id}"
    );
    let audit = store.audit().await.unwrap();
    assert_eq!(audit.heartbeats, run.keys(1..=last));
    assert_eq!(audit.events, run.keys(2..=2));

    close_all(locks).await;
    second.stop().await;
    sessions.forget().await;
    store.close().await;
    db.cleanup().await;
}

/// A new `gateway serve` process with the id of the one it replaces resumes
/// that session: the reports queued in it while the gateway was down are
/// answered and stored once, and no orphaned session stays in the shared
/// group (Mosquitto keeps a persistent session, and queues for it, until
/// `persistent_client_expiration`, by default never) to take a round-robin
/// share of every later report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_on_an_external_broker_loses_no_device_report() {
    restart_loses_no_device_report(Restart::NewProcess).await;
}

/// The same restart inside this process: with the same client id, the
/// reports published while the gateway was down are answered once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_with_the_same_client_id_answers_reports_published_while_down() {
    restart_loses_no_device_report(Restart::SameProcess).await;
}

// ---------------------------------------------------------------------------
// Unreachable broker

/// Relay every connection accepted on `listener` to Mosquitto: the closed
/// port becomes a way to a real broker.
fn relay_to_mosquitto(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(mosquitto()).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// The broker's port is closed: the server starts anyway (its MQTT session
/// connects in the background), is alive but not ready, and keeps storing
/// and answering CoAP reports. When the port leads to a broker, the session
/// connects and subscribes, the server is ready, MQTT locks are answered,
/// and the event of the report stored during the outage reaches the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_broker_unreachable_is_not_ready_and_recovers() {
    let _serial = SERIAL.lock().await;
    let run = Run::new(2);
    // Lock 0 reports over CoAP, lock 1 over MQTT.
    let (db, store) = run
        .database(|i| {
            if i == 0 {
                ReportPath::Coap
            } else {
                ReportPath::Mqtt
            }
        })
        .await;
    let mut sessions = Sessions::default();
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is dropped: nothing accepts on `closed` now.
    let started = Instant::now();
    let client_id = run.client_id("a");
    let gateway = gateway::server::start(
        Config::from_settings(settings(
            &db.url,
            dir.path(),
            &closed.to_string(),
            &run.group,
            &client_id,
        ))
        .unwrap(),
    )
    .await
    .expect("the server starts while its broker is unreachable");
    let start_took = started.elapsed();
    sessions.add(client_id);

    assert_eq!(
        common::http_get(gateway.http_addr, "/healthz")
            .await
            .unwrap()
            .0,
        200,
        "alive"
    );
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        assert_eq!(
            readyz(gateway.http_addr).await,
            (503, "MQTT session not connected\n".to_string()),
            "not ready while the broker is unreachable"
        );
        tokio::time::sleep(POLL).await;
    }

    // CoAP does not need the broker: the heartbeat is stored and answered.
    let coap_lock = &run.locks[0];
    let mut coap = CoapClient::new(gateway.coap_addr).await;
    let mut device = OscoreDevice::lock(coap_lock);
    let req = coap.request(
        RequestType::Post,
        "hb",
        encode(&heartbeat(coap_lock, 1)),
        true,
    );
    let (_, ack) = coap.exchange_verified(&mut device, &req).await;
    assert_eq!(
        ack.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(Downlink::decode(&ack.payload).unwrap().seq, 1);
    assert_eq!(
        store.audit().await.unwrap().heartbeats,
        [(coap_lock.clone(), 1)]
    );

    // The dashboard is on Mosquitto before the gateway can reach it.
    let dash = Dashboard::subscribe(mosquitto(), &[&run.events()]).await;
    let relay = relay_to_mosquitto(
        TcpListener::bind(closed)
            .await
            .unwrap_or_else(|e| panic!("{closed} was taken by someone else meanwhile: {e}")),
    );
    let recovering = Instant::now();
    wait_ready(gateway.http_addr).await;
    let recovered_in = recovering.elapsed();

    let mqtt_lock = Lock::connect(&run.locks[1]).await;
    mqtt_lock.heartbeat(1).await;
    assert!(
        eventually(|| mqtt_lock.heartbeat_answers() == [1]).await,
        "an MQTT lock is answered after the recovery"
    );
    let both = eventually(|| event_keys(&dash, "heartbeat").len() >= 2).await;
    tokio::time::sleep(QUIET).await;
    assert!(both, "got {:?}", event_keys(&dash, "heartbeat"));
    let mut expected = vec![(run.locks[0].clone(), 1), (run.locks[1].clone(), 1)];
    expected.sort();
    assert_eq!(
        event_keys(&dash, "heartbeat"),
        expected,
        "the heartbeat stored during the outage, and the one after it, are announced once each"
    );
    dash.assert_all_valid();
    eprintln!(
        "unreachable broker: start returned in {start_took:?}; ready {recovered_in:?} after the broker became reachable"
    );

    mqtt_lock.close().await;
    dash.close().await;
    gateway.shutdown().await;
    relay.abort();
    sessions.forget().await;
    store.close().await;
    db.cleanup().await;
}
