//! Test peers for the simulator's integration tests: a minimal CoAP server
//! over real UDP that stores each (lock, seq) once and answers like the
//! gateway, and helpers to build small fleets.

#![allow(dead_code)]

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use device_sim::fleet::{generate, Fleet, FleetSpec};
use schemas::device::encode;
use schemas::{ActivityLogBatch, Downlink, Heartbeat, HeartbeatInterval, LogAck};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A fleet of `locks` locks all on CoAP (no MQTT, no bridges).
pub fn coap_fleet(locks: usize, seed: u64) -> Fleet {
    generate(&FleetSpec {
        locks,
        bridges: 0,
        orgs: 2,
        mqtt_share: 0.0,
        seed,
    })
    .unwrap()
}

/// How the test server answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Drop this many of the first datagrams received.
    pub drop_first: usize,
    /// Answer every `log` POST with 4.00 and a diagnostic.
    pub refuse_logs: bool,
    /// Answer this many of the first requests with 5.03 and Max-Age 1 s,
    /// storing nothing, as a busy gateway does.
    pub busy_first: usize,
    /// Answer heartbeats with this interval instead of the reported one.
    pub heartbeat_interval: Option<HeartbeatInterval>,
}

/// What the test server saw and stored.
#[derive(Debug, Default)]
pub struct Seen {
    /// Datagrams dropped by `drop_first`: message id and token.
    pub dropped: Vec<(u16, Vec<u8>)>,
    /// Every datagram processed (not dropped): message id, token, Uri-Path.
    pub datagrams: Vec<(u16, Vec<u8>, String)>,
    /// How many times each (lock, seq) arrived under distinct message ids
    /// (more than once when a lock resent after giving up).
    pub delivered: HashMap<(String, u32), u32>,
    /// Activity events stored, by (lock, event seq).
    pub events: HashSet<(String, u32)>,
    /// Duplicates (same endpoint and message id) answered from the cache.
    pub duplicates: usize,
    /// Requests answered 5.03 (see `Behaviour::busy_first`).
    pub busy: usize,
}

pub struct CoapServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Drop for CoapServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CoapServer {
    pub async fn start(behaviour: Behaviour) -> CoapServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(serve(socket, behaviour, seen.clone()));
        CoapServer { addr, seen, task }
    }
}

async fn serve(socket: UdpSocket, behaviour: Behaviour, seen: Arc<Mutex<Seen>>) {
    let mut buf = vec![0u8; 4096];
    let mut dropped = 0;
    let mut cache: HashMap<(SocketAddr, u16), Vec<u8>> = HashMap::new();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(req) = Packet::from_bytes(&buf[..n]) else {
            continue;
        };
        if dropped < behaviour.drop_first {
            dropped += 1;
            let mut seen = seen.lock().unwrap();
            seen.dropped
                .push((req.header.message_id, req.get_token().to_vec()));
            continue;
        }
        let mid = req.header.message_id;
        let path: Vec<String> = req
            .get_option(CoapOption::UriPath)
            .map(|l| {
                l.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let path = path.join("/");
        let reply = {
            let mut seen = seen.lock().unwrap();
            seen.datagrams
                .push((mid, req.get_token().to_vec(), path.clone()));
            // RFC 7252 §4.5: a duplicate gets the same answer and is not processed again.
            if let Some(cached) = cache.get(&(from, mid)) {
                seen.duplicates += 1;
                cached.clone()
            } else {
                let reply = answer(&req, &path, &behaviour, &mut seen);
                cache.insert((from, mid), reply.clone());
                reply
            }
        };
        let _ = socket.send_to(&reply, from).await;
    }
}

fn answer(req: &Packet, path: &str, behaviour: &Behaviour, seen: &mut Seen) -> Vec<u8> {
    assert_eq!(req.header.get_type(), MessageType::Confirmable);
    assert_eq!(req.header.code, MessageClass::Request(RequestType::Post));
    if seen.busy < behaviour.busy_first {
        seen.busy += 1;
        let mut resp = reply(
            req,
            ResponseType::ServiceUnavailable,
            b"busy: retry in 1 seconds".to_vec(),
        );
        resp.add_option(CoapOption::MaxAge, vec![1]);
        return resp.to_bytes().unwrap();
    }
    let (code, payload) = match path {
        "hb" => {
            let hb = Heartbeat::decode(&req.payload).unwrap();
            *seen
                .delivered
                .entry((hb.lock_id.clone(), hb.seq))
                .or_default() += 1;
            let dl = Downlink {
                server_time: hb.device_time,
                heartbeat_interval: behaviour
                    .heartbeat_interval
                    .unwrap_or(hb.heartbeat_interval),
                activity_log_interval: hb.activity_log_interval,
                seq: hb.seq,
            };
            (ResponseType::Changed, encode(&dl))
        }
        "log" if behaviour.refuse_logs => (
            ResponseType::BadRequest,
            b"logs are refused in this test".to_vec(),
        ),
        "log" => {
            let b = ActivityLogBatch::decode(&req.payload).unwrap();
            let mut new = 0;
            for e in &b.events {
                if seen.events.insert((b.lock_id.clone(), e.seq)) {
                    new += 1;
                }
            }
            *seen
                .delivered
                .entry((b.lock_id.clone(), b.seq))
                .or_default() += 1;
            let ack = LogAck {
                server_time: 0,
                stored: new,
                seq: b.seq,
            };
            (ResponseType::Changed, encode(&ack))
        }
        _ => (ResponseType::NotFound, b"no such path".to_vec()),
    };
    reply(req, code, payload).to_bytes().unwrap()
}

/// A piggybacked answer to `req`.
fn reply(req: &Packet, code: ResponseType, payload: Vec<u8>) -> Packet {
    let mut resp = Packet::new();
    resp.header.set_type(MessageType::Acknowledgement);
    resp.header.code = MessageClass::Response(code);
    resp.header.message_id = req.header.message_id;
    resp.set_token(req.get_token().to_vec());
    resp.payload = payload;
    resp
}
