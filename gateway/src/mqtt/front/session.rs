//! One client connection through the front, as a state machine: bytes from
//! the client go in, [`Step`]s come out (authenticate this login, open the
//! broker connection with this CONNECT, forward this frame, answer the
//! client, close). No socket and no clock, so every refusal is tested
//! without a network (the style of rumqttc's `state.rs`).
//!
//! The front never re-encodes what it forwards, except the CONNECT: the
//! client's login is replaced by the internal credential the brokers
//! require, so the brokers are reachable only through the front. Frames
//! from the broker to the client pass through untouched (the I/O edge copies
//! whole frames, so answers the front makes itself never split one).

use super::policy::{may_publish, may_subscribe, Identity};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{check, Error as CodecError, Protocol};
use zeroize::Zeroizing;

/// What the client gave at CONNECT, to be checked by the authenticator.
#[derive(Debug)]
pub struct Credentials {
    /// A device's id (also its client id), or the backend's username.
    pub username: String,
    pub password: Zeroizing<String>,
}

/// What the I/O edge must do next.
#[derive(Debug)]
pub enum Step {
    /// Check these credentials and call [`Session::on_authenticated`].
    Authenticate(Credentials),
    /// Connect to `identity`'s broker and send it this CONNECT first.
    OpenBroker { identity: Identity, connect: Bytes },
    /// Forward this frame to the broker, as received.
    ToBroker(Bytes),
    /// Send this frame to the client (an answer the front makes itself).
    ToClient(Bytes),
    /// Refused, but the connection goes on (counted by reason).
    Refused(Refusal),
    /// Send what is queued to the client, then close both sides.
    Close(Refusal),
}

/// Why the front refused something. [`Refusal::reason`] labels the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the bytes are not MQTT 3.1.1")]
    Malformed,
    #[error("a packet larger than the limit")]
    TooLarge,
    #[error("the first packet was not CONNECT")]
    NotConnectFirst,
    #[error("not MQTT 3.1.1 (protocol level 4)")]
    ProtocolVersion,
    #[error("a device's client id must equal its username (its id); the dashboard backend's must be its username or start with it and a hyphen")]
    ClientIdMismatch,
    #[error("no login, unknown username or wrong password")]
    BadCredentials,
    #[error("the Last Will is on a topic the client may not publish on")]
    WillTopic,
    #[error("a PUBLISH on a topic the client may not publish on")]
    ForeignPublish,
    #[error("a SUBSCRIBE outside the client's own topics")]
    ForeignSubscribe,
    #[error("a second CONNECT")]
    SecondConnect,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::TooLarge => "too_large",
            Refusal::NotConnectFirst => "not_connect_first",
            Refusal::ProtocolVersion => "protocol_version",
            Refusal::ClientIdMismatch => "client_id_mismatch",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::WillTopic => "will_topic",
            Refusal::ForeignPublish => "foreign_publish",
            Refusal::ForeignSubscribe => "foreign_subscribe",
            Refusal::SecondConnect => "second_connect",
        }
    }
}

enum State {
    AwaitConnect,
    /// The CONNECT, waiting for the authenticator (login removed), and the
    /// username it gave.
    Authenticating(Box<Connect>, String),
    Forwarding(Identity),
    Closed,
}

/// One client connection's state.
pub struct Session {
    state: State,
    inbox: BytesMut,
    internal: Login,
    max_packet: usize,
}

impl Session {
    /// A new connection. `internal` is the login the brokers require;
    /// `max_packet` bounds one frame (larger ones close the connection).
    pub fn new(internal: Login, max_packet: usize) -> Session {
        Session {
            state: State::AwaitConnect,
            inbox: BytesMut::new(),
            internal,
            max_packet,
        }
    }

    /// The authenticated identity, once there is one.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.state {
            State::Forwarding(id) => Some(id),
            _ => None,
        }
    }

    /// Bytes arrived from the client.
    pub fn on_client_bytes(&mut self, data: &[u8]) -> Vec<Step> {
        if matches!(self.state, State::Closed) {
            return Vec::new();
        }
        self.inbox.extend_from_slice(data);
        self.process()
    }

    /// The authenticator's answer to [`Step::Authenticate`]: the identity,
    /// or `None` for unknown or wrong credentials.
    pub fn on_authenticated(&mut self, identity: Option<Identity>) -> Vec<Step> {
        let State::Authenticating(connect, username) =
            std::mem::replace(&mut self.state, State::Closed)
        else {
            return Vec::new();
        };
        let Some(identity) = identity else {
            return refuse_connect(
                ConnectReturnCode::BadUserNamePassword,
                Refusal::BadCredentials,
            );
        };
        // A device's session is its id: no device can take over another's
        // connection (MQTT closes the older session of a client id). The
        // backend may run several sessions, `{username}-{suffix}`; ids with
        // `:` are the gateway's own and never pass.
        let client_id_ok = match &identity {
            Identity::Device(_) => connect.client_id == username,
            Identity::Backend => {
                connect.client_id == username
                    || connect
                        .client_id
                        .strip_prefix(username.as_str())
                        .is_some_and(|rest| {
                            rest.len() > 1 && rest.starts_with('-') && !rest.contains(':')
                        })
            }
        };
        if !client_id_ok {
            return refuse_connect(ConnectReturnCode::BadClientId, Refusal::ClientIdMismatch);
        }
        if let Some(will) = &connect.last_will {
            if !may_publish(&identity, &will.topic) {
                return refuse_connect(ConnectReturnCode::NotAuthorized, Refusal::WillTopic);
            }
        }
        let mut forwarded = *connect;
        forwarded.login = Some(self.internal.clone());
        let mut out = BytesMut::new();
        // Infallible: re-encoding a CONNECT we decoded, with a short login.
        forwarded
            .write(&mut out)
            .expect("a decoded CONNECT re-encodes");
        self.state = State::Forwarding(identity.clone());
        let mut steps = vec![Step::OpenBroker {
            identity,
            connect: out.freeze(),
        }];
        steps.extend(self.process());
        steps
    }

    fn process(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            if matches!(self.state, State::Authenticating(..) | State::Closed) {
                return steps;
            }
            let frame = match check(self.inbox.iter(), self.max_packet) {
                Ok(header) => self.inbox.split_to(header.frame_length()).freeze(),
                Err(CodecError::InsufficientBytes(_)) => return steps,
                Err(CodecError::PayloadSizeLimitExceeded(_)) => {
                    return self.close(steps, Refusal::TooLarge)
                }
                Err(_) => return self.close(steps, Refusal::Malformed),
            };
            let packet = match Packet::read(&mut BytesMut::from(&frame[..]), self.max_packet) {
                Ok(p) => p,
                Err(_) => return self.close(steps, Refusal::Malformed),
            };
            match (&self.state, packet) {
                (State::AwaitConnect, Packet::Connect(connect)) => {
                    if connect.protocol != Protocol::V4 {
                        steps.extend(refuse_connect(
                            ConnectReturnCode::RefusedProtocolVersion,
                            Refusal::ProtocolVersion,
                        ));
                        self.state = State::Closed;
                        return steps;
                    }
                    let Some(login) = connect.login.clone() else {
                        steps.extend(refuse_connect(
                            ConnectReturnCode::BadUserNamePassword,
                            Refusal::BadCredentials,
                        ));
                        self.state = State::Closed;
                        return steps;
                    };
                    let mut connect = connect;
                    connect.login = None;
                    self.state = State::Authenticating(Box::new(connect), login.username.clone());
                    steps.push(Step::Authenticate(Credentials {
                        username: login.username,
                        password: Zeroizing::new(login.password),
                    }));
                }
                (State::AwaitConnect, _) => return self.close(steps, Refusal::NotConnectFirst),
                (State::Forwarding(_), Packet::Connect(_)) => {
                    return self.close(steps, Refusal::SecondConnect)
                }
                (State::Forwarding(id), Packet::Publish(p)) => {
                    if !may_publish(id, &p.topic) {
                        return self.close(steps, Refusal::ForeignPublish);
                    }
                    steps.push(Step::ToBroker(frame));
                }
                (State::Forwarding(id), Packet::Subscribe(s)) => {
                    if s.filters.iter().all(|f| may_subscribe(id, &f.path)) {
                        steps.push(Step::ToBroker(frame));
                    } else {
                        // MQTT 3.1.1 §3.9.3: 0x80 per refused filter. The
                        // whole SUBSCRIBE is refused: none is forwarded.
                        let codes = vec![SubscribeReasonCode::Failure; s.filters.len()];
                        steps.push(Step::ToClient(encode(|b| {
                            SubAck::new(s.pkid, codes).write(b)
                        })));
                        steps.push(Step::Refused(Refusal::ForeignSubscribe));
                    }
                }
                (State::Forwarding(_), _) => steps.push(Step::ToBroker(frame)),
                (State::Authenticating(..) | State::Closed, _) => unreachable!("returned above"),
            }
        }
    }

    fn close(&mut self, mut steps: Vec<Step>, why: Refusal) -> Vec<Step> {
        self.state = State::Closed;
        self.inbox.clear();
        steps.push(Step::Close(why));
        steps
    }
}

/// CONNACK with `code`, then close (MQTT 3.1.1 §3.2.2.3).
fn refuse_connect(code: ConnectReturnCode, why: Refusal) -> Vec<Step> {
    vec![
        Step::ToClient(encode(|b| ConnAck::new(code, false).write(b))),
        Step::Close(why),
    ]
}

fn encode(write: impl FnOnce(&mut BytesMut) -> Result<usize, CodecError>) -> Bytes {
    let mut b = BytesMut::new();
    // Infallible: small fixed packets the codec builds itself.
    write(&mut b).expect("a small control packet encodes");
    b.freeze()
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
