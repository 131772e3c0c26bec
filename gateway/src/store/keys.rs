//! Device keys in the database (`device_keys`): each device's master secret
//! wrapped under the server key, its generation, and its MQTT password hash.
//! Registration writes them in the fleet import's transaction; rotation and
//! deregistration lock the device's registry row, as every group commit
//! does, so a report protected with a key that was just replaced or revoked
//! can never be committed after the change.

use super::common::{on_pool, BeginWrite, BUMP_REGISTRY_VERSION};
use super::{Store, StoreError, POSTGRES, SQLITE};
use crate::keys::{password, ServerKey, Wrapped};
use dispatcher::import::ParsedFleet;
use dispatcher::keys::{DeviceRef, MasterSecret};
use sqlx::QueryBuilder;
use std::collections::HashMap;

/// Devices per `IN (...)` look-up: far below SQLite's bind limit.
const LOOKUP_CHUNK: usize = 1_000;

/// A device's key as stored.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub device: DeviceRef,
    pub generation: u32,
    pub wrapped: Wrapped,
    pub mqtt_password_hash: String,
}

/// A key row to write: a new device's, or a rotated one's.
#[derive(Clone, Debug)]
pub(crate) struct KeyRow {
    pub device: DeviceRef,
    pub generation: u32,
    pub wrapped: Wrapped,
    pub mqtt_password_hash: String,
}

impl KeyRow {
    /// Wrap `secret` and hash its MQTT password: CPU work (an Argon2 hash),
    /// to be done off the async threads.
    pub fn new(
        server_key: &ServerKey,
        device: DeviceRef,
        generation: u32,
        secret: &MasterSecret,
    ) -> KeyRow {
        let wrapped = server_key.wrap(&device, generation, secret);
        let pw = zeroize::Zeroizing::new(schemas::security::mqtt_password(secret.as_bytes()));
        let mqtt_password_hash = password::hash(&pw, password::DEVICE_COST);
        KeyRow {
            device,
            generation,
            wrapped,
            mqtt_password_hash,
        }
    }
}

/// What an import does to keys: new devices' keys, and keys rotated because
/// the file gave an existing device a different secret (re-pairing).
#[derive(Debug, Default)]
pub(crate) struct KeyPlan {
    pub new: Vec<KeyRow>,
    pub rotated: Vec<KeyRow>,
}

/// Every device a fleet file names.
pub fn devices_of(fleet: &ParsedFleet) -> Vec<DeviceRef> {
    fleet
        .bridges
        .iter()
        .map(|b| DeviceRef::Bridge(b.id.clone()))
        .chain(
            fleet
                .locks
                .iter()
                .map(|l| DeviceRef::Lock(l.record.id.clone())),
        )
        .collect()
}

/// Decide and prepare the key changes of importing `fleet`, given the keys
/// stored now. Pure apart from randomness; CPU-bound (Argon2 per change).
pub(crate) fn plan(
    fleet: &ParsedFleet,
    stored: &HashMap<DeviceRef, StoredKey>,
    server_key: &ServerKey,
) -> Result<KeyPlan, StoreError> {
    let given: HashMap<&DeviceRef, &MasterSecret> =
        fleet.secrets.iter().map(|(d, s)| (d, s)).collect();
    let mut plan = KeyPlan::default();
    for device in devices_of(fleet) {
        match (stored.get(&device), given.get(&device)) {
            (None, Some(secret)) => plan.new.push(KeyRow::new(server_key, device, 1, secret)),
            (None, None) => {
                return Err(StoreError::MissingSecret {
                    device: device.to_string(),
                })
            }
            (Some(current), Some(secret)) => {
                let held = server_key
                    .unwrap(&device, current.generation, &current.wrapped)
                    .map_err(|e| StoreError::Key(e.to_string()))?;
                if held != **secret {
                    plan.rotated.push(KeyRow::new(
                        server_key,
                        device,
                        current.generation + 1,
                        secret,
                    ));
                }
            }
            (Some(_), None) => {}
        }
    }
    Ok(plan)
}

type KeyColumns = (String, String, i64, String, Vec<u8>, Vec<u8>, String);

fn stored_key(c: KeyColumns) -> Result<StoredKey, StoreError> {
    let (kind, id, generation, kek_id, nonce, ciphertext, mqtt_password_hash) = c;
    let bad = |detail: String| StoreError::corrupt("device_keys", &id, detail);
    let device =
        DeviceRef::parse(&kind, &id).ok_or_else(|| bad(format!("device_kind {kind:?}")))?;
    let generation =
        u32::try_from(generation).map_err(|_| bad(format!("generation {generation}")))?;
    Ok(StoredKey {
        device,
        generation,
        wrapped: Wrapped {
            kek_id,
            nonce,
            ciphertext,
        },
        mqtt_password_hash,
    })
}

const KEY_COLUMNS: &str =
    "SELECT device_kind, device_id, generation, kek_id, nonce, wrapped_secret, mqtt_password_hash FROM device_keys";

/// The stored keys of `devices` (absent: none).
pub(crate) async fn stored_keys(
    store: &Store,
    devices: &[DeviceRef],
) -> Result<HashMap<DeviceRef, StoredKey>, StoreError> {
    let mut found = HashMap::new();
    for kind in ["lock", "bridge"] {
        let ids: Vec<&str> = devices
            .iter()
            .filter(|d| d.kind() == kind)
            .map(|d| d.id())
            .collect();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let rows: Vec<KeyColumns> = on_pool!(store, |pool, engine| {
                let mut q = QueryBuilder::new(KEY_COLUMNS);
                q.push(" WHERE device_kind = ")
                    .push_bind(kind)
                    .push(" AND device_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build_query_as()
                    .persistent(false)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| StoreError::from_sqlx(engine, "reading device keys", e))?
            });
            for row in rows {
                let key = stored_key(row)?;
                found.insert(key.device.clone(), key);
            }
        }
    }
    Ok(found)
}

/// Every stored key, for the key ring at start and after a change.
pub(crate) async fn load_keys(store: &Store) -> Result<Vec<StoredKey>, StoreError> {
    let rows: Vec<KeyColumns> = on_pool!(store, |pool, engine| {
        sqlx::query_as(KEY_COLUMNS)
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::from_sqlx(engine, "loading device keys", e))?
    });
    rows.into_iter().map(stored_key).collect()
}

/// One page of [`load_keys_page`]: a stored key and, if the device has one,
/// its stored replay window as (key generation, window).
pub type KeyWithWindow = (StoredKey, Option<(u32, lockfleet_oscore::ReplayWindow)>);

/// Up to `limit` stored keys after `after` in (kind, id) order, each with
/// its stored replay window: the key ring loads a million devices a page at
/// a time, so what start-up holds besides the ring is one page, not every
/// row at once (whose freed blocks would stay resident between the ring's).
/// A window that cannot be read is left out, as in [`load_windows`].
///
/// [`load_windows`]: super::replay::load_windows
pub(crate) async fn load_keys_page(
    store: &Store,
    after: Option<&DeviceRef>,
    limit: usize,
) -> Result<Vec<KeyWithWindow>, StoreError> {
    let (after_kind, after_id) = after.map_or(("", ""), |d| (d.kind(), d.id()));
    let rows: Vec<PagedKeyColumns> = on_pool!(store, |pool, engine| {
        sqlx::query_as(
            "SELECT k.device_kind, k.device_id, k.generation, k.kek_id, k.nonce, k.wrapped_secret, \
             k.mqtt_password_hash, w.generation, w.highest, w.window_bits \
             FROM device_keys k LEFT JOIN oscore_replay w \
             ON w.device_kind = k.device_kind AND w.device_id = k.device_id \
             WHERE k.device_kind > $1 OR (k.device_kind = $1 AND k.device_id > $2) \
             ORDER BY k.device_kind, k.device_id LIMIT $3",
        )
        .bind(after_kind)
        .bind(after_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(|e| StoreError::from_sqlx(engine, "loading device keys", e))?
    });
    rows.into_iter()
        .map(
            |(kind, id, generation, kek_id, nonce, ciphertext, hash, wg, wh, wb)| {
                let key = stored_key((kind, id, generation, kek_id, nonce, ciphertext, hash))?;
                let window = match (wg, wh, wb) {
                    (Some(g), Some(h), Some(b)) => {
                        u32::try_from(g)
                            .ok()
                            .zip(u64::try_from(h).ok().and_then(|h| {
                                lockfleet_oscore::ReplayWindow::from_parts(Some(h), b as u64).ok()
                            }))
                    }
                    _ => None,
                };
                Ok((key, window))
            },
        )
        .collect()
}

type PagedKeyColumns = (
    String,
    String,
    i64,
    String,
    Vec<u8>,
    Vec<u8>,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Write `$row` (a [`KeyRow`]) over the device's current key inside `$tx`;
/// the old key's OSCORE replay state belongs to the old context and goes.
/// A macro so that one text serves both engines' concrete transaction types.
macro_rules! replace_key {
    ($tx:expr, $row:expr, $now:expr) => {
        async {
            let row: &$crate::store::keys::KeyRow = $row;
            sqlx::query(
                "UPDATE device_keys SET generation = $1, kek_id = $2, nonce = $3, wrapped_secret = $4, \
                 mqtt_password_hash = $5, created_at_ms = $6 WHERE device_kind = $7 AND device_id = $8",
            )
            .bind(i64::from(row.generation))
            .bind(row.wrapped.kek_id.as_str())
            .bind(row.wrapped.nonce.as_slice())
            .bind(row.wrapped.ciphertext.as_slice())
            .bind(row.mqtt_password_hash.as_str())
            .bind($now)
            .bind(row.device.kind())
            .bind(row.device.id())
            .execute(&mut *$tx)
            .await?;
            sqlx::query("DELETE FROM oscore_replay WHERE device_kind = $1 AND device_id = $2")
                .bind(row.device.kind())
                .bind(row.device.id())
                .execute(&mut *$tx)
                .await?;
            Ok::<(), sqlx::Error>(())
        }
    };
}

/// Insert the new keys and replace the rotated ones of `$plan` (a
/// [`KeyPlan`]) inside an import's transaction `$tx`.
macro_rules! write_key_plan {
    ($tx:expr, $plan:expr, $now:expr) => {
        async {
            let plan: &$crate::store::keys::KeyPlan = $plan;
            for row in &plan.new {
                sqlx::query(
                    "INSERT INTO device_keys (device_kind, device_id, generation, kek_id, nonce, wrapped_secret, \
                     mqtt_password_hash, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(row.device.kind())
                .bind(row.device.id())
                .bind(i64::from(row.generation))
                .bind(row.wrapped.kek_id.as_str())
                .bind(row.wrapped.nonce.as_slice())
                .bind(row.wrapped.ciphertext.as_slice())
                .bind(row.mqtt_password_hash.as_str())
                .bind($now)
                .execute(&mut *$tx)
                .await?;
            }
            for row in &plan.rotated {
                $crate::store::keys::replace_key!($tx, row, $now).await?;
            }
            Ok::<(), sqlx::Error>(())
        }
    };
}
pub(crate) use {replace_key, write_key_plan};

/// On PostgreSQL, lock `$device`'s registry row for the transaction `$tx`
/// (`FOR NO KEY UPDATE`, as a group commit does); SQLite's `BEGIN IMMEDIATE`
/// already holds the database's write lock.
macro_rules! lock_registry_row {
    ($tx:expr, $engine:expr, $device:expr) => {
        async {
            let device: &DeviceRef = $device;
            if $engine == POSTGRES {
                let sql = match device {
                    DeviceRef::Lock(_) => {
                        "SELECT 1 FROM locks WHERE lock_id = $1 FOR NO KEY UPDATE"
                    }
                    DeviceRef::Bridge(_) => {
                        "SELECT 1 FROM bridges WHERE bridge_id = $1 FOR NO KEY UPDATE"
                    }
                };
                sqlx::query(sql)
                    .bind(device.id())
                    .fetch_optional(&mut *$tx)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
    };
}

impl Store {
    /// Give `device` a new key (its generation + 1): the old one fails from
    /// the next message on. Returns the new generation.
    pub async fn rotate_key(
        &self,
        server_key: &ServerKey,
        device: &DeviceRef,
        secret: &MasterSecret,
    ) -> Result<u32, StoreError> {
        let current = stored_keys(self, std::slice::from_ref(device))
            .await?
            .remove(device)
            .ok_or_else(|| StoreError::NotRegistered {
                device: device.to_string(),
            })?;
        let (server_key, device_owned, secret) =
            (server_key.clone(), device.clone(), secret.clone());
        let generation = current.generation + 1;
        let row = tokio::task::spawn_blocking(move || {
            KeyRow::new(&server_key, device_owned, generation, &secret)
        })
        .await
        .map_err(|e| StoreError::Key(format!("preparing the new key failed: {e}")))?;
        let now = super::codes::int(crate::ingest::now_ms());
        on_pool!(self, |pool, engine| {
            let err = |e| StoreError::from_sqlx(engine, "rotating a device key", e);
            let mut tx = pool.begin_write().await.map_err(err)?;
            lock_registry_row!(tx, engine, device).await.map_err(err)?;
            replace_key!(tx, &row, now).await.map_err(err)?;
            sqlx::query(BUMP_REGISTRY_VERSION)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
        });
        Ok(generation)
    }

    /// Deregister `device`: its registry row, key and replay state go (its
    /// history stays until retention). A bridge's linked locks are unlinked.
    /// Returns false if it was not registered.
    pub async fn deregister(&self, device: &DeviceRef) -> Result<bool, StoreError> {
        let delete_registry_row = match device {
            DeviceRef::Lock(_) => "DELETE FROM locks WHERE lock_id = $1",
            DeviceRef::Bridge(_) => "DELETE FROM bridges WHERE bridge_id = $1",
        };
        let removed = on_pool!(self, |pool, engine| {
            let err = |e| StoreError::from_sqlx(engine, "deregistering a device", e);
            let mut tx = pool.begin_write().await.map_err(err)?;
            lock_registry_row!(tx, engine, device).await.map_err(err)?;
            if let DeviceRef::Bridge(b) = device {
                sqlx::query("UPDATE locks SET bridge_id = NULL WHERE bridge_id = $1")
                    .bind(b.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
            for sql in [
                "DELETE FROM device_keys WHERE device_kind = $1 AND device_id = $2",
                "DELETE FROM oscore_replay WHERE device_kind = $1 AND device_id = $2",
            ] {
                sqlx::query(sql)
                    .bind(device.kind())
                    .bind(device.id())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
            let deleted = sqlx::query(delete_registry_row)
                .bind(device.id())
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .rows_affected();
            sqlx::query(BUMP_REGISTRY_VERSION)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            deleted > 0
        });
        Ok(removed)
    }

    /// Every stored key (wrapped), for the key ring.
    pub async fn load_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        load_keys(self).await
    }

    /// Up to `limit` stored keys after `after`, with their replay windows
    /// (see [`load_keys_page`]).
    pub async fn load_keys_page(
        &self,
        after: Option<&DeviceRef>,
        limit: usize,
    ) -> Result<Vec<KeyWithWindow>, StoreError> {
        load_keys_page(self, after, limit).await
    }
}
