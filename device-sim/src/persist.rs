//! The state file at the edge of a run ([`crate::state`] holds the format and
//! the reservation arithmetic): where each device's starting counters come
//! from ([`Persister::open`]), how the coordinator sees the counters of
//! devices that live in other tasks ([`LiveCounters`]) and decides what to
//! re-reserve ([`Persister::rereserve`]), and how the file is replaced on
//! disk ([`write_atomic`], [`save`]).
//!
//! The devices of a run are its locks, in fleet order, then its bridges (a
//! bridge's OSCORE sequence protects its linked locks' reports). The run
//! writes the file three times over: with every device's reservation before
//! the first report, again whenever a device has used half of its
//! reservation, and with the exact counters at a clean end. A crash (or a
//! second Ctrl-C, or [`crate::run::RunHandle::abort`]) leaves the last
//! reservation in place, so the next run skips ahead instead of reusing seqs
//! or OSCORE sequence numbers.
//!
//! A lock's job state ([`JobMemory`]: PINs, remembered job outcomes, last
//! hard reset) travels the same way: the tasks hand every change to
//! [`LiveCounters::store_memory`], and every save takes what changed. The
//! file holds PIN digits, so it is written readable by its owner only.

use crate::jobs::JobMemory;
use crate::lock::Counters;
use crate::state::{self, ParseError, StateFile, RESERVATION};
use dashmap::DashMap;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How often the coordinator looks for devices past half of their
/// reservation. A look reads three atomics per device (milliseconds for a
/// million locks) and a write follows only when some device passed half, so
/// it can be frequent; at this cadence a device would need more than 16 000
/// seqs a second to use up a [`RESERVATION`] between two looks.
pub const SAVE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Suffix of the temporary file a save writes before renaming it over the
/// state file (in the same directory, so the rename is atomic).
const TEMP_SUFFIX: &str = ".tmp";

/// Unix permissions of the state file: owner read and write only, since it
/// holds the locks' PIN tables.
#[cfg(unix)]
const STATE_FILE_MODE: u32 = 0o600;

/// Where a run keeps its devices' counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateOptions {
    pub path: PathBuf,
    /// Ignore what the file holds, even if it cannot be read, and replace it
    /// (e.g. against a new gateway database).
    pub fresh: bool,
}

impl StateOptions {
    /// Read from and write to `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        StateOptions {
            path: path.into(),
            fresh: false,
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    // `at` is not a `source`: the message already carries it whole.
    #[error("the state file {path} is malformed at {at}; fix that line, delete the file, or pass --fresh-state to start every device at seq 1")]
    Malformed { path: PathBuf, at: ParseError },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a run's starting counters came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The file held `found` of the fleet's `fleet` devices and `others`
    /// devices that are not in the fleet (kept as they are).
    Read {
        path: PathBuf,
        found: usize,
        fleet: usize,
        others: usize,
    },
    /// No file yet.
    Missing { path: PathBuf },
    /// [`StateOptions::fresh`]: the file was not read.
    Ignored { path: PathBuf },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Read {
                path,
                found,
                fleet,
                others,
            } => write!(
                f,
                "device counters read from {}: {found} of {fleet} devices found, {others} other devices kept",
                path.display()
            ),
            Origin::Missing { path } => write!(
                f,
                "no state file at {} yet: devices start at seq 1",
                path.display()
            ),
            Origin::Ignored { path } => write!(
                f,
                "fresh state: not reading {}, devices start at seq 1",
                path.display()
            ),
        }
    }
}

/// Each device's counters as its task last left them, indexed like the
/// run's devices (locks in fleet order, then bridges). A task stores them
/// after every [`crate::lock::Lock::wake`] and every OSCORE sequence number
/// it draws, the only calls that allocate: three relaxed stores, nothing
/// else per report. The coordinator reads them for periodic saves; a value
/// it reads a moment late is only lower than the truth, which the
/// reservation margin covers.
#[derive(Debug)]
pub struct LiveCounters {
    devices: Box<[LiveSlot]>,
    /// Job states changed since the coordinator last took them, by device
    /// index. Jobs are rare next to reports: a map of the few that changed.
    memories: DashMap<usize, JobMemory>,
}

#[derive(Debug)]
struct LiveSlot {
    next_seq: AtomicU32,
    next_event_seq: AtomicU32,
    next_oscore_seq: AtomicU64,
}

impl LiveCounters {
    /// One slot per device, holding `start`.
    pub fn new(start: &[Counters]) -> Self {
        let devices = start
            .iter()
            .map(|c| LiveSlot {
                next_seq: AtomicU32::new(c.next_seq),
                next_event_seq: AtomicU32::new(c.next_event_seq),
                next_oscore_seq: AtomicU64::new(c.next_oscore_seq),
            })
            .collect();
        LiveCounters {
            devices,
            memories: DashMap::new(),
        }
    }

    /// Records the job state of the lock at `index` after it changed.
    pub fn store_memory(&self, index: usize, memory: JobMemory) {
        if index < self.devices.len() {
            self.memories.insert(index, memory);
        }
    }

    /// The job states changed since the last call, by device index.
    pub fn take_memories(&self) -> Vec<(usize, JobMemory)> {
        let indexes: Vec<usize> = self.memories.iter().map(|e| *e.key()).collect();
        indexes
            .into_iter()
            .filter_map(|i| self.memories.remove(&i))
            .collect()
    }

    /// Records the counters of the device at `index` (out of range: ignored).
    pub fn store(&self, index: usize, c: Counters) {
        if let Some(slot) = self.devices.get(index) {
            slot.next_seq.store(c.next_seq, Relaxed);
            slot.next_event_seq.store(c.next_event_seq, Relaxed);
            slot.next_oscore_seq.store(c.next_oscore_seq, Relaxed);
        }
    }

    pub fn load(&self, index: usize) -> Option<Counters> {
        self.devices.get(index).map(|slot| Counters {
            next_seq: slot.next_seq.load(Relaxed),
            next_event_seq: slot.next_event_seq.load(Relaxed),
            next_oscore_seq: slot.next_oscore_seq.load(Relaxed),
        })
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// What one [`Persister::rereserve`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rereserved {
    /// Devices re-reserved from their current counters.
    pub devices: usize,
    /// Of those, devices that had gone past their reservation: had the run
    /// crashed just before, the next one could have reused some of their seqs.
    pub overrun: usize,
}

/// The coordinator's view of the state file: what it holds (devices outside
/// the fleet included) and where each device's reservation was made from.
#[derive(Debug)]
pub struct Persister {
    path: PathBuf,
    file: StateFile,
    /// Per device of the run, its slot in `file`.
    slots: Vec<usize>,
    /// Per device of the run, the counters its current reservation was made
    /// from.
    bases: Vec<Counters>,
    /// `file` holds changes not yet on disk.
    unsaved: bool,
}

impl Persister {
    /// Reads the state file (unless `fresh`) and returns, in the order of
    /// `fleet_ids` (the run's devices), the counters each starts from: the
    /// file's, else `fallback`'s, else [`Counters::START`]. The persister then
    /// holds a reservation for every one of them, not yet saved.
    pub fn open(
        options: &StateOptions,
        fleet_ids: &[&str],
        fallback: &HashMap<String, Counters>,
    ) -> Result<(Persister, Vec<Counters>, Origin), StateError> {
        let path = options.path.clone();
        let (mut file, read) = if options.fresh {
            (StateFile::default(), false)
        } else {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let file = StateFile::parse(&bytes).map_err(|at| StateError::Malformed {
                        path: path.clone(),
                        at,
                    })?;
                    (file, true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (StateFile::default(), false),
                Err(source) => return Err(StateError::Read { path, source }),
            }
        };
        let in_file = file.len();
        let mut found = 0;
        let mut start = Vec::with_capacity(fleet_ids.len());
        let mut slots = Vec::with_capacity(fleet_ids.len());
        for id in fleet_ids {
            let saved = file.get(id);
            found += usize::from(saved.is_some());
            let c = saved
                .or_else(|| fallback.get(*id).copied())
                .unwrap_or_default();
            slots.push(file.insert(id, state::reserve(c)));
            start.push(c);
        }
        let origin = match (options.fresh, read) {
            (true, _) => Origin::Ignored { path: path.clone() },
            (false, false) => Origin::Missing { path: path.clone() },
            (false, true) => Origin::Read {
                path: path.clone(),
                found,
                fleet: fleet_ids.len(),
                others: in_file - found,
            },
        };
        let persister = Persister {
            path,
            file,
            slots,
            bases: start.clone(),
            unsaved: true,
        };
        Ok((persister, start, origin))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The job state the file holds for the run's device `i` (a lock).
    pub fn memory(&self, i: usize) -> Option<&JobMemory> {
        self.file.memory_at(*self.slots.get(i)?)
    }

    /// Takes the job states that changed from `live` into the file.
    pub fn take_memories(&mut self, live: &LiveCounters) {
        for (i, memory) in live.take_memories() {
            if let Some(&slot) = self.slots.get(i) {
                self.file.set_memory(slot, memory);
                self.unsaved = true;
            }
        }
    }

    /// The file's text as it should now be on disk.
    pub fn text(&self) -> String {
        self.file.to_text()
    }

    /// True when [`Persister::text`] has changes not yet saved.
    pub fn unsaved(&self) -> bool {
        self.unsaved
    }

    /// The text last taken from [`Persister::text`] is on disk.
    pub fn mark_saved(&mut self) {
        self.unsaved = false;
    }

    /// Re-reserves, from its current counters, every device that has used
    /// more than half of its reservation.
    pub fn rereserve(&mut self, live: &LiveCounters) -> Rereserved {
        let mut out = Rereserved::default();
        for (i, base) in self.bases.iter_mut().enumerate() {
            let Some(now) = live.load(i) else { continue };
            if !state::needs_reservation(*base, now) {
                continue;
            }
            out.devices += 1;
            if state::used(*base, now) > RESERVATION {
                out.overrun += 1;
            }
            *base = now;
            self.file.set(self.slots[i], state::reserve(now));
        }
        if out.devices > 0 {
            self.unsaved = true;
        }
        out
    }

    /// Sets the exact counters the run's devices ended with (no margin), in
    /// their order, for the final save of a clean end.
    pub fn set_exact(&mut self, counters: &[Counters]) {
        for (slot, c) in self.slots.iter().zip(counters) {
            self.file.set(*slot, *c);
        }
        self.unsaved = true;
    }
}

/// Replaces the file at `path` with `contents` atomically: a temporary file
/// beside it, flushed to disk, then renamed over it. A crash leaves the old
/// file or the new one, never a mix. On Unix the file is readable and
/// writable by its owner only (it holds the locks' PINs).
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let Some(name) = path.file_name() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path does not name a file",
        ));
    };
    let mut temp_name = name.to_owned();
    temp_name.push(TEMP_SUFFIX);
    let temp = path.with_file_name(temp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(STATE_FILE_MODE);
    }
    let mut file = options.open(&temp)?;
    // `mode` applies only to a file it creates: a temporary left by a crash
    // keeps its old mode unless set again.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(STATE_FILE_MODE))?;
    }
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    // The rename survives a power cut only once the directory is synced.
    // Best effort: some file systems refuse to sync a directory, and a crash
    // of the process alone (kill -9) is already covered by the rename.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// [`write_atomic`] on a blocking thread, off the async runtime's workers.
pub async fn save(path: PathBuf, text: String) -> Result<(), StateError> {
    let target = path.clone();
    let written = tokio::task::spawn_blocking(move || write_atomic(&target, text.as_bytes()))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    written.map_err(|source| StateError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::HEADER;

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

    fn open_at(path: &Path, fresh: bool) -> Result<(Persister, Vec<Counters>, Origin), StateError> {
        let options = StateOptions {
            path: path.to_path_buf(),
            fresh,
        };
        Persister::open(&options, &["L1", "L2"], &HashMap::new())
    }

    #[test]
    fn a_missing_file_starts_every_device_at_1_and_reserves_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv.state");
        let (p, start, origin) = open_at(&path, false).unwrap();
        assert_eq!(start, vec![Counters::START; 2]);
        assert_eq!(origin, Origin::Missing { path: path.clone() });
        assert!(p.unsaved());
        let k = 1 + RESERVATION;
        assert_eq!(
            p.text(),
            format!("{HEADER}\nL1,{k},{k},{k},\nL2,{k},{k},{k},\n")
        );
    }

    #[test]
    fn saved_counters_are_the_start_and_other_devices_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, format!("{HEADER}\nGONE,9,9,9,\nL2,50,60,70,\n")).unwrap();
        let fallback = HashMap::from([("L1".to_string(), c(7, 8)), ("L2".to_string(), c(1, 1))]);
        let (p, start, origin) =
            Persister::open(&StateOptions::at(&path), &["L1", "L2"], &fallback).unwrap();
        assert_eq!(
            start,
            vec![c(7, 8), c3(50, 60, 70)],
            "file first, then fallback"
        );
        assert_eq!(
            origin,
            Origin::Read {
                path,
                found: 1,
                fleet: 2,
                others: 1
            }
        );
        let text = p.text();
        assert!(text.contains("\nGONE,9,9,9,\n"), "{text}");
        let k = RESERVATION;
        assert!(text.contains(&format!("\nL2,{},{},{},\n", 50 + k, 60 + k, 70 + k)));
    }

    #[test]
    fn a_state_file_from_before_oscore_is_read_and_rewritten_with_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, "lock_id,next_seq,next_event_seq\nL1,5,6\n").unwrap();
        let (p, start, _) = open_at(&path, false).unwrap();
        assert_eq!(start, vec![c3(5, 6, 1), Counters::START]);
        let k = RESERVATION;
        assert!(
            p.text()
                .starts_with(&format!("{HEADER}\nL1,{},{},{},\n", 5 + k, 6 + k, 1 + k)),
            "{}",
            p.text()
        );
    }

    #[test]
    fn a_malformed_file_names_the_file_the_line_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv.state");
        std::fs::write(&path, format!("{HEADER}\nL1,5,6,7,\nL2,-1,6,7,\n")).unwrap();
        let err = open_at(&path, false).unwrap_err();
        assert!(matches!(err, StateError::Malformed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 3: next_seq \"-1\""), "{msg}");
        assert!(
            msg.contains("delete the file") && msg.contains("--fresh-state"),
            "{msg}"
        );

        // Fresh state does not read it at all.
        let (_, start, origin) = open_at(&path, true).unwrap();
        assert_eq!(start, vec![Counters::START; 2]);
        assert_eq!(origin, Origin::Ignored { path });
    }

    #[test]
    fn only_devices_past_half_their_reservation_are_re_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, start, _) = open_at(&dir.path().join("s"), false).unwrap();
        p.mark_saved();
        let live = LiveCounters::new(&start);
        let half = RESERVATION / 2;
        live.store(0, c(1 + half, 1));
        live.store(1, c3(2, 1 + half, 1 + u64::from(half)));
        assert_eq!(p.rereserve(&live), Rereserved::default());
        assert!(!p.unsaved(), "nothing to write");

        live.store(1, c3(2, 2, 2 + u64::from(half)));
        assert_eq!(
            p.rereserve(&live),
            Rereserved {
                devices: 1,
                overrun: 0
            }
        );
        assert!(p.unsaved());
        let k = 1 + RESERVATION;
        let l2 = state::reserve(c3(2, 2, 2 + u64::from(half)));
        assert_eq!(
            p.text(),
            format!(
                "{HEADER}\nL1,{k},{k},{k},\nL2,{},{},{},\n",
                l2.next_seq, l2.next_event_seq, l2.next_oscore_seq
            )
        );
        // L2's new base is its current counters: no second re-reservation.
        assert_eq!(p.rereserve(&live).devices, 0);

        live.store(0, c(2 + RESERVATION, 1));
        assert_eq!(
            p.rereserve(&live),
            Rereserved {
                devices: 1,
                overrun: 1
            }
        );

        p.set_exact(&[c3(3, 4, 5), c3(5, 6, 7)]);
        assert_eq!(p.text(), format!("{HEADER}\nL1,3,4,5,\nL2,5,6,7,\n"));
    }

    #[test]
    fn live_counters_carry_all_three_counters() {
        let live = LiveCounters::new(&[Counters::START]);
        live.store(0, c3(9, 8, 1 << 39));
        assert_eq!(live.load(0), Some(c3(9, 8, 1 << 39)));
        live.store(5, c(1, 1));
        assert_eq!(live.load(5), None);
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn changed_job_states_reach_the_file_once_and_stay_with_their_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, start, _) = open_at(&dir.path().join("s"), false).unwrap();
        p.mark_saved();
        let live = LiveCounters::new(&start);
        let mut m = JobMemory::default();
        m.hard_reset(1_800_000_000);
        live.store_memory(1, m.clone());
        live.store_memory(9, m.clone());
        p.take_memories(&live);
        assert!(p.unsaved());
        assert_eq!(p.memory(1), Some(&m));
        assert_eq!(p.memory(0), None);
        assert!(live.take_memories().is_empty(), "taken once");
        let text = p.text();
        let file = StateFile::parse(text.as_bytes()).unwrap();
        assert_eq!(file.memory("L2"), Some(&m));
        // A later open reads it back for the lock.
        std::fs::write(dir.path().join("s"), text).unwrap();
        let (p, _, _) = open_at(&dir.path().join("s"), false).unwrap();
        assert_eq!(p.memory(1), Some(&m));
        let (p, _, _) = open_at(&dir.path().join("s"), true).unwrap();
        assert_eq!(p.memory(1), None, "fresh state forgets it");
    }

    #[cfg(unix)]
    #[test]
    fn the_state_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv.state");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv.state");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("fleet.csv.state")]);
    }
}
