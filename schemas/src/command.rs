//! The dashboard's command API: JSON requests on `cmd/v1/{org}`, answers on
//! the request's `reply_to` topic (under `rsp/v1/`, default `rsp/v1/{org}`),
//! job state changes as [`JobEvent`]s on `events/v1/{org}/lock/{lock}/job`.
//! Specs: `spec/commands/*.schema.json` and `spec/events/job.schema.json`.
//!
//! Every request carries a `correlation_id` (echoed in the answer) and an
//! `idempotency_key`: a repeated request with the same key (per organisation)
//! gets the first answer again and changes nothing. PIN digits travel in a
//! create request only; no answer, listing or event ever carries them.

use crate::device::PinType;
use serde::{Deserialize, Serialize};

/// Prefix of every command topic.
pub const COMMANDS_PREFIX: &str = "cmd/v1";
/// The gateway's subscription for commands (shared among instances).
pub const COMMANDS_FILTER: &str = "cmd/v1/+";
/// Prefix every reply topic must have.
pub const REPLIES_PREFIX: &str = "rsp/v1/";
/// Longest correlation id, idempotency key, name or free text we accept.
pub const MAX_TEXT: usize = 128;

/// `cmd/v1/{org}`.
pub fn command_topic(org: &str) -> String {
    format!("{COMMANDS_PREFIX}/{org}")
}

/// The default reply topic of an organisation's commands.
pub fn default_reply_topic(org: &str) -> String {
    format!("{REPLIES_PREFIX}{org}")
}

/// `events/v1/{org}/lock/{lock}/job`.
pub fn job_event_topic(org: &str, lock: &str) -> String {
    format!("{}/{org}/lock/{lock}/job", crate::topic::EVENTS_PREFIX)
}

/// One command from the dashboard backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Echoed in the answer so the requester can match it.
    pub correlation_id: String,
    /// Same key, same organisation: the first answer again, nothing new.
    pub idempotency_key: String,
    /// Where the answer goes; must start with `rsp/v1/`. Default `rsp/v1/{org}`.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Who asked (the dashboard user's name), shown as "created by".
    pub requested_by: String,
    /// The department the requester acts in; absent in a flat organisation.
    #[serde(default)]
    pub department: Option<String>,
    pub command: Command,
}

/// What the dashboard asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// A Custom PIN job.
    CreateCustomPin {
        lock_id: String,
        pin_name: String,
        /// 4 to 10 digits. Never returned or published.
        pin: String,
        pin_type: PinType,
        /// Unix seconds: not in the past, at most 14 days ahead.
        start_s: u64,
        /// Unix seconds, duration PINs only.
        #[serde(default)]
        end_s: Option<u64>,
        /// Active AlgoPINs on the lock, which the dashboard issues itself;
        /// counted against the 199-PIN limit.
        #[serde(default)]
        algo_pins_active: u16,
    },
    /// A job deleting a PIN (a custom PIN made here, or an AlgoPIN).
    DeletePin {
        lock_id: String,
        access_id: String,
        pin_kind: PinKind,
        #[serde(default)]
        pin_name: Option<String>,
    },
    /// A job changing the lock's intervals, applied at its next heartbeat.
    SetIntervals {
        lock_id: String,
        #[serde(default)]
        heartbeat_interval_h: Option<u16>,
        #[serde(default)]
        activity_log_interval_min: Option<u16>,
    },
    /// Link a lock to a bridge (at most 2 locks per bridge, 1 bridge per lock).
    LinkBridge { lock_id: String, bridge_id: String },
    /// Unlink a lock from its bridge.
    UnlinkBridge { lock_id: String },
    /// Throw the bolt now, through the lock's bridge.
    Lock { lock_id: String },
    /// Open the lock now, through its bridge.
    Unlock { lock_id: String },
    /// Set the lock's clock and collect its state now, through its bridge.
    Sync { lock_id: String },
    /// Delete a pending job (not one whose result is awaited).
    DeleteJob { job_id: u64 },
    /// Put a failed job back to pending, once.
    RecreateJob { job_id: u64 },
    /// One job.
    GetJob { job_id: u64 },
    /// Record a user's mobile number (creating the 2FA user). A new number
    /// is unverified: the user's 2FA access stops until it is verified.
    SetUserMobile { user_id: String, mobile: String },
    /// The dashboard verified the user's number (its own SMS check); it
    /// must be the number on record.
    VerifyUserMobile { user_id: String, mobile: String },
    /// Deactivate a user: every 2FA access is revoked at once and open
    /// challenges end.
    DeactivateUser { user_id: String },
    /// Reactivate a user (2FA access must be granted again).
    ReactivateUser { user_id: String },
    /// Generate the user's 2FA passcode; the answer shows it once.
    #[serde(rename = "generate_2fa_passcode")]
    GenerateTwoFactorPasscode { user_id: String },
    /// Replace the user's 2FA passcode; the old one stops working.
    #[serde(rename = "reset_2fa_passcode")]
    ResetTwoFactorPasscode { user_id: String },
    /// Give a user 2FA access to a 2FA lock, from `start` to `end`: local
    /// times in the lock's time zone, `YYYY-MM-DDTHH:MM[:SS]`.
    #[serde(rename = "grant_2fa")]
    GrantTwoFactor {
        lock_id: String,
        user_id: String,
        start: String,
        end: String,
    },
    /// Move a grant's end (only the end, only before it passed).
    #[serde(rename = "edit_2fa_grant")]
    EditTwoFactorGrant { grant_id: u64, end: String },
    /// Delete 2FA access at once.
    #[serde(rename = "revoke_2fa_grant")]
    RevokeTwoFactorGrant { grant_id: u64 },
    /// A user's 2FA record.
    #[serde(rename = "get_2fa_user")]
    GetTwoFactorUser { user_id: String },
    /// 2FA grants, newest first, filtered.
    #[serde(rename = "list_2fa_grants")]
    ListTwoFactorGrants {
        #[serde(default)]
        lock_id: Option<String>,
        #[serde(default)]
        user_id: Option<String>,
        /// At most 100; default 50.
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        before_grant_id: Option<u64>,
    },
    /// Locks and users locked out of 2FA now.
    #[serde(rename = "list_2fa_lockouts")]
    ListTwoFactorLockouts {},
    /// End a lock's or a user's 2FA lock-out (exactly one of the two).
    #[serde(rename = "clear_2fa_lockout")]
    ClearTwoFactorLockout {
        #[serde(default)]
        lock_id: Option<String>,
        #[serde(default)]
        user_id: Option<String>,
    },
    /// Jobs, newest first, filtered.
    ListJobs {
        #[serde(default)]
        lock_id: Option<String>,
        #[serde(default)]
        state: Option<JobState>,
        /// At most 100; default 50. A page is shortened further if its answer
        /// would not fit one MQTT message; `next_before` continues it.
        #[serde(default)]
        limit: Option<u32>,
        /// Only jobs with a smaller id (the previous page's `next_before`).
        #[serde(default)]
        before_job_id: Option<u64>,
    },
}

impl Command {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateCustomPin { .. } => "create_custom_pin",
            Command::DeletePin { .. } => "delete_pin",
            Command::SetIntervals { .. } => "set_intervals",
            Command::LinkBridge { .. } => "link_bridge",
            Command::UnlinkBridge { .. } => "unlink_bridge",
            Command::Lock { .. } => "lock",
            Command::Unlock { .. } => "unlock",
            Command::Sync { .. } => "sync",
            Command::DeleteJob { .. } => "delete_job",
            Command::RecreateJob { .. } => "recreate_job",
            Command::GetJob { .. } => "get_job",
            Command::ListJobs { .. } => "list_jobs",
            Command::SetUserMobile { .. } => "set_user_mobile",
            Command::VerifyUserMobile { .. } => "verify_user_mobile",
            Command::DeactivateUser { .. } => "deactivate_user",
            Command::ReactivateUser { .. } => "reactivate_user",
            Command::GenerateTwoFactorPasscode { .. } => "generate_2fa_passcode",
            Command::ResetTwoFactorPasscode { .. } => "reset_2fa_passcode",
            Command::GrantTwoFactor { .. } => "grant_2fa",
            Command::EditTwoFactorGrant { .. } => "edit_2fa_grant",
            Command::RevokeTwoFactorGrant { .. } => "revoke_2fa_grant",
            Command::GetTwoFactorUser { .. } => "get_2fa_user",
            Command::ListTwoFactorGrants { .. } => "list_2fa_grants",
            Command::ListTwoFactorLockouts {} => "list_2fa_lockouts",
            Command::ClearTwoFactorLockout { .. } => "clear_2fa_lockout",
        }
    }

    /// The lock the command names, if it names one (job commands name a job).
    pub fn lock_id(&self) -> Option<&str> {
        match self {
            Command::CreateCustomPin { lock_id, .. }
            | Command::DeletePin { lock_id, .. }
            | Command::SetIntervals { lock_id, .. }
            | Command::LinkBridge { lock_id, .. }
            | Command::UnlinkBridge { lock_id }
            | Command::Lock { lock_id }
            | Command::Unlock { lock_id }
            | Command::Sync { lock_id }
            | Command::GrantTwoFactor { lock_id, .. } => Some(lock_id),
            Command::ClearTwoFactorLockout { lock_id, .. } => lock_id.as_deref(),
            Command::SetUserMobile { .. }
            | Command::VerifyUserMobile { .. }
            | Command::DeactivateUser { .. }
            | Command::ReactivateUser { .. }
            | Command::GenerateTwoFactorPasscode { .. }
            | Command::ResetTwoFactorPasscode { .. }
            | Command::EditTwoFactorGrant { .. }
            | Command::RevokeTwoFactorGrant { .. }
            | Command::GetTwoFactorUser { .. }
            | Command::ListTwoFactorGrants { .. }
            | Command::ListTwoFactorLockouts {} => None,
            Command::DeleteJob { .. }
            | Command::RecreateJob { .. }
            | Command::GetJob { .. }
            | Command::ListJobs { .. } => None,
        }
    }

    /// Whether the command changes state (and is remembered under its
    /// idempotency key). Reads are answered afresh every time.
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Command::GetJob { .. }
                | Command::ListJobs { .. }
                | Command::GetTwoFactorUser { .. }
                | Command::ListTwoFactorGrants { .. }
                | Command::ListTwoFactorLockouts {}
        )
    }

    /// Whether the answer carries a secret shown once (a new passcode):
    /// the answer stored under the idempotency key then leaves it out.
    pub fn reveals_secret(&self) -> bool {
        matches!(
            self,
            Command::GenerateTwoFactorPasscode { .. } | Command::ResetTwoFactorPasscode { .. }
        )
    }
}

/// Which kind of PIN a delete names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKind {
    /// A Custom PIN created through this API.
    Custom,
    /// An AlgoPIN (Remote PIN) the dashboard issued itself.
    Algo,
}

impl PinKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::Custom => "custom",
            PinKind::Algo => "algo",
        }
    }
}

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    pub correlation_id: String,
    pub idempotency_key: String,
    /// True when this is the stored answer to an earlier request with the
    /// same idempotency key.
    pub replayed: bool,
    /// `ok` or `refused`.
    pub status: ResponseStatus,
    /// Set when `ok`.
    pub result: Option<CommandResult>,
    /// Set when `refused`.
    pub error: Option<CommandError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    Ok,
    Refused,
}

/// A successful command's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandResult {
    /// The job created, changed or asked for.
    Job { job: Box<JobView> },
    /// A page of jobs; `next_before` continues the listing.
    Jobs {
        jobs: Vec<JobView>,
        next_before: Option<u64>,
    },
    /// A lock's bridge after a link or unlink (null: none).
    Link {
        lock_id: String,
        bridge_id: Option<String>,
    },
    /// A user's 2FA record after a change, or as asked for.
    #[serde(rename = "2fa_user")]
    TwoFactorUser { user: TwoFactorUserView },
    /// A new passcode. `passcode` is shown in this answer only: a repeated
    /// request (same idempotency key) gets `null` and `shown_before: true`.
    #[serde(rename = "2fa_passcode")]
    TwoFactorPasscode {
        user_id: String,
        passcode: Option<String>,
        shown_before: bool,
        set_at_ms: u64,
    },
    /// A grant after a change, or as asked for.
    #[serde(rename = "2fa_grant")]
    TwoFactorGrant { grant: TwoFactorGrantView },
    /// A page of grants; `next_before` continues the listing.
    #[serde(rename = "2fa_grants")]
    TwoFactorGrants {
        grants: Vec<TwoFactorGrantView>,
        next_before: Option<u64>,
    },
    /// Lock-outs in force.
    #[serde(rename = "2fa_lockouts")]
    TwoFactorLockouts { lockouts: Vec<LockoutView> },
}

/// A 2FA user as the dashboard sees it (the number masked, no passcode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoFactorUserView {
    pub user_id: String,
    /// `+65****4567`.
    pub mobile_masked: Option<String>,
    pub mobile_verified: bool,
    pub active: bool,
    pub has_passcode: bool,
    pub passcode_set_at_ms: Option<u64>,
    /// Set while the user is locked out of 2FA, Unix milliseconds.
    pub locked_out_until_ms: Option<u64>,
    pub updated_at_ms: u64,
}

/// A 2FA grant as the Access list shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoFactorGrantView {
    pub grant_id: u64,
    pub org: String,
    pub department: Option<String>,
    pub lock_id: String,
    pub user_id: String,
    /// As given, in the lock's time zone.
    pub start: String,
    pub end: String,
    pub time_zone: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// `active`, `scheduled` (not started), `expired` or `revoked`.
    pub status: String,
    pub created_by: String,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    pub updated_at_ms: u64,
}

/// A lock-out in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutView {
    /// `lock` or `user`.
    pub scope: String,
    /// The lock or user id.
    pub id: String,
    /// `wrong_passcodes` or `failed_challenges`.
    pub reason: String,
    pub since_ms: u64,
    pub until_ms: u64,
}

/// Why a command was refused: the rule it broke, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandError {
    /// Stable machine-readable rule name (`pin_limit`, `start_in_past`, ...).
    pub rule: String,
    pub message: String,
}

/// What a job asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    CreateCustomPin,
    DeletePin,
    SetIntervals,
    /// Bridge only, at once.
    Lock,
    /// Bridge only, at once.
    Unlock,
    /// Bridge only, at once.
    Sync,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::CreateCustomPin => "create_custom_pin",
            JobKind::DeletePin => "delete_pin",
            JobKind::SetIntervals => "set_intervals",
            JobKind::Lock => "lock",
            JobKind::Unlock => "unlock",
            JobKind::Sync => "sync",
        }
    }

    /// Lock, unlock and sync: delivered at once through a bridge or not at
    /// all (they expire; see `dispatcher::jobs::IMMEDIATE_TTL_MS`).
    pub fn is_immediate(self) -> bool {
        matches!(self, JobKind::Lock | JobKind::Unlock | JobKind::Sync)
    }
}

/// The guide's job states (plus `deleted`, for a job deleted while pending).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Completed,
    Failed,
    Deleted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "pending" => JobState::Pending,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "deleted" => JobState::Deleted,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Pending)
    }
}

/// A job as the dashboard's job tables show it (no PIN digits, ever).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: u64,
    pub org: String,
    /// Absent in a flat organisation.
    pub department: Option<String>,
    pub lock_id: String,
    pub kind: JobKind,
    pub state: JobState,
    /// The table's DATE: creation, Unix milliseconds.
    pub created_at_ms: u64,
    /// JOB CREATED BY.
    pub created_by: String,
    /// JOB DESCRIPTION, e.g. "Create custom PIN", "Delete PIN".
    pub description: String,
    /// PIN NAME (PIN jobs).
    pub pin_name: Option<String>,
    /// The PIN's access id (PIN jobs).
    pub access_id: Option<String>,
    pub pin_type: Option<PinType>,
    pub pin_start_s: Option<u64>,
    pub pin_end_s: Option<u64>,
    /// New intervals (set_intervals jobs).
    pub heartbeat_interval_h: Option<u16>,
    pub activity_log_interval_min: Option<u16>,
    /// 1, or 2 once recreated.
    pub attempt: u8,
    /// How often the job went out to the lock.
    pub deliveries: u32,
    /// LAST SYNC: when the lock last received it, Unix milliseconds.
    pub last_sync_ms: Option<u64>,
    /// LAST SYNC BY: the path it went by (`heartbeat`).
    pub last_sync_by: Option<String>,
    /// REASON FOR FAILURE (failed jobs): the lock's error.
    pub failure_reason: Option<String>,
    /// When the job is expected to reach the lock (its next heartbeat),
    /// Unix milliseconds; absent when not known or when final.
    pub expected_delivery_ms: Option<u64>,
    pub updated_at_ms: u64,
}

/// What happened to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobChange {
    Created,
    Delivered,
    Completed,
    Failed,
    Deleted,
    Recreated,
}

impl JobChange {
    pub fn as_str(self) -> &'static str {
        match self {
            JobChange::Created => "created",
            JobChange::Delivered => "delivered",
            JobChange::Completed => "completed",
            JobChange::Failed => "failed",
            JobChange::Deleted => "deleted",
            JobChange::Recreated => "recreated",
        }
    }
}

/// `events/v1/{org}/lock/{lock}/job`: a job changed, after the change was
/// committed. `event_id` is `job:{job_id}:{version}`, stable on redelivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub event_id: String,
    pub change: JobChange,
    pub job: JobView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_reads_as_documented() {
        let json = r#"{"correlation_id":"c1","idempotency_key":"k1","requested_by":"Mark Tan",
            "department":"d1","command":{"type":"create_custom_pin","lock_id":"L1",
            "pin_name":"Cleaner","pin":"482916","pin_type":"duration","start_s":100,"end_s":200}}"#;
        let r: CommandRequest = serde_json::from_str(json).unwrap();
        assert_eq!(r.command.kind(), "create_custom_pin");
        assert!(r.command.writes());
        assert_eq!(r.reply_to, None);
    }

    #[test]
    fn unknown_fields_are_refused_rather_than_ignored() {
        let json = r#"{"correlation_id":"c1","idempotency_key":"k1","requested_by":"x",
            "command":{"type":"delete_job","job_id":1,"force":true}}"#;
        assert!(serde_json::from_str::<CommandRequest>(json).is_err());
    }

    #[test]
    fn topics() {
        assert_eq!(command_topic("acme"), "cmd/v1/acme");
        assert_eq!(default_reply_topic("acme"), "rsp/v1/acme");
        assert_eq!(job_event_topic("acme", "L1"), "events/v1/acme/lock/L1/job");
    }
}
