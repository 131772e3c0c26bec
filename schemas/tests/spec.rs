//! `schemas::spec`, the specs as other crates' tests use them: the gateway
//! validates each message it publishes with
//! `event_schema_for_topic(topic)`, so every topic it can publish JSON on
//! must map to the schema of the type it publishes there, and the CDDL must
//! be usable with a prepended root rule as the module doc says.
//! The specs' contents are checked in `cddl.rs`, `json_schema.rs`,
//! `asyncapi.rs` and `examples.rs`.

mod common;

use schemas::event::DeviceError;
use schemas::spec::{
    event_schema_for_topic, ASYNCAPI_YAML, COMMAND_REQUEST_SCHEMA, DEVICE_CDDL, EVENT_SCHEMAS,
};
use schemas::topic::{down, events, DeviceTopic};
use schemas::twofa::{self, OtpNotification, TwoFactorEvent, TwoFactorOutcome};
use serde_json::Value;

fn title(schema: &str) -> String {
    let v: Value = serde_json::from_str(schema).expect("schema is JSON");
    v["title"].as_str().expect("schema has a title").to_string()
}

#[test]
fn every_json_topic_maps_to_the_schema_of_what_is_published_there() {
    let lock_base = DeviceTopic::LockLog { lock: "L1" }.reply_base();
    let bridge_base = DeviceTopic::BridgeLog { bridge: "B1" }.reply_base();
    let cases = [
        (events::heartbeat("acme", "L1"), "HeartbeatEvent"),
        (events::activity("acme", "L1"), "ActivityEventBatch"),
        (events::state("acme", "L1"), "StateChangedEvent"),
        (events::battery_low("acme", "L1"), "BatteryLowEvent"),
        (events::overdue("acme", "L1"), "LockOverdueEvent"),
        (
            events::bridge_connectivity("acme", "B1"),
            "BridgeConnectivityEvent",
        ),
        (down::error(&lock_base), "DeviceError"),
        (down::error(&bridge_base), "DeviceError"),
        (schemas::command::job_event_topic("acme", "L1"), "JobEvent"),
        (
            schemas::command::default_reply_topic("acme"),
            "CommandResponse",
        ),
        ("rsp/v1/acme/dash-1".to_string(), "CommandResponse"),
        (twofa::lock_event_topic("acme", "L1"), "TwoFactorEvent"),
        (twofa::user_event_topic("acme", "u-1"), "TwoFactorEvent"),
        (twofa::sms_topic("acme"), "OtpNotification"),
    ];
    for (topic, want) in cases {
        let schema = event_schema_for_topic(&topic).unwrap_or_else(|| panic!("{topic}: none"));
        assert_eq!(title(schema), want, "{topic}");
    }
}

#[test]
fn cbor_topics_have_no_json_schema() {
    for topic in [
        down::lock_heartbeat_ack("L1"),
        down::lock_log_ack("L1"),
        down::bridge_heartbeat_ack("B1", "L1"),
        down::bridge_log_ack("B1", "L1"),
        down::bridge_status("B1"),
        "lk/L1/up/hb".to_string(),
        "br/B1/up/log".to_string(),
        // 2FA entries travel over CoAP only; there is no MQTT topic for them.
        "lk/L1/up/2fa".to_string(),
        "lk/L1/up/otp".to_string(),
    ] {
        assert_eq!(event_schema_for_topic(&topic), None, "{topic}");
    }
}

#[test]
fn a_published_message_validates_as_the_gateway_will_check_it() {
    let topic = down::error("lk/L1");
    let message = serde_json::to_value(DeviceError {
        topic: "lk/L1/up/hb".into(),
        reason: "bad_id".into(),
        message: "lock_id must be 1 to 64 characters of A-Z a-z 0-9 - _ .".into(),
    })
    .unwrap();
    let schema: Value = serde_json::from_str(event_schema_for_topic(&topic).unwrap()).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    assert!(validator.is_valid(&message));
}

fn validates_on(topic: &str, message: &Value) -> bool {
    let schema = event_schema_for_topic(topic).unwrap_or_else(|| panic!("{topic}: no schema"));
    let schema: Value = serde_json::from_str(schema).unwrap();
    jsonschema::draft202012::new(&schema)
        .unwrap()
        .is_valid(message)
}

#[test]
fn published_2fa_messages_validate_as_the_gateway_will_check_them() {
    let event = TwoFactorEvent {
        event_id: "2fa:17".into(),
        org: "acme".into(),
        outcome: TwoFactorOutcome::LockoutStarted,
        reason: Some("failed_challenges".into()),
        lock_id: None,
        user_id: Some("u-1".into()),
        department: None,
        grant_id: None,
        challenge_id: None,
        tries_left: None,
        lockout_until_ms: Some(1_790_001_800_000),
        at_ms: 1_790_000_900_000,
    };
    let json = serde_json::to_value(&event).unwrap();
    assert!(validates_on(&twofa::user_event_topic("acme", "u-1"), &json));
    assert!(validates_on(&twofa::lock_event_topic("acme", "L1"), &json));
    let notification = OtpNotification {
        notification_id: "90210".into(),
        org: "acme".into(),
        user_id: "u-1".into(),
        lock_id: "L1".into(),
        mobile: "+6591234567".into(),
        otp: "042917".into(),
        message: "Your code is 042917".into(),
        expires_at_ms: 1_790_000_400_000,
    };
    let json = serde_json::to_value(&notification).unwrap();
    assert!(validates_on(&twofa::sms_topic("acme"), &json));
    // Not an event: the notification does not pass as one, nor the reverse.
    assert!(!validates_on(&twofa::lock_event_topic("acme", "L1"), &json));
}

#[test]
fn the_cddl_takes_a_prepended_root_rule() {
    let text = format!("root = log-ack\n{DEVICE_CDDL}");
    let ack = schemas::device::encode(&schemas::LogAck {
        server_time: 1,
        stored: 2,
        seq: 3,
    });
    cddl::validate_cbor_from_slice(&text, &ack, None).expect("a log-ack is a log-ack");
    let root_is_any_payload = cddl::validate_cbor_from_slice(DEVICE_CDDL, &ack, None);
    assert!(root_is_any_payload.is_ok(), "{root_is_any_payload:?}");
}

#[test]
fn the_compiled_in_specs_are_the_files() {
    let dir = common::spec_dir();
    assert_eq!(common::read(&dir.join("device.cddl")), DEVICE_CDDL);
    assert_eq!(common::read(&dir.join("asyncapi.yaml")), ASYNCAPI_YAML);
    for (file, text) in EVENT_SCHEMAS {
        assert_eq!(common::read(&dir.join(file)), text, "{file}");
    }
    assert_eq!(
        common::read(&dir.join("commands/command-request.schema.json")),
        COMMAND_REQUEST_SCHEMA
    );
}
