//! `spec/events/*.schema.json` against the Rust event types, validated with
//! the `jsonschema` crate (draft 2020-12, local `#/$defs` refs only):
//!
//! * every schema is strict (`additionalProperties: false`, every property
//!   required) and the `$defs` shared between schemas are identical;
//! * every schema's `examples` validate, deserialise into the Rust type and
//!   serialise back unchanged;
//! * hand-built and proptest-made Rust values serialise to JSON that
//!   validates; enum spellings in the schemas are exactly serde's;
//! * values serde would accept but the guides forbid are refused.

mod common;

use common::{arb, read, spec_dir};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use schemas::event::{
    ActivityEventBatch, BatteryLowEvent, BridgeConnectivityEvent, DeviceError, HeartbeatEvent,
    StateChangedEvent,
};
use schemas::spec::EVENT_SCHEMAS;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Cases per property test.
const PROPTEST_CASES: u32 = 256;

fn schema_json(file: &str) -> Value {
    let (_, text) = EVENT_SCHEMAS
        .iter()
        .find(|(f, _)| f.ends_with(file))
        .unwrap_or_else(|| panic!("no schema {file} in EVENT_SCHEMAS"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}: not JSON: {e}"))
}

fn validator(file: &str) -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema_json(file))
        .unwrap_or_else(|e| panic!("{file}: not a valid draft 2020-12 schema: {e}"))
}

/// Every error the schema reports for `instance`, one per line.
fn errors(v: &jsonschema::Validator, instance: &Value) -> String {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value) {
    let errs = errors(v, instance);
    assert!(errs.is_empty(), "{instance}\n{errs}");
}

/// Which schema file describes which Rust type.
struct Case {
    file: &'static str,
    title: &'static str,
    /// Deserialises a JSON value into the Rust type and serialises it again.
    roundtrip: fn(&Value) -> Result<Value, String>,
}

fn roundtrip<T: Serialize + DeserializeOwned>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

const CASES: [Case; 9] = [
    Case {
        file: "heartbeat.schema.json",
        title: "HeartbeatEvent",
        roundtrip: roundtrip::<HeartbeatEvent>,
    },
    Case {
        file: "activity.schema.json",
        title: "ActivityEventBatch",
        roundtrip: roundtrip::<ActivityEventBatch>,
    },
    Case {
        file: "state.schema.json",
        title: "StateChangedEvent",
        roundtrip: roundtrip::<StateChangedEvent>,
    },
    Case {
        file: "battery-low.schema.json",
        title: "BatteryLowEvent",
        roundtrip: roundtrip::<BatteryLowEvent>,
    },
    Case {
        file: "connectivity.schema.json",
        title: "BridgeConnectivityEvent",
        roundtrip: roundtrip::<BridgeConnectivityEvent>,
    },
    Case {
        file: "device-error.schema.json",
        title: "DeviceError",
        roundtrip: roundtrip::<DeviceError>,
    },
    Case {
        file: "overdue.schema.json",
        title: "LockOverdueEvent",
        roundtrip: roundtrip::<schemas::event::LockOverdueEvent>,
    },
    Case {
        file: "job.schema.json",
        title: "JobEvent",
        roundtrip: roundtrip::<schemas::command::JobEvent>,
    },
    Case {
        file: "command-response.schema.json",
        title: "CommandResponse",
        roundtrip: roundtrip::<schemas::command::CommandResponse>,
    },
];

/// The command request: optional members may be left out, so it is not
/// strict like the published schemas; its examples validate and read as
/// `CommandRequest`, and requests the server refuses are refused by the
/// schema too.
#[test]
fn command_request_schema_matches_what_the_server_reads() {
    let text = schemas::spec::COMMAND_REQUEST_SCHEMA;
    let schema: Value = serde_json::from_str(text).unwrap();
    let v = jsonschema::draft202012::new(&schema).unwrap();
    let examples = schema["examples"].as_array().unwrap();
    assert!(examples.len() >= 2);
    for ex in examples {
        assert_valid(&v, ex);
        serde_json::from_value::<schemas::command::CommandRequest>(ex.clone())
            .unwrap_or_else(|e| panic!("example does not read: {e}\n{ex}"));
    }
    let mut bad = examples[0].clone();
    bad["command"]["force"] = true.into();
    assert!(!v.is_valid(&bad));
    assert!(serde_json::from_value::<schemas::command::CommandRequest>(bad).is_err());
    let mut bad = examples[0].clone();
    bad["command"]["type"] = "open_sesame".into();
    assert!(!v.is_valid(&bad));
    assert!(serde_json::from_value::<schemas::command::CommandRequest>(bad).is_err());
}

// ---------------------------------------------------------------------------
// The schema files themselves
// ---------------------------------------------------------------------------

#[test]
fn every_schema_file_is_listed_and_every_listed_file_exists() {
    let mut on_disk: Vec<String> = common::files_with_ext(&spec_dir().join("events"), "json")
        .iter()
        .map(|p| format!("events/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = EVENT_SCHEMAS.iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    for (file, text) in EVENT_SCHEMAS {
        assert_eq!(read(&spec_dir().join(file)), text, "{file}");
    }
    for (file, _) in EVENT_SCHEMAS {
        assert!(
            CASES.iter().any(|c| file.ends_with(c.file)),
            "{file} has no Rust type in CASES"
        );
    }
}

#[test]
fn every_schema_compiles_as_draft_2020_12_with_its_title() {
    for case in &CASES {
        let s = schema_json(case.file);
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{}",
            case.file
        );
        assert_eq!(s["title"], case.title, "{}", case.file);
        validator(case.file);
    }
}

/// Walks every subschema with `properties` and checks it is closed and
/// requires every property (serde writes every field, `None` as null).
fn assert_strict(file: &str, path: &str, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                // Subschemas under allOf/anyOf/if/then/else only add
                // constraints to a closed schema; they need not close.
                let constraining = ["/allOf", "/anyOf", "/if", "/then", "/else"]
                    .iter()
                    .any(|k| path.contains(k));
                if !constraining {
                    assert_eq!(
                        m.get("additionalProperties"),
                        Some(&Value::Bool(false)),
                        "{file}{path}: not closed"
                    );
                    let required: Vec<&str> = m["required"]
                        .as_array()
                        .unwrap_or_else(|| panic!("{file}{path}: no required"))
                        .iter()
                        .map(|r| r.as_str().unwrap())
                        .collect();
                    let mut want: Vec<&str> = props.keys().map(String::as_str).collect();
                    let mut got = required.clone();
                    want.sort();
                    got.sort();
                    assert_eq!(got, want, "{file}{path}: required differs from properties");
                }
            }
            for (k, x) in m {
                if k != "examples" {
                    assert_strict(file, &format!("{path}/{k}"), x);
                }
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                assert_strict(file, &format!("{path}/{i}"), x);
            }
        }
        _ => {}
    }
}

#[test]
fn every_object_schema_is_closed_and_requires_every_field() {
    for case in &CASES {
        assert_strict(case.file, "", &schema_json(case.file));
    }
}

#[test]
fn shared_defs_are_identical_in_every_schema() {
    let mut seen: BTreeMap<String, (&str, Value)> = BTreeMap::new();
    for case in &CASES {
        let s = schema_json(case.file);
        let Some(Value::Object(defs)) = s.get("$defs") else {
            continue;
        };
        for (name, def) in defs {
            match seen.get(name) {
                Some((first, d)) => assert_eq!(
                    d, def,
                    "$defs/{name} differs between {first} and {}",
                    case.file
                ),
                None => {
                    seen.insert(name.clone(), (case.file, def.clone()));
                }
            }
        }
    }
    assert!(seen.contains_key("battery") && seen.contains_key("id"));
}

#[test]
fn every_example_validates_and_roundtrips_through_the_rust_type() {
    for case in &CASES {
        let s = schema_json(case.file);
        let v = validator(case.file);
        let examples = s["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no examples", case.file));
        assert!(examples.len() >= 2, "{}: want two examples", case.file);
        for ex in examples {
            assert_valid(&v, ex);
            let again = (case.roundtrip)(ex).unwrap_or_else(|e| {
                panic!("{}: example does not deserialise: {e}\n{ex}", case.file)
            });
            assert_eq!(&again, ex, "{}: example changes through Rust", case.file);
        }
    }
}

// ---------------------------------------------------------------------------
// Enum spellings: exactly serde's
// ---------------------------------------------------------------------------

fn serde_names<T: Serialize>(all: &[T]) -> Vec<Value> {
    all.iter()
        .map(|x| serde_json::to_value(x).unwrap())
        .collect()
}

#[test]
fn enum_spellings_are_exactly_serdes() {
    let hb = schema_json("heartbeat.schema.json");
    let act = schema_json("activity.schema.json");
    let conn = schema_json("connectivity.schema.json");
    let defs = &hb["$defs"];
    let levels: Vec<Value> = arb::ALL_LEVELS
        .iter()
        .map(|l| serde_json::to_value(schemas::Battery::Level(*l)).unwrap()["level"].clone())
        .collect();
    let checks: [(&str, &Value, Vec<Value>); 8] = [
        (
            "lock_model",
            &defs["lock_model"]["enum"],
            serde_names(arb::ALL_MODELS),
        ),
        (
            "transport",
            &defs["transport"]["enum"],
            serde_names(arb::ALL_TRANSPORTS),
        ),
        (
            "signal_quality",
            &defs["signal_quality"]["enum"],
            serde_names(arb::ALL_QUALITIES),
        ),
        (
            "lock_state",
            &defs["lock_state"]["enum"],
            serde_names(arb::ALL_LOCK_STATES),
        ),
        (
            "door_state",
            &defs["door_state"]["enum"],
            serde_names(arb::ALL_DOOR_STATES),
        ),
        (
            "activity_kind",
            &act["$defs"]["activity_kind"]["enum"],
            serde_names(arb::ALL_KINDS),
        ),
        (
            "cause",
            &conn["properties"]["cause"]["enum"],
            serde_names(arb::ALL_CAUSES),
        ),
        (
            "battery level",
            &defs["battery"]["oneOf"][1]["properties"]["level"]["enum"],
            levels,
        ),
    ];
    for (what, schema_enum, serde) in checks {
        assert_eq!(schema_enum, &Value::Array(serde), "{what}");
    }
}

#[test]
fn activity_kinds_serialise_as_their_stable_names() {
    // The stored label (`as_str`) and the JSON spelling must be one name.
    for k in arb::ALL_KINDS {
        assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()), "{k:?}");
    }
}

#[test]
fn lock_models_serialise_as_the_dashboard_spells_them() {
    for m in arb::ALL_MODELS {
        assert_eq!(serde_json::to_value(m).unwrap(), json!(m.as_str()), "{m:?}");
    }
}

#[test]
fn interval_enums_are_exactly_the_allowed_intervals() {
    let defs = &schema_json("heartbeat.schema.json")["$defs"];
    let hours: Vec<Value> = HOURS.iter().map(|h| json!(h)).collect();
    assert_eq!(defs["heartbeat_interval_h"]["enum"], Value::Array(hours));
    let minutes: Vec<Value> = (0..=1500u16)
        .filter(|m| schemas::ActivityLogInterval::from_minutes(*m).is_ok())
        .map(|m| json!(m))
        .collect();
    assert_eq!(
        defs["activity_log_interval_min"]["enum"],
        Value::Array(minutes)
    );
}

const HOURS: [u8; 5] = schemas::HeartbeatInterval::ALLOWED_HOURS;

// ---------------------------------------------------------------------------
// Rust values validate
// ---------------------------------------------------------------------------

fn run<T: std::fmt::Debug + Serialize>(
    file: &str,
    strategy: impl proptest::strategy::Strategy<Value = T>,
) {
    let v = validator(file);
    let mut runner = TestRunner::new(Config::with_cases(PROPTEST_CASES));
    let result = runner.run(&strategy, |event| {
        let json = serde_json::to_value(&event).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let errs = errors(&v, &json);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!("{json}\n{errs}")))
        }
    });
    if let Err(e) = result {
        panic!("{file}: {e}");
    }
}

#[test]
fn arbitrary_heartbeat_events_validate() {
    run("heartbeat.schema.json", arb::heartbeat_event());
}

#[test]
fn arbitrary_activity_events_validate() {
    run("activity.schema.json", arb::activity_event_batch());
}

#[test]
fn arbitrary_state_events_validate() {
    run("state.schema.json", arb::state_changed_event());
}

#[test]
fn arbitrary_battery_low_events_validate() {
    run("battery-low.schema.json", arb::battery_low_event());
}

#[test]
fn arbitrary_connectivity_events_validate() {
    run("connectivity.schema.json", arb::connectivity_event());
}

#[test]
fn arbitrary_device_errors_validate() {
    run("device-error.schema.json", arb::device_error());
}

#[test]
fn device_errors_for_every_decode_error_validate() {
    let v = validator("device-error.schema.json");
    use schemas::device::DecodeError;
    let errs = [
        DecodeError::Empty,
        DecodeError::TooLarge {
            len: 3000,
            max: 2048,
        },
        DecodeError::Cbor {
            what: "heartbeat",
            detail: "unexpected type".into(),
        },
        DecodeError::TrailingBytes { extra: 1 },
        DecodeError::BadLockId,
        DecodeError::TooManyEvents { count: 65, max: 64 },
    ];
    for e in errs {
        let de = DeviceError {
            topic: "lk/L1/up/hb".into(),
            reason: e.reason().into(),
            message: e.to_string(),
        };
        assert_valid(&v, &serde_json::to_value(&de).unwrap());
    }
}

// ---------------------------------------------------------------------------
// What serde accepts but the guides forbid is refused
// ---------------------------------------------------------------------------

fn heartbeat_example() -> Value {
    schema_json("heartbeat.schema.json")["examples"][0].clone()
}

#[test]
fn heartbeat_schema_refuses_what_the_guides_forbid() {
    let v = validator("heartbeat.schema.json");
    assert_valid(&v, &heartbeat_example());
    let bad: Vec<(&str, Value)> = vec![
        ("battery 101", json!({"battery": {"percent": 101}})),
        (
            "battery both",
            json!({"battery": {"percent": 50, "level": "low"}}),
        ),
        (
            "battery level spelled wrong",
            json!({"battery": {"level": "Low"}}),
        ),
        ("heartbeat interval 3 h", json!({"heartbeat_interval_h": 3})),
        (
            "activity interval 90 min",
            json!({"activity_log_interval_min": 90}),
        ),
        ("model lower case", json!({"model": "inb1"})),
        ("lock id with /", json!({"lock_id": "L/1"})),
        (
            "event id of another kind",
            json!({"event_id": "state:L000123:4711"}),
        ),
        (
            "bridge transport without bridge",
            json!({"transport": "bridge"}),
        ),
        ("direct transport with bridge", json!({"bridge_id": "B1"})),
        ("battery_low disagreeing", json!({"battery_low": true})),
        ("seq over u32", json!({"seq": 4_294_967_296u64})),
        ("signal over i16", json!({"signal_db": 32_768})),
        (
            "channel missing band",
            json!({"channel": {"earfcn": 1, "pci": 1, "cell_id": 1}}),
        ),
        ("extra field", json!({"extra": 1})),
    ];
    for (what, patch) in bad {
        let mut ex = heartbeat_example();
        for (k, x) in patch.as_object().unwrap() {
            ex[k] = x.clone();
        }
        assert!(!v.is_valid(&ex), "{what} was accepted");
    }
    for field in ["bridge_id", "channel", "seq"] {
        let mut ex = heartbeat_example();
        ex.as_object_mut().unwrap().remove(field);
        assert!(!v.is_valid(&ex), "missing {field} was accepted");
    }
}

#[test]
fn event_schemas_refuse_inconsistent_events() {
    let state = validator("state.schema.json");
    let mut ex = schema_json("state.schema.json")["examples"][0].clone();
    ex["previous_door_state"] = Value::Null;
    assert!(!state.is_valid(&ex), "half-known previous state accepted");

    let low = validator("battery-low.schema.json");
    let mut ex = schema_json("battery-low.schema.json")["examples"][0].clone();
    ex["battery"] = json!({"percent": 30});
    assert!(!low.is_valid(&ex), "battery-low at 30 % accepted");
    ex["battery"] = json!({"level": "moderate"});
    assert!(!low.is_valid(&ex), "battery-low at level moderate accepted");

    let conn = validator("connectivity.schema.json");
    let mut ex = schema_json("connectivity.schema.json")["examples"][0].clone();
    ex["online"] = json!(false);
    assert!(!conn.is_valid(&ex), "offline after connected accepted");

    let act = validator("activity.schema.json");
    let mut ex = schema_json("activity.schema.json")["examples"][0].clone();
    ex["events"] = json!([]);
    assert!(
        !act.is_valid(&ex),
        "activity event without entries accepted"
    );
    ex["events"] = json!([{"seq": 1, "time": 1, "kind": "unlocked2fa", "actor": null}]);
    assert!(!act.is_valid(&ex), "kind unlocked2fa accepted");

    let err = validator("device-error.schema.json");
    let ex = json!({"topic": "lk/L1/ack/hb", "reason": "malformed", "message": "x"});
    assert!(
        !err.is_valid(&ex),
        "error about a topic devices never publish on accepted"
    );
}
