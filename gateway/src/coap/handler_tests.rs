//! Every answer of the handler, with its exact code, options and payload.

use super::*;
use crate::ingest::Outcome;
use coap_lite::MessageType;
use dispatcher::registry::ReportRefusal;
use schemas::units::BatteryLevel;
use schemas::{
    ActivityEvent, ActivityKind, ActivityLogInterval, Battery, DoorState, Downlink,
    HeartbeatInterval, LockModel, LockState, LogAck, SignalQuality,
};

fn heartbeat() -> Heartbeat {
    Heartbeat {
        lock_id: "L000001".into(),
        seq: 7,
        device_time: 1_790_000_000,
        battery: Battery::Level(BatteryLevel::High),
        signal_db: 9,
        signal_quality: SignalQuality::Fair,
        carrier: "Singtel".into(),
        channel: None,
        lock_state: LockState::Locked,
        door_state: DoorState::Closed,
        firmware: "1.4.2".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
    }
}

fn batch(events: u32) -> ActivityLogBatch {
    ActivityLogBatch {
        lock_id: "L000001".into(),
        seq: 8,
        events: (0..events)
            .map(|i| ActivityEvent {
                seq: i,
                time: 1_790_000_000,
                kind: ActivityKind::Locked,
                actor: None,
            })
            .collect(),
    }
}

fn request(method: RequestType, path: &str, payload: Vec<u8>) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = 1;
    p.set_token(vec![9, 9]);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    p.payload = payload;
    p
}

fn post_hb() -> Packet {
    let mut p = request(
        RequestType::Post,
        "hb",
        schemas::device::encode(&heartbeat()),
    );
    p.add_option(CoapOption::ContentFormat, vec![60]);
    p
}

fn reply(request: &Packet) -> Reply {
    match handle_request(request, 1) {
        Action::Reply(r) => r,
        Action::Submit(s) => panic!(
            "expected an immediate answer, got a submission of {:?}",
            s.kind
        ),
        Action::TwoFactor(e) => {
            panic!("expected an immediate answer, got a 2FA {} entry", e.kind())
        }
    }
}

#[test]
fn two_factor_entries_go_to_the_gate_and_bad_digits_are_refused() {
    use schemas::twofa::{OtpEntry, PasscodeEntry};
    let mut p = request(
        RequestType::Post,
        "2fa",
        schemas::device::encode(&PasscodeEntry {
            lock_id: "L1".into(),
            seq: 4,
            passcode: "48291637".into(),
        }),
    );
    p.add_option(CoapOption::ContentFormat, vec![60]);
    match handle_request(&p, 1) {
        Action::TwoFactor(crate::twofa::TwoFactorEntry::Passcode(e)) => {
            assert_eq!((e.lock_id.as_str(), e.seq), ("L1", 4))
        }
        _ => panic!("a passcode entry goes to the gate"),
    }
    let mut p = request(
        RequestType::Post,
        "otp",
        schemas::device::encode(&OtpEntry {
            lock_id: "L1".into(),
            seq: 5,
            challenge: 9,
            otp: "12a456".into(),
        }),
    );
    p.add_option(CoapOption::ContentFormat, vec![60]);
    let r = reply(&p);
    assert_error(
        &r,
        ResponseType::BadRequest,
        "bad_digits",
        "the typed code must be 1 to 16 digits 0-9: send the digits as a text string",
    );
    assert!(
        !r.text().contains("12a456"),
        "the typed code is never echoed"
    );
}

fn assert_error(r: &Reply, code: ResponseType, reason: &str, text: &str) {
    assert_eq!(r.code, code, "{}", r.text());
    assert_eq!(r.refused, Some(reason));
    assert_eq!(r.content_format, Some(CF_TEXT));
    assert_eq!(r.text(), text);
}

#[test]
fn heartbeat_is_submitted_as_a_coap_report() {
    let Action::Submit(s) = handle_request(&post_hb(), 1234) else {
        panic!("not submitted");
    };
    assert_eq!(s.kind, UplinkKind::Heartbeat);
    assert_eq!(s.events, 0);
    assert_eq!(s.report.transport, Transport::Coap);
    assert_eq!(s.report.bridge, None);
    assert_eq!(s.report.received_at_ms, 1234);
    assert!(
        matches!(s.report.body, ReportBody::Uplink(Uplink::Heartbeat(ref h)) if *h == heartbeat())
    );
}

#[test]
fn log_batch_is_submitted_with_its_event_count() {
    // No Content-Format at all: CBOR is assumed.
    let p = request(RequestType::Post, "log", schemas::device::encode(&batch(3)));
    let Action::Submit(s) = handle_request(&p, 1) else {
        panic!("not submitted");
    };
    assert_eq!(s.kind, UplinkKind::ActivityLog);
    assert_eq!(s.events, 3);
}

#[test]
fn well_known_core_lists_every_resource() {
    let r = reply(&request(RequestType::Get, ".well-known/core", vec![]));
    assert_eq!(r.code, ResponseType::Content);
    assert_eq!(r.content_format, Some(CF_LINK_FORMAT));
    assert_eq!(r.refused, None);
    assert_eq!(
        r.text(),
        r#"</hb>;rt="lockfleet.heartbeat";ct=60;if="core.p",</log>;rt="lockfleet.activity-log";ct=60;if="core.p",</jr>;rt="lockfleet.job-report";ct=60;if="core.p",</2fa>;rt="lockfleet.2fa-passcode";ct=60;if="core.p",</otp>;rt="lockfleet.2fa-otp";ct=60;if="core.p""#
    );
}

#[test]
fn unknown_path_is_4_04() {
    assert_error(
        &reply(&request(RequestType::Post, "heartbeat", vec![])),
        ResponseType::NotFound,
        "unknown_path",
        r#"no resource at "/heartbeat": POST heartbeats to /hb, activity logs to /log, job reports to /jr, 2FA passcodes to /2fa and OTPs to /otp (GET /.well-known/core lists them)"#,
    );
    let root = reply(&request(RequestType::Get, "", vec![]));
    assert!(
        root.text().starts_with(r#"no resource at "/":"#),
        "{}",
        root.text()
    );
    let nested = reply(&request(RequestType::Post, "hb/x", vec![]));
    assert_eq!(nested.code, ResponseType::NotFound);
}

#[test]
fn long_paths_are_not_echoed_in_full() {
    let long = "a".repeat(200);
    let r = reply(&request(RequestType::Post, &long, vec![]));
    assert_eq!(r.code, ResponseType::NotFound);
    assert!(
        r.text().contains(&format!("/{}…", "a".repeat(63))),
        "{}",
        r.text()
    );
}

#[test]
fn wrong_method_is_4_05() {
    assert_error(
        &reply(&request(RequestType::Get, "hb", vec![])),
        ResponseType::MethodNotAllowed,
        "method_not_allowed",
        "GET is not allowed on /hb: POST a heartbeat as CBOR (Content-Format 60)",
    );
    assert_error(
        &reply(&request(RequestType::Put, "log", vec![])),
        ResponseType::MethodNotAllowed,
        "method_not_allowed",
        "PUT is not allowed on /log: POST an activity-log batch as CBOR (Content-Format 60)",
    );
    assert_error(
        &reply(&request(RequestType::Post, ".well-known/core", vec![])),
        ResponseType::MethodNotAllowed,
        "method_not_allowed",
        "POST is not allowed on /.well-known/core: use GET",
    );
    let mut unknown = request(RequestType::Post, "hb", vec![]);
    unknown.header.code = MessageClass::Reserved(0x08);
    assert_eq!(
        reply(&unknown).text(),
        "method 0.08 is not allowed on /hb: POST a heartbeat as CBOR (Content-Format 60)"
    );
}

#[test]
fn undecodable_payload_is_4_00_with_the_decode_error() {
    let mut p = post_hb();
    p.payload = b"hello".to_vec();
    let r = reply(&p);
    let expected = Heartbeat::decode(b"hello").unwrap_err();
    assert_error(
        &r,
        ResponseType::BadRequest,
        "malformed",
        &expected.to_string(),
    );

    p.payload.clear();
    assert_error(
        &reply(&p),
        ResponseType::BadRequest,
        "empty",
        "payload is empty: send a CBOR map (see spec/device.cddl)",
    );

    let mut hb = heartbeat();
    hb.lock_id = "a/b".into();
    p.payload = schemas::device::encode(&hb);
    assert_eq!(reply(&p).refused, Some("bad_id"));

    let mut log = request(
        RequestType::Post,
        "log",
        schemas::device::encode(&batch(65)),
    );
    log.add_option(CoapOption::ContentFormat, vec![60]);
    assert_error(
        &reply(&log),
        ResponseType::BadRequest,
        "too_many_events",
        "batch has 65 events, more than 64: send at most 64 per batch",
    );
}

#[test]
fn wrong_content_format_is_4_15() {
    let mut p = request(
        RequestType::Post,
        "hb",
        schemas::device::encode(&heartbeat()),
    );
    p.add_option(CoapOption::ContentFormat, vec![50]); // application/json
    assert_error(
        &reply(&p),
        ResponseType::UnsupportedContentFormat,
        "unsupported_content_format",
        "Content-Format 50 is not accepted on /hb: send a heartbeat as application/cbor (Content-Format 60)",
    );
    // text/plain is Content-Format 0, an empty option value.
    let mut p = request(RequestType::Post, "log", vec![0xa0]);
    p.add_option(CoapOption::ContentFormat, vec![]);
    assert_eq!(reply(&p).code, ResponseType::UnsupportedContentFormat);
}

#[test]
fn oversize_payload_is_4_13_with_size1() {
    let mut p = post_hb();
    p.payload = vec![0; MAX_UPLINK_BYTES + 1];
    let r = reply(&p);
    assert_error(
        &r,
        ResponseType::RequestEntityTooLarge,
        "too_large",
        "payload is 2049 bytes, larger than the 2048-byte limit: split the activity log into smaller batches",
    );
    assert_eq!(r.size1, Some(2048));
    assert!(r.options().any(|o| o == (CoapOption::Size1, 2048)));
}

#[test]
fn unacceptable_accept_is_4_06() {
    let mut p = post_hb();
    p.add_option(CoapOption::Accept, vec![50]);
    assert_error(
        &reply(&p),
        ResponseType::NotAcceptable,
        "not_acceptable",
        "/hb answers only in application/cbor (Content-Format 60), not 50: send Accept 60 or no Accept option",
    );
    let mut p = request(RequestType::Get, ".well-known/core", vec![]);
    p.add_option(CoapOption::Accept, vec![40]);
    assert_eq!(reply(&p).code, ResponseType::Content);
}

#[test]
fn unknown_critical_option_is_4_02() {
    let mut p = post_hb();
    p.add_option(CoapOption::Unknown(2049), vec![1]);
    assert_error(
        &reply(&p),
        ResponseType::BadOption,
        "bad_option",
        "critical option 2049 is not supported by this server: send the request without it",
    );
    let mut p = post_hb();
    p.add_option(CoapOption::Oscore, vec![]);
    assert_eq!(
        reply(&p).text(),
        "critical option OSCORE (9) is not supported by this server: send the request without it"
    );
}

#[test]
fn unknown_elective_option_is_ignored() {
    let mut p = post_hb();
    p.add_option(CoapOption::Unknown(2048), vec![1]);
    p.add_option(CoapOption::Observe, vec![]);
    p.add_option(CoapOption::Size1, vec![100]);
    assert!(matches!(handle_request(&p, 1), Action::Submit(_)));
}

#[test]
fn block_wise_transfer_is_4_02() {
    let mut p = post_hb();
    p.add_option(CoapOption::Block1, vec![0x0e]);
    assert_error(
        &reply(&p),
        ResponseType::BadOption,
        "bad_option",
        "block-wise transfer (Block1 (27)) is not supported: send the whole payload, at most 2048 bytes, in one request",
    );
}

#[test]
fn repeated_or_malformed_understood_option_is_4_02() {
    let mut p = post_hb();
    p.add_option(CoapOption::UriHost, b"a".to_vec());
    p.add_option(CoapOption::UriHost, b"b".to_vec());
    assert_error(
        &reply(&p),
        ResponseType::BadOption,
        "bad_option",
        "option Uri-Host (3) is repeated or has an invalid length: send it once, with a valid value",
    );
    let mut p = post_hb();
    p.add_option(CoapOption::Accept, vec![0, 0, 60]);
    assert_eq!(reply(&p).code, ResponseType::BadOption);
    // One Uri-Host, Uri-Port and Uri-Query are fine.
    let mut p = post_hb();
    p.add_option(CoapOption::UriHost, b"gw.example".to_vec());
    p.add_option(CoapOption::UriPort, vec![0x16, 0x33]);
    p.add_option(CoapOption::UriQuery, b"x=1".to_vec());
    assert!(matches!(handle_request(&p, 1), Action::Submit(_)));
}

#[test]
fn proxy_request_is_5_05() {
    let mut p = post_hb();
    p.add_option(CoapOption::ProxyUri, b"coap://elsewhere/hb".to_vec());
    assert_error(
        &reply(&p),
        ResponseType::ProxyingNotSupported,
        "proxying_not_supported",
        "this server is not a proxy: send the request to it directly, without Proxy-Uri or Proxy-Scheme",
    );
}

fn downlink() -> Downlink {
    Downlink {
        server_time: 1_790_000_100,
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
        seq: 7,
        jobs: vec![],
        more: false,
        next_heartbeat_at: None,
    }
}

#[test]
fn stored_heartbeat_is_2_04_with_the_downlink() {
    let r = outcome_reply(&Ok(Outcome::Heartbeat {
        stored: true,
        downlink: downlink(),
    }));
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(r.content_format, Some(CF_CBOR));
    assert_eq!(r.refused, None);
    assert_eq!(Downlink::decode(&r.payload).unwrap(), downlink());
}

#[test]
fn stored_batch_is_2_04_with_the_log_ack() {
    let ack = LogAck {
        server_time: 5,
        stored: 2,
        seq: 8,
    };
    let r = outcome_reply(&Ok(Outcome::ActivityLog { ack: ack.clone() }));
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(LogAck::decode(&r.payload).unwrap(), ack);
}

#[test]
fn unknown_lock_is_4_04_and_known_but_refused_is_4_03() {
    let unknown = ReportRefusal::UnknownLock("L9".into());
    assert_error(
        &outcome_reply(&Err(IngestError::Refused(unknown.clone()))),
        ResponseType::NotFound,
        "unknown_device",
        &unknown.to_string(),
    );
    let not_nb_iot = ReportRefusal::NotNbIot {
        lock: "L2".into(),
        model: LockModel::Sp2e,
    };
    assert_error(
        &outcome_reply(&Err(IngestError::Refused(not_nb_iot.clone()))),
        ResponseType::Forbidden,
        "not_nb_iot",
        &not_nb_iot.to_string(),
    );
}

#[test]
fn shutting_down_is_5_03_with_max_age() {
    let r = outcome_reply(&Err(IngestError::ShuttingDown));
    assert_error(
        &r,
        ResponseType::ServiceUnavailable,
        "shutting_down",
        "the server is shutting down: retry in a few seconds",
    );
    assert_eq!(r.max_age, Some(5));
}

#[test]
fn storage_failure_is_5_00_without_the_detail() {
    let r = outcome_reply(&Err(IngestError::Storage(
        "disk I/O error at /var/lib/x".into(),
    )));
    assert_error(
        &r,
        ResponseType::InternalServerError,
        "storage",
        "storage failed, nothing was stored: retry later",
    );
}

#[test]
fn busy_is_5_03_with_max_age() {
    let r = busy();
    assert_eq!(r.code, ResponseType::ServiceUnavailable);
    assert_eq!(r.refused, Some("overloaded"));
    assert_eq!(r.max_age, Some(BUSY_RETRY_SECS));
}

#[test]
fn duplicates_are_recognised() {
    let hb = |stored| Outcome::Heartbeat {
        stored,
        downlink: downlink(),
    };
    assert!(is_duplicate(&hb(false), 0));
    assert!(!is_duplicate(&hb(true), 0));
    let log = |stored| Outcome::ActivityLog {
        ack: LogAck {
            server_time: 0,
            stored,
            seq: 1,
        },
    };
    assert!(is_duplicate(&log(0), 3));
    assert!(
        !is_duplicate(&log(0), 0),
        "an empty batch stores nothing and is no duplicate"
    );
    assert!(!is_duplicate(&log(1), 3));
}
