//! OSCORE on MQTT device payloads (the framing of `schemas::security`):
//! an uplink is the protected message `[oscore_option, ciphertext]` of the
//! inner request `0.02 POST` carrying the report's CBOR; its ack is the
//! protected response `2.04` carrying the answer's CBOR. Sans-I/O: a
//! payload in, the report's CBOR and the binding to its answer out.
//!
//! The topic names the device whose key must have protected the payload:
//! `lk/{lock}/up/...` the lock, `br/{bridge}/up/...` the bridge (for any of
//! its linked locks). The request's kid context must be that device's ID
//! Context, so a payload copied onto another device's topic fails here even
//! on a broker that does not confine its clients (an external one). As on
//! CoAP, the in-memory replay window is a fast reject; the commit checks
//! the stored one and is the authority (`store::replay`).
//!
//! Refusals carry the same reasons as on CoAP (`unprotected`,
//! `malformed_option`, `unknown_context`, `unknown_kid`, `replay`,
//! `decrypt_failed`, ...) and go out unprotected on the device's error
//! topic: they are diagnostics, and an error never carries a secret.

use crate::ingest::Protection;
use crate::keys::{DeviceKey, KeyRing};
use dispatcher::keys::DeviceRef;
use lockfleet_oscore::{
    protect_response, unprotect_request, Error, InnerMessage, OscoreOption, RequestId,
    CODE_CHANGED, CODE_POST,
};
use schemas::security::{
    decode_protected, encode_protected, ProtectedFrameError, DEVICE_OSCORE_ID,
};
use std::sync::Arc;

/// Why a device payload on MQTT was not accepted as protected.
#[derive(Debug, thiserror::Error)]
pub enum ProtectionError {
    #[error("device payloads must be OSCORE-protected messages ([oscore_option, ciphertext], see the README's Security section) under the device's key; this one is plain CBOR. Nothing was stored")]
    Unprotected,
    #[error("not a protected message: {0}. Nothing was stored")]
    Frame(#[from] ProtectedFrameError),
    #[error("{0}: send the option value as RFC 8613 §6.1 lays it out. Nothing was stored")]
    Option(lockfleet_oscore::OptionError),
    #[error("the request's kid must be h'01' (every device's sender id); it is {kid}. Nothing was stored")]
    UnknownKid { kid: String },
    #[error("the request's kid context {got:?} is not the ID Context {expected:?} of the device whose topic it was published on: a device protects with its own key and publishes on its own topics. Nothing was stored")]
    ContextMismatch { got: String, expected: String },
    #[error("no key is registered for {0}: register it (gateway devices import) and protect with the secret it was given. Nothing was stored")]
    UnknownContext(DeviceRef),
    #[error("{0}. Nothing was stored; protect every new message with a new sequence number (RFC 8613 §7.4)")]
    Replay(lockfleet_oscore::Replay),
    #[error("{0}. Nothing was stored; protect with the device's current key (RFC 8613 §8.2)")]
    Verify(Error),
    #[error("the protected request's inner code is {0:#04x}, not 0.02 POST: an uplink is a POST. Nothing was stored")]
    InnerCode(u8),
}

impl ProtectionError {
    /// Stable label for the `reason` metric label (the same as on CoAP).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtectionError::Unprotected => "unprotected",
            ProtectionError::Frame(_) => "malformed_protected",
            ProtectionError::Option(_) => "malformed_option",
            ProtectionError::UnknownKid { .. } => "unknown_kid",
            ProtectionError::ContextMismatch { .. } => "kid_context_mismatch",
            ProtectionError::UnknownContext(_) => "unknown_context",
            ProtectionError::Replay(_) => "replay",
            ProtectionError::Verify(e) => e.reason(),
            ProtectionError::InnerCode(_) => "malformed_inner",
        }
    }
}

/// A verified uplink's binding to its ack (RFC 8613 §8.3).
#[derive(Debug)]
pub struct Verified {
    key: Arc<DeviceKey>,
    request: RequestId,
}

impl Verified {
    /// What the ingest pipeline and the commit check.
    pub fn protection(&self) -> Protection {
        Protection {
            device: self.key.device().clone(),
            key: self.key.stamp(),
            seq: self.request.piv().seq(),
        }
    }

    /// The commit accepted the request: the in-memory window learns it, and
    /// the ack is `answer` (CBOR) protected as the response to it, the only
    /// answer its nonce will ever carry (the stored window now holds its
    /// sequence number). Consumes the binding: never protects twice.
    pub fn accepted_ack(self, answer: &[u8]) -> Result<Vec<u8>, Error> {
        self.key.accepted(self.request.piv().seq());
        let plaintext = InnerMessage::bare(CODE_CHANGED, answer).encode()?;
        let protected = protect_response(self.key.context(), self.request, None, &plaintext, &[])?;
        Ok(encode_protected(&protected.option, &protected.ciphertext))
    }
}

/// The payload's inner CBOR and its binding, for a payload published on
/// `device`'s topic. `Ok(None)`: the payload is plain CBOR and `insecure_dev`
/// allows it.
pub fn unprotect(
    ring: &KeyRing,
    device: &DeviceRef,
    payload: &[u8],
    insecure_dev: bool,
) -> Result<Option<(Vec<u8>, Verified)>, ProtectionError> {
    // A report is a CBOR map; a protected message an array (major type 4).
    let looks_protected = payload.first().is_some_and(|b| b >> 5 == 4);
    if !looks_protected {
        return match insecure_dev {
            true => Ok(None),
            false => Err(ProtectionError::Unprotected),
        };
    }
    let (option, ciphertext) = decode_protected(payload)?;
    let option = OscoreOption::decode(&option).map_err(ProtectionError::Option)?;
    let (Some(kid), Some(piv)) = (option.kid.as_deref(), option.partial_iv) else {
        return Err(ProtectionError::Option(if option.kid.is_none() {
            lockfleet_oscore::OptionError::MissingKid
        } else {
            lockfleet_oscore::OptionError::MissingPartialIv
        }));
    };
    if kid != DEVICE_OSCORE_ID {
        return Err(ProtectionError::UnknownKid {
            kid: format!(
                "h'{}'",
                kid.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        });
    }
    let expected = device.oscore_id_context();
    if option.kid_context.as_deref() != Some(&expected[..]) {
        return Err(ProtectionError::ContextMismatch {
            got: String::from_utf8_lossy(option.kid_context.as_deref().unwrap_or_default())
                .chars()
                .take(80)
                .collect(),
            expected: String::from_utf8_lossy(&expected).into_owned(),
        });
    }
    let key = ring
        .get(device)
        .ok_or_else(|| ProtectionError::UnknownContext(device.clone()))?;
    key.check_replay(piv.seq())
        .map_err(ProtectionError::Replay)?;
    let (request, plaintext) = unprotect_request(key.context(), &option, &ciphertext, &[])
        .map_err(ProtectionError::Verify)?;
    let inner = InnerMessage::decode(&plaintext).map_err(|e| ProtectionError::Verify(e.into()))?;
    if inner.code != CODE_POST {
        return Err(ProtectionError::InnerCode(inner.code));
    }
    Ok(Some((inner.payload, Verified { key, request })))
}

#[cfg(test)]
#[path = "protection_tests.rs"]
mod tests;
