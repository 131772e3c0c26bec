//! MQTT locks and bridges against an embedded broker (rumqttd) and a test
//! peer that answers like the gateway: acks on the right topics, resends
//! under loss, bridge status online/offline; in a secure run every device
//! logs in with its own derived password, every report and ack is a
//! protected message under the device's (or its bridge's) OSCORE context,
//! and replayed copies are refused without refusing the report. A direct
//! lock gets its pending jobs in the answers to its heartbeats and reports
//! their results on `lk/{lock}/up/jr`.

mod common;

use common::{server_context, Peer};
use device_sim::fleet::{generate, Fleet, FleetSpec};
use device_sim::net::NetFaults;
use device_sim::run::{self, SimConfig};
use lockfleet_oscore::{
    protect_response, unprotect_request, InnerMessage, OscoreOption, ReplayWindow, CODE_CHANGED,
    CODE_POST,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use schemas::device::{encode, DeviceJob, JobAction, JobOutcome, JobReport, JobResult, PinType};
use schemas::event::DeviceError;
use schemas::security::{decode_protected, encode_protected, mqtt_password};
use schemas::topic::{down, DeviceTopic};
use schemas::{
    ActivityLogBatch, ActivityLogInterval, Downlink, Heartbeat, HeartbeatInterval, LogAck,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The test gateway's own login on the broker.
const PEER_ID: &str = "test-gateway";
const PEER_PASSWORD: &str = "test-gateway-password";

/// Every CONNECT the broker saw: (client id, username, accepted).
type Logins = Arc<Mutex<Vec<(String, String, bool)>>>;

/// Starts rumqttd on a free port on its own thread (it never returns). With
/// `fleet`, it admits only the peer and each device logging in as itself
/// (client id = username = device id) with its derived password.
fn start_broker(fleet: Option<&Fleet>) -> (SocketAddr, Logins) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let logins: Logins = Arc::default();
    if let Some(fleet) = fleet {
        let mut passwords: HashMap<String, String> = fleet
            .locks
            .iter()
            .map(|l| (l.id.clone(), mqtt_password(l.master_secret.as_bytes())))
            .chain(
                fleet
                    .bridges
                    .iter()
                    .map(|b| (b.id.clone(), mqtt_password(b.master_secret.as_bytes()))),
            )
            .collect();
        passwords.insert(PEER_ID.into(), PEER_PASSWORD.into());
        let log = logins.clone();
        connections.set_auth_handler(move |client: String, user: String, password: String| {
            let ok = client == user && passwords.get(&user) == Some(&password);
            log.lock().unwrap().push((client, user, ok));
            async move { ok }
        });
    }
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let _ = rumqttd::Broker::new(config).start();
    });
    (addr, logins)
}

#[derive(Default)]
struct Seen {
    delivered: HashSet<(String, u32)>,
    statuses: HashMap<String, Vec<String>>,
    /// The ID Contexts protected uplinks came under.
    contexts: HashSet<String>,
    /// Protected copies refused by the replay window.
    replays: usize,
    /// Jobs waiting for their result, by lock (direct locks only).
    jobs: HashMap<String, VecDeque<DeviceJob>>,
    /// Every job result received: (lock, result).
    job_results: Vec<(String, JobResult)>,
    /// The topic of every uplink answered, in order.
    topics: Vec<String>,
}

impl Seen {
    /// The answer to report `seq` of `lock`: every pending job.
    fn downlink(
        &self,
        lock: &str,
        seq: u32,
        intervals: (HeartbeatInterval, ActivityLogInterval),
    ) -> Downlink {
        Downlink {
            server_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            heartbeat_interval: intervals.0,
            activity_log_interval: intervals.1,
            seq,
            jobs: self
                .jobs
                .get(lock)
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default(),
            more: false,
            next_heartbeat_at: None,
        }
    }
}

/// The gateway's OSCORE peers of every MQTT lock and bridge, by ID Context.
fn mqtt_peers(fleet: &Fleet) -> HashMap<Vec<u8>, Peer> {
    let locks = fleet
        .locks
        .iter()
        .filter(|l| l.transport == schemas::event::Transport::Mqtt)
        .map(|l| (format!("lk/{}", l.id), &l.master_secret));
    let bridges = fleet
        .bridges
        .iter()
        .map(|b| (format!("br/{}", b.id), &b.master_secret));
    locks
        .chain(bridges)
        .map(|(context, secret)| {
            let peer = Peer {
                ctx: server_context(&context, secret),
                window: ReplayWindow::new(),
            };
            (context.into_bytes(), peer)
        })
        .collect()
}

/// What an uplink on `topic` led to.
enum Outcome {
    /// The report's CBOR and what binds the answer to it.
    Report(Vec<u8>, Option<lockfleet_oscore::RequestId>, String),
    /// A copy the replay window refused: tell the device on its err topic.
    Replay(String),
}

/// Verifies a protected uplink the way the gateway does: the frame, the
/// context named by the kid context (which must be the topic's device), the
/// replay window, the MAC, a bare POST inside.
fn open_uplink(peers: &mut HashMap<Vec<u8>, Peer>, prefix: &str, payload: &[u8]) -> Outcome {
    let (option, ciphertext) = decode_protected(payload).expect("a protected message");
    let option = OscoreOption::decode(&option).unwrap();
    let context = option
        .kid_context
        .clone()
        .expect("requests name their context");
    assert_eq!(context, prefix.as_bytes(), "the topic's device protects it");
    let peer = peers.get_mut(&context).expect("a known device");
    let seq = option.partial_iv.unwrap().seq();
    if peer.window.check(seq).is_err() {
        return Outcome::Replay(prefix.to_string());
    }
    let (request, plaintext) = unprotect_request(&peer.ctx, &option, &ciphertext, &[]).unwrap();
    peer.window.accept(seq).unwrap();
    let inner = InnerMessage::decode(&plaintext).unwrap();
    assert_eq!((inner.code, inner.options.len()), (CODE_POST, 0));
    Outcome::Report(inner.payload, Some(request), prefix.to_string())
}

/// A gateway stand-in: answers every uplink on its ack topic; with `peers`
/// it requires and verifies protection and protects its answers.
async fn start_peer(broker: SocketAddr, peers: Option<HashMap<Vec<u8>, Peer>>) -> Arc<Mutex<Seen>> {
    let mut opts = MqttOptions::new(PEER_ID, broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_credentials(PEER_ID, PEER_PASSWORD);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let state = seen.clone();
    let mut peers = peers;
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let event = match eventloop.poll().await {
                Ok(e) => e,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    for f in schemas::topic::DEVICE_FILTERS {
                        client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let Ok(topic) = DeviceTopic::parse(&p.topic) else {
                        continue;
                    };
                    let prefix = match topic {
                        DeviceTopic::BridgeStatus { bridge } => {
                            // Status stays plain text.
                            let status = String::from_utf8_lossy(&p.payload).into_owned();
                            state
                                .lock()
                                .unwrap()
                                .statuses
                                .entry(bridge.to_string())
                                .or_default()
                                .push(status);
                            continue;
                        }
                        DeviceTopic::LockHeartbeat { lock }
                        | DeviceTopic::LockLog { lock }
                        | DeviceTopic::LockJobReport { lock } => format!("lk/{lock}"),
                        DeviceTopic::BridgeHeartbeat { bridge }
                        | DeviceTopic::BridgeLog { bridge }
                        | DeviceTopic::BridgeJobReport { bridge } => format!("br/{bridge}"),
                    };
                    let outcome = match peers.as_mut() {
                        Some(peers) => open_uplink(peers, &prefix, &p.payload),
                        None => Outcome::Report(p.payload.to_vec(), None, prefix.clone()),
                    };
                    let (cbor, request) = match outcome {
                        Outcome::Report(cbor, request, context) => {
                            if request.is_some() {
                                state.lock().unwrap().contexts.insert(context);
                            }
                            (cbor, request)
                        }
                        Outcome::Replay(prefix) => {
                            state.lock().unwrap().replays += 1;
                            let err = DeviceError {
                                topic: p.topic.clone(),
                                reason: "replay".into(),
                                message: "this protected message was seen before".into(),
                            };
                            let body = serde_json::to_vec(&err).unwrap();
                            client
                                .publish(down::error(&prefix), QoS::AtLeastOnce, false, body)
                                .await
                                .unwrap();
                            continue;
                        }
                    };
                    state.lock().unwrap().topics.push(p.topic.clone());
                    let (t, answer) = match topic {
                        DeviceTopic::LockHeartbeat { .. } | DeviceTopic::BridgeHeartbeat { .. } => {
                            let hb = Heartbeat::decode(&cbor).unwrap();
                            let mut seen = state.lock().unwrap();
                            seen.delivered.insert((hb.lock_id.clone(), hb.seq));
                            let intervals = (hb.heartbeat_interval, hb.activity_log_interval);
                            let mut dl = seen.downlink(&hb.lock_id, hb.seq, intervals);
                            let t = match topic {
                                DeviceTopic::BridgeHeartbeat { bridge } => {
                                    // Bridged locks get no jobs.
                                    dl.jobs.clear();
                                    down::bridge_heartbeat_ack(bridge, &hb.lock_id)
                                }
                                _ => down::lock_heartbeat_ack(&hb.lock_id),
                            };
                            (t, encode(&dl))
                        }
                        DeviceTopic::BridgeJobReport { bridge } => {
                            // No commands are sent here: a job report from
                            // a bridge is only acknowledged.
                            let r = JobReport::decode(&cbor).unwrap();
                            let seen = state.lock().unwrap();
                            let intervals =
                                (HeartbeatInterval::DEFAULT, ActivityLogInterval::DEFAULT);
                            let mut dl = seen.downlink(&r.lock_id, r.seq, intervals);
                            dl.jobs.clear();
                            (down::bridge_job_report_ack(bridge, &r.lock_id), encode(&dl))
                        }
                        DeviceTopic::LockJobReport { lock } => {
                            let r = JobReport::decode(&cbor).unwrap();
                            assert_eq!(r.lock_id, lock);
                            let mut seen = state.lock().unwrap();
                            if seen.delivered.insert((r.lock_id.clone(), r.seq)) {
                                let queue = seen.jobs.entry(r.lock_id.clone()).or_default();
                                for x in &r.results {
                                    queue.retain(|j| (j.id, j.attempt) != (x.id, x.attempt));
                                }
                                let results =
                                    r.results.iter().map(|x| (r.lock_id.clone(), x.clone()));
                                seen.job_results.extend(results);
                            }
                            let intervals =
                                (HeartbeatInterval::DEFAULT, ActivityLogInterval::DEFAULT);
                            let dl = seen.downlink(lock, r.seq, intervals);
                            (down::lock_job_report_ack(lock), encode(&dl))
                        }
                        _ => {
                            let b = ActivityLogBatch::decode(&cbor).unwrap();
                            state
                                .lock()
                                .unwrap()
                                .delivered
                                .insert((b.lock_id.clone(), b.seq));
                            let ack = LogAck {
                                server_time: 0,
                                stored: b.events.len() as u16,
                                seq: b.seq,
                            };
                            let t = match topic {
                                DeviceTopic::BridgeLog { bridge } => {
                                    down::bridge_log_ack(bridge, &b.lock_id)
                                }
                                _ => down::lock_log_ack(&b.lock_id),
                            };
                            (t, encode(&ack))
                        }
                    };
                    let payload = match (request, peers.as_ref()) {
                        (Some(request), Some(peers)) => {
                            let ctx = &peers[prefix.as_bytes()].ctx;
                            let plain = InnerMessage::bare(CODE_CHANGED, answer).encode().unwrap();
                            let sealed = protect_response(ctx, request, None, &plain, &[]).unwrap();
                            assert!(sealed.option.is_empty());
                            encode_protected(&sealed.option, &sealed.ciphertext)
                        }
                        _ => answer,
                    };
                    client
                        .publish(t, QoS::AtLeastOnce, false, payload)
                        .await
                        .unwrap();
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap()
        .unwrap();
    seen
}

/// Waits until `done` holds of what the peer saw (it may take a moment for
/// the last publishes to reach it).
async fn eventually(seen: &Mutex<Seen>, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(&seen.lock().unwrap()) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(broker: SocketAddr) -> SimConfig {
    SimConfig {
        gateway: broker.ip().to_string(),
        mqtt_port: broker.port(),
        speedup: 36_000.0,
        max_reports_per_device: Some(3),
        duration: Some(Duration::from_secs(30)),
        drain_timeout: Duration::from_secs(20),
        mqtt_ack_timeout: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_locks_and_bridges_get_every_report_acknowledged_and_bridges_say_goodbye() {
    let fleet = generate(&FleetSpec {
        locks: 8,
        bridges: 3,
        orgs: 2,
        mqtt_share: 1.0,
        seed: 4,
    })
    .unwrap();
    let (broker, logins) = start_broker(Some(&fleet));
    let seen = start_peer(broker, Some(mqtt_peers(&fleet))).await;
    let cfg = SimConfig {
        faults: NetFaults::new(0.15, 0.15).unwrap(),
        ..config(broker)
    };
    let report = run::run(cfg, fleet.clone()).await.unwrap();
    let s = &report.stats;
    assert!(report.all_acknowledged(), "{:?} {s}", report.unacknowledged);
    let by_lock = report.acknowledged_by_lock();
    for lock in &fleet.locks {
        let mut seqs: Vec<u32> = by_lock[lock.id.as_str()].iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![1, 2, 3], "{}", lock.id);
        assert_eq!(report.counters[&lock.id].next_seq, 4, "{}", lock.id);
    }
    assert!(
        s.dropped > 0 && s.retransmitted > 0 && s.dup_injected > 0,
        "{s}"
    );
    assert_eq!(s.rejected, 0, "a replayed copy refuses nothing: {s}");
    assert_eq!(s.errors.get("oscore_response"), None, "{s}");
    let delivered = seen.lock().unwrap().delivered.clone();
    for r in &report.acknowledged {
        assert!(delivered.contains(&(r.lock_id.clone(), r.seq)));
        assert_eq!(r.rtt, None, "MQTT reports are not timed");
    }

    // Every device logged in as itself; nothing else tried.
    let logins = logins.lock().unwrap().clone();
    let mut devices: Vec<&str> = fleet
        .locks
        .iter()
        .filter(|l| l.transport == schemas::event::Transport::Mqtt)
        .map(|l| l.id.as_str())
        .chain(fleet.bridges.iter().map(|b| b.id.as_str()))
        .collect();
    devices.sort_unstable();
    let mut logged_in: Vec<&str> = logins
        .iter()
        .filter(|(c, _, _)| c != PEER_ID)
        .map(|(c, _, _)| c.as_str())
        .collect();
    logged_in.sort_unstable();
    logged_in.dedup();
    assert_eq!(logged_in, devices);
    assert!(logins.iter().all(|(_, _, ok)| *ok), "{logins:?}");

    // Direct locks under their own context, bridged ones under their bridge's.
    let contexts = seen.lock().unwrap().contexts.clone();
    let expected: HashSet<String> = devices
        .iter()
        .map(|id| match id.starts_with('B') {
            true => format!("br/{id}"),
            false => format!("lk/{id}"),
        })
        .collect();
    assert_eq!(contexts, expected);
    for b in &fleet.bridges {
        let c = report.counters[&b.id];
        assert!(c.next_oscore_seq > 1, "{}: {c:?}", b.id);
        assert_eq!(
            (c.next_seq, c.next_event_seq),
            (1, 1),
            "a bridge sends no reports of its own"
        );
    }
    for l in fleet.locks.iter().filter(|l| l.bridge_id.is_some()) {
        assert_eq!(
            report.counters[&l.id].next_oscore_seq, 1,
            "{}: its bridge's context",
            l.id
        );
    }

    // Each injected duplicate reached the peer as a replay, was refused on
    // the err topic, and the simulator counted it without refusing anything.
    let dups = s.dup_injected as usize;
    eventually(&seen, "every duplicate refused", |p| p.replays == dups).await;
    // (Refusals that arrive after a device disconnected are not counted.)
    let counted = s.errors.get("mqtt:replay").copied().unwrap_or(0) as usize;
    assert!(
        counted <= dups,
        "{counted} replays counted, {dups} duplicates: {s}"
    );

    // Every bridge announced itself and said offline before disconnecting.
    eventually(&seen, "online then offline from every bridge", |p| {
        fleet.bridges.iter().all(|b| {
            p.statuses.get(&b.id).is_some_and(|s| {
                s.first().map(String::as_str) == Some("online")
                    && s.last().map(String::as_str) == Some("offline")
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_a_device_with_the_wrong_password() {
    let fleet = generate(&FleetSpec {
        locks: 2,
        bridges: 1,
        orgs: 1,
        mqtt_share: 1.0,
        seed: 5,
    })
    .unwrap();
    let (broker, logins) = start_broker(Some(&fleet));
    let id = fleet.bridges[0].id.clone();
    let mut opts = MqttOptions::new(id.clone(), broker.ip().to_string(), broker.port());
    opts.set_credentials(id.clone(), "not-the-derived-password");
    let (_client, mut eventloop) = AsyncClient::new(opts, 10);
    // Until the broker has seen the attempt (its thread may still be
    // starting: connection refused, retry).
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    break ack.code == rumqttc::ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) if !logins.lock().unwrap().is_empty() => break false,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap();
    assert!(!connected, "a wrong password must not connect");
    assert_eq!(*logins.lock().unwrap(), vec![(id.clone(), id, false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_run_publishes_plain_cbor_and_logs_in_anonymously() {
    let fleet = generate(&FleetSpec {
        locks: 4,
        bridges: 2,
        orgs: 1,
        mqtt_share: 1.0,
        seed: 6,
    })
    .unwrap();
    let (broker, logins) = start_broker(None);
    let seen = start_peer(broker, None).await;
    let cfg = SimConfig {
        security: false,
        ..config(broker)
    };
    let report = run::run(cfg, fleet.clone()).await.unwrap();
    assert!(report.all_acknowledged(), "{}", report.stats);
    assert_eq!(report.acknowledged.len(), 4 * 3);
    assert!(seen.lock().unwrap().contexts.is_empty());
    assert!(logins.lock().unwrap().is_empty(), "no auth configured");
    for (id, c) in &report.counters {
        assert_eq!(c.next_oscore_seq, 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_lock_reports_its_job_results_on_its_jr_topic_and_opens_with_the_pin() {
    let fleet = generate(&FleetSpec {
        locks: 2,
        bridges: 0,
        orgs: 1,
        mqtt_share: 1.0,
        seed: 7,
    })
    .unwrap();
    let (broker, _) = start_broker(Some(&fleet));
    let seen = start_peer(broker, Some(mqtt_peers(&fleet))).await;
    let id = fleet.locks[0].id.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pin = |id: u64, access: &str, digits: &str| DeviceJob {
        id,
        attempt: 1,
        action: JobAction::CreatePin,
        access: Some(access.into()),
        pin: Some(digits.into()),
        pin_type: Some(PinType::Permanent),
        start: Some(now - 5),
        end: None,
        heartbeat_interval: None,
        activity_log_interval: None,
        issued: now - 1,
    };
    seen.lock().unwrap().jobs.insert(
        id.clone(),
        [pin(1, "acc-1", "482916"), pin(2, "acc-2", "1234567")].into(),
    );
    let cfg = SimConfig {
        reporting: device_sim::Reporting::OnDemand,
        visits_per_hour: Some(0.0),
        max_reports_per_device: None,
        duration: None,
        ..config(broker)
    };
    let sim = run::start(cfg, fleet.clone()).await.unwrap();
    let lock = sim.lock(&id).unwrap();
    // The lock's connection comes up first; the heartbeat waits for it.
    let talk = tokio::time::timeout(Duration::from_secs(20), lock.heartbeat_now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        talk.results()
            .map(|r| (r.id, r.outcome))
            .collect::<Vec<_>>(),
        vec![(1, JobOutcome::Done), (2, JobOutcome::Done)]
    );
    assert_eq!(talk.status.pin_count, 2);
    assert!(lock.enter_pin("1234567").await.unwrap());
    assert!(!lock.enter_pin("7654321").await.unwrap());
    {
        let seen = seen.lock().unwrap();
        assert!(seen.jobs[&id].is_empty());
        assert_eq!(seen.job_results.len(), 2);
        let topics: Vec<&str> = seen
            .topics
            .iter()
            .map(String::as_str)
            .filter(|t| !t.ends_with("/log"))
            .collect();
        assert_eq!(
            topics,
            vec![format!("lk/{id}/up/hb"), format!("lk/{id}/up/jr")]
        );
    }
    sim.stop();
    let report = sim.finish().await.unwrap();
    assert!(report.all_acknowledged(), "{:?}", report.unacknowledged);
    assert_eq!(
        report.stats.errors.get("oscore_response"),
        None,
        "{}",
        report.stats
    );
}
