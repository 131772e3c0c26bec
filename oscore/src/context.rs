//! The OSCORE security context (RFC 8613 §3): derivation of the Sender Key,
//! Recipient Key and Common IV from the master secret (§3.2), the §3.3
//! limits on its parameters, the AEAD nonce (§5.2), and AES-CCM seal/open.
//!
//! The keys live only here: they are wiped when the context is dropped,
//! `Debug` prints the ids alone, and the other modules reach the keys only
//! through the crate-private `seal` / `open` methods. The mutable parts of
//! a context (sequence numbers, replay window) are not in it: they are
//! plain data in [`crate::replay`], so the caller can persist them and
//! share one context across tasks.

use std::fmt;

use aes::Aes128;
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U13, U8};
use ccm::Ccm;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::error::{hex, Error};
use crate::option::PartialIv;
use crate::{
    AEAD_AES_CCM_16_64_128, KEY_LEN, MAX_ID_CONTEXT_LEN, MAX_ID_LEN, MAX_PIV_LEN,
    MAX_PLAINTEXT_LEN, MIN_MASTER_SECRET_LEN, NONCE_LEN, TAG_LEN,
};

/// AES-CCM with a 16-byte block, 8-byte tag and 13-byte nonce: COSE alg 10.
type AesCcm16_64_128 = Ccm<Aes128, U8, U13>;

/// The AEAD algorithms this crate implements (RFC 8613 §3.1: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AeadAlgorithm {
    /// AES-CCM-16-64-128, COSE algorithm 10.
    #[default]
    AesCcm16_64_128,
}

impl AeadAlgorithm {
    /// The algorithm named by a COSE algorithm identifier, as a pairing
    /// record or an ACE profile would carry it.
    pub fn from_cose(alg: i64) -> Result<Self, Error> {
        match alg {
            AEAD_AES_CCM_16_64_128 => Ok(Self::AesCcm16_64_128),
            other => Err(Error::UnsupportedAlg {
                what: "AEAD",
                got: other.to_string(),
            }),
        }
    }

    /// The algorithm named as in aiocoap's `settings.json` (`"algorithm"`).
    pub fn from_name(name: &str) -> Result<Self, Error> {
        match name {
            "AES-CCM-16-64-128" => Ok(Self::AesCcm16_64_128),
            other => Err(Error::UnsupportedAlg {
                what: "AEAD",
                got: other.to_owned(),
            }),
        }
    }
}

/// The key derivation functions this crate implements (RFC 8613 §3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HkdfAlgorithm {
    /// HKDF with SHA-256.
    #[default]
    Sha256,
}

impl HkdfAlgorithm {
    /// The KDF named as in aiocoap's `settings.json` (`"kdf-hashfun"`) or
    /// in prose (`"HKDF SHA-256"`).
    pub fn from_name(name: &str) -> Result<Self, Error> {
        match name {
            "sha256" | "SHA-256" | "HKDF SHA-256" | "HKDF-SHA256" => Ok(Self::Sha256),
            other => Err(Error::UnsupportedAlg {
                what: "HKDF",
                got: other.to_owned(),
            }),
        }
    }
}

/// Input to [`SecurityContext::derive`] (RFC 8613 §3.2). An empty
/// `master_salt` is the RFC's default (HKDF's all-zero salt).
#[derive(Clone, Copy)]
pub struct Params<'a> {
    /// The pre-shared master secret; at least [`MIN_MASTER_SECRET_LEN`] bytes.
    pub master_secret: &'a [u8],
    /// The master salt; empty when none was provisioned.
    pub master_salt: &'a [u8],
    /// Our Sender ID (the `kid` of our requests); at most [`MAX_ID_LEN`] bytes.
    pub sender_id: &'a [u8],
    /// The peer's Sender ID; at most [`MAX_ID_LEN`] bytes, not equal to ours.
    pub recipient_id: &'a [u8],
    /// The ID Context, if the deployment uses one (at most 255 bytes).
    pub id_context: Option<&'a [u8]>,
}

impl fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Params")
            .field(
                "master_secret",
                &format_args!("<{} bytes>", self.master_secret.len()),
            )
            .field(
                "master_salt",
                &format_args!("<{} bytes>", self.master_salt.len()),
            )
            .field("sender_id", &format_args!("{}", hex(self.sender_id)))
            .field("recipient_id", &format_args!("{}", hex(self.recipient_id)))
            .field("id_context", &self.id_context.map(hex))
            .finish()
    }
}

/// The derived key material; wiped on drop.
struct Keys {
    sender_key: [u8; KEY_LEN],
    recipient_key: [u8; KEY_LEN],
    common_iv: [u8; NONCE_LEN],
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.sender_key.zeroize();
        self.recipient_key.zeroize();
        self.common_iv.zeroize();
    }
}

/// An OSCORE security context: ids and derived keys (RFC 8613 §3.1). It is
/// immutable; sequence and replay state live in [`crate::replay`].
pub struct SecurityContext {
    sender_id: Id,
    recipient_id: Id,
    /// A boxed slice, not a `Vec`: a gateway holds one context per device
    /// (a million of them), so the spare capacity word is worth saving.
    id_context: Option<Box<[u8]>>,
    keys: Keys,
}

/// A Sender or Recipient ID (at most [`MAX_ID_LEN`] bytes, RFC 8613 §3.3)
/// kept inline: 8 bytes instead of a `Vec`'s 24 plus a heap block, which a
/// gateway holding a million contexts pays twice per context.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Id {
    len: u8,
    bytes: [u8; MAX_ID_LEN],
}

impl Id {
    /// `None` when `id` is longer than [`MAX_ID_LEN`].
    fn new(id: &[u8]) -> Option<Id> {
        let mut bytes = [0; MAX_ID_LEN];
        bytes.get_mut(..id.len())?.copy_from_slice(id);
        Some(Id {
            len: id.len() as u8,
            bytes,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl SecurityContext {
    /// Derives the context from its parameters (RFC 8613 §3.2), enforcing
    /// the §3.3 limits: ids at most [`MAX_ID_LEN`] bytes and different from
    /// each other, a master secret of at least [`MIN_MASTER_SECRET_LEN`].
    pub fn derive(params: &Params<'_>) -> Result<Self, Error> {
        if params.master_secret.len() < MIN_MASTER_SECRET_LEN {
            return Err(Error::BadParams("master secret shorter than 16 bytes"));
        }
        let sender_id =
            Id::new(params.sender_id).ok_or(Error::BadParams("sender id longer than 7 bytes"))?;
        let recipient_id = Id::new(params.recipient_id)
            .ok_or(Error::BadParams("recipient id longer than 7 bytes"))?;
        if params.sender_id == params.recipient_id {
            // Equal ids give equal keys and nonces in both directions.
            return Err(Error::BadParams("sender id equals recipient id"));
        }
        if params
            .id_context
            .is_some_and(|c| c.len() > MAX_ID_CONTEXT_LEN)
        {
            return Err(Error::BadParams("id context longer than 255 bytes"));
        }

        let hkdf = Hkdf::<Sha256>::new(Some(params.master_salt), params.master_secret);
        let mut keys = Keys {
            sender_key: [0; KEY_LEN],
            recipient_key: [0; KEY_LEN],
            common_iv: [0; NONCE_LEN],
        };
        let ctx = params.id_context;
        expand(
            &hkdf,
            &info(params.sender_id, ctx, "Key", KEY_LEN),
            &mut keys.sender_key,
        );
        expand(
            &hkdf,
            &info(params.recipient_id, ctx, "Key", KEY_LEN),
            &mut keys.recipient_key,
        );
        expand(&hkdf, &info(&[], ctx, "IV", NONCE_LEN), &mut keys.common_iv);

        Ok(Self {
            sender_id,
            recipient_id,
            id_context: params.id_context.map(Box::from),
            keys,
        })
    }

    /// Our Sender ID: the `kid` of requests we protect.
    pub fn sender_id(&self) -> &[u8] {
        self.sender_id.as_slice()
    }

    /// The peer's Sender ID: the `kid` of requests we accept.
    pub fn recipient_id(&self) -> &[u8] {
        self.recipient_id.as_slice()
    }

    /// The ID Context, if any.
    pub fn id_context(&self) -> Option<&[u8]> {
        self.id_context.as_deref()
    }

    /// The AEAD nonce for `id` and `piv` (RFC 8613 §5.2): the id's length,
    /// the id left-padded to 7 bytes, the Partial IV left-padded to 5 bytes,
    /// XORed with the Common IV.
    pub(crate) fn nonce(&self, id: &[u8], piv: &PartialIv) -> [u8; NONCE_LEN] {
        // Ids are bounded by MAX_ID_LEN at derive() and in the callers'
        // kid checks, so the slices below are in range.
        debug_assert!(id.len() <= MAX_ID_LEN);
        let piv = piv.as_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0] = id.len() as u8;
        nonce[1 + MAX_ID_LEN - id.len()..1 + MAX_ID_LEN].copy_from_slice(id);
        nonce[NONCE_LEN - piv.len()..].copy_from_slice(piv);
        for (n, iv) in nonce.iter_mut().zip(self.keys.common_iv) {
            *n ^= iv;
        }
        nonce
    }

    /// Encrypts `plaintext` with the Sender Key: ciphertext followed by the
    /// 8-byte tag.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(Error::PlaintextTooLarge {
                len: plaintext.len(),
            });
        }
        let cipher = AesCcm16_64_128::new(&self.keys.sender_key.into());
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = cipher
            .encrypt_inout_detached(&(*nonce).into(), aad, out.as_mut_slice().into())
            .map_err(|_| Error::PlaintextTooLarge {
                len: plaintext.len(),
            })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Verifies and decrypts `ciphertext` (tag last) with the Recipient Key.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        // A plaintext holds at least its code byte.
        if ciphertext.len() <= TAG_LEN {
            return Err(Error::CiphertextTooShort {
                len: ciphertext.len(),
            });
        }
        let (body, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| Error::DecryptFailed)?;
        let cipher = AesCcm16_64_128::new(&self.keys.recipient_key.into());
        let mut out = body.to_vec();
        cipher
            .decrypt_inout_detached(
                &(*nonce).into(),
                aad,
                out.as_mut_slice().into(),
                &tag.into(),
            )
            .map_err(|_| Error::DecryptFailed)?;
        Ok(out)
    }

    #[cfg(test)]
    pub(crate) fn sender_key_for_test_vectors(&self) -> &[u8] {
        &self.keys.sender_key
    }

    #[cfg(test)]
    pub(crate) fn recipient_key_for_test_vectors(&self) -> &[u8] {
        &self.keys.recipient_key
    }

    #[cfg(test)]
    pub(crate) fn common_iv_for_test_vectors(&self) -> &[u8] {
        &self.keys.common_iv
    }
}

impl fmt::Debug for SecurityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityContext")
            .field("sender_id", &format_args!("{}", hex(self.sender_id())))
            .field(
                "recipient_id",
                &format_args!("{}", hex(self.recipient_id())),
            )
            .field("id_context", &self.id_context.as_deref().map(hex))
            .finish_non_exhaustive()
    }
}

/// The HKDF `info` (RFC 8613 §3.2.1):
/// `[id: bstr, id_context: bstr / nil, alg_aead: int, type: tstr, L: uint]`.
fn info(id: &[u8], id_context: Option<&[u8]>, kind: &str, len: usize) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::with_capacity(32));
    // Writing to a Vec cannot fail (its error type is Infallible).
    let written = e
        .array(5)
        .and_then(|e| e.bytes(id))
        .and_then(|e| match id_context {
            Some(c) => e.bytes(c),
            None => e.null(),
        });
    written
        .and_then(|e| e.i64(AEAD_AES_CCM_16_64_128))
        .and_then(|e| e.str(kind))
        .and_then(|e| e.u64(len as u64))
        .expect("CBOR into a Vec is infallible");
    e.into_writer()
}

/// HKDF-Expand into `out`.
fn expand(hkdf: &Hkdf<Sha256>, info: &[u8], out: &mut [u8]) {
    // Infallible: 16 or 13 bytes is far below HKDF-SHA256's 255 * 32 limit.
    hkdf.expand(info, out)
        .expect("output length within HKDF's limit");
}

/// The §5.2 nonce layout: one length byte, the id padded to 7 bytes and the
/// Partial IV padded to 5 bytes fill the 13-byte nonce exactly.
const _: () = assert!(MAX_PIV_LEN + MAX_ID_LEN + 1 == NONCE_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_inline_and_the_context_stays_small() {
        // A gateway holds one context per device: a million of them.
        assert!(
            std::mem::size_of::<SecurityContext>() <= 88,
            "SecurityContext is {} bytes",
            std::mem::size_of::<SecurityContext>()
        );
        for id in [&[][..], &[1], &[1, 2, 3, 4, 5, 6, 7]] {
            assert_eq!(Id::new(id).unwrap().as_slice(), id);
        }
        assert!(Id::new(&[0; 8]).is_none());
    }

    const SECRET: &str = "0102030405060708090a0b0c0d0e0f10";
    const SALT: &str = "9e7ca92223786340";
    const ID_CONTEXT: &str = "37cbf3210017a2d3";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    fn derive(
        salt: &str,
        sender: &str,
        recipient: &str,
        id_context: Option<&str>,
    ) -> SecurityContext {
        let (secret, salt, sender, recipient) = (h(SECRET), h(salt), h(sender), h(recipient));
        let ctx = id_context.map(h);
        SecurityContext::derive(&Params {
            master_secret: &secret,
            master_salt: &salt,
            sender_id: &sender,
            recipient_id: &recipient,
            id_context: ctx.as_deref(),
        })
        .expect("RFC vector parameters are valid")
    }

    struct Expected {
        sender_key: &'static str,
        recipient_key: &'static str,
        common_iv: &'static str,
        sender_nonce_piv0: &'static str,
        recipient_nonce_piv0: &'static str,
    }

    fn check(ctx: &SecurityContext, want: Expected) {
        let zero = PartialIv::from_seq(0).expect("0 is in range");
        assert_eq!(
            hex::encode(ctx.sender_key_for_test_vectors()),
            want.sender_key
        );
        assert_eq!(
            hex::encode(ctx.recipient_key_for_test_vectors()),
            want.recipient_key
        );
        assert_eq!(
            hex::encode(ctx.common_iv_for_test_vectors()),
            want.common_iv
        );
        assert_eq!(
            hex::encode(ctx.nonce(ctx.sender_id(), &zero)),
            want.sender_nonce_piv0
        );
        assert_eq!(
            hex::encode(ctx.nonce(ctx.recipient_id(), &zero)),
            want.recipient_nonce_piv0
        );
    }

    // RFC 8613 Appendix C.1.1: the three info structures of the client.
    #[test]
    fn rfc8613_c1_1_info() {
        assert_eq!(
            hex::encode(info(&[], None, "Key", 16)),
            "8540f60a634b657910"
        );
        assert_eq!(
            hex::encode(info(&[1], None, "Key", 16)),
            "854101f60a634b657910"
        );
        assert_eq!(hex::encode(info(&[], None, "IV", 13)), "8540f60a6249560d");
    }

    // RFC 8613 Appendix C.1.1: client, with master salt.
    #[test]
    fn rfc8613_c1_1_client_keys_and_nonces() {
        check(
            &derive(SALT, "", "01", None),
            Expected {
                sender_key: "f0910ed7295e6ad4b54fc793154302ff",
                recipient_key: "ffb14e093c94c9cac9471648b4f98710",
                common_iv: "4622d4dd6d944168eefb54987c",
                sender_nonce_piv0: "4622d4dd6d944168eefb54987c",
                recipient_nonce_piv0: "4722d4dd6d944169eefb54987c",
            },
        );
    }

    // RFC 8613 Appendix C.1.2: server, with master salt.
    #[test]
    fn rfc8613_c1_2_server_keys_and_nonces() {
        check(
            &derive(SALT, "01", "", None),
            Expected {
                sender_key: "ffb14e093c94c9cac9471648b4f98710",
                recipient_key: "f0910ed7295e6ad4b54fc793154302ff",
                common_iv: "4622d4dd6d944168eefb54987c",
                sender_nonce_piv0: "4722d4dd6d944169eefb54987c",
                recipient_nonce_piv0: "4622d4dd6d944168eefb54987c",
            },
        );
    }

    // RFC 8613 Appendix C.2.1: client, without master salt.
    #[test]
    fn rfc8613_c2_1_client_keys_and_nonces() {
        check(
            &derive("", "00", "01", None),
            Expected {
                sender_key: "321b26943253c7ffb6003b0b64d74041",
                recipient_key: "e57b5635815177cd679ab4bcec9d7dda",
                common_iv: "be35ae297d2dace910c52e99f9",
                sender_nonce_piv0: "bf35ae297d2dace910c52e99f9",
                recipient_nonce_piv0: "bf35ae297d2dace810c52e99f9",
            },
        );
    }

    // RFC 8613 Appendix C.2.2: server, without master salt.
    #[test]
    fn rfc8613_c2_2_server_keys_and_nonces() {
        check(
            &derive("", "01", "00", None),
            Expected {
                sender_key: "e57b5635815177cd679ab4bcec9d7dda",
                recipient_key: "321b26943253c7ffb6003b0b64d74041",
                common_iv: "be35ae297d2dace910c52e99f9",
                sender_nonce_piv0: "bf35ae297d2dace810c52e99f9",
                recipient_nonce_piv0: "bf35ae297d2dace910c52e99f9",
            },
        );
    }

    // RFC 8613 Appendix C.3.1: client, with ID Context.
    #[test]
    fn rfc8613_c3_1_client_keys_and_nonces() {
        check(
            &derive(SALT, "", "01", Some(ID_CONTEXT)),
            Expected {
                sender_key: "af2a1300a5e95788b356336eeecd2b92",
                recipient_key: "e39a0c7c77b43f03b4b39ab9a268699f",
                common_iv: "2ca58fb85ff1b81c0b7181b85e",
                sender_nonce_piv0: "2ca58fb85ff1b81c0b7181b85e",
                recipient_nonce_piv0: "2da58fb85ff1b81d0b7181b85e",
            },
        );
    }

    // RFC 8613 Appendix C.3.2: server, with ID Context.
    #[test]
    fn rfc8613_c3_2_server_keys_and_nonces() {
        check(
            &derive(SALT, "01", "", Some(ID_CONTEXT)),
            Expected {
                sender_key: "e39a0c7c77b43f03b4b39ab9a268699f",
                recipient_key: "af2a1300a5e95788b356336eeecd2b92",
                common_iv: "2ca58fb85ff1b81c0b7181b85e",
                sender_nonce_piv0: "2da58fb85ff1b81d0b7181b85e",
                recipient_nonce_piv0: "2ca58fb85ff1b81c0b7181b85e",
            },
        );
    }

    #[test]
    fn rfc8613_3_3_limits_are_enforced() {
        let secret = [7u8; 16];
        let base = Params {
            master_secret: &secret,
            master_salt: &[],
            sender_id: &[],
            recipient_id: &[1],
            id_context: None,
        };
        let bad = [
            Params {
                master_secret: &secret[..15],
                ..base
            },
            Params {
                sender_id: &[0; 8],
                ..base
            },
            Params {
                recipient_id: &[0; 8],
                ..base
            },
            Params {
                sender_id: &[1],
                ..base
            },
            Params {
                id_context: Some(&[0; 256]),
                ..base
            },
        ];
        for p in bad {
            let err = SecurityContext::derive(&p).expect_err("must be refused");
            assert_eq!(err.reason(), "bad_params", "{p:?}");
        }
        assert!(SecurityContext::derive(&Params {
            sender_id: &[0; 7],
            ..base
        })
        .is_ok());
    }

    #[test]
    fn a_context_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<SecurityContext>();
    }

    #[test]
    fn debug_prints_ids_but_no_key_material() {
        let ctx = derive(SALT, "", "01", None);
        let shown = format!("{ctx:?}");
        assert_eq!(
            shown,
            "SecurityContext { sender_id: h'', recipient_id: h'01', id_context: None, .. }"
        );
        for secret in [
            hex::encode(ctx.sender_key_for_test_vectors()),
            hex::encode(ctx.recipient_key_for_test_vectors()),
            hex::encode(ctx.common_iv_for_test_vectors()),
        ] {
            assert!(!shown.contains(&secret));
        }
        let params = format!(
            "{:?}",
            Params {
                master_secret: &[0xab; 16],
                master_salt: &[],
                sender_id: &[],
                recipient_id: &[1],
                id_context: None,
            }
        );
        assert!(
            !params.contains("ab, ") && !params.contains("abab"),
            "{params}"
        );
    }

    #[test]
    fn only_the_default_algorithms_are_accepted() {
        assert_eq!(
            AeadAlgorithm::from_cose(10),
            Ok(AeadAlgorithm::AesCcm16_64_128)
        );
        assert_eq!(
            AeadAlgorithm::from_cose(1).map_err(|e| e.reason()),
            Err("unsupported_alg")
        );
        assert_eq!(
            AeadAlgorithm::from_name("AES-CCM-16-64-128"),
            Ok(AeadAlgorithm::AesCcm16_64_128)
        );
        assert!(AeadAlgorithm::from_name("A128GCM").is_err());
        assert_eq!(
            HkdfAlgorithm::from_name("sha256"),
            Ok(HkdfAlgorithm::Sha256)
        );
        assert_eq!(
            HkdfAlgorithm::from_name("sha512").map_err(|e| e.reason()),
            Err("unsupported_alg")
        );
    }
}
