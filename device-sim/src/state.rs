//! The state file: each device's [`Counters`] carried from one run to the
//! next, as firmware carries them across reboots in non-volatile memory.
//! Without it every run would start every lock at seq 1 again, and the
//! gateway, which keys reports by (lock, seq) and events by (lock, event
//! seq), would acknowledge everything as a duplicate and store nothing; and
//! every device would restart its OSCORE sender sequence at 1, which the
//! gateway's replay window refuses (4.01) for every number it already saw.
//!
//! The file is text, one device (lock or bridge) a line under the header
//! [`HEADER`] (`device_id,next_seq,next_event_seq,next_oscore_seq,job_state`;
//! a bridge sends no reports of its own, so only its `next_oscore_seq`
//! moves). `job_state` is what jobs left in a lock's memory
//! ([`JobMemory`]: PIN table, remembered job outcomes, last hard reset) as
//! hex CBOR, empty for a lock jobs never touched. It holds PIN digits, so
//! the file is written readable by its owner only ([`crate::persist`]).
//! Devices that are not in the fleet being run stay in the file untouched: a
//! run may simulate a subset.
//!
//! A file written before jobs ([`COUNTERS_HEADER`], four columns) loads with
//! every lock's job state empty. A file written before OSCORE
//! ([`LEGACY_HEADER`], three columns, locks
//! only) still loads: every device's OSCORE sequence then starts at 1. That
//! is right for a gateway database that never saw those devices protected;
//! against one that did (the state file was lost or replaced), the gateway
//! refuses the reused numbers as replays, as it must for a device that lost
//! its state: start over with a new gateway database and `--fresh-state`.
//!
//! Crash safety follows RFC 8613 Appendix B.1.1 (how an OSCORE endpoint
//! keeps its Sender Sequence Number across reboots): before a run uses any
//! seq, it writes every device's counters advanced by [`RESERVATION`]; while
//! it runs it re-reserves, from its current counters, a device that has used
//! more than half of its reservation; at a clean end it writes the exact
//! values.
//! After a crash the next run starts past the reservation: seqs are skipped,
//! never reused.
//!
//! This module is pure (parse, serialise, reservation arithmetic); reading
//! and writing the file is [`crate::persist`]'s.

use crate::jobs::JobMemory;
use crate::lock::Counters;
use schemas::device::valid_id;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The first line of a state file.
pub const HEADER: &str = "device_id,next_seq,next_event_seq,next_oscore_seq,job_state";

/// The first line of a state file written before jobs: four columns, no
/// `job_state` (read as empty). Read, never written.
pub const COUNTERS_HEADER: &str = "device_id,next_seq,next_event_seq,next_oscore_seq";

/// The first line of a state file written before OSCORE: three columns, no
/// `next_oscore_seq` (read as 1). Read, never written.
pub const LEGACY_HEADER: &str = "lock_id,next_seq,next_event_seq";

/// What is appended to the fleet file's path to name its default state file.
pub const DEFAULT_SUFFIX: &str = ".state";

/// How far ahead of a lock's counters the state file is written while the
/// lock runs (the `K` of RFC 8613 Appendix B.1.1). It must exceed what a lock
/// can use between two saves: the run checks every
/// [`crate::persist::SAVE_CHECK_EVERY`] and re-reserves past half of it, so a
/// lock would need more than 16 000 seqs a second to outrun it, where one
/// report at a time and a few activity events per simulated hour give a few
/// hundred even at a speedup of 100 000. It is also what a crash skips, so it
/// is small enough for a u32 counter to survive 65 000 crashes before it
/// wraps.
pub const RESERVATION: u32 = 1 << 16;

/// How many values a seq takes: 1 to `u32::MAX` (0 is never used).
const SEQ_SPACE: u64 = u32::MAX as u64;

/// The largest `next_oscore_seq`: one past [`lockfleet_oscore::MAX_SEQ`],
/// a device that has used every OSCORE sequence number (it must be
/// re-keyed). The counter never wraps: a wrapped one would reuse nonces.
pub const OSCORE_SEQ_END: u64 = lockfleet_oscore::MAX_SEQ + 1;

/// The default state file of the fleet file at `fleet`: its path with
/// [`DEFAULT_SUFFIX`] appended (`fleet.csv` -> `fleet.csv.state`).
pub fn default_path(fleet: &Path) -> PathBuf {
    let mut path = fleet.as_os_str().to_owned();
    path.push(DEFAULT_SUFFIX);
    PathBuf::from(path)
}

/// `seq` advanced `n` times the way a lock advances it: `u32::MAX` is
/// followed by 1, never by 0.
pub fn seq_add(seq: u32, n: u32) -> u32 {
    let from = u64::from(seq.max(1)) - 1;
    // The remainder is below `u32::MAX`, so the sum fits a u32.
    ((from + u64::from(n)) % SEQ_SPACE + 1) as u32
}

/// How many times `from` was advanced to reach `to`, counting forward across
/// the wrap (the inverse of [`seq_add`]).
pub fn seqs_between(from: u32, to: u32) -> u32 {
    let from = u64::from(from.max(1)) - 1;
    let to = u64::from(to.max(1)) - 1;
    ((to + SEQ_SPACE - from) % SEQ_SPACE) as u32
}

/// `next_oscore_seq` advanced by `n`: no wrap, it stops at [`OSCORE_SEQ_END`].
pub fn oscore_seq_add(seq: u64, n: u32) -> u64 {
    seq.saturating_add(u64::from(n)).min(OSCORE_SEQ_END)
}

/// What the state file holds for a device whose counters are `c` while it
/// may run: every counter advanced by [`RESERVATION`].
pub fn reserve(c: Counters) -> Counters {
    Counters {
        next_seq: seq_add(c.next_seq, RESERVATION),
        next_event_seq: seq_add(c.next_event_seq, RESERVATION),
        next_oscore_seq: oscore_seq_add(c.next_oscore_seq, RESERVATION),
    }
}

/// How much of a reservation made from `base` a device now at `now` has
/// used: the most of its report, event and OSCORE sequence numbers used since.
pub fn used(base: Counters, now: Counters) -> u32 {
    let oscore = now.next_oscore_seq.saturating_sub(base.next_oscore_seq);
    seqs_between(base.next_seq, now.next_seq)
        .max(seqs_between(base.next_event_seq, now.next_event_seq))
        .max(u32::try_from(oscore).unwrap_or(u32::MAX))
}

/// True once a device has used more than half of the reservation made from
/// `base`: time to re-reserve from `now`.
pub fn needs_reservation(base: Counters, now: Counters) -> bool {
    used(base, now) > RESERVATION / 2
}

/// The contents of a state file, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateFile {
    devices: Vec<(String, Counters)>,
    /// Each device's job state, in the order of `devices`.
    memories: Vec<Option<JobMemory>>,
    index: HashMap<String, usize>,
}

/// Where a state file is malformed and how.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based; the header is line 1.
    pub line: usize,
    pub problem: Problem,
}

/// What is wrong with a line of a state file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not UTF-8 text")]
    NotText,
    #[error("the header must be exactly {HEADER:?}, found {0:?}")]
    Header(String),
    #[error("expected {expected} columns as the header says, found {found}")]
    Columns { expected: usize, found: usize },
    #[error("{0:?} is not a device id (letters, digits, '-', '_', '.')")]
    DeviceId(String),
    #[error("{column} {value:?} is not a number from 1 to {max}")]
    Number {
        column: &'static str,
        value: String,
        max: u64,
    },
    #[error("device {id:?} already appears on line {first_line}")]
    Duplicate { id: String, first_line: usize },
    #[error("job_state is not a lock's job state (hex CBOR): {0}")]
    JobState(String),
}

impl StateFile {
    /// Parses a state file. Blank lines are skipped; anything else that is
    /// not a well-formed line is an error naming the line.
    pub fn parse(bytes: &[u8]) -> Result<StateFile, ParseError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ParseError {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            problem: Problem::NotText,
        })?;
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        let header = lines.next().map_or("", |(_, l)| l);
        let expected = match header {
            HEADER => 5,
            COUNTERS_HEADER => 4,
            LEGACY_HEADER => 3,
            _ => {
                return Err(ParseError {
                    line: 1,
                    problem: Problem::Header(header.to_string()),
                })
            }
        };
        let mut file = StateFile::default();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (line, l) in lines.filter(|(_, l)| !l.is_empty()) {
            let err = |problem| ParseError { line, problem };
            let columns: Vec<&str> = l.split(',').map(str::trim).collect();
            if columns.len() != expected {
                return Err(err(Problem::Columns {
                    expected,
                    found: columns.len(),
                }));
            }
            let id = columns[0];
            if !valid_id(id) {
                return Err(err(Problem::DeviceId(id.to_string())));
            }
            if let Some(&first_line) = first_line.get(id) {
                return Err(err(Problem::Duplicate {
                    id: id.to_string(),
                    first_line,
                }));
            }
            let number = |column, value: &str, max: u64| match value.parse::<u64>() {
                Ok(n) if n > 0 && n <= max => Ok(n),
                _ => Err(err(Problem::Number {
                    column,
                    value: value.to_string(),
                    max,
                })),
            };
            let max_seq = u64::from(u32::MAX);
            // Within u32 range: `number` checked it against `max_seq`.
            let counters = Counters {
                next_seq: number("next_seq", columns[1], max_seq)? as u32,
                next_event_seq: number("next_event_seq", columns[2], max_seq)? as u32,
                next_oscore_seq: match columns.get(3) {
                    Some(v) => number("next_oscore_seq", v, OSCORE_SEQ_END)?,
                    None => Counters::START.next_oscore_seq,
                },
            };
            let memory = match columns.get(4).filter(|v| !v.is_empty()) {
                None => None,
                Some(v) => {
                    let bytes = from_hex(v).ok_or_else(|| {
                        err(Problem::JobState("not an even number of hex digits".into()))
                    })?;
                    let memory = JobMemory::from_cbor(&bytes)
                        .map_err(|e| err(Problem::JobState(e.to_string())))?;
                    Some(memory)
                }
            };
            first_line.insert(id.to_string(), line);
            let slot = file.insert(id, counters);
            if let Some(memory) = memory {
                file.set_memory(slot, memory);
            }
        }
        Ok(file)
    }

    /// The file's text: the header, then one line per device in order
    /// (always in the current format, whatever was read).
    pub fn to_text(&self) -> String {
        // ",4294967295,4294967295,1099511627776\n" is 37 bytes plus the id.
        let mut out = String::with_capacity(HEADER.len() + 1 + self.devices.len() * 50);
        out.push_str(HEADER);
        out.push('\n');
        for ((id, c), memory) in self.devices.iter().zip(&self.memories) {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "{id},{},{},{},",
                c.next_seq, c.next_event_seq, c.next_oscore_seq
            );
            if let Some(m) = memory.as_ref().filter(|m| !m.is_empty()) {
                push_hex(&mut out, &m.to_cbor());
            }
            out.push('\n');
        }
        out
    }

    /// The counters of device `id`, if the file has it.
    pub fn get(&self, id: &str) -> Option<Counters> {
        self.index.get(id).map(|&slot| self.devices[slot].1)
    }

    /// Sets the counters of `id`, appending it if new, and returns its
    /// slot for [`StateFile::set`].
    pub fn insert(&mut self, id: &str, counters: Counters) -> usize {
        if let Some(&slot) = self.index.get(id) {
            self.devices[slot].1 = counters;
            return slot;
        }
        let slot = self.devices.len();
        self.devices.push((id.to_string(), counters));
        self.memories.push(None);
        self.index.insert(id.to_string(), slot);
        slot
    }

    /// The job state of device `id`, if the file has one.
    pub fn memory(&self, id: &str) -> Option<&JobMemory> {
        self.index.get(id).and_then(|&slot| self.memory_at(slot))
    }

    /// The job state in `slot` (from [`StateFile::insert`]).
    pub fn memory_at(&self, slot: usize) -> Option<&JobMemory> {
        self.memories.get(slot).and_then(Option::as_ref)
    }

    /// Sets the job state in `slot`; a slot the file does not have is
    /// ignored.
    pub fn set_memory(&mut self, slot: usize, memory: JobMemory) {
        if let Some(entry) = self.memories.get_mut(slot) {
            *entry = Some(memory);
        }
    }

    /// Sets the counters in `slot` (from [`StateFile::insert`]); a slot the
    /// file does not have is ignored.
    pub fn set(&mut self, slot: usize, counters: Counters) {
        if let Some(entry) = self.devices.get_mut(slot) {
            entry.1 = counters;
        }
    }

    /// Every device and its counters, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Counters)> {
        self.devices.iter().map(|(id, c)| (id.as_str(), *c))
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// Appends `bytes` as lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// The bytes of hex text; `None` unless it is pairs of hex digits.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(next_seq: u32, next_event_seq: u32) -> Counters {
        c3(next_seq, next_event_seq, 1)
    }

    fn c3(next_seq: u32, next_event_seq: u32, next_oscore_seq: u64) -> Counters {
        Counters {
            next_seq,
            next_event_seq,
            next_oscore_seq,
        }
    }

    fn problem(text: &str) -> ParseError {
        StateFile::parse(text.as_bytes()).unwrap_err()
    }

    /// A state file in the format before jobs (four columns) with these
    /// lines: it parses as it always did.
    fn counters_only(lines: &str) -> String {
        format!("{COUNTERS_HEADER}\n{lines}")
    }

    #[test]
    fn a_state_file_round_trips_in_order() {
        let mut file = StateFile::default();
        file.insert("L000002", c3(7, 40, 12));
        file.insert("L000001", c(1, 1));
        file.insert("L000003", c3(u32::MAX, 65_537, OSCORE_SEQ_END));
        file.insert("B00001", c3(1, 1, 900));
        let text = file.to_text();
        assert_eq!(
            text,
            "device_id,next_seq,next_event_seq,next_oscore_seq,job_state\nL000002,7,40,12,\nL000001,1,1,1,\nL000003,4294967295,65537,1099511627776,\nB00001,1,1,900,\n"
        );
        assert_eq!(StateFile::parse(text.as_bytes()).unwrap(), file);
    }

    #[test]
    fn a_file_from_before_oscore_loads_with_every_oscore_sequence_at_1() {
        let file =
            StateFile::parse(b"lock_id,next_seq,next_event_seq\nL1,5,6\nL2,70,80\n").unwrap();
        assert_eq!(
            file.iter().collect::<Vec<_>>(),
            vec![("L1", c3(5, 6, 1)), ("L2", c3(70, 80, 1))]
        );
        // Written back in the current format.
        assert!(file
            .to_text()
            .starts_with(&format!("{HEADER}\nL1,5,6,1,\n")));
        // Each format wants its own number of columns.
        assert_eq!(
            problem("lock_id,next_seq,next_event_seq\nL1,5,6,7\n").problem,
            Problem::Columns {
                expected: 3,
                found: 4
            }
        );
        assert_eq!(
            problem(&counters_only("L1,5,6\n")).problem,
            Problem::Columns {
                expected: 4,
                found: 3
            }
        );
    }

    #[test]
    fn crlf_blank_lines_and_spaces_are_accepted() {
        let file = StateFile::parse(
            b"device_id,next_seq,next_event_seq,next_oscore_seq\r\n\r\n L1 , 5 ,6 , 7\r\n\n",
        )
        .unwrap();
        assert_eq!(file.iter().collect::<Vec<_>>(), vec![("L1", c3(5, 6, 7))]);
    }

    #[test]
    fn a_malformed_line_is_named_with_its_number_and_problem() {
        let e = problem(&counters_only("L1,5,6,1\nL2,abc,6,1\n"));
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "line 3: next_seq \"abc\" is not a number from 1 to 4294967295"
        );

        let zero = problem(&counters_only("L1,5,0,1\n"));
        assert_eq!(
            zero.problem,
            Problem::Number {
                column: "next_event_seq",
                value: "0".into(),
                max: u64::from(u32::MAX),
            }
        );
        let too_big = problem(&counters_only("L1,4294967296,1,1\n"));
        assert_eq!(too_big.line, 2);
        let oscore_too_big = problem(&counters_only("L1,1,1,1099511627777\n"));
        assert_eq!(
            oscore_too_big.to_string(),
            "line 2: next_oscore_seq \"1099511627777\" is not a number from 1 to 1099511627776"
        );
        assert_eq!(
            problem(&counters_only("L1,5\n")).problem,
            Problem::Columns {
                expected: 4,
                found: 2
            }
        );
        assert_eq!(
            problem(&counters_only("L 1,5,6,1\n")).problem,
            Problem::DeviceId("L 1".into())
        );
        assert_eq!(
            problem(&counters_only("L1,5,6,1\nL2,1,1,1\nL1,9,9,9\n")),
            ParseError {
                line: 4,
                problem: Problem::Duplicate {
                    id: "L1".into(),
                    first_line: 2
                }
            }
        );
    }

    #[test]
    fn a_missing_header_or_binary_garbage_is_malformed() {
        assert_eq!(problem("").problem, Problem::Header(String::new()));
        assert_eq!(
            problem("L1,5,6,1\n"),
            ParseError {
                line: 1,
                problem: Problem::Header("L1,5,6,1".into())
            }
        );
        let e = StateFile::parse(
            b"device_id,next_seq,next_event_seq,next_oscore_seq\nL1,5,6,1\nL2,\xff,1,1\n",
        );
        assert_eq!(
            e.unwrap_err(),
            ParseError {
                line: 3,
                problem: Problem::NotText
            }
        );
    }

    #[test]
    fn devices_not_updated_are_kept_untouched_in_place() {
        let mut file = StateFile::parse(
            counters_only("OTHER-1,900,901,902\nL1,5,6,7\nOTHER-2,3,4,5\n").as_bytes(),
        )
        .unwrap();
        let slot = file.insert("L1", c(70, 80));
        file.insert("NEW", c(1, 1));
        file.set(slot, c3(71, 81, 9));
        assert_eq!(
            file.to_text(),
            format!("{HEADER}\nOTHER-1,900,901,902,\nL1,71,81,9,\nOTHER-2,3,4,5,\nNEW,1,1,1,\n")
        );
        assert_eq!(file.get("OTHER-2"), Some(c3(3, 4, 5)));
        assert_eq!(file.get("L2"), None);
    }

    fn memory_with_a_pin() -> JobMemory {
        use schemas::device::{DeviceJob, JobAction, PinType};
        let mut m = JobMemory::default();
        m.hard_reset(1_800_000_000);
        m.handle(&DeviceJob {
            id: 9,
            attempt: 1,
            action: JobAction::CreatePin,
            access: Some("acc-1".into()),
            pin: Some("482916".into()),
            pin_type: Some(PinType::Permanent),
            start: Some(1_800_000_000),
            end: None,
            heartbeat_interval: None,
            activity_log_interval: None,
            issued: 1_800_000_001,
        });
        m
    }

    #[test]
    fn a_lock_s_job_state_round_trips_as_hex_and_stays_with_its_lock() {
        let mut file = StateFile::default();
        let l1 = file.insert("L1", c(5, 6));
        file.insert("L2", c(7, 8));
        let m = memory_with_a_pin();
        file.set_memory(l1, m.clone());
        // An empty job state is written as nothing.
        let l2 = file.insert("L2", c(7, 9));
        file.set_memory(l2, JobMemory::default());
        let text = file.to_text();
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("L1,5,6,1,") && line.len() > 20, "{line}");
        assert!(!line.contains("482916"), "the digits are not plain text");
        assert!(text.ends_with("\nL2,7,9,1,\n"), "{text}");
        let back = StateFile::parse(text.as_bytes()).unwrap();
        assert_eq!(back.memory("L1"), Some(&m));
        assert_eq!(back.memory("L2"), None);
        // New counters keep the job state.
        let mut back = back;
        back.insert("L1", c(50, 60));
        assert_eq!(back.memory("L1"), Some(&m));
        assert_eq!(back.get("L1"), Some(c(50, 60)));
    }

    #[test]
    fn a_damaged_job_state_names_its_line() {
        for bad in ["abc", "zz", "ff"] {
            let e = problem(&format!("{HEADER}\nL1,5,6,1,\nL2,5,6,1,{bad}\n"));
            assert_eq!(e.line, 3, "{bad}");
            assert!(matches!(e.problem, Problem::JobState(_)), "{bad}: {e}");
        }
        assert_eq!(
            problem(&format!("{HEADER}\nL1,5,6,1\n")).problem,
            Problem::Columns {
                expected: 5,
                found: 4
            }
        );
    }

    #[test]
    fn the_default_state_file_sits_beside_the_fleet_file() {
        assert_eq!(
            default_path(Path::new("runs/fleet.csv")),
            PathBuf::from("runs/fleet.csv.state")
        );
    }

    #[test]
    fn seq_add_advances_like_a_lock_and_skips_zero() {
        for seq in [1, 2, 1000, u32::MAX - 1, u32::MAX] {
            assert_eq!(seq_add(seq, 1), seq.wrapping_add(1).max(1), "{seq}");
            assert_eq!(seq_add(seq, 0), seq);
        }
        assert_eq!(seq_add(u32::MAX - 1, 3), 2);
        assert_eq!(seq_add(u32::MAX, RESERVATION), RESERVATION);
        // A whole turn of the 1..=u32::MAX cycle comes back to the start.
        assert_eq!(seq_add(42, u32::MAX), 42);
    }

    #[test]
    fn seqs_between_counts_forward_across_the_wrap() {
        assert_eq!(seqs_between(1, 1), 0);
        assert_eq!(seqs_between(5, 9), 4);
        assert_eq!(seqs_between(u32::MAX, 1), 1);
        assert_eq!(seqs_between(u32::MAX - 10, 10), 20);
        for (seq, n) in [(1, RESERVATION), (u32::MAX - 5, RESERVATION), (7, 0)] {
            assert_eq!(seqs_between(seq, seq_add(seq, n)), n);
        }
    }

    #[test]
    fn a_reservation_advances_every_counter_by_the_margin() {
        assert_eq!(
            reserve(c3(1, 1, 1)),
            c3(1 + RESERVATION, 1 + RESERVATION, 1 + u64::from(RESERVATION))
        );
        assert_eq!(
            reserve(c3(u32::MAX - 9, 100, 5)),
            c3(
                RESERVATION - 9,
                100 + RESERVATION,
                5 + u64::from(RESERVATION)
            )
        );
        // Never 0, even when the margin lands exactly on the wrap.
        let just_before = u32::MAX - RESERVATION + 1;
        assert_eq!(reserve(c(just_before, just_before)).next_seq, 1);
        assert_eq!(reserve(c(just_before - 1, 1)).next_seq, u32::MAX);
        // The OSCORE sequence never wraps: it stops where it is used up.
        assert_eq!(
            reserve(c3(1, 1, OSCORE_SEQ_END - 5)).next_oscore_seq,
            OSCORE_SEQ_END
        );
        assert_eq!(
            reserve(c3(1, 1, OSCORE_SEQ_END)).next_oscore_seq,
            OSCORE_SEQ_END
        );
    }

    #[test]
    fn re_reservation_is_due_past_half_the_margin_on_any_counter() {
        let base = c3(10, u32::MAX - 100, 50);
        let half = RESERVATION / 2;
        assert!(!needs_reservation(base, base));
        assert!(!needs_reservation(base, c3(10 + half, u32::MAX - 100, 50)));
        assert!(needs_reservation(base, c3(11 + half, u32::MAX - 100, 50)));
        // The event counter wrapped on the way; the distance still counts.
        let events = seq_add(base.next_event_seq, half + 1);
        assert!(events < base.next_event_seq);
        assert_eq!(used(base, c3(10, events, 50)), half + 1);
        assert!(needs_reservation(base, c3(10, events, 50)));
        // A bridge only moves its OSCORE sequence.
        let oscore = base.next_oscore_seq + u64::from(half);
        assert!(!needs_reservation(
            base,
            Counters {
                next_oscore_seq: oscore,
                ..base
            }
        ));
        assert!(needs_reservation(
            base,
            Counters {
                next_oscore_seq: oscore + 1,
                ..base
            }
        ));
        assert_eq!(
            used(
                base,
                Counters {
                    next_oscore_seq: u64::MAX,
                    ..base
                }
            ),
            u32::MAX
        );
    }
}
