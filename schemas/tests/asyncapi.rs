//! `spec/asyncapi.yaml` against `src/topic.rs`, `src/twofa.rs` and the other
//! specs:
//!
//! * every topic the Rust code builds or parses matches exactly one channel
//!   address, and every channel address is built or parsed by the code;
//! * the CoAP-only payloads (2FA) are messages of no channel, each named in
//!   the CoAP table of the info description; the OTP's topic is outside
//!   every subscription but the dashboard backend's own;
//! * `receive` operations are exactly the channels the gateway subscribes to
//!   (`DEVICE_FILTERS`), `send` operations the ones it publishes;
//! * every operation is QoS 1; every `$ref` resolves (JSON pointers inside
//!   the document, event schema files on disk); every CBOR message names a
//!   CDDL rule that exists; every JSON channel's schema is the one
//!   `spec::event_schema_for_topic` returns for it.

mod common;

use common::spec_dir;
use schemas::spec::{event_schema_for_topic, ASYNCAPI_YAML, DEVICE_CDDL, EVENT_SCHEMAS};
use schemas::topic::{self, down, events, DeviceTopic};
use schemas::twofa;
use serde_json::Value;
use std::collections::BTreeSet;

const LOCK: &str = "L000123";
const BRIDGE: &str = "B000007";
const ORG: &str = "acme";
const USER: &str = "u-4711";

fn doc() -> Value {
    serde_norway::from_str(ASYNCAPI_YAML).expect("asyncapi.yaml is YAML")
}

fn channels(doc: &Value) -> Vec<(String, Value)> {
    doc["channels"]
        .as_object()
        .expect("channels")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The address with every `{param}` replaced by a sample id.
fn instantiate(address: &str) -> String {
    address
        .replace("{lock}", LOCK)
        .replace("{bridge}", BRIDGE)
        .replace("{org}", ORG)
        .replace("{user}", USER)
}

/// True when `topic` matches `address`, a `{param}` standing for one
/// non-empty topic level.
fn matches(address: &str, topic: &str) -> bool {
    let a: Vec<&str> = address.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    a.len() == t.len()
        && a.iter()
            .zip(&t)
            .all(|(a, t)| (a.starts_with('{') && a.ends_with('}') && !t.is_empty()) || a == t)
}

/// MQTT topic filter matching (MQTT 3.1.1 §4.7): `+` one level, `#` the rest.
fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// Every topic the code produces, with the ids above, and whether the
/// gateway receives (parses) or sends (builds) it.
fn code_topics() -> Vec<(String, &'static str)> {
    let lock_base = DeviceTopic::LockHeartbeat { lock: LOCK }.reply_base();
    let bridge_base = DeviceTopic::BridgeStatus { bridge: BRIDGE }.reply_base();
    let mut sent = vec![
        down::lock_heartbeat_ack(LOCK),
        down::lock_log_ack(LOCK),
        down::lock_job_report_ack(LOCK),
        schemas::command::job_event_topic(ORG, LOCK),
        schemas::command::default_reply_topic(ORG),
        down::bridge_heartbeat_ack(BRIDGE, LOCK),
        down::bridge_log_ack(BRIDGE, LOCK),
        down::bridge_job_report_ack(BRIDGE, LOCK),
        down::bridge_command(BRIDGE),
        down::error(&lock_base),
        down::error(&bridge_base),
        events::heartbeat(ORG, LOCK),
        events::activity(ORG, LOCK),
        events::state(ORG, LOCK),
        events::battery_low(ORG, LOCK),
        events::overdue(ORG, LOCK),
        events::bridge_connectivity(ORG, BRIDGE),
        twofa::lock_event_topic(ORG, LOCK),
        twofa::user_event_topic(ORG, USER),
        twofa::sms_topic(ORG),
    ]
    .into_iter()
    .map(|t| (t, "send"))
    .collect::<Vec<_>>();
    // Device topics have no builder: the gateway only parses them. One
    // instance of each variant, named through an exhaustive match so a new
    // variant cannot be forgotten here.
    let received = [
        DeviceTopic::LockHeartbeat { lock: LOCK },
        DeviceTopic::LockLog { lock: LOCK },
        DeviceTopic::LockJobReport { lock: LOCK },
        DeviceTopic::BridgeHeartbeat { bridge: BRIDGE },
        DeviceTopic::BridgeLog { bridge: BRIDGE },
        DeviceTopic::BridgeJobReport { bridge: BRIDGE },
        DeviceTopic::BridgeStatus { bridge: BRIDGE },
    ];
    for t in received {
        let topic = match t {
            DeviceTopic::LockHeartbeat { lock } => format!("lk/{lock}/up/hb"),
            DeviceTopic::LockLog { lock } => format!("lk/{lock}/up/log"),
            DeviceTopic::LockJobReport { lock } => format!("lk/{lock}/up/jr"),
            DeviceTopic::BridgeHeartbeat { bridge } => format!("br/{bridge}/up/hb"),
            DeviceTopic::BridgeLog { bridge } => format!("br/{bridge}/up/log"),
            DeviceTopic::BridgeJobReport { bridge } => format!("br/{bridge}/up/jr"),
            DeviceTopic::BridgeStatus { bridge } => format!("br/{bridge}/status"),
        };
        assert_eq!(DeviceTopic::parse(&topic), Ok(t), "{topic}");
        sent.push((topic, "receive"));
    }
    // Dashboard commands are received on the backend session.
    sent.push((schemas::command::command_topic(ORG), "receive"));
    // The status topic is also built (bridges' Last Will); it is received.
    assert!(sent.iter().any(|(t, _)| *t == down::bridge_status(BRIDGE)));
    sent
}

#[test]
fn the_document_is_asyncapi_3() {
    let d = doc();
    assert_eq!(d["asyncapi"], "3.0.0");
    let info = d["info"]["description"].as_str().expect("info.description");
    for needed in [
        "receive",
        "send",
        "POST /hb",
        "POST /log",
        "POST /jr",
        "POST /2fa",
        "POST /otp",
        "Content-Format 60",
        "2.04",
        "4.00",
        "4.04",
        "4.05",
        "4.13",
    ] {
        assert!(
            info.contains(needed),
            "info.description does not mention {needed}"
        );
    }
}

#[test]
fn every_code_topic_has_exactly_one_channel_and_every_channel_is_used() {
    let chans = channels(&doc());
    let mut used = BTreeSet::new();
    for (topic, _) in code_topics() {
        let hits: Vec<&String> = chans
            .iter()
            .filter(|(_, c)| matches(c["address"].as_str().unwrap(), &topic))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(hits.len(), 1, "{topic} matches channels {hits:?}");
        used.insert(hits[0].clone());
    }
    let all: BTreeSet<String> = chans.iter().map(|(id, _)| id.clone()).collect();
    let unused: Vec<_> = all.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "channels no code builds or parses: {unused:?}"
    );
}

#[test]
fn channel_parameters_are_exactly_the_address_placeholders() {
    for (id, c) in channels(&doc()) {
        let address = c["address"].as_str().unwrap();
        let placeholders: BTreeSet<String> = address
            .split('/')
            .filter_map(|l| l.strip_prefix('{')?.strip_suffix('}').map(String::from))
            .collect();
        let params: BTreeSet<String> = c["parameters"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(placeholders, params, "channel {id}");
        assert!(
            c["description"].is_string(),
            "channel {id} has no description"
        );
    }
}

/// Follows a local `$ref` (`#/a/b`) if `v` is one.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with("#/") => doc
            .pointer(&r[1..])
            .unwrap_or_else(|| panic!("$ref {r} does not resolve")),
        _ => v,
    }
}

#[test]
fn operations_cover_every_channel_once_in_the_right_direction() {
    let d = doc();
    let code = code_topics();
    let mut seen = BTreeSet::new();
    for (id, op) in d["operations"].as_object().expect("operations") {
        let action = op["action"].as_str().unwrap();
        let channel = deref(&d, &op["channel"]);
        let address = channel["address"].as_str().unwrap();
        assert!(
            seen.insert(address.to_string()),
            "two operations on {address}"
        );
        let topic = instantiate(address);
        let (_, direction) = code
            .iter()
            .find(|(t, _)| *t == topic)
            .unwrap_or_else(|| panic!("operation {id}: {topic} is not a code topic"));
        assert_eq!(action, *direction, "operation {id} on {address}");
        let subscribed = topic::DEVICE_FILTERS
            .iter()
            .chain([&schemas::command::COMMANDS_FILTER])
            .any(|f| filter_matches(f, &topic));
        assert_eq!(
            subscribed,
            action == "receive",
            "operation {id}: DEVICE_FILTERS disagree"
        );
        if address.starts_with(topic::EVENTS_PREFIX) {
            assert!(filter_matches(topic::EVENTS_FILTER, &topic));
        }
        if let Some(reply) = op.get("reply") {
            let reply_channel = deref(&d, &reply["channel"]);
            assert_eq!(
                action, "receive",
                "operation {id}: only uplinks are answered"
            );
            let reply_address = reply_channel["address"].as_str().unwrap();
            assert!(
                reply_address.contains("/ack/")
                    || reply_address.starts_with(schemas::command::REPLIES_PREFIX),
                "{reply_address}"
            );
        }
    }
    assert_eq!(seen.len(), channels(&d).len(), "a channel has no operation");
}

#[test]
fn every_operation_is_qos_1() {
    let d = doc();
    for (id, op) in d["operations"].as_object().unwrap() {
        let bindings = deref(&d, &op["bindings"]);
        assert_eq!(bindings["mqtt"]["qos"], 1, "operation {id}");
    }
    assert_eq!(d["channels"]["bridgeStatus"]["x-last-will"]["qos"], 1);
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves() {
    let d = doc();
    let mut refs = Vec::new();
    collect_refs(&d, &mut refs);
    assert!(!refs.is_empty());
    let mut listed: Vec<&str> = EVENT_SCHEMAS.iter().map(|(f, _)| *f).collect();
    listed.push("commands/command-request.schema.json");
    let mut files = BTreeSet::new();
    for r in refs {
        if let Some(pointer) = r.strip_prefix('#') {
            assert!(d.pointer(pointer).is_some(), "$ref {r} does not resolve");
        } else {
            let (file, fragment) = r.split_once('#').unwrap_or((&r, ""));
            assert!(
                fragment.is_empty(),
                "$ref {r}: fragments into files are not used"
            );
            assert!(spec_dir().join(file).is_file(), "$ref {r}: no such file");
            assert!(
                listed.contains(&file),
                "$ref {r}: not in spec::EVENT_SCHEMAS"
            );
            files.insert(file.to_string());
        }
    }
    assert_eq!(
        files.len(),
        EVENT_SCHEMAS.len() + 1,
        "an event schema is not referenced"
    );
}

/// The message objects of a channel, dereferenced.
fn messages<'a>(d: &'a Value, channel: &'a Value) -> Vec<&'a Value> {
    channel["messages"]
        .as_object()
        .expect("channel messages")
        .values()
        .map(|m| deref(d, m))
        .collect()
}

#[test]
fn every_message_has_a_content_type_and_the_matching_spec() {
    let d = doc();
    for (id, c) in channels(&d) {
        let topic = instantiate(c["address"].as_str().unwrap());
        for m in messages(&d, &c) {
            let content_type = m["contentType"]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: no contentType"));
            match content_type {
                "application/cbor" => {
                    let rule = m["x-cddl-rule"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{id}: no x-cddl-rule"));
                    assert!(
                        DEVICE_CDDL
                            .lines()
                            .any(|l| l.starts_with(&format!("{rule} ="))),
                        "{id}: device.cddl has no rule {rule}"
                    );
                    assert!(m["description"].as_str().unwrap().contains(rule), "{id}");
                    assert_eq!(event_schema_for_topic(&topic), None, "{topic}");
                }
                "application/json" if topic.starts_with(schemas::command::COMMANDS_PREFIX) => {
                    let file = m["payload"]["schema"]["$ref"].as_str().unwrap();
                    assert_eq!(file, "commands/command-request.schema.json");
                    assert_eq!(event_schema_for_topic(&topic), None, "{topic}");
                }
                "application/json" => {
                    let file = m["payload"]["schema"]["$ref"].as_str().unwrap();
                    let (_, text) = EVENT_SCHEMAS.iter().find(|(f, _)| *f == file).unwrap();
                    assert_eq!(
                        event_schema_for_topic(&topic),
                        Some(*text),
                        "{topic}: event_schema_for_topic disagrees with asyncapi.yaml"
                    );
                }
                "text/plain" => {
                    assert_eq!(id, "bridgeStatus");
                    let values: Vec<&str> = m["payload"]["enum"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    assert_eq!(values, ["online", "offline", "lost"]);
                    assert_eq!(c["x-last-will"]["payload"], "lost");
                }
                other => panic!("{id}: unexpected content type {other}"),
            }
        }
    }
}

/// The names of every message under `components.messages` that no channel
/// carries.
fn messages_of_no_channel(d: &Value) -> Vec<String> {
    let mut used = Vec::new();
    collect_refs(&d["channels"], &mut used);
    d["components"]["messages"]
        .as_object()
        .expect("components.messages")
        .keys()
        .filter(|name| !used.contains(&format!("#/components/messages/{name}")))
        .cloned()
        .collect()
}

#[test]
fn coap_only_payloads_are_messages_named_in_the_coap_table() {
    let d = doc();
    let info = d["info"]["description"].as_str().unwrap();
    let mut rules = Vec::new();
    for name in messages_of_no_channel(&d) {
        let m = &d["components"]["messages"][&name];
        assert_eq!(
            m["contentType"], "application/cbor",
            "{name}: only CoAP payloads lack a channel"
        );
        let rule = m["x-cddl-rule"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no x-cddl-rule"));
        assert!(
            DEVICE_CDDL
                .lines()
                .any(|l| l.starts_with(&format!("{rule} ="))),
            "{name}: device.cddl has no rule {rule}"
        );
        assert!(
            info.contains(&format!("`{rule}`")),
            "{name}: {rule} is not in the CoAP table"
        );
        rules.push(rule.to_string());
    }
    rules.sort();
    assert_eq!(rules, ["otp-entry", "passcode-entry", "two-factor-answer"]);
}

#[test]
fn every_device_payload_rule_is_named_by_a_message() {
    let d = doc();
    let named: BTreeSet<&str> = d["components"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|m| m["x-cddl-rule"].as_str())
        .collect();
    let root = DEVICE_CDDL
        .lines()
        .skip_while(|l| !l.starts_with("device-payload ="))
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let payloads: BTreeSet<&str> = root
        .trim_start_matches("device-payload =")
        .split('/')
        .map(str::trim)
        .collect();
    for kind in common::PayloadKind::ALL {
        assert!(
            payloads.contains(kind.cddl_rule()),
            "device-payload lacks {kind:?}"
        );
    }
    let missing: Vec<_> = payloads.difference(&named).collect();
    assert!(missing.is_empty(), "payloads no message names: {missing:?}");
}

#[test]
fn otps_stay_out_of_every_subscription_but_the_dashboard_backends() {
    let sms = twofa::sms_topic(ORG);
    assert!(
        !filter_matches(topic::EVENTS_FILTER, &sms),
        "an event subscriber would get OTPs"
    );
    assert!(!filter_matches(
        &format!("{}/{ORG}/#", topic::EVENTS_PREFIX),
        &sms
    ));
    for f in topic::DEVICE_FILTERS
        .iter()
        .chain([&schemas::command::COMMANDS_FILTER])
    {
        assert!(!filter_matches(f, &sms), "{f} matches {sms}");
    }
    // The 2FA events are ordinary events: the events subscription gets them.
    for t in [
        twofa::lock_event_topic(ORG, LOCK),
        twofa::user_event_topic(ORG, USER),
    ] {
        assert!(filter_matches(topic::EVENTS_FILTER, &t), "{t}");
    }
    let d = doc();
    let description = d["channels"]["otpNotification"]["description"]
        .as_str()
        .unwrap();
    assert!(description.contains("dashboard backend") && description.contains("OTP"));
}
