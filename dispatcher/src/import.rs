//! Fleet-file import: every row checked against the guides' rules, every
//! problem reported with its line and column, nothing registered unless the
//! whole file is valid (an operator fixes the file once, not row by row).

use crate::keys::{DeviceRef, MasterSecret};
use crate::registry::{
    BridgeId, BridgeRecord, LockId, LockRecord, LockRegistration, OrgId, Registry, ReportPath,
    MAX_LOCKS_PER_BRIDGE,
};
use schemas::device::valid_id;
use schemas::fleet::FleetRow;
use schemas::{ActivityLogInterval, HeartbeatInterval, LockModel};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;

/// The guide: at most 20 departments per organisation.
pub const MAX_DEPARTMENTS_PER_ORG: usize = 20;

/// Errors beyond this many are summarised, so a wrong file does not flood the terminal.
pub const MAX_REPORTED_ERRORS: usize = 50;

/// One problem in a fleet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line number in the file (the header is line 1).
    pub line: usize,
    pub column: &'static str,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Why a fleet file was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the fleet file: {0}")]
    Csv(#[from] csv::Error),
    #[error("the fleet file has {} problem(s); nothing was imported:\n{}", .0.len(), format_errors(.0))]
    Invalid(Vec<RowError>),
}

fn format_errors(errors: &[RowError]) -> String {
    let mut s: Vec<String> = errors
        .iter()
        .take(MAX_REPORTED_ERRORS)
        .map(|e| format!("  {e}"))
        .collect();
    if errors.len() > MAX_REPORTED_ERRORS {
        s.push(format!(
            "  ... and {} more",
            errors.len() - MAX_REPORTED_ERRORS
        ));
    }
    s.join("\n")
}

/// A validated fleet file, ready to be stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedFleet {
    pub locks: Vec<LockRegistration>,
    pub bridges: Vec<BridgeRecord>,
    /// The pairing secrets the file gave (`master_secret`). A new device
    /// without one gets a generated secret at registration; an existing
    /// device without one keeps its key.
    pub secrets: Vec<(DeviceRef, MasterSecret)>,
}

/// Read and validate a fleet CSV against what is already registered.
pub fn read_fleet<R: Read>(input: R, existing: &Registry) -> Result<ParsedFleet, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let mut rows = Vec::new();
    for (i, row) in reader.deserialize::<FleetRow>().enumerate() {
        rows.push((i + 2, row?));
    }
    validate(&rows, existing).map_err(ImportError::Invalid)
}

/// Validate rows (with their line numbers) against what is already registered.
pub fn validate(
    rows: &[(usize, FleetRow)],
    existing: &Registry,
) -> Result<ParsedFleet, Vec<RowError>> {
    let mut errors = Vec::new();
    let mut err = |line: usize, column: &'static str, message: String| {
        errors.push(RowError {
            line,
            column,
            message,
        })
    };

    let mut seen_ids: HashSet<&str> = HashSet::new();
    let mut bridges = Vec::new();
    for (line, row) in rows
        .iter()
        .filter(|(_, r)| r.kind.eq_ignore_ascii_case("bridge"))
    {
        if !valid_id(&row.id) {
            err(
                *line,
                "id",
                format!(
                    "bridge id {:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
                    row.id
                ),
            );
            continue;
        }
        if !seen_ids.insert(&row.id) {
            err(
                *line,
                "id",
                format!("id {:?} appears more than once in the file", row.id),
            );
            continue;
        }
        if !valid_id(&row.org) {
            err(
                *line,
                "org",
                format!(
                    "organisation {:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
                    row.org
                ),
            );
            continue;
        }
        bridges.push(BridgeRecord {
            id: BridgeId::new(&row.id),
            org: OrgId::new(&row.org),
        });
    }
    let file_bridges: HashMap<&str, &BridgeRecord> =
        bridges.iter().map(|b| (b.id.as_str(), b)).collect();

    let mut links: HashMap<String, Vec<String>> = HashMap::new();
    for lock in existing.locks() {
        if let Some(b) = &lock.bridge {
            links
                .entry(b.to_string())
                .or_default()
                .push(lock.id.to_string());
        }
    }
    let mut departments: HashMap<String, HashSet<String>> = HashMap::new();
    for lock in existing.locks() {
        departments
            .entry(lock.org.to_string())
            .or_default()
            .extend(lock.departments.iter().cloned());
    }

    let mut locks = Vec::new();
    for (line, row) in rows {
        let line = *line;
        match row.kind.to_ascii_lowercase().as_str() {
            "bridge" => continue,
            "lock" => {}
            other => {
                err(
                    line,
                    "kind",
                    format!("kind {other:?} is unknown: use lock or bridge"),
                );
                continue;
            }
        }
        let mut ok = true;
        let mut fail = |column: &'static str, message: String| {
            ok = false;
            err(line, column, message);
        };
        if !valid_id(&row.id) {
            fail(
                "id",
                format!(
                    "lock id {:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
                    row.id
                ),
            );
        } else if !seen_ids.insert(&row.id) {
            fail(
                "id",
                format!("id {:?} appears more than once in the file", row.id),
            );
        }
        let model = row
            .model
            .parse::<LockModel>()
            .map_err(|e| fail("model", e.to_string()))
            .ok();
        let imei = row.imei.trim();
        if let Some(m) = model {
            if m.is_nb_iot() && !(imei.len() == 15 && imei.bytes().all(|b| b.is_ascii_digit())) {
                fail(
                    "imei",
                    format!("an {m} lock needs its 15-digit IMEI, got {imei:?}"),
                );
            }
        }
        if row.bluetooth_id.is_empty() {
            fail("bluetooth_id", "the lock's Bluetooth id is required (it is on the lock's label, e.g. INB102e119b9)".into());
        }
        if !valid_id(&row.org) {
            fail(
                "org",
                format!(
                    "organisation {:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
                    row.org
                ),
            );
        }
        let depts: Vec<String> = row
            .departments
            .split(';')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect();
        for d in &depts {
            if !valid_id(d) {
                fail(
                    "departments",
                    format!("department {d:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ ."),
                );
            }
        }
        if row.time_zone.is_empty()
            || !(row.time_zone.contains('/') || row.time_zone.starts_with("UTC"))
        {
            fail(
                "time_zone",
                format!(
                    "time zone {:?} is not an IANA name such as Asia/Singapore or UTC",
                    row.time_zone
                ),
            );
        }
        let hb = row
            .heartbeat_interval_h
            .parse::<u16>()
            .map_err(|_| {
                format!(
                    "heartbeat interval {:?} is not a number of hours",
                    row.heartbeat_interval_h
                )
            })
            .and_then(|h| HeartbeatInterval::from_hours(h).map_err(|e| e.to_string()))
            .map_err(|m| fail("heartbeat_interval_h", m))
            .ok();
        let log = row
            .activity_log_interval_min
            .parse::<u16>()
            .map_err(|_| {
                format!(
                    "activity-log interval {:?} is not a number of minutes",
                    row.activity_log_interval_min
                )
            })
            .and_then(|m| ActivityLogInterval::from_minutes(m).map_err(|e| e.to_string()))
            .map_err(|m| fail("activity_log_interval_min", m))
            .ok();
        let bridge = (!row.bridge_id.is_empty()).then(|| row.bridge_id.clone());
        if let Some(b) = &bridge {
            let bridge_org = file_bridges
                .get(b.as_str())
                .map(|r| r.org.as_str())
                .or_else(|| existing.bridge(b).map(|r| r.org.as_str()));
            match bridge_org {
                None => fail("bridge_id", format!("bridge {b:?} is neither in this file nor registered: add a bridge row for it")),
                Some(org) if org != row.org => fail("bridge_id", format!("bridge {b:?} belongs to organisation {org:?}, not {:?}", row.org)),
                Some(_) => {
                    let linked = links.entry(b.clone()).or_default();
                    if !linked.contains(&row.id) {
                        linked.push(row.id.clone());
                    }
                    if linked.len() > MAX_LOCKS_PER_BRIDGE {
                        fail("bridge_id", format!("bridge {b:?} would link {} locks ({}); a bridge links at most {MAX_LOCKS_PER_BRIDGE}", linked.len(), linked.join(", ")));
                    }
                }
            }
        }
        let path = match row.transport.to_ascii_lowercase().as_str() {
            "coap" => Some(ReportPath::Coap),
            "mqtt" => Some(ReportPath::Mqtt),
            "bridge" => Some(ReportPath::Bridge),
            "" if model.is_some_and(|m| m.is_nb_iot()) => Some(ReportPath::Coap),
            "" if bridge.is_some() => Some(ReportPath::Bridge),
            other => {
                fail(
                    "transport",
                    format!("transport {other:?} is unknown: use coap, mqtt or bridge"),
                );
                None
            }
        };
        if let (Some(p), Some(m)) = (path, model) {
            if matches!(p, ReportPath::Coap | ReportPath::Mqtt) && !m.is_nb_iot() {
                fail(
                    "transport",
                    format!("a {m} lock has no NB-IoT modem: its transport must be bridge"),
                );
            }
            if p == ReportPath::Bridge && bridge.is_none() {
                fail(
                    "bridge_id",
                    "transport bridge needs a linked bridge in bridge_id".into(),
                );
            }
        }
        let org_depts = departments.entry(row.org.clone()).or_default();
        org_depts.extend(depts.iter().cloned());
        if org_depts.len() > MAX_DEPARTMENTS_PER_ORG {
            fail("departments", format!("organisation {:?} would have {} departments; the limit is {MAX_DEPARTMENTS_PER_ORG}", row.org, org_depts.len()));
        }
        if let (true, Some(model), Some(hb), Some(log), Some(path)) = (ok, model, hb, log, path) {
            locks.push(LockRegistration {
                record: LockRecord {
                    id: LockId::new(&row.id),
                    model,
                    org: OrgId::new(&row.org),
                    departments: depts.into(),
                    time_zone: row.time_zone.as_str().into(),
                    heartbeat_interval: hb,
                    activity_log_interval: log,
                    bridge: bridge.map(|b| BridgeId::new(&b)),
                    path,
                },
                imei: (!imei.is_empty()).then(|| imei.to_string()),
                bluetooth_id: row.bluetooth_id.clone(),
            });
        }
    }
    let mut secrets = Vec::new();
    for (line, row) in rows {
        if row.master_secret.trim().is_empty() {
            continue;
        }
        match MasterSecret::from_hex(&row.master_secret) {
            Ok(secret) => {
                let device = if row.kind.eq_ignore_ascii_case("bridge") {
                    DeviceRef::Bridge(BridgeId::new(&row.id))
                } else {
                    DeviceRef::Lock(LockId::new(&row.id))
                };
                secrets.push((device, secret));
            }
            // The message says what a secret must look like, never what this one was.
            Err(e) => errors.push(RowError {
                line: *line,
                column: "master_secret",
                message: format!("{e}; or leave it empty to have one generated"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(ParsedFleet {
            locks,
            bridges,
            secrets,
        })
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "kind,id,model,imei,bluetooth_id,org,departments,time_zone,heartbeat_interval_h,activity_log_interval_min,bridge_id,transport\n";

    fn read(body: &str) -> Result<ParsedFleet, ImportError> {
        read_fleet(format!("{HEADER}{body}").as_bytes(), &Registry::default())
    }

    fn problems(body: &str) -> Vec<RowError> {
        match read(body) {
            Err(ImportError::Invalid(e)) => e,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn imports_locks_and_bridges() {
        let f = read(
            "bridge,B1,,,,org-1,,,,,,\n\
             lock,L1,INB1,490154203237518,INB102e119b9,org-1,dept-1;dept-2,Asia/Singapore,24,60,,coap\n\
             lock,L2,SP2E,,SP2E3fa01c22,org-1,dept-1,Asia/Singapore,24,60,B1,bridge\n",
        )
        .unwrap();
        assert_eq!(f.bridges.len(), 1);
        assert_eq!(f.locks.len(), 2);
        assert_eq!(f.locks[0].record.departments[..], ["dept-1", "dept-2"]);
        assert_eq!(f.locks[1].record.bridge.as_ref().unwrap().as_str(), "B1");
        assert_eq!(f.locks[1].record.path, ReportPath::Bridge);
    }

    #[test]
    fn every_problem_is_reported_with_line_and_column() {
        let e = problems(
            "lock,L1,INB9,123,x,org-1,,Asia/Singapore,3,7,,coap\n\
             lock,L1,INB1,490154203237518,x,org-1,,Nowhere,24,60,,coap\n",
        );
        let cols: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(
            cols,
            vec![
                (2, "model"),
                (2, "heartbeat_interval_h"),
                (2, "activity_log_interval_min"),
                (3, "id"),
                (3, "time_zone")
            ]
        );
        assert!(e[1].message.contains("1, 2, 5, 12 or 24"));
    }

    #[test]
    fn a_bridge_links_at_most_two_locks() {
        let e = problems(
            "bridge,B1,,,,org-1,,,,,,\n\
             lock,L1,SP2E,,a,org-1,,UTC,24,60,B1,bridge\n\
             lock,L2,SP2E,,b,org-1,,UTC,24,60,B1,bridge\n\
             lock,L3,SP2E,,c,org-1,,UTC,24,60,B1,bridge\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].column), (5, "bridge_id"));
        assert!(e[0].message.contains("at most 2"), "{}", e[0].message);
    }

    #[test]
    fn bluetooth_lock_needs_a_bridge_and_nb_iot_needs_imei() {
        let e = problems(
            "lock,L1,SP2E,,a,org-1,,UTC,24,60,,coap\n\
             lock,L2,INB1,,b,org-1,,UTC,24,60,,coap\n",
        );
        let cols: Vec<&str> = e.iter().map(|e| e.column).collect();
        assert_eq!(cols, vec!["transport", "imei"]);
    }

    #[test]
    fn bridge_must_exist_and_share_the_organisation() {
        let e = problems(
            "bridge,B1,,,,org-2,,,,,,\n\
             lock,L1,SP2E,,a,org-1,,UTC,24,60,B1,bridge\n\
             lock,L2,SP2E,,a,org-1,,UTC,24,60,B9,bridge\n",
        );
        assert!(e[0].message.contains("belongs to organisation"));
        assert!(e[1].message.contains("neither in this file nor registered"));
    }

    #[test]
    fn more_than_twenty_departments_is_refused() {
        let depts: Vec<String> = (1..=21).map(|i| format!("d{i}")).collect();
        let e = problems(&format!(
            "lock,L1,INB1,490154203237518,a,org-1,{},UTC,24,60,,coap\n",
            depts.join(";")
        ));
        assert_eq!(e[0].column, "departments");
    }

    #[test]
    fn pairing_secrets_are_read_and_a_bad_one_is_named_without_echoing_it() {
        let header = HEADER.trim_end().to_string() + ",master_secret\n";
        let secret = "ab".repeat(32);
        let body = format!(
            "bridge,B1,,,,org-1,,,,,,,{secret}\nlock,L1,INB1,490154203237518,INB1L1,org-1,,UTC,12,30,,coap,\n"
        );
        let fleet = read_fleet(format!("{header}{body}").as_bytes(), &Registry::default()).unwrap();
        assert_eq!(
            fleet.secrets.len(),
            1,
            "an empty cell asks for a generated secret"
        );
        assert_eq!(fleet.secrets[0].0, DeviceRef::Bridge(BridgeId::new("B1")));
        assert_eq!(fleet.secrets[0].1.to_hex().as_str(), secret);

        let leaked = "c0ffee";
        let body = format!("bridge,B1,,,,org-1,,,,,,,{leaked}\n");
        match read_fleet(format!("{header}{body}").as_bytes(), &Registry::default()) {
            Err(ImportError::Invalid(e)) => {
                assert_eq!((e[0].line, e[0].column), (2, "master_secret"));
                assert!(
                    e[0].message.contains("64 hex characters"),
                    "{}",
                    e[0].message
                );
                assert!(
                    !e[0].message.contains(leaked),
                    "the bad secret is not repeated: {}",
                    e[0].message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
