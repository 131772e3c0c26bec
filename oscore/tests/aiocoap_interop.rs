//! Interop with Python aiocoap 0.4.17: requests its OSCORE client really
//! sent (captured off the wire, tests/fixtures/README.md) verify with our
//! server side, and the response we protect for one is the one aiocoap was
//! shown to accept (tests/fixtures/verify_response_with_aiocoap.py).

mod common;

use common::h;
use lockfleet_oscore::{
    protect_response, unprotect_request, InnerMessage, OscoreOption, Params, ReplayWindow,
    SecurityContext, CODE_CHANGED,
};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/aiocoap_0.4.17_requests.json");

fn case(name: &str) -> Value {
    let all: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    all[name].clone()
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("fixture lacks {key}"))
}

/// The server's context for aiocoap's client settings: ids swapped.
fn server_context(case: &Value) -> SecurityContext {
    let s = &case["client_settings"];
    let secret = h(field(s, "secret_hex"));
    let salt = h(field(s, "salt_hex"));
    let client_sender = h(field(s, "sender-id_hex"));
    let client_recipient = h(field(s, "recipient-id_hex"));
    let id_context = s["id-context_hex"].as_str().map(h);
    SecurityContext::derive(&Params {
        master_secret: &secret,
        master_salt: &salt,
        sender_id: &client_recipient,
        recipient_id: &client_sender,
        id_context: id_context.as_deref(),
    })
    .expect("aiocoap's settings are valid")
}

/// The OSCORE option and payload found in the captured datagram.
fn captured(case: &Value) -> (OscoreOption, Vec<u8>) {
    let datagram = h(field(case, "datagram"));
    let option = h(field(case, "oscore_option"));
    let ciphertext = h(field(case, "ciphertext"));
    // The fixture's fields are the datagram's own bytes.
    let tail = [&option[..], &[0xff], &ciphertext[..]].concat();
    assert!(
        datagram.ends_with(&tail),
        "option and payload end the datagram"
    );
    (
        OscoreOption::decode(&option).expect("aiocoap's option decodes"),
        ciphertext,
    )
}

#[test]
fn aiocoap_lock_post_with_kid_context_verifies() {
    let case = case("lock_post");
    let server = server_context(&case);
    let (option, ciphertext) = captured(&case);
    assert_eq!(option.kid.as_deref(), Some(&[0x4c, 0x01][..]));
    assert_eq!(
        option.kid_context.as_deref(),
        Some(&h(common::ID_CONTEXT)[..])
    );

    let (request, plaintext) =
        unprotect_request(&server, &option, &ciphertext, &[]).expect("aiocoap's request verifies");
    let inner = InnerMessage::decode(&plaintext).expect("inner plaintext decodes");
    assert_eq!(
        inner,
        InnerMessage {
            code: 0x02,
            options: vec![(11, b"lock".to_vec()), (11, b"state".to_vec())],
            payload: br#"{"locked":true}"#.to_vec(),
        }
    );

    let mut window = ReplayWindow::new();
    window.check(request.piv().seq()).expect("first sight");
    window.accept(request.piv().seq()).expect("first sight");
    assert!(
        window.check(request.piv().seq()).is_err(),
        "resent datagram is a replay"
    );

    // The response verify_response_with_aiocoap.py had aiocoap accept.
    let want = &case["our_response"];
    let answer = InnerMessage::bare(CODE_CHANGED, h(field(want, "inner_payload")));
    let response = protect_response(
        &server,
        request,
        None,
        &answer.encode().expect("encodes"),
        &[],
    )
    .expect("protects");
    assert_eq!(hex::encode(&response.option), field(want, "oscore_option"));
    assert_eq!(hex::encode(&response.ciphertext), field(want, "ciphertext"));
}

#[test]
fn aiocoap_get_with_empty_kid_verifies() {
    let case = case("c1_get_tv1");
    let server = server_context(&case);
    let (option, ciphertext) = captured(&case);
    assert_eq!(option.kid.as_deref(), Some(&[][..]));

    let (request, plaintext) =
        unprotect_request(&server, &option, &ciphertext, &[]).expect("aiocoap's request verifies");
    assert_eq!(request.piv().seq(), 0);
    assert_eq!(
        InnerMessage::decode(&plaintext),
        Ok(InnerMessage {
            code: 0x01,
            options: vec![(11, b"tv1".to_vec())],
            payload: vec![],
        })
    );
}
