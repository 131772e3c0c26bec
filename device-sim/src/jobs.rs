//! What a lock does with the jobs its downlinks carry, sans I/O: it applies
//! each (job id, attempt) at most once and remembers the outcome, so a job
//! delivered again (its result was lost) gets the same result without being
//! applied twice; it refuses jobs issued before its last hard reset; and it
//! keeps the state jobs change ([`JobMemory`]: PIN table, remembered
//! outcomes, blocked AlgoPINs, the time of the last hard reset), which the
//! state file carries from run to run like non-volatile memory.
//!
//! The lock ([`crate::lock::Lock`]) owns one `JobMemory`, applies the
//! [`Effect`]s that concern it (intervals, the bolt) and sends the results;
//! this module neither encodes reports nor reads a clock.

use crate::pins::{valid_digits, Pin, PinTable, SlotsFull, MAX_ACCESS_BYTES};
use minicbor::{Decode, Encode};
use schemas::device::{DeviceJob, JobAction, JobOutcome, JobResult, PinType};
use schemas::{ActivityLogInterval, DoorState, HeartbeatInterval};
use std::collections::VecDeque;

/// Outcomes a lock remembers, newest last. A result is lost only with its
/// report, and the gateway delivers the job again at the next heartbeat or
/// report, long before 256 other jobs could reach the same lock (a downlink
/// carries a handful, a report at most 32).
pub const MAX_REMEMBERED_JOBS: usize = 256;

/// AlgoPIN access ids a lock remembers as deleted. AlgoPINs are computed by
/// the lock, so deleting one means blocking its access id; the oldest block
/// is forgotten first past this bound (a lock's memory is small).
pub const MAX_BLOCKED_ALGO_PINS: usize = 256;

/// What applying a job asks of the rest of the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Use these intervals from now on (`None`: keep the current one).
    SetIntervals {
        heartbeat: Option<HeartbeatInterval>,
        activity_log: Option<ActivityLogInterval>,
    },
    /// Throw (`true`) or withdraw (`false`) the bolt now.
    Bolt {
        locked: bool,
    },
    /// Set the clock and collect the state (nothing else changes).
    Sync,
}

/// What [`JobMemory::handle`] did with one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// The result to report.
    pub result: JobResult,
    /// True when the job was already handled: the result is the remembered
    /// one and nothing was applied.
    pub repeat: bool,
    pub effect: Effect,
}

/// A lock's job state. `Debug` never shows PIN digits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct JobMemory {
    #[n(0)]
    pins: PinTable,
    /// The results of the last [`MAX_REMEMBERED_JOBS`] jobs handled.
    #[n(1)]
    outcomes: VecDeque<JobResult>,
    #[n(2)]
    blocked_algo_pins: VecDeque<String>,
    /// Unix seconds (the clock of `DeviceJob::issued`) of the last hard reset.
    #[n(3)]
    hard_reset_at: Option<u64>,
}

impl JobMemory {
    /// Handles `job`: its remembered result if it was handled before, else
    /// [`JobOutcome::HardReset`] if it was issued before the last hard
    /// reset, else the result of applying it. Either of the last two is
    /// remembered.
    pub fn handle(&mut self, job: &DeviceJob) -> Handled {
        self.handle_at(job, DoorState::Unknown)
    }

    /// [`JobMemory::handle`] at a lock whose door is in state `door`: a
    /// lock job while the door is open is rejected (the bolt would stick
    /// out of an open door, and a locked-but-open door would contradict
    /// the activity log), and remembered like any other result.
    pub fn handle_at(&mut self, job: &DeviceJob, door: DoorState) -> Handled {
        if let Some(result) = self.remembered(job.id, job.attempt) {
            return Handled {
                result: result.clone(),
                repeat: true,
                effect: Effect::None,
            };
        }
        let (outcome, detail, effect) = match self.hard_reset_at {
            Some(reset) if job.issued < reset => (
                JobOutcome::HardReset,
                Some(format!("lock was hard reset at {reset}")),
                Effect::None,
            ),
            _ if job.action == JobAction::Lock && door == DoorState::Open => (
                JobOutcome::Rejected,
                Some("the door is open".to_string()),
                Effect::None,
            ),
            _ => self.apply(job),
        };
        let result = JobResult {
            id: job.id,
            attempt: job.attempt,
            outcome,
            detail,
        };
        if self.outcomes.len() >= MAX_REMEMBERED_JOBS {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(result.clone());
        Handled {
            result,
            repeat: false,
            effect,
        }
    }

    /// The remembered result of (`id`, `attempt`).
    pub fn remembered(&self, id: u64, attempt: u8) -> Option<&JobResult> {
        self.outcomes
            .iter()
            .rev()
            .find(|r| r.id == id && r.attempt == attempt)
    }

    fn apply(&mut self, job: &DeviceJob) -> (JobOutcome, Option<String>, Effect) {
        let refuse = |outcome, detail: &str| (outcome, Some(detail.to_string()), Effect::None);
        match job.action {
            JobAction::CreatePin => match pin_of(job) {
                Err(why) => refuse(JobOutcome::InvalidPin, why),
                Ok(pin) => {
                    let access = pin.access.clone();
                    match self.pins.insert(pin) {
                        Ok(_) => {
                            // The access is a custom PIN now, not a blocked AlgoPIN.
                            self.blocked_algo_pins.retain(|a| *a != access);
                            (JobOutcome::Done, None, Effect::None)
                        }
                        Err(SlotsFull) => {
                            refuse(JobOutcome::SlotsFull, "all 199 PIN slots are taken")
                        }
                    }
                }
            },
            JobAction::DeletePin => match job.access.as_deref() {
                None | Some("") => refuse(JobOutcome::Rejected, "delete_pin without an access"),
                Some(access) => {
                    // A PIN the table does not hold may be an AlgoPIN, which
                    // the lock computes itself: block it. Either way the PIN
                    // no longer opens the lock, which is what was asked.
                    if !self.pins.remove(access) && !self.is_blocked(access) {
                        if self.blocked_algo_pins.len() >= MAX_BLOCKED_ALGO_PINS {
                            self.blocked_algo_pins.pop_front();
                        }
                        self.blocked_algo_pins.push_back(access.to_string());
                    }
                    (JobOutcome::Done, None, Effect::None)
                }
            },
            JobAction::SetIntervals => {
                if job.heartbeat_interval.is_none() && job.activity_log_interval.is_none() {
                    return refuse(JobOutcome::Rejected, "set_intervals without intervals");
                }
                let effect = Effect::SetIntervals {
                    heartbeat: job.heartbeat_interval,
                    activity_log: job.activity_log_interval,
                };
                (JobOutcome::Done, None, effect)
            }
            JobAction::Lock => (JobOutcome::Done, None, Effect::Bolt { locked: true }),
            JobAction::Unlock => (JobOutcome::Done, None, Effect::Bolt { locked: false }),
            JobAction::Sync => (JobOutcome::Done, None, Effect::Sync),
        }
    }

    /// Wipes the PIN table, the remembered outcomes and the blocked AlgoPINs,
    /// and records `at_s` as the time of the reset: jobs issued before it
    /// fail with [`JobOutcome::HardReset`] from now on.
    pub fn hard_reset(&mut self, at_s: u64) {
        *self = JobMemory {
            hard_reset_at: Some(at_s),
            ..JobMemory::default()
        };
    }

    pub fn hard_reset_at(&self) -> Option<u64> {
        self.hard_reset_at
    }

    pub fn pins(&self) -> &PinTable {
        &self.pins
    }

    pub fn pins_mut(&mut self) -> &mut PinTable {
        &mut self.pins
    }

    /// Deleted AlgoPIN access ids, oldest first.
    pub fn blocked_algo_pins(&self) -> impl Iterator<Item = &str> {
        self.blocked_algo_pins.iter().map(String::as_str)
    }

    pub fn is_blocked(&self, access: &str) -> bool {
        self.blocked_algo_pins.iter().any(|a| a == access)
    }

    /// How many job outcomes are remembered.
    pub fn remembered_count(&self) -> usize {
        self.outcomes.len()
    }

    /// True for the memory of a lock fresh from the factory.
    pub fn is_empty(&self) -> bool {
        *self == JobMemory::default()
    }

    /// The memory as CBOR (the state file's `job_state` column, hex).
    pub fn to_cbor(&self) -> Vec<u8> {
        schemas::device::encode(self)
    }

    /// The memory from [`JobMemory::to_cbor`]'s bytes.
    pub fn from_cbor(bytes: &[u8]) -> Result<JobMemory, minicbor::decode::Error> {
        minicbor::decode(bytes)
    }
}

/// The PIN a create_pin job asks for, or why the lock refuses it (never
/// naming the digits).
fn pin_of(job: &DeviceJob) -> Result<Pin, &'static str> {
    let access = match job.access.as_deref() {
        Some(a) if !a.is_empty() && a.len() <= MAX_ACCESS_BYTES => a,
        Some(a) if !a.is_empty() => return Err("access id longer than 64 bytes"),
        _ => return Err("create_pin without an access"),
    };
    let digits = job.pin.as_deref().ok_or("create_pin without a PIN")?;
    if !valid_digits(digits) {
        return Err("a PIN is 4 to 10 digits 0-9");
    }
    let pin_type = job.pin_type.ok_or("create_pin without a PIN type")?;
    let start = job.start.ok_or("create_pin without a start")?;
    let end = match pin_type {
        PinType::Duration => match job.end {
            Some(end) if end > start => Some(end),
            Some(_) => return Err("a duration PIN ends after its start"),
            None => return Err("a duration PIN needs an end"),
        },
        // The other types have no end; one sent anyway changes nothing.
        PinType::OneTime | PinType::Permanent => None,
    };
    Ok(Pin {
        access: access.to_string(),
        digits: digits.to_string(),
        pin_type,
        start,
        end,
    })
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
pub(crate) mod tests;
