//! Delivery through bridges: the I/O around [`dispatcher::bridge_queue`].
//!
//! Jobs of a lock linked to a bridge (lock, unlock, sync, and its PIN and
//! interval jobs) go out at once on `br/{bridge}/cmd` while the bridge is
//! online, one in flight per lock, each retried on timeout, and come back
//! as a job report on `br/{bridge}/up/jr`, which the ingest writer applies
//! like any other. This task owns the [`BridgeQueue`] and drives it:
//!
//! * **What to send** comes from the database, never from memory alone: on
//!   start, every second, and at once when a command here created or
//!   changed a job ([`Signal::Refresh`]), it reads the pending jobs of the
//!   linked locks and queues those whose bridge is online on this instance.
//!   A job that stopped being pending (done through another path, deleted,
//!   expired) leaves the queue. So a restart, a job created on another
//!   instance, or a lost signal delays a command by at most the refresh
//!   period, and nothing pending is forgotten.
//! * **Which bridges** are online here: those whose `online` status this
//!   instance's writer committed ([`Signal::Status`]), and at start the
//!   bridges stored online. With the embedded brokers a bridge is connected
//!   to one instance, the one that hears its status, so that instance
//!   delivers to it.
//! * **Results**: the writer signals every committed job result
//!   ([`Signal::Results`]); the lock's next command may go.
//! * **Protection**: each command is an OSCORE request the gateway protects
//!   under the bridge's context with its own sequence number, from a block
//!   reserved in the database before use (`oscore_sender`), so a number is
//!   never used twice across restarts and instances.
//! * **Expiry**: lock, unlock and sync that no bridge answered within their
//!   time to live fail (one `UPDATE ... RETURNING`, so one instance
//!   announces each); a given-up PIN job stays pending and is tried again
//!   after [`GAVE_UP_PAUSE_MS`] or when the bridge reconnects.
//!
//! Every delivery is recorded (`deliveries`, `in_flight`, last sync by
//! `bridge`) before the command is published, and announced as a
//! `delivered` job event.

use crate::ingest::writer::{device_job, job_outbound, Outbound};
use crate::keys::{KeyRing, ServerKey};
use crate::metrics;
use crate::mqtt::MqttClient;
use crate::store::jobs::Deliverable;
use crate::store::Store;
use dispatcher::bridge_queue::{
    BridgeQueue, BridgeQueueConfig, Command, EnqueueError, TimedOut, Transmit,
};
use dispatcher::keys::DeviceRef;
use dispatcher::{BridgeId, LockId};
use lockfleet_oscore::{protect_request, InnerMessage, PartialIv, CODE_POST};
use schemas::command::JobChange;
use schemas::device::{self, BridgeCommand};
use schemas::security::encode_protected;
use schemas::topic::down;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the pending jobs of linked locks are read again (and immediate
/// jobs past their time to live failed).
pub const REFRESH_PERIOD: Duration = Duration::from_secs(1);
/// How long a PIN job whose bridge did not answer its tries waits before it
/// is queued again (a reconnect of the bridge queues it at once).
pub const GAVE_UP_PAUSE_MS: u64 = 60_000;
/// Sender sequence numbers reserved per database write, per bridge.
pub const SEQ_RESERVATION: u64 = 1_000;
/// Signals queued before senders drop them (the refresh catches up).
pub const SIGNAL_CAPACITY: usize = 4_096;
/// Most commands handed out per loop turn, so signals are not starved.
const SENDS_PER_TURN: usize = 256;
/// Most immediate jobs expired per refresh.
const EXPIRE_PER_REFRESH: u64 = 1_000;

/// Bridge delivery settings.
#[derive(Clone, Copy, Debug)]
pub struct BridgeConfig {
    pub queue: BridgeQueueConfig,
    /// Lock, unlock and sync not done within this fail.
    pub immediate_ttl: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            queue: BridgeQueueConfig::default(),
            immediate_ttl: Duration::from_millis(dispatcher::jobs::DEFAULT_IMMEDIATE_TTL_MS),
        }
    }
}

/// What the rest of the gateway tells bridge delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A bridge's status was committed on this instance.
    Status { bridge: String, online: bool },
    /// A lock's job results were committed: `(job id, attempt)`.
    Results {
        lock: String,
        results: Vec<(u64, u8)>,
    },
    /// Jobs were created, recreated or deleted: read the pending jobs now.
    Refresh,
}

/// The sending side; cheap to clone. It never waits: a bridge's newest
/// status is kept in a map the task drains (so none is ever lost, however
/// many bridges reconnect at once), and a full channel drops only results
/// and refresh requests (counted), whose facts the periodic refresh reads
/// from the database anyway.
#[derive(Clone, Debug)]
pub struct Signals {
    tx: mpsc::Sender<Signal>,
    statuses: Arc<std::sync::Mutex<HashMap<String, bool>>>,
}

impl Signals {
    pub fn send(&self, signal: Signal) {
        let signal = match signal {
            Signal::Status { bridge, online } => {
                self.statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(bridge, online);
                Signal::Refresh
            }
            other => other,
        };
        if self.tx.try_send(signal).is_err() {
            metrics::bridge_signal_dropped();
        }
    }

    /// The statuses reported since the last call, newest per bridge.
    fn take_statuses(&self) -> HashMap<String, bool> {
        std::mem::take(&mut *self.statuses.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A signal channel for [`run`].
pub fn channel() -> (Signals, mpsc::Receiver<Signal>) {
    let (tx, rx) = mpsc::channel(SIGNAL_CAPACITY);
    (
        Signals {
            tx,
            statuses: Arc::default(),
        },
        rx,
    )
}

/// What delivery talks to.
pub struct Deps {
    pub store: Store,
    /// The gateway's session on the device broker.
    pub client: MqttClient,
    pub ring: Arc<KeyRing>,
    pub server_key: ServerKey,
    /// Dashboard events.
    pub events: mpsc::Sender<Outbound>,
    /// `--insecure-dev`: a bridge without a key gets plain commands.
    pub insecure_dev: bool,
    /// Take the bridges stored online as online here at start: right with
    /// an external broker (bridges stay connected to it across our
    /// restarts); with the embedded brokers they reconnect and say so.
    pub assume_stored_online: bool,
    /// The statuses the writer reports (the same [`Signals`] it holds).
    pub signals: Signals,
}

/// Deliver until `shutdown`.
pub async fn run(
    config: BridgeConfig,
    deps: Deps,
    mut signals: mpsc::Receiver<Signal>,
    shutdown: CancellationToken,
) {
    let queue = match BridgeQueue::new(config.queue) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(error = %e, "bridge delivery cannot start");
            return;
        }
    };
    let mut d = Delivery {
        config,
        deps,
        queue,
        online: HashSet::new(),
        jobs: HashMap::new(),
        sent_at: HashMap::new(),
        paused: HashMap::new(),
        seqs: HashMap::new(),
        refresh_wanted: true,
    };
    let stored = match d.deps.assume_stored_online {
        true => d.deps.store.load_bridge_status().await.map(Some),
        false => Ok(None),
    };
    match stored {
        Ok(None) => {}
        Ok(Some(status)) => {
            let now = crate::ingest::now_ms();
            for (bridge, _) in status.into_iter().filter(|(_, s)| s.online) {
                d.queue.bridge_online(&bridge, now);
                d.online.insert(bridge.to_string());
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read which bridges are online; waiting for their status")
        }
    }
    let mut tick = tokio::time::interval(REFRESH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = d
            .queue
            .next_deadline_ms()
            .map(|at| Duration::from_millis(at.saturating_sub(crate::ingest::now_ms())));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            s = signals.recv() => {
                let Some(s) = s else { break };
                d.on_signal(s);
                while let Ok(s) = signals.try_recv() {
                    d.on_signal(s);
                }
            }
            _ = tick.tick() => {
                d.expire().await;
                d.refresh_wanted = true;
            }
            _ = sleep_for(wait) => {}
        }
        for (bridge, online) in d.deps.signals.take_statuses() {
            d.on_signal(Signal::Status { bridge, online });
        }
        d.poll_timeouts();
        if d.refresh_wanted {
            d.refresh().await;
        }
        d.send_ready().await;
        metrics::bridge_queue(d.queue.queued(), d.queue.in_flight(), d.online.len());
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(w) => tokio::time::sleep(w).await,
        None => std::future::pending().await,
    }
}

struct Delivery {
    config: BridgeConfig,
    deps: Deps,
    queue: BridgeQueue,
    /// Bridges online on this instance.
    online: HashSet<String>,
    /// The stored job of every queued command, and the bridge it is queued for.
    jobs: HashMap<u64, (Deliverable, String)>,
    /// When each in-flight command was last published.
    sent_at: HashMap<u64, Instant>,
    /// Jobs given up: when they may be queued again (Unix ms), and their bridge.
    paused: HashMap<u64, (u64, String)>,
    /// Per bridge: the next sender sequence number and the reserved limit.
    seqs: HashMap<String, (u64, u64)>,
    refresh_wanted: bool,
}

impl Delivery {
    fn on_signal(&mut self, signal: Signal) {
        let now = crate::ingest::now_ms();
        match signal {
            Signal::Status { bridge, online } => {
                let id = BridgeId::new(&bridge);
                if online {
                    self.queue.bridge_online(&id, now);
                    // Another instance may have protected commands for it
                    // meanwhile, with numbers above ours: reserve a fresh
                    // block, above every earlier one, so ours keep rising.
                    self.seqs.remove(&bridge);
                    // A reconnect is the moment to try given-up jobs again.
                    self.paused.retain(|_, (_, b)| *b != bridge);
                    self.online.insert(bridge);
                    self.refresh_wanted = true;
                } else {
                    self.queue.bridge_offline(&id, now);
                    self.online.remove(&bridge);
                }
            }
            Signal::Results { lock, results } => {
                for (id, attempt) in results {
                    if self.queue.on_result(&lock, id, attempt).is_some() {
                        if let Some(at) = self.sent_at.remove(&id) {
                            metrics::bridge_result_latency(at.elapsed());
                        }
                        self.jobs.remove(&id);
                    }
                }
            }
            Signal::Refresh => self.refresh_wanted = true,
        }
    }

    /// Queue the pending jobs of linked locks whose bridge is online here;
    /// drop queued commands whose job is no longer pending.
    async fn refresh(&mut self) {
        self.refresh_wanted = false;
        let rows = match self.deps.store.pending_via_bridges().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the jobs waiting for bridges; will retry");
                return;
            }
        };
        let now = crate::ingest::now_ms();
        let ttl = self.config.immediate_ttl.as_millis() as u64;
        self.paused.retain(|_, (until, _)| *until > now);
        let mut pending: HashSet<u64> = HashSet::with_capacity(rows.len());
        for row in rows {
            let view = &row.deliverable.job.view;
            let id = view.job_id;
            pending.insert(id);
            if view.kind.is_immediate()
                && dispatcher::jobs::immediate_expired(view.created_at_ms, ttl, now)
            {
                // Never sent late; the expiry fails it.
                continue;
            }
            if self
                .jobs
                .get(&id)
                .is_some_and(|(_, bridge)| *bridge != row.bridge_id)
            {
                // Relinked: the lock's commands leave the old bridge's queue.
                for c in self.queue.unlink_lock(&view.lock_id) {
                    self.jobs.remove(&c.id);
                    self.sent_at.remove(&c.id);
                }
            }
            if self.paused.contains_key(&id) || !self.online.contains(&row.bridge_id) {
                continue;
            }
            let cmd = Command {
                id,
                attempt: view.attempt,
                lock: LockId::new(&view.lock_id),
                bridge: BridgeId::new(&row.bridge_id),
            };
            self.enqueue(cmd, row.deliverable);
        }
        let gone: Vec<(u64, String, u8)> = self
            .jobs
            .iter()
            .filter(|(id, _)| !pending.contains(id))
            .map(|(id, (d, _))| (*id, d.job.view.lock_id.clone(), d.job.view.attempt))
            .collect();
        for (id, lock, attempt) in gone {
            self.queue.on_result(&lock, id, attempt);
            self.jobs.remove(&id);
            self.sent_at.remove(&id);
        }
    }

    fn enqueue(&mut self, cmd: Command, job: Deliverable) {
        let id = cmd.id;
        let bridge = cmd.bridge.to_string();
        match self.jobs.get(&id) {
            Some((queued, _)) if queued.job.view.attempt == cmd.attempt => {
                // Queued already; keep the newest copy of the row.
                self.jobs.insert(id, (job, bridge));
                return;
            }
            Some((queued, _)) => {
                // Recreated meanwhile: the old attempt leaves the queue.
                let (lock, attempt) = (queued.job.view.lock_id.clone(), queued.job.view.attempt);
                self.queue.on_result(&lock, id, attempt);
            }
            None => {}
        }
        match self.queue.enqueue(cmd.clone()) {
            Ok(()) => {}
            Err(EnqueueError::OtherBridge { lock, .. }) => {
                // Relinked: its commands follow the lock to the new bridge
                // at the next refresh.
                for c in self.queue.unlink_lock(lock.as_str()) {
                    self.jobs.remove(&c.id);
                    self.sent_at.remove(&c.id);
                }
                if let Err(e) = self.queue.enqueue(cmd) {
                    tracing::warn!(error = %e, "bridge command not queued after a relink; the next refresh tries again");
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "bridge command not queued; the next refresh tries again");
                return;
            }
        }
        self.jobs.insert(id, (job, bridge));
    }

    fn poll_timeouts(&mut self) {
        let now = crate::ingest::now_ms();
        for t in self.queue.poll_timeouts(now) {
            if let TimedOut::GaveUp { command, tries } = t {
                metrics::bridge_command_unanswered("gave_up");
                tracing::info!(
                    job = command.id,
                    bridge = %command.bridge,
                    tries,
                    "bridge did not answer a command; the job stays pending"
                );
                self.jobs.remove(&command.id);
                self.sent_at.remove(&command.id);
                self.paused.insert(
                    command.id,
                    (now + GAVE_UP_PAUSE_MS, command.bridge.to_string()),
                );
            }
        }
    }

    /// Publish what the queue hands out, recording each delivery first.
    async fn send_ready(&mut self) {
        let now = crate::ingest::now_ms();
        for t in self.queue.next_sends(now, SENDS_PER_TURN) {
            self.send(t, now).await;
        }
    }

    async fn send(&mut self, t: Transmit, now: u64) {
        let Some((d, _)) = self.jobs.get(&t.id) else {
            self.queue.on_result(t.lock.as_str(), t.id, t.attempt);
            return;
        };
        let ttl = self.config.immediate_ttl.as_millis() as u64;
        let view = &d.job.view;
        if view.kind.is_immediate()
            && dispatcher::jobs::immediate_expired(view.created_at_ms, ttl, now)
        {
            // Never sent late: the expiry fails it.
            self.drop_command(&t);
            return;
        }
        let Some(job) = device_job(&self.deps.server_key, d) else {
            // Counted and logged there; the job stays pending for an operator.
            self.queue.on_result(t.lock.as_str(), t.id, t.attempt);
            self.jobs.remove(&t.id);
            self.paused
                .insert(t.id, (now + GAVE_UP_PAUSE_MS, t.bridge.to_string()));
            return;
        };
        let command = BridgeCommand {
            lock_id: t.lock.to_string(),
            job,
        };
        let payload = match self
            .protect(t.bridge.as_str(), &device::encode(&command))
            .await
        {
            Ok(p) => p,
            Err(why) => {
                metrics::bridge_command_unanswered("unprotectable");
                tracing::warn!(bridge = %t.bridge, job = t.id, reason = why, "cannot protect a bridge command; it stays pending");
                // Leaves the queue at its timeout, like a lost command.
                return;
            }
        };
        match self
            .deps
            .store
            .mark_delivered(&[(t.id, t.attempt)], "bridge", now)
            .await
        {
            Ok(changed) => {
                if !changed.iter().any(|j| j.view.job_id == t.id) {
                    // No longer pending for this attempt (done another way,
                    // deleted, expired on another instance): never sent.
                    self.drop_command(&t);
                    return;
                }
                for job in &changed {
                    if self
                        .deps
                        .events
                        .send(job_outbound(job, JobChange::Delivered))
                        .await
                        .is_err()
                    {
                        metrics::publish_failed("closed");
                    }
                }
            }
            Err(e) => {
                // Not recorded, so not sent: the timeout tries again.
                tracing::warn!(error = %e, job = t.id, "cannot record a bridge delivery; will retry");
                return;
            }
        }
        if let Err(e) = self
            .deps
            .client
            .publish(down::bridge_command(t.bridge.as_str()), payload)
            .await
        {
            metrics::bridge_command_unanswered("publish_failed");
            tracing::warn!(error = %e, bridge = %t.bridge, job = t.id, "cannot publish a bridge command; it goes again at its timeout");
            return;
        }
        metrics::bridge_command_sent(t.try_no > 1);
        self.sent_at.insert(t.id, Instant::now());
    }

    /// Take a command out of the queue for good (its job is not pending).
    fn drop_command(&mut self, t: &Transmit) {
        self.queue.on_result(t.lock.as_str(), t.id, t.attempt);
        self.jobs.remove(&t.id);
        self.sent_at.remove(&t.id);
    }

    /// `cbor` as the protected request to `bridge`, or plain CBOR for a
    /// bridge without a key under `--insecure-dev`.
    async fn protect(&mut self, bridge: &str, cbor: &[u8]) -> Result<Vec<u8>, &'static str> {
        let Some(key) = self
            .deps
            .ring
            .get(&DeviceRef::Bridge(BridgeId::new(bridge)))
        else {
            return match self.deps.insecure_dev {
                true => Ok(cbor.to_vec()),
                false => Err("the bridge has no key: register it with one"),
            };
        };
        let seq = self.next_seq(bridge).await?;
        let piv = PartialIv::from_seq(seq).map_err(|_| "sender sequence numbers exhausted")?;
        let plaintext = InnerMessage::bare(CODE_POST, cbor)
            .encode()
            .map_err(|_| "the command does not fit an OSCORE message")?;
        let (protected, _request) = protect_request(key.context(), piv, &plaintext, false, &[])
            .map_err(|_| "OSCORE protection failed")?;
        Ok(encode_protected(&protected.option, &protected.ciphertext))
    }

    /// The next sender sequence number for `bridge`, reserving a new block
    /// in the database when this one is used up.
    async fn next_seq(&mut self, bridge: &str) -> Result<u64, &'static str> {
        if let Some((next, limit)) = self.seqs.get_mut(bridge) {
            if *next < *limit {
                *next += 1;
                return Ok(*next - 1);
            }
        }
        let limit = self
            .deps
            .store
            .reserve_sender_seqs(&format!("br/{bridge}"), SEQ_RESERVATION)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot reserve OSCORE sender sequence numbers");
                "cannot reserve sender sequence numbers"
            })?;
        let first = limit.saturating_sub(SEQ_RESERVATION);
        self.seqs.insert(bridge.to_string(), (first + 1, limit));
        Ok(first)
    }

    /// Fail lock, unlock and sync past their time to live; announce each.
    async fn expire(&mut self) {
        let now = crate::ingest::now_ms();
        let ttl = self.config.immediate_ttl.as_millis() as u64;
        let reason = dispatcher::jobs::immediate_expired_reason(ttl);
        let expired = match self
            .deps
            .store
            .expire_immediate_jobs(now.saturating_sub(ttl), &reason, now, EXPIRE_PER_REFRESH)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot expire lock, unlock and sync jobs; will retry");
                return;
            }
        };
        for (job, change) in &expired {
            metrics::job_failed("not_delivered_in_time");
            if self
                .deps
                .events
                .send(job_outbound(job, *change))
                .await
                .is_err()
            {
                metrics::publish_failed("closed");
            }
        }
    }
}
