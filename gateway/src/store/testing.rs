//! Test support, not part of the gateway's API: a fresh, isolated database
//! per test on either engine, and sample rows. Used by `tests/store.rs` and
//! the end-to-end tests.
//!
//! PostgreSQL tests use the server at [`POSTGRES_URL_ENV`] (default
//! [`DEFAULT_POSTGRES_URL`]); each test creates its own database there and
//! drops it in [`TestDb::cleanup`]. An unreachable server fails the test
//! with a message saying so: it never skips.

use super::{BridgeStatusRow, EventRow, HeartbeatRow, StatusReport};
use schemas::event::{ConnectivityCause, Transport};
use schemas::{
    ActivityEvent, ActivityKind, ActivityLogInterval, Battery, BatteryLevel, ChannelInfo,
    DoorState, Heartbeat, HeartbeatInterval, LockState, SignalQuality,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable naming the PostgreSQL server for tests (an admin URL:
/// its user must be allowed to create databases).
pub const POSTGRES_URL_ENV: &str = "LOCKFLEET_TEST_POSTGRES_URL";

/// The CI's local PostgreSQL (trust authentication).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database that exists for one test.
pub struct TestDb {
    /// What to pass to [`Store::open`](super::Store::open).
    pub url: String,
    /// `"sqlite"` or `"postgres"`.
    pub engine: &'static str,
    owned: Option<Owned>,
}

enum Owned {
    Dir(PathBuf),
    Database { admin_url: String, name: String },
}

impl TestDb {
    /// A new database of `engine` (`"sqlite"` or `"postgres"`).
    pub async fn new(engine: &str) -> TestDb {
        match engine {
            super::SQLITE => TestDb::sqlite().await,
            super::POSTGRES => TestDb::postgres().await,
            other => panic!("unknown engine {other:?}: use sqlite or postgres"),
        }
    }

    /// A SQLite file in a new temporary directory (the file itself is
    /// created by `Store::open`).
    pub async fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(unique_name());
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create test directory {}: {e}", dir.display()));
        TestDb {
            url: format!("sqlite://{}", dir.join("gateway.db").display()),
            engine: super::SQLITE,
            owned: Some(Owned::Dir(dir)),
        }
    }

    /// A new, empty PostgreSQL database. Panics, saying how to fix it, when
    /// the server cannot be reached.
    pub async fn postgres() -> TestDb {
        let admin_url =
            std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL tests need a server, and {} is not reachable: {e}. \
                 Start PostgreSQL or point {POSTGRES_URL_ENV} at one whose user may create databases.",
                super::error::redact(&admin_url)
            )
        });
        let name = unique_name();
        // The name is ours (letters, digits, underscores): safe to splice.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = admin.close().await;
        TestDb {
            url: with_database(&admin_url, &name),
            engine: super::POSTGRES,
            owned: Some(Owned::Database { admin_url, name }),
        }
    }

    /// Delete the database. Close every `Store` on it first (PostgreSQL
    /// databases are dropped `WITH (FORCE)` regardless).
    pub async fn cleanup(mut self) {
        if let Some(owned) = self.owned.take() {
            owned.remove().await;
        }
    }
}

impl Drop for TestDb {
    /// The fallback when a test panicked before `cleanup`: remove the
    /// database from a thread of its own (Drop cannot await).
    fn drop(&mut self) {
        if let Some(owned) = self.owned.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(owned.remove());
                }
            })
            .join();
        }
    }
}

impl Owned {
    async fn remove(self) {
        match self {
            Owned::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Owned::Database { admin_url, name } => {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    if let Err(e) = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await {
                        eprintln!("cannot drop test database {name}: {e}");
                    }
                    let _ = admin.close().await;
                }
            }
        }
    }
}

/// `lf_test_<pid>_<counter>_<random>`: unique across parallel tests and
/// concurrent test processes, and a valid unquoted identifier.
fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded randomly per instance: randomness without a crate.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("lf_test_{}_{n}_{:08x}", std::process::id(), random as u32)
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> String {
    let start = url.find("://").map_or(0, |s| s + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = base[start..].find('/').map_or(base.len(), |p| start + p);
    format!("{}/{name}{query}", &base[..authority_end])
}

/// A heartbeat of `lock` with sequence number `seq` (CoAP, battery level
/// Moderate, locked and closed).
pub fn heartbeat_row(lock: &str, seq: u32) -> HeartbeatRow {
    HeartbeatRow {
        hb: Heartbeat {
            lock_id: lock.to_string(),
            seq,
            device_time: 1_790_000_000 + u64::from(seq),
            battery: Battery::Level(BatteryLevel::Moderate),
            signal_db: 6,
            signal_quality: SignalQuality::Poor,
            carrier: "Singtel".into(),
            channel: Some(ChannelInfo {
                earfcn: 3734,
                pci: 101,
                cell_id: 0x1A2B3C,
                band: 8,
            }),
            lock_state: LockState::Locked,
            door_state: DoorState::Closed,
            firmware: "1.4.2".into(),
            heartbeat_interval: HeartbeatInterval::DEFAULT,
            activity_log_interval: ActivityLogInterval::DEFAULT,
        },
        transport: Transport::Coap,
        bridge_id: None,
        received_at_ms: 1_790_000_000_000 + u64::from(seq),
    }
}

/// Activity event `seq` of `lock`, carried by an uplink with the same seq.
pub fn event_row(lock: &str, seq: u32) -> EventRow {
    EventRow {
        lock_id: lock.to_string(),
        batch_seq: seq,
        event: ActivityEvent {
            seq,
            time: 1_790_000_000 + u64::from(seq),
            kind: ActivityKind::UnlockedPin,
            actor: Some("slot-4".into()),
        },
        transport: Transport::Coap,
        bridge_id: None,
        received_at_ms: 1_790_000_000_000 + u64::from(seq),
    }
}

/// `bridge` went online or offline at `at_ms`.
/// A bridge's status report: `online`, or its Last Will.
pub fn bridge_status(bridge: &str, online: bool, received_at_ms: u64) -> BridgeStatusRow {
    BridgeStatusRow {
        bridge_id: bridge.to_string(),
        report: StatusReport {
            online,
            cause: if online {
                ConnectivityCause::Connected
            } else {
                ConnectivityCause::LastWill
            },
            received_at_ms,
        },
    }
}

/// The server key every test uses, so what one test step wraps another opens.
pub const SERVER_KEY_HEX: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

/// The test server key.
pub fn server_key() -> crate::keys::ServerKey {
    // Infallible: a constant of the right form.
    crate::keys::ServerKey::from_hex(SERVER_KEY_HEX).expect("test server key")
}

/// Write the test server key to `dir/server.key` and return its path, for a
/// test server's `server_key_file`.
pub fn server_key_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("test-server.key");
    std::fs::write(&path, SERVER_KEY_HEX)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The dashboard backend's MQTT password in tests.
pub const BACKEND_PASSWORD: &str = "test-backend-password";

/// [`BACKEND_PASSWORD`]'s hash for a test server's `backend_password_hash`,
/// at the device cost so tests do not spend the operator cost's 19 MiB on
/// every start (the cost is recorded in the hash; checking follows it).
pub fn backend_password_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        crate::keys::password::hash(BACKEND_PASSWORD, crate::keys::password::DEVICE_COST)
    })
    .clone()
}

/// A device's test master secret: fixed by its kind and id, so a test's
/// simulated device and the server agree without passing secrets around.
pub fn secret_for(device: &dispatcher::keys::DeviceRef) -> dispatcher::keys::MasterSecret {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!(
        "lockfleet test secret\0{}\0{}",
        device.kind(),
        device.id()
    ));
    let mut bytes = [0u8; dispatcher::keys::MASTER_SECRET_LEN];
    bytes.copy_from_slice(&digest);
    dispatcher::keys::MasterSecret::from_bytes(bytes)
}

/// `fleet` with every device's test secret.
pub fn with_secrets(mut fleet: dispatcher::import::ParsedFleet) -> dispatcher::import::ParsedFleet {
    // A secret the fleet already has (its file's `master_secret` column,
    // as the simulator writes) is the device's and is kept.
    let have: std::collections::HashSet<dispatcher::keys::DeviceRef> =
        fleet.secrets.iter().map(|(d, _)| d.clone()).collect();
    for d in super::keys::devices_of(&fleet) {
        if !have.contains(&d) {
            let s = secret_for(&d);
            fleet.secrets.push((d, s));
        }
    }
    fleet
}

/// Register `fleet` with test secrets under the test server key.
pub async fn register(
    store: &super::Store,
    fleet: &dispatcher::import::ParsedFleet,
) -> super::ImportSummary {
    store
        .import_fleet(&with_secrets(fleet.clone()), &server_key())
        .await
        .unwrap_or_else(|e| panic!("registering the test fleet: {e}"))
}

/// A sample IMEI (15 digits, a valid check digit).
pub const SAMPLE_IMEI: &str = "490154203237518";

/// `record` as a fleet file registers it: [`SAMPLE_IMEI`] for an NB-IoT
/// model (none otherwise) and a Bluetooth id made of the model and the id.
pub fn registration(record: dispatcher::LockRecord) -> dispatcher::LockRegistration {
    dispatcher::LockRegistration {
        imei: record.model.is_nb_iot().then(|| SAMPLE_IMEI.to_string()),
        bluetooth_id: format!("{}{}", record.model, record.id),
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_parameters_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn names_are_unique() {
        assert_ne!(unique_name(), unique_name());
    }
}
