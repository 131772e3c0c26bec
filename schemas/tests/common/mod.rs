//! Helpers shared by the spec tests: where the spec files live, how to read
//! the example files, and which decoder and CDDL rule each payload kind has.
//! Each test binary uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod arb;

use schemas::device::{encode, DecodeError};
use schemas::twofa::{OtpEntry, PasscodeEntry, TwoFactorAnswer};
use schemas::{ActivityLogBatch, Downlink, Heartbeat, LogAck};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `schemas/spec/`.
pub fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("spec")
}

/// `schemas/spec/examples/`.
pub fn examples_dir() -> PathBuf {
    spec_dir().join("examples")
}

/// The files in `dir` whose name ends in `.{ext}`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn file_stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .expect("UTF-8 file name")
        .to_string()
}

/// A `.hex` example: its bytes and its `# key: value` header lines.
pub struct HexFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub directives: BTreeMap<String, String>,
}

impl HexFile {
    pub fn name(&self) -> String {
        file_stem(&self.path)
    }
    pub fn directive(&self, key: &str) -> &str {
        self.directives
            .get(key)
            .unwrap_or_else(|| panic!("{} has no `# {key}:` line", self.path.display()))
    }
}

/// Reads a `.hex` file: `#` starts a comment to the end of the line,
/// whitespace is ignored, the rest is pairs of hex digits. Comment lines of
/// the form `# key: value` with a lower-case key are collected as directives.
pub fn read_hex(path: &Path) -> HexFile {
    let text = read(path);
    let mut digits = String::new();
    let mut directives = BTreeMap::new();
    for line in text.lines() {
        let (data, comment) = match line.find('#') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        digits.extend(data.chars().filter(|c| !c.is_whitespace()));
        if let Some((key, value)) = comment.and_then(|c| c.trim().split_once(": ")) {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                directives.insert(key.to_string(), value.trim().to_string());
            }
        }
    }
    assert!(
        digits.len().is_multiple_of(2),
        "{}: odd number of hex digits",
        path.display()
    );
    let bytes = (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .unwrap_or_else(|e| panic!("{}: {e} at digit {i}", path.display()))
        })
        .collect();
    HexFile {
        path: path.to_path_buf(),
        bytes,
        directives,
    }
}

/// The device payloads that have examples, with their decoder and CDDL rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PayloadKind {
    Heartbeat,
    ActivityLog,
    JobReport,
    Downlink,
    LogAck,
    PasscodeEntry,
    OtpEntry,
    TwoFactorAnswer,
}

impl PayloadKind {
    pub const ALL: [PayloadKind; 8] = [
        PayloadKind::Heartbeat,
        PayloadKind::ActivityLog,
        PayloadKind::JobReport,
        PayloadKind::Downlink,
        PayloadKind::LogAck,
        PayloadKind::PasscodeEntry,
        PayloadKind::OtpEntry,
        PayloadKind::TwoFactorAnswer,
    ];

    /// The rule in `device.cddl`.
    pub fn cddl_rule(self) -> &'static str {
        match self {
            PayloadKind::Heartbeat => "heartbeat",
            PayloadKind::ActivityLog => "activity-log-batch",
            PayloadKind::JobReport => "job-report",
            PayloadKind::Downlink => "downlink",
            PayloadKind::LogAck => "log-ack",
            PayloadKind::PasscodeEntry => "passcode-entry",
            PayloadKind::OtpEntry => "otp-entry",
            PayloadKind::TwoFactorAnswer => "two-factor-answer",
        }
    }

    /// The name used in example file names and `decode-as:` lines.
    pub fn file_prefix(self) -> &'static str {
        match self {
            PayloadKind::Heartbeat => "heartbeat",
            PayloadKind::ActivityLog => "activity-log",
            PayloadKind::JobReport => "job-report",
            PayloadKind::Downlink => "downlink",
            PayloadKind::LogAck => "log-ack",
            PayloadKind::PasscodeEntry => "passcode-entry",
            PayloadKind::OtpEntry => "otp-entry",
            // As the decoder names it in its errors (a CDDL name cannot
            // start with a digit).
            PayloadKind::TwoFactorAnswer => "2fa-answer",
        }
    }

    /// The kind a valid example's file name stands for.
    pub fn of_example(name: &str) -> PayloadKind {
        PayloadKind::ALL
            .into_iter()
            .find(|k| name == k.file_prefix() || name.starts_with(&format!("{}-", k.file_prefix())))
            .unwrap_or_else(|| panic!("example {name:?} does not start with a payload kind"))
    }

    pub fn from_directive(s: &str) -> PayloadKind {
        PayloadKind::ALL
            .into_iter()
            .find(|k| k.file_prefix() == s)
            .unwrap_or_else(|| panic!("unknown decode-as {s:?}"))
    }

    /// Decodes with the Rust decoder and encodes the value again.
    pub fn decode_and_reencode(self, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(match self {
            PayloadKind::Heartbeat => encode(&Heartbeat::decode(bytes)?),
            PayloadKind::ActivityLog => encode(&ActivityLogBatch::decode(bytes)?),
            PayloadKind::JobReport => encode(&schemas::JobReport::decode(bytes)?),
            PayloadKind::Downlink => encode(&Downlink::decode(bytes)?),
            PayloadKind::LogAck => encode(&LogAck::decode(bytes)?),
            PayloadKind::PasscodeEntry => encode(&PasscodeEntry::decode(bytes)?),
            PayloadKind::OtpEntry => encode(&OtpEntry::decode(bytes)?),
            PayloadKind::TwoFactorAnswer => encode(&TwoFactorAnswer::decode(bytes)?),
        })
    }
}

/// Every valid example: (`.hex` file, its `.diag` path).
pub fn valid_examples() -> Vec<(HexFile, PathBuf)> {
    files_with_ext(&examples_dir(), "hex")
        .into_iter()
        .map(|p| {
            let diag = p.with_extension("diag");
            (read_hex(&p), diag)
        })
        .collect()
}

/// Every file in `examples/invalid/`.
pub fn invalid_examples() -> Vec<HexFile> {
    files_with_ext(&examples_dir().join("invalid"), "hex")
        .iter()
        .map(|p| read_hex(p))
        .collect()
}
