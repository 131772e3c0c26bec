//! 2FA unlock end to end against the test peer playing the gateway's 2FA
//! (OSCORE, `/2fa`, `/otp`, the SMS webhook to the run's inbox): a test
//! typing at one lock, a person visiting on command, and people visiting
//! on their own, with the answers, the unlock in the activity log, the
//! stats and the latencies the run reports.

mod common;

use common::{coap_fleet, twofa_fleet, Behaviour, CoapServer, TwoFactorGateway, TwoFactorUser};
use device_sim::control::ControlError;
use device_sim::fleet::Fleet;
use device_sim::phone::{InboxMode, SmsInbox};
use device_sim::run::{self, RunHandle, SimConfig};
use device_sim::twofa::{InboxSource, TwoFactorPerson, TwoFactorSim, VisitEnd, VisitPlan};
use device_sim::{Reporting, TwoFactorLeg};
use schemas::twofa::TwoFactorResult;
use schemas::{ActivityKind, LockState};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Longest a test waits for something that should come at once.
const PATIENCE: Duration = Duration::from_secs(10);
const MOBILE: &str = "+6591234567";
const PASSCODE: &str = "48291637";

fn alice(locks: &[&str]) -> TwoFactorPerson {
    TwoFactorPerson {
        user_id: "u-alice".into(),
        mobile: MOBILE.into(),
        passcode: Zeroizing::new(PASSCODE.into()),
        locks: locks.iter().map(|l| l.to_string()).collect(),
    }
}

/// The test peer's 2FA with alice's access at `locks`, its SMS to `inbox`.
fn gateway(inbox: &SmsInbox, locks: &[&str]) -> Behaviour {
    Behaviour {
        twofa: Some(TwoFactorGateway {
            users: vec![TwoFactorUser {
                user_id: "u-alice".into(),
                mobile: MOBILE.into(),
                passcode: PASSCODE.into(),
                locks: locks.iter().map(|l| l.to_string()).collect(),
            }],
            webhook: Some(inbox.addr()),
            tries: 3,
        }),
        ..Behaviour::default()
    }
}

/// `f`, or a panic if it takes longer than [`PATIENCE`].
async fn within<F: std::future::Future>(f: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(PATIENCE, f).await
}

/// A run that reports only when told, with `twofa`.
async fn start(server: &CoapServer, fleet: &Fleet, twofa: Option<TwoFactorSim>) -> RunHandle {
    let config = SimConfig {
        gateway: server.addr.ip().to_string(),
        coap_port: server.addr.port(),
        speedup: 1.0,
        reporting: Reporting::OnDemand,
        visits_per_hour: Some(0.0),
        ack_timeout: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(5),
        twofa,
        ..SimConfig::default()
    };
    run::start(config, fleet.clone()).await.unwrap()
}

#[tokio::test]
async fn a_test_types_passcode_and_otp_at_an_inb1_2fa_lock_and_it_opens() {
    let fleet = twofa_fleet(1, 1);
    let id = fleet.locks[0].id.clone();
    let inbox = SmsInbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = CoapServer::secure(gateway(&inbox, &[&id]), &fleet).await;
    let sim = start(&server, &fleet, None).await;
    let lock = sim.lock(&id).unwrap();

    let denied = within(lock.enter_2fa_passcode("00000000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((denied.seq, denied.result), (1, TwoFactorResult::Denied));

    let typed = Instant::now();
    let sent = within(lock.enter_2fa_passcode(PASSCODE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((sent.seq, sent.result), (2, TwoFactorResult::OtpSent));
    let challenge = sent.challenge.unwrap();
    let sms = inbox
        .wait_otp(MOBILE, typed, PATIENCE)
        .await
        .expect("the OTP came");
    assert_eq!(sms.challenge(), Some(challenge));

    let wrong = within(lock.enter_otp(challenge, "000000"))
        .await
        .unwrap()
        .unwrap();
    // (The stand-in's OTP is random: 000000 is right once in a million.)
    assert_eq!(
        (wrong.result, wrong.tries_left),
        (TwoFactorResult::WrongOtp, Some(2))
    );
    assert_eq!(lock.status().await.unwrap().lock_state, LockState::Locked);
    let allowed = within(lock.enter_otp(challenge, &sms.otp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((allowed.seq, allowed.result), (4, TwoFactorResult::Allowed));
    let status = lock.status().await.unwrap();
    assert_eq!(status.lock_state, LockState::Unlocked);
    assert_eq!(status.counters.next_seq, 5, "each entry took an uplink seq");
    // The used challenge is over.
    let again = within(lock.enter_otp(challenge, &sms.otp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.result, TwoFactorResult::ChallengeEnded);

    // The unlock is in the activity the next heartbeat uploads.
    within(lock.heartbeat_now()).await.unwrap().unwrap();
    {
        let seen = server.seen.lock().unwrap();
        let unlocks: Vec<_> = seen
            .activity
            .iter()
            .filter(|(_, kind, _)| *kind == ActivityKind::Unlocked2fa)
            .collect();
        assert_eq!(unlocks.len(), 1, "{:?}", seen.activity);
        assert_eq!(
            unlocks[0].2.as_deref(),
            Some(format!("2fa-{challenge}").as_str())
        );
        let paths: Vec<&str> = seen.twofa.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(paths, ["2fa", "2fa", "otp", "otp", "otp"]);
        // Every entry went OSCORE-protected, each under its own sequence number.
        let pivs: Vec<u64> = seen.oscore.iter().map(|o| o.1).collect();
        assert_eq!(pivs, (1..=pivs.len() as u64).collect::<Vec<_>>());
        assert!(pivs.len() >= 6);
    }

    sim.stop();
    let report = sim.finish().await.unwrap();
    let t = &report.stats.twofa;
    assert_eq!(t.result(TwoFactorResult::Denied), 1);
    assert_eq!(t.result(TwoFactorResult::OtpSent), 1);
    assert_eq!(t.result(TwoFactorResult::WrongOtp), 1);
    assert_eq!(t.result(TwoFactorResult::Allowed), 1);
    assert_eq!(t.result(TwoFactorResult::ChallengeEnded), 1);
    assert_eq!((t.failed, t.visits), (0, 0), "no people in this run");
    let l = &report.twofa_latency;
    assert_eq!(l.count(TwoFactorLeg::PasscodeAnswer), 2);
    assert_eq!(l.count(TwoFactorLeg::OtpAnswer), 3);
    // Entries are not reports: the heartbeat and its log batch only.
    assert_eq!(report.acknowledged.len(), 2, "{:?}", report.acknowledged);
    // Five entries, then the log batch with the unlock and the heartbeat.
    assert_eq!(report.counters[&id].next_seq, 8);
}

#[tokio::test]
async fn only_an_inb1_2fa_lock_on_coap_takes_entries() {
    let mut fleet = coap_fleet(1, 2);
    fleet.locks[0].model = schemas::LockModel::Inb1;
    let id = fleet.locks[0].id.clone();
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    let sim = start(&server, &fleet, None).await;
    let lock = sim.lock(&id).unwrap();
    let err = lock.enter_2fa_passcode(PASSCODE).await.unwrap_err();
    assert_eq!(
        err,
        ControlError::NotTwoFactor {
            lock: id.clone(),
            model: "INB1",
            transport: "coap"
        }
    );
    assert!(
        err.to_string().contains("only INB1-2FA locks on CoAP"),
        "{err}"
    );
    assert_eq!(lock.status().await.unwrap().counters.next_seq, 1);
    sim.stop();
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn refusals_reach_the_caller_with_code_and_diagnostic_and_entries_are_not_retried() {
    let fleet = twofa_fleet(1, 3);
    let id = fleet.locks[0].id.clone();
    let inbox = SmsInbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let behaviour = Behaviour {
        busy_first: 1,
        drop_first: 1,
        ..gateway(&inbox, &[&id])
    };
    let server = CoapServer::secure(behaviour, &fleet).await;
    let sim = start(&server, &fleet, None).await;
    let lock = sim.lock(&id).unwrap();

    // The first datagram is lost, its retransmission answered 5.03: the
    // entry ends there (the person types again), unlike a report.
    let busy = lock.enter_2fa_passcode(PASSCODE).await.unwrap_err();
    let ControlError::TwoFactorRefused {
        path,
        seq,
        code,
        diagnostic,
    } = busy
    else {
        panic!("{busy:?}")
    };
    assert_eq!((path, seq, code.as_str()), ("2fa", 1, "5.03"));
    assert!(diagnostic.contains("busy"), "{diagnostic}");

    // More digits than a typed entry may have: the gateway's 4.00.
    let long = lock
        .enter_2fa_passcode("12345678901234567")
        .await
        .unwrap_err();
    assert!(
        matches!(&long, ControlError::TwoFactorRefused { code, diagnostic, .. }
            if code == "4.00" && diagnostic.contains("bad_digits")),
        "{long:?}"
    );
    // The keypad is free again and the next entry goes through.
    let sent = lock.enter_2fa_passcode(PASSCODE).await.unwrap();
    assert_eq!((sent.seq, sent.result), (3, TwoFactorResult::OtpSent));

    sim.stop();
    let report = sim.finish().await.unwrap();
    assert_eq!(report.stats.twofa.failed, 2);
    assert_eq!(report.stats.errors.get("2fa:5.03"), Some(&1));
    assert_eq!(report.stats.errors.get("2fa:4.00"), Some(&1));
    assert!(report.stats.retransmitted >= 1);
}

#[tokio::test]
async fn an_entry_while_another_waits_finds_the_keypad_busy() {
    let fleet = twofa_fleet(1, 4);
    let id = fleet.locks[0].id.clone();
    let inbox = SmsInbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Every datagram lost for a while: the first entry stays in flight.
    let behaviour = Behaviour {
        drop_first: 2,
        ..gateway(&inbox, &[&id])
    };
    let server = CoapServer::secure(behaviour, &fleet).await;
    let sim = start(&server, &fleet, None).await;
    let lock = sim.lock(&id).unwrap();
    let first = tokio::spawn({
        let lock = lock.clone();
        async move { lock.enter_2fa_passcode(PASSCODE).await }
    });
    // Wait until the lock holds the first entry.
    let pending = async {
        while lock.inspect(|l| l.pending_2fa()).await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, pending).await.unwrap();
    assert_eq!(
        lock.enter_otp(1, "123456").await.unwrap_err(),
        ControlError::KeypadBusy
    );
    let answer = first.await.unwrap().unwrap();
    assert_eq!(answer.result, TwoFactorResult::OtpSent);
    sim.stop();
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn a_person_visits_on_command_and_the_run_counts_it() {
    let fleet = twofa_fleet(2, 5);
    let (l1, l2) = (fleet.locks[0].id.clone(), fleet.locks[1].id.clone());
    let inbox = SmsInbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Alice has access at the first lock only.
    let server = CoapServer::secure(gateway(&inbox, &[&l1]), &fleet).await;
    let twofa = TwoFactorSim {
        people: vec![alice(&[&l1, &l2])],
        mean_interval: None,
        // The lost OTP is waited for this long.
        otp_timeout: Duration::from_secs(1),
        inbox: InboxSource::Given(inbox.clone()),
        ..TwoFactorSim::default()
    };
    let sim = start(&server, &fleet, Some(twofa)).await;
    assert_eq!(sim.sms_inbox().unwrap().url(), inbox.url());
    assert!(sim.person("u-bob").is_none());
    let alice = sim.person("u-alice").unwrap();

    let opened = alice.visit(&sim.lock(&l1).unwrap()).await;
    assert_eq!(opened.end, VisitEnd::Opened, "{opened:?}");
    let results: Vec<_> = opened.answers.iter().map(|a| a.result).collect();
    assert_eq!(
        results,
        [TwoFactorResult::OtpSent, TwoFactorResult::Allowed]
    );
    assert!(opened.otp_delivery.is_some());

    let denied = alice.visit(&sim.lock(&l2).unwrap()).await;
    assert_eq!(denied.end, VisitEnd::Refused(TwoFactorResult::Denied));

    let plan = VisitPlan {
        wrong_passcode: false,
        wrong_otp_first: true,
    };
    let retyped = alice.visit_with(&sim.lock(&l1).unwrap(), plan).await;
    let results: Vec<_> = retyped.answers.iter().map(|a| a.result).collect();
    assert_eq!(
        results,
        [
            TwoFactorResult::OtpSent,
            TwoFactorResult::WrongOtp,
            TwoFactorResult::Allowed
        ]
    );

    // The SMS provider fails: the OTP never comes.
    inbox.set_mode(InboxMode::Status(500));
    let lost = alice.visit(&sim.lock(&l1).unwrap()).await;
    assert_eq!(lost.end, VisitEnd::OtpNeverArrived);

    sim.stop();
    let report = sim.finish().await.unwrap();
    let t = &report.stats.twofa;
    assert_eq!((t.visits, t.opened, t.otp_never_arrived), (4, 2, 1));
    assert_eq!(report.twofa_latency.count(TwoFactorLeg::OtpDelivery), 2);
}

#[tokio::test]
async fn people_visit_on_their_own_and_every_outcome_is_counted() {
    let fleet = twofa_fleet(2, 6);
    let locks: Vec<&str> = fleet.locks.iter().map(|l| l.id.as_str()).collect();
    let inbox = SmsInbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = CoapServer::secure(gateway(&inbox, &locks), &fleet).await;
    let twofa = TwoFactorSim {
        people: vec![alice(&locks)],
        // 1 simulated hour = 10 ms at this speedup: a visit every ~20 ms.
        mean_interval: Some(Duration::from_secs(2 * 3600)),
        p_wrong_passcode: 0.3,
        p_wrong_otp: 0.3,
        otp_timeout: Duration::from_secs(5),
        inbox: InboxSource::Given(inbox.clone()),
    };
    let config = SimConfig {
        gateway: server.addr.ip().to_string(),
        coap_port: server.addr.port(),
        speedup: 360_000.0,
        reporting: Reporting::OnDemand,
        visits_per_hour: Some(0.0),
        ack_timeout: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(5),
        twofa: Some(twofa),
        seed: 11,
        ..SimConfig::default()
    };
    let sim = run::start(config, fleet.clone()).await.unwrap();
    let enough = async {
        loop {
            let t = sim.snapshot().twofa;
            if t.opened >= 5 && t.result(TwoFactorResult::Denied) >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, enough)
        .await
        .expect("visits happen");
    sim.stop();
    let report = sim.finish().await.unwrap();
    let t = &report.stats.twofa;
    // Every answer the stand-in gave is counted once, by result.
    let seen = server.seen.lock().unwrap();
    for result in [
        TwoFactorResult::OtpSent,
        TwoFactorResult::Denied,
        TwoFactorResult::WrongOtp,
        TwoFactorResult::Allowed,
    ] {
        let given = seen.twofa.iter().filter(|x| x.3 == result).count() as u64;
        assert_eq!(t.result(result), given, "{result:?}: {t:?}");
    }
    assert!(t.result(TwoFactorResult::WrongOtp) > 0, "{t:?}");
    assert_eq!(t.failed, 0);
    assert!(t.visits >= t.opened + t.result(TwoFactorResult::Denied));
    let l = &report.twofa_latency;
    assert_eq!(
        l.count(TwoFactorLeg::OtpDelivery),
        t.result(TwoFactorResult::OtpSent)
    );
    assert!(l.quantile(TwoFactorLeg::OtpAnswer, 0.5).is_some());
    assert!(report.stats.to_string().contains("2fa visits"));
}

#[tokio::test]
async fn a_person_at_a_lock_the_fleet_lacks_or_without_2fa_stops_the_run_before_it_starts() {
    let mut fleet = twofa_fleet(2, 7);
    fleet.locks[1].model = schemas::LockModel::Inb1;
    let server = CoapServer::secure(Behaviour::default(), &fleet).await;
    for (locks, want) in [
        (vec!["L999999"], "which the fleet does not have"),
        (vec![fleet.locks[1].id.as_str()], "a INB1 on coap"),
    ] {
        let twofa = TwoFactorSim {
            people: vec![alice(&locks)],
            ..TwoFactorSim::default()
        };
        let config = SimConfig {
            gateway: server.addr.ip().to_string(),
            coap_port: server.addr.port(),
            twofa: Some(twofa),
            ..SimConfig::default()
        };
        let err = run::start(config, fleet.clone()).await.err().unwrap();
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(server.seen.lock().unwrap().datagrams.is_empty());
}
