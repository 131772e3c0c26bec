//! 2FA unlock end to end over real sockets, on SQLite and PostgreSQL: the
//! dashboard sets users, numbers, passcodes and grants over MQTT (through
//! the authenticating front); a 2FA lock sends the typed passcode and OTP
//! over OSCORE-protected CoAP; the OTP reaches the dashboard backend on the
//! MQTT notifier's topic (the webhook notifier is exercised with the
//! simulator's SMS inbox in `twofa_sim.rs`). Every rule of the flow is
//! driven: the happy path, a wrong passcode, an expired grant, three wrong
//! OTPs, an expired OTP, a reused OTP, an unverified number, a deactivated
//! user, rate limits and a lock-out the dashboard sees and clears. At the
//! end, the server's logs, its metrics and every MQTT message are scanned
//! for the passcodes and OTPs used.

mod common;

use coap_lite::{MessageClass, RequestType, ResponseType};
use common::{request, CoapClient, Dashboard, Engine, Harness, Options, OscoreDevice};
use dispatcher::import::ParsedFleet;
use dispatcher::registry::{LockRecord, ReportPath};
use dispatcher::{LockId, OrgId};
use gateway::store::testing::registration;
use schemas::twofa::{OtpEntry, PasscodeEntry, TwoFactorAnswer, TwoFactorResult};
use schemas::*;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ORG: &str = "org-1";
const ZONE: &str = "Asia/Singapore";

/// Everything the server logs, at every level, for the secret scan.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

fn capture_logs() -> LogBuffer {
    let logs = LogBuffer::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .init();
    logs
}

fn fleet() -> ParsedFleet {
    let lock = |id: &str, model: LockModel| {
        registration(LockRecord {
            id: LockId::new(id),
            model,
            org: OrgId::new(ORG),
            departments: vec!["d1".into()].into(),
            time_zone: ZONE.into(),
            heartbeat_interval: HeartbeatInterval::from_hours(24).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(60).unwrap(),
            bridge: None,
            path: ReportPath::Coap,
        })
    };
    ParsedFleet {
        locks: vec![
            lock("T1", LockModel::Inb1TwoFactor),
            lock("T2", LockModel::Inb1TwoFactor),
            lock("T3", LockModel::Inb1TwoFactor),
            lock("T4", LockModel::Inb1TwoFactor),
            lock("P1", LockModel::Inb1),
        ],
        ..ParsedFleet::default()
    }
}

/// A 2FA lock's keypad, over protected CoAP.
struct Keypad {
    id: String,
    coap: CoapClient,
    oscore: OscoreDevice,
    seq: u32,
}

impl Keypad {
    async fn new(coap: std::net::SocketAddr, id: &str) -> Keypad {
        Keypad {
            id: id.into(),
            coap: CoapClient::new(coap).await,
            oscore: OscoreDevice::lock(id),
            seq: 0,
        }
    }

    async fn post(&mut self, path: &str, body: Vec<u8>) -> TwoFactorAnswer {
        let p = self.coap.request(RequestType::Post, path, body, true);
        let (_, inner) = self.coap.exchange_verified(&mut self.oscore, &p).await;
        assert_eq!(
            inner.header.code,
            MessageClass::Response(ResponseType::Changed),
            "{}",
            String::from_utf8_lossy(&inner.payload)
        );
        TwoFactorAnswer::decode(&inner.payload).unwrap()
    }

    async fn passcode(&mut self, digits: &str) -> TwoFactorAnswer {
        self.seq += 1;
        let e = PasscodeEntry {
            lock_id: self.id.clone(),
            seq: self.seq,
            passcode: digits.into(),
        };
        let a = self.post("2fa", schemas::device::encode(&e)).await;
        assert_eq!(a.seq, self.seq);
        a
    }

    async fn otp(&mut self, challenge: u64, digits: &str) -> TwoFactorAnswer {
        self.seq += 1;
        let e = OtpEntry {
            lock_id: self.id.clone(),
            seq: self.seq,
            challenge,
            otp: digits.into(),
        };
        self.post("otp", schemas::device::encode(&e)).await
    }
}

fn ok(answer: &Value) -> Value {
    assert_eq!(answer["status"], "ok", "{answer}");
    answer["result"].clone()
}

fn refused(answer: &Value) -> String {
    assert_eq!(answer["status"], "refused", "{answer}");
    answer["error"]["rule"].as_str().unwrap().to_string()
}

/// A local time in the locks' zone, `secs` from now.
fn local(secs: i64) -> String {
    let now = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    now.to_zoned_datetime(tz)
        .datetime()
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

struct Run {
    dash: Dashboard,
    keys: u32,
    /// Every passcode and OTP used, for the scan.
    secrets: Vec<String>,
}

impl Run {
    async fn cmd(&mut self, department: Option<&str>, command: Value) -> Value {
        self.keys += 1;
        let key = format!("k{}", self.keys);
        self.dash
            .command(ORG, request(&key, department, command))
            .await
    }

    /// A user with a verified number and a passcode; returns the passcode.
    async fn user(&mut self, user: &str, mobile: &str) -> String {
        let a = self
            .cmd(
                None,
                json!({"type": "set_user_mobile", "user_id": user, "mobile": mobile}),
            )
            .await;
        assert_eq!(ok(&a)["user"]["mobile_verified"], false);
        let a = self
            .cmd(
                None,
                json!({"type": "verify_user_mobile", "user_id": user, "mobile": mobile}),
            )
            .await;
        assert_eq!(ok(&a)["user"]["mobile_verified"], true);
        let a = self
            .cmd(
                None,
                json!({"type": "generate_2fa_passcode", "user_id": user}),
            )
            .await;
        let passcode = ok(&a)["passcode"].as_str().unwrap().to_string();
        assert_eq!(passcode.len(), 8);
        self.secrets.push(passcode.clone());
        passcode
    }

    async fn grant(&mut self, user: &str, lock: &str, start: i64, end: i64) -> u64 {
        let a = self
            .cmd(
                Some("d1"),
                json!({"type": "grant_2fa", "user_id": user, "lock_id": lock,
                       "start": local(start), "end": local(end)}),
            )
            .await;
        let g = ok(&a)["grant"].clone();
        assert_eq!(g["time_zone"], ZONE);
        g["grant_id"].as_u64().unwrap()
    }

    /// The OTP the MQTT notifier published for `challenge`.
    async fn otp_for(&mut self, challenge: u64) -> String {
        let id = challenge.to_string();
        let mut found = None;
        for _ in 0..200 {
            found = self
                .dash
                .snapshot()
                .into_iter()
                .filter(|(t, _)| t == &format!("notify/v1/{ORG}/sms"))
                .map(|(_, p)| serde_json::from_slice::<Value>(&p).unwrap())
                .find(|v| v["notification_id"] == id.as_str());
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let n = found.expect("the notifier published the OTP");
        let otp = n["otp"].as_str().unwrap().to_string();
        assert_eq!(otp.len(), 6);
        assert!(n["message"].as_str().unwrap().contains(&otp));
        self.secrets.push(otp.clone());
        otp
    }

    /// The 2FA events on `lock`'s topic, as (outcome, reason).
    fn events(&self, lock: &str) -> Vec<(String, String)> {
        self.dash
            .with_suffix(&format!("/lock/{lock}/2fa"))
            .iter()
            .map(|e| {
                (
                    e["outcome"].as_str().unwrap().to_string(),
                    e["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    async fn wait_event(&self, lock: &str, outcome: &str, reason: &str) {
        let want = (outcome.to_string(), reason.to_string());
        for _ in 0..200 {
            if self.events(lock).contains(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no {outcome}/{reason} event for {lock}: {:?}",
            self.events(lock)
        );
    }
}

fn wrong(digits: &str) -> String {
    // Same length, every digit changed.
    digits
        .bytes()
        .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
        .collect()
}

async fn two_factor_end_to_end(engine: Engine) {
    let logs = capture_logs();
    let h = Harness::start_with(
        engine,
        &fleet(),
        Options {
            otp_ttl_secs: Some(3),
            ..Options::default()
        },
    )
    .await;
    let dash = Dashboard::subscribe(
        h.server.mqtt_addr,
        &["rsp/v1/#", "events/v1/#", "notify/v1/#"],
    )
    .await;
    let mut run = Run {
        dash,
        keys: 0,
        secrets: Vec::new(),
    };
    let mut t1 = Keypad::new(h.server.coap_addr, "T1").await;

    // The dashboard's rules.
    let ana = run.user("ana", "+6591230001").await;
    let a = run
        .cmd(
            None,
            json!({"type": "generate_2fa_passcode", "user_id": "ana"}),
        )
        .await;
    assert_eq!(refused(&a), "passcode_exists");
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "grant_2fa", "user_id": "ana", "lock_id": "P1",
                                "start": local(-60), "end": local(3600)}),
        )
        .await;
    assert_eq!(refused(&a), "no_2fa_support");
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "grant_2fa", "user_id": "ana", "lock_id": "T1",
                                "start": local(-60), "end": "2026-99-01T00:00"}),
        )
        .await;
    assert_eq!(refused(&a), "bad_time");
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "grant_2fa", "user_id": "nobody", "lock_id": "T1",
                                "start": local(-60), "end": local(3600)}),
        )
        .await;
    assert_eq!(refused(&a), "unknown_user");
    let grant = run.grant("ana", "T1", -60, 3600).await;

    // The happy path: passcode, OTP to the phone, allowed.
    let started = std::time::Instant::now();
    let a = t1.passcode(&ana).await;
    assert_eq!(a.result, TwoFactorResult::OtpSent, "{a:?}");
    let challenge = a.challenge.unwrap();
    assert!(a.expires_at.unwrap() >= common::now_s() + 2);
    let otp = run.otp_for(challenge).await;
    let a = t1.otp(challenge, &otp).await;
    assert_eq!(a.result, TwoFactorResult::Allowed);
    eprintln!(
        "2FA unlock (passcode to allowed) took {:?}",
        started.elapsed()
    );
    run.wait_event("T1", "allowed", "").await;

    // A reused OTP ends nothing new and opens nothing.
    let a = t1.otp(challenge, &otp).await;
    assert_eq!(a.result, TwoFactorResult::ChallengeEnded);
    run.wait_event("T1", "challenge_ended", "reused").await;

    // A wrong passcode: denied, like every other reason.
    let a = t1.passcode(&wrong(&ana)).await;
    assert_eq!(a.result, TwoFactorResult::Denied);
    assert_eq!((a.challenge, a.retry_after_s), (None, None));
    run.wait_event("T1", "denied", "wrong_passcode").await;

    // Three wrong OTPs end the challenge.
    let a = t1.passcode(&ana).await;
    let challenge = a.challenge.unwrap();
    let otp = run.otp_for(challenge).await;
    let a = t1.otp(challenge, &wrong(&otp)).await;
    assert_eq!(
        (a.result, a.tries_left),
        (TwoFactorResult::WrongOtp, Some(2))
    );
    let a = t1.otp(challenge, &wrong(&wrong(&otp))).await;
    assert_eq!(
        (a.result, a.tries_left),
        (TwoFactorResult::WrongOtp, Some(1))
    );
    let a = t1.otp(challenge, &wrong(&otp)).await;
    assert_eq!(a.result, TwoFactorResult::ChallengeEnded);
    let a = t1.otp(challenge, &otp).await;
    assert_eq!(
        a.result,
        TwoFactorResult::ChallengeEnded,
        "the right OTP is too late"
    );
    run.wait_event("T1", "challenge_ended", "too_many_tries")
        .await;

    // An expired OTP (the TTL is 3 s here).
    let a = t1.passcode(&ana).await;
    let challenge = a.challenge.unwrap();
    let otp = run.otp_for(challenge).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let a = t1.otp(challenge, &otp).await;
    assert_eq!(a.result, TwoFactorResult::ChallengeEnded);
    run.wait_event("T1", "challenge_ended", "expired").await;

    // An expired grant: the end moved to 2 s from now, then passed.
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "edit_2fa_grant", "grant_id": grant, "end": local(2)}),
        )
        .await;
    assert_eq!(ok(&a)["grant"]["status"], "active");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = t1.passcode(&ana).await;
    assert_eq!(a.result, TwoFactorResult::Denied);
    run.wait_event("T1", "denied", "expired").await;
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "edit_2fa_grant", "grant_id": grant, "end": local(3600)}),
        )
        .await;
    assert_eq!(
        refused(&a),
        "grant_ended",
        "only a current grant's end may move"
    );

    // An unverified number: a new number stops 2FA until verified.
    let ben = run.user("ben", "+6591230002").await;
    run.grant("ben", "T2", -60, 3600).await;
    let mut t2 = Keypad::new(h.server.coap_addr, "T2").await;
    let a = run
        .cmd(
            None,
            json!({"type": "set_user_mobile", "user_id": "ben", "mobile": "+6591230099"}),
        )
        .await;
    assert_eq!(ok(&a)["user"]["mobile_verified"], false);
    assert_eq!(ok(&a)["user"]["mobile_masked"], "+65****0099");
    let a = t2.passcode(&ben).await;
    assert_eq!(a.result, TwoFactorResult::Denied);
    run.wait_event("T2", "denied", "mobile_unverified").await;
    run.cmd(
        None,
        json!({"type": "verify_user_mobile", "user_id": "ben", "mobile": "+6591230099"}),
    )
    .await;
    let a = t2.passcode(&ben).await;
    assert_eq!(a.result, TwoFactorResult::OtpSent);
    let open = a.challenge.unwrap();
    let otp = run.otp_for(open).await;

    // A deactivated user: access revoked at once, the open challenge too.
    let a = run
        .cmd(None, json!({"type": "deactivate_user", "user_id": "ben"}))
        .await;
    assert_eq!(ok(&a)["user"]["active"], false);
    let a = t2.otp(open, &otp).await;
    assert_eq!(a.result, TwoFactorResult::ChallengeEnded);
    let a = t2.passcode(&ben).await;
    assert_eq!(a.result, TwoFactorResult::Denied);
    run.wait_event("T2", "denied", "user_deactivated").await;
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "list_2fa_grants", "user_id": "ben"}),
        )
        .await;
    assert_eq!(ok(&a)["grants"][0]["status"], "revoked");

    // The per-user rate limit: five challenges in 15 minutes, then wait.
    let cy = run.user("cy", "+6591230003").await;
    run.grant("cy", "T3", -60, 3600).await;
    let mut t3 = Keypad::new(h.server.coap_addr, "T3").await;
    for _ in 0..5 {
        let a = t3.passcode(&cy).await;
        assert_eq!(a.result, TwoFactorResult::OtpSent);
        run.otp_for(a.challenge.unwrap()).await;
    }
    let a = t3.passcode(&cy).await;
    assert_eq!(a.result, TwoFactorResult::RateLimited);
    assert!(a.retry_after_s.unwrap() > 60, "{a:?}");
    run.wait_event("T3", "rate_limited", "user_rate").await;

    // The lock's lock-out: five refused passcodes (the wrong one and the
    // expired grant above, three here) lock T1's 2FA; the dashboard sees
    // it and clears it.
    for _ in 0..3 {
        let a = t1.passcode("00000000").await;
        assert_eq!(a.result, TwoFactorResult::Denied);
    }
    let a = t1.passcode(&ana).await;
    assert_eq!(a.result, TwoFactorResult::LockedOut);
    assert!(a.retry_after_s.unwrap() > 60);
    run.wait_event("T1", "lockout_started", "wrong_passcodes")
        .await;
    let a = run.cmd(None, json!({"type": "list_2fa_lockouts"})).await;
    let lockouts = ok(&a)["lockouts"].clone();
    assert_eq!(lockouts.as_array().unwrap().len(), 1, "{lockouts}");
    assert_eq!(
        (lockouts[0]["scope"].as_str(), lockouts[0]["id"].as_str()),
        (Some("lock"), Some("T1"))
    );
    let a = run
        .cmd(
            Some("d2"),
            json!({"type": "clear_2fa_lockout", "lock_id": "T1"}),
        )
        .await;
    assert_eq!(refused(&a), "department_does_not_hold_lock");
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "clear_2fa_lockout", "lock_id": "T1"}),
        )
        .await;
    assert_eq!(ok(&a)["lockouts"], json!([]));
    run.wait_event("T1", "lockout_cleared", "wrong_passcodes")
        .await;
    assert_eq!(
        h.metric("lockfleet_twofa_lockout_changes_total{change=\"cleared\"}")
            .await,
        1.0
    );

    // A reset passcode: the old one stops working, the new one works.
    let a = run
        .cmd(
            None,
            json!({"type": "reset_2fa_passcode", "user_id": "ana"}),
        )
        .await;
    let new = ok(&a)["passcode"].as_str().unwrap().to_string();
    let reset_key = format!("k{}", run.keys);
    run.secrets.push(new.clone());
    assert_ne!(new, ana);
    let a = run
        .cmd(
            Some("d1"),
            json!({"type": "grant_2fa", "user_id": "ana", "lock_id": "T2",
                                "start": local(-60), "end": local(3600)}),
        )
        .await;
    ok(&a);
    let a = t2.passcode(&ana).await;
    assert_eq!(a.result, TwoFactorResult::Denied);
    let a = t2.passcode(&new).await;
    assert_eq!(a.result, TwoFactorResult::OtpSent);
    let otp = run.otp_for(a.challenge.unwrap()).await;
    let a = t2.otp(a.challenge.unwrap(), &otp).await;
    assert_eq!(a.result, TwoFactorResult::Allowed);

    // Nine wrong OTPs, over three challenges, lock the user out (a new
    // challenge after each wrong guess gains nothing); the dashboard sees
    // and clears it.
    let fay = run.user("fay", "+6591230006").await;
    run.grant("fay", "T4", -60, 3600).await;
    let mut t4 = Keypad::new(h.server.coap_addr, "T4").await;
    for round in 0..3 {
        let a = t4.passcode(&fay).await;
        assert_eq!(a.result, TwoFactorResult::OtpSent, "round {round}");
        let challenge = a.challenge.unwrap();
        let otp = run.otp_for(challenge).await;
        for _ in 0..3 {
            t4.otp(challenge, &wrong(&otp)).await;
        }
    }
    let a = t4.passcode(&fay).await;
    assert_eq!(a.result, TwoFactorResult::LockedOut, "{a:?}");
    assert!(a.retry_after_s.unwrap() > 3000);
    run.dash
        .wait_for(5, "fay's lock-out on her topic", |m| {
            m.iter()
                .any(|(t, _)| t == &format!("events/v1/{ORG}/user/fay/2fa"))
        })
        .await;
    let a = run.cmd(None, json!({"type": "list_2fa_lockouts"})).await;
    assert_eq!(ok(&a)["lockouts"][0]["id"], "fay", "{a}");
    let a = run
        .cmd(None, json!({"type": "get_2fa_user", "user_id": "fay"}))
        .await;
    assert!(ok(&a)["user"]["locked_out_until_ms"].as_u64().is_some());
    let a = run
        .cmd(None, json!({"type": "clear_2fa_lockout", "user_id": "fay"}))
        .await;
    assert_eq!(ok(&a)["lockouts"], json!([]));
    let a = t4.passcode(&fay).await;
    assert_eq!(a.result, TwoFactorResult::OtpSent);
    run.otp_for(a.challenge.unwrap()).await;

    // A repeated passcode command (same key) does not show it again.
    let again = run
        .dash
        .command(
            ORG,
            request(
                &reset_key,
                None,
                json!({"type": "reset_2fa_passcode", "user_id": "ana"}),
            ),
        )
        .await;
    assert_eq!(again["replayed"], true);
    assert_eq!(again["result"]["passcode"], Value::Null);
    assert_eq!(again["result"]["shown_before"], true);

    // An unprotected 2FA entry is refused even though the lock is known.
    let mut plain = CoapClient::new(h.server.coap_addr).await;
    let p = plain.request(
        RequestType::Post,
        "2fa",
        schemas::device::encode(&PasscodeEntry {
            lock_id: "T1".into(),
            seq: 999,
            passcode: new.clone(),
        }),
        true,
    );
    let answer = plain.exchange(&p).await;
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Unauthorized)
    );

    // Metrics count what happened.
    assert!(
        h.metric(
            "lockfleet_twofa_entries_total{entry=\"otp\",result=\"allowed\",reason=\"allowed\"}"
        )
        .await
            >= 2.0
    );
    assert!(h.metric("lockfleet_twofa_entries_total{entry=\"passcode\",result=\"denied\",reason=\"wrong_passcode\"}").await >= 5.0);

    // Every published message matches its schema; no secret anywhere but
    // in the passcode answers (shown once) and the notifier's topic.
    run.dash
        .wait_for(5, "the last events", |m| !m.is_empty())
        .await;
    run.dash.assert_all_valid();
    let (_, metrics) = common::http_get(h.server.http_addr, "/metrics")
        .await
        .unwrap();
    h.stop().await;
    let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        log_text.contains("2FA OTPs go through"),
        "the log capture works"
    );
    for secret in &run.secrets {
        // Each line but its timestamp (whose microseconds are 6 digits).
        let leaked: Vec<String> = log_text
            .lines()
            .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest))
            .filter(|l| has_digits(l, secret))
            .map(|l| l.replace(secret.as_str(), "<SECRET>"))
            .collect();
        assert!(
            leaked.is_empty(),
            "a secret ({} digits) is in the server's log:\n{}",
            secret.len(),
            leaked.join("\n")
        );
        assert!(!has_digits(&metrics, secret), "a secret is in the metrics");
        for (topic, payload) in run.dash.snapshot() {
            let text = String::from_utf8_lossy(&payload);
            if !has_digits(&text, secret) {
                continue;
            }
            let passcode_answer = topic.starts_with("rsp/v1/")
                && serde_json::from_slice::<Value>(&payload).unwrap()["result"]["passcode"]
                    == secret.as_str();
            let notifier = topic == format!("notify/v1/{ORG}/sms");
            assert!(
                passcode_answer || notifier,
                "a passcode or OTP was published on {topic}"
            );
        }
    }
    run.dash.close().await;
}

/// True when `digits` (a passcode or OTP) is in `text` as a number of its
/// own: not part of a longer run of digits. A random 6-digit OTP is found
/// by chance inside millisecond timestamps and float sums in a few runs in
/// a hundred; a leak shows it on its own.
fn has_digits(text: &str, digits: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(digits).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + digits.len()).copied();
        !before.is_some_and(|b| b.is_ascii_digit()) && !after.is_some_and(|b| b.is_ascii_digit())
    })
}

#[test]
fn a_secret_counts_only_as_a_number_of_its_own() {
    assert!(has_digits("otp=482916 sent", "482916"));
    assert!(has_digits("\"482916\"", "482916"));
    assert!(has_digits("482916", "482916"));
    assert!(!has_digits("at_ms=1764004829160", "482916"));
    assert!(!has_digits("sum 0.1482916", "482916"));
    assert!(has_digits("a1764004829160 482916", "482916"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_factor_end_to_end_sqlite() {
    two_factor_end_to_end(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_factor_end_to_end_postgres() {
    two_factor_end_to_end(Engine::Postgres).await;
}

/// The webhook notifier pointed at a provider that is down: the lock hears
/// `notifier_failed` with when to retry, the challenge ends (its OTP was
/// never sent), the dashboard sees it, and the failure is counted.
async fn notifier_down(engine: Engine) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let h = Harness::start_with(
        engine,
        &fleet(),
        Options {
            sms_webhook_port: Some(port),
            ..Options::default()
        },
    )
    .await;
    let dash = Dashboard::subscribe(
        h.server.mqtt_addr,
        &["rsp/v1/#", "events/v1/#", "notify/v1/#"],
    )
    .await;
    let mut run = Run {
        dash,
        keys: 0,
        secrets: Vec::new(),
    };
    let dee = run.user("dee", "+6591230004").await;
    run.grant("dee", "T1", -60, 3600).await;
    let mut t1 = Keypad::new(h.server.coap_addr, "T1").await;
    let a = t1.passcode(&dee).await;
    assert_eq!(a.result, TwoFactorResult::NotifierFailed, "{a:?}");
    assert_eq!((a.challenge, a.retry_after_s), (None, Some(30)));
    run.wait_event("T1", "notifier_failed", "connect").await;
    assert_eq!(
        h.metric(
            "lockfleet_twofa_notifier_failures_total{notifier=\"webhook\",reason=\"connect\"}"
        )
        .await,
        1.0
    );
    // Nothing went out on the MQTT notifier either.
    assert!(run
        .dash
        .snapshot()
        .iter()
        .all(|(t, _)| !t.starts_with("notify/")));
    run.dash.assert_all_valid();
    run.dash.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_down_sqlite() {
    notifier_down(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_down_postgres() {
    notifier_down(Engine::Postgres).await;
}
