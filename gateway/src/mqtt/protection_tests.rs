//! MQTT payload protection without a broker: a device's protected uplink
//! verifies and its ack opens on the device; every refusal has its reason.

use super::*;
use crate::store::keys::{KeyRow, StoredKey};
use crate::store::testing::{secret_for, server_key};
use dispatcher::{BridgeId, LockId};
use lockfleet_oscore::{protect_request, unprotect_response, Params, PartialIv, SecurityContext};
use schemas::security::SERVER_OSCORE_ID;

fn l1() -> DeviceRef {
    DeviceRef::Lock(LockId::new("L1"))
}
fn b1() -> DeviceRef {
    DeviceRef::Bridge(BridgeId::new("B1"))
}

fn ring() -> KeyRing {
    let ring = KeyRing::new();
    let keys = [l1(), b1()]
        .into_iter()
        .map(|d| {
            let row = KeyRow::new(&server_key(), d.clone(), 1, &secret_for(&d));
            StoredKey {
                device: row.device,
                generation: row.generation,
                wrapped: row.wrapped,
                mqtt_password_hash: row.mqtt_password_hash,
            }
        })
        .collect();
    assert_eq!(ring.install(keys, vec![], &server_key()).contexts, 2);
    ring
}

/// `device`'s own side of its context.
fn device_side(device: &DeviceRef) -> SecurityContext {
    SecurityContext::derive(&Params {
        master_secret: secret_for(device).as_bytes(),
        master_salt: b"",
        sender_id: DEVICE_OSCORE_ID,
        recipient_id: SERVER_OSCORE_ID,
        id_context: Some(&device.oscore_id_context()),
    })
    .unwrap()
}

/// `cbor` protected by `device` as an uplink with sequence number `seq`.
fn uplink(device: &DeviceRef, seq: u64, cbor: &[u8]) -> (Vec<u8>, RequestId) {
    let plaintext = InnerMessage::bare(CODE_POST, cbor).encode().unwrap();
    let (p, request) = protect_request(
        &device_side(device),
        PartialIv::from_seq(seq).unwrap(),
        &plaintext,
        true,
        &[],
    )
    .unwrap();
    (encode_protected(&p.option, &p.ciphertext), request)
}

fn refusal(r: Result<Option<(Vec<u8>, Verified)>, ProtectionError>) -> ProtectionError {
    match r {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn an_uplink_verifies_and_its_ack_opens_on_the_device() {
    let ring = ring();
    let (payload, request) = uplink(&l1(), 3, b"\xa1\x01\x02");
    let (cbor, verified) = unprotect(&ring, &l1(), &payload, false).unwrap().unwrap();
    assert_eq!(cbor, b"\xa1\x01\x02");
    let p = verified.protection();
    assert_eq!((p.device, p.seq), (l1(), 3));
    let ack = verified.accepted_ack(b"\xa0").unwrap();
    let (option, ciphertext) = decode_protected(&ack).unwrap();
    assert!(option.is_empty(), "a response reuses the request's nonce");
    let plaintext = unprotect_response(
        &device_side(&l1()),
        &request,
        &OscoreOption::decode(&option).unwrap(),
        &ciphertext,
        &[],
    )
    .unwrap();
    assert_eq!(
        InnerMessage::decode(&plaintext).unwrap(),
        InnerMessage::bare(CODE_CHANGED, b"\xa0")
    );
    // Accepted: the same sequence number is now a replay.
    let again = refusal(unprotect(&ring, &l1(), &payload, false));
    assert_eq!(again.reason(), "replay");
}

#[test]
fn plain_cbor_is_refused_unless_insecure_dev() {
    let ring = ring();
    assert_eq!(
        refusal(unprotect(&ring, &l1(), b"\xa1\x01\x02", false)).reason(),
        "unprotected"
    );
    assert!(unprotect(&ring, &l1(), b"\xa1\x01\x02", true)
        .unwrap()
        .is_none());
    for plain in [&b""[..], b"not cbor"] {
        assert_eq!(
            refusal(unprotect(&ring, &l1(), plain, false)).reason(),
            "unprotected"
        );
        assert!(unprotect(&ring, &l1(), plain, true).unwrap().is_none());
    }
    // A protected one still verifies with insecure_dev on.
    let (payload, _) = uplink(&l1(), 0, b"\xa0");
    assert!(unprotect(&ring, &l1(), &payload, true).unwrap().is_some());
}

#[test]
fn every_bad_payload_has_its_reason() {
    let ring = ring();
    // Forged: one ciphertext bit flipped.
    let (payload, _) = uplink(&l1(), 1, b"\xa0");
    let (option, mut ciphertext) = decode_protected(&payload).unwrap();
    ciphertext[0] ^= 1;
    let forged = encode_protected(&option, &ciphertext);
    assert_eq!(
        refusal(unprotect(&ring, &l1(), &forged, false)).reason(),
        "decrypt_failed"
    );
    // Another device's payload copied onto L1's topic: its kid context
    // names B1.
    let (payload, _) = uplink(&b1(), 1, b"\xa0");
    let e = refusal(unprotect(&ring, &l1(), &payload, false));
    assert_eq!(e.reason(), "kid_context_mismatch");
    assert!(e.to_string().contains("\"br/B1\""), "{e}");
    // A device with no key.
    let l9 = DeviceRef::Lock(LockId::new("L9"));
    let (payload, _) = uplink(&l9, 1, b"\xa0");
    assert_eq!(
        refusal(unprotect(&ring, &l9, &payload, false)).reason(),
        "unknown_context"
    );
    // Truncated and garbage frames and options.
    for (bad, reason) in [
        (&[0x82, 0x40][..], "malformed_protected"),
        (
            &[0x82, 0x43, 0xff, 0xfe, 0xfd, 0x41, 0x00][..],
            "malformed_option",
        ),
        (
            &[0x82, 0x43, 0x19, 0x01, 0x05, 0x41, 0x00][..],
            "malformed_option",
        ),
    ] {
        assert_eq!(
            refusal(unprotect(&ring, &l1(), bad, false)).reason(),
            reason,
            "{bad:02x?}"
        );
    }
    // A kid that no device sends.
    let mut opt = OscoreOption::decode(&option).unwrap();
    opt.kid = Some(vec![0x07]);
    let payload = encode_protected(&opt.encode().unwrap(), &ciphertext);
    assert_eq!(
        refusal(unprotect(&ring, &l1(), &payload, false)).reason(),
        "unknown_kid"
    );
}
