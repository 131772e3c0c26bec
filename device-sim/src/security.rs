//! The device's end of the security profile ([`schemas::security`]), sans
//! I/O: a lock's or bridge's OSCORE context derived from its pairing secret,
//! a report protected for CoAP (an OSCORE request, RFC 8613 §8.1) or for
//! MQTT (a protected message, [`schemas::security::encode_protected`]), the
//! gateway's answer verified (§8.4), a bridge command (the gateway's own
//! request) verified (§8.2), and the MQTT login.
//!
//! It draws no sequence numbers: callers bring one from the device's
//! [`crate::lock::Counters`], whose reservation the state file holds
//! (RFC 8613 Appendix B.1.1), and draw a new one for every new exchange,
//! never for a retransmission of the same bytes.

use crate::fleet::MasterSecret;
use lockfleet_oscore::{
    is_class_e, protect_request, unprotect_request, unprotect_response, Error, InnerMessage,
    OscoreOption, Params, PartialIv, Protected, RequestId, SecurityContext, CODE_CHANGED,
    CODE_POST,
};
use schemas::security::{
    decode_protected, encode_protected, mqtt_password, ProtectedFrameError, DEVICE_OSCORE_ID,
    SERVER_OSCORE_ID,
};
use std::fmt;
use zeroize::Zeroizing;

/// CoAP option numbers the inner message carries (RFC 7252 §5.10); all are
/// Class E (RFC 8613 §4.1), so the outer message shows none of them.
pub const OPTION_URI_PATH: u16 = 11;
pub const OPTION_CONTENT_FORMAT: u16 = 12;
pub const OPTION_MAX_AGE: u16 = 14;

/// Content-Format 60, application/cbor (RFC 8949 §9.5).
pub const CONTENT_FORMAT_CBOR: u8 = 60;

/// The ID Context of lock `id`: its topic prefix.
pub fn lock_id_context(id: &str) -> String {
    format!("lk/{id}")
}

/// The ID Context of bridge `id`: its topic prefix.
pub fn bridge_id_context(id: &str) -> String {
    format!("br/{id}")
}

/// Why an answer was not accepted. Every one means the answer cannot be
/// trusted: the report is treated as unanswered.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("not a protected message: {0}")]
    Frame(#[from] ProtectedFrameError),
    #[error(transparent)]
    Oscore(#[from] Error),
    #[error("the answer's inner code {0:#04x} is not 2.04")]
    Code(u8),
}

/// The inner message of a verified CoAP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InnerAnswer {
    /// The real response code (e.g. `0x44` for 2.04).
    pub code: u8,
    pub payload: Vec<u8>,
    /// The inner Max-Age option, seconds (RFC 7252 §5.10.5; Class E).
    pub max_age: Option<u32>,
}

/// A device's OSCORE security context (RFC 8613 §3): device Sender ID
/// [`DEVICE_OSCORE_ID`], gateway Sender ID [`SERVER_OSCORE_ID`], empty
/// master salt, ID Context `lk/{lock}` or `br/{bridge}`. Immutable: the
/// keys are wiped when it is dropped.
pub struct DeviceKeys {
    ctx: SecurityContext,
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let context = String::from_utf8_lossy(self.id_context());
        write!(f, "DeviceKeys({context})")
    }
}

impl DeviceKeys {
    /// The context of the device whose ID Context is `id_context`.
    pub fn derive(id_context: &str, secret: &MasterSecret) -> Result<Self, Error> {
        let ctx = SecurityContext::derive(&Params {
            master_secret: secret.as_bytes(),
            master_salt: b"",
            sender_id: DEVICE_OSCORE_ID,
            recipient_id: SERVER_OSCORE_ID,
            id_context: Some(id_context.as_bytes()),
        })?;
        Ok(DeviceKeys { ctx })
    }

    pub fn for_lock(id: &str, secret: &MasterSecret) -> Result<Self, Error> {
        Self::derive(&lock_id_context(id), secret)
    }

    pub fn for_bridge(id: &str, secret: &MasterSecret) -> Result<Self, Error> {
        Self::derive(&bridge_id_context(id), secret)
    }

    pub fn id_context(&self) -> &[u8] {
        // Always set: `derive` gives one.
        self.ctx.id_context().unwrap_or_default()
    }

    /// CoAP: the OSCORE option value and ciphertext of `POST /{path}` with
    /// the CBOR `cbor`, under sender sequence number `seq`. The path and
    /// Content-Format 60 go inside (Class E); the request carries the kid
    /// context so the gateway finds the context from the message.
    pub fn protect_coap(
        &self,
        seq: u64,
        path: &str,
        cbor: &[u8],
    ) -> Result<(Protected, RequestId), Error> {
        let mut options: Vec<(u16, Vec<u8>)> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| (OPTION_URI_PATH, s.as_bytes().to_vec()))
            .collect();
        options.push((OPTION_CONTENT_FORMAT, vec![CONTENT_FORMAT_CBOR]));
        debug_assert!(options.iter().all(|(n, _)| is_class_e(*n)));
        let plaintext = InnerMessage {
            code: CODE_POST,
            options,
            payload: cbor.to_vec(),
        }
        .encode()?;
        protect_request(&self.ctx, PartialIv::from_seq(seq)?, &plaintext, true, &[])
    }

    /// CoAP: verifies and decrypts the answer to `request` (the outer
    /// OSCORE option value and payload).
    pub fn open_coap(
        &self,
        request: &RequestId,
        option: &[u8],
        ciphertext: &[u8],
    ) -> Result<InnerAnswer, AnswerError> {
        let inner = self.open(request, option, ciphertext)?;
        let max_age = inner
            .options
            .iter()
            .find(|(n, _)| *n == OPTION_MAX_AGE)
            .filter(|(_, v)| v.len() <= 4)
            .map(|(_, v)| v.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)));
        Ok(InnerAnswer {
            code: inner.code,
            payload: inner.payload,
            max_age,
        })
    }

    /// MQTT: the payload carrying `cbor` as a protected uplink under sender
    /// sequence number `seq`: `[option, ciphertext]` of the inner message
    /// `0.02 POST` with `cbor` and no options.
    pub fn protect_mqtt(&self, seq: u64, cbor: &[u8]) -> Result<(Vec<u8>, RequestId), Error> {
        let plaintext = InnerMessage::bare(CODE_POST, cbor).encode()?;
        let (protected, request) =
            protect_request(&self.ctx, PartialIv::from_seq(seq)?, &plaintext, true, &[])?;
        Ok((
            encode_protected(&protected.option, &protected.ciphertext),
            request,
        ))
    }

    /// MQTT: the CBOR of the gateway's ack to `request`, once verified: a
    /// protected message whose inner message is 2.04 with the answer.
    pub fn open_mqtt(&self, request: &RequestId, payload: &[u8]) -> Result<Vec<u8>, AnswerError> {
        let (option, ciphertext) = decode_protected(payload)?;
        let inner = self.open(request, &option, &ciphertext)?;
        if inner.code != CODE_CHANGED {
            return Err(AnswerError::Code(inner.code));
        }
        Ok(inner.payload)
    }

    /// A request the gateway protected under its own sequence number (a
    /// bridge command, RFC 8613 §8.2): its inner message, once the `kid`
    /// names the gateway and the MAC verifies. Replay is the caller's:
    /// check `option.partial_iv` against its window before, accept it after.
    /// No response is ever protected for it, so its [`RequestId`] is dropped.
    pub fn open_request(
        &self,
        option: &OscoreOption,
        ciphertext: &[u8],
    ) -> Result<InnerMessage, Error> {
        let (_request, plaintext) = unprotect_request(&self.ctx, option, ciphertext, &[])?;
        Ok(InnerMessage::decode(&plaintext)?)
    }

    fn open(
        &self,
        request: &RequestId,
        option: &[u8],
        ciphertext: &[u8],
    ) -> Result<InnerMessage, Error> {
        let option = OscoreOption::decode(option)?;
        let plaintext = unprotect_response(&self.ctx, request, &option, ciphertext, &[])?;
        Ok(InnerMessage::decode(&plaintext)?)
    }
}

/// An MQTT login: username = the device id (also the client id, which the
/// gateway requires to match), password = [`mqtt_password`] of its secret.
/// `Debug` never shows the password; it is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: Zeroizing<String>,
}

impl Credentials {
    pub fn for_device(id: &str, secret: &MasterSecret) -> Self {
        Credentials {
            username: id.to_string(),
            password: Zeroizing::new(mqtt_password(secret.as_bytes())),
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"..")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockfleet_oscore::protect_response;

    fn secret() -> MasterSecret {
        MasterSecret::from_bytes(core::array::from_fn(|i| i as u8))
    }

    /// The gateway's side of `id_context`'s context.
    fn server(id_context: &str) -> SecurityContext {
        SecurityContext::derive(&Params {
            master_secret: secret().as_bytes(),
            master_salt: b"",
            sender_id: SERVER_OSCORE_ID,
            recipient_id: DEVICE_OSCORE_ID,
            id_context: Some(id_context.as_bytes()),
        })
        .unwrap()
    }

    #[test]
    fn a_coap_request_hides_path_and_format_and_names_its_context() {
        let keys = DeviceKeys::for_lock("L000001", &secret()).unwrap();
        let (protected, request) = keys.protect_coap(7, "hb", b"\xa0").unwrap();
        let option = OscoreOption::decode(&protected.option).unwrap();
        assert_eq!(option.partial_iv.map(|p| p.seq()), Some(7));
        assert_eq!(option.kid.as_deref(), Some(DEVICE_OSCORE_ID));
        assert_eq!(option.kid_context.as_deref(), Some(&b"lk/L000001"[..]));

        let gw = server("lk/L000001");
        let (gw_request, plaintext) =
            unprotect_request(&gw, &option, &protected.ciphertext, &[]).unwrap();
        let inner = InnerMessage::decode(&plaintext).unwrap();
        assert_eq!(inner.code, CODE_POST);
        assert_eq!(
            inner.options,
            vec![
                (OPTION_URI_PATH, b"hb".to_vec()),
                (OPTION_CONTENT_FORMAT, vec![60])
            ]
        );
        assert_eq!(inner.payload, b"\xa0");

        let answer = InnerMessage {
            code: CODE_CHANGED,
            options: vec![
                (OPTION_CONTENT_FORMAT, vec![60]),
                (OPTION_MAX_AGE, vec![1, 44]),
            ],
            payload: b"\xa1\x00\x01".to_vec(),
        };
        let sealed =
            protect_response(&gw, gw_request, None, &answer.encode().unwrap(), &[]).unwrap();
        assert!(sealed.option.is_empty(), "no Partial IV in the answer");
        let opened = keys
            .open_coap(&request, &sealed.option, &sealed.ciphertext)
            .unwrap();
        assert_eq!(
            opened,
            InnerAnswer {
                code: CODE_CHANGED,
                payload: b"\xa1\x00\x01".to_vec(),
                max_age: Some(300)
            }
        );
        // A flipped bit, or the answer to another request, does not verify.
        let mut forged = sealed.ciphertext.clone();
        forged[0] ^= 1;
        assert!(keys.open_coap(&request, &sealed.option, &forged).is_err());
        let (_, other) = keys.protect_coap(8, "hb", b"\xa0").unwrap();
        assert!(keys
            .open_coap(&other, &sealed.option, &sealed.ciphertext)
            .is_err());
    }

    #[test]
    fn an_mqtt_uplink_is_a_protected_message_of_a_bare_post_and_its_ack_verifies() {
        let keys = DeviceKeys::for_bridge("B00001", &secret()).unwrap();
        let (frame, request) = keys.protect_mqtt(1, b"\xa0").unwrap();
        let (option, ciphertext) = decode_protected(&frame).unwrap();
        let option = OscoreOption::decode(&option).unwrap();
        assert_eq!(option.kid_context.as_deref(), Some(&b"br/B00001"[..]));

        let gw = server("br/B00001");
        let (gw_request, plaintext) = unprotect_request(&gw, &option, &ciphertext, &[]).unwrap();
        assert_eq!(plaintext, [CODE_POST, 0xff, 0xa0]);
        let sealed = protect_response(
            &gw,
            gw_request,
            None,
            &InnerMessage::bare(CODE_CHANGED, &b"\xa1\x02\x01"[..])
                .encode()
                .unwrap(),
            &[],
        )
        .unwrap();
        let ack = encode_protected(&sealed.option, &sealed.ciphertext);
        assert_eq!(keys.open_mqtt(&request, &ack).unwrap(), b"\xa1\x02\x01");
        assert!(matches!(
            keys.open_mqtt(&request, b"\xa1\x02\x01"),
            Err(AnswerError::Frame(_))
        ));
        // Another device's keys cannot read it.
        let other = DeviceKeys::for_bridge("B00002", &secret()).unwrap();
        assert!(matches!(
            other.open_mqtt(&request, &ack),
            Err(AnswerError::Oscore(_))
        ));
    }

    #[test]
    fn credentials_are_the_id_and_the_derived_password_never_shown() {
        let c = Credentials::for_device("B00001", &secret());
        assert_eq!(c.username, "B00001");
        assert_eq!(c.password(), mqtt_password(secret().as_bytes()));
        let debug = format!("{c:?}");
        assert!(!debug.contains(c.password()), "{debug}");
        assert_eq!(
            format!("{:?}", DeviceKeys::for_lock("L1", &secret()).unwrap()),
            "DeviceKeys(lk/L1)"
        );
    }
}
