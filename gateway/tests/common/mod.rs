//! Test support shared by the end-to-end tests: a real server on ephemeral
//! loopback ports over a fresh database, a dashboard-side MQTT subscriber that
//! records (and schema-checks) everything published, a CoAP client, and a
//! device's side of OSCORE ([`OscoreDevice`], built on lockfleet-oscore with
//! the device's test secret from `gateway::store::testing::secret_for`).
#![allow(dead_code)]

pub mod process;

use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType};
use dispatcher::keys::{DeviceRef, MasterSecret};
use gateway::config::{Config, Settings};
use gateway::server::Running;
use gateway::store::testing::TestDb;
use lockfleet_oscore::{
    is_class_e, protect_request, unprotect_response, InnerMessage, OscoreOption, Params, PartialIv,
    RequestId, SecurityContext, COAP_OPTION_OSCORE,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as MqttPacket, QoS};
use schemas::security::{DEVICE_OSCORE_ID, SERVER_OSCORE_ID};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

#[derive(Clone, Copy, Debug)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub async fn db(self) -> TestDb {
        match self {
            Engine::Sqlite => TestDb::sqlite().await,
            Engine::Postgres => TestDb::postgres().await,
        }
    }
}

/// A running server on ephemeral loopback ports.
pub struct Harness {
    pub server: Running,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    options: Options,
}

/// What a test server is started with beyond the defaults.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `--insecure-dev`: unprotected device requests accepted.
    pub insecure_dev: bool,
    /// How often the server looks for registry and key changes.
    pub registry_refresh_secs: u64,
    /// `--bridge-action-ttl-secs` (None: the default).
    pub bridge_action_ttl_secs: Option<u64>,
    /// `--bridge-timeout-ms` (None: the default).
    pub bridge_timeout_ms: Option<u64>,
    /// `--otp-ttl-secs` (None: the default).
    pub otp_ttl_secs: Option<u64>,
    /// `--notifier webhook --sms-webhook-url` this port on loopback (None: the MQTT notifier).
    pub sms_webhook_port: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure_dev: false,
            registry_refresh_secs: 1,
            bridge_action_ttl_secs: None,
            bridge_timeout_ms: None,
            otp_ttl_secs: None,
            sms_webhook_port: None,
        }
    }
}

pub fn config(database_url: &str, dir: &std::path::Path) -> Config {
    config_with(database_url, dir, Options::default())
}

/// [`config`] with `options`.
pub fn config_with(database_url: &str, dir: &std::path::Path, options: Options) -> Config {
    let s = Settings {
        coap_listen: Some("127.0.0.1:0".parse().unwrap()),
        mqtt_listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        database_url: Some(database_url.to_string()),
        data_dir: Some(dir.to_path_buf()),
        registry_refresh_secs: Some(options.registry_refresh_secs),
        server_key_file: Some(gateway::store::testing::server_key_file(dir)),
        insecure_dev: options.insecure_dev,
        backend_password_hash: Some(gateway::store::testing::backend_password_hash()),
        bridge_action_ttl_secs: options.bridge_action_ttl_secs,
        bridge_timeout_ms: options.bridge_timeout_ms,
        otp_ttl_secs: options.otp_ttl_secs,
        notifier: options.sms_webhook_port.map(|_| "webhook".to_string()),
        sms_webhook_url: options
            .sms_webhook_port
            .map(|port| format!("http://127.0.0.1:{port}/sms")),
        sms_webhook_timeout_ms: options.sms_webhook_port.map(|_| 500),
        ..Default::default()
    };
    Config::from_settings(s).unwrap()
}

impl Harness {
    /// Register `fleet` (with each device's test secret) and start the
    /// server, device security on.
    pub async fn start(engine: Engine, fleet: &dispatcher::import::ParsedFleet) -> Harness {
        Harness::start_with(engine, fleet, Options::default()).await
    }

    /// [`Harness::start`] with `--insecure-dev`: unprotected device
    /// requests are accepted (protected ones are still verified).
    pub async fn start_insecure(
        engine: Engine,
        fleet: &dispatcher::import::ParsedFleet,
    ) -> Harness {
        let options = Options {
            insecure_dev: true,
            ..Options::default()
        };
        Harness::start_with(engine, fleet, options).await
    }

    /// [`Harness::start`] with `options`.
    pub async fn start_with(
        engine: Engine,
        fleet: &dispatcher::import::ParsedFleet,
        options: Options,
    ) -> Harness {
        let db = engine.db().await;
        let store = gateway::store::Store::open(&db.url).await.unwrap();
        gateway::store::testing::register(&store, fleet).await;
        store.close().await;
        let dir = tempfile::tempdir().unwrap();
        let server = gateway::server::start(config_with(&db.url, dir.path(), options))
            .await
            .unwrap();
        wait_ready(server.http_addr).await;
        Harness {
            server,
            db,
            dir,
            options,
        }
    }

    /// Shut the server down and start it again on the same database (new
    /// ports), with the same options.
    pub async fn restart(self) -> Harness {
        let options = self.options;
        self.restart_with(options).await
    }

    /// [`Harness::restart`] with other `options`.
    pub async fn restart_with(self, options: Options) -> Harness {
        let Harness {
            server, db, dir, ..
        } = self;
        server.shutdown().await;
        let server = gateway::server::start(config_with(&db.url, dir.path(), options))
            .await
            .unwrap();
        wait_ready(server.http_addr).await;
        Harness {
            server,
            db,
            dir,
            options,
        }
    }

    /// Another server on the same database (and server key), as a second
    /// instance behind a load balancer; stop it before the harness.
    pub async fn second_instance(&self) -> Running {
        let dir = self.dir.path().join("second");
        std::fs::create_dir_all(&dir).unwrap();
        let server = gateway::server::start(config_with(&self.db.url, &dir, self.options))
            .await
            .unwrap();
        wait_ready(server.http_addr).await;
        server
    }

    /// The value of the metric series `series` (e.g.
    /// `lockfleet_uplinks_rejected_total{reason="replay",transport="coap"}`),
    /// 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_get(self.server.http_addr, "/metrics").await.unwrap();
        metric(&body, series)
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
        self.db.cleanup().await;
    }
}

/// Wait until /readyz says ready (the MQTT session is up).
pub async fn wait_ready(http: SocketAddr) {
    for _ in 0..200 {
        if http_get(http, "/readyz")
            .await
            .map(|(code, _)| code == 200)
            .unwrap_or(false)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server never became ready");
}

/// A minimal HTTP/1.1 GET, enough for /metrics and the health endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of `series` in a Prometheus text exposition; 0 when absent.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The dashboard backend's MQTT username (the default).
pub const DASHBOARD_USERNAME: &str = gateway::config::DEFAULT_BACKEND_USERNAME;

/// Messages as received: (topic, payload), in arrival order.
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// The dashboard backend's view: every message on `filters`, in arrival order.
#[derive(Clone)]
pub struct Dashboard {
    pub messages: Received,
    client: AsyncClient,
}

impl Dashboard {
    pub async fn subscribe(mqtt: SocketAddr, filters: &[&str]) -> Dashboard {
        let mut opts = MqttOptions::new(
            format!("dashboard-{}", rand_id()),
            mqtt.ip().to_string(),
            mqtt.port(),
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_credentials(
            DASHBOARD_USERNAME,
            gateway::store::testing::BACKEND_PASSWORD,
        );
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        {
            let (client, messages) = (client.clone(), messages.clone());
            tokio::spawn(async move {
                let mut subscribed_tx = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(MqttPacket::ConnAck(_))) => {
                            for f in &filters {
                                client.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                            }
                        }
                        Ok(Event::Incoming(MqttPacket::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(MqttPacket::Publish(p))) => messages
                            .lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec())),
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("dashboard subscribed")
            .unwrap();
        Dashboard { messages, client }
    }

    pub fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        self.messages.lock().unwrap().clone()
    }

    /// Messages whose topic ends with `suffix`.
    pub fn with_suffix(&self, suffix: &str) -> Vec<serde_json::Value> {
        self.snapshot()
            .into_iter()
            .filter(|(t, _)| t.ends_with(suffix))
            .map(|(_, p)| serde_json::from_slice(&p).unwrap())
            .collect()
    }

    /// Wait until `pred` holds on the messages, or panic after `secs`.
    pub async fn wait_for(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&[(String, Vec<u8>)]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < deadline {
            if pred(&self.messages.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}; got {} messages",
            self.messages.lock().unwrap().len()
        );
    }

    /// Every message validates against the JSON Schema for its topic.
    pub fn assert_all_valid(&self) {
        for (topic, payload) in self.snapshot() {
            let schema_text = schemas::spec::event_schema_for_topic(&topic)
                .unwrap_or_else(|| panic!("no schema for topic {topic}"));
            let schema: serde_json::Value = serde_json::from_str(schema_text).unwrap();
            let instance: serde_json::Value = serde_json::from_slice(&payload)
                .unwrap_or_else(|e| panic!("{topic}: not JSON: {e}"));
            let validator = jsonschema::validator_for(&schema).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&instance)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{topic}: {instance} does not match its schema: {errors:?}"
            );
        }
    }

    /// Send a dashboard command for `org` (its `reply_to` set to this
    /// dashboard's reply topic, which it must be subscribed to: `rsp/v1/#`)
    /// and wait for the answer with the request's correlation id.
    pub async fn command(&self, org: &str, mut request: serde_json::Value) -> serde_json::Value {
        let reply_to = format!("rsp/v1/{org}/test-dashboard");
        request["reply_to"] = reply_to.clone().into();
        let correlation = request["correlation_id"].as_str().unwrap().to_string();
        let before = self.messages.lock().unwrap().len();
        self.client
            .publish(
                format!("cmd/v1/{org}"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&request).unwrap(),
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.messages.lock().unwrap()[before..]
                .iter()
                .rev()
                .filter(|(t, _)| *t == reply_to)
                .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).unwrap())
                .find(|v| v["correlation_id"] == correlation.as_str());
            if let Some(v) = found {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no answer to command {correlation}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn close(self) {
        let _ = self.client.disconnect().await;
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// A CoAP client on its own UDP socket.
pub struct CoapClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    next_id: u16,
}

impl CoapClient {
    pub async fn new(server: SocketAddr) -> CoapClient {
        CoapClient {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            next_id: 1,
        }
    }

    pub fn next_message_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// A request packet; `path` like "hb".
    pub fn request(
        &mut self,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
        con: bool,
    ) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(if con {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        p.header.code = MessageClass::Request(method);
        p.header.message_id = self.next_message_id();
        p.set_token(p.header.message_id.to_be_bytes().to_vec());
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(coap_lite::CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        if !payload.is_empty() {
            p.set_content_format(ContentFormat::ApplicationCBOR);
        }
        p.payload = payload;
        p
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    pub async fn recv(&self, timeout: Duration) -> Option<Packet> {
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(timeout, self.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(Packet::from_bytes(&buf[..n]).expect("server sent valid CoAP")),
            _ => None,
        }
    }

    /// Protect `plain` as `device` (next sequence number), exchange it, and
    /// return the outer answer and, if it is a protected one that verifies,
    /// the inner response.
    pub async fn exchange_protected(
        &self,
        device: &mut OscoreDevice,
        plain: &Packet,
    ) -> (Packet, Result<Packet, String>) {
        let (outer, request) = device.protect(plain);
        let answer = self.exchange(&outer).await;
        let inner = device.open(&request, &answer);
        (answer, inner)
    }

    /// [`CoapClient::exchange_protected`] that must get a protected answer
    /// that verifies: the outer answer and the inner response. Panics with
    /// the outer code and diagnostic otherwise.
    pub async fn exchange_verified(
        &self,
        device: &mut OscoreDevice,
        plain: &Packet,
    ) -> (Packet, Packet) {
        let (answer, inner) = self.exchange_protected(device, plain).await;
        match inner {
            Ok(inner) => (answer, inner),
            Err(e) => panic!(
                "no verified answer ({e}): {} {:?}",
                answer.header.code,
                String::from_utf8_lossy(&answer.payload)
            ),
        }
    }

    /// Send and wait for the answer (retrying a few times: UDP on loopback
    /// rarely drops, but a busy CI machine may be slow).
    pub async fn exchange(&self, p: &Packet) -> Packet {
        let bytes = p.to_bytes().unwrap();
        for _ in 0..5 {
            self.send_raw(&bytes).await;
            if let Some(r) = self.recv(Duration::from_secs(3)).await {
                return r;
            }
        }
        panic!("no CoAP answer to message {}", p.header.message_id);
    }
}

/// A device's side of OSCORE (RFC 8613, the client role) as the profile in
/// `schemas::security` fixes it: sender id h'01', recipient id h'' (the
/// gateway), ID Context `lk/{lock}` sent as kid context in every request.
pub struct OscoreDevice {
    pub device: DeviceRef,
    context: SecurityContext,
    next_seq: u64,
}

impl OscoreDevice {
    /// Lock `id` with its test secret.
    pub fn lock(id: &str) -> OscoreDevice {
        let device = DeviceRef::Lock(dispatcher::LockId::new(id));
        let secret = gateway::store::testing::secret_for(&device);
        OscoreDevice::new(device, &secret)
    }

    /// `device` with `secret`.
    pub fn new(device: DeviceRef, secret: &MasterSecret) -> OscoreDevice {
        let context = SecurityContext::derive(&Params {
            master_secret: secret.as_bytes(),
            master_salt: b"",
            sender_id: DEVICE_OSCORE_ID,
            recipient_id: SERVER_OSCORE_ID,
            id_context: Some(&device.oscore_id_context()),
        })
        .expect("the profile's parameters derive");
        OscoreDevice {
            device,
            context,
            next_seq: 0,
        }
    }

    /// Use sequence numbers from `seq` on. A server checks a request's
    /// sequence number against the window of the key it holds for the
    /// device (RFC 8613 §8.2 step 3, before decrypting), so a test that
    /// sends with an old and a new key keeps their numbers apart to see
    /// verification, not replay, fail.
    pub fn skip_to(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// The next unused sender sequence number.
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// `plain` protected with the next sequence number.
    pub fn protect(&mut self, plain: &Packet) -> (Packet, RequestId) {
        let seq = self.next_seq();
        self.protect_with(plain, seq)
    }

    /// `plain` protected with sequence number `seq` (RFC 8613 §8.1): the
    /// same header, token and Class U options outside, outer code POST
    /// (§4.2), an OSCORE option with Partial IV, kid context and kid, and
    /// the ciphertext of the code, Class E options and payload.
    pub fn protect_with(&self, plain: &Packet, seq: u64) -> (Packet, RequestId) {
        let mut options = Vec::new();
        let mut outer = Packet::new();
        outer.header = plain.header.clone();
        outer.header.code = MessageClass::Request(RequestType::Post);
        outer.set_token(plain.get_token().to_vec());
        for (&number, values) in plain.options() {
            for v in values {
                if is_class_e(number) {
                    options.push((number, v.clone()));
                } else {
                    outer.add_option(CoapOption::from(number), v.clone());
                }
            }
        }
        let inner = InnerMessage {
            code: u8::from(plain.header.code),
            options,
            payload: plain.payload.clone(),
        };
        let piv = PartialIv::from_seq(seq).expect("a sequence number below 2^40");
        let (protected, request) = protect_request(
            &self.context,
            piv,
            &inner.encode().expect("a small request encodes"),
            true,
            &[],
        )
        .expect("the request protects");
        outer.add_option(CoapOption::Oscore, protected.option);
        outer.payload = protected.ciphertext;
        (outer, request)
    }

    /// The verified inner response of a protected answer to `request` (the
    /// outer header and token, the inner code, options and payload); `Err`
    /// says why it is not one.
    pub fn open(&self, request: &RequestId, answer: &Packet) -> Result<Packet, String> {
        let value = answer.get_first_option(CoapOption::Oscore).ok_or_else(|| {
            format!(
                "an unprotected answer {} {:?}",
                answer.header.code,
                String::from_utf8_lossy(&answer.payload)
            )
        })?;
        if answer.header.code != MessageClass::Response(coap_lite::ResponseType::Changed) {
            return Err(format!(
                "outer code {} (RFC 8613 §4.2: 2.04)",
                answer.header.code
            ));
        }
        let option = OscoreOption::decode(value).map_err(|e| e.to_string())?;
        let plain = unprotect_response(&self.context, request, &option, &answer.payload, &[])
            .map_err(|e| e.to_string())?;
        let inner = InnerMessage::decode(&plain).map_err(|e| e.to_string())?;
        let mut p = Packet::new();
        p.header = answer.header.clone();
        p.header.code = MessageClass::from(inner.code);
        p.set_token(answer.get_token().to_vec());
        for (number, value) in inner.options {
            assert_ne!(number, COAP_OPTION_OSCORE, "no OSCORE option inside");
            p.add_option(CoapOption::from(number), value);
        }
        p.payload = inner.payload;
        Ok(p)
    }
}

/// A lock driven by hand over protected CoAP.
pub struct JobLock {
    id: String,
    coap: CoapClient,
    oscore: OscoreDevice,
    seq: u32,
}

impl JobLock {
    pub async fn new(coap: SocketAddr, id: &str) -> JobLock {
        JobLock {
            id: id.into(),
            coap: CoapClient::new(coap).await,
            oscore: OscoreDevice::lock(id),
            seq: 0,
        }
    }

    async fn post(&mut self, path: &str, body: Vec<u8>) -> schemas::Downlink {
        let p: Packet = self.coap.request(RequestType::Post, path, body, true);
        let (_, inner) = self.coap.exchange_verified(&mut self.oscore, &p).await;
        assert_eq!(
            inner.header.code,
            coap_lite::MessageClass::Response(coap_lite::ResponseType::Changed),
            "{}",
            String::from_utf8_lossy(&inner.payload)
        );
        schemas::Downlink::decode(&inner.payload).unwrap()
    }

    /// Talk to a server at another address from now on (a restarted
    /// server), keeping the lock's sequence numbers and OSCORE context.
    pub async fn reconnect(&mut self, coap: SocketAddr) {
        self.coap = CoapClient::new(coap).await;
    }

    /// Send a heartbeat; the answer's downlink.
    pub async fn heartbeat(&mut self) -> schemas::Downlink {
        self.seq += 1;
        let hb = job_lock_heartbeat(&self.id, self.seq);
        self.post("hb", schemas::device::encode(&hb)).await
    }

    /// Report results; the answer's downlink.
    pub async fn report(&mut self, results: Vec<schemas::JobResult>) -> schemas::Downlink {
        self.seq += 1;
        let r = schemas::JobReport {
            lock_id: self.id.clone(),
            seq: self.seq,
            results,
        };
        self.post("jr", schemas::device::encode(&r)).await
    }
}

/// The heartbeat [`JobLock`] sends: an INB1 on 24 h / 60 min intervals.
fn job_lock_heartbeat(lock: &str, seq: u32) -> schemas::Heartbeat {
    use schemas::*;
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
        heartbeat_interval: HeartbeatInterval::from_hours(24).unwrap(),
        activity_log_interval: ActivityLogInterval::from_minutes(60).unwrap(),
    }
}

/// The wall clock, Unix seconds (PIN starts are judged against it).
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The result "done" for `job`, as a lock reports it.
pub fn done(job: &schemas::DeviceJob) -> schemas::JobResult {
    schemas::JobResult {
        id: job.id,
        attempt: job.attempt,
        outcome: schemas::JobOutcome::Done,
        detail: None,
    }
}

/// A dashboard command: `command` for the department `department` (none
/// in a flat organisation), keyed and correlated by `key`.
pub fn request(
    key: &str,
    department: Option<&str>,
    command: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "correlation_id": format!("c-{key}"),
        "idempotency_key": key,
        "requested_by": "Mark Tan",
        "department": department,
        "command": command,
    })
}
