//! Unit tests of the CoAP client exchange table, with a fake clock.

use super::*;
use coap_lite::ResponseType;
use rand::rngs::SmallRng;
use rand::SeedableRng;

fn client() -> CoapClient<u32> {
    CoapClient::new(TransmissionParams::default(), 100, 7)
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(1)
}

fn parse(t: &Transmit) -> Packet {
    Packet::from_bytes(&t.bytes).unwrap()
}

fn answer(
    kind: MessageType,
    mid: u16,
    token: &[u8],
    code: MessageClass,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = code;
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    p.payload = payload.to_vec();
    p.to_bytes().unwrap()
}

const CHANGED: MessageClass = MessageClass::Response(ResponseType::Changed);

#[test]
fn request_is_a_confirmable_cbor_post_to_the_path() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c.start(t0, 1, "hb", b"\xa0", &mut rng()).unwrap();
    let p = parse(&c.poll_transmit().unwrap());
    assert_eq!(p.header.get_type(), MessageType::Confirmable);
    assert_eq!(p.header.code, MessageClass::Request(RequestType::Post));
    assert_eq!(p.header.message_id, mid);
    assert_eq!(p.get_token().len(), TOKEN_LEN);
    let path: Vec<_> = p
        .get_option(CoapOption::UriPath)
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(path, vec![b"hb".to_vec()]);
    assert_eq!(p.get_content_format(), Some(ContentFormat::ApplicationCBOR));
    assert_eq!(p.payload, b"\xa0");
}

#[test]
fn retransmits_with_exponential_backoff_then_gives_up() {
    let mut c = client();
    let t0 = Instant::now();
    c.start(t0, 9, "log", b"x", &mut rng()).unwrap();
    let first = c.poll_transmit().unwrap();
    let initial = c.poll_timeout().unwrap() - t0;
    assert!(
        initial >= ACK_TIMEOUT && initial <= ACK_TIMEOUT.mul_f64(ACK_RANDOM_FACTOR),
        "{initial:?}"
    );

    let mut gaps = vec![initial];
    for _ in 0..MAX_RETRANSMIT {
        let now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        let again = c.poll_transmit().unwrap();
        assert!(again.retransmission);
        assert_eq!(again.bytes, first.bytes, "same message id and token");
        assert_eq!(c.poll_event(), None);
        gaps.push(c.poll_timeout().unwrap() - now);
    }
    for w in gaps.windows(2) {
        assert_eq!(w[1], w[0] * 2);
    }
    let now = c.poll_timeout().unwrap();
    c.handle_timeout(now);
    assert_eq!(c.poll_transmit(), None);
    assert_eq!(c.poll_event(), Some(Event::GaveUp { tag: 9 }));
    assert!(c.is_empty());
    assert_eq!(c.poll_timeout(), None);
    // Gave up within MAX_TRANSMIT_WAIT (93 s with the defaults).
    assert!(now - t0 <= TransmissionParams::default().max_transmit_wait());
    assert_eq!(
        TransmissionParams::default().max_transmit_wait(),
        Duration::from_secs(93)
    );
}

#[test]
fn timers_do_not_fire_early() {
    let mut c = client();
    let t0 = Instant::now();
    c.start(t0, 1, "hb", b"x", &mut rng()).unwrap();
    c.poll_transmit();
    c.handle_timeout(t0 + ACK_TIMEOUT - Duration::from_millis(1));
    assert_eq!(c.poll_transmit(), None);
}

#[test]
fn piggybacked_response_completes_and_late_duplicates_are_ignored() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c.start(t0, 5, "hb", b"x", &mut rng()).unwrap();
    let token = parse(&c.poll_transmit().unwrap()).get_token().to_vec();
    let ack = answer(MessageType::Acknowledgement, mid, &token, CHANGED, b"dl");
    assert_eq!(c.handle(t0, &ack), Incoming::Matched);
    assert_eq!(
        c.poll_event(),
        Some(Event::Response {
            tag: 5,
            code: ResponseCode::CHANGED,
            payload: b"dl".to_vec(),
            max_age: None,
            oscore: None,
        })
    );
    assert_eq!(c.poll_timeout(), None, "no retransmission after the ACK");
    assert_eq!(c.handle(t0, &ack), Incoming::Unmatched);
    assert_eq!(c.poll_event(), None);
}

#[test]
fn an_ack_with_a_foreign_token_is_not_ours() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c.start(t0, 5, "hb", b"x", &mut rng()).unwrap();
    let ack = answer(MessageType::Acknowledgement, mid, b"zzzz", CHANGED, b"");
    assert_eq!(c.handle(t0, &ack), Incoming::Unmatched);
    assert_eq!(c.len(), 1);
}

#[test]
fn error_codes_are_reported_with_their_diagnostic() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c.start(t0, 5, "hb", b"x", &mut rng()).unwrap();
    let token = parse(&c.poll_transmit().unwrap()).get_token().to_vec();
    let bad = MessageClass::Response(ResponseType::BadRequest);
    c.handle(
        t0,
        &answer(MessageType::Acknowledgement, mid, &token, bad, b"why"),
    );
    match c.poll_event() {
        Some(Event::Response { code, payload, .. }) => {
            assert_eq!(code.to_string(), "4.00");
            assert!(!code.is_success());
            assert_eq!(payload, b"why");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn separate_response_is_acknowledged_and_its_duplicate_too() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c.start(t0, 3, "log", b"x", &mut rng()).unwrap();
    let token = parse(&c.poll_transmit().unwrap()).get_token().to_vec();
    let empty_ack = answer(
        MessageType::Acknowledgement,
        mid,
        &[],
        MessageClass::Empty,
        b"",
    );
    assert_eq!(c.handle(t0, &empty_ack), Incoming::Matched);
    // No more retransmissions: waiting for the separate response.
    c.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(c.poll_transmit(), None);

    let con = answer(MessageType::Confirmable, 4242, &token, CHANGED, b"ack");
    assert_eq!(c.handle(t0, &con), Incoming::Matched);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Response { tag: 3, .. })
    ));
    let ack = parse(&c.poll_transmit().unwrap());
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(ack.header.message_id, 4242);
    assert_eq!(ack.header.code, MessageClass::Empty);

    assert_eq!(c.handle(t0, &con), Incoming::Unmatched);
    assert_eq!(
        parse(&c.poll_transmit().unwrap()).header.get_type(),
        MessageType::Acknowledgement
    );
    assert_eq!(c.poll_event(), None, "completed once");
}

#[test]
fn a_separate_response_that_never_comes_gives_up() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c.start(t0, 3, "log", b"x", &mut rng()).unwrap();
    c.poll_transmit();
    c.handle(
        t0,
        &answer(
            MessageType::Acknowledgement,
            mid,
            &[],
            MessageClass::Empty,
            b"",
        ),
    );
    c.handle_timeout(t0 + EXCHANGE_LIFETIME);
    assert_eq!(c.poll_event(), Some(Event::GaveUp { tag: 3 }));
}

#[test]
fn unknown_con_gets_reset_and_reset_ends_the_exchange() {
    let mut c = client();
    let t0 = Instant::now();
    let con = answer(MessageType::Confirmable, 9, b"nope", CHANGED, b"");
    assert_eq!(c.handle(t0, &con), Incoming::Unmatched);
    assert_eq!(
        parse(&c.poll_transmit().unwrap()).header.get_type(),
        MessageType::Reset
    );

    let mid = c.start(t0, 8, "hb", b"x", &mut rng()).unwrap();
    c.poll_transmit();
    c.handle(
        t0,
        &answer(MessageType::Reset, mid, &[], MessageClass::Empty, b""),
    );
    assert_eq!(c.poll_event(), Some(Event::Reset { tag: 8 }));
    assert_eq!(c.handle(t0, b"\xff\x00"), Incoming::Malformed);
}

#[test]
fn message_ids_and_tokens_never_collide_on_a_socket() {
    let mut c = CoapClient::new(TransmissionParams::default(), u16::MAX - 2, u32::MAX - 1);
    let t0 = Instant::now();
    let mut mids = HashSet::new();
    let mut tokens = HashSet::new();
    for i in 0..1000u32 {
        let mid = c.start(t0, i, "hb", b"x", &mut rng()).unwrap();
        assert!(mids.insert(mid));
        let p = parse(&c.poll_transmit().unwrap());
        assert!(tokens.insert(p.get_token().to_vec()));
    }
    // Wrapping skips the ids still open.
    let mut c2 = CoapClient::new(TransmissionParams::default(), 0, 0);
    let first = c2.start(t0, 0, "hb", b"x", &mut rng()).unwrap();
    c2.next_mid = first;
    let second = c2.start(t0, 1, "hb", b"x", &mut rng()).unwrap();
    assert_ne!(first, second);
}

#[test]
fn message_ids_are_not_reused_within_exchange_lifetime() {
    let mut c = CoapClient::new(TransmissionParams::default(), 0, 0);
    let t0 = Instant::now();
    let first = c.start(t0, 0, "hb", b"x", &mut rng()).unwrap();
    let token = parse(&c.poll_transmit().unwrap()).get_token().to_vec();
    c.handle(
        t0,
        &answer(MessageType::Acknowledgement, first, &token, CHANGED, b""),
    );
    assert!(c.is_empty());
    // Use up every other id: the finished exchange's id is still reserved.
    for i in 1..=u16::MAX as u32 {
        let mid = c.start(t0, i, "hb", b"x", &mut rng()).unwrap();
        assert_ne!(mid, first);
        c.exchanges.clear();
        c.deadlines.clear();
        c.by_token.clear();
    }
    assert_eq!(
        c.start(t0, 0, "hb", b"x", &mut rng()),
        Err(StartError::NoMessageId)
    );
    // After EXCHANGE_LIFETIME the ids are free again.
    assert!(c
        .start(t0 + EXCHANGE_LIFETIME, 0, "hb", b"x", &mut rng())
        .is_ok());
}

#[test]
fn a_5_03_carries_its_max_age_to_the_caller() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c.start(t0, 7, "hb", b"x", &mut rng()).unwrap();
    let token = parse(&c.poll_transmit().unwrap()).get_token().to_vec();
    let mut busy = Packet::new();
    busy.header.set_type(MessageType::Acknowledgement);
    busy.header.code = MessageClass::Response(coap_lite::ResponseType::ServiceUnavailable);
    busy.header.message_id = mid;
    busy.set_token(token);
    busy.add_option(coap_lite::CoapOption::MaxAge, vec![0x01, 0x2c]);
    assert_eq!(c.handle(t0, &busy.to_bytes().unwrap()), Incoming::Matched);
    match c.poll_event() {
        Some(Event::Response { code, max_age, .. }) => {
            assert!(code.is_server_error());
            assert_eq!(max_age, Some(300));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_protected_request_shows_only_the_oscore_option_and_its_answer_hands_it_back() {
    let mut c = client();
    let t0 = Instant::now();
    let mid = c
        .start_protected(t0, 4, b"\x09\x07\x01", b"ciphertext", &mut rng())
        .unwrap();
    let first = c.poll_transmit().unwrap();
    let p = parse(&first);
    assert_eq!(p.header.code, MessageClass::Request(RequestType::Post));
    assert_eq!(p.header.get_type(), MessageType::Confirmable);
    let numbers: Vec<u16> = p.options().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![9], "no Uri-Path, no Content-Format outside");
    assert_eq!(
        p.get_first_option(CoapOption::Oscore),
        Some(&b"\x09\x07\x01".to_vec())
    );
    assert_eq!(p.payload, b"ciphertext");

    // A retransmission is the same bytes (same Partial IV).
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.poll_transmit().unwrap().bytes, first.bytes);

    let mut ack = Packet::new();
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.code = CHANGED;
    ack.header.message_id = mid;
    ack.set_token(p.get_token().to_vec());
    ack.add_option(CoapOption::Oscore, Vec::new());
    ack.payload = b"sealed".to_vec();
    c.handle(t0, &ack.to_bytes().unwrap());
    assert_eq!(
        c.poll_event(),
        Some(Event::Response {
            tag: 4,
            code: ResponseCode::CHANGED,
            payload: b"sealed".to_vec(),
            max_age: None,
            oscore: Some(Vec::new()),
        })
    );
}
