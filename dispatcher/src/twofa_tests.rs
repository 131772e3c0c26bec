use super::*;
use crate::registry::{LockId, OrgId, ReportPath};
use schemas::{ActivityLogInterval, HeartbeatInterval};

const NOW: u64 = 1_800_000_000_000;
const MIN: u64 = 60_000;

fn user() -> UserFacts {
    UserFacts {
        user_id: "u1".into(),
        active: true,
        mobile: Some("+6591234567".into()),
        mobile_verified: true,
    }
}

fn grant(start_ms: u64, end_ms: u64) -> GrantFacts {
    GrantFacts {
        grant_id: 7,
        department: Some("d1".into()),
        start_ms,
        end_ms,
    }
}

fn facts() -> PasscodeFacts {
    PasscodeFacts {
        lock_supports_2fa: true,
        user: Some(user()),
        grants: vec![grant(NOW - MIN, NOW + 24 * 60 * MIN)],
        ..PasscodeFacts::default()
    }
}

fn refused(d: &PasscodeDecision) -> &Refused {
    match d {
        PasscodeDecision::Refuse(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_good_passcode_issues_a_challenge_and_counts_it() {
    let limits = Limits::default();
    let (d, e) = decide_passcode(&facts(), &limits, NOW);
    assert_eq!(
        d,
        PasscodeDecision::Issue {
            grant_id: 7,
            department: Some("d1".into()),
            mobile: "+6591234567".into(),
            expires_at_ms: NOW + 5 * MIN,
        }
    );
    let kinds: Vec<_> = e.writes.iter().map(|(k, c)| (*k, c.count)).collect();
    assert_eq!(
        kinds,
        vec![
            (CounterKind::LockRequests, 1),
            (CounterKind::UserChallenges, 1)
        ]
    );
    assert_eq!(e.lockout, None);
}

#[test]
fn every_denial_looks_the_same_to_the_lock() {
    let limits = Limits::default();
    let mut cases: Vec<(PasscodeFacts, &str)> = Vec::new();
    cases.push((
        PasscodeFacts {
            user: None,
            grants: vec![],
            ..facts()
        },
        "wrong_passcode",
    ));
    let mut f = facts();
    f.user.as_mut().unwrap().active = false;
    cases.push((f, "user_deactivated"));
    cases.push((
        PasscodeFacts {
            grants: vec![],
            ..facts()
        },
        "no_access",
    ));
    cases.push((
        PasscodeFacts {
            grants: vec![grant(NOW + MIN, NOW + 2 * MIN)],
            ..facts()
        },
        "not_started",
    ));
    cases.push((
        PasscodeFacts {
            grants: vec![grant(NOW - 2 * MIN, NOW)],
            ..facts()
        },
        "expired",
    ));
    let mut f = facts();
    f.user.as_mut().unwrap().mobile_verified = false;
    cases.push((f, "mobile_unverified"));
    let mut f = facts();
    f.user.as_mut().unwrap().mobile = None;
    cases.push((f, "mobile_unverified"));
    cases.push((
        PasscodeFacts {
            lock_supports_2fa: false,
            ..facts()
        },
        "not_2fa_lock",
    ));
    for (f, reason) in cases {
        let (d, e) = decide_passcode(&f, &limits, NOW);
        // Every refused passcode counts toward the lock's lock-out alike.
        let counted = e
            .writes
            .iter()
            .any(|(k, _)| *k == CounterKind::LockFailures);
        assert_eq!(counted, reason != "not_2fa_lock", "{reason}");
        let r = refused(&d);
        assert_eq!(r.answer, TwoFactorResult::Denied, "{reason}");
        assert_eq!(r.outcome, TwoFactorOutcome::Denied, "{reason}");
        assert_eq!(r.reason, reason);
        assert_eq!(r.retry_at_ms, None);
    }
}

#[test]
fn wrong_passcodes_lock_the_lock_out_then_it_clears_itself() {
    let limits = Limits::default();
    let mut f = PasscodeFacts {
        user: None,
        ..facts()
    };
    let mut started = None;
    for i in 0..limits.lock_failures.max {
        let now = NOW + u64::from(i) * 1000;
        let (d, e) = decide_passcode(&f, &limits, now);
        assert_eq!(refused(&d).reason, "wrong_passcode");
        for (k, c) in e.writes {
            match k {
                CounterKind::LockFailures => f.lock_failures = c,
                CounterKind::LockRequests => f.lock_requests = c,
                _ => unreachable!(),
            }
        }
        started = e.lockout;
    }
    let until = NOW + 4000 + limits.lock_failures.lock_ms;
    assert_eq!(started, Some((CounterKind::LockFailures, until)));
    // Even the right passcode is locked out now, without counting.
    f.user = Some(user());
    let (d, e) = decide_passcode(&f, &limits, NOW + 5000);
    let r = refused(&d);
    assert_eq!(
        (r.answer, r.reason, r.retry_at_ms),
        (TwoFactorResult::LockedOut, "lock", Some(until))
    );
    assert!(e.writes.is_empty());
    // Once it passes, the right passcode works again.
    let (d, _) = decide_passcode(&f, &limits, until);
    assert!(matches!(d, PasscodeDecision::Issue { .. }), "{d:?}");
    // And a dashboard clear ends it at once.
    f.lock_failures = f.lock_failures.cleared();
    let (d, _) = decide_passcode(&f, &limits, NOW + 6000);
    assert!(matches!(d, PasscodeDecision::Issue { .. }), "{d:?}");
}

#[test]
fn rate_limits_per_lock_and_per_user() {
    let limits = Limits::default();
    let mut f = facts();
    f.lock_requests = Counter {
        window_start_ms: NOW - 1000,
        count: limits.lock_requests.max,
        ..Counter::default()
    };
    let (d, e) = decide_passcode(&f, &limits, NOW);
    let r = refused(&d);
    assert_eq!(
        (r.answer, r.reason, r.retry_at_ms),
        (
            TwoFactorResult::RateLimited,
            "lock_rate",
            Some(NOW - 1000 + MIN)
        )
    );
    assert!(e.writes.is_empty());
    // A new window: allowed again.
    let (d, _) = decide_passcode(&f, &limits, NOW - 1000 + MIN);
    assert!(matches!(d, PasscodeDecision::Issue { .. }));

    let mut f = facts();
    f.user_challenges = Counter {
        window_start_ms: NOW - 1000,
        count: limits.user_challenges.max,
        ..Counter::default()
    };
    let (d, _) = decide_passcode(&f, &limits, NOW);
    assert_eq!(refused(&d).reason, "user_rate");
    assert_eq!(refused(&d).answer, TwoFactorResult::RateLimited);
}

#[test]
fn a_locked_out_user_is_told_so_with_the_time() {
    let limits = Limits::default();
    let mut f = facts();
    f.user_failures = Counter {
        locked_since_ms: NOW - 1,
        locked_until_ms: NOW + MIN,
        ..Counter::default()
    };
    let (d, _) = decide_passcode(&f, &limits, NOW);
    let r = refused(&d);
    assert_eq!(
        (r.answer, r.reason, r.retry_at_ms),
        (TwoFactorResult::LockedOut, "user", Some(NOW + MIN))
    );
}

fn open(tries: u8) -> ChallengeFacts {
    ChallengeFacts {
        state: ChallengeState::Open,
        expires_at_ms: NOW + MIN,
        tries,
        access_holds: true,
    }
}

#[test]
fn the_right_otp_allows_once() {
    let l = Limits::default();
    assert_eq!(
        decide_otp(Some(&open(0)), true, &l, NOW),
        OtpDecision::Allow
    );
    assert_eq!(
        decide_otp(Some(&open(2)), true, &l, NOW),
        OtpDecision::Allow
    );
    let used = ChallengeFacts {
        state: ChallengeState::Allowed,
        ..open(0)
    };
    let d = decide_otp(Some(&used), true, &l, NOW);
    assert_eq!(
        d,
        OtpDecision::End {
            reason: "reused",
            new_state: None,
            tries: 0,
            user_failure: false
        }
    );
    assert_eq!(d.answer(), TwoFactorResult::ChallengeEnded);
}

#[test]
fn three_wrong_otps_end_the_challenge_and_count_against_the_user() {
    let l = Limits::default();
    assert_eq!(
        decide_otp(Some(&open(0)), false, &l, NOW),
        OtpDecision::Wrong {
            tries: 1,
            tries_left: 2
        }
    );
    assert_eq!(
        decide_otp(Some(&open(1)), false, &l, NOW),
        OtpDecision::Wrong {
            tries: 2,
            tries_left: 1
        }
    );
    assert_eq!(
        decide_otp(Some(&open(2)), false, &l, NOW),
        OtpDecision::End {
            reason: "too_many_tries",
            new_state: Some(ChallengeState::Failed),
            tries: 3,
            user_failure: true
        }
    );
}

#[test]
fn every_wrong_otp_counts_against_the_user() {
    let l = Limits::default();
    assert!(decide_otp(Some(&open(0)), false, &l, NOW).counts_against_user());
    assert!(decide_otp(Some(&open(2)), false, &l, NOW).counts_against_user());
    assert!(!decide_otp(Some(&open(0)), true, &l, NOW).counts_against_user());
    assert!(!decide_otp(None, false, &l, NOW).counts_against_user());
}

#[test]
fn expiry_revocation_and_unknown_challenges_end_it() {
    let l = Limits::default();
    let d = decide_otp(Some(&open(0)), true, &l, NOW + MIN);
    assert!(matches!(
        d,
        OtpDecision::End {
            reason: "expired",
            new_state: Some(ChallengeState::Expired),
            ..
        }
    ));
    let revoked = ChallengeFacts {
        access_holds: false,
        ..open(0)
    };
    let d = decide_otp(Some(&revoked), true, &l, NOW);
    assert!(matches!(
        d,
        OtpDecision::End {
            reason: "revoked",
            new_state: Some(ChallengeState::Revoked),
            ..
        }
    ));
    let d = decide_otp(None, true, &l, NOW);
    assert!(matches!(
        d,
        OtpDecision::End {
            reason: "unknown",
            new_state: None,
            ..
        }
    ));
    for s in [
        ChallengeState::Failed,
        ChallengeState::Expired,
        ChallengeState::Superseded,
        ChallengeState::NotifierFailed,
    ] {
        let c = ChallengeFacts {
            state: s,
            ..open(0)
        };
        match decide_otp(Some(&c), true, &l, NOW) {
            OtpDecision::End {
                reason, new_state, ..
            } => {
                let want = match s {
                    ChallengeState::Failed => "too_many_tries",
                    other => other.as_str(),
                };
                assert_eq!(reason, want);
                assert_eq!(new_state, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ChallengeState::parse(s.as_str()), Some(s));
    }
}

#[test]
fn counters_start_a_new_window_when_the_last_passed() {
    let w = 10 * MIN;
    let c = Counter::default().bump(NOW, w);
    assert_eq!((c.window_start_ms, c.count), (NOW, 1));
    let c = c.bump(NOW + w - 1, w);
    assert_eq!((c.window_start_ms, c.count), (NOW, 2));
    let c = c.bump(NOW + w, w);
    assert_eq!((c.window_start_ms, c.count), (NOW + w, 1));
}

#[test]
fn tags_compare_whole() {
    assert!(tags_match(&[1, 2, 3], &[1, 2, 3]));
    assert!(!tags_match(&[1, 2, 3], &[1, 2, 4]));
    assert!(!tags_match(&[1, 2, 3], &[1, 2]));
}

fn lock(model: LockModel, zone: &str) -> LockRecord {
    LockRecord {
        id: LockId::new("L1"),
        model,
        org: OrgId::new("acme"),
        departments: vec!["d1".into()].into(),
        time_zone: zone.into(),
        heartbeat_interval: HeartbeatInterval::from_hours(24).unwrap(),
        activity_log_interval: ActivityLogInterval::from_minutes(60).unwrap(),
        bridge: None,
        path: ReportPath::Coap,
    }
}

#[test]
fn grant_windows_are_read_in_the_lock_time_zone() {
    let sg = lock(LockModel::Inb1TwoFactor, "Asia/Singapore");
    // 2026-11-24 09:00 in Singapore (UTC+8) is 01:00 UTC.
    assert_eq!(
        local_to_ms(&sg, "start", "2026-11-24T09:00").unwrap(),
        1_795_482_000_000
    );
    assert_eq!(
        local_to_ms(&sg, "start", "2026-11-24T09:00:30").unwrap(),
        1_795_482_030_000
    );
    let berlin = lock(LockModel::Inb1TwoFactor, "Europe/Berlin");
    assert_eq!(
        local_to_ms(&berlin, "start", "2026-11-24T09:00").unwrap() - 1_795_482_000_000,
        7 * 3_600_000
    );
    for bad in [
        "2026-13-01T00:00",
        "tomorrow",
        "2026-11-24T09:00Z",
        "2026-11-24T09:00+08:00",
    ] {
        assert_eq!(
            local_to_ms(&sg, "end", bad).unwrap_err().rule(),
            "bad_time",
            "{bad}"
        );
    }
    let mars = lock(LockModel::Inb1TwoFactor, "Mars/Olympus");
    assert_eq!(
        local_to_ms(&mars, "start", "2026-11-24T09:00")
            .unwrap_err()
            .rule(),
        "unknown_time_zone"
    );
    let now = 1_795_482_000_000;
    assert_eq!(
        check_window(&sg, "2026-11-24T10:00", "2026-11-24T09:00", now)
            .unwrap_err()
            .rule(),
        "bad_window"
    );
    assert_eq!(
        check_window(&sg, "2026-11-24T08:00", "2026-11-24T09:00", now)
            .unwrap_err()
            .rule(),
        "end_in_past"
    );
    assert_eq!(
        check_window(&sg, "2026-11-24T08:00", "2026-11-24T10:00", now).unwrap(),
        (now - 3_600_000, now + 3_600_000)
    );
    assert_eq!(
        check_lock(&lock(LockModel::Inb1, "UTC"))
            .unwrap_err()
            .rule(),
        "no_2fa_support"
    );
    assert!(check_lock(&sg).is_ok());
}

#[test]
fn statuses_and_ids() {
    assert_eq!(grant_status(10, 20, false, 5), "scheduled");
    assert_eq!(grant_status(10, 20, false, 10), "active");
    assert_eq!(grant_status(10, 20, false, 20), "expired");
    assert_eq!(grant_status(10, 20, true, 15), "revoked");
    assert!(check_user_id("u-1.x").is_ok());
    assert_eq!(check_user_id("u/1").unwrap_err().rule(), "bad_user_id");
}
