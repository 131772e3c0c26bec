//! Message protection for both roles (RFC 8613 §5 and §8): the server's
//! [`unprotect_request`] and [`protect_response`], the client's
//! [`protect_request`] and [`unprotect_response`], and the AAD they share
//! (§5.4).
//!
//! These functions are pure: they neither check nor update replay state nor
//! pick sequence numbers. The caller brings a [`PartialIv`] from a
//! [`crate::SenderSequence`] whose reservation is durable, checks the
//! request's Partial IV against a [`crate::ReplayWindow`] before
//! [`unprotect_request`], and records it with `accept` after it verified.
//!
//! `class_i` is the Class I options of the message, CoAP-encoded, that go
//! into the AAD (§5.4). RFC 8613 defines none, so every caller passes `&[]`
//! today; the parameter keeps the AAD complete should one be defined.

use crate::context::SecurityContext;
use crate::error::Error;
use crate::inner::InnerError;
use crate::option::{OptionError, OscoreOption, PartialIv};
use crate::AEAD_AES_CCM_16_64_128;

/// `oscore_version` of the external AAD (RFC 8613 §5.4).
const OSCORE_VERSION: u8 = 1;

/// A protected message: the OSCORE option value and the ciphertext (the
/// outer payload), kept apart so they cannot be swapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// The OSCORE option value (empty for a response without Partial IV).
    pub option: Vec<u8>,
    /// The ciphertext including the 8-byte tag.
    pub ciphertext: Vec<u8>,
}

/// What binds a response to its request (RFC 8613 §5.4, §8.3): the request's
/// `kid`, `kid context` and Partial IV.
///
/// Made only by [`unprotect_request`] and [`protect_request`]. It is not
/// `Clone`, and [`protect_response`] consumes it: a response without its own
/// Partial IV reuses the request's nonce, which is safe exactly once. A
/// retransmitted request is answered with the cached protected response,
/// never protected again.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestId {
    kid: Vec<u8>,
    kid_context: Option<Vec<u8>>,
    piv: PartialIv,
}

impl RequestId {
    /// The request's `kid` (the client's Sender ID).
    pub fn kid(&self) -> &[u8] {
        &self.kid
    }

    /// The request's `kid context`, if it carried one.
    pub fn kid_context(&self) -> Option<&[u8]> {
        self.kid_context.as_deref()
    }

    /// The request's Partial IV; `.seq()` is what the replay window sees.
    pub fn piv(&self) -> PartialIv {
        self.piv
    }
}

/// Client: protects a request's inner plaintext with sequence number `piv`
/// (RFC 8613 §8.1). `piv` must come from a durably reserved
/// [`crate::SenderSequence`]; using one twice reuses a nonce.
/// `include_kid_context` puts the ID Context into the option (§6.1), as
/// Appendix C.6 does.
pub fn protect_request(
    ctx: &SecurityContext,
    piv: PartialIv,
    plaintext: &[u8],
    include_kid_context: bool,
    class_i: &[u8],
) -> Result<(Protected, RequestId), Error> {
    if plaintext.is_empty() {
        return Err(InnerError::Empty.into());
    }
    let kid_context = match (include_kid_context, ctx.id_context()) {
        (false, _) => None,
        (true, Some(c)) => Some(c.to_vec()),
        (true, None) => return Err(Error::BadParams("no ID Context to include")),
    };
    let nonce = ctx.nonce(ctx.sender_id(), &piv);
    let ciphertext = ctx.seal(&nonce, &aad(ctx.sender_id(), &piv, class_i), plaintext)?;
    let option = OscoreOption {
        partial_iv: Some(piv),
        kid_context: kid_context.clone(),
        kid: Some(ctx.sender_id().to_vec()),
    }
    .encode()?;
    let request = RequestId {
        kid: ctx.sender_id().to_vec(),
        kid_context,
        piv,
    };
    Ok((Protected { option, ciphertext }, request))
}

/// Server: verifies and decrypts a request (RFC 8613 §8.2). The option must
/// carry a `kid` equal to the context's Recipient ID and a Partial IV; a
/// `kid context`, when present, must equal the context's ID Context.
///
/// Replay is the caller's: check `option.partial_iv` against the window
/// before, and `accept` it after this returns `Ok`.
pub fn unprotect_request(
    ctx: &SecurityContext,
    option: &OscoreOption,
    ciphertext: &[u8],
    class_i: &[u8],
) -> Result<(RequestId, Vec<u8>), Error> {
    let kid = option.kid.as_deref().ok_or(OptionError::MissingKid)?;
    let piv = option.partial_iv.ok_or(OptionError::MissingPartialIv)?;
    if kid != ctx.recipient_id() {
        return Err(Error::UnknownKid {
            kid: kid.to_vec(),
            expected: ctx.recipient_id().to_vec(),
        });
    }
    check_kid_context(ctx, option.kid_context.as_deref())?;

    let nonce = ctx.nonce(kid, &piv);
    let plaintext = ctx.open(&nonce, &aad(kid, &piv, class_i), ciphertext)?;
    let request = RequestId {
        kid: kid.to_vec(),
        kid_context: option.kid_context.clone(),
        piv,
    };
    Ok((request, plaintext))
}

/// Server: protects the response to `request` (RFC 8613 §8.3).
///
/// * `own_piv: None`: no Partial IV in the response; the request's nonce is
///   reused (safe once, hence `request` is consumed). The usual answer.
/// * `own_piv: Some(p)`: the server's own sequence number `p` (from its
///   durably reserved [`crate::SenderSequence`]) forms the nonce and is sent
///   in the option, as Appendix C.8 shows.
pub fn protect_response(
    ctx: &SecurityContext,
    request: RequestId,
    own_piv: Option<PartialIv>,
    plaintext: &[u8],
    class_i: &[u8],
) -> Result<Protected, Error> {
    if plaintext.is_empty() {
        return Err(InnerError::Empty.into());
    }
    if request.kid != ctx.recipient_id() {
        return Err(Error::UnknownKid {
            kid: request.kid,
            expected: ctx.recipient_id().to_vec(),
        });
    }
    let nonce = match &own_piv {
        None => ctx.nonce(&request.kid, &request.piv),
        Some(p) => ctx.nonce(ctx.sender_id(), p),
    };
    let aad = aad(&request.kid, &request.piv, class_i);
    let ciphertext = ctx.seal(&nonce, &aad, plaintext)?;
    let option = OscoreOption {
        partial_iv: own_piv,
        kid_context: None,
        kid: None,
    }
    .encode()?;
    Ok(Protected { option, ciphertext })
}

/// Client: verifies and decrypts the response to `request` (RFC 8613 §8.4).
/// A Partial IV in the response means the server used its own nonce; one
/// absent means the request's. A `kid` or `kid context` in the response, if
/// present, must name this context's peer.
///
/// Responses carrying their own Partial IV (e.g. notifications) can be
/// replay-checked by the caller against a window of the server's sequence
/// numbers; a response without one is bound to its request and is accepted
/// once by forgetting the `RequestId`.
pub fn unprotect_response(
    ctx: &SecurityContext,
    request: &RequestId,
    option: &OscoreOption,
    ciphertext: &[u8],
    class_i: &[u8],
) -> Result<Vec<u8>, Error> {
    if request.kid != ctx.sender_id() {
        return Err(Error::UnknownKid {
            kid: request.kid.clone(),
            expected: ctx.sender_id().to_vec(),
        });
    }
    if let Some(kid) = option.kid.as_deref() {
        if kid != ctx.recipient_id() {
            return Err(Error::UnknownKid {
                kid: kid.to_vec(),
                expected: ctx.recipient_id().to_vec(),
            });
        }
    }
    check_kid_context(ctx, option.kid_context.as_deref())?;

    let nonce = match &option.partial_iv {
        None => ctx.nonce(&request.kid, &request.piv),
        Some(p) => ctx.nonce(ctx.recipient_id(), p),
    };
    ctx.open(
        &nonce,
        &aad(&request.kid, &request.piv, class_i),
        ciphertext,
    )
}

/// A `kid context`, when a message carries one, must equal the ID Context.
fn check_kid_context(ctx: &SecurityContext, kid_context: Option<&[u8]>) -> Result<(), Error> {
    match kid_context {
        Some(got) if ctx.id_context() != Some(got) => Err(Error::KidContextMismatch {
            kid_context: got.to_vec(),
            expected: ctx.id_context().map(<[u8]>::to_vec),
        }),
        _ => Ok(()),
    }
}

/// The AEAD additional data (RFC 8613 §5.4): the COSE `Enc_structure`
/// `["Encrypt0", h'', external_aad]` with
/// `external_aad = bstr .cbor [oscore_version: 1, algorithms: [alg_aead],
/// request_kid: bstr, request_piv: bstr, options: bstr]`.
pub(crate) fn aad(request_kid: &[u8], request_piv: &PartialIv, class_i: &[u8]) -> Vec<u8> {
    let mut external = minicbor::Encoder::new(Vec::with_capacity(16 + class_i.len()));
    // Writing to a Vec cannot fail (its error type is Infallible).
    external
        .array(5)
        .and_then(|e| e.u8(OSCORE_VERSION))
        .and_then(|e| e.array(1))
        .and_then(|e| e.i64(AEAD_AES_CCM_16_64_128))
        .and_then(|e| e.bytes(request_kid))
        .and_then(|e| e.bytes(request_piv.as_bytes()))
        .and_then(|e| e.bytes(class_i))
        .expect("CBOR into a Vec is infallible");
    let external = external.into_writer();

    let mut enc = minicbor::Encoder::new(Vec::with_capacity(16 + external.len()));
    enc.array(3)
        .and_then(|e| e.str("Encrypt0"))
        .and_then(|e| e.bytes(&[]))
        .and_then(|e| e.bytes(&external))
        .expect("CBOR into a Vec is infallible");
    enc.into_writer()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8613 Appendix C.4: the AAD of the request with kid h'' and PIV 0x14.
    #[test]
    fn rfc8613_c4_aad() {
        let piv = PartialIv::from_seq(20).expect("in range");
        assert_eq!(
            hex::encode(aad(&[], &piv, &[])),
            "8368456e63727970743040488501810a40411440"
        );
    }

    // RFC 8613 Appendix C.5: kid h'00' in the AAD.
    #[test]
    fn rfc8613_c5_aad() {
        let piv = PartialIv::from_seq(20).expect("in range");
        assert_eq!(
            hex::encode(aad(&[0], &piv, &[])),
            "8368456e63727970743040498501810a4100411440"
        );
    }
}
