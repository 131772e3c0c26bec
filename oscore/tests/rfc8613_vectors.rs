//! RFC 8613 Appendix C.4–C.8, byte for byte, through the public API only.
//!
//! Expected bytes are from the RFC text, cross-checked against aiocoap's
//! `tests/test_oscore_vectors.py` (which asserts the same full datagrams).
//! Each test also assembles the outer CoAP message the RFC prints, so the
//! option value and ciphertext are checked in their wire position.

mod common;

use common::*;
use lockfleet_oscore::{
    protect_request, protect_response, unprotect_request, unprotect_response, InnerMessage,
    OscoreOption, PartialIv, RequestId, SecurityContext,
};

/// The unprotected request of C.4–C.6: GET coap://localhost/tv1; only
/// Uri-Path is Class E.
fn get_tv1() -> Vec<u8> {
    InnerMessage {
        code: 0x01,
        options: vec![(11, b"tv1".to_vec())],
        payload: vec![],
    }
    .encode()
    .expect("encodable")
}

/// The unprotected response of C.7/C.8: 2.05 Content "Hello World!".
fn hello_world() -> Vec<u8> {
    InnerMessage::bare(0x45, b"Hello World!".to_vec())
        .encode()
        .expect("encodable")
}

fn piv(seq: u64) -> PartialIv {
    PartialIv::from_seq(seq).expect("in range")
}

/// Client protects GET /tv1 with sequence number 20; returns the option
/// value, the ciphertext and the request binding.
fn client_request(
    client: &SecurityContext,
    include_kid_context: bool,
) -> (String, String, RequestId) {
    let (protected, request) =
        protect_request(client, piv(20), &get_tv1(), include_kid_context, &[]).expect("protects");
    (
        hex::encode(protected.option),
        hex::encode(protected.ciphertext),
        request,
    )
}

/// Server decodes and unprotects a request, expecting GET /tv1 back.
fn server_unprotects(server: &SecurityContext, option: &str, ciphertext: &str) -> RequestId {
    let option = OscoreOption::decode(&h(option)).expect("RFC option decodes");
    let (request, plaintext) =
        unprotect_request(server, &option, &h(ciphertext), &[]).expect("RFC request verifies");
    assert_eq!(plaintext, get_tv1());
    assert_eq!(request.piv().seq(), 20);
    request
}

// RFC 8613 Appendix C.4: request, key derivation with master salt (C.1).
#[test]
fn rfc8613_c4_request_with_master_salt() {
    let (option, ciphertext, request) = client_request(&c1_1_client(), false);
    assert_eq!(option, "0914");
    assert_eq!(ciphertext, "612f1092f1776f1c1668b3825e");
    assert_eq!(
        format!("44025d1f00003974396c6f63616c686f737462{option}ff{ciphertext}"),
        "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e"
    );
    assert_eq!((request.kid(), request.kid_context()), (&[][..], None));

    let request = server_unprotects(&c1_2_server(), &option, &ciphertext);
    assert_eq!((request.kid(), request.kid_context()), (&[][..], None));
}

// RFC 8613 Appendix C.5: request, key derivation without master salt (C.2).
#[test]
fn rfc8613_c5_request_without_master_salt() {
    let (option, ciphertext, _) = client_request(&c2_1_client(), false);
    assert_eq!(option, "091400");
    assert_eq!(ciphertext, "4ed339a5a379b0b8bc731fffb0");
    assert_eq!(
        format!("440271c30000b932396c6f63616c686f737463{option}ff{ciphertext}"),
        "440271c30000b932396c6f63616c686f737463091400ff4ed339a5a379b0b8bc731fffb0"
    );

    let request = server_unprotects(&c2_2_server(), &option, &ciphertext);
    assert_eq!(request.kid(), [0x00]);
}

// RFC 8613 Appendix C.6: request, with ID Context sent as kid context (C.3).
#[test]
fn rfc8613_c6_request_with_kid_context() {
    let (option, ciphertext, request) = client_request(&c3_1_client(), true);
    assert_eq!(option, "19140837cbf3210017a2d3");
    assert_eq!(ciphertext, "72cd7273fd331ac45cffbe55c3");
    assert_eq!(
        format!("44022f8eef9bbf7a396c6f63616c686f73746b{option}ff{ciphertext}"),
        "44022f8eef9bbf7a396c6f63616c686f73746b19140837cbf3210017a2d3ff72cd7273fd331ac45cffbe55c3"
    );
    assert_eq!(request.kid_context(), Some(&h(ID_CONTEXT)[..]));

    let request = server_unprotects(&c3_2_server(), &option, &ciphertext);
    assert_eq!(request.kid_context(), Some(&h(ID_CONTEXT)[..]));
}

// RFC 8613 Appendix C.7: response without Partial IV (reuses the C.4
// request nonce), and the client verifying it.
#[test]
fn rfc8613_c7_response_without_partial_iv() {
    let server = c1_2_server();
    let request = server_unprotects(&server, "0914", "612f1092f1776f1c1668b3825e");
    let response = protect_response(&server, request, None, &hello_world(), &[]).expect("protects");
    assert_eq!(response.option, b"");
    assert_eq!(
        hex::encode(&response.ciphertext),
        "dbaad1e9a7e7b2a813d3c31524378303cdafae119106"
    );
    assert_eq!(
        format!("64445d1f0000397490ff{}", hex::encode(&response.ciphertext)),
        "64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106"
    );

    let client = c1_1_client();
    let (_, _, client_request) = client_request(&client, false);
    let option = OscoreOption::decode(&response.option).expect("empty option decodes");
    assert_eq!(option, OscoreOption::default());
    let plaintext =
        unprotect_response(&client, &client_request, &option, &response.ciphertext, &[])
            .expect("response verifies");
    assert_eq!(plaintext, hello_world());
}

// RFC 8613 Appendix C.8: response with the server's own Partial IV 0.
#[test]
fn rfc8613_c8_response_with_partial_iv() {
    let server = c1_2_server();
    let request = server_unprotects(&server, "0914", "612f1092f1776f1c1668b3825e");
    let response =
        protect_response(&server, request, Some(piv(0)), &hello_world(), &[]).expect("protects");
    assert_eq!(hex::encode(&response.option), "0100");
    assert_eq!(
        hex::encode(&response.ciphertext),
        "4d4c13669384b67354b2b6175ff4b8658c666a6cf88e"
    );
    assert_eq!(
        format!(
            "64445d1f0000397492{}ff{}",
            hex::encode(&response.option),
            hex::encode(&response.ciphertext)
        ),
        "64445d1f00003974920100ff4d4c13669384b67354b2b6175ff4b8658c666a6cf88e"
    );

    let client = c1_1_client();
    let (_, _, client_request) = client_request(&client, false);
    let option = OscoreOption::decode(&response.option).expect("option decodes");
    let plaintext =
        unprotect_response(&client, &client_request, &option, &response.ciphertext, &[])
            .expect("response verifies");
    assert_eq!(plaintext, hello_world());
}
