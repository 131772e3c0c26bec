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
use crate::keys::ServerKey;
use crate::metrics;
use crate::store::{
    Batch, BridgeStatusRow, EventRow, HeartbeatRow, ProtectionRow, StatusReport, Store,
};
use dispatcher::telemetry::{self, DashboardEvent, LatestState, Origin};
use dispatcher::Registry;
use schemas::command::{job_event_topic, JobChange, JobKind};
use schemas::event::{self as ev, BridgeConnectivityEvent};
use schemas::{topic, Downlink, LogAck, Uplink};
use schemas::{DeviceJob, JobResult};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the writer needs to hand out jobs: the registry (a completed
/// interval change updates it at once), the server key (to open sealed
/// PINs for the downlink) and the downlink budget.
#[derive(Clone)]
pub struct JobDelivery {
    pub registry: Arc<RwLock<Registry>>,
    pub server_key: ServerKey,
}

/// Group-commit tuning.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Most reports per transaction. 512 keeps a SQLite commit around a
    /// millisecond of CPU and each multi-row INSERT well under bind limits.
    pub max_batch: usize,
    /// How long to wait for more reports after the first, so a trickle still
    /// batches. Zero commits whatever is queued at once.
    pub linger: Duration,
    /// Bytes of jobs one downlink may carry.
    pub downlink_budget: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch: 512,
            linger: Duration::from_millis(1),
            downlink_budget: dispatcher::jobs::DEFAULT_DOWNLINK_BUDGET,
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
    jobs: Option<JobDelivery>,
    bridges: Option<crate::bridges::Signals>,
    twofa: dispatcher::twofa::Limits,
}

impl Writer {
    pub fn new(store: Store, events: mpsc::Sender<Outbound>, config: WriterConfig) -> Self {
        Writer {
            store,
            events,
            config,
            jobs: None,
            bridges: None,
            twofa: dispatcher::twofa::Limits::default(),
        }
    }

    /// The limits 2FA entries are decided under.
    pub fn with_twofa(mut self, limits: dispatcher::twofa::Limits) -> Self {
        self.twofa = limits;
        self
    }

    /// Tell bridge delivery of committed bridge statuses and job results.
    pub fn with_bridges(mut self, signals: crate::bridges::Signals) -> Self {
        self.bridges = Some(signals);
        self
    }

    /// Hand out pending jobs in heartbeat and job-report answers, and apply
    /// job results. Without it, answers carry no jobs.
    pub fn with_jobs(mut self, jobs: JobDelivery) -> Self {
        self.jobs = Some(jobs);
        self
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
        // (index in `answers`, lock) of each answer that carries jobs, and
        // the results of each accepted job report, in queue order.
        let mut wants_jobs: Vec<(usize, String)> = Vec::new();
        let mut job_reports: Vec<(String, Vec<JobResult>)> = Vec::new();
        // 2FA entries, decided after the commit recorded their protection.
        let mut twofa: Vec<(Reply, crate::store::twofa::Entry)> = Vec::new();
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
                    ReportBody::Uplink(Uplink::JobReport(_)) | ReportBody::TwoFactor(_) => {}
                    ReportBody::BridgeStatus { .. } => {
                        bridge_changes.next();
                    }
                }
                let _ = req.reply.send(Err(IngestError::Protection(refusal)));
                continue;
            }
            let outcome = match (&r.body, &req.subject) {
                (ReportBody::TwoFactor(entry), Subject::Lock(lock)) => {
                    twofa.push((
                        req.reply,
                        crate::store::twofa::Entry {
                            lock: lock.clone(),
                            body: entry.body.clone(),
                        },
                    ));
                    continue;
                }
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
                    // Jobs reach a bridged lock on its bridge's command
                    // topic, never in the answer to a relayed heartbeat.
                    if r.transport != ev::Transport::Bridge {
                        wants_jobs.push((answers.len(), lock.id.to_string()));
                    }
                    let mut downlink = downlink_for(lock, server_time, hb.seq);
                    if self.jobs.is_some() {
                        // When to wake next: the lock's phase in its interval.
                        let wake_ms = dispatcher::schedule::next_wake_ms(
                            lock.id.as_str(),
                            r.received_at_ms,
                            lock.heartbeat_interval,
                        );
                        downlink.next_heartbeat_at = Some(wake_ms / 1000);
                    }
                    Outcome::Heartbeat { stored, downlink }
                }
                (ReportBody::Uplink(Uplink::JobReport(report)), Subject::Lock(lock)) => {
                    metrics::committed("job_report", 1);
                    job_reports.push((lock.id.to_string(), report.results.clone()));
                    if r.transport != ev::Transport::Bridge {
                        wants_jobs.push((answers.len(), lock.id.to_string()));
                    }
                    Outcome::JobReport {
                        downlink: downlink_for(lock, server_time, report.seq),
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
                (ReportBody::BridgeStatus { bridge, online, .. }, Subject::Bridge(rec)) => {
                    let change = bridge_changes.next().flatten();
                    if let Some(signals) = &self.bridges {
                        // Every status, changed or not: this instance hears
                        // the bridge, so it delivers to it.
                        signals.send(crate::bridges::Signal::Status {
                            bridge: bridge.clone(),
                            online: *online,
                        });
                    }
                    if let Some(c) = change {
                        metrics::committed("bridge_status", 1);
                        metrics::bridge_connectivity_change(c.online, cause_label(c.cause));
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
        if let Some(jobs) = &self.jobs {
            if !wants_jobs.is_empty() || !job_reports.is_empty() {
                let started = Instant::now();
                if let Err(e) = self
                    .job_step(jobs, &mut answers, &wants_jobs, &job_reports, &mut outbound)
                    .await
                {
                    metrics::job_step_failed();
                    tracing::warn!(error = %e, "job step failed; the answers carry no jobs this time and the jobs stay pending");
                }
                metrics::job_step(started.elapsed());
            }
        }
        let mut twofa_answers = Vec::with_capacity(twofa.len());
        if !twofa.is_empty() {
            let entries: Vec<_> = twofa.iter().map(|(_, e)| e.clone()).collect();
            let started = Instant::now();
            let mut decided = self
                .store
                .apply_twofa_entries(&entries, &self.twofa, crate::ingest::now_ms())
                .await;
            // Once more on a failure (a deadlock between instances on
            // PostgreSQL, say): the step is one transaction, so nothing of
            // the first try is left.
            if let Err(e) = &decided {
                tracing::debug!(error = %e, "2FA step failed; trying once more");
                decided = self
                    .store
                    .apply_twofa_entries(&entries, &self.twofa, crate::ingest::now_ms())
                    .await;
            }
            metrics::twofa_step(started.elapsed());
            match decided {
                Ok(outcomes) if outcomes.len() == twofa.len() => {
                    for ((reply, _), o) in twofa.into_iter().zip(outcomes) {
                        outbound.extend(o.events.iter().map(twofa_outbound));
                        twofa_answers.push((reply, Ok(Outcome::TwoFactor(Box::new(o)))));
                    }
                }
                decided => {
                    let msg = match decided {
                        Err(e) => e.to_string(),
                        Ok(_) => "internal: the store decided another number of 2FA entries".into(),
                    };
                    metrics::twofa_step_failed();
                    tracing::warn!(error = %msg, entries = twofa.len(), "2FA step failed; the locks are told to retry");
                    for (reply, _) in twofa {
                        twofa_answers.push((reply, Err(IngestError::Storage(msg.clone()))));
                    }
                }
            }
        }
        if let Some(signals) = &self.bridges {
            for (lock, results) in job_reports {
                signals.send(crate::bridges::Signal::Results {
                    lock,
                    results: results.iter().map(|r| (r.id, r.attempt)).collect(),
                });
            }
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
        for (reply, result) in twofa_answers {
            let _ = reply.send(result);
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<Outcome, IngestError>>;

impl Writer {
    /// Apply the batch's job results, then fill each answer that carries
    /// jobs with its lock's pending jobs (creation order, within the
    /// downlink budget), recording the deliveries before anyone is answered.
    async fn job_step(
        &self,
        jobs: &JobDelivery,
        answers: &mut [(Reply, Outcome)],
        wants_jobs: &[(usize, String)],
        job_reports: &[(String, Vec<JobResult>)],
        outbound: &mut Vec<Outbound>,
    ) -> Result<(), crate::store::StoreError> {
        let now_ms = crate::ingest::now_ms();
        for (lock, results) in job_reports {
            if results.is_empty() {
                continue;
            }
            let ended = self.store.apply_job_results(lock, results, now_ms).await?;
            for (job, change) in &ended {
                if change == &JobChange::Failed {
                    let outcome = results
                        .iter()
                        .find(|r| r.id == job.view.job_id)
                        .map_or("rejected", |r| r.outcome.as_str());
                    metrics::job_failed(outcome);
                }
                outbound.push(job_outbound(job, *change));
            }
            // A completed interval change: this instance's registry and
            // this batch's answers to the lock say the new intervals at once.
            for (job, change) in &ended {
                let (JobKind::SetIntervals, JobChange::Completed, Some(h), Some(m)) = (
                    job.view.kind,
                    change,
                    job.view.heartbeat_interval_h,
                    job.view.activity_log_interval_min,
                ) else {
                    continue;
                };
                jobs.registry
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_intervals(&job.view.lock_id, h, m);
                let (Ok(hb), Ok(log)) = (
                    schemas::HeartbeatInterval::from_hours(h),
                    schemas::ActivityLogInterval::from_minutes(m),
                ) else {
                    continue;
                };
                for (index, l) in wants_jobs {
                    if *l != job.view.lock_id {
                        continue;
                    }
                    if let Outcome::Heartbeat { downlink, .. } | Outcome::JobReport { downlink } =
                        &mut answers[*index].1
                    {
                        downlink.heartbeat_interval = hb;
                        downlink.activity_log_interval = log;
                    }
                }
            }
        }
        let mut locks: Vec<&str> = wants_jobs.iter().map(|(_, l)| l.as_str()).collect();
        locks.sort_unstable();
        locks.dedup();
        if locks.is_empty() {
            return Ok(());
        }
        let pending = self.store.pending_jobs(&locks).await?;
        if pending.is_empty() {
            for _ in wants_jobs {
                metrics::jobs_per_downlink(0);
            }
            return Ok(());
        }
        let mut by_lock: HashMap<&str, Vec<&crate::store::jobs::Deliverable>> = HashMap::new();
        for d in &pending {
            by_lock
                .entry(d.job.view.lock_id.as_str())
                .or_default()
                .push(d);
        }
        // One downlink per lock per batch; a lock answered twice in one
        // batch (a heartbeat and a job report) gets the jobs once.
        let mut handed: HashMap<&str, (Vec<DeviceJob>, bool)> = HashMap::new();
        let mut delivered = Vec::new();
        for (lock, list) in &by_lock {
            let device_jobs: Vec<DeviceJob> = list
                .iter()
                .filter_map(|d| device_job(&jobs.server_key, d))
                .collect();
            let (n, more) = dispatcher::jobs::pack(&device_jobs, self.config.downlink_budget);
            let taken: Vec<DeviceJob> = device_jobs.into_iter().take(n).collect();
            delivered.extend(taken.iter().map(|j| (j.id, j.attempt)));
            handed.insert(lock, (taken, more));
        }
        let changed = self
            .store
            .mark_delivered(&delivered, "heartbeat", now_ms)
            .await?;
        for job in &changed {
            outbound.push(job_outbound(job, JobChange::Delivered));
        }
        let mut given: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (index, lock) in wants_jobs {
            let Some((list, more)) = handed.get(lock.as_str()) else {
                metrics::jobs_per_downlink(0);
                continue;
            };
            if !given.insert(lock.as_str()) {
                continue;
            }
            let downlink = match &mut answers[*index].1 {
                Outcome::Heartbeat { downlink, .. } | Outcome::JobReport { downlink } => downlink,
                _ => continue,
            };
            metrics::jobs_per_downlink(list.len());
            for j in list {
                if let (Some(h), Some(l)) = (j.heartbeat_interval, j.activity_log_interval) {
                    downlink.heartbeat_interval = h;
                    downlink.activity_log_interval = l;
                }
            }
            downlink.jobs = list.clone();
            downlink.more = *more;
        }
        Ok(())
    }
}

/// The device's view of a pending job; `None` (logged and counted) when a
/// sealed PIN does not open, which leaves the job pending for an operator.
pub(crate) fn device_job(
    key: &ServerKey,
    d: &crate::store::jobs::Deliverable,
) -> Option<DeviceJob> {
    let v = &d.job.view;
    let pin = match (&d.pin_sealed, &v.access_id) {
        (Some(sealed), Some(access)) => match key.open_pin(&v.lock_id, access, sealed) {
            Ok(p) => Some(p.to_string()),
            Err(e) => {
                metrics::job_step_failed();
                tracing::error!(job = v.job_id, error = %e, "a sealed PIN does not open under the server key; the job stays pending");
                return None;
            }
        },
        _ => None,
    };
    Some(DeviceJob {
        id: v.job_id,
        attempt: v.attempt,
        action: dispatcher::jobs::action_of(v.kind),
        access: v.access_id.clone(),
        pin,
        pin_type: v.pin_type,
        start: v.pin_start_s,
        end: v.pin_end_s,
        heartbeat_interval: v
            .heartbeat_interval_h
            .and_then(|h| schemas::HeartbeatInterval::from_hours(h).ok()),
        activity_log_interval: v
            .activity_log_interval_min
            .and_then(|m| schemas::ActivityLogInterval::from_minutes(m).ok()),
        issued: d.job.issued_at_ms / 1000,
    })
}

fn downlink_for(lock: &dispatcher::LockRecord, server_time: u64, seq: u32) -> Downlink {
    Downlink {
        server_time,
        heartbeat_interval: lock.heartbeat_interval,
        activity_log_interval: lock.activity_log_interval,
        seq,
        jobs: vec![],
        more: false,
        next_heartbeat_at: None,
    }
}

/// A 2FA event for the dashboard: on the lock's topic, or on the user's
/// for a user's lock-out or its clearing.
pub fn twofa_outbound(e: &schemas::twofa::TwoFactorEvent) -> Outbound {
    use schemas::twofa::{lock_event_topic, user_event_topic, TwoFactorOutcome as O};
    match e.outcome {
        O::LockoutStarted => metrics::twofa_lockout_change("started"),
        O::LockoutCleared => metrics::twofa_lockout_change("cleared"),
        _ => {}
    }
    let users_lockout = e.reason.as_deref() == Some("failed_challenges");
    let topic = match (&e.lock_id, &e.user_id) {
        (_, Some(user)) if users_lockout => user_event_topic(&e.org, user),
        (Some(lock), _) => lock_event_topic(&e.org, lock),
        (None, Some(user)) => user_event_topic(&e.org, user),
        (None, None) => lock_event_topic(&e.org, "unknown"),
    };
    Outbound {
        topic,
        // Infallible: a plain struct of strings, numbers and options.
        payload: serde_json::to_vec(e).expect("event serialises"),
        kind: "2fa",
    }
}

/// The `cause` label of a bridge connectivity change.
fn cause_label(cause: schemas::event::ConnectivityCause) -> &'static str {
    use schemas::event::ConnectivityCause as C;
    match cause {
        C::Connected => "connected",
        C::Disconnected => "disconnected",
        C::LastWill => "last_will",
    }
}

/// A job change for the dashboard.
pub fn job_outbound(job: &crate::store::jobs::StoredJob, change: JobChange) -> Outbound {
    metrics::job_change(change.as_str());
    if change == JobChange::Completed {
        // From this attempt's issue: a recreated job's clock starts again.
        let took = job.view.updated_at_ms.saturating_sub(job.issued_at_ms);
        metrics::job_completed(
            job.view.last_sync_by.as_deref(),
            std::time::Duration::from_millis(took),
        );
    }
    let event = job.event(change);
    Outbound {
        topic: job_event_topic(&job.view.org, &job.view.lock_id),
        // Infallible: a plain struct of strings, numbers and options.
        payload: serde_json::to_vec(&event).expect("event serialises"),
        kind: "job",
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
            ReportBody::Uplink(Uplink::JobReport(_)) | ReportBody::TwoFactor(_) => {}
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
