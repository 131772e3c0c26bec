//! Storage: the registered fleet and every report, exactly once, in SQLite
//! (one machine, the default) or PostgreSQL (several instances).
//!
//! The store owns the schema (`migrations/sqlite`, `migrations/postgres`:
//! same tables, one dialect each) and every SQL statement. It knows nothing
//! of transports or dashboard events: the ingest writer hands it a [`Batch`]
//! and learns, per row, whether the row was new; deciding what a new row
//! means is the writer's job.
//!
//! * [`Store::commit`] is the group commit: every row of a batch in one
//!   transaction, multi-row `INSERT .. ON CONFLICT DO NOTHING RETURNING` (one
//!   `UNNEST` statement per table on PostgreSQL), so a resent report is
//!   stored once and its duplicate is reported as not new.
//! * Statements shared by both engines (import, loads, retention, audit) are
//!   in `common`; the engine-specific parts (opening, the commit) in
//!   `sqlite` and `postgres`.
//! * A protected report's OSCORE replay window and key are checked, and the
//!   window advanced, inside the same commit ([`replay`]): the store, not a
//!   transport's memory, is the authority on replays and revoked keys.

mod codes;
mod common;
mod error;
pub mod jobs;
pub mod keys;
mod plan;
mod postgres;
pub mod replay;
mod sqlite;
#[doc(hidden)]
pub mod testing;
pub mod twofa;

pub use common::OverdueClaim;
pub use dispatcher::connectivity::{BridgeStatus, Change, StatusReport};
pub use error::StoreError;
pub use replay::{KeyStamp, ProtectionRefusal, ProtectionRow, StoredWindow};

use dispatcher::telemetry::LatestState;
use dispatcher::{BridgeId, KnownIds, LockId, Registry};
use schemas::event::{ConnectivityCause, Transport};
use std::collections::HashMap;
use std::fmt;

pub(crate) const SQLITE: &str = "sqlite";

/// A lock's newest heartbeat as stored: its state, when it arrived, and the
/// heartbeat interval the lock said was in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredState {
    pub state: LatestState,
    pub received_at_ms: u64,
    pub heartbeat_interval: schemas::HeartbeatInterval,
}
pub(crate) const POSTGRES: &str = "postgres";

/// The database, one of two engines chosen by URL. Clone is cheap (pools).
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.engine())
    }
}

/// One group commit's rows.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub heartbeats: Vec<HeartbeatRow>,
    pub events: Vec<EventRow>,
    /// Bridge status reports, in the order received. The commit decides which
    /// change the bridge's connectivity ([`Committed::bridge_changes`]).
    pub bridge_statuses: Vec<BridgeStatusRow>,
    /// One per report that arrived OSCORE-protected, in queue order, naming
    /// the rows it carries. The commit refuses (stores none of the rows of)
    /// a report whose key was revoked or whose sequence number was replayed
    /// ([`Committed::protections_refused`]); see [`replay`].
    pub protections: Vec<ProtectionRow>,
}

impl Batch {
    /// Nothing to store and nothing to check: a protected report without
    /// rows (an empty activity-log batch) still has its sequence number
    /// checked and recorded.
    pub fn is_empty(&self) -> bool {
        self.heartbeats.is_empty()
            && self.events.is_empty()
            && self.bridge_statuses.is_empty()
            && self.protections.is_empty()
    }
}

/// A bridge's status report.
#[derive(Clone, Debug)]
pub struct BridgeStatusRow {
    pub bridge_id: String,
    pub report: StatusReport,
}

#[derive(Clone, Debug)]
pub struct HeartbeatRow {
    pub hb: schemas::Heartbeat,
    pub transport: Transport,
    pub bridge_id: Option<String>,
    /// Server receive time, Unix milliseconds.
    pub received_at_ms: u64,
}

/// One entry of an activity-log batch.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub lock_id: String,
    /// The uplink sequence number of the batch that carried the entry.
    pub batch_seq: u32,
    pub event: schemas::ActivityEvent,
    pub transport: Transport,
    pub bridge_id: Option<String>,
    pub received_at_ms: u64,
}

/// A bridge came online or went offline: a row of its connectivity history.
#[derive(Clone, Debug)]
pub(crate) struct BridgeChangeRow {
    pub bridge_id: String,
    pub online: bool,
    pub cause: ConnectivityCause,
    pub at_ms: u64,
}

/// What a group commit did, read and decided inside its transaction with the
/// batch's locks and bridges locked, so every instance sees the same history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Per heartbeat of the batch, in order: newly inserted. When the same
    /// key (lock_id, seq) appears twice in one batch, only the first
    /// occurrence can be true.
    pub heartbeats_inserted: Vec<bool>,
    /// Per activity entry, likewise for (lock_id, event seq).
    pub events_inserted: Vec<bool>,
    /// Per bridge status report, in order: the change it made, if any.
    pub bridge_changes: Vec<Option<Change>>,
    /// The newest stored state of each lock with a heartbeat in the batch,
    /// as it was before the batch (absent: none stored yet).
    pub locks_before: HashMap<String, LatestState>,
    /// Per [`Batch::protections`] entry, in order: why the report was
    /// refused, or `None` when it was accepted (and its sequence number is
    /// now in the stored replay window). A refused report's rows are
    /// flagged not inserted and change nothing.
    pub protections_refused: Vec<Option<ProtectionRefusal>>,
}

/// Devices online now, counted in the database (the same for every instance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnlineCounts {
    /// Locks whose newest heartbeat is within its interval plus the grace.
    pub locks: u64,
    /// Bridges whose last status is online.
    pub bridges: u64,
}

/// What a fleet import changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub locks_inserted: u64,
    pub locks_updated: u64,
    pub bridges_inserted: u64,
    pub bridges_updated: u64,
    /// Keys stored for new devices.
    pub keys_new: u64,
    /// Keys rotated because the file gave a registered device another secret.
    pub keys_rotated: u64,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} new and {} updated lock(s), {} new and {} updated bridge(s); {} new and {} rotated key(s)",
            self.locks_inserted,
            self.locks_updated,
            self.bridges_inserted,
            self.bridges_updated,
            self.keys_new,
            self.keys_rotated
        )
    }
}

/// Rows deleted by one retention pass, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub heartbeats: u64,
    pub activity_events: u64,
    pub bridge_connectivity: u64,
    /// 2FA activity-log rows (`tfa_log`).
    pub twofa_log: u64,
    /// 2FA challenges whose OTP expired before the cutoff.
    pub twofa_challenges: u64,
}

impl Purged {
    /// Count the deleted rows in the retention metric.
    pub fn record_metrics(&self) {
        crate::metrics::retention_deleted("heartbeats", self.heartbeats);
        crate::metrics::retention_deleted("activity_events", self.activity_events);
        crate::metrics::retention_deleted("bridge_connectivity", self.bridge_connectivity);
        crate::metrics::retention_deleted("tfa_log", self.twofa_log);
        crate::metrics::retention_deleted("tfa_challenges", self.twofa_challenges);
    }
}

/// Every stored key, for tests and the post-run audit. Sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// (lock_id, seq) of every stored heartbeat.
    pub heartbeats: Vec<(String, u32)>,
    /// (lock_id, event seq) of every stored activity event.
    pub events: Vec<(String, u32)>,
    /// Number of bridge connectivity rows.
    pub bridge_changes: u64,
}

impl Store {
    /// Open (creating if needed) and migrate the database at `url`:
    /// `sqlite://path/to/file.db` (parent directories and the file are
    /// created; WAL, `synchronous=FULL`) or `postgres://user@host:port/db`
    /// (the database must exist).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            sqlite::open(url).await.map(Store::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::open(url).await.map(Store::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl {
                url: error::redact(url),
            })
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn engine(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => SQLITE,
            Store::Postgres(_) => POSTGRES,
        }
    }

    /// One round trip to the database (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        common::ping(self).await
    }

    /// SQLite: copy the WAL back into the database beside the writer
    /// rather than inside its commits, until `stop` is cancelled; await
    /// the handle before [`Store::close`]. `None` on PostgreSQL. An error
    /// leaves the writer checkpointing as SQLite does by default.
    pub async fn spawn_checkpointer(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::spawn_checkpointer(p, stop).await.map(Some),
            Store::Postgres(_) => Ok(None),
        }
    }

    /// Close every connection (SQLite also checkpoints its WAL). Waits for
    /// connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }

    /// Register (insert or update) the locks and bridges of a validated fleet
    /// file, all in one transaction. Bumps [`Store::registry_version`].
    ///
    /// Every new device must come with its master secret
    /// ([`ParsedFleet::secrets`](dispatcher::import::ParsedFleet)); a secret
    /// given for a registered device that differs from its key rotates the
    /// key. Secrets are stored wrapped under `server_key`.
    pub async fn import_fleet(
        &self,
        fleet: &dispatcher::import::ParsedFleet,
        server_key: &crate::keys::ServerKey,
    ) -> Result<ImportSummary, StoreError> {
        common::import_fleet(self, fleet, server_key).await
    }

    /// Which of `devices` have no key yet (new devices, for the importer to
    /// give secrets to).
    pub async fn devices_without_keys(
        &self,
        devices: &[dispatcher::keys::DeviceRef],
    ) -> Result<Vec<dispatcher::keys::DeviceRef>, StoreError> {
        let stored = keys::stored_keys(self, devices).await?;
        Ok(devices
            .iter()
            .filter(|d| !stored.contains_key(d))
            .cloned()
            .collect())
    }

    /// A number that changes whenever a fleet import commits (from any
    /// instance): poll it to know when to reload the registry.
    pub async fn registry_version(&self) -> Result<u64, StoreError> {
        common::registry_version(self).await
    }

    /// Every registered lock and bridge.
    pub async fn load_registry(&self) -> Result<Registry, StoreError> {
        common::load_registry(self, &dispatcher::NoKnownIds).await
    }

    /// Every registered lock and bridge, taking the ids `known` holds (the
    /// registry being replaced) instead of copying them again.
    pub async fn reload_registry(&self, known: &dyn KnownIds) -> Result<Registry, StoreError> {
        common::load_registry(self, known).await
    }

    /// Newest state per lock (for change detection and presence after a restart).
    pub async fn load_latest(&self) -> Result<HashMap<LockId, StoredState>, StoreError> {
        common::load_latest(self).await
    }

    /// Current online flag per bridge (absent = never seen).
    pub async fn load_bridge_status(&self) -> Result<HashMap<BridgeId, BridgeStatus>, StoreError> {
        common::load_bridge_status(self).await
    }

    /// Devices online at `now_ms`: two index scans, for the gauges.
    pub async fn count_online(&self, now_ms: u64) -> Result<OnlineCounts, StoreError> {
        common::count_online(self, now_ms).await
    }

    /// One group commit: every row in one transaction, all or nothing. On
    /// `Err` nothing of the batch is stored. The batch's locks and bridges
    /// are locked first (sorted, so instances never deadlock), their stored
    /// state read, bridge changes decided against it, then everything written.
    pub async fn commit(&self, batch: &Batch) -> Result<Committed, StoreError> {
        if batch.is_empty() {
            return Ok(Committed::default());
        }
        match self {
            Store::Sqlite(p) => sqlite::commit(p, batch).await,
            Store::Postgres(p) => postgres::commit(p, batch).await,
        }
    }

    /// Run one dashboard command in one transaction (see [`jobs`]): the
    /// idempotency key is claimed, the guide's rules checked against the
    /// stored PINs and jobs, the job written and the answer stored under
    /// the key. A repeated key returns the stored answer.
    pub async fn run_command(
        &self,
        org: &str,
        req: &schemas::command::CommandRequest,
        prepared: &jobs::Prepared,
        now_ms: u64,
    ) -> Result<jobs::CommandDone, StoreError> {
        jobs::run_command(self, org, req, prepared, now_ms).await
    }

    /// Run `commands` in one transaction, each in a savepoint of its own
    /// (see [`jobs::run_commands`]): what [`CommandQueue`] does with a group.
    pub async fn run_commands(
        &self,
        commands: &[jobs::QueuedCommand<'_>],
    ) -> Result<Vec<Result<jobs::CommandDone, StoreError>>, StoreError> {
        jobs::run_commands(self, commands).await
    }

    /// Where the dashboard's commands go: on SQLite a queue whose task runs
    /// them in groups, one transaction (and one fsync) for as many as are
    /// waiting ([`CommandQueue`]); on PostgreSQL, which runs transactions
    /// side by side, straight to [`Store::run_command`].
    pub fn command_queue(&self) -> CommandQueue {
        match self {
            Store::Sqlite(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(MAX_COMMAND_GROUP);
                tokio::spawn(group_commands(self.clone(), rx));
                CommandQueue(Route::Grouped(tx))
            }
            Store::Postgres(_) => CommandQueue(Route::Direct(self.clone())),
        }
    }

    /// Decide a writer batch's 2FA entries in one transaction, in order
    /// (see [`twofa`]).
    pub async fn apply_twofa_entries(
        &self,
        entries: &[twofa::Entry],
        limits: &dispatcher::twofa::Limits,
        now_ms: u64,
    ) -> Result<Vec<twofa::EntryOutcome>, StoreError> {
        twofa::apply_entries(self, entries, limits, now_ms).await
    }

    /// End a challenge whose OTP could not be sent; its event, if it was open.
    pub async fn twofa_notifier_failed(
        &self,
        lock: &dispatcher::LockRecord,
        challenge_id: u64,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<schemas::twofa::TwoFactorEvent>, StoreError> {
        twofa::notifier_failed(self, lock, challenge_id, reason, now_ms).await
    }

    /// 2FA lock-outs in force now: (locks, users).
    pub async fn count_twofa_lockouts(&self, now_ms: u64) -> Result<(u64, u64), StoreError> {
        twofa::count_lockouts(self, now_ms).await
    }

    /// Every pending job of `locks`, per lock in creation order.
    pub async fn pending_jobs(&self, locks: &[&str]) -> Result<Vec<jobs::Deliverable>, StoreError> {
        jobs::pending_for(self, locks).await
    }

    /// Every pending job of the locks linked to a bridge, with the bridge.
    pub async fn pending_via_bridges(&self) -> Result<Vec<jobs::BridgeDeliverable>, StoreError> {
        jobs::pending_via_bridges(self).await
    }

    /// Fail the pending lock, unlock and sync jobs created at or before
    /// `created_before_ms` (at most `max`); each is returned to one caller.
    pub async fn expire_immediate_jobs(
        &self,
        created_before_ms: u64,
        reason: &str,
        now_ms: u64,
        max: u64,
    ) -> Result<Vec<(jobs::StoredJob, schemas::command::JobChange)>, StoreError> {
        jobs::expire_immediate(self, created_before_ms, reason, now_ms, max).await
    }

    /// Reserve `step` OSCORE sender sequence numbers of this gateway for
    /// `device`; returns the new limit (the block is `limit - step .. limit`).
    pub async fn reserve_sender_seqs(&self, device: &str, step: u64) -> Result<u64, StoreError> {
        jobs::reserve_sender_seqs(self, device, step).await
    }

    /// Record that the jobs `(id, attempt)` went out by `path`; returns
    /// the jobs as they are now (those still pending).
    pub async fn mark_delivered(
        &self,
        jobs: &[(u64, u8)],
        path: &str,
        now_ms: u64,
    ) -> Result<Vec<jobs::StoredJob>, StoreError> {
        jobs::mark_delivered(self, jobs, path, now_ms).await
    }

    /// Apply a lock's job results in one transaction; the jobs that ended
    /// (a completed interval change has also changed the lock's row and
    /// bumped the registry version).
    pub async fn apply_job_results(
        &self,
        lock_id: &str,
        results: &[schemas::JobResult],
        now_ms: u64,
    ) -> Result<Vec<(jobs::StoredJob, schemas::command::JobChange)>, StoreError> {
        jobs::apply_results(self, lock_id, results, now_ms).await
    }

    /// Claim the locks whose deadline is at or before `deadline_ms` and
    /// that are not overdue yet (at most `max`): overdue from `now_ms`.
    /// Each lock is claimed by one instance once.
    pub async fn claim_overdue(
        &self,
        deadline_ms: u64,
        now_ms: u64,
        max: u64,
    ) -> Result<Vec<OverdueClaim>, StoreError> {
        common::claim_overdue(self, deadline_ms, now_ms, max).await
    }

    /// Claim the returns of overdue locks heard again (their deadline is
    /// now after `deadline_ms`); each once.
    pub async fn claim_returned(&self, deadline_ms: u64) -> Result<Vec<OverdueClaim>, StoreError> {
        common::claim_returned(self, deadline_ms).await
    }

    /// Locks overdue now.
    pub async fn count_overdue(&self) -> Result<u64, StoreError> {
        common::count_overdue(self).await
    }

    /// Locks whose newest heartbeat reports a low battery.
    pub async fn count_low_battery(&self) -> Result<u64, StoreError> {
        common::count_low_battery(self).await
    }

    /// Pending jobs at `now_ms`, and how many of them were issued less than
    /// each of `ages_ms` ago.
    pub async fn pending_ages(
        &self,
        now_ms: u64,
        ages_ms: [u64; 4],
    ) -> Result<jobs::PendingAges, StoreError> {
        jobs::pending_ages(self, now_ms, ages_ms).await
    }

    /// Every readable stored OSCORE replay window, for the key ring's fast
    /// path after a start (the commit reads the windows itself).
    pub async fn load_replay_windows(&self) -> Result<Vec<StoredWindow>, StoreError> {
        replay::load_windows(self).await
    }

    /// Retention: delete heartbeats, activity events and bridge connectivity
    /// rows received before `cutoff_ms` (Unix ms), at most `max_rows` per
    /// table per call, in short statements of their own so that commits are
    /// never blocked for long. Call again while a table returns `max_rows`.
    pub async fn purge_before(&self, cutoff_ms: u64, max_rows: u64) -> Result<Purged, StoreError> {
        common::purge_before(self, cutoff_ms, max_rows).await
    }

    /// Every stored heartbeat and activity-event key, and the number of
    /// bridge connectivity rows. Reads whole tables: for tests and audits.
    pub async fn audit(&self) -> Result<Audit, StoreError> {
        common::audit(self).await
    }
}

/// Commands run in one transaction at most.
pub const MAX_COMMAND_GROUP: usize = 64;

/// A command on its way to [`group_commands`], with where its outcome goes.
struct Queued {
    org: String,
    request: schemas::command::CommandRequest,
    prepared: jobs::Prepared,
    now_ms: u64,
    done: tokio::sync::oneshot::Sender<Result<jobs::CommandDone, StoreError>>,
}

/// Runs the dashboard's commands: see [`Store::command_queue`]. Cheap to
/// clone; the grouping task ends when the last clone is dropped.
#[derive(Clone)]
pub struct CommandQueue(Route);

#[derive(Clone)]
enum Route {
    Grouped(tokio::sync::mpsc::Sender<Queued>),
    Direct(Store),
}

impl fmt::Debug for CommandQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Route::Grouped(_) => "CommandQueue::Grouped",
            Route::Direct(_) => "CommandQueue::Direct",
        })
    }
}

impl CommandQueue {
    /// Run one command (committed when this returns `Ok`), as
    /// [`Store::run_command`] does.
    pub async fn run(
        &self,
        org: &str,
        request: &schemas::command::CommandRequest,
        prepared: &jobs::Prepared,
        now_ms: u64,
    ) -> Result<jobs::CommandDone, StoreError> {
        let queue = match &self.0 {
            Route::Direct(store) => return store.run_command(org, request, prepared, now_ms).await,
            Route::Grouped(queue) => queue,
        };
        let gone = || StoreError::Failed {
            engine: SQLITE,
            operation: "running a dashboard command",
            detail: "the command queue has stopped: the gateway is shutting down, or the \
                     queue's task failed (see the log); retry with the same idempotency key"
                .into(),
        };
        let (done, outcome) = tokio::sync::oneshot::channel();
        queue
            .send(Queued {
                org: org.to_string(),
                request: request.clone(),
                prepared: prepared.clone(),
                now_ms,
                done,
            })
            .await
            .map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }
}

/// Takes every command waiting (up to [`MAX_COMMAND_GROUP`]) and runs them
/// in one transaction, until every queue handle is gone. A failed
/// transaction answers each command of the group with its error: nothing
/// of them was stored, and the dashboard retries with the same keys. Each
/// group runs in a task of its own, so a bug that panics fails that group
/// (its askers hear that the queue stopped) and not every later command.
async fn group_commands(store: Store, mut queue: tokio::sync::mpsc::Receiver<Queued>) {
    let mut group = Vec::with_capacity(MAX_COMMAND_GROUP);
    while queue.recv_many(&mut group, MAX_COMMAND_GROUP).await > 0 {
        let (store, group) = (store.clone(), std::mem::take(&mut group));
        let size = group.len();
        if let Err(e) = tokio::spawn(run_group(store, group)).await {
            tracing::error!(
                commands = size,
                error = %e,
                "a group of dashboard commands failed unexpectedly (a bug): each was answered \
                 with an error; a retry with the same idempotency key is safe"
            );
        }
    }
}

/// One group's transaction, and each outcome to its asker.
async fn run_group(store: Store, group: Vec<Queued>) {
    let commands: Vec<_> = group
        .iter()
        .map(|q| jobs::QueuedCommand {
            org: &q.org,
            request: &q.request,
            prepared: &q.prepared,
            now_ms: q.now_ms,
        })
        .collect();
    let outcomes = match store.run_commands(&commands).await {
        Ok(outcomes) => outcomes,
        Err(e) => vec![Err(e); group.len()],
    };
    drop(commands);
    for (q, outcome) in group.into_iter().zip(outcomes) {
        // The asker may have gone (shutdown): its outcome is committed.
        let _ = q.done.send(outcome);
    }
}
