//! The OSCORE layer without sockets: what a device's protected request
//! becomes, how the answer is protected, and every refusal's exact code and
//! reason. The device side is `lockfleet-oscore` in the client role.

use super::*;
use crate::store::keys::{KeyRow, StoredKey};
use crate::store::testing::{secret_for, server_key};
use coap_lite::{MessageType, RequestType};
use dispatcher::LockId;
use lockfleet_oscore::{
    protect_request, unprotect_response, Params, PartialIv, Protected, SecurityContext,
};
use schemas::security::SERVER_OSCORE_ID;

fn l1() -> DeviceRef {
    DeviceRef::Lock(LockId::new("L1"))
}

fn ring() -> KeyRing {
    let row = KeyRow::new(&server_key(), l1(), 1, &secret_for(&l1()));
    let ring = KeyRing::new();
    let report = ring.install(
        vec![StoredKey {
            device: row.device,
            generation: row.generation,
            wrapped: row.wrapped,
            mqtt_password_hash: row.mqtt_password_hash,
        }],
        vec![],
        &server_key(),
    );
    assert_eq!(report.contexts, 1);
    ring
}

/// L1's side of its context.
fn device() -> SecurityContext {
    SecurityContext::derive(&Params {
        master_secret: secret_for(&l1()).as_bytes(),
        master_salt: b"",
        sender_id: DEVICE_OSCORE_ID,
        recipient_id: SERVER_OSCORE_ID,
        id_context: Some(&l1().oscore_id_context()),
    })
    .unwrap()
}

/// A confirmable POST /hb as a device sends it: Uri-Host outside, Uri-Path
/// and Content-Format inside, the outer code POST.
fn protected_post(seq: u64, payload: &[u8]) -> (Packet, RequestId, Protected) {
    let inner = InnerMessage {
        code: u8::from(MessageClass::Request(RequestType::Post)),
        options: vec![(11, b"hb".to_vec()), (12, vec![60])],
        payload: payload.to_vec(),
    };
    let piv = PartialIv::from_seq(seq).unwrap();
    let (protected, request) =
        protect_request(&device(), piv, &inner.encode().unwrap(), true, &[]).unwrap();
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = 7;
    p.set_token(vec![1, 2]);
    p.add_option(CoapOption::UriHost, b"gw.example".to_vec());
    // An outer Class E option is not protected and must not count.
    p.add_option(CoapOption::UriPath, b"log".to_vec());
    p.add_option(CoapOption::Oscore, protected.option.clone());
    p.payload = protected.ciphertext.clone();
    (p, request, protected)
}

fn refused(result: Result<Unwrapped, Reply>) -> Reply {
    match result {
        Err(reply) => reply,
        Ok(u) => panic!("expected a refusal, got {u:?}"),
    }
}

fn assert_refused(reply: &Reply, code: ResponseType, reason: &str, says: &str) {
    assert_eq!(reply.code, code, "{}", reply.text());
    assert_eq!(reply.refused, Some(reason), "{}", reply.text());
    assert!(reply.oscore.is_none(), "refusals are unprotected");
    assert!(
        reply.text().contains(says),
        "{:?} should say {says:?}",
        reply.text()
    );
}

#[test]
fn a_protected_request_becomes_its_inner_request() {
    let ring = ring();
    let (outer, _, _) = protected_post(5, b"\xa0");
    let Ok(Unwrapped::Protected(inner, exchange)) = unprotect(&ring, outer, false) else {
        panic!("the request verifies");
    };
    assert_eq!(inner.header.code, MessageClass::Request(RequestType::Post));
    assert_eq!(
        (inner.header.message_id, inner.get_token()),
        (7, &[1u8, 2][..])
    );
    let path: Vec<_> = inner
        .get_option(CoapOption::UriPath)
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(path, [b"hb".to_vec()], "only the protected Uri-Path counts");
    assert_eq!(
        inner.get_first_option(CoapOption::ContentFormat),
        Some(&vec![60])
    );
    assert_eq!(
        inner.get_first_option(CoapOption::UriHost),
        Some(&b"gw.example".to_vec()),
        "Class U options come from outside"
    );
    assert!(inner.get_option(CoapOption::Oscore).is_none());
    assert_eq!(inner.payload, b"\xa0");
    assert_eq!(
        exchange.protection(),
        Protection {
            device: l1(),
            key: ring.get(&l1()).unwrap().stamp(),
            seq: 5
        }
    );
}

#[test]
fn the_answer_is_an_outer_2_04_the_device_verifies() {
    let ring = ring();
    let (outer, request, _) = protected_post(6, b"\xa0");
    let Ok(Unwrapped::Protected(_, exchange)) = unprotect(&ring, outer, false) else {
        panic!("the request verifies");
    };
    let answer = exchange.protect(&Reply::cbor(ResponseType::Changed, vec![0xa1, 0x00, 0x01]));
    assert_eq!(answer.code, ResponseType::Changed);
    assert_eq!(
        answer.oscore.as_deref(),
        Some(&[][..]),
        "no Partial IV: empty option"
    );
    assert_eq!(answer.content_format, None, "Content-Format is inside");
    let option = OscoreOption::decode(answer.oscore.as_deref().unwrap()).unwrap();
    let plain = unprotect_response(&device(), &request, &option, &answer.payload, &[]).unwrap();
    let inner = InnerMessage::decode(&plain).unwrap();
    assert_eq!(
        inner.code,
        u8::from(MessageClass::Response(ResponseType::Changed))
    );
    assert_eq!(inner.options, [(12, vec![60])]);
    assert_eq!(inner.payload, [0xa1, 0x00, 0x01]);

    // An immediate refusal inside keeps its metric reason outside.
    let (outer, _, _) = protected_post(7, b"\xa0");
    let Ok(Unwrapped::Protected(_, exchange)) = unprotect(&ring, outer, false) else {
        panic!("the request verifies");
    };
    let answer = exchange.protect(&Reply::error(ResponseType::BadRequest, "malformed", "no"));
    assert_eq!(
        (answer.code, answer.refused),
        (ResponseType::Changed, Some("malformed"))
    );
}

#[test]
fn unprotected_device_resources_need_insecure_dev_and_discovery_does_not() {
    let ring = ring();
    let plain = |path: &str| {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Post);
        for s in path.split('/') {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p
    };
    for path in ["hb", "log"] {
        let r = refused(unprotect(&ring, plain(path), false));
        assert_refused(
            &r,
            ResponseType::Unauthorized,
            "unprotected",
            UNPROTECTED_DIAGNOSTIC,
        );
        assert!(matches!(
            unprotect(&ring, plain(path), true),
            Ok(Unwrapped::Plain(_))
        ));
    }
    for path in [".well-known/core", "nope"] {
        assert!(matches!(
            unprotect(&ring, plain(path), false),
            Ok(Unwrapped::Plain(_))
        ));
    }
}

#[test]
fn a_protected_request_is_verified_even_under_insecure_dev() {
    let ring = ring();
    let (mut outer, _, _) = protected_post(8, b"\xa0");
    outer.payload[0] ^= 1;
    let r = refused(unprotect(&ring, outer, true));
    assert_refused(
        &r,
        ResponseType::BadRequest,
        "decrypt_failed",
        "does not verify",
    );
}

#[test]
fn every_bad_option_is_refused_with_its_code_and_reason() {
    let ring = ring();
    let with_option = |value: Vec<u8>| {
        let (mut p, _, _) = protected_post(9, b"\xa0");
        p.clear_option(CoapOption::Oscore);
        p.add_option(CoapOption::Oscore, value);
        p
    };
    let (_, _, good) = protected_post(9, b"\xa0");
    let cases: Vec<(Vec<u8>, ResponseType, &str, &str)> = vec![
        // Truncated inside the kid context.
        (
            good.option[..5].to_vec(),
            ResponseType::BadOption,
            "malformed_option",
            "truncated",
        ),
        // Reserved flag bits.
        (
            vec![0xe9, 0x01],
            ResponseType::BadOption,
            "malformed_option",
            "reserved",
        ),
        // Empty value: no kid, no Partial IV.
        (
            vec![],
            ResponseType::BadOption,
            "malformed_option",
            "no kid",
        ),
        // Partial IV and kid context but no kid flag.
        (
            vec![0x11, 0x09, 0x05, b'l', b'k', b'/', b'L', b'1'],
            ResponseType::BadOption,
            "malformed_option",
            "no kid",
        ),
        // kid h'02'.
        (
            vec![0x19, 0x09, 0x05, b'l', b'k', b'/', b'L', b'1', 0x02],
            ResponseType::Unauthorized,
            "unknown_kid",
            "kid h'02'",
        ),
        // No kid context.
        (
            vec![0x09, 0x09, 0x01],
            ResponseType::Unauthorized,
            "unknown_context",
            "no kid context",
        ),
        // A kid context that names no device.
        (
            vec![0x19, 0x09, 0x03, b'x', b'/', b'y', 0x01],
            ResponseType::Unauthorized,
            "unknown_context",
            "names no device",
        ),
        // A lock with no key.
        (
            vec![0x19, 0x09, 0x05, b'l', b'k', b'/', b'L', b'9', 0x01],
            ResponseType::Unauthorized,
            "unknown_context",
            "lock L9",
        ),
    ];
    for (value, code, reason, says) in cases {
        let r = refused(unprotect(&ring, with_option(value.clone()), false));
        assert_refused(&r, code, reason, says);
    }
    let (mut twice, _, _) = protected_post(9, b"\xa0");
    twice.add_option(CoapOption::Oscore, good.option.clone());
    let r = refused(unprotect(&ring, twice, false));
    assert_refused(&r, ResponseType::BadOption, "malformed_option", "repeated");
}

#[test]
fn forged_and_truncated_ciphertexts_are_4_00() {
    let ring = ring();
    let (mut forged, _, _) = protected_post(10, b"\xa0");
    let last = forged.payload.len() - 1;
    forged.payload[last] ^= 0x80;
    assert_refused(
        &refused(unprotect(&ring, forged, false)),
        ResponseType::BadRequest,
        "decrypt_failed",
        "current key",
    );
    let (mut short, _, _) = protected_post(10, b"\xa0");
    short.payload.truncate(4);
    assert_refused(
        &refused(unprotect(&ring, short, false)),
        ResponseType::BadRequest,
        "malformed_ciphertext",
        "shorter",
    );
}

#[test]
fn a_sequence_number_a_commit_accepted_is_refused_before_decryption() {
    let ring = ring();
    let (outer, _, _) = protected_post(11, b"\xa0");
    let Ok(Unwrapped::Protected(_, exchange)) = unprotect(&ring, outer.clone(), false) else {
        panic!("the request verifies");
    };
    // Not committed yet: the same request still passes the fast check
    // (the commit decides).
    assert!(matches!(
        unprotect(&ring, outer.clone(), false),
        Ok(Unwrapped::Protected(..))
    ));
    exchange.accepted();
    assert_refused(
        &refused(unprotect(&ring, outer, false)),
        ResponseType::Unauthorized,
        "replay",
        "sequence number 11",
    );
}
