//! The machine-readable wire specs in `spec/`, compiled in so that other
//! crates' tests can hold what they actually send to them (the gateway's
//! integration tests validate every message it publishes).
//!
//! * [`DEVICE_CDDL`]: CDDL (RFC 8610) of every device payload.
//! * [`ASYNCAPI_YAML`]: AsyncAPI 3.0 document of every MQTT topic.
//! * [`EVENT_SCHEMAS`] and [`event_schema_for_topic`]: JSON Schema (draft
//!   2020-12) of every JSON message the gateway publishes (events, device
//!   errors, command answers, the notifier's OTP messages);
//!   [`COMMAND_REQUEST_SCHEMA`] of the commands it receives.
//!
//! The specs are text only: this crate parses none of them, so it keeps no
//! validator dependency. `tests/` holds them and the Rust types to each other.

use crate::device::valid_id;
use crate::topic::EVENTS_PREFIX;
use crate::twofa::NOTIFY_PREFIX;

/// `spec/device.cddl`: the CBOR device payloads. Its first rule,
/// `device-payload`, accepts any of them; validate against one payload by
/// prepending a root rule (e.g. `"root = heartbeat\n"`).
pub const DEVICE_CDDL: &str = include_str!("../spec/device.cddl");

/// `spec/asyncapi.yaml`: every MQTT topic with direction, QoS and payload,
/// and the CoAP resources in its info description.
pub const ASYNCAPI_YAML: &str = include_str!("../spec/asyncapi.yaml");

/// `events/v1/{org}/lock/{lock}/heartbeat`: [`crate::event::HeartbeatEvent`].
pub const HEARTBEAT_EVENT_SCHEMA: &str = include_str!("../spec/events/heartbeat.schema.json");
/// `events/v1/{org}/lock/{lock}/activity`: [`crate::event::ActivityEventBatch`].
pub const ACTIVITY_EVENT_SCHEMA: &str = include_str!("../spec/events/activity.schema.json");
/// `events/v1/{org}/lock/{lock}/state`: [`crate::event::StateChangedEvent`].
pub const STATE_EVENT_SCHEMA: &str = include_str!("../spec/events/state.schema.json");
/// `events/v1/{org}/lock/{lock}/battery-low`: [`crate::event::BatteryLowEvent`].
pub const BATTERY_LOW_EVENT_SCHEMA: &str = include_str!("../spec/events/battery-low.schema.json");
/// `events/v1/{org}/bridge/{bridge}/connectivity`: [`crate::event::BridgeConnectivityEvent`].
pub const CONNECTIVITY_EVENT_SCHEMA: &str = include_str!("../spec/events/connectivity.schema.json");
/// `lk/{lock}/err`, `br/{bridge}/err`: [`crate::event::DeviceError`].
pub const DEVICE_ERROR_SCHEMA: &str = include_str!("../spec/events/device-error.schema.json");

/// `events/v1/{org}/lock/{lock}/overdue`: [`crate::event::LockOverdueEvent`].
pub const OVERDUE_EVENT_SCHEMA: &str = include_str!("../spec/events/overdue.schema.json");
/// `events/v1/{org}/lock/{lock}/job`: [`crate::command::JobEvent`].
pub const JOB_EVENT_SCHEMA: &str = include_str!("../spec/events/job.schema.json");
/// `events/v1/{org}/lock/{lock}/2fa`, `events/v1/{org}/user/{user}/2fa`:
/// [`crate::twofa::TwoFactorEvent`].
pub const TWOFA_EVENT_SCHEMA: &str = include_str!("../spec/events/2fa.schema.json");
/// `notify/v1/{org}/sms`: [`crate::twofa::OtpNotification`] (carries the OTP).
pub const OTP_NOTIFICATION_SCHEMA: &str =
    include_str!("../spec/notify/otp-notification.schema.json");
/// A command's reply topic (`rsp/v1/...`): [`crate::command::CommandResponse`].
pub const COMMAND_RESPONSE_SCHEMA: &str =
    include_str!("../spec/events/command-response.schema.json");
/// `cmd/v1/{org}` (what the dashboard backend publishes): [`crate::command::CommandRequest`].
pub const COMMAND_REQUEST_SCHEMA: &str =
    include_str!("../spec/commands/command-request.schema.json");

/// Every JSON Schema of what the gateway publishes, with its path relative
/// to `spec/` (as `asyncapi.yaml` refers to it).
pub const EVENT_SCHEMAS: [(&str, &str); 11] = [
    ("events/heartbeat.schema.json", HEARTBEAT_EVENT_SCHEMA),
    ("events/activity.schema.json", ACTIVITY_EVENT_SCHEMA),
    ("events/state.schema.json", STATE_EVENT_SCHEMA),
    ("events/battery-low.schema.json", BATTERY_LOW_EVENT_SCHEMA),
    ("events/connectivity.schema.json", CONNECTIVITY_EVENT_SCHEMA),
    ("events/device-error.schema.json", DEVICE_ERROR_SCHEMA),
    ("events/job.schema.json", JOB_EVENT_SCHEMA),
    ("events/overdue.schema.json", OVERDUE_EVENT_SCHEMA),
    ("events/2fa.schema.json", TWOFA_EVENT_SCHEMA),
    (
        "notify/otp-notification.schema.json",
        OTP_NOTIFICATION_SCHEMA,
    ),
    (
        "events/command-response.schema.json",
        COMMAND_RESPONSE_SCHEMA,
    ),
];

/// The JSON Schema of what the gateway publishes on `topic`: a dashboard
/// event topic (`events/v1/{org}/lock/{lock}/heartbeat`, ...,
/// `events/v1/{org}/user/{user}/2fa`), a device error topic
/// (`lk/{lock}/err`, `br/{bridge}/err`), a command reply topic (`rsp/v1/...`)
/// or the notifier topic (`notify/v1/{org}/sms`). `None` for any other
/// topic, including device topics that carry CBOR and topics whose ids are
/// not valid (see [`valid_id`]).
pub fn event_schema_for_topic(topic: &str) -> Option<&'static str> {
    let parts: Vec<&str> = topic.split('/').collect();
    if let ["lk" | "br", id, "err"] = parts.as_slice() {
        return valid_id(id).then_some(DEVICE_ERROR_SCHEMA);
    }
    if let Some(rest) = topic.strip_prefix(crate::command::REPLIES_PREFIX) {
        let ok = !rest.is_empty() && !rest.contains(['+', '#']);
        return ok.then_some(COMMAND_RESPONSE_SCHEMA);
    }
    if let Some(rest) = topic.strip_prefix(NOTIFY_PREFIX) {
        // valid_id refuses '/', so this is exactly one org level.
        let org = rest.strip_prefix('/')?.strip_suffix("/sms")?;
        return valid_id(org).then_some(OTP_NOTIFICATION_SCHEMA);
    }
    let rest = topic.strip_prefix(EVENTS_PREFIX)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (org, id, schema) = match parts.as_slice() {
        [org, "lock", lock, kind] => {
            let schema = match *kind {
                "heartbeat" => HEARTBEAT_EVENT_SCHEMA,
                "activity" => ACTIVITY_EVENT_SCHEMA,
                "state" => STATE_EVENT_SCHEMA,
                "battery-low" => BATTERY_LOW_EVENT_SCHEMA,
                "job" => JOB_EVENT_SCHEMA,
                "overdue" => OVERDUE_EVENT_SCHEMA,
                "2fa" => TWOFA_EVENT_SCHEMA,
                _ => return None,
            };
            (*org, *lock, schema)
        }
        [org, "user", user, "2fa"] => (*org, *user, TWOFA_EVENT_SCHEMA),
        [org, "bridge", bridge, "connectivity"] => (*org, *bridge, CONNECTIVITY_EVENT_SCHEMA),
        _ => return None,
    };
    (valid_id(org) && valid_id(id)).then_some(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_event_and_error_topics() {
        assert_eq!(
            event_schema_for_topic("events/v1/acme/lock/L1/battery-low"),
            Some(BATTERY_LOW_EVENT_SCHEMA)
        );
        assert_eq!(
            event_schema_for_topic("events/v1/acme/bridge/B1/connectivity"),
            Some(CONNECTIVITY_EVENT_SCHEMA)
        );
        assert_eq!(
            event_schema_for_topic("br/B1/err"),
            Some(DEVICE_ERROR_SCHEMA)
        );
    }

    #[test]
    fn maps_2fa_and_notifier_topics() {
        assert_eq!(
            event_schema_for_topic("events/v1/acme/lock/L1/2fa"),
            Some(TWOFA_EVENT_SCHEMA)
        );
        assert_eq!(
            event_schema_for_topic("events/v1/acme/user/u-1/2fa"),
            Some(TWOFA_EVENT_SCHEMA)
        );
        assert_eq!(
            event_schema_for_topic("notify/v1/acme/sms"),
            Some(OTP_NOTIFICATION_SCHEMA)
        );
    }

    #[test]
    fn refuses_cbor_unknown_and_bad_id_topics() {
        for t in [
            "lk/L1/up/hb",
            "lk/L1/ack/hb",
            "br/B1/status",
            "events/v1/acme/lock/L1/unknown",
            "events/v1/acme/lock/L1",
            "events/v1/acme/lock/L 1/state",
            "events/v1//lock/L1/state",
            "events/v2/acme/lock/L1/state",
            "events/v1/acme/bridge/B1/heartbeat",
            "events/v1/acme/user/u1/heartbeat",
            "events/v1/acme/user/u 1/2fa",
            "events/v1/acme/bridge/B1/2fa",
            "notify/v1/acme/email",
            "notify/v1/acme/sms/x",
            "notify/v1/+/sms",
            "notify/v1//sms",
            "notify/v1acme/sms",
            "notify/v2/acme/sms",
            "lk/+/err",
            "xx/L1/err",
            "",
        ] {
            assert_eq!(event_schema_for_topic(t), None, "{t}");
        }
    }
}
