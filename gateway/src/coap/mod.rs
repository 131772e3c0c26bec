//! The CoAP/UDP endpoint (RFC 7252) where NB-IoT locks POST heartbeats
//! (`/hb`) and activity logs (`/log`) as CBOR.
//!
//! It owns CoAP framing, duplicate detection and response codes, and nothing
//! else: reports go to [`crate::ingest`], which decides who may send them and
//! stores them. This module must not touch the store or MQTT. A confirmable
//! request is answered with a piggybacked ACK only after
//! [`Ingest::submit`](crate::ingest::Ingest::submit) returned, so an ACK
//! always means "durably committed".
//!
//! Layers, from the socket inwards:
//!
//! * [`server`]: the tokio UDP loop, one task per in-flight report (bounded),
//!   graceful shutdown.
//! * [`message`]: framing: pings, resets, malformed messages, piggybacked
//!   and NON responses.
//! * [`exchange`]: sans-I/O deduplication by (peer, message id) for
//!   EXCHANGE_LIFETIME / NON_LIFETIME, with cached answers for
//!   retransmissions.
//! * [`oscore`]: OSCORE (RFC 8613), between deduplication of the outer
//!   message and the handler: it verifies and unprotects the inner request
//!   with the device's context from the key ring, refuses what does not
//!   verify (unprotected, with a diagnostic), and protects the reply. The
//!   handler sees only the inner request, never the socket or the peer.
//! * [`handler`]: the resources: a request becomes an immediate answer or a
//!   report to submit; the pipeline's outcome becomes the answer.

pub mod exchange;
pub mod handler;
pub mod message;
pub mod oscore;
pub mod server;

pub use exchange::{ExchangeTable, Verdict, EXCHANGE_LIFETIME, MAX_EXCHANGES, NON_LIFETIME};
pub use handler::{
    Action, Reply, Submission, PATH_2FA, PATH_HEARTBEAT, PATH_JOB_REPORT, PATH_LOG, PATH_OTP,
    WELL_KNOWN_CORE,
};
pub use server::{
    serve, serve_with, serve_with_gate, CoapConfig, DRAIN_TIMEOUT, MAX_IN_FLIGHT, RECV_BUFFER_BYTES,
};
