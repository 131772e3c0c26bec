//! The CoAP locks against a small real UDP server (a test peer that answers
//! like the gateway, OSCORE included): retransmission, loss and
//! duplication, refusals, the ledger a gateway test relies on, and the
//! protection of every exchange.

mod common;

use coap_lite::{CoapOption, Packet};
use common::{coap_fleet, Behaviour, CoapServer};
use device_sim::fleet::Fleet;
use device_sim::net::NetFaults;
use device_sim::run::{self, SimConfig};
use lockfleet_oscore::OscoreOption;
use schemas::device::UplinkKind;
use std::collections::{HashMap, HashSet};
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
async fn a_lost_first_datagram_is_retransmitted_with_the_same_message_id_token_and_bytes() {
    let fleet = coap_fleet(1, 1);
    let server = CoapServer::secure(
        Behaviour {
            drop_first: 1,
            ..Behaviour::default()
        },
        &fleet,
    )
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(3),
        ..config(&server)
    };
    let report = run::run(cfg, fleet).await.unwrap();

    let seqs: Vec<u32> = report.acknowledged.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(report.all_acknowledged());
    assert!(report.stats.retransmitted >= 1, "{}", report.stats);
    let seen = server.seen.lock().unwrap();
    // The first datagram the server processed is the retransmission of the
    // dropped one: same message id, same token.
    let (mid, token) = &seen.dropped[0];
    assert_eq!((&seen.datagrams[0].0, &seen.datagrams[0].1), (mid, token));
    // The very same bytes: the same OSCORE Partial IV, not protected again.
    assert_eq!(seen.datagram_bytes[0], seen.dropped_bytes[0]);
    assert_eq!(seen.oscore[0], ("lk/L000001".to_string(), 1));
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
    let fleet = coap_fleet(1, 1);
    let server = CoapServer::secure(
        Behaviour {
            drop_first: 1,
            ..Behaviour::default()
        },
        &fleet,
    )
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(3),
        ..config(&server)
    };
    let ack_timeout = cfg.ack_timeout;
    let report = run::run(cfg, fleet).await.unwrap();

    let l = &report.ack_latency;
    let answered = l.count(UplinkKind::Heartbeat) + l.count(UplinkKind::ActivityLog);
    assert_eq!(answered, 3, "one answered exchange per report");
    let kinds = [UplinkKind::Heartbeat, UplinkKind::ActivityLog];
    let slowest = kinds.iter().filter_map(|k| l.quantile(*k, 1.0)).max();
    let fastest = kinds.iter().filter_map(|k| l.quantile(*k, 0.0)).min();
    // The dropped first datagram was answered only after its retransmission.
    assert!(slowest.unwrap() >= ack_timeout, "{slowest:?}");
    assert!(fastest.unwrap() < ack_timeout, "{fastest:?}");
    // Each acknowledged report carries its exchange's round trip, the same
    // times the histograms hold, and it ended before the acknowledgement.
    let rtts: Vec<Duration> = report
        .acknowledged
        .iter()
        .map(|r| r.rtt.expect("a CoAP exchange is timed"))
        .collect();
    assert_eq!(rtts.len(), 3);
    let max = *rtts.iter().max().unwrap();
    assert!(max >= ack_timeout, "{rtts:?}");
    assert!(
        max.abs_diff(slowest.unwrap()) <= Duration::from_millis(1),
        "{max:?} against the histogram's {slowest:?}"
    );
    assert!(
        rtts.iter().filter(|r| **r < ack_timeout).count() == 2,
        "{rtts:?}"
    );
    for r in &report.acknowledged {
        assert!(r.rtt.unwrap() <= r.acked_after, "{r:?}");
    }
}

#[tokio::test]
async fn a_lossy_duplicating_network_still_ends_with_every_report_acknowledged_once() {
    let fleet = coap_fleet(24, 3);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let cfg = SimConfig {
        max_reports_per_device: Some(6),
        faults: NetFaults::new(0.2, 0.2).unwrap(),
        sockets: 4,
        seed: 7,
        ..config(&server)
    };
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
    // Duplicates were answered from the cache, resends were protected
    // afresh: the replay window never had to refuse anything.
    assert!(
        seen.security_refusals.is_empty(),
        "{:?}",
        seen.security_refusals
    );
    assert_eq!(s.errors.get("oscore_response"), None, "{s}");
}

#[tokio::test]
async fn refused_reports_are_counted_by_code_and_not_retried() {
    let fleet = coap_fleet(3, 2);
    let server = CoapServer::secure(
        Behaviour {
            refuse_logs: true,
            ..Behaviour::default()
        },
        &fleet,
    )
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(4),
        ..config(&server)
    };
    let report = run::run(cfg, fleet).await.unwrap();
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

    // A refusal is still an answer: every exchange counts as a round trip,
    // acknowledged or refused, and is timed as one.
    let s = &report.stats;
    assert_eq!(s.answered, s.acked + refused, "{s}");
    assert_eq!(report.answered.len() as u64, s.answered);
    let answered = |kind| report.answered.iter().filter(|a| a.kind == kind).count() as u64;
    assert_eq!(answered(UplinkKind::ActivityLog), refused);
    assert_eq!(answered(UplinkKind::Heartbeat), s.acked);
    let l = &report.answer_latency;
    assert_eq!(l.count(UplinkKind::ActivityLog), refused);
    assert_eq!(l.count(UplinkKind::Heartbeat), s.acked);
    assert_eq!(
        report.ack_latency.count(UplinkKind::ActivityLog),
        0,
        "a refusal is not an acknowledgement"
    );
    // Each answer is timed from the start of the run, at most as late as
    // the run's end.
    assert!(report
        .answered
        .iter()
        .all(|a| !a.answered_after.is_zero() && a.answered_after <= s.elapsed));
}

/// RFC 7252 §5.9.3: a 5.03 means "not now". The lock keeps the report and
/// sends it again after Max-Age, as a real lock does; nothing is lost.
#[tokio::test]
async fn a_busy_gateway_s_5_03_is_retried_after_max_age_and_nothing_is_lost() {
    let fleet = coap_fleet(2, 3);
    let server = CoapServer::secure(
        Behaviour {
            busy_first: 4,
            ..Behaviour::default()
        },
        &fleet,
    )
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(2),
        ..config(&server)
    };
    let report = run::run(cfg, fleet).await.unwrap();
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
    // Four 5.03 answers and four 2.04: eight round trips.
    assert_eq!(report.stats.answered, 8, "{}", report.stats);
    assert_eq!(report.answered.len(), 8);
}

#[tokio::test]
async fn wait_then_stop_ends_a_run_with_everything_acknowledged() {
    let fleet = coap_fleet(10, 5);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let cfg = SimConfig {
        duration: None,
        faults: NetFaults::new(0.1, 0.0).unwrap(),
        ..config(&server)
    };
    let handle = run::start(cfg, fleet).await.unwrap();
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

/// The OSCORE option of a request datagram.
fn oscore_option(datagram: &[u8]) -> OscoreOption {
    let p = Packet::from_bytes(datagram).unwrap();
    OscoreOption::decode(p.get_first_option(CoapOption::Oscore).unwrap()).unwrap()
}

#[tokio::test]
async fn every_request_is_protected_with_the_lock_s_context_and_a_fresh_sequence_number() {
    let fleet = coap_fleet(3, 4);
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let cfg = SimConfig {
        max_reports_per_device: Some(4),
        ..config(&server)
    };
    let report = run::run(cfg, fleet.clone()).await.unwrap();
    assert!(report.all_acknowledged(), "{}", report.stats);
    assert_eq!(report.acknowledged.len(), 12);

    let seen = server.seen.lock().unwrap();
    for bytes in &seen.datagram_bytes {
        let p = Packet::from_bytes(bytes).unwrap();
        let outer: Vec<u16> = p.options().map(|(n, _)| *n).collect();
        assert_eq!(outer, vec![9], "only the OSCORE option outside");
        // The lock id is in the CBOR, which is encrypted.
        assert!(!String::from_utf8_lossy(&p.payload).contains("L00000"));
    }
    // Per lock, one Partial IV per exchange, 1, 2, 3, ... under its own context.
    let mut by_context: HashMap<&str, Vec<u64>> = HashMap::new();
    for (context, seq) in &seen.oscore {
        by_context.entry(context).or_default().push(*seq);
    }
    for lock in &fleet.locks {
        let seqs = &by_context[format!("lk/{}", lock.id).as_str()];
        assert_eq!(*seqs, (1..=4).collect::<Vec<u64>>(), "{}", lock.id);
        assert_eq!(report.counters[&lock.id].next_oscore_seq, 5);
    }
}

#[tokio::test]
async fn a_resend_after_giving_up_is_protected_afresh_with_a_new_partial_iv() {
    let fleet = coap_fleet(1, 2);
    // The first exchange's five transmissions are all lost: it gives up.
    let transmissions = 1 + device_sim::coap_client::MAX_RETRANSMIT as usize;
    let server = CoapServer::secure(
        Behaviour {
            drop_first: transmissions,
            ..Behaviour::default()
        },
        &fleet,
    )
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(1),
        ..config(&server)
    };
    let report = run::run(cfg, fleet).await.unwrap();
    assert!(report.all_acknowledged(), "{}", report.stats);
    assert_eq!(report.stats.gave_up, 1, "{}", report.stats);
    assert_eq!(report.acknowledged[0].attempts, 2);

    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.dropped_bytes.len(), transmissions);
    assert!(
        seen.dropped_bytes
            .iter()
            .all(|b| *b == seen.dropped_bytes[0]),
        "retransmissions are the same bytes"
    );
    let lost = oscore_option(&seen.dropped_bytes[0]);
    assert_eq!(lost.partial_iv.map(|p| p.seq()), Some(1));
    // The new exchange: a new message id and a new Partial IV.
    assert_ne!(seen.datagrams[0].0, seen.dropped[0].0);
    assert_eq!(seen.oscore, vec![("lk/L000001".to_string(), 2)]);
    assert_eq!(report.counters["L000001"].next_oscore_seq, 3);
}

#[tokio::test]
async fn an_answer_that_does_not_verify_is_counted_and_the_report_retried() {
    let fleet = coap_fleet(1, 3);
    let server = CoapServer::secure(
        Behaviour {
            unprotected_first_answers: 1,
            corrupt_first_answers: 1,
            ..Behaviour::default()
        },
        &fleet,
    )
    .await;
    let cfg = SimConfig {
        max_reports_per_device: Some(2),
        ..config(&server)
    };
    let report = run::run(cfg, fleet).await.unwrap();
    let s = &report.stats;
    assert!(report.all_acknowledged(), "{s}");
    assert_eq!(s.errors.get("oscore_response"), Some(&2), "{s}");
    assert_eq!(s.rejected, 0, "{s}");
    let seqs: Vec<u32> = report.acknowledged.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    // The first report went three times: an unprotected 2.04 and a forged
    // one were not believed.
    assert_eq!(report.acknowledged[0].attempts, 3);
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.forged, 2);
    assert_eq!(seen.delivered[&("L000001".to_string(), 1)], 3);
}

#[tokio::test]
async fn a_gateway_with_other_keys_refuses_every_report_and_none_is_retried() {
    let fleet = coap_fleet(2, 5);
    // The same devices paired with other secrets (generation draws new ones).
    let other_keys = coap_fleet(2, 5);
    assert_eq!(fleet.locks[0].id, other_keys.locks[0].id);
    let server = CoapServer::secure(Behaviour::default(), &other_keys).await;
    let cfg = SimConfig {
        max_reports_per_device: Some(3),
        ..config(&server)
    };
    let report = run::run(cfg, fleet).await.unwrap();
    let s = &report.stats;
    assert!(report.acknowledged.is_empty(), "{s}");
    assert!(
        report.all_acknowledged(),
        "refused reports leave the outbox"
    );
    assert_eq!(s.rejected, 6, "{s}");
    assert_eq!(s.errors.get("4.00"), Some(&6), "decryption failed: {s}");
    // What a raw CoAP server that refuses everything looks like: every
    // exchange answered and timed, none acknowledged, and the locks kept
    // to their schedule (3 reports each).
    assert_eq!(s.answered, 6, "{s}");
    assert_eq!(report.answered.len(), 6);
    let kinds = [UplinkKind::Heartbeat, UplinkKind::ActivityLog];
    let timed: u64 = kinds.iter().map(|k| report.answer_latency.count(*k)).sum();
    let acked: u64 = kinds.iter().map(|k| report.ack_latency.count(*k)).sum();
    assert_eq!((timed, acked), (6, 0));
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.datagrams.len(), 6, "not retried");
    assert_eq!(seen.security_refusals.get("decrypt_failed"), Some(&6));
    assert!(seen.delivered.is_empty());
}

#[tokio::test]
async fn an_insecure_run_sends_plain_cbor_to_a_gateway_without_security() {
    let fleet: Fleet = coap_fleet(2, 6);
    let server = CoapServer::insecure(Behaviour::default()).await;
    let cfg = SimConfig {
        max_reports_per_device: Some(2),
        security: false,
        ..config(&server)
    };
    let report = run::run(cfg, fleet.clone()).await.unwrap();
    assert!(report.all_acknowledged(), "{}", report.stats);
    assert_eq!(report.acknowledged.len(), 4);
    let seen = server.seen.lock().unwrap();
    for bytes in &seen.datagram_bytes {
        let p = Packet::from_bytes(bytes).unwrap();
        assert!(p.get_first_option(CoapOption::Oscore).is_none());
        assert!(p.get_first_option(CoapOption::UriPath).is_some());
    }
    for lock in &fleet.locks {
        assert_eq!(report.counters[&lock.id].next_oscore_seq, 1, "never drawn");
    }
}
