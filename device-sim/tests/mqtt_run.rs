//! MQTT locks and bridges against an embedded broker (rumqttd) and a test
//! peer that answers like the gateway: acks on the right topics, resends
//! under loss, bridge status online/offline.

mod common;

use device_sim::fleet::{generate, FleetSpec};
use device_sim::net::NetFaults;
use device_sim::run::{self, SimConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use schemas::device::encode;
use schemas::topic::{down, DeviceTopic};
use schemas::{ActivityLogBatch, Downlink, Heartbeat, LogAck};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Starts rumqttd on a free port on its own thread (it never returns).
fn start_broker() -> SocketAddr {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
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
    addr
}

#[derive(Default)]
struct Peer {
    delivered: HashSet<(String, u32)>,
    statuses: HashMap<String, Vec<String>>,
}

/// A gateway stand-in: answers every uplink on its ack topic.
async fn start_peer(broker: SocketAddr) -> Arc<Mutex<Peer>> {
    let mut opts = MqttOptions::new("test-gateway", broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let peer = Arc::new(Mutex::new(Peer::default()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let state = peer.clone();
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
                    let reply = match topic {
                        DeviceTopic::BridgeStatus { bridge } => {
                            let status = String::from_utf8_lossy(&p.payload).into_owned();
                            state
                                .lock()
                                .unwrap()
                                .statuses
                                .entry(bridge.to_string())
                                .or_default()
                                .push(status);
                            None
                        }
                        DeviceTopic::LockHeartbeat { .. } | DeviceTopic::BridgeHeartbeat { .. } => {
                            let hb = Heartbeat::decode(&p.payload).unwrap();
                            state
                                .lock()
                                .unwrap()
                                .delivered
                                .insert((hb.lock_id.clone(), hb.seq));
                            let dl = Downlink {
                                server_time: hb.device_time,
                                heartbeat_interval: hb.heartbeat_interval,
                                activity_log_interval: hb.activity_log_interval,
                                seq: hb.seq,
                            };
                            let t = match topic {
                                DeviceTopic::BridgeHeartbeat { bridge } => {
                                    down::bridge_heartbeat_ack(bridge, &hb.lock_id)
                                }
                                _ => down::lock_heartbeat_ack(&hb.lock_id),
                            };
                            Some((t, encode(&dl)))
                        }
                        DeviceTopic::LockLog { .. } | DeviceTopic::BridgeLog { .. } => {
                            let b = ActivityLogBatch::decode(&p.payload).unwrap();
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
                            Some((t, encode(&ack)))
                        }
                    };
                    if let Some((t, payload)) = reply {
                        client
                            .publish(t, QoS::AtLeastOnce, false, payload)
                            .await
                            .unwrap();
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap()
        .unwrap();
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_locks_and_bridges_get_every_report_acknowledged_and_bridges_say_goodbye() {
    let broker = start_broker();
    let peer = start_peer(broker).await;
    let fleet = generate(&FleetSpec {
        locks: 8,
        bridges: 3,
        orgs: 2,
        mqtt_share: 1.0,
        seed: 4,
    })
    .unwrap();
    let cfg = SimConfig {
        gateway: broker.ip().to_string(),
        mqtt_port: broker.port(),
        speedup: 36_000.0,
        max_reports_per_device: Some(3),
        duration: Some(Duration::from_secs(30)),
        drain_timeout: Duration::from_secs(20),
        mqtt_ack_timeout: Duration::from_millis(300),
        faults: NetFaults::new(0.15, 0.15).unwrap(),
        ..SimConfig::default()
    };
    let report = run::run(cfg, fleet.clone()).await.unwrap();
    assert!(
        report.all_acknowledged(),
        "{:?} {}",
        report.unacknowledged,
        report.stats
    );
    let by_lock = report.acknowledged_by_lock();
    for lock in &fleet.locks {
        let mut seqs: Vec<u32> = by_lock[lock.id.as_str()].iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![1, 2, 3], "{}", lock.id);
        assert_eq!(report.counters[&lock.id].next_seq, 4, "{}", lock.id);
    }
    assert!(
        report.stats.dropped > 0 && report.stats.retransmitted > 0,
        "{}",
        report.stats
    );
    let delivered = peer.lock().unwrap().delivered.clone();
    for r in &report.acknowledged {
        assert!(delivered.contains(&(r.lock_id.clone(), r.seq)));
    }

    // Every bridge announced itself and said offline before disconnecting
    // (the announcement may take a moment to reach the peer).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let done = {
            let p = peer.lock().unwrap();
            fleet.bridges.iter().all(|b| {
                p.statuses.get(&b.id).is_some_and(|s| {
                    s.first().map(String::as_str) == Some("online")
                        && s.last().map(String::as_str) == Some("offline")
                })
            })
        };
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "statuses: {:?}",
            peer.lock().unwrap().statuses
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
