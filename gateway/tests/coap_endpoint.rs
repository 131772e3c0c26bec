//! The CoAP endpoint over real UDP sockets: framing, deduplication, error
//! codes and shutdown. The store is stood in for by a small task that answers
//! every queued report as stored, so these tests exercise the transport only;
//! the end-to-end tests against a real store live elsewhere.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use dispatcher::registry::{BridgeRecord, LockRecord, LockRegistration, ReportPath};
use dispatcher::{BridgeId, LockId, OrgId, Registry};
use gateway::coap::{self, CoapConfig};
use gateway::ingest::{Ingest, Outcome, ReportBody, Subject, WriteRequest};
use gateway::keys::KeyRing;
use gateway::store::testing::registration;
use schemas::device::{encode, MAX_UPLINK_BYTES};
use schemas::units::BatteryLevel;
use schemas::{
    ActivityEvent, ActivityKind, ActivityLogBatch, ActivityLogInterval, Battery, DoorState,
    Downlink, Heartbeat, HeartbeatInterval, LockModel, LockState, LogAck, SignalQuality, Uplink,
};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for an answer that must come.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure no answer comes.
const SILENCE: Duration = Duration::from_millis(200);

fn lock(id: &str, model: LockModel, bridge: Option<&str>) -> LockRegistration {
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

/// A stand-in for the group-commit writer: answers each queued report as
/// stored, once `gate` lets it, and records what it saw.
struct FakeStore {
    seen: Arc<Mutex<Vec<(String, u32)>>>,
    gate: Arc<Semaphore>,
    arrivals: mpsc::UnboundedReceiver<()>,
}

impl FakeStore {
    fn spawn(mut queue: mpsc::Receiver<WriteRequest>, open: bool) -> FakeStore {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(if open {
            Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let (seen2, gate2) = (seen.clone(), gate.clone());
        tokio::spawn(async move {
            while let Some(req) = queue.recv().await {
                let _ = arrived.send(());
                let Ok(permit) = gate2.acquire().await else {
                    return;
                };
                permit.forget();
                let Subject::Lock(rec) = &req.subject else {
                    panic!("CoAP submitted a bridge report");
                };
                let ReportBody::Uplink(uplink) = &req.report.body else {
                    panic!("CoAP submitted a bridge status");
                };
                seen2
                    .lock()
                    .unwrap()
                    .push((uplink.lock_id().to_string(), uplink.seq()));
                let outcome = match uplink {
                    Uplink::Heartbeat(hb) => Outcome::Heartbeat {
                        stored: true,
                        downlink: Downlink {
                            server_time: 1_790_000_100,
                            heartbeat_interval: rec.heartbeat_interval,
                            activity_log_interval: rec.activity_log_interval,
                            seq: hb.seq,
                            jobs: vec![],
                            more: false,
                            next_heartbeat_at: None,
                        },
                    },
                    Uplink::ActivityLog(b) => Outcome::ActivityLog {
                        ack: LogAck {
                            server_time: 1_790_000_100,
                            stored: b.events.len() as u16,
                            seq: b.seq,
                        },
                    },
                    Uplink::JobReport(r) => Outcome::JobReport {
                        downlink: Downlink {
                            server_time: 1_790_000_100,
                            heartbeat_interval: rec.heartbeat_interval,
                            activity_log_interval: rec.activity_log_interval,
                            seq: r.seq,
                            jobs: vec![],
                            more: false,
                            next_heartbeat_at: None,
                        },
                    },
                };
                let _ = req.reply.send(Ok(outcome));
            }
        });
        FakeStore {
            seen,
            gate,
            arrivals,
        }
    }

    fn seen(&self) -> Vec<(String, u32)> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_arrival(&mut self) {
        tokio::time::timeout(ANSWER_TIMEOUT, self.arrivals.recv())
            .await
            .expect("the report reached the store")
            .expect("the store runs");
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
    store: FakeStore,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(CoapConfig::default(), true).await
    }

    async fn start_with(config: CoapConfig, store_open: bool) -> Server {
        let registry = Registry::new(
            [
                lock("L1", LockModel::Inb1, None).record,
                lock("L2", LockModel::Sp2e, Some("B1")).record,
            ],
            [BridgeRecord {
                id: BridgeId::new("B1"),
                org: OrgId::new("org-1"),
            }],
        );
        let (queue, queued) = mpsc::channel(16);
        let ingest = Ingest::new(Arc::new(RwLock::new(registry)), queue);
        let store = FakeStore::spawn(queued, store_open);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        // This file holds the server to RFC 7252 with plain requests; the
        // OSCORE layer in front of the handler is tested in `oscore_coap.rs`.
        let config = CoapConfig {
            insecure_dev: true,
            ..config
        };
        let ring = Arc::new(KeyRing::new());
        let task = tokio::spawn(coap::serve_with(
            socket,
            ingest,
            ring,
            shutdown.clone(),
            config,
        ));
        Server {
            addr,
            shutdown,
            task,
            store,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(ANSWER_TIMEOUT, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    next_message_id: u16,
}

impl Client {
    async fn new(server: SocketAddr) -> Client {
        Client {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            next_message_id: 0x1000,
        }
    }

    fn request(&mut self, con: bool, method: RequestType, path: &str, payload: Vec<u8>) -> Packet {
        self.next_message_id += 1;
        let mut p = Packet::new();
        p.header.set_type(if con {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        p.header.code = MessageClass::Request(method);
        p.header.message_id = self.next_message_id;
        p.set_token(vec![0xab, self.next_message_id as u8]);
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        if !payload.is_empty() {
            p.add_option(CoapOption::ContentFormat, vec![60]);
        }
        p.payload = payload;
        p
    }

    fn post(&mut self, path: &str, payload: Vec<u8>) -> Packet {
        self.request(true, RequestType::Post, path, payload)
    }

    async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    async fn recv_bytes(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        match tokio::time::timeout(timeout, self.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Send once and return the raw answer (no retransmission: loopback does
    /// not drop, and a resend would change what the tests observe).
    async fn exchange_bytes(&self, p: &Packet) -> Vec<u8> {
        self.send(&p.to_bytes().unwrap()).await;
        self.recv_bytes(ANSWER_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no answer to message {}", p.header.message_id))
    }

    async fn exchange(&self, p: &Packet) -> Packet {
        Packet::from_bytes(&self.exchange_bytes(p).await).expect("the server sends valid CoAP")
    }

    async fn assert_silence(&self) {
        if let Some(bytes) = self.recv_bytes(SILENCE).await {
            panic!("unexpected answer {:?}", Packet::from_bytes(&bytes));
        }
    }
}

fn code(p: &Packet) -> MessageClass {
    p.header.code
}

fn text(p: &Packet) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

fn uint_option(p: &Packet, option: CoapOption) -> Option<u32> {
    p.get_first_option(option)
        .map(|v| v.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
}

/// Assert a piggybacked error answer to `req` with `expected` and a
/// text/plain diagnostic containing `says`.
fn assert_refused(req: &Packet, ans: &Packet, expected: ResponseType, says: &str) {
    assert_eq!(ans.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(ans.header.message_id, req.header.message_id);
    assert_eq!(ans.get_token(), req.get_token());
    assert_eq!(code(ans), MessageClass::Response(expected), "{}", text(ans));
    assert_eq!(uint_option(ans, CoapOption::ContentFormat), Some(0));
    assert!(
        text(ans).contains(says),
        "diagnostic {:?} should say {says:?}",
        text(ans)
    );
}

#[tokio::test]
async fn ping_gets_reset() {
    let server = Server::start().await;
    let client = Client::new(server.addr).await;
    client.send(&[0x40, 0x00, 0x12, 0x34]).await;
    let rst = client.recv_bytes(ANSWER_TIMEOUT).await.expect("an answer");
    assert_eq!(rst, [0x70, 0x00, 0x12, 0x34]);
    // An empty ACK or RST from the peer is not answered.
    client.send(&[0x60, 0x00, 0x00, 0x01]).await;
    client.send(&[0x70, 0x00, 0x00, 0x02]).await;
    client.assert_silence().await;
    server.stop().await;
}

#[tokio::test]
async fn well_known_core_lists_the_resources() {
    let server = Server::start().await;
    let mut client = Client::new(server.addr).await;
    let req = client.request(true, RequestType::Get, ".well-known/core", vec![]);
    let ans = client.exchange(&req).await;
    assert_eq!(code(&ans), MessageClass::Response(ResponseType::Content));
    assert_eq!(uint_option(&ans, CoapOption::ContentFormat), Some(40));
    assert_eq!(
        text(&ans),
        r#"</hb>;rt="lockfleet.heartbeat";ct=60;if="core.p",</log>;rt="lockfleet.activity-log";ct=60;if="core.p",</jr>;rt="lockfleet.job-report";ct=60;if="core.p",</2fa>;rt="lockfleet.2fa-passcode";ct=60;if="core.p",</otp>;rt="lockfleet.2fa-otp";ct=60;if="core.p""#
    );
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_and_log_are_acknowledged_after_the_store_answers() {
    let server = Server::start().await;
    let mut client = Client::new(server.addr).await;

    let req = client.post("hb", encode(&heartbeat("L1", 1)));
    let ack = client.exchange(&req).await;
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(ack.header.message_id, req.header.message_id);
    assert_eq!(ack.get_token(), req.get_token());
    assert_eq!(code(&ack), MessageClass::Response(ResponseType::Changed));
    assert_eq!(uint_option(&ack, CoapOption::ContentFormat), Some(60));
    let down = Downlink::decode(&ack.payload).unwrap();
    assert_eq!((down.seq, down.heartbeat_interval.hours()), (1, 12));

    let batch = ActivityLogBatch {
        lock_id: "L1".into(),
        seq: 2,
        events: (1..=3)
            .map(|seq| ActivityEvent {
                seq,
                time: 1_790_000_000,
                kind: ActivityKind::UnlockedPin,
                actor: None,
            })
            .collect(),
    };
    let req = client.post("log", encode(&batch));
    let ack = client.exchange(&req).await;
    assert_eq!(code(&ack), MessageClass::Response(ResponseType::Changed));
    let ack = LogAck::decode(&ack.payload).unwrap();
    assert_eq!((ack.stored, ack.seq), (3, 2));
    assert_eq!(server.store.seen(), [("L1".into(), 1), ("L1".into(), 2)]);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_exact_codes_and_store_nothing() {
    let server = Server::start().await;
    let mut c = Client::new(server.addr).await;
    let hb = || encode(&heartbeat("L1", 5));

    let req = c.post("nope", hb());
    assert_refused(
        &req,
        &c.exchange(&req).await,
        ResponseType::NotFound,
        r#"no resource at "/nope""#,
    );

    let req = c.request(true, RequestType::Get, "hb", vec![]);
    assert_refused(
        &req,
        &c.exchange(&req).await,
        ResponseType::MethodNotAllowed,
        "GET is not allowed on /hb",
    );

    let req = c.post("hb", b"not cbor at all".to_vec());
    assert_refused(
        &req,
        &c.exchange(&req).await,
        ResponseType::BadRequest,
        "payload is not valid heartbeat CBOR",
    );

    let req = c.post("log", vec![0xa0; MAX_UPLINK_BYTES + 1]);
    let ans = c.exchange(&req).await;
    assert_refused(
        &req,
        &ans,
        ResponseType::RequestEntityTooLarge,
        "larger than the 2048-byte limit",
    );
    assert_eq!(uint_option(&ans, CoapOption::Size1), Some(2048));

    let mut req = c.post("hb", hb());
    req.clear_all_options();
    req.add_option(CoapOption::UriPath, b"hb".to_vec());
    req.add_option(CoapOption::ContentFormat, vec![50]);
    assert_refused(
        &req,
        &c.exchange(&req).await,
        ResponseType::UnsupportedContentFormat,
        "Content-Format 50",
    );

    let mut req = c.post("hb", hb());
    req.add_option(CoapOption::Unknown(2049), vec![1]);
    assert_refused(
        &req,
        &c.exchange(&req).await,
        ResponseType::BadOption,
        "critical option 2049",
    );

    let req = c.post("hb", encode(&heartbeat("L404", 1)));
    assert_refused(
        &req,
        &c.exchange(&req).await,
        ResponseType::NotFound,
        "\"L404\" is not registered",
    );

    let req = c.post("hb", encode(&heartbeat("L2", 1)));
    assert_refused(
        &req,
        &c.exchange(&req).await,
        ResponseType::Forbidden,
        "reports only through its bridge",
    );

    assert!(server.store.seen().is_empty(), "nothing reached the store");
    server.stop().await;
}

#[tokio::test]
async fn retransmitted_con_gets_the_same_bytes_and_is_stored_once() {
    let server = Server::start().await;
    let mut client = Client::new(server.addr).await;
    let req = client.post("hb", encode(&heartbeat("L1", 7)));
    let first = client.exchange_bytes(&req).await;
    let again = client.exchange_bytes(&req).await;
    assert_eq!(first, again, "a retransmission gets the cached answer");
    // A cached refusal is replayed the same way.
    let bad = client.post("nope", vec![]);
    assert_eq!(
        client.exchange_bytes(&bad).await,
        client.exchange_bytes(&bad).await
    );
    assert_eq!(server.store.seen(), [("L1".into(), 7)]);
    server.stop().await;
}

#[tokio::test]
async fn duplicate_while_in_progress_is_ignored_and_answered_once() {
    let mut server = Server::start_with(CoapConfig::default(), false).await;
    let mut client = Client::new(server.addr).await;
    let req = client.post("hb", encode(&heartbeat("L1", 8)));
    let bytes = req.to_bytes().unwrap();
    client.send(&bytes).await;
    server.store.wait_arrival().await;
    // Not committed yet: no ACK, and the retransmission is not submitted again.
    client.send(&bytes).await;
    client.assert_silence().await;
    server.store.gate.add_permits(1);
    let ack = client
        .recv_bytes(ANSWER_TIMEOUT)
        .await
        .expect("the ACK after the commit");
    assert_eq!(
        code(&Packet::from_bytes(&ack).unwrap()),
        MessageClass::Response(ResponseType::Changed)
    );
    client.assert_silence().await;
    assert_eq!(server.store.seen(), [("L1".into(), 8)]);
    server.stop().await;
}

#[tokio::test]
async fn non_request_gets_a_non_response_and_its_copy_is_ignored() {
    let server = Server::start().await;
    let mut client = Client::new(server.addr).await;
    let req = client.request(false, RequestType::Post, "hb", encode(&heartbeat("L1", 9)));
    let ans = client.exchange(&req).await;
    assert_eq!(ans.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(ans.get_token(), req.get_token());
    assert_eq!(code(&ans), MessageClass::Response(ResponseType::Changed));
    client.send(&req.to_bytes().unwrap()).await;
    client.assert_silence().await;
    // Errors to a NON are NONs too.
    let bad = client.request(false, RequestType::Get, "hb", vec![]);
    let ans = client.exchange(&bad).await;
    assert_eq!(ans.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(
        code(&ans),
        MessageClass::Response(ResponseType::MethodNotAllowed)
    );
    assert_eq!(server.store.seen(), [("L1".into(), 9)]);
    server.stop().await;
}

#[tokio::test]
async fn garbage_is_dropped_and_the_server_keeps_serving() {
    let server = Server::start().await;
    let mut client = Client::new(server.addr).await;
    client.send(b"\xff\xff hello").await;
    client.send(&[0x40, 0x01]).await;
    client.send(&[0u8; 1500]).await;
    client.assert_silence().await;
    let req = client.post("hb", encode(&heartbeat("L1", 10)));
    assert_eq!(
        code(&client.exchange(&req).await),
        MessageClass::Response(ResponseType::Changed)
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_con_is_rejected_with_reset() {
    let server = Server::start().await;
    let client = Client::new(server.addr).await;
    // Version 1 CON POST whose Uri-Path option claims 5 bytes but has 2.
    client
        .send(&[0x40, 0x02, 0x00, 0x09, 0xb5, b'h', b'b'])
        .await;
    let rst = client.recv_bytes(ANSWER_TIMEOUT).await.expect("an RST");
    assert_eq!(rst, [0x70, 0x00, 0x00, 0x09]);
    server.stop().await;
}

#[tokio::test]
async fn full_in_flight_bound_answers_5_03_with_max_age() {
    let config = CoapConfig {
        max_in_flight: 1,
        ..CoapConfig::default()
    };
    let mut server = Server::start_with(config, false).await;
    let mut client = Client::new(server.addr).await;
    let first = client.post("hb", encode(&heartbeat("L1", 11)));
    client.send(&first.to_bytes().unwrap()).await;
    server.store.wait_arrival().await;
    let second = client.post("hb", encode(&heartbeat("L1", 12)));
    let busy = client.exchange(&second).await;
    assert_refused(&second, &busy, ResponseType::ServiceUnavailable, "busy");
    assert_eq!(uint_option(&busy, CoapOption::MaxAge), Some(5));
    server.store.gate.add_permits(1);
    let ack = Packet::from_bytes(&client.recv_bytes(ANSWER_TIMEOUT).await.unwrap()).unwrap();
    assert_eq!(ack.header.message_id, first.header.message_id);
    assert_eq!(server.store.seen(), [("L1".into(), 11)]);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_answers_in_flight_reports_then_returns() {
    let mut server = Server::start_with(CoapConfig::default(), false).await;
    let mut client = Client::new(server.addr).await;
    let req = client.post("hb", encode(&heartbeat("L1", 13)));
    client.send(&req.to_bytes().unwrap()).await;
    server.store.wait_arrival().await;

    server.shutdown.cancel();
    // Intake stopped: a ping is no longer answered ...
    client.send(&[0x40, 0x00, 0x00, 0x77]).await;
    client.assert_silence().await;
    // ... but serve waits for the report in flight.
    assert!(!server.task.is_finished());
    server.store.gate.add_permits(1);
    let ack = Packet::from_bytes(&client.recv_bytes(ANSWER_TIMEOUT).await.unwrap()).unwrap();
    assert_eq!(ack.header.message_id, req.header.message_id);
    assert_eq!(code(&ack), MessageClass::Response(ResponseType::Changed));
    tokio::time::timeout(ANSWER_TIMEOUT, server.task)
        .await
        .expect("serve returns once the in-flight report is answered")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_on_reports_after_the_drain_timeout() {
    let config = CoapConfig {
        drain_timeout: Duration::from_millis(50),
        ..CoapConfig::default()
    };
    let mut server = Server::start_with(config, false).await;
    let mut client = Client::new(server.addr).await;
    let req = client.post("hb", encode(&heartbeat("L1", 14)));
    client.send(&req.to_bytes().unwrap()).await;
    server.store.wait_arrival().await;
    server.stop().await;
    client.assert_silence().await;
}
