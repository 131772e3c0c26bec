//! One UDP socket shared by many CoAP locks (as locks behind one NAT share
//! an address) and the single task that drives it: it feeds datagrams and
//! time into the sans-I/O [`CoapClient`] and [`Lock`]s, keeps one ordered
//! set of lock wake-ups, and applies the injected loss and duplication.
//! No task, timer or allocation per lock beyond the lock itself (and, in a
//! secure run, its OSCORE context).
//!
//! In a secure run every exchange is an OSCORE request of the lock's own
//! context ([`crate::security`]), protected when it starts with a fresh
//! sender sequence number (its retransmissions are the same bytes), and its
//! answer counts only once it verifies. An answer that does not verify is
//! counted as `oscore_response` and the report is retried as if no answer
//! had come; OSCORE errors the gateway sends unprotected (4.00, 4.01, 4.02)
//! are refusals, counted by code like any other.
//!
//! Every answer to a report's exchange, whatever its code (an RST too), is
//! also counted and timed as a round trip ([`Stats::answered`],
//! [`Ledger::answered`]) before the lock acts on it: a refusal settles the
//! report and the lock carries on with its schedule, so a server that
//! answers everything with 4.xx (a raw CoAP baseline) is still measured
//! by the same locks at the same offered rate.
//!
//! The task also takes commands for its locks ([`crate::control`]) between
//! network events, and tells the waiters of a heartbeat on demand what
//! became of the lock's reports. A 2FA entry typed at a lock's keypad goes
//! as its own exchange, before the lock's queued reports, and its answer
//! goes back to the caller (`coap_socket_twofa`).

use crate::clock::SimClock;
use crate::coap_client::{
    CoapClient, Event, Incoming, ResponseCode, StartError, TransmissionParams, DEFAULT_MAX_AGE,
};
use crate::control::{self, Command, Waiters};
use crate::ledger::Ledger;
use crate::lock::{Answer, Lock, TwoFactorStep};
use crate::net::{Fate, Impairment};
use crate::persist::LiveCounters;
use crate::run::{Phase, Shared, DRAIN_RETRY_DELAY};
use crate::security::DeviceKeys;
use crate::stats::Stats;
use crate::timers::TimerQueue;
use lockfleet_oscore::RequestId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use schemas::device::UplinkKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// Largest datagram we read. Answers are small (a downlink is bounded by the
/// NB-IoT budget); anything longer is truncated and fails to parse.
pub const RECV_BUFFER_BYTES: usize = 4096;

/// Datagrams read per wake-up before timers get a turn, so a flood of
/// answers cannot starve retransmissions (quinn-udp's `IO_LOOP_BOUND` idea).
pub const IO_LOOP_BOUND: usize = 64;

/// Uri-Path of heartbeats.
pub const PATH_HEARTBEAT: &str = "hb";
/// Uri-Path of activity-log batches.
pub const PATH_LOG: &str = "log";
/// Uri-Path of job reports.
pub const PATH_JOB_REPORT: &str = "jr";

/// The Uri-Path a report of `kind` is POSTed to.
pub fn uri_path(kind: UplinkKind) -> &'static str {
    match kind {
        UplinkKind::Heartbeat => PATH_HEARTBEAT,
        UplinkKind::ActivityLog => PATH_LOG,
        UplinkKind::JobReport => PATH_JOB_REPORT,
    }
}

/// What an exchange carries.
#[derive(Clone, Copy, Debug)]
enum Sent {
    Report(UplinkKind),
    /// A 2FA entry ([`crate::lock::Lock::type_2fa`]).
    TwoFactor(TwoFactorStep),
}

#[derive(Clone, Copy, Debug)]
struct Tag {
    /// Index into this socket's locks.
    lock: usize,
    seq: u32,
    sent: Sent,
    /// When the exchange started (its first transmission goes out in the
    /// same loop iteration), for the round-trip time.
    started: Instant,
}

/// An answer as the lock sees it: for a protected exchange, the inner code,
/// payload and Max-Age once verified.
struct Answered {
    code: ResponseCode,
    payload: Vec<u8>,
    max_age: Option<u32>,
}

/// Why an exchange could not start.
enum NotStarted {
    Start(StartError),
    /// The lock has used every OSCORE sequence number: it must be re-keyed.
    Exhausted,
    Protect(lockfleet_oscore::Error),
}

/// The locks of one socket and everything needed to drive them.
pub struct SocketTask {
    socket: UdpSocket,
    server: SocketAddr,
    client: CoapClient<Tag>,
    locks: Vec<Lock>,
    /// Per lock, its OSCORE context; `None`: an insecure run.
    keys: Option<Vec<DeviceKeys>>,
    /// Per lock, what binds the answer of its exchange in flight to it.
    requests: Vec<Option<RequestId>>,
    wakes: TimerQueue<usize>,
    impairment: Impairment,
    rng: SmallRng,
    clock: SimClock,
    stats: Arc<Stats>,
    counters: Arc<LiveCounters>,
    phase: Phase,
    ledger: Ledger,
    /// Commands for this socket's locks, once [`SocketTask::control`] made
    /// the channel.
    commands: Option<mpsc::Receiver<Command>>,
    waiters: Waiters,
}

impl SocketTask {
    /// Binds an ephemeral UDP socket of the server's address family. With
    /// `keys` (one per lock, in the same order) every request is protected.
    pub async fn bind(
        server: SocketAddr,
        locks: Vec<Lock>,
        keys: Option<Vec<DeviceKeys>>,
        params: TransmissionParams,
        impairment: Impairment,
        seed: u64,
        shared: Shared,
    ) -> std::io::Result<Self> {
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        let mut rng = SmallRng::seed_from_u64(seed);
        // RFC 7252 §4.4 and §5.3.1: start message ids and tokens at random.
        let client = CoapClient::new(params, rng.random(), rng.random());
        let mut wakes = TimerQueue::new();
        for (i, lock) in locks.iter().enumerate() {
            if let Some(at) = lock.next_wake() {
                wakes.set(i, at);
            }
        }
        let requests = locks.iter().map(|_| None).collect();
        Ok(SocketTask {
            socket,
            server,
            client,
            locks,
            keys,
            requests,
            wakes,
            impairment,
            rng,
            clock: shared.clock,
            stats: shared.stats,
            counters: shared.counters,
            phase: Phase::Running,
            ledger: Ledger::default(),
            commands: None,
            waiters: Waiters::default(),
        })
    }

    /// The channel for commands to this socket's locks; a command names a
    /// lock by its index in the `locks` given to [`SocketTask::bind`].
    pub(crate) fn control(&mut self) -> mpsc::Sender<Command> {
        let (tx, rx) = control::channel();
        self.commands = Some(rx);
        tx
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Runs until the phase becomes [`Phase::Stopping`] (or its sender goes
    /// away) and returns the ledger, outboxes and counters included.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>) -> Ledger {
        let mut buf = vec![0u8; RECV_BUFFER_BYTES];
        loop {
            let deadline = match (self.wakes.next_deadline(), self.client.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
                received = self.socket.recv_from(&mut buf) => {
                    let now = Instant::now();
                    match received {
                        Ok((n, _)) => self.on_datagram(now, &buf[..n]),
                        Err(e) => {
                            tracing::debug!(error = %e, "udp receive failed");
                            self.stats.error("io");
                        }
                    }
                    for _ in 1..IO_LOOP_BOUND {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, _)) => self.on_datagram(now, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                command = control::recv(&mut self.commands), if self.commands.is_some() => {
                    match command {
                        Some(command) => self.on_command(command, Instant::now()),
                        // Every handle is gone: no more commands.
                        None => self.commands = None,
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            let now = Instant::now();
            self.on_timers(now);
            self.on_events(now);
            self.flush().await;
        }
        self.stats.in_flight_add(-(self.client.len() as i64));
        let open_2fa = self.locks.iter().filter(|l| l.twofa_in_flight()).count();
        self.stats.twofa_in_flight_add(-(open_2fa as i64));
        for lock in &self.locks {
            self.ledger.record_pending(lock);
            self.ledger.record_counters(lock);
        }
        self.ledger
    }

    fn on_datagram(&mut self, now: Instant, bytes: &[u8]) {
        if self.impairment.drop_incoming() {
            self.stats.dropped_in();
            return;
        }
        if self.client.handle(now, bytes) == Incoming::Malformed {
            self.stats.error("malformed_answer");
        }
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(i) = self.wakes.pop_due(now) {
            let lock = &mut self.locks[i];
            let out = lock.wake(now, &self.clock, self.phase == Phase::Running);
            self.counters.store(lock.index(), lock.counters());
            self.stats.record(&out);
            self.rearm(i);
            self.pump(i, now);
            self.settle(i, now);
        }
        self.client.handle_timeout(now);
    }

    fn on_command(&mut self, command: Command, now: Instant) {
        let Some(i) = command
            .slot
            .filter(|i| self.locks.get(*i).is_some_and(|l| l.id() == command.lock))
        else {
            // Handles are made from this task's own list: cannot happen.
            tracing::debug!(lock = %command.lock, "command for a lock this socket does not run");
            return;
        };
        let running = self.phase == Phase::Running;
        let lock = &mut self.locks[i];
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
        self.rearm(i);
        self.pump(i, now);
        self.settle(i, now);
    }

    /// After anything happened to lock `i`: its changed job state goes to
    /// the state file, and a finished conversation to its waiters.
    fn settle(&mut self, i: usize, now: Instant) {
        let lock = &mut self.locks[i];
        if lock.take_memory_changed() {
            self.counters
                .store_memory(lock.index(), lock.memory().clone());
        }
        self.waiters.settle(i, lock, now, &self.clock);
    }

    fn on_events(&mut self, now: Instant) {
        while let Some(event) = self.client.poll_event() {
            self.stats.in_flight_add(-1);
            let tag = match &event {
                Event::Response { tag, .. } | Event::Reset { tag } | Event::GaveUp { tag } => *tag,
            };
            if let Sent::TwoFactor(_) = tag.sent {
                self.stats.twofa_in_flight_add(-1);
            }
            if let (Sent::Report(kind), Event::Response { .. } | Event::Reset { .. }) =
                (tag.sent, &event)
            {
                self.stats.answered();
                self.ledger.record_answer(
                    kind,
                    now.saturating_duration_since(self.clock.start()),
                    now.saturating_duration_since(tag.started),
                );
            }
            let lock = tag.lock;
            match event {
                Event::Response {
                    tag,
                    code,
                    payload,
                    max_age,
                    oscore,
                } => {
                    let answered = self.open(tag.lock, code, payload, max_age, oscore);
                    match (tag.sent, answered) {
                        (Sent::Report(kind), Some(answered)) => {
                            self.on_answer(tag, kind, answered, now)
                        }
                        (Sent::Report(kind), None) => {
                            self.stats.error("oscore_response");
                            self.retry_later(tag, kind, now);
                        }
                        (Sent::TwoFactor(step), answered) => {
                            self.on_2fa_answer(tag, step, answered, now)
                        }
                    }
                }
                Event::Reset { tag } => {
                    self.requests[tag.lock] = None;
                    match tag.sent {
                        Sent::Report(kind) => {
                            if self.locks[tag.lock].on_refused(tag.seq).is_some() {
                                self.stats.rejected("rst");
                            }
                            self.waiters.on_refused(tag.lock, kind, tag.seq, "rst");
                        }
                        Sent::TwoFactor(step) => self.refuse_2fa(tag, step, "rst", Vec::new()),
                    }
                }
                Event::GaveUp { tag } => {
                    self.requests[tag.lock] = None;
                    self.stats.gave_up();
                    match tag.sent {
                        Sent::Report(kind) => self.retry_later(tag, kind, now),
                        Sent::TwoFactor(step) => self.fail_2fa(tag.lock, tag.seq, step, "gave_up"),
                    }
                }
            }
            // The lock's exchange ended: it may send its next report.
            self.pump(lock, now);
            self.settle(lock, now);
        }
    }

    /// The answer as the lock may believe it. Unprotected runs take it as it
    /// is. Protected runs verify it against the exchange's request; an
    /// unprotected answer counts only as a refusal (RFC 8613 §8.2: security
    /// errors are sent unprotected), never as a success. `None`: nothing of
    /// it can be trusted.
    fn open(
        &mut self,
        lock: usize,
        code: ResponseCode,
        payload: Vec<u8>,
        max_age: Option<u32>,
        oscore: Option<Vec<u8>>,
    ) -> Option<Answered> {
        let request = self.requests[lock].take();
        let Some(keys) = &self.keys else {
            return Some(Answered {
                code,
                payload,
                max_age,
            });
        };
        match (oscore, request) {
            (Some(option), Some(request)) => {
                match keys[lock].open_coap(&request, &option, &payload) {
                    Ok(inner) => Some(Answered {
                        code: ResponseCode(inner.code),
                        payload: inner.payload,
                        max_age: inner.max_age,
                    }),
                    Err(e) => {
                        tracing::debug!(lock = self.locks[lock].id(), error = %e, "answer does not verify");
                        None
                    }
                }
            }
            (None, _) if !code.is_success() => Some(Answered {
                code,
                payload,
                max_age,
            }),
            _ => {
                tracing::debug!(lock = self.locks[lock].id(), %code, "unprotected success answer");
                None
            }
        }
    }

    /// The report stays queued and goes again at the lock's next wake (soon,
    /// while draining), as after an exchange that got no answer.
    fn retry_later(&mut self, tag: Tag, kind: UplinkKind, now: Instant) {
        self.locks[tag.lock].on_gave_up(tag.seq);
        self.waiters.on_gave_up(tag.lock, kind, tag.seq);
        if self.phase == Phase::Draining {
            self.wakes.set_earlier(tag.lock, now + DRAIN_RETRY_DELAY);
        }
    }

    fn on_answer(&mut self, tag: Tag, kind: UplinkKind, answer: Answered, now: Instant) {
        let Answered {
            code,
            payload,
            max_age,
        } = answer;
        match code {
            code if code.is_success() => {
                let rtt = now.saturating_duration_since(tag.started);
                self.ledger.latency.record(kind, rtt);
                let answer = Answer::decode(kind, &payload);
                match answer.seq() {
                    None => self.stats.error("undecodable_answer"),
                    Some(seq) if seq != tag.seq => self.stats.error("seq_mismatch"),
                    Some(_) => {}
                }
                let lock = &mut self.locks[tag.lock];
                let acked = lock.on_acked(tag.seq, &answer, now, &self.clock);
                self.stats.record(&acked.queued);
                if let Some(report) = acked.report {
                    self.stats.acked(lock.index());
                    self.waiters.on_acked(tag.lock, &report);
                    self.ledger
                        .record_ack(lock, report, self.clock.start(), now, Some(rtt));
                }
                self.rearm(tag.lock);
            }
            // RFC 7252 §5.9.3: the server cannot handle it now; a lock
            // keeps the report and tries again after Max-Age.
            code if code.is_server_error() => {
                self.stats.error(&code.to_string());
                self.locks[tag.lock].on_gave_up(tag.seq);
                let after = max_age.map_or(DEFAULT_MAX_AGE, |s| Duration::from_secs(u64::from(s)));
                self.wakes.set_earlier(tag.lock, now + after);
            }
            code => {
                tracing::debug!(
                    lock = self.locks[tag.lock].id(),
                    seq = tag.seq,
                    %code,
                    diagnostic = %String::from_utf8_lossy(&payload),
                    "report refused"
                );
                if self.locks[tag.lock].on_refused(tag.seq).is_some() {
                    self.stats.rejected(&code.to_string());
                }
                self.waiters
                    .on_refused(tag.lock, kind, tag.seq, &code.to_string());
            }
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        for i in 0..self.locks.len() {
            if self.locks[i].outbox().next().is_some() && self.locks[i].in_flight().is_none() {
                self.wakes.set(i, now);
            }
        }
    }

    fn rearm(&mut self, i: usize) {
        match self.locks[i].next_wake() {
            Some(at) => self.wakes.set(i, at),
            None => self.wakes.cancel(i),
        }
    }

    /// Starts the lock's next exchange if it is idle (NSTART 1): a 2FA
    /// entry typed at its keypad first, else a report if it is awake.
    fn pump(&mut self, i: usize, now: Instant) {
        if let Some(out) = self.locks[i].poll_send_2fa() {
            self.start_2fa(i, out, now);
            return;
        }
        let Some(out) = self.locks[i].poll_send() else {
            return;
        };
        let tag = Tag {
            lock: i,
            seq: out.seq,
            sent: Sent::Report(out.kind),
            started: now,
        };
        let started = self.start_exchange(i, tag, uri_path(out.kind), &out.payload, now);
        if started.is_err() {
            self.requests[i] = None;
        }
        match started {
            Ok(_) => {
                self.stats.sent(out.first_attempt);
                self.stats.in_flight_add(1);
            }
            Err(NotStarted::Start(e @ StartError::NoMessageId)) => {
                // Transient: the report waits for the lock's next wake.
                tracing::debug!(lock = self.locks[i].id(), error = %e, "cannot send report now");
                self.stats.error("no_message_id");
                self.locks[i].on_gave_up(out.seq);
                self.waiters.on_gave_up(i, out.kind, out.seq);
            }
            Err(NotStarted::Start(e @ StartError::TooLarge(_))) => {
                tracing::warn!(lock = self.locks[i].id(), error = %e, "cannot send report");
                if self.locks[i].on_refused(out.seq).is_some() {
                    self.stats.rejected("unsendable");
                }
                self.waiters.on_refused(i, out.kind, out.seq, "unsendable");
            }
            Err(NotStarted::Protect(e)) => {
                tracing::warn!(lock = self.locks[i].id(), error = %e, "cannot protect report");
                if self.locks[i].on_refused(out.seq).is_some() {
                    self.stats.rejected("unsendable");
                }
                self.waiters.on_refused(i, out.kind, out.seq, "unsendable");
            }
            Err(NotStarted::Exhausted) => {
                tracing::warn!(
                    lock = self.locks[i].id(),
                    "every OSCORE sequence number is used: the lock must be re-keyed"
                );
                if self.locks[i].on_refused(out.seq).is_some() {
                    self.stats.rejected("oscore_exhausted");
                }
                self.waiters
                    .on_refused(i, out.kind, out.seq, "oscore_exhausted");
            }
        }
    }

    /// Starts the exchange of `POST /{path}` with `payload`: a plain POST,
    /// or in a secure run an OSCORE request under the lock's next sender
    /// sequence number (stored in the live counters at once, so the next
    /// save covers it).
    fn start_exchange(
        &mut self,
        i: usize,
        tag: Tag,
        path: &str,
        payload: &[u8],
        now: Instant,
    ) -> Result<u16, NotStarted> {
        let Some(keys) = &self.keys else {
            return self
                .client
                .start(now, tag, path, payload, &mut self.rng)
                .map_err(NotStarted::Start);
        };
        let lock = &mut self.locks[i];
        let seq = lock.take_oscore_seq().ok_or(NotStarted::Exhausted)?;
        self.counters.store(lock.index(), lock.counters());
        let (protected, request) = keys[i]
            .protect_coap(seq, path, payload)
            .map_err(NotStarted::Protect)?;
        self.requests[i] = Some(request);
        self.client
            .start_protected(
                now,
                tag,
                &protected.option,
                &protected.ciphertext,
                &mut self.rng,
            )
            .map_err(NotStarted::Start)
    }

    async fn flush(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            if t.retransmission {
                self.stats.retransmitted();
            }
            let fate = self.impairment.outgoing();
            match fate {
                Fate::Drop => self.stats.dropped_out(),
                Fate::SendTwice => self.stats.dup_injected(),
                Fate::Send => {}
            }
            for _ in 0..fate.copies() {
                if let Err(e) = self.socket.send_to(&t.bytes, self.server).await {
                    tracing::debug!(error = %e, "udp send failed");
                    self.stats.error("io");
                }
            }
        }
    }
}

#[path = "coap_socket_twofa.rs"]
mod twofa;

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at.into()).await;
    }
}
