//! MQTT with security on (the default), on the real server over real
//! sockets, against SQLite and PostgreSQL: devices log in with their id and
//! key-derived password through the front, their payloads are
//! OSCORE-protected end to end and their acks come back protected; the
//! dashboard backend logs in with its own password on its own broker and
//! sees every event; anonymous and wrong logins are refused at CONNECT; a
//! device cannot subscribe to dashboard topics or `#`, nor publish on
//! another device's topic; a forged, replayed, unprotected or
//! foreign-context payload is refused on the device's error topic, counted,
//! and stores nothing; rotating or deregistering a device's key makes the
//! old key fail on the next message and the old password at the next login.
//! Clients: rumqttc, and `mosquitto_sub` for the dashboard.

mod common;

use common::{Dashboard, Engine, Harness, DASHBOARD_USERNAME};
use device_sim::security::DeviceKeys;
use dispatcher::import::ParsedFleet;
use dispatcher::keys::{DeviceRef, MasterSecret};
use dispatcher::registry::{BridgeRecord, LockRecord, ReportPath};
use dispatcher::{BridgeId, LockId, OrgId};
use gateway::store::testing::{registration, secret_for, BACKEND_PASSWORD};
use gateway::store::Store;
use lockfleet_oscore::RequestId;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use schemas::device::encode;
use schemas::event::DeviceError;
use schemas::security::{decode_protected, encode_protected, mqtt_password};
use schemas::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn fleet() -> ParsedFleet {
    let lock = |id: &str, model: LockModel, path: ReportPath, bridge: Option<&str>| {
        registration(LockRecord {
            id: LockId::new(id),
            model,
            org: OrgId::new("org-1"),
            departments: vec![].into(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(12).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(30).unwrap(),
            bridge: bridge.map(BridgeId::new),
            path,
        })
    };
    let bridge = |id: &str| BridgeRecord {
        id: BridgeId::new(id),
        org: OrgId::new("org-1"),
    };
    ParsedFleet {
        locks: vec![
            lock("L1", LockModel::Inb1, ReportPath::Mqtt, None),
            lock("L2", LockModel::Sp2e, ReportPath::Bridge, Some("B1")),
            lock("L4", LockModel::Sp2e, ReportPath::Bridge, Some("B2")),
        ],
        bridges: vec![bridge("B1"), bridge("B2")],
        ..ParsedFleet::default()
    }
}

fn heartbeat(lock: &str, seq: u32) -> Heartbeat {
    Heartbeat {
        lock_id: lock.into(),
        seq,
        device_time: 1_790_000_000 + u64::from(seq),
        battery: Battery::Level(BatteryLevel::High),
        signal_db: 6,
        signal_quality: SignalQuality::Fair,
        carrier: "Singtel".into(),
        channel: None,
        lock_state: LockState::Locked,
        door_state: DoorState::Closed,
        firmware: "1.4.2".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
    }
}

fn bridged_heartbeat(lock: &str, seq: u32) -> Heartbeat {
    Heartbeat {
        battery: Battery::Percent(80),
        ..heartbeat(lock, seq)
    }
}

fn lock_ref(id: &str) -> DeviceRef {
    DeviceRef::Lock(LockId::new(id))
}
fn bridge_ref(id: &str) -> DeviceRef {
    DeviceRef::Bridge(BridgeId::new(id))
}

/// A device's side of OSCORE on MQTT: the simulator's device keys
/// (`device_sim::security`), with the device's sequence counter.
struct Keys {
    keys: DeviceKeys,
    next_seq: u64,
}

impl Keys {
    fn new(device: &DeviceRef, secret: &MasterSecret) -> Keys {
        let secret = device_sim::fleet::MasterSecret::from_bytes(*secret.as_bytes());
        let id_context = String::from_utf8(device.oscore_id_context()).unwrap();
        Keys {
            keys: DeviceKeys::derive(&id_context, &secret).unwrap(),
            next_seq: 0,
        }
    }

    fn of(device: &DeviceRef) -> Keys {
        Keys::new(device, &secret_for(device))
    }

    /// `cbor` as a protected uplink under the next sequence number.
    fn protect(&mut self, cbor: &[u8]) -> (Vec<u8>, RequestId) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.keys.protect_mqtt(seq, cbor).unwrap()
    }

    /// The CBOR of the gateway's protected ack to `request`.
    fn open(&self, request: &RequestId, ack: &[u8]) -> Vec<u8> {
        self.keys
            .open_mqtt(request, ack)
            .expect("the ack verifies as the answer to our request")
    }
}

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT client (rumqttc) logged in as `username`, recording what arrives.
struct Client {
    client: AsyncClient,
    received: Received,
    suback: Arc<Mutex<Vec<Vec<SubscribeReasonCode>>>>,
    closed: Arc<Mutex<Option<String>>>,
}

impl Client {
    /// Connect; `Err` with the CONNACK code when refused.
    async fn connect(
        mqtt: SocketAddr,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<Client, ConnectReturnCode> {
        let mut opts = MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port());
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let first = tokio::time::timeout(WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                    Err(e) => panic!("{client_id}: {e}"),
                }
            }
        })
        .await
        .expect("an answer to CONNECT");
        first?;
        let received: Received = Arc::default();
        let suback = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(None));
        {
            let (received, suback, closed) = (received.clone(), suback.clone(), closed.clone());
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => received
                            .lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec())),
                        Ok(Event::Incoming(Packet::SubAck(a))) => {
                            suback.lock().unwrap().push(a.return_codes)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            *closed.lock().unwrap() = Some(e.to_string());
                            break;
                        }
                    }
                }
            });
        }
        Ok(Client {
            client,
            received,
            suback,
            closed,
        })
    }

    /// A device logged in with its id and the password of `secret`.
    async fn device(mqtt: SocketAddr, id: &str, secret: &MasterSecret) -> Client {
        let password = mqtt_password(secret.as_bytes());
        Client::connect(mqtt, id, Some((id, &password)))
            .await
            .unwrap_or_else(|code| panic!("{id} refused: {code:?}"))
    }

    /// Subscribe and return the SUBACK's codes.
    async fn subscribe(&self, filter: &str) -> Vec<SubscribeReasonCode> {
        let before = self.suback.lock().unwrap().len();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        wait_until("a SUBACK", || self.suback.lock().unwrap().len() > before).await;
        self.suback.lock().unwrap()[before].clone()
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Wait for the `n`th message (1-based) on `topic`.
    async fn nth(&self, topic: &str, n: usize) -> Vec<u8> {
        let got = || {
            self.received
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| t == topic)
                .nth(n - 1)
                .map(|(_, p)| p.clone())
        };
        wait_until(&format!("message {n} on {topic}"), || got().is_some()).await;
        got().unwrap()
    }

    /// The `n`th error (1-based) on `topic`, decoded.
    async fn error(&self, topic: &str, n: usize) -> DeviceError {
        serde_json::from_slice(&self.nth(topic, n).await).unwrap()
    }

    fn count(&self, topic: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .count()
    }

    fn is_closed(&self) -> bool {
        self.closed.lock().unwrap().is_some()
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stored(h: &Harness) -> Vec<(String, u32)> {
    h.server.store.audit().await.unwrap().heartbeats
}

fn rejected(reason: &str) -> String {
    format!("lockfleet_uplinks_rejected_total{{transport=\"mqtt\",reason=\"{reason}\"}}")
}

async fn protected_reports_flow_and_logins_are_checked(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let mqtt = h.server.mqtt_addr;
    let dash = Dashboard::subscribe(mqtt, &[topic::EVENTS_FILTER]).await;

    // Logins: anonymous, a wrong password, a device's password for another
    // device, and the backend's username with a device's password.
    let l1_pw = mqtt_password(secret_for(&lock_ref("L1")).as_bytes());
    for (client_id, login) in [
        ("L1", None),
        ("L1", Some(("L1", "not-the-password"))),
        ("B1", Some(("B1", l1_pw.as_str()))),
        ("dashboard", Some((DASHBOARD_USERNAME, l1_pw.as_str()))),
    ] {
        let refused = Client::connect(mqtt, client_id, login).await.err();
        assert_eq!(
            refused,
            Some(ConnectReturnCode::BadUserNamePassword),
            "{client_id} {:?}",
            login.map(|l| l.0)
        );
    }

    // An MQTT-modem lock: protected heartbeat, protected ack.
    let l1 = Client::device(mqtt, "L1", &secret_for(&lock_ref("L1"))).await;
    assert_eq!(
        l1.subscribe("lk/L1/#").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut l1_keys = Keys::of(&lock_ref("L1"));
    let (payload, request) = l1_keys.protect(&encode(&heartbeat("L1", 1)));
    l1.publish("lk/L1/up/hb", payload).await;
    let ack = l1.nth(&topic::down::lock_heartbeat_ack("L1"), 1).await;
    let down = Downlink::decode(&l1_keys.open(&request, &ack)).unwrap();
    assert_eq!(down.seq, 1);

    // A bridge reports for its linked lock under its own key.
    let b1 = Client::device(mqtt, "B1", &secret_for(&bridge_ref("B1"))).await;
    b1.subscribe("br/B1/#").await;
    let mut b1_keys = Keys::of(&bridge_ref("B1"));
    let (payload, request) = b1_keys.protect(&encode(&bridged_heartbeat("L2", 1)));
    b1.publish("br/B1/up/hb", payload).await;
    let ack = b1
        .nth(&topic::down::bridge_heartbeat_ack("B1", "L2"), 1)
        .await;
    assert_eq!(
        Downlink::decode(&b1_keys.open(&request, &ack)).unwrap().seq,
        1
    );

    // The dashboard saw both heartbeats, as JSON on its own broker, and
    // never a device topic.
    dash.wait_for(10, "two heartbeat events", |m| {
        m.iter().filter(|(t, _)| t.ends_with("/heartbeat")).count() == 2
    })
    .await;
    assert!(dash
        .snapshot()
        .iter()
        .all(|(t, _)| t.starts_with("events/")));
    dash.assert_all_valid();

    // Nor does the backend's broker carry device topics: the backend
    // subscribing to them gets nothing.
    let watcher = Dashboard::subscribe(mqtt, &["lk/#", "br/#"]).await;
    let (payload, _) = l1_keys.protect(&encode(&heartbeat("L1", 2)));
    l1.publish("lk/L1/up/hb", payload).await;
    l1.nth(&topic::down::lock_heartbeat_ack("L1"), 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(watcher.snapshot().is_empty(), "{:?}", watcher.snapshot());

    assert_eq!(
        stored(&h).await,
        [
            ("L1".to_string(), 1),
            ("L1".to_string(), 2),
            ("L2".to_string(), 1)
        ]
    );
    assert!(h.metric(&rejected("unprotected")).await == 0.0);
    watcher.close().await;
    dash.close().await;
    h.stop().await;
}

async fn bad_payloads_are_refused_counted_and_store_nothing(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let mqtt = h.server.mqtt_addr;
    let b1 = Client::device(mqtt, "B1", &secret_for(&bridge_ref("B1"))).await;
    b1.subscribe("br/B1/#").await;
    let mut keys = Keys::of(&bridge_ref("B1"));
    let err = "br/B1/err";
    let up = "br/B1/up/hb";

    // Unprotected.
    b1.publish(up, encode(&bridged_heartbeat("L2", 1))).await;
    assert_eq!(b1.error(err, 1).await.reason, "unprotected");
    // Forged: one ciphertext bit flipped.
    let (payload, _) = keys.protect(&encode(&bridged_heartbeat("L2", 1)));
    let (option, mut ciphertext) = decode_protected(&payload).unwrap();
    ciphertext[3] ^= 0x40;
    b1.publish(up, encode_protected(&option, &ciphertext)).await;
    assert_eq!(b1.error(err, 2).await.reason, "decrypt_failed");
    // B2's key, published by B1 on its own topic (as if stolen from B2's
    // traffic): the kid context is not B1's.
    let (payload, _) = Keys::of(&bridge_ref("B2")).protect(&encode(&bridged_heartbeat("L4", 1)));
    b1.publish(up, payload).await;
    let e = b1.error(err, 3).await;
    assert_eq!(e.reason, "kid_context_mismatch", "{}", e.message);
    // Garbage and truncated protected messages.
    b1.publish(up, vec![0x82, 0x43, 0x19, 0x01, 0x05, 0x41, 0x00])
        .await;
    assert_eq!(b1.error(err, 4).await.reason, "malformed_option");
    b1.publish(up, vec![0x82, 0x40]).await;
    assert_eq!(b1.error(err, 5).await.reason, "malformed_protected");
    // A good one, then the very same bytes again: a replay.
    let (payload, request) = keys.protect(&encode(&bridged_heartbeat("L2", 1)));
    b1.publish(up, payload.clone()).await;
    let ack = b1
        .nth(&topic::down::bridge_heartbeat_ack("B1", "L2"), 1)
        .await;
    keys.open(&request, &ack);
    b1.publish(up, payload).await;
    let e = b1.error(err, 6).await;
    assert_eq!(e.reason, "replay", "{}", e.message);
    // A bridge reporting for a lock that is not linked to it, with its own key.
    let (payload, _) = keys.protect(&encode(&bridged_heartbeat("L4", 1)));
    b1.publish(up, payload).await;
    assert_eq!(b1.error(err, 7).await.reason, "not_linked");

    assert_eq!(stored(&h).await, [("L2".to_string(), 1)]);
    assert_eq!(
        b1.count(&topic::down::bridge_heartbeat_ack("B1", "L2")),
        1,
        "no ack for a refused payload"
    );
    for (reason, n) in [
        ("unprotected", 1.0),
        ("decrypt_failed", 1.0),
        ("kid_context_mismatch", 1.0),
        ("malformed_option", 1.0),
        ("malformed_protected", 1.0),
        ("replay", 1.0),
        ("not_linked", 1.0),
    ] {
        assert_eq!(h.metric(&rejected(reason)).await, n, "{reason}");
    }

    // Confinement at the front: subscribing to `#` or a dashboard topic is
    // refused (SUBACK 0x80) and the connection stays; publishing on another
    // bridge's topic closes it, and nothing reaches B2's topics.
    let b2 = Client::device(mqtt, "B2", &secret_for(&bridge_ref("B2"))).await;
    b2.subscribe("br/B2/#").await;
    for filter in ["#", "events/v1/#", "br/B2/#", "br/+/ack/#"] {
        assert_eq!(
            b1.subscribe(filter).await,
            [SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    let (payload, _) = keys.protect(&encode(&bridged_heartbeat("L2", 2)));
    b1.publish("br/B2/up/hb", payload).await;
    wait_until("the front closes B1", || b1.is_closed()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b2.count("br/B2/up/hb"), 0, "never forwarded");
    assert_eq!(
        h.metric("lockfleet_mqtt_front_refused_total{reason=\"foreign_subscribe\"}")
            .await,
        4.0
    );
    assert_eq!(
        h.metric("lockfleet_mqtt_front_refused_total{reason=\"foreign_publish\"}")
            .await,
        1.0
    );
    assert_eq!(stored(&h).await, [("L2".to_string(), 1)]);
    h.stop().await;
}

async fn rotating_or_deregistering_revokes_the_key_and_the_login(engine: Engine) {
    // No ring reload while the old key is tried: the commit alone refuses it.
    let slow = common::Options {
        registry_refresh_secs: 3_600,
        ..common::Options::default()
    };
    let h = Harness::start_with(engine, &fleet(), slow).await;
    let mqtt = h.server.mqtt_addr;
    let l1 = Client::device(mqtt, "L1", &secret_for(&lock_ref("L1"))).await;
    l1.subscribe("lk/L1/#").await;
    let b1 = Client::device(mqtt, "B1", &secret_for(&bridge_ref("B1"))).await;
    b1.subscribe("br/B1/#").await;
    let mut l1_keys = Keys::of(&lock_ref("L1"));
    let mut b1_keys = Keys::of(&bridge_ref("B1"));
    let (payload, _) = l1_keys.protect(&encode(&heartbeat("L1", 1)));
    l1.publish("lk/L1/up/hb", payload).await;
    l1.nth(&topic::down::lock_heartbeat_ack("L1"), 1).await;

    let admin = Store::open(&h.db.url).await.unwrap();
    let new_secret = MasterSecret::from_bytes([0x51; 32]);
    admin
        .rotate_key(
            &gateway::store::testing::server_key(),
            &lock_ref("L1"),
            &new_secret,
        )
        .await
        .unwrap();
    assert!(admin.deregister(&bridge_ref("B1")).await.unwrap());

    // The next message under each old key fails, though the ring (and the
    // open connections) still know it.
    let (payload, _) = l1_keys.protect(&encode(&heartbeat("L1", 2)));
    l1.publish("lk/L1/up/hb", payload).await;
    assert_eq!(l1.error("lk/L1/err", 1).await.reason, "key_revoked");
    let (payload, _) = b1_keys.protect(&encode(&bridged_heartbeat("L2", 1)));
    b1.publish("br/B1/up/hb", payload).await;
    assert_eq!(b1.error("br/B1/err", 1).await.reason, "key_revoked");
    assert_eq!(stored(&h).await, [("L1".to_string(), 1)]);

    // Once the ring reloads (here: a restart), the old passwords fail at
    // CONNECT and the new key logs in and reports.
    let h = h.restart_with(common::Options::default()).await;
    let mqtt = h.server.mqtt_addr;
    let old_l1 = mqtt_password(secret_for(&lock_ref("L1")).as_bytes());
    let old_b1 = mqtt_password(secret_for(&bridge_ref("B1")).as_bytes());
    for (id, pw) in [("L1", &old_l1), ("B1", &old_b1)] {
        assert_eq!(
            Client::connect(mqtt, id, Some((id, pw))).await.err(),
            Some(ConnectReturnCode::BadUserNamePassword),
            "{id}"
        );
    }
    let l1 = Client::device(mqtt, "L1", &new_secret).await;
    l1.subscribe("lk/L1/#").await;
    let mut new_keys = Keys::new(&lock_ref("L1"), &new_secret);
    let (payload, request) = new_keys.protect(&encode(&heartbeat("L1", 3)));
    l1.publish("lk/L1/up/hb", payload).await;
    let ack = l1.nth(&topic::down::lock_heartbeat_ack("L1"), 1).await;
    assert_eq!(
        Downlink::decode(&new_keys.open(&request, &ack))
            .unwrap()
            .seq,
        3
    );
    assert_eq!(
        stored(&h).await,
        [("L1".to_string(), 1), ("L1".to_string(), 3)]
    );
    admin.close().await;
    h.stop().await;
}

/// Mosquitto's own client, as a dashboard backend would run it, logs in
/// with the backend's password and receives the event; without a password
/// it is refused.
async fn mosquitto_sub_logs_in_as_the_backend(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let mqtt = h.server.mqtt_addr;
    let sub = |login: bool| {
        let mut cmd = tokio::process::Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string()])
            .args([
                "-i",
                "dashboard-sub",
                "-t",
                "events/#",
                "-C",
                "1",
                "-W",
                "10",
            ]);
        if login {
            cmd.args(["-u", DASHBOARD_USERNAME, "-P", BACKEND_PASSWORD]);
        }
        cmd.kill_on_drop(true).output()
    };
    let refused = sub(false)
        .await
        .expect("mosquitto_sub runs (Debian: mosquitto-clients)");
    assert!(!refused.status.success(), "anonymous is refused");
    let watching = tokio::spawn(sub(true));
    // Give it time to subscribe, then make an event.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let l1 = Client::device(mqtt, "L1", &secret_for(&lock_ref("L1"))).await;
    l1.subscribe("lk/L1/#").await;
    let mut keys = Keys::of(&lock_ref("L1"));
    let (payload, _) = keys.protect(&encode(&heartbeat("L1", 1)));
    l1.publish("lk/L1/up/hb", payload).await;
    let out = watching.await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["lock_id"], "L1", "{event}");
    h.stop().await;
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::Postgres).await
            })*
        }
    };
}

on_both_engines!(
    protected_reports_flow_and_logins_are_checked,
    bad_payloads_are_refused_counted_and_store_nothing,
    rotating_or_deregistering_revokes_the_key_and_the_login,
    mosquitto_sub_logs_in_as_the_backend,
);
