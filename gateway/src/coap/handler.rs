//! The CoAP resources: from a request to either an immediate answer or a
//! report for the ingest pipeline, and from the pipeline's outcome to the
//! answer. Pure functions of their arguments: no socket, no clock, no peer
//! address (a security layer may hand us a request it unprotected).
//!
//! | resource | method | answer |
//! | --- | --- | --- |
//! | `/hb` | POST [`Heartbeat`] (CBOR, ct 60) | 2.04 + [`schemas::Downlink`] |
//! | `/log` | POST [`ActivityLogBatch`] (CBOR, ct 60) | 2.04 + [`schemas::LogAck`] |
//! | `/jr` | POST [`JobReport`] (CBOR, ct 60) | 2.04 + [`schemas::Downlink`] |
//! | `/2fa` | POST [`PasscodeEntry`] (CBOR, ct 60) | 2.04 + [`schemas::twofa::TwoFactorAnswer`] |
//! | `/otp` | POST [`OtpEntry`] (CBOR, ct 60) | 2.04 + [`schemas::twofa::TwoFactorAnswer`] |
//! | `/.well-known/core` | GET | 2.05 link format (RFC 6690) |
//!
//! Every refusal carries a diagnostic payload (RFC 7252 §5.5.2) that says
//! what was wrong and what to do, and a stable `reason` for the metrics.

use super::message::read_uint_option;
use crate::ingest::{IngestError, Outcome, Report, ReportBody};
use crate::store::ProtectionRefusal;
use crate::twofa::TwoFactorEntry;
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use schemas::device::{DecodeError, UplinkKind, MAX_UPLINK_BYTES};
use schemas::event::Transport;
use schemas::twofa::{OtpEntry, PasscodeEntry, TwoFactorAnswer};
use schemas::{ActivityLogBatch, Heartbeat, JobReport, Uplink};

/// Uri-Path of heartbeats.
pub const PATH_HEARTBEAT: &str = "hb";
/// Uri-Path of activity-log batches.
pub const PATH_LOG: &str = "log";
/// Uri-Path of job reports.
pub const PATH_JOB_REPORT: &str = "jr";
/// Uri-Path of 2FA passcode entries.
pub const PATH_2FA: &str = "2fa";
/// Uri-Path of OTP entries.
pub const PATH_OTP: &str = "otp";

/// Content-Format `text/plain; charset=utf-8` (diagnostic payloads).
pub const CF_TEXT: u16 = 0;
/// Content-Format `application/link-format` (RFC 6690).
pub const CF_LINK_FORMAT: u16 = 40;
/// Content-Format `application/cbor`: every device payload.
pub const CF_CBOR: u16 = 60;

/// The answer to `GET /.well-known/core` (RFC 6690).
pub const WELL_KNOWN_CORE: &str = concat!(
    r#"</hb>;rt="lockfleet.heartbeat";ct=60;if="core.p","#,
    r#"</log>;rt="lockfleet.activity-log";ct=60;if="core.p","#,
    r#"</jr>;rt="lockfleet.job-report";ct=60;if="core.p","#,
    r#"</2fa>;rt="lockfleet.2fa-passcode";ct=60;if="core.p","#,
    r#"</otp>;rt="lockfleet.2fa-otp";ct=60;if="core.p""#,
);

/// Max-Age of the 5.03 sent while shutting down: long enough for another
/// instance (or this one, restarted) to take over, short enough that the
/// lock's answer is not late by much.
pub const SHUTDOWN_RETRY_SECS: u32 = 5;

/// Max-Age of the 5.03 sent when too many requests are in flight: a few
/// commit rounds, so the retry finds room without the fleet retrying in step.
pub const BUSY_RETRY_SECS: u32 = 5;

/// Longest piece of a request's path we echo in a diagnostic, so a hostile
/// path is not reflected back at length.
const MAX_ECHOED_PATH_CHARS: usize = 64;

/// A response before framing (the message layer adds type, id and token).
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub code: ResponseType,
    pub content_format: Option<u16>,
    /// Max-Age option, seconds (§5.10.5): when a 5.03 may be retried.
    pub max_age: Option<u32>,
    /// Size1 option (§5.10.9): the largest request body we accept, on 4.13.
    pub size1: Option<u32>,
    pub payload: Vec<u8>,
    /// Why the request was refused (the metric `reason`); `None` on success.
    pub refused: Option<&'static str>,
    /// The OSCORE option value of a protected response (RFC 8613 §4.2: its
    /// code is then the outer 2.04 and `payload` the ciphertext); `None`
    /// for an unprotected one. Set only by [`super::oscore`].
    pub oscore: Option<Vec<u8>>,
}

impl Reply {
    /// A success carrying a CBOR body.
    pub fn cbor(code: ResponseType, payload: Vec<u8>) -> Self {
        Reply {
            code,
            content_format: Some(CF_CBOR),
            max_age: None,
            size1: None,
            payload,
            refused: None,
            oscore: None,
        }
    }

    /// A refusal with a UTF-8 diagnostic payload (Content-Format 0).
    pub fn error(code: ResponseType, reason: &'static str, message: impl Into<String>) -> Self {
        Reply {
            code,
            content_format: Some(CF_TEXT),
            max_age: None,
            size1: None,
            payload: message.into().into_bytes(),
            refused: Some(reason),
            oscore: None,
        }
    }

    fn with_max_age(mut self, secs: u32) -> Self {
        self.max_age = Some(secs);
        self
    }

    /// The options to put in the response, as (option, uint value).
    pub fn options(&self) -> impl Iterator<Item = (CoapOption, u32)> {
        [
            self.content_format
                .map(|cf| (CoapOption::ContentFormat, u32::from(cf))),
            self.max_age.map(|s| (CoapOption::MaxAge, s)),
            self.size1.map(|s| (CoapOption::Size1, s)),
        ]
        .into_iter()
        .flatten()
    }

    /// The payload as text (diagnostics are UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A decoded report on its way to [`crate::ingest::Ingest::submit`].
#[derive(Debug, Clone)]
pub struct Submission {
    pub report: Report,
    pub kind: UplinkKind,
    /// Events in an activity-log batch (0 for a heartbeat): a batch with
    /// events of which none was new is a duplicate.
    pub events: usize,
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer now; nothing is stored.
    Reply(Reply),
    /// Submit the report, then answer with [`outcome_reply`].
    Submit(Submission),
    /// Hand the 2FA entry to the gate, then answer with [`twofa_reply`].
    TwoFactor(TwoFactorEntry),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    Heartbeat,
    Log,
    JobReport,
    Passcode,
    Otp,
    WellKnownCore,
}

impl Resource {
    fn path(self) -> &'static str {
        match self {
            Resource::Heartbeat => "/hb",
            Resource::Log => "/log",
            Resource::JobReport => "/jr",
            Resource::Passcode => "/2fa",
            Resource::Otp => "/otp",
            Resource::WellKnownCore => "/.well-known/core",
        }
    }
}

/// Decide what to do with a request (already deduplicated). `received_at_ms`
/// stamps the report.
pub fn handle_request(request: &Packet, received_at_ms: u64) -> Action {
    match route(request, received_at_ms) {
        Ok(action) => action,
        Err(reply) => Action::Reply(reply),
    }
}

/// `Ok` is a report to submit or a 2FA entry; `Err` the immediate answer
/// (an error, or the link-format document).
fn route(request: &Packet, received_at_ms: u64) -> Result<Action, Reply> {
    check_options(request)?;
    let resource = resource(request)?;
    let method = request.header.code;
    if resource == Resource::WellKnownCore {
        if method != MessageClass::Request(RequestType::Get) {
            return Err(method_not_allowed(method, resource, "use GET"));
        }
        check_accept(request, resource, CF_LINK_FORMAT, "application/link-format")?;
        return Err(Reply {
            content_format: Some(CF_LINK_FORMAT),
            ..Reply::cbor(ResponseType::Content, WELL_KNOWN_CORE.as_bytes().to_vec())
        });
    }

    let what = match resource {
        Resource::Heartbeat => "a heartbeat",
        Resource::JobReport => "a job report",
        Resource::Passcode => "a 2FA passcode entry",
        Resource::Otp => "an OTP entry",
        _ => "an activity-log batch",
    };
    if method != MessageClass::Request(RequestType::Post) {
        let hint = format!("POST {what} as CBOR (Content-Format {CF_CBOR})");
        return Err(method_not_allowed(method, resource, &hint));
    }
    // §5.4.3/§5.4.5: Content-Format is elective; a malformed or repeated
    // one is ignored like an unknown option, so only the first counts.
    let content_format = request
        .get_first_option(CoapOption::ContentFormat)
        .and_then(|v| read_uint_option(v, 2));
    if let Some(cf) = content_format.filter(|cf| *cf != u32::from(CF_CBOR)) {
        return Err(Reply::error(
            ResponseType::UnsupportedContentFormat,
            "unsupported_content_format",
            format!(
                "Content-Format {cf} is not accepted on {}: send {what} as application/cbor (Content-Format {CF_CBOR})",
                resource.path()
            ),
        ));
    }
    check_accept(request, resource, CF_CBOR, "application/cbor")?;
    let payload = &request.payload;
    if payload.len() > MAX_UPLINK_BYTES {
        let err = DecodeError::TooLarge {
            len: payload.len(),
            max: MAX_UPLINK_BYTES,
        };
        let mut reply = Reply::error(
            ResponseType::RequestEntityTooLarge,
            err.reason(),
            err.to_string(),
        );
        reply.size1 = Some(MAX_UPLINK_BYTES as u32);
        return Err(reply);
    }
    let bad_request =
        |e: DecodeError| Reply::error(ResponseType::BadRequest, e.reason(), e.to_string());
    match resource {
        Resource::Passcode => {
            let e = PasscodeEntry::decode(payload).map_err(bad_request)?;
            return Ok(Action::TwoFactor(TwoFactorEntry::Passcode(e)));
        }
        Resource::Otp => {
            let e = OtpEntry::decode(payload).map_err(bad_request)?;
            return Ok(Action::TwoFactor(TwoFactorEntry::Otp(e)));
        }
        _ => {}
    }
    let (uplink, events) = match resource {
        Resource::Heartbeat => (
            Uplink::Heartbeat(Heartbeat::decode(payload).map_err(bad_request)?),
            0,
        ),
        Resource::JobReport => (
            Uplink::JobReport(JobReport::decode(payload).map_err(bad_request)?),
            0,
        ),
        _ => {
            let batch = ActivityLogBatch::decode(payload).map_err(bad_request)?;
            let events = batch.events.len();
            (Uplink::ActivityLog(batch), events)
        }
    };
    Ok(Action::Submit(Submission {
        kind: uplink.kind(),
        events,
        report: Report {
            body: ReportBody::Uplink(uplink),
            transport: Transport::Coap,
            bridge: None,
            received_at_ms,
        },
    }))
}

/// RFC 7252 §5.4.1: a critical option we do not understand (or a malformed
/// or repeated one we do, §5.4.3, §5.4.5) makes the request fail with 4.02.
fn check_options(request: &Packet) -> Result<(), Reply> {
    for (&number, values) in request.options() {
        let once = values.len() == 1;
        let lengths =
            |min: usize, max: usize| values.iter().all(|v| (min..=max).contains(&v.len()));
        let well_formed = match number {
            3 => once && lengths(1, 255), // Uri-Host: any host names us
            7 => once && lengths(0, 2),   // Uri-Port
            11 | 15 => lengths(0, 255),   // Uri-Path, Uri-Query (ignored)
            17 => once && lengths(0, 2),  // Accept
            // §5.10.2: an endpoint that is no forward-proxy answers 5.05.
            35 | 39 => {
                return Err(Reply::error(
                    ResponseType::ProxyingNotSupported,
                    "proxying_not_supported",
                    "this server is not a proxy: send the request to it directly, without Proxy-Uri or Proxy-Scheme",
                ))
            }
            23 | 27 => {
                return Err(Reply::error(
                    ResponseType::BadOption,
                    "bad_option",
                    format!(
                        "block-wise transfer ({}) is not supported: send the whole payload, at most {MAX_UPLINK_BYTES} bytes, in one request",
                        option_label(number)
                    ),
                ))
            }
            n if n % 2 == 1 => {
                return Err(Reply::error(
                    ResponseType::BadOption,
                    "bad_option",
                    format!(
                        "critical option {} is not supported by this server: send the request without it",
                        option_label(n)
                    ),
                ))
            }
            // Elective options we do not use are ignored (§5.4.1).
            _ => true,
        };
        if !well_formed {
            return Err(Reply::error(
                ResponseType::BadOption,
                "bad_option",
                format!(
                    "option {} is repeated or has an invalid length: send it once, with a valid value",
                    option_label(number)
                ),
            ));
        }
    }
    Ok(())
}

/// "Uri-Host (3)" for options we can name, "2049" for the rest.
fn option_label(number: u16) -> String {
    let name = match number {
        1 => "If-Match",
        3 => "Uri-Host",
        5 => "If-None-Match",
        7 => "Uri-Port",
        9 => "OSCORE",
        11 => "Uri-Path",
        15 => "Uri-Query",
        17 => "Accept",
        23 => "Block2",
        27 => "Block1",
        35 => "Proxy-Uri",
        39 => "Proxy-Scheme",
        _ => return number.to_string(),
    };
    format!("{name} ({number})")
}

fn resource(request: &Packet) -> Result<Resource, Reply> {
    let segments: Vec<&[u8]> = request
        .get_option(CoapOption::UriPath)
        .map(|list| list.iter().map(Vec::as_slice).collect())
        .unwrap_or_default();
    match segments.as_slice() {
        [b"hb"] => Ok(Resource::Heartbeat),
        [b"log"] => Ok(Resource::Log),
        [b"jr"] => Ok(Resource::JobReport),
        [b"2fa"] => Ok(Resource::Passcode),
        [b"otp"] => Ok(Resource::Otp),
        [b".well-known", b"core"] => Ok(Resource::WellKnownCore),
        _ => {
            let mut path: String = segments
                .iter()
                .map(|s| format!("/{}", String::from_utf8_lossy(s)))
                .collect();
            if path.is_empty() {
                path.push('/');
            }
            if path.chars().count() > MAX_ECHOED_PATH_CHARS {
                path = path
                    .chars()
                    .take(MAX_ECHOED_PATH_CHARS)
                    .chain(['…'])
                    .collect();
            }
            Err(Reply::error(
                ResponseType::NotFound,
                "unknown_path",
                format!(
                    "no resource at {path:?}: POST heartbeats to /{PATH_HEARTBEAT}, activity logs to /{PATH_LOG}, job reports to /{PATH_JOB_REPORT}, 2FA passcodes to /{PATH_2FA} and OTPs to /{PATH_OTP} (GET /.well-known/core lists them)"
                ),
            ))
        }
    }
}

fn method_not_allowed(method: MessageClass, resource: Resource, hint: &str) -> Reply {
    let name = match method {
        MessageClass::Request(RequestType::Get) => "GET".to_string(),
        MessageClass::Request(RequestType::Post) => "POST".to_string(),
        MessageClass::Request(RequestType::Put) => "PUT".to_string(),
        MessageClass::Request(RequestType::Delete) => "DELETE".to_string(),
        MessageClass::Request(RequestType::Fetch) => "FETCH".to_string(),
        MessageClass::Request(RequestType::Patch) => "PATCH".to_string(),
        MessageClass::Request(RequestType::IPatch) => "iPATCH".to_string(),
        // §5.8: an unknown method code is answered like a wrong one.
        other => format!("method {other}"),
    };
    Reply::error(
        ResponseType::MethodNotAllowed,
        "method_not_allowed",
        format!("{name} is not allowed on {}: {hint}", resource.path()),
    )
}

/// §5.10.4: answer 4.06 when the client accepts only another format.
fn check_accept(request: &Packet, resource: Resource, ours: u16, name: &str) -> Result<(), Reply> {
    let accept = request
        .get_first_option(CoapOption::Accept)
        .and_then(|v| read_uint_option(v, 2));
    match accept {
        Some(cf) if cf != u32::from(ours) => Err(Reply::error(
            ResponseType::NotAcceptable,
            "not_acceptable",
            format!(
                "{} answers only in {name} (Content-Format {ours}), not {cf}: send Accept {ours} or no Accept option",
                resource.path()
            ),
        )),
        _ => Ok(()),
    }
}

/// The answer once the ingest pipeline has handled a report: 2.04 with the
/// downlink or log acknowledgement, or the refusal.
pub fn outcome_reply(result: &Result<Outcome, IngestError>) -> Reply {
    match result {
        Ok(Outcome::Heartbeat { downlink, .. } | Outcome::JobReport { downlink }) => {
            Reply::cbor(ResponseType::Changed, schemas::device::encode(downlink))
        }
        Ok(Outcome::ActivityLog { ack }) => Reply::cbor(ResponseType::Changed, schemas::device::encode(ack)),
        // The pipeline answers an uplink with an uplink outcome; this is a
        // bug on our side, said as such.
        Ok(Outcome::BridgeStatus { .. } | Outcome::TwoFactor(_)) => Reply::error(
            ResponseType::InternalServerError,
            "internal",
            "the server answered with the wrong kind of outcome: nothing to fix on the lock, report it to the operator",
        ),
        Err(IngestError::Refused(refusal)) => {
            let code = if refusal.is_unknown() {
                ResponseType::NotFound
            } else {
                ResponseType::Forbidden
            };
            Reply::error(code, refusal.reason(), refusal.to_string())
        }
        Err(e @ IngestError::WrongDevice { .. }) => {
            Reply::error(ResponseType::Forbidden, e.reason(), e.to_string())
        }
        Err(e @ IngestError::Unprotected { .. }) => {
            Reply::error(ResponseType::Unauthorized, e.reason(), e.to_string())
        }
        // RFC 8613 §8.2: a replay, or a key that is no longer the device's,
        // is answered 4.01 (unprotected, see `oscore`).
        Err(IngestError::Protection(r @ (ProtectionRefusal::KeyRevoked | ProtectionRefusal::Replay { .. }))) => {
            Reply::error(ResponseType::Unauthorized, r.reason(), r.to_string())
        }
        Err(IngestError::Protection(r @ ProtectionRefusal::ReplayStateCorrupt)) => {
            Reply::error(ResponseType::InternalServerError, r.reason(), r.to_string())
        }
        Err(e @ IngestError::ShuttingDown) => {
            Reply::error(ResponseType::ServiceUnavailable, e.reason(), e.to_string()).with_max_age(SHUTDOWN_RETRY_SECS)
        }
        // The storage detail stays in our logs: a device cannot act on it
        // and it is none of a stranger's business.
        Err(e @ IngestError::Storage(_)) => Reply::error(
            ResponseType::InternalServerError,
            e.reason(),
            "storage failed, nothing was stored: retry later",
        ),
    }
}

/// The answer to a 2FA entry: 2.04 with what the lock shows, or the
/// pipeline's refusal as for any report.
pub fn twofa_reply(result: &Result<TwoFactorAnswer, IngestError>) -> Reply {
    match result {
        Ok(answer) => Reply::cbor(ResponseType::Changed, schemas::device::encode(answer)),
        Err(e) => outcome_reply(&Err(e.clone())),
    }
}

/// The answer to `/2fa` or `/otp` on a server run without 2FA.
pub fn twofa_unavailable() -> Reply {
    Reply::error(
        ResponseType::NotImplemented,
        "twofa_unavailable",
        "2FA is not enabled on this server: nothing was stored; ask the operator",
    )
}

/// The answer when too many requests are in flight: 5.03 with Max-Age.
pub fn busy() -> Reply {
    Reply::error(
        ResponseType::ServiceUnavailable,
        "overloaded",
        format!("the server is busy, nothing was stored: retry in {BUSY_RETRY_SECS} seconds"),
    )
    .with_max_age(BUSY_RETRY_SECS)
}

/// True when the pipeline found the report already stored (same lock and
/// seq): a heartbeat not stored, or a non-empty batch with no new event.
pub fn is_duplicate(outcome: &Outcome, events: usize) -> bool {
    match outcome {
        Outcome::Heartbeat { stored, .. } => !stored,
        Outcome::ActivityLog { ack } => ack.stored == 0 && events > 0,
        Outcome::BridgeStatus { .. } | Outcome::JobReport { .. } | Outcome::TwoFactor(_) => false,
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
