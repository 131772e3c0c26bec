//! The task of a run's 2FA people: one task for all of them, one ordered
//! set of their next visits ([`TimerQueue`]), and their visits in progress
//! (each a future in a [`JoinSet`], as a visit waits on a lock and on a
//! phone). It starts visits while the run is `Running` and ends, cutting
//! visits short, when the run drains.

use super::person::Person;
use super::visit::{run_visit, VisitReport};
use super::TwoFactorPerson;
use crate::clock::SimClock;
use crate::control::LockHandle;
use crate::ledger::Ledger;
use crate::phone::SmsInbox;
use crate::run::Phase;
use crate::stats::Stats;
use crate::timers::TimerQueue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

/// One person and the locks they may walk to.
pub(crate) struct Member {
    pub spec: Arc<TwoFactorPerson>,
    pub person: Person,
    /// A handle on each lock of `spec.locks` (checked when the run started).
    pub locks: HashMap<String, LockHandle>,
}

pub(crate) struct PeopleTask {
    pub members: Vec<Member>,
    pub inbox: SmsInbox,
    pub otp_timeout: Duration,
    pub stats: Arc<Stats>,
    pub clock: SimClock,
}

impl PeopleTask {
    /// Runs until the phase leaves [`Phase::Running`]; returns an empty
    /// ledger (2FA is counted in the run's stats).
    pub async fn run(self, mut phase: watch::Receiver<Phase>) -> Ledger {
        let PeopleTask {
            mut members,
            inbox,
            otp_timeout,
            stats,
            clock,
        } = self;
        let mut wakes = TimerQueue::new();
        for (i, m) in members.iter().enumerate() {
            if let Some(at) = m.person.next_visit() {
                wakes.set(i, at);
            }
        }
        let mut visits: JoinSet<VisitReport> = JoinSet::new();
        let mut visitor: HashMap<Id, usize> = HashMap::new();
        loop {
            let deadline = wakes.next_deadline();
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow_and_update() != Phase::Running {
                        break;
                    }
                }
                Some(joined) = visits.join_next_with_id(), if !visits.is_empty() => {
                    let (id, report) = match joined {
                        Ok((id, report)) => (id, Some(report)),
                        Err(e) => (e.id(), None),
                    };
                    let Some(i) = visitor.remove(&id) else { continue };
                    let m = &mut members[i];
                    match report {
                        Some(r) => tracing::debug!(user = %m.spec.user_id, lock = %r.lock, end = ?r.end, error = ?r.error, "2FA visit over"),
                        None => tracing::warn!(user = %m.spec.user_id, "a 2FA visit task failed"),
                    }
                    m.person.visit_over(Instant::now(), &clock);
                    if let Some(at) = m.person.next_visit() {
                        wakes.set(i, at);
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            let now = Instant::now();
            while let Some(i) = wakes.pop_due(now) {
                let m = &mut members[i];
                let Some(visit) = m.person.start_visit(&m.spec, now) else {
                    continue;
                };
                // Every listed lock has a handle: checked at the start.
                let Some(lock) = m.locks.get(visit.lock()).cloned() else {
                    continue;
                };
                let (inbox, stats, spec) = (inbox.clone(), stats.clone(), m.spec.clone());
                let handle = visits.spawn(async move {
                    run_visit(visit, &lock, &inbox, &spec.mobile, otp_timeout, &stats).await
                });
                visitor.insert(handle.id(), i);
            }
        }
        // Visits in progress end here: the locks take no entries now.
        visits.abort_all();
        Ledger::default()
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at.into()).await;
    }
}
