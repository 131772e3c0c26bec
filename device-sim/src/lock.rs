//! One simulated lock, sans I/O: its timers (heartbeat and activity-log
//! intervals, each with its own phase), its sequence counters, its battery,
//! signal and mechanical state, and its outbox of reports awaiting an
//! acknowledgement. The transports drive it with `now` and tell it what the
//! network did; it never sleeps, reads a clock or touches a socket.
//!
//! The protocol with a transport:
//! 1. [`Lock::next_wake`] says when to call [`Lock::wake`], which creates due
//!    reports (activity-log batches first, then the heartbeat) and wakes the
//!    lock up;
//! 2. while awake, [`Lock::poll_send`] hands out one report at a time
//!    (NSTART 1);
//! 3. the transport answers with [`Lock::on_acked`], [`Lock::on_refused`] or
//!    [`Lock::on_gave_up`]. A report that gave up stays in the outbox and
//!    goes again, with the same `seq`, at the next wake.
//! 4. a [`Downlink`] answering a heartbeat or a job report may carry jobs:
//!    [`Lock::on_acked`] applies them ([`crate::jobs`]) and queues a job
//!    report at the front of the outbox, so the lock, still awake, sends it
//!    next; its answer may carry more jobs, and so on until a downlink
//!    carries none (the conversation of [`Lock::conversation_open`]).
//!
//! Outside the schedule, [`Lock::heartbeat_now`] reports at once (a test or
//! an operator pressing the lock's button), [`Lock::enter_pin`] is someone
//! at the keypad, [`Lock::type_2fa`] someone typing a 2FA passcode or OTP
//! at an INB1-2FA lock (a request of its own, sent before the outbox:
//! `lock_twofa`), [`Lock::hard_reset`] someone holding the reset button and
//! [`Lock::apply_bridge_job`] a bridge carrying out a gateway's command over
//! Bluetooth.
//!
//! A lock's [`Counters`] outlive a run, as they outlive a reboot in real
//! firmware: [`Lock::with_counters`] continues from saved ones and
//! [`Lock::counters`] reports them (the state file, [`crate::state`]). They
//! include the lock's OSCORE sender sequence number, which the transport
//! draws with [`Lock::take_oscore_seq`] for every protected exchange.

use crate::activity::{self, Physical, Recorder};
use crate::clock::SimClock;
use crate::fleet::LockSpec;
use crate::jobs::JobMemory;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use schemas::device::{encode, UplinkKind, MAX_EVENTS_PER_BATCH, MAX_UPLINK_BYTES};
use schemas::event::Transport;
use schemas::{
    ActivityEvent, ActivityLogBatch, ActivityLogInterval, Battery, BatteryLevel, ChannelInfo,
    Downlink, Heartbeat, HeartbeatInterval, LockModel, LogAck, SignalQuality,
};
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Most reports a lock keeps waiting for an acknowledgement. Past it the
/// oldest heartbeat is discarded (a newer one supersedes it); log batches are
/// never discarded, new ones wait instead.
pub const MAX_OUTBOX_REPORTS: usize = 32;

/// Most activity events a lock buffers before uploading; past it the oldest
/// are overwritten, like the ring buffer of a real lock's log.
pub const MAX_PENDING_EVENTS: usize = 1024;

/// Share of locks that start just above the low-battery threshold, so some
/// go low during a run.
const NEARLY_LOW_SHARE: f64 = 0.05;
/// Battery cost, in percent, of one uplink, one activity event, and one
/// simulated hour asleep.
const BATTERY_PER_REPORT: f32 = 0.02;
const BATTERY_PER_EVENT: f32 = 0.005;
const BATTERY_PER_HOUR: f32 = 0.01;

const CARRIERS: [&str; 6] = [
    "Singtel", "StarHub", "M1", "Vodafone", "Telstra", "T-Mobile",
];
/// (band, EARFCN) pairs of NB-IoT deployments.
const CELLS: [(u8, u32); 4] = [(8, 3734), (3, 1575), (20, 6300), (28, 9410)];

/// A device's sequence counters: the `seq` of its next report and of its
/// next activity event, and its next OSCORE sender sequence number (the
/// Partial IV, RFC 8613 §3.1). Firmware keeps them in non-volatile memory for
/// the device's whole life, so the gateway never sees a (lock, seq) twice for
/// two different reports, nor an OSCORE sequence number twice (a replay to
/// it, and a nonce reused under one key). None is ever 0: report and event
/// seqs wrap from `u32::MAX` to 1; the OSCORE one never wraps, it ends past
/// [`lockfleet_oscore::MAX_SEQ`] (the device must be re-keyed).
///
/// A bridge has counters too: it protects its linked locks' reports, so its
/// OSCORE sequence number moves; its report seq moves only when it answers
/// a command for a lock it is not linked to (that lock's own counter is
/// out of its reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Counters {
    pub next_seq: u32,
    pub next_event_seq: u32,
    pub next_oscore_seq: u64,
}

impl Counters {
    /// The counters of a device fresh from the factory.
    pub const START: Counters = Counters {
        next_seq: 1,
        next_event_seq: 1,
        next_oscore_seq: 1,
    };

    /// Draws the OSCORE sequence number of a new protected exchange; `None`
    /// once all 2^40 are used.
    pub fn take_oscore_seq(&mut self) -> Option<u64> {
        let seq = self.next_oscore_seq;
        if seq > lockfleet_oscore::MAX_SEQ {
            return None;
        }
        self.next_oscore_seq = seq + 1;
        Some(seq)
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::START
    }
}

/// One report, as queued and as sent (the bytes never change on resend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub kind: UplinkKind,
    pub seq: u32,
    /// CBOR-encoded [`Heartbeat`], [`ActivityLogBatch`] or
    /// [`schemas::JobReport`].
    pub payload: Vec<u8>,
    /// The activity events a batch carries (empty for heartbeats).
    pub event_seqs: Range<u32>,
    /// How many times it was handed to a transport.
    pub attempts: u32,
    /// When it was due: the moment its timer was set for (however late the
    /// lock woke), or the moment it was asked for (a job report, a
    /// heartbeat on demand). An open-loop measurement takes latency from
    /// here, so a generator or transport that falls behind shows instead
    /// of hiding (coordinated omission).
    pub due: Instant,
}

/// A report handed to the transport by [`Lock::poll_send`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub kind: UplinkKind,
    pub seq: u32,
    pub payload: Vec<u8>,
    /// False when an earlier attempt gave up.
    pub first_attempt: bool,
}

/// The server's answer to a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Downlink(Downlink),
    LogAck(LogAck),
    /// A success code whose payload did not decode: the report is stored,
    /// but there is nothing to adopt.
    Undecodable,
}

impl Answer {
    /// Decodes the answer to a report of `kind`: a [`Downlink`] for a
    /// heartbeat or a job report, a [`LogAck`] for a log batch.
    pub fn decode(kind: UplinkKind, payload: &[u8]) -> Answer {
        let decoded = match kind {
            UplinkKind::Heartbeat | UplinkKind::JobReport => {
                Downlink::decode(payload).map(Answer::Downlink)
            }
            UplinkKind::ActivityLog => LogAck::decode(payload).map(Answer::LogAck),
        };
        decoded.unwrap_or(Answer::Undecodable)
    }

    /// The `seq` of the report this answers, when it decoded.
    pub fn seq(&self) -> Option<u32> {
        match self {
            Answer::Downlink(d) => Some(d.seq),
            Answer::LogAck(a) => Some(a.seq),
            Answer::Undecodable => None,
        }
    }
}

/// What one [`Lock::wake`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeOutcome {
    pub created: u32,
    /// Reports discarded because the outbox was full.
    pub abandoned: u32,
    /// Events overwritten because the log buffer was full.
    pub events_lost: u32,
    /// The lock reached its report budget during this wake.
    pub finished: bool,
    /// The seq of the heartbeat this wake created, if it created one.
    pub heartbeat: Option<u32>,
    /// The lock was hard reset during this wake
    /// ([`Lock::with_hard_reset_chance`]).
    pub hard_reset: bool,
}

/// What one [`Lock::on_acked`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// The acknowledged report, the first time; `None` for a duplicate
    /// answer (which changes nothing).
    pub report: Option<Report>,
    /// What the answer made the lock queue: a job report when it carried
    /// jobs (`created`), and reports discarded to make room for it.
    pub queued: WakeOutcome,
}

/// When a lock reports on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reporting {
    /// At its heartbeat and activity-log intervals, as in the field.
    #[default]
    Scheduled,
    /// Only when told ([`Lock::heartbeat_now`]): for tests that step a lock.
    /// Reports that gave up still go again at the next interval.
    OnDemand,
}

/// A simulated lock. See the module docs for the protocol.
#[derive(Debug)]
pub struct Lock {
    index: usize,
    id: String,
    model: LockModel,
    transport: Transport,
    rng: SmallRng,
    heartbeat_interval: HeartbeatInterval,
    activity_log_interval: ActivityLogInterval,
    physical: Physical,
    visits_per_hour: f64,
    battery_pct: f32,
    signal_base_db: i16,
    carrier: &'static str,
    channel: Option<ChannelInfo>,
    firmware: &'static str,
    next_seq: u32,
    next_event_seq: u32,
    next_oscore_seq: u64,
    /// Simulated time up to which activity has been generated.
    events_until: Duration,
    pending: VecDeque<ActivityEvent>,
    outbox: VecDeque<Report>,
    in_flight: Option<u32>,
    awake: bool,
    next_heartbeat: Instant,
    next_log: Instant,
    reports_created: u32,
    max_reports: Option<u32>,
    reporting: Reporting,
    /// Chance of a hard reset at each scheduled heartbeat.
    hard_reset_chance: f64,
    /// PIN table, remembered job outcomes, last hard reset.
    memory: JobMemory,
    /// `memory` changed since [`Lock::take_memory_changed`] last said so.
    memory_changed: bool,
    /// When the last downlink came and the server time it carried: the
    /// lock's [`Lock::wall_clock`].
    server_clock: Option<(Instant, u64)>,
    /// The 2FA entry typed at the keypad, waiting to go or in flight.
    twofa: Option<lock_twofa::PendingEntry>,
    /// When the reports being queued now were due ([`Report::due`]).
    queue_due: Instant,
    /// Whether a downlink's `next_heartbeat_at` moves the next heartbeat
    /// ([`Lock::with_server_schedule`]).
    server_schedule: bool,
}

impl Lock {
    /// A lock as paired, `index` being its position in the fleet. Its first
    /// heartbeat and log upload fall at random phases within their intervals.
    pub fn new(
        spec: &LockSpec,
        index: usize,
        seed: u64,
        clock: &SimClock,
        max_reports: Option<u32>,
    ) -> Self {
        let mut rng =
            SmallRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let bridged = spec.transport == Transport::Bridge;
        let battery_pct = if rng.random_bool(NEARLY_LOW_SHARE) {
            rng.random_range(30.1..30.6)
        } else {
            rng.random_range(35.0..100.0)
        };
        let (carrier, channel) = if bridged {
            ("", None)
        } else {
            let (band, earfcn) = CELLS[rng.random_range(0..CELLS.len())];
            let channel = ChannelInfo {
                earfcn,
                pci: rng.random_range(0..504),
                cell_id: rng.random_range(0..(1 << 28)),
                band,
            };
            (CARRIERS[rng.random_range(0..CARRIERS.len())], Some(channel))
        };
        let hb_real = clock.real_interval(Duration::from_secs(spec.heartbeat_interval.as_secs()));
        let log_real =
            clock.real_interval(Duration::from_secs(spec.activity_log_interval.as_secs()));
        let start = clock.start();
        Lock {
            index,
            id: spec.id.clone(),
            model: spec.model,
            transport: spec.transport,
            heartbeat_interval: spec.heartbeat_interval,
            activity_log_interval: spec.activity_log_interval,
            physical: Physical::initial(spec.model),
            visits_per_hour: activity::draw_visit_rate(&mut rng),
            battery_pct,
            signal_base_db: rng.random_range(-2..=28),
            carrier,
            channel,
            firmware: if spec.model.is_nb_iot() {
                "1.4.2"
            } else {
                "2.1.0"
            },
            next_seq: Counters::START.next_seq,
            next_event_seq: Counters::START.next_event_seq,
            next_oscore_seq: Counters::START.next_oscore_seq,
            events_until: Duration::ZERO,
            pending: VecDeque::new(),
            outbox: VecDeque::new(),
            in_flight: None,
            awake: false,
            next_heartbeat: start + hb_real.mul_f64(rng.random::<f64>()),
            next_log: start + log_real.mul_f64(rng.random::<f64>()),
            reports_created: 0,
            max_reports,
            reporting: Reporting::Scheduled,
            hard_reset_chance: 0.0,
            memory: JobMemory::default(),
            memory_changed: false,
            server_clock: None,
            twofa: None,
            queue_due: start,
            server_schedule: true,
            rng,
        }
    }

    /// The same lock with the job state an earlier run left (the state
    /// file): its PINs, remembered job outcomes and last hard reset.
    pub fn with_memory(mut self, memory: JobMemory) -> Self {
        self.memory = memory;
        self
    }

    /// The same lock with `visits` people an hour (simulated) coming by
    /// instead of its drawn rate; 0: nobody, so its log holds only what
    /// [`Lock::enter_pin`] adds.
    pub fn with_visits_per_hour(mut self, visits: f64) -> Self {
        self.visits_per_hour = if visits.is_finite() {
            visits.max(0.0)
        } else {
            0.0
        };
        self
    }

    /// The same lock powered on at `at`: its first heartbeat goes then,
    /// not at a random moment of its interval.
    pub fn powered_on_at(mut self, at: Instant) -> Self {
        self.next_heartbeat = at;
        self
    }

    /// The same lock reporting on its schedule or only when told.
    pub fn with_reporting(mut self, reporting: Reporting) -> Self {
        self.reporting = reporting;
        self
    }

    /// The same lock, hard reset with probability `chance` (clamped to
    /// 0..=1) just before each scheduled heartbeat, as a technician on site
    /// would now and then.
    pub fn with_hard_reset_chance(mut self, chance: f64) -> Self {
        self.hard_reset_chance = if chance.is_nan() {
            0.0
        } else {
            chance.clamp(0.0, 1.0)
        };
        self
    }

    /// The same lock, following (`true`, the default, as in the field) or
    /// ignoring the wake-up time the server's answers give
    /// (`Downlink::next_heartbeat_at`). A load test ignores it: the server
    /// counts in real seconds while the lock's intervals are sped up, so
    /// following it would tie each lock's next heartbeat to when its last
    /// answer came (a closed loop) and spread the waits over half to one
    /// and a half intervals, changing the offered rate.
    pub fn with_server_schedule(mut self, follow: bool) -> Self {
        self.server_schedule = follow;
        self
    }

    /// The same lock continuing from `counters` (saved by an earlier run)
    /// instead of [`Counters::START`]. A 0 becomes 1: no seq is ever 0.
    pub fn with_counters(mut self, counters: Counters) -> Self {
        self.next_seq = counters.next_seq.max(1);
        self.next_event_seq = counters.next_event_seq.max(1);
        self.next_oscore_seq = counters.next_oscore_seq.max(1);
        self
    }

    /// The seqs the next report, the next activity event and the next
    /// protected exchange will take. Only [`Lock::wake`] advances the first
    /// two, only [`Lock::take_oscore_seq`] the third.
    pub fn counters(&self) -> Counters {
        Counters {
            next_seq: self.next_seq,
            next_event_seq: self.next_event_seq,
            next_oscore_seq: self.next_oscore_seq,
        }
    }

    /// The OSCORE sender sequence number (Partial IV) of a new protected
    /// exchange of this lock's own context; `None` once they are used up.
    /// A transport draws one per exchange, never per retransmission.
    pub fn take_oscore_seq(&mut self) -> Option<u64> {
        let mut c = self.counters();
        let seq = c.take_oscore_seq();
        self.next_oscore_seq = c.next_oscore_seq;
        seq
    }

    pub fn index(&self) -> usize {
        self.index
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn model(&self) -> LockModel {
        self.model
    }
    pub fn transport(&self) -> Transport {
        self.transport
    }
    pub fn physical(&self) -> Physical {
        self.physical
    }
    pub fn intervals(&self) -> (HeartbeatInterval, ActivityLogInterval) {
        (self.heartbeat_interval, self.activity_log_interval)
    }
    /// Reports awaiting an acknowledgement, oldest first.
    pub fn outbox(&self) -> impl Iterator<Item = &Report> {
        self.outbox.iter()
    }
    pub fn in_flight(&self) -> Option<u32> {
        self.in_flight
    }
    pub fn report(&self, seq: u32) -> Option<&Report> {
        self.outbox.iter().find(|r| r.seq == seq)
    }
    /// True once the lock has created all the reports it may.
    pub fn finished(&self) -> bool {
        self.max_reports.is_some_and(|m| self.reports_created >= m)
    }

    /// When the lock next needs [`Lock::wake`]; `None` once it has finished
    /// and has nothing left to send.
    pub fn next_wake(&self) -> Option<Instant> {
        let idle = self.finished() || self.reporting == Reporting::OnDemand;
        if idle && self.outbox.is_empty() {
            None
        } else {
            Some(self.next_heartbeat.min(self.next_log))
        }
    }

    /// Wakes the lock at `now`. With `generate` (and [`Reporting::Scheduled`]),
    /// simulates the activity since the last wake and creates the reports
    /// that are due; without it (while draining) it only resumes sending what
    /// the outbox holds.
    pub fn wake(&mut self, now: Instant, clock: &SimClock, generate: bool) -> WakeOutcome {
        let mut out = WakeOutcome::default();
        let heartbeat_due = now >= self.next_heartbeat;
        let log_due = now >= self.next_log;
        let generate = generate && self.reporting == Reporting::Scheduled;
        self.queue_due = match (heartbeat_due, log_due) {
            (true, true) => self.next_heartbeat.min(self.next_log),
            (true, false) => self.next_heartbeat,
            (false, true) => self.next_log,
            (false, false) => now,
        };
        if generate && !self.finished() {
            out.events_lost = self.simulate_until(clock.sim_elapsed(now), clock);
            // Rolled only when enabled, so a run without resets draws the
            // same random numbers as before the knob existed.
            if heartbeat_due && self.hard_reset_chance > 0.0 {
                out.hard_reset = self.rng.random_bool(self.hard_reset_chance);
                if out.hard_reset {
                    self.hard_reset(now, clock);
                }
            }
            if heartbeat_due || log_due {
                // The guide: a heartbeat "syncs logs" too, so it carries
                // whatever accumulated; a log wake uploads even an empty log.
                self.queue_log_batches(log_due, true, &mut out);
            }
            if heartbeat_due {
                self.queue_due = self.next_heartbeat;
                self.queue_heartbeat(now, clock, true, &mut out);
            }
            out.finished = self.finished();
        }
        if heartbeat_due {
            let every = clock.real_interval(Duration::from_secs(self.heartbeat_interval.as_secs()));
            self.next_heartbeat = next_after(self.next_heartbeat, every, now);
        }
        if log_due {
            let every =
                clock.real_interval(Duration::from_secs(self.activity_log_interval.as_secs()));
            self.next_log = next_after(self.next_log, every, now);
        }
        self.awake = !self.outbox.is_empty();
        out
    }

    /// The next report to send, if the lock is awake and nothing is in flight.
    pub fn poll_send(&mut self) -> Option<Outgoing> {
        if !self.awake || self.in_flight.is_some() || self.twofa_in_flight() {
            return None;
        }
        let Some(report) = self.outbox.front_mut() else {
            self.awake = false;
            return None;
        };
        report.attempts += 1;
        self.in_flight = Some(report.seq);
        Some(Outgoing {
            kind: report.kind,
            seq: report.seq,
            payload: report.payload.clone(),
            first_attempt: report.attempts == 1,
        })
    }

    /// The server acknowledged report `seq`. The first time, returns the
    /// report and acts on the answer; a duplicate answer changes nothing. A
    /// [`Downlink`] sets the lock's clock and the intervals it uses from now
    /// on (the guide: changes take effect at the next heartbeat, which is
    /// this one), then its jobs are applied and a job report is queued
    /// ([`Acked::queued`]).
    pub fn on_acked(&mut self, seq: u32, answer: &Answer, now: Instant, clock: &SimClock) -> Acked {
        let Some(report) = self.take(seq) else {
            return Acked::default();
        };
        let mut queued = WakeOutcome::default();
        if let Answer::Downlink(d) = answer {
            self.on_downlink(d, now, clock, &mut queued);
        }
        Acked {
            report: Some(report),
            queued,
        }
    }

    /// The transport can carry reports again (a bridge back online): the
    /// lock sends what its outbox holds now rather than at its next wake.
    pub fn resume(&mut self) {
        self.awake = !self.outbox.is_empty();
    }

    /// The server refused report `seq` (4.xx/5.xx): it is not retried.
    pub fn on_refused(&mut self, seq: u32) -> Option<Report> {
        self.take(seq)
    }

    /// The transport gave up on report `seq`: it stays queued and the lock
    /// sleeps until its next wake.
    pub fn on_gave_up(&mut self, seq: u32) {
        if self.in_flight == Some(seq) {
            self.in_flight = None;
            self.awake = false;
        }
    }

    fn take(&mut self, seq: u32) -> Option<Report> {
        if self.in_flight == Some(seq) {
            self.in_flight = None;
        }
        let pos = self.outbox.iter().position(|r| r.seq == seq)?;
        self.outbox.remove(pos)
    }

    fn simulate_until(&mut self, sim_now: Duration, clock: &SimClock) -> u32 {
        let from = self.events_until;
        self.events_until = sim_now.max(from);
        let mut events = Vec::new();
        let unix_at = |d: Duration| clock.unix_at(d);
        let mut rec = Recorder {
            state: &mut self.physical,
            next_seq: &mut self.next_event_seq,
            out: &mut events,
            unix_at: &unix_at,
        };
        activity::simulate(
            &mut rec,
            &mut self.rng,
            self.model,
            self.visits_per_hour,
            from,
            sim_now,
        );
        let hours = (sim_now.saturating_sub(from)).as_secs_f32() / 3600.0;
        self.drain_battery(BATTERY_PER_HOUR * hours + BATTERY_PER_EVENT * events.len() as f32);
        self.pending.extend(events);
        let mut lost = 0;
        while self.pending.len() > MAX_PENDING_EVENTS {
            self.pending.pop_front();
            lost += 1;
        }
        lost
    }

    /// Queues the pending activity as log batches. `budgeted`: they count
    /// against the report budget (and none is made once it is reached).
    fn queue_log_batches(&mut self, at_least_one: bool, budgeted: bool, out: &mut WakeOutcome) {
        let mut made_one = false;
        while !self.pending.is_empty() || (at_least_one && !made_one) {
            if self.outbox_full_of_logs() || (budgeted && self.finished()) {
                return;
            }
            let mut take = self.pending.len().min(MAX_EVENTS_PER_BATCH);
            let (payload, events) = loop {
                let events: Vec<ActivityEvent> = self.pending.iter().take(take).cloned().collect();
                let batch = ActivityLogBatch {
                    lock_id: self.id.clone(),
                    seq: self.next_seq,
                    events,
                };
                let payload = encode(&batch);
                if payload.len() <= MAX_UPLINK_BYTES || take <= 1 {
                    break (payload, batch.events);
                }
                take /= 2;
            };
            let event_seqs = match (events.first(), events.last()) {
                (Some(a), Some(b)) => a.seq..b.seq.wrapping_add(1),
                _ => 0..0,
            };
            if !self.push(UplinkKind::ActivityLog, payload, event_seqs, budgeted, out) {
                return;
            }
            self.pending.drain(..events.len());
            made_one = true;
        }
    }

    fn queue_heartbeat(
        &mut self,
        now: Instant,
        clock: &SimClock,
        budgeted: bool,
        out: &mut WakeOutcome,
    ) {
        if budgeted && self.finished() {
            return;
        }
        let jitter = self.rng.random_range(-3..=3);
        let signal_db = self.signal_base_db.saturating_add(jitter);
        let hb = Heartbeat {
            lock_id: self.id.clone(),
            seq: self.next_seq,
            device_time: clock.device_time(now),
            battery: self.battery(),
            signal_db,
            signal_quality: SignalQuality::from_db(signal_db),
            carrier: self.carrier.to_string(),
            channel: self.channel.clone(),
            lock_state: self.physical.lock,
            door_state: self.physical.door,
            firmware: self.firmware.to_string(),
            heartbeat_interval: self.heartbeat_interval,
            activity_log_interval: self.activity_log_interval,
        };
        let seq = hb.seq;
        if self.push(UplinkKind::Heartbeat, encode(&hb), 0..0, budgeted, out) {
            out.heartbeat = Some(seq);
        }
    }

    /// Queues a report under the current `next_seq` at the back of the
    /// outbox, making room if needed. False when there is no room (only log
    /// batches queued). `budgeted`: it counts against the report budget.
    fn push(
        &mut self,
        kind: UplinkKind,
        payload: Vec<u8>,
        event_seqs: Range<u32>,
        budgeted: bool,
        out: &mut WakeOutcome,
    ) -> bool {
        if !self.make_room(out) {
            return false;
        }
        let report = self.new_report(kind, payload, event_seqs, budgeted, out);
        self.outbox.push_back(report);
        true
    }

    /// Queues a job report at the front of the outbox: the lock is awake
    /// and the server waits for it. Not budgeted (the protocol requires it).
    /// With no room (an outbox full of log batches) it is not made: the
    /// results are remembered, and the server delivers the jobs again.
    fn push_job_report(&mut self, payload: Vec<u8>, out: &mut WakeOutcome) {
        if self.make_room(out) {
            let report = self.new_report(UplinkKind::JobReport, payload, 0..0, false, out);
            self.outbox.push_front(report);
            self.awake = true;
        }
    }

    fn new_report(
        &mut self,
        kind: UplinkKind,
        payload: Vec<u8>,
        event_seqs: Range<u32>,
        budgeted: bool,
        out: &mut WakeOutcome,
    ) -> Report {
        let report = Report {
            kind,
            seq: self.next_seq,
            payload,
            event_seqs,
            attempts: 0,
            due: self.queue_due,
        };
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        if budgeted {
            self.reports_created += 1;
        }
        out.created += 1;
        self.drain_battery(BATTERY_PER_REPORT);
        report
    }

    /// Makes room for one more report: past [`MAX_OUTBOX_REPORTS`] the
    /// oldest heartbeat not in flight goes. False if only log batches and
    /// job reports are queued.
    fn make_room(&mut self, out: &mut WakeOutcome) -> bool {
        if self.outbox.len() >= MAX_OUTBOX_REPORTS {
            let oldest_hb = self
                .outbox
                .iter()
                .position(|r| r.kind == UplinkKind::Heartbeat && Some(r.seq) != self.in_flight);
            match oldest_hb {
                Some(pos) => {
                    self.outbox.remove(pos);
                    out.abandoned += 1;
                }
                // Only log batches (and job reports) queued: this report
                // is not created (its seq is not consumed).
                None => return false,
            }
        }
        true
    }

    fn outbox_full_of_logs(&self) -> bool {
        self.outbox.len() >= MAX_OUTBOX_REPORTS
            && self
                .outbox
                .iter()
                .all(|r| r.kind != UplinkKind::Heartbeat || Some(r.seq) == self.in_flight)
    }

    fn drain_battery(&mut self, pct: f32) {
        self.battery_pct = (self.battery_pct - pct).max(0.0);
    }

    /// The battery as this model reports it: SP2E in percent, others as a level.
    pub fn battery(&self) -> Battery {
        let pct = self.battery_pct.clamp(0.0, 100.0);
        if self.model.reports_battery_percent() {
            Battery::Percent(pct.floor() as u8)
        } else if pct < f32::from(schemas::units::LOW_BATTERY_PERCENT) {
            Battery::Level(BatteryLevel::Low)
        } else if pct < 70.0 {
            Battery::Level(BatteryLevel::Moderate)
        } else {
            Battery::Level(BatteryLevel::High)
        }
    }
}

/// The first deadline after `now` on the grid `last + k * every`, so a lock
/// that was asleep too long skips missed wakes instead of bursting.
fn next_after(last: Instant, every: Duration, now: Instant) -> Instant {
    let behind = now.saturating_duration_since(last);
    let periods = (behind.as_nanos() / every.as_nanos().max(1)) as u32 + 1;
    last + every * periods
}

#[path = "lock_jobs.rs"]
mod lock_jobs;
pub use lock_jobs::BridgeJobApplied;

#[path = "lock_twofa.rs"]
mod lock_twofa;
pub use lock_twofa::{
    unlock_actor, TwoFactorOutgoing, TwoFactorRefusal, TwoFactorStep, PATH_OTP, PATH_PASSCODE,
};

#[cfg(test)]
#[path = "lock_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "lock_jobs_tests.rs"]
mod lock_jobs_tests;
