//! OSCORE (RFC 8613) on the real server over real sockets, against SQLite
//! and PostgreSQL: a lock's protected request gets a protected answer it
//! verifies; an unprotected, forged, replayed, unknown or malformed one is
//! refused with its code and reason, counted, and stores nothing, while the
//! server keeps serving; a replay is refused after a restart and by another
//! instance; a rotated or deregistered key fails on the very next message,
//! before any ring reloads, and the new key works once it has.

mod common;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use common::{CoapClient, Engine, Harness, Options, OscoreDevice};
use dispatcher::import::ParsedFleet;
use dispatcher::keys::{DeviceRef, MasterSecret};
use dispatcher::registry::{BridgeRecord, LockRecord, ReportPath};
use dispatcher::{BridgeId, LockId, OrgId};
use gateway::store::testing::registration;
use gateway::store::Store;
use schemas::device::encode;
use schemas::*;
use std::time::Duration;

fn fleet() -> ParsedFleet {
    let lock = |id: &str, model: LockModel, bridge: Option<&str>| {
        registration(LockRecord {
            id: LockId::new(id),
            model,
            org: OrgId::new("org-1"),
            departments: vec![].into(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(12).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(30).unwrap(),
            bridge: bridge.map(BridgeId::new),
            path: if model.is_nb_iot() {
                ReportPath::Coap
            } else {
                ReportPath::Bridge
            },
        })
    };
    ParsedFleet {
        locks: vec![
            lock("L1", LockModel::Inb1, None),
            lock("L2", LockModel::Inb1, None),
            lock("L3", LockModel::Sp2e, Some("B1")),
        ],
        bridges: vec![BridgeRecord {
            id: BridgeId::new("B1"),
            org: OrgId::new("org-1"),
        }],
        ..ParsedFleet::default()
    }
}

fn heartbeat(lock: &str, seq: u32) -> Heartbeat {
    Heartbeat {
        lock_id: lock.into(),
        seq,
        device_time: 1_790_000_000,
        battery: Battery::Level(BatteryLevel::High),
        signal_db: 9,
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

fn resp(t: ResponseType) -> MessageClass {
    MessageClass::Response(t)
}

fn text(p: &Packet) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// A plain confirmable POST /hb of `lock`'s heartbeat `seq`, to be protected.
fn post_hb(c: &mut CoapClient, lock: &str, seq: u32) -> Packet {
    c.request(RequestType::Post, "hb", encode(&heartbeat(lock, seq)), true)
}

/// Stored heartbeats as (lock, seq).
async fn stored(h: &Harness) -> Vec<(String, u32)> {
    h.server.store.audit().await.unwrap().heartbeats
}

/// Assert an unprotected refusal: `code`, no OSCORE option, a diagnostic
/// containing `says`.
fn assert_refused(answer: &Packet, code: ResponseType, says: &str) {
    assert_eq!(answer.header.code, resp(code), "{}", text(answer));
    assert!(
        answer.get_option(CoapOption::Oscore).is_none(),
        "a refusal is unprotected"
    );
    assert!(
        text(answer).contains(says),
        "diagnostic {:?} should say {says:?}",
        text(answer)
    );
}

fn rejected(reason: &str) -> String {
    format!("lockfleet_uplinks_rejected_total{{transport=\"coap\",reason=\"{reason}\"}}")
}

async fn protected_heartbeat_gets_a_protected_2_04_and_its_retransmission_the_same_bytes(
    engine: Engine,
) {
    let h = Harness::start(engine, &fleet()).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");

    let plain = post_hb(&mut c, "L1", 1);
    let (outer, request) = l1.protect(&plain);
    assert!(
        outer.get_option(CoapOption::UriPath).is_none(),
        "the path is inside"
    );
    let answer = c.exchange(&outer).await;
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(answer.header.message_id, outer.header.message_id);
    assert_eq!(
        answer.header.code,
        resp(ResponseType::Changed),
        "outer 2.04"
    );
    let inner = l1
        .open(&request, &answer)
        .expect("a protected answer that verifies");
    assert_eq!(inner.header.code, resp(ResponseType::Changed));
    assert_eq!(
        inner.get_first_option(CoapOption::ContentFormat),
        Some(&vec![60])
    );
    let down = Downlink::decode(&inner.payload).unwrap();
    assert_eq!((down.seq, down.heartbeat_interval.hours()), (1, 12));

    // A retransmission (same message id) gets the very same bytes, never a
    // second protection of another answer.
    let again = c.exchange(&outer).await;
    assert_eq!(again.to_bytes().unwrap(), answer.to_bytes().unwrap());
    assert_eq!(stored(&h).await, [("L1".to_string(), 1)]);

    // An activity log, and a non-confirmable heartbeat, the same way.
    let batch = ActivityLogBatch {
        lock_id: "L1".into(),
        seq: 2,
        events: (1..=2)
            .map(|s| ActivityEvent {
                seq: s,
                time: 1_790_000_000,
                kind: ActivityKind::UnlockedPin,
                actor: None,
            })
            .collect(),
    };
    let plain = c.request(RequestType::Post, "log", encode(&batch), true);
    let (_, inner) = c.exchange_protected(&mut l1, &plain).await;
    assert_eq!(LogAck::decode(&inner.unwrap().payload).unwrap().stored, 2);
    let plain = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 3)), false);
    let (answer, inner) = c.exchange_protected(&mut l1, &plain).await;
    assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(Downlink::decode(&inner.unwrap().payload).unwrap().seq, 3);

    // An immediate answer is protected too; discovery needs no protection.
    let plain = c.request(RequestType::Get, "hb", vec![], true);
    let (_, inner) = c.exchange_protected(&mut l1, &plain).await;
    let inner = inner.unwrap();
    assert_eq!(inner.header.code, resp(ResponseType::MethodNotAllowed));
    assert!(
        text(&inner).contains("GET is not allowed on /hb"),
        "{}",
        text(&inner)
    );
    let wk = c.request(RequestType::Get, ".well-known/core", vec![], true);
    let wk = c.exchange(&wk).await;
    assert_eq!(wk.header.code, resp(ResponseType::Content));
    assert!(text(&wk).contains("</hb>"), "{}", text(&wk));

    assert_eq!(
        stored(&h).await,
        [("L1".to_string(), 1), ("L1".to_string(), 3)]
    );
    assert_eq!(
        h.metric("lockfleet_oscore_requests_verified_total{transport=\"coap\"}")
            .await,
        4.0
    );
    assert_eq!(h.metric("lockfleet_oscore_contexts").await, 4.0);
    h.stop().await;
}

async fn bad_requests_are_refused_counted_and_store_nothing(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");

    // Unprotected, to both device resources.
    for path in ["hb", "log"] {
        let req = c.request(RequestType::Post, path, encode(&heartbeat("L1", 1)), true);
        let answer = c.exchange(&req).await;
        assert_refused(
            &answer,
            ResponseType::Unauthorized,
            "requests to /hb and /log must be OSCORE-protected (RFC 8613) with the device's key; see the README's Security section",
        );
    }

    // A forged MAC: one ciphertext bit flipped.
    let plain = post_hb(&mut c, "L1", 1);
    let (mut forged, _) = l1.protect(&plain);
    forged.payload[0] ^= 0x01;
    assert_refused(
        &c.exchange(&forged).await,
        ResponseType::BadRequest,
        "the authentication tag does not verify",
    );

    // An ID Context no key is registered for, and a kid no device sends.
    let mut stranger = OscoreDevice::lock("L404");
    let plain = post_hb(&mut c, "L404", 1);
    let (req, _) = stranger.protect(&plain);
    assert_refused(
        &c.exchange(&req).await,
        ResponseType::Unauthorized,
        "no key is registered for lock L404",
    );
    let with_option = |c: &mut CoapClient, value: Vec<u8>| {
        let mut p = post_hb(c, "L1", 1);
        p.add_option(CoapOption::Oscore, value);
        p
    };
    let req = with_option(
        &mut c,
        vec![0x19, 0x01, 0x05, b'l', b'k', b'/', b'L', b'1', 0x07],
    );
    assert_refused(
        &c.exchange(&req).await,
        ResponseType::Unauthorized,
        "kid h'07'",
    );

    // Truncated and garbage OSCORE options.
    let req = with_option(&mut c, vec![0x19, 0x01, 0x05, b'l', b'k']);
    assert_refused(
        &c.exchange(&req).await,
        ResponseType::BadOption,
        "truncated",
    );
    let req = with_option(&mut c, vec![0xff, 0xfe, 0xfd]);
    assert_refused(&c.exchange(&req).await, ResponseType::BadOption, "reserved");

    // A lock reporting for another with its own key.
    let plain = post_hb(&mut c, "L2", 1);
    let (answer, inner) = c.exchange_protected(&mut l1, &plain).await;
    assert!(inner.is_err(), "refused after verification: unprotected");
    assert_refused(
        &answer,
        ResponseType::Forbidden,
        "protected with the key of lock L1 but reports for lock L2",
    );

    // A lock that must report through its bridge, with its own key.
    let mut l3 = OscoreDevice::lock("L3");
    let plain = post_hb(&mut c, "L3", 1);
    let (answer, _) = c.exchange_protected(&mut l3, &plain).await;
    assert_refused(&answer, ResponseType::Forbidden, "through its bridge");

    assert!(
        stored(&h).await.is_empty(),
        "no bad request stored anything"
    );
    // ...and the server keeps serving.
    let plain = post_hb(&mut c, "L1", 1);
    let (_, inner) = c.exchange_protected(&mut l1, &plain).await;
    assert_eq!(inner.unwrap().header.code, resp(ResponseType::Changed));
    assert_eq!(stored(&h).await, [("L1".to_string(), 1)]);

    for (reason, n) in [
        ("unprotected", 2.0),
        ("decrypt_failed", 1.0),
        ("unknown_context", 1.0),
        ("unknown_kid", 1.0),
        ("malformed_option", 2.0),
        ("device_mismatch", 1.0),
        ("not_nb_iot", 1.0),
    ] {
        assert_eq!(h.metric(&rejected(reason)).await, n, "reason {reason}");
    }
    h.stop().await;
}

async fn a_replay_is_refused_and_still_refused_after_a_restart(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");
    let plain = post_hb(&mut c, "L1", 1);
    let (first, request) = l1.protect(&plain);
    let answer = c.exchange(&first).await;
    l1.open(&request, &answer).expect("accepted");

    // The same protected bytes under a new message id: a replay.
    let mut replay = first.clone();
    replay.header.message_id = c.next_message_id();
    assert_refused(
        &c.exchange(&replay).await,
        ResponseType::Unauthorized,
        "replayed sequence number 0",
    );

    let h = h.restart().await;
    let c = CoapClient::new(h.server.coap_addr).await;
    assert_refused(
        &c.exchange(&replay).await,
        ResponseType::Unauthorized,
        "replayed sequence number 0",
    );
    // Both refusals: the metrics recorder is this test process's, kept
    // across the restart.
    assert_eq!(h.metric(&rejected("replay")).await, 2.0, "counted");
    // A new sequence number is accepted.
    let mut c = c;
    let plain = post_hb(&mut c, "L1", 2);
    let (_, inner) = c.exchange_protected(&mut l1, &plain).await;
    assert_eq!(inner.unwrap().header.code, resp(ResponseType::Changed));
    assert_eq!(
        stored(&h).await,
        [("L1".to_string(), 1), ("L1".to_string(), 2)]
    );
    h.stop().await;
}

/// Two copies of one protected request under different message ids, sent
/// back to back: both pass the in-memory check before either is committed
/// (or the second is caught there), and the commit stores one. Exactly one
/// is answered 2.04.
async fn concurrent_copies_of_a_request_are_stored_and_answered_once(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");
    let plain = post_hb(&mut c, "L1", 1);
    let (first, request) = l1.protect(&plain);
    let mut second = first.clone();
    second.header.message_id = c.next_message_id();
    c.send_raw(&first.to_bytes().unwrap()).await;
    c.send_raw(&second.to_bytes().unwrap()).await;
    let a = c.recv(Duration::from_secs(5)).await.expect("an answer");
    let b = c
        .recv(Duration::from_secs(5))
        .await
        .expect("another answer");
    let (ok, refused): (Vec<Packet>, Vec<Packet>) = [a, b]
        .into_iter()
        .partition(|p| p.get_option(CoapOption::Oscore).is_some());
    assert_eq!(
        (ok.len(), refused.len()),
        (1, 1),
        "one answered, one refused"
    );
    // Either copy may reach the commit first; the other is refused.
    let ids = [first.header.message_id, second.header.message_id];
    assert!(ids.contains(&ok[0].header.message_id));
    assert!(ids.contains(&refused[0].header.message_id));
    assert_ne!(ok[0].header.message_id, refused[0].header.message_id);
    l1.open(&request, &ok[0])
        .expect("the winner is answered protected");
    assert_refused(
        &refused[0],
        ResponseType::Unauthorized,
        "replayed sequence number 0",
    );
    assert_eq!(stored(&h).await, [("L1".to_string(), 1)]);
    h.stop().await;
}

/// Another instance whose ring never saw the sequence number (it started
/// before the request was accepted elsewhere) still refuses the replay: the
/// window in the database is the authority.
async fn another_instance_refuses_a_replay_by_the_stored_window(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let other = h.second_instance().await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");
    let plain = post_hb(&mut c, "L1", 1);
    let (req, request) = l1.protect(&plain);
    l1.open(&request, &c.exchange(&req).await)
        .expect("accepted");

    let c2 = CoapClient::new(other.coap_addr).await;
    assert_refused(
        &c2.exchange(&req).await,
        ResponseType::Unauthorized,
        "replayed sequence number 0",
    );
    assert_eq!(stored(&h).await, [("L1".to_string(), 1)]);
    other.shutdown().await;
    h.stop().await;
}

async fn rotating_or_deregistering_makes_the_old_key_fail_on_the_next_message(engine: Engine) {
    // No reload of the ring while the old keys are tried: the commit alone
    // must refuse them.
    let slow = Options {
        registry_refresh_secs: 3_600,
        ..Options::default()
    };
    let h = Harness::start_with(engine, &fleet(), slow).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let (mut l1, mut l2) = (OscoreDevice::lock("L1"), OscoreDevice::lock("L2"));
    for (dev, lock) in [(&mut l1, "L1"), (&mut l2, "L2")] {
        let plain = post_hb(&mut c, lock, 1);
        let (_, inner) = c.exchange_protected(dev, &plain).await;
        assert_eq!(inner.unwrap().header.code, resp(ResponseType::Changed));
    }

    let admin = Store::open(&h.db.url).await.unwrap();
    let l1_ref = DeviceRef::Lock(LockId::new("L1"));
    let new_secret = MasterSecret::from_bytes([0x42; 32]);
    let generation = admin
        .rotate_key(&gateway::store::testing::server_key(), &l1_ref, &new_secret)
        .await
        .unwrap();
    assert_eq!(generation, 2);
    assert!(admin
        .deregister(&DeviceRef::Lock(LockId::new("L2")))
        .await
        .unwrap());

    let plain = post_hb(&mut c, "L1", 2);
    let (answer, _) = c.exchange_protected(&mut l1, &plain).await;
    assert_refused(
        &answer,
        ResponseType::Unauthorized,
        "no longer the device's",
    );
    let plain = post_hb(&mut c, "L2", 2);
    let (answer, _) = c.exchange_protected(&mut l2, &plain).await;
    assert_refused(
        &answer,
        ResponseType::Unauthorized,
        "no longer the device's",
    );
    // The ring has not reloaded: the new key does not work yet either.
    // (Each key's sequence numbers are kept apart from the others', so that
    // verification, not the replay check before it, is what fails.)
    let mut rotated = OscoreDevice::new(l1_ref.clone(), &new_secret);
    rotated.skip_to(500);
    let plain = post_hb(&mut c, "L1", 3);
    let (answer, _) = c.exchange_protected(&mut rotated, &plain).await;
    assert_refused(&answer, ResponseType::BadRequest, "does not verify");
    assert_eq!(h.metric(&rejected("key_revoked")).await, 2.0);
    assert_eq!(
        stored(&h).await,
        [("L1".to_string(), 1), ("L2".to_string(), 1)],
        "nothing stored with a revoked key"
    );

    // With the ring reloaded (here by a restart) the new key works, the old
    // one fails verification and the deregistered lock is unknown.
    let h = h.restart_with(Options::default()).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let plain = post_hb(&mut c, "L1", 4);
    let (_, inner) = c.exchange_protected(&mut rotated, &plain).await;
    assert_eq!(inner.unwrap().header.code, resp(ResponseType::Changed));
    l1.skip_to(1_000);
    let plain = post_hb(&mut c, "L1", 5);
    let (answer, _) = c.exchange_protected(&mut l1, &plain).await;
    assert_refused(&answer, ResponseType::BadRequest, "does not verify");
    let plain = post_hb(&mut c, "L2", 5);
    let (answer, _) = c.exchange_protected(&mut l2, &plain).await;
    assert_refused(
        &answer,
        ResponseType::Unauthorized,
        "no key is registered for lock L2",
    );

    // A rotation while running: the housekeeping reload picks the new key
    // up within the refresh interval; until then it fails and stores nothing.
    let third = MasterSecret::from_bytes([0x43; 32]);
    admin
        .rotate_key(&gateway::store::testing::server_key(), &l1_ref, &third)
        .await
        .unwrap();
    let mut newest = OscoreDevice::new(l1_ref, &third);
    newest.skip_to(2_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let plain = post_hb(&mut c, "L1", 6);
        let (answer, inner) = c.exchange_protected(&mut newest, &plain).await;
        match inner {
            Ok(inner) => {
                assert_eq!(inner.header.code, resp(ResponseType::Changed));
                break;
            }
            Err(_) => assert_refused(&answer, ResponseType::BadRequest, "does not verify"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ring never picked up the rotated key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rotated.skip_to(5_000);
    let plain = post_hb(&mut c, "L1", 7);
    let (answer, _) = c.exchange_protected(&mut rotated, &plain).await;
    assert_refused(&answer, ResponseType::BadRequest, "does not verify");
    assert_eq!(
        stored(&h).await,
        [
            ("L1".to_string(), 1),
            ("L1".to_string(), 4),
            ("L1".to_string(), 6),
            ("L2".to_string(), 1)
        ]
    );
    admin.close().await;
    h.stop().await;
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::Postgres).await;
            })*
        }
    };
}

on_both_engines!(
    protected_heartbeat_gets_a_protected_2_04_and_its_retransmission_the_same_bytes,
    bad_requests_are_refused_counted_and_store_nothing,
    a_replay_is_refused_and_still_refused_after_a_restart,
    concurrent_copies_of_a_request_are_stored_and_answered_once,
    another_instance_refuses_a_replay_by_the_stored_window,
    rotating_or_deregistering_makes_the_old_key_fail_on_the_next_message,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_dev_accepts_unprotected_requests_and_still_verifies_protected_ones() {
    let h = Harness::start_insecure(Engine::Sqlite, &fleet()).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let req = post_hb(&mut c, "L1", 1);
    let answer = c.exchange(&req).await;
    assert_eq!(answer.header.code, resp(ResponseType::Changed));
    assert!(answer.get_option(CoapOption::Oscore).is_none());
    Downlink::decode(&answer.payload).unwrap();

    let mut l1 = OscoreDevice::lock("L1");
    let plain = post_hb(&mut c, "L1", 2);
    let (_, inner) = c.exchange_protected(&mut l1, &plain).await;
    assert_eq!(Downlink::decode(&inner.unwrap().payload).unwrap().seq, 2);
    let plain = post_hb(&mut c, "L1", 3);
    let (mut forged, _) = l1.protect(&plain);
    forged.payload[2] ^= 0x10;
    assert_refused(
        &c.exchange(&forged).await,
        ResponseType::BadRequest,
        "does not verify",
    );
    assert_eq!(
        stored(&h).await,
        [("L1".to_string(), 1), ("L1".to_string(), 2)]
    );
    assert_eq!(
        h.metric("lockfleet_oscore_unprotected_accepted_total{transport=\"coap\"}")
            .await,
        1.0
    );
    h.stop().await;
}
