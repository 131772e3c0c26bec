//! Reading and writing the fleet file ([`schemas::fleet`]): CSV with the
//! exact header [`schemas::fleet::HEADER`], bridges first. Every problem is
//! reported with its line number, column and what to fix.
//!
//! Every device needs its pairing secret (`master_secret`, 64 hex
//! characters): the simulator cannot speak for a device without its keys. A
//! file from before the column existed is read far enough to say so on its
//! first device's line. A secret is never echoed in an error, and the copies
//! this module makes are wiped once used.

use super::{
    parse_transport, BridgeSpec, Fleet, LockSpec, MasterSecret, SecretProblem,
    DEPARTMENT_SEPARATOR, MAX_DEPARTMENTS_PER_ORG, MAX_LOCKS_PER_BRIDGE,
};
use schemas::device::valid_id;
use schemas::event::Transport;
use schemas::fleet::{DeviceKind, FleetRow, HEADER};
use schemas::{ActivityLogInterval, HeartbeatInterval, LockModel};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Digits in an IMEI (14 digits and a Luhn check digit).
pub const IMEI_DIGITS: usize = 15;

/// Longest IANA time-zone name we accept (the longest real one is 32).
pub const MAX_TIME_ZONE_LEN: usize = 64;

/// Why a fleet file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: {source}")]
    Csv { line: u64, source: csv::Error },
    #[error("line 1: the header must be exactly {expected:?}, found {found:?}")]
    Header {
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("line {line}, column {column}: {value:?} {problem}")]
    Field {
        line: u64,
        column: &'static str,
        value: String,
        problem: String,
    },
    #[error("line {line}, column id: {id:?} is already used on line {first_line}: ids must be unique across locks and bridges")]
    DuplicateId {
        line: u64,
        id: String,
        first_line: u64,
    },
    #[error("line {line}, column bridge_id: bridge {bridge_id:?} is not in the file: add a `bridge` row for it")]
    UnknownBridge { line: u64, bridge_id: String },
    #[error("line {line}, column bridge_id: bridge {bridge_id:?} already links {MAX_LOCKS_PER_BRIDGE} locks: a bridge links at most {MAX_LOCKS_PER_BRIDGE}")]
    BridgeFull { line: u64, bridge_id: String },
    #[error("line {line}, column org: the lock is in {lock_org:?} but its bridge {bridge_id:?} is in {bridge_org:?}: a lock and its bridge share an organisation")]
    BridgeOrg {
        line: u64,
        bridge_id: String,
        lock_org: String,
        bridge_org: String,
    },
    #[error("line {line}, column departments: organisation {org:?} would have more than {MAX_DEPARTMENTS_PER_ORG} departments")]
    TooManyDepartments { line: u64, org: String },
    /// The value itself is never part of the error.
    #[error("line {line}, column master_secret: the pairing secret of {kind} {id:?} {problem}: regenerate the fleet file (device-sim fleet) or add the pairing secret")]
    Secret {
        line: u64,
        kind: &'static str,
        id: String,
        problem: SecretProblem,
    },
}

fn field(line: u64, column: &'static str, value: &str, problem: impl Into<String>) -> FleetError {
    FleetError::Field {
        line,
        column,
        value: value.to_string(),
        problem: problem.into(),
    }
}

impl Fleet {
    /// Writes the fleet file to `path`.
    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<(), FleetError> {
        let path = path.as_ref();
        let file = std::fs::File::create(path).map_err(|source| FleetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.write_to(std::io::BufWriter::new(file))
    }

    /// Writes the fleet file to any writer.
    pub fn write_to<W: Write>(&self, w: W) -> Result<(), FleetError> {
        let mut out = csv::WriterBuilder::new().has_headers(false).from_writer(w);
        let csv_err = |line: u64| move |source| FleetError::Csv { line, source };
        out.write_record(HEADER).map_err(csv_err(1))?;
        for (i, mut row) in self.to_rows().into_iter().enumerate() {
            let written = out.serialize(&row).map_err(csv_err(i as u64 + 2));
            row.master_secret.zeroize();
            written?;
        }
        out.flush().map_err(|source| FleetError::Csv {
            line: 0,
            source: source.into(),
        })
    }

    /// Reads and validates the fleet file at `path`.
    pub fn read_csv(path: impl AsRef<Path>) -> Result<Fleet, FleetError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| FleetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Fleet::read_from(std::io::BufReader::new(file))
    }

    /// Reads and validates a fleet file from any reader.
    pub fn read_from<R: Read>(r: R) -> Result<Fleet, FleetError> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(r);
        let headers = reader
            .headers()
            .map_err(|source| FleetError::Csv { line: 1, source })?
            .clone();
        // A file written before the `master_secret` column (the last one)
        // is read on, so that its first device is named as lacking a secret.
        let legacy = &HEADER[..HEADER.len() - 1];
        if headers.iter().ne(HEADER.iter().copied()) && headers.iter().ne(legacy.iter().copied()) {
            return Err(FleetError::Header {
                expected: HEADER.iter().map(|s| s.to_string()).collect(),
                found: headers.iter().map(str::to_string).collect(),
            });
        }
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|source| FleetError::Csv {
                line: source.position().map(|p| p.line()).unwrap_or(0),
                source,
            })?;
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            let row: FleetRow = record
                .deserialize(Some(&headers))
                .map_err(|source| FleetError::Csv { line, source })?;
            rows.push((line, row));
        }
        Fleet::from_rows(rows)
    }

    /// The rows of the fleet file, bridges first. They hold the pairing
    /// secrets in hex: wipe or drop them soon, never log them.
    pub fn to_rows(&self) -> Vec<FleetRow> {
        let bridges = self.bridges.iter().map(|b| FleetRow {
            kind: "bridge".into(),
            id: b.id.clone(),
            org: b.org.clone(),
            master_secret: b.master_secret.to_hex().to_string(),
            ..FleetRow::default()
        });
        let locks = self.locks.iter().map(|l| FleetRow {
            kind: "lock".into(),
            id: l.id.clone(),
            model: l.model.as_str().into(),
            imei: l.imei.clone().unwrap_or_default(),
            bluetooth_id: l.bluetooth_id.clone(),
            org: l.org.clone(),
            departments: l.departments.join(&DEPARTMENT_SEPARATOR.to_string()),
            time_zone: l.time_zone.clone(),
            heartbeat_interval_h: l.heartbeat_interval.hours().to_string(),
            activity_log_interval_min: l.activity_log_interval.minutes().to_string(),
            bridge_id: l.bridge_id.clone().unwrap_or_default(),
            transport: l.transport.as_str().into(),
            master_secret: l.master_secret.to_hex().to_string(),
        });
        bridges.chain(locks).collect()
    }

    /// Validates rows (each with its line number) into a fleet.
    pub fn from_rows(rows: Vec<(u64, FleetRow)>) -> Result<Fleet, FleetError> {
        let mut fleet = Fleet::default();
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut lock_lines = Vec::new();
        for (line, mut row) in rows {
            if let Some(first_line) = seen.get(&row.id) {
                return Err(FleetError::DuplicateId {
                    line,
                    id: row.id,
                    first_line: *first_line,
                });
            }
            let kind = parse_kind(line, &row.kind)?;
            check_id(line, "id", &row.id)?;
            check_id(line, "org", &row.org)?;
            seen.insert(row.id.clone(), line);
            let secret = MasterSecret::from_hex(&row.master_secret);
            row.master_secret.zeroize();
            let secret = secret.map_err(|problem| FleetError::Secret {
                line,
                kind: match kind {
                    DeviceKind::Bridge => "bridge",
                    DeviceKind::Lock => "lock",
                },
                id: row.id.clone(),
                problem,
            })?;
            match kind {
                DeviceKind::Bridge => fleet.bridges.push(bridge_from_row(line, row, secret)?),
                DeviceKind::Lock => {
                    fleet.locks.push(lock_from_row(line, row, secret)?);
                    lock_lines.push(line);
                }
            }
        }
        check_links(&fleet, &lock_lines)?;
        check_departments(&fleet, &lock_lines)?;
        Ok(fleet)
    }
}

fn parse_kind(line: u64, s: &str) -> Result<DeviceKind, FleetError> {
    match s {
        "lock" => Ok(DeviceKind::Lock),
        "bridge" => Ok(DeviceKind::Bridge),
        _ => Err(field(
            line,
            "kind",
            s,
            "is not a device kind: use `lock` or `bridge`",
        )),
    }
}

fn check_id(line: u64, column: &'static str, s: &str) -> Result<(), FleetError> {
    if valid_id(s) {
        Ok(())
    } else {
        Err(field(
            line,
            column,
            s,
            "is not a valid id: use 1 to 64 characters of A-Z a-z 0-9 - _ .",
        ))
    }
}

fn bridge_from_row(
    line: u64,
    row: FleetRow,
    master_secret: MasterSecret,
) -> Result<BridgeSpec, FleetError> {
    let lock_only = [
        ("model", &row.model),
        ("imei", &row.imei),
        ("bluetooth_id", &row.bluetooth_id),
        ("departments", &row.departments),
        ("time_zone", &row.time_zone),
        ("heartbeat_interval_h", &row.heartbeat_interval_h),
        ("activity_log_interval_min", &row.activity_log_interval_min),
        ("bridge_id", &row.bridge_id),
        ("transport", &row.transport),
    ];
    for (column, value) in lock_only {
        if !value.is_empty() {
            return Err(field(line, column, value, "must be empty on a bridge row"));
        }
    }
    Ok(BridgeSpec {
        id: row.id,
        org: row.org,
        master_secret,
    })
}

fn lock_from_row(
    line: u64,
    row: FleetRow,
    master_secret: MasterSecret,
) -> Result<LockSpec, FleetError> {
    let model: LockModel = row
        .model
        .parse()
        .map_err(|e: schemas::units::UnitError| field(line, "model", &row.model, e.to_string()))?;
    let imei = if model.is_nb_iot() {
        if row.imei.len() != IMEI_DIGITS || !row.imei.bytes().all(|b| b.is_ascii_digit()) {
            return Err(field(
                line,
                "imei",
                &row.imei,
                format!("is not an IMEI: an {model} lock needs exactly {IMEI_DIGITS} digits"),
            ));
        }
        Some(row.imei)
    } else {
        if !row.imei.is_empty() {
            return Err(field(
                line,
                "imei",
                &row.imei,
                format!("must be empty: {model} is a Bluetooth lock without a modem"),
            ));
        }
        None
    };
    if row.bluetooth_id.is_empty() || !row.bluetooth_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(field(
            line,
            "bluetooth_id",
            &row.bluetooth_id,
            "must be letters and digits, e.g. INB102e119b9",
        ));
    }
    let departments = parse_departments(line, &row.departments)?;
    check_time_zone(line, &row.time_zone)?;
    let heartbeat_interval = row
        .heartbeat_interval_h
        .parse::<u16>()
        .map_err(|_| "1, 2, 5, 12 or 24".to_string())
        .and_then(|h| HeartbeatInterval::from_hours(h).map_err(|e| e.to_string()))
        .map_err(|p| {
            field(
                line,
                "heartbeat_interval_h",
                &row.heartbeat_interval_h,
                format!("is not a heartbeat interval: {p}"),
            )
        })?;
    let activity_log_interval = row
        .activity_log_interval_min
        .parse::<u16>()
        .map_err(|_| "1, 10, 30 or 60..1440 in steps of 60".to_string())
        .and_then(|m| ActivityLogInterval::from_minutes(m).map_err(|e| e.to_string()))
        .map_err(|p| {
            field(
                line,
                "activity_log_interval_min",
                &row.activity_log_interval_min,
                format!("is not an activity-log interval: {p}"),
            )
        })?;
    let transport = parse_transport(&row.transport).ok_or_else(|| {
        field(
            line,
            "transport",
            &row.transport,
            "is not a transport: use coap, mqtt or bridge",
        )
    })?;
    let bridge_id = if row.bridge_id.is_empty() {
        None
    } else {
        check_id(line, "bridge_id", &row.bridge_id)?;
        Some(row.bridge_id)
    };
    match transport {
        Transport::Bridge if bridge_id.is_none() => {
            return Err(field(
                line,
                "bridge_id",
                "",
                "is required when transport is bridge",
            ));
        }
        Transport::Coap | Transport::Mqtt if !model.is_nb_iot() => {
            return Err(field(
                line,
                "transport",
                transport.as_str(),
                format!("is impossible for {model}: a Bluetooth lock reports through its bridge (transport bridge)"),
            ));
        }
        _ => {}
    }
    Ok(LockSpec {
        id: row.id,
        model,
        imei,
        bluetooth_id: row.bluetooth_id,
        org: row.org,
        departments,
        time_zone: row.time_zone,
        heartbeat_interval,
        activity_log_interval,
        bridge_id,
        transport,
        master_secret,
    })
}

fn parse_departments(line: u64, s: &str) -> Result<Vec<String>, FleetError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let departments: Vec<String> = s.split(DEPARTMENT_SEPARATOR).map(str::to_string).collect();
    if let Some(bad) = departments.iter().find(|d| !valid_id(d)) {
        return Err(field(
            line,
            "departments",
            s,
            format!(
                "has an invalid department {bad:?}: use `;`-separated ids such as dept-1;dept-2"
            ),
        ));
    }
    Ok(departments)
}

fn check_time_zone(line: u64, s: &str) -> Result<(), FleetError> {
    let shape_ok = !s.is_empty()
        && s.len() <= MAX_TIME_ZONE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
    if shape_ok {
        Ok(())
    } else {
        Err(field(
            line,
            "time_zone",
            s,
            "is not an IANA time-zone name such as Asia/Singapore",
        ))
    }
}

fn check_links(fleet: &Fleet, lock_lines: &[u64]) -> Result<(), FleetError> {
    let bridge_org: HashMap<&str, &str> = fleet
        .bridges
        .iter()
        .map(|b| (b.id.as_str(), b.org.as_str()))
        .collect();
    let mut linked: HashMap<&str, usize> = HashMap::new();
    for (lock, line) in fleet.locks.iter().zip(lock_lines) {
        let Some(bridge_id) = lock.bridge_id.as_deref() else {
            continue;
        };
        let Some(org) = bridge_org.get(bridge_id) else {
            return Err(FleetError::UnknownBridge {
                line: *line,
                bridge_id: bridge_id.to_string(),
            });
        };
        if *org != lock.org {
            return Err(FleetError::BridgeOrg {
                line: *line,
                bridge_id: bridge_id.to_string(),
                lock_org: lock.org.clone(),
                bridge_org: org.to_string(),
            });
        }
        let n = linked.entry(bridge_id).or_insert(0);
        *n += 1;
        if *n > MAX_LOCKS_PER_BRIDGE {
            return Err(FleetError::BridgeFull {
                line: *line,
                bridge_id: bridge_id.to_string(),
            });
        }
    }
    Ok(())
}

fn check_departments(fleet: &Fleet, lock_lines: &[u64]) -> Result<(), FleetError> {
    let mut per_org: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (lock, line) in fleet.locks.iter().zip(lock_lines) {
        let set = per_org.entry(lock.org.as_str()).or_default();
        set.extend(lock.departments.iter().map(String::as_str));
        if set.len() > MAX_DEPARTMENTS_PER_ORG {
            return Err(FleetError::TooManyDepartments {
                line: *line,
                org: lock.org.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{generate, FleetSpec};

    /// One fleet per test binary: generating again would draw new secrets.
    fn small_fleet() -> Fleet {
        static FLEET: std::sync::OnceLock<Fleet> = std::sync::OnceLock::new();
        FLEET
            .get_or_init(|| {
                generate(&FleetSpec {
                    locks: 40,
                    bridges: 6,
                    orgs: 4,
                    mqtt_share: 0.2,
                    seed: 3,
                })
                .unwrap()
            })
            .clone()
    }

    fn csv_of(fleet: &Fleet) -> String {
        let mut buf = Vec::new();
        fleet.write_to(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn csv_round_trips() {
        let fleet = small_fleet();
        let text = csv_of(&fleet);
        assert!(text.starts_with(&HEADER.join(",")), "{text}");
        assert_eq!(Fleet::read_from(text.as_bytes()).unwrap(), fleet);
    }

    #[test]
    fn csv_round_trips_through_a_file() {
        let fleet = small_fleet();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv");
        fleet.write_csv(&path).unwrap();
        assert_eq!(Fleet::read_csv(&path).unwrap(), fleet);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Fleet::read_csv("/nonexistent/fleet.csv").unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/fleet.csv:"),
            "{err}"
        );
    }

    /// Replaces `old` by `new` on the given 1-based line of the fleet's CSV
    /// and returns the read error.
    fn corrupt(line: usize, old: &str, new: &str) -> String {
        let text = csv_of(&small_fleet());
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert!(lines[line - 1].contains(old), "{}", lines[line - 1]);
        lines[line - 1] = lines[line - 1].replacen(old, new, 1);
        Fleet::read_from(lines.join("\n").as_bytes())
            .unwrap_err()
            .to_string()
    }

    /// The 1-based line of the first lock with this transport.
    fn first_lock_on(transport: &str) -> usize {
        let text = csv_of(&small_fleet());
        // The transport column is followed by the master secret's.
        let field = format!(",{transport},");
        text.lines().position(|l| l.contains(&field)).unwrap() + 1
    }

    #[test]
    fn bad_interval_says_line_column_and_rule() {
        let line = first_lock_on("coap");
        let text = csv_of(&small_fleet());
        let row = text.lines().nth(line - 1).unwrap().to_string();
        let cols: Vec<&str> = row.split(',').collect();
        let needle = format!(",{},{},", cols[8], cols[9]);
        let err = corrupt(line, &needle, &format!(",3,{},", cols[9]));
        assert!(
            err.starts_with(&format!("line {line}, column heartbeat_interval_h: \"3\"")),
            "{err}"
        );
        assert!(err.contains("1, 2, 5, 12 or 24"), "{err}");
    }

    #[test]
    fn unknown_model_and_bad_transport_are_named() {
        let line = first_lock_on("coap");
        let err = corrupt(line, ",INB1", ",INB9");
        assert!(
            err.starts_with(&format!("line {line}, column model: \"INB9")),
            "{err}"
        );
        let err = corrupt(line, ",coap", ",lora");
        assert!(err.contains("column transport"), "{err}");
    }

    #[test]
    fn duplicate_ids_point_at_both_lines() {
        let err = corrupt(3, "B00002", "B00001");
        assert!(
            err.contains("line 3, column id: \"B00001\" is already used on line 2"),
            "{err}"
        );
    }

    #[test]
    fn bridge_links_are_checked() {
        let line = first_lock_on("bridge");
        let text = csv_of(&small_fleet());
        let row = text.lines().nth(line - 1).unwrap();
        let bridge = row.split(',').nth(10).unwrap().to_string();
        let err = corrupt(line, &format!(",{bridge},"), ",B99999,");
        assert!(
            err.contains("bridge \"B99999\" is not in the file"),
            "{err}"
        );
    }

    #[test]
    fn wrong_header_is_refused() {
        let err = Fleet::read_from("id,kind\n".as_bytes()).unwrap_err();
        assert!(matches!(err, FleetError::Header { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("line 1: the header must be exactly"));
    }

    #[test]
    fn a_missing_or_bad_secret_names_line_and_column_but_never_the_value() {
        let text = csv_of(&small_fleet());
        let lines: Vec<&str> = text.lines().collect();
        let secret_of = |line: usize| lines[line - 1].rsplit(',').next().unwrap().to_string();
        let line = first_lock_on("coap");
        let secret = secret_of(line);
        assert_eq!(secret.len(), 64);

        let id = lines[line - 1].split(',').nth(1).unwrap();
        let err = corrupt(line, &format!(",{secret}"), ",");
        assert_eq!(
            err,
            format!("line {line}, column master_secret: the pairing secret of lock {id:?} is missing: regenerate the fleet file (device-sim fleet) or add the pairing secret")
        );
        let short = &secret[..40];
        let err = corrupt(line, &secret, short);
        assert!(
            err.contains("has 40 characters where a pairing secret has 64 hex characters"),
            "{err}"
        );
        assert!(!err.contains(short), "{err}");
        let not_hex = format!("{}zz", &secret[..62]);
        let err = corrupt(line, &secret, &not_hex);
        assert!(err.ends_with("is not hex (0-9, a-f): regenerate the fleet file (device-sim fleet) or add the pairing secret"), "{err}");
        assert!(!err.contains(&secret[..62]), "{err}");
        // Bridges need one too.
        let bridge_secret = secret_of(2);
        let err = corrupt(2, &format!(",{bridge_secret}"), ",");
        assert!(
            err.starts_with(
                "line 2, column master_secret: the pairing secret of bridge \"B00001\" is missing"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_file_from_before_the_secret_column_says_which_device_lacks_one() {
        let text = csv_of(&small_fleet());
        let old: Vec<String> = text
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect();
        assert!(old[0].ends_with(",transport"), "{}", old[0]);
        let err = Fleet::read_from(old.join("\n").as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                FleetError::Secret {
                    line: 2,
                    problem: SecretProblem::Missing,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("regenerate the fleet file"),
            "{err}"
        );
    }

    #[test]
    fn short_row_reports_its_line() {
        let text = format!("{}\nbridge,B1,,\n", HEADER.join(","));
        let err = Fleet::read_from(text.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("line 2:"), "{err}");
    }
}
