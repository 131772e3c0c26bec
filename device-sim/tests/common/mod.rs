//! Test peers for the simulator's integration tests: a minimal CoAP server
//! over real UDP that stores each (lock, seq) once and answers like the
//! gateway, OSCORE included (server role, contexts from the fleet's pairing
//! secrets, a replay window per lock), delivers each lock's pending jobs in
//! the answers to its heartbeats and job reports (`/jr`) until their results
//! come back, plays the gateway's 2FA (`/2fa`, `/otp`, the SMS webhook to
//! an inbox) when told to, and helpers to build small fleets.

#![allow(dead_code)]

pub mod http;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use device_sim::fleet::{generate, Fleet, FleetSpec, MasterSecret};
use lockfleet_oscore::{
    protect_response, unprotect_request, InnerMessage, OscoreOption, Params, ReplayWindow,
    SecurityContext, CODE_POST,
};
use schemas::device::{encode, DeviceJob, JobAction, JobOutcome, JobReport, JobResult};
use schemas::security::{DEVICE_OSCORE_ID, SERVER_OSCORE_ID};
use schemas::twofa::{OtpEntry, PasscodeEntry, TwoFactorAnswer, TwoFactorResult};
use schemas::LockModel;
use schemas::{
    ActivityKind, ActivityLogBatch, ActivityLogInterval, Downlink, Heartbeat, HeartbeatInterval,
    LogAck,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// CoAP option numbers inside a protected request.
const URI_PATH: u16 = 11;
const CONTENT_FORMAT: u16 = 12;

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

/// A fleet of `locks` INB1-2FA locks, all on CoAP.
pub fn twofa_fleet(locks: usize, seed: u64) -> Fleet {
    let mut fleet = coap_fleet(locks, seed);
    for lock in &mut fleet.locks {
        lock.model = LockModel::Inb1TwoFactor;
    }
    fleet
}

/// A person the 2FA stand-in knows.
#[derive(Clone, Debug)]
pub struct TwoFactorUser {
    pub user_id: String,
    pub mobile: String,
    pub passcode: String,
    /// Where they have access.
    pub locks: Vec<String>,
}

/// The gateway's 2FA as the test server plays it: a passcode of a user with
/// access at the lock gets `otp_sent` and an SMS to the inbox at `webhook`;
/// `tries` wrong OTPs end the challenge.
#[derive(Clone, Debug)]
pub struct TwoFactorGateway {
    pub users: Vec<TwoFactorUser>,
    /// The SMS inbox the webhook posts to (`None`: no SMS goes out).
    pub webhook: Option<SocketAddr>,
    pub tries: u8,
}

/// A challenge the 2FA stand-in made.
#[derive(Clone, Debug)]
pub struct Challenge {
    pub lock: String,
    pub user: String,
    pub otp: String,
    pub tries_left: u8,
    pub open: bool,
}

/// The gateway's end of a device's OSCORE context (`id_context` is
/// `lk/{lock}` or `br/{bridge}`).
pub fn server_context(id_context: &str, secret: &MasterSecret) -> SecurityContext {
    SecurityContext::derive(&Params {
        master_secret: secret.as_bytes(),
        master_salt: b"",
        sender_id: SERVER_OSCORE_ID,
        recipient_id: DEVICE_OSCORE_ID,
        id_context: Some(id_context.as_bytes()),
    })
    .unwrap()
}

/// A device as the gateway knows it: its context and replay window.
pub struct Peer {
    pub ctx: SecurityContext,
    pub window: ReplayWindow,
}

/// The peers of every lock of `fleet`, by ID Context.
pub fn lock_peers(fleet: &Fleet) -> HashMap<Vec<u8>, Peer> {
    fleet
        .locks
        .iter()
        .map(|l| {
            let context = format!("lk/{}", l.id);
            let peer = Peer {
                ctx: server_context(&context, &l.master_secret),
                window: ReplayWindow::new(),
            };
            (context.into_bytes(), peer)
        })
        .collect()
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
    /// Flip a bit of the ciphertext of this many of the first protected
    /// answers (after storing the report): answers that do not verify.
    pub corrupt_first_answers: usize,
    /// Answer this many of the first protected requests with an
    /// unprotected 2.04 (after storing the report): a success nobody can
    /// vouch for.
    pub unprotected_first_answers: usize,
    /// Most jobs one downlink carries (`more` says if others wait); `None`:
    /// every pending job.
    pub jobs_per_downlink: Option<usize>,
    /// Answer `/2fa` and `/otp` (`None`: 4.04 as an older gateway does).
    pub twofa: Option<TwoFactorGateway>,
}

/// What the test server saw and stored.
#[derive(Debug, Default)]
pub struct Seen {
    /// Datagrams dropped by `drop_first`: message id and token.
    pub dropped: Vec<(u16, Vec<u8>)>,
    /// The bytes of the dropped datagrams.
    pub dropped_bytes: Vec<Vec<u8>>,
    /// Every datagram processed (not dropped): message id, token, Uri-Path
    /// (the inner one of a protected request).
    pub datagrams: Vec<(u16, Vec<u8>, String)>,
    /// The bytes of every datagram processed.
    pub datagram_bytes: Vec<Vec<u8>>,
    /// How many times each (lock, seq) arrived under distinct message ids
    /// (more than once when a lock resent after giving up).
    pub delivered: HashMap<(String, u32), u32>,
    /// Activity events stored, by (lock, event seq).
    pub events: HashSet<(String, u32)>,
    /// Duplicates (same endpoint and message id) answered from the cache.
    pub duplicates: usize,
    /// Requests answered 5.03 (see `Behaviour::busy_first`).
    pub busy: usize,
    /// Every protected request that verified: (ID Context, Partial IV), in
    /// order of arrival.
    pub oscore: Vec<(String, u64)>,
    /// Requests refused for security, by OSCORE reason (`replay`,
    /// `decrypt_failed`, `unprotected`, ...).
    pub security_refusals: HashMap<String, usize>,
    /// Answers corrupted or sent unprotected by the behaviour.
    pub forged: usize,
    /// Jobs waiting for their result, by lock, in creation order: each
    /// answer to a heartbeat or job report carries them.
    pub jobs: HashMap<String, VecDeque<DeviceJob>>,
    /// Every job result received: (lock, report seq, result), in order.
    pub job_results: Vec<(String, u32, JobResult)>,
    /// Every activity event stored: (lock, kind, actor), in order.
    pub activity: Vec<(String, ActivityKind, Option<String>)>,
    /// The intervals each lock is told to use: those its heartbeat
    /// reported (or `Behaviour::heartbeat_interval`), then those of a
    /// set_intervals job it completed.
    pub intervals: HashMap<String, (HeartbeatInterval, ActivityLogInterval)>,
    /// The 2FA challenges made, by id.
    pub challenges: HashMap<u64, Challenge>,
    /// Every 2FA request answered 2.04: (path, lock, seq, result), in order.
    pub twofa: Vec<(String, String, u32, TwoFactorResult)>,
}

impl Seen {
    /// Queues `jobs` for `lock`, as creating them on the dashboard does.
    pub fn add_jobs(&mut self, lock: &str, jobs: impl IntoIterator<Item = DeviceJob>) {
        self.jobs.entry(lock.to_string()).or_default().extend(jobs);
    }

    /// The downlink answering report `seq` of `lock`: the server clock and
    /// the pending jobs that fit.
    fn downlink(&self, lock: &str, seq: u32, behaviour: &Behaviour) -> Downlink {
        let pending = self.jobs.get(lock).map(|q| q.len()).unwrap_or(0);
        let take = behaviour.jobs_per_downlink.unwrap_or(pending).min(pending);
        let jobs: Vec<DeviceJob> = self
            .jobs
            .get(lock)
            .map(|q| q.iter().take(take).cloned().collect())
            .unwrap_or_default();
        let (heartbeat_interval, activity_log_interval) = self
            .intervals
            .get(lock)
            .copied()
            .unwrap_or((HeartbeatInterval::DEFAULT, ActivityLogInterval::DEFAULT));
        Downlink {
            server_time: unix_now(),
            heartbeat_interval,
            activity_log_interval,
            seq,
            jobs,
            more: take < pending,
            next_heartbeat_at: None,
        }
    }
}

impl Seen {
    /// `/2fa`: a challenge and its SMS for a user with access, else `denied`.
    fn passcode(&mut self, e: &PasscodeEntry, gw: &TwoFactorGateway) -> TwoFactorAnswer {
        let mut a = TwoFactorAnswer::new(e.seq, TwoFactorResult::Denied, unix_now());
        let user = gw
            .users
            .iter()
            .find(|u| u.passcode == e.passcode && u.locks.contains(&e.lock_id));
        if let Some(u) = user {
            let id = 1000 + self.challenges.len() as u64;
            let otp = format!("{:06}", rand::random_range(0..1_000_000));
            if let Some(addr) = gw.webhook {
                let body = http::sms_body(&u.mobile, &otp, id);
                tokio::spawn(async move { http::post(addr, "/sms", &body).await });
            }
            self.challenges.insert(
                id,
                Challenge {
                    lock: e.lock_id.clone(),
                    user: u.user_id.clone(),
                    otp,
                    tries_left: gw.tries,
                    open: true,
                },
            );
            a.result = TwoFactorResult::OtpSent;
            a.challenge = Some(id);
            a.expires_at = Some(unix_now() + 300);
        }
        self.twofa
            .push(("2fa".into(), e.lock_id.clone(), e.seq, a.result));
        a
    }

    /// `/otp`: `allowed` for the challenge's OTP at its lock, `wrong_otp`
    /// while tries remain, else `challenge_ended`.
    fn otp(&mut self, e: &OtpEntry) -> TwoFactorAnswer {
        let mut a = TwoFactorAnswer::new(e.seq, TwoFactorResult::ChallengeEnded, unix_now());
        if let Some(c) = self.challenges.get_mut(&e.challenge) {
            if c.open && c.lock == e.lock_id {
                if c.otp == e.otp {
                    c.open = false;
                    a.result = TwoFactorResult::Allowed;
                } else {
                    c.tries_left = c.tries_left.saturating_sub(1);
                    c.open = c.tries_left > 0;
                    if c.open {
                        a.result = TwoFactorResult::WrongOtp;
                        a.tries_left = Some(c.tries_left);
                    }
                }
            }
        }
        self.twofa
            .push(("otp".into(), e.lock_id.clone(), e.seq, a.result));
        a
    }
}

/// The server's clock, Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
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
    /// A gateway stand-in that requires OSCORE with the pairing secrets of
    /// `fleet`'s locks, as the gateway does by default.
    pub async fn secure(behaviour: Behaviour, fleet: &Fleet) -> CoapServer {
        Self::start_with(behaviour, Some(lock_peers(fleet))).await
    }

    /// A gateway stand-in started with `--insecure-dev`: plain requests.
    pub async fn insecure(behaviour: Behaviour) -> CoapServer {
        Self::start_with(behaviour, None).await
    }

    async fn start_with(behaviour: Behaviour, peers: Option<HashMap<Vec<u8>, Peer>>) -> CoapServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(serve(socket, behaviour, peers, seen.clone()));
        CoapServer { addr, seen, task }
    }
}

async fn serve(
    socket: UdpSocket,
    mut behaviour: Behaviour,
    mut peers: Option<HashMap<Vec<u8>, Peer>>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut buf = vec![0u8; 4096];
    let mut dropped = 0;
    let mut cache: HashMap<(SocketAddr, u16), (Vec<u8>, String)> = HashMap::new();
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
            seen.dropped_bytes.push(buf[..n].to_vec());
            continue;
        }
        let mid = req.header.message_id;
        let reply = {
            let mut seen = seen.lock().unwrap();
            seen.datagram_bytes.push(buf[..n].to_vec());
            // RFC 7252 §4.5: a duplicate gets the same answer and is not
            // processed again (before OSCORE: a retransmission is the same
            // protected bytes, which the replay window would refuse).
            let (reply, path) = if let Some((cached, path)) = cache.get(&(from, mid)) {
                seen.duplicates += 1;
                (cached.clone(), path.clone())
            } else {
                let (reply, path) = match peers.as_mut() {
                    None => {
                        let path = outer_path(&req);
                        let reply = answer(&req, &path, &req.payload, &behaviour, &mut seen);
                        (reply.to_bytes().unwrap(), path)
                    }
                    Some(peers) => answer_protected(&req, peers, &mut behaviour, &mut seen),
                };
                cache.insert((from, mid), (reply.clone(), path.clone()));
                (reply, path)
            };
            seen.datagrams.push((mid, req.get_token().to_vec(), path));
            reply
        };
        let _ = socket.send_to(&reply, from).await;
    }
}

fn outer_path(req: &Packet) -> String {
    let path: Vec<String> = req
        .get_option(CoapOption::UriPath)
        .map(|l| {
            l.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    path.join("/")
}

/// The gateway's OSCORE steps (RFC 8613 §8.2, §8.3) around [`answer`]:
/// returns the datagram to send and the inner path.
fn answer_protected(
    req: &Packet,
    peers: &mut HashMap<Vec<u8>, Peer>,
    behaviour: &mut Behaviour,
    seen: &mut Seen,
) -> (Vec<u8>, String) {
    assert_eq!(req.header.code, MessageClass::Request(RequestType::Post));
    // A busy gateway sheds load before spending a decryption.
    if let Some(busy) = busy(req, &*behaviour, seen) {
        return (busy.to_bytes().unwrap(), String::new());
    }
    let mut refuse = |code: ResponseType, reason: &str, why: String| {
        *seen
            .security_refusals
            .entry(reason.to_string())
            .or_default() += 1;
        (
            reply(req, code, why.into_bytes()).to_bytes().unwrap(),
            String::new(),
        )
    };
    let Some(value) = req.get_first_option(CoapOption::Oscore) else {
        return refuse(
            ResponseType::Unauthorized,
            "unprotected",
            "OSCORE required".into(),
        );
    };
    let option = match OscoreOption::decode(value) {
        Ok(o) => o,
        Err(e) => return refuse(ResponseType::BadOption, "malformed_option", e.to_string()),
    };
    let Some(peer) = option.kid_context.as_ref().and_then(|c| peers.get_mut(c)) else {
        return refuse(
            ResponseType::Unauthorized,
            "unknown_kid",
            "unknown device".into(),
        );
    };
    let Some(seq) = option.partial_iv.map(|p| p.seq()) else {
        return refuse(
            ResponseType::BadOption,
            "malformed_option",
            "no Partial IV".into(),
        );
    };
    if let Err(e) = peer.window.check(seq) {
        return refuse(ResponseType::Unauthorized, "replay", e.to_string());
    }
    let (request, plaintext) = match unprotect_request(&peer.ctx, &option, &req.payload, &[]) {
        Ok(r) => r,
        Err(e) => {
            let code = match MessageClass::from(e.coap_code()) {
                MessageClass::Response(code) => code,
                _ => ResponseType::BadRequest,
            };
            return refuse(code, e.reason(), e.to_string());
        }
    };
    peer.window.accept(seq).unwrap();
    let context = String::from_utf8_lossy(option.kid_context.as_deref().unwrap()).into_owned();
    seen.oscore.push((context.clone(), seq));

    let inner = InnerMessage::decode(&plaintext).unwrap();
    assert_eq!(inner.code, CODE_POST);
    let path: Vec<String> = inner
        .options
        .iter()
        .filter(|(n, _)| *n == URI_PATH)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    let path = path.join("/");
    assert!(
        inner.options.contains(&(CONTENT_FORMAT, vec![60])),
        "{:?}",
        inner.options
    );
    assert!(
        req.get_option(CoapOption::UriPath).is_none(),
        "the path travels inside"
    );
    let answered = answer(req, &path, &inner.payload, behaviour, seen);
    // The lock id in the payload must be the context's lock.
    let lock = context.strip_prefix("lk/").unwrap();
    if let Some(id) = payload_lock(&path, &inner.payload) {
        assert_eq!(id, lock, "a lock reported with another lock's context");
    }
    if behaviour.unprotected_first_answers > 0 {
        behaviour.unprotected_first_answers -= 1;
        seen.forged += 1;
        return (answered.to_bytes().unwrap(), path);
    }
    let plain = InnerMessage {
        code: u8::from(answered.header.code),
        options: if answered.header.code == MessageClass::Response(ResponseType::Changed) {
            vec![(CONTENT_FORMAT, vec![60])]
        } else {
            vec![]
        },
        payload: answered.payload.clone(),
    };
    let mut sealed =
        protect_response(&peer.ctx, request, None, &plain.encode().unwrap(), &[]).unwrap();
    if behaviour.corrupt_first_answers > 0 {
        behaviour.corrupt_first_answers -= 1;
        seen.forged += 1;
        sealed.ciphertext[0] ^= 0x01;
    }
    // RFC 8613 §4.2: the outer code of a response to POST is 2.04.
    let mut outer = reply(req, ResponseType::Changed, sealed.ciphertext);
    outer.add_option(CoapOption::Oscore, sealed.option);
    (outer.to_bytes().unwrap(), path)
}

fn payload_lock(path: &str, payload: &[u8]) -> Option<String> {
    match path {
        "hb" => Heartbeat::decode(payload).ok().map(|h| h.lock_id),
        "log" => ActivityLogBatch::decode(payload).ok().map(|b| b.lock_id),
        "jr" => JobReport::decode(payload).ok().map(|r| r.lock_id),
        "2fa" => PasscodeEntry::decode(payload).ok().map(|e| e.lock_id),
        "otp" => OtpEntry::decode(payload).ok().map(|e| e.lock_id),
        _ => None,
    }
}

/// The 5.03 of `Behaviour::busy_first`, while it lasts.
fn busy(req: &Packet, behaviour: &Behaviour, seen: &mut Seen) -> Option<Packet> {
    if seen.busy >= behaviour.busy_first {
        return None;
    }
    seen.busy += 1;
    let mut resp = reply(
        req,
        ResponseType::ServiceUnavailable,
        b"busy: retry in 1 seconds".to_vec(),
    );
    resp.add_option(CoapOption::MaxAge, vec![1]);
    Some(resp)
}

/// The gateway's answer to POST `/{path}` with `payload`.
fn answer(
    req: &Packet,
    path: &str,
    payload: &[u8],
    behaviour: &Behaviour,
    seen: &mut Seen,
) -> Packet {
    assert_eq!(req.header.get_type(), MessageType::Confirmable);
    assert_eq!(req.header.code, MessageClass::Request(RequestType::Post));
    if let Some(busy) = busy(req, behaviour, seen) {
        return busy;
    }
    let (code, payload) = match path {
        "hb" => {
            let hb = Heartbeat::decode(payload).unwrap();
            *seen
                .delivered
                .entry((hb.lock_id.clone(), hb.seq))
                .or_default() += 1;
            let intervals = (
                behaviour
                    .heartbeat_interval
                    .unwrap_or(hb.heartbeat_interval),
                hb.activity_log_interval,
            );
            seen.intervals.insert(hb.lock_id.clone(), intervals);
            let dl = seen.downlink(&hb.lock_id, hb.seq, behaviour);
            (ResponseType::Changed, encode(&dl))
        }
        "jr" => {
            let r = JobReport::decode(payload).unwrap();
            let first = {
                let n = seen
                    .delivered
                    .entry((r.lock_id.clone(), r.seq))
                    .or_default();
                *n += 1;
                *n == 1
            };
            if first {
                let queue = seen.jobs.entry(r.lock_id.clone()).or_default();
                let mut intervals = None;
                for result in &r.results {
                    let key = (result.id, result.attempt);
                    let job = queue.iter().find(|j| (j.id, j.attempt) == key);
                    if let Some(j) = job.filter(|j| j.action == JobAction::SetIntervals) {
                        if result.outcome == JobOutcome::Done {
                            intervals = Some((j.heartbeat_interval, j.activity_log_interval));
                        }
                    }
                    queue.retain(|j| (j.id, j.attempt) != key);
                }
                if let Some((hb, log)) = intervals {
                    let defaults = (HeartbeatInterval::DEFAULT, ActivityLogInterval::DEFAULT);
                    let now = seen.intervals.entry(r.lock_id.clone()).or_insert(defaults);
                    now.0 = hb.unwrap_or(now.0);
                    now.1 = log.unwrap_or(now.1);
                }
                let results = r
                    .results
                    .iter()
                    .map(|x| (r.lock_id.clone(), r.seq, x.clone()));
                seen.job_results.extend(results);
            }
            let dl = seen.downlink(&r.lock_id, r.seq, behaviour);
            (ResponseType::Changed, encode(&dl))
        }
        "log" if behaviour.refuse_logs => (
            ResponseType::BadRequest,
            b"logs are refused in this test".to_vec(),
        ),
        "log" => {
            let b = ActivityLogBatch::decode(payload).unwrap();
            let mut new = 0;
            for e in &b.events {
                if seen.events.insert((b.lock_id.clone(), e.seq)) {
                    new += 1;
                    seen.activity
                        .push((b.lock_id.clone(), e.kind, e.actor.clone()));
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
        "2fa" | "otp" if behaviour.twofa.is_some() => {
            let decoded = match path {
                "2fa" => PasscodeEntry::decode(payload).map(|e| {
                    // Checked by the guard.
                    seen.passcode(&e, behaviour.twofa.as_ref().unwrap())
                }),
                _ => OtpEntry::decode(payload).map(|e| seen.otp(&e)),
            };
            match decoded {
                Ok(a) => (ResponseType::Changed, encode(&a)),
                Err(e) => (
                    ResponseType::BadRequest,
                    format!("malformed {path} entry: {}", e.reason()).into_bytes(),
                ),
            }
        }
        _ => (ResponseType::NotFound, b"no such path".to_vec()),
    };
    reply(req, code, payload)
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
