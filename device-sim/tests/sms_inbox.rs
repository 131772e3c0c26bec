//! The SMS inbox over real HTTP: a client POSTs what the gateway's SMS
//! webhook sends, in every mode of the inbox, and reads what it recorded.

mod common;

use common::http::{post, request, sms_body};
use device_sim::phone::{InboxMode, SmsInbox, SMS_PATH};
use std::time::{Duration, Instant};

/// Longest a test waits for something that should come at once.
const PATIENCE: Duration = Duration::from_secs(5);

async fn inbox() -> SmsInbox {
    SmsInbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_sms_is_accepted_recorded_and_its_otp_handed_to_the_waiter_of_that_number() {
    let inbox = inbox().await;
    assert_eq!(inbox.url(), format!("http://{}/sms", inbox.addr()));
    let before = Instant::now();
    let waiter = {
        let inbox = inbox.clone();
        tokio::spawn(async move { inbox.wait_otp("+6591234567", before, PATIENCE).await })
    };
    // Another number's SMS is not its OTP (and does not even wake it).
    let (status, _) = post(
        inbox.addr(),
        SMS_PATH,
        &sms_body("+6598765432", "111111", 6),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, body) = request(
        inbox.addr(),
        "POST",
        SMS_PATH,
        &sms_body("+6591234567", "123456", 7),
        &[("authorization", "Bearer s3cr3t"), ("x-request-id", "r-1")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"accepted\""), "{body}");

    let otp = waiter.await.unwrap().expect("the waiter got its OTP");
    assert_eq!(otp.otp.as_str(), "123456");
    assert_eq!(
        (otp.to.as_str(), otp.reference.as_str()),
        ("+6591234567", "2fa-7")
    );
    assert_eq!(
        (otp.challenge(), otp.expires_at_ms),
        (Some(7), 1_764_000_000_000)
    );
    assert!(otp.at >= before);

    let requests = inbox.requests();
    assert_eq!(requests.len(), 2);
    let r = &requests[1];
    assert!(r.delivered() && r.malformed.is_none());
    assert_eq!(
        (r.status, r.method.as_str(), r.path.as_str()),
        (Some(200), "POST", "/sms")
    );
    assert_eq!(r.header("x-request-id"), Some("r-1"));
    assert_eq!(r.header("authorization"), Some("Bearer s3cr3t"));
    assert!(r.message.as_deref().unwrap().contains("Never share it"));
    // Debug never shows the OTP, the text or the credential.
    let debug = format!("{requests:?} {otp:?}");
    for secret in ["123456", "111111", "s3cr3t", "unlock code", "91234567"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }

    // Waiting after the SMS arrived finds nothing; waiting by challenge
    // finds only that challenge's OTP.
    let later = Instant::now();
    assert!(inbox
        .wait_otp("+6591234567", later, Duration::ZERO)
        .await
        .is_none());
    let by_challenge = inbox
        .wait_challenge_otp("+6591234567", 7, before, Duration::ZERO)
        .await;
    assert_eq!(by_challenge.map(|o| o.reference), Some("2fa-7".to_string()));
    assert!(inbox
        .wait_challenge_otp("+6591234567", 8, before, Duration::ZERO)
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_phones_waiting_at_once_each_get_their_own_otp_and_a_number_keeps_its_newest() {
    let inbox = inbox().await;
    let before = Instant::now();
    let phones = 300u64;
    let mobile = |n: u64| format!("+659{:07}", n);
    let waiters: Vec<_> = (0..phones)
        .map(|n| {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                inbox
                    .wait_challenge_otp(&mobile(n), 1000 + n, before, PATIENCE)
                    .await
            })
        })
        .collect();
    // In reverse order, so no waiter is served by the order of arrival.
    for n in (0..phones).rev() {
        let otp = format!("{:06}", 100_000 + n);
        let (status, _) = post(
            inbox.addr(),
            SMS_PATH,
            &sms_body(&mobile(n), &otp, 1000 + n),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    for (n, w) in (0..phones).zip(waiters) {
        let otp = w.await.unwrap().expect("each phone got its OTP");
        assert_eq!(otp.to, mobile(n));
        assert_eq!(otp.challenge(), Some(1000 + n));
        assert_eq!(otp.otp.as_str(), format!("{:06}", 100_000 + n));
    }
    // One number flooded: its newest OTPs are kept, the oldest forgotten.
    let kept = device_sim::phone::MAX_KEPT_PER_NUMBER as u64;
    for c in 0..kept + 4 {
        post(
            inbox.addr(),
            SMS_PATH,
            &sms_body("+6590000001", "222222", c),
        )
        .await
        .unwrap();
    }
    let find = |c: u64| inbox.wait_challenge_otp("+6590000001", c, before, Duration::ZERO);
    assert!(find(0).await.is_none(), "the oldest is forgotten");
    assert!(find(kept + 3).await.is_some(), "the newest is kept");
    assert!(find(4).await.is_some(), "the last {kept} are kept");
    assert_eq!(inbox.requests().len() as u64, phones + kept + 4);
}

#[tokio::test]
async fn malformed_requests_are_answered_with_a_reason_and_recorded_as_malformed() {
    let inbox = inbox().await;
    let addr = inbox.addr();
    let missing_to = r#"{"message": "code 123456", "reference": "2fa-1", "expires_at_ms": 1}"#;
    let no_otp = sms_body("+6591234567", "1234567", 1);
    let cases = [
        ("POST", SMS_PATH, "{not json", 400, "not JSON"),
        ("POST", SMS_PATH, missing_to, 400, "field `to`"),
        ("POST", SMS_PATH, no_otp.as_str(), 400, "exactly 6 digits"),
        ("POST", "/other", "{}", 404, "no such path"),
        ("GET", SMS_PATH, "", 405, "not allowed"),
    ];
    for (method, path, body, want_status, want_reason) in cases {
        let (status, answer) = request(addr, method, path, body, &[]).await.unwrap();
        assert_eq!(status, want_status, "{method} {path} {body}");
        assert!(answer.contains(want_reason), "{answer}");
    }
    let big = format!(
        "{{\"pad\": \"{}\"}}",
        "x".repeat(device_sim::phone::MAX_BODY_BYTES)
    );
    let (status, _) = post(addr, SMS_PATH, &big).await.unwrap();
    assert_eq!(status, 413);

    let requests = inbox.requests();
    assert_eq!(requests.len(), cases.len() + 1);
    for (r, (_, _, _, status, reason)) in requests.iter().zip(&cases) {
        assert_eq!(r.status, Some(*status));
        assert!(r.malformed.as_deref().unwrap().contains(reason));
        assert!(!r.delivered());
    }
    assert!(inbox
        .wait_otp("+6591234567", Instant::now() - PATIENCE, Duration::ZERO)
        .await
        .is_none());
}

#[tokio::test]
async fn an_injected_status_is_answered_and_only_a_2xx_delivers() {
    let inbox = inbox().await;
    let since = Instant::now();
    inbox.set_mode(InboxMode::Status(503));
    assert_eq!(inbox.mode(), InboxMode::Status(503));
    let (status, body) = post(
        inbox.addr(),
        SMS_PATH,
        &sms_body("+6591234567", "123456", 1),
    )
    .await
    .unwrap();
    assert_eq!((status, body.contains("injected")), (503, true));
    assert!(inbox
        .wait_otp("+6591234567", since, Duration::ZERO)
        .await
        .is_none());
    let r = &inbox.requests()[0];
    // Received and read, just not accepted.
    assert_eq!(
        (r.status, r.reference.as_deref()),
        (Some(503), Some("2fa-1"))
    );
    assert!(r.otp.is_some() && !r.delivered());

    inbox.set_mode(InboxMode::Status(202));
    let (status, _) = post(
        inbox.addr(),
        SMS_PATH,
        &sms_body("+6591234567", "654321", 2),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    let otp = inbox.wait_otp("+6591234567", since, Duration::ZERO).await;
    assert_eq!(otp.unwrap().otp.as_str(), "654321");

    // Not a status a server can send: 500.
    inbox.set_mode(InboxMode::Status(99));
    let (status, _) = post(inbox.addr(), SMS_PATH, "{}").await.unwrap();
    assert_eq!(status, 500);
}

#[tokio::test]
async fn a_delayed_answer_comes_late_and_delivers_only_then() {
    let inbox = inbox().await;
    let delay = Duration::from_millis(300);
    inbox.set_mode(InboxMode::Delay(delay));
    let since = Instant::now();
    let sender = tokio::spawn({
        let addr = inbox.addr();
        async move { post(addr, SMS_PATH, &sms_body("+6591234567", "123456", 3)).await }
    });
    let otp = inbox
        .wait_otp("+6591234567", since, PATIENCE)
        .await
        .unwrap();
    let waited = since.elapsed();
    assert!(waited >= delay, "delivered after {waited:?}");
    // Its arrival is when the request came, before the delay.
    assert!(otp.at.saturating_duration_since(since) < delay);
    let (status, _) = sender.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(inbox.requests()[0].status, Some(200));
}

#[tokio::test]
async fn dropping_closes_the_connection_unanswered_and_delivers_nothing() {
    let inbox = inbox().await;
    inbox.set_mode(InboxMode::Drop);
    let since = Instant::now();
    let answer = tokio::time::timeout(
        PATIENCE,
        post(
            inbox.addr(),
            SMS_PATH,
            &sms_body("+6591234567", "123456", 4),
        ),
    )
    .await
    .expect("the connection is closed, not left hanging");
    assert!(answer.is_err(), "no answer: {answer:?}");
    let requests = inbox.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].status, requests[0].reference.as_deref()),
        (None, Some("2fa-4"))
    );
    assert!(inbox
        .wait_otp("+6591234567", since, Duration::ZERO)
        .await
        .is_none());

    // Back up: the next one goes through.
    inbox.set_mode(InboxMode::Up);
    let (status, _) = post(
        inbox.addr(),
        SMS_PATH,
        &sms_body("+6591234567", "222222", 5),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(inbox
        .wait_otp("+6591234567", since, Duration::ZERO)
        .await
        .is_some());
}

#[tokio::test]
async fn the_server_stops_when_the_last_handle_goes() {
    let inbox = inbox().await;
    let addr = inbox.addr();
    let clone = inbox.clone();
    drop(inbox);
    let (status, _) = post(addr, SMS_PATH, "{}").await.unwrap();
    assert_eq!(status, 400, "a clone keeps it up");
    drop(clone);
    // The accept loop sees the cancellation at once; give it a turn.
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, refused)
        .await
        .expect("the listener closes");
}
