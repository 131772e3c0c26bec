//! The CoAP client side of one UDP socket (RFC 7252), sans I/O: builds
//! confirmable POSTs with coap-lite, allocates message ids and tokens so they
//! never collide on the socket, matches answers (piggybacked and separate),
//! and runs the retransmission timers (§4.2, §4.8). Time goes in as `now`;
//! datagrams come out of [`CoapClient::poll_transmit`] and outcomes out of
//! [`CoapClient::poll_event`], in the style of quinn-proto.
//!
//! It does not know about locks: each exchange carries an opaque `tag`. Nor
//! about OSCORE: [`CoapClient::start_protected`] sends the option value and
//! ciphertext it is given, [`Event::Response`] hands back the answer's OSCORE
//! option, and the caller ([`crate::security`]) verifies. A retransmission
//! is always the same bytes, so it never needs a new Partial IV.

use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType};
use rand::Rng;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8 default: initial retransmission timeout.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// RFC 7252 §4.8: the initial timeout is random in
/// `[ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR]`.
pub const ACK_RANDOM_FACTOR: f64 = 1.5;
/// RFC 7252 §4.8: retransmissions before giving up.
pub const MAX_RETRANSMIT: u32 = 4;
/// RFC 7252 §4.8.2: how long a message may be in flight, and so how long we
/// wait for a separate response after the server's empty ACK.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Token length in bytes: a per-socket counter, unique for 2^32 requests.
pub const TOKEN_LEN: usize = 4;
/// Largest datagram we build (the uplink limit plus header and options).
pub const MAX_DATAGRAM_BYTES: usize = 4096;

/// Retransmission parameters (RFC 7252 §4.8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransmissionParams {
    pub ack_timeout: Duration,
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
}

impl Default for TransmissionParams {
    fn default() -> Self {
        TransmissionParams {
            ack_timeout: ACK_TIMEOUT,
            ack_random_factor: ACK_RANDOM_FACTOR,
            max_retransmit: MAX_RETRANSMIT,
        }
    }
}

impl TransmissionParams {
    /// RFC 7252 §4.8.2 MAX_TRANSMIT_WAIT: from first transmission to giving up.
    pub fn max_transmit_wait(&self) -> Duration {
        let factor = (1u64 << (self.max_retransmit + 1)) - 1;
        self.ack_timeout
            .mul_f64(factor as f64 * self.ack_random_factor)
    }
}

/// A response code such as 2.04 (`0x44`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseCode(pub u8);

impl ResponseCode {
    pub const CHANGED: ResponseCode = ResponseCode(0x44);
    pub fn class(self) -> u8 {
        self.0 >> 5
    }
    pub fn detail(self) -> u8 {
        self.0 & 0x1f
    }
    /// 2.xx.
    pub fn is_success(self) -> bool {
        self.class() == 2
    }
    /// 5.xx: the server could not handle it now (busy, shutting down,
    /// storage failed); the request may succeed later.
    pub fn is_server_error(self) -> bool {
        self.class() == 5
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

/// Max-Age when a response has none (RFC 7252 §5.10.5).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

/// The Max-Age option's value, when present and well formed (0 to 4 bytes).
fn max_age(packet: &Packet) -> Option<u32> {
    let value = packet.get_first_option(coap_lite::CoapOption::MaxAge)?;
    (value.len() <= 4).then(|| value.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)))
}

/// The event of an answer to the exchange tagged `tag`.
fn response<T>(tag: T, packet: &Packet) -> Event<T> {
    Event::Response {
        tag,
        code: ResponseCode(u8::from(packet.header.code)),
        payload: packet.payload.clone(),
        max_age: max_age(packet),
        oscore: packet.get_first_option(CoapOption::Oscore).cloned(),
    }
}

/// How an exchange ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    Response {
        tag: T,
        code: ResponseCode,
        payload: Vec<u8>,
        /// The Max-Age option (RFC 7252 §5.10.5), seconds: on a 5.03, when
        /// to try again.
        max_age: Option<u32>,
        /// The OSCORE option's value (RFC 8613 §2) when the answer has one
        /// (empty for a protected response without Partial IV): then
        /// `payload` is ciphertext and `code` only the outer code.
        oscore: Option<Vec<u8>>,
    },
    /// The server answered with RST: it could not process the message.
    Reset { tag: T },
    /// No answer after MAX_RETRANSMIT retransmissions (or no separate
    /// response within EXCHANGE_LIFETIME).
    GaveUp { tag: T },
}

/// A datagram to send to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub bytes: Vec<u8>,
    pub retransmission: bool,
}

/// What an incoming datagram was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// It answered (or acknowledged) an open exchange.
    Matched,
    /// A duplicate or late answer, or something not for us; ignored (or
    /// answered with an ACK/RST as the RFC requires).
    Unmatched,
    /// Not a CoAP message.
    Malformed,
}

/// Why a request could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("all 65536 message ids were used on this socket within EXCHANGE_LIFETIME: spread the locks over more sockets")]
    NoMessageId,
    #[error("request does not fit in a datagram: {0}")]
    TooLarge(String),
}

#[derive(Debug)]
enum State {
    /// Retransmitting until an ACK arrives.
    AwaitingAck { retransmits: u32, timeout: Duration },
    /// Empty ACK received; waiting for the separate response.
    AwaitingResponse,
}

#[derive(Debug)]
struct Exchange<T> {
    tag: T,
    token: [u8; TOKEN_LEN],
    bytes: Vec<u8>,
    deadline: Instant,
    state: State,
}

/// The open exchanges of one socket. See the module docs.
#[derive(Debug)]
pub struct CoapClient<T> {
    params: TransmissionParams,
    next_mid: u16,
    next_token: u32,
    exchanges: HashMap<u16, Exchange<T>>,
    by_token: HashMap<[u8; TOKEN_LEN], u16>,
    deadlines: BTreeSet<(Instant, u16)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event<T>>,
    /// Separate responses (CON) we acknowledged, by message id, so a
    /// retransmitted copy gets the same empty ACK (RFC 7252 §4.5).
    acked_separate: VecDeque<(Instant, u16)>,
    acked_separate_ids: HashSet<u16>,
    /// Message ids used within EXCHANGE_LIFETIME, oldest first: RFC 7252
    /// §4.4 forbids reusing one sooner (the server would answer the new
    /// request from its duplicate cache). Bounds a socket to about
    /// 65536 / 247 s = 265 new exchanges per second.
    recent_mids: VecDeque<(Instant, u16)>,
    recent_mid_set: HashSet<u16>,
}

impl<T: Copy> CoapClient<T> {
    /// A client whose first message id and token are `first_mid` and
    /// `first_token` (random per socket, RFC 7252 §4.4 and §5.3.1).
    pub fn new(params: TransmissionParams, first_mid: u16, first_token: u32) -> Self {
        CoapClient {
            params,
            next_mid: first_mid,
            next_token: first_token,
            exchanges: HashMap::new(),
            by_token: HashMap::new(),
            deadlines: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            acked_separate: VecDeque::new(),
            acked_separate_ids: HashSet::new(),
            recent_mids: VecDeque::new(),
            recent_mid_set: HashSet::new(),
        }
    }

    /// Open exchanges.
    pub fn len(&self) -> usize {
        self.exchanges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
    }

    /// Starts a confirmable POST of `payload` (Content-Format 60,
    /// application/cbor) to `/{path}`, unprotected, and queues its first
    /// transmission. Returns the message id.
    pub fn start<R: Rng>(
        &mut self,
        now: Instant,
        tag: T,
        path: &str,
        payload: &[u8],
        rng: &mut R,
    ) -> Result<u16, StartError> {
        let mut packet = Packet::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        packet.set_content_format(ContentFormat::ApplicationCBOR);
        packet.payload = payload.to_vec();
        self.start_packet(now, tag, packet, rng)
    }

    /// Starts an OSCORE-protected confirmable POST (RFC 8613 §4.2: the
    /// outer code of a request is POST): the OSCORE option carries `option`
    /// and the payload is `ciphertext`; path and Content-Format are inside
    /// it. Its retransmissions are these bytes again. Returns the message id.
    pub fn start_protected<R: Rng>(
        &mut self,
        now: Instant,
        tag: T,
        option: &[u8],
        ciphertext: &[u8],
        rng: &mut R,
    ) -> Result<u16, StartError> {
        let mut packet = Packet::new();
        packet.add_option(CoapOption::Oscore, option.to_vec());
        packet.payload = ciphertext.to_vec();
        self.start_packet(now, tag, packet, rng)
    }

    /// Gives `packet` (options and payload set) a message id and token,
    /// makes it a confirmable POST and queues its first transmission.
    fn start_packet<R: Rng>(
        &mut self,
        now: Instant,
        tag: T,
        mut packet: Packet,
        rng: &mut R,
    ) -> Result<u16, StartError> {
        packet.header.set_type(MessageType::Confirmable);
        packet.header.code = MessageClass::Request(RequestType::Post);
        let mid = self.allocate_mid(now)?;
        let token = self.next_token.to_be_bytes();
        self.next_token = self.next_token.wrapping_add(1);
        packet.header.message_id = mid;
        packet.set_token(token.to_vec());
        let bytes = packet
            .to_bytes_with_limit(MAX_DATAGRAM_BYTES)
            .map_err(|e| StartError::TooLarge(e.to_string()))?;

        // RFC 7252 §4.2: initial timeout random in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR].
        let factor = rng.random_range(1.0..=self.params.ack_random_factor.max(1.0));
        let timeout = self.params.ack_timeout.mul_f64(factor);
        let deadline = now + timeout;
        self.transmits.push_back(Transmit {
            bytes: bytes.clone(),
            retransmission: false,
        });
        self.deadlines.insert((deadline, mid));
        self.by_token.insert(token, mid);
        self.exchanges.insert(
            mid,
            Exchange {
                tag,
                token,
                bytes,
                deadline,
                state: State::AwaitingAck {
                    retransmits: 0,
                    timeout,
                },
            },
        );
        Ok(mid)
    }

    /// Next message id not used within EXCHANGE_LIFETIME (open exchanges
    /// are always within it).
    fn allocate_mid(&mut self, now: Instant) -> Result<u16, StartError> {
        while let Some((used_at, mid)) = self.recent_mids.front().copied() {
            if used_at + EXCHANGE_LIFETIME > now {
                break;
            }
            self.recent_mids.pop_front();
            self.recent_mid_set.remove(&mid);
        }
        for _ in 0..=u16::MAX as u32 {
            let mid = self.next_mid;
            self.next_mid = self.next_mid.wrapping_add(1);
            if !self.exchanges.contains_key(&mid) && self.recent_mid_set.insert(mid) {
                self.recent_mids.push_back((now, mid));
                return Ok(mid);
            }
        }
        Err(StartError::NoMessageId)
    }

    /// Handles a datagram from the server.
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) -> Incoming {
        self.forget_old_separate(now);
        let Ok(packet) = Packet::from_bytes(datagram) else {
            return Incoming::Malformed;
        };
        let mid = packet.header.message_id;
        match packet.header.get_type() {
            MessageType::Acknowledgement => self.on_ack(now, &packet),
            MessageType::Reset => match self.remove(mid) {
                Some(ex) => {
                    self.events.push_back(Event::Reset { tag: ex.tag });
                    Incoming::Matched
                }
                None => Incoming::Unmatched,
            },
            MessageType::Confirmable => {
                // RFC 7252 §5.2.2: a separate response comes as a CON that we
                // must acknowledge; anything else we cannot process gets RST.
                let matched = self.on_separate_response(&packet);
                if matched || self.acked_separate_ids.contains(&mid) {
                    if matched {
                        self.acked_separate
                            .push_back((now + EXCHANGE_LIFETIME, mid));
                        self.acked_separate_ids.insert(mid);
                    }
                    self.transmits
                        .push_back(empty(MessageType::Acknowledgement, mid));
                } else {
                    self.transmits.push_back(empty(MessageType::Reset, mid));
                }
                if matched {
                    Incoming::Matched
                } else {
                    Incoming::Unmatched
                }
            }
            MessageType::NonConfirmable => {
                if self.on_separate_response(&packet) {
                    Incoming::Matched
                } else {
                    Incoming::Unmatched
                }
            }
        }
    }

    fn on_ack(&mut self, now: Instant, packet: &Packet) -> Incoming {
        let mid = packet.header.message_id;
        let Some(ex) = self.exchanges.get_mut(&mid) else {
            return Incoming::Unmatched;
        };
        if packet.header.code == MessageClass::Empty {
            // RFC 7252 §5.2.2: the server will answer separately; stop
            // retransmitting and wait for it.
            if matches!(ex.state, State::AwaitingAck { .. }) {
                self.deadlines.remove(&(ex.deadline, mid));
                ex.deadline = now + EXCHANGE_LIFETIME;
                ex.state = State::AwaitingResponse;
                self.deadlines.insert((ex.deadline, mid));
            }
            return Incoming::Matched;
        }
        // RFC 7252 §5.3.2: a piggybacked response must echo our token; an old
        // ACK for a reused message id does not.
        if packet.get_token() != ex.token.as_slice() {
            return Incoming::Unmatched;
        }
        let Some(ex) = self.remove(mid) else {
            return Incoming::Unmatched;
        };
        self.events.push_back(response(ex.tag, packet));
        Incoming::Matched
    }

    /// Completes the exchange whose token a separate response carries.
    fn on_separate_response(&mut self, packet: &Packet) -> bool {
        if !matches!(packet.header.code, MessageClass::Response(_)) {
            return false;
        }
        let Ok(token) = <[u8; TOKEN_LEN]>::try_from(packet.get_token()) else {
            return false;
        };
        let Some(mid) = self.by_token.get(&token).copied() else {
            return false;
        };
        let Some(ex) = self.remove(mid) else {
            return false;
        };
        self.events.push_back(response(ex.tag, packet));
        true
    }

    fn remove(&mut self, mid: u16) -> Option<Exchange<T>> {
        let ex = self.exchanges.remove(&mid)?;
        self.deadlines.remove(&(ex.deadline, mid));
        self.by_token.remove(&ex.token);
        Some(ex)
    }

    fn forget_old_separate(&mut self, now: Instant) {
        while let Some((expiry, mid)) = self.acked_separate.front().copied() {
            if expiry > now {
                break;
            }
            self.acked_separate.pop_front();
            self.acked_separate_ids.remove(&mid);
        }
    }

    /// Fires every retransmission timer due at `now` (RFC 7252 §4.2:
    /// exponential back-off, same message id and token).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((deadline, mid)) = self.deadlines.first().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(ex) = self.exchanges.get_mut(&mid) else {
                continue;
            };
            match &mut ex.state {
                State::AwaitingAck {
                    retransmits,
                    timeout,
                } if *retransmits < self.params.max_retransmit => {
                    *retransmits += 1;
                    *timeout *= 2;
                    ex.deadline = now + *timeout;
                    self.deadlines.insert((ex.deadline, mid));
                    self.transmits.push_back(Transmit {
                        bytes: ex.bytes.clone(),
                        retransmission: true,
                    });
                }
                _ => {
                    if let Some(ex) = self.remove(mid) {
                        self.events.push_back(Event::GaveUp { tag: ex.tag });
                    }
                }
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next finished exchange.
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    /// When [`CoapClient::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}

fn empty(kind: MessageType, mid: u16) -> Transmit {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    Transmit {
        // An empty message is 4 bytes and always encodes.
        bytes: p.to_bytes().unwrap_or_default(),
        retransmission: false,
    }
}

#[cfg(test)]
#[path = "coap_client_tests.rs"]
mod tests;
