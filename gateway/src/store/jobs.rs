//! Jobs in the database: commands from the dashboard (each in a
//! transaction with its idempotency record: its own, or on SQLite one
//! shared by a group, each command in a savepoint of its own), delivery at heartbeats, and
//! the locks' results. The rules are `dispatcher::jobs`; this module reads
//! what they need inside the transaction (the lock's row locked on
//! PostgreSQL, the one write connection on SQLite), so instances agree.
//!
//! Statements read the same on both engines; [`Tx`] runs them on either.

use super::common::BeginWrite;
use super::{Store, StoreError};
use dispatcher::jobs::{
    self as rules, AccessFacts, JobRecord, PinRequest, Refusal, ResultEffect, RetriedBy,
};
use dispatcher::LockRecord;
use schemas::command::{
    Command, CommandError, CommandRequest, CommandResult, JobChange, JobEvent, JobKind, JobView,
    PinKind, ResponseStatus,
};
use schemas::device::{JobResult, PinType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Sqlite, Transaction};

/// Most jobs one listing returns (an answer must fit one MQTT message;
/// the command handler shortens a page further if it would not).
pub const MAX_LIST: u32 = 100;
const DEFAULT_LIST: u32 = 50;

/// The columns of [`JobColumns`] (every job column but the sealed PIN).
const JOB_COLUMNS: &str = "job_id, org, department, lock_id, kind, state, attempt, retried_by, \
     created_at_ms, created_by, description, pin_name, access_id, pin_kind, pin_type, pin_start_s, pin_end_s, \
     heartbeat_interval_h, activity_log_interval_min, issued_at_ms, deliveries, in_flight, last_sync_ms, \
     last_sync_by, failure_reason, version, updated_at_ms";

#[derive(sqlx::FromRow, Clone, Debug)]
struct JobColumns {
    job_id: i64,
    org: String,
    department: Option<String>,
    lock_id: String,
    kind: String,
    state: String,
    attempt: i64,
    retried_by: Option<String>,
    created_at_ms: i64,
    created_by: String,
    description: String,
    pin_name: Option<String>,
    access_id: Option<String>,
    pin_kind: Option<String>,
    pin_type: Option<String>,
    pin_start_s: Option<i64>,
    pin_end_s: Option<i64>,
    heartbeat_interval_h: Option<i64>,
    activity_log_interval_min: Option<i64>,
    issued_at_ms: i64,
    deliveries: i64,
    in_flight: bool,
    last_sync_ms: Option<i64>,
    last_sync_by: Option<String>,
    failure_reason: Option<String>,
    version: i64,
    updated_at_ms: i64,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    pub view: JobView,
    pub retried_by: Option<RetriedBy>,
    pub in_flight: bool,
    pub issued_at_ms: u64,
    pub version: u64,
    pub pin_kind: Option<PinKind>,
}

impl StoredJob {
    pub fn record(&self) -> JobRecord {
        JobRecord {
            id: self.view.job_id,
            lock_id: self.view.lock_id.clone(),
            kind: self.view.kind,
            state: self.view.state,
            attempt: self.view.attempt,
            access_id: self.view.access_id.clone(),
            in_flight: self.in_flight,
            retried_by: self.retried_by,
        }
    }

    /// The dashboard event for `change`, stable per job version.
    pub fn event(&self, change: JobChange) -> JobEvent {
        JobEvent {
            event_id: format!("job:{}:{}", self.view.job_id, self.version),
            change,
            job: self.view.clone(),
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(key: i64, what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| StoreError::corrupt("jobs", &key.to_string(), format!("{what} {s:?}: {e}")))
}

impl TryFrom<JobColumns> for StoredJob {
    type Error = StoreError;
    fn try_from(c: JobColumns) -> Result<Self, StoreError> {
        let k = c.job_id;
        let u = |v: i64| v.max(0) as u64;
        Ok(StoredJob {
            view: JobView {
                job_id: u(c.job_id),
                org: c.org,
                department: c.department,
                lock_id: c.lock_id,
                kind: parse(k, "kind", &c.kind)?,
                state: parse(k, "state", &c.state)?,
                created_at_ms: u(c.created_at_ms),
                created_by: c.created_by,
                description: c.description,
                pin_name: c.pin_name,
                access_id: c.access_id,
                pin_type: c
                    .pin_type
                    .as_deref()
                    .map(|t| parse(k, "pin_type", t))
                    .transpose()?,
                pin_start_s: c.pin_start_s.map(u),
                pin_end_s: c.pin_end_s.map(u),
                heartbeat_interval_h: c.heartbeat_interval_h.map(|v| v as u16),
                activity_log_interval_min: c.activity_log_interval_min.map(|v| v as u16),
                attempt: c.attempt.clamp(1, 255) as u8,
                deliveries: c.deliveries.clamp(0, i64::from(u32::MAX)) as u32,
                last_sync_ms: c.last_sync_ms.map(u),
                last_sync_by: c.last_sync_by,
                failure_reason: c.failure_reason,
                expected_delivery_ms: None,
                updated_at_ms: u(c.updated_at_ms),
            },
            retried_by: c.retried_by.as_deref().and_then(RetriedBy::parse),
            in_flight: c.in_flight,
            issued_at_ms: u(c.issued_at_ms),
            version: u(c.version),
            pin_kind: c
                .pin_kind
                .as_deref()
                .map(|t| parse(k, "pin_kind", t))
                .transpose()?,
        })
    }
}

/// A bind value for [`Tx`].
#[derive(Clone, Debug)]
pub(super) enum Bind {
    Bool(bool),
    I64(i64),
    Text(String),
    OptText(Option<String>),
    OptI64(Option<i64>),
    OptBytes(Option<Vec<u8>>),
}

pub(super) fn i(v: u64) -> Bind {
    Bind::I64(v.min(i64::MAX as u64) as i64)
}
pub(super) fn t(v: impl Into<String>) -> Bind {
    Bind::Text(v.into())
}

macro_rules! bound {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Bool(v) => q.bind(*v),
                Bind::I64(v) => q.bind(*v),
                Bind::Text(v) => q.bind(v.clone()),
                Bind::OptText(v) => q.bind(v.clone()),
                Bind::OptI64(v) => q.bind(*v),
                Bind::OptBytes(v) => q.bind(v.clone()),
            };
        }
        q
    }};
}

/// Every statement here is built from constant text and numbered
/// placeholders; values are always bound, never spliced.
fn safe(sql: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.to_owned())
}

/// A write transaction on either engine.
pub(super) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    pub(super) async fn begin(store: &Store) -> Result<Tx, sqlx::Error> {
        Ok(match store {
            Store::Sqlite(p) => Tx::Sqlite(p.begin_write().await?),
            Store::Postgres(p) => Tx::Postgres(p.begin_write().await?),
        })
    }

    /// A transaction for reads (SQLite: a deferred one, so it does not take
    /// the write lock).
    pub(super) async fn begin_read(store: &Store) -> Result<Tx, sqlx::Error> {
        Ok(match store {
            Store::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Store::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }

    pub(super) async fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(tx) => bound!(sqlx::query(safe(sql)), binds)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Postgres(tx) => bound!(sqlx::query(safe(sql)), binds)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Rows of `sql` as `T`.
    pub(super) async fn rows<T>(&mut self, sql: &str, binds: &[Bind]) -> Result<Vec<T>, sqlx::Error>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        match self {
            Tx::Sqlite(tx) => {
                bound!(sqlx::query_as::<_, T>(safe(sql)), binds)
                    .fetch_all(&mut **tx)
                    .await
            }
            Tx::Postgres(tx) => {
                bound!(sqlx::query_as::<_, T>(safe(sql)), binds)
                    .fetch_all(&mut **tx)
                    .await
            }
        }
    }

    /// The one value of `sql`'s first row, if there is a row.
    pub(super) async fn scalar<T>(
        &mut self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Option<T>, sqlx::Error>
    where
        T: Send
            + Unpin
            + sqlx::Type<Sqlite>
            + for<'r> sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Postgres>
            + for<'r> sqlx::Decode<'r, Postgres>,
    {
        match self {
            Tx::Sqlite(tx) => {
                bound!(sqlx::query_scalar::<_, T>(safe(sql)), binds)
                    .fetch_optional(&mut **tx)
                    .await
            }
            Tx::Postgres(tx) => {
                bound!(sqlx::query_scalar::<_, T>(safe(sql)), binds)
                    .fetch_optional(&mut **tx)
                    .await
            }
        }
    }

    /// Jobs selected by `filter` (`WHERE ...`, `ORDER BY ...`).
    async fn jobs(&mut self, filter: &str, binds: &[Bind]) -> Result<Vec<JobColumns>, sqlx::Error> {
        self.rows(&format!("SELECT {JOB_COLUMNS} FROM jobs {filter}"), binds)
            .await
    }

    /// Serialise links to one bridge across instances (PostgreSQL).
    async fn lock_bridge_row(&mut self, bridge_id: &str) -> Result<(), sqlx::Error> {
        if let Tx::Postgres(_) = self {
            self.execute(
                "SELECT bridge_id FROM bridges WHERE bridge_id = $1 FOR UPDATE",
                &[t(bridge_id)],
            )
            .await?;
        }
        Ok(())
    }

    pub(super) fn is_postgres(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }

    /// Serialise the commands and results of one lock across instances
    /// (PostgreSQL row lock; SQLite's write transaction already is).
    pub(super) async fn lock_row(&mut self, lock_id: &str) -> Result<(), sqlx::Error> {
        if let Tx::Postgres(_) = self {
            self.execute(
                "SELECT lock_id FROM locks WHERE lock_id = $1 FOR UPDATE",
                &[t(lock_id)],
            )
            .await?;
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow, Clone, Debug)]
struct PinColumns {
    pin_type: String,
    start_s: i64,
    end_s: Option<i64>,
}

/// A pending job's columns with its sealed PIN, for delivery.
#[derive(sqlx::FromRow, Clone, Debug)]
struct DeliverableColumns {
    #[sqlx(flatten)]
    job: JobColumns,
    pin_sealed: Option<Vec<u8>>,
}

/// What the gateway prepared for a command before the transaction: the
/// lock it names (from the registry) and, for a Custom PIN, its access id
/// and the digits sealed under the server key.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    pub lock: Option<std::sync::Arc<LockRecord>>,
    /// The bridge a link names (from the registry).
    pub bridge: Option<std::sync::Arc<dispatcher::BridgeRecord>>,
    pub access_id: Option<String>,
    pub pin_sealed: Option<Vec<u8>>,
    /// New 2FA passcodes and their keys (generate and reset), in order of
    /// preference: the first no other user of the organisation has is used.
    pub passcodes: Vec<super::twofa::NewPasscode>,
}

/// The body of an answer, as stored under the idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub status: ResponseStatus,
    pub result: Option<CommandResult>,
    pub error: Option<CommandError>,
}

impl Answer {
    fn ok(result: CommandResult) -> Answer {
        Answer {
            status: ResponseStatus::Ok,
            result: Some(result),
            error: None,
        }
    }
    pub fn refused(r: &Refusal) -> Answer {
        Answer {
            status: ResponseStatus::Refused,
            result: None,
            error: Some(CommandError {
                rule: r.rule().to_string(),
                message: r.to_string(),
            }),
        }
    }
}

/// What a command did.
#[derive(Clone, Debug)]
pub struct CommandDone {
    pub answer: Answer,
    /// The stored answer of an earlier request with the same key.
    pub replayed: bool,
    /// Committed job changes, for the dashboard.
    pub events: Vec<(StoredJob, JobChange)>,
    /// Committed 2FA events, for the dashboard.
    pub twofa_events: Vec<schemas::twofa::TwoFactorEvent>,
    /// The rule a refusal decided now broke (not set for a replayed answer).
    pub refused_rule: Option<&'static str>,
}

/// What identifies a command for its idempotency key: everything but the
/// correlation id, reply topic and PIN digits (which are never stored).
fn fingerprint(req: &CommandRequest) -> String {
    let mut cmd = req.command.clone();
    if let Command::CreateCustomPin { pin, .. } = &mut cmd {
        pin.clear();
    }
    let body = serde_json::json!({
        "requested_by": req.requested_by,
        "department": req.department,
        "command": cmd,
    });
    let digest = Sha256::digest(body.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run one command in one transaction: idempotency check, the rules, the
/// writes, the answer stored under the key.
pub(super) async fn run_command(
    store: &Store,
    org: &str,
    req: &CommandRequest,
    prepared: &Prepared,
    now_ms: u64,
) -> Result<CommandDone, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "running a dashboard command", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    let done = run_in(&mut tx, engine, org, req, prepared, now_ms).await?;
    tx.commit().await.map_err(err)?;
    Ok(done)
}

/// One queued command of a group commit ([`run_commands`]).
pub struct QueuedCommand<'a> {
    pub org: &'a str,
    pub request: &'a CommandRequest,
    pub prepared: &'a Prepared,
    pub now_ms: u64,
}

/// Run `commands` in order in one transaction, each inside a savepoint of
/// its own: a command whose statements fail is rolled back alone and
/// answered with its error, the others commit together, with one write of
/// the log (SQLite's fsync). `Err` when the transaction itself fails (its
/// begin, a savepoint's statement, or its commit): then nothing of any of
/// them was stored.
pub(super) async fn run_commands(
    store: &Store,
    commands: &[QueuedCommand<'_>],
) -> Result<Vec<Result<CommandDone, StoreError>>, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "running a group of dashboard commands", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    let mut results = Vec::with_capacity(commands.len());
    for c in commands {
        tx.execute("SAVEPOINT command", &[]).await.map_err(err)?;
        let done = run_in(&mut tx, engine, c.org, c.request, c.prepared, c.now_ms).await;
        if let Err(cause) = &done {
            // SQLite may have rolled the whole transaction back already
            // (a full disk, an I/O error): then the savepoint is gone too,
            // and the group fails with both errors.
            let both = |e| StoreError::Failed {
                engine,
                operation: "running a group of dashboard commands",
                detail: format!(
                    "a command failed ({cause}), and rolling back to its savepoint failed \
                     too ({}): nothing of the group is stored",
                    err(e)
                ),
            };
            tx.execute("ROLLBACK TO SAVEPOINT command", &[])
                .await
                .map_err(both)?;
        }
        // Released after a rollback to it as well: the savepoint stays open
        // until then.
        tx.execute("RELEASE SAVEPOINT command", &[])
            .await
            .map_err(err)?;
        results.push(done);
    }
    tx.commit().await.map_err(err)?;
    Ok(results)
}

/// A command's statements inside `tx` (begun and committed by the caller).
async fn run_in(
    tx: &mut Tx,
    engine: &'static str,
    org: &str,
    req: &CommandRequest,
    prepared: &Prepared,
    now_ms: u64,
) -> Result<CommandDone, StoreError> {
    let err = |e| StoreError::from_sqlx(engine, "running a dashboard command", e);
    let fp = fingerprint(req);
    if req.command.writes() {
        // Claim the key first: on PostgreSQL a concurrent claim of the same
        // key waits here for ours to commit, then finds the stored answer.
        let claimed = tx
            .execute(
                "INSERT INTO commands (org, idempotency_key, fingerprint, answer, created_at_ms) \
                 VALUES ($1, $2, $3, '', $4) ON CONFLICT (org, idempotency_key) DO NOTHING",
                &[t(org), t(&req.idempotency_key), t(&fp), i(now_ms)],
            )
            .await
            .map_err(err)?;
        if claimed == 0 {
            let stored = tx
                .scalar::<String>(
                    "SELECT fingerprint || ' ' || answer FROM commands WHERE org = $1 AND idempotency_key = $2",
                    &[t(org), t(&req.idempotency_key)],
                )
                .await
                .map_err(err)?
                .unwrap_or_default();
            let (stored_fp, answer) = stored.split_once(' ').unwrap_or(("", ""));
            let answer = if stored_fp != fp {
                Answer::refused(&Refusal::KeyReused(req.idempotency_key.clone()))
            } else {
                serde_json::from_str(answer).map_err(|e| {
                    StoreError::corrupt("commands", &req.idempotency_key, e.to_string())
                })?
            };
            return Ok(CommandDone {
                answer,
                replayed: true,
                events: vec![],
                twofa_events: vec![],
                refused_rule: None,
            });
        }
    }
    let mut events = Vec::new();
    let mut twofa_events = Vec::new();
    let mut refused_rule = None;
    let executed = if is_twofa(&req.command) {
        match rules::check_text("requested_by", &req.requested_by) {
            Err(r) => Ok(Err(r)),
            Ok(()) => {
                super::twofa::execute(tx, org, req, prepared, now_ms, &mut twofa_events).await
            }
        }
    } else {
        execute(tx, org, req, prepared, now_ms, &mut events).await
    };
    let answer = match executed {
        Ok(Ok(mut result)) => {
            expect_delivery(tx, &mut events, &mut result, now_ms)
                .await
                .map_err(err)?;
            Answer::ok(result)
        }
        Ok(Err(refusal)) => {
            events.clear();
            twofa_events.clear();
            refused_rule = Some(refusal.rule());
            Answer::refused(&refusal)
        }
        Err(e) => return Err(err(e)),
    };
    if req.command.writes() {
        // A secret shown once is not kept: a repeat gets the answer without it.
        let kept = redacted(&answer);
        let json = serde_json::to_string(&kept).map_err(|e| StoreError::Failed {
            engine,
            operation: "storing a command's answer",
            detail: e.to_string(),
        })?;
        tx.execute(
            "UPDATE commands SET answer = $1 WHERE org = $2 AND idempotency_key = $3",
            &[t(json), t(org), t(&req.idempotency_key)],
        )
        .await
        .map_err(err)?;
    }
    Ok(CommandDone {
        answer,
        replayed: false,
        events,
        twofa_events,
        refused_rule,
    })
}

/// Whether the command is one of the 2FA commands (`store::twofa`).
fn is_twofa(c: &Command) -> bool {
    matches!(
        c,
        Command::SetUserMobile { .. }
            | Command::VerifyUserMobile { .. }
            | Command::DeactivateUser { .. }
            | Command::ReactivateUser { .. }
            | Command::GenerateTwoFactorPasscode { .. }
            | Command::ResetTwoFactorPasscode { .. }
            | Command::GrantTwoFactor { .. }
            | Command::EditTwoFactorGrant { .. }
            | Command::RevokeTwoFactorGrant { .. }
            | Command::GetTwoFactorUser { .. }
            | Command::ListTwoFactorGrants { .. }
            | Command::ListTwoFactorLockouts {}
            | Command::ClearTwoFactorLockout { .. }
    )
}

/// The answer as kept under the idempotency key: a passcode shown once is
/// left out.
fn redacted(answer: &Answer) -> Answer {
    let mut kept = answer.clone();
    if let Some(CommandResult::TwoFactorPasscode {
        passcode,
        shown_before,
        ..
    }) = &mut kept.result
    {
        *passcode = None;
        *shown_before = true;
    }
    kept
}

type Ruled<T> = Result<Result<T, Refusal>, sqlx::Error>;

/// A pending job lands now when the lock's bridge is online, else at the
/// lock's next due heartbeat: the stored deadline less the presence grace
/// (the same for every instance). Null while neither is known (a lock never
/// heard or overdue, a bridge offline).
async fn expect_delivery(
    tx: &mut Tx,
    events: &mut [(StoredJob, JobChange)],
    result: &mut CommandResult,
    now_ms: u64,
) -> Result<(), sqlx::Error> {
    for (job, _) in events.iter_mut() {
        if job.view.state != schemas::command::JobState::Pending {
            continue;
        }
        // The lock's bridge's state (null: no bridge; false: one never
        // heard from) and the lock's own, in one statement.
        let (bridge_online, online_until) = tx
            .rows::<(Option<bool>, Option<i64>)>(
                "SELECT (SELECT COALESCE(b.online, FALSE) FROM locks l \
                 JOIN bridges b ON b.bridge_id = l.bridge_id WHERE l.lock_id = $1), \
                 (SELECT online_until_ms FROM lock_state WHERE lock_id = $1)",
                &[t(&job.view.lock_id)],
            )
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        job.view.expected_delivery_ms = if bridge_online.unwrap_or(false) {
            Some(now_ms)
        } else if job.view.kind.is_immediate() {
            None
        } else {
            online_until
                .map(|u| (u.max(0) as u64).saturating_sub(dispatcher::presence::ONLINE_GRACE_MS))
                .filter(|due| *due > now_ms)
        };
        if let CommandResult::Job { job: view } = result {
            if view.job_id == job.view.job_id {
                view.expected_delivery_ms = job.view.expected_delivery_ms;
            }
        }
    }
    Ok(())
}

/// `lock` with its bridge as stored (inside the transaction): the routing
/// rules look at the link as committed, not at this instance's registry,
/// which another instance's link may not have reached yet.
async fn with_stored_bridge(tx: &mut Tx, lock: &LockRecord) -> Result<LockRecord, sqlx::Error> {
    let bridge = current_bridge(tx, lock.id.as_str()).await?;
    Ok(LockRecord {
        bridge: bridge.as_deref().map(dispatcher::BridgeId::new),
        ..lock.clone()
    })
}

/// Whether `bridge` is online as stored (never reported: offline).
async fn bridge_online(tx: &mut Tx, bridge: &str) -> Result<bool, sqlx::Error> {
    Ok(tx
        .scalar::<bool>(
            "SELECT COALESCE(online, FALSE) FROM bridges WHERE bridge_id = $1",
            &[t(bridge)],
        )
        .await?
        .unwrap_or(false))
}

/// The lock's bridge as stored (inside the transaction).
async fn current_bridge(tx: &mut Tx, lock_id: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(tx
        .scalar::<String>(
            "SELECT COALESCE(bridge_id, '') FROM locks WHERE lock_id = $1",
            &[t(lock_id)],
        )
        .await?
        .filter(|b| !b.is_empty()))
}

async fn job_by_id(tx: &mut Tx, org: &str, job_id: u64) -> Result<Option<StoredJob>, sqlx::Error> {
    let rows = tx
        .jobs("WHERE job_id = $1 AND org = $2", &[i(job_id), t(org)])
        .await?;
    rows.into_iter()
        .next()
        .map(StoredJob::try_from)
        .transpose()
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))
}

async fn insert_job(
    tx: &mut Tx,
    org: &str,
    req: &CommandRequest,
    new: NewJob<'_>,
    now_ms: u64,
) -> Result<StoredJob, sqlx::Error> {
    // The new row comes back with the insert: no second statement to read it.
    let rows = tx
        .rows::<JobColumns>(
            &format!(
                "INSERT INTO jobs (org, department, lock_id, kind, state, attempt, created_at_ms, created_by, \
                 description, pin_name, access_id, pin_kind, pin_type, pin_start_s, pin_end_s, pin_sealed, \
                 heartbeat_interval_h, activity_log_interval_min, issued_at_ms, version, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, 'pending', 1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $5, 1, $5) \
                 RETURNING {JOB_COLUMNS}"
            ),
            &[
                t(org),
                Bind::OptText(req.department.clone()),
                t(new.lock_id),
                t(new.kind.as_str()),
                i(now_ms),
                t(&req.requested_by),
                t(rules::description(new.kind, new.pin_kind)),
                Bind::OptText(new.pin_name.map(str::to_string)),
                Bind::OptText(new.access_id.map(str::to_string)),
                Bind::OptText(new.pin_kind.map(|k| k.as_str().to_string())),
                Bind::OptText(new.pin_type.map(|k| k.as_str().to_string())),
                Bind::OptI64(new.start_s.map(|v| v as i64)),
                Bind::OptI64(new.end_s.map(|v| v as i64)),
                Bind::OptBytes(new.pin_sealed),
                Bind::OptI64(new.heartbeat_h.map(i64::from)),
                Bind::OptI64(new.activity_min.map(i64::from)),
            ],
        )
        .await?;
    rows.into_iter()
        .next()
        .ok_or_else(|| sqlx::Error::Protocol("inserted job not returned".into()))
        .and_then(|row| StoredJob::try_from(row).map_err(|e| sqlx::Error::Protocol(e.to_string())))
}

struct NewJob<'a> {
    lock_id: &'a str,
    kind: JobKind,
    pin_kind: Option<PinKind>,
    pin_name: Option<&'a str>,
    access_id: Option<&'a str>,
    pin_type: Option<PinType>,
    start_s: Option<u64>,
    end_s: Option<u64>,
    pin_sealed: Option<Vec<u8>>,
    heartbeat_h: Option<u16>,
    activity_min: Option<u16>,
}

impl<'a> NewJob<'a> {
    /// A job of `kind` for `lock_id` with nothing else set.
    fn of(lock_id: &'a str, kind: JobKind) -> Self {
        NewJob {
            lock_id,
            kind,
            pin_kind: None,
            pin_name: None,
            access_id: None,
            pin_type: None,
            start_s: None,
            end_s: None,
            pin_sealed: None,
            heartbeat_h: None,
            activity_min: None,
        }
    }
}

pub(super) fn lock_of<'a>(
    prepared: &'a Prepared,
    lock_id: &str,
    org: &str,
) -> Result<&'a LockRecord, Refusal> {
    match &prepared.lock {
        Some(l) if l.id.as_str() == lock_id && l.org.as_str() == org => Ok(l),
        _ => Err(Refusal::UnknownLock(lock_id.to_string())),
    }
}

async fn execute(
    tx: &mut Tx,
    org: &str,
    req: &CommandRequest,
    prepared: &Prepared,
    now_ms: u64,
    events: &mut Vec<(StoredJob, JobChange)>,
) -> Ruled<CommandResult> {
    let now_s = now_ms / 1000;
    let dept = req.department.as_deref();
    if let Err(r) = rules::check_text("requested_by", &req.requested_by) {
        return Ok(Err(r));
    }
    match &req.command {
        Command::CreateCustomPin {
            lock_id,
            pin_name,
            pin,
            pin_type,
            start_s,
            end_s,
            algo_pins_active,
        } => {
            let lock = match lock_of(prepared, lock_id, org) {
                Ok(l) => l,
                Err(r) => return Ok(Err(r)),
            };
            tx.lock_row(lock_id).await?;
            let stored = with_stored_bridge(tx, lock).await?;
            let lock = &stored;
            let pins = tx
                .rows::<PinColumns>(
                    "SELECT pin_type, start_s, end_s FROM pins WHERE lock_id = $1",
                    &[t(lock_id)],
                )
                .await?;
            let active = pins
                .iter()
                .filter(|p| {
                    let ty = serde_json::from_value(serde_json::Value::String(p.pin_type.clone()))
                        .unwrap_or(PinType::Permanent);
                    rules::pin_counts_at(
                        ty,
                        p.start_s.max(0) as u64,
                        p.end_s.map(|e| e.max(0) as u64),
                        now_s,
                    )
                })
                .count() as u32;
            let r = PinRequest {
                pin_name,
                pin,
                pin_type: *pin_type,
                start_s: *start_s,
                end_s: *end_s,
                algo_pins_active: *algo_pins_active,
            };
            if let Err(refusal) = rules::check_create_pin(lock, dept, &r, active, now_s) {
                return Ok(Err(refusal));
            }
            let (Some(access), Some(sealed)) = (&prepared.access_id, &prepared.pin_sealed) else {
                return Ok(Err(Refusal::BadRequest(
                    "internal: the PIN was not sealed".into(),
                )));
            };
            let job = insert_job(
                tx,
                org,
                req,
                NewJob {
                    pin_kind: Some(PinKind::Custom),
                    pin_name: Some(pin_name),
                    access_id: Some(access),
                    pin_type: Some(*pin_type),
                    start_s: Some(*start_s),
                    end_s: *end_s,
                    pin_sealed: Some(sealed.clone()),
                    ..NewJob::of(lock_id, JobKind::CreateCustomPin)
                },
                now_ms,
            )
            .await?;
            tx.execute(
                "INSERT INTO pins (lock_id, access_id, pin_type, start_s, end_s, state, job_id) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
                &[
                    t(lock_id),
                    t(access),
                    t(pin_type.as_str()),
                    i(*start_s),
                    Bind::OptI64(end_s.map(|v| v as i64)),
                    i(job.view.job_id),
                ],
            )
            .await?;
            events.push((job.clone(), JobChange::Created));
            Ok(Ok(CommandResult::Job {
                job: Box::new(job.view),
            }))
        }
        Command::DeletePin {
            lock_id,
            access_id,
            pin_kind,
            pin_name,
        } => {
            let lock = match lock_of(prepared, lock_id, org) {
                Ok(l) => l,
                Err(r) => return Ok(Err(r)),
            };
            tx.lock_row(lock_id).await?;
            let stored = with_stored_bridge(tx, lock).await?;
            let lock = &stored;
            let exists = tx
                .scalar::<i64>(
                    "SELECT job_id FROM pins WHERE lock_id = $1 AND access_id = $2",
                    &[t(lock_id), t(access_id)],
                )
                .await?
                .is_some();
            let latest = tx
                .jobs(
                    "WHERE lock_id = $1 AND access_id = $2 ORDER BY job_id DESC LIMIT 1",
                    &[t(lock_id), t(access_id)],
                )
                .await?
                .into_iter()
                .next()
                .map(StoredJob::try_from)
                .transpose()
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            let facts = AccessFacts {
                custom_pin_exists: exists,
                latest_job: latest.as_ref().map(StoredJob::record),
            };
            let plan = match rules::check_delete_pin(lock, dept, access_id, *pin_kind, &facts) {
                Ok(p) => p,
                Err(r) => return Ok(Err(r)),
            };
            if let Some(failed) = plan.closes_recreate_of {
                tx.execute(
                    "UPDATE jobs SET retried_by = 'delete_pin', pin_sealed = NULL, version = version + 1, \
                     updated_at_ms = $1 WHERE job_id = $2",
                    &[i(now_ms), i(failed)],
                )
                .await?;
            }
            let name = pin_name
                .clone()
                .or_else(|| latest.as_ref().and_then(|j| j.view.pin_name.clone()));
            let job = insert_job(
                tx,
                org,
                req,
                NewJob {
                    pin_kind: Some(*pin_kind),
                    pin_name: name.as_deref(),
                    access_id: Some(access_id),
                    ..NewJob::of(lock_id, JobKind::DeletePin)
                },
                now_ms,
            )
            .await?;
            events.push((job.clone(), JobChange::Created));
            Ok(Ok(CommandResult::Job {
                job: Box::new(job.view),
            }))
        }
        Command::SetIntervals {
            lock_id,
            heartbeat_interval_h,
            activity_log_interval_min,
        } => {
            let lock = match lock_of(prepared, lock_id, org) {
                Ok(l) => l,
                Err(r) => return Ok(Err(r)),
            };
            tx.lock_row(lock_id).await?;
            let stored = with_stored_bridge(tx, lock).await?;
            let lock = &stored;
            let (hb, log) = match rules::check_set_intervals(
                lock,
                dept,
                *heartbeat_interval_h,
                *activity_log_interval_min,
            ) {
                Ok(v) => v,
                Err(r) => return Ok(Err(r)),
            };
            let job = insert_job(
                tx,
                org,
                req,
                NewJob {
                    heartbeat_h: Some(hb.hours()),
                    activity_min: Some(log.minutes()),
                    ..NewJob::of(lock_id, JobKind::SetIntervals)
                },
                now_ms,
            )
            .await?;
            events.push((job.clone(), JobChange::Created));
            Ok(Ok(CommandResult::Job {
                job: Box::new(job.view),
            }))
        }
        Command::Lock { lock_id } | Command::Unlock { lock_id } | Command::Sync { lock_id } => {
            let lock = match lock_of(prepared, lock_id, org) {
                Ok(l) => l,
                Err(r) => return Ok(Err(r)),
            };
            tx.lock_row(lock_id).await?;
            let stored = with_stored_bridge(tx, lock).await?;
            let online = match &stored.bridge {
                Some(b) => bridge_online(tx, b.as_str()).await?,
                None => false,
            };
            if let Err(r) = rules::check_bridge_action(&stored, dept, online) {
                return Ok(Err(r));
            }
            let kind = match &req.command {
                Command::Lock { .. } => JobKind::Lock,
                Command::Unlock { .. } => JobKind::Unlock,
                _ => JobKind::Sync,
            };
            let job = insert_job(
                tx,
                org,
                req,
                NewJob {
                    ..NewJob::of(lock_id, kind)
                },
                now_ms,
            )
            .await?;
            events.push((job.clone(), JobChange::Created));
            Ok(Ok(CommandResult::Job {
                job: Box::new(job.view),
            }))
        }
        Command::LinkBridge { lock_id, bridge_id } => {
            let lock = match lock_of(prepared, lock_id, org) {
                Ok(l) => l,
                Err(r) => return Ok(Err(r)),
            };
            tx.lock_row(lock_id).await?;
            tx.lock_bridge_row(bridge_id).await?;
            let current = current_bridge(tx, lock_id).await?;
            let linked = tx
                .scalar::<i64>(
                    "SELECT count(*) FROM locks WHERE bridge_id = $1",
                    &[t(bridge_id)],
                )
                .await?
                .unwrap_or(0)
                .max(0) as usize;
            if let Err(r) = rules::check_link(
                lock,
                dept,
                prepared.bridge.as_deref(),
                bridge_id,
                current.as_deref(),
                linked,
            ) {
                return Ok(Err(r));
            }
            if current.is_none() {
                tx.execute(
                    "UPDATE locks SET bridge_id = $1 WHERE lock_id = $2",
                    &[t(bridge_id), t(lock_id)],
                )
                .await?;
                tx.execute(super::common::BUMP_REGISTRY_VERSION, &[])
                    .await?;
            }
            Ok(Ok(CommandResult::Link {
                lock_id: lock_id.clone(),
                bridge_id: Some(bridge_id.clone()),
            }))
        }
        Command::UnlinkBridge { lock_id } => {
            let lock = match lock_of(prepared, lock_id, org) {
                Ok(l) => l,
                Err(r) => return Ok(Err(r)),
            };
            tx.lock_row(lock_id).await?;
            let current = current_bridge(tx, lock_id).await?;
            if let Err(r) = rules::check_unlink(lock, dept, current.as_deref()) {
                return Ok(Err(r));
            }
            tx.execute(
                "UPDATE locks SET bridge_id = NULL WHERE lock_id = $1",
                &[t(lock_id)],
            )
            .await?;
            tx.execute(super::common::BUMP_REGISTRY_VERSION, &[])
                .await?;
            Ok(Ok(CommandResult::Link {
                lock_id: lock_id.clone(),
                bridge_id: None,
            }))
        }
        Command::DeleteJob { job_id } | Command::RecreateJob { job_id } => {
            let Some(job) = job_by_id(tx, org, *job_id).await? else {
                return Ok(Err(Refusal::UnknownJob(*job_id)));
            };
            tx.lock_row(&job.view.lock_id).await?;
            // Read again under the lock.
            let Some(job) = job_by_id(tx, org, *job_id).await? else {
                return Ok(Err(Refusal::UnknownJob(*job_id)));
            };
            if let Some(lock) = prepared.lock.as_deref() {
                if let Err(r) = rules::check_department(lock, dept) {
                    return Ok(Err(r));
                }
            }
            if job.view.department.as_deref() != dept && dept.is_some() {
                return Ok(Err(Refusal::DepartmentDoesNotHoldLock {
                    department: dept.unwrap_or_default().to_string(),
                    lock: job.view.lock_id.clone(),
                }));
            }
            let record = job.record();
            let deleting = matches!(req.command, Command::DeleteJob { .. });
            let (rule, change) = if deleting {
                (rules::check_delete_job(&record), JobChange::Deleted)
            } else {
                (rules::check_recreate(&record), JobChange::Recreated)
            };
            if let Err(r) = rule {
                return Ok(Err(r));
            }
            if deleting {
                tx.execute(
                    "UPDATE jobs SET state = 'deleted', pin_sealed = NULL, version = version + 1, \
                     updated_at_ms = $1 WHERE job_id = $2",
                    &[i(now_ms), i(*job_id)],
                )
                .await?;
                if job.view.kind == JobKind::CreateCustomPin {
                    tx.execute(
                        "DELETE FROM pins WHERE lock_id = $1 AND job_id = $2",
                        &[t(&job.view.lock_id), i(*job_id)],
                    )
                    .await?;
                }
            } else {
                // A recreated PIN needs its digits: they were erased when
                // the job failed, so a failed Custom PIN keeps them sealed
                // until its second chance is used or closed.
                tx.execute(
                    "UPDATE jobs SET state = 'pending', attempt = attempt + 1, retried_by = 'recreate', \
                     failure_reason = NULL, in_flight = FALSE, issued_at_ms = $1, version = version + 1, \
                     updated_at_ms = $1 WHERE job_id = $2",
                    &[i(now_ms), i(*job_id)],
                )
                .await?;
                if job.view.kind == JobKind::CreateCustomPin {
                    if let (Some(access), Some(ty), Some(start)) =
                        (&job.view.access_id, job.view.pin_type, job.view.pin_start_s)
                    {
                        tx.execute(
                            "INSERT INTO pins (lock_id, access_id, pin_type, start_s, end_s, state, job_id) \
                             VALUES ($1, $2, $3, $4, $5, 'pending', $6) ON CONFLICT (lock_id, access_id) DO NOTHING",
                            &[
                                t(&job.view.lock_id),
                                t(access),
                                t(ty.as_str()),
                                i(start),
                                Bind::OptI64(job.view.pin_end_s.map(|v| v as i64)),
                                i(*job_id),
                            ],
                        )
                        .await?;
                    }
                }
            }
            let Some(after) = job_by_id(tx, org, *job_id).await? else {
                return Ok(Err(Refusal::UnknownJob(*job_id)));
            };
            events.push((after.clone(), change));
            Ok(Ok(CommandResult::Job {
                job: Box::new(after.view),
            }))
        }
        Command::GetJob { job_id } => match job_by_id(tx, org, *job_id).await? {
            Some(j) if dept.is_none() || j.view.department.as_deref() == dept => {
                Ok(Ok(CommandResult::Job {
                    job: Box::new(j.view),
                }))
            }
            _ => Ok(Err(Refusal::UnknownJob(*job_id))),
        },
        Command::ListJobs {
            lock_id,
            state,
            limit,
            before_job_id,
        } => {
            let limit = limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
            let mut sql = String::from("WHERE org = $1 AND job_id < $2");
            let mut binds = vec![t(org), i(before_job_id.unwrap_or(i64::MAX as u64))];
            if let Some(d) = dept {
                binds.push(t(d));
                sql.push_str(&format!(" AND department = ${}", binds.len()));
            }
            if let Some(l) = lock_id {
                binds.push(t(l));
                sql.push_str(&format!(" AND lock_id = ${}", binds.len()));
            }
            match state {
                Some(s) => {
                    binds.push(t(s.as_str()));
                    sql.push_str(&format!(" AND state = ${}", binds.len()));
                }
                None => sql.push_str(" AND state <> 'deleted'"),
            }
            binds.push(i(u64::from(limit) + 1));
            sql.push_str(&format!(" ORDER BY job_id DESC LIMIT ${}", binds.len()));
            let rows = tx.jobs(&sql, &binds).await?;
            let mut jobs = rows
                .into_iter()
                .map(|c| StoredJob::try_from(c).map(|j| j.view))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            let next_before = if jobs.len() > limit as usize {
                jobs.truncate(limit as usize);
                jobs.last().map(|j| j.job_id)
            } else {
                None
            };
            Ok(Ok(CommandResult::Jobs { jobs, next_before }))
        }
        // Dispatched to `store::twofa` by `run_in`.
        _ => Ok(Err(Refusal::BadRequest(format!(
            "internal: {} is a 2FA command",
            req.command.kind()
        )))),
    }
}

/// A pending job on its way to a lock: the stored job and, for a Custom
/// PIN, its sealed digits.
#[derive(Clone, Debug)]
pub struct Deliverable {
    pub job: StoredJob,
    pub pin_sealed: Option<Vec<u8>>,
}

/// A pending job of a lock linked to a bridge, with that bridge.
#[derive(Clone, Debug)]
pub struct BridgeDeliverable {
    pub bridge_id: String,
    pub deliverable: Deliverable,
}

#[derive(sqlx::FromRow, Clone, Debug)]
struct BridgeDeliverableColumns {
    #[sqlx(flatten)]
    job: JobColumns,
    pin_sealed: Option<Vec<u8>>,
    bridge_id: String,
}

/// Every pending job of the locks linked to a bridge, per lock in creation
/// order. A linked lock is one of at most two per bridge, so this reads the
/// few jobs waiting for bridges, found through the pending-jobs index.
pub(super) async fn pending_via_bridges(
    store: &Store,
) -> Result<Vec<BridgeDeliverable>, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "reading jobs waiting for bridges", e);
    let mut tx = Tx::begin_read(store).await.map_err(err)?;
    let rows: Vec<BridgeDeliverableColumns> = tx
        .rows(
            &format!(
                "SELECT {JOB_COLUMNS}, pin_sealed, \
                 (SELECT l.bridge_id FROM locks l WHERE l.lock_id = jobs.lock_id) AS bridge_id FROM jobs \
                 WHERE state = 'pending' AND lock_id IN (SELECT lock_id FROM locks WHERE bridge_id IS NOT NULL) \
                 ORDER BY lock_id, job_id"
            ),
            &[],
        )
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    rows.into_iter()
        .map(|r| {
            Ok(BridgeDeliverable {
                bridge_id: r.bridge_id,
                deliverable: Deliverable {
                    job: StoredJob::try_from(r.job)?,
                    pin_sealed: r.pin_sealed,
                },
            })
        })
        .collect()
}

/// Fail the pending lock, unlock and sync jobs created at or before
/// `created_before_ms` (at most `max`), with `reason`; returns them as
/// failed. One `UPDATE ... RETURNING`, so each expiry is claimed and
/// announced by one instance.
pub(super) async fn expire_immediate(
    store: &Store,
    created_before_ms: u64,
    reason: &str,
    now_ms: u64,
    max: u64,
) -> Result<Vec<(StoredJob, JobChange)>, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "expiring lock, unlock and sync jobs", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    let ids: Vec<i64> = tx
        .rows::<(i64,)>(
            "UPDATE jobs SET state = 'failed', in_flight = FALSE, failure_reason = $1, \
             version = version + 1, updated_at_ms = $2 WHERE job_id IN (\
               SELECT job_id FROM jobs WHERE state = 'pending' AND kind IN ('lock', 'unlock', 'sync') \
               AND created_at_ms <= $3 ORDER BY created_at_ms LIMIT $4) \
             AND state = 'pending' RETURNING job_id",
            &[t(reason), i(now_ms), i(created_before_ms), i(max)],
        )
        .await
        .map_err(err)?
        .into_iter()
        .map(|(id,)| id)
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        for row in tx
            .jobs("WHERE job_id = $1", &[i(id.max(0) as u64)])
            .await
            .map_err(err)?
        {
            out.push((StoredJob::try_from(row)?, JobChange::Failed));
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Reserve `step` more of this gateway's OSCORE sender sequence numbers for
/// `device`: returns the new limit; the numbers `limit - step .. limit` are
/// this caller's alone (one statement raises the stored limit, so two
/// instances never get the same block).
pub(super) async fn reserve_sender_seqs(
    store: &Store,
    device: &str,
    step: u64,
) -> Result<u64, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "reserving OSCORE sender sequence numbers", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    let limit = tx
        .scalar::<i64>(
            "INSERT INTO oscore_sender (device_id, seq_limit) VALUES ($1, $2) \
             ON CONFLICT (device_id) DO UPDATE SET seq_limit = oscore_sender.seq_limit + $2 \
             RETURNING seq_limit",
            &[t(device), i(step)],
        )
        .await
        .map_err(err)?
        .ok_or_else(|| StoreError::Failed {
            engine,
            operation: "reserving OSCORE sender sequence numbers",
            detail: "the reservation returned no limit".into(),
        })?;
    tx.commit().await.map_err(err)?;
    Ok(limit.max(0) as u64)
}

/// Pending jobs counted by how long they have waited since issue
/// (creation, or recreation), for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingAges {
    /// Every pending job.
    pub total: u64,
    /// `younger[i]`: those issued less than the `i`-th age ago.
    pub younger: [u64; 4],
    /// When the oldest pending job was issued, Unix milliseconds.
    pub oldest_issued_ms: Option<u64>,
}

impl PendingAges {
    /// Each age bucket's own count: `[i]` those younger than the `i`-th age
    /// and not younger than the one before; the last, older than every age.
    pub fn by_age(&self) -> [u64; 5] {
        let mut counts = [0; 5];
        let mut below = 0;
        for (i, &n) in self.younger.iter().enumerate() {
            // A job cannot be younger than a smaller age and not a larger
            // one; saturating only guards a corrupt row's negative count.
            counts[i] = n.saturating_sub(below);
            below = n;
        }
        counts[4] = self.total.saturating_sub(below);
        counts
    }
}

/// One statement (one snapshot), over the partial index
/// `jobs_pending_issued` only: `$1..$4` are the cut-off times.
const PENDING_AGES_SQL: &str = "SELECT count(*), min(issued_at_ms), \
     COALESCE(sum(CASE WHEN issued_at_ms > $1 THEN 1 ELSE 0 END), 0), \
     COALESCE(sum(CASE WHEN issued_at_ms > $2 THEN 1 ELSE 0 END), 0), \
     COALESCE(sum(CASE WHEN issued_at_ms > $3 THEN 1 ELSE 0 END), 0), \
     COALESCE(sum(CASE WHEN issued_at_ms > $4 THEN 1 ELSE 0 END), 0) \
     FROM jobs WHERE state = 'pending'";

/// Pending jobs by age at `now_ms`; `ages_ms` the bucket bounds, ascending.
pub(super) async fn pending_ages(
    store: &Store,
    now_ms: u64,
    ages_ms: [u64; 4],
) -> Result<PendingAges, StoreError> {
    use super::{POSTGRES, SQLITE};
    type Row = (i64, Option<i64>, i64, i64, i64, i64);
    let cutoff = |age: u64| now_ms.saturating_sub(age).min(i64::MAX as u64) as i64;
    super::common::on_pool!(store, |pool, engine| {
        let row: Row = sqlx::query_as(PENDING_AGES_SQL)
            .bind(cutoff(ages_ms[0]))
            .bind(cutoff(ages_ms[1]))
            .bind(cutoff(ages_ms[2]))
            .bind(cutoff(ages_ms[3]))
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::from_sqlx(engine, "counting pending jobs by age", e))?;
        let n = |v: i64| v.max(0) as u64;
        Ok(PendingAges {
            total: n(row.0),
            younger: [n(row.2), n(row.3), n(row.4), n(row.5)],
            oldest_issued_ms: row.1.map(n),
        })
    })
}

/// Every pending job of `locks`, per lock in creation order.
pub(super) async fn pending_for(
    store: &Store,
    locks: &[&str],
) -> Result<Vec<Deliverable>, StoreError> {
    if locks.is_empty() {
        return Ok(vec![]);
    }
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "reading pending jobs", e);
    let mut tx = Tx::begin_read(store).await.map_err(err)?;
    let mut out = Vec::new();
    for chunk in locks.chunks(500) {
        let list = (1..=chunk.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let binds: Vec<Bind> = chunk.iter().map(|l| t(*l)).collect();
        let rows: Vec<DeliverableColumns> = tx
            .rows(
                &format!(
                    "SELECT {JOB_COLUMNS}, pin_sealed FROM jobs \
                     WHERE state = 'pending' AND lock_id IN ({list}) \
                     AND kind NOT IN ('lock', 'unlock', 'sync') ORDER BY lock_id, job_id"
                ),
                &binds,
            )
            .await
            .map_err(err)?;
        for r in rows {
            out.push(Deliverable {
                job: StoredJob::try_from(r.job)?,
                pin_sealed: r.pin_sealed,
            });
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Record that `jobs` went out to their locks by `path` at `now_ms`.
pub(super) async fn mark_delivered(
    store: &Store,
    jobs: &[(u64, u8)],
    path: &str,
    now_ms: u64,
) -> Result<Vec<StoredJob>, StoreError> {
    if jobs.is_empty() {
        return Ok(vec![]);
    }
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "recording job deliveries", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    let mut out = Vec::with_capacity(jobs.len());
    for (id, attempt) in jobs {
        let n = tx
            .execute(
                "UPDATE jobs SET deliveries = deliveries + 1, in_flight = TRUE, last_sync_ms = $1, \
                 last_sync_by = $2, version = version + 1, updated_at_ms = $1 \
                 WHERE job_id = $3 AND attempt = $4 AND state = 'pending'",
                &[i(now_ms), t(path), i(*id), i(u64::from(*attempt))],
            )
            .await
            .map_err(err)?;
        if n == 1 {
            let rows = tx.jobs("WHERE job_id = $1", &[i(*id)]).await.map_err(err)?;
            for r in rows {
                out.push(StoredJob::try_from(r)?);
            }
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Apply a lock's job results; returns the jobs that changed (completed or
/// failed). A completed interval change also writes the lock's row and
/// bumps the registry version.
pub(super) async fn apply_results(
    store: &Store,
    lock_id: &str,
    results: &[JobResult],
    now_ms: u64,
) -> Result<Vec<(StoredJob, JobChange)>, StoreError> {
    let engine = store.engine();
    let err = |e| StoreError::from_sqlx(engine, "applying job results", e);
    let mut tx = Tx::begin(store).await.map_err(err)?;
    tx.lock_row(lock_id).await.map_err(err)?;
    let mut events = Vec::new();
    for r in results {
        let rows = tx
            .jobs("WHERE job_id = $1 AND lock_id = $2", &[i(r.id), t(lock_id)])
            .await
            .map_err(err)?;
        let Some(job) = rows.into_iter().next() else {
            crate::metrics::job_result_ignored("unknown_job");
            continue;
        };
        let job = StoredJob::try_from(job)?;
        let effect = rules::apply_result(&job.record(), r.attempt, r.outcome, r.detail.as_deref());
        let change = match effect {
            ResultEffect::Ignored => {
                crate::metrics::job_result_ignored(if job.view.state.is_final() {
                    "already_final"
                } else {
                    "other_attempt"
                });
                continue;
            }
            ResultEffect::Completed => {
                // Guarded: an expiry (which takes no lock row) may have
                // failed an immediate job since it was read.
                let n = tx
                    .execute(
                        "UPDATE jobs SET state = 'completed', in_flight = FALSE, pin_sealed = NULL, \
                         version = version + 1, updated_at_ms = $1 WHERE job_id = $2 AND state = 'pending'",
                        &[i(now_ms), i(r.id)],
                    )
                    .await
                    .map_err(err)?;
                if n == 0 {
                    crate::metrics::job_result_ignored("already_final");
                    continue;
                }
                match job.view.kind {
                    JobKind::CreateCustomPin => {
                        tx.execute(
                            "UPDATE pins SET state = 'active' WHERE lock_id = $1 AND job_id = $2",
                            &[t(lock_id), i(r.id)],
                        )
                        .await
                        .map_err(err)?;
                    }
                    JobKind::DeletePin => {
                        if let Some(a) = &job.view.access_id {
                            tx.execute(
                                "DELETE FROM pins WHERE lock_id = $1 AND access_id = $2",
                                &[t(lock_id), t(a)],
                            )
                            .await
                            .map_err(err)?;
                        }
                    }
                    JobKind::Lock | JobKind::Unlock | JobKind::Sync => {}
                    JobKind::SetIntervals => {
                        if let (Some(h), Some(m)) = (
                            job.view.heartbeat_interval_h,
                            job.view.activity_log_interval_min,
                        ) {
                            tx.execute(
                                "UPDATE locks SET heartbeat_interval_h = $1, activity_log_interval_min = $2 \
                                 WHERE lock_id = $3",
                                &[i(u64::from(h)), i(u64::from(m)), t(lock_id)],
                            )
                            .await
                            .map_err(err)?;
                            tx.execute(super::common::BUMP_REGISTRY_VERSION, &[])
                                .await
                                .map_err(err)?;
                        }
                    }
                }
                JobChange::Completed
            }
            ResultEffect::Failed { reason } => {
                // A failed Custom PIN keeps its sealed digits while it can
                // still be recreated (attempt 1); otherwise they go now.
                let keep = job.view.kind == JobKind::CreateCustomPin
                    && job.view.attempt < rules::MAX_ATTEMPT;
                let sql = if keep {
                    "UPDATE jobs SET state = 'failed', in_flight = FALSE, failure_reason = $1, \
                     version = version + 1, updated_at_ms = $2 WHERE job_id = $3 AND state = 'pending'"
                } else {
                    "UPDATE jobs SET state = 'failed', in_flight = FALSE, failure_reason = $1, pin_sealed = NULL, \
                     version = version + 1, updated_at_ms = $2 WHERE job_id = $3 AND state = 'pending'"
                };
                let n = tx
                    .execute(sql, &[t(reason), i(now_ms), i(r.id)])
                    .await
                    .map_err(err)?;
                if n == 0 {
                    crate::metrics::job_result_ignored("already_final");
                    continue;
                }
                if job.view.kind == JobKind::CreateCustomPin {
                    tx.execute(
                        "DELETE FROM pins WHERE lock_id = $1 AND job_id = $2",
                        &[t(lock_id), i(r.id)],
                    )
                    .await
                    .map_err(err)?;
                }
                JobChange::Failed
            }
        };
        let rows = tx
            .jobs("WHERE job_id = $1", &[i(r.id)])
            .await
            .map_err(err)?;
        for row in rows {
            events.push((StoredJob::try_from(row)?, change));
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::PendingAges;

    #[test]
    fn pending_ages_become_one_count_per_bucket() {
        let p = PendingAges {
            total: 20,
            younger: [2, 5, 5, 11],
            oldest_issued_ms: Some(1),
        };
        assert_eq!(p.by_age(), [2, 3, 0, 6, 9]);
        assert_eq!(PendingAges::default().by_age(), [0; 5]);
    }
}
