//! Starting and stopping the whole server: the order things start in, and the
//! drain that makes a shutdown lose nothing that was acknowledged.
//!
//! Start: the registry and the key ring (every device's OSCORE context) are
//! loaded before any listener opens; a server key that does not open the
//! stored keys stops the start.
//!
//! Shutdown: stop taking input (CoAP and MQTT stop reading, finish what they
//! took), let the writer commit and answer everything queued, publish the
//! last events, then close the database.

use crate::config::{Config, MqttMode};
use crate::ingest::writer::{JobDelivery, Writer};
use crate::ingest::{Ingest, QueueDepthProbe};
use crate::keys::{KeyRing, ServerKey};
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
/// How often the gauges kept in the database are counted (devices online,
/// 2FA lock-outs, low-battery locks, pending jobs by age). Index range
/// scans each; a Prometheus scrape every 15-60 s needs no more.
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
    /// The gateway's session on the device broker (uplinks, acks).
    device_mqtt: MqttClient,
    /// The gateway's session on the backend broker (dashboard events).
    backend_mqtt: MqttClient,
    mqtt_loops: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
    /// SQLite's WAL checkpoints, beside the writer.
    checkpointer: Option<JoinHandle<()>>,
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
    let ring = Arc::new(KeyRing::new());
    let loaded = ring
        .load(&store, &server_key, registry.clone())
        .await
        .context("loading device keys")?;
    if let Some(e) = loaded.wrong_server_key() {
        anyhow::bail!("{e}");
    }
    log_key_load(&loaded, "device keys loaded");

    let intake = CancellationToken::new();
    let background = CancellationToken::new();
    let checkpointer = match store.spawn_checkpointer(background.clone()).await {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "cannot checkpoint the SQLite WAL beside the writer; every commit that fills it checkpoints it instead (slower under load)");
            None
        }
    };
    let topology = mqtt::topology::start(&config, &ring, background.clone()).await?;
    let mqtt_addr = topology.public;
    let client_id = config.mqtt_client_id.clone();
    tracing::info!(client_id = %client_id, "MQTT client id");
    let filters = schemas::topic::DEVICE_FILTERS
        .iter()
        .map(|f| f.to_string())
        .collect();
    let (device_mqtt, incoming, device_loop) = MqttClient::start(
        MqttClientConfig {
            host: topology.devices.0.clone(),
            port: topology.devices.1,
            client_id: topology.session_id(&client_id, "devices"),
            shared_group: config.mqtt_shared_group.clone(),
            login: topology.login.clone(),
        },
        filters,
        background.clone(),
    );
    let (backend_mqtt, command_rx, backend_loop) = MqttClient::start(
        MqttClientConfig {
            host: topology.backend.0.clone(),
            port: topology.backend.1,
            client_id: topology.session_id(&client_id, "backend"),
            shared_group: config.mqtt_shared_group.clone(),
            login: topology.login.clone(),
        },
        vec![schemas::command::COMMANDS_FILTER.to_string()],
        background.clone(),
    );

    let (events_tx, events_rx) = tokio::sync::mpsc::channel(mqtt::events::EVENT_QUEUE_CAPACITY);
    let overdue_events = events_tx.clone();
    let bridge_events = events_tx.clone();
    let twofa_events = events_tx.clone();
    let (bridge_signals, bridge_signal_rx) = crate::bridges::channel();
    let bridge_signals_for_task = bridge_signals.clone();
    let writer = Writer::new(store.clone(), events_tx, config.writer)
        .with_jobs(JobDelivery {
            registry: registry.clone(),
            server_key: server_key.clone(),
        })
        .with_bridges(bridge_signals.clone())
        .with_twofa(config.twofa.limits);
    let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(INGEST_QUEUE_CAPACITY);
    let ingest = Ingest::new(registry.clone(), queue_tx);
    let writer = tokio::spawn(writer.run(queue_rx));
    let publisher = tokio::spawn(mqtt::events::run(events_rx, backend_mqtt.clone()));

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
    // Passcode hashing, shared by the 2FA gate and the command API.
    let hasher = crate::twofa::gate::PasscodeHasher::new(server_key.clone());
    {
        let notifier: Arc<dyn crate::twofa::Notifier> = match &config.twofa.notifier {
            crate::config::NotifierChoice::Mqtt => {
                Arc::new(crate::twofa::mqtt_notifier::MqttNotifier::new(
                    backend_mqtt.clone(),
                    config.twofa.template.clone(),
                ))
            }
            crate::config::NotifierChoice::Webhook {
                url,
                auth_header,
                timeout,
                tries,
            } => {
                let mut c = crate::twofa::webhook::WebhookConfig::new(url.clone());
                c.auth_header = auth_header.clone();
                c.template = config.twofa.template.clone();
                c.timeout = *timeout;
                c.tries = *tries;
                Arc::new(
                    crate::twofa::webhook::WebhookNotifier::new(c)
                        .context("setting up the SMS webhook notifier")?,
                )
            }
        };
        tracing::info!(
            notifier = notifier.kind(),
            "2FA OTPs go through the {} notifier",
            notifier.kind()
        );
        metrics::twofa_notifier_ready(notifier.kind(), &crate::twofa::NotifyError::REASONS);
        let gate = crate::twofa::Gate::new(crate::twofa::GateParts {
            ingest: ingest.clone(),
            registry: registry.clone(),
            server_key: server_key.clone(),
            notifier,
            hasher: hasher.clone(),
            store: store.clone(),
            events: twofa_events,
        });
        let (ingest, intake, ring) = (ingest.clone(), intake.clone(), ring.clone());
        let coap_config = coap::CoapConfig {
            insecure_dev: config.insecure_dev,
            ..coap::CoapConfig::default()
        };
        inputs.push(tokio::spawn(async move {
            if let Err(e) =
                coap::serve_with_gate(udp, ingest, ring, intake, coap_config, Some(gate)).await
            {
                tracing::error!(error = %e, "CoAP endpoint failed");
            }
        }));
    }
    inputs.push(tokio::spawn(mqtt::commands::run(
        command_rx,
        mqtt::commands::Commands {
            store: store.clone(),
            queue: store.command_queue(),
            registry: registry.clone(),
            server_key: server_key.clone(),
            client: backend_mqtt.clone(),
            hasher,
            bridges: Some(bridge_signals),
        },
        intake.clone(),
    )));
    // Stops with the input, so that its event sender is gone before the
    // publisher drains.
    tokio::spawn(crate::bridges::run(
        config.bridges,
        crate::bridges::Deps {
            store: store.clone(),
            client: device_mqtt.clone(),
            ring: ring.clone(),
            server_key: server_key.clone(),
            events: bridge_events,
            insecure_dev: config.insecure_dev,
            assume_stored_online: matches!(config.mqtt, crate::config::MqttMode::External { .. }),
            signals: bridge_signals_for_task,
        },
        bridge_signal_rx,
        intake.clone(),
    ));
    inputs.push(tokio::spawn(mqtt::devices::run(
        incoming,
        device_mqtt.clone(),
        ingest.clone(),
        mqtt::devices::Security {
            ring: ring.clone(),
            insecure_dev: config.insecure_dev,
        },
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
        mqtt: vec![device_mqtt.clone(), backend_mqtt.clone()],
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

    let registry_for_overdue = registry.clone();
    spawn_housekeeping(
        store.clone(),
        Devices {
            registry,
            ring,
            server_key,
        },
        metrics_handle,
        &config,
        background.clone(),
        ingest.depth_probe(),
    );
    spawn_overdue_watch(
        store.clone(),
        registry_for_overdue,
        overdue_events,
        config.overdue_grace,
        // Stops with the input, so that its event sender is gone before the
        // publisher drains.
        intake.clone(),
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
        device_mqtt,
        backend_mqtt,
        mqtt_loops: vec![device_loop, backend_loop],
        http,
        checkpointer,
        ingest: Some(ingest),
        embedded_broker: matches!(config.mqtt, MqttMode::Embedded { .. }),
    })
}

/// What a registry change reloads: the registry and the key ring.
struct Devices {
    registry: Arc<RwLock<Registry>>,
    ring: Arc<KeyRing>,
    server_key: ServerKey,
}

impl Devices {
    /// Reload both; `Err` leaves what failed as it was (the next tick retries).
    async fn reload(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        // Ids are taken from the registry being replaced, then the ring's
        // new entries take them from the new one: one copy per device.
        let r = store.reload_registry(&*self.registry).await?;
        metrics::devices_registered("lock", r.lock_count());
        metrics::devices_registered("bridge", r.bridge_count());
        tracing::info!(
            locks = r.lock_count(),
            bridges = r.bridge_count(),
            "device registry reloaded after a change"
        );
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = r;
        let loaded = self
            .ring
            .load(store, &self.server_key, self.registry.clone())
            .await?;
        log_key_load(&loaded, "device keys reloaded after a change");
        Ok(())
    }
}

/// Log what a key-ring load did; keys that give no context are a warning
/// (their devices cannot be served), naming the first one.
fn log_key_load(loaded: &crate::keys::LoadReport, what: &str) {
    tracing::info!(
        contexts = loaded.contexts,
        derived = loaded.derived,
        kept = loaded.kept,
        removed = loaded.removed,
        "{what}"
    );
    if let Some(e) = &loaded.first_error {
        tracing::warn!(unusable = loaded.unusable, first = %e, "some stored device keys do not open under the server key; those devices cannot be served until their keys are rotated");
    }
}

/// Periodic work off the hot path: registry and key-ring refresh after
/// changes, retention, metric upkeep.
fn spawn_housekeeping(
    store: Store,
    devices: Devices,
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
                    // Imports, rotations and deregistrations all bump the
                    // version. A stale ring never lets a revoked key through
                    // (the commit checks the stored key); it only delays a
                    // new key's first success until this reload.
                    match devices.reload(&store).await {
                        Ok(()) => version = now,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reload the device registry and keys; keeping the old ones")
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
                match store.count_twofa_lockouts(crate::ingest::now_ms()).await {
                    Ok((locks, users)) => metrics::twofa_lockouts(locks, users),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot count the 2FA lock-outs; the gauge keeps its last value")
                    }
                }
                match store.count_low_battery().await {
                    Ok(n) => metrics::locks_low_battery(n),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot count the locks with a low battery; the gauge keeps its last value")
                    }
                }
                record_pending_jobs(&store).await;
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

/// Count the pending jobs by age into their gauges.
async fn record_pending_jobs(store: &Store) {
    let now = crate::ingest::now_ms();
    let ages = metrics::PENDING_AGES.map(|(ms, _)| ms);
    match store.pending_ages(now, ages).await {
        Ok(p) => {
            let oldest = p.oldest_issued_ms.map_or(0, |t| now.saturating_sub(t));
            metrics::jobs_pending(&p.by_age(), Duration::from_millis(oldest));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the pending jobs; the gauges keep their last values")
        }
    }
}

/// How often an instance looks for locks that became overdue or came back.
pub const OVERDUE_EVERY: Duration = Duration::from_secs(5);
/// Most overdue locks claimed per look (a power cut ending brings the
/// rest at the next look).
const OVERDUE_CLAIM: u64 = 5_000;

/// Report locks that missed their due heartbeat by `grace`, and their
/// return, to the dashboard. Each report is claimed in the database, so
/// with several instances each goes out once.
fn spawn_overdue_watch(
    store: Store,
    registry: Arc<RwLock<dispatcher::Registry>>,
    events: tokio::sync::mpsc::Sender<crate::ingest::writer::Outbound>,
    grace: Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(OVERDUE_EVERY);
        loop {
            tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
            let now = crate::ingest::now_ms();
            // online_until_ms is the due heartbeat plus the presence grace;
            // shift it to this instance's overdue grace.
            let deadline = (now + dispatcher::presence::ONLINE_GRACE_MS)
                .saturating_sub(grace.as_millis() as u64);
            let overdue = match store.claim_overdue(deadline, now, OVERDUE_CLAIM).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for overdue locks; will retry");
                    continue;
                }
            };
            let returned = store.claim_returned(deadline).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot look for returned locks; will retry");
                Vec::new()
            });
            let out: Vec<_> = {
                let registry = registry.read().unwrap_or_else(|e| e.into_inner());
                overdue
                    .iter()
                    .map(|c| (c, true))
                    .chain(returned.iter().map(|c| (c, false)))
                    .filter_map(|(c, is_overdue)| {
                        let lock = registry.lock(&c.lock_id)?;
                        let due = c
                            .online_until_ms
                            .saturating_sub(dispatcher::presence::ONLINE_GRACE_MS);
                        let event = schemas::event::LockOverdueEvent {
                            event_id: if is_overdue {
                                schemas::event::event_id("overdue", &c.lock_id, due)
                            } else {
                                schemas::event::event_id("returned", &c.lock_id, c.last_heard_ms)
                            },
                            org: lock.org.to_string(),
                            departments: lock.departments.to_vec(),
                            lock_id: c.lock_id.clone(),
                            overdue: is_overdue,
                            due_ms: is_overdue.then_some(due),
                            last_heard_ms: c.last_heard_ms,
                            at_ms: now,
                        };
                        metrics::overdue_change(if is_overdue { "overdue" } else { "returned" });
                        Some(crate::ingest::writer::Outbound {
                            topic: schemas::topic::events::overdue(&event.org, &event.lock_id),
                            // Infallible: a plain struct of strings, numbers and options.
                            payload: serde_json::to_vec(&event).expect("event serialises"),
                            kind: "overdue",
                        })
                    })
                    .collect()
            };
            for o in out {
                if events.send(o).await.is_err() {
                    break;
                }
            }
            if let Ok(n) = store.count_overdue().await {
                metrics::locks_overdue(n);
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
        let unacked = self.backend_mqtt.flush(MQTT_ACK_TIMEOUT).await
            + self.device_mqtt.flush(MQTT_ACK_TIMEOUT).await;
        if unacked > 0 {
            tracing::warn!(unacked, "the MQTT broker did not acknowledge the last publishes within {MQTT_ACK_TIMEOUT:?}; those dashboard events may be lost");
        }
        if self.embedded_broker {
            // The embedded broker ends with this process: let it hand the last
            // events to the subscribers connected now.
            tokio::time::sleep(EMBEDDED_BROKER_LINGER).await;
        }
        self.backend_mqtt.disconnect().await;
        self.device_mqtt.disconnect().await;
        // Give the sessions a moment to write the queued publishes and the
        // DISCONNECT; a JoinHandle must not be polled again once the timeout
        // saw it finish.
        let mut unfinished = Vec::new();
        for mut handle in self.mqtt_loops.drain(..) {
            if tokio::time::timeout(MQTT_FLUSH_TIMEOUT, &mut handle)
                .await
                .is_err()
            {
                unfinished.push(handle);
            }
        }
        self.background.cancel();
        for handle in unfinished {
            let _ = handle.await;
        }
        let _ = self.http.await;
        if let Some(checkpointer) = self.checkpointer {
            let _ = checkpointer.await;
        }
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
