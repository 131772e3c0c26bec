//! The gateway's own MQTT session (rumqttc), to the embedded or an external broker.
//!
//! One task polls the event loop: it resubscribes on every ConnAck (rumqttc
//! does not, upstream #250), backs off after errors (rumqttc reconnects at
//! once, #918), and forwards device messages into a bounded channel: a full
//! channel slows our reading from the broker, which is the backpressure.

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Requests (publishes) buffered towards the broker before `publish` waits.
pub const REQUEST_CAPACITY: usize = 10_000;
/// Device messages buffered between the MQTT session and the handler.
pub const INCOMING_CAPACITY: usize = 4_096;
/// Unacknowledged QoS 1 publishes in flight; loopback round trips are short,
/// so this mostly bounds memory when the broker is slow.
pub const MAX_INFLIGHT: u16 = 1_000;
/// Wait before reconnecting after an error.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct MqttClientConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Subscribe to device topics through this shared-subscription group
    /// (`$share/{group}/...`), so several gateway instances split the load.
    pub shared_group: Option<String>,
    /// The login the broker requires, if any.
    pub login: Option<crate::config::BrokerLogin>,
}

/// A message a device published.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
}

/// Cheap-to-clone handle for publishing.
#[derive(Clone)]
pub struct MqttClient {
    client: AsyncClient,
    connected: Arc<AtomicBool>,
    acks: Arc<AckCount>,
}

/// QoS 1 publishes handed to the session, and PUBACKs received: equal when
/// the broker holds everything we published.
#[derive(Default)]
struct AckCount {
    published: AtomicU64,
    acked: AtomicU64,
    changed: Notify,
}

impl MqttClient {
    /// Connect (in the background) and subscribe to `filters`. Device
    /// messages arrive on the returned channel until `shutdown`.
    pub fn start(
        config: MqttClientConfig,
        filters: Vec<String>,
        shutdown: CancellationToken,
    ) -> (MqttClient, mpsc::Receiver<Incoming>, JoinHandle<()>) {
        let mut opts = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some(login) = &config.login {
            opts.set_credentials(login.username.clone(), login.password.as_str());
        }
        // A persistent session: device messages that arrive while we restart
        // wait in the broker (external brokers) instead of being lost.
        opts.set_clean_session(false);
        opts.set_inflight(MAX_INFLIGHT);
        opts.set_max_packet_size(
            super::broker::MAX_PAYLOAD_BYTES + 1024,
            super::broker::MAX_PAYLOAD_BYTES + 1024,
        );
        let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
        let connected = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AckCount::default());
        let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
        let filters: Vec<String> = match &config.shared_group {
            Some(g) => filters.iter().map(|f| format!("$share/{g}/{f}")).collect(),
            None => filters,
        };
        let handle = {
            let client = client.clone();
            let connected = connected.clone();
            let acks = acks.clone();
            tokio::spawn(async move {
                let mut logged_down = false;
                loop {
                    let event = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        ev = eventloop.poll() => ev,
                    };
                    match event {
                        // A publishing-only session is ready once connected.
                        Ok(Event::Incoming(Packet::ConnAck(_))) if filters.is_empty() => {
                            logged_down = false;
                            connected.store(true, Ordering::Relaxed);
                            tracing::info!(broker = %format!("{}:{}", config.host, config.port), client_id = %config.client_id, "MQTT session up");
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            logged_down = false;
                            // One SUBSCRIBE for every filter, so one SUBACK says all are in place.
                            let subscribe = filters
                                .iter()
                                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                            if let Err(e) = client.try_subscribe_many(subscribe) {
                                tracing::warn!(error = %e, "cannot subscribe to the device topics");
                            }
                        }
                        // Ready only once the device topics are subscribed: a
                        // report published before that would reach nobody.
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            let refused: Vec<&String> = filters
                                .iter()
                                .zip(&ack.return_codes)
                                .filter(|(_, code)| matches!(code, SubscribeReasonCode::Failure))
                                .map(|(f, _)| f)
                                .collect();
                            if refused.is_empty() {
                                connected.store(true, Ordering::Relaxed);
                                tracing::info!(broker = %format!("{}:{}", config.host, config.port), "MQTT session up, device topics subscribed");
                            } else {
                                tracing::error!(?refused, "the broker refused our subscriptions; device reports over MQTT will not arrive");
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let msg = Incoming {
                                topic: p.topic,
                                payload: p.payload,
                            };
                            if tx.send(msg).await.is_err() {
                                break;
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acks.acked.fetch_add(1, Ordering::Relaxed);
                            acks.changed.notify_waiters();
                        }
                        // Our own DISCONNECT is out: the session is over.
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            connected.store(false, Ordering::Relaxed);
                            if !logged_down {
                                tracing::warn!(error = %e, client_id = %config.client_id, "MQTT session down; reconnecting every {RECONNECT_DELAY:?} (if it keeps dropping right after connecting, another client uses this id: give each instance its own --mqtt-client-id)");
                                logged_down = true;
                            }
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                            }
                        }
                    }
                }
                connected.store(false, Ordering::Relaxed);
            })
        };
        (
            MqttClient {
                client,
                connected,
                acks,
            },
            rx,
            handle,
        )
    }

    /// Publish at QoS 1. Waits only when the request buffer is full.
    pub async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<(), rumqttc::ClientError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        self.acks.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Wait until the broker acknowledged every publish handed to the
    /// session, or `timeout` passed. Returns how many are still unacknowledged.
    pub async fn flush(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so no PUBACK slips between them.
            let changed = self.acks.changed.notified();
            let published = self.acks.published.load(Ordering::Relaxed);
            let acked = self.acks.acked.load(Ordering::Relaxed);
            if acked >= published {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return published - acked;
            }
        }
    }

    /// Connected, with the device topics subscribed.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Polls the session until the queued publishes are written, then disconnects.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}
