//! 2FA with the simulator against the real server, on SQLite and
//! PostgreSQL: the gateway's webhook notifier sends OTPs to the simulator's
//! SMS inbox (a real HTTP server), the simulated 2FA people type passcodes
//! and OTPs at INB1-2FA locks over OSCORE-protected CoAP, and the lock
//! opens. People type a wrong OTP first, a wrong passcode, or come with a
//! number that is no longer verified; the inbox fails and the lock hears
//! `notifier_failed`, then recovers. What the simulator was answered agrees
//! with the 2FA events the dashboard received.

mod common;

use common::{request, Dashboard, Engine, Harness, Options};
use device_sim::fleet::{generate, FleetSpec};
use device_sim::phone::{InboxMode, SmsInbox};
use device_sim::run::{self, SimConfig};
use device_sim::twofa::{InboxSource, TwoFactorPerson, TwoFactorSim, VisitEnd, VisitPlan};
use device_sim::Reporting;
use schemas::twofa::TwoFactorResult;
use schemas::{LockModel, LockState};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use zeroize::Zeroizing;

fn local(zone: &str, secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.to_zoned_datetime(jiff::tz::TimeZone::get(zone).unwrap())
        .datetime()
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

async fn simulated_people_unlock_2fa_locks(engine: Engine) {
    let mut fleet = generate(&FleetSpec {
        locks: 8,
        bridges: 0,
        orgs: 1,
        mqtt_share: 0.0,
        seed: 23,
    })
    .unwrap();
    // Three NB-IoT CoAP locks become 2FA models.
    let locks: Vec<usize> = fleet
        .locks
        .iter()
        .enumerate()
        .filter(|(_, l)| l.model.is_nb_iot() && l.bridge_id.is_none())
        .map(|(i, _)| i)
        .take(3)
        .collect();
    assert_eq!(locks.len(), 3, "the fleet has three NB-IoT locks");
    for &i in &locks {
        fleet.locks[i].model = LockModel::Inb1TwoFactor;
    }
    let mut csv = Vec::new();
    fleet.write_to(&mut csv).unwrap();
    let parsed =
        dispatcher::import::read_fleet(&csv[..], &dispatcher::Registry::default()).unwrap();
    let org = fleet.locks[locks[0]].org.clone();

    let inbox = SmsInbox::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let h = Harness::start_with(
        engine,
        &parsed,
        Options {
            sms_webhook_port: Some(inbox.addr().port()),
            ..Options::default()
        },
    )
    .await;
    let dash = Dashboard::subscribe(h.server.mqtt_addr, &["events/v1/#", "rsp/v1/#"]).await;

    // The dashboard's side: three people, one lock each; cy's number is
    // changed after the grant and never verified.
    let mut keys = 0;
    let mut cmd = |dept: Option<String>, c: Value| {
        keys += 1;
        let (d, org) = (dash.clone(), org.clone());
        async move {
            let a = d
                .command(&org, request(&format!("k{keys}"), dept.as_deref(), c))
                .await;
            assert_eq!(a["status"], "ok", "{a}");
            a["result"].clone()
        }
    };
    let mut people = Vec::new();
    for (n, (&i, user)) in locks.iter().zip(["ana", "ben", "cy"]).enumerate() {
        let lock = &fleet.locks[i];
        let mobile = format!("+659123000{n}");
        cmd(
            None,
            json!({"type": "set_user_mobile", "user_id": user, "mobile": mobile}),
        )
        .await;
        cmd(
            None,
            json!({"type": "verify_user_mobile", "user_id": user, "mobile": mobile}),
        )
        .await;
        let p = cmd(
            None,
            json!({"type": "generate_2fa_passcode", "user_id": user}),
        )
        .await;
        let passcode = Zeroizing::new(p["passcode"].as_str().unwrap().to_string());
        let dept = lock.departments.first().cloned();
        cmd(
            dept,
            json!({"type": "grant_2fa", "user_id": user, "lock_id": lock.id,
                   "start": local(&lock.time_zone, -60), "end": local(&lock.time_zone, 3600)}),
        )
        .await;
        people.push(TwoFactorPerson {
            user_id: user.into(),
            mobile,
            passcode,
            locks: vec![lock.id.clone()],
        });
    }
    cmd(
        None,
        json!({"type": "set_user_mobile", "user_id": "cy", "mobile": "+6591239999"}),
    )
    .await;

    let sim = run::start(
        SimConfig {
            gateway: "127.0.0.1".into(),
            coap_port: h.server.coap_addr.port(),
            mqtt_port: h.server.mqtt_addr.port(),
            reporting: Reporting::OnDemand,
            visits_per_hour: Some(0.0),
            ack_timeout: Duration::from_millis(300),
            twofa: Some(TwoFactorSim {
                people: people.clone(),
                mean_interval: None,
                p_wrong_passcode: 0.0,
                p_wrong_otp: 0.0,
                otp_timeout: Duration::from_secs(10),
                inbox: InboxSource::Given(inbox.clone()),
            }),
            ..SimConfig::default()
        },
        fleet.clone(),
    )
    .await
    .unwrap();

    // Ana at her lock: the OTP reaches her phone and the lock opens.
    let ana_lock = sim.lock(&fleet.locks[locks[0]].id).unwrap();
    let ana = sim.person("ana").unwrap();
    let visit = ana.visit(&ana_lock).await;
    assert_eq!(visit.end, VisitEnd::Opened, "{visit:?}");
    eprintln!(
        "OTP reached the phone {:?} after the passcode",
        visit.otp_delivery
    );
    assert_eq!(
        ana_lock.status().await.unwrap().lock_state,
        LockState::Unlocked
    );
    // A wrong OTP first, then the right one: still opens.
    let visit = ana
        .visit_with(
            &ana_lock,
            VisitPlan {
                wrong_passcode: false,
                wrong_otp_first: true,
            },
        )
        .await;
    assert_eq!(visit.end, VisitEnd::Opened, "{visit:?}");
    assert_eq!(visit.answers[1].result, TwoFactorResult::WrongOtp);
    // A wrong passcode: denied, no OTP sent.
    let sent = inbox.requests().len();
    let visit = ana
        .visit_with(
            &ana_lock,
            VisitPlan {
                wrong_passcode: true,
                wrong_otp_first: false,
            },
        )
        .await;
    assert_eq!(visit.end, VisitEnd::Refused(TwoFactorResult::Denied));
    assert_eq!(inbox.requests().len(), sent);
    // Cy's new number is not verified: denied.
    let cy_lock = sim.lock(&fleet.locks[locks[2]].id).unwrap();
    let visit = sim.person("cy").unwrap().visit(&cy_lock).await;
    assert_eq!(visit.end, VisitEnd::Refused(TwoFactorResult::Denied));

    // The inbox fails: the lock hears notifier_failed.
    inbox.set_mode(InboxMode::Status(503));
    let ben_lock = sim.lock(&fleet.locks[locks[1]].id).unwrap();
    let visit = sim.person("ben").unwrap().visit(&ben_lock).await;
    assert_eq!(
        visit.end,
        VisitEnd::Refused(TwoFactorResult::NotifierFailed)
    );
    inbox.set_mode(InboxMode::Up);
    let visit = sim.person("ben").unwrap().visit(&ben_lock).await;
    assert_eq!(visit.end, VisitEnd::Opened, "{visit:?}");

    // What the locks were answered is what the dashboard was told.
    let counts = sim.snapshot().twofa;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for e in dash.with_suffix("/2fa") {
        *events
            .entry(e["outcome"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let ev = |k: &str| events.get(k).copied().unwrap_or(0);
    // A challenge whose OTP could not be sent was announced, then failed.
    assert_eq!(
        counts.result(TwoFactorResult::OtpSent) + counts.result(TwoFactorResult::NotifierFailed),
        ev("challenge_sent")
    );
    assert_eq!(counts.result(TwoFactorResult::Allowed), ev("allowed"));
    assert_eq!(counts.result(TwoFactorResult::WrongOtp), ev("wrong_otp"));
    assert_eq!(counts.result(TwoFactorResult::Denied), ev("denied"));
    assert_eq!(
        counts.result(TwoFactorResult::NotifierFailed),
        ev("notifier_failed")
    );
    assert_eq!(counts.opened, 3);
    dash.assert_all_valid();
    // The webhook carried the template and the reference of each challenge.
    for r in inbox.requests().iter().filter(|r| r.delivered()) {
        assert!(
            r.reference.as_deref().unwrap_or("").starts_with("2fa-"),
            "{r:?}"
        );
        assert!(r
            .message
            .as_deref()
            .is_some_and(|m| m.contains("iglooworks")));
    }

    sim.stop();
    sim.finish().await.unwrap();
    dash.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_people_unlock_2fa_locks_sqlite() {
    simulated_people_unlock_2fa_locks(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_people_unlock_2fa_locks_postgres() {
    simulated_people_unlock_2fa_locks(Engine::Postgres).await;
}
