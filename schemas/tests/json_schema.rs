//! `spec/events/*.schema.json` and `spec/notify/*.schema.json` against the
//! Rust types, validated with the `jsonschema` crate (draft 2020-12, local
//! `#/$defs` refs only); `spec/commands/command-request.schema.json` against
//! what the server reads:
//!
//! * every published schema is strict (`additionalProperties: false`, every
//!   property required) and the `$defs` shared between schemas are identical;
//! * every schema's `examples` validate, deserialise into the Rust type and
//!   serialise back unchanged;
//! * hand-built and proptest-made Rust values (every command, every 2FA
//!   answer and event) serialise to JSON that validates; enum spellings in
//!   the schemas are exactly serde's;
//! * values serde would accept but the guides forbid are refused.

mod common;

use common::{arb, read, spec_dir};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use schemas::command::{CommandRequest, CommandResponse};
use schemas::event::{
    ActivityEventBatch, BatteryLowEvent, BridgeConnectivityEvent, DeviceError, HeartbeatEvent,
    StateChangedEvent,
};
use schemas::spec::{COMMAND_REQUEST_SCHEMA, EVENT_SCHEMAS};
use schemas::twofa::{OtpNotification, TwoFactorEvent};
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

const CASES: [Case; 11] = [
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
    Case {
        file: "2fa.schema.json",
        title: "TwoFactorEvent",
        roundtrip: roundtrip::<TwoFactorEvent>,
    },
    Case {
        file: "otp-notification.schema.json",
        title: "OtpNotification",
        roundtrip: roundtrip::<OtpNotification>,
    },
];

fn request_schema() -> Value {
    serde_json::from_str(COMMAND_REQUEST_SCHEMA).expect("command-request.schema.json is JSON")
}

fn request_validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&request_schema()).expect("a draft 2020-12 schema")
}

/// The command request: optional members may be left out, so it is not
/// strict like the published schemas; its examples validate and read as
/// `CommandRequest`, and requests the server refuses are refused by the
/// schema too.
#[test]
fn command_request_schema_matches_what_the_server_reads() {
    let schema = request_schema();
    let v = request_validator();
    let examples = schema["examples"].as_array().unwrap();
    assert!(examples.len() >= 2);
    for ex in examples {
        assert_valid(&v, ex);
        serde_json::from_value::<CommandRequest>(ex.clone())
            .unwrap_or_else(|e| panic!("example does not read: {e}\n{ex}"));
    }
    let mut bad = examples[0].clone();
    bad["command"]["force"] = true.into();
    assert!(!v.is_valid(&bad));
    assert!(serde_json::from_value::<CommandRequest>(bad).is_err());
    let mut bad = examples[0].clone();
    bad["command"]["type"] = "open_sesame".into();
    assert!(!v.is_valid(&bad));
    assert!(serde_json::from_value::<CommandRequest>(bad).is_err());
    let bad = json!({"correlation_id": "c", "idempotency_key": "k", "requested_by": "x",
        "command": {"type": "list_2fa_lockouts", "lock_id": "L1"}});
    assert!(!v.is_valid(&bad));
    assert!(serde_json::from_value::<CommandRequest>(bad).is_err());
}

/// The `type` of every command the request schema lists.
fn request_schema_types() -> Vec<String> {
    request_schema()["properties"]["command"]["oneOf"]
        .as_array()
        .expect("command.oneOf")
        .iter()
        .map(|c| {
            c["properties"]["type"]["const"]
                .as_str()
                .expect("each command has a const type")
                .to_string()
        })
        .collect()
}

#[test]
fn the_request_schema_lists_exactly_the_commands_rust_reads() {
    let mut spec = request_schema_types();
    let mut rust: Vec<&str> = arb::COMMAND_TYPES.to_vec();
    let mut generated: Vec<&str> = arb::commands().iter().map(|(kind, _)| *kind).collect();
    spec.sort();
    rust.sort();
    generated.sort();
    assert_eq!(spec, rust, "request schema vs Command");
    assert_eq!(generated, rust, "arb::commands() vs Command");
}

/// Cases per command (there are 25 of them, so a quarter of the usual).
const CASES_PER_COMMAND: u32 = PROPTEST_CASES / 4;

#[test]
fn arbitrary_commands_of_every_kind_validate_and_read_back() {
    let v = request_validator();
    for (kind, strategy) in arb::commands() {
        let mut runner = TestRunner::new(Config::with_cases(CASES_PER_COMMAND));
        let result = runner.run(&arb::command_request(strategy), |request| {
            let json =
                serde_json::to_value(&request).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // The strategy's name, the serde tag and the metrics label are
            // one name.
            proptest::prop_assert_eq!(
                arb::COMMAND_TYPES[arb::command_index(&request.command)],
                kind
            );
            proptest::prop_assert_eq!(&json["command"]["type"], &json!(kind));
            proptest::prop_assert_eq!(request.command.kind(), kind);
            let errs = errors(&v, &json);
            if !errs.is_empty() {
                return Err(TestCaseError::fail(format!("{json}\n{errs}")));
            }
            let again: CommandRequest = serde_json::from_value(json.clone())
                .map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
            proptest::prop_assert_eq!(again, request);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{kind}: {e}");
        }
    }
}

/// A minimal request carrying `command`.
fn request_with(command: Value) -> Value {
    json!({"correlation_id": "c-1", "idempotency_key": "k-1", "requested_by": "Mark Tan",
        "command": command})
}

#[test]
fn request_schema_refuses_2fa_commands_the_server_refuses() {
    let v = request_validator();
    let ok = [
        json!({"type": "set_user_mobile", "user_id": "u1", "mobile": "+6591234567"}),
        json!({"type": "grant_2fa", "lock_id": "L1", "user_id": "u1",
            "start": "2026-12-01T08:00", "end": "2026-12-31T23:59:59"}),
        json!({"type": "clear_2fa_lockout", "lock_id": "L1"}),
        json!({"type": "clear_2fa_lockout", "lock_id": "L1", "user_id": null}),
        json!({"type": "list_2fa_grants"}),
        json!({"type": "list_2fa_lockouts"}),
    ];
    for command in ok {
        let request = request_with(command.clone());
        assert_valid(&v, &request);
        serde_json::from_value::<CommandRequest>(request)
            .unwrap_or_else(|e| panic!("{command}: {e}"));
    }
    // Serde reads these, so the command's rules must refuse them; the
    // schema refuses them up front.
    let refused = [
        (
            "mobile without +",
            json!({"type": "set_user_mobile", "user_id": "u1", "mobile": "6591234567"}),
        ),
        (
            "mobile starting 0",
            json!({"type": "verify_user_mobile", "user_id": "u1", "mobile": "+0591234567"}),
        ),
        (
            "mobile too short",
            json!({"type": "set_user_mobile", "user_id": "u1", "mobile": "+6591234"}),
        ),
        (
            "mobile with space",
            json!({"type": "set_user_mobile", "user_id": "u1", "mobile": "+65 91234567"}),
        ),
        (
            "user id with /",
            json!({"type": "get_2fa_user", "user_id": "u/1"}),
        ),
        (
            "empty user id",
            json!({"type": "deactivate_user", "user_id": ""}),
        ),
        (
            "start with space",
            json!({"type": "grant_2fa", "lock_id": "L1", "user_id": "u1",
            "start": "2026-12-01 08:00", "end": "2026-12-31T18:00"}),
        ),
        (
            "start with offset",
            json!({"type": "grant_2fa", "lock_id": "L1", "user_id": "u1",
            "start": "2026-12-01T08:00Z", "end": "2026-12-31T18:00"}),
        ),
        (
            "month 13",
            json!({"type": "edit_2fa_grant", "grant_id": 1, "end": "2026-13-01T08:00"}),
        ),
        (
            "hour 24",
            json!({"type": "edit_2fa_grant", "grant_id": 1, "end": "2026-12-01T24:00"}),
        ),
        (
            "grant id 0",
            json!({"type": "revoke_2fa_grant", "grant_id": 0}),
        ),
        (
            "limit 101",
            json!({"type": "list_2fa_grants", "limit": 101}),
        ),
        ("limit 0", json!({"type": "list_2fa_grants", "limit": 0})),
        (
            "clear both",
            json!({"type": "clear_2fa_lockout", "lock_id": "L1", "user_id": "u1"}),
        ),
        ("clear neither", json!({"type": "clear_2fa_lockout"})),
        (
            "clear nulls",
            json!({"type": "clear_2fa_lockout", "lock_id": null, "user_id": null}),
        ),
    ];
    for (what, command) in refused {
        let request = request_with(command.clone());
        assert!(!v.is_valid(&request), "{what} was accepted: {command}");
        assert!(
            serde_json::from_value::<CommandRequest>(request).is_ok(),
            "{what}: serde refuses it too, so this case belongs in the first list"
        );
    }
}

// ---------------------------------------------------------------------------
// The schema files themselves
// ---------------------------------------------------------------------------

#[test]
fn every_schema_file_is_listed_and_every_listed_file_exists() {
    let mut on_disk: Vec<String> = ["events", "notify"]
        .iter()
        .flat_map(|dir| {
            common::files_with_ext(&spec_dir().join(dir), "json")
                .iter()
                .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
                .collect::<Vec<_>>()
        })
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
                // constraints to a closed schema; they need not close. An
                // anyOf member that says it is an object (one shape of a
                // command result) is a whole schema and must.
                let whole = m.get("type") == Some(&Value::String("object".into()));
                let constraining = ["/allOf", "/if", "/then", "/else"]
                    .iter()
                    .any(|k| path.contains(k))
                    || (path.contains("/anyOf") && !whole);
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
    let schemas = CASES
        .iter()
        .map(|c| (c.file, schema_json(c.file)))
        .chain([("command-request.schema.json", request_schema())]);
    for (file, s) in schemas {
        let Some(Value::Object(defs)) = s.get("$defs") else {
            continue;
        };
        for (name, def) in defs {
            match seen.get(name) {
                Some((first, d)) => {
                    assert_eq!(d, def, "$defs/{name} differs between {first} and {file}")
                }
                None => {
                    seen.insert(name.clone(), (file, def.clone()));
                }
            }
        }
    }
    for shared in [
        "battery",
        "id",
        "user_id",
        "mobile",
        "local_time",
        "unix_ms",
    ] {
        assert!(
            seen.contains_key(shared),
            "no schema defines $defs/{shared}"
        );
    }
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
    let twofa = schema_json("2fa.schema.json");
    let checks: [(&str, &Value, Vec<Value>); 9] = [
        (
            "2fa outcome",
            &twofa["properties"]["outcome"]["enum"],
            serde_names(arb::ALL_TWOFA_OUTCOMES),
        ),
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
fn twofa_outcomes_serialise_as_their_stable_names() {
    for o in arb::ALL_TWOFA_OUTCOMES {
        assert_eq!(serde_json::to_value(o).unwrap(), json!(o.as_str()), "{o:?}");
    }
}

#[test]
fn twofa_reasons_in_the_schema_are_exactly_the_documented_ones() {
    // allOf holds one if/then per outcome whose reasons the docs name.
    let s = schema_json("2fa.schema.json");
    let mut by_outcome: BTreeMap<String, Value> = BTreeMap::new();
    for rule in s["allOf"].as_array().unwrap() {
        let outcome = rule["if"]["properties"]["outcome"]["const"]
            .as_str()
            .unwrap();
        if let Some(reasons) = rule["then"]["properties"]["reason"].get("enum") {
            by_outcome.insert(outcome.to_string(), reasons.clone());
        }
    }
    for o in arb::ALL_TWOFA_OUTCOMES {
        let want = arb::twofa_reasons(*o).map(|r| json!(r));
        assert_eq!(by_outcome.get(o.as_str()), want.as_ref(), "{o:?}");
    }
}

#[test]
fn lockout_and_grant_spellings_match_the_rust_docs() {
    let defs = &schema_json("command-response.schema.json")["$defs"];
    let statuses: Vec<Value> = arb::GRANT_STATUSES.iter().map(|s| json!(s)).collect();
    assert_eq!(
        defs["twofa_grant_view"]["properties"]["status"]["enum"],
        json!(statuses)
    );
    let scopes: Vec<Value> = arb::LOCKOUT_KINDS.iter().map(|(s, _)| json!(s)).collect();
    let reasons: Vec<Value> = arb::LOCKOUT_KINDS.iter().map(|(_, r)| json!(r)).collect();
    let lockout = &defs["lockout_view"]["properties"];
    assert_eq!(lockout["scope"]["enum"], json!(scopes));
    assert_eq!(lockout["reason"]["enum"], json!(reasons));
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
fn arbitrary_2fa_events_validate() {
    run("2fa.schema.json", arb::twofa_event());
}

#[test]
fn arbitrary_otp_notifications_validate() {
    run(
        "otp-notification.schema.json",
        arb::otp_notification().prop_map(|n| {
            assert!(schemas::twofa::valid_mobile(&n.mobile), "{}", n.mobile);
            n
        }),
    );
}

#[test]
fn arbitrary_2fa_command_answers_validate_and_read_back() {
    run(
        "command-response.schema.json",
        arb::ok_response(arb::twofa_command_result()).prop_map(|r| {
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(serde_json::from_value::<CommandResponse>(json).unwrap(), r);
            r
        }),
    );
}

#[test]
fn masked_numbers_validate_and_unmasked_ones_do_not() {
    let v = validator("command-response.schema.json");
    let answer = |mobile_masked: Value| {
        let mut ex = schema_json("command-response.schema.json")["examples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["result"]["type"] == "2fa_user")
            .expect("a 2fa_user example")
            .clone();
        ex["result"]["user"]["mobile_masked"] = mobile_masked;
        ex
    };
    for mobile in [
        "+6591234567",
        "+12345678",
        "+123456789012345",
        "+447700900123",
    ] {
        assert!(schemas::twofa::valid_mobile(mobile));
        assert_valid(&v, &answer(json!(schemas::twofa::mask_mobile(mobile))));
        assert!(
            !v.is_valid(&answer(json!(mobile))),
            "{mobile} unmasked accepted"
        );
    }
    assert_valid(&v, &answer(Value::Null));
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
        DecodeError::TooManyResults { count: 33, max: 32 },
        DecodeError::NoResults,
        DecodeError::BadDigits { max: 16 },
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

/// `example` with the members of `patch` replaced.
fn patched(example: &Value, patch: &Value) -> Value {
    let mut ex = example.clone();
    for (k, x) in patch.as_object().unwrap() {
        ex[k] = x.clone();
    }
    ex
}

#[test]
fn twofa_event_schema_refuses_what_the_docs_forbid() {
    let v = validator("2fa.schema.json");
    let examples = schema_json("2fa.schema.json")["examples"].clone();
    let sent = &examples[0];
    let wrong = &examples[1];
    let bad: Vec<(&str, &Value, Value)> = vec![
        (
            "event id of another kind",
            sent,
            json!({"event_id": "job:1:1"}),
        ),
        (
            "event id without sequence",
            sent,
            json!({"event_id": "2fa:"}),
        ),
        ("unknown outcome", sent, json!({"outcome": "opened"})),
        ("reason with capitals", sent, json!({"reason": "Wrong"})),
        (
            "rate limit of another kind",
            sent,
            json!({"outcome": "rate_limited", "reason": "lock"}),
        ),
        (
            "rate limit without reason",
            sent,
            json!({"outcome": "rate_limited"}),
        ),
        (
            "locked out without until",
            sent,
            json!({"outcome": "locked_out", "reason": "lock"}),
        ),
        (
            "lock-out of another kind",
            sent,
            json!({"outcome": "lockout_started",
            "reason": "lock_rate", "lockout_until_ms": 1}),
        ),
        (
            "challenge ended for no reason",
            sent,
            json!({"outcome": "challenge_ended"}),
        ),
        ("denied for no reason", sent, json!({"outcome": "denied"})),
        (
            "wrong otp without tries",
            wrong,
            json!({"tries_left": null}),
        ),
        ("tries over u8", wrong, json!({"tries_left": 256})),
        ("grant id 0", sent, json!({"grant_id": 0})),
        ("user id with /", sent, json!({"user_id": "u/1"})),
        ("a passcode", sent, json!({"passcode": "48291637"})),
        ("an otp", sent, json!({"otp": "123456"})),
    ];
    for (what, base, patch) in bad {
        let ex = patched(base, &patch);
        assert!(!v.is_valid(&ex), "{what} was accepted: {ex}");
    }
    for field in ["reason", "tries_left", "lock_id"] {
        let mut ex = wrong.clone();
        ex.as_object_mut().unwrap().remove(field);
        assert!(!v.is_valid(&ex), "missing {field} was accepted");
    }
}

#[test]
fn otp_notification_schema_refuses_what_the_docs_forbid() {
    let v = validator("otp-notification.schema.json");
    let ex = schema_json("otp-notification.schema.json")["examples"][0].clone();
    let bad = [
        ("otp of 5 digits", json!({"otp": "12345"})),
        ("otp of 7 digits", json!({"otp": "1234567"})),
        ("otp with a letter", json!({"otp": "12345a"})),
        ("otp as a number", json!({"otp": 123456})),
        ("mobile without +", json!({"mobile": "6591234567"})),
        ("mobile starting 0", json!({"mobile": "+0591234567"})),
        ("mobile too long", json!({"mobile": "+1234567890123456"})),
        (
            "notification id not a challenge id",
            json!({"notification_id": "otp-1"}),
        ),
        ("empty message", json!({"message": ""})),
        ("lock id with /", json!({"lock_id": "L/1"})),
    ];
    for (what, patch) in bad {
        assert!(!v.is_valid(&patched(&ex, &patch)), "{what} was accepted");
    }
    for field in ["otp", "mobile", "expires_at_ms"] {
        let mut e = ex.clone();
        e.as_object_mut().unwrap().remove(field);
        assert!(!v.is_valid(&e), "missing {field} was accepted");
    }
}

#[test]
fn command_response_schema_refuses_inconsistent_2fa_answers() {
    let v = validator("command-response.schema.json");
    let examples = schema_json("command-response.schema.json")["examples"].clone();
    let of_type = |t: &str| {
        examples
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["result"]["type"] == t)
            .unwrap_or_else(|| panic!("no {t} example"))
            .clone()
    };
    let passcode = of_type("2fa_passcode");
    let grants = of_type("2fa_grants");
    let lockouts = of_type("2fa_lockouts");
    let bad: Vec<(&str, Value, &str, Value)> = vec![
        (
            "passcode of 7 digits",
            passcode.clone(),
            "/result/passcode",
            json!("4829163"),
        ),
        (
            "passcode of 9 digits",
            passcode.clone(),
            "/result/passcode",
            json!("482916370"),
        ),
        (
            "passcode shown again",
            passcode.clone(),
            "/result/shown_before",
            json!(true),
        ),
        (
            "passcode missing first time",
            passcode.clone(),
            "/result/passcode",
            Value::Null,
        ),
        (
            "grant status unknown",
            grants.clone(),
            "/result/grants/0/status",
            json!("pending"),
        ),
        (
            "grant start with offset",
            grants.clone(),
            "/result/grants/0/start",
            json!("2026-12-01T08:00+08:00"),
        ),
        (
            "grant time zone empty",
            grants.clone(),
            "/result/grants/0/time_zone",
            json!(""),
        ),
        ("grant id 0", grants, "/result/next_before", json!(0)),
        (
            "lock locked out for challenges",
            lockouts.clone(),
            "/result/lockouts/0/reason",
            json!("failed_challenges"),
        ),
        (
            "user locked out for passcodes",
            lockouts.clone(),
            "/result/lockouts/1/reason",
            json!("wrong_passcodes"),
        ),
        (
            "scope unknown",
            lockouts,
            "/result/lockouts/0/scope",
            json!("org"),
        ),
    ];
    for (what, mut ex, pointer, value) in bad {
        *ex.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer}")) = value;
        assert!(!v.is_valid(&ex), "{what} was accepted");
    }
    let mut ex = of_type("2fa_user");
    ex["result"]["user"]
        .as_object_mut()
        .unwrap()
        .remove("has_passcode");
    assert!(!v.is_valid(&ex), "user without has_passcode accepted");
    let mut ex = of_type("2fa_user");
    ex["result"]["user"]["passcode"] = json!("48291637");
    assert!(!v.is_valid(&ex), "user view with a passcode accepted");
}
