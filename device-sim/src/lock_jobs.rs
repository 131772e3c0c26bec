//! The lock's side of jobs and of the people at it, sans I/O: what a
//! downlink sets (clock, intervals, next heartbeat), its jobs applied and
//! answered with a job report, a bridge's command carried out over
//! Bluetooth, a heartbeat on demand, the keypad and the reset button. A child module of `lock` so it reaches the lock's fields;
//! the job rules themselves are [`crate::jobs`]'s, the PIN rules
//! [`crate::pins`]'s.

use super::*;
use crate::jobs::Effect;
use schemas::device::{DeviceJob, JobReport, JobResult, MAX_RESULTS_PER_REPORT};
use schemas::{ActivityKind, LockState};

/// What [`Lock::apply_bridge_job`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeJobApplied {
    /// The job's result, as reported.
    pub result: JobResult,
    /// The job was handled before: `result` is the remembered one and
    /// nothing was applied again.
    pub repeat: bool,
    /// The job report queued for the bridge to relay (`created` 1), and
    /// what made room for it; `created` 0 when the outbox, full of log
    /// batches, had none (the result stays remembered for the job's next
    /// delivery).
    pub queued: WakeOutcome,
}

/// Shortest wait a downlink's `next_heartbeat_at` can impose: a lock never
/// wakes its modem for a heartbeat sooner than a minute (simulated) after
/// an answer, so a wrong server time cannot make it report in a loop.
pub const MIN_HEARTBEAT_DELAY: Duration = Duration::from_secs(60);

impl Lock {
    /// Acts on a downlink answering one of this lock's reports.
    pub(super) fn on_downlink(
        &mut self,
        d: &Downlink,
        now: Instant,
        clock: &SimClock,
        out: &mut WakeOutcome,
    ) {
        self.server_clock = Some((now, d.server_time));
        // A job report this answer makes is due now.
        self.queue_due = now;
        self.set_intervals(
            Some(d.heartbeat_interval),
            Some(d.activity_log_interval),
            now,
            clock,
        );
        if let Some(at) = d.next_heartbeat_at.filter(|_| self.server_schedule) {
            // Relative to the server's clock, which the lock's simulated
            // clock outruns at a speedup; at most one and a half intervals
            // away, the gateway's bound (dispatcher::schedule): a tighter
            // clamp would pin a lock whose phase lies past one interval to
            // whole intervals from its first wake, and the fleet would
            // never spread.
            let interval = Duration::from_secs(self.heartbeat_interval.as_secs());
            let delay = Duration::from_secs(at.saturating_sub(d.server_time))
                .min(interval * 3 / 2)
                .max(MIN_HEARTBEAT_DELAY);
            self.next_heartbeat = now + clock.real_interval(delay);
        }
        if !d.jobs.is_empty() {
            self.answer_jobs(&d.jobs, now, clock, out);
        }
    }

    /// Handles the first [`MAX_RESULTS_PER_REPORT`] jobs in order and queues
    /// their results as one job report. Jobs left out (beyond that, or
    /// whose result would not fit an uplink) are still pending at the
    /// server, which sends them again in its answer.
    fn answer_jobs(
        &mut self,
        jobs: &[DeviceJob],
        now: Instant,
        clock: &SimClock,
        out: &mut WakeOutcome,
    ) {
        // A bridged lock's jobs come as its bridge's commands
        // (`apply_bridge_job`), never in an answer to its reports.
        if self.transport == Transport::Bridge {
            return;
        }
        let mut report = JobReport {
            lock_id: self.id.clone(),
            seq: self.next_seq,
            results: Vec::with_capacity(jobs.len().min(MAX_RESULTS_PER_REPORT)),
        };
        for job in jobs.iter().take(MAX_RESULTS_PER_REPORT) {
            let handled = self.memory.handle(job);
            self.memory_changed |= !handled.repeat;
            if let Effect::SetIntervals {
                heartbeat,
                activity_log,
            } = handled.effect
            {
                self.set_intervals(heartbeat, activity_log, now, clock);
            }
            report.results.push(handled.result);
            if report.results.len() > 1 && encode(&report).len() > MAX_UPLINK_BYTES {
                // Remembered: its result goes out when the job comes again.
                report.results.pop();
                break;
            }
        }
        self.push_job_report(encode(&report), out);
    }

    /// A bridge carries out `job` at this lock over Bluetooth at `now` (a
    /// [`schemas::BridgeCommand`]). The job is handled as a downlink's is
    /// ([`crate::jobs::JobMemory::handle_at`]): at most once per (job id,
    /// attempt), a repeat answered with the remembered result, a job issued
    /// before the last hard reset failing with `HardReset`. Its effect
    /// follows: new intervals; the bolt thrown or withdrawn (logged as
    /// [`ActivityKind::Locked`] or [`ActivityKind::UnlockedBluetooth`], or
    /// nothing if it already was where it was asked to be); a sync changes
    /// nothing. The result goes at the front of the outbox as a one-result
    /// job report under the lock's next report seq, as a bridged
    /// heartbeat's does, for the bridge to relay.
    pub fn apply_bridge_job(
        &mut self,
        job: &DeviceJob,
        now: Instant,
        clock: &SimClock,
    ) -> BridgeJobApplied {
        if !self.finished() {
            // The bolt moves after whatever people did up to now.
            self.simulate_until(clock.sim_elapsed(now), clock);
        }
        self.queue_due = now;
        let handled = self.memory.handle_at(job, self.physical.door);
        self.memory_changed |= !handled.repeat;
        match handled.effect {
            Effect::SetIntervals {
                heartbeat,
                activity_log,
            } => self.set_intervals(heartbeat, activity_log, now, clock),
            Effect::Bolt { locked } => self.move_bolt(locked, clock.device_time(now)),
            Effect::Sync | Effect::None => {}
        }
        let report = JobReport {
            lock_id: self.id.clone(),
            seq: self.next_seq,
            results: vec![handled.result.clone()],
        };
        let mut queued = WakeOutcome::default();
        self.push_job_report(encode(&report), &mut queued);
        BridgeJobApplied {
            result: handled.result,
            repeat: handled.repeat,
            queued,
        }
    }

    /// Throws (`locked`) or withdraws the bolt on command and logs it at
    /// `time`; a bolt already there does not move and logs nothing.
    fn move_bolt(&mut self, locked: bool, time: u64) {
        let kind = if locked {
            ActivityKind::Locked
        } else {
            ActivityKind::UnlockedBluetooth
        };
        if self.physical.apply(kind).is_ok() {
            self.record_event(kind, None, time);
        }
    }

    /// Uses the given intervals from now on; a changed one restarts its
    /// timer from `now`.
    pub(super) fn set_intervals(
        &mut self,
        heartbeat: Option<HeartbeatInterval>,
        activity_log: Option<ActivityLogInterval>,
        now: Instant,
        clock: &SimClock,
    ) {
        if let Some(hb) = heartbeat.filter(|hb| *hb != self.heartbeat_interval) {
            self.heartbeat_interval = hb;
            self.next_heartbeat = now + clock.real_interval(Duration::from_secs(hb.as_secs()));
        }
        if let Some(log) = activity_log.filter(|log| *log != self.activity_log_interval) {
            self.activity_log_interval = log;
            self.next_log = now + clock.real_interval(Duration::from_secs(log.as_secs()));
        }
    }

    /// Reports now, outside the schedule (which stays as it was): the
    /// activity since the last wake as log batches, then a heartbeat, whose
    /// answer starts a conversation if the server has jobs. Ignores the
    /// report budget and [`Reporting::OnDemand`]; the heartbeat's seq is in
    /// [`WakeOutcome::heartbeat`] (`None` if the outbox had no room).
    pub fn heartbeat_now(&mut self, now: Instant, clock: &SimClock) -> WakeOutcome {
        let mut out = WakeOutcome {
            events_lost: self.simulate_until(clock.sim_elapsed(now), clock),
            ..WakeOutcome::default()
        };
        self.queue_due = now;
        self.queue_log_batches(false, false, &mut out);
        self.queue_heartbeat(now, clock, false, &mut out);
        self.awake = !self.outbox.is_empty();
        out
    }

    /// True while a heartbeat or a job report waits in the outbox: the
    /// lock has not finished talking to the server about its jobs.
    pub fn conversation_open(&self) -> bool {
        self.outbox
            .iter()
            .any(|r| matches!(r.kind, UplinkKind::Heartbeat | UplinkKind::JobReport))
    }

    /// The lock's clock for PINs and jobs, Unix seconds: the server time of
    /// the last downlink plus the real time since (the server's clock runs
    /// in real time, while the lock's event clock runs `speedup` times
    /// faster); before any downlink, the real Unix time. PIN `start`/`end`
    /// and job `issued` are in this clock.
    pub fn wall_clock(&self, now: Instant, clock: &SimClock) -> u64 {
        match self.server_clock {
            Some((at, server)) => server + now.saturating_duration_since(at).as_secs(),
            None => clock.real_unix(now),
        }
    }

    /// Someone types `digits` at the keypad at `now`: true if a PIN of the
    /// table opens the lock at [`Lock::wall_clock`]. See
    /// [`Lock::enter_pin_at`].
    pub fn enter_pin(&mut self, digits: &str, now: Instant, clock: &SimClock) -> bool {
        let wall_s = self.wall_clock(now, clock);
        self.enter_pin_at(digits, wall_s, now, clock)
    }

    /// Someone types `digits` at the keypad, with PIN validity judged at
    /// `wall_s` (the clock of [`Lock::wall_clock`]). A PIN that opens
    /// unlocks the lock (the next heartbeat reports it unlocked; a one-time
    /// PIN is used up) and logs [`ActivityKind::UnlockedPin`] with its
    /// access id as actor; anything else logs [`ActivityKind::WrongPin`]
    /// without an actor. The log never holds digits. The event follows the
    /// activity simulated up to `now`, at the lock's event clock.
    pub fn enter_pin_at(
        &mut self,
        digits: &str,
        wall_s: u64,
        now: Instant,
        clock: &SimClock,
    ) -> bool {
        if !self.finished() {
            self.simulate_until(clock.sim_elapsed(now), clock);
        }
        let before = self.memory.pins().len();
        let access = self.memory.pins_mut().open(digits, wall_s);
        self.memory_changed |= self.memory.pins().len() != before;
        let opened = access.is_some();
        let kind = if opened {
            ActivityKind::UnlockedPin
        } else {
            ActivityKind::WrongPin
        };
        if self.physical.lock == LockState::Locked {
            // Locked -> unlocked; a wrong PIN changes nothing. An unlocked
            // lock stays unlocked (the PIN is accepted all the same).
            let _ = self.physical.apply(kind);
        }
        self.record_event(kind, access, clock.device_time(now));
        opened
    }

    /// Appends one event to the log awaiting upload.
    pub(super) fn record_event(&mut self, kind: ActivityKind, actor: Option<String>, time: u64) {
        let seq = self.next_event_seq;
        self.next_event_seq = seq.wrapping_add(1).max(1);
        self.pending.push_back(ActivityEvent {
            seq,
            time,
            kind,
            actor,
        });
        self.drain_battery(BATTERY_PER_EVENT);
        while self.pending.len() > MAX_PENDING_EVENTS {
            self.pending.pop_front();
        }
    }

    /// Someone holds the reset button at `now`: see
    /// [`Lock::hard_reset_as_of`]. Returns the reset time recorded
    /// ([`Lock::wall_clock`]).
    pub fn hard_reset(&mut self, now: Instant, clock: &SimClock) -> u64 {
        let at_s = self.wall_clock(now, clock);
        self.hard_reset_as_of(at_s, now, clock);
        at_s
    }

    /// A hard reset recorded as happening at `at_s` (the clock of
    /// [`Lock::wall_clock`]): the PIN table, the remembered job outcomes and
    /// the blocked AlgoPINs are wiped, the intervals go back to the factory
    /// defaults, and every job issued before `at_s` fails with
    /// [`schemas::device::JobOutcome::HardReset`]. The report and event
    /// counters survive (they must never go back).
    pub fn hard_reset_as_of(&mut self, at_s: u64, now: Instant, clock: &SimClock) {
        self.memory.hard_reset(at_s);
        self.memory_changed = true;
        self.set_intervals(
            Some(HeartbeatInterval::DEFAULT),
            Some(ActivityLogInterval::DEFAULT),
            now,
            clock,
        );
    }

    /// When the lock was last hard reset ([`Lock::wall_clock`] seconds).
    pub fn last_hard_reset(&self) -> Option<u64> {
        self.memory.hard_reset_at()
    }

    /// PINs in the table.
    pub fn pin_count(&self) -> usize {
        self.memory.pins().len()
    }

    /// The job state: PIN table, remembered outcomes, last hard reset.
    pub fn memory(&self) -> &JobMemory {
        &self.memory
    }

    /// True once after each change of [`Lock::memory`] (for the state file).
    pub fn take_memory_changed(&mut self) -> bool {
        std::mem::take(&mut self.memory_changed)
    }

    pub fn reporting(&self) -> Reporting {
        self.reporting
    }
}
