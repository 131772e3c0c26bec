//! 2FA people in a run ([`crate::run::SimConfig::twofa`]): who they are
//! ([`TwoFactorPerson`]: a user, their phone number, their 2FA passcode,
//! the INB1-2FA locks they go to), how they behave ([`TwoFactorSim`]), and
//! where their phones get SMS ([`crate::phone::SmsInbox`]).
//!
//! * `person`: when a person comes by and what they type, sans I/O;
//! * `visit`: one visit carried out at a lock and a phone;
//! * `people`: the run's task for all of them;
//! * `file`: the people file of the CLI (`user_id,mobile,passcode,locks`).
//!
//! This module owns no lock and no socket: it types through
//! [`crate::control::LockHandle`] and reads SMS through the inbox.
//! Passcodes and OTPs are secrets: wiped when dropped, never in `Debug`
//! output, errors or logs.

mod file;
mod people;
mod person;
mod visit;

pub use file::{parse_people, read_people, PeopleFileError};
pub use person::{shifted, Knobs, Next, Person, Visit, VisitEnd};
pub use visit::VisitReport;

pub(crate) use people::{Member, PeopleTask};

use crate::control::LockHandle;
use crate::fleet::Fleet;
use crate::phone::SmsInbox;
use crate::stats::Stats;
use schemas::event::Transport;
use schemas::twofa::{mask_mobile, valid_mobile, MAX_TYPED_DIGITS};
use schemas::LockModel;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Default mean time between two visits of one person (simulated, so 48 s
/// real at the default speedup of 600).
pub const DEFAULT_MEAN_INTERVAL: Duration = Duration::from_secs(8 * 3600);
/// Default chance of typing a wrong passcode, or a wrong OTP first.
pub const DEFAULT_P_WRONG: f64 = 0.05;
/// Default wait (real time) for the OTP: a gateway's OTP lives minutes, but
/// an SMS that has not come in half a minute has failed the person.
pub const DEFAULT_OTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A person with 2FA access: their user id at the gateway, their mobile
/// (E.164), their 2FA passcode and the locks they go to. `Debug` masks the
/// number and hides the passcode.
#[derive(Clone, PartialEq, Eq)]
pub struct TwoFactorPerson {
    pub user_id: String,
    pub mobile: String,
    pub passcode: Zeroizing<String>,
    pub locks: Vec<String>,
}

impl fmt::Debug for TwoFactorPerson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoFactorPerson")
            .field("user_id", &self.user_id)
            .field("mobile", &mask_mobile(&self.mobile))
            .field("passcode", &"<redacted>")
            .field("locks", &self.locks)
            .finish()
    }
}

impl TwoFactorPerson {
    /// What is wrong with this person, if anything (named, never shown).
    pub fn problem(&self) -> Option<&'static str> {
        if self.user_id.trim().is_empty() {
            Some("an empty user id")
        } else if !valid_mobile(&self.mobile) {
            Some("a mobile that is not E.164 (+ and 8 to 15 digits)")
        } else if self.passcode.is_empty()
            || self.passcode.len() > MAX_TYPED_DIGITS
            || !self.passcode.bytes().all(|b| b.is_ascii_digit())
        {
            Some("a passcode that is not 1 to 16 digits")
        } else if self.locks.is_empty() {
            Some("no lock")
        } else {
            None
        }
    }
}

/// Where the run's SMS inbox comes from.
#[derive(Clone, Debug)]
pub enum InboxSource {
    /// The run starts one listening on this address (port 0: any).
    Listen(SocketAddr),
    /// One the caller started (and may keep using).
    Given(SmsInbox),
}

/// The 2FA people of a run and how they behave.
#[derive(Clone, Debug)]
pub struct TwoFactorSim {
    pub people: Vec<TwoFactorPerson>,
    /// Mean simulated time between two visits of one person (random gaps,
    /// sped up like every interval of the run). `None`: people come only
    /// when told ([`crate::run::RunHandle::person`]), for tests that step.
    pub mean_interval: Option<Duration>,
    /// Chance (0 to 1) a visit starts with a wrong passcode (same length).
    pub p_wrong_passcode: f64,
    /// Chance (0 to 1) a visit types a wrong OTP before the right one.
    pub p_wrong_otp: f64,
    /// How long (real time) a person waits for the OTP to reach the phone.
    pub otp_timeout: Duration,
    pub inbox: InboxSource,
}

impl Default for TwoFactorSim {
    fn default() -> Self {
        TwoFactorSim {
            people: Vec::new(),
            mean_interval: Some(DEFAULT_MEAN_INTERVAL),
            p_wrong_passcode: DEFAULT_P_WRONG,
            p_wrong_otp: DEFAULT_P_WRONG,
            otp_timeout: DEFAULT_OTP_TIMEOUT,
            inbox: InboxSource::Listen(([127, 0, 0, 1], 0).into()),
        }
    }
}

/// Why the 2FA part of a run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TwoFactorError {
    #[error("the mean interval between 2FA visits must be longer than zero")]
    Interval,
    #[error("{name} must be a probability from 0 to 1, got {value}")]
    Probability { name: &'static str, value: f64 },
    #[error("the OTP timeout must be longer than zero")]
    OtpTimeout,
    #[error("2FA person {user} is listed twice")]
    DuplicatePerson { user: String },
    #[error("2FA person {user} has {problem}")]
    BadPerson { user: String, problem: &'static str },
    #[error("2FA person {user} goes to lock {lock}, which the fleet does not have")]
    UnknownLock { user: String, lock: String },
    #[error("2FA person {user} goes to lock {lock}, a {model} on {transport}: 2FA needs an INB1-2FA lock on CoAP")]
    NotTwoFactorLock {
        user: String,
        lock: String,
        model: &'static str,
        transport: &'static str,
    },
    #[error("cannot start the SMS inbox on {addr}: {source}")]
    Inbox {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl TwoFactorSim {
    /// The knobs as the sans-I/O [`Person`] takes them.
    pub fn knobs(&self) -> Knobs {
        Knobs {
            mean_interval: self.mean_interval,
            p_wrong_passcode: self.p_wrong_passcode,
            p_wrong_otp: self.p_wrong_otp,
        }
    }

    /// Checks the knobs and every person against `fleet`: each lock listed
    /// is in it, an INB1-2FA lock on CoAP.
    pub fn check(&self, fleet: &Fleet) -> Result<(), TwoFactorError> {
        if self.mean_interval.is_some_and(|d| d.is_zero()) {
            return Err(TwoFactorError::Interval);
        }
        for (name, value) in [
            ("p_wrong_passcode", self.p_wrong_passcode),
            ("p_wrong_otp", self.p_wrong_otp),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(TwoFactorError::Probability { name, value });
            }
        }
        if self.otp_timeout.is_zero() {
            return Err(TwoFactorError::OtpTimeout);
        }
        let mut users = HashSet::new();
        for p in &self.people {
            let user = || p.user_id.clone();
            if let Some(problem) = p.problem() {
                return Err(TwoFactorError::BadPerson {
                    user: user(),
                    problem,
                });
            }
            if !users.insert(p.user_id.as_str()) {
                return Err(TwoFactorError::DuplicatePerson { user: user() });
            }
            for lock in &p.locks {
                let Some(spec) = fleet.locks.iter().find(|l| &l.id == lock) else {
                    return Err(TwoFactorError::UnknownLock {
                        user: user(),
                        lock: lock.clone(),
                    });
                };
                if spec.model != LockModel::Inb1TwoFactor || spec.transport != Transport::Coap {
                    return Err(TwoFactorError::NotTwoFactorLock {
                        user: user(),
                        lock: lock.clone(),
                        model: spec.model.as_str(),
                        transport: spec.transport.as_str(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The inbox: the given one, or one started on the configured address.
    pub async fn open_inbox(&self) -> Result<SmsInbox, TwoFactorError> {
        match &self.inbox {
            InboxSource::Given(inbox) => Ok(inbox.clone()),
            InboxSource::Listen(addr) => {
                SmsInbox::start(*addr)
                    .await
                    .map_err(|source| TwoFactorError::Inbox {
                        addr: *addr,
                        source,
                    })
            }
        }
    }
}

/// How a visit by hand ([`PersonHandle::visit_with`]) goes wrong on purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VisitPlan {
    /// Type a wrong passcode (every digit moved on by one).
    pub wrong_passcode: bool,
    /// Type a wrong OTP (every digit moved on by one) before the right one.
    pub wrong_otp_first: bool,
}

/// One 2FA person of a running simulation (from
/// [`crate::run::RunHandle::person`]): makes them visit a lock now, the
/// whole way (passcode, the OTP from the inbox, the OTP typed), and says
/// what happened. Counted in the run's stats like the visits the run makes.
#[derive(Clone, Debug)]
pub struct PersonHandle {
    person: Arc<TwoFactorPerson>,
    inbox: SmsInbox,
    otp_timeout: Duration,
    stats: Arc<Stats>,
}

impl PersonHandle {
    pub(crate) fn new(
        person: Arc<TwoFactorPerson>,
        inbox: SmsInbox,
        otp_timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        PersonHandle {
            person,
            inbox,
            otp_timeout,
            stats,
        }
    }

    pub fn person(&self) -> &TwoFactorPerson {
        &self.person
    }

    /// Visits `lock` (any lock of the run, listed for them or not) typing
    /// the right passcode and then the right OTP.
    pub async fn visit(&self, lock: &LockHandle) -> VisitReport {
        self.visit_with(lock, VisitPlan::default()).await
    }

    /// Visits `lock` going wrong as `plan` says.
    pub async fn visit_with(&self, lock: &LockHandle, plan: VisitPlan) -> VisitReport {
        let visit = Visit::plan(
            lock.id().to_string(),
            &self.person.passcode,
            plan.wrong_passcode.then_some(1),
            plan.wrong_otp_first.then_some(1),
        );
        visit::run_visit(
            visit,
            lock,
            &self.inbox,
            &self.person.mobile,
            self.otp_timeout,
            &self.stats,
        )
        .await
    }
}
