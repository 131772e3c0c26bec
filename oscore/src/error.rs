//! The one error type of the crate. Every variant is something a peer or a
//! configuration got wrong; [`Error::reason`] is a stable, low-cardinality
//! label for metrics, and the `Display` text says what was wrong without ever
//! including key material (ids and lengths only).

use crate::inner::InnerError;
use crate::option::OptionError;
use crate::replay::{Exhausted, Replay};

/// What went wrong while deriving a context or (un)protecting a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The OSCORE option value is not well formed (RFC 8613 §6.1), or a
    /// request lacks its `kid` or Partial IV.
    #[error("malformed OSCORE option: {0}")]
    MalformedOption(#[from] OptionError),

    /// The message's `kid` does not name this context's peer: the caller
    /// looked up the wrong context, or the device is unknown.
    #[error("kid {} does not name this context's peer {}", hex(.kid), hex(.expected))]
    UnknownKid {
        /// The `kid` the message carried (or the request was made with).
        kid: Vec<u8>,
        /// The id this context expected.
        expected: Vec<u8>,
    },

    /// The message's `kid context` differs from this context's ID Context.
    #[error(
        "kid context {} does not match this context's ID Context {}",
        hex(.kid_context),
        .expected.as_deref().map_or_else(|| "(none)".to_owned(), hex)
    )]
    KidContextMismatch {
        /// The `kid context` the message carried.
        kid_context: Vec<u8>,
        /// This context's ID Context, if it has one.
        expected: Option<Vec<u8>>,
    },

    /// The AEAD tag did not verify: forged or corrupted ciphertext, or a
    /// context with the wrong keys.
    #[error("decryption failed: the authentication tag does not verify")]
    DecryptFailed,

    /// The ciphertext cannot even hold the tag and a code byte.
    #[error("ciphertext of {len} bytes is shorter than a code byte and the {tag}-byte tag", tag = crate::TAG_LEN)]
    CiphertextTooShort {
        /// The ciphertext length received.
        len: usize,
    },

    /// The Partial IV was seen before or is older than the replay window
    /// (RFC 8613 §7.4).
    #[error(transparent)]
    Replay(#[from] Replay),

    /// The decrypted (or given) inner plaintext is not a valid CoAP
    /// code/options/payload sequence (RFC 8613 §5.3).
    #[error("malformed inner plaintext: {0}")]
    MalformedInner(#[from] InnerError),

    /// A configuration named an algorithm this crate does not implement.
    #[error("unsupported {what} algorithm {got}; only AES-CCM-16-64-128 with HKDF-SHA256 is implemented")]
    UnsupportedAlg {
        /// Which algorithm slot (`AEAD` or `HKDF`).
        what: &'static str,
        /// The value that was given.
        got: String,
    },

    /// The context parameters break RFC 8613 §3.3 (id lengths, secret
    /// length, equal ids) or a call was made that the context cannot serve.
    #[error("bad security context parameters: {0}")]
    BadParams(&'static str),

    /// The plaintext exceeds what AES-CCM with a 13-byte nonce can protect.
    #[error("plaintext of {len} bytes exceeds the AES-CCM limit of {max} bytes", max = crate::MAX_PLAINTEXT_LEN)]
    PlaintextTooLarge {
        /// The plaintext length given.
        len: usize,
    },

    /// The sender sequence number space (2^40) is used up; re-key.
    #[error(transparent)]
    SequenceExhausted(#[from] Exhausted),
}

impl Error {
    /// A stable label for metrics (`reason="..."`): one per kind of failure,
    /// never containing data from the message.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MalformedOption(_) => "malformed_option",
            Error::UnknownKid { .. } => "unknown_kid",
            Error::KidContextMismatch { .. } => "kid_context_mismatch",
            Error::DecryptFailed => "decrypt_failed",
            Error::CiphertextTooShort { .. } => "malformed_ciphertext",
            Error::Replay(_) => "replay",
            Error::MalformedInner(_) => "malformed_inner",
            Error::UnsupportedAlg { .. } => "unsupported_alg",
            Error::BadParams(_) => "bad_params",
            Error::PlaintextTooLarge { .. } => "plaintext_too_large",
            Error::SequenceExhausted(_) => "sequence_exhausted",
        }
    }
}

/// CoAP 4.00 Bad Request.
const BAD_REQUEST: u8 = 0x80;
/// CoAP 4.01 Unauthorized.
const UNAUTHORIZED: u8 = 0x81;
/// CoAP 4.02 Bad Option.
const BAD_OPTION: u8 = 0x82;
/// CoAP 5.00 Internal Server Error.
const INTERNAL_SERVER_ERROR: u8 = 0xa0;

impl Error {
    /// The (unprotected) CoAP error code a server answers a request with
    /// that failed this way, per RFC 8613 §8.2: 4.02 for an option that does
    /// not decode, 4.01 when no context matches or on replay, 4.00 when
    /// decryption fails; 5.00 for failures that are the server's own
    /// (configuration, sequence exhaustion).
    pub fn coap_code(&self) -> u8 {
        match self {
            Error::MalformedOption(_) => BAD_OPTION,
            Error::UnknownKid { .. } | Error::KidContextMismatch { .. } | Error::Replay(_) => {
                UNAUTHORIZED
            }
            Error::DecryptFailed | Error::CiphertextTooShort { .. } | Error::MalformedInner(_) => {
                BAD_REQUEST
            }
            Error::UnsupportedAlg { .. }
            | Error::BadParams(_)
            | Error::PlaintextTooLarge { .. }
            | Error::SequenceExhausted(_) => INTERNAL_SERVER_ERROR,
        }
    }
}

/// Bytes in CBOR diagnostic notation (`h'4c01'`), for ids in messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(3 + 2 * bytes.len());
    s.push_str("h'");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kid_message_names_both_ids_in_hex() {
        let e = Error::UnknownKid {
            kid: vec![0x4c, 0x01],
            expected: vec![],
        };
        assert_eq!(
            e.to_string(),
            "kid h'4c01' does not name this context's peer h''"
        );
        assert_eq!(e.reason(), "unknown_kid");
        assert_eq!(e.coap_code(), 0x81);
    }

    #[test]
    fn coap_codes_follow_rfc8613_8_2() {
        assert_eq!(Error::DecryptFailed.coap_code(), 0x80);
        assert_eq!(
            Error::MalformedOption(OptionError::MissingKid).coap_code(),
            0x82
        );
        assert_eq!(
            Error::Replay(Replay::AlreadySeen { seq: 1 }).coap_code(),
            0x81
        );
        assert_eq!(Error::BadParams("x").coap_code(), 0xa0);
    }

    #[test]
    fn kid_context_mismatch_without_an_id_context_says_none() {
        let e = Error::KidContextMismatch {
            kid_context: vec![0xaa],
            expected: None,
        };
        assert_eq!(
            e.to_string(),
            "kid context h'aa' does not match this context's ID Context (none)"
        );
    }
}
