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
//!
//! A report that arrived OSCORE-protected carries its [`Protection`] (the
//! device whose key verified it, which key, the sequence number). Ingest
//! checks that the protecting device is the one the report speaks for (a
//! lock for itself, a bridge for its linked locks and its own status), and
//! the commit checks the key and the replay window (`store::replay`), so a
//! protected report is stored only if its key is still the device's and its
//! sequence number is new.

pub mod writer;

use crate::store::{KeyStamp, ProtectionRefusal};
use dispatcher::keys::DeviceRef;
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
    /// A 2FA passcode or OTP entry from a lock, as the edge hashed it.
    TwoFactor(TwoFactorReport),
    /// A bridge said it is online or offline (or the broker published its Last Will).
    BridgeStatus {
        bridge: String,
        online: bool,
        cause: ConnectivityCause,
    },
}

/// A lock's 2FA entry on its way to the writer: never the typed digits,
/// only what [`crate::twofa::Gate`] derived from them.
#[derive(Debug, Clone)]
pub struct TwoFactorReport {
    pub lock_id: String,
    pub seq: u32,
    pub body: crate::store::twofa::EntryBody,
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
    /// A job report: its results were applied; the downlink carries the
    /// lock's next pending jobs.
    JobReport { downlink: Downlink },
    /// A 2FA entry was decided and recorded.
    TwoFactor(Box<crate::store::twofa::EntryOutcome>),
}

/// What the transport verified about a protected report: the device whose
/// OSCORE context opened it, which of that device's stored keys, and the
/// request's sequence number (Partial IV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    pub device: DeviceRef,
    pub key: KeyStamp,
    pub seq: u64,
}

/// Why a report was not stored. Each says what the device or operator must do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Refused(#[from] ReportRefusal),
    /// The report was protected with one device's key but speaks for
    /// another: a device reports only for itself, a bridge for its locks.
    #[error("this request is protected with the key of {protected_by} but reports for {claims}: a device reports only for itself (a bridge for its linked locks); nothing was stored")]
    WrongDevice {
        protected_by: String,
        claims: String,
    },
    /// The commit refused the protection: key revoked or sequence replayed.
    #[error(transparent)]
    Protection(#[from] ProtectionRefusal),
    /// A 2FA entry that did not arrive OSCORE-protected.
    #[error("2FA entries from lock {lock} carry a passcode or an OTP and must be OSCORE-protected with the lock's key; nothing was stored")]
    Unprotected { lock: String },
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
            IngestError::WrongDevice { .. } => "device_mismatch",
            IngestError::Unprotected { .. } => "unprotected",
            IngestError::Protection(r) => r.reason(),
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
    /// Set when the report arrived protected; the commit checks it.
    pub protection: Option<Protection>,
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

    /// [`Ingest::submit`] for a report that arrived with `protection`
    /// (`None`: unprotected). It is stored only if the protecting device
    /// speaks for the report, its key is still the stored one and its
    /// sequence number is new.
    pub async fn submit_with(
        &self,
        report: Report,
        protection: Option<Protection>,
    ) -> Result<Outcome, IngestError> {
        self.enqueue_with(report, protection).await?.outcome().await
    }

    /// Check who sent `report` and queue it; the writer handles reports in
    /// the order they were queued. Returns once it is queued (waiting while
    /// the queue is full); await [`Pending::outcome`] for the commit. A
    /// transport whose messages must keep their order (a bridge's
    /// online/offline) queues them one after another from one task.
    pub async fn enqueue(&self, report: Report) -> Result<Pending, IngestError> {
        self.enqueue_with(report, None).await
    }

    /// [`Ingest::enqueue`] for a report that arrived with `protection`.
    pub async fn enqueue_with(
        &self,
        report: Report,
        protection: Option<Protection>,
    ) -> Result<Pending, IngestError> {
        if let Some(p) = &protection {
            check_speaks_for(&report, &p.device)?;
        }
        // A passcode or an OTP is taken only from a lock that proved who it
        // is, whichever transport brought it.
        if let (ReportBody::TwoFactor(e), None) = (&report.body, &protection) {
            return Err(IngestError::Unprotected {
                lock: e.lock_id.clone(),
            });
        }
        let subject = self.authorise(&report)?;
        let (reply, answer) = oneshot::channel();
        let queued_at = std::time::Instant::now();
        self.queue
            .send(WriteRequest {
                report,
                subject,
                protection,
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
            ReportBody::TwoFactor(e) => Ok(Subject::Lock(
                registry.authorise(&e.lock_id, Reporter::Lock)?.clone(),
            )),
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

/// A protected report must speak for the device that protected it: a lock's
/// own uplink, or a bridge's status and the uplinks it relays (which locks
/// it may relay for is the registry's question, asked next).
fn check_speaks_for(report: &Report, protected_by: &DeviceRef) -> Result<(), IngestError> {
    let ok = match (&report.body, &report.bridge, protected_by) {
        (ReportBody::Uplink(u), None, DeviceRef::Lock(l)) => u.lock_id() == l.as_str(),
        (ReportBody::Uplink(_), Some(via), DeviceRef::Bridge(b)) => via == b.as_str(),
        (ReportBody::TwoFactor(e), None, DeviceRef::Lock(l)) => e.lock_id == l.as_str(),
        (ReportBody::BridgeStatus { bridge, .. }, _, DeviceRef::Bridge(b)) => bridge == b.as_str(),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let claims = match (&report.body, &report.bridge) {
        (ReportBody::Uplink(u), None) => format!("lock {}", u.lock_id()),
        (ReportBody::Uplink(u), Some(b)) => format!("lock {} via bridge {b}", u.lock_id()),
        (ReportBody::TwoFactor(e), _) => format!("lock {}", e.lock_id),
        (ReportBody::BridgeStatus { bridge, .. }, _) => format!("bridge {bridge}"),
    };
    Err(IngestError::WrongDevice {
        protected_by: protected_by.to_string(),
        claims,
    })
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
