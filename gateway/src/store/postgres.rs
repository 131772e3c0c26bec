//! PostgreSQL: shared by every instance of the gateway. A commit sends one
//! statement per table whatever the batch size: each column travels as one
//! array parameter and `UNNEST` turns the arrays back into rows, so the
//! statement text is fixed (prepared once per connection) and no bind limit
//! applies.

use super::common::{bridge_statuses, state_columns, Written};
use super::plan::{lock_state_upsert, BridgePlan, EventValues, HeartbeatValues, LockSet, Plan};
use super::replay::{KeyColumns, ReplayColumns, Verdicts};
use super::{codes, Batch, Committed, StoreError, POSTGRES};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

/// Connections per instance: the ingest writer, retention, registry
/// polling, `/readyz` and an import at once, with room to spare. Several
/// instances share the server's `max_connections` (100 by default).
const MAX_CONNECTIONS: u32 = 8;

/// How long opening waits for the server to answer, so that a wrong host
/// fails start-up with a clear message instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a statement waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

const INSERT_HEARTBEATS: &str = "INSERT INTO heartbeats (lock_id, seq, device_time, received_at_ms, transport, \
     bridge_id, battery_percent, battery_level, signal_db, signal_quality, carrier, channel_earfcn, channel_pci, \
     channel_cell_id, channel_band, lock_state, door_state, firmware, heartbeat_interval_h, activity_log_interval_min) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], \
     $7::bigint[], $8::text[], $9::bigint[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], \
     $15::bigint[], $16::text[], $17::text[], $18::text[], $19::bigint[], $20::bigint[]) \
     ON CONFLICT (lock_id, seq) DO NOTHING RETURNING lock_id, seq";

const INSERT_EVENTS: &str = "INSERT INTO activity_events (lock_id, event_seq, batch_seq, time, kind, actor, \
     received_at_ms, transport, bridge_id) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], \
     $7::bigint[], $8::text[], $9::text[]) \
     ON CONFLICT (lock_id, event_seq) DO NOTHING RETURNING lock_id, event_seq";

const UPSERT_LOCK_STATE: &str = concat!(
    "INSERT INTO lock_state (lock_id, seq, device_time, received_at_ms, \
     battery_percent, battery_level, signal_db, signal_quality, carrier, lock_state, door_state, firmware, \
     heartbeat_interval_h, activity_log_interval_min, online_until_ms) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], \
     $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[], $14::bigint[], \
     $15::bigint[])",
    lock_state_upsert!()
);

const INSERT_CONNECTIVITY: &str =
    "INSERT INTO bridge_connectivity (bridge_id, at_ms, online, cause) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::boolean[], $4::text[])";

/// Each changed bridge's status after the batch (decided with its row locked).
const UPDATE_BRIDGES: &str =
    "UPDATE bridges AS b SET online = u.online, status_changed_at_ms = u.at_ms \
     FROM UNNEST($1::text[], $2::boolean[], $3::bigint[]) AS u (bridge_id, online, at_ms) \
     WHERE b.bridge_id = u.bridge_id";

pub(super) async fn open(url: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::BadUrl {
            url: super::error::redact(url),
            detail: e.to_string(),
        })?
        .application_name("lockfleet-gateway");
    let address = match options.get_socket() {
        Some(dir) => format!("{} (Unix socket)", dir.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let fail = |detail: String| StoreError::ConnectPostgres {
        address: address.clone(),
        detail,
    };
    // One direct connection first: the pool retries refused connections
    // until its timeout and then reports only "timed out".
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Err(_) => {
            return Err(fail(format!(
                "no answer within {} s: check the host and port, and that a firewall lets the connection through",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(fail(connect_hint(&options, e))),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await
        .map_err(|e| fail(connect_hint(&options, e)))?;
    if let Err(e) = sqlx::migrate!("./migrations/postgres").run(&pool).await {
        pool.close().await;
        return Err(StoreError::migration(POSTGRES, e));
    }
    Ok(pool)
}

/// The driver's error with what to do about the common causes.
fn connect_hint(options: &PgConnectOptions, e: sqlx::Error) -> String {
    let user = options.get_username();
    let db = options.get_database().unwrap_or(user);
    let code = match &e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    match (code.as_deref(), &e) {
        (Some("3D000"), _) => format!("{e}: create the database first (createdb -U {user} {db})"),
        (Some("28P01" | "28000"), _) => {
            format!("{e}: check the user and password in the URL, and pg_hba.conf")
        }
        (_, sqlx::Error::Io(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("{e}: is PostgreSQL running and listening on that address?")
        }
        _ => e.to_string(),
    }
}

/// Locks the registry rows of the batch's locks, in id order, for the
/// transaction: another instance committing reports of the same lock waits,
/// then reads what this one stored. Registry rows exist before a lock's first
/// report (unlike its `lock_state` row), and row locks cost no shared memory.
const LOCK_LOCKS: &str =
    "SELECT lock_id FROM locks WHERE lock_id = ANY($1) ORDER BY lock_id FOR NO KEY UPDATE";
/// Locks the batch's bridges, in id order, and reads their status.
const LOCK_BRIDGES: &str = "SELECT bridge_id, online, status_changed_at_ms FROM bridges \
     WHERE bridge_id = ANY($1) ORDER BY bridge_id FOR NO KEY UPDATE";
/// The stored state of the batch's locks (their rows are locked above).
const READ_LOCK_STATE: &str = concat!(state_columns!(), " WHERE lock_id = ANY($1)");
/// The current key of the protecting locks ($1) and bridges ($2), read after
/// their registry rows are locked: a rotation or deregistration (which locks
/// the same row) either committed before and is seen, or waits until after.
const READ_KEYS: &str = "SELECT device_kind, device_id, generation, nonce FROM device_keys \
     WHERE (device_kind = 'lock' AND device_id = ANY($1)) \
     OR (device_kind = 'bridge' AND device_id = ANY($2))";
/// Their stored replay windows.
const READ_WINDOWS: &str =
    "SELECT device_kind, device_id, generation, highest, window_bits FROM oscore_replay \
     WHERE (device_kind = 'lock' AND device_id = ANY($1)) \
     OR (device_kind = 'bridge' AND device_id = ANY($2))";
/// The advanced windows, written with the reports they let through.
const UPSERT_WINDOWS: &str =
    "INSERT INTO oscore_replay (device_kind, device_id, generation, highest, window_bits) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) \
     ON CONFLICT (device_kind, device_id) DO UPDATE SET generation = excluded.generation, \
     highest = excluded.highest, window_bits = excluded.window_bits";

/// The group commit finds every row it reads or locks by key, a batch of
/// keys at a time (`= ANY($1)`), in tables that grow with the fleet. With
/// a few hundred keys and tens of thousands of rows PostgreSQL's cost model
/// prefers a sequential scan, more so before autovacuum has analysed a
/// fast-growing table, and each such scan reads every row (dead versions
/// too) once per commit: `loadtest ingest --engine postgres` at 4 000
/// heartbeats/s acknowledged 1 215/s with those scans and all 4 000 with
/// this setting (BENCHMARKS.md). Only this transaction is affected; a table without the
/// index would still be scanned.
const KEYED_LOOKUPS: &str = "SET LOCAL enable_seqscan = off";

/// Begins the group commit's transaction with [`KEYED_LOOKUPS`].
async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(KEYED_LOOKUPS).execute(&mut *tx).await?;
    Ok(tx)
}

pub(super) async fn commit(pool: &PgPool, batch: &Batch) -> Result<Committed, StoreError> {
    let err = |e| StoreError::from_sqlx(POSTGRES, "group commit", e);
    let mut tx = begin(pool).await.map_err(err)?;
    let written = match write(&mut tx, batch).await {
        Ok(written) => written,
        Err(e) => {
            let _ = tx.rollback().await;
            return Err(err(e));
        }
    };
    // A stored state we cannot read would make every event of its lock
    // wrong: refuse the batch (nothing committed) and say which row.
    match written.finish() {
        Ok(committed) => {
            tx.commit().await.map_err(err)?;
            Ok(committed)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Collect one column of `rows` into an array parameter.
fn col<'a, T, U>(rows: &'a [T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

async fn write(
    tx: &mut Transaction<'static, Postgres>,
    batch: &Batch,
) -> Result<Written, sqlx::Error> {
    let locks = LockSet::of(batch);

    // Bridges, then locks: the order a fleet import writes them in, so an
    // import and a commit never wait for each other in a cycle. Protecting
    // devices are among them, so their keys and windows hold still below.
    let mut bridges_before = HashMap::new();
    if !locks.bridge_ids.is_empty() {
        let rows: Vec<(String, Option<bool>, Option<i64>)> = sqlx::query_as(LOCK_BRIDGES)
            .bind(&locks.bridge_ids)
            .fetch_all(&mut **tx)
            .await?;
        bridges_before = bridge_statuses(rows);
    }
    if !locks.lock_ids.is_empty() {
        sqlx::query(LOCK_LOCKS)
            .bind(&locks.lock_ids)
            .fetch_all(&mut **tx)
            .await?;
    }
    let (mut keys, mut windows): (Vec<KeyColumns>, Vec<ReplayColumns>) = (vec![], vec![]);
    if !batch.protections.is_empty() {
        keys = sqlx::query_as(READ_KEYS)
            .bind(&locks.protecting_locks)
            .bind(&locks.protecting_bridges)
            .fetch_all(&mut **tx)
            .await?;
        windows = sqlx::query_as(READ_WINDOWS)
            .bind(&locks.protecting_locks)
            .bind(&locks.protecting_bridges)
            .fetch_all(&mut **tx)
            .await?;
    }
    let verdicts = Verdicts::decide(&batch.protections, &keys, &windows);
    let refused = verdicts.refused_rows(batch);
    let plan = Plan::new(batch, &refused);

    let mut states_before = Vec::new();
    if !plan.heartbeat_lock_ids.is_empty() {
        states_before = sqlx::query_as(READ_LOCK_STATE)
            .bind(&plan.heartbeat_lock_ids)
            .fetch_all(&mut **tx)
            .await?;
    }
    let bridges = BridgePlan::new(batch, &bridges_before, &refused);

    let mut inserted_hb = HashSet::new();
    if !plan.heartbeats.is_empty() {
        let v: Vec<HeartbeatValues> = plan
            .heartbeats
            .iter()
            .map(|r| HeartbeatValues::of(r))
            .collect();
        let keys: Vec<(String, i64)> = sqlx::query_as(INSERT_HEARTBEATS)
            .bind(col(&v, |v| v.lock_id))
            .bind(col(&v, |v| v.seq))
            .bind(col(&v, |v| v.device_time))
            .bind(col(&v, |v| v.received_at_ms))
            .bind(col(&v, |v| v.transport))
            .bind(col(&v, |v| v.bridge_id))
            .bind(col(&v, |v| v.battery_percent))
            .bind(col(&v, |v| v.battery_level))
            .bind(col(&v, |v| v.signal_db))
            .bind(col(&v, |v| v.signal_quality))
            .bind(col(&v, |v| v.carrier.as_ref()))
            .bind(col(&v, |v| v.channel_earfcn))
            .bind(col(&v, |v| v.channel_pci))
            .bind(col(&v, |v| v.channel_cell_id))
            .bind(col(&v, |v| v.channel_band))
            .bind(col(&v, |v| v.lock_state))
            .bind(col(&v, |v| v.door_state))
            .bind(col(&v, |v| v.firmware.as_ref()))
            .bind(col(&v, |v| v.heartbeat_interval_h))
            .bind(col(&v, |v| v.activity_log_interval_min))
            .fetch_all(&mut **tx)
            .await?;
        inserted_hb.extend(keys);
    }

    let newest = plan.newest_inserted(&inserted_hb);
    if !newest.is_empty() {
        let v: Vec<HeartbeatValues> = newest.iter().map(|r| HeartbeatValues::of(r)).collect();
        sqlx::query(UPSERT_LOCK_STATE)
            .bind(col(&v, |v| v.lock_id))
            .bind(col(&v, |v| v.seq))
            .bind(col(&v, |v| v.device_time))
            .bind(col(&v, |v| v.received_at_ms))
            .bind(col(&v, |v| v.battery_percent))
            .bind(col(&v, |v| v.battery_level))
            .bind(col(&v, |v| v.signal_db))
            .bind(col(&v, |v| v.signal_quality))
            .bind(col(&v, |v| v.carrier.as_ref()))
            .bind(col(&v, |v| v.lock_state))
            .bind(col(&v, |v| v.door_state))
            .bind(col(&v, |v| v.firmware.as_ref()))
            .bind(col(&v, |v| v.heartbeat_interval_h))
            .bind(col(&v, |v| v.activity_log_interval_min))
            .bind(col(&v, |v| v.online_until_ms))
            .execute(&mut **tx)
            .await?;
    }

    let mut inserted_ev = HashSet::new();
    if !plan.events.is_empty() {
        let v: Vec<EventValues> = plan.events.iter().map(|r| EventValues::of(r)).collect();
        let keys: Vec<(String, i64)> = sqlx::query_as(INSERT_EVENTS)
            .bind(col(&v, |v| v.lock_id))
            .bind(col(&v, |v| v.event_seq))
            .bind(col(&v, |v| v.batch_seq))
            .bind(col(&v, |v| v.time))
            .bind(col(&v, |v| v.kind))
            .bind(col(&v, |v| v.actor.as_deref()))
            .bind(col(&v, |v| v.received_at_ms))
            .bind(col(&v, |v| v.transport))
            .bind(col(&v, |v| v.bridge_id))
            .fetch_all(&mut **tx)
            .await?;
        inserted_ev.extend(keys);
    }

    if !bridges.history.is_empty() {
        let c = &bridges.history;
        sqlx::query(INSERT_CONNECTIVITY)
            .bind(col(c, |c| c.bridge_id.as_str()))
            .bind(col(c, |c| codes::int(c.at_ms)))
            .bind(col(c, |c| c.online))
            .bind(col(c, |c| codes::cause(c.cause)))
            .execute(&mut **tx)
            .await?;
        let a = &bridges.after;
        sqlx::query(UPDATE_BRIDGES)
            .bind(col(a, |(id, _)| id.as_str()))
            .bind(col(a, |(_, s)| s.online))
            .bind(col(a, |(_, s)| codes::int(s.changed_at_ms)))
            .execute(&mut **tx)
            .await?;
    }

    if !verdicts.windows.is_empty() {
        let w = &verdicts.windows;
        sqlx::query(UPSERT_WINDOWS)
            .bind(col(w, |w| w.kind))
            .bind(col(w, |w| w.id))
            .bind(col(w, |w| w.generation))
            .bind(col(w, |w| w.highest))
            .bind(col(w, |w| w.window_bits))
            .execute(&mut **tx)
            .await?;
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
    use crate::store::testing::TestDb;
    use sqlx::{AssertSqlSafe, Row};

    /// Locks in the table and in one batch: a fleet the size `loadtest
    /// ingest` uses, and a batch the size its saturated commits reach.
    const ROWS: usize = 20_000;
    const BATCH: usize = 180;

    /// The plan PostgreSQL picks for `statement` with `ids` as its locks
    /// (and no bridges, for the statements that take both), inside `tx`.
    async fn plan(
        tx: &mut Transaction<'static, Postgres>,
        statement: &str,
        ids: &[String],
    ) -> String {
        let explain = format!("EXPLAIN {statement}");
        let mut q = sqlx::query(AssertSqlSafe(explain)).bind(ids);
        if statement.contains("$2") {
            q = q.bind(Vec::<String>::new());
        }
        let rows = q.fetch_all(&mut **tx).await.expect("explain");
        rows.iter()
            .map(|r| r.get::<String, _>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn the_group_commit_reads_its_rows_by_key_in_tables_the_planner_would_scan() {
        let db = TestDb::postgres().await;
        let pool = open(&db.url).await.expect("open");
        // Tens of thousands of rows that no ANALYZE has seen yet: the
        // tables of a fleet's first minutes.
        for fill in [
            "INSERT INTO lock_state (lock_id, seq, device_time, received_at_ms, signal_db, \
             signal_quality, carrier, lock_state, door_state, firmware, heartbeat_interval_h, \
             activity_log_interval_min) SELECT 'L' || i, 1, 0, 0, -80, 'good', 'c', 'locked', \
             'closed', '1.0', 1, 60 FROM generate_series(1, $1) AS i",
            "INSERT INTO oscore_replay (device_kind, device_id, generation, highest, window_bits) \
             SELECT 'lock', 'L' || i, 1, 1, 0 FROM generate_series(1, $1) AS i",
        ] {
            sqlx::query(fill)
                .bind(ROWS as i32)
                .execute(&pool)
                .await
                .expect("fill");
        }
        let ids: Vec<String> = (0..BATCH)
            .map(|i| format!("L{}", 1 + i * (ROWS / BATCH)))
            .collect();
        let statements = [READ_LOCK_STATE, READ_WINDOWS];

        // Without the setting the planner scans: the case this guards.
        let mut plain = pool.begin().await.expect("begin");
        for statement in statements {
            let p = plan(&mut plain, statement, &ids).await;
            assert!(
                p.contains("Seq Scan"),
                "expected the planner to scan without the setting:\n{p}"
            );
        }
        plain.rollback().await.expect("rollback");

        let mut tx = begin(&pool).await.expect("begin");
        for statement in statements {
            let p = plan(&mut tx, statement, &ids).await;
            assert!(
                !p.contains("Seq Scan"),
                "the group commit scans a table:\n{p}"
            );
            assert!(p.contains("_pkey"), "not by its primary key:\n{p}");
        }
        tx.rollback().await.expect("rollback");
        pool.close().await;
        db.cleanup().await;
    }
}
