//! SQLite: a file under the data directory, opened for durability (WAL,
//! `synchronous=FULL`: a commit survives power loss) and written through one
//! connection.

use super::common::{bridge_statuses, state_columns, BeginWrite, Written};
use super::plan::{lock_state_upsert, BridgePlan, EventValues, HeartbeatValues, LockSet, Plan};
use super::replay::{KeyColumns, ReplayColumns, Verdicts};
use super::{codes, Batch, Committed, StoreError, SQLITE};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

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
        .foreign_keys(true);
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
}
