//! SQLite: a file under the data directory, opened for durability (WAL,
//! `synchronous=FULL`: a commit survives power loss) and written through one
//! connection.

use super::common::{bridge_statuses, state_columns, BeginWrite, Written};
use super::plan::{lock_state_upsert, BridgePlan, EventValues, HeartbeatValues, LockSet, Plan};
use super::replay::{KeyColumns, ReplayColumns, Verdicts};
use super::{codes, Batch, Committed, StoreError, SQLITE};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{
    ConnectOptions, Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool, Transaction,
};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Connections in the pool. SQLite has one writer at a time anyway; one
/// connection serialises our statements in FIFO order inside the process
/// (no busy-waiting between our own commits, retention and imports), and the
/// ingest writer is the only hot user. Readers are start-up loads, `/readyz`
/// and audits.
const MAX_CONNECTIONS: u32 = 1;

/// How long a statement waits for another process's write lock (a CLI
/// import next to a running server) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's default limit on bind parameters per statement
/// (`SQLITE_MAX_VARIABLE_NUMBER` since 3.32). Multi-row inserts are chunked
/// to stay under it: 1638 heartbeats (20 columns) or 3640 events (9) per
/// statement, so a writer batch of 512 needs one statement per table.
const MAX_BIND_PARAMS: usize = 32_766;

const INSERT_HEARTBEATS: &str = "INSERT INTO heartbeats (lock_id, seq, device_time, received_at_ms, transport, \
     bridge_id, battery_percent, battery_level, signal_db, signal_quality, carrier, channel_earfcn, channel_pci, \
     channel_cell_id, channel_band, lock_state, door_state, firmware, heartbeat_interval_h, \
     activity_log_interval_min) ";
const INSERT_LOCK_STATE: &str = "INSERT INTO lock_state (lock_id, seq, device_time, received_at_ms, \
     battery_percent, battery_level, signal_db, signal_quality, carrier, lock_state, door_state, firmware, \
     heartbeat_interval_h, activity_log_interval_min, online_until_ms) ";
const INSERT_EVENTS: &str =
    "INSERT INTO activity_events (lock_id, event_seq, batch_seq, time, kind, actor, \
     received_at_ms, transport, bridge_id) ";
const INSERT_CONNECTIVITY: &str =
    "INSERT INTO bridge_connectivity (bridge_id, at_ms, online, cause) ";

/// Rows per multi-row statement for an `INSERT INTO t (c1, c2, ..) ` prefix:
/// the column count is read from the statement itself so the two cannot
/// drift apart.
const fn rows_per_statement(insert: &str) -> usize {
    let bytes = insert.as_bytes();
    let mut columns = 1;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b',' {
            columns += 1;
        }
        i += 1;
    }
    MAX_BIND_PARAMS / columns
}

/// The current key of protecting locks / bridges (`read_in` appends the ids).
const READ_LOCK_KEYS: &str = "SELECT device_kind, device_id, generation, nonce FROM device_keys \
     WHERE device_kind = 'lock' AND device_id IN ";
const READ_BRIDGE_KEYS: &str = "SELECT device_kind, device_id, generation, nonce FROM device_keys \
     WHERE device_kind = 'bridge' AND device_id IN ";
/// The stored replay windows of protecting locks / bridges.
const READ_LOCK_WINDOWS: &str =
    "SELECT device_kind, device_id, generation, highest, window_bits FROM oscore_replay \
     WHERE device_kind = 'lock' AND device_id IN ";
const READ_BRIDGE_WINDOWS: &str =
    "SELECT device_kind, device_id, generation, highest, window_bits FROM oscore_replay \
     WHERE device_kind = 'bridge' AND device_id IN ";
const UPSERT_WINDOWS: &str =
    "INSERT INTO oscore_replay (device_kind, device_id, generation, highest, window_bits) ";
const UPSERT_WINDOWS_TAIL: &str = " ON CONFLICT (device_kind, device_id) DO UPDATE SET \
     generation = excluded.generation, highest = excluded.highest, window_bits = excluded.window_bits";

/// The page cache of the connection, in KiB (a negative `cache_size`):
/// 16 MiB holds every page a full group commit dirties.
const PAGE_CACHE_KIB: &str = "-16384";

/// Rows the connection's thread sends back before waiting for them to be
/// read.
const ROW_BUFFER: usize = 1024;

/// How long the checkpointer waits once the WAL is all copied back.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(100);
/// How long it waits when commits arrived while it copied: it catches up
/// with the writer in small steps, so the writer can restart the WAL.
const CHECKPOINT_BUSY: Duration = Duration::from_millis(2);
/// WAL size (pages, 16 MiB at 4 KiB) past which the checkpointer holds the
/// writer back until the WAL is copied and restarted: a bound on the WAL's
/// disk use for a writer that outruns the passive checkpoints.
const WAL_RESTART_PAGES: i64 = 4_096;
/// Turns the writer's autocheckpoint off while the checkpointer runs, and
/// back to SQLite's default (1 000 pages) when it stops.
const AUTOCHECKPOINT_OFF: &str = "PRAGMA wal_autocheckpoint = 0";
const AUTOCHECKPOINT_DEFAULT: &str = "PRAGMA wal_autocheckpoint = 1000";

/// A changed bridge's status after the batch.
const BRIDGE_STATUS_UPDATE: &str =
    "UPDATE bridges SET online = $1, status_changed_at_ms = $2 WHERE bridge_id = $3";

pub(super) async fn open(url: &str) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
        url: url.to_string(),
        detail: e.to_string(),
    })?;
    let path = options.get_filename().to_path_buf();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::CreateDir {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // A group commit dirties a few pages per report (each report's lock
        // lands on its own leaf): with SQLite's default 2 MiB cache a batch
        // of 512 spills dirty pages to the WAL before it commits.
        .pragma("cache_size", PAGE_CACHE_KIB)
        // The statement journal of a multi-row upsert stays in memory
        // instead of a temporary file.
        .pragma("temp_store", "memory")
        // Rows come back from the connection's thread in batches this large
        // (the group commit reads and RETURNs hundreds), not 50 at a time.
        .row_buffer_size(ROW_BUFFER);
    let pool = SqlitePoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        // Keep the one connection: reopening costs a schema parse, and an
        // in-memory database would vanish with it.
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::OpenSqlite {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    if let Err(e) = sqlx::migrate!("./migrations/sqlite").run(&pool).await {
        pool.close().await;
        return Err(StoreError::migration(SQLITE, e));
    }
    Ok(pool)
}

/// Move WAL checkpoints off the writer, for a serving gateway.
///
/// By default SQLite checkpoints inside the commit that takes the WAL past
/// 1 000 pages: under load, nearly every group commit copies the pages of
/// the commits before it back into the database file, and fsyncs it, before
/// it can answer its reports. Instead a connection of its own copies them
/// (`PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the writer) every
/// [`CHECKPOINT_IDLE`], sooner while it is catching up, and the writer's
/// autocheckpoint is turned off. A page rewritten by several commits
/// between two checkpoints is copied once.
///
/// Should the WAL still pass [`WAL_RESTART_PAGES`], a `RESTART` checkpoint
/// holds the writer back until it is copied and restarted. When `stop` is
/// cancelled the checkpointer closes its connection and gives the writer
/// back its autocheckpoint. Without a second connection (it could not be
/// opened) the writer keeps checkpointing as before, and this says why.
pub(super) async fn spawn_checkpointer(
    pool: &SqlitePool,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, StoreError> {
    let options = pool.connect_options();
    let path = options.get_filename().to_path_buf();
    let open_err = |e: sqlx::Error| StoreError::OpenSqlite {
        path: path.clone(),
        detail: format!("opening the checkpoint connection: {e}"),
    };
    let mut conn = options.as_ref().clone().connect().await.map_err(open_err)?;
    if let Err(e) = sqlx::query(AUTOCHECKPOINT_OFF).execute(pool).await {
        let _ = conn.close().await;
        return Err(StoreError::from_sqlx(
            SQLITE,
            "turning off the writer's autocheckpoint",
            e,
        ));
    }
    let pool = pool.clone();
    Ok(tokio::spawn(async move {
        loop {
            let next = match checkpoint(&mut conn).await {
                Ok(wal) => Next::after(wal),
                Err(e) => {
                    tracing::warn!(error = %e, "SQLite WAL checkpoint failed; will retry");
                    Next::Idle
                }
            };
            if let Next::Restart { pages } = next {
                // Routine under sustained load (the writer never pauses for
                // a passive checkpoint to catch up completely), so not a
                // warning: `lockfleet_sqlite_wal_pages` shows it.
                tracing::debug!(pages, "the SQLite WAL outgrew the passive checkpoints; holding the writer back until it is copied and restarted");
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&mut conn)
                    .await
                {
                    tracing::warn!(error = %e, "SQLite WAL restart failed; will retry");
                }
            }
            let pause = next.pause();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        let _ = conn.close().await;
        if let Err(e) = sqlx::query(AUTOCHECKPOINT_DEFAULT).execute(&pool).await {
            tracing::warn!(error = %e, "cannot give the SQLite writer back its autocheckpoint; closing the database checkpoints the WAL anyway");
        }
    }))
}

/// What one passive checkpoint left: the WAL's size and how much of it is
/// copied into the database file, in pages.
#[derive(Clone, Copy, Debug)]
struct Wal {
    pages: i64,
    copied: i64,
}

/// What the checkpointer does after a passive checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The WAL is past [`WAL_RESTART_PAGES`]: copy it all and restart it,
    /// holding the writer back, then check again soon.
    Restart { pages: i64 },
    /// Pages are left to copy: check again soon.
    CatchUp,
    /// Everything is copied (or the checkpoint failed): wait.
    Idle,
}

impl Next {
    fn after(wal: Wal) -> Next {
        if wal.pages > WAL_RESTART_PAGES {
            Next::Restart { pages: wal.pages }
        } else if wal.copied < wal.pages {
            Next::CatchUp
        } else {
            Next::Idle
        }
    }

    fn pause(self) -> Duration {
        match self {
            Next::Restart { .. } | Next::CatchUp => CHECKPOINT_BUSY,
            Next::Idle => CHECKPOINT_IDLE,
        }
    }
}

async fn checkpoint(conn: &mut SqliteConnection) -> Result<Wal, sqlx::Error> {
    let started = Instant::now();
    let (_busy, pages, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    crate::metrics::sqlite_checkpoint(started.elapsed(), pages.max(0) as u64);
    Ok(Wal { pages, copied })
}

pub(super) async fn commit(pool: &SqlitePool, batch: &Batch) -> Result<Committed, StoreError> {
    let err = |e| StoreError::from_sqlx(SQLITE, "group commit", e);
    // IMMEDIATE: the write lock is ours before we read the stored state, so
    // nobody changes it between our read and our write.
    let mut tx = pool.begin_write().await.map_err(err)?;
    let finished = match write(&mut tx, batch).await {
        Ok(written) => written.finish(),
        Err(e) => Err(err(e)),
    };
    match finished {
        Ok(committed) => {
            tx.commit().await.map_err(err)?;
            Ok(committed)
        }
        Err(e) => {
            // Dropping would roll back too; doing it here returns a clean
            // connection before the error is reported.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Rows of `select` (ending in `WHERE column IN `) for `ids`, chunked under
/// the bind limit.
async fn read_in<T>(
    tx: &mut Transaction<'static, Sqlite>,
    select: &str,
    ids: &[&str],
) -> Result<Vec<T>, sqlx::Error>
where
    T: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
{
    let mut rows = Vec::new();
    for chunk in ids.chunks(MAX_BIND_PARAMS) {
        let mut q = QueryBuilder::<Sqlite>::new(select);
        q.push("(");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        rows.extend(
            q.build_query_as::<T>()
                .persistent(false)
                .fetch_all(&mut **tx)
                .await?,
        );
    }
    Ok(rows)
}

async fn write(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &Batch,
) -> Result<Written, sqlx::Error> {
    // BEGIN IMMEDIATE holds the database's write lock: nothing read below
    // (bridge statuses, keys, replay windows, lock states) can change
    // before this transaction commits.
    let locks = LockSet::of(batch);
    let bridges_before = bridge_statuses(
        read_in(
            tx,
            "SELECT bridge_id, online, status_changed_at_ms FROM bridges WHERE bridge_id IN ",
            &locks.bridge_ids,
        )
        .await?,
    );
    let (mut keys, mut windows): (Vec<KeyColumns>, Vec<ReplayColumns>) = (vec![], vec![]);
    for (keys_of, windows_of, ids) in [
        (READ_LOCK_KEYS, READ_LOCK_WINDOWS, &locks.protecting_locks),
        (
            READ_BRIDGE_KEYS,
            READ_BRIDGE_WINDOWS,
            &locks.protecting_bridges,
        ),
    ] {
        keys.extend(read_in::<KeyColumns>(tx, keys_of, ids).await?);
        windows.extend(read_in::<ReplayColumns>(tx, windows_of, ids).await?);
    }
    let verdicts = Verdicts::decide(&batch.protections, &keys, &windows);
    let refused = verdicts.refused_rows(batch);
    let plan = Plan::new(batch, &refused);

    let states_before = read_in(
        tx,
        concat!(state_columns!(), " WHERE lock_id IN "),
        &plan.heartbeat_lock_ids,
    )
    .await?;
    let bridges = BridgePlan::new(batch, &bridges_before, &refused);

    let mut inserted_hb = HashSet::new();
    for chunk in plan
        .heartbeats
        .chunks(rows_per_statement(INSERT_HEARTBEATS))
    {
        let mut q = QueryBuilder::<Sqlite>::new(INSERT_HEARTBEATS);
        q.push_values(chunk, |mut row, r| {
            let v = HeartbeatValues::of(r);
            row.push_bind(v.lock_id)
                .push_bind(v.seq)
                .push_bind(v.device_time)
                .push_bind(v.received_at_ms)
                .push_bind(v.transport)
                .push_bind(v.bridge_id)
                .push_bind(v.battery_percent)
                .push_bind(v.battery_level)
                .push_bind(v.signal_db)
                .push_bind(v.signal_quality)
                .push_bind(v.carrier.into_owned())
                .push_bind(v.channel_earfcn)
                .push_bind(v.channel_pci)
                .push_bind(v.channel_cell_id)
                .push_bind(v.channel_band)
                .push_bind(v.lock_state)
                .push_bind(v.door_state)
                .push_bind(v.firmware.into_owned())
                .push_bind(v.heartbeat_interval_h)
                .push_bind(v.activity_log_interval_min);
        });
        q.push(" ON CONFLICT (lock_id, seq) DO NOTHING RETURNING lock_id, seq");
        // Not cached: each batch size is a different statement text.
        let keys: Vec<(String, i64)> = q
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut **tx)
            .await?;
        inserted_hb.extend(keys);
    }

    let newest = plan.newest_inserted(&inserted_hb);
    for chunk in newest.chunks(rows_per_statement(INSERT_LOCK_STATE)) {
        let mut q = QueryBuilder::<Sqlite>::new(INSERT_LOCK_STATE);
        q.push_values(chunk, |mut row, r| {
            let v = HeartbeatValues::of(r);
            row.push_bind(v.lock_id)
                .push_bind(v.seq)
                .push_bind(v.device_time)
                .push_bind(v.received_at_ms)
                .push_bind(v.battery_percent)
                .push_bind(v.battery_level)
                .push_bind(v.signal_db)
                .push_bind(v.signal_quality)
                .push_bind(v.carrier.into_owned())
                .push_bind(v.lock_state)
                .push_bind(v.door_state)
                .push_bind(v.firmware.into_owned())
                .push_bind(v.heartbeat_interval_h)
                .push_bind(v.activity_log_interval_min)
                .push_bind(v.online_until_ms);
        });
        q.push(lock_state_upsert!());
        q.build().persistent(false).execute(&mut **tx).await?;
    }

    let mut inserted_ev = HashSet::new();
    for chunk in plan.events.chunks(rows_per_statement(INSERT_EVENTS)) {
        let mut q = QueryBuilder::<Sqlite>::new(INSERT_EVENTS);
        q.push_values(chunk, |mut row, r| {
            let v = EventValues::of(r);
            row.push_bind(v.lock_id)
                .push_bind(v.event_seq)
                .push_bind(v.batch_seq)
                .push_bind(v.time)
                .push_bind(v.kind)
                .push_bind(v.actor.map(|a| a.into_owned()))
                .push_bind(v.received_at_ms)
                .push_bind(v.transport)
                .push_bind(v.bridge_id);
        });
        q.push(" ON CONFLICT (lock_id, event_seq) DO NOTHING RETURNING lock_id, event_seq");
        let keys: Vec<(String, i64)> = q
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut **tx)
            .await?;
        inserted_ev.extend(keys);
    }

    for chunk in bridges
        .history
        .chunks(rows_per_statement(INSERT_CONNECTIVITY))
    {
        let mut q = QueryBuilder::<Sqlite>::new(INSERT_CONNECTIVITY);
        q.push_values(chunk, |mut row, c| {
            row.push_bind(c.bridge_id.as_str())
                .push_bind(codes::int(c.at_ms))
                .push_bind(c.online)
                .push_bind(codes::cause(c.cause));
        });
        q.build().persistent(false).execute(&mut **tx).await?;
    }
    for (id, status) in &bridges.after {
        sqlx::query(BRIDGE_STATUS_UPDATE)
            .bind(status.online)
            .bind(codes::int(status.changed_at_ms))
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
    }

    for chunk in verdicts.windows.chunks(rows_per_statement(UPSERT_WINDOWS)) {
        let mut q = QueryBuilder::<Sqlite>::new(UPSERT_WINDOWS);
        q.push_values(chunk, |mut row, w| {
            row.push_bind(w.kind)
                .push_bind(w.id)
                .push_bind(w.generation)
                .push_bind(w.highest)
                .push_bind(w.window_bits);
        });
        q.push(UPSERT_WINDOWS_TAIL);
        q.build().persistent(false).execute(&mut **tx).await?;
    }

    Ok(Written {
        heartbeats_inserted: plan.heartbeat_flags(batch, &inserted_hb),
        events_inserted: plan.event_flags(batch, &inserted_ev),
        bridge_changes: bridges.changes,
        states_before,
        protections_refused: verdicts.refusals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_statement_counts_the_columns() {
        assert_eq!(rows_per_statement(INSERT_HEARTBEATS), MAX_BIND_PARAMS / 20);
        assert_eq!(rows_per_statement(INSERT_EVENTS), MAX_BIND_PARAMS / 9);
        assert_eq!(rows_per_statement(INSERT_LOCK_STATE), MAX_BIND_PARAMS / 15);
        assert_eq!(rows_per_statement(INSERT_CONNECTIVITY), MAX_BIND_PARAMS / 4);
        assert_eq!(rows_per_statement(UPSERT_WINDOWS), MAX_BIND_PARAMS / 5);
    }

    #[test]
    fn the_checkpointer_restarts_a_long_wal_catches_up_and_then_waits() {
        let wal = |pages, copied| Next::after(Wal { pages, copied });
        let over = WAL_RESTART_PAGES + 1;
        // Past the bound: restart, whatever is copied already.
        assert_eq!(wal(over, 0), Next::Restart { pages: over });
        assert_eq!(wal(over, over), Next::Restart { pages: over });
        // Within it: catch up while pages are left, else wait.
        assert_eq!(wal(WAL_RESTART_PAGES, 10), Next::CatchUp);
        assert_eq!(wal(WAL_RESTART_PAGES, WAL_RESTART_PAGES), Next::Idle);
        assert_eq!(wal(0, 0), Next::Idle);
        // SQLite answers -1 and -1 when the database is not in WAL mode.
        assert_eq!(wal(-1, -1), Next::Idle);
        assert_eq!(Next::Restart { pages: over }.pause(), CHECKPOINT_BUSY);
        assert_eq!(Next::CatchUp.pause(), CHECKPOINT_BUSY);
        assert_eq!(Next::Idle.pause(), CHECKPOINT_IDLE);
    }
}
