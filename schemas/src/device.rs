//! Device payloads: compact CBOR maps with small integer keys (RFC 8949), the
//! same bytes over CoAP and MQTT. The normative spec is `spec/device.cddl`;
//! `tests/spec.rs` decodes every example in it and validates what we encode.
//!
//! Unknown map keys are skipped on decode, so a newer firmware can add fields
//! without breaking an older server.

use crate::units::{
    ActivityLogInterval, Battery, ChannelInfo, DoorState, HeartbeatInterval, LockState,
    SignalQuality,
};
use minicbor::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Largest uplink we accept. NB-IoT locks send a few hundred bytes; a batch of
/// 64 activity events is about 1.2 KiB. Anything larger is answered 4.13.
pub const MAX_UPLINK_BYTES: usize = 2048;

/// Most activity events one batch may carry (bounds the work one packet causes).
pub const MAX_EVENTS_PER_BATCH: usize = 64;

/// Longest id (lock, bridge) we accept on the wire.
pub const MAX_ID_LEN: usize = 64;

/// A heartbeat: the lock's full status, sent every [`HeartbeatInterval`].
/// Its answer ([`Downlink`]) is the only moment the lock receives jobs.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct Heartbeat {
    /// The lock this report is about (for bridges: the linked lock).
    #[n(0)]
    pub lock_id: String,
    /// Per-device uplink sequence number, shared by heartbeats and log batches.
    /// The server stores each (lock, seq) once.
    #[n(1)]
    pub seq: u32,
    /// The lock's clock, Unix seconds.
    #[n(2)]
    pub device_time: u64,
    #[n(3)]
    pub battery: Battery,
    /// Signal strength in dB, as the dashboard shows it ("6 dB Poor").
    #[n(4)]
    pub signal_db: i16,
    #[n(5)]
    pub signal_quality: SignalQuality,
    /// Mobile network operator name. Empty for bridged locks.
    #[n(6)]
    pub carrier: String,
    /// Serving cell; absent for bridged locks.
    #[n(7)]
    pub channel: Option<ChannelInfo>,
    #[n(8)]
    pub lock_state: LockState,
    #[n(9)]
    pub door_state: DoorState,
    #[n(10)]
    pub firmware: String,
    /// The intervals the lock is using now.
    #[n(11)]
    pub heartbeat_interval: HeartbeatInterval,
    #[n(12)]
    pub activity_log_interval: ActivityLogInterval,
}

/// What happened at the lock, as recorded in its activity log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    #[n(0)]
    Locked,
    #[n(1)]
    UnlockedPin,
    #[n(2)]
    UnlockedBluetooth,
    /// Serde's snake_case would spell this `unlocked2fa`; the name is
    /// `unlocked_2fa` everywhere ([`ActivityKind::as_str`], the JSON schema).
    #[n(3)]
    #[serde(rename = "unlocked_2fa")]
    Unlocked2fa,
    #[n(4)]
    UnlockedKeypad,
    #[n(5)]
    UnlockedKeyfob,
    #[n(6)]
    UnlockedManual,
    #[n(7)]
    AutoRelocked,
    #[n(8)]
    DoorOpened,
    #[n(9)]
    DoorClosed,
    #[n(10)]
    WrongPin,
    #[n(11)]
    Tamper,
}

impl ActivityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Locked => "locked",
            ActivityKind::UnlockedPin => "unlocked_pin",
            ActivityKind::UnlockedBluetooth => "unlocked_bluetooth",
            ActivityKind::Unlocked2fa => "unlocked_2fa",
            ActivityKind::UnlockedKeypad => "unlocked_keypad",
            ActivityKind::UnlockedKeyfob => "unlocked_keyfob",
            ActivityKind::UnlockedManual => "unlocked_manual",
            ActivityKind::AutoRelocked => "auto_relocked",
            ActivityKind::DoorOpened => "door_opened",
            ActivityKind::DoorClosed => "door_closed",
            ActivityKind::WrongPin => "wrong_pin",
            ActivityKind::Tamper => "tamper",
        }
    }
}

/// One entry of the activity log. `seq` is the lock's own event counter; the
/// server stores each (lock, event seq) once, so resending a batch is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct ActivityEvent {
    #[n(0)]
    pub seq: u32,
    /// Unix seconds, lock clock.
    #[n(1)]
    pub time: u64,
    #[n(2)]
    pub kind: ActivityKind,
    /// Which PIN slot, key or user caused it, when the lock knows. Never a PIN.
    #[n(3)]
    pub actor: Option<String>,
}

/// A batch of activity-log entries, sent every [`ActivityLogInterval`] and with
/// every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct ActivityLogBatch {
    #[n(0)]
    pub lock_id: String,
    /// Per-device uplink sequence number (same counter as heartbeats).
    #[n(1)]
    pub seq: u32,
    #[n(2)]
    pub events: Vec<ActivityEvent>,
}

/// The answer to a heartbeat or a job report: server time, the intervals the
/// lock must use from now on, and the lock's pending jobs that fit the
/// downlink budget. A lock must ignore keys it does not know.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct Downlink {
    /// Server clock, Unix seconds: the lock corrects its clock from it.
    #[n(0)]
    pub server_time: u64,
    #[n(1)]
    pub heartbeat_interval: HeartbeatInterval,
    #[n(2)]
    pub activity_log_interval: ActivityLogInterval,
    /// The `seq` of the uplink this answers (correlates MQTT answers).
    #[n(3)]
    pub seq: u32,
    /// Pending jobs for this lock, in creation order, as many as fit the
    /// downlink budget. Omitted when there are none.
    #[n(4)]
    #[cbor(default, skip_if = "Vec::is_empty")]
    #[serde(default)]
    pub jobs: Vec<DeviceJob>,
    /// More jobs are pending beyond this downlink: apply these, report
    /// their results (POST /jr) and the answer carries the next ones.
    /// Omitted when false.
    #[n(5)]
    #[cbor(default, skip_if = "is_false")]
    #[serde(default)]
    pub more: bool,
    /// When the lock should send its next heartbeat, Unix seconds: its
    /// interval, shifted to the lock's phase so that a fleet spreads its
    /// wake-ups over the interval. Absent: one interval from now.
    #[n(6)]
    pub next_heartbeat_at: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Longest PIN a lock accepts (the dashboard's Custom PIN is 4 to 10 digits).
pub const MAX_PIN_DIGITS: usize = 10;
/// Shortest PIN.
pub const MIN_PIN_DIGITS: usize = 4;
/// Most results one job report may carry.
pub const MAX_RESULTS_PER_REPORT: usize = 32;

/// What a job asks the lock to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    /// Store a PIN (`access`, `pin`, `pin_type`, `start`, `end`).
    #[n(0)]
    CreatePin,
    /// Remove a PIN (`access`): a custom PIN or an AlgoPIN.
    #[n(1)]
    DeletePin,
    /// Use new intervals (`heartbeat_interval`, `activity_log_interval`).
    #[n(2)]
    SetIntervals,
    /// Bridge only: throw the bolt now.
    #[n(3)]
    Lock,
    /// Bridge only: open the lock now.
    #[n(4)]
    Unlock,
    /// Bridge only: set the lock's clock and collect its state now.
    #[n(5)]
    Sync,
}

impl JobAction {
    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::CreatePin => "create_pin",
            JobAction::DeletePin => "delete_pin",
            JobAction::SetIntervals => "set_intervals",
            JobAction::Lock => "lock",
            JobAction::Unlock => "unlock",
            JobAction::Sync => "sync",
        }
    }

    /// Lock, unlock and sync act at once through a bridge; they are never
    /// carried in a heartbeat answer (an unlock hours later would open a
    /// door nobody is waiting at).
    pub fn is_immediate(self) -> bool {
        matches!(self, JobAction::Lock | JobAction::Unlock | JobAction::Sync)
    }
}

/// The three Custom PIN types of the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum PinType {
    /// Opens once, within 24 hours of its start.
    #[n(0)]
    OneTime,
    /// Opens from its start to its end.
    #[n(1)]
    Duration,
    /// Opens from its start on.
    #[n(2)]
    Permanent,
}

impl PinType {
    pub fn as_str(self) -> &'static str {
        match self {
            PinType::OneTime => "one_time",
            PinType::Duration => "duration",
            PinType::Permanent => "permanent",
        }
    }
}

/// One job in a [`Downlink`]. The lock applies each (`id`, `attempt`) at
/// most once: when it sees one again (its result was lost), it reports the
/// result it already has without applying it again.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct DeviceJob {
    #[n(0)]
    pub id: u64,
    /// 1, or 2 for a recreated job.
    #[n(1)]
    pub attempt: u8,
    #[n(2)]
    pub action: JobAction,
    /// The PIN's access id (create_pin, delete_pin).
    #[n(3)]
    pub access: Option<String>,
    /// The PIN's digits (create_pin only). Travels OSCORE-encrypted.
    #[n(4)]
    pub pin: Option<String>,
    #[n(5)]
    pub pin_type: Option<PinType>,
    /// PIN validity, Unix seconds (create_pin).
    #[n(6)]
    pub start: Option<u64>,
    #[n(7)]
    pub end: Option<u64>,
    /// set_intervals.
    #[n(8)]
    pub heartbeat_interval: Option<HeartbeatInterval>,
    #[n(9)]
    pub activity_log_interval: Option<ActivityLogInterval>,
    /// When this attempt was issued (created or recreated), Unix seconds. A
    /// lock hard reset after this moment no longer has the state the job
    /// was made for, and reports [`JobOutcome::HardReset`].
    #[n(10)]
    pub issued: u64,
}

/// How a job ended at the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[cbor(index_only)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    #[n(0)]
    Done,
    /// The lock was hard reset: its PINs and settings were wiped.
    #[n(1)]
    HardReset,
    /// All 199 PIN slots are taken.
    #[n(2)]
    SlotsFull,
    /// The lock refused the PIN (digits, type or times it cannot use).
    #[n(3)]
    InvalidPin,
    /// delete_pin named an access the lock does not hold.
    #[n(4)]
    UnknownAccess,
    /// Any other refusal; `detail` says which.
    #[n(5)]
    Rejected,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Done => "done",
            JobOutcome::HardReset => "hard_reset",
            JobOutcome::SlotsFull => "slots_full",
            JobOutcome::InvalidPin => "invalid_pin",
            JobOutcome::UnknownAccess => "unknown_access",
            JobOutcome::Rejected => "rejected",
        }
    }
}

/// The result of one job.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct JobResult {
    #[n(0)]
    pub id: u64,
    #[n(1)]
    pub attempt: u8,
    #[n(2)]
    pub outcome: JobOutcome,
    /// The lock's own words about an error (never a PIN).
    #[n(3)]
    pub detail: Option<String>,
}

/// A job report: the results of the jobs a lock applied, sent while it is
/// still awake (CoAP POST /jr, MQTT `lk/{lock}/up/jr`). Answered with a
/// [`Downlink`] carrying the next pending jobs.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct JobReport {
    #[n(0)]
    pub lock_id: String,
    /// Per-device uplink sequence number (same counter as heartbeats).
    #[n(1)]
    pub seq: u32,
    /// Key 3, not 2: a report must not read as an activity-log batch.
    #[n(3)]
    pub results: Vec<JobResult>,
}

/// The answer to an activity-log batch.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[cbor(map)]
pub struct LogAck {
    #[n(0)]
    pub server_time: u64,
    /// How many of the batch's events were new (the rest were already stored).
    #[n(1)]
    pub stored: u16,
    /// The `seq` of the batch this answers (correlates MQTT answers).
    #[n(2)]
    pub seq: u32,
}

/// An uplink of either kind, as the ingest pipeline carries it.
#[derive(Clone, Debug, PartialEq)]
pub enum Uplink {
    Heartbeat(Heartbeat),
    ActivityLog(ActivityLogBatch),
    JobReport(JobReport),
}

impl Uplink {
    pub fn lock_id(&self) -> &str {
        match self {
            Uplink::Heartbeat(h) => &h.lock_id,
            Uplink::ActivityLog(b) => &b.lock_id,
            Uplink::JobReport(r) => &r.lock_id,
        }
    }
    pub fn seq(&self) -> u32 {
        match self {
            Uplink::Heartbeat(h) => h.seq,
            Uplink::ActivityLog(b) => b.seq,
            Uplink::JobReport(r) => r.seq,
        }
    }
    pub fn kind(&self) -> UplinkKind {
        match self {
            Uplink::Heartbeat(_) => UplinkKind::Heartbeat,
            Uplink::ActivityLog(_) => UplinkKind::ActivityLog,
            Uplink::JobReport(_) => UplinkKind::JobReport,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UplinkKind {
    Heartbeat,
    ActivityLog,
    JobReport,
}

impl UplinkKind {
    /// Stable label for metrics and topics.
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkKind::Heartbeat => "heartbeat",
            UplinkKind::ActivityLog => "activity_log",
            UplinkKind::JobReport => "job_report",
        }
    }
}

/// Why a payload was refused. The message goes back to the device (CoAP 4.00
/// diagnostic payload, MQTT error topic), so it says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is empty: send a CBOR map (see spec/device.cddl)")]
    Empty,
    #[error("payload is {len} bytes, larger than the {max}-byte limit: split the activity log into smaller batches")]
    TooLarge { len: usize, max: usize },
    #[error("payload is not valid {what} CBOR: {detail}; encode it as schemas/spec/device.cddl describes")]
    Cbor { what: &'static str, detail: String },
    #[error("payload has {extra} bytes after the CBOR item: send exactly one item")]
    TrailingBytes { extra: usize },
    #[error("lock_id must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 - _ .")]
    BadLockId,
    #[error("batch has {count} events, more than {max}: send at most {max} per batch")]
    TooManyEvents { count: usize, max: usize },
    #[error("job report has {count} results, more than {max}: send at most {max} per report")]
    TooManyResults { count: usize, max: usize },
    #[error("job report has no results: send one result per job applied")]
    NoResults,
    /// A typed passcode or OTP that is not 1 to `max` ASCII digits. The
    /// message never repeats what was typed.
    #[error("the typed code must be 1 to {max} digits 0-9: send the digits as a text string")]
    BadDigits { max: usize },
}

impl DecodeError {
    /// Stable label for the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Cbor { .. } => "malformed",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::BadLockId => "bad_id",
            DecodeError::TooManyEvents { .. } => "too_many_events",
            DecodeError::TooManyResults { .. } => "too_many_results",
            DecodeError::NoResults => "no_results",
            DecodeError::BadDigits { .. } => "bad_digits",
        }
    }
}

/// True for ids the server accepts: printable, topic-safe, bounded.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn decode_exact<'b, T: Decode<'b, ()>>(
    bytes: &'b [u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_UPLINK_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_UPLINK_BYTES,
        });
    }
    let mut d = minicbor::Decoder::new(bytes);
    let v = d.decode::<T>().map_err(|e| DecodeError::Cbor {
        what,
        detail: e.to_string(),
    })?;
    let extra = bytes.len() - d.position();
    if extra != 0 {
        return Err(DecodeError::TrailingBytes { extra });
    }
    Ok(v)
}

impl Heartbeat {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let hb: Heartbeat = decode_exact(bytes, "heartbeat")?;
        if !valid_id(&hb.lock_id) {
            return Err(DecodeError::BadLockId);
        }
        Ok(hb)
    }
}

impl ActivityLogBatch {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let b: ActivityLogBatch = decode_exact(bytes, "activity-log")?;
        if !valid_id(&b.lock_id) {
            return Err(DecodeError::BadLockId);
        }
        if b.events.len() > MAX_EVENTS_PER_BATCH {
            return Err(DecodeError::TooManyEvents {
                count: b.events.len(),
                max: MAX_EVENTS_PER_BATCH,
            });
        }
        Ok(b)
    }
}

impl JobReport {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let r: JobReport = decode_exact(bytes, "job-report")?;
        if !valid_id(&r.lock_id) {
            return Err(DecodeError::BadLockId);
        }
        if r.results.is_empty() {
            return Err(DecodeError::NoResults);
        }
        if r.results.len() > MAX_RESULTS_PER_REPORT {
            return Err(DecodeError::TooManyResults {
                count: r.results.len(),
                max: MAX_RESULTS_PER_REPORT,
            });
        }
        Ok(r)
    }
}

/// A job the gateway sends a bridge on `br/{bridge}/cmd` for one of its
/// linked locks (`bridge-command` in `spec/device.cddl`). On MQTT it is the
/// plaintext of an OSCORE request the gateway protects with its own
/// sequence number under the bridge's context. The bridge reports the result
/// on `br/{bridge}/up/jr` as a [`JobReport`] for `lock_id`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct BridgeCommand {
    #[n(0)]
    pub lock_id: String,
    #[n(1)]
    pub job: DeviceJob,
}

impl BridgeCommand {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let c: BridgeCommand = decode_exact(bytes, "bridge-command")?;
        if !valid_id(&c.lock_id) {
            return Err(DecodeError::BadLockId);
        }
        Ok(c)
    }
}

impl Downlink {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(bytes, "downlink")
    }
}

impl LogAck {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(bytes, "log-ack")
    }
}

/// Encode any device payload. Encoding into a `Vec` cannot fail.
pub fn encode<T: Encode<()>>(value: &T) -> Vec<u8> {
    // Infallible: the writer is a Vec and our types have no failing encoders.
    minicbor::to_vec(value).expect("encoding into a Vec is infallible")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::BatteryLevel;

    pub(crate) fn sample_heartbeat() -> Heartbeat {
        Heartbeat {
            lock_id: "L000001".into(),
            seq: 7,
            device_time: 1_790_000_000,
            battery: Battery::Level(BatteryLevel::Moderate),
            signal_db: 6,
            signal_quality: SignalQuality::Poor,
            carrier: "Singtel".into(),
            channel: Some(ChannelInfo {
                earfcn: 3734,
                pci: 101,
                cell_id: 0x1A2B3C,
                band: 8,
            }),
            lock_state: LockState::Locked,
            door_state: DoorState::Closed,
            firmware: "1.4.2".into(),
            heartbeat_interval: HeartbeatInterval::DEFAULT,
            activity_log_interval: ActivityLogInterval::DEFAULT,
        }
    }

    #[test]
    fn a_bridge_command_roundtrips_and_checks_its_lock_id() {
        let cmd = BridgeCommand {
            lock_id: "L000001".into(),
            job: DeviceJob {
                id: 42,
                attempt: 1,
                action: JobAction::Unlock,
                access: None,
                pin: None,
                pin_type: None,
                start: None,
                end: None,
                heartbeat_interval: None,
                activity_log_interval: None,
                issued: 1_790_000_000,
            },
        };
        let bytes = encode(&cmd);
        assert_eq!(BridgeCommand::decode(&bytes), Ok(cmd.clone()));
        let bad = BridgeCommand {
            lock_id: "L 1".into(),
            ..cmd
        };
        assert_eq!(
            BridgeCommand::decode(&encode(&bad)),
            Err(DecodeError::BadLockId)
        );
        assert!(JobAction::Unlock.is_immediate() && !JobAction::CreatePin.is_immediate());
    }

    #[test]
    fn heartbeat_roundtrips_and_is_compact() {
        let hb = sample_heartbeat();
        let bytes = encode(&hb);
        assert!(bytes.len() < 80, "heartbeat is {} bytes", bytes.len());
        assert_eq!(Heartbeat::decode(&bytes).unwrap(), hb);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&sample_heartbeat());
        bytes.push(0);
        assert_eq!(
            Heartbeat::decode(&bytes),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn garbage_says_what_was_wrong() {
        let err = Heartbeat::decode(b"hello").unwrap_err();
        assert_eq!(err.reason(), "malformed");
        assert!(
            err.to_string()
                .starts_with("payload is not valid heartbeat CBOR"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_refused() {
        // {0: "L1", 1: 1}: lock id and seq only.
        let bytes = [0xa2, 0x00, 0x62, b'L', b'1', 0x01, 0x01];
        assert_eq!(Heartbeat::decode(&bytes).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn bad_interval_is_refused_with_the_rule() {
        let mut hb = sample_heartbeat();
        hb.heartbeat_interval = HeartbeatInterval::from_hours(2).unwrap();
        let mut bytes = encode(&hb);
        // Patch 2 h (0x02 after key 0x0b) into 3 h, which the guide does not allow.
        let pos = bytes.windows(2).position(|w| w == [0x0b, 0x02]).unwrap();
        bytes[pos + 1] = 0x03;
        let err = Heartbeat::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("1, 2, 5, 12 or 24"), "{err}");
    }

    #[test]
    fn lock_id_must_be_topic_safe() {
        let mut hb = sample_heartbeat();
        hb.lock_id = "a/b".into();
        assert_eq!(Heartbeat::decode(&encode(&hb)), Err(DecodeError::BadLockId));
    }

    #[test]
    fn oversize_and_empty_are_refused() {
        assert_eq!(Heartbeat::decode(&[]), Err(DecodeError::Empty));
        let big = vec![0u8; MAX_UPLINK_BYTES + 1];
        assert_eq!(Heartbeat::decode(&big).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn batch_roundtrips() {
        let b = ActivityLogBatch {
            lock_id: "L1".into(),
            seq: 3,
            events: vec![ActivityEvent {
                seq: 10,
                time: 5,
                kind: ActivityKind::UnlockedPin,
                actor: Some("slot-4".into()),
            }],
        };
        assert_eq!(ActivityLogBatch::decode(&encode(&b)).unwrap(), b);
    }
}
