//! Bridges against a plain MQTT broker (rumqttd, nothing subscribed, no
//! gateway behind it), as a load test's Mosquitto baseline has them: with
//! `MqttAcks::Puback` each report's PUBACK ends its exchange, so every report
//! is acknowledged once and the locks go on at their own pace; without it
//! no answer ever comes and every report is resent, which is why the mode
//! exists. Either way each report's first PUBACK is recorded.

use device_sim::fleet::{generate, Fleet, FleetSpec};
use device_sim::run::{self, MqttAcks, SimConfig};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// rumqttd on a free port on its own thread (it never returns), accepting
/// any login: a broker with no application behind it.
fn start_plain_broker() -> SocketAddr {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 256,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
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

/// Four bridges, one linked lock each: every lock reports over MQTT.
fn bridge_fleet() -> Fleet {
    let fleet = generate(&FleetSpec {
        locks: 4,
        bridges: 4,
        orgs: 2,
        mqtt_share: 0.0,
        seed: 9,
    })
    .unwrap();
    assert!(fleet.locks.iter().all(|l| l.bridge_id.is_some()));
    fleet
}

fn config(broker: SocketAddr, acks: MqttAcks) -> SimConfig {
    SimConfig {
        gateway: broker.ip().to_string(),
        mqtt_port: broker.port(),
        speedup: 36_000.0,
        max_reports_per_device: Some(3),
        duration: Some(Duration::from_secs(30)),
        drain_timeout: Duration::from_secs(10),
        mqtt_ack_timeout: Duration::from_millis(300),
        mqtt_acks: acks,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_puback_acks_a_plain_broker_acknowledges_every_report_once() {
    let fleet = bridge_fleet();
    let broker = start_plain_broker();
    let report = run::run(config(broker, MqttAcks::Puback), fleet.clone())
        .await
        .unwrap();
    let s = &report.stats;
    assert!(report.all_acknowledged(), "{:?} {s}", report.unacknowledged);
    let by_lock = report.acknowledged_by_lock();
    for lock in &fleet.locks {
        let mut seqs: Vec<u32> = by_lock[lock.id.as_str()].iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![1, 2, 3], "{}", lock.id);
    }
    // One first PUBACK per report, each the report's acknowledgement.
    assert_eq!(report.pubacked.len(), report.acknowledged.len(), "{s}");
    let mut pubacks: Vec<Duration> = report.pubacked.iter().map(|p| p.pubacked_after).collect();
    let mut acks: Vec<Duration> = report.acknowledged.iter().map(|a| a.acked_after).collect();
    pubacks.sort_unstable();
    acks.sort_unstable();
    assert_eq!(pubacks, acks);
    for a in &report.acknowledged {
        assert!(a.due_after <= a.acked_after, "{a:?}");
    }
    assert!(report
        .pubacked
        .iter()
        .all(|p| p.due_after <= p.pubacked_after));
    assert_eq!(s.errors.get("puback_tracking_lost"), None, "{s}");
    assert_eq!(s.rejected, 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_an_answer_a_plain_broker_never_gives_every_report_is_resent() {
    let fleet = bridge_fleet();
    let broker = start_plain_broker();
    let cfg = SimConfig {
        max_reports_per_device: Some(1),
        drain_timeout: Duration::from_millis(800),
        ..config(broker, MqttAcks::ApplicationAndPuback)
    };
    let report = run::run(cfg, fleet.clone()).await.unwrap();
    let s = &report.stats;
    assert!(report.acknowledged.is_empty(), "{s}");
    assert_eq!(report.unacknowledged.len(), fleet.locks.len(), "{s}");
    assert!(
        s.retransmitted > 0,
        "no answer: resent after the ack timeout: {s}"
    );
    // The broker did take each report: its first PUBACK is on record.
    assert_eq!(report.pubacked.len(), fleet.locks.len(), "{s}");
    assert_eq!(s.errors.get("puback_tracking_lost"), None, "{s}");
}
