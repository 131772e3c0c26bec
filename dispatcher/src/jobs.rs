//! Jobs: the rules of the guides' Jobs List and Access pages, as pure
//! functions over records the store reads inside its transaction.
//!
//! * [`check_create_pin`], [`check_delete_pin`], [`check_set_intervals`],
//!   [`check_delete_job`], [`check_recreate`]: whether a command may go
//!   ahead, or the [`Refusal`] naming the rule it broke.
//! * [`apply_result`]: what a lock's result does to a job.
//! * [`pack`]: which pending jobs go into one NB-IoT downlink.
//!
//! States: `pending -> completed | failed`; `pending -> deleted` (deleted
//! from the Jobs List before delivery); `failed -> pending` once (recreate).
//! Connectivity trouble never fails a job: only a lock's error does.

use crate::registry::{LockRecord, ReportPath};
use schemas::command::{JobKind, JobState, PinKind};
use schemas::device::{DeviceJob, JobAction, JobOutcome, PinType, MAX_PIN_DIGITS, MIN_PIN_DIGITS};
use schemas::{ActivityLogInterval, HeartbeatInterval};

/// The guide: 199 active PINs per lock, AlgoPINs and custom PINs together.
pub const MAX_ACTIVE_PINS: u32 = 199;
/// The guide: a PIN's start is at most 14 days ahead.
pub const MAX_START_AHEAD_S: u64 = 14 * 24 * 3600;
/// Clock skew tolerated on "start is not in the past".
pub const START_SKEW_S: u64 = 60;
/// A one-time PIN opens within 24 hours of its start.
pub const ONE_TIME_WINDOW_S: u64 = 24 * 3600;
/// A failed job can be recreated once: attempt 1, then 2.
pub const MAX_ATTEMPT: u8 = 2;

/// A command refused: the rule it broke and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("lock {0} is not registered in this organisation: check the lock id and the organisation in the topic")]
    UnknownLock(String),
    #[error("lock {lock} belongs to a flat organisation: send no department")]
    DepartmentInFlatOrg { lock: String },
    #[error("lock {lock} belongs to departments; name the department you act in")]
    DepartmentRequired { lock: String },
    #[error(
        "department {department} does not hold lock {lock}: act in one of the lock's departments"
    )]
    DepartmentDoesNotHoldLock { department: String, lock: String },
    #[error("lock {lock} belongs to {count} departments; a Custom PIN needs a lock in exactly one department")]
    LockInSeveralDepartments { lock: String, count: usize },
    #[error("lock {lock} is a Bluetooth lock without a bridge: this server reaches it only through a bridge; link it to one first (link_bridge)")]
    NoDeliveryRoute { lock: String },
    #[error("lock {lock} has no bridge, and lock, unlock and sync go only through a bridge: link it to one first (link_bridge)")]
    NoBridge { lock: String },
    #[error("bridge {bridge} of lock {lock} is offline, so the command was not queued (lock, unlock and sync act now or not at all): try again once the bridge is back online")]
    BridgeOffline { lock: String, bridge: String },
    #[error(
        "a PIN is {MIN_PIN_DIGITS} to {MAX_PIN_DIGITS} digits 0-9: send the digits as a string"
    )]
    PinDigits,
    #[error("{field} must be 1 to {max} characters")]
    Text { field: &'static str, max: usize },
    #[error("the PIN start {start_s} is in the past (now {now_s}): choose a start from now on")]
    StartInPast { start_s: u64, now_s: u64 },
    #[error("the PIN start {start_s} is more than 14 days ahead (now {now_s}): choose a start within 14 days")]
    StartTooFar { start_s: u64, now_s: u64 },
    #[error("a duration PIN needs an end after its start")]
    EndRequired,
    #[error("a {0} PIN has no end: send end_s only for duration PINs")]
    EndNotAllowed(&'static str),
    #[error("lock {lock} would hold {would_hold} active PINs (with pending creations), more than the 199 allowed: delete PINs first")]
    PinLimit { lock: String, would_hold: u32 },
    #[error("access {access} is not a custom PIN of lock {lock}: check the access id (AlgoPINs are deleted with pin_kind \"algo\")")]
    UnknownAccess { access: String, lock: String },
    #[error("access {access} already has a pending job ({job_id}): wait for it or delete it from the Jobs List")]
    AccessBusy { access: String, job_id: u64 },
    #[error("the failed job {job_id} of access {access} was recreated: its Delete PIN path is closed (the guide greys it out); wait for the recreated job")]
    RecreatedAlready { access: String, job_id: u64 },
    #[error("set_intervals needs heartbeat_interval_h (1, 2, 5, 12 or 24) and/or activity_log_interval_min (1, 10, 30 or 60..1440 in whole hours)")]
    NoIntervals,
    #[error("{0}")]
    BadInterval(String),
    #[error("job {0} does not exist in this organisation")]
    UnknownJob(u64),
    #[error("job {job_id} is {state}; only a pending job can be deleted")]
    NotPending { job_id: u64, state: &'static str },
    #[error("job {job_id} reached the lock and its result is not back: it cannot be deleted until the lock reports")]
    InFlight { job_id: u64 },
    #[error("job {job_id} is {state}; only a failed job can be recreated")]
    NotFailed { job_id: u64, state: &'static str },
    #[error("job {job_id} was recreated once already; a job can be recreated only once")]
    RecreatedOnce { job_id: u64 },
    #[error("the PIN of failed job {job_id} was deleted from the access list instead: the Recreate path is closed (the guide greys it out)")]
    AlternativePathUsed { job_id: u64 },
    #[error("bridge {0} is not registered in this organisation: check the bridge id")]
    UnknownBridge(String),
    #[error("lock {lock} is linked to bridge {bridge} already; a lock links to one bridge: unlink it first")]
    LockAlreadyLinked { lock: String, bridge: String },
    #[error(
        "bridge {bridge} links {count} locks already, the most a bridge takes: unlink one first"
    )]
    BridgeFull { bridge: String, count: usize },
    #[error("lock {0} is not linked to a bridge")]
    NotLinked(String),
    #[error(
        "idempotency key {0:?} was used for a different command: use a new key for a new command"
    )]
    KeyReused(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    TwoFactor(#[from] crate::twofa::TwoFactorRefusal),
}

impl Refusal {
    /// Stable machine-readable rule name (answer's `rule`, metric label).
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::UnknownLock(_) => "unknown_lock",
            Refusal::DepartmentInFlatOrg { .. } => "department_in_flat_org",
            Refusal::DepartmentRequired { .. } => "department_required",
            Refusal::DepartmentDoesNotHoldLock { .. } => "department_does_not_hold_lock",
            Refusal::LockInSeveralDepartments { .. } => "lock_in_several_departments",
            Refusal::NoDeliveryRoute { .. } => "no_delivery_route",
            Refusal::NoBridge { .. } => "no_bridge",
            Refusal::BridgeOffline { .. } => "bridge_offline",
            Refusal::PinDigits => "pin_digits",
            Refusal::Text { .. } => "text",
            Refusal::StartInPast { .. } => "start_in_past",
            Refusal::StartTooFar { .. } => "start_too_far",
            Refusal::EndRequired => "end_required",
            Refusal::EndNotAllowed(_) => "end_not_allowed",
            Refusal::PinLimit { .. } => "pin_limit",
            Refusal::UnknownAccess { .. } => "unknown_access",
            Refusal::AccessBusy { .. } => "access_busy",
            Refusal::RecreatedAlready { .. } => "recreated_already",
            Refusal::NoIntervals => "no_intervals",
            Refusal::BadInterval(_) => "bad_interval",
            Refusal::UnknownJob(_) => "unknown_job",
            Refusal::NotPending { .. } => "not_pending",
            Refusal::InFlight { .. } => "in_flight",
            Refusal::NotFailed { .. } => "not_failed",
            Refusal::RecreatedOnce { .. } => "recreated_once",
            Refusal::AlternativePathUsed { .. } => "alternative_path_used",
            Refusal::UnknownBridge(_) => "unknown_bridge",
            Refusal::LockAlreadyLinked { .. } => "lock_already_linked",
            Refusal::BridgeFull { .. } => "bridge_full",
            Refusal::NotLinked(_) => "not_linked",
            Refusal::TwoFactor(r) => r.rule(),
            Refusal::KeyReused(_) => "idempotency_key_reused",
            Refusal::BadRequest(_) => "bad_request",
        }
    }
}

/// How the second chance of a failed job was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetriedBy {
    /// Recreate Job on the Jobs List.
    Recreate,
    /// Delete PIN on the access list (the original steps).
    DeletePin,
}

impl RetriedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RetriedBy::Recreate => "recreate",
            RetriedBy::DeletePin => "delete_pin",
        }
    }
    pub fn parse(s: &str) -> Option<RetriedBy> {
        match s {
            "recreate" => Some(RetriedBy::Recreate),
            "delete_pin" => Some(RetriedBy::DeletePin),
            _ => None,
        }
    }
}

/// A job as stored: what the rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub id: u64,
    pub lock_id: String,
    pub kind: JobKind,
    pub state: JobState,
    pub attempt: u8,
    pub access_id: Option<String>,
    /// Delivered and no result back yet (for this attempt).
    pub in_flight: bool,
    pub retried_by: Option<RetriedBy>,
}

/// Which department a command acts in, checked against the lock.
pub fn check_department(lock: &LockRecord, department: Option<&str>) -> Result<(), Refusal> {
    let id = lock.id.to_string();
    match (lock.departments.is_empty(), department) {
        (true, None) => Ok(()),
        (true, Some(_)) => Err(Refusal::DepartmentInFlatOrg { lock: id }),
        (false, None) => Err(Refusal::DepartmentRequired { lock: id }),
        (false, Some(d)) if lock.departments.iter().any(|x| x == d) => Ok(()),
        (false, Some(d)) => Err(Refusal::DepartmentDoesNotHoldLock {
            department: d.to_string(),
            lock: id,
        }),
    }
}

/// PIN and interval jobs reach NB-IoT locks at their heartbeat, and linked
/// locks through their bridge (`lock.bridge`, as stored); a Bluetooth lock
/// without a bridge cannot be reached.
pub fn check_route(lock: &LockRecord) -> Result<(), Refusal> {
    match (lock.path, &lock.bridge) {
        (ReportPath::Coap | ReportPath::Mqtt, _) | (ReportPath::Bridge, Some(_)) => Ok(()),
        (ReportPath::Bridge, None) => Err(Refusal::NoDeliveryRoute {
            lock: lock.id.to_string(),
        }),
    }
}

/// Lock, unlock and sync: only through the lock's bridge (`lock.bridge`,
/// as stored), and only while it is online (`bridge_online`, as stored), so
/// that the dashboard learns at once that the door will not move.
pub fn check_bridge_action(
    lock: &LockRecord,
    department: Option<&str>,
    bridge_online: bool,
) -> Result<(), Refusal> {
    check_department(lock, department)?;
    let Some(bridge) = &lock.bridge else {
        return Err(Refusal::NoBridge {
            lock: lock.id.to_string(),
        });
    };
    if !bridge_online {
        return Err(Refusal::BridgeOffline {
            lock: lock.id.to_string(),
            bridge: bridge.to_string(),
        });
    }
    Ok(())
}

/// Default time to live of lock, unlock and sync: a person waits at the
/// door for seconds, not hours. A bridge that has not reported the result
/// by then (it went offline, or the lock is out of Bluetooth range) fails
/// the job with [`immediate_expired_reason`], and it is never sent again:
/// an unlock carried out hours later would open a door nobody is at.
pub const DEFAULT_IMMEDIATE_TTL_MS: u64 = 60_000;

/// Whether an immediate job created at `created_at_ms` has outlived `ttl_ms`.
pub fn immediate_expired(created_at_ms: u64, ttl_ms: u64, now_ms: u64) -> bool {
    now_ms >= created_at_ms.saturating_add(ttl_ms)
}

/// The Jobs List's reason for an immediate job that expired.
pub fn immediate_expired_reason(ttl_ms: u64) -> String {
    format!(
        "Not delivered in time: the bridge did not report a result within {} s",
        ttl_ms / 1000
    )
}

pub fn check_text(field: &'static str, s: &str) -> Result<(), Refusal> {
    if s.is_empty() || s.len() > schemas::command::MAX_TEXT || s.chars().any(char::is_control) {
        return Err(Refusal::Text {
            field,
            max: schemas::command::MAX_TEXT,
        });
    }
    Ok(())
}

/// 4 to 10 ASCII digits.
pub fn valid_pin(pin: &str) -> bool {
    (MIN_PIN_DIGITS..=MAX_PIN_DIGITS).contains(&pin.len())
        && pin.bytes().all(|b| b.is_ascii_digit())
}

/// A Custom PIN request, as the rules see it.
#[derive(Clone, Debug)]
pub struct PinRequest<'a> {
    pub pin_name: &'a str,
    pub pin: &'a str,
    pub pin_type: PinType,
    pub start_s: u64,
    pub end_s: Option<u64>,
    pub algo_pins_active: u16,
}

/// Every rule of creating a Custom PIN job. `custom_pins_active` counts the
/// lock's custom PINs that are active or pending creation (not expired).
pub fn check_create_pin(
    lock: &LockRecord,
    department: Option<&str>,
    req: &PinRequest<'_>,
    custom_pins_active: u32,
    now_s: u64,
) -> Result<(), Refusal> {
    check_department(lock, department)?;
    if lock.departments.len() > 1 {
        return Err(Refusal::LockInSeveralDepartments {
            lock: lock.id.to_string(),
            count: lock.departments.len(),
        });
    }
    check_route(lock)?;
    check_text("pin_name", req.pin_name)?;
    if !valid_pin(req.pin) {
        return Err(Refusal::PinDigits);
    }
    if req.start_s + START_SKEW_S < now_s {
        return Err(Refusal::StartInPast {
            start_s: req.start_s,
            now_s,
        });
    }
    if req.start_s > now_s + MAX_START_AHEAD_S {
        return Err(Refusal::StartTooFar {
            start_s: req.start_s,
            now_s,
        });
    }
    match (req.pin_type, req.end_s) {
        (PinType::Duration, Some(end)) if end > req.start_s => {}
        (PinType::Duration, _) => return Err(Refusal::EndRequired),
        (t, Some(_)) => return Err(Refusal::EndNotAllowed(t.as_str())),
        (_, None) => {}
    }
    let would_hold = custom_pins_active + u32::from(req.algo_pins_active) + 1;
    if would_hold > MAX_ACTIVE_PINS {
        return Err(Refusal::PinLimit {
            lock: lock.id.to_string(),
            would_hold,
        });
    }
    Ok(())
}

/// Whether a PIN still counts as active at `now_s` (an expired PIN frees
/// its slot).
pub fn pin_counts_at(pin_type: PinType, start_s: u64, end_s: Option<u64>, now_s: u64) -> bool {
    match pin_type {
        PinType::Permanent => true,
        PinType::Duration => end_s.is_none_or(|e| e > now_s),
        PinType::OneTime => start_s + ONE_TIME_WINDOW_S > now_s,
    }
}

/// What the store found about the access a delete names.
#[derive(Clone, Debug, Default)]
pub struct AccessFacts {
    /// A custom PIN by that id exists (active or pending creation).
    pub custom_pin_exists: bool,
    /// The newest job of the access, if any.
    pub latest_job: Option<JobRecord>,
}

/// What deleting a PIN does to an earlier failed job of the same access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletePlan {
    /// A failed job of the access whose second chance this delete takes.
    pub closes_recreate_of: Option<u64>,
}

/// Rules of the Delete PIN job.
pub fn check_delete_pin(
    lock: &LockRecord,
    department: Option<&str>,
    access_id: &str,
    kind: PinKind,
    facts: &AccessFacts,
) -> Result<DeletePlan, Refusal> {
    check_department(lock, department)?;
    check_route(lock)?;
    check_text("access_id", access_id)?;
    if kind == PinKind::Custom && !facts.custom_pin_exists {
        return Err(Refusal::UnknownAccess {
            access: access_id.to_string(),
            lock: lock.id.to_string(),
        });
    }
    let mut plan = DeletePlan {
        closes_recreate_of: None,
    };
    if let Some(job) = &facts.latest_job {
        match job.state {
            JobState::Pending if job.retried_by == Some(RetriedBy::Recreate) => {
                return Err(Refusal::RecreatedAlready {
                    access: access_id.to_string(),
                    job_id: job.id,
                })
            }
            JobState::Pending => {
                return Err(Refusal::AccessBusy {
                    access: access_id.to_string(),
                    job_id: job.id,
                })
            }
            JobState::Failed if job.retried_by == Some(RetriedBy::Recreate) => {
                return Err(Refusal::RecreatedAlready {
                    access: access_id.to_string(),
                    job_id: job.id,
                })
            }
            JobState::Failed if job.retried_by.is_none() => {
                plan.closes_recreate_of = Some(job.id);
            }
            _ => {}
        }
    }
    Ok(plan)
}

/// Parse the interval change of a set_intervals command; at least one.
pub fn check_set_intervals(
    lock: &LockRecord,
    department: Option<&str>,
    heartbeat_h: Option<u16>,
    activity_min: Option<u16>,
) -> Result<(HeartbeatInterval, ActivityLogInterval), Refusal> {
    check_department(lock, department)?;
    check_route(lock)?;
    if heartbeat_h.is_none() && activity_min.is_none() {
        return Err(Refusal::NoIntervals);
    }
    let hb = match heartbeat_h {
        Some(h) => {
            HeartbeatInterval::from_hours(h).map_err(|e| Refusal::BadInterval(e.to_string()))?
        }
        None => lock.heartbeat_interval,
    };
    let log = match activity_min {
        Some(m) => {
            ActivityLogInterval::from_minutes(m).map_err(|e| Refusal::BadInterval(e.to_string()))?
        }
        None => lock.activity_log_interval,
    };
    Ok((hb, log))
}

/// Deleting a job from the Jobs List.
pub fn check_delete_job(job: &JobRecord) -> Result<(), Refusal> {
    if job.state != JobState::Pending {
        return Err(Refusal::NotPending {
            job_id: job.id,
            state: job.state.as_str(),
        });
    }
    if job.in_flight {
        return Err(Refusal::InFlight { job_id: job.id });
    }
    Ok(())
}

/// Recreating a failed job: once, and not after its PIN was deleted instead.
pub fn check_recreate(job: &JobRecord) -> Result<(), Refusal> {
    if job.state != JobState::Failed {
        return Err(Refusal::NotFailed {
            job_id: job.id,
            state: job.state.as_str(),
        });
    }
    if job.attempt >= MAX_ATTEMPT || job.retried_by == Some(RetriedBy::Recreate) {
        return Err(Refusal::RecreatedOnce { job_id: job.id });
    }
    if job.retried_by == Some(RetriedBy::DeletePin) {
        return Err(Refusal::AlternativePathUsed { job_id: job.id });
    }
    Ok(())
}

/// Linking `lock` to `bridge`, which links `bridge_locks` locks now
/// (`current`: the lock's bridge now, as stored).
pub fn check_link(
    lock: &LockRecord,
    department: Option<&str>,
    bridge: Option<&crate::registry::BridgeRecord>,
    bridge_id: &str,
    current: Option<&str>,
    bridge_locks: usize,
) -> Result<(), Refusal> {
    check_department(lock, department)?;
    let Some(bridge) = bridge.filter(|b| b.org == lock.org) else {
        return Err(Refusal::UnknownBridge(bridge_id.to_string()));
    };
    match current {
        Some(b) if b == bridge.id.as_str() => return Ok(()),
        Some(b) => {
            return Err(Refusal::LockAlreadyLinked {
                lock: lock.id.to_string(),
                bridge: b.to_string(),
            })
        }
        None => {}
    }
    if bridge_locks >= crate::registry::MAX_LOCKS_PER_BRIDGE {
        return Err(Refusal::BridgeFull {
            bridge: bridge.id.to_string(),
            count: bridge_locks,
        });
    }
    Ok(())
}

/// Unlinking `lock` (`current`: its bridge now, as stored).
pub fn check_unlink(
    lock: &LockRecord,
    department: Option<&str>,
    current: Option<&str>,
) -> Result<(), Refusal> {
    check_department(lock, department)?;
    if current.is_none() {
        return Err(Refusal::NotLinked(lock.id.to_string()));
    }
    Ok(())
}

/// What a lock's result does to a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultEffect {
    /// The job is done.
    Completed,
    /// The lock refused it; the reason goes to the Jobs List.
    Failed { reason: String },
    /// Unknown job, another attempt, or already final: nothing changes.
    Ignored,
}

/// The effect of a result with `outcome` for attempt `attempt` on `job`.
pub fn apply_result(
    job: &JobRecord,
    attempt: u8,
    outcome: JobOutcome,
    detail: Option<&str>,
) -> ResultEffect {
    if job.state != JobState::Pending || attempt != job.attempt {
        return ResultEffect::Ignored;
    }
    match outcome {
        JobOutcome::Done => ResultEffect::Completed,
        other => ResultEffect::Failed {
            reason: failure_reason(other, detail),
        },
    }
}

/// The Jobs List's "reason for failure" for a lock error.
pub fn failure_reason(outcome: JobOutcome, detail: Option<&str>) -> String {
    let base = match outcome {
        JobOutcome::Done => "done",
        JobOutcome::HardReset => "Lock was hard reset",
        JobOutcome::SlotsFull => "Lock PIN slots are full",
        JobOutcome::InvalidPin => "Lock refused the PIN",
        JobOutcome::UnknownAccess => "Lock does not hold this access",
        JobOutcome::Rejected => "Lock rejected the job",
    };
    match detail.map(str::trim).filter(|d| !d.is_empty()) {
        // Bounded: a device's text is not allowed to flood the job table.
        Some(d) => format!("{base}: {}", d.chars().take(120).collect::<String>()),
        None => base.to_string(),
    }
}

/// The Jobs List's "job description".
pub fn description(kind: JobKind, pin_kind: Option<PinKind>) -> &'static str {
    match (kind, pin_kind) {
        (JobKind::CreateCustomPin, _) => "Create custom PIN",
        (JobKind::DeletePin, Some(PinKind::Algo)) => "Delete AlgoPIN",
        (JobKind::DeletePin, _) => "Delete PIN",
        (JobKind::SetIntervals, _) => "Change intervals",
        (JobKind::Lock, _) => "Lock",
        (JobKind::Unlock, _) => "Unlock",
        (JobKind::Sync, _) => "Sync",
    }
}

/// The device action of a job kind.
pub fn action_of(kind: JobKind) -> JobAction {
    match kind {
        JobKind::CreateCustomPin => JobAction::CreatePin,
        JobKind::DeletePin => JobAction::DeletePin,
        JobKind::SetIntervals => JobAction::SetIntervals,
        JobKind::Lock => JobAction::Lock,
        JobKind::Unlock => JobAction::Unlock,
        JobKind::Sync => JobAction::Sync,
    }
}

/// Default downlink budget for jobs: an NB-IoT downlink that fits one
/// CoAP message over a constrained link with the OSCORE overhead.
pub const DEFAULT_DOWNLINK_BUDGET: usize = 512;

/// Fixed part of a downlink (server time, intervals, seq, more, next wake)
/// reserved before jobs are packed.
const DOWNLINK_BASE_BYTES: usize = 32;

/// Take jobs, in the order given (creation order), while their encoded size
/// fits `budget` bytes; the first job always goes, so a large job cannot
/// starve. Returns how many were taken and whether any are left.
pub fn pack(jobs: &[DeviceJob], budget: usize) -> (usize, bool) {
    let mut used = DOWNLINK_BASE_BYTES;
    let mut taken = 0;
    for job in jobs {
        let len = schemas::device::encode(job).len();
        if taken > 0 && used + len > budget {
            break;
        }
        used += len;
        taken += 1;
    }
    (taken, taken < jobs.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{LockId, OrgId};
    use schemas::LockModel;

    fn lock(departments: &[&str], path: ReportPath) -> LockRecord {
        LockRecord {
            id: LockId::new("L1"),
            model: LockModel::Inb1,
            org: OrgId::new("acme"),
            departments: departments.iter().map(|d| d.to_string()).collect(),
            time_zone: "UTC".into(),
            heartbeat_interval: HeartbeatInterval::DEFAULT,
            activity_log_interval: ActivityLogInterval::DEFAULT,
            bridge: None,
            path,
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn pin(pin_type: PinType, start_s: u64, end_s: Option<u64>) -> PinRequest<'static> {
        PinRequest {
            pin_name: "Cleaner",
            pin: "482916",
            pin_type,
            start_s,
            end_s,
            algo_pins_active: 0,
        }
    }

    fn job(state: JobState, attempt: u8, retried_by: Option<RetriedBy>) -> JobRecord {
        JobRecord {
            id: 7,
            lock_id: "L1".into(),
            kind: JobKind::CreateCustomPin,
            state,
            attempt,
            access_id: Some("a1".into()),
            in_flight: false,
            retried_by,
        }
    }

    #[test]
    fn departments_scope_every_command() {
        let flat = lock(&[], ReportPath::Coap);
        assert_eq!(check_department(&flat, None), Ok(()));
        assert_eq!(
            check_department(&flat, Some("d1")).unwrap_err().rule(),
            "department_in_flat_org"
        );
        let l = lock(&["d1"], ReportPath::Coap);
        assert_eq!(check_department(&l, Some("d1")), Ok(()));
        assert_eq!(
            check_department(&l, None).unwrap_err().rule(),
            "department_required"
        );
        assert_eq!(
            check_department(&l, Some("d2")).unwrap_err().rule(),
            "department_does_not_hold_lock"
        );
    }

    #[test]
    fn a_custom_pin_needs_a_lock_in_one_department() {
        let l = lock(&["d1", "d2"], ReportPath::Coap);
        let r = pin(PinType::Permanent, NOW, None);
        let e = check_create_pin(&l, Some("d1"), &r, 0, NOW).unwrap_err();
        assert_eq!(e.rule(), "lock_in_several_departments");
    }

    #[test]
    fn pin_digits_are_four_to_ten() {
        for (p, ok) in [
            ("123", false),
            ("1234", true),
            ("1234567890", true),
            ("12345678901", false),
            ("12a4", false),
            ("", false),
        ] {
            assert_eq!(valid_pin(p), ok, "{p}");
        }
        let l = lock(&[], ReportPath::Coap);
        let mut r = pin(PinType::Permanent, NOW, None);
        r.pin = "12";
        assert_eq!(
            check_create_pin(&l, None, &r, 0, NOW).unwrap_err().rule(),
            "pin_digits"
        );
    }

    #[test]
    fn start_is_not_past_and_within_fourteen_days() {
        let l = lock(&[], ReportPath::Coap);
        let ok = |start| check_create_pin(&l, None, &pin(PinType::Permanent, start, None), 0, NOW);
        assert_eq!(ok(NOW), Ok(()));
        assert_eq!(ok(NOW - START_SKEW_S), Ok(()));
        assert_eq!(
            ok(NOW - START_SKEW_S - 1).unwrap_err().rule(),
            "start_in_past"
        );
        assert_eq!(ok(NOW + MAX_START_AHEAD_S), Ok(()));
        assert_eq!(
            ok(NOW + MAX_START_AHEAD_S + 1).unwrap_err().rule(),
            "start_too_far"
        );
    }

    #[test]
    fn only_duration_pins_have_an_end() {
        let l = lock(&[], ReportPath::Coap);
        let c = |t, end| check_create_pin(&l, None, &pin(t, NOW, end), 0, NOW);
        assert_eq!(c(PinType::Duration, Some(NOW + 10)), Ok(()));
        assert_eq!(
            c(PinType::Duration, None).unwrap_err().rule(),
            "end_required"
        );
        assert_eq!(
            c(PinType::Duration, Some(NOW)).unwrap_err().rule(),
            "end_required"
        );
        assert_eq!(
            c(PinType::OneTime, Some(NOW + 10)).unwrap_err().rule(),
            "end_not_allowed"
        );
    }

    #[test]
    fn the_two_hundredth_pin_is_refused_counting_algo_pins() {
        let l = lock(&[], ReportPath::Coap);
        let r = pin(PinType::Permanent, NOW, None);
        assert_eq!(check_create_pin(&l, None, &r, 198, NOW), Ok(()));
        let e = check_create_pin(&l, None, &r, 199, NOW).unwrap_err();
        assert_eq!(e.rule(), "pin_limit");
        assert!(e.to_string().contains("200 active PINs"), "{e}");
        let mut r = r;
        r.algo_pins_active = 100;
        assert_eq!(
            check_create_pin(&l, None, &r, 99, NOW).unwrap_err().rule(),
            "pin_limit"
        );
        assert_eq!(check_create_pin(&l, None, &r, 98, NOW), Ok(()));
    }

    #[test]
    fn a_bluetooth_lock_is_reached_only_through_its_bridge() {
        let mut l = lock(&[], ReportPath::Bridge);
        let p = pin(PinType::Permanent, NOW, None);
        let e = check_create_pin(&l, None, &p, 0, NOW);
        assert_eq!(e.unwrap_err().rule(), "no_delivery_route");
        l.bridge = Some(crate::registry::BridgeId::new("B1"));
        assert_eq!(check_create_pin(&l, None, &p, 0, NOW), Ok(()));
    }

    #[test]
    fn lock_unlock_and_sync_need_an_online_bridge() {
        let mut l = lock(&["d1"], ReportPath::Coap);
        assert_eq!(
            check_bridge_action(&l, Some("d1"), true)
                .unwrap_err()
                .rule(),
            "no_bridge"
        );
        l.bridge = Some(crate::registry::BridgeId::new("B1"));
        let offline = check_bridge_action(&l, Some("d1"), false).unwrap_err();
        assert_eq!(offline.rule(), "bridge_offline");
        assert!(offline.to_string().contains("B1"), "{offline}");
        assert_eq!(check_bridge_action(&l, Some("d1"), true), Ok(()));
        // The department rule comes first, as for every command.
        assert_eq!(
            check_bridge_action(&l, Some("d2"), true)
                .unwrap_err()
                .rule(),
            "department_does_not_hold_lock"
        );
    }

    #[test]
    fn an_immediate_job_expires_at_its_time_to_live() {
        assert!(!immediate_expired(1_000, 60_000, 60_999));
        assert!(immediate_expired(1_000, 60_000, 61_000));
        assert_eq!(
            immediate_expired_reason(60_000),
            "Not delivered in time: the bridge did not report a result within 60 s"
        );
        assert_eq!(action_of(JobKind::Unlock), JobAction::Unlock);
        assert_eq!(description(JobKind::Sync, None), "Sync");
    }

    #[test]
    fn expired_pins_free_their_slot() {
        assert!(pin_counts_at(PinType::Permanent, 0, None, NOW));
        assert!(pin_counts_at(PinType::Duration, 0, Some(NOW + 1), NOW));
        assert!(!pin_counts_at(PinType::Duration, 0, Some(NOW), NOW));
        assert!(pin_counts_at(PinType::OneTime, NOW - 10, None, NOW));
        assert!(!pin_counts_at(
            PinType::OneTime,
            NOW - ONE_TIME_WINDOW_S,
            None,
            NOW
        ));
    }

    #[test]
    fn recreate_once_and_not_after_the_other_path() {
        assert_eq!(check_recreate(&job(JobState::Failed, 1, None)), Ok(()));
        assert_eq!(
            check_recreate(&job(JobState::Pending, 1, None))
                .unwrap_err()
                .rule(),
            "not_failed"
        );
        assert_eq!(
            check_recreate(&job(JobState::Failed, 2, Some(RetriedBy::Recreate)))
                .unwrap_err()
                .rule(),
            "recreated_once"
        );
        assert_eq!(
            check_recreate(&job(JobState::Failed, 1, Some(RetriedBy::DeletePin)))
                .unwrap_err()
                .rule(),
            "alternative_path_used"
        );
    }

    #[test]
    fn delete_pin_closes_recreate_and_is_refused_after_a_recreate() {
        let l = lock(&[], ReportPath::Coap);
        let facts = |j| AccessFacts {
            custom_pin_exists: true,
            latest_job: Some(j),
        };
        let plan = check_delete_pin(
            &l,
            None,
            "a1",
            PinKind::Custom,
            &facts(job(JobState::Failed, 1, None)),
        )
        .unwrap();
        assert_eq!(plan.closes_recreate_of, Some(7));
        let e = check_delete_pin(
            &l,
            None,
            "a1",
            PinKind::Custom,
            &facts(job(JobState::Pending, 2, Some(RetriedBy::Recreate))),
        );
        assert_eq!(e.unwrap_err().rule(), "recreated_already");
        let e = check_delete_pin(
            &l,
            None,
            "a1",
            PinKind::Custom,
            &facts(job(JobState::Pending, 1, None)),
        );
        assert_eq!(e.unwrap_err().rule(), "access_busy");
        let plan = check_delete_pin(
            &l,
            None,
            "a1",
            PinKind::Custom,
            &facts(job(JobState::Completed, 1, None)),
        )
        .unwrap();
        assert_eq!(plan.closes_recreate_of, None);
        let e = check_delete_pin(&l, None, "zz", PinKind::Custom, &AccessFacts::default());
        assert_eq!(e.unwrap_err().rule(), "unknown_access");
        assert!(
            check_delete_pin(&l, None, "algo-1", PinKind::Algo, &AccessFacts::default()).is_ok()
        );
    }

    #[test]
    fn a_bridge_takes_two_locks_and_a_lock_one_bridge() {
        use crate::registry::{BridgeId, BridgeRecord};
        let l = lock(&[], ReportPath::Bridge);
        let b = BridgeRecord {
            id: BridgeId::new("B1"),
            org: OrgId::new("acme"),
        };
        let other_org = BridgeRecord {
            id: BridgeId::new("B9"),
            org: OrgId::new("other"),
        };
        assert_eq!(check_link(&l, None, Some(&b), "B1", None, 1), Ok(()));
        assert_eq!(
            check_link(&l, None, Some(&b), "B1", Some("B1"), 2),
            Ok(()),
            "already there"
        );
        assert_eq!(
            check_link(&l, None, Some(&b), "B1", None, 2)
                .unwrap_err()
                .rule(),
            "bridge_full"
        );
        assert_eq!(
            check_link(&l, None, Some(&b), "B1", Some("B2"), 0)
                .unwrap_err()
                .rule(),
            "lock_already_linked"
        );
        assert_eq!(
            check_link(&l, None, None, "B7", None, 0)
                .unwrap_err()
                .rule(),
            "unknown_bridge"
        );
        assert_eq!(
            check_link(&l, None, Some(&other_org), "B9", None, 0)
                .unwrap_err()
                .rule(),
            "unknown_bridge"
        );
        assert_eq!(check_unlink(&l, None, Some("B1")), Ok(()));
        assert_eq!(
            check_unlink(&l, None, None).unwrap_err().rule(),
            "not_linked"
        );
    }

    #[test]
    fn a_delivered_job_cannot_be_deleted_until_its_result_is_back() {
        let mut j = job(JobState::Pending, 1, None);
        assert_eq!(check_delete_job(&j), Ok(()));
        j.in_flight = true;
        assert_eq!(check_delete_job(&j).unwrap_err().rule(), "in_flight");
        assert_eq!(
            check_delete_job(&job(JobState::Completed, 1, None))
                .unwrap_err()
                .rule(),
            "not_pending"
        );
    }

    #[test]
    fn results_change_only_the_pending_attempt() {
        let j = job(JobState::Pending, 2, None);
        assert_eq!(
            apply_result(&j, 2, JobOutcome::Done, None),
            ResultEffect::Completed
        );
        assert_eq!(
            apply_result(&j, 1, JobOutcome::Done, None),
            ResultEffect::Ignored
        );
        assert_eq!(
            apply_result(&j, 2, JobOutcome::HardReset, Some("at 12:00")),
            ResultEffect::Failed {
                reason: "Lock was hard reset: at 12:00".into()
            }
        );
        let done = job(JobState::Completed, 1, None);
        assert_eq!(
            apply_result(&done, 1, JobOutcome::SlotsFull, None),
            ResultEffect::Ignored
        );
    }

    #[test]
    fn intervals_are_the_guides_choices() {
        let l = lock(&[], ReportPath::Coap);
        let (hb, log) = check_set_intervals(&l, None, Some(12), None).unwrap();
        assert_eq!(hb.hours(), 12);
        assert_eq!(log, l.activity_log_interval);
        assert_eq!(
            check_set_intervals(&l, None, Some(3), None)
                .unwrap_err()
                .rule(),
            "bad_interval"
        );
        assert_eq!(
            check_set_intervals(&l, None, None, None)
                .unwrap_err()
                .rule(),
            "no_intervals"
        );
    }

    fn device_job(id: u64) -> DeviceJob {
        DeviceJob {
            id,
            attempt: 1,
            action: JobAction::CreatePin,
            access: Some(format!("pin-{id:012}")),
            pin: Some("1234567890".into()),
            pin_type: Some(PinType::Duration),
            start: Some(NOW),
            end: Some(NOW + 3600),
            heartbeat_interval: None,
            activity_log_interval: None,
            issued: NOW,
        }
    }

    #[test]
    fn packing_respects_the_budget_keeps_order_and_always_sends_one() {
        let jobs: Vec<DeviceJob> = (1..=40).map(device_job).collect();
        let one = schemas::device::encode(&jobs[0]).len();
        let (n, more) = pack(&jobs, 512);
        assert!(n >= 1 && more);
        assert!(DOWNLINK_BASE_BYTES + n * one <= 512, "{n} x {one}");
        assert!(DOWNLINK_BASE_BYTES + (n + 1) * one > 512);
        assert_eq!(pack(&jobs[..1], 10), (1, false));
        assert_eq!(pack(&[], 512), (0, false));
        assert_eq!(pack(&jobs[..2], 100_000), (2, false));
    }
}
