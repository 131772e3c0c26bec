//! The device payload examples in `spec/examples/` against the Rust codec:
//! every valid `.hex` decodes and re-encodes to the very same bytes (so the
//! examples are exactly what our encoder sends), every `.diag` is the same
//! item as its `.hex` (parsed with `cbor-diag`), and every `invalid/*.hex` is
//! refused with the `DecodeError::reason()` its header names.
//! The CDDL side of the same files is `tests/cddl.rs`.

mod common;

use common::{
    examples_dir, file_stem, files_with_ext, invalid_examples, read, valid_examples, PayloadKind,
};
use schemas::device::MAX_UPLINK_BYTES;
use std::collections::BTreeMap;

/// Two examples per payload at least, as the spec's readers need variety.
const MIN_EXAMPLES_PER_KIND: usize = 2;

#[test]
fn every_valid_example_decodes_and_reencodes_to_the_same_bytes() {
    let examples = valid_examples();
    assert!(!examples.is_empty(), "no examples found");
    for (hex, _) in &examples {
        let kind = PayloadKind::of_example(&hex.name());
        assert!(hex.bytes.len() <= MAX_UPLINK_BYTES, "{}", hex.name());
        match kind.decode_and_reencode(&hex.bytes) {
            Ok(again) => assert_eq!(
                again,
                hex.bytes,
                "{}: re-encoding the decoded value gives other bytes",
                hex.name()
            ),
            Err(e) => panic!("{}: refused by the {kind:?} decoder: {e}", hex.name()),
        }
    }
}

#[test]
fn every_payload_kind_has_enough_examples() {
    let mut count: BTreeMap<PayloadKind, usize> = BTreeMap::new();
    for (hex, _) in valid_examples() {
        *count
            .entry(PayloadKind::of_example(&hex.name()))
            .or_default() += 1;
    }
    for kind in PayloadKind::ALL {
        let n = count.get(&kind).copied().unwrap_or(0);
        assert!(
            n >= MIN_EXAMPLES_PER_KIND,
            "{kind:?} has {n} examples, want {MIN_EXAMPLES_PER_KIND}"
        );
    }
}

#[test]
fn no_2fa_refusal_repeats_what_was_typed() {
    // The message goes back to the lock and into logs; the digits are secret.
    for hex in invalid_examples() {
        let kind = PayloadKind::from_directive(hex.directive("decode-as"));
        if !matches!(kind, PayloadKind::PasscodeEntry | PayloadKind::OtpEntry) {
            continue;
        }
        let err = kind.decode_and_reencode(&hex.bytes).unwrap_err();
        let item = cbor_diag::parse_bytes(&hex.bytes).unwrap();
        let cbor_diag::DataItem::Map { data, .. } = item else {
            unreachable!("an entry is a map")
        };
        let typed = data.last().expect("the typed key is the last").1.to_diag();
        let typed = typed.trim_matches('"');
        if !typed.is_empty() {
            let message = err.to_string();
            assert!(!message.contains(typed), "{}: {message}", hex.name());
        }
    }
}

#[test]
fn every_diag_is_the_same_item_as_its_hex() {
    let hexes: Vec<String> = files_with_ext(&examples_dir(), "hex")
        .iter()
        .map(|p| file_stem(p))
        .collect();
    let diags: Vec<String> = files_with_ext(&examples_dir(), "diag")
        .iter()
        .map(|p| file_stem(p))
        .collect();
    assert_eq!(hexes, diags, "every example needs both a .hex and a .diag");

    for (hex, diag_path) in valid_examples() {
        let item = cbor_diag::parse_diag(read(&diag_path))
            .unwrap_or_else(|e| panic!("{}: not diagnostic notation: {e}", diag_path.display()));
        assert_eq!(
            item.to_bytes(),
            hex.bytes,
            "{}: the .diag encodes to other bytes than the .hex; .hex is normative",
            hex.name()
        );
    }
}

#[test]
fn every_hex_body_is_one_cbor_item_as_cbor_diag_reads_it() {
    // The annotated-hex bodies are cbor-diag's own format; reading them back
    // with it guards against a hand edit that breaks an annotation.
    for (hex, _) in valid_examples() {
        let item =
            cbor_diag::parse_hex(read(&hex.path)).unwrap_or_else(|e| panic!("{}: {e}", hex.name()));
        assert_eq!(item.to_bytes(), hex.bytes, "{}", hex.name());
    }
}

#[test]
fn every_invalid_example_is_refused_with_its_reason() {
    let invalid = invalid_examples();
    assert!(!invalid.is_empty(), "no invalid examples found");
    for hex in &invalid {
        let kind = PayloadKind::from_directive(hex.directive("decode-as"));
        let want = hex.directive("reason");
        match kind.decode_and_reencode(&hex.bytes) {
            Ok(_) => panic!("{}: accepted by the {kind:?} decoder", hex.name()),
            Err(e) => assert_eq!(e.reason(), want, "{}: refused as {e}", hex.name()),
        }
    }
}

#[test]
fn invalid_readme_lists_every_file_with_its_reason() {
    let readme = read(&examples_dir().join("invalid/README.md"));
    let rows: BTreeMap<String, String> = readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // | `file.hex` | `reason` | why |
            let file = cells.get(1)?.strip_prefix('`')?.strip_suffix(".hex`")?;
            let reason = cells.get(2)?.trim_matches('`');
            Some((file.to_string(), reason.to_string()))
        })
        .collect();
    let files: BTreeMap<String, String> = invalid_examples()
        .iter()
        .map(|h| (h.name(), h.directive("reason").to_string()))
        .collect();
    assert_eq!(rows, files, "invalid/README.md and the files disagree");
}

#[test]
fn the_invalid_examples_cover_the_required_faults() {
    let names: Vec<String> = invalid_examples().iter().map(|h| h.name()).collect();
    for needed in [
        "heartbeat-bad-interval",
        "heartbeat-battery-101",
        "heartbeat-missing-seq",
        "heartbeat-trailing-bytes",
        "heartbeat-lock-id-slash",
        "passcode-entry-letters",
        "passcode-entry-17-digits",
        "passcode-entry-no-digits",
        "otp-entry-otp-as-number",
        "2fa-answer-unknown-result",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "missing invalid/{needed}.hex"
        );
    }
}
