//! The group-commit writer: the only task that writes reports.
//!
//! It takes every queued request (up to [`WriterConfig::max_batch`], waiting
//! at most [`WriterConfig::linger`] for more once the first has arrived),
//! commits them in one transaction, and only then, in queue order: derives the
//! dashboard events, hands them to the publisher, and answers each request.
//! A failed commit answers every request of the batch with
//! [`IngestError::Storage`], so the devices retry and nothing acknowledged
//! is lost. A protected report the commit refused (key revoked, sequence
//! number replayed) is answered with [`IngestError::Protection`] and stored
//! nothing.

use super::{IngestError, Outcome, ReportBody, Subject, WriteRequest};
use crate::metrics;
use crate::store::{
    Batch, BridgeStatusRow, EventRow, HeartbeatRow, ProtectionRow, StatusReport, Store,
};
use dispatcher::telemetry::{self, DashboardEvent, LatestState, Origin};
use schemas::event::{self as ev, BridgeConnectivityEvent};
use schemas::{topic, Downlink, LogAck, Uplink};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Group-commit tuning.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Most reports per transaction. 512 keeps a SQLite commit around a
    /// millisecond of CPU and each multi-row INSERT well under bind limits.
    pub max_batch: usize,
    /// How long to wait for more reports after the first, so a trickle still
    /// batches. Zero commits whatever is queued at once.
    pub linger: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 512,
            linger: Duration::from_millis(1),
        }
    }
}

/// A message for the dashboard, ready to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Metric label of the event kind.
    pub kind: &'static str,
}

/// The writer. It keeps no per-device state: what a report changes is
/// decided against the database inside the commit (see [`Store::commit`]),
/// so any number of instances agree, and memory does not grow with the fleet.
pub struct Writer {
    store: Store,
    events: mpsc::Sender<Outbound>,
    config: WriterConfig,
}

impl Writer {
    pub fn new(store: Store, events: mpsc::Sender<Outbound>, config: WriterConfig) -> Self {
        Writer {
            store,
            events,
            config,
        }
    }

    /// Run until every sender of `queue` is gone and the queue is drained.
    pub async fn run(self, mut queue: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        loop {
            let Some(first) = queue.recv().await else {
                break;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.config.linger;
            while batch.len() < self.config.max_batch {
                match queue.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if self.config.linger.is_zero() {
                            break;
                        }
                        match tokio::time::timeout_at(deadline, queue.recv()).await {
                            Ok(Some(r)) => batch.push(r),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            metrics::queue_depth(queue.len());
            self.commit(&mut batch).await;
        }
        tracing::info!("ingest writer drained and stopped");
    }

    async fn commit(&self, requests: &mut Vec<WriteRequest>) {
        let rows = rows_of(requests);
        let started = Instant::now();
        let committed = self.store.commit(&rows).await;
        metrics::batch(requests.len(), started.elapsed());
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                metrics::commit_failed();
                tracing::warn!(error = %e, reports = requests.len(), "group commit failed; every report of the batch is answered with an error");
                let msg = e.to_string();
                for req in requests.drain(..) {
                    let _ = req.reply.send(Err(IngestError::Storage(msg.clone())));
                }
                return;
            }
        };

        let server_time = crate::ingest::now_ms() / 1000;
        // One verdict per protected request, in queue order; a store that
        // returned another number is a bug, answered as a refusal rather
        // than taken as acceptance.
        let protected = requests.iter().filter(|r| r.protection.is_some()).count();
        let consistent = committed.protections_refused.len() == protected;
        let mut verdicts = committed.protections_refused.into_iter();
        let mut hb_flags = committed.heartbeats_inserted.iter().copied();
        let mut ev_flags = committed.events_inserted.iter().copied();
        let mut bridge_changes = committed.bridge_changes.into_iter();
        // Each lock's newest state, starting from the database's and
        // following the batch's heartbeats in order.
        let mut latest: HashMap<String, LatestState> = committed.locks_before;
        let mut answers = Vec::with_capacity(requests.len());
        let mut outbound = Vec::new();
        for req in requests.drain(..) {
            let r = &req.report;
            let origin = Origin {
                transport: r.transport,
                bridge: r.bridge.as_deref(),
                received_at_ms: r.received_at_ms,
            };
            let verdict = match (&req.protection, consistent) {
                (None, _) => Ok(()),
                (Some(_), true) => verdicts.next().flatten().map_or(Ok(()), Err),
                (Some(_), false) => Err(crate::store::ProtectionRefusal::ReplayStateCorrupt),
            };
            if let Err(refusal) = verdict {
                // Its rows were flagged not inserted; skip their flags.
                match &r.body {
                    ReportBody::Uplink(Uplink::Heartbeat(_)) => {
                        hb_flags.next();
                    }
                    ReportBody::Uplink(Uplink::ActivityLog(b)) => {
                        ev_flags.by_ref().take(b.events.len()).for_each(drop);
                    }
                    ReportBody::BridgeStatus { .. } => {
                        bridge_changes.next();
                    }
                }
                let _ = req.reply.send(Err(IngestError::Protection(refusal)));
                continue;
            }
            let outcome = match (&r.body, &req.subject) {
                (ReportBody::Uplink(Uplink::Heartbeat(hb)), Subject::Lock(lock)) => {
                    let stored = hb_flags.next().unwrap_or(false);
                    if stored {
                        metrics::committed("heartbeat", 1);
                        let previous = latest.get(lock.id.as_str()).copied();
                        let (events, newer) = telemetry::on_heartbeat(lock, hb, origin, previous);
                        if let Some(state) = newer {
                            latest.insert(lock.id.to_string(), state);
                        }
                        outbound.extend(events.iter().map(to_outbound));
                    } else {
                        metrics::duplicate(r.transport.as_str(), "heartbeat");
                    }
                    Outcome::Heartbeat {
                        stored,
                        downlink: Downlink {
                            server_time,
                            heartbeat_interval: lock.heartbeat_interval,
                            activity_log_interval: lock.activity_log_interval,
                            seq: hb.seq,
                        },
                    }
                }
                (ReportBody::Uplink(Uplink::ActivityLog(batch)), Subject::Lock(lock)) => {
                    let flags: Vec<bool> = batch
                        .events
                        .iter()
                        .map(|_| ev_flags.next().unwrap_or(false))
                        .collect();
                    let new = flags.iter().filter(|f| **f).count();
                    if new > 0 {
                        metrics::committed("activity_log", 1);
                        metrics::activity_committed(new as u64);
                        let by_seq: HashMap<u32, bool> = batch
                            .events
                            .iter()
                            .zip(&flags)
                            .map(|(e, f)| (e.seq, *f))
                            .collect();
                        if let Some(event) = telemetry::on_activity(lock, batch, origin, |s| {
                            by_seq.get(&s).copied().unwrap_or(false)
                        }) {
                            outbound.push(to_outbound(&event));
                        }
                    } else if !batch.events.is_empty() {
                        metrics::duplicate(r.transport.as_str(), "activity_log");
                    }
                    Outcome::ActivityLog {
                        ack: LogAck {
                            server_time,
                            stored: new.min(usize::from(u16::MAX)) as u16,
                            seq: batch.seq,
                        },
                    }
                }
                (ReportBody::BridgeStatus { bridge, .. }, Subject::Bridge(rec)) => {
                    let change = bridge_changes.next().flatten();
                    if let Some(c) = change {
                        metrics::committed("bridge_status", 1);
                        let event = BridgeConnectivityEvent {
                            event_id: ev::event_id("connectivity", bridge, c.at_ms),
                            org: rec.org.to_string(),
                            bridge_id: bridge.clone(),
                            online: c.online,
                            cause: c.cause,
                            at_ms: c.at_ms,
                        };
                        outbound.push(Outbound {
                            topic: topic::events::bridge_connectivity(&event.org, bridge),
                            // Infallible: a plain struct of strings, bools and numbers.
                            payload: serde_json::to_vec(&event).expect("event serialises"),
                            kind: "connectivity",
                        });
                    }
                    Outcome::BridgeStatus {
                        changed: change.is_some(),
                    }
                }
                // Authorisation pairs every uplink with a lock and every status
                // with a bridge; anything else is a bug, answered rather than panicking.
                _ => {
                    let _ = req.reply.send(Err(IngestError::Storage(
                        "internal: report and subject do not match".into(),
                    )));
                    continue;
                }
            };
            answers.push((req.reply, outcome));
        }
        for o in outbound {
            if self.events.send(o).await.is_err() {
                metrics::publish_failed("closed");
            }
        }
        for (reply, outcome) in answers {
            // The requester may have given up (timeout, shutdown); the report is stored regardless.
            let _ = reply.send(Ok(outcome));
        }
    }
}

/// The rows of a batch of requests, in queue order, and one protection row
/// per protected request naming the rows it carries.
fn rows_of(requests: &[WriteRequest]) -> Batch {
    let mut rows = Batch::default();
    for req in requests {
        let r = &req.report;
        let start = (
            rows.heartbeats.len(),
            rows.events.len(),
            rows.bridge_statuses.len(),
        );
        match &r.body {
            ReportBody::Uplink(Uplink::Heartbeat(hb)) => rows.heartbeats.push(HeartbeatRow {
                hb: hb.clone(),
                transport: r.transport,
                bridge_id: r.bridge.clone(),
                received_at_ms: r.received_at_ms,
            }),
            ReportBody::Uplink(Uplink::ActivityLog(b)) => {
                rows.events.extend(b.events.iter().map(|e| EventRow {
                    lock_id: b.lock_id.clone(),
                    batch_seq: b.seq,
                    event: e.clone(),
                    transport: r.transport,
                    bridge_id: r.bridge.clone(),
                    received_at_ms: r.received_at_ms,
                }))
            }
            ReportBody::BridgeStatus {
                bridge,
                online,
                cause,
            } => rows.bridge_statuses.push(BridgeStatusRow {
                bridge_id: bridge.clone(),
                report: StatusReport {
                    online: *online,
                    cause: *cause,
                    received_at_ms: r.received_at_ms,
                },
            }),
        }
        if let Some(p) = &req.protection {
            rows.protections.push(ProtectionRow {
                device: p.device.clone(),
                key: p.key,
                seq: p.seq,
                heartbeats: start.0..rows.heartbeats.len(),
                events: start.1..rows.events.len(),
                bridge_statuses: start.2..rows.bridge_statuses.len(),
            });
        }
    }
    rows
}

fn to_outbound(e: &DashboardEvent) -> Outbound {
    Outbound {
        topic: e.topic(),
        payload: e.to_json(),
        kind: e.kind(),
    }
}
