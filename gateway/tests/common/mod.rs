//! Test support shared by the end-to-end tests: a real server on ephemeral
//! loopback ports over a fresh database, a dashboard-side MQTT subscriber that
//! records (and schema-checks) everything published, and a CoAP client.
#![allow(dead_code)]

use coap_lite::{ContentFormat, MessageClass, MessageType, Packet, RequestType};
use gateway::config::{Config, Settings};
use gateway::server::Running;
use gateway::store::testing::TestDb;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as MqttPacket, QoS};
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
}

pub fn config(database_url: &str, dir: &std::path::Path) -> Config {
    let s = Settings {
        coap_listen: Some("127.0.0.1:0".parse().unwrap()),
        mqtt_listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        database_url: Some(database_url.to_string()),
        data_dir: Some(dir.to_path_buf()),
        registry_refresh_secs: Some(1),
        server_key_file: Some(gateway::store::testing::server_key_file(dir)),
        ..Default::default()
    };
    Config::from_settings(s).unwrap()
}

impl Harness {
    /// Register `fleet` and start the server.
    pub async fn start(engine: Engine, fleet: &dispatcher::import::ParsedFleet) -> Harness {
        let db = engine.db().await;
        let store = gateway::store::Store::open(&db.url).await.unwrap();
        gateway::store::testing::register(&store, fleet).await;
        store.close().await;
        let dir = tempfile::tempdir().unwrap();
        let server = gateway::server::start(config(&db.url, dir.path()))
            .await
            .unwrap();
        wait_ready(server.http_addr).await;
        Harness { server, db, dir }
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
