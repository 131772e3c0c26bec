//! CoAP ingest end to end over real sockets, against SQLite and PostgreSQL,
//! with OSCORE (RFC 8613) on as it is by default: a confirmable protected
//! heartbeat is stored once and announced once; retransmissions and resends
//! under a new message id are not stored again; every bad input gets its
//! exact answer (protected when it is the handler's answer to a verified
//! request) and stores nothing, and the server keeps serving.

mod common;

use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};
use common::{CoapClient, Dashboard, Engine, Harness, OscoreDevice};
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{BridgeRecord, LockRecord, ReportPath};
use dispatcher::{BridgeId, LockId, OrgId};
use gateway::store::testing::registration;
use schemas::device::encode;
use schemas::*;
use std::time::Duration;

fn fleet() -> ParsedFleet {
    let lock = |id: &str, model: LockModel, bridge: Option<&str>| {
        registration(LockRecord {
            id: LockId::new(id),
            model,
            org: OrgId::new("org-1"),
            departments: vec!["dept-1".into()].into(),
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
            lock("L2", LockModel::Sp2e, Some("B1")),
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
        battery: Battery::Level(BatteryLevel::Low),
        signal_db: 6,
        signal_quality: SignalQuality::Poor,
        carrier: "Singtel".into(),
        channel: Some(ChannelInfo {
            earfcn: 3734,
            pci: 101,
            cell_id: 0x1A2B3C,
            band: 8,
        }),
        lock_state: LockState::Locked,
        door_state: DoorState::Closed,
        firmware: "1.4.2".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
    }
}

fn code(p: &coap_lite::Packet) -> MessageClass {
    p.header.code
}

fn text(p: &coap_lite::Packet) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

async fn stored(h: &Harness) -> (usize, usize) {
    let a = h.server.store.audit().await.unwrap();
    (a.heartbeats.len(), a.events.len())
}

async fn confirmable_heartbeat_is_stored_once_and_announced_once(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let dash = Dashboard::subscribe(h.server.mqtt_addr, &["events/v1/#"]).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");

    let plain = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 1)), true);
    let (req, request) = l1.protect(&plain);
    let ack = c.exchange(&req).await;
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(ack.header.message_id, req.header.message_id);
    assert_eq!(ack.get_token(), req.get_token());
    assert_eq!(code(&ack), MessageClass::Response(ResponseType::Changed));
    let inner = l1
        .open(&request, &ack)
        .expect("a protected answer that verifies");
    assert_eq!(code(&inner), MessageClass::Response(ResponseType::Changed));
    let down = Downlink::decode(&inner.payload).unwrap();
    assert_eq!(down.seq, 1);
    // The registry's intervals (12 h, 30 min) are what the lock must use, not what it reported.
    assert_eq!(down.heartbeat_interval.hours(), 12);
    assert_eq!(down.activity_log_interval.minutes(), 30);

    // Retransmission: same message id -> byte-identical answer, not stored again.
    let again = c.exchange(&req).await;
    assert_eq!(again.to_bytes().unwrap(), ack.to_bytes().unwrap());
    // Resend under a new message id (and, as OSCORE requires, a new
    // sequence number), same device seq -> 2.04, not stored again.
    let resend = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 1)), true);
    let (_, inner) = c.exchange_verified(&mut l1, &resend).await;
    assert_eq!(code(&inner), MessageClass::Response(ResponseType::Changed));
    assert_eq!(Downlink::decode(&inner.payload).unwrap().seq, 1);
    assert_eq!(stored(&h).await, (1, 0));

    dash.wait_for(10, "heartbeat, state and battery-low events", |m| {
        m.len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let topics: Vec<String> = dash.snapshot().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        topics,
        [
            "events/v1/org-1/lock/L1/heartbeat",
            "events/v1/org-1/lock/L1/state",
            "events/v1/org-1/lock/L1/battery-low"
        ],
        "each stored report is announced exactly once"
    );
    dash.assert_all_valid();

    // Non-confirmable: stored the same way, answered with a NON.
    let non = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 2)), false);
    let (ans, inner) = c.exchange_verified(&mut l1, &non).await;
    assert_eq!(ans.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(ans.get_token(), non.get_token());
    assert_eq!(Downlink::decode(&inner.payload).unwrap().seq, 2);
    assert_eq!(stored(&h).await, (1 + 1, 0));

    // Activity log: new entries stored and counted in the ack; a resend stores nothing.
    let batch = ActivityLogBatch {
        lock_id: "L1".into(),
        seq: 3,
        events: (1..=3)
            .map(|s| ActivityEvent {
                seq: s,
                time: 1_790_000_000 + u64::from(s),
                kind: ActivityKind::UnlockedPin,
                actor: Some(format!("slot-{s}")),
            })
            .collect(),
    };
    let req = c_req(&mut c, "log", encode(&batch));
    let (_, ack) = c.exchange_verified(&mut l1, &req).await;
    assert_eq!(LogAck::decode(&ack.payload).unwrap().stored, 3);
    let req = c_req(&mut c, "log", encode(&batch));
    let (_, ack) = c.exchange_verified(&mut l1, &req).await;
    assert_eq!(LogAck::decode(&ack.payload).unwrap().stored, 0);
    assert_eq!(stored(&h).await, (2, 3));
    dash.wait_for(10, "one activity event", |m| {
        m.iter().filter(|(t, _)| t.ends_with("/activity")).count() == 1
    })
    .await;
    dash.assert_all_valid();

    dash.close().await;
    h.stop().await;
}

fn c_req(c: &mut CoapClient, path: &str, payload: Vec<u8>) -> coap_lite::Packet {
    c.request(RequestType::Post, path, payload, true)
}

/// Assert an answer the server gives outside OSCORE: `expected`, no OSCORE
/// option, a diagnostic containing `says`.
fn assert_unprotected(what: &str, ans: &coap_lite::Packet, expected: ResponseType, says: &str) {
    assert_eq!(
        code(ans),
        MessageClass::Response(expected),
        "{what}: {}",
        text(ans)
    );
    assert!(
        ans.get_option(CoapOption::Oscore).is_none(),
        "{what}: answered unprotected"
    );
    assert!(
        text(ans).contains(says),
        "{what}: diagnostic {:?} should say {says:?}",
        text(ans)
    );
}

async fn bad_inputs_get_exact_answers_and_store_nothing(engine: Engine) {
    let h = Harness::start(engine, &fleet()).await;
    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");
    let resp = |t: ResponseType| MessageClass::Response(t);

    // Ping: empty CON -> RST.
    let mut ping = coap_lite::Packet::new();
    ping.header.set_type(MessageType::Confirmable);
    ping.header.code = MessageClass::Empty;
    ping.header.message_id = 4242;
    let rst = c.exchange(&ping).await;
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    assert_eq!(rst.header.message_id, 4242);

    // Discovery needs no protection.
    let req = c.request(RequestType::Get, ".well-known/core", vec![], true);
    let wk = c.exchange(&req).await;
    assert_eq!(code(&wk), resp(ResponseType::Content));
    assert!(
        text(&wk).contains("</hb>") && text(&wk).contains("</log>"),
        "{}",
        text(&wk)
    );

    // A well-formed but unprotected heartbeat: refused (RFC 8613 is on).
    let req = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 1)), true);
    assert_unprotected(
        "unprotected",
        &c.exchange(&req).await,
        ResponseType::Unauthorized,
        gateway::coap::oscore::UNPROTECTED_DIAGNOSTIC,
    );

    // Bad inner requests, protected with L1's key: the handler's answer,
    // itself protected (outer 2.04, inner code and diagnostic).
    let mut critical = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 12)), true);
    // An unknown critical option (RFC 7252 §5.4.1); Class E, so inside.
    critical.add_option(CoapOption::Unknown(2049), vec![1]);
    let mut wrong_format = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 11)), true);
    wrong_format.clear_option(CoapOption::ContentFormat);
    wrong_format.set_content_format(coap_lite::ContentFormat::ApplicationJSON);
    let cases: Vec<(&str, coap_lite::Packet, ResponseType, &str)> = vec![
        (
            "unknown path",
            c.request(
                RequestType::Post,
                "nope",
                encode(&heartbeat("L1", 10)),
                true,
            ),
            ResponseType::NotFound,
            "no resource at \"/nope\"",
        ),
        (
            "wrong method",
            c.request(RequestType::Get, "hb", vec![], true),
            ResponseType::MethodNotAllowed,
            "GET is not allowed on /hb",
        ),
        (
            "garbage payload",
            c.request(RequestType::Post, "hb", b"not cbor at all".to_vec(), true),
            ResponseType::BadRequest,
            "not valid heartbeat CBOR",
        ),
        (
            "oversize",
            c.request(
                RequestType::Post,
                "log",
                vec![0xa0; device::MAX_UPLINK_BYTES + 1],
                true,
            ),
            ResponseType::RequestEntityTooLarge,
            "",
        ),
        (
            "wrong content format",
            wrong_format,
            ResponseType::UnsupportedContentFormat,
            "Content-Format 50 is not accepted on /hb",
        ),
        (
            "unknown critical option",
            critical,
            ResponseType::BadOption,
            "critical option 2049 is not supported",
        ),
    ];
    for (what, req, expected, says) in cases {
        let (_, inner) = c.exchange_verified(&mut l1, &req).await;
        assert_eq!(code(&inner), resp(expected), "{what}: {}", text(&inner));
        assert!(
            text(&inner).contains(says),
            "{what}: diagnostic {:?} should say {says:?}",
            text(&inner)
        );
    }

    // Refused by the RFC 8613 layer before any handler: a lock with no
    // registered key (its own would-be key; no context matches).
    let mut stranger = OscoreDevice::lock("L404");
    let req = c.request(RequestType::Post, "hb", encode(&heartbeat("L404", 1)), true);
    let (ans, inner) = c.exchange_protected(&mut stranger, &req).await;
    assert!(inner.is_err(), "unknown lock: no protected answer");
    assert_unprotected(
        "unknown lock",
        &ans,
        ResponseType::Unauthorized,
        "no key is registered for lock L404",
    );
    // Verified, then refused by the pipeline: unprotected (RFC 8613 §8.3:
    // only a committed or immediate answer is protected).
    let mut l2 = OscoreDevice::lock("L2");
    let req = c.request(RequestType::Post, "hb", encode(&heartbeat("L2", 1)), true);
    let (ans, inner) = c.exchange_protected(&mut l2, &req).await;
    assert!(inner.is_err(), "bluetooth lock: no protected answer");
    assert_unprotected(
        "bluetooth lock reporting directly",
        &ans,
        ResponseType::Forbidden,
        "through its bridge",
    );

    // Not CoAP at all: dropped without an answer.
    c.send_raw(b"\xff\xff hello").await;
    assert!(c.recv(Duration::from_millis(300)).await.is_none());

    assert_eq!(stored(&h).await, (0, 0), "no bad input stored anything");
    // ...and the server still serves everyone else.
    let req = c.request(RequestType::Post, "hb", encode(&heartbeat("L1", 1)), true);
    let (ok, inner) = c.exchange_verified(&mut l1, &req).await;
    assert_eq!(code(&ok), resp(ResponseType::Changed));
    assert_eq!(code(&inner), resp(ResponseType::Changed));
    assert_eq!(stored(&h).await, (1, 0));

    let (_, metrics) = common::http_get(h.server.http_addr, "/metrics")
        .await
        .unwrap();
    for reason in [
        "not_coap",
        "unprotected",
        "malformed",
        "unknown_context",
        "not_nb_iot",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "rejects by reason {reason} are counted:\n{metrics}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_confirmable_heartbeat_is_stored_once_and_announced_once() {
    confirmable_heartbeat_is_stored_once_and_announced_once(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_confirmable_heartbeat_is_stored_once_and_announced_once() {
    confirmable_heartbeat_is_stored_once_and_announced_once(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_inputs_get_exact_answers_and_store_nothing() {
    bad_inputs_get_exact_answers_and_store_nothing(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_inputs_get_exact_answers_and_store_nothing() {
    bad_inputs_get_exact_answers_and_store_nothing(Engine::Postgres).await;
}
