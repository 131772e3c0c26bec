//! The CoAP locks against a small real UDP server (a test peer that answers
//! like the gateway): retransmission, loss and duplication, refusals, and
//! the ledger a gateway test relies on.

mod common;

use common::{coap_fleet, Behaviour, CoapServer};
use device_sim::net::NetFaults;
use device_sim::run::{self, SimConfig};
use schemas::device::UplinkKind;
use std::collections::HashSet;
use std::time::Duration;

/// 1 h of simulated time per 0.1 s: a 60-minute log interval every 100 ms.
const FAST: f64 = 36_000.0;

fn config(server: &CoapServer) -> SimConfig {
    SimConfig {
        gateway: server.addr.ip().to_string(),
        coap_port: server.addr.port(),
        speedup: FAST,
        ack_timeout: Duration::from_millis(40),
        drain_timeout: Duration::from_secs(20),
        duration: Some(Duration::from_secs(30)),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn a_lost_first_datagram_is_retransmitted_with_the_same_message_id_and_token() {
    let server = CoapServer::start(Behaviour {
        drop_first: 1,
        ..Behaviour::default()
    })
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(3),
        ..config(&server)
    };
    let report = run::run(cfg, coap_fleet(1, 1)).await.unwrap();

    let seqs: Vec<u32> = report.acknowledged.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(report.all_acknowledged());
    assert!(report.stats.retransmitted >= 1, "{}", report.stats);
    let seen = server.seen.lock().unwrap();
    // The first datagram the server processed is the retransmission of the
    // dropped one: same message id, same token.
    let (mid, token) = &seen.dropped[0];
    assert_eq!((&seen.datagrams[0].0, &seen.datagrams[0].1), (mid, token));
    // Later exchanges use new message ids and tokens.
    let later: HashSet<(u16, Vec<u8>)> = seen
        .datagrams
        .iter()
        .skip(1)
        .map(|d| (d.0, d.1.clone()))
        .collect();
    assert!(later.iter().all(|(m, t)| m != mid && t != token));
    assert_eq!(
        report.acknowledged[0].attempts, 1,
        "one exchange, retransmitted"
    );
}

#[tokio::test]
async fn ack_latency_times_every_answered_exchange_from_its_first_transmission() {
    let server = CoapServer::start(Behaviour {
        drop_first: 1,
        ..Behaviour::default()
    })
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(3),
        ..config(&server)
    };
    let ack_timeout = cfg.ack_timeout;
    let report = run::run(cfg, coap_fleet(1, 1)).await.unwrap();

    let l = &report.ack_latency;
    let answered = l.count(UplinkKind::Heartbeat) + l.count(UplinkKind::ActivityLog);
    assert_eq!(answered, 3, "one answered exchange per report");
    let kinds = [UplinkKind::Heartbeat, UplinkKind::ActivityLog];
    let slowest = kinds.iter().filter_map(|k| l.quantile(*k, 1.0)).max();
    let fastest = kinds.iter().filter_map(|k| l.quantile(*k, 0.0)).min();
    // The dropped first datagram was answered only after its retransmission.
    assert!(slowest.unwrap() >= ack_timeout, "{slowest:?}");
    assert!(fastest.unwrap() < ack_timeout, "{fastest:?}");
}

#[tokio::test]
async fn a_lossy_duplicating_network_still_ends_with_every_report_acknowledged_once() {
    let server = CoapServer::start(Behaviour::default()).await;
    let cfg = SimConfig {
        max_reports_per_device: Some(6),
        faults: NetFaults::new(0.2, 0.2).unwrap(),
        sockets: 4,
        seed: 7,
        ..config(&server)
    };
    let fleet = coap_fleet(24, 3);
    let report = run::run(cfg, fleet.clone()).await.unwrap();
    let s = &report.stats;
    assert!(report.all_acknowledged(), "{:?}", report.unacknowledged);
    assert!(
        s.dropped > 0 && s.dup_injected > 0 && s.retransmitted > 0,
        "{s}"
    );

    // Each (lock, seq) once in the ledger, 6 per lock, seqs 1..=6.
    let by_lock = report.acknowledged_by_lock();
    assert_eq!(by_lock.len(), 24);
    for lock in &fleet.locks {
        let mut seqs: Vec<u32> = by_lock[lock.id.as_str()].iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "{}", lock.id);
    }
    // Everything acknowledged reached the server, with the events it carried.
    let seen = server.seen.lock().unwrap();
    let mut acked_events = HashSet::new();
    for r in &report.acknowledged {
        assert!(
            seen.delivered.contains_key(&(r.lock_id.clone(), r.seq)),
            "{r:?}"
        );
        for e in r.event_seqs.clone() {
            assert!(seen.events.contains(&(r.lock_id.clone(), e)));
            assert!(
                acked_events.insert((r.lock_id.clone(), e)),
                "event carried twice"
            );
        }
    }
    assert_eq!(acked_events, seen.events);
    assert!(seen.duplicates > 0, "the server saw injected duplicates");
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.outstanding, 0);
}

#[tokio::test]
async fn refused_reports_are_counted_by_code_and_not_retried() {
    let server = CoapServer::start(Behaviour {
        refuse_logs: true,
        ..Behaviour::default()
    })
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(4),
        ..config(&server)
    };
    let report = run::run(cfg, coap_fleet(3, 2)).await.unwrap();
    let refused = report.stats.errors.get("4.00").copied().unwrap_or(0);
    assert!(refused > 0, "{}", report.stats);
    assert_eq!(report.stats.rejected, refused);
    assert!(report
        .acknowledged
        .iter()
        .all(|r| r.kind == UplinkKind::Heartbeat));
    assert!(
        report.all_acknowledged(),
        "refused reports leave the outbox"
    );
    // Not retried: each refused report reached the server once.
    let seen = server.seen.lock().unwrap();
    let log_posts = seen.datagrams.iter().filter(|d| d.2 == "log").count() as u64;
    assert_eq!(log_posts, refused);
}

/// RFC 7252 §5.9.3: a 5.03 means "not now". The lock keeps the report and
/// sends it again after Max-Age, as a real lock does; nothing is lost.
#[tokio::test]
async fn a_busy_gateway_s_5_03_is_retried_after_max_age_and_nothing_is_lost() {
    let server = CoapServer::start(Behaviour {
        busy_first: 4,
        ..Behaviour::default()
    })
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(2),
        ..config(&server)
    };
    let report = run::run(cfg, coap_fleet(2, 3)).await.unwrap();
    assert!(report.all_acknowledged(), "{}", report.stats);
    assert_eq!(
        report.stats.rejected, 0,
        "5.03 is not a refusal: {}",
        report.stats
    );
    assert_eq!(
        report.stats.errors.get("5.03").copied(),
        Some(4),
        "{}",
        report.stats
    );
    assert_eq!(report.acknowledged.len(), 4);
    assert_eq!(server.seen.lock().unwrap().busy, 4);
}

#[tokio::test]
async fn wait_then_stop_ends_a_run_with_everything_acknowledged() {
    let server = CoapServer::start(Behaviour::default()).await;
    let cfg = SimConfig {
        duration: None,
        faults: NetFaults::new(0.1, 0.0).unwrap(),
        ..config(&server)
    };
    let handle = run::start(cfg, coap_fleet(10, 5)).await.unwrap();
    assert!(
        handle.wait_acked_per_lock(3, Duration::from_secs(20)).await,
        "{}",
        handle.snapshot()
    );
    handle.stop();
    let report = handle.finish().await.unwrap();
    assert!(report.all_acknowledged(), "{:?}", report.unacknowledged);
    for (_, acked) in report.acknowledged_by_lock() {
        assert!(acked.len() >= 3);
    }
}

#[tokio::test]
async fn an_unreachable_gateway_leaves_reports_pending_not_lost() {
    // Bind and close a socket: nobody answers on that port.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = SimConfig {
        gateway: "127.0.0.1".into(),
        coap_port: port,
        speedup: FAST,
        ack_timeout: Duration::from_millis(20),
        max_reports_per_device: Some(2),
        drain_timeout: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let report = run::run(cfg, coap_fleet(2, 1)).await.unwrap();
    assert!(report.acknowledged.is_empty());
    let pending: Vec<(String, u32)> = report
        .unacknowledged
        .iter()
        .map(|p| (p.lock_id.clone(), p.seq))
        .collect();
    assert_eq!(pending.len(), 4, "{pending:?}");
    assert_eq!(report.stats.outstanding, 4);
}
