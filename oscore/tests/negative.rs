//! Bad input is refused with the right reason and never panics: forged or
//! corrupted ciphertext, the wrong kid or kid context, replays (also after
//! the window is stored and restored), numbers below the window, truncated
//! or garbage options, and responses bound to another request.

mod common;

use common::*;
use lockfleet_oscore::{
    protect_request, protect_response, unprotect_request, unprotect_response, Error, InnerMessage,
    OscoreOption, PartialIv, Protected, ReplayWindow, RequestId, SecurityContext,
};

fn piv(seq: u64) -> PartialIv {
    PartialIv::from_seq(seq).expect("in range")
}

fn heartbeat() -> Vec<u8> {
    InnerMessage::bare(0x02, vec![0xa1; 40])
        .encode()
        .expect("encodes")
}

/// C.1.1 client protects a heartbeat with sequence number `seq`.
fn request(seq: u64) -> (Protected, RequestId) {
    protect_request(&c1_1_client(), piv(seq), &heartbeat(), false, &[]).expect("protects")
}

/// What a server adapter does with one request: decode the option, check
/// the window, verify, then accept (the caller would persist the window
/// here, before answering).
fn receive(
    server: &SecurityContext,
    window: &mut ReplayWindow,
    option: &[u8],
    ciphertext: &[u8],
) -> Result<(RequestId, Vec<u8>), Error> {
    let option = OscoreOption::decode(option)?;
    if let Some(p) = option.partial_iv {
        window.check(p.seq())?;
    }
    let (request, plaintext) = unprotect_request(server, &option, ciphertext, &[])?;
    window.accept(request.piv().seq())?;
    Ok((request, plaintext))
}

fn reason<T: std::fmt::Debug>(r: Result<T, Error>) -> &'static str {
    r.expect_err("must be refused").reason()
}

#[test]
fn every_flipped_ciphertext_bit_is_decrypt_failed() {
    let (protected, _) = request(7);
    let option = OscoreOption::decode(&protected.option).expect("decodes");
    let server = c1_2_server();
    for bit in 0..protected.ciphertext.len() * 8 {
        let mut forged = protected.ciphertext.clone();
        forged[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            reason(unprotect_request(&server, &option, &forged, &[])),
            "decrypt_failed",
            "bit {bit}"
        );
    }
}

#[test]
fn a_tampered_option_or_class_i_fails_verification() {
    let (protected, _) = request(7);
    let server = c1_2_server();
    // Another Partial IV changes nonce and AAD.
    let other = OscoreOption {
        partial_iv: Some(piv(8)),
        kid_context: None,
        kid: Some(vec![]),
    };
    assert_eq!(
        reason(unprotect_request(
            &server,
            &other,
            &protected.ciphertext,
            &[]
        )),
        "decrypt_failed"
    );
    let option = OscoreOption::decode(&protected.option).expect("decodes");
    assert_eq!(
        reason(unprotect_request(
            &server,
            &option,
            &protected.ciphertext,
            &[0x01]
        )),
        "decrypt_failed"
    );
}

#[test]
fn a_context_with_another_master_secret_cannot_decrypt() {
    let (protected, _) = request(7);
    let option = OscoreOption::decode(&protected.option).expect("decodes");
    let impostor = ctx("ff02030405060708090a0b0c0d0e0f10", SALT, "01", "", None);
    assert_eq!(
        reason(unprotect_request(
            &impostor,
            &option,
            &protected.ciphertext,
            &[]
        )),
        "decrypt_failed"
    );
}

#[test]
fn a_kid_that_is_not_the_peer_is_unknown_kid() {
    let (protected, _) = request(7);
    let mut option = OscoreOption::decode(&protected.option).expect("decodes");
    option.kid = Some(vec![0x02]);
    let err = unprotect_request(&c1_2_server(), &option, &protected.ciphertext, &[])
        .expect_err("wrong kid");
    assert_eq!(err.reason(), "unknown_kid");
    assert_eq!(
        err.to_string(),
        "kid h'02' does not name this context's peer h''"
    );
}

#[test]
fn a_foreign_kid_context_is_kid_context_mismatch() {
    let (protected, _) = request(7);
    let mut option = OscoreOption::decode(&protected.option).expect("decodes");
    option.kid_context = Some(vec![0xde, 0xad]);
    assert_eq!(
        reason(unprotect_request(
            &c1_2_server(),
            &option,
            &protected.ciphertext,
            &[]
        )),
        "kid_context_mismatch"
    );
    // C.3 server has an ID Context; a different one is refused too.
    let (protected, _) =
        protect_request(&c3_1_client(), piv(20), &heartbeat(), true, &[]).expect("protects");
    let mut option = OscoreOption::decode(&protected.option).expect("decodes");
    option.kid_context = Some(vec![0x37]);
    assert_eq!(
        reason(unprotect_request(
            &c3_2_server(),
            &option,
            &protected.ciphertext,
            &[]
        )),
        "kid_context_mismatch"
    );
}

#[test]
fn a_request_without_kid_or_partial_iv_is_malformed_option() {
    let (protected, _) = request(7);
    let option = OscoreOption::decode(&protected.option).expect("decodes");
    let server = c1_2_server();
    for broken in [
        OscoreOption {
            kid: None,
            ..option.clone()
        },
        OscoreOption {
            partial_iv: None,
            ..option.clone()
        },
        OscoreOption::default(),
    ] {
        assert_eq!(
            reason(unprotect_request(
                &server,
                &broken,
                &protected.ciphertext,
                &[]
            )),
            "malformed_option",
            "{broken:?}"
        );
    }
}

#[test]
fn ciphertext_shorter_than_a_tag_and_code_is_refused() {
    let (protected, _) = request(7);
    let option = OscoreOption::decode(&protected.option).expect("decodes");
    for len in 0..=8 {
        assert_eq!(
            reason(unprotect_request(
                &c1_2_server(),
                &option,
                &protected.ciphertext[..len],
                &[]
            )),
            "malformed_ciphertext"
        );
    }
}

#[test]
fn a_replayed_sequence_number_is_refused_before_and_after_restore() {
    let server = c1_2_server();
    let mut window = ReplayWindow::new();
    let (first, _) = request(7);
    let (_, plaintext) =
        receive(&server, &mut window, &first.option, &first.ciphertext).expect("first copy");
    assert_eq!(plaintext, heartbeat());

    let err =
        receive(&server, &mut window, &first.option, &first.ciphertext).expect_err("second copy");
    assert_eq!(err.reason(), "replay");
    assert_eq!(
        err.to_string(),
        "replayed sequence number 7: already accepted"
    );

    // "Restart": only the stored parts survive.
    let (highest, bits) = window.to_parts();
    let mut restored = ReplayWindow::from_parts(highest, bits).expect("stored by to_parts");
    assert_eq!(
        reason(receive(
            &server,
            &mut restored,
            &first.option,
            &first.ciphertext
        )),
        "replay"
    );
    let (next, _) = request(8);
    receive(&server, &mut restored, &next.option, &next.ciphertext).expect("a new number passes");
}

#[test]
fn a_sequence_number_below_the_window_is_replay() {
    let server = c1_2_server();
    let mut window = ReplayWindow::new();
    let (old, _) = request(3);
    let (new, _) = request(3 + 64);
    receive(&server, &mut window, &new.option, &new.ciphertext).expect("new one");
    let err = receive(&server, &mut window, &old.option, &old.ciphertext).expect_err("too old");
    assert_eq!(err.reason(), "replay");
    assert_eq!(
        err.to_string(),
        "sequence number 3 is below the replay window (lowest acceptable 4)"
    );
}

#[test]
fn a_forged_message_does_not_move_the_window() {
    let server = c1_2_server();
    let mut window = ReplayWindow::new();
    let (genuine, _) = request(9);
    let mut forged = genuine.ciphertext.clone();
    forged[0] ^= 0x80;
    assert_eq!(
        reason(receive(&server, &mut window, &genuine.option, &forged)),
        "decrypt_failed"
    );
    receive(&server, &mut window, &genuine.option, &genuine.ciphertext)
        .expect("the genuine copy still passes");
}

#[test]
fn truncated_and_garbage_options_are_malformed_option() {
    let server = c1_2_server();
    let mut window = ReplayWindow::new();
    let (protected, _) = request(7);
    let garbage: [&[u8]; 8] = [
        &[0xff],
        &[0x20, 0x14],
        &[0x07, 1, 2, 3, 4, 5, 6, 7],
        &[0x00],
        &[0x09],
        &[0x19, 0x14],
        &[0x19, 0x14, 0x08, 0x37],
        &[0x01, 0x14, 0xaa],
    ];
    for option in garbage {
        assert_eq!(
            reason(receive(&server, &mut window, option, &protected.ciphertext)),
            "malformed_option",
            "{option:02x?}"
        );
    }
    // Every strict prefix of a C.6 option with kid context.
    let c6 = h("19140837cbf3210017a2d3");
    for len in 1..c6.len() {
        let decoded = OscoreOption::decode(&c6[..len]);
        assert!(decoded.is_err(), "prefix {len} decoded as {decoded:?}");
    }
}

#[test]
fn a_response_bound_to_another_request_fails() {
    let server = c1_2_server();
    let client = c1_1_client();
    let (req_a, client_a) = protect_request(&client, piv(1), &heartbeat(), false, &[]).expect("a");
    let (_, client_b) = protect_request(&client, piv(2), &heartbeat(), false, &[]).expect("b");
    let option = OscoreOption::decode(&req_a.option).expect("decodes");
    let (server_a, _) = unprotect_request(&server, &option, &req_a.ciphertext, &[]).expect("a");
    let answer = InnerMessage::bare(0x44, b"ok".to_vec())
        .encode()
        .expect("encodes");
    let response = protect_response(&server, server_a, None, &answer, &[]).expect("protects");
    let option = OscoreOption::decode(&response.option).expect("decodes");

    assert_eq!(
        unprotect_response(&client, &client_a, &option, &response.ciphertext, &[]),
        Ok(answer)
    );
    assert_eq!(
        reason(unprotect_response(
            &client,
            &client_b,
            &option,
            &response.ciphertext,
            &[]
        )),
        "decrypt_failed"
    );
    let mut flipped = response.ciphertext.clone();
    flipped[3] ^= 4;
    assert_eq!(
        reason(unprotect_response(
            &client,
            &client_a,
            &option,
            &flipped,
            &[]
        )),
        "decrypt_failed"
    );
}

#[test]
fn a_request_id_from_another_context_is_unknown_kid() {
    // C.2.2's server expects kid h'00'; hand it a request C.1.2 accepted.
    let (protected, _) = request(7);
    let option = OscoreOption::decode(&protected.option).expect("decodes");
    let (foreign, _) =
        unprotect_request(&c1_2_server(), &option, &protected.ciphertext, &[]).expect("verifies");
    assert_eq!(
        reason(protect_response(
            &c2_2_server(),
            foreign,
            None,
            &heartbeat(),
            &[]
        )),
        "unknown_kid"
    );
    // A client cannot take a server's response for its own request either.
    let (_, mine) = request(7);
    assert_eq!(
        reason(unprotect_response(
            &c2_1_client(),
            &mine,
            &OscoreOption::default(),
            &[0; 9],
            &[]
        )),
        "unknown_kid"
    );
}

#[test]
fn empty_plaintext_and_missing_id_context_are_refused_when_protecting() {
    assert_eq!(
        reason(protect_request(&c1_1_client(), piv(1), &[], false, &[])),
        "malformed_inner"
    );
    assert_eq!(
        reason(protect_request(
            &c1_1_client(),
            piv(1),
            &heartbeat(),
            true,
            &[]
        )),
        "bad_params"
    );
    let too_big = vec![0u8; lockfleet_oscore::MAX_PLAINTEXT_LEN + 1];
    assert_eq!(
        reason(protect_request(
            &c1_1_client(),
            piv(1),
            &too_big,
            false,
            &[]
        )),
        "plaintext_too_large"
    );
}
