//! Registered locks and bridges. The registry answers the questions the ingest
//! path asks on every report (is this a lock we know, may this bridge speak for
//! it, which organisation gets the event) from memory, without a query.

use schemas::{ActivityLogInterval, HeartbeatInterval, LockModel};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

macro_rules! id_newtype {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, ".")]
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl $name {
            pub fn new(s: &str) -> Self {
                $name(Arc::from(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
id_newtype!(LockId, "lock");
id_newtype!(BridgeId, "bridge");
id_newtype!(OrgId, "organisation");

/// How a lock's reports reach us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportPath {
    /// NB-IoT over CoAP/UDP.
    Coap,
    /// NB-IoT with an MQTT modem.
    Mqtt,
    /// A Bluetooth lock whose linked bridge reports for it.
    Bridge,
}

impl ReportPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportPath::Coap => "coap",
            ReportPath::Mqtt => "mqtt",
            ReportPath::Bridge => "bridge",
        }
    }
}

/// A registered lock: what the gateway holds in memory for every lock and
/// reads on every report. What only the database keeps (the IMEI, the
/// Bluetooth id) is in [`LockRegistration`]; a million records are a
/// million times each field. On x86-64 with glibc's allocator the record
/// is 88 bytes, 112 as allocated in its `Arc`; its id (shared with the key
/// ring) about 32 more; organisation, time zone and departments are shared
/// ([`Interner`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub id: LockId,
    pub model: LockModel,
    pub org: OrgId,
    /// Empty in a flat organisation. Shared: an organisation has at most 20
    /// departments, so a fleet has few distinct lists, and the registry
    /// loader hands every lock with the same list the same allocation
    /// ([`Interner::departments`]).
    pub departments: Arc<[String]>,
    /// IANA name of the property's time zone. Shared: a fleet has few
    /// zones, and the registry loader hands every lock in one zone the same
    /// string ([`Interner`]).
    pub time_zone: Arc<str>,
    /// The intervals the lock must use (sent back in every heartbeat answer).
    pub heartbeat_interval: HeartbeatInterval,
    pub activity_log_interval: ActivityLogInterval,
    pub bridge: Option<BridgeId>,
    pub path: ReportPath,
}

/// A lock as a fleet file registers it: its record, and the identifiers
/// the database keeps for the dashboard but nothing on the report path
/// reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRegistration {
    #[serde(flatten)]
    pub record: LockRecord,
    /// 15 digits, NB-IoT models only.
    pub imei: Option<String>,
    pub bluetooth_id: String,
}

/// A registered bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeRecord {
    pub id: BridgeId,
    pub org: OrgId,
}

/// Hands out one shared copy of each distinct string or department list:
/// the registry of a million locks holds a few hundred organisation ids,
/// time zones and department lists, so loading gives equal values the same
/// allocation instead of one each (about 70 bytes a lock for the strings,
/// and about 130 for a lock's departments: a vector and a string each).
#[derive(Debug, Default)]
pub struct Interner {
    strings: std::collections::HashSet<Arc<str>>,
    lists: std::collections::HashSet<Arc<[String]>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    /// The shared copy of a department list (in the order given).
    pub fn departments(&mut self, list: &[String]) -> Arc<[String]> {
        if let Some(shared) = self.lists.get(list) {
            return shared.clone();
        }
        let shared: Arc<[String]> = Arc::from(list);
        self.lists.insert(shared.clone());
        shared
    }

    pub fn org(&mut self, s: &str) -> OrgId {
        OrgId(self.get(s))
    }
}

/// The guide: a bridge links at most 2 locks or devices.
pub const MAX_LOCKS_PER_BRIDGE: usize = 2;

/// Ids a loader can take instead of allocating its own: the registry and
/// the key ring each hold every device's id, and a million devices' second
/// copies would cost 32 bytes each. A loader asks by the id's text and
/// takes the shared copy when there is one.
pub trait KnownIds: Send + Sync {
    fn lock_id(&self, id: &str) -> Option<LockId>;
    fn bridge_id(&self, id: &str) -> Option<BridgeId>;

    /// `device` with the id held here, when one is; else `device` itself.
    fn device(&self, device: crate::keys::DeviceRef) -> crate::keys::DeviceRef {
        use crate::keys::DeviceRef;
        let known = match &device {
            DeviceRef::Lock(l) => self.lock_id(l.as_str()).map(DeviceRef::Lock),
            DeviceRef::Bridge(b) => self.bridge_id(b.as_str()).map(DeviceRef::Bridge),
        };
        known.unwrap_or(device)
    }
}

/// No ids known: every loaded id is a new allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKnownIds;

impl KnownIds for NoKnownIds {
    fn lock_id(&self, _: &str) -> Option<LockId> {
        None
    }
    fn bridge_id(&self, _: &str) -> Option<BridgeId> {
        None
    }
}

impl KnownIds for Registry {
    fn lock_id(&self, id: &str) -> Option<LockId> {
        self.locks.get(id).map(|l| l.0.id.clone())
    }
    fn bridge_id(&self, id: &str) -> Option<BridgeId> {
        self.bridges.get(id).map(|b| b.0.id.clone())
    }
}

/// The registry a server shares between its tasks: each question takes the
/// read lock for one look-up.
impl KnownIds for std::sync::RwLock<Registry> {
    fn lock_id(&self, id: &str) -> Option<LockId> {
        self.read().unwrap_or_else(|e| e.into_inner()).lock_id(id)
    }
    fn bridge_id(&self, id: &str) -> Option<BridgeId> {
        self.read().unwrap_or_else(|e| e.into_inner()).bridge_id(id)
    }
}

/// A record in the registry's sets, found by its own id: a map would hold
/// the id a second time as its key (16 bytes a slot, and a hash table of a
/// million locks has two million slots).
#[derive(Clone, Debug)]
struct ById<T>(Arc<T>);

/// A record with an id of its own.
trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for LockRecord {
    fn key(&self) -> &str {
        self.id.as_str()
    }
}

impl Keyed for BridgeRecord {
    fn key(&self) -> &str {
        self.id.as_str()
    }
}

// Hashed and compared as its id alone, like the `str` it borrows as, so the
// set is searched with a `&str`.
impl<T: Keyed> std::hash::Hash for ById<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.key().hash(state);
    }
}

impl<T: Keyed> PartialEq for ById<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}

impl<T: Keyed> Eq for ById<T> {}

impl<T: Keyed> std::borrow::Borrow<str> for ById<T> {
    fn borrow(&self) -> &str {
        self.0.key()
    }
}

/// Every registered device, indexed for the ingest path.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    locks: HashSet<ById<LockRecord>>,
    bridges: HashSet<ById<BridgeRecord>>,
}

impl Registry {
    pub fn new(
        locks: impl IntoIterator<Item = LockRecord>,
        bridges: impl IntoIterator<Item = BridgeRecord>,
    ) -> Self {
        Registry {
            locks: locks.into_iter().map(|l| ById(Arc::new(l))).collect(),
            bridges: bridges.into_iter().map(|b| ById(Arc::new(b))).collect(),
        }
    }

    pub fn lock(&self, id: &str) -> Option<&Arc<LockRecord>> {
        self.locks.get(id).map(|l| &l.0)
    }

    pub fn bridge(&self, id: &str) -> Option<&Arc<BridgeRecord>> {
        self.bridges.get(id).map(|b| &b.0)
    }

    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    pub fn bridge_count(&self) -> usize {
        self.bridges.len()
    }

    pub fn locks(&self) -> impl Iterator<Item = &Arc<LockRecord>> {
        self.locks.iter().map(|l| &l.0)
    }

    pub fn bridges(&self) -> impl Iterator<Item = &Arc<BridgeRecord>> {
        self.bridges.iter().map(|b| &b.0)
    }

    /// Add or replace records (after an import).
    pub fn upsert(
        &mut self,
        locks: impl IntoIterator<Item = LockRecord>,
        bridges: impl IntoIterator<Item = BridgeRecord>,
    ) {
        for l in locks {
            self.locks.replace(ById(Arc::new(l)));
        }
        for b in bridges {
            self.bridges.replace(ById(Arc::new(b)));
        }
    }

    /// A completed interval change: the lock's record says the new
    /// intervals from now on. Unknown locks and invalid values are left alone.
    pub fn set_intervals(&mut self, lock: &str, heartbeat_h: u16, activity_min: u16) {
        let (Ok(hb), Ok(log)) = (
            HeartbeatInterval::from_hours(heartbeat_h),
            ActivityLogInterval::from_minutes(activity_min),
        ) else {
            return;
        };
        self.edit(lock, |r| {
            r.heartbeat_interval = hb;
            r.activity_log_interval = log;
        });
    }

    /// A lock linked to `bridge` (or unlinked: `None`).
    pub fn set_bridge(&mut self, lock: &str, bridge: Option<BridgeId>) {
        self.edit(lock, |r| r.bridge = bridge);
    }

    /// Change what `edit` changes of lock `id`'s record (never its id: the
    /// set finds it by it), if the lock is registered.
    fn edit(&mut self, id: &str, edit: impl FnOnce(&mut LockRecord)) {
        if let Some(mut rec) = self.locks.take(id) {
            edit(Arc::make_mut(&mut rec.0));
            self.locks.insert(rec);
        }
    }

    /// Who may report for `lock`, checked on every uplink.
    pub fn authorise(
        &self,
        lock: &str,
        via: Reporter<'_>,
    ) -> Result<&Arc<LockRecord>, ReportRefusal> {
        let rec = self
            .lock(lock)
            .ok_or_else(|| ReportRefusal::UnknownLock(lock.to_string()))?;
        match via {
            Reporter::Lock => {
                if !rec.model.is_nb_iot() {
                    return Err(ReportRefusal::NotNbIot {
                        lock: lock.to_string(),
                        model: rec.model,
                    });
                }
            }
            Reporter::Bridge(bridge) => {
                if self.bridge(bridge).is_none() {
                    return Err(ReportRefusal::UnknownBridge(bridge.to_string()));
                }
                if rec.bridge.as_ref().map(|b| b.as_str()) != Some(bridge) {
                    return Err(ReportRefusal::NotLinked {
                        lock: lock.to_string(),
                        bridge: bridge.to_string(),
                    });
                }
            }
        }
        Ok(rec)
    }
}

/// Who sent a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter<'a> {
    /// The lock itself (CoAP or MQTT).
    Lock,
    /// A bridge relaying for a linked lock.
    Bridge(&'a str),
}

/// Why a report is refused before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefusal {
    #[error(
        "lock {0:?} is not registered: register it with `gateway devices import` before it reports"
    )]
    UnknownLock(String),
    #[error("bridge {0:?} is not registered: register it with `gateway devices import`")]
    UnknownBridge(String),
    #[error("lock {lock:?} is not linked to bridge {bridge:?}: link it in the fleet file (bridge_id column) before the bridge reports for it")]
    NotLinked { lock: String, bridge: String },
    #[error("lock {lock:?} is a {model} and reports only through its bridge: direct uplinks are for NB-IoT models (INB1)")]
    NotNbIot { lock: String, model: LockModel },
}

impl ReportRefusal {
    /// Stable label for the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportRefusal::UnknownLock(_) => "unknown_device",
            ReportRefusal::UnknownBridge(_) => "unknown_bridge",
            ReportRefusal::NotLinked { .. } => "not_linked",
            ReportRefusal::NotNbIot { .. } => "not_nb_iot",
        }
    }
    /// True when the device is unknown (CoAP 4.04); false when it is known but
    /// not allowed to send this (CoAP 4.03).
    pub fn is_unknown(&self) -> bool {
        matches!(
            self,
            ReportRefusal::UnknownLock(_) | ReportRefusal::UnknownBridge(_)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn lock(id: &str, model: LockModel, bridge: Option<&str>) -> LockRecord {
        LockRecord {
            id: LockId::new(id),
            model,
            org: OrgId::new("org-1"),
            departments: vec!["dept-1".into()].into(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::DEFAULT,
            activity_log_interval: ActivityLogInterval::DEFAULT,
            bridge: bridge.map(BridgeId::new),
            path: if model.is_nb_iot() {
                ReportPath::Coap
            } else {
                ReportPath::Bridge
            },
        }
    }

    fn registry() -> Registry {
        Registry::new(
            [
                lock("L1", LockModel::Inb1, None),
                lock("L2", LockModel::Sp2e, Some("B1")),
            ],
            [
                BridgeRecord {
                    id: BridgeId::new("B1"),
                    org: OrgId::new("org-1"),
                },
                BridgeRecord {
                    id: BridgeId::new("B2"),
                    org: OrgId::new("org-1"),
                },
            ],
        )
    }

    #[test]
    fn the_interner_shares_one_allocation_per_distinct_string() {
        let mut shared = Interner::default();
        let a = shared.get("Europe/Amsterdam");
        let b = shared.get(&String::from("Europe/Amsterdam"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = shared.get("Asia/Singapore");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!((&*a, &*c), ("Europe/Amsterdam", "Asia/Singapore"));
        let (o1, o2) = (shared.org("acme"), shared.org("acme"));
        assert!(Arc::ptr_eq(&o1.0, &o2.0));
        assert_eq!(o1, OrgId::new("acme"));
        let (d1, d2) = (
            shared.departments(&["a".into(), "b".into()]),
            shared.departments(&["a".into(), "b".into()]),
        );
        assert!(Arc::ptr_eq(&d1, &d2));
        assert!(!Arc::ptr_eq(
            &d1,
            &shared.departments(&["b".into(), "a".into()])
        ));
        assert_eq!(&d1[..], ["a", "b"]);
    }

    #[test]
    fn a_lock_record_stays_small() {
        assert!(
            std::mem::size_of::<LockRecord>() <= 88,
            "LockRecord is {} bytes: update the memory figure in its doc",
            std::mem::size_of::<LockRecord>()
        );
    }

    #[test]
    fn a_known_id_is_the_registry_s_own_allocation() {
        let r = registry();
        let id = r.lock_id("L1").unwrap();
        assert!(Arc::ptr_eq(&id.0, &r.lock("L1").unwrap().id.0));
        let bridge = r.bridge_id("B1").unwrap();
        assert!(Arc::ptr_eq(&bridge.0, &r.bridge("B1").unwrap().id.0));
        assert_eq!((r.lock_id("L9"), r.bridge_id("L1")), (None, None));
        let l1 = r.lock("L1").unwrap().id.clone();
        let shared = std::sync::RwLock::new(r);
        assert_eq!(KnownIds::lock_id(&shared, "L2"), Some(LockId::new("L2")));
        assert_eq!(NoKnownIds.lock_id("L1"), None);
        use crate::keys::DeviceRef;
        match shared.device(DeviceRef::Lock(LockId::new("L1"))) {
            DeviceRef::Lock(l) => assert!(Arc::ptr_eq(&l.0, &l1.0)),
            other => panic!("a lock stays a lock: {other:?}"),
        }
        let unknown = DeviceRef::Bridge(BridgeId::new("B9"));
        assert_eq!(shared.device(unknown.clone()), unknown);
    }

    #[test]
    fn a_changed_record_is_still_found_by_its_id() {
        let mut r = registry();
        r.set_intervals("L1", 2, 60);
        r.set_bridge("L2", None);
        r.set_bridge("L9", None);
        let l1 = r.lock("L1").unwrap();
        assert_eq!(l1.heartbeat_interval.hours(), 2);
        assert_eq!(l1.activity_log_interval.minutes(), 60);
        assert_eq!(r.lock("L2").unwrap().bridge, None);
        assert_eq!((r.lock_count(), r.locks().count()), (2, 2));
        r.upsert([lock("L1", LockModel::Inb1, None)], []);
        assert_eq!(
            r.lock("L1").unwrap().heartbeat_interval,
            HeartbeatInterval::DEFAULT
        );
        assert_eq!(r.lock_count(), 2);
    }

    #[test]
    fn nb_iot_lock_reports_for_itself() {
        assert!(registry().authorise("L1", Reporter::Lock).is_ok());
    }

    #[test]
    fn unknown_lock_is_refused_as_unknown() {
        let err = registry().authorise("L9", Reporter::Lock).unwrap_err();
        assert!(err.is_unknown());
        assert_eq!(err.reason(), "unknown_device");
    }

    #[test]
    fn bluetooth_lock_cannot_report_directly() {
        let err = registry().authorise("L2", Reporter::Lock).unwrap_err();
        assert_eq!(err.reason(), "not_nb_iot");
        assert!(!err.is_unknown());
    }

    #[test]
    fn only_the_linked_bridge_reports_for_a_lock() {
        let r = registry();
        assert!(r.authorise("L2", Reporter::Bridge("B1")).is_ok());
        assert_eq!(
            r.authorise("L2", Reporter::Bridge("B2"))
                .unwrap_err()
                .reason(),
            "not_linked"
        );
        assert_eq!(
            r.authorise("L2", Reporter::Bridge("B7"))
                .unwrap_err()
                .reason(),
            "unknown_bridge"
        );
    }
}
