//! Statements that read the same on both engines (`$n` placeholders,
//! `ON CONFLICT`, row values), written once and expanded for each pool type
//! by [`on_pool!`]: fleet import, the loads at start-up, retention, audit.

use super::codes::{self, int, u32_of};
use super::{keys, BridgeStatus, StoredState};
use super::{Audit, ImportSummary, Purged, Store, StoreError, POSTGRES, SQLITE};
use crate::keys::ServerKey;
use dispatcher::import::ParsedFleet;
use dispatcher::telemetry::LatestState;
use dispatcher::{
    BridgeId, BridgeRecord, Interner, KnownIds, LockId, LockRecord, Registry, ReportPath,
};
use schemas::{ActivityLogInterval, Battery, HeartbeatInterval, LockModel};
use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};
use std::collections::HashMap;

/// Rows per statement when importing a fleet: 1000 locks x 12 columns stays
/// well under SQLite's 32766 bind parameters (and PostgreSQL's 65535), and a
/// million-lock file still needs only a thousand statements.
const IMPORT_ROWS_PER_STATEMENT: usize = 1000;

/// Rows per page when loading the registry or the lock states: bounds the
/// memory of one result set (a fleet can hold millions of locks) while
/// keeping round trips few.
const LOAD_PAGE_ROWS: i64 = 10_000;

/// Rows per retention `DELETE`: a few milliseconds of SQLite's write lock, so
/// a group commit waiting behind it is barely delayed.
const PURGE_ROWS_PER_STATEMENT: u64 = 5_000;

/// Run `$body` with `$pool` bound to the concrete pool and `$engine` to the
/// engine's name. The body is type-checked once per engine, so it can use
/// sqlx's concrete types without generic bounds.
macro_rules! on_pool {
    ($store:expr, |$pool:ident, $engine:ident| $body:expr) => {
        match $store {
            Store::Sqlite($pool) => {
                let $engine = SQLITE;
                $body
            }
            Store::Postgres($pool) => {
                let $engine = POSTGRES;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Every change to the registry or to keys bumps it, so running instances
/// reload (see `registry_version`).
pub(crate) const BUMP_REGISTRY_VERSION: &str = "UPDATE registry_version SET version = version + 1";

/// Begin a transaction that will write.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for sqlx::SqlitePool {
    type Db = Sqlite;
    /// `IMMEDIATE` takes the write lock up front (waiting `busy_timeout` for
    /// it), so a transaction that reads before it writes cannot fail with
    /// `SQLITE_BUSY` when another process (a CLI import) wrote in between.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}

pub(super) async fn ping(store: &Store) -> Result<(), StoreError> {
    on_pool!(store, |pool, engine| {
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop)
            .map_err(|e| StoreError::from_sqlx(engine, "ping", e))
    })
}

pub(super) async fn registry_version(store: &Store) -> Result<u64, StoreError> {
    let v: i64 = on_pool!(store, |pool, engine| {
        sqlx::query_scalar("SELECT version FROM registry_version")
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::from_sqlx(engine, "reading the registry version", e))?
    });
    Ok(v.max(0) as u64)
}

pub(super) async fn import_fleet(
    store: &Store,
    fleet: &ParsedFleet,
    server_key: &ServerKey,
) -> Result<ImportSummary, StoreError> {
    let now = int(now_ms());
    let mut summary = ImportSummary::default();
    // Keys are decided against what is stored, then wrapped and hashed off
    // the async threads (an Argon2 hash per new or rotated key).
    let stored = keys::stored_keys(store, &keys::devices_of(fleet)).await?;
    let plan = {
        let (fleet, server_key) = (fleet.clone(), server_key.clone());
        tokio::task::spawn_blocking(move || keys::plan(&fleet, &stored, &server_key))
            .await
            .map_err(|e| StoreError::Key(format!("preparing device keys failed: {e}")))??
    };
    summary.keys_new = plan.new.len() as u64;
    summary.keys_rotated = plan.rotated.len() as u64;
    on_pool!(store, |pool, engine| {
        let err = |e| StoreError::from_sqlx(engine, "fleet import", e);
        let mut tx = pool.begin_write().await.map_err(err)?;
        // Bridges first: locks reference them.
        for chunk in fleet.bridges.chunks(IMPORT_ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::new("SELECT COUNT(*) FROM bridges WHERE bridge_id IN (");
            let mut ids = q.separated(", ");
            for b in chunk {
                ids.push_bind(b.id.as_str());
            }
            ids.push_unseparated(")");
            let existing: i64 = q
                .build_query_scalar()
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;

            let mut q =
                QueryBuilder::new("INSERT INTO bridges (bridge_id, org, registered_at_ms) ");
            q.push_values(chunk, |mut row, b| {
                row.push_bind(b.id.as_str())
                    .push_bind(b.org.as_str())
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (bridge_id) DO UPDATE SET org = excluded.org");
            q.build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            let existing = existing.max(0) as u64;
            summary.bridges_updated += existing;
            summary.bridges_inserted += chunk.len() as u64 - existing;
        }
        for chunk in fleet.locks.chunks(IMPORT_ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::new("SELECT COUNT(*) FROM locks WHERE lock_id IN (");
            let mut ids = q.separated(", ");
            for l in chunk {
                ids.push_bind(l.record.id.as_str());
            }
            ids.push_unseparated(")");
            let existing: i64 = q
                .build_query_scalar()
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;

            let mut q = QueryBuilder::new(
                "INSERT INTO locks (lock_id, model, imei, bluetooth_id, org, departments, time_zone, \
                 heartbeat_interval_h, activity_log_interval_min, bridge_id, transport, registered_at_ms) ",
            );
            q.push_values(chunk, |mut row, l| {
                row.push_bind(l.record.id.as_str())
                    .push_bind(l.record.model.as_str())
                    .push_bind(l.imei.as_deref())
                    .push_bind(codes::text(&l.bluetooth_id).into_owned())
                    .push_bind(l.record.org.as_str())
                    .push_bind(l.record.departments.join(";"))
                    .push_bind(codes::text(&l.record.time_zone).into_owned())
                    .push_bind(i64::from(l.record.heartbeat_interval.hours()))
                    .push_bind(i64::from(l.record.activity_log_interval.minutes()))
                    .push_bind(l.record.bridge.as_ref().map(|b| b.as_str()))
                    .push_bind(l.record.path.as_str())
                    .push_bind(now);
            });
            q.push(
                " ON CONFLICT (lock_id) DO UPDATE SET model = excluded.model, imei = excluded.imei, \
                 bluetooth_id = excluded.bluetooth_id, org = excluded.org, departments = excluded.departments, \
                 time_zone = excluded.time_zone, heartbeat_interval_h = excluded.heartbeat_interval_h, \
                 activity_log_interval_min = excluded.activity_log_interval_min, \
                 bridge_id = excluded.bridge_id, transport = excluded.transport",
            );
            q.build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            let existing = existing.max(0) as u64;
            summary.locks_updated += existing;
            summary.locks_inserted += chunk.len() as u64 - existing;
        }
        keys::write_key_plan!(tx, &plan, now).await.map_err(err)?;
        sqlx::query(BUMP_REGISTRY_VERSION)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
    });
    Ok(summary)
}

type LockColumns = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    String,
);

pub(super) async fn load_registry(
    store: &Store,
    known: &dyn KnownIds,
) -> Result<Registry, StoreError> {
    let mut bridges = Vec::new();
    let mut locks = Vec::new();
    // Organisation ids, time zones and department lists repeat across the
    // fleet: one shared copy each (see `Interner`). Device ids `known`
    // holds are taken from it, so a reload does not copy them again.
    let mut shared = Interner::default();
    on_pool!(store, |pool, engine| {
        let err = |e| StoreError::from_sqlx(engine, "loading the registry", e);
        let mut after = String::new();
        loop {
            let page: Vec<(String, String)> = sqlx::query_as(
                "SELECT bridge_id, org FROM bridges WHERE bridge_id > $1 ORDER BY bridge_id LIMIT $2",
            )
            .bind(&after)
            .bind(LOAD_PAGE_ROWS)
            .fetch_all(pool)
            .await
            .map_err(err)?;
            let Some(last) = page.last() else { break };
            after = last.0.clone();
            let full = page.len() as i64 == LOAD_PAGE_ROWS;
            bridges.extend(page.into_iter().map(|(id, org)| BridgeRecord {
                id: bridge_id(&id, known, &mut shared),
                org: shared.org(&org),
            }));
            if !full {
                break;
            }
        }
        let mut after = String::new();
        loop {
            let page: Vec<LockColumns> = sqlx::query_as(
                "SELECT lock_id, model, org, departments, time_zone, heartbeat_interval_h, \
                 activity_log_interval_min, bridge_id, transport FROM locks WHERE lock_id > $1 ORDER BY lock_id LIMIT $2",
            )
            .bind(&after)
            .bind(LOAD_PAGE_ROWS)
            .fetch_all(pool)
            .await
            .map_err(err)?;
            let Some(last) = page.last() else { break };
            after = last.0.clone();
            let full = page.len() as i64 == LOAD_PAGE_ROWS;
            for cols in page {
                locks.push(lock_record(cols, known, &mut shared)?);
            }
            if !full {
                break;
            }
        }
    });
    Ok(Registry::new(locks, bridges))
}

/// Bridge `id`, shared with `known` or, within one load, between the bridge's
/// record and its locks' records.
fn bridge_id(id: &str, known: &dyn KnownIds, shared: &mut Interner) -> BridgeId {
    known
        .bridge_id(id)
        .unwrap_or_else(|| BridgeId(shared.get(id)))
}

fn lock_record(
    c: LockColumns,
    known: &dyn KnownIds,
    shared: &mut Interner,
) -> Result<LockRecord, StoreError> {
    let (id, model, org, departments, time_zone, hb, log, bridge, transport) = c;
    let bad = |detail: String| StoreError::corrupt("locks", &id, detail);
    let model: LockModel = model
        .parse()
        .map_err(|e: schemas::units::UnitError| bad(e.to_string()))?;
    let hb = heartbeat_interval(hb).map_err(bad)?;
    let log = u16::try_from(log)
        .ok()
        .and_then(|m| ActivityLogInterval::from_minutes(m).ok())
        .ok_or_else(|| {
            bad(format!(
                "activity_log_interval_min {log} is not an allowed interval"
            ))
        })?;
    let path: ReportPath = codes::parse(&transport).map_err(|e| bad(format!("transport: {e}")))?;
    Ok(LockRecord {
        id: known.lock_id(&id).unwrap_or_else(|| LockId::new(&id)),
        model,
        org: shared.org(&org),
        departments: shared.departments(
            &departments
                .split(';')
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect::<Vec<_>>(),
        ),
        time_zone: shared.get(&time_zone),
        heartbeat_interval: hb,
        activity_log_interval: log,
        bridge: bridge.as_deref().map(|b| bridge_id(b, known, shared)),
        path,
    })
}

fn heartbeat_interval(hours: i64) -> Result<HeartbeatInterval, String> {
    u16::try_from(hours)
        .ok()
        .and_then(|h| HeartbeatInterval::from_hours(h).ok())
        .ok_or_else(|| format!("heartbeat_interval_h {hours} is not 1, 2, 5, 12 or 24"))
}

pub(crate) type StateColumns = (
    String,
    i64,
    String,
    String,
    Option<i64>,
    Option<String>,
    i64,
    i64,
);

/// `SELECT` of the columns [`latest_state`] reads, up to `FROM lock_state`.
/// A macro so that `concat!` builds whole `&'static str` statements.
macro_rules! state_columns {
    () => {
        "SELECT lock_id, seq, lock_state, door_state, battery_percent, battery_level, \
         received_at_ms, heartbeat_interval_h FROM lock_state"
    };
}
pub(crate) use state_columns;

/// What an engine's commit wrote, before the transaction commits: the
/// stored states it read are parsed by [`Written::finish`], so a corrupt row
/// fails the batch while it can still be rolled back.
pub(crate) struct Written {
    pub heartbeats_inserted: Vec<bool>,
    pub events_inserted: Vec<bool>,
    pub bridge_changes: Vec<Option<super::Change>>,
    /// The `lock_state` rows of the batch's locks as they were before it.
    pub states_before: Vec<StateColumns>,
    /// Per protected report: refused, or accepted (`None`).
    pub protections_refused: Vec<Option<super::ProtectionRefusal>>,
}

impl Written {
    pub fn finish(self) -> Result<super::Committed, StoreError> {
        let locks_before = self
            .states_before
            .into_iter()
            .map(|cols| latest_state(cols).map(|(id, s)| (id.to_string(), s.state)))
            .collect::<Result<_, _>>()?;
        Ok(super::Committed {
            heartbeats_inserted: self.heartbeats_inserted,
            events_inserted: self.events_inserted,
            bridge_changes: self.bridge_changes,
            locks_before,
            protections_refused: self.protections_refused,
        })
    }
}

/// Bridge rows `(bridge_id, online, status_changed_at_ms)` as statuses;
/// a bridge that never reported has none.
pub(crate) fn bridge_statuses(
    rows: Vec<(String, Option<bool>, Option<i64>)>,
) -> HashMap<String, BridgeStatus> {
    rows.into_iter()
        .filter_map(|(id, online, at)| {
            // Set together with `online`; a negative time cannot be ours.
            let changed_at_ms = at.and_then(|a| u64::try_from(a).ok()).unwrap_or(0);
            Some((
                id,
                BridgeStatus {
                    online: online?,
                    changed_at_ms,
                },
            ))
        })
        .collect()
}

pub(super) async fn count_online(
    store: &Store,
    now_ms: u64,
) -> Result<super::OnlineCounts, StoreError> {
    on_pool!(store, |pool, engine| {
        let err = |e| StoreError::from_sqlx(engine, "counting the devices online", e);
        let locks: i64 =
            sqlx::query_scalar("SELECT count(*) FROM lock_state WHERE online_until_ms > $1")
                .bind(int(now_ms))
                .fetch_one(pool)
                .await
                .map_err(err)?;
        let bridges: i64 = sqlx::query_scalar("SELECT count(*) FROM bridges WHERE online")
            .fetch_one(pool)
            .await
            .map_err(err)?;
        Ok(super::OnlineCounts {
            locks: locks.max(0) as u64,
            bridges: bridges.max(0) as u64,
        })
    })
}

/// Locks with a low battery: `schemas::Battery::is_low` in SQL. The
/// predicate is word for word the one of the partial index
/// `lock_state_battery_low` (migration 0008), so that counting reads the
/// index only; a test holds the two and `LOW_BATTERY_PERCENT` together.
pub(crate) const COUNT_LOW_BATTERY: &str =
    "SELECT count(*) FROM lock_state WHERE battery_percent < 30 OR battery_level = 'low'";

/// Locks whose newest heartbeat reports a low battery.
pub(super) async fn count_low_battery(store: &Store) -> Result<u64, StoreError> {
    on_pool!(store, |pool, engine| {
        let n: i64 = sqlx::query_scalar(COUNT_LOW_BATTERY)
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::from_sqlx(engine, "counting locks with a low battery", e))?;
        Ok(n.max(0) as u64)
    })
}

/// A lock whose overdue state an instance just claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverdueClaim {
    pub lock_id: String,
    /// The lock's deadline (its due heartbeat plus the presence grace).
    pub online_until_ms: u64,
    /// When its newest stored heartbeat arrived.
    pub last_heard_ms: u64,
    /// When it was claimed overdue (for a return: when it had been).
    pub overdue_since_ms: u64,
}

#[derive(sqlx::FromRow)]
struct OverdueColumns {
    lock_id: String,
    online_until_ms: i64,
    received_at_ms: i64,
    overdue_since_ms: Option<i64>,
}

impl From<OverdueColumns> for OverdueClaim {
    fn from(c: OverdueColumns) -> Self {
        OverdueClaim {
            lock_id: c.lock_id,
            online_until_ms: c.online_until_ms.max(0) as u64,
            last_heard_ms: c.received_at_ms.max(0) as u64,
            overdue_since_ms: c.overdue_since_ms.unwrap_or(0).max(0) as u64,
        }
    }
}

/// Claim up to `max` locks whose deadline is at or before `deadline_ms`
/// and that are not overdue yet: they are overdue from `now_ms`. The
/// outer `WHERE` is re-checked under each row's lock, so two instances
/// never claim the same lock.
pub(super) async fn claim_overdue(
    store: &Store,
    deadline_ms: u64,
    now_ms: u64,
    max: u64,
) -> Result<Vec<OverdueClaim>, StoreError> {
    on_pool!(store, |pool, engine| {
        let rows: Vec<OverdueColumns> = sqlx::query_as(
            "UPDATE lock_state SET overdue_since_ms = $1 \
             WHERE lock_id IN (SELECT lock_id FROM lock_state \
                 WHERE online_until_ms <= $2 AND overdue_since_ms IS NULL \
                 ORDER BY online_until_ms LIMIT $3) \
             AND online_until_ms <= $2 AND overdue_since_ms IS NULL \
             RETURNING lock_id, online_until_ms, received_at_ms, overdue_since_ms",
        )
        .bind(int(now_ms))
        .bind(int(deadline_ms))
        .bind(int(max))
        .fetch_all(pool)
        .await
        .map_err(|e| StoreError::from_sqlx(engine, "claiming overdue locks", e))?;
        Ok(rows.into_iter().map(OverdueClaim::from).collect())
    })
}

/// Claim the returns of overdue locks whose deadline a newer heartbeat
/// moved past `deadline_ms`; each return is claimed once.
pub(super) async fn claim_returned(
    store: &Store,
    deadline_ms: u64,
) -> Result<Vec<OverdueClaim>, StoreError> {
    on_pool!(store, |pool, engine| {
        // RETURNING sees the row after the update; the old overdue time
        // is read in the same statement through a subquery.
        let rows: Vec<OverdueColumns> = sqlx::query_as(
            "UPDATE lock_state SET overdue_since_ms = NULL \
             WHERE overdue_since_ms IS NOT NULL AND online_until_ms > $1 \
             RETURNING lock_id, online_until_ms, received_at_ms, \
                 CAST(NULL AS BIGINT) AS overdue_since_ms",
        )
        .bind(int(deadline_ms))
        .fetch_all(pool)
        .await
        .map_err(|e| StoreError::from_sqlx(engine, "claiming returned locks", e))?;
        Ok(rows.into_iter().map(OverdueClaim::from).collect())
    })
}

/// Locks overdue now (for the gauge).
pub(super) async fn count_overdue(store: &Store) -> Result<u64, StoreError> {
    on_pool!(store, |pool, engine| {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lock_state WHERE overdue_since_ms IS NOT NULL",
        )
        .fetch_one(pool)
        .await
        .map_err(|e| StoreError::from_sqlx(engine, "counting overdue locks", e))?;
        Ok(n.max(0) as u64)
    })
}

pub(super) async fn load_latest(store: &Store) -> Result<HashMap<LockId, StoredState>, StoreError> {
    let mut latest = HashMap::new();
    on_pool!(store, |pool, engine| {
        let err = |e| StoreError::from_sqlx(engine, "loading the lock states", e);
        let mut after = String::new();
        loop {
            let page: Vec<StateColumns> = sqlx::query_as(concat!(
                state_columns!(),
                " WHERE lock_id > $1 ORDER BY lock_id LIMIT $2"
            ))
            .bind(&after)
            .bind(LOAD_PAGE_ROWS)
            .fetch_all(pool)
            .await
            .map_err(err)?;
            let Some(last) = page.last() else { break };
            after = last.0.clone();
            let full = page.len() as i64 == LOAD_PAGE_ROWS;
            for cols in page {
                let (id, state) = latest_state(cols)?;
                latest.insert(id, state);
            }
            if !full {
                break;
            }
        }
    });
    Ok(latest)
}

fn latest_state(c: StateColumns) -> Result<(LockId, StoredState), StoreError> {
    let (id, seq, lock_state, door_state, percent, level, received_at_ms, interval_h) = c;
    let bad = |detail: String| StoreError::corrupt("lock_state", &id, detail);
    let battery = match (percent, level) {
        (Some(p), None) => {
            Battery::Percent(u8::try_from(p).map_err(|_| bad(format!("battery_percent {p}")))?)
        }
        (None, Some(l)) => {
            Battery::Level(codes::parse(&l).map_err(|e| bad(format!("battery_level: {e}")))?)
        }
        _ => {
            return Err(bad(
                "exactly one of battery_percent and battery_level must be set".into(),
            ))
        }
    };
    let state = LatestState {
        seq: u32_of(seq).map_err(|e| bad(format!("seq: {e}")))?,
        lock_state: codes::parse(&lock_state).map_err(|e| bad(format!("lock_state: {e}")))?,
        door_state: codes::parse(&door_state).map_err(|e| bad(format!("door_state: {e}")))?,
        battery_low: battery.is_low(),
    };
    let heartbeat_interval = heartbeat_interval(interval_h).map_err(bad)?;
    let received_at_ms = u64::try_from(received_at_ms)
        .map_err(|_| bad(format!("received_at_ms {received_at_ms}")))?;
    Ok((
        LockId::new(&id),
        StoredState {
            state,
            received_at_ms,
            heartbeat_interval,
        },
    ))
}

pub(super) async fn load_bridge_status(
    store: &Store,
) -> Result<HashMap<BridgeId, BridgeStatus>, StoreError> {
    let mut status = HashMap::new();
    on_pool!(store, |pool, engine| {
        let err = |e| StoreError::from_sqlx(engine, "loading the bridge status", e);
        let mut after = String::new();
        loop {
            let page: Vec<(String, bool, Option<i64>)> = sqlx::query_as(
                "SELECT bridge_id, online, status_changed_at_ms FROM bridges WHERE online IS NOT NULL AND bridge_id > $1 \
                 ORDER BY bridge_id LIMIT $2",
            )
            .bind(&after)
            .bind(LOAD_PAGE_ROWS)
            .fetch_all(pool)
            .await
            .map_err(err)?;
            let Some(last) = page.last() else { break };
            after = last.0.clone();
            let full = page.len() as i64 == LOAD_PAGE_ROWS;
            status.extend(page.into_iter().map(|(id, online, at)| {
                // Set together with `online`; a negative time cannot be ours.
                let changed_at_ms = at.and_then(|a| u64::try_from(a).ok()).unwrap_or(0);
                (
                    BridgeId::new(&id),
                    BridgeStatus {
                        online,
                        changed_at_ms,
                    },
                )
            }));
            if !full {
                break;
            }
        }
    });
    Ok(status)
}

/// Retention statements, one per table: delete at most `$2` rows received
/// before `$1`, found through the table's time index.
const PURGE: [(&str, &str); 5] = [
    (
        "heartbeats",
        "DELETE FROM heartbeats WHERE (lock_id, seq) IN \
         (SELECT lock_id, seq FROM heartbeats WHERE received_at_ms < $1 LIMIT $2)",
    ),
    (
        "activity_events",
        "DELETE FROM activity_events WHERE (lock_id, event_seq) IN \
         (SELECT lock_id, event_seq FROM activity_events WHERE received_at_ms < $1 LIMIT $2)",
    ),
    (
        "bridge_connectivity",
        "DELETE FROM bridge_connectivity WHERE id IN \
         (SELECT id FROM bridge_connectivity WHERE at_ms < $1 LIMIT $2)",
    ),
    (
        "tfa_log",
        "DELETE FROM tfa_log WHERE seq IN (SELECT seq FROM tfa_log WHERE at_ms < $1 LIMIT $2)",
    ),
    (
        // A challenge is over long before: its OTP worked for minutes.
        "tfa_challenges",
        "DELETE FROM tfa_challenges WHERE challenge_id IN \
         (SELECT challenge_id FROM tfa_challenges WHERE expires_at_ms < $1 LIMIT $2)",
    ),
];

pub(super) async fn purge_before(
    store: &Store,
    cutoff_ms: u64,
    max_rows: u64,
) -> Result<Purged, StoreError> {
    let cutoff = int(cutoff_ms);
    let mut deleted = [0u64; 5];
    for ((_, sql), total) in PURGE.iter().zip(&mut deleted) {
        // Each DELETE is its own short transaction (autocommit).
        while *total < max_rows {
            let limit = (max_rows - *total).min(PURGE_ROWS_PER_STATEMENT);
            let n = on_pool!(store, |pool, engine| {
                sqlx::query(*sql)
                    .bind(cutoff)
                    .bind(int(limit))
                    .execute(pool)
                    .await
                    .map_err(|e| StoreError::from_sqlx(engine, "retention", e))?
                    .rows_affected()
            });
            *total += n;
            if n < limit {
                break;
            }
        }
    }
    Ok(Purged {
        heartbeats: deleted[0],
        activity_events: deleted[1],
        bridge_connectivity: deleted[2],
        twofa_log: deleted[3],
        twofa_challenges: deleted[4],
    })
}

/// (lock id, seq) rows as read.
type Keys = Vec<(String, i64)>;

pub(super) async fn audit(store: &Store) -> Result<Audit, StoreError> {
    let (hb, ev, changes): (Keys, Keys, i64) = on_pool!(store, |pool, engine| {
        let err = |e| StoreError::from_sqlx(engine, "audit", e);
        let hb = sqlx::query_as("SELECT lock_id, seq FROM heartbeats ORDER BY lock_id, seq")
            .fetch_all(pool)
            .await
            .map_err(err)?;
        let ev = sqlx::query_as(
            "SELECT lock_id, event_seq FROM activity_events ORDER BY lock_id, event_seq",
        )
        .fetch_all(pool)
        .await
        .map_err(err)?;
        let changes = sqlx::query_scalar("SELECT COUNT(*) FROM bridge_connectivity")
            .fetch_one(pool)
            .await
            .map_err(err)?;
        (hb, ev, changes)
    });
    let keys = |table: &'static str, rows: Keys| {
        rows.into_iter()
            .map(|(id, seq)| {
                let seq = u32_of(seq).map_err(|e| StoreError::corrupt(table, &id, e))?;
                Ok((id, seq))
            })
            .collect::<Result<Vec<_>, StoreError>>()
    };
    Ok(Audit {
        heartbeats: keys("heartbeats", hb)?,
        events: keys("activity_events", ev)?,
        bridge_changes: changes.max(0) as u64,
    })
}

/// Wall clock, Unix milliseconds: the registration time of imported devices.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_low_battery_count_is_the_schemas_rule_and_the_indexes_predicate() {
        let predicate = format!(
            "battery_percent < {} OR battery_level = 'low'",
            schemas::units::LOW_BATTERY_PERCENT
        );
        assert!(super::COUNT_LOW_BATTERY.ends_with(&format!("WHERE {predicate}")));
        for migration in [
            include_str!("../../migrations/sqlite/0008_gauges.sql"),
            include_str!("../../migrations/postgres/0008_gauges.sql"),
        ] {
            assert!(
                migration.contains(&format!("ON lock_state (lock_id) WHERE {predicate};")),
                "{migration}"
            );
        }
    }
}
