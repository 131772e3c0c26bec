//! Every Prometheus metric the gateway exports: names, help texts, buckets and
//! the small helpers the stages call. One place, so the Grafana dashboards and
//! the docs have a single list to match.
//!
//! Label values are always from small fixed sets (transport, kind, reason,
//! code); never a device id, and never anything secret.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Datagrams/messages received, by `transport` (coap, mqtt).
pub const RECEIVED: &str = "lockfleet_uplinks_received_total";
/// Payloads decoded into a report, by `transport` and `kind` (heartbeat, activity_log, bridge_status).
pub const DECODED: &str = "lockfleet_uplinks_decoded_total";
/// Inputs refused, by `transport` and `reason` (malformed, unknown_device, not_coap, ...;
/// OSCORE: unprotected, malformed_option, unknown_kid, unknown_context, replay,
/// decrypt_failed, malformed_ciphertext, malformed_inner, key_revoked,
/// device_mismatch, replay_state_corrupt).
pub const REJECTED: &str = "lockfleet_uplinks_rejected_total";
/// Reports already stored (same device seq), by `transport` and `kind`.
pub const DUPLICATES: &str = "lockfleet_uplinks_duplicate_total";
/// CoAP retransmissions answered from the exchange cache.
pub const COAP_RETRANSMISSIONS: &str = "lockfleet_coap_retransmissions_total";
/// Reports committed to the database, by `kind`.
pub const COMMITTED: &str = "lockfleet_reports_committed_total";
/// Activity-log entries committed.
pub const ACTIVITY_COMMITTED: &str = "lockfleet_activity_events_committed_total";
/// Dashboard events published, by `kind` (heartbeat, activity, state, battery_low, connectivity).
pub const PUBLISHED: &str = "lockfleet_events_published_total";
/// Dashboard events that could not be handed to the broker.
pub const PUBLISH_FAILED: &str = "lockfleet_events_publish_failed_total";
/// Reports per group commit.
pub const BATCH_SIZE: &str = "lockfleet_commit_batch_size";
/// Seconds one group commit took.
pub const COMMIT_LATENCY: &str = "lockfleet_commit_duration_seconds";
/// Failed group commits.
pub const COMMIT_FAILED: &str = "lockfleet_commit_failed_total";
/// Seconds from queueing a report to its answer (includes the commit).
pub const ACK_LATENCY: &str = "lockfleet_ack_latency_seconds";
/// Seconds one SQLite WAL checkpoint took (off the writer, see `store::sqlite`).
pub const SQLITE_CHECKPOINT_LATENCY: &str = "lockfleet_sqlite_checkpoint_duration_seconds";
/// Pages in the SQLite WAL after the last checkpoint.
pub const SQLITE_WAL_PAGES: &str = "lockfleet_sqlite_wal_pages";
/// Reports waiting for the writer.
pub const QUEUE_DEPTH: &str = "lockfleet_ingest_queue_depth";
/// CoAP exchanges remembered for duplicate detection.
pub const COAP_EXCHANGES: &str = "lockfleet_coap_exchanges";
/// Devices that reported within their heartbeat interval (locks) or are connected (bridges), by `kind`.
pub const DEVICES_ONLINE: &str = "lockfleet_devices_online";
/// Registered devices, by `kind` (lock, bridge).
pub const DEVICES_REGISTERED: &str = "lockfleet_devices_registered";
/// Rows deleted by retention, by `table`.
pub const RETENTION_DELETED: &str = "lockfleet_retention_deleted_total";
/// MQTT clients connected to the embedded broker (updated while it carries traffic).
pub const MQTT_CONNECTIONS: &str = "lockfleet_mqtt_connections";
/// Publishes the embedded broker routed, by `outcome` (routed, failed).
pub const BROKER_PUBLISHES: &str = "lockfleet_mqtt_broker_publishes_total";
/// Alerts of the embedded broker, by `kind`: `cursor_jump` (a subscriber fell
/// behind and lost messages), `bad_publish`.
pub const BROKER_ALERTS: &str = "lockfleet_mqtt_broker_alerts_total";

/// Dashboard commands handled, by `command` and `outcome` (ok, refused,
/// replayed, malformed, failed).
pub const COMMANDS: &str = "lockfleet_commands_total";
/// Commands refused, by `rule` (the guide's rule the command broke).
pub const COMMANDS_REFUSED: &str = "lockfleet_commands_refused_total";
/// Seconds from receiving a command to publishing its answer (durable).
pub const COMMAND_LATENCY: &str = "lockfleet_command_duration_seconds";
/// Job state changes, by `change` (created, delivered, completed, failed,
/// deleted, recreated).
pub const JOB_CHANGES: &str = "lockfleet_job_changes_total";
/// Failed jobs, by `outcome` (the lock's error: hard_reset, slots_full, ...).
pub const JOBS_FAILED: &str = "lockfleet_jobs_failed_total";
/// Job results that changed nothing, by `reason` (unknown_job, already_final, other_attempt).
pub const JOB_RESULTS_IGNORED: &str = "lockfleet_job_results_ignored_total";
/// Jobs per downlink.
pub const JOBS_PER_DOWNLINK: &str = "lockfleet_jobs_per_downlink";
/// Seconds the writer spent on the job step of a batch (pending read, delivery record, results).
pub const JOB_STEP_LATENCY: &str = "lockfleet_job_step_duration_seconds";
/// Job steps that failed (the jobs stay pending and go at a later uplink).
pub const JOB_STEP_FAILED: &str = "lockfleet_job_step_failed_total";

/// Locks overdue now (missed their due heartbeat by the grace), from the database.
pub const LOCKS_OVERDUE: &str = "lockfleet_locks_overdue";
/// Overdue reports published, by `change` (overdue, returned).
pub const OVERDUE_CHANGES: &str = "lockfleet_overdue_changes_total";
/// Commands published to bridges, by `try` (first, retry).
pub const BRIDGE_COMMANDS_SENT: &str = "lockfleet_bridge_commands_sent_total";
/// Bridge commands that ended without a result, by `outcome` (gave_up,
/// publish_failed, unprotectable).
pub const BRIDGE_COMMANDS_UNANSWERED: &str = "lockfleet_bridge_commands_unanswered_total";
/// Bridge commands queued (not yet sent, or waiting to go again).
pub const BRIDGE_QUEUE_DEPTH: &str = "lockfleet_bridge_queue_depth";
/// Bridge commands in flight (sent, result not back).
pub const BRIDGE_IN_FLIGHT: &str = "lockfleet_bridge_commands_in_flight";
/// Time from publishing a bridge command to its result.
pub const BRIDGE_RESULT_LATENCY: &str = "lockfleet_bridge_result_latency_seconds";
/// Result and refresh signals to bridge delivery dropped on a full channel.
pub const BRIDGE_SIGNALS_DROPPED: &str = "lockfleet_bridge_signals_dropped_total";
/// Bridges online as this instance delivers to them.
pub const BRIDGES_DELIVERING: &str = "lockfleet_bridges_delivering";

/// Lock 2FA entries decided, by `entry` (passcode, otp), `result` (the
/// lock's answer: otp_sent, denied, rate_limited, locked_out,
/// notifier_failed, allowed, wrong_otp, challenge_ended) and `reason`
/// (wrong_passcode, no_access, not_started, expired, mobile_unverified,
/// user_deactivated, not_2fa_lock, lock_rate, user_rate, lock, user,
/// too_many_tries, reused, revoked, unknown, ...).
pub const TWOFA_ENTRIES: &str = "lockfleet_twofa_entries_total";
/// 2FA lock-outs in force, by `scope` (lock, user), from the database.
pub const TWOFA_LOCKOUTS: &str = "lockfleet_twofa_lockouts";
/// 2FA lock-outs begun or cleared, by `change` (started, cleared).
pub const TWOFA_LOCKOUT_CHANGES: &str = "lockfleet_twofa_lockout_changes_total";
/// Seconds from a passcode entry's arrival to its OTP handed to the notifier.
pub const TWOFA_CHALLENGE_LATENCY: &str = "lockfleet_twofa_challenge_seconds";
/// Seconds one notifier call took (all tries), by `notifier` (webhook, mqtt).
pub const TWOFA_NOTIFIER_LATENCY: &str = "lockfleet_twofa_notifier_seconds";
/// OTPs the notifier could not hand over, by `notifier` and `reason`
/// (timeout, connect, http_status, unavailable).
pub const TWOFA_NOTIFIER_FAILURES: &str = "lockfleet_twofa_notifier_failures_total";
/// Seconds of Argon2id per typed passcode (on the blocking pool).
pub const TWOFA_PASSCODE_HASH_LATENCY: &str = "lockfleet_twofa_passcode_hash_seconds";
/// Seconds the writer spent deciding a batch's 2FA entries.
pub const TWOFA_STEP_LATENCY: &str = "lockfleet_twofa_step_duration_seconds";
/// 2FA steps that failed (the locks were told to retry).
pub const TWOFA_STEP_FAILED: &str = "lockfleet_twofa_step_failed_total";

/// Locks whose newest heartbeat reports a low battery, from the database.
pub const LOCKS_LOW_BATTERY: &str = "lockfleet_locks_low_battery";
/// Pending jobs by `age` since creation ([`PENDING_AGES`]), from the database.
pub const JOBS_PENDING: &str = "lockfleet_jobs_pending";
/// Age of the oldest pending job (0 when none), from the database.
pub const JOBS_OLDEST_PENDING_AGE: &str = "lockfleet_jobs_oldest_pending_age_seconds";
/// Seconds from a job's creation (a recreated job's: its recreation) to its
/// completion, by `route` (heartbeat, bridge: how it last reached the lock).
pub const JOB_COMPLETION_LATENCY: &str = "lockfleet_job_completion_seconds";
/// Bridge connectivity changes committed, by `change` (online, offline) and
/// `cause` (connected, disconnected, last_will).
pub const BRIDGE_CONNECTIVITY_CHANGES: &str = "lockfleet_bridge_connectivity_changes_total";

/// The `age` label of [`JOBS_PENDING`]: a pending job younger than the
/// bound (milliseconds) falls in its bucket; older than the last, `over_1d`.
/// A lock hears its jobs at its heartbeat (at most 24 h apart), so a job
/// older than a day is one its lock has not picked up when it should have.
pub const PENDING_AGES: [(u64, &str); 4] = [
    (60_000, "under_1m"),
    (600_000, "1m_to_10m"),
    (3_600_000, "10m_to_1h"),
    (86_400_000, "1h_to_1d"),
];
/// The `age` label of pending jobs older than every bound of [`PENDING_AGES`].
pub const PENDING_AGE_OLDEST: &str = "over_1d";

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
/// Creation to completion: seconds through a bridge, up to a day (and
/// more for a lock that was away) at a heartbeat.
const JOB_COMPLETION_BUCKETS: [f64; 16] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0,
    86400.0, 172800.0,
];

/// Install the global recorder. Call once per process; later calls return a
/// handle to a fresh recorder that is not installed (tests start many servers).
pub fn install() -> PrometheusHandle {
    let builder = || {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(JOBS_PER_DOWNLINK.into()), &BATCH_BUCKETS)
            })
            // A full name wins over the `_seconds` suffix.
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(JOB_COMPLETION_LATENCY.into()),
                    &JOB_COMPLETION_BUCKETS,
                )
            })
            // Infallible: the bucket lists above are non-empty constants.
            .expect("bucket lists are non-empty")
    };
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
                register_known_series();
            }
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        TWOFA_ENTRIES,
        "Lock 2FA entries decided, by entry, answer and reason"
    );
    describe_gauge!(TWOFA_LOCKOUTS, "2FA lock-outs in force, by scope");
    describe_counter!(TWOFA_LOCKOUT_CHANGES, "2FA lock-outs begun or cleared");
    describe_histogram!(
        TWOFA_CHALLENGE_LATENCY,
        Unit::Seconds,
        "Passcode entry arrival to OTP handed to the notifier"
    );
    describe_histogram!(
        TWOFA_NOTIFIER_LATENCY,
        Unit::Seconds,
        "One notifier call, all tries included"
    );
    describe_counter!(
        TWOFA_NOTIFIER_FAILURES,
        "OTPs the notifier could not hand over"
    );
    describe_histogram!(
        TWOFA_PASSCODE_HASH_LATENCY,
        Unit::Seconds,
        "Argon2id of one typed passcode"
    );
    describe_histogram!(
        TWOFA_STEP_LATENCY,
        Unit::Seconds,
        "Writer time deciding a batch's 2FA entries"
    );
    describe_counter!(TWOFA_STEP_FAILED, "2FA steps that failed");
    describe_counter!(
        RECEIVED,
        "Datagrams and MQTT messages received from devices"
    );
    describe_counter!(DECODED, "Device payloads decoded into reports");
    describe_counter!(
        REJECTED,
        "Device inputs refused, by reason (including OSCORE: unprotected, replay, decrypt_failed, key_revoked, ...)"
    );
    describe_counter!(
        DUPLICATES,
        "Reports already stored (same device sequence number)"
    );
    describe_counter!(
        COAP_RETRANSMISSIONS,
        "CoAP retransmissions answered from the exchange cache"
    );
    describe_counter!(COMMITTED, "Reports durably committed");
    describe_counter!(ACTIVITY_COMMITTED, "Activity-log entries durably committed");
    describe_counter!(PUBLISHED, "Dashboard events published");
    describe_counter!(PUBLISH_FAILED, "Dashboard events the broker did not accept");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Reports per group commit");
    describe_histogram!(
        COMMIT_LATENCY,
        Unit::Seconds,
        "Duration of one group commit"
    );
    describe_counter!(
        COMMIT_FAILED,
        "Group commits that failed (their reports were answered with an error)"
    );
    describe_histogram!(
        ACK_LATENCY,
        Unit::Seconds,
        "Time from queueing a report to its answer"
    );
    describe_gauge!(QUEUE_DEPTH, "Reports waiting for the writer");
    describe_histogram!(
        SQLITE_CHECKPOINT_LATENCY,
        Unit::Seconds,
        "Duration of one SQLite WAL checkpoint, run beside the writer"
    );
    describe_gauge!(
        SQLITE_WAL_PAGES,
        "Pages in the SQLite WAL after the last checkpoint (the writer restarts it once all are copied)"
    );
    describe_gauge!(
        COAP_EXCHANGES,
        "CoAP exchanges remembered for duplicate detection"
    );
    describe_gauge!(
        DEVICES_ONLINE,
        "Locks heard within their heartbeat interval; bridges online"
    );
    describe_gauge!(DEVICES_REGISTERED, "Registered devices");
    describe_counter!(RETENTION_DELETED, "Rows deleted by the retention task");
    describe_gauge!(
        MQTT_CONNECTIONS,
        "MQTT clients connected to an embedded broker, by broker (device, backend; updated while it carries traffic)"
    );
    describe_counter!(
        BROKER_PUBLISHES,
        "Publishes routed by the embedded broker, by outcome"
    );
    describe_counter!(
        BROKER_ALERTS,
        "Embedded broker alerts; cursor_jump means a subscriber lost messages"
    );
    describe_counter!(
        COMMANDS,
        "Dashboard commands handled, by command and outcome"
    );
    describe_counter!(
        COMMANDS_REFUSED,
        "Dashboard commands refused, by the rule they broke"
    );
    describe_histogram!(
        COMMAND_LATENCY,
        Unit::Seconds,
        "Time from receiving a dashboard command to its durable answer"
    );
    describe_counter!(JOB_CHANGES, "Job state changes, by change");
    describe_counter!(JOBS_FAILED, "Jobs failed by the lock, by the lock's error");
    describe_counter!(
        JOB_RESULTS_IGNORED,
        "Job results that changed nothing (unknown job, already final, another attempt)"
    );
    describe_histogram!(
        JOBS_PER_DOWNLINK,
        Unit::Count,
        "Jobs carried by one downlink"
    );
    describe_histogram!(
        JOB_STEP_LATENCY,
        Unit::Seconds,
        "Writer time spent on the job step of one batch"
    );
    describe_counter!(
        JOB_STEP_FAILED,
        "Job steps that failed; the jobs stay pending"
    );
    describe_gauge!(
        LOCKS_OVERDUE,
        "Locks that missed their due heartbeat by the grace"
    );
    describe_counter!(
        OVERDUE_CHANGES,
        "Overdue reports published, by change (overdue, returned)"
    );
    describe_counter!(
        BRIDGE_COMMANDS_SENT,
        "Commands published to bridges, by try (first, retry)"
    );
    describe_counter!(
        BRIDGE_COMMANDS_UNANSWERED,
        "Bridge commands that got no result, by outcome (gave_up: the job stays pending; publish_failed; unprotectable)"
    );
    describe_gauge!(
        BRIDGE_QUEUE_DEPTH,
        "Bridge commands waiting to be sent on this instance"
    );
    describe_gauge!(
        BRIDGE_IN_FLIGHT,
        "Bridge commands sent whose result is not back, on this instance"
    );
    describe_histogram!(
        BRIDGE_RESULT_LATENCY,
        Unit::Seconds,
        "Time from publishing a bridge command to its result"
    );
    describe_counter!(
        BRIDGE_SIGNALS_DROPPED,
        "Result and refresh signals to bridge delivery dropped on a full channel (the next database read catches up)"
    );
    describe_gauge!(
        BRIDGES_DELIVERING,
        "Bridges this instance knows online and delivers commands to"
    );
    describe_gauge!(
        LOCKS_LOW_BATTERY,
        "Locks whose newest heartbeat reports a low battery"
    );
    describe_gauge!(
        JOBS_PENDING,
        "Pending jobs by age since creation (under_1m, 1m_to_10m, 10m_to_1h, 1h_to_1d, over_1d)"
    );
    describe_gauge!(
        JOBS_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest pending job (0 when none)"
    );
    describe_histogram!(
        JOB_COMPLETION_LATENCY,
        Unit::Seconds,
        "Time from a job's creation (or recreation) to its completion, by the route that delivered it"
    );
    describe_counter!(
        BRIDGE_CONNECTIVITY_CHANGES,
        "Bridge connectivity changes committed, by change (online, offline) and cause"
    );
    describe_coap();
    describe_oscore();
    describe_front();
    describe_process();
}

/// Create the series whose label values are known in advance at zero, so
/// that the first increment is a visible change to `rate()` and
/// `increase()` (a series born at 1 looks constant) and alerts on them
/// evaluate from the start rather than on "no data".
fn register_known_series() {
    for name in [
        COAP_RETRANSMISSIONS,
        ACTIVITY_COMMITTED,
        COMMIT_FAILED,
        JOB_STEP_FAILED,
        TWOFA_STEP_FAILED,
        BRIDGE_SIGNALS_DROPPED,
        COAP_EXCHANGES_EVICTED,
    ] {
        counter!(name).absolute(0);
    }
    let labelled: [(&'static str, &'static str, &[&'static str]); 14] = [
        (RECEIVED, "transport", &["coap", "mqtt"]),
        (OSCORE_VERIFIED, "transport", &["coap", "mqtt"]),
        (OSCORE_UNPROTECTED_ACCEPTED, "transport", &["coap", "mqtt"]),
        (
            COMMITTED,
            "kind",
            &["heartbeat", "activity_log", "job_report", "bridge_status"],
        ),
        (
            JOB_CHANGES,
            "change",
            &[
                "created",
                "delivered",
                "completed",
                "failed",
                "deleted",
                "recreated",
            ],
        ),
        (OVERDUE_CHANGES, "change", &["overdue", "returned"]),
        (TWOFA_LOCKOUT_CHANGES, "change", &["started", "cleared"]),
        (BRIDGE_COMMANDS_SENT, "try", &["first", "retry"]),
        (KEYRING_LOADS, "outcome", &["ok", "failed"]),
        (COAP_DUPLICATES_IGNORED, "reason", &["in_progress", "non"]),
        (
            BRIDGE_COMMANDS_UNANSWERED,
            "outcome",
            &["gave_up", "publish_failed", "unprotectable"],
        ),
        (
            JOB_RESULTS_IGNORED,
            "reason",
            &["unknown_job", "already_final", "other_attempt"],
        ),
        (FRONT_AUTHENTICATED, "kind", &["lock", "bridge", "backend"]),
        (
            PUBLISH_FAILED,
            "kind",
            &[
                "heartbeat",
                "activity",
                "state",
                "battery_low",
                "connectivity",
                "overdue",
                "job",
                "2fa",
                "command_response",
                "device_ack",
                "device_error",
            ],
        ),
    ];
    for (name, label, values) in labelled {
        for &value in values {
            counter!(name, label => value).absolute(0);
        }
    }
    gauge!(FRONT_CONNECTIONS).increment(0.0);
    for transport in ["coap", "mqtt"] {
        for kind in ["heartbeat", "activity_log"] {
            counter!(DUPLICATES, "transport" => transport, "kind" => kind).absolute(0);
        }
    }
    for (change, cause) in [
        ("online", "connected"),
        ("offline", "disconnected"),
        ("offline", "last_will"),
    ] {
        counter!(BRIDGE_CONNECTIVITY_CHANGES, "change" => change, "cause" => cause).absolute(0);
    }
    for name in [
        ACK_LATENCY,
        COMMIT_LATENCY,
        BATCH_SIZE,
        COMMAND_LATENCY,
        JOB_STEP_LATENCY,
        JOBS_PER_DOWNLINK,
        BRIDGE_RESULT_LATENCY,
        TWOFA_CHALLENGE_LATENCY,
        TWOFA_PASSCODE_HASH_LATENCY,
        TWOFA_STEP_LATENCY,
        KEYRING_LOAD_DURATION,
        SQLITE_CHECKPOINT_LATENCY,
    ] {
        // Registering the handle is enough: the exporter renders it with
        // empty buckets.
        let _ = histogram!(name);
    }
    for route in ["heartbeat", "bridge"] {
        let _ = histogram!(JOB_COMPLETION_LATENCY, "route" => route);
    }
    for outcome in ["ok", "refused"] {
        let _ = histogram!(FRONT_AUTH_LATENCY, "outcome" => outcome);
    }
}

pub fn received(transport: &'static str) {
    counter!(RECEIVED, "transport" => transport).increment(1);
}
pub fn decoded(transport: &'static str, kind: &'static str) {
    counter!(DECODED, "transport" => transport, "kind" => kind).increment(1);
}
pub fn rejected(transport: &'static str, reason: &'static str) {
    counter!(REJECTED, "transport" => transport, "reason" => reason).increment(1);
}
pub fn duplicate(transport: &'static str, kind: &'static str) {
    counter!(DUPLICATES, "transport" => transport, "kind" => kind).increment(1);
}
pub fn coap_retransmission() {
    counter!(COAP_RETRANSMISSIONS).increment(1);
}
pub fn ack_latency(d: Duration) {
    histogram!(ACK_LATENCY).record(d.as_secs_f64());
}
pub fn committed(kind: &'static str, n: u64) {
    counter!(COMMITTED, "kind" => kind).increment(n);
}
pub fn activity_committed(n: u64) {
    counter!(ACTIVITY_COMMITTED).increment(n);
}
pub fn published(kind: &'static str) {
    counter!(PUBLISHED, "kind" => kind).increment(1);
}
pub fn publish_failed(kind: &'static str) {
    counter!(PUBLISH_FAILED, "kind" => kind).increment(1);
}
pub fn batch(size: usize, took: Duration) {
    histogram!(BATCH_SIZE).record(size as f64);
    histogram!(COMMIT_LATENCY).record(took.as_secs_f64());
}
pub fn commit_failed() {
    counter!(COMMIT_FAILED).increment(1);
}
pub fn sqlite_checkpoint(took: Duration, wal_pages: u64) {
    histogram!(SQLITE_CHECKPOINT_LATENCY).record(took.as_secs_f64());
    gauge!(SQLITE_WAL_PAGES).set(wal_pages as f64);
}
pub fn queue_depth(n: usize) {
    gauge!(QUEUE_DEPTH).set(n as f64);
}
pub fn coap_exchanges(n: usize) {
    gauge!(COAP_EXCHANGES).set(n as f64);
}
pub fn devices_online(kind: &'static str, n: usize) {
    gauge!(DEVICES_ONLINE, "kind" => kind).set(n as f64);
}
pub fn devices_registered(kind: &'static str, n: usize) {
    gauge!(DEVICES_REGISTERED, "kind" => kind).set(n as f64);
}
pub fn retention_deleted(table: &'static str, n: u64) {
    counter!(RETENTION_DELETED, "table" => table).increment(n);
}
/// `broker`: `device` (devices' broker, or the only one with
/// `--insecure-dev`) or `backend` (the dashboard backend's).
pub fn mqtt_connections(broker: &'static str, n: usize) {
    gauge!(MQTT_CONNECTIONS, "broker" => broker).set(n as f64);
}
pub fn broker_publishes(broker: &'static str, routed: u64, failed: u64) {
    counter!(BROKER_PUBLISHES, "broker" => broker, "outcome" => "routed").increment(routed);
    counter!(BROKER_PUBLISHES, "broker" => broker, "outcome" => "failed").increment(failed);
}
/// An embedded broker started: its alert counters exist from now on.
pub fn broker_started(broker: &'static str) {
    for kind in ["cursor_jump", "bad_publish"] {
        counter!(BROKER_ALERTS, "broker" => broker, "kind" => kind).increment(0);
    }
}
pub fn broker_alert(broker: &'static str, kind: &'static str) {
    counter!(BROKER_ALERTS, "broker" => broker, "kind" => kind).increment(1);
}

/// CoAP duplicates dropped without an answer, by `reason`: `in_progress` (a
/// retransmission while the first copy is still being committed) or `non` (a
/// repeated non-confirmable message).
pub const COAP_DUPLICATES_IGNORED: &str = "lockfleet_coap_duplicates_ignored_total";
/// CoAP exchanges forgotten before their lifetime because the exchange table
/// was full (a steady rate means the table is too small for the traffic).
pub const COAP_EXCHANGES_EVICTED: &str = "lockfleet_coap_exchanges_evicted_total";
/// CoAP requests submitted to the pipeline and not yet answered.
pub const COAP_IN_FLIGHT: &str = "lockfleet_coap_requests_in_flight";

pub fn coap_duplicate_ignored(reason: &'static str) {
    counter!(COAP_DUPLICATES_IGNORED, "reason" => reason).increment(1);
}
pub fn coap_exchanges_evicted(n: u64) {
    counter!(COAP_EXCHANGES_EVICTED).increment(n);
}
pub fn coap_in_flight(n: usize) {
    gauge!(COAP_IN_FLIGHT).set(n as f64);
}
/// OSCORE-protected requests that verified (RFC 8613 §8.2), by `transport`.
/// Refusals are in [`REJECTED`] by reason.
pub const OSCORE_VERIFIED: &str = "lockfleet_oscore_requests_verified_total";
/// Unprotected requests to device resources accepted only because
/// `--insecure-dev` is on, by `transport`: devices not yet using their keys.
pub const OSCORE_UNPROTECTED_ACCEPTED: &str = "lockfleet_oscore_unprotected_accepted_total";
/// Devices with an OSCORE context in the key ring.
pub const OSCORE_CONTEXTS: &str = "lockfleet_oscore_contexts";
/// Stored device keys that gave no context at the last key-ring load (do
/// not open under the server key, or corrupt): those devices cannot talk.
pub const OSCORE_KEYS_UNUSABLE: &str = "lockfleet_oscore_keys_unusable";
/// Seconds one key-ring load took (read keys, unwrap and derive the changed ones, swap).
pub const KEYRING_LOAD_DURATION: &str = "lockfleet_oscore_keyring_load_duration_seconds";
/// Key-ring loads (at start and after registry changes), by `outcome` (ok, failed).
pub const KEYRING_LOADS: &str = "lockfleet_oscore_keyring_loads_total";

pub fn oscore_verified(transport: &'static str) {
    counter!(OSCORE_VERIFIED, "transport" => transport).increment(1);
}
pub fn oscore_unprotected_accepted(transport: &'static str) {
    counter!(OSCORE_UNPROTECTED_ACCEPTED, "transport" => transport).increment(1);
}
pub fn keyring_loaded(took: Duration, contexts: usize, unusable: usize) {
    histogram!(KEYRING_LOAD_DURATION).record(took.as_secs_f64());
    counter!(KEYRING_LOADS, "outcome" => "ok").increment(1);
    gauge!(OSCORE_CONTEXTS).set(contexts as f64);
    gauge!(OSCORE_KEYS_UNUSABLE).set(unusable as f64);
}
pub fn keyring_load_failed() {
    counter!(KEYRING_LOADS, "outcome" => "failed").increment(1);
}

/// Help texts of the OSCORE metrics above.
fn describe_oscore() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        OSCORE_VERIFIED,
        "OSCORE-protected device requests that verified (refusals: lockfleet_uplinks_rejected_total by reason)"
    );
    describe_counter!(
        OSCORE_UNPROTECTED_ACCEPTED,
        "Unprotected device requests accepted only because --insecure-dev is on"
    );
    describe_gauge!(
        OSCORE_CONTEXTS,
        "Devices with an OSCORE context in the key ring"
    );
    describe_gauge!(
        OSCORE_KEYS_UNUSABLE,
        "Stored device keys that gave no context at the last key-ring load (those devices cannot talk)"
    );
    describe_histogram!(
        KEYRING_LOAD_DURATION,
        Unit::Seconds,
        "Duration of one key-ring load (at start and after registry changes)"
    );
    describe_counter!(KEYRING_LOADS, "Key-ring loads, by outcome");
}

/// Help texts of the CoAP metrics above.
fn describe_coap() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        COAP_DUPLICATES_IGNORED,
        "CoAP duplicates dropped without an answer, by reason"
    );
    describe_counter!(
        COAP_EXCHANGES_EVICTED,
        "CoAP exchanges forgotten early because the exchange table was full"
    );
    describe_gauge!(COAP_IN_FLIGHT, "CoAP requests waiting for their commit");
}

/// MQTT front: client connections open now.
pub const FRONT_CONNECTIONS: &str = "lockfleet_mqtt_front_connections";
/// MQTT front: refusals by `reason` (bad_credentials, foreign_publish,
/// foreign_subscribe, rate_limited, client_id_mismatch, will_topic, ...).
pub const FRONT_REFUSED: &str = "lockfleet_mqtt_front_refused_total";
/// MQTT front: authenticated connections by `kind` (lock, bridge, backend).
pub const FRONT_AUTHENTICATED: &str = "lockfleet_mqtt_front_authenticated_total";
/// MQTT front: seconds one login check took, by `outcome` (ok, refused).
pub const FRONT_AUTH_LATENCY: &str = "lockfleet_mqtt_front_auth_duration_seconds";

pub fn front_connections(delta: i64) {
    gauge!(FRONT_CONNECTIONS).increment(delta as f64);
}
pub fn front_refused(reason: &'static str) {
    counter!(FRONT_REFUSED, "reason" => reason).increment(1);
}
pub fn front_authenticated(kind: &'static str) {
    counter!(FRONT_AUTHENTICATED, "kind" => kind).increment(1);
}
pub fn front_auth(took: Duration, ok: bool) {
    histogram!(FRONT_AUTH_LATENCY, "outcome" => if ok { "ok" } else { "refused" })
        .record(took.as_secs_f64());
}
/// Help texts of the MQTT front's metrics.
pub fn describe_front() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        FRONT_CONNECTIONS,
        "MQTT client connections open at the front"
    );
    describe_counter!(FRONT_REFUSED, "MQTT front refusals by reason");
    describe_counter!(
        FRONT_AUTHENTICATED,
        "MQTT clients authenticated at the front, by kind"
    );
    describe_histogram!(
        FRONT_AUTH_LATENCY,
        Unit::Seconds,
        "Time to check one MQTT login"
    );
}

pub fn command(command: &'static str, outcome: &'static str, took: Duration) {
    counter!(COMMANDS, "command" => command, "outcome" => outcome).increment(1);
    histogram!(COMMAND_LATENCY).record(took.as_secs_f64());
}
pub fn command_refused(rule: &'static str) {
    counter!(COMMANDS_REFUSED, "rule" => rule).increment(1);
}
pub fn job_change(change: &'static str) {
    counter!(JOB_CHANGES, "change" => change).increment(1);
}
pub fn job_failed(outcome: &'static str) {
    counter!(JOBS_FAILED, "outcome" => outcome).increment(1);
}
pub fn job_result_ignored(reason: &'static str) {
    counter!(JOB_RESULTS_IGNORED, "reason" => reason).increment(1);
}
pub fn jobs_per_downlink(n: usize) {
    histogram!(JOBS_PER_DOWNLINK).record(n as f64);
}
pub fn job_step(took: Duration) {
    histogram!(JOB_STEP_LATENCY).record(took.as_secs_f64());
}
pub fn twofa_entry(entry: &'static str, result: &'static str, reason: &'static str) {
    counter!(TWOFA_ENTRIES, "entry" => entry, "result" => result, "reason" => reason).increment(1);
}
pub fn twofa_lockouts(locks: u64, users: u64) {
    gauge!(TWOFA_LOCKOUTS, "scope" => "lock").set(locks as f64);
    gauge!(TWOFA_LOCKOUTS, "scope" => "user").set(users as f64);
}
pub fn twofa_lockout_change(change: &'static str) {
    counter!(TWOFA_LOCKOUT_CHANGES, "change" => change).increment(1);
}
pub fn twofa_challenge(took: Duration) {
    histogram!(TWOFA_CHALLENGE_LATENCY).record(took.as_secs_f64());
}
pub fn twofa_notifier(notifier: &'static str, took: Duration, failure: Option<&'static str>) {
    histogram!(TWOFA_NOTIFIER_LATENCY, "notifier" => notifier).record(took.as_secs_f64());
    if let Some(reason) = failure {
        counter!(TWOFA_NOTIFIER_FAILURES, "notifier" => notifier, "reason" => reason).increment(1);
    }
}
/// The 2FA notifier `notifier` is in use: its call time and failure
/// series exist from now on, so the first call and the first failure are
/// changes `rate()` sees.
pub fn twofa_notifier_ready(notifier: &'static str, reasons: &[&'static str]) {
    let _ = histogram!(TWOFA_NOTIFIER_LATENCY, "notifier" => notifier);
    for &reason in reasons {
        counter!(TWOFA_NOTIFIER_FAILURES, "notifier" => notifier, "reason" => reason).increment(0);
    }
}
pub fn twofa_passcode_hash(took: Duration) {
    histogram!(TWOFA_PASSCODE_HASH_LATENCY).record(took.as_secs_f64());
}
pub fn twofa_step(took: Duration) {
    histogram!(TWOFA_STEP_LATENCY).record(took.as_secs_f64());
}
pub fn twofa_step_failed() {
    counter!(TWOFA_STEP_FAILED).increment(1);
}
pub fn job_step_failed() {
    counter!(JOB_STEP_FAILED).increment(1);
}
pub fn locks_overdue(n: u64) {
    gauge!(LOCKS_OVERDUE).set(n as f64);
}
pub fn overdue_change(change: &'static str) {
    counter!(OVERDUE_CHANGES, "change" => change).increment(1);
}

pub fn bridge_command_sent(retry: bool) {
    counter!(BRIDGE_COMMANDS_SENT, "try" => if retry { "retry" } else { "first" }).increment(1);
}
pub fn bridge_command_unanswered(outcome: &'static str) {
    counter!(BRIDGE_COMMANDS_UNANSWERED, "outcome" => outcome).increment(1);
}
pub fn bridge_queue(queued: usize, in_flight: usize, bridges: usize) {
    gauge!(BRIDGE_QUEUE_DEPTH).set(queued as f64);
    gauge!(BRIDGE_IN_FLIGHT).set(in_flight as f64);
    gauge!(BRIDGES_DELIVERING).set(bridges as f64);
}
pub fn bridge_signal_dropped() {
    counter!(BRIDGE_SIGNALS_DROPPED).increment(1);
}
pub fn bridge_result_latency(took: Duration) {
    histogram!(BRIDGE_RESULT_LATENCY).record(took.as_secs_f64());
}

pub fn locks_low_battery(n: u64) {
    gauge!(LOCKS_LOW_BATTERY).set(n as f64);
}
/// `counts[i]` pending jobs in the `i`-th age of [`PENDING_AGES`], the last
/// one older than all of them; `oldest` the oldest one's age.
pub fn jobs_pending(counts: &[u64; PENDING_AGES.len() + 1], oldest: Duration) {
    let labels = PENDING_AGES
        .iter()
        .map(|(_, label)| *label)
        .chain([PENDING_AGE_OLDEST]);
    for (label, n) in labels.zip(counts) {
        gauge!(JOBS_PENDING, "age" => label).set(*n as f64);
    }
    gauge!(JOBS_OLDEST_PENDING_AGE).set(oldest.as_secs_f64());
}
/// A job completed `took` after its creation, last delivered by `route`
/// (`heartbeat`, `bridge`; anything else is `other`).
pub fn job_completed(route: Option<&str>, took: Duration) {
    let route = match route {
        Some("heartbeat") => "heartbeat",
        Some("bridge") => "bridge",
        _ => "other",
    };
    histogram!(JOB_COMPLETION_LATENCY, "route" => route).record(took.as_secs_f64());
}
/// `cause`: `connected`, `disconnected` or `last_will`.
pub fn bridge_connectivity_change(online: bool, cause: &'static str) {
    let change = if online { "online" } else { "offline" };
    counter!(BRIDGE_CONNECTIVITY_CHANGES, "change" => change, "cause" => cause).increment(1);
}

/// What the process uses, sampled by [`crate::process`] at each scrape:
/// CPU time (user and system) since start. A total that only grows, but
/// exported as a gauge: the `metrics` crate's counters hold whole numbers,
/// and `rate()` needs the fractions.
pub const PROCESS_CPU: &str = "lockfleet_process_cpu_seconds_total";
/// Resident memory.
pub const PROCESS_RESIDENT_MEMORY: &str = "lockfleet_process_resident_memory_bytes";
/// Virtual memory.
pub const PROCESS_VIRTUAL_MEMORY: &str = "lockfleet_process_virtual_memory_bytes";
/// Open file descriptors (sockets included: each MQTT client holds two).
pub const PROCESS_OPEN_FDS: &str = "lockfleet_process_open_fds";
/// The soft limit on open file descriptors.
pub const PROCESS_MAX_FDS: &str = "lockfleet_process_max_fds";
/// OS threads (tokio workers, the blocking pool, the embedded brokers' own).
pub const PROCESS_THREADS: &str = "lockfleet_process_threads";
/// Start time, Unix seconds.
pub const PROCESS_START_TIME: &str = "lockfleet_process_start_time_seconds";
/// Tokio worker threads of the main runtime.
pub const TOKIO_WORKERS: &str = "lockfleet_tokio_workers";
/// Tasks alive on the main runtime (spawned and not yet finished).
pub const TOKIO_ALIVE_TASKS: &str = "lockfleet_tokio_alive_tasks";
/// Tasks waiting in the main runtime's global (injection) queue.
pub const TOKIO_GLOBAL_QUEUE_DEPTH: &str = "lockfleet_tokio_global_queue_depth";
/// Time the main runtime's workers spent busy, summed over workers (a
/// growing total exported as a gauge, like [`PROCESS_CPU`]).
pub const TOKIO_BUSY: &str = "lockfleet_tokio_busy_seconds_total";

/// Help texts of the process and runtime metrics.
fn describe_process() {
    use metrics::{describe_gauge, Unit};
    describe_gauge!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time (user and system) the process used since it started"
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident memory of the process"
    );
    describe_gauge!(
        PROCESS_VIRTUAL_MEMORY,
        Unit::Bytes,
        "Virtual memory of the process"
    );
    describe_gauge!(PROCESS_OPEN_FDS, "Open file descriptors (sockets included)");
    describe_gauge!(PROCESS_MAX_FDS, "Soft limit on open file descriptors");
    describe_gauge!(PROCESS_THREADS, "OS threads of the process");
    describe_gauge!(
        PROCESS_START_TIME,
        Unit::Seconds,
        "Start time of the process, Unix seconds"
    );
    describe_gauge!(TOKIO_WORKERS, "Worker threads of the main tokio runtime");
    describe_gauge!(
        TOKIO_ALIVE_TASKS,
        "Tasks alive on the main tokio runtime (spawned, not finished)"
    );
    describe_gauge!(
        TOKIO_GLOBAL_QUEUE_DEPTH,
        "Tasks waiting in the main tokio runtime's global queue"
    );
    describe_gauge!(
        TOKIO_BUSY,
        Unit::Seconds,
        "Time the main tokio runtime's workers spent busy, summed over workers"
    );
}
pub fn process(p: &crate::process::ProcessSample) {
    gauge!(PROCESS_CPU).set(p.cpu_seconds);
    gauge!(PROCESS_RESIDENT_MEMORY).set(p.resident_bytes as f64);
    gauge!(PROCESS_VIRTUAL_MEMORY).set(p.virtual_bytes as f64);
    gauge!(PROCESS_OPEN_FDS).set(p.open_fds as f64);
    if let Some(max) = p.max_fds {
        gauge!(PROCESS_MAX_FDS).set(max as f64);
    }
    gauge!(PROCESS_THREADS).set(p.threads as f64);
    if let Some(start) = p.start_time_seconds {
        gauge!(PROCESS_START_TIME).set(start);
    }
}
pub fn tokio_runtime(workers: usize, alive_tasks: usize, global_queue: usize, busy: Duration) {
    gauge!(TOKIO_WORKERS).set(workers as f64);
    gauge!(TOKIO_ALIVE_TASKS).set(alive_tasks as f64);
    gauge!(TOKIO_GLOBAL_QUEUE_DEPTH).set(global_queue as f64);
    gauge!(TOKIO_BUSY).set(busy.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `f` records, as Prometheus text, on a recorder of its own.
    fn rendered(f: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(JOB_COMPLETION_LATENCY.into()),
                &JOB_COMPLETION_BUCKETS,
            )
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    #[test]
    fn pending_jobs_get_one_series_per_age_and_the_oldest_age() {
        let text = rendered(|| jobs_pending(&[1, 2, 3, 4, 5], Duration::from_secs(90_000)));
        for (age, n) in [
            ("under_1m", 1),
            ("1m_to_10m", 2),
            ("10m_to_1h", 3),
            ("1h_to_1d", 4),
            ("over_1d", 5),
        ] {
            assert!(
                text.contains(&format!("{JOBS_PENDING}{{age=\"{age}\"}} {n}\n")),
                "{text}"
            );
        }
        assert!(
            text.contains(&format!("{JOBS_OLDEST_PENDING_AGE} 90000\n")),
            "{text}"
        );
    }

    #[test]
    fn job_completions_are_labelled_by_a_known_route_only() {
        let text = rendered(|| {
            job_completed(Some("bridge"), Duration::from_secs(3));
            job_completed(Some("heartbeat"), Duration::from_secs(7200));
            job_completed(Some("carrier pigeon"), Duration::from_secs(1));
            job_completed(None, Duration::from_secs(1));
        });
        let count = |route: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "{JOB_COMPLETION_LATENCY}_count{{route=\"{route}\"}} "
                    ))
                })
                .map(str::to_string)
        };
        assert_eq!(count("bridge").as_deref(), Some("1"));
        assert_eq!(count("heartbeat").as_deref(), Some("1"));
        assert_eq!(count("other").as_deref(), Some("2"));
        // Two hours falls in the 7 200 s bucket, not the default 2.5 s top.
        assert!(
            text.contains(&format!(
                "{JOB_COMPLETION_LATENCY}_bucket{{route=\"heartbeat\",le=\"7200\"}} 1"
            )),
            "{text}"
        );
    }

    #[test]
    fn bridge_connectivity_changes_say_which_way_and_why() {
        let text = rendered(|| {
            bridge_connectivity_change(false, "last_will");
            bridge_connectivity_change(true, "connected");
        });
        assert!(text.contains(&format!(
            "{BRIDGE_CONNECTIVITY_CHANGES}{{change=\"offline\",cause=\"last_will\"}} 1"
        )));
        assert!(text.contains(&format!(
            "{BRIDGE_CONNECTIVITY_CHANGES}{{change=\"online\",cause=\"connected\"}} 1"
        )));
    }
}
