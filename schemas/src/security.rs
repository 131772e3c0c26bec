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
}
