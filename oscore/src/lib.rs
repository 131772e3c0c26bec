//! A small, transport-neutral, sans-I/O core of OSCORE (RFC 8613): the
//! security context and its key derivation, the OSCORE option, the inner
//! plaintext, request and response protection for both roles, and the replay
//! and sender-sequence state as plain data that the caller persists.
//!
//! It does no I/O, reads no clock and spawns nothing: a CoAP adapter (or an
//! MQTT one, see below) decodes the outer message, looks the context up by
//! the option's `kid`, checks the [`ReplayWindow`], calls
//! [`unprotect_request`], durably records [`ReplayWindow::accept`], handles
//! the request and calls [`protect_response`].
//!
//! | module | owns | RFC 8613 |
//! | --- | --- | --- |
//! | [`context`] | [`SecurityContext::derive`], nonces, AEAD seal/open | §3, §5.2 |
//! | [`option`] | the OSCORE option value, [`PartialIv`] | §6.1 |
//! | [`inner`] | the inner plaintext, option classes | §4.1, §5.3 |
//! | [`protect`] | request/response protection, the AAD | §5.4, §8 |
//! | [`replay`] | [`ReplayWindow`], [`SenderSequence`] | §7.4, App. B.1.1 |
//! | [`error`] | [`Error`] and its stable metric [`Error::reason`] | |
//!
//! Only the RFC 8613 default algorithms are implemented: AEAD
//! AES-CCM-16-64-128 (COSE algorithm 10) and HKDF-SHA256. Configuration that
//! names another algorithm is refused by [`AeadAlgorithm::from_cose`] /
//! [`HkdfAlgorithm::from_name`] with [`Error::UnsupportedAlg`].
//!
//! # Carrying protected payloads outside CoAP (the MQTT profile)
//!
//! The same context protects payloads that travel over MQTT. There is no
//! CoAP message there, so the inner plaintext is an [`InnerMessage`] with no
//! options: a device uplink is a request with code [`CODE_POST`] (0.02) and
//! the CBOR payload; the gateway's answer is a response with code
//! [`CODE_CHANGED`] (2.04). The MQTT payload carries the encoded OSCORE
//! option and the ciphertext side by side (the framing is the caller's, e.g.
//! a CBOR array `[option, ciphertext]`); the receiver decodes the option with
//! [`OscoreOption::decode`] and proceeds exactly as for CoAP, Class I options
//! empty. Because every answer reuses the request's nonce (no Partial IV),
//! answers must be correlated to their request by the transport (topic or
//! correlation data), never sent twice for one request.
#![forbid(unsafe_code)]

pub mod context;
pub mod error;
pub mod inner;
pub mod option;
pub mod protect;
pub mod replay;

pub use context::{AeadAlgorithm, HkdfAlgorithm, Params, SecurityContext};
pub use error::Error;
pub use inner::{is_class_e, is_class_u, InnerError, InnerMessage};
pub use option::{OptionError, OscoreOption, PartialIv};
pub use protect::{
    protect_request, protect_response, unprotect_request, unprotect_response, Protected, RequestId,
};
pub use replay::{
    Exhausted, InvalidWindowParts, Next, Replay, ReplayWindow, SenderSequence,
    DEFAULT_RESERVATION_STEP, REPLAY_WINDOW_WIDTH,
};

/// AES-CCM-16-64-128 key length in bytes (RFC 8613 §3.2.1, COSE alg 10).
pub const KEY_LEN: usize = 16;

/// AES-CCM-16-64-128 nonce length in bytes; also the Common IV length.
pub const NONCE_LEN: usize = 13;

/// AES-CCM-16-64-128 authentication tag length in bytes (the "64").
pub const TAG_LEN: usize = 8;

/// Longest Sender/Recipient ID: nonce length − 6 (RFC 8613 §3.3), so that
/// the ID fits the nonce construction of §5.2.
pub const MAX_ID_LEN: usize = NONCE_LEN - 6;

/// Shortest master secret we accept. RFC 8613 §3.3 asks for a secret of
/// sufficient entropy; 16 bytes matches the 128-bit key it derives.
pub const MIN_MASTER_SECRET_LEN: usize = 16;

/// Longest ID Context: its length travels in one byte of the OSCORE option
/// (`s`, RFC 8613 §6.1).
pub const MAX_ID_CONTEXT_LEN: usize = u8::MAX as usize;

/// Longest Partial IV in bytes (RFC 8613 §6.1: `n` = 6 and 7 are reserved).
pub const MAX_PIV_LEN: usize = 5;

/// Highest sender sequence number: 2^40 − 1, the largest value a 5-byte
/// Partial IV holds (RFC 8613 §7.2.1). A context that reaches it must be
/// re-keyed.
pub const MAX_SEQ: u64 = (1 << 40) - 1;

/// Longest plaintext AES-CCM with a 13-byte nonce can protect: the length
/// field `L` = 15 − 13 = 2 bytes (RFC 3610 §2), so 2^16 − 1 bytes.
pub const MAX_PLAINTEXT_LEN: usize = (1 << 16) - 1;

/// COSE algorithm identifier of AES-CCM-16-64-128 (RFC 9053 §4.2).
pub const AEAD_AES_CCM_16_64_128: i64 = 10;

/// CoAP option number of the OSCORE option (RFC 8613 §2).
pub const COAP_OPTION_OSCORE: u16 = 9;

/// CoAP code 0.02 POST: the inner code of a non-CoAP uplink.
pub const CODE_POST: u8 = 0x02;

/// CoAP code 2.04 Changed: the inner code of a non-CoAP answer.
pub const CODE_CHANGED: u8 = 0x44;
