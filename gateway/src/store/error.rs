//! What can go wrong in the store, said so that an operator knows what to do
//! and the ingest writer knows whether a retry can help.

use std::path::PathBuf;

/// Why a store operation failed. `Clone` (the driver's errors are kept as
/// text) so one failure can answer every report of a group commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {url:?} is not supported: use sqlite://path/to/file.db or postgres://user@host:5432/database")]
    UnsupportedUrl { url: String },
    #[error("database URL {url:?} is malformed: {detail}")]
    BadUrl { url: String, detail: String },
    #[error("cannot create directory {} for the SQLite database: {detail}: create it yourself or choose another path", path.display())]
    CreateDir { path: PathBuf, detail: String },
    #[error("cannot open the SQLite database {}: {detail}: check that the path is a writable file", path.display())]
    OpenSqlite { path: PathBuf, detail: String },
    #[error("cannot connect to PostgreSQL at {address}: {detail}")]
    ConnectPostgres { address: String, detail: String },
    #[error("migrating the {engine} database failed: {detail}")]
    Migration {
        engine: &'static str,
        detail: String,
    },
    /// A connection problem, a timeout or a lock held by someone else: the
    /// same call may well succeed a moment later.
    #[error(
        "{operation} failed: the {engine} database is unavailable or busy ({detail}); retry later"
    )]
    Unavailable {
        engine: &'static str,
        operation: &'static str,
        detail: String,
    },
    /// The database refused the statement; retrying the same call fails again.
    #[error("{operation} failed on {engine}: {detail}")]
    Failed {
        engine: &'static str,
        operation: &'static str,
        detail: String,
    },
    /// A stored value this version cannot read (written by another program or
    /// a newer gateway).
    #[error("table {table}, row {key:?}: {detail}; correct or delete that row")]
    Corrupt {
        table: &'static str,
        key: String,
        detail: String,
    },
    /// A new device must come with its pairing secret (the caller generates
    /// and hands out the missing ones before importing).
    #[error("{device} is new but has no master secret: give one in the fleet file, or import with --secrets-out to have one generated")]
    MissingSecret { device: String },
    /// A stored key that the server key cannot open, or another server key.
    #[error("{0}")]
    Key(String),
    #[error("{device} is not registered: check the id with `gateway devices list`")]
    NotRegistered { device: String },
}

impl StoreError {
    /// True when retrying the same call later may succeed (connection lost,
    /// database busy or restarting, pool exhausted, serialization failure).
    /// A failed [`Store::commit`](super::Store::commit) stored nothing, so
    /// the reports can be resubmitted as they are.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Stable label for a `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::UnsupportedUrl { .. } | StoreError::BadUrl { .. } => "bad_url",
            StoreError::CreateDir { .. } | StoreError::OpenSqlite { .. } => "open",
            StoreError::ConnectPostgres { .. } => "connect",
            StoreError::Migration { .. } => "migration",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Failed { .. } => "failed",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::MissingSecret { .. } => "missing_secret",
            StoreError::Key(_) => "key",
            StoreError::NotRegistered { .. } => "not_registered",
        }
    }

    /// Classify a driver error raised while doing `operation`.
    pub(crate) fn from_sqlx(engine: &'static str, operation: &'static str, e: sqlx::Error) -> Self {
        let detail = e.to_string();
        if transient(engine, &e) {
            StoreError::Unavailable {
                engine,
                operation,
                detail,
            }
        } else {
            StoreError::Failed {
                engine,
                operation,
                detail,
            }
        }
    }

    pub(crate) fn corrupt(table: &'static str, key: &str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            table,
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn migration(engine: &'static str, e: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError as M;
        let detail = match &e {
            M::VersionMissing(v) => format!("the database has migration {v}, which this gateway does not know: it was written by a newer version; run that version or restore a backup"),
            M::VersionMismatch(v) => format!("migration {v} differs from the one applied to this database: do not edit applied migrations, add a new one"),
            M::Dirty(v) => format!("migration {v} was partially applied earlier: repair the schema by hand and delete its row from _sqlx_migrations"),
            _ => format!("{e}: check that the database user may create tables"),
        };
        StoreError::Migration { engine, detail }
    }
}

/// True for errors that say nothing about the statement itself: the
/// connection, the pool, or a conflict with another transaction.
fn transient(engine: &'static str, e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if engine == super::SQLITE {
                // SQLite result codes, primary part: BUSY, LOCKED, IOERR, FULL
                // (https://www.sqlite.org/rescode.html).
                code.parse::<i32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13))
            } else {
                // PostgreSQL SQLSTATE: connection exception, serialization
                // failure, deadlock, insufficient resources, lock not
                // available, operator intervention (shutdown, starting up).
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || matches!(code.as_str(), "40001" | "40P01" | "55P03")
            }
        }
        _ => false,
    }
}

/// A database URL without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|s| s + 3) else {
        return url.to_string();
    };
    let authority_end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |e| start + e);
    let Some(at) = url[start..authority_end].rfind('@').map(|a| start + a) else {
        return url.to_string();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}***{}", &url[..start + colon + 1], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data/a@b.db"), "sqlite://data/a@b.db");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[test]
    fn sqlite_busy_is_retryable_and_a_check_failure_is_not() {
        let busy = StoreError::Unavailable {
            engine: "sqlite",
            operation: "group commit",
            detail: "database is locked".into(),
        };
        assert!(busy.is_retryable());
        let failed = StoreError::Failed {
            engine: "sqlite",
            operation: "group commit",
            detail: "CHECK".into(),
        };
        assert!(!failed.is_retryable());
    }
}
