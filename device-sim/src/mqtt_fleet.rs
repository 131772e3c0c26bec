//! The one task that runs every lock reporting over MQTT: INB1 locks with
//! their own connection and Bluetooth locks behind bridges. Connection tasks
//! ([`crate::mqtt_conn::drive`]) only do I/O and forward what arrives; this
//! task owns the locks, one ordered set of deadlines (lock wakes, ack
//! timeouts) and the decisions: publish, resend with the same seq, give up
//! until the next wake, record the acknowledgement.
//!
//! In a secure run every publish of a report, first or resent, is protected
//! afresh ([`crate::security::DeviceKeys::protect_mqtt`]) under the next
//! OSCORE sequence number of the connection's device: the lock itself, or
//! for a bridged lock its bridge (`br/{bridge}`). Resent bytes would be a
//! replay to the gateway, which already holds the first copy if only its
//! answer was slow. An ack counts once it verifies as the response to one
//! of the report's publishes still awaited; one that does not is counted as
//! `oscore_response` and ignored (the ack timeout resends). Error messages
//! and bridge status stay unprotected.
//!
//! The task also takes commands for its locks ([`crate::control`], by lock
//! id) between events, and tells the waiters of a heartbeat on demand what
//! became of the lock's reports. A direct lock answers a downlink's jobs
//! with a job report on `lk/{lock}/up/jr`.
//!
//! Bridges hear the gateway's commands on `br/{bridge}/cmd`, carry them out
//! at their linked locks and report on `br/{bridge}/up/jr`, and can be taken
//! offline and back ([`crate::control::BridgeHandle`]): the child module
//! `mqtt_fleet_bridge.rs`.

use crate::bridge_relay::Relay;
use crate::clock::SimClock;
use crate::control::{self, BridgeControl, Command, ControlError, Waiters};
use crate::fleet::{BridgeSpec, LockSpec};
use crate::ledger::Ledger;
use crate::lock::{Answer, Counters, Lock};
use crate::mqtt_conn::{self, ConnEvent};
use crate::mqtt_lock::{conn_spec_for, parse_reply, AckWait, MqttAcks, OnTimeout, Reply, Route};
use crate::net::{Fate, Impairment};
use crate::persist::LiveCounters;
use crate::run::{Phase, Shared, DRAIN_RETRY_DELAY};
use crate::security::{Credentials, DeviceKeys};
use crate::stats::Stats;
use crate::timers::TimerQueue;
use lockfleet_oscore::RequestId;
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// DeviceError reasons that mean "not now" rather than "never": the report
/// stays in the outbox and is sent again after [`RETRY_LATER`].
const RETRY_LATER_REASONS: [&str; 3] = ["shutting_down", "storage", "overloaded"];
/// When to try again after such a refusal: what the gateway's messages ask
/// ("retry in a few seconds") and its CoAP Max-Age on 5.03.
const RETRY_LATER: Duration = Duration::from_secs(5);

/// DeviceError reasons that say nothing about the report in flight: a
/// `replay` is a copy of a protected message the gateway already had (an
/// injected or broker duplicate); the original copy gets its own answer.
/// Counted, never settling a report.
const IGNORED_REASONS: [&str; 1] = ["replay"];

/// The keys and login of an MQTT device (a lock with its own connection, or
/// a bridge) in a secure run.
#[derive(Debug)]
pub struct MqttSecurity {
    pub keys: DeviceKeys,
    pub credentials: Credentials,
}

impl MqttSecurity {
    pub fn for_lock(lock: &LockSpec) -> Result<Self, lockfleet_oscore::Error> {
        Ok(MqttSecurity {
            keys: DeviceKeys::for_lock(&lock.id, &lock.master_secret)?,
            credentials: Credentials::for_device(&lock.id, &lock.master_secret),
        })
    }

    pub fn for_bridge(bridge: &BridgeSpec) -> Result<Self, lockfleet_oscore::Error> {
        Ok(MqttSecurity {
            keys: DeviceKeys::for_bridge(&bridge.id, &bridge.master_secret)?,
            credentials: Credentials::for_device(&bridge.id, &bridge.master_secret),
        })
    }
}

/// A lock that reports over MQTT, directly or through its bridge.
#[derive(Debug)]
pub struct MqttLock {
    pub lock: Lock,
    pub route: Route,
    /// A direct lock's own keys and login in a secure run (a bridged lock
    /// has none: its bridge's protect its reports).
    pub security: Option<MqttSecurity>,
}

/// A bridge: its own connection and OSCORE sequence, and the relay of the
/// gateway's commands to its locks.
#[derive(Debug)]
pub struct MqttBridge {
    pub id: String,
    /// Its index among the run's devices (after the locks), for the state file.
    pub index: usize,
    pub counters: Counters,
    pub security: Option<MqttSecurity>,
    pub relay: Relay,
}

/// Events from all connection tasks to this one; a full channel slows the
/// connections down (backpressure), it loses nothing.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

struct Slot {
    lock: Lock,
    route: Route,
    conn: usize,
    wait: Option<AckWait>,
    /// In a secure run, what binds an answer to each publish of the report
    /// in flight, oldest first (at most 1 + MAX_RESENDS).
    requests: Vec<RequestId>,
    /// While draining: when to try again after giving up.
    retry_at: Option<Instant>,
    /// The seq of the latest report whose PUBACK was recorded.
    pubacked: Option<u32>,
}

struct Conn {
    client: AsyncClient,
    up: bool,
    slots: Vec<usize>,
    /// The keys of the connection's device in a secure run.
    keys: Option<DeviceKeys>,
    /// Whether its connection task should be connected
    /// ([`mqtt_conn::drive`]): false only for a bridge held offline.
    online: watch::Sender<bool>,
    /// A bridge's own state; `None` for a lock's own connection.
    bridge: Option<BridgeConn>,
    /// Pairs PUBACKs with reports when the run tracks them.
    pubacks: Option<puback::PubackTracker>,
}

/// What the task keeps for a bridge besides its connection.
struct BridgeConn {
    id: String,
    /// Its device index, for the state file.
    index: usize,
    /// Its OSCORE sequence, and its report seq (for commands it rejects).
    counters: Counters,
    relay: Relay,
    /// `br/{bridge}/cmd`.
    command_topic: String,
    /// Held offline on command ([`crate::control::BridgeHandle`]).
    held_offline: bool,
    /// Its connection task has closed the connection and waits.
    parked: bool,
    offline_waiters: Vec<oneshot::Sender<Result<(), ControlError>>>,
    online_waiters: Vec<oneshot::Sender<Result<(), ControlError>>>,
}

/// What a deadline of the task is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// A lock's wake, ack timeout or retry (by slot).
    Slot(usize),
    /// A bridge's Bluetooth link is done with a command (by connection).
    Relay(usize),
}

/// See the module docs.
pub struct MqttFleet {
    slots: Vec<Slot>,
    conns: Vec<Conn>,
    by_lock: HashMap<String, usize>,
    /// Bridge id -> its connection.
    by_bridge: HashMap<String, usize>,
    timers: TimerQueue<Timer>,
    impairment: Impairment,
    clock: SimClock,
    stats: Arc<Stats>,
    counters: Arc<LiveCounters>,
    phase: Phase,
    ack_timeout: Duration,
    acks: MqttAcks,
    ledger: Ledger,
    events: mpsc::Receiver<ConnEvent>,
    conn_stop: CancellationToken,
    conn_tasks: JoinSet<()>,
    /// Commands for these locks, once [`MqttFleet::control`] made the channel.
    commands: Option<mpsc::Receiver<Command>>,
    /// Commands for the bridges, once [`MqttFleet::bridge_control`] made
    /// the channel.
    bridge_commands: Option<mpsc::Receiver<BridgeControl>>,
    waiters: Waiters,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub ack_timeout: Duration,
    /// What ends a report's exchange, and whether PUBACKs are tracked.
    pub acks: MqttAcks,
}

impl MqttFleet {
    /// Opens one connection per MQTT lock and per bridge (spawning their
    /// tasks on the current runtime) and takes charge of `locks`. A bridged
    /// lock whose bridge is not in `bridges` is skipped (a fleet read from a
    /// file never has one).
    pub fn start(
        locks: Vec<MqttLock>,
        bridges: Vec<MqttBridge>,
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
        let tracks_pubacks = target.acks.tracks_pubacks();
        let mut open = |mut spec: mqtt_conn::ConnSpec,
                        security: Option<MqttSecurity>,
                        bridge: Option<BridgeConn>,
                        conns: &mut Vec<Conn>|
         -> usize {
            let i = conns.len();
            spec.track_pubacks = tracks_pubacks;
            let keys = security.map(|s| {
                spec.credentials = Some(s.credentials);
                s.keys
            });
            let (client, eventloop) = spec.connect();
            let (online, online_rx) = watch::channel(true);
            conn_tasks.spawn(mqtt_conn::drive(
                i,
                spec,
                client.clone(),
                eventloop,
                tx.clone(),
                conn_stop.clone(),
                stats.clone(),
                online_rx,
            ));
            conns.push(Conn {
                client,
                up: false,
                slots: Vec::new(),
                keys,
                online,
                bridge,
                pubacks: tracks_pubacks.then(puback::PubackTracker::default),
            });
            i
        };
        for b in bridges {
            let spec = crate::bridge::conn_spec(&b.id, &target.host, target.port);
            let state = BridgeConn {
                command_topic: schemas::topic::down::bridge_command(&b.id),
                id: b.id.clone(),
                index: b.index,
                counters: b.counters,
                relay: b.relay,
                held_offline: false,
                parked: false,
                offline_waiters: Vec::new(),
                online_waiters: Vec::new(),
            };
            let i = open(spec, b.security, Some(state), &mut conns);
            conn_of.insert(b.id, i);
        }
        let mut slots = Vec::with_capacity(locks.len());
        let mut by_lock = HashMap::new();
        let mut timers = TimerQueue::new();
        for MqttLock {
            lock,
            route,
            security,
        } in locks
        {
            let conn = match &route {
                Route::Direct { .. } => open(
                    conn_spec_for(&route, &target.host, target.port),
                    security,
                    None,
                    &mut conns,
                ),
                Route::Bridged { bridge, .. } => match conn_of.get(bridge) {
                    Some(c) => *c,
                    None => {
                        tracing::warn!(lock = lock.id(), %bridge, "the lock's bridge is not in the fleet; skipped");
                        continue;
                    }
                },
            };
            let i = slots.len();
            conns[conn].slots.push(i);
            by_lock.insert(lock.id().to_string(), i);
            if let Some(at) = lock.next_wake() {
                timers.set(Timer::Slot(i), at);
            }
            slots.push(Slot {
                lock,
                route,
                conn,
                wait: None,
                requests: Vec::new(),
                retry_at: None,
                pubacked: None,
            });
        }
        MqttFleet {
            slots,
            conns,
            by_lock,
            by_bridge: conn_of,
            timers,
            impairment,
            clock,
            stats,
            counters,
            phase: Phase::Running,
            ack_timeout: target.ack_timeout,
            acks: target.acks,
            ledger: Ledger::default(),
            events,
            conn_stop,
            conn_tasks,
            commands: None,
            bridge_commands: None,
            waiters: Waiters::default(),
        }
    }

    /// The channel for commands to these locks (named by lock id).
    pub(crate) fn control(&mut self) -> mpsc::Sender<Command> {
        let (tx, rx) = control::channel();
        self.commands = Some(rx);
        tx
    }

    /// The channel for commands to these bridges (named by bridge id).
    pub(crate) fn bridge_control(&mut self) -> mpsc::Sender<BridgeControl> {
        let (tx, rx) = control::bridge_channel();
        self.bridge_commands = Some(rx);
        tx
    }

    /// The ids of the bridges this task runs.
    pub fn bridge_ids(&self) -> impl Iterator<Item = &str> {
        self.by_bridge.keys().map(String::as_str)
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
                command = control::recv(&mut self.commands), if self.commands.is_some() => {
                    match command {
                        Some(command) => self.on_command(command, Instant::now()),
                        // Every handle is gone: no more commands.
                        None => self.commands = None,
                    }
                }
                command = control::recv_bridge(&mut self.bridge_commands), if self.bridge_commands.is_some() => {
                    match command {
                        Some(command) => self.on_bridge_control(command),
                        None => self.bridge_commands = None,
                    }
                }
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
        for conn in &self.conns {
            if let Some(b) = &conn.bridge {
                self.ledger.counters.push((b.index, b.counters));
            }
        }
        self.ledger
    }

    fn on_conn_event(&mut self, now: Instant, event: ConnEvent) {
        match event {
            ConnEvent::Up { conn } => {
                if self.conns[conn]
                    .bridge
                    .as_ref()
                    .is_some_and(|b| b.held_offline)
                {
                    // Connected just before it was told to go offline.
                    return;
                }
                self.conns[conn].up = true;
                self.on_bridge_up(conn);
                for i in self.conns[conn].slots.clone() {
                    self.pump(i, now);
                    self.rearm(i);
                }
            }
            ConnEvent::Down { conn } => {
                self.conns[conn].up = false;
                self.lose_pubacks(conn);
            }
            ConnEvent::Parked { conn } => {
                self.lose_pubacks(conn);
                self.on_bridge_parked(conn);
            }
            ConnEvent::Published { conn, pkid } => self.on_published(conn, pkid),
            ConnEvent::PubAck { conn, pkid } => self.on_puback(conn, pkid, now),
            ConnEvent::Message {
                conn,
                topic,
                payload,
            } if self.conns[conn]
                .bridge
                .as_ref()
                .is_some_and(|b| b.command_topic == topic) =>
            {
                self.on_bridge_command(conn, &payload, now)
            }
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
                    let Some(payload) = self.open(i, payload) else {
                        return;
                    };
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

    /// The CBOR of an ack for slot `i`: the payload itself in an insecure
    /// run; else once it verifies as the answer to one of the report's
    /// publishes (the newest first: the likeliest to be answered last).
    /// `None` for an ack that does not verify (counted) and for one that
    /// comes when nothing is awaited (a late copy: the report is settled).
    fn open(&mut self, i: usize, payload: Vec<u8>) -> Option<Vec<u8>> {
        let slot = &self.slots[i];
        let Some(keys) = &self.conns[slot.conn].keys else {
            return Some(payload);
        };
        if slot.requests.is_empty() {
            return None;
        }
        let opened = slot
            .requests
            .iter()
            .rev()
            .find_map(|request| keys.open_mqtt(request, &payload).ok());
        if opened.is_none() {
            tracing::debug!(lock = slot.lock.id(), "ack does not verify");
            self.stats.error("oscore_response");
        }
        opened
    }

    fn on_ack(&mut self, i: usize, seq: u32, answer: &Answer, now: Instant) {
        let slot = &mut self.slots[i];
        if slot.wait.is_some_and(|w| w.seq == seq) {
            slot.wait = None;
            slot.requests.clear();
            self.stats.in_flight_add(-1);
        }
        let acked = slot.lock.on_acked(seq, answer, now, &self.clock);
        self.stats.record(&acked.queued);
        if let Some(report) = acked.report {
            self.stats.acked(slot.lock.index());
            self.waiters.on_acked(i, &report);
            self.ledger
                .record_ack(&slot.lock, report, self.clock.start(), now, None);
        }
        self.pump(i, now);
        self.rearm(i);
        self.settle(i, now);
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        let Some(&i) = self.by_lock.get(&command.lock) else {
            // Handles are made from this task's own locks: cannot happen.
            tracing::debug!(lock = %command.lock, "command for a lock this task does not run");
            return;
        };
        let running = self.phase == Phase::Running;
        let lock = &mut self.slots[i].lock;
        let out = control::execute(
            command.action,
            lock,
            i,
            now,
            &self.clock,
            running,
            &mut self.waiters,
        );
        self.counters.store(lock.index(), lock.counters());
        self.stats.record(&out);
        self.pump(i, now);
        self.rearm(i);
        self.settle(i, now);
    }

    /// After anything happened to slot `i`'s lock: its changed job state
    /// goes to the state file, and a finished conversation to its waiters.
    fn settle(&mut self, i: usize, now: Instant) {
        let lock = &mut self.slots[i].lock;
        if lock.take_memory_changed() {
            self.counters
                .store_memory(lock.index(), lock.memory().clone());
        }
        self.waiters.settle(i, lock, now, &self.clock);
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
        if IGNORED_REASONS.contains(&reason) {
            self.stats.error(&code);
            return;
        }
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
            slot.requests.clear();
            self.stats.in_flight_add(-1);
            if RETRY_LATER_REASONS.contains(&reason) {
                // The gateway could not handle it now: keep it, try again.
                self.stats.error(&code);
                slot.lock.on_gave_up(w.seq);
                slot.retry_at = Some(now + RETRY_LATER);
            } else {
                let kind = slot.lock.report(w.seq).map(|r| r.kind);
                if slot.lock.on_refused(w.seq).is_some() {
                    self.stats.rejected(&code);
                }
                if let Some(kind) = kind {
                    self.waiters.on_refused(i, kind, w.seq, &code);
                }
            }
        }
        self.pump(i, now);
        self.rearm(i);
        self.settle(i, now);
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Slot(i) => self.on_slot_timer(i, now),
                Timer::Relay(conn) => self.on_relay_due(conn, now),
            }
        }
    }

    fn on_slot_timer(&mut self, i: usize, now: Instant) {
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
            self.stats.record(&out);
        }
        self.pump(i, now);
        self.rearm(i);
        self.settle(i, now);
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
                slot.requests.clear();
                if let Some(r) = slot.lock.report(seq) {
                    self.waiters.on_gave_up(i, r.kind, seq);
                }
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
        let Some(report) = self.slots[i].lock.report(seq) else {
            return;
        };
        let topic = self.slots[i].route.uplink_topic(report.kind);
        let (kind, due) = (report.kind, report.due);
        let cbor = report.payload.clone();
        let payload = match self.seal(i, cbor) {
            Ok(payload) => payload,
            Err(reason) => {
                tracing::warn!(
                    lock = self.slots[i].lock.id(),
                    reason,
                    "cannot protect report"
                );
                let slot = &mut self.slots[i];
                if slot.wait.take().is_some() {
                    self.stats.in_flight_add(-1);
                }
                slot.requests.clear();
                if let Some(r) = slot.lock.on_refused(seq) {
                    self.stats.rejected(reason);
                    self.waiters.on_refused(i, r.kind, seq, reason);
                }
                return;
            }
        };
        let slot = &self.slots[i];
        let fate = self.impairment.outgoing();
        match fate {
            Fate::Drop => self.stats.dropped_out(),
            Fate::SendTwice => self.stats.dup_injected(),
            Fate::Send => {}
        }
        let client = &self.conns[slot.conn].client;
        let mut queued = 0;
        for _ in 0..fate.copies() {
            match client.try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone()) {
                Ok(()) => queued += 1,
                Err(e) => {
                    tracing::debug!(lock = slot.lock.id(), error = %e, "cannot queue publish");
                    self.stats.error("mqtt_queue_full");
                }
            }
        }
        for _ in 0..queued {
            self.track_publish(i, seq, kind, due);
        }
    }

    /// What one publish of slot `i`'s report carries: `cbor` itself in an
    /// insecure run; else `cbor` protected afresh under the next OSCORE
    /// sequence number of the connection's device (stored in the live
    /// counters at once), its [`RequestId`] kept for the answer. `Err`: why
    /// it cannot be sent, as a refusal code.
    fn seal(&mut self, i: usize, cbor: Vec<u8>) -> Result<Vec<u8>, &'static str> {
        let slot = &mut self.slots[i];
        let conn = &mut self.conns[slot.conn];
        let Some(keys) = &conn.keys else {
            return Ok(cbor);
        };
        let seq = match &mut conn.bridge {
            Some(b) => {
                let seq = b.counters.take_oscore_seq();
                self.counters.store(b.index, b.counters);
                seq
            }
            None => {
                let seq = slot.lock.take_oscore_seq();
                self.counters.store(slot.lock.index(), slot.lock.counters());
                seq
            }
        };
        let seq = seq.ok_or("oscore_exhausted")?;
        let (frame, request) = keys.protect_mqtt(seq, &cbor).map_err(|e| {
            tracing::debug!(error = %e, "protect failed");
            "unsendable"
        })?;
        slot.requests.push(request);
        Ok(frame)
    }

    fn rearm(&mut self, i: usize) {
        let s = &self.slots[i];
        let at = [s.lock.next_wake(), s.wait.map(|w| w.deadline), s.retry_at]
            .into_iter()
            .flatten()
            .min();
        match at {
            Some(at) => self.timers.set(Timer::Slot(i), at),
            None => self.timers.cancel(Timer::Slot(i)),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[path = "mqtt_fleet_bridge.rs"]
mod bridge;

#[path = "mqtt_fleet_puback.rs"]
mod puback;
