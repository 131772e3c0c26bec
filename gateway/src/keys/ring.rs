//! The key ring: every registered device's OSCORE security context, for the
//! transports to find by the ID Context a request carries (`lk/{lock}` or
//! `br/{bridge}`, its `kid context`: RFC 8613 §5.1, §6.1).
//!
//! Built from the stored keys: each master secret is unwrapped with the
//! server key, the gateway's side of the context derived from it as the
//! device profile says (`schemas::security`; RFC 8613 §3.2), and the secret
//! wiped; only the derived keys stay, inside [`SecurityContext`], wiped on
//! drop. Reloaded whenever the registry version changes (an import, a
//! rotation, a deregistration, on any instance): an unchanged key keeps its
//! entry and in-memory window, a new or rotated one is derived, a removed
//! one dropped.
//!
//! Each entry has an in-memory replay window, a fast reject of replays
//! before a decryption and a commit are spent on them (RFC 8613 §7.4). It is
//! never the authority: the group commit checks the stored window and key
//! (`store::replay`), and this window advances only after a commit accepted
//! a sequence number, so a failed commit never makes a device's retry look
//! like a replay.
//!
//! Look-ups hold a read lock for one hash look-up and an `Arc` clone; a
//! reload builds the new map on a blocking thread and swaps it in. No lock
//! is held across an `.await`. This module reads the store and nothing else,
//! and never logs or exports a secret.
//!
//! Cost, measured on the 2-core development machine (release build, 200 000
//! keys): unwrapping and deriving one key takes about 2.8 µs (AES-256-GCM
//! open of 32 bytes, three HKDF-SHA256 expands), so 100 000 devices take
//! 0.3 s at start and a million about 3 s of one core, a one-off at start
//! (on a blocking thread); a reload derives only new and rotated keys and
//! keeps the rest. Memory: about 270 bytes per device (see `DeviceKey`),
//! 270 MB for a million. A reload also reads every stored key (a full
//! `device_keys` scan, as the registry reload scans the registry); reading
//! only the keys changed since the last version is the next step past a
//! million devices.

use crate::keys::password::StoredHash;
use crate::keys::{ServerKey, ServerKeyError};
use crate::metrics;
use crate::store::keys::{KeyWithWindow, StoredKey};
use crate::store::{KeyStamp, Store, StoreError, StoredWindow};
use dispatcher::keys::DeviceRef;
use dispatcher::KnownIds;
use lockfleet_oscore::{Params, Replay, ReplayWindow, SecurityContext};
use schemas::security::{DEVICE_OSCORE_ID, SERVER_OSCORE_ID};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// One device's key as the gateway uses it.
///
/// Memory on x86-64 with glibc's allocator (`a_device_key_stays_small`
/// holds the struct to its size): the struct is 200 bytes, 224 with its
/// `Arc` header as allocated, the MQTT password hash and the replay window
/// inline; on the heap comes the ID Context (32); the device id is the
/// registry's allocation, shared ([`KnownIds`]); the set's slot is a
/// pointer and a control byte, 9 to 21 bytes as the table's load varies
/// (a million entries fill 2²¹ slots 48 %): about 270 bytes in all.
pub struct DeviceKey {
    device: DeviceRef,
    stamp: KeyStamp,
    context: SecurityContext,
    /// The Argon2id hash of the device's MQTT password, for MQTT logins.
    mqtt_password_hash: StoredHash,
    /// Sequence numbers a commit accepted (see the module doc). Held only
    /// for a check or an accept, never across an `.await`.
    window: Mutex<ReplayWindow>,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("device", &self.device)
            .field("generation", &self.stamp.generation)
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// Unwrap `stored` with `server_key` and derive the gateway's context:
    /// sender id [`SERVER_OSCORE_ID`], recipient id [`DEVICE_OSCORE_ID`],
    /// empty master salt, ID Context the device's topic prefix.
    pub fn derive(
        stored: &StoredKey,
        server_key: &ServerKey,
        window: ReplayWindow,
    ) -> Result<DeviceKey, Unusable> {
        let wrap_nonce = stored
            .wrapped
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Unusable::Key(format!("{}: malformed stored wrap", stored.device)))?;
        let secret = server_key
            .unwrap(&stored.device, stored.generation, &stored.wrapped)
            .map_err(|e| match e {
                ServerKeyError::WrongServerKey { .. } => Unusable::WrongServerKey(e.to_string()),
                other => Unusable::Key(other.to_string()),
            })?;
        let id_context = stored.device.oscore_id_context();
        let context = SecurityContext::derive(&Params {
            master_secret: secret.as_bytes(),
            master_salt: b"",
            sender_id: SERVER_OSCORE_ID,
            recipient_id: DEVICE_OSCORE_ID,
            id_context: Some(&id_context),
        })
        .map_err(|e| Unusable::Key(format!("{}: {e}", stored.device)))?;
        Ok(DeviceKey {
            device: stored.device.clone(),
            stamp: KeyStamp {
                generation: stored.generation,
                wrap_nonce,
            },
            context,
            mqtt_password_hash: StoredHash::new(&stored.mqtt_password_hash),
            window: Mutex::new(window),
        })
    }

    pub fn device(&self) -> &DeviceRef {
        &self.device
    }

    /// Which stored key this is (what the commit compares).
    pub fn stamp(&self) -> KeyStamp {
        self.stamp
    }

    /// The gateway's OSCORE context with this device.
    pub fn context(&self) -> &SecurityContext {
        &self.context
    }

    /// The stored PHC string of the device's MQTT password hash.
    pub fn mqtt_password_hash(&self) -> String {
        self.mqtt_password_hash.to_phc()
    }

    /// The fast replay check (RFC 8613 §7.4), before decrypting: refuses a
    /// sequence number this process saw committed. Changes nothing.
    pub fn check_replay(&self, seq: u64) -> Result<(), Replay> {
        self.window().check(seq)
    }

    /// Record that a commit accepted `seq` (and stored it in the window).
    pub fn accepted(&self, seq: u64) {
        // Already in (a concurrent copy, or another instance's window seen
        // at a reload) is fine: the store had the last word.
        let _ = self.window().accept(seq);
    }

    fn window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        // A panic while holding it cannot leave a window half-written (it
        // is two integers, written by `accept` only after its checks).
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a stored key gives no context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// The key was wrapped under another server key: a configuration error.
    #[error("{0}")]
    WrongServerKey(String),
    /// This key does not open or derive (tampered, corrupt).
    #[error("{0}")]
    Key(String),
}

/// What a (re)load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Devices in the ring now.
    pub contexts: usize,
    /// Contexts derived by this load (new or rotated keys).
    pub derived: usize,
    /// Entries kept from before (key unchanged).
    pub kept: usize,
    /// Entries dropped (device deregistered).
    pub removed: usize,
    /// Stored keys that gave no context; their devices cannot be served.
    pub unusable: usize,
    /// The first of those errors (names the device, never a secret).
    pub first_error: Option<Unusable>,
    /// The first key wrapped under another server key, if any: the server
    /// was given the wrong one (a configuration error, not a bad key).
    pub wrong_server_key: Option<String>,
}

impl LoadReport {
    /// Why the server key in use is the wrong one, if a key says so.
    pub fn wrong_server_key(&self) -> Option<&str> {
        self.wrong_server_key.as_deref()
    }
}

/// A key in the ring's set, found by its own device: a map would hold the
/// device a second time as its key (24 bytes a slot, and the table of a
/// million devices has two million slots).
#[derive(Clone)]
struct Entry(Arc<DeviceKey>);

// Hashed and compared as its device alone, like the `DeviceRef` it borrows
// as, so the set is searched with a `&DeviceRef`.
impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.device.hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.device == other.0.device
    }
}

impl Eq for Entry {}

impl std::borrow::Borrow<DeviceRef> for Entry {
    fn borrow(&self) -> &DeviceRef {
        &self.0.device
    }
}

type Map = HashSet<Entry>;

/// Every registered device's context. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct KeyRing {
    map: RwLock<Arc<Map>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} devices)", self.len())
    }
}

impl KeyRing {
    /// An empty ring (nothing can be verified until [`KeyRing::load`]).
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    fn snapshot(&self) -> Arc<Map> {
        // Replacement is one assignment, so a poisoned lock still guards a
        // whole map.
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Devices in the ring.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of `device`, if it has one.
    pub fn get(&self, device: &DeviceRef) -> Option<Arc<DeviceKey>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .map(|e| e.0.clone())
    }

    /// The key of the device an ID Context names (`lk/{lock}`, `br/{bridge}`).
    pub fn by_id_context(&self, id_context: &[u8]) -> Option<Arc<DeviceKey>> {
        self.get(&DeviceRef::from_oscore_id_context(id_context)?)
    }

    /// (Re)load from the store: every stored key and replay window. A
    /// database error leaves the ring as it was. Exports the ring's gauges
    /// and the load's duration. A new entry takes its device's id from
    /// `ids` (the registry) when it is there, instead of a copy of its own.
    pub async fn load(
        &self,
        store: &Store,
        server_key: &ServerKey,
        ids: Arc<dyn KnownIds>,
    ) -> Result<LoadReport, StoreError> {
        let started = Instant::now();
        match self.build_paged(store, server_key, ids).await {
            Ok((map, report)) => {
                self.swap(map);
                metrics::keyring_loaded(started.elapsed(), report.contexts, report.unusable);
                Ok(report)
            }
            Err(e) => {
                metrics::keyring_load_failed();
                Err(e)
            }
        }
    }

    /// The new map, read a page of [`KEY_PAGE_ROWS`] keys (with their
    /// windows) at a time and derived on the blocking pool as each arrives.
    async fn build_paged(
        &self,
        store: &Store,
        server_key: &ServerKey,
        ids: Arc<dyn KnownIds>,
    ) -> Result<(Map, LoadReport), StoreError> {
        let mut builder = Builder::new(self.snapshot(), server_key.clone(), ids);
        let mut after: Option<DeviceRef> = None;
        loop {
            let page = store.load_keys_page(after.as_ref(), KEY_PAGE_ROWS).await?;
            let full = page.len() == KEY_PAGE_ROWS;
            after = page.last().map(|(key, _)| key.device.clone());
            // Unwrapping and deriving is CPU work: ~2 µs a key, seconds for
            // a million at start.
            builder = tokio::task::spawn_blocking(move || {
                builder.add(page);
                builder
            })
            .await
            .map_err(|e| StoreError::Key(format!("building the key ring failed: {e}")))?;
            if !full {
                return Ok(builder.finish());
            }
        }
    }

    /// Replace the ring's contents with `keys` (for tests and tools: no
    /// metrics, no store).
    pub fn install(
        &self,
        keys: Vec<StoredKey>,
        windows: Vec<StoredWindow>,
        server_key: &ServerKey,
    ) -> LoadReport {
        let (map, report) = build(&self.snapshot(), keys, windows, server_key);
        self.swap(map);
        report
    }

    fn swap(&self, map: Map) {
        let old = std::mem::replace(
            &mut *self.map.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(map),
        );
        // The old map (maybe a million entries) is freed here, after the
        // write lock is released.
        drop(old);
    }
}

/// Stored keys read per page while (re)loading the ring.
const KEY_PAGE_ROWS: usize = 10_000;

/// The new map: entries whose stored key is unchanged are kept, the rest
/// derived from `keys` (with their stored window, if it is of that key).
fn build(
    current: &Arc<Map>,
    keys: Vec<StoredKey>,
    windows: Vec<StoredWindow>,
    server_key: &ServerKey,
) -> (Map, LoadReport) {
    let mut windows: HashMap<DeviceRef, StoredWindow> =
        windows.into_iter().map(|w| (w.device.clone(), w)).collect();
    let mut builder = Builder::new(
        current.clone(),
        server_key.clone(),
        Arc::new(dispatcher::NoKnownIds),
    );
    builder.add(keys.into_iter().map(|stored| {
        let window = windows
            .remove(&stored.device)
            .map(|w| (w.generation, w.window));
        (stored, window)
    }));
    builder.finish()
}

/// Builds a new map from stored keys given in any number of parts.
struct Builder {
    current: Arc<Map>,
    server_key: ServerKey,
    ids: Arc<dyn KnownIds>,
    map: Map,
    report: LoadReport,
}

impl Builder {
    fn new(current: Arc<Map>, server_key: ServerKey, ids: Arc<dyn KnownIds>) -> Builder {
        Builder {
            map: Map::with_capacity(current.len()),
            current,
            server_key,
            ids,
            report: LoadReport::default(),
        }
    }

    /// Keeps or derives each key; a window of another generation is
    /// ignored (the key was rotated since).
    fn add(&mut self, keys: impl IntoIterator<Item = KeyWithWindow>) {
        for (mut stored, window) in keys {
            let unchanged = self.current.get(&stored.device).filter(|Entry(k)| {
                k.stamp.generation == stored.generation
                    && k.stamp.wrap_nonce[..] == stored.wrapped.nonce
            });
            if let Some(kept) = unchanged {
                self.map.insert(kept.clone());
                self.report.kept += 1;
                continue;
            }
            let window = window
                .filter(|(generation, _)| *generation == stored.generation)
                .map_or_else(ReplayWindow::new, |(_, w)| w);
            stored.device = self.ids.device(stored.device);
            match DeviceKey::derive(&stored, &self.server_key, window) {
                Ok(key) => {
                    self.map.insert(Entry(Arc::new(key)));
                    self.report.derived += 1;
                }
                Err(e) => {
                    self.report.unusable += 1;
                    if let Unusable::WrongServerKey(why) = &e {
                        self.report
                            .wrong_server_key
                            .get_or_insert_with(|| why.clone());
                    }
                    self.report.first_error.get_or_insert(e);
                }
            }
        }
    }

    fn finish(mut self) -> (Map, LoadReport) {
        let map = &self.map;
        self.report.removed = self
            .current
            .iter()
            .filter(|e| !map.contains(&e.0.device))
            .count();
        self.report.contexts = self.map.len();
        (self.map, self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::KeyRow;
    use crate::store::testing::{secret_for, server_key};
    use dispatcher::{BridgeId, LockId};

    fn stored(device: &DeviceRef, generation: u32) -> StoredKey {
        // Argon2 at the device cost: fast enough for a handful of keys.
        let row = KeyRow::new(
            &server_key(),
            device.clone(),
            generation,
            &secret_for(device),
        );
        StoredKey {
            device: row.device,
            generation: row.generation,
            wrapped: row.wrapped,
            mqtt_password_hash: row.mqtt_password_hash,
        }
    }

    fn lock(id: &str) -> DeviceRef {
        DeviceRef::Lock(LockId::new(id))
    }

    /// The device's side of the same profile.
    fn device_context(device: &DeviceRef) -> SecurityContext {
        SecurityContext::derive(&Params {
            master_secret: secret_for(device).as_bytes(),
            master_salt: b"",
            sender_id: DEVICE_OSCORE_ID,
            recipient_id: SERVER_OSCORE_ID,
            id_context: Some(&device.oscore_id_context()),
        })
        .unwrap()
    }

    #[test]
    fn a_device_finds_its_context_by_id_context_and_it_opens_its_requests() {
        let ring = KeyRing::new();
        let (l1, b1) = (lock("L1"), DeviceRef::Bridge(BridgeId::new("B1")));
        let report = ring.install(vec![stored(&l1, 1), stored(&b1, 1)], vec![], &server_key());
        assert_eq!(
            (report.contexts, report.derived, report.unusable),
            (2, 2, 0)
        );
        let key = ring.by_id_context(b"lk/L1").expect("L1 is in the ring");
        assert_eq!(key.device(), &l1);
        assert!(ring.by_id_context(b"lk/L2").is_none());
        assert!(ring.by_id_context(b"\xff garbage").is_none());

        let piv = lockfleet_oscore::PartialIv::from_seq(3).unwrap();
        let (protected, _) =
            lockfleet_oscore::protect_request(&device_context(&l1), piv, &[0x02], true, &[])
                .unwrap();
        let option = lockfleet_oscore::OscoreOption::decode(&protected.option).unwrap();
        let (request, plain) =
            lockfleet_oscore::unprotect_request(key.context(), &option, &protected.ciphertext, &[])
                .unwrap();
        assert_eq!((request.piv().seq(), plain), (3, vec![0x02]));
        assert_eq!(
            format!("{key:?}"),
            "DeviceKey { device: Lock(LockId(\"L1\")), generation: 1, .. }"
        );
    }

    #[test]
    fn a_reload_keeps_unchanged_keys_derives_rotated_ones_and_drops_removed_ones() {
        let ring = KeyRing::new();
        let (l1, l2) = (lock("L1"), lock("L2"));
        let (k1, k2) = (stored(&l1, 1), stored(&l2, 1));
        ring.install(vec![k1.clone(), k2], vec![], &server_key());
        let before = ring.get(&l1).unwrap();
        before.accepted(7);

        let rotated = stored(&l1, 2);
        let report = ring.install(vec![k1.clone()], vec![], &server_key());
        assert_eq!((report.kept, report.derived, report.removed), (1, 0, 1));
        let kept = ring.get(&l1).unwrap();
        assert!(Arc::ptr_eq(&before, &kept), "same entry, same window");
        assert!(kept.check_replay(7).is_err());
        assert!(ring.get(&l2).is_none());

        let report = ring.install(vec![rotated], vec![], &server_key());
        assert_eq!((report.kept, report.derived), (0, 1));
        let new = ring.get(&l1).unwrap();
        assert_eq!(new.stamp().generation, 2);
        assert!(new.check_replay(7).is_ok(), "a new key starts a new window");

        // Registered again at generation 1 with a new wrap: not the old entry.
        let again = stored(&l1, 1);
        ring.install(vec![k1], vec![], &server_key());
        let old = ring.get(&l1).unwrap();
        ring.install(vec![again], vec![], &server_key());
        assert!(!Arc::ptr_eq(&old, &ring.get(&l1).unwrap()));
    }

    #[test]
    fn a_stored_window_of_the_same_key_is_restored() {
        let ring = KeyRing::new();
        let l1 = lock("L1");
        let mut window = ReplayWindow::new();
        window.accept(41).unwrap();
        let windows = vec![
            StoredWindow {
                device: l1.clone(),
                generation: 1,
                window,
            },
            StoredWindow {
                device: lock("L2"),
                generation: 1,
                window,
            },
        ];
        ring.install(
            vec![stored(&l1, 1), stored(&lock("L2"), 2)],
            windows,
            &server_key(),
        );
        assert!(ring.get(&l1).unwrap().check_replay(41).is_err());
        assert!(
            ring.get(&lock("L2")).unwrap().check_replay(41).is_ok(),
            "the window of generation 1 says nothing about generation 2"
        );
    }

    #[test]
    fn keys_that_do_not_open_are_counted_and_a_wrong_server_key_is_named() {
        let ring = KeyRing::new();
        let mut tampered = stored(&lock("L1"), 1);
        tampered.wrapped.ciphertext[0] ^= 1;
        let report = ring.install(
            vec![tampered, stored(&lock("L2"), 1)],
            vec![],
            &server_key(),
        );
        assert_eq!((report.contexts, report.unusable), (1, 1));
        assert!(report.wrong_server_key().is_none());
        let other = ServerKey::from_hex(&"17".repeat(32)).unwrap();
        let report = KeyRing::new().install(vec![stored(&lock("L1"), 1)], vec![], &other);
        assert!(report
            .wrong_server_key()
            .is_some_and(|e| e.contains(other.id())));
    }

    /// Ids a registry would hold: one lock's.
    struct OneId(LockId);

    impl KnownIds for OneId {
        fn lock_id(&self, id: &str) -> Option<LockId> {
            (self.0.as_str() == id).then(|| self.0.clone())
        }
        fn bridge_id(&self, _: &str) -> Option<BridgeId> {
            None
        }
    }

    #[test]
    fn a_new_entry_takes_its_device_id_from_the_registry_and_a_kept_one_keeps_it() {
        let held = LockId::new("L1");
        let ids: Arc<dyn KnownIds> = Arc::new(OneId(held.clone()));
        let same_allocation =
            |map: &Map, device: &DeviceRef| match &map.get(device).unwrap().0.device {
                DeviceRef::Lock(l) => Arc::ptr_eq(&l.0, &held.0),
                DeviceRef::Bridge(_) => false,
            };
        let (l1, l2) = (lock("L1"), lock("L2"));
        let key1 = stored(&l1, 1);
        let mut first = Builder::new(Arc::default(), server_key(), ids.clone());
        first.add([(key1.clone(), None), (stored(&l2, 1), None)]);
        let (map, report) = first.finish();
        assert_eq!((report.derived, report.contexts), (2, 2));
        assert!(same_allocation(&map, &l1));
        assert_eq!(map.get(&l2).unwrap().0.device, l2);
        // A reload keeps the unchanged entry, allocation and all.
        let mut again = Builder::new(
            Arc::new(map),
            server_key(),
            Arc::new(dispatcher::NoKnownIds),
        );
        again.add([(key1, None)]);
        let (map, report) = again.finish();
        assert_eq!((report.kept, report.removed, report.contexts), (1, 1, 1));
        assert!(same_allocation(&map, &l1));
    }

    #[test]
    fn a_device_key_stays_small() {
        assert!(
            std::mem::size_of::<DeviceKey>() <= 200,
            "DeviceKey is {} bytes: update the memory figure in the docs",
            std::mem::size_of::<DeviceKey>()
        );
        let key = stored(&lock("L000123"), 1);
        assert!(
            key.mqtt_password_hash.len() < 100,
            "{}",
            key.mqtt_password_hash.len()
        );
    }
}
