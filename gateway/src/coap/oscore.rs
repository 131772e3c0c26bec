//! OSCORE (RFC 8613) on the CoAP endpoint, between deduplication of the
//! outer message and the handler. Sans-I/O: an outer request in, the inner
//! request (or the refusal to send) out; the handler's reply in, the
//! protected reply out. Built on `lockfleet-oscore`; the device profile
//! (ids, ID Context) is `schemas::security`.
//!
//! * Requests (§8.2): the OSCORE option is decoded (§6.1), the device's key
//!   found by the `kid context` (its ID Context, `lk/{lock}`) with the `kid`
//!   every device sends (`h'01'`), the Partial IV checked against the
//!   in-memory replay window (a fast reject, §7.4), the ciphertext verified
//!   and decrypted, and the inner request rebuilt for the handler: the inner
//!   code, the Class E options of the plaintext and the outer Class U
//!   options (Uri-Host, Uri-Port; outer Class E options are discarded:
//!   only protected values count, §4.1).
//! * Refusals (§8.2) go out unprotected with a diagnostic: a malformed
//!   option 4.02, no context for the kid context or kid 4.01, a replay 4.01,
//!   a failed verification 4.00. Without an OSCORE option, `/hb` and `/log`
//!   answer 4.01 unless `--insecure-dev` is on; `/.well-known/core` and
//!   unknown paths are answered as before.
//! * Responses (§8.3, §4.2): the handler's answer (code, Content-Format,
//!   payload) becomes the plaintext of an outer 2.04 with an empty OSCORE
//!   option: no Partial IV, the request's nonce reused. That is safe once
//!   per request nonce, so exactly two kinds of answer are protected: the
//!   handler's immediate answers, a pure function of the verified inner
//!   request (a replay would get the very same bytes), and the answer after
//!   a commit that stored the request's sequence number in the replay
//!   window (no second answer can ever be made for it). Every other answer
//!   to a verified request (the pipeline refused it, storage failed,
//!   shutting down, busy) goes out unprotected, leaving the nonce unused, so
//!   a retry of the same request can still be accepted and answered once.
//!   The endpoint caches the protected bytes for retransmissions and never
//!   protects twice ([`OscoreExchange::protect`] consumes the exchange).
//!
//! This module never touches the socket, the exchange table or the store.

use super::handler::{Reply, PATH_2FA, PATH_HEARTBEAT, PATH_JOB_REPORT, PATH_LOG, PATH_OTP};
use super::message::uint_option;
use crate::ingest::Protection;
use crate::keys::{DeviceKey, KeyRing};
use crate::metrics;
use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};
use dispatcher::keys::DeviceRef;
use lockfleet_oscore::{
    is_class_e, protect_response, unprotect_request, Error, InnerMessage, OscoreOption, RequestId,
    COAP_OPTION_OSCORE,
};
use schemas::security::DEVICE_OSCORE_ID;
use std::sync::Arc;

/// The diagnostic of an unprotected request to a device resource.
/// The diagnostic of an unprotected 2FA entry (refused even with `--insecure-dev`).
pub const UNPROTECTED_2FA_DIAGNOSTIC: &str = "requests to /2fa and /otp carry a passcode or an OTP and must always be OSCORE-protected (RFC 8613) with the lock's key, even with --insecure-dev; see the README's Security section";
pub const UNPROTECTED_DIAGNOSTIC: &str = "requests to /hb and /log must be OSCORE-protected (RFC 8613) with the device's key; see the README's Security section";

/// A request after this layer.
#[derive(Debug)]
pub enum Unwrapped {
    /// It carried no OSCORE option and may be handled as it came.
    Plain(Packet),
    /// It verified: the inner request, and what answering it needs.
    Protected(Packet, OscoreExchange),
}

/// A verified request's binding to its answer (RFC 8613 §8.3): the device's
/// key and the request's `kid`, `kid context` and Partial IV.
#[derive(Debug)]
pub struct OscoreExchange {
    key: Arc<DeviceKey>,
    request: RequestId,
}

impl OscoreExchange {
    /// The device whose key verified the request.
    pub fn device(&self) -> &DeviceRef {
        self.key.device()
    }

    /// What the pipeline and the commit check: device, key, sequence number.
    pub fn protection(&self) -> Protection {
        Protection {
            device: self.key.device().clone(),
            key: self.key.stamp(),
            seq: self.request.piv().seq(),
        }
    }

    /// Tell the in-memory window that a commit accepted this request.
    pub fn accepted(&self) {
        self.key.accepted(self.request.piv().seq());
    }

    /// `reply` protected as the answer to this request: an outer 2.04 with
    /// an empty OSCORE option and the ciphertext of `reply`'s code, options
    /// and payload (§4.2, §8.3). The metric reason of `reply` is kept.
    pub fn protect(self, reply: &Reply) -> Reply {
        let inner = InnerMessage {
            code: u8::from(MessageClass::Response(reply.code)),
            options: reply
                .options()
                .map(|(option, value)| (u16::from(option), uint_option(value)))
                .collect(),
            payload: reply.payload.clone(),
        };
        let protected = inner.encode().map_err(Error::from).and_then(|plaintext| {
            protect_response(self.key.context(), self.request, None, &plaintext, &[])
        });
        match protected {
            Ok(p) => Reply {
                code: ResponseType::Changed,
                content_format: None,
                max_age: None,
                size1: None,
                payload: p.ciphertext,
                refused: reply.refused,
                oscore: Some(p.option),
            },
            // Unreachable with our small answers (AES-CCM takes 64 KiB);
            // said unprotected rather than not at all.
            Err(e) => Reply::error(
                ResponseType::InternalServerError,
                "protect_failed",
                format!("the answer could not be protected ({e}): nothing to fix on the device, report it to the operator"),
            ),
        }
    }
}

/// RFC 8613 §8.2 on `request`: the inner request of a protected one, the
/// request itself when it carries no OSCORE option and may be served so,
/// or the unprotected refusal.
pub fn unprotect(ring: &KeyRing, request: Packet, insecure_dev: bool) -> Result<Unwrapped, Reply> {
    let value = match request.get_option(CoapOption::Oscore) {
        None => return plain(request, insecure_dev),
        Some(values) if values.len() == 1 => values.front().cloned().unwrap_or_default(),
        Some(_) => {
            return Err(Reply::error(
                ResponseType::BadOption,
                "malformed_option",
                "the OSCORE option is repeated: send it once (RFC 8613 §2)",
            ))
        }
    };
    let refuse = |e: Error, hint: &str| refusal(&e, hint);
    let option = OscoreOption::decode(&value).map_err(|e| {
        refuse(
            e.into(),
            "send the option value as RFC 8613 §6.1 lays it out",
        )
    })?;
    let (Some(kid), Some(piv)) = (option.kid.as_deref(), option.partial_iv) else {
        let e = if option.kid.is_none() {
            lockfleet_oscore::OptionError::MissingKid
        } else {
            lockfleet_oscore::OptionError::MissingPartialIv
        };
        return Err(refuse(
            e.into(),
            "a request carries its kid and Partial IV (RFC 8613 §6.1)",
        ));
    };
    if kid != DEVICE_OSCORE_ID {
        let e = Error::UnknownKid {
            kid: kid.to_vec(),
            expected: DEVICE_OSCORE_ID.to_vec(),
        };
        return Err(refuse(
            e,
            "every device sends kid h'01' with its ID Context as kid context",
        ));
    }
    let Some(id_context) = option.kid_context.as_deref() else {
        return Err(unknown_context(
            "the request carries no kid context: send the device's ID Context (lk/{lock id}) in every request (RFC 8613 §6.1, flag h)",
        ));
    };
    let Some(device) = DeviceRef::from_oscore_id_context(id_context) else {
        return Err(unknown_context(
            "the kid context names no device: it is the device's ID Context, lk/{lock id} or br/{bridge id}",
        ));
    };
    let Some(key) = ring.get(&device) else {
        return Err(unknown_context(&format!(
            "no key is registered for {device}: register it (gateway devices import) and protect with the secret it was given"
        )));
    };
    key.check_replay(piv.seq()).map_err(|r| {
        refuse(
            r.into(),
            "nothing was stored; protect every new request with a new sequence number (RFC 8613 §7.4)",
        )
    })?;
    let (request_id, plaintext) = unprotect_request(key.context(), &option, &request.payload, &[])
        .map_err(|e| {
            refuse(
                e,
                "nothing was stored; protect with the device's current key (RFC 8613 §8.2)",
            )
        })?;
    let inner = InnerMessage::decode(&plaintext).map_err(|e| {
        refuse(
            e.into(),
            "the decrypted request is not a CoAP code, options and payload (RFC 8613 §5.3)",
        )
    })?;
    metrics::oscore_verified("coap");
    Ok(Unwrapped::Protected(
        inner_request(&request, inner),
        OscoreExchange {
            key,
            request: request_id,
        },
    ))
}

/// A request without an OSCORE option: device resources need one unless
/// `insecure_dev`; discovery and unknown paths are answered as before.
fn plain(request: Packet, insecure_dev: bool) -> Result<Unwrapped, Reply> {
    // A passcode or an OTP never travels in the clear, not even in development.
    let secret_resource = request.get_option(CoapOption::UriPath).is_some_and(|path| {
        path.len() == 1
            && path
                .front()
                .is_some_and(|p| p == PATH_2FA.as_bytes() || p == PATH_OTP.as_bytes())
    });
    if secret_resource {
        return Err(Reply::error(
            ResponseType::Unauthorized,
            "unprotected",
            UNPROTECTED_2FA_DIAGNOSTIC,
        ));
    }
    let device_resource = request.get_option(CoapOption::UriPath).is_some_and(|path| {
        path.len() == 1
            && path.front().is_some_and(|p| {
                [PATH_HEARTBEAT, PATH_LOG, PATH_JOB_REPORT]
                    .iter()
                    .any(|d| p == d.as_bytes())
            })
    });
    match (device_resource, insecure_dev) {
        (false, _) => Ok(Unwrapped::Plain(request)),
        (true, true) => {
            metrics::oscore_unprotected_accepted("coap");
            Ok(Unwrapped::Plain(request))
        }
        (true, false) => Err(Reply::error(
            ResponseType::Unauthorized,
            "unprotected",
            UNPROTECTED_DIAGNOSTIC,
        )),
    }
}

/// The request the handler sees: the outer header and token, the outer
/// Class U options, and the inner code, options and payload.
fn inner_request(outer: &Packet, inner: InnerMessage) -> Packet {
    let mut p = Packet::new();
    p.header = outer.header.clone();
    p.header.code = MessageClass::from(inner.code);
    p.set_token(outer.get_token().to_vec());
    for (&number, values) in outer.options() {
        if number == COAP_OPTION_OSCORE || is_class_e(number) {
            continue;
        }
        for value in values {
            p.add_option(CoapOption::from(number), value.clone());
        }
    }
    for (number, value) in inner.options {
        p.add_option(CoapOption::from(number), value);
    }
    p.payload = inner.payload;
    p
}

/// The unprotected answer to a request that failed `e` (RFC 8613 §8.2).
fn refusal(e: &Error, hint: &str) -> Reply {
    let code = match e.coap_code() {
        0x80 => ResponseType::BadRequest,
        0x81 => ResponseType::Unauthorized,
        0x82 => ResponseType::BadOption,
        _ => ResponseType::InternalServerError,
    };
    Reply::error(code, e.reason(), format!("{e}: {hint}"))
}

/// 4.01: no security context matches the request (RFC 8613 §8.2 step 2).
fn unknown_context(message: &str) -> Reply {
    Reply::error(ResponseType::Unauthorized, "unknown_context", message)
}

#[cfg(test)]
#[path = "oscore_tests.rs"]
mod tests;
