//! `spec/device.cddl` against the examples and the Rust codec, validated with
//! the `cddl` crate:
//!
//! * every valid example matches the rule its file name names, every invalid
//!   example marked `cddl: invalid` does not;
//! * hand-built values covering every enum variant and interval, and
//!   proptest-made values of every payload, encode to CBOR that matches the
//!   CDDL and decodes back to the same value;
//! * differential checks: for each constrained field (intervals, battery,
//!   enum indices, id characters and length, batch size, typed digits, 2FA
//!   results), the Rust decoder accepts exactly the values the CDDL accepts;
//! * each 2FA result carries exactly the keys its docs name (the CDDL is
//!   stricter than the decoder there: it says what the gateway sends).
//!
//! Two gaps of the `cddl` crate (0.10) are closed here: it does not anchor
//! `.regexp` patterns (RFC 8610 §3.8.3 uses XSD regular expressions, which
//! match the whole string), so [`Cddl::for_rule`] anchors them; and it does
//! not reject duplicate map keys, so [`Cddl::check`] does.

mod common;

use cddl::validator::cbor_value::{decode_cbor, Value};
use cddl::validator::{cbor::CBORValidator, Validator};
use common::{arb, invalid_examples, valid_examples, PayloadKind};
use minicbor::Encoder;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use schemas::device::{encode, MAX_EVENTS_PER_BATCH, MAX_ID_LEN, MAX_UPLINK_BYTES};
use schemas::spec::DEVICE_CDDL;
use schemas::twofa::{OtpEntry, PasscodeEntry, TwoFactorAnswer, TwoFactorResult, MAX_TYPED_DIGITS};
use schemas::*;

/// Cases per property test: each costs about 2 ms of validation in a debug build.
const PROPTEST_CASES: u32 = 256;

/// The CDDL spec with one rule as its root.
struct Cddl {
    ast: cddl::ast::CDDL<'static>,
    rule: &'static str,
}

impl Cddl {
    fn for_rule(rule: &'static str) -> Cddl {
        let text = format!("root = {rule}\n{}", anchor_regexps(DEVICE_CDDL));
        // Leaked once per test: the AST borrows the text for its lifetime.
        let text: &'static str = Box::leak(text.into_boxed_str());
        let ast = cddl::cddl_from_str(text, false)
            .unwrap_or_else(|e| panic!("device.cddl does not parse: {e}"));
        Cddl { ast, rule }
    }

    /// Ok when `bytes` is one well-formed CBOR item without duplicate map
    /// keys that matches the rule.
    fn check(&self, bytes: &[u8]) -> Result<(), String> {
        let mut d = minicbor::Decoder::new(bytes);
        d.skip().map_err(|e| format!("not well-formed CBOR: {e}"))?;
        if d.position() != bytes.len() {
            return Err(format!(
                "{} bytes after the item",
                bytes.len() - d.position()
            ));
        }
        let value = decode_cbor(bytes).map_err(|e| format!("cddl crate cannot read it: {e}"))?;
        if let Some(dup) = duplicate_key(&value) {
            return Err(format!("duplicate map key {dup:?} (RFC 8949 §5.6)"));
        }
        let mut v = CBORValidator::new(&self.ast, value, None);
        v.validate().map_err(|e| format!("{}: {e}", self.rule))
    }
}

/// Rewrites every `.regexp "P"` as `.regexp "^(?:P)$"`.
fn anchor_regexps(cddl: &str) -> String {
    const CTRL: &str = ".regexp \"";
    let mut out = String::new();
    let mut rest = cddl;
    let mut count = 0;
    while let Some(i) = rest.find(CTRL) {
        let start = i + CTRL.len();
        let end = start + rest[start..].find('"').expect("closing quote of a .regexp");
        out.push_str(&rest[..start]);
        out.push_str(&format!("^(?:{})$", &rest[start..end]));
        rest = &rest[end..];
        count += 1;
    }
    out.push_str(rest);
    assert!(count > 0, "device.cddl has no .regexp left to anchor");
    out
}

fn duplicate_key(v: &Value) -> Option<Value> {
    match v {
        Value::Map(entries) => {
            for (i, (k, _)) in entries.iter().enumerate() {
                if entries[..i].iter().any(|(k2, _)| k2 == k) {
                    return Some(k.clone());
                }
            }
            entries.iter().find_map(|(_, x)| duplicate_key(x))
        }
        Value::Array(items) => items.iter().find_map(duplicate_key),
        Value::Tag(_, inner) => duplicate_key(inner),
        _ => None,
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        lock_id: "L000123".into(),
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

fn downlink() -> Downlink {
    Downlink {
        server_time: 1_790_000_002,
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
        seq: 7,
        jobs: vec![],
        more: false,
        next_heartbeat_at: None,
    }
}

// ---------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------

#[test]
fn every_rule_the_tests_use_exists() {
    for kind in PayloadKind::ALL {
        let rule = kind.cddl_rule();
        assert!(
            DEVICE_CDDL
                .lines()
                .any(|l| l.starts_with(&format!("{rule} ="))),
            "device.cddl has no rule {rule}"
        );
    }
}

/// Payloads whose rules accept some of the same items. A 2FA answer with
/// keys 0 to 2 only (denied, allowed, challenge_ended) has the shape of a
/// log-ack, and a log-ack that stored 1, 5 or 7 entries that of such an
/// answer. Harmless, as each is the answer to a request the lock made on
/// its own CoAP resource, but these two are told apart by that request, not
/// by their keys; every other pair is told apart by its keys alone.
const KNOWN_OVERLAPS: [(PayloadKind, PayloadKind); 1] =
    [(PayloadKind::TwoFactorAnswer, PayloadKind::LogAck)];

fn may_overlap(a: PayloadKind, b: PayloadKind) -> bool {
    KNOWN_OVERLAPS
        .iter()
        .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b))
}

#[test]
fn every_valid_example_matches_its_rule_and_the_root() {
    let root = Cddl::for_rule("device-payload");
    let rules: Vec<(PayloadKind, Cddl)> = PayloadKind::ALL
        .into_iter()
        .map(|k| (k, Cddl::for_rule(k.cddl_rule())))
        .collect();
    for (hex, _) in valid_examples() {
        let kind = PayloadKind::of_example(&hex.name());
        for (k, cddl) in &rules {
            let r = cddl.check(&hex.bytes);
            if *k == kind {
                r.unwrap_or_else(|e| panic!("{}: {e}", hex.name()));
            } else if !may_overlap(*k, kind) {
                // The payloads are told apart by their keys, not by transport.
                assert!(r.is_err(), "{} also matches {}", hex.name(), k.cddl_rule());
            }
        }
        root.check(&hex.bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", hex.name()));
    }
}

#[test]
fn every_invalid_example_marked_invalid_breaks_the_cddl() {
    for hex in invalid_examples() {
        let cddl_says = hex.directive("cddl");
        let kind = PayloadKind::from_directive(hex.directive("decode-as"));
        if cddl_says == "invalid" {
            let r = Cddl::for_rule(kind.cddl_rule()).check(&hex.bytes);
            assert!(r.is_err(), "{}: the CDDL accepts it", hex.name());
        } else {
            assert!(
                cddl_says.starts_with("n/a"),
                "{}: cddl: {cddl_says}",
                hex.name()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-built values
// ---------------------------------------------------------------------------

#[test]
fn every_enum_variant_and_interval_encodes_to_valid_cddl() {
    let hb_rule = Cddl::for_rule("heartbeat");
    let mut values = Vec::new();
    for (i, q) in arb::ALL_QUALITIES.iter().enumerate() {
        let mut hb = heartbeat();
        hb.signal_quality = *q;
        hb.lock_state = arb::ALL_LOCK_STATES[i % arb::ALL_LOCK_STATES.len()];
        hb.door_state = arb::ALL_DOOR_STATES[i % arb::ALL_DOOR_STATES.len()];
        hb.battery = Battery::Level(arb::ALL_LEVELS[i % arb::ALL_LEVELS.len()]);
        values.push(hb);
    }
    for h in HeartbeatInterval::ALLOWED_HOURS {
        let mut hb = heartbeat();
        hb.heartbeat_interval = HeartbeatInterval::from_hours(h.into()).unwrap();
        values.push(hb);
    }
    for m in arb::all_activity_minutes() {
        let mut hb = heartbeat();
        hb.activity_log_interval = ActivityLogInterval::from_minutes(m).unwrap();
        values.push(hb);
    }
    for p in [0, 29, 30, 100] {
        let mut hb = heartbeat();
        hb.battery = Battery::Percent(p);
        hb.channel = None;
        hb.carrier = String::new();
        values.push(hb);
    }
    let mut hb = heartbeat();
    hb.lock_id = "a".repeat(MAX_ID_LEN);
    hb.seq = u32::MAX;
    hb.device_time = u64::MAX;
    hb.signal_db = i16::MIN;
    hb.channel = Some(ChannelInfo {
        earfcn: u32::MAX,
        pci: u16::MAX,
        cell_id: u32::MAX,
        band: u8::MAX,
    });
    values.push(hb);
    let mut hb = heartbeat();
    hb.signal_db = i16::MAX;
    hb.lock_id = "Az09._-".into();
    values.push(hb);

    for hb in &values {
        let bytes = encode(hb);
        hb_rule
            .check(&bytes)
            .unwrap_or_else(|e| panic!("{hb:?}: {e}"));
        assert_eq!(&Heartbeat::decode(&bytes).unwrap(), hb);
    }

    let batch_rule = Cddl::for_rule("activity-log-batch");
    let events: Vec<ActivityEvent> = arb::ALL_KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| ActivityEvent {
            seq: i as u32,
            time: 1_790_000_000 + i as u64,
            kind: *k,
            actor: (i % 2 == 0).then(|| format!("slot-{i}")),
        })
        .collect();
    let full = ActivityLogBatch {
        lock_id: "L1".into(),
        seq: 1,
        events: (0..MAX_EVENTS_PER_BATCH)
            .map(|i| events[i % events.len()].clone())
            .collect(),
    };
    for b in [
        ActivityLogBatch {
            lock_id: "L1".into(),
            seq: 0,
            events: vec![],
        },
        ActivityLogBatch {
            lock_id: "L1".into(),
            seq: u32::MAX,
            events,
        },
        full,
    ] {
        let bytes = encode(&b);
        assert!(bytes.len() <= MAX_UPLINK_BYTES);
        batch_rule
            .check(&bytes)
            .unwrap_or_else(|e| panic!("{b:?}: {e}"));
        assert_eq!(ActivityLogBatch::decode(&bytes).unwrap(), b);
    }

    let dl_rule = Cddl::for_rule("downlink");
    for h in HeartbeatInterval::ALLOWED_HOURS {
        for m in arb::all_activity_minutes() {
            let dl = Downlink {
                heartbeat_interval: HeartbeatInterval::from_hours(h.into()).unwrap(),
                activity_log_interval: ActivityLogInterval::from_minutes(m).unwrap(),
                ..downlink()
            };
            dl_rule
                .check(&encode(&dl))
                .unwrap_or_else(|e| panic!("{dl:?}: {e}"));
        }
    }

    let ack_rule = Cddl::for_rule("log-ack");
    for (server_time, stored, seq) in [(0, 0, 0), (u64::MAX, u16::MAX, u32::MAX)] {
        let ack = LogAck {
            server_time,
            stored,
            seq,
        };
        ack_rule
            .check(&encode(&ack))
            .unwrap_or_else(|e| panic!("{ack:?}: {e}"));
    }
}

#[test]
fn entries_at_their_limits_encode_to_valid_cddl() {
    let passcode_rule = Cddl::for_rule("passcode-entry");
    let otp_rule = Cddl::for_rule("otp-entry");
    let digits = [
        "0".to_string(),
        "00000000".into(),
        "48291637".into(),
        "9".repeat(MAX_TYPED_DIGITS),
        "0123456789012345".into(),
    ];
    for (i, typed) in digits.iter().enumerate() {
        let (lock_id, seq, challenge) = match i % 2 {
            0 => ("a".repeat(MAX_ID_LEN), u32::MAX, u64::MAX),
            _ => ("Az09._-".to_string(), 0, 0),
        };
        let e = PasscodeEntry {
            lock_id: lock_id.clone(),
            seq,
            passcode: typed.clone(),
        };
        let bytes = encode(&e);
        passcode_rule
            .check(&bytes)
            .unwrap_or_else(|err| panic!("{e:?}: {err}"));
        assert_eq!(PasscodeEntry::decode(&bytes).unwrap(), e);
        let o = OtpEntry {
            lock_id,
            seq,
            challenge,
            otp: typed.clone(),
        };
        let bytes = encode(&o);
        otp_rule
            .check(&bytes)
            .unwrap_or_else(|err| panic!("{o:?}: {err}"));
        assert_eq!(OtpEntry::decode(&bytes).unwrap(), o);
    }
}

/// The optional keys of an answer: (key, name, whether `a` has it, `a` with
/// it toggled: added with a value if absent, removed if present).
fn toggled_keys(a: &TwoFactorAnswer) -> Vec<(u8, &'static str, bool, TwoFactorAnswer)> {
    let mut out = Vec::new();
    let mut t = a.clone();
    t.challenge = if a.challenge.is_some() { None } else { Some(1) };
    out.push((3, "challenge", a.challenge.is_some(), t));
    let mut t = a.clone();
    t.expires_at = if a.expires_at.is_some() {
        None
    } else {
        Some(1)
    };
    out.push((4, "expires_at", a.expires_at.is_some(), t));
    let mut t = a.clone();
    t.retry_after_s = if a.retry_after_s.is_some() {
        None
    } else {
        Some(1)
    };
    out.push((5, "retry_after_s", a.retry_after_s.is_some(), t));
    let mut t = a.clone();
    t.tries_left = if a.tries_left.is_some() {
        None
    } else {
        Some(1)
    };
    out.push((6, "tries_left", a.tries_left.is_some(), t));
    out
}

#[test]
fn every_2fa_result_carries_exactly_the_keys_its_docs_name() {
    let cddl = Cddl::for_rule("two-factor-answer");
    let limits = [
        (0, 0, 0, 0, 0, 0),
        (u32::MAX, u64::MAX, u64::MAX, u64::MAX, u32::MAX, u8::MAX),
    ];
    for r in arb::ALL_TWOFA_RESULTS {
        for (seq, now, challenge, expires, wait, tries) in limits {
            let a = arb::twofa_answer_of(*r, seq, now, challenge, expires, wait, tries);
            let bytes = encode(&a);
            cddl.check(&bytes).unwrap_or_else(|e| panic!("{a:?}: {e}"));
            assert_eq!(TwoFactorAnswer::decode(&bytes).unwrap(), a);
            // Any other set of keys is refused by the CDDL; the decoder
            // reads it (a lock skips what it does not need).
            for (key, field, had, other) in toggled_keys(&a) {
                let bytes = encode(&other);
                let what = if had { "without" } else { "with" };
                assert!(
                    cddl.check(&bytes).is_err(),
                    "{r:?} {what} key {key} ({field}) matches the CDDL"
                );
                assert_eq!(TwoFactorAnswer::decode(&bytes).unwrap(), other);
            }
        }
    }
}

#[test]
fn the_cddl_names_each_2fa_result_as_rust_spells_it_with_its_index() {
    // `&(otp-sent: 0)` etc. in two-factor-result-keys: the CDDL name is the
    // stable label with '-' for '_', the value the CBOR index.
    for r in arb::ALL_TWOFA_RESULTS {
        let index = encode(r);
        assert_eq!(index.len(), 1, "{r:?} is a small uint");
        let member = format!("{}: {}", r.as_str().replace('_', "-"), index[0]);
        assert!(
            DEVICE_CDDL.contains(&member),
            "device.cddl does not name {r:?} as {member:?}"
        );
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::json!(r.as_str()),
            "{r:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Differential: the decoder accepts exactly what the CDDL accepts
// ---------------------------------------------------------------------------

/// A downlink map with key 1 and 2 set to arbitrary integers.
fn raw_downlink(hours: u64, minutes: u64) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(4).unwrap();
    e.u8(0).unwrap().u64(1_790_000_000).unwrap();
    e.u8(1).unwrap().u64(hours).unwrap();
    e.u8(2).unwrap().u64(minutes).unwrap();
    e.u8(3).unwrap().u32(7).unwrap();
    e.into_writer()
}

/// A heartbeat whose key `key` holds the CBOR `value` (already encoded).
fn heartbeat_with(key: u8, value: &[u8]) -> Vec<u8> {
    let base = encode(&heartbeat());
    let item = cbor_diag::parse_bytes(base).unwrap();
    let cbor_diag::DataItem::Map { data, .. } = item else {
        unreachable!("a heartbeat is a map")
    };
    let replacement = cbor_diag::parse_bytes(value).unwrap();
    let data = data
        .into_iter()
        .map(|(k, v)| match k {
            cbor_diag::DataItem::Integer { value, .. } if value == u64::from(key) => {
                (k, replacement.clone())
            }
            _ => (k, v),
        })
        .collect();
    cbor_diag::DataItem::Map {
        data,
        bitwidth: None,
    }
    .to_bytes()
}

fn agree(what: &str, cddl: &Cddl, bytes: &[u8], decoder: impl Fn(&[u8]) -> bool) {
    let by_cddl = cddl.check(bytes);
    let by_rust = decoder(bytes);
    assert_eq!(
        by_cddl.is_ok(),
        by_rust,
        "{what}: CDDL says {by_cddl:?}, the Rust decoder says {}",
        if by_rust { "ok" } else { "refused" }
    );
}

#[test]
fn intervals_accepted_by_the_decoder_are_exactly_the_cddl_choices() {
    let cddl = Cddl::for_rule("downlink");
    let ok = |b: &[u8]| Downlink::decode(b).is_ok();
    for h in 0..=30 {
        agree(
            &format!("heartbeat interval {h}"),
            &cddl,
            &raw_downlink(h, 60),
            ok,
        );
    }
    for m in (0..=1500).chain([65_535, 65_536]) {
        agree(
            &format!("activity-log interval {m}"),
            &cddl,
            &raw_downlink(24, m),
            ok,
        );
    }
}

#[test]
fn battery_and_enum_indices_accepted_by_the_decoder_are_exactly_the_cddl_ones() {
    let cddl = Cddl::for_rule("heartbeat");
    let ok = |b: &[u8]| Heartbeat::decode(b).is_ok();
    let uint = |n: u64| {
        let mut e = Encoder::new(Vec::new());
        e.u64(n).unwrap();
        e.into_writer()
    };
    for kind in 0..=3u64 {
        for v in (0..=260).chain([u64::from(u32::MAX)]) {
            let mut e = Encoder::new(Vec::new());
            e.array(2).unwrap().u64(kind).unwrap().u64(v).unwrap();
            let bytes = heartbeat_with(3, &e.into_writer());
            agree(&format!("battery [{kind}, {v}]"), &cddl, &bytes, ok);
        }
    }
    // signal_quality, lock_state, door_state: every index up to past the last.
    for key in [5u8, 8, 9] {
        for v in 0..=20 {
            let bytes = heartbeat_with(key, &uint(v));
            agree(&format!("key {key} = {v}"), &cddl, &bytes, ok);
        }
    }
    // signal_db: the i16 limits and one past each.
    for db in [-32_769i64, -32_768, -1, 0, 32_767, 32_768] {
        let mut e = Encoder::new(Vec::new());
        e.i64(db).unwrap();
        let bytes = heartbeat_with(4, &e.into_writer());
        agree(&format!("signal_db {db}"), &cddl, &bytes, ok);
    }
    // seq: the u32 limit and one past it.
    for seq in [u64::from(u32::MAX), u64::from(u32::MAX) + 1] {
        agree(
            &format!("seq {seq}"),
            &cddl,
            &heartbeat_with(1, &uint(seq)),
            ok,
        );
    }
}

#[test]
fn ids_accepted_by_the_decoder_are_exactly_the_cddl_ones() {
    let cddl = Cddl::for_rule("heartbeat");
    let ok = |b: &[u8]| Heartbeat::decode(b).is_ok();
    let mut ids: Vec<String> = (0u8..=127)
        .map(|b| format!("L{}1", b as char))
        .chain((0u8..=127).map(|b| (b as char).to_string()))
        .collect();
    ids.extend([
        String::new(),
        "a".repeat(MAX_ID_LEN),
        "a".repeat(MAX_ID_LEN + 1),
        "Lé1".into(),
        "L 1".into(),
        "L1\n".into(),
    ]);
    for id in ids {
        let mut e = Encoder::new(Vec::new());
        e.str(&id).unwrap();
        let bytes = heartbeat_with(0, &e.into_writer());
        agree(&format!("lock id {id:?}"), &cddl, &bytes, ok);
    }
}

#[test]
fn batch_sizes_accepted_by_the_decoder_are_exactly_the_cddl_ones() {
    let cddl = Cddl::for_rule("activity-log-batch");
    let ok = |b: &[u8]| ActivityLogBatch::decode(b).is_ok();
    for n in [
        0,
        1,
        MAX_EVENTS_PER_BATCH - 1,
        MAX_EVENTS_PER_BATCH,
        MAX_EVENTS_PER_BATCH + 1,
    ] {
        let b = ActivityLogBatch {
            lock_id: "L1".into(),
            seq: 1,
            events: (0..n as u32)
                .map(|i| ActivityEvent {
                    seq: i,
                    time: 1,
                    kind: ActivityKind::Locked,
                    actor: None,
                })
                .collect(),
        };
        agree(&format!("{n} events"), &cddl, &encode(&b), ok);
    }
    for kind in 0..=13u8 {
        // {0: "L1", 1: 1, 2: [{0: 0, 1: 0, 2: kind}]}
        let raw = [
            0xa3, 0x00, 0x62, b'L', b'1', 0x01, 0x01, 0x02, 0x81, 0xa3, 0x00, 0x00, 0x01, 0x00,
            0x02, kind,
        ];
        agree(&format!("event kind {kind}"), &cddl, &raw, ok);
    }
}

/// `{0: "L1", 1: 1, 2: value}`: a passcode entry whose passcode is the
/// CBOR `value`.
fn passcode_entry_with(value: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xa3, 0x00, 0x62, b'L', b'1', 0x01, 0x01, 0x02];
    bytes.extend_from_slice(value);
    bytes
}

/// `{0: "L1", 1: 1, 2: 7, 3: value}`: an OTP entry for challenge 7 whose
/// OTP is the CBOR `value`.
fn otp_entry_with(value: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xa4, 0x00, 0x62, b'L', b'1', 0x01, 0x01, 0x02, 0x07, 0x03];
    bytes.extend_from_slice(value);
    bytes
}

fn cbor_text(s: &str) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.str(s).unwrap();
    e.into_writer()
}

#[test]
fn typed_digits_accepted_by_the_decoder_are_exactly_the_cddl_ones() {
    let passcode = Cddl::for_rule("passcode-entry");
    let otp = Cddl::for_rule("otp-entry");
    let mut typed: Vec<String> = (0u8..=127)
        .map(|b| (b as char).to_string())
        .chain((0u8..=127).map(|b| format!("12{}4", b as char)))
        .collect();
    typed.extend([
        String::new(),
        "1".repeat(MAX_TYPED_DIGITS - 1),
        "1".repeat(MAX_TYPED_DIGITS),
        "1".repeat(MAX_TYPED_DIGITS + 1),
        "1".repeat(100),
        "١٢٣٤".into(),     // Arabic-Indic digits
        "１２３４".into(), // full-width digits
        "12 34".into(),
        "+1234".into(),
        "-1234".into(),
        "1234\n".into(),
        "\n1234".into(),
    ]);
    for t in &typed {
        agree(
            &format!("passcode {t:?}"),
            &passcode,
            &passcode_entry_with(&cbor_text(t)),
            |b| PasscodeEntry::decode(b).is_ok(),
        );
        agree(
            &format!("otp {t:?}"),
            &otp,
            &otp_entry_with(&cbor_text(t)),
            |b| OtpEntry::decode(b).is_ok(),
        );
    }
    // Not text: the integer 1234, the bytes h'31323334', null.
    for value in [
        vec![0x19, 0x04, 0xd2],
        vec![0x44, b'1', b'2', b'3', b'4'],
        vec![0xf6],
    ] {
        agree(
            &format!("passcode {value:02x?}"),
            &passcode,
            &passcode_entry_with(&value),
            |b| PasscodeEntry::decode(b).is_ok(),
        );
        agree(
            &format!("otp {value:02x?}"),
            &otp,
            &otp_entry_with(&value),
            |b| OtpEntry::decode(b).is_ok(),
        );
    }
}

#[test]
fn entry_ids_and_counters_accepted_by_the_decoder_are_exactly_the_cddl_ones() {
    let passcode = Cddl::for_rule("passcode-entry");
    let otp = Cddl::for_rule("otp-entry");
    for id in [
        String::new(),
        "a".repeat(MAX_ID_LEN),
        "a".repeat(MAX_ID_LEN + 1),
        "L/1".into(),
        "L 1".into(),
        "L+1".into(),
        "Lé1".into(),
        "Az09._-".into(),
    ] {
        let e = PasscodeEntry {
            lock_id: id.clone(),
            seq: 1,
            passcode: "1234".into(),
        };
        agree(&format!("lock id {id:?}"), &passcode, &encode(&e), |b| {
            PasscodeEntry::decode(b).is_ok()
        });
    }
    let uint = |n: u64| {
        let mut e = Encoder::new(Vec::new());
        e.u64(n).unwrap();
        e.into_writer()
    };
    // seq: the u32 limit and one past it. {0: "L1", 1: seq, 2: "1"}
    for seq in [u64::from(u32::MAX), u64::from(u32::MAX) + 1] {
        let mut bytes = vec![0xa3, 0x00, 0x62, b'L', b'1', 0x01];
        bytes.extend(uint(seq));
        bytes.extend([0x02, 0x61, b'1']);
        agree(&format!("passcode seq {seq}"), &passcode, &bytes, |b| {
            PasscodeEntry::decode(b).is_ok()
        });
    }
    // challenge: 0, the u64 limit, -1, "7". {0: "L1", 1: 1, 2: challenge, 3: "1"}
    for challenge in [vec![0x00], uint(u64::MAX), vec![0x20], vec![0x61, b'7']] {
        let mut bytes = vec![0xa4, 0x00, 0x62, b'L', b'1', 0x01, 0x01, 0x02];
        bytes.extend(&challenge);
        bytes.extend([0x03, 0x61, b'1']);
        agree(&format!("challenge {challenge:02x?}"), &otp, &bytes, |b| {
            OtpEntry::decode(b).is_ok()
        });
    }
}

/// A 2FA answer `{0: 7, 1: result, 2: 100}` plus the keys `result`
/// carries, each set to the CBOR `value` given for it.
fn raw_answer(result: u64, value: &[u8]) -> Vec<u8> {
    let extra: &[u8] = match result {
        0 => &[3, 4],
        2..=4 => &[5],
        6 => &[6],
        _ => &[],
    };
    let mut e = Encoder::new(Vec::new());
    e.map(3 + extra.len() as u64).unwrap();
    e.u8(0).unwrap().u8(7).unwrap();
    e.u8(1).unwrap().u64(result).unwrap();
    e.u8(2).unwrap().u8(100).unwrap();
    let mut bytes = e.into_writer();
    for key in extra {
        bytes.push(*key);
        bytes.extend_from_slice(value);
    }
    bytes
}

#[test]
fn twofa_results_and_their_values_accepted_by_the_decoder_are_exactly_the_cddl_ones() {
    let cddl = Cddl::for_rule("two-factor-answer");
    let ok = |b: &[u8]| TwoFactorAnswer::decode(b).is_ok();
    let uint = |n: u64| {
        let mut e = Encoder::new(Vec::new());
        e.u64(n).unwrap();
        e.into_writer()
    };
    // Every result index up to past the last, with the keys it carries.
    for result in 0..=12 {
        let bytes = raw_answer(result, &uint(1));
        agree(&format!("result {result}"), &cddl, &bytes, ok);
    }
    // Their values: challenge and expires_at u64, retry_after_s u32,
    // tries_left u8; each limit and one past it, a negative and a text.
    let values = [
        0,
        255,
        256,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        u64::MAX,
    ]
    .map(uint)
    .into_iter()
    .chain([vec![0x20], vec![0x61, b'1']]);
    for v in values {
        for result in [0, 2, 3, 4, 6] {
            let bytes = raw_answer(result, &v);
            agree(
                &format!("result {result}, value {v:02x?}"),
                &cddl,
                &bytes,
                ok,
            );
        }
    }
}

/// `bytes` (a map with integer keys) once without each of its keys.
fn without_each_key(bytes: Vec<u8>) -> Vec<(u64, Vec<u8>)> {
    let cbor_diag::DataItem::Map { data, .. } = cbor_diag::parse_bytes(bytes).unwrap() else {
        unreachable!("a payload is a map")
    };
    data.iter()
        .map(|(k, _)| {
            let cbor_diag::DataItem::Integer { value: key, .. } = k else {
                unreachable!("integer keys")
            };
            let without: Vec<_> = data.iter().filter(|(k2, _)| k2 != k).cloned().collect();
            let bytes = cbor_diag::DataItem::Map {
                data: without,
                bitwidth: None,
            }
            .to_bytes();
            (*key, bytes)
        })
        .collect()
}

#[test]
fn entries_and_answers_without_a_required_key_break_both_the_cddl_and_the_decoder() {
    let entry = encode(&PasscodeEntry {
        lock_id: "L1".into(),
        seq: 1,
        passcode: "48291637".into(),
    });
    let cddl = Cddl::for_rule("passcode-entry");
    for (key, bytes) in without_each_key(entry) {
        assert!(
            cddl.check(&bytes).is_err(),
            "passcode entry without key {key}"
        );
        assert!(
            PasscodeEntry::decode(&bytes).is_err(),
            "passcode entry without key {key}"
        );
    }
    let entry = encode(&OtpEntry {
        lock_id: "L1".into(),
        seq: 1,
        challenge: 7,
        otp: "123456".into(),
    });
    let cddl = Cddl::for_rule("otp-entry");
    for (key, bytes) in without_each_key(entry) {
        assert!(cddl.check(&bytes).is_err(), "otp entry without key {key}");
        assert!(
            OtpEntry::decode(&bytes).is_err(),
            "otp entry without key {key}"
        );
    }
    // Keys 0 to 2 are required by both; the others by the CDDL alone
    // (every_2fa_result_carries_exactly_the_keys_its_docs_name).
    let cddl = Cddl::for_rule("two-factor-answer");
    let answer = encode(&TwoFactorAnswer::new(7, TwoFactorResult::Denied, 100));
    for (key, bytes) in without_each_key(answer) {
        assert!(cddl.check(&bytes).is_err(), "answer without key {key}");
        assert!(
            TwoFactorAnswer::decode(&bytes).is_err(),
            "answer without key {key}"
        );
    }
}

#[test]
fn missing_required_keys_break_both_the_cddl_and_the_decoder() {
    let cddl = Cddl::for_rule("heartbeat");
    let item = cbor_diag::parse_bytes(encode(&heartbeat())).unwrap();
    let cbor_diag::DataItem::Map { data, .. } = item else {
        unreachable!("a heartbeat is a map")
    };
    for (k, _) in &data {
        let cbor_diag::DataItem::Integer { value: key, .. } = k else {
            unreachable!("integer keys")
        };
        let without: Vec<_> = data.iter().filter(|(k2, _)| k2 != k).cloned().collect();
        let bytes = cbor_diag::DataItem::Map {
            data: without,
            bitwidth: None,
        }
        .to_bytes();
        // Key 7 (channel) is the one optional key.
        agree(
            &format!("heartbeat without key {key}"),
            &cddl,
            &bytes,
            |b| Heartbeat::decode(b).is_ok(),
        );
        assert_eq!(cddl.check(&bytes).is_ok(), *key == 7, "key {key}");
    }
}

// ---------------------------------------------------------------------------
// Property tests: encode -> matches the CDDL -> decodes to the same value
// ---------------------------------------------------------------------------

fn run<T: std::fmt::Debug>(
    strategy: impl proptest::strategy::Strategy<Value = T>,
    test: impl Fn(T) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config::with_cases(PROPTEST_CASES));
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn cddl_ok(cddl: &Cddl, bytes: &[u8]) -> Result<(), TestCaseError> {
    cddl.check(bytes).map_err(TestCaseError::fail)
}

#[test]
fn arbitrary_heartbeats_match_the_cddl_and_roundtrip() {
    let cddl = Cddl::for_rule("heartbeat");
    run(arb::heartbeat(), |hb| {
        let bytes = encode(&hb);
        cddl_ok(&cddl, &bytes)?;
        proptest::prop_assert_eq!(Heartbeat::decode(&bytes), Ok(hb));
        Ok(())
    });
}

#[test]
fn arbitrary_batches_match_the_cddl_and_roundtrip_within_the_byte_budget() {
    let cddl = Cddl::for_rule("activity-log-batch");
    run(arb::activity_log_batch(), |b| {
        let bytes = encode(&b);
        cddl_ok(&cddl, &bytes)?;
        let decoded = ActivityLogBatch::decode(&bytes);
        if bytes.len() <= MAX_UPLINK_BYTES {
            proptest::prop_assert_eq!(decoded, Ok(b));
        } else {
            proptest::prop_assert_eq!(decoded.map_err(|e| e.reason()), Err("too_large"));
        }
        Ok(())
    });
}

#[test]
fn arbitrary_downlinks_match_the_cddl_and_roundtrip() {
    let cddl = Cddl::for_rule("downlink");
    run(arb::downlink(), |dl| {
        let bytes = encode(&dl);
        cddl_ok(&cddl, &bytes)?;
        proptest::prop_assert_eq!(Downlink::decode(&bytes), Ok(dl));
        Ok(())
    });
}

#[test]
fn arbitrary_log_acks_match_the_cddl_and_roundtrip() {
    let cddl = Cddl::for_rule("log-ack");
    run(arb::log_ack(), |ack| {
        let bytes = encode(&ack);
        cddl_ok(&cddl, &bytes)?;
        proptest::prop_assert_eq!(LogAck::decode(&bytes), Ok(ack));
        Ok(())
    });
}

#[test]
fn arbitrary_passcode_entries_match_the_cddl_and_roundtrip() {
    let cddl = Cddl::for_rule("passcode-entry");
    run(arb::passcode_entry(), |e| {
        let bytes = encode(&e);
        cddl_ok(&cddl, &bytes)?;
        proptest::prop_assert_eq!(PasscodeEntry::decode(&bytes), Ok(e));
        Ok(())
    });
}

#[test]
fn arbitrary_otp_entries_match_the_cddl_and_roundtrip() {
    let cddl = Cddl::for_rule("otp-entry");
    run(arb::otp_entry(), |e| {
        let bytes = encode(&e);
        cddl_ok(&cddl, &bytes)?;
        proptest::prop_assert_eq!(OtpEntry::decode(&bytes), Ok(e));
        Ok(())
    });
}

#[test]
fn arbitrary_2fa_answers_match_the_cddl_and_roundtrip() {
    let cddl = Cddl::for_rule("two-factor-answer");
    run(arb::twofa_answer(), |a| {
        let bytes = encode(&a);
        cddl_ok(&cddl, &bytes)?;
        proptest::prop_assert_eq!(TwoFactorAnswer::decode(&bytes), Ok(a));
        Ok(())
    });
}
