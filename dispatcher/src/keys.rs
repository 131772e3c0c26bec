//! Device keys as the domain sees them: which device a key belongs to, its
//! generation (bumped by every rotation), and the pairing secret a device is
//! provisioned with. No cryptography here: deriving
//! contexts and wrapping secrets is the gateway's, at the edge.
//!
//! A secret never reaches a log line: [`MasterSecret`]'s `Debug` prints
//! nothing of it, and its bytes are wiped when it is dropped.

use crate::registry::{BridgeId, LockId};
use std::fmt;
use zeroize::Zeroizing;

/// Bytes of a device's master secret (RFC 8613 §3.1 asks for enough entropy;
/// 32 random bytes is the strength of AES-256 and HKDF-SHA256's output).
pub const MASTER_SECRET_LEN: usize = 32;

/// A registered device, lock or bridge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceRef {
    Lock(LockId),
    Bridge(BridgeId),
}

impl DeviceRef {
    /// `"lock"` or `"bridge"`, as stored and as metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceRef::Lock(_) => "lock",
            DeviceRef::Bridge(_) => "bridge",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            DeviceRef::Lock(l) => l.as_str(),
            DeviceRef::Bridge(b) => b.as_str(),
        }
    }

    /// The device's OSCORE ID Context (RFC 8613 §3.1): its topic prefix,
    /// `lk/{id}` or `br/{id}`. Every request carries it, so the gateway finds
    /// the device's context from the message alone.
    pub fn oscore_id_context(&self) -> Vec<u8> {
        match self {
            DeviceRef::Lock(l) => format!("lk/{l}").into_bytes(),
            DeviceRef::Bridge(b) => format!("br/{b}").into_bytes(),
        }
    }

    /// The device named by an OSCORE ID Context; `None` if it names none.
    pub fn from_oscore_id_context(context: &[u8]) -> Option<DeviceRef> {
        let s = std::str::from_utf8(context).ok()?;
        match s.split_once('/')? {
            ("lk", id) if schemas::device::valid_id(id) => Some(DeviceRef::Lock(LockId::new(id))),
            ("br", id) if schemas::device::valid_id(id) => {
                Some(DeviceRef::Bridge(BridgeId::new(id)))
            }
            _ => None,
        }
    }

    /// From the stored `(kind, id)`.
    pub fn parse(kind: &str, id: &str) -> Option<DeviceRef> {
        match kind {
            "lock" => Some(DeviceRef::Lock(LockId::new(id))),
            "bridge" => Some(DeviceRef::Bridge(BridgeId::new(id))),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.id())
    }
}

/// Which key a device holds now: how many times it was rotated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub device: DeviceRef,
    /// 1 at registration, +1 at every rotation.
    pub generation: u32,
}

/// A device's master secret: what pairing provisions into the device and
/// the gateway keeps wrapped under its server key. Wiped on drop; `Debug`
/// and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterSecret(Zeroizing<[u8; MASTER_SECRET_LEN]>);

/// Why a secret from a file or a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a master secret must be {hex} hex characters ({MASTER_SECRET_LEN} bytes); this one has {found}", hex = MASTER_SECRET_LEN * 2)]
    Length { found: usize },
    #[error("a master secret must be hex (0-9, a-f)")]
    NotHex,
}

impl MasterSecret {
    pub fn from_bytes(bytes: [u8; MASTER_SECRET_LEN]) -> Self {
        MasterSecret(Zeroizing::new(bytes))
    }

    pub fn from_hex(hex: &str) -> Result<Self, SecretError> {
        let hex = hex.trim();
        if hex.len() != MASTER_SECRET_LEN * 2 {
            return Err(SecretError::Length { found: hex.len() });
        }
        let mut out = Zeroizing::new([0u8; MASTER_SECRET_LEN]);
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(SecretError::NotHex);
            out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(MasterSecret(out))
    }

    /// Lower-case hex, for the secrets file written once at registration.
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(MASTER_SECRET_LEN * 2));
        for b in self.0.iter() {
            s.push_str(&format!("{b:02x}"));
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
    fn secrets_parse_from_hex_and_never_show_in_debug() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let s = MasterSecret::from_hex(hex).unwrap();
        assert_eq!(s.to_hex().as_str(), hex);
        assert_eq!(format!("{s:?}"), "MasterSecret(..)");
        assert_eq!(
            MasterSecret::from_hex("abc"),
            Err(SecretError::Length { found: 3 })
        );
        let bad = "zz".repeat(MASTER_SECRET_LEN);
        assert_eq!(MasterSecret::from_hex(&bad), Err(SecretError::NotHex));
    }

    #[test]
    fn the_oscore_id_context_names_the_device_and_round_trips() {
        let lock = DeviceRef::Lock(LockId::new("L000123"));
        assert_eq!(lock.oscore_id_context(), b"lk/L000123");
        assert_eq!(DeviceRef::from_oscore_id_context(b"lk/L000123"), Some(lock));
        let bridge = DeviceRef::Bridge(BridgeId::new("B7"));
        assert_eq!(
            DeviceRef::from_oscore_id_context(&bridge.oscore_id_context()),
            Some(bridge)
        );
        for bad in [&b"L000123"[..], b"xx/L1", b"lk/", b"lk/a b", b"\xff/x"] {
            assert_eq!(DeviceRef::from_oscore_id_context(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn device_refs_name_their_kind() {
        let d = DeviceRef::parse("bridge", "B1").unwrap();
        assert_eq!(
            (d.kind(), d.id(), d.to_string().as_str()),
            ("bridge", "B1", "bridge B1")
        );
        assert_eq!(DeviceRef::parse("gizmo", "X"), None);
    }
}
