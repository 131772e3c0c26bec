//! A device's pairing secret (its OSCORE master secret, RFC 8613 §3.1), as
//! the fleet file carries it in the `master_secret` column: 32 bytes, 64 hex
//! characters. It never reaches a log line: `Debug` prints nothing of it,
//! errors never echo a bad value, and its bytes are wiped on drop.
//!
//! New secrets come from the operating system's randomness ([`rand::rng`]:
//! ChaCha seeded and reseeded from the OS), never from the fleet's seed: a
//! fleet generated again from the same seed has the same devices but other
//! secrets, and nobody can derive a device's keys from a seed.

use rand::RngCore;
use std::fmt;
use zeroize::Zeroizing;

/// Bytes of a master secret: the gateway's pairing records use 32 (the
/// strength of HKDF-SHA256's output).
pub const MASTER_SECRET_LEN: usize = 32;

/// A device's master secret. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterSecret(Zeroizing<[u8; MASTER_SECRET_LEN]>);

/// Why a `master_secret` value was refused. Says what is wrong, never what
/// the value was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("is missing")]
    Missing,
    #[error("has {0} characters where a pairing secret has {hex} hex characters ({MASTER_SECRET_LEN} bytes)", hex = MASTER_SECRET_LEN * 2)]
    Length(usize),
    #[error("is not hex (0-9, a-f)")]
    NotHex,
}

impl MasterSecret {
    /// A fresh secret from the operating system's randomness.
    pub fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; MASTER_SECRET_LEN]);
        rand::rng().fill_bytes(&mut bytes[..]);
        MasterSecret(bytes)
    }

    pub fn from_bytes(bytes: [u8; MASTER_SECRET_LEN]) -> Self {
        MasterSecret(Zeroizing::new(bytes))
    }

    /// Parses 64 hex characters (either case; surrounding spaces ignored).
    pub fn from_hex(hex: &str) -> Result<Self, SecretProblem> {
        let hex = hex.trim();
        if hex.is_empty() {
            return Err(SecretProblem::Missing);
        }
        let chars = hex.chars().count();
        if chars != MASTER_SECRET_LEN * 2 {
            return Err(SecretProblem::Length(chars));
        }
        if !hex.is_ascii() {
            return Err(SecretProblem::NotHex);
        }
        let mut out = Zeroizing::new([0u8; MASTER_SECRET_LEN]);
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(SecretProblem::NotHex);
            out[i] = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
        }
        Ok(MasterSecret(out))
    }

    /// Lower-case hex, as the fleet file stores it; wiped when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(MASTER_SECRET_LEN * 2));
        for b in self.0.iter() {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        s
    }

    pub fn as_bytes(&self) -> &[u8; MASTER_SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_in_either_case_and_debug_shows_nothing() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let s = MasterSecret::from_hex(hex).unwrap();
        assert_eq!(s.as_bytes()[..4], [0x00, 0x11, 0x22, 0x33]);
        assert_eq!(s.to_hex().as_str(), hex.to_ascii_lowercase());
        assert_eq!(format!("{s:?}"), "MasterSecret(..)");
        assert_eq!(MasterSecret::from_hex(&format!(" {hex}\t")), Ok(s));
    }

    #[test]
    fn bad_values_say_what_is_wrong_without_the_value() {
        assert_eq!(MasterSecret::from_hex(""), Err(SecretProblem::Missing));
        assert_eq!(
            MasterSecret::from_hex("abcd"),
            Err(SecretProblem::Length(4))
        );
        let not_hex = "zz".repeat(MASTER_SECRET_LEN);
        let err = MasterSecret::from_hex(&not_hex).unwrap_err();
        assert_eq!(err, SecretProblem::NotHex);
        assert!(!err.to_string().contains("zz"));
    }

    #[test]
    fn random_secrets_differ() {
        let a = MasterSecret::random();
        let b = MasterSecret::random();
        assert_ne!(a, b);
        assert_ne!(a.as_bytes(), &[0; MASTER_SECRET_LEN]);
    }
}
