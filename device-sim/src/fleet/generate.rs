//! Deterministic generation of a realistic fleet from a [`FleetSpec`]:
//! organisations of uneven size (some flat, some with departments), INB1
//! locks on CoAP or MQTT, and bridges each linking one or two Bluetooth locks.
//! Everything follows from the seed except the pairing secrets, which come
//! from the operating system's randomness ([`MasterSecret::random`]): a
//! device's keys must not be predictable from a seed.

use super::{
    BridgeSpec, Fleet, LockSpec, MasterSecret, MAX_DEPARTMENTS_PER_ORG, MAX_LOCKS_PER_BRIDGE,
};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use schemas::event::Transport;
use schemas::{ActivityLogInterval, HeartbeatInterval, LockModel};
use std::collections::HashSet;

/// Zones the generated properties are in.
pub const TIME_ZONES: [&str; 12] = [
    "Asia/Singapore",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Dubai",
    "Asia/Hong_Kong",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
];

/// Share of organisations without departments.
const FLAT_ORG_SHARE: f64 = 0.35;
/// Share of NB-IoT locks that are the 2FA-capable model.
const TWO_FA_SHARE: f64 = 0.1;
/// Heartbeat intervals (hours) and their weights: most locks keep the default.
const HEARTBEAT_WEIGHTS: [(u16, u32); 5] = [(24, 80), (12, 8), (5, 5), (2, 4), (1, 3)];
/// Bluetooth models behind bridges and their weights.
const BRIDGED_MODELS: [(LockModel, u32); 5] = [
    (LockModel::Sp2e, 30),
    (LockModel::Sp2, 20),
    (LockModel::Deadbolt2e, 20),
    (LockModel::Keybox3, 15),
    (LockModel::Padlock2, 15),
];
/// Reporting-body and manufacturer digits of the generated IMEIs; two more
/// digits complete the 8-digit Type Allocation Code, so the generator has
/// 10^8 distinct IMEIs to draw from (plenty for a multi-million fleet).
const IMEI_TAC_PREFIX: &str = "356938";

/// What fleet to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetSpec {
    /// Number of locks, bridged ones included.
    pub locks: usize,
    /// Number of bridges; each links 1 or 2 of the locks.
    pub bridges: usize,
    /// Number of organisations.
    pub orgs: usize,
    /// Share of the NB-IoT locks that report over MQTT instead of CoAP.
    pub mqtt_share: f64,
    pub seed: u64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            locks: 1000,
            bridges: 50,
            orgs: 8,
            mqtt_share: 0.1,
            seed: 1,
        }
    }
}

/// A [`FleetSpec`] that cannot be generated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "{bridges} bridges need at least {bridges} locks (each bridge links 1 or 2), got {locks}"
    )]
    TooFewLocks { locks: usize, bridges: usize },
    #[error("a fleet needs at least one organisation")]
    NoOrgs,
    #[error("mqtt share must be between 0 and 1, got {0}")]
    MqttShare(f64),
}

struct Org {
    id: String,
    departments: usize,
    zones: Vec<&'static str>,
    weight: f64,
}

/// Generates the fleet `spec` describes; the same spec gives the same fleet
/// but for the pairing secrets, fresh random ones every time.
pub fn generate(spec: &FleetSpec) -> Result<Fleet, SpecError> {
    if spec.bridges > spec.locks {
        return Err(SpecError::TooFewLocks {
            locks: spec.locks,
            bridges: spec.bridges,
        });
    }
    if spec.orgs == 0 {
        return Err(SpecError::NoOrgs);
    }
    if !(0.0..=1.0).contains(&spec.mqtt_share) {
        return Err(SpecError::MqttShare(spec.mqtt_share));
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let orgs = make_orgs(spec.orgs, &mut rng);

    // Bridges and how many locks each links, never leaving a later bridge
    // without a lock.
    let mut bridges = Vec::with_capacity(spec.bridges);
    let mut links = Vec::with_capacity(spec.bridges);
    let mut spare = spec.locks - spec.bridges;
    for i in 0..spec.bridges {
        let org = pick_org(&orgs, &mut rng);
        let n = if spare > 0 && rng.random_bool(0.5) {
            spare -= 1;
            MAX_LOCKS_PER_BRIDGE
        } else {
            1
        };
        bridges.push(BridgeSpec {
            id: format!("B{:05}", i + 1),
            org: orgs[org].id.clone(),
            master_secret: MasterSecret::random(),
        });
        links.push((i, org, n));
    }

    // Which lock positions are bridged, spread over the id range.
    let mut positions: Vec<usize> = (0..spec.locks).collect();
    positions.shuffle(&mut rng);
    let mut bridged_at: Vec<Option<(usize, usize)>> = vec![None; spec.locks];
    let mut next = positions.into_iter();
    for (bridge, org, n) in links {
        for _ in 0..n {
            if let Some(pos) = next.next() {
                bridged_at[pos] = Some((bridge, org));
            }
        }
    }

    // Exactly round(share * n) NB-IoT locks on MQTT.
    let nb_iot: Vec<usize> = (0..spec.locks)
        .filter(|i| bridged_at[*i].is_none())
        .collect();
    let mqtt_count = (spec.mqtt_share * nb_iot.len() as f64).round() as usize;
    let mut on_mqtt = vec![false; spec.locks];
    for i in nb_iot.choose_multiple(&mut rng, mqtt_count) {
        on_mqtt[*i] = true;
    }

    let mut used_bt = HashSet::new();
    let mut used_imei = HashSet::new();
    let mut locks = Vec::with_capacity(spec.locks);
    for (i, bridged) in bridged_at.into_iter().enumerate() {
        let (org, model, bridge_id, transport) = match bridged {
            Some((bridge, org)) => (
                org,
                weighted(&BRIDGED_MODELS, &mut rng),
                Some(bridges[bridge].id.clone()),
                Transport::Bridge,
            ),
            None => {
                let model = if rng.random_bool(TWO_FA_SHARE) {
                    LockModel::Inb1TwoFactor
                } else {
                    LockModel::Inb1
                };
                let t = if on_mqtt[i] {
                    Transport::Mqtt
                } else {
                    Transport::Coap
                };
                (pick_org(&orgs, &mut rng), model, None, t)
            }
        };
        let org = &orgs[org];
        let imei = model
            .is_nb_iot()
            .then(|| unique(&mut used_imei, || imei(&mut rng)));
        let bluetooth_id = unique(&mut used_bt, || bluetooth_id(model, &mut rng));
        locks.push(LockSpec {
            id: format!("L{:06}", i + 1),
            model,
            imei,
            bluetooth_id,
            org: org.id.clone(),
            departments: departments(org.departments, &mut rng),
            time_zone: org.zones[rng.random_range(0..org.zones.len())].to_string(),
            heartbeat_interval: heartbeat_interval(&mut rng),
            activity_log_interval: activity_log_interval(&mut rng),
            bridge_id,
            transport,
            master_secret: MasterSecret::random(),
        });
    }
    Ok(Fleet { bridges, locks })
}

fn make_orgs(n: usize, rng: &mut StdRng) -> Vec<Org> {
    (0..n)
        .map(|i| {
            let departments = if rng.random_bool(FLAT_ORG_SHARE) {
                0
            } else {
                rng.random_range(2..=MAX_DEPARTMENTS_PER_ORG)
            };
            let zone_count = rng.random_range(1..=3);
            let zones = TIME_ZONES
                .choose_multiple(rng, zone_count)
                .copied()
                .collect();
            Org {
                id: format!("org-{:03}", i + 1),
                departments,
                zones,
                // A few large customers and a long tail.
                weight: 1.0 / (i as f64 + 1.0),
            }
        })
        .collect()
}

fn pick_org(orgs: &[Org], rng: &mut StdRng) -> usize {
    let total: f64 = orgs.iter().map(|o| o.weight).sum();
    let mut x = rng.random::<f64>() * total;
    for (i, o) in orgs.iter().enumerate() {
        if x < o.weight {
            return i;
        }
        x -= o.weight;
    }
    orgs.len() - 1
}

fn weighted<T: Copy>(table: &[(T, u32)], rng: &mut StdRng) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (v, w) in table {
        if x < *w {
            return *v;
        }
        x -= w;
    }
    table[table.len() - 1].0
}

/// Most locks are in one department; some are shared by two or three.
fn departments(org_departments: usize, rng: &mut StdRng) -> Vec<String> {
    if org_departments == 0 {
        return Vec::new();
    }
    let want = weighted(&[(1usize, 85), (2, 12), (3, 3)], rng).min(org_departments);
    let mut picked: Vec<usize> = (1..=org_departments)
        .collect::<Vec<_>>()
        .choose_multiple(rng, want)
        .copied()
        .collect();
    picked.sort_unstable();
    picked.into_iter().map(|d| format!("dept-{d}")).collect()
}

fn heartbeat_interval(rng: &mut StdRng) -> HeartbeatInterval {
    let hours = weighted(&HEARTBEAT_WEIGHTS, rng);
    HeartbeatInterval::from_hours(hours).unwrap_or(HeartbeatInterval::DEFAULT)
}

/// Mostly the 60-minute default; some fast (1, 10, 30 min), some slower hours.
fn activity_log_interval(rng: &mut StdRng) -> ActivityLogInterval {
    let minutes = match rng.random_range(0..100) {
        0..=69 => 60,
        70..=72 => 1,
        73..=79 => 10,
        80..=87 => 30,
        _ => 60 * rng.random_range(2..=24),
    };
    ActivityLogInterval::from_minutes(minutes).unwrap_or(ActivityLogInterval::DEFAULT)
}

fn unique(used: &mut HashSet<String>, mut make: impl FnMut() -> String) -> String {
    loop {
        let v = make();
        if used.insert(v.clone()) {
            return v;
        }
    }
}

/// `INB102e119b9`, `SP2E3fa01c22`: the model's prefix and 8 hex digits.
fn bluetooth_id(model: LockModel, rng: &mut StdRng) -> String {
    let prefix = match model {
        LockModel::Inb1 | LockModel::Inb1TwoFactor => "INB1",
        other => other.as_str(),
    };
    format!("{prefix}{:08x}", rng.random::<u32>())
}

/// A 15-digit IMEI: 8-digit TAC, 6-digit serial, Luhn check digit.
fn imei(rng: &mut StdRng) -> String {
    let body = format!("{IMEI_TAC_PREFIX}{:08}", rng.random_range(0..100_000_000));
    let check = luhn_check_digit(&body);
    format!("{body}{check}")
}

fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec() -> FleetSpec {
        FleetSpec {
            locks: 1000,
            bridges: 50,
            orgs: 8,
            mqtt_share: 0.1,
            seed: 42,
        }
    }

    /// The fleet with every pairing secret replaced by the same value.
    fn without_secrets(mut f: Fleet) -> Fleet {
        let zero = MasterSecret::from_bytes([0; crate::fleet::MASTER_SECRET_LEN]);
        for l in &mut f.locks {
            l.master_secret = zero.clone();
        }
        for b in &mut f.bridges {
            b.master_secret = zero.clone();
        }
        f
    }

    #[test]
    fn same_seed_same_fleet_other_seed_other_fleet() {
        let fleet = || without_secrets(generate(&spec()).unwrap());
        assert_eq!(fleet(), fleet());
        let other = generate(&FleetSpec { seed: 43, ..spec() }).unwrap();
        assert_ne!(fleet(), without_secrets(other));
    }

    #[test]
    fn pairing_secrets_are_random_and_unique_not_drawn_from_the_seed() {
        let a = generate(&spec()).unwrap();
        let b = generate(&spec()).unwrap();
        let secrets: HashSet<[u8; crate::fleet::MASTER_SECRET_LEN]> = a
            .locks
            .iter()
            .map(|l| &l.master_secret)
            .chain(a.bridges.iter().map(|b| &b.master_secret))
            .chain(b.locks.iter().map(|l| &l.master_secret))
            .chain(b.bridges.iter().map(|b| &b.master_secret))
            .map(|s| *s.as_bytes())
            .collect();
        assert_eq!(secrets.len(), 2 * (1000 + 50), "every secret differs");
        // Nothing of a secret shows in the fleet's Debug output.
        let debug = format!("{:?}", a.locks[0]);
        assert!(debug.contains("master_secret: MasterSecret(..)"), "{debug}");
        assert!(!debug.contains(a.locks[0].master_secret.to_hex().as_str()));
    }

    #[test]
    fn ids_are_unique_and_shaped() {
        let f = generate(&spec()).unwrap();
        assert_eq!(f.locks.len(), 1000);
        assert_eq!(f.bridges.len(), 50);
        let mut ids = HashSet::new();
        for id in f
            .locks
            .iter()
            .map(|l| &l.id)
            .chain(f.bridges.iter().map(|b| &b.id))
        {
            assert!(ids.insert(id.clone()), "duplicate {id}");
        }
        assert_eq!(f.locks[0].id, "L000001");
        assert_eq!(f.bridges[49].id, "B00050");
        let bt: HashSet<_> = f.locks.iter().map(|l| &l.bluetooth_id).collect();
        assert_eq!(bt.len(), 1000);
        for l in &f.locks {
            let prefix = if l.model.is_nb_iot() {
                "INB1"
            } else {
                l.model.as_str()
            };
            assert!(l.bluetooth_id.starts_with(prefix), "{}", l.bluetooth_id);
            assert_eq!(l.bluetooth_id.len(), prefix.len() + 8);
        }
    }

    #[test]
    fn bridges_link_one_or_two_bluetooth_locks_of_their_org() {
        let f = generate(&spec()).unwrap();
        let mut per_bridge: HashMap<&str, usize> = HashMap::new();
        for l in &f.locks {
            match &l.bridge_id {
                Some(b) => {
                    *per_bridge.entry(b).or_default() += 1;
                    assert_eq!(l.transport, Transport::Bridge);
                    assert!(!l.model.is_nb_iot());
                    assert!(l.imei.is_none());
                    let bridge = f.bridges.iter().find(|x| &x.id == b).unwrap();
                    assert_eq!(bridge.org, l.org);
                }
                None => {
                    assert!(l.model.is_nb_iot());
                    assert_ne!(l.transport, Transport::Bridge);
                }
            }
        }
        assert_eq!(per_bridge.len(), 50, "every bridge links a lock");
        assert!(per_bridge
            .values()
            .all(|n| (1..=MAX_LOCKS_PER_BRIDGE).contains(n)));
        assert!(per_bridge.values().any(|n| *n == 2));
    }

    #[test]
    fn imeis_are_15_digits_with_a_valid_luhn_digit() {
        let f = generate(&spec()).unwrap();
        for imei in f.locks.iter().filter_map(|l| l.imei.as_ref()) {
            assert_eq!(imei.len(), 15);
            assert_eq!(
                luhn_check_digit(&imei[..14]),
                u32::from(imei.as_bytes()[14] - b'0')
            );
        }
        // A known-good IMEI from the GSMA examples.
        assert_eq!(luhn_check_digit("49015420323751"), 8);
    }

    #[test]
    fn mqtt_share_is_exact_and_most_intervals_are_default() {
        let f = generate(&spec()).unwrap();
        let nb = f.locks.iter().filter(|l| l.model.is_nb_iot()).count();
        let mqtt = f.count_by_transport(Transport::Mqtt);
        assert_eq!(mqtt, (nb as f64 * 0.1).round() as usize);
        let daily = f
            .locks
            .iter()
            .filter(|l| l.heartbeat_interval.hours() == 24)
            .count();
        assert!(daily > 700, "{daily}");
        let hourly_logs = f
            .locks
            .iter()
            .filter(|l| l.activity_log_interval.minutes() == 60)
            .count();
        assert!(hourly_logs > 600, "{hourly_logs}");
    }

    #[test]
    fn orgs_mix_flat_and_departments_within_limits() {
        let f = generate(&spec()).unwrap();
        let mut depts: HashMap<&str, HashSet<&str>> = HashMap::new();
        for l in &f.locks {
            let set = depts.entry(&l.org).or_default();
            set.extend(l.departments.iter().map(String::as_str));
        }
        assert!(depts.values().any(|d| d.is_empty()), "some flat org");
        assert!(
            depts.values().any(|d| !d.is_empty()),
            "some org with departments"
        );
        assert!(depts.values().all(|d| d.len() <= MAX_DEPARTMENTS_PER_ORG));
        assert!(f
            .locks
            .iter()
            .all(|l| TIME_ZONES.contains(&l.time_zone.as_str())));
    }

    #[test]
    fn impossible_specs_are_refused() {
        let too_few = FleetSpec {
            locks: 3,
            bridges: 4,
            ..spec()
        };
        assert_eq!(
            generate(&too_few),
            Err(SpecError::TooFewLocks {
                locks: 3,
                bridges: 4
            })
        );
        assert_eq!(
            generate(&FleetSpec { orgs: 0, ..spec() }),
            Err(SpecError::NoOrgs)
        );
        assert!(generate(&FleetSpec {
            mqtt_share: 2.0,
            ..spec()
        })
        .is_err());
        // Exactly as many locks as bridges: every lock bridged, one each.
        let f = generate(&FleetSpec {
            locks: 5,
            bridges: 5,
            ..spec()
        })
        .unwrap();
        assert_eq!(f.count_by_transport(Transport::Bridge), 5);
    }
}
