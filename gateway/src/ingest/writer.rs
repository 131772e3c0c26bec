//! The group-commit writer: the only task that writes reports.
//!
//! It takes every queued request (up to [`WriterConfig::max_batch`], waiting
//! at most [`WriterConfig::linger`] for more once the first has arrived),
//! commits them in one transaction, and only then, in queue order: derives the
//! dashboard events, hands them to the publisher, and answers each request.
//! A failed commit answers every request of the batch with
//! [`IngestError::Storage`] and changes nothing in memory, so the devices
//! retry and nothing acknowledged is lost.

use super::{IngestError, Outcome, ReportBody, Subject, WriteRequest};
use crate::metrics;
use crate::store::{Batch, BridgeChangeRow, BridgeStatus, EventRow, HeartbeatRow, Store};
use dispatcher::presence::{self, Presence};
use dispatcher::telemetry::{self, DashboardEvent, LatestState, Origin};
use dispatcher::{BridgeId, LockId};
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

/// How often the online-lock count is brought up to date when no report
/// arrives to do it. The gauge is scraped every 15-60 s; this is finer.
pub const PRESENCE_TICK: Duration = Duration::from_secs(10);

/// What the writer remembers of a lock.
#[derive(Clone, Copy, Debug)]
struct Known {
    /// The newest heartbeat's state, for change detection.
    state: LatestState,
    /// Until when the lock counts as online (see [`presence::online_until`]).
    online_until: u64,
}

/// The writer's memory: what change detection compares against.
pub struct Writer {
    store: Store,
    latest: HashMap<LockId, Known>,
    presence: Presence,
    bridges: HashMap<BridgeId, BridgeStatus>,
    /// Bridges whose status in `bridges` is online, kept as they change
    /// so that the gauge never needs a scan of every bridge.
    bridges_online_count: usize,
    events: mpsc::Sender<Outbound>,
    config: WriterConfig,
}

impl Writer {
    /// Load what change detection needs from the store.
    pub async fn load(
        store: Store,
        events: mpsc::Sender<Outbound>,
        config: WriterConfig,
    ) -> Result<Self, crate::store::StoreError> {
        let stored = store.load_latest().await?;
        let bridges = store.load_bridge_status().await?;
        let bridges_online_count = bridges.values().filter(|b| b.online).count();
        metrics::devices_online("bridge", bridges_online_count);
        let now_s = crate::ingest::now_ms() / 1000;
        let mut presence = Presence::new();
        presence.advance(now_s);
        let latest = stored
            .into_iter()
            .map(|(id, s)| {
                let online_until =
                    presence::online_until(s.received_at_ms / 1000, s.heartbeat_interval);
                presence.heard(now_s, None, online_until);
                (
                    id,
                    Known {
                        state: s.state,
                        online_until,
                    },
                )
            })
            .collect();
        metrics::devices_online("lock", presence.online());
        Ok(Writer {
            store,
            latest,
            presence,
            bridges,
            bridges_online_count,
            events,
            config,
        })
    }

    /// Run until every sender of `queue` is gone and the queue is drained.
    pub async fn run(mut self, mut queue: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        let mut presence_tick = tokio::time::interval(PRESENCE_TICK);
        presence_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                first = queue.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
                _ = presence_tick.tick() => {
                    let online = self.presence.advance(crate::ingest::now_ms() / 1000);
                    metrics::devices_online("lock", online);
                    continue;
                }
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

    async fn commit(&mut self, requests: &mut Vec<WriteRequest>) {
        let mut rows = Batch::default();
        // Bridge changes are decided here, against memory updated in batch order.
        let mut bridge_view: HashMap<String, BridgeStatus> = HashMap::new();
        let mut bridge_changed = Vec::with_capacity(requests.len());
        for req in requests.iter() {
            let r = &req.report;
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
                } => {
                    let current = bridge_view
                        .get(bridge.as_str())
                        .copied()
                        .or_else(|| self.bridges.get(bridge.as_str()).copied());
                    let changed = current.map(|c| c.online) != Some(*online);
                    if changed {
                        // Strictly increasing per bridge: the change's time orders
                        // the stored history and makes its event id unique.
                        let at_ms = match current {
                            Some(c) => r.received_at_ms.max(c.changed_at_ms + 1),
                            None => r.received_at_ms,
                        };
                        bridge_view.insert(
                            bridge.clone(),
                            BridgeStatus {
                                online: *online,
                                changed_at_ms: at_ms,
                            },
                        );
                        rows.bridge_changes.push(BridgeChangeRow {
                            bridge_id: bridge.clone(),
                            online: *online,
                            cause: *cause,
                            at_ms,
                        });
                        bridge_changed.push(Some(at_ms));
                    } else {
                        bridge_changed.push(None);
                    }
                }
            }
        }

        let bridge_view_empty = bridge_view.is_empty();
        drop(bridge_view);
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
        let mut hb_flags = committed.heartbeats_inserted.iter().copied();
        let mut ev_flags = committed.events_inserted.iter().copied();
        let mut bridge_flags = bridge_changed.into_iter();
        let mut answers = Vec::with_capacity(requests.len());
        let mut outbound = Vec::new();
        for req in requests.drain(..) {
            let r = &req.report;
            let origin = Origin {
                transport: r.transport,
                bridge: r.bridge.as_deref(),
                received_at_ms: r.received_at_ms,
            };
            let outcome = match (&r.body, &req.subject) {
                (ReportBody::Uplink(Uplink::Heartbeat(hb)), Subject::Lock(lock)) => {
                    let stored = hb_flags.next().unwrap_or(false);
                    if stored {
                        metrics::committed("heartbeat", 1);
                        let known = self.latest.get(lock.id.as_str()).copied();
                        let (events, latest) =
                            telemetry::on_heartbeat(lock, hb, origin, known.map(|k| k.state));
                        // Any stored heartbeat shows the lock alive now, even one
                        // older than the newest state.
                        let online_until =
                            presence::online_until(r.received_at_ms / 1000, hb.heartbeat_interval);
                        self.presence.heard(
                            server_time,
                            known.map(|k| k.online_until),
                            online_until,
                        );
                        // `on_heartbeat` returns no state only when a newer one is known.
                        if let Some(state) = latest.or(known.map(|k| k.state)) {
                            self.latest.insert(
                                lock.id.clone(),
                                Known {
                                    state,
                                    online_until,
                                },
                            );
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
                (
                    ReportBody::BridgeStatus {
                        bridge,
                        online,
                        cause,
                    },
                    Subject::Bridge(rec),
                ) => {
                    let change = bridge_flags.next().flatten();
                    if let Some(at_ms) = change {
                        let now = BridgeStatus {
                            online: *online,
                            changed_at_ms: at_ms,
                        };
                        let was_online = self
                            .bridges
                            .insert(rec.id.clone(), now)
                            .is_some_and(|b| b.online);
                        match (was_online, *online) {
                            (false, true) => self.bridges_online_count += 1,
                            (true, false) => self.bridges_online_count -= 1,
                            _ => {}
                        }
                        metrics::committed("bridge_status", 1);
                        let event = BridgeConnectivityEvent {
                            event_id: ev::event_id("connectivity", bridge, at_ms),
                            org: rec.org.to_string(),
                            bridge_id: bridge.clone(),
                            online: *online,
                            cause: *cause,
                            at_ms,
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
        if !bridge_view_empty {
            metrics::devices_online("bridge", self.bridges_online_count);
        }
        metrics::devices_online("lock", self.presence.online());
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

fn to_outbound(e: &DashboardEvent) -> Outbound {
    Outbound {
        topic: e.topic(),
        payload: e.to_json(),
        kind: e.kind(),
    }
}
