//! Device messages over MQTT: MQTT-modem locks, and bridges reporting for
//! their linked locks and announcing their connectivity.
//!
//! Each message is decoded, checked against its topic, submitted to the
//! ingest pipeline, and answered on the publisher's ack topic after the
//! commit, or on its error topic with a [`DeviceError`] that says what was
//! wrong. A refused message is counted and never stored.
//!
//! Uplinks are OSCORE-protected with the key of the device whose topic they
//! are on ([`super::protection`]); their acks are protected as the answers.
//! Bridge status stays plain: only the bridge itself can publish on its
//! status topic (the MQTT front confines it), and a status carries nothing
//! secret. With `--insecure-dev`, plain uplinks are accepted too.

use super::client::Incoming;
use super::protection::{self, ProtectionError, Verified};
use super::MqttClient;
use crate::ingest::{Ingest, IngestError, Outcome, Pending, Report, ReportBody};
use crate::keys::KeyRing;
use crate::metrics;
use dispatcher::keys::DeviceRef;
use dispatcher::{BridgeId, LockId};
use schemas::event::{ConnectivityCause, DeviceError, Transport};
use schemas::topic::{self, DeviceTopic};
use schemas::{device, ActivityLogBatch, Heartbeat, JobReport, Uplink};
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
///
/// Messages are decoded and queued for the writer here, one after another in
/// the order the broker delivered them, so a bridge's `lost` then `online`
/// are applied in that order. Only waiting for the commit and publishing the
/// answer run in their own tasks.
pub async fn run(
    mut incoming: mpsc::Receiver<Incoming>,
    client: MqttClient,
    ingest: Ingest,
    security: Security,
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
        metrics::received("mqtt");
        let Ok(t) = DeviceTopic::parse(&msg.topic) else {
            // Only our own filters are subscribed; a topic that matches them
            // but is not ours (a bad id) has no trustworthy reply address.
            metrics::rejected("mqtt", "unknown_topic");
            tracing::debug!(topic = %msg.topic, "message on an unknown device topic dropped");
            continue;
        };
        let reply_base = t.reply_base();
        let queued = match decode(&t, &msg.payload, &security) {
            Ok(prepared) => {
                let protection = prepared.verified.as_ref().map(Verified::protection);
                ingest
                    .enqueue_with(prepared.report, protection)
                    .await
                    .map(|pending| (pending, prepared.ack, prepared.verified))
                    .map_err(Refusal::from)
            }
            Err(refusal) => Err(refusal),
        };
        let client = client.clone();
        tokio::spawn(async move {
            let answered = match queued {
                Ok((pending, ack, verified)) => answer(pending, ack, verified, &client).await,
                Err(refusal) => Err(refusal),
            };
            if let Err(refusal) = answered {
                refuse(&msg.topic, &reply_base, &refusal, &client).await;
            }
            drop(permit);
        });
    }
    // Drain: every message we took is answered before we report done.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// What device payloads must carry.
#[derive(Clone)]
pub struct Security {
    /// Every registered device's key.
    pub ring: Arc<KeyRing>,
    /// `--insecure-dev`: plain uplinks are accepted as well.
    pub insecure_dev: bool,
}

/// Why a device message was refused before reaching the pipeline.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Protection(#[from] ProtectionError),
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
            Refusal::Protection(e) => e.reason(),
            Refusal::Decode(e) => e.reason(),
            Refusal::TopicMismatch { .. } => "topic_mismatch",
            Refusal::BadStatus(_) => "bad_status",
            Refusal::Ingest(e) => e.reason(),
        }
    }
}

/// A decoded message: the report to queue, and where its answer goes.
struct Prepared {
    report: Report,
    /// The ack topic, for uplinks; bridge statuses are not answered.
    ack: Option<String>,
    /// Set when the uplink arrived protected: its ack is protected too.
    verified: Option<Verified>,
}

/// Count the refusal and tell the device on its error topic.
async fn refuse(topic: &str, reply_base: &str, refusal: &Refusal, client: &MqttClient) {
    metrics::rejected("mqtt", refusal.reason());
    tracing::debug!(topic, reason = refusal.reason(), "device message refused");
    let err = DeviceError {
        topic: topic.to_string(),
        reason: refusal.reason().to_string(),
        message: refusal.to_string(),
    };
    // Infallible: a plain struct of strings.
    let payload = serde_json::to_vec(&err).expect("error serialises");
    if client
        .publish(topic::down::error(reply_base), payload)
        .await
        .is_err()
    {
        metrics::publish_failed("device_error");
    }
}

/// Verify (when protected) and decode a message on a device topic into
/// the report it carries.
fn decode(t: &DeviceTopic<'_>, payload: &[u8], security: &Security) -> Result<Prepared, Refusal> {
    // The device whose key must protect an uplink: the topic's owner.
    let owner = match *t {
        DeviceTopic::LockHeartbeat { lock }
        | DeviceTopic::LockLog { lock }
        | DeviceTopic::LockJobReport { lock } => Some(DeviceRef::Lock(LockId::new(lock))),
        DeviceTopic::BridgeHeartbeat { bridge }
        | DeviceTopic::BridgeLog { bridge }
        | DeviceTopic::BridgeJobReport { bridge } => Some(DeviceRef::Bridge(BridgeId::new(bridge))),
        DeviceTopic::BridgeStatus { .. } => None,
    };
    let (cbor, verified) = match owner {
        Some(owner) => {
            match protection::unprotect(&security.ring, &owner, payload, security.insecure_dev)? {
                Some((cbor, verified)) => {
                    metrics::oscore_verified("mqtt");
                    (std::borrow::Cow::Owned(cbor), Some(verified))
                }
                None => {
                    metrics::oscore_unprotected_accepted("mqtt");
                    (std::borrow::Cow::Borrowed(payload), None)
                }
            }
        }
        None => (std::borrow::Cow::Borrowed(payload), None),
    };
    let payload = &cbor[..];
    let (uplink, transport, bridge) = match *t {
        DeviceTopic::LockHeartbeat { lock } => (
            Uplink::Heartbeat(same_lock(Heartbeat::decode(payload)?, lock)?),
            Transport::Mqtt,
            None,
        ),
        DeviceTopic::LockLog { lock } => (
            Uplink::ActivityLog(same_lock_batch(ActivityLogBatch::decode(payload)?, lock)?),
            Transport::Mqtt,
            None,
        ),
        DeviceTopic::LockJobReport { lock } => {
            let report = JobReport::decode(payload)?;
            if report.lock_id != lock {
                return Err(Refusal::TopicMismatch {
                    payload: report.lock_id,
                    topic: lock.to_string(),
                });
            }
            (Uplink::JobReport(report), Transport::Mqtt, None)
        }
        DeviceTopic::BridgeHeartbeat { bridge } => (
            Uplink::Heartbeat(Heartbeat::decode(payload)?),
            Transport::Bridge,
            Some(bridge),
        ),
        DeviceTopic::BridgeLog { bridge } => (
            Uplink::ActivityLog(ActivityLogBatch::decode(payload)?),
            Transport::Bridge,
            Some(bridge),
        ),
        DeviceTopic::BridgeJobReport { bridge } => (
            Uplink::JobReport(JobReport::decode(payload)?),
            Transport::Bridge,
            Some(bridge),
        ),
        DeviceTopic::BridgeStatus { bridge } => {
            let (online, cause) = match payload {
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
            return Ok(Prepared {
                report,
                ack: None,
                verified: None,
            });
        }
    };
    metrics::decoded("mqtt", uplink.kind().as_str());
    let lock = uplink.lock_id();
    let ack = match (&uplink, bridge) {
        (Uplink::Heartbeat(_), Some(b)) => topic::down::bridge_heartbeat_ack(b, lock),
        (Uplink::Heartbeat(_), None) => topic::down::lock_heartbeat_ack(lock),
        (Uplink::ActivityLog(_), Some(b)) => topic::down::bridge_log_ack(b, lock),
        (Uplink::ActivityLog(_), None) => topic::down::lock_log_ack(lock),
        (Uplink::JobReport(_), Some(b)) => topic::down::bridge_job_report_ack(b, lock),
        (Uplink::JobReport(_), None) => topic::down::lock_job_report_ack(lock),
    };
    let report = Report {
        body: ReportBody::Uplink(uplink),
        transport,
        bridge: bridge.map(String::from),
        received_at_ms: crate::ingest::now_ms(),
    };
    Ok(Prepared {
        report,
        ack: Some(ack),
        verified,
    })
}

/// Wait for the commit and publish the answer on the device's ack topic,
/// protected as the answer to the uplink when it came protected.
async fn answer(
    pending: Pending,
    ack: Option<String>,
    verified: Option<Verified>,
    client: &MqttClient,
) -> Result<(), Refusal> {
    let payload = match pending.outcome().await? {
        Outcome::Heartbeat { downlink, .. } | Outcome::JobReport { downlink } => {
            device::encode(&downlink)
        }
        Outcome::ActivityLog { ack } => device::encode(&ack),
        // Never from MQTT: 2FA entries come over CoAP only.
        Outcome::BridgeStatus { .. } | Outcome::TwoFactor(_) => return Ok(()),
    };
    let Some(ack_topic) = ack else { return Ok(()) };
    let payload = match verified {
        None => payload,
        Some(v) => match v.accepted_ack(&payload) {
            Ok(p) => p,
            // Unreachable with our small answers (AES-CCM takes 64 KiB).
            Err(e) => {
                tracing::error!(error = %e, "cannot protect an MQTT ack");
                metrics::publish_failed("device_ack");
                return Ok(());
            }
        },
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
