//! CoAP message framing (RFC 7252 §3, §4): what kind of message a datagram
//! is, and the bytes of our answers. Pure functions; coap-lite is the codec.
//!
//! This layer sees message types and ids, never resources: requests go on to
//! [`super::handler`], everything else (pings, stray acknowledgements,
//! malformed messages) is settled here.

use super::handler::Reply;
use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

/// The only CoAP version there is (RFC 7252 §3).
pub const COAP_VERSION: u8 = 1;

/// Longest token RFC 7252 §3 allows; lengths 9-15 are a format error.
pub const MAX_TOKEN_LEN: usize = 8;

/// What an incoming datagram is, and what the endpoint does about it.
#[derive(Debug)]
pub enum Inbound {
    /// A confirmable or non-confirmable request: deduplicate, then handle.
    Request(Packet),
    /// An empty confirmable message, a CoAP ping (§4.2): answer with
    /// [`reset`] for this message id.
    Ping(u16),
    /// A confirmable message we cannot process (format error, reserved code,
    /// a response to a request we never sent): reject it with [`reset`]
    /// (§4.2). `reason` is the metric label.
    Reject {
        message_id: u16,
        reason: &'static str,
    },
    /// Something to drop without an answer. `reason` is `None` for messages
    /// that are normal but need nothing (an empty ACK or RST), else the
    /// metric label of the fault (§4.3: never answer a faulty NON).
    Ignore(Option<&'static str>),
    /// Not a CoAP message at all (too short, or not version 1): drop it.
    NotCoap,
}

/// Classify one datagram (RFC 7252 §3, §4.2, §4.3).
pub fn classify(datagram: &[u8]) -> Inbound {
    let [first, code, mid_hi, mid_lo, ..] = *datagram else {
        return Inbound::NotCoap;
    };
    if first >> 6 != COAP_VERSION {
        return Inbound::NotCoap;
    }
    let confirmable = (first >> 4) & 0b11 == 0;
    let message_id = u16::from_be_bytes([mid_hi, mid_lo]);
    let token_len = usize::from(first & 0x0f);
    let fault = |reason: &'static str| {
        if confirmable {
            Inbound::Reject { message_id, reason }
        } else {
            Inbound::Ignore(Some(reason))
        }
    };

    if code == 0 {
        // §4.1: an Empty message is exactly the 4-byte header.
        if datagram.len() != 4 {
            return fault("format_error");
        }
        return match (first >> 4) & 0b11 {
            0 => Inbound::Ping(message_id),
            // §4.3: a NON is never Empty.
            1 => Inbound::Ignore(Some("format_error")),
            // An ACK or RST for something we sent: we keep no state to match.
            _ => Inbound::Ignore(None),
        };
    }
    if token_len > MAX_TOKEN_LEN {
        return fault("format_error");
    }
    let Ok(packet) = Packet::from_bytes(datagram) else {
        return fault("format_error");
    };
    // §5.5: a payload marker must be followed by a payload.
    if ends_with_payload_marker(datagram, &packet) {
        return fault("format_error");
    }
    match (code >> 5, packet.header.get_type()) {
        (0, MessageType::Confirmable | MessageType::NonConfirmable) => Inbound::Request(packet),
        // §4.2/§4.3: ACK and RST carry responses or nothing, never requests.
        (0, _) => Inbound::Ignore(Some("format_error")),
        // A response, but this endpoint sends no requests.
        (2 | 4 | 5, _) => fault("unexpected_response"),
        // §12.1.1: classes 1, 3, 6 and 7 are reserved.
        _ => fault("format_error"),
    }
}

/// True when the datagram ends in a payload marker with nothing after it,
/// which coap-lite accepts silently. Option encodings are unique, so the
/// re-encoded message is exactly one byte shorter in that case.
fn ends_with_payload_marker(datagram: &[u8], packet: &Packet) -> bool {
    packet.payload.is_empty()
        && datagram.last() == Some(&0xff)
        && packet
            .to_bytes()
            .is_ok_and(|bytes| bytes.len() + 1 == datagram.len())
}

/// An empty Reset for `message_id` (§4.2): the answer to a ping and the
/// rejection of a confirmable message we cannot process.
pub fn reset(message_id: u16) -> Bytes {
    let [hi, lo] = message_id.to_be_bytes();
    // Version 1, type RST (3), token length 0; code 0.00.
    Bytes::copy_from_slice(&[0x70, 0x00, hi, lo])
}

/// Who an answer goes to within the peer's exchange: the request's type,
/// message id and token, kept after the request itself is consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub confirmable: bool,
    pub message_id: u16,
    pub token: Vec<u8>,
}

impl ReplyTo {
    pub fn of(request: &Packet) -> Self {
        ReplyTo {
            confirmable: request.header.get_type() == MessageType::Confirmable,
            message_id: request.header.message_id,
            token: request.get_token().to_vec(),
        }
    }
}

/// Frame `reply` as the response to `to`: a piggybacked ACK (same message id
/// and token) for a confirmable request (§5.2.1), a NON with `non_message_id`
/// and the same token for a non-confirmable one (§5.2.3).
pub fn encode_reply(to: &ReplyTo, reply: &Reply, non_message_id: u16) -> Bytes {
    let (kind, message_id) = if to.confirmable {
        (MessageType::Acknowledgement, to.message_id)
    } else {
        (MessageType::NonConfirmable, non_message_id)
    };
    let mut packet = Packet::new();
    packet.header.set_version(COAP_VERSION);
    packet.header.set_type(kind);
    packet.header.code = MessageClass::Response(reply.code);
    packet.header.message_id = message_id;
    // The token came from a parsed request, so it is at most 8 bytes.
    packet.set_token(to.token.clone());
    for (option, value) in reply.options() {
        packet.add_option(option, uint_option(value));
    }
    if let Some(oscore) = &reply.oscore {
        packet.add_option(CoapOption::Oscore, oscore.clone());
    }
    packet.payload = reply.payload.clone();
    match packet.to_bytes() {
        Ok(bytes) => Bytes::from(bytes),
        // Unreachable with our small replies; answer with the bare code
        // rather than nothing, so that the peer stops retransmitting.
        Err(_) => {
            let [hi, lo] = message_id.to_be_bytes();
            let first = (COAP_VERSION << 6) | (type_bits(kind) << 4) | to.token.len() as u8;
            let mut bytes = vec![first, u8::from(MessageClass::Response(reply.code)), hi, lo];
            bytes.extend_from_slice(&to.token);
            Bytes::from(bytes)
        }
    }
}

fn type_bits(kind: MessageType) -> u8 {
    match kind {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    }
}

/// RFC 7252 §3.2 uint option value: big-endian, no leading zero bytes.
pub fn uint_option(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// RFC 7252 §3.2 uint option value, if it fits `max_len` bytes.
pub fn read_uint_option(value: &[u8], max_len: usize) -> Option<u32> {
    if value.len() > max_len.min(4) {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{RequestType, ResponseType};

    fn request(kind: MessageType, mid: u16) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(kind);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = mid;
        p.set_token(vec![1, 2, 3, 4]);
        p.add_option(CoapOption::UriPath, b"hb".to_vec());
        p.payload = vec![0xa0];
        p
    }

    #[test]
    fn ping_is_answered_with_reset() {
        let ping = [0x40, 0x00, 0x12, 0x34];
        assert!(matches!(classify(&ping), Inbound::Ping(0x1234)));
        assert_eq!(&reset(0x1234)[..], &[0x70, 0x00, 0x12, 0x34]);
    }

    #[test]
    fn empty_ack_and_rst_are_ignored_quietly() {
        assert!(matches!(classify(&[0x60, 0, 0, 1]), Inbound::Ignore(None)));
        assert!(matches!(classify(&[0x70, 0, 0, 1]), Inbound::Ignore(None)));
    }

    #[test]
    fn empty_con_with_a_token_is_rejected() {
        let bytes = [0x41, 0x00, 0x00, 0x05, 0xaa];
        assert!(matches!(
            classify(&bytes),
            Inbound::Reject {
                message_id: 5,
                reason: "format_error"
            }
        ));
    }

    #[test]
    fn short_or_wrong_version_datagrams_are_not_coap() {
        assert!(matches!(classify(&[]), Inbound::NotCoap));
        assert!(matches!(classify(&[0x40, 0x01, 0x00]), Inbound::NotCoap));
        assert!(matches!(classify(&[0x80, 0x01, 0, 1]), Inbound::NotCoap));
        assert!(matches!(classify(b"\xff\xffgarbage"), Inbound::NotCoap));
    }

    #[test]
    fn requests_pass_through() {
        let bytes = request(MessageType::Confirmable, 9).to_bytes().unwrap();
        let Inbound::Request(p) = classify(&bytes) else {
            panic!("not a request");
        };
        assert_eq!(p.header.message_id, 9);
        let bytes = request(MessageType::NonConfirmable, 9).to_bytes().unwrap();
        assert!(matches!(classify(&bytes), Inbound::Request(_)));
    }

    #[test]
    fn request_in_an_ack_is_a_format_error() {
        let bytes = request(MessageType::Acknowledgement, 9).to_bytes().unwrap();
        assert!(matches!(
            classify(&bytes),
            Inbound::Ignore(Some("format_error"))
        ));
    }

    #[test]
    fn con_response_is_rejected_non_response_ignored() {
        let mut p = request(MessageType::Confirmable, 3);
        p.header.code = MessageClass::Response(ResponseType::Content);
        assert!(matches!(
            classify(&p.to_bytes().unwrap()),
            Inbound::Reject {
                message_id: 3,
                reason: "unexpected_response"
            }
        ));
        p.header.set_type(MessageType::NonConfirmable);
        assert!(matches!(
            classify(&p.to_bytes().unwrap()),
            Inbound::Ignore(Some("unexpected_response"))
        ));
    }

    #[test]
    fn reserved_class_and_long_token_are_format_errors() {
        // Code 1.01 (reserved class), CON.
        assert!(matches!(
            classify(&[0x40, 0x21, 0, 7]),
            Inbound::Reject {
                message_id: 7,
                reason: "format_error"
            }
        ));
        // Token length 9.
        let mut bytes = vec![0x49, 0x02, 0, 8];
        bytes.extend_from_slice(&[0; 9]);
        assert!(matches!(
            classify(&bytes),
            Inbound::Reject { message_id: 8, .. }
        ));
    }

    #[test]
    fn truncated_option_is_a_format_error() {
        // POST, CON, option delta 11 (Uri-Path) length 5 but only 2 bytes follow.
        let bytes = [0x40, 0x02, 0, 9, 0xb5, b'h', b'b'];
        assert!(matches!(
            classify(&bytes),
            Inbound::Reject { message_id: 9, .. }
        ));
    }

    #[test]
    fn payload_marker_without_payload_is_a_format_error() {
        let mut bytes = request(MessageType::Confirmable, 4).to_bytes().unwrap();
        bytes.truncate(bytes.len() - 1); // drop the one payload byte
        assert_eq!(bytes.last(), Some(&0xff));
        assert!(matches!(
            classify(&bytes),
            Inbound::Reject { message_id: 4, .. }
        ));
        // A 0xff inside an option value is not a marker.
        let mut p = request(MessageType::Confirmable, 5);
        p.payload.clear();
        p.add_option(CoapOption::UriQuery, vec![0xff]);
        assert!(matches!(
            classify(&p.to_bytes().unwrap()),
            Inbound::Request(_)
        ));
    }

    #[test]
    fn con_reply_is_a_piggybacked_ack_non_reply_a_new_non() {
        let reply = Reply::cbor(ResponseType::Changed, vec![0xa0]);
        let con = ReplyTo::of(&request(MessageType::Confirmable, 0x0102));
        let ack = Packet::from_bytes(&encode_reply(&con, &reply, 999)).unwrap();
        assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(ack.header.message_id, 0x0102);
        assert_eq!(ack.get_token(), &[1, 2, 3, 4]);
        assert_eq!(
            ack.header.code,
            MessageClass::Response(ResponseType::Changed)
        );
        assert_eq!(
            ack.get_first_option(CoapOption::ContentFormat),
            Some(&vec![60])
        );
        assert_eq!(ack.payload, vec![0xa0]);

        let non = ReplyTo::of(&request(MessageType::NonConfirmable, 0x0102));
        let p = Packet::from_bytes(&encode_reply(&non, &reply, 999)).unwrap();
        assert_eq!(p.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(p.header.message_id, 999);
        assert_eq!(p.get_token(), &[1, 2, 3, 4]);
    }

    #[test]
    fn uint_options_are_minimal() {
        assert_eq!(uint_option(0), Vec::<u8>::new());
        assert_eq!(uint_option(60), vec![60]);
        assert_eq!(uint_option(2048), vec![0x08, 0x00]);
        assert_eq!(read_uint_option(&[0x08, 0x00], 2), Some(2048));
        assert_eq!(read_uint_option(&[1, 0, 0], 2), None);
        assert_eq!(read_uint_option(&[], 2), Some(0));
    }

    /// No input panics the framing or the handler: random datagrams, and
    /// every single-byte corruption of a valid request.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let run = |bytes: &[u8]| {
            if let Inbound::Request(p) = classify(bytes) {
                let _ = super::super::handler::handle_request(&p, 0);
            }
        };
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            // xorshift64: deterministic, no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = 0x40 | (*first & 0x3f); // mostly version 1
            }
            run(&bytes);
        }
        let valid = request(MessageType::Confirmable, 1).to_bytes().unwrap();
        for i in 0..valid.len() {
            for b in 0..=255u8 {
                let mut bytes = valid.clone();
                bytes[i] = b;
                run(&bytes);
            }
        }
    }
}
