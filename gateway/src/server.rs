//! Starting and stopping the whole server: the order things start in, and the
//! drain that makes a shutdown lose nothing that was acknowledged.
//!
//! Shutdown: stop taking input (CoAP and MQTT stop reading, finish what they
//! took), let the writer commit and answer everything queued, publish the
//! last events, then close the database.

use crate::config::{Config, MqttMode};
use crate::ingest::writer::Writer;
use crate::ingest::{Ingest, QueueDepthProbe};
use crate::mqtt::{self, MqttClient, MqttClientConfig};
use crate::store::Store;
use crate::{coap, http, metrics};
use anyhow::Context;
use dispatcher::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Reports queued for the writer. Two full batches: enough to keep the writer
/// busy while the previous commit's answers go out; beyond it, transports wait.
pub const INGEST_QUEUE_CAPACITY: usize = 4_096;
/// Rows retention deletes per table per pass, so a pass never holds a long lock.
pub const RETENTION_CHUNK: u64 = 10_000;
/// How often the online-device gauges are counted in the database. Two
/// index range scans; a Prometheus scrape every 15-60 s needs no more.
pub const ONLINE_REFRESH: Duration = Duration::from_secs(15);
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Longest a shutdown waits for in-flight work before giving up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a shutdown waits for the broker to acknowledge the last
/// publishes. A broker acknowledges in milliseconds; a slow external one
/// under load gets seconds, without holding a deploy hostage.
pub const MQTT_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the embedded broker keeps running after it acknowledged the last
/// events, so that connected subscribers receive them before the process
/// (and the broker's in-memory sessions) ends. Forwarding takes microseconds;
/// this covers a loaded machine. Subscribers that are offline at that moment
/// miss them: a deployment that needs them uses an external, persistent broker.
pub const EMBEDDED_BROKER_LINGER: Duration = Duration::from_millis(500);
/// How long the MQTT session gets to write its last publishes and DISCONNECT
/// before it is cancelled: loopback or a nearby broker needs milliseconds.
pub const MQTT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A started server. Drop does not stop it: call [`Running::shutdown`].
pub struct Running {
    pub coap_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: Store,
    intake: CancellationToken,
    background: CancellationToken,
    inputs: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
    publisher: JoinHandle<()>,
    mqtt: MqttClient,
    mqtt_loop: JoinHandle<()>,
    http: JoinHandle<()>,
    ingest: Option<Ingest>,
    embedded_broker: bool,
}

/// Start every part; returns once all listeners are bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics_handle = metrics::install();
    let server_key = config.server_key().context("loading the server key")?;
    tracing::info!(key_id = server_key.id(), "server key loaded");
    if config.insecure_dev {
        tracing::warn!("INSECURE: --insecure-dev is on: devices are not authenticated and their traffic is not protected; anyone who reaches this server can report as any lock. Never run this in production");
    }
    let store = Store::open(&config.database_url)
        .await
        .with_context(|| format!("opening the database {}", redact(&config.database_url)))?;
    tracing::info!(engine = store.engine(), url = %redact(&config.database_url), "database ready");
    let registry = store
        .load_registry()
        .await
        .context("loading registered devices")?;
    metrics::devices_registered("lock", registry.lock_count());
    metrics::devices_registered("bridge", registry.bridge_count());
    tracing::info!(
        locks = registry.lock_count(),
        bridges = registry.bridge_count(),
        "devices loaded"
    );
    let registry = Arc::new(RwLock::new(registry));

    let (mqtt_host, mqtt_port, mqtt_addr) = match &config.mqtt {
        MqttMode::Embedded {
            listen,
            max_connections,
        } => {
            let addr = mqtt::broker::start(*listen, *max_connections).await?;
            tracing::info!(%addr, "embedded MQTT broker listening (MQTT 3.1.1)");
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            (host, addr.port(), addr)
        }
        MqttMode::External { host, port } => {
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| format!("cannot resolve the MQTT broker {host}:{port}"))?;
            tracing::info!(broker = %format!("{host}:{port}"), "using an external MQTT broker");
            (host.clone(), *port, addr)
        }
    };

    let intake = CancellationToken::new();
    let background = CancellationToken::new();
    let client_id = config.mqtt_client_id.clone();
    tracing::info!(client_id = %client_id, "MQTT client id");
    let filters = schemas::topic::DEVICE_FILTERS
        .iter()
        .map(|f| f.to_string())
        .collect();
    let (mqtt, incoming, mqtt_loop) = MqttClient::start(
        MqttClientConfig {
            host: mqtt_host,
            port: mqtt_port,
            client_id,
            shared_group: config.mqtt_shared_group.clone(),
        },
        filters,
        background.clone(),
    );

    let (events_tx, events_rx) = tokio::sync::mpsc::channel(mqtt::events::EVENT_QUEUE_CAPACITY);
    let writer = Writer::new(store.clone(), events_tx, config.writer);
    let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(INGEST_QUEUE_CAPACITY);
    let ingest = Ingest::new(registry.clone(), queue_tx);
    let writer = tokio::spawn(writer.run(queue_rx));
    let publisher = tokio::spawn(mqtt::events::run(events_rx, mqtt.clone()));

    let udp = tokio::net::UdpSocket::bind(config.coap_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for CoAP on UDP {}; choose another with --coap-listen",
                config.coap_listen
            )
        })?;
    let coap_addr = udp.local_addr()?;
    tracing::info!(addr = %coap_addr, "CoAP listening (UDP)");
    let mut inputs = Vec::new();
    {
        let (ingest, intake) = (ingest.clone(), intake.clone());
        inputs.push(tokio::spawn(async move {
            if let Err(e) = coap::serve(udp, ingest, intake).await {
                tracing::error!(error = %e, "CoAP endpoint failed");
            }
        }));
    }
    inputs.push(tokio::spawn(mqtt::devices::run(
        incoming,
        mqtt.clone(),
        ingest.clone(),
        intake.clone(),
    )));

    let tcp = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {}; choose another with --http-listen",
                config.http_listen
            )
        })?;
    let http_addr = tcp.local_addr()?;
    tracing::info!(addr = %http_addr, "metrics and health on http://{http_addr}/metrics, /healthz, /readyz");
    let app = http::router(http::HttpState {
        metrics: metrics_handle.clone(),
        store: store.clone(),
        mqtt: mqtt.clone(),
        shutdown: intake.clone(),
    });
    let http = {
        let stop = background.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };

    spawn_housekeeping(
        store.clone(),
        registry,
        metrics_handle,
        &config,
        background.clone(),
        ingest.depth_probe(),
    );

    Ok(Running {
        coap_addr,
        mqtt_addr,
        http_addr,
        store,
        intake,
        background,
        inputs,
        writer,
        publisher,
        mqtt,
        mqtt_loop,
        http,
        ingest: Some(ingest),
        embedded_broker: matches!(config.mqtt, MqttMode::Embedded { .. }),
    })
}

/// Periodic work off the hot path: registry refresh after imports, retention,
/// metric upkeep.
fn spawn_housekeeping(
    store: Store,
    registry: Arc<RwLock<Registry>>,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    config: &Config,
    stop: CancellationToken,
    queue: QueueDepthProbe,
) {
    let refresh_every = config.registry_refresh;
    let retention = config.retention;
    {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut version = store.registry_version().await.ok();
            let mut tick = tokio::time::interval(refresh_every);
            loop {
                tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                handle.run_upkeep();
                metrics::queue_depth(queue.depth().unwrap_or(0));
                let now = store.registry_version().await.ok();
                if now.is_some() && now != version {
                    match store.load_registry().await {
                        Ok(r) => {
                            metrics::devices_registered("lock", r.lock_count());
                            metrics::devices_registered("bridge", r.bridge_count());
                            tracing::info!(
                                locks = r.lock_count(),
                                bridges = r.bridge_count(),
                                "device registry reloaded after an import"
                            );
                            *registry.write().unwrap_or_else(|e| e.into_inner()) = r;
                            version = now;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reload the device registry; keeping the old one")
                        }
                    }
                }
            }
        });
    }
    {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ONLINE_REFRESH);
            loop {
                tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                match store.count_online(crate::ingest::now_ms()).await {
                    Ok(n) => {
                        metrics::devices_online("lock", n.locks as usize);
                        metrics::devices_online("bridge", n.bridges as usize);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot count the devices online; the gauges keep their last value")
                    }
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_EVERY);
        loop {
            tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
            let cutoff = crate::ingest::now_ms().saturating_sub(retention.as_millis() as u64);
            match store.purge_before(cutoff, RETENTION_CHUNK).await {
                Ok(p) => p.record_metrics(),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
            }
        }
    });
}

impl Running {
    /// Stop taking input, commit and answer everything taken, publish the last
    /// events, close the database.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down: no new input; draining");
        self.intake.cancel();
        for h in self.inputs.drain(..) {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, h).await;
        }
        // The last handle on the queue: once dropped, the writer drains and stops.
        self.ingest.take();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.writer).await;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.publisher).await;
        // Every event of an acknowledged report must reach the broker before
        // we leave: wait for its PUBACKs, not just for the bytes to be written.
        let unacked = self.mqtt.flush(MQTT_ACK_TIMEOUT).await;
        if unacked > 0 {
            tracing::warn!(unacked, "the MQTT broker did not acknowledge the last publishes within {MQTT_ACK_TIMEOUT:?}; those dashboard events may be lost");
        }
        if self.embedded_broker {
            // The embedded broker ends with this process: let it hand the last
            // events to the subscribers connected now.
            tokio::time::sleep(EMBEDDED_BROKER_LINGER).await;
        }
        self.mqtt.disconnect().await;
        // Give the session a moment to write the queued publishes and the DISCONNECT;
        // a JoinHandle must not be polled again once the timeout saw it finish.
        let mqtt_done = tokio::time::timeout(MQTT_FLUSH_TIMEOUT, &mut self.mqtt_loop)
            .await
            .is_ok();
        self.background.cancel();
        if !mqtt_done {
            let _ = self.mqtt_loop.await;
        }
        let _ = self.http.await;
        self.store.close().await;
        tracing::info!("shutdown complete");
    }
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            super::redact("sqlite://./data/x.db"),
            "sqlite://./data/x.db"
        );
    }
}
