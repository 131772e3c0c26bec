//! The ingest pipeline between the transports and the store.
//!
//! A transport builds a [`Report`] and awaits [`Ingest::submit`]; the answer
//! arrives only after the report is durably committed (or found to be a
//! duplicate), so an acknowledgement always means "stored". The work happens
//! in one writer task ([`writer`]) that group-commits: it takes every queued
//! report up to a batch size or a short linger, commits them in one
//! transaction, then answers each and publishes the dashboard events in commit
//! order. One writer keeps change detection simple and ordered; the bounded
//! queue in front of it is the backpressure.
//!
//! This module owns the domain questions asked on every report (who may send
//! it, which organisation gets its events); it knows nothing of sockets.

pub mod writer;

use dispatcher::registry::{ReportRefusal, Reporter};
use dispatcher::{BridgeRecord, LockRecord, Registry};
use schemas::event::{ConnectivityCause, Transport};
use schemas::{Downlink, LogAck, Uplink};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// A device report on its way to the store.
#[derive(Debug, Clone)]
pub struct Report {
    pub body: ReportBody,
    pub transport: Transport,
    /// The bridge that relayed it, for bridged locks.
    pub bridge: Option<String>,
    /// Server receive time, Unix milliseconds.
    pub received_at_ms: u64,
}

#[derive(Debug, Clone)]
pub enum ReportBody {
    Uplink(Uplink),
    /// A bridge said it is online or offline (or the broker published its Last Will).
    BridgeStatus {
        bridge: String,
        online: bool,
        cause: ConnectivityCause,
    },
}

/// What the device is told after its report was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A heartbeat: `stored` is false when it was a duplicate of a stored one.
    Heartbeat { stored: bool, downlink: Downlink },
    /// An activity-log batch; `ack.stored` counts the new entries.
    ActivityLog { ack: LogAck },
    /// A bridge status: `changed` is false when the bridge was already in that state.
    BridgeStatus { changed: bool },
}

/// Why a report was not stored. Each says what the device or operator must do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Refused(#[from] ReportRefusal),
    #[error("the server is shutting down: retry in a few seconds")]
    ShuttingDown,
    #[error("storage failed, nothing was stored: retry later ({0})")]
    Storage(String),
}

impl IngestError {
    /// Stable label for the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Refused(r) => r.reason(),
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Storage(_) => "storage",
        }
    }
}

/// The registered device a report is about, found when it was authorised.
#[derive(Debug, Clone)]
pub enum Subject {
    Lock(Arc<LockRecord>),
    Bridge(Arc<BridgeRecord>),
}

/// One queued report with its authorised subject and the channel its answer
/// goes back on.
#[derive(Debug)]
pub struct WriteRequest {
    pub report: Report,
    pub subject: Subject,
    pub reply: oneshot::Sender<Result<Outcome, IngestError>>,
}

/// The transports' handle on the pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    registry: Arc<RwLock<Registry>>,
    queue: mpsc::Sender<WriteRequest>,
}

impl Ingest {
    pub fn new(registry: Arc<RwLock<Registry>>, queue: mpsc::Sender<WriteRequest>) -> Self {
        Ingest { registry, queue }
    }

    /// Check who sent `report`, queue it, and wait until it is committed.
    pub async fn submit(&self, report: Report) -> Result<Outcome, IngestError> {
        self.enqueue(report).await?.outcome().await
    }

    /// Check who sent `report` and queue it; the writer handles reports in
    /// the order they were queued. Returns once it is queued (waiting while
    /// the queue is full); await [`Pending::outcome`] for the commit. A
    /// transport whose messages must keep their order (a bridge's
    /// online/offline) queues them one after another from one task.
    pub async fn enqueue(&self, report: Report) -> Result<Pending, IngestError> {
        let subject = self.authorise(&report)?;
        let (reply, answer) = oneshot::channel();
        let queued_at = std::time::Instant::now();
        self.queue
            .send(WriteRequest {
                report,
                subject,
                reply,
            })
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        Ok(Pending { answer, queued_at })
    }

    fn authorise(&self, report: &Report) -> Result<Subject, IngestError> {
        // A poisoned lock means a panic while replacing the registry; the map
        // itself is still whole (replacement is a single assignment).
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        match &report.body {
            ReportBody::Uplink(u) => {
                let via = match &report.bridge {
                    Some(b) => Reporter::Bridge(b),
                    None => Reporter::Lock,
                };
                Ok(Subject::Lock(registry.authorise(u.lock_id(), via)?.clone()))
            }
            ReportBody::BridgeStatus { bridge, .. } => {
                let b = registry
                    .bridge(bridge)
                    .ok_or_else(|| ReportRefusal::UnknownBridge(bridge.clone()))?;
                Ok(Subject::Bridge(b.clone()))
            }
        }
    }

    /// Queue depth, for the metrics gauge.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// A handle that reads the queue depth without keeping the queue open:
    /// the writer drains and stops once the last [`Ingest`] is dropped, even
    /// while housekeeping still watches the gauge.
    pub fn depth_probe(&self) -> QueueDepthProbe {
        QueueDepthProbe(self.queue.downgrade())
    }
}

/// See [`Ingest::depth_probe`].
#[derive(Clone)]
pub struct QueueDepthProbe(mpsc::WeakSender<WriteRequest>);

impl QueueDepthProbe {
    /// Reports queued for the writer; `None` once the pipeline is closed.
    pub fn depth(&self) -> Option<usize> {
        // The strong handle lives only for this read.
        self.0.upgrade().map(|q| q.max_capacity() - q.capacity())
    }
}

/// A queued report's answer, due once its group commit is done.
#[derive(Debug)]
pub struct Pending {
    answer: oneshot::Receiver<Result<Outcome, IngestError>>,
    queued_at: std::time::Instant,
}

impl Pending {
    /// Wait for the commit (or the refusal) of the queued report.
    pub async fn outcome(self) -> Result<Outcome, IngestError> {
        let out = self.answer.await.map_err(|_| IngestError::ShuttingDown)?;
        crate::metrics::ack_latency(self.queued_at.elapsed());
        out
    }
}

/// Milliseconds since the Unix epoch, from the wall clock (edge code only).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
