//! A fresh, empty database for every run, so no run sees another's rows:
//! a SQLite file in a new temporary directory, or a new PostgreSQL database
//! `loadtest_<pid>_<n>` created through an admin URL and dropped afterwards.
//! The caller calls [`FreshDatabase::remove`] on every path, errors included.

use crate::error::{LoadtestError, Result};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The admin URL used when `--postgres-url` is not given: the CI's local
/// server (trust authentication, database `test`).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long connecting to PostgreSQL may take before we say it is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A storage engine the gateway supports.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database that exists for one run.
#[derive(Debug)]
pub enum FreshDatabase {
    Sqlite {
        dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl FreshDatabase {
    /// Creates database number `n` of this process for `engine`. The SQLite
    /// directory is made under `scratch`.
    pub async fn create(
        engine: Engine,
        scratch: &Path,
        postgres_admin_url: &str,
        n: u32,
    ) -> Result<FreshDatabase> {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("sqlite_{n}_"))
                    .tempdir_in(scratch)
                    .map_err(|e| LoadtestError::io("create a SQLite directory", e))?;
                let url = format!("sqlite://{}", dir.path().join("lockfleet.db").display());
                Ok(FreshDatabase::Sqlite { dir, url })
            }
            Engine::Postgres => {
                let name = format!("loadtest_{}_{n}", std::process::id());
                let mut admin = connect(postgres_admin_url).await?;
                // The name is ours (letters, digits, underscores): safe to splice.
                let result = execute(
                    &mut admin,
                    postgres_admin_url,
                    format!("CREATE DATABASE \"{name}\""),
                )
                .await;
                let _ = admin.close().await;
                result?;
                Ok(FreshDatabase::Postgres {
                    url: with_database(postgres_admin_url, &name),
                    admin_url: postgres_admin_url.to_string(),
                    name,
                })
            }
        }
    }

    /// What the gateway's `--database-url` gets.
    pub fn url(&self) -> &str {
        match self {
            FreshDatabase::Sqlite { url, .. } | FreshDatabase::Postgres { url, .. } => url,
        }
    }

    /// Deletes the database after a run that used it, whatever the run's
    /// `result`: the run's error comes first (a failed removal beside it is
    /// printed on stderr), then the removal's.
    pub async fn remove_after<T>(self, result: Result<T>) -> Result<T> {
        let removed = self.remove().await;
        match (result, removed) {
            (Ok(r), Ok(())) => Ok(r),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), removed) => {
                if let Err(r) = removed {
                    eprintln!("  (also failed to remove the run's database: {r})");
                }
                Err(e)
            }
        }
    }

    /// Deletes the database (PostgreSQL: `DROP DATABASE ... WITH (FORCE)`,
    /// so a gateway that did not exit cannot keep it alive).
    pub async fn remove(self) -> Result<()> {
        match self {
            FreshDatabase::Sqlite { dir, .. } => dir
                .close()
                .map_err(|e| LoadtestError::io("remove the SQLite directory", e)),
            FreshDatabase::Postgres {
                admin_url, name, ..
            } => {
                let mut admin = connect(&admin_url).await?;
                let result = execute(
                    &mut admin,
                    &admin_url,
                    format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                )
                .await;
                let _ = admin.close().await;
                result
            }
        }
    }
}

/// The server's version string, for the report.
pub async fn postgres_version(admin_url: &str) -> Result<String> {
    let mut admin = connect(admin_url).await?;
    let version: Result<String> = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut admin)
        .await
        .map_err(|e| LoadtestError::Postgres {
            url: redact(admin_url),
            statement: "SHOW server_version".into(),
            detail: e.to_string(),
        });
    let _ = admin.close().await;
    version
}

async fn connect(admin_url: &str) -> Result<PgConnection> {
    let unreachable = |detail: String| LoadtestError::PostgresUnreachable {
        url: redact(admin_url),
        detail,
    };
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(admin_url))
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))
}

async fn execute(conn: &mut PgConnection, admin_url: &str, statement: String) -> Result<()> {
    sqlx::query(AssertSqlSafe(statement.clone()))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| LoadtestError::Postgres {
            url: redact(admin_url),
            statement,
            detail: e.to_string(),
        })
}

/// `url` with its database (the path) replaced by `name`, query kept.
pub fn with_database(url: &str, name: &str) -> String {
    let start = url.find("://").map_or(0, |s| s + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = base[start..].find('/').map_or(base.len(), |p| start + p);
    format!("{}/{name}{query}", &base[..authority_end])
}

/// `url` without a password, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|s| s + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |p| scheme_end + p);
    let authority = &url[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!(
                "{}{user}:***@{host}{}",
                &url[..scheme_end],
                &url[authority_end..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// True for a URL the gateway reads as PostgreSQL.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Gives every lock of the database at `url` one pending job, as the
/// dashboard's `delete_pin` of an AlgoPIN would (no sealed PIN to open, and
/// its completion touches neither the lock's row nor the registry), in one
/// statement. Returns how many were created. Run after `devices import` and
/// before `serve`, so the gateway finds them as it would after a busy day.
pub async fn seed_pending_jobs(url: &str) -> Result<u64> {
    const SEED: &str = "INSERT INTO jobs (org, department, lock_id, kind, state, attempt, created_at_ms, \
         created_by, description, pin_name, access_id, pin_kind, issued_at_ms, version, updated_at_ms) \
         SELECT org, NULL, lock_id, 'delete_pin', 'pending', 1, $1, 'loadtest', 'Delete AlgoPIN', NULL, \
         'algo-' || lock_id, 'algo', $1, 1, $1 FROM locks";
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let failed = |e: sqlx::Error| LoadtestError::Database {
        url: redact(url),
        statement: SEED.to_string(),
        detail: e.to_string(),
    };
    if is_postgres_url(url) {
        let mut conn = PgConnection::connect(url).await.map_err(failed)?;
        let done = sqlx::query(SEED)
            .bind(now_ms)
            .execute(&mut conn)
            .await
            .map_err(failed)?;
        let _ = conn.close().await;
        Ok(done.rows_affected())
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.map_err(failed)?;
        let done = sqlx::query(SEED)
            .bind(now_ms)
            .execute(&mut conn)
            .await
            .map_err(failed)?;
        let _ = conn.close().await;
        Ok(done.rows_affected())
    }
}

/// Every row `sql` selects from the database at `url`, on either engine:
/// the after-run checks. One connection, closed afterwards.
pub async fn fetch_all<T>(url: &str, sql: &'static str) -> Result<Vec<T>>
where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
{
    let failed = |e: sqlx::Error| LoadtestError::Database {
        url: redact(url),
        statement: sql.to_string(),
        detail: e.to_string(),
    };
    if is_postgres_url(url) {
        let mut conn = PgConnection::connect(url).await.map_err(failed)?;
        let rows = sqlx::query_as(sql)
            .fetch_all(&mut conn)
            .await
            .map_err(failed)?;
        let _ = conn.close().await;
        Ok(rows)
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.map_err(failed)?;
        let rows = sqlx::query_as(sql)
            .fetch_all(&mut conn)
            .await
            .map_err(failed)?;
        let _ = conn.close().await;
        Ok(rows)
    }
}

/// The one `BIGINT` (or `INTEGER`) value `sql` selects from the database
/// at `url`: the after-run checks (`SELECT count(*) ...`).
pub async fn scalar(url: &str, sql: &'static str) -> Result<i64> {
    match fetch_all::<(i64,)>(url, sql).await?.first() {
        Some((value,)) => Ok(*value),
        None => Err(LoadtestError::Database {
            url: redact(url),
            statement: sql.to_string(),
            detail: sqlx::Error::RowNotFound.to_string(),
        }),
    }
}

/// Every value of the one `BIGINT` column `sql` selects from the database at
/// `url` (the after-run checks: `SELECT job_id FROM jobs`).
pub async fn column_i64(url: &str, sql: &'static str) -> Result<Vec<i64>> {
    Ok(fetch_all::<(i64,)>(url, sql)
        .await?
        .into_iter()
        .map(|(value,)| value)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "loadtest_1_2"),
            "postgres://postgres@127.0.0.1:5432/loadtest_1_2"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://h:5432", "x"),
            "postgresql://h:5432/x"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://a/b"), "sqlite://a/b");
        assert!(is_postgres_url("postgresql://h/db") && !is_postgres_url("sqlite://x"));
    }
}
