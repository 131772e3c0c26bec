//! The one task that runs every lock reporting over MQTT: INB1 locks with
//! their own connection and Bluetooth locks behind bridges. Connection tasks
//! ([`crate::mqtt_conn::drive`]) only do I/O and forward what arrives; this
//! task owns the locks, one ordered set of deadlines (lock wakes, ack
//! timeouts) and the decisions: publish, resend with the same seq, give up
//! until the next wake, record the acknowledgement.

use crate::clock::SimClock;
use crate::fleet::BridgeSpec;
use crate::ledger::Ledger;
use crate::lock::{Answer, Lock};
use crate::mqtt_conn::{self, ConnEvent};
use crate::mqtt_lock::{conn_spec_for, parse_reply, AckWait, OnTimeout, Reply, Route};
use crate::net::{Fate, Impairment};
use crate::persist::LiveCounters;
use crate::run::{Phase, Shared, DRAIN_RETRY_DELAY};
use crate::stats::Stats;
use crate::timers::TimerQueue;
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// DeviceError reasons that mean "not now" rather than "never": the report
/// stays in the outbox and is sent again after [`RETRY_LATER`].
const RETRY_LATER_REASONS: [&str; 3] = ["shutting_down", "storage", "overloaded"];
/// When to try again after such a refusal: what the gateway's messages ask
/// ("retry in a few seconds") and its CoAP Max-Age on 5.03.
const RETRY_LATER: Duration = Duration::from_secs(5);

/// Events from all connection tasks to this one; a full channel slows the
/// connections down (backpressure), it loses nothing.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

struct Slot {
    lock: Lock,
    route: Route,
    conn: usize,
    wait: Option<AckWait>,
    /// While draining: when to try again after giving up.
    retry_at: Option<Instant>,
}

struct Conn {
    client: AsyncClient,
    up: bool,
    slots: Vec<usize>,
}

/// See the module docs.
pub struct MqttFleet {
    slots: Vec<Slot>,
    conns: Vec<Conn>,
    by_lock: HashMap<String, usize>,
    timers: TimerQueue<usize>,
    impairment: Impairment,
    clock: SimClock,
    stats: Arc<Stats>,
    counters: Arc<LiveCounters>,
    phase: Phase,
    ack_timeout: Duration,
    ledger: Ledger,
    events: mpsc::Receiver<ConnEvent>,
    conn_stop: CancellationToken,
    conn_tasks: JoinSet<()>,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub ack_timeout: Duration,
}

impl MqttFleet {
    /// Opens one connection per MQTT lock and per bridge (spawning their
    /// tasks on the current runtime) and takes charge of `locks`.
    pub fn start(
        locks: Vec<(Lock, Route)>,
        bridges: &[BridgeSpec],
        target: &MqttTarget,
        impairment: Impairment,
        shared: Shared,
    ) -> Self {
        let Shared {
            clock,
            stats,
            counters,
        } = shared;
        let (tx, events) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let conn_stop = CancellationToken::new();
        let mut conn_tasks = JoinSet::new();
        let mut conns: Vec<Conn> = Vec::new();
        let mut conn_of: HashMap<String, usize> = HashMap::new();
        let mut open = |owner: &str, spec: mqtt_conn::ConnSpec, conns: &mut Vec<Conn>| -> usize {
            if let Some(i) = conn_of.get(owner) {
                return *i;
            }
            let i = conns.len();
            let (client, eventloop) = spec.connect();
            conn_tasks.spawn(mqtt_conn::drive(
                i,
                spec,
                client.clone(),
                eventloop,
                tx.clone(),
                conn_stop.clone(),
                stats.clone(),
            ));
            conns.push(Conn {
                client,
                up: false,
                slots: Vec::new(),
            });
            conn_of.insert(owner.to_string(), i);
            i
        };
        for b in bridges {
            let spec = crate::bridge::conn_spec(&b.id, &target.host, target.port);
            open(&b.id, spec, &mut conns);
        }
        let mut slots = Vec::with_capacity(locks.len());
        let mut by_lock = HashMap::new();
        let mut timers = TimerQueue::new();
        for (lock, route) in locks {
            let owner = match &route {
                Route::Direct { lock } => lock.clone(),
                Route::Bridged { bridge, .. } => bridge.clone(),
            };
            let conn = open(
                &owner,
                conn_spec_for(&route, &target.host, target.port),
                &mut conns,
            );
            let i = slots.len();
            conns[conn].slots.push(i);
            by_lock.insert(lock.id().to_string(), i);
            if let Some(at) = lock.next_wake() {
                timers.set(i, at);
            }
            slots.push(Slot {
                lock,
                route,
                conn,
                wait: None,
                retry_at: None,
            });
        }
        MqttFleet {
            slots,
            conns,
            by_lock,
            timers,
            impairment,
            clock,
            stats,
            counters,
            phase: Phase::Running,
            ack_timeout: target.ack_timeout,
            ledger: Ledger::default(),
            events,
            conn_stop,
            conn_tasks,
        }
    }

    /// Runs until [`Phase::Stopping`], then closes every connection (bridges
    /// say `offline` first) and returns the ledger, counters included.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>) -> Ledger {
        loop {
            let deadline = self.timers.next_deadline();
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    let next = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Stopping };
                    if next == Phase::Stopping {
                        break;
                    }
                    if next == Phase::Draining && self.phase == Phase::Running {
                        self.phase = next;
                        self.begin_drain(Instant::now());
                    }
                }
                Some(event) = self.events.recv() => self.on_conn_event(Instant::now(), event),
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            self.on_timers(Instant::now());
        }
        self.phase = Phase::Stopping;
        self.conn_stop.cancel();
        // Keep reading while connections close: late answers still count,
        // and a full channel would block their goodbye.
        loop {
            tokio::select! {
                joined = self.conn_tasks.join_next() => if joined.is_none() { break },
                Some(event) = self.events.recv() => self.on_conn_event(Instant::now(), event),
            }
        }
        while let Ok(event) = self.events.try_recv() {
            self.on_conn_event(Instant::now(), event);
        }
        let waiting = self.slots.iter().filter(|s| s.wait.is_some()).count();
        self.stats.in_flight_add(-(waiting as i64));
        for slot in &self.slots {
            self.ledger.record_pending(&slot.lock);
            self.ledger.record_counters(&slot.lock);
        }
        self.ledger
    }

    fn on_conn_event(&mut self, now: Instant, event: ConnEvent) {
        match event {
            ConnEvent::Up { conn } => {
                self.conns[conn].up = true;
                for i in self.conns[conn].slots.clone() {
                    self.pump(i, now);
                    self.rearm(i);
                }
            }
            ConnEvent::Down { conn } => self.conns[conn].up = false,
            ConnEvent::Message {
                conn,
                topic,
                payload,
            } => match parse_reply(&topic) {
                Some(Reply::Ack { lock, kind }) => {
                    let Some(&i) = self.by_lock.get(lock) else {
                        return;
                    };
                    if self.slots[i].conn != conn {
                        return;
                    }
                    let answer = Answer::decode(kind, &payload);
                    match answer.seq() {
                        Some(seq) => self.on_ack(i, seq, &answer, now),
                        None => self.stats.error("undecodable_answer"),
                    }
                }
                Some(Reply::Error { lock }) => self.on_error(conn, lock, &payload, now),
                None => tracing::debug!(%topic, "ignoring publish on an unexpected topic"),
            },
        }
    }

    fn on_ack(&mut self, i: usize, seq: u32, answer: &Answer, now: Instant) {
        let slot = &mut self.slots[i];
        if slot.wait.is_some_and(|w| w.seq == seq) {
            slot.wait = None;
            self.stats.in_flight_add(-1);
        }
        if let Some(report) = slot.lock.on_acked(seq, answer, now, &self.clock) {
            self.stats.acked(slot.lock.index());
            let after = now.saturating_duration_since(self.clock.start());
            self.ledger.record_ack(&slot.lock, report, after);
        }
        self.pump(i, now);
        self.rearm(i);
    }

    /// A JSON `DeviceError` on an error topic. It names the topic, not the
    /// report, so it refuses the in-flight report only when exactly one of
    /// the connection's locks has one on that topic.
    fn on_error(&mut self, conn: usize, lock: Option<&str>, payload: &[u8], now: Instant) {
        let err: Option<schemas::event::DeviceError> = serde_json::from_slice(payload).ok();
        let reason = err
            .as_ref()
            .map_or("unparsable_error", |e| e.reason.as_str());
        let code = format!("mqtt:{reason}");
        tracing::debug!(
            conn,
            message = err.as_ref().map_or("", |e| e.message.as_str()),
            %code,
            "gateway refused a publish"
        );
        let candidates: Vec<usize> = self.conns[conn]
            .slots
            .iter()
            .copied()
            .filter(|i| {
                let s = &self.slots[*i];
                let Some(w) = s.wait else { return false };
                let on_topic = match (&err, s.lock.report(w.seq)) {
                    (Some(e), Some(r)) => s.route.uplink_topic(r.kind) == e.topic,
                    _ => false,
                };
                on_topic && lock.is_none_or(|l| l == s.lock.id())
            })
            .collect();
        let [i] = candidates.as_slice() else {
            self.stats.error(&code);
            return;
        };
        let i = *i;
        let slot = &mut self.slots[i];
        if let Some(w) = slot.wait.take() {
            self.stats.in_flight_add(-1);
            if RETRY_LATER_REASONS.contains(&reason) {
                // The gateway could not handle it now: keep it, try again.
                self.stats.error(&code);
                slot.lock.on_gave_up(w.seq);
                slot.retry_at = Some(now + RETRY_LATER);
            } else if slot.lock.on_refused(w.seq).is_some() {
                self.stats.rejected(&code);
            }
        }
        self.pump(i, now);
        self.rearm(i);
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(i) = self.timers.pop_due(now) {
            self.on_ack_timeout(i, now);
            let slot = &mut self.slots[i];
            let wake_due = slot.lock.next_wake().is_some_and(|t| t <= now)
                || slot.retry_at.is_some_and(|t| t <= now);
            if wake_due {
                slot.retry_at = None;
                let out = slot
                    .lock
                    .wake(now, &self.clock, self.phase == Phase::Running);
                self.counters.store(slot.lock.index(), slot.lock.counters());
                self.stats.created(u64::from(out.created));
                self.stats.abandoned(u64::from(out.abandoned));
                self.stats.events_lost(u64::from(out.events_lost));
                if out.finished {
                    self.stats.lock_done();
                }
            }
            self.pump(i, now);
            self.rearm(i);
        }
    }

    fn on_ack_timeout(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        let Some(wait) = slot.wait.as_mut().filter(|w| w.deadline <= now) else {
            return;
        };
        let seq = wait.seq;
        match wait.on_timeout(now, self.ack_timeout) {
            OnTimeout::Resend => {
                self.stats.retransmitted();
                self.publish(i, seq);
            }
            OnTimeout::GiveUp => {
                slot.wait = None;
                slot.lock.on_gave_up(seq);
                self.stats.in_flight_add(-1);
                self.stats.gave_up();
                if self.phase == Phase::Draining {
                    slot.retry_at = Some(now + DRAIN_RETRY_DELAY);
                }
            }
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.wait.is_none() && s.lock.outbox().next().is_some() {
                s.retry_at = Some(now);
                self.rearm(i);
            }
        }
    }

    /// Publishes the lock's next report if its connection is up and nothing
    /// is in flight.
    fn pump(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        if self.phase == Phase::Stopping || !self.conns[slot.conn].up || slot.wait.is_some() {
            return;
        }
        let Some(out) = slot.lock.poll_send() else {
            return;
        };
        slot.wait = Some(AckWait::new(out.seq, now, self.ack_timeout));
        self.stats.sent(out.first_attempt);
        self.stats.in_flight_add(1);
        self.publish(i, out.seq);
    }

    /// Publishes report `seq` of slot `i` at QoS 1, through the injected faults.
    fn publish(&mut self, i: usize, seq: u32) {
        let slot = &self.slots[i];
        let Some(report) = slot.lock.report(seq) else {
            return;
        };
        let topic = slot.route.uplink_topic(report.kind);
        let fate = self.impairment.outgoing();
        match fate {
            Fate::Drop => self.stats.dropped_out(),
            Fate::SendTwice => self.stats.dup_injected(),
            Fate::Send => {}
        }
        let client = &self.conns[slot.conn].client;
        for _ in 0..fate.copies() {
            if let Err(e) = client.try_publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                report.payload.clone(),
            ) {
                tracing::debug!(lock = slot.lock.id(), error = %e, "cannot queue publish");
                self.stats.error("mqtt_queue_full");
            }
        }
    }

    fn rearm(&mut self, i: usize) {
        let s = &self.slots[i];
        let at = [s.lock.next_wake(), s.wait.map(|w| w.deadline), s.retry_at]
            .into_iter()
            .flatten()
            .min();
        match at {
            Some(at) => self.timers.set(i, at),
            None => self.timers.cancel(i),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at.into()).await;
    }
}
