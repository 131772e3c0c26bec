//! Device messages over MQTT: MQTT-modem locks, and bridges reporting for
//! their linked locks and announcing their connectivity.
//!
//! Each message is decoded, checked against its topic, submitted to the
//! ingest pipeline, and answered on the publisher's ack topic after the
//! commit, or on its error topic with a [`DeviceError`] that says what was
//! wrong. A refused message is counted and never stored.

use super::client::Incoming;
use super::MqttClient;
use crate::ingest::{Ingest, IngestError, Outcome, Report, ReportBody};
use crate::metrics;
use schemas::event::{ConnectivityCause, DeviceError, Transport};
use schemas::topic::{self, DeviceTopic};
use schemas::{device, ActivityLogBatch, Heartbeat, Uplink};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Device messages being handled at once (each waits for a group commit).
/// Enough to fill several commit batches; beyond it we stop reading from the
/// broker, which holds the messages.
pub const MAX_IN_FLIGHT: usize = 8_192;

/// Bridge status payloads on `br/{bridge}/status`.
pub const STATUS_ONLINE: &[u8] = b"online";
/// A clean goodbye, published by the bridge before it disconnects.
pub const STATUS_OFFLINE: &[u8] = b"offline";
/// The bridge's Last Will, published by the broker when the connection is lost.
pub const STATUS_LOST: &[u8] = b"lost";

/// Handle device messages until `shutdown`, then wait for those in flight.
pub async fn run(
    mut incoming: mpsc::Receiver<Incoming>,
    client: MqttClient,
    ingest: Ingest,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = incoming.recv() => match m { Some(m) => m, None => break },
        };
        // Infallible: the semaphore is never closed.
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (client, ingest) = (client.clone(), ingest.clone());
        tokio::spawn(async move {
            handle(msg, &client, &ingest).await;
            drop(permit);
        });
    }
    // Drain: every message we took is answered before we report done.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// Why a device message was refused before reaching the pipeline.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Decode(#[from] device::DecodeError),
    #[error("payload lock_id {payload:?} does not match the topic's lock {topic:?}: publish on lk/{payload}/up/...")]
    TopicMismatch { payload: String, topic: String },
    #[error("status {0:?} is unknown: publish online, offline (before a clean disconnect) or lost (as the Last Will)")]
    BadStatus(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Decode(e) => e.reason(),
            Refusal::TopicMismatch { .. } => "topic_mismatch",
            Refusal::BadStatus(_) => "bad_status",
            Refusal::Ingest(e) => e.reason(),
        }
    }
}

async fn handle(msg: Incoming, client: &MqttClient, ingest: &Ingest) {
    metrics::received("mqtt");
    let Ok(t) = DeviceTopic::parse(&msg.topic) else {
        // Only our own filters are subscribed; a topic that matches them but
        // is not ours (a bad id) has no trustworthy reply address.
        metrics::rejected("mqtt", "unknown_topic");
        tracing::debug!(topic = %msg.topic, "message on an unknown device topic dropped");
        return;
    };
    if let Err(refusal) = process(&t, &msg, client, ingest).await {
        metrics::rejected("mqtt", refusal.reason());
        tracing::debug!(topic = %msg.topic, reason = refusal.reason(), "device message refused");
        let err = DeviceError {
            topic: msg.topic.clone(),
            reason: refusal.reason().to_string(),
            message: refusal.to_string(),
        };
        // Infallible: a plain struct of strings.
        let payload = serde_json::to_vec(&err).expect("error serialises");
        if client
            .publish(topic::down::error(&t.reply_base()), payload)
            .await
            .is_err()
        {
            metrics::publish_failed("device_error");
        }
    }
}

async fn process(
    t: &DeviceTopic<'_>,
    msg: &Incoming,
    client: &MqttClient,
    ingest: &Ingest,
) -> Result<(), Refusal> {
    let (uplink, transport, bridge) = match *t {
        DeviceTopic::LockHeartbeat { lock } => (
            Uplink::Heartbeat(same_lock(Heartbeat::decode(&msg.payload)?, lock)?),
            Transport::Mqtt,
            None,
        ),
        DeviceTopic::LockLog { lock } => (
            Uplink::ActivityLog(same_lock_batch(
                ActivityLogBatch::decode(&msg.payload)?,
                lock,
            )?),
            Transport::Mqtt,
            None,
        ),
        DeviceTopic::BridgeHeartbeat { bridge } => (
            Uplink::Heartbeat(Heartbeat::decode(&msg.payload)?),
            Transport::Bridge,
            Some(bridge),
        ),
        DeviceTopic::BridgeLog { bridge } => (
            Uplink::ActivityLog(ActivityLogBatch::decode(&msg.payload)?),
            Transport::Bridge,
            Some(bridge),
        ),
        DeviceTopic::BridgeStatus { bridge } => {
            let (online, cause) = match &msg.payload[..] {
                STATUS_ONLINE => (true, ConnectivityCause::Connected),
                STATUS_OFFLINE => (false, ConnectivityCause::Disconnected),
                STATUS_LOST => (false, ConnectivityCause::LastWill),
                other => {
                    return Err(Refusal::BadStatus(
                        String::from_utf8_lossy(other).chars().take(32).collect(),
                    ))
                }
            };
            metrics::decoded("mqtt", "bridge_status");
            let report = Report {
                body: ReportBody::BridgeStatus {
                    bridge: bridge.to_string(),
                    online,
                    cause,
                },
                transport: Transport::Bridge,
                bridge: Some(bridge.to_string()),
                received_at_ms: crate::ingest::now_ms(),
            };
            ingest.submit(report).await?;
            return Ok(());
        }
    };
    metrics::decoded("mqtt", uplink.kind().as_str());
    let lock = uplink.lock_id().to_string();
    let report = Report {
        body: ReportBody::Uplink(uplink),
        transport,
        bridge: bridge.map(String::from),
        received_at_ms: crate::ingest::now_ms(),
    };
    let (ack_topic, payload) = match ingest.submit(report).await? {
        Outcome::Heartbeat { downlink, .. } => {
            let topic = match bridge {
                Some(b) => topic::down::bridge_heartbeat_ack(b, &lock),
                None => topic::down::lock_heartbeat_ack(&lock),
            };
            (topic, device::encode(&downlink))
        }
        Outcome::ActivityLog { ack } => {
            let topic = match bridge {
                Some(b) => topic::down::bridge_log_ack(b, &lock),
                None => topic::down::lock_log_ack(&lock),
            };
            (topic, device::encode(&ack))
        }
        Outcome::BridgeStatus { .. } => return Ok(()),
    };
    if client.publish(ack_topic, payload).await.is_err() {
        metrics::publish_failed("device_ack");
    }
    Ok(())
}

fn same_lock(hb: Heartbeat, topic_lock: &str) -> Result<Heartbeat, Refusal> {
    if hb.lock_id != topic_lock {
        return Err(Refusal::TopicMismatch {
            payload: hb.lock_id,
            topic: topic_lock.to_string(),
        });
    }
    Ok(hb)
}

fn same_lock_batch(b: ActivityLogBatch, topic_lock: &str) -> Result<ActivityLogBatch, Refusal> {
    if b.lock_id != topic_lock {
        return Err(Refusal::TopicMismatch {
            payload: b.lock_id,
            topic: topic_lock.to_string(),
        });
    }
    Ok(b)
}
