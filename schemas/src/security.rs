//! The device security profile: what a lock or bridge derives from the
//! master secret it was paired with, so that device and gateway compute the
//! same values from one provisioned secret.
//!
//! * OSCORE (RFC 8613): AES-CCM-16-64-128 with HKDF-SHA256 and an empty
//!   master salt. The ID Context is the device's topic prefix, `lk/{lock id}`
//!   or `br/{bridge id}`, sent in every request (the `kid context`), so the
//!   gateway finds the context from the message; the device's sender id is
//!   [`DEVICE_OSCORE_ID`], the gateway's [`SERVER_OSCORE_ID`]. Every device's
//!   keys differ (its own master secret and ID Context go into HKDF), so equal
//!   sender ids never mean a nonce reused under one key. The same context
//!   protects CoAP requests and the CBOR payloads of MQTT messages.
//! * MQTT login: the username is the device id; the password is
//!   [`mqtt_password`] of the master secret.
//! * MQTT framing: every device payload on MQTT (uplinks and the gateway's
//!   acks, not error messages or bridge status) is a protected message, the
//!   CBOR array `[oscore_option: bstr, ciphertext: bstr]` of
//!   [`encode_protected`] / [`decode_protected`] (`protected-message` in
//!   `spec/device.cddl`). An uplink's plaintext is the inner message
//!   `0.02 POST` with the report's CBOR and no options, protected as an OSCORE
//!   request; its ack's is `2.04 Changed` with the answer's CBOR, protected
//!   as the response to that request (empty option: no Partial IV).
//! * Bridge commands (`br/{bridge}/cmd`): the gateway is the client. The
//!   plaintext is `0.02 POST` with a [`crate::device::BridgeCommand`],
//!   protected as an OSCORE request with the gateway's sender id
//!   ([`SERVER_OSCORE_ID`], so `kid` is present and empty), no `kid context`,
//!   and the gateway's own sequence number as Partial IV, reserved durably
//!   before use (RFC 8613 Appendix B.1.1) so a restart never reuses a nonce.
//!   The bridge keeps a replay window over the gateway's sequence numbers
//!   and reports the command's result as a job report on `br/{bridge}/up/jr`
//!   (an ordinary protected uplink); the command itself gets no OSCORE
//!   response.

use hkdf::Hkdf;
use sha2::Sha256;

/// The gateway's OSCORE sender id in every device context: empty. RFC 8613
/// §3.3 only needs it to differ from the device's.
pub const SERVER_OSCORE_ID: &[u8] = b"";

/// A device's OSCORE sender id (its `kid`), the same for every device: the
/// ID Context tells devices apart.
pub const DEVICE_OSCORE_ID: &[u8] = &[0x01];

/// Most bytes of an ID Context: `br/` and a 64-character id.
pub const MAX_ID_CONTEXT_LEN: usize = 67;

/// HKDF `info` of the MQTT password: versioned, so a future profile can
/// derive a different one from the same secret.
pub const MQTT_PASSWORD_INFO: &[u8] = b"lockfleet mqtt password v1";

/// Bytes of key material in the MQTT password (hex-encoded, so the password
/// is twice as many characters): 192 bits, beyond guessing.
pub const MQTT_PASSWORD_BYTES: usize = 24;

/// The MQTT password a device derives from its master secret:
/// HKDF-SHA256(salt = empty, IKM = master secret, info = [`MQTT_PASSWORD_INFO`]),
/// [`MQTT_PASSWORD_BYTES`] bytes, lower-case hex.
pub fn mqtt_password(master_secret: &[u8]) -> String {
    let mut okm = [0u8; MQTT_PASSWORD_BYTES];
    // Infallible: 24 bytes is far below HKDF-SHA256's 255 * 32 limit.
    Hkdf::<Sha256>::new(None, master_secret)
        .expand(MQTT_PASSWORD_INFO, &mut okm)
        .expect("output length within HKDF's limit");
    let hex = okm.iter().map(|b| format!("{b:02x}")).collect();
    okm.fill(0);
    hex
}

/// Why an MQTT payload is not a protected message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtectedFrameError {
    #[error("a protected message is a CBOR array [oscore_option, ciphertext]; this payload is not an array")]
    NotAnArray,
    #[error("a protected message is an array of exactly 2 items; this one has {0}")]
    Length(u64),
    #[error(
        "a protected message is an array of definite length 2; this one has indefinite length"
    )]
    IndefiniteLength,
    #[error("the {0} of a protected message must be a definite-length byte string")]
    NotBytes(&'static str),
    #[error("the payload ends inside the protected message")]
    Truncated,
    #[error("{0} bytes follow the protected message; it must be the whole payload")]
    TrailingBytes(usize),
}

/// The MQTT payload carrying an OSCORE message: the CBOR array
/// `[oscore_option, ciphertext]`, both byte strings (`protected-message` in
/// `spec/device.cddl`). `option` is the encoded OSCORE option value (empty
/// for a response without Partial IV), `ciphertext` the AEAD output.
pub fn encode_protected(option: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    // Head bytes: the array's one byte and at most 9 per byte string.
    let mut e = minicbor::Encoder::new(Vec::with_capacity(option.len() + ciphertext.len() + 19));
    // Writing to a Vec cannot fail (its error type is Infallible).
    e.array(2)
        .and_then(|e| e.bytes(option))
        .and_then(|e| e.bytes(ciphertext))
        .expect("CBOR into a Vec is infallible");
    e.into_writer()
}

/// Splits an MQTT payload made by [`encode_protected`] into the OSCORE
/// option value and the ciphertext. Strict: exactly one definite-length
/// array of two definite-length byte strings, and nothing after it.
pub fn decode_protected(payload: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ProtectedFrameError> {
    use minicbor::data::Type;
    let mut d = minicbor::Decoder::new(payload);
    match d.datatype() {
        Ok(Type::Array) => {}
        Ok(Type::ArrayIndef) => return Err(ProtectedFrameError::IndefiniteLength),
        Ok(_) => return Err(ProtectedFrameError::NotAnArray),
        Err(e) if e.is_end_of_input() => return Err(ProtectedFrameError::Truncated),
        Err(_) => return Err(ProtectedFrameError::NotAnArray),
    }
    match d.array() {
        Ok(Some(2)) => {}
        Ok(Some(n)) => return Err(ProtectedFrameError::Length(n)),
        Ok(None) => return Err(ProtectedFrameError::IndefiniteLength),
        Err(_) => return Err(ProtectedFrameError::Truncated),
    }
    let mut field = |name: &'static str| match d.datatype() {
        Ok(Type::Bytes) => d.bytes().map(<[u8]>::to_vec).map_err(|e| {
            if e.is_end_of_input() {
                ProtectedFrameError::Truncated
            } else {
                ProtectedFrameError::NotBytes(name)
            }
        }),
        Err(e) if e.is_end_of_input() => Err(ProtectedFrameError::Truncated),
        _ => Err(ProtectedFrameError::NotBytes(name)),
    };
    let option = field("oscore_option")?;
    let ciphertext = field("ciphertext")?;
    match payload.len() - d.position() {
        0 => Ok((option, ciphertext)),
        n => Err(ProtectedFrameError::TrailingBytes(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mqtt_password_is_fixed_by_the_secret_and_the_profile() {
        // Computed once with Python's cryptography package:
        // HKDF(SHA256(), 24, salt=None, info=b"lockfleet mqtt password v1").derive(bytes(range(32))).hex()
        let secret: Vec<u8> = (0..32).collect();
        assert_eq!(
            mqtt_password(&secret),
            "58848d96e4f3350ef61ca896c25d7920f22866c5549acfa1"
        );
        assert_ne!(mqtt_password(&secret), mqtt_password(&[7u8; 32]));
    }

    #[test]
    fn a_protected_message_round_trips_and_is_the_documented_array() {
        let option = [0x19, 0x14, 0x08, 0x6c, 0x6b, 0x2f, 0x4c, 0x31, 0x2f, 0x01];
        let ciphertext = [0xaa; 20];
        let frame = encode_protected(&option, &ciphertext);
        // 0x82: array(2); 0x4a: bstr(10); 0x54: bstr(20).
        assert_eq!(&frame[..2], &[0x82, 0x4a]);
        assert_eq!(frame[12], 0x54);
        assert_eq!(frame.len(), 1 + 1 + 10 + 1 + 20);
        assert_eq!(
            decode_protected(&frame),
            Ok((option.to_vec(), ciphertext.to_vec()))
        );
        // A response's option is empty.
        let ack = encode_protected(&[], &[1, 2, 3]);
        assert_eq!(ack, [0x82, 0x40, 0x43, 1, 2, 3]);
        assert_eq!(decode_protected(&ack), Ok((vec![], vec![1, 2, 3])));
        // Long ciphertexts take a two-byte length head.
        let long = vec![7u8; 300];
        assert_eq!(
            decode_protected(&encode_protected(&[1], &long)),
            Ok((vec![1], long))
        );
    }

    #[test]
    fn anything_but_exactly_two_byte_strings_is_refused() {
        use ProtectedFrameError::*;
        let cases: [(&[u8], ProtectedFrameError); 12] = [
            (&[], Truncated),
            (&[0xa0], NotAnArray),
            (&[0x43, 1, 2, 3], NotAnArray),
            (&[0x81, 0x40], Length(1)),
            (&[0x83, 0x40, 0x40, 0x40], Length(3)),
            (&[0x9f, 0x40, 0x40, 0xff], IndefiniteLength),
            (&[0x82, 0x60, 0x40], NotBytes("oscore_option")),
            (&[0x82, 0x40, 0x01], NotBytes("ciphertext")),
            (
                &[0x82, 0x40, 0x5f, 0x41, 0x00, 0xff],
                NotBytes("ciphertext"),
            ),
            (&[0x82, 0x40, 0x43, 1, 2], Truncated),
            (&[0x82, 0x40], Truncated),
            (&[0x82, 0x40, 0x41, 0x01, 0x00], TrailingBytes(1)),
        ];
        for (payload, want) in cases {
            assert_eq!(decode_protected(payload), Err(want), "{payload:02x?}");
        }
    }

    #[test]
    fn the_frame_matches_the_cddl_rule() {
        let cddl = format!("root = protected-message\n{}", crate::spec::DEVICE_CDDL);
        let ast = cddl::cddl_from_str(&cddl, false).expect("device.cddl parses");
        let check = |bytes: &[u8]| {
            let value = cddl::validator::cbor_value::decode_cbor(bytes).expect("CBOR");
            let mut v = cddl::validator::cbor::CBORValidator::new(&ast, value, None);
            use cddl::validator::Validator;
            v.validate().is_ok()
        };
        assert!(check(&encode_protected(&[0x09, 0x01], &[0xaa; 12])));
        assert!(check(&encode_protected(&[], &[0xaa; 12])));
        assert!(!check(&[0x81, 0x40]));
        assert!(!check(&[0x82, 0x40, 0x60]));
    }
}
