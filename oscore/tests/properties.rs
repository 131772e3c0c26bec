//! Property tests: codecs round-trip and are canonical, decoders never
//! panic, protection round-trips for any payload and ids, and the replay
//! window and sender sequence never let a number through twice, whatever
//! the order of accepts, stores and restarts.

use std::collections::{BTreeSet, HashSet};

use lockfleet_oscore::{
    protect_request, protect_response, unprotect_request, unprotect_response, InnerMessage, Next,
    OscoreOption, Params, PartialIv, ReplayWindow, SecurityContext, SenderSequence, MAX_ID_LEN,
    MAX_SEQ,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn partial_iv() -> impl Strategy<Value = PartialIv> {
    prop_oneof![0..=300u64, 0..=MAX_SEQ].prop_map(|s| PartialIv::from_seq(s).expect("in range"))
}

fn oscore_option() -> impl Strategy<Value = OscoreOption> {
    (
        proptest::option::of(partial_iv()),
        proptest::option::of(vec(any::<u8>(), 0..=255)),
        proptest::option::of(vec(any::<u8>(), 0..=12)),
    )
        .prop_map(|(partial_iv, kid_context, kid)| OscoreOption {
            partial_iv,
            kid_context,
            kid,
        })
}

fn inner_message() -> impl Strategy<Value = InnerMessage> {
    let option = (
        prop_oneof![0..=40u16, any::<u16>()],
        vec(any::<u8>(), 0..300),
    );
    (any::<u8>(), vec(option, 0..6), vec(any::<u8>(), 0..400)).prop_map(
        |(code, options, payload)| InnerMessage {
            code,
            options,
            payload,
        },
    )
}

/// Distinct sender and recipient ids of at most 7 bytes.
fn id_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        vec(any::<u8>(), 0..=MAX_ID_LEN),
        vec(any::<u8>(), 0..=MAX_ID_LEN),
    )
        .prop_filter("ids must differ", |(a, b)| a != b)
}

proptest! {
    #[test]
    fn option_encode_decode_round_trips(opt in oscore_option()) {
        let wire = opt.encode().expect("kid context within 255 bytes");
        prop_assert_eq!(OscoreOption::decode(&wire), Ok(opt));
    }

    #[test]
    fn option_decode_never_panics_and_is_canonical(bytes in vec(any::<u8>(), 0..40)) {
        if let Ok(opt) = OscoreOption::decode(&bytes) {
            prop_assert_eq!(opt.encode(), Ok(bytes));
        }
    }

    #[test]
    fn inner_encode_decode_round_trips(msg in inner_message()) {
        let wire = msg.encode().expect("within limits");
        let mut sorted = msg.clone();
        sorted.options.sort_by_key(|(number, _)| *number); // stable
        prop_assert_eq!(InnerMessage::decode(&wire), Ok(sorted));
    }

    #[test]
    fn inner_decode_never_panics_and_is_canonical(bytes in vec(any::<u8>(), 0..200)) {
        if let Ok(msg) = InnerMessage::decode(&bytes) {
            prop_assert_eq!(msg.encode(), Ok(bytes));
        }
    }

    #[test]
    fn request_and_response_round_trip(
        secret in vec(any::<u8>(), 16..48),
        salt in vec(any::<u8>(), 0..16),
        (client_id, server_id) in id_pair(),
        id_context in proptest::option::of(vec(any::<u8>(), 0..16)),
        include_kid_context in any::<bool>(),
        piv in partial_iv(),
        request_payload in vec(any::<u8>(), 0..2048),
        response_payload in vec(any::<u8>(), 0..2048),
        server_piv in proptest::option::of(partial_iv()),
    ) {
        let params = Params {
            master_secret: &secret,
            master_salt: &salt,
            sender_id: &client_id,
            recipient_id: &server_id,
            id_context: id_context.as_deref(),
        };
        let client = SecurityContext::derive(&params).expect("valid");
        let server = SecurityContext::derive(&Params {
            sender_id: &server_id,
            recipient_id: &client_id,
            ..params
        })
        .expect("valid");
        let include = include_kid_context && id_context.is_some();

        let request = InnerMessage::bare(0x02, request_payload).encode().expect("encodes");
        let (protected, client_request) =
            protect_request(&client, piv, &request, include, &[]).expect("protects");
        let option = OscoreOption::decode(&protected.option).expect("decodes");
        let (server_request, plaintext) =
            unprotect_request(&server, &option, &protected.ciphertext, &[]).expect("verifies");
        prop_assert_eq!(&plaintext, &request);
        prop_assert_eq!(&server_request, &client_request);

        let response = InnerMessage::bare(0x44, response_payload).encode().expect("encodes");
        let protected =
            protect_response(&server, server_request, server_piv, &response, &[]).expect("protects");
        let option = OscoreOption::decode(&protected.option).expect("decodes");
        prop_assert_eq!(option.partial_iv, server_piv);
        let plaintext = unprotect_response(&client, &client_request, &option, &protected.ciphertext, &[])
            .expect("verifies");
        prop_assert_eq!(plaintext, response);
    }
}

#[derive(Debug, Clone)]
enum WindowOp {
    Accept(u64),
    Restart,
}

fn window_ops() -> impl Strategy<Value = Vec<WindowOp>> {
    vec(
        prop_oneof![
            8 => (0..300u64).prop_map(WindowOp::Accept),
            1 => Just(WindowOp::Restart),
        ],
        0..200,
    )
}

#[derive(Debug, Clone)]
enum SenderOp {
    Next,
    Persist,
    Crash,
}

proptest! {
    /// The window behaves exactly as a 64-wide sliding window over the set
    /// of accepted numbers, and a restart from its stored parts changes
    /// nothing: no number is ever accepted twice.
    #[test]
    fn replay_window_accepts_each_number_at_most_once(ops in window_ops()) {
        let mut window = ReplayWindow::new();
        let mut seen = BTreeSet::new();
        for op in ops {
            match op {
                WindowOp::Accept(seq) => {
                    let fresh = !seen.contains(&seq);
                    let in_window = seen.last().is_none_or(|&hi| seq + 64 > hi);
                    let result = window.accept(seq);
                    prop_assert_eq!(result.is_ok(), fresh && in_window, "seq {} -> {:?}", seq, result);
                    if result.is_ok() {
                        seen.insert(seq);
                    }
                }
                WindowOp::Restart => {
                    let (highest, bits) = window.to_parts();
                    window = ReplayWindow::from_parts(highest, bits).expect("stored by to_parts");
                }
            }
        }
    }

    /// Across crashes that lose everything but the stored limit, every
    /// number handed out is below a stored limit and none repeats.
    #[test]
    fn sender_sequence_never_repeats_across_crashes(
        step in 1..20u64,
        ops in vec(prop_oneof![6 => Just(SenderOp::Next), 2 => Just(SenderOp::Persist), 1 => Just(SenderOp::Crash)], 0..300),
    ) {
        let mut stored = 0u64;
        let mut seq = SenderSequence::restore_with_step(stored, step);
        let mut pending = None;
        let mut used = HashSet::new();
        for op in ops {
            match op {
                SenderOp::Next => match seq.next().expect("far from 2^40") {
                    Next::Seq(s) => {
                        prop_assert!(s < stored, "{} handed out above stored limit {}", s, stored);
                        prop_assert!(used.insert(s), "{} handed out twice", s);
                    }
                    Next::NeedsPersist(limit) => pending = Some(limit),
                },
                SenderOp::Persist => {
                    if let Some(limit) = pending.take() {
                        stored = limit;
                        seq.reservation_persisted(limit);
                    }
                }
                SenderOp::Crash => {
                    pending = None;
                    seq = SenderSequence::restore_with_step(stored, step);
                }
            }
        }
    }
}
