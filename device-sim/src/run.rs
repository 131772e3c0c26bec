//! A whole simulation run: [`SimConfig`] and a [`Fleet`] in, a
//! [`RunReport`] (counters and the ledger of acknowledged reports) out.
//!
//! [`start`] spawns one task per CoAP socket, one task for the MQTT locks
//! and bridges (plus one I/O task per MQTT connection) and a coordinator
//! that moves every task through the [`Phase`]s: `Running` (locks generate
//! reports), `Draining` (no new reports; outboxes are retried until empty or
//! the drain timeout passes), `Stopping` (bridges say `offline`, connections
//! close, ledgers are collected).
//!
//! With [`SimConfig::state`], each device's counters (report seqs for locks,
//! the OSCORE sender sequence for locks and bridges) continue from the state
//! file and the run keeps it current ([`crate::persist`]): the reservation is
//! written before any task starts, re-reserved every
//! [`persist::SAVE_CHECK_EVERY`] for devices past half of it, and the exact
//! counters are written once the tasks have stopped.
//!
//! [`SimConfig::security`] (the default) speaks the device security profile
//! ([`crate::security`]): OSCORE on every CoAP request and every MQTT report
//! and ack, MQTT logins derived from each device's pairing secret. Without
//! it the run talks to a gateway started with `--insecure-dev`: plain
//! payloads, anonymous MQTT.
//!
//! [`RunHandle::lock`] reaches one lock while the run goes on
//! ([`crate::control`]): heartbeat now, enter a PIN, hard reset, status;
//! [`RunHandle::bridge`] one bridge: offline, online, status. Bridges carry
//! out the gateway's commands (`br/{bridge}/cmd`) at their linked locks
//! after a Bluetooth delay ([`SimConfig::ble_delay`]).
//! With [`SimConfig::reporting`] set to [`Reporting::OnDemand`] locks report
//! only when told, so a test steps them.
//!
//! [`SimConfig::twofa`] adds 2FA people ([`crate::twofa`]): one task makes
//! them visit their INB1-2FA locks at random times, typing passcodes and the
//! OTPs their phones get in the run's [`SmsInbox`] ([`RunHandle::sms_inbox`],
//! the URL to give the gateway's SMS webhook); [`RunHandle::person`] makes
//! one visit now.

use crate::bridge_relay::{BleDelay, Relay};
use crate::clock::SimClock;
use crate::coap_client::TransmissionParams;
use crate::coap_socket::SocketTask;
use crate::control::{BridgeControl, BridgeHandle, Command, LockHandle};
use crate::fleet::Fleet;
use crate::latency::{AckLatency, TwoFactorLatency};
use crate::ledger::{AckedReport, AnsweredExchange, Ledger, PendingReport, PubackedReport};
use crate::lock::{Counters, Lock, Reporting};
use crate::mqtt_fleet::{MqttBridge, MqttFleet, MqttLock, MqttSecurity, MqttTarget};
pub use crate::mqtt_lock::MqttAcks;
use crate::mqtt_lock::{self, route_for, Route};
use crate::net::{Impairment, NetFaults};
use crate::persist::{self, LiveCounters, Origin, Persister, StateError, StateOptions};
use crate::phone::SmsInbox;
use crate::security::DeviceKeys;
use crate::stats::{Stats, StatsSnapshot};
use crate::twofa::{
    Member, PeopleTask, Person, PersonHandle, TwoFactorError, TwoFactorPerson, TwoFactorSim,
};
use schemas::event::Transport;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// While draining, how soon a lock retries after an exchange gave up.
pub const DRAIN_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How often the coordinator checks whether the run may move on (all
/// reports settled, every lock finished). Cheap: it reads a few atomics.
pub const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Default number of UDP sockets the CoAP locks share. A socket may start
/// about 265 exchanges per second (65536 message ids per EXCHANGE_LIFETIME,
/// RFC 7252 §4.4), so 64 sockets carry about 17 k reports per second, the
/// rate of a million locks on paper; a load test beyond that needs more.
pub const DEFAULT_SOCKETS: usize = 64;

/// Default time allowed to empty the outboxes after the run.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a run is; every task watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    Draining,
    Stopping,
}

/// Everything a run needs besides the fleet.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Host name or address of the gateway (CoAP and MQTT).
    pub gateway: String,
    pub coap_port: u16,
    pub mqtt_port: u16,
    /// How much faster than real time the locks' intervals run.
    pub speedup: f64,
    /// Stop generating after this long (real time); `None`: until cancelled
    /// or until every lock reached `max_reports_per_device`.
    pub duration: Option<Duration>,
    /// Stop generating once a lock created this many reports.
    pub max_reports_per_device: Option<u32>,
    /// After generation stops, retry outboxes for at most this long; zero
    /// stops at once.
    pub drain_timeout: Duration,
    pub faults: NetFaults,
    pub seed: u64,
    /// UDP sockets shared by the CoAP locks.
    pub sockets: usize,
    /// CoAP ACK_TIMEOUT (RFC 7252 §4.8).
    pub ack_timeout: Duration,
    /// How long an MQTT report waits for its answer before being resent.
    pub mqtt_ack_timeout: Duration,
    /// Print a progress line to stderr this often.
    pub progress: Option<Duration>,
    /// Cancel to end the run early (it still drains, then stops cleanly).
    pub cancel: CancellationToken,
    /// Where each device's counters are kept between runs; `None`: nothing
    /// is read or written.
    pub state: Option<StateOptions>,
    /// Counters to start from, by device id (lock or bridge), for devices
    /// the state file does not list (for every device without a state
    /// file); any other device starts at [`Counters::START`].
    pub start_counters: HashMap<String, Counters>,
    /// Speak the device security profile (OSCORE, MQTT logins), as the
    /// gateway requires by default. `false` is for a gateway started with
    /// `--insecure-dev`: unprotected payloads, anonymous MQTT clients.
    pub security: bool,
    /// When locks report on their own: on their schedule (the default) or
    /// only when told ([`RunHandle::lock`], [`LockHandle::heartbeat_now`]).
    pub reporting: Reporting,
    /// Chance (0 to 1) that a lock is hard reset just before a scheduled
    /// heartbeat: its PINs wiped, jobs issued before then failing with
    /// `hard_reset`. 0 (the default): never by chance.
    pub hard_reset_chance: f64,
    /// Visits per simulated hour at every lock (each visit a run of activity
    /// events) instead of each lock's own drawn rate; `Some(0.0)`: nobody
    /// comes by, so logs hold only what [`LockHandle::enter_pin`] adds.
    pub visits_per_hour: Option<f64>,
    /// Every lock sends its first heartbeat at the start, as a fleet does
    /// when its power comes back at once (default: each at a random moment
    /// of its interval). Shows how the gateway's wake-up phases spread it.
    pub power_on_together: bool,
    /// How long a bridge's Bluetooth link takes to carry out one of the
    /// gateway's commands at a lock, drawn per command (real time, not
    /// sped up); default 200 ms to 1.5 s.
    pub ble_delay: BleDelay,
    /// 2FA people visiting the run's INB1-2FA locks, and their phones'
    /// SMS inbox; `None` (the default): no 2FA but what a test types
    /// through [`LockHandle::enter_2fa_passcode`].
    pub twofa: Option<TwoFactorSim>,
    /// What ends an MQTT report's exchange (the gateway's answer, by
    /// default, or the broker's PUBACK for a plain broker) and whether
    /// PUBACKs are recorded ([`RunReport::pubacked`]).
    pub mqtt_acks: MqttAcks,
    /// Locks follow the wake-up time in the server's answers (the
    /// default, as in the field); `false` keeps each on its own schedule,
    /// as an open-loop load test needs ([`Lock::with_server_schedule`]).
    pub follow_server_schedule: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            gateway: "127.0.0.1".into(),
            coap_port: 5683,
            mqtt_port: 1883,
            speedup: 600.0,
            duration: None,
            max_reports_per_device: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            faults: NetFaults::default(),
            seed: 1,
            sockets: DEFAULT_SOCKETS,
            ack_timeout: crate::coap_client::ACK_TIMEOUT,
            mqtt_ack_timeout: mqtt_lock::DEFAULT_ACK_TIMEOUT,
            progress: None,
            cancel: CancellationToken::new(),
            state: None,
            start_counters: HashMap::new(),
            security: true,
            reporting: Reporting::Scheduled,
            hard_reset_chance: 0.0,
            visits_per_hour: None,
            power_on_together: false,
            ble_delay: BleDelay::DEFAULT,
            twofa: None,
            mqtt_acks: MqttAcks::Application,
            follow_server_schedule: true,
        }
    }
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("speedup must be a positive number, got {0}")]
    Speedup(f64),
    #[error("sockets must be at least 1")]
    NoSockets,
    #[error("ack timeout must be longer than zero")]
    AckTimeout,
    #[error("hard reset chance must be a probability from 0 to 1, got {0}")]
    HardResetChance(f64),
    #[error("visits per hour must be a number from 0 up, got {0}")]
    Visits(f64),
    #[error("cannot resolve gateway {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("gateway {host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot bind a UDP socket: {0}")]
    Bind(std::io::Error),
    #[error("a simulator task failed: {0}")]
    Task(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot derive the OSCORE context of {device}: {source}")]
    Security {
        device: String,
        source: lockfleet_oscore::Error,
    },
    #[error(transparent)]
    TwoFactor(#[from] TwoFactorError),
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub stats: StatsSnapshot,
    /// Every acknowledged report, each (lock, seq) once.
    pub acknowledged: Vec<AckedReport>,
    /// Reports still unacknowledged at the end.
    pub unacknowledged: Vec<PendingReport>,
    /// Each device's counters at the end, by id (locks and bridges): what
    /// the next run starts from, and what the state file holds for it if
    /// there is one.
    pub counters: BTreeMap<String, Counters>,
    /// Round-trip times of the answered CoAP exchanges (first transmission
    /// to answer, retransmission waits included), by report kind.
    pub ack_latency: AckLatency,
    /// Every CoAP exchange of a report the server answered, whatever the
    /// answer (2.xx, 4.xx, 5.xx, RST), with when: the raw request/response
    /// rate, acknowledged or not.
    pub answered: Vec<AnsweredExchange>,
    /// Round-trip times of those exchanges, by report kind (a superset of
    /// `ack_latency`).
    pub answer_latency: AckLatency,
    /// 2FA: the round trips of `/2fa` and `/otp` requests and the OTPs'
    /// way to the inbox (the counts are in [`StatsSnapshot::twofa`]).
    pub twofa_latency: TwoFactorLatency,
    /// Each MQTT report's first PUBACK, in the order they came, when
    /// [`SimConfig::mqtt_acks`] tracks them.
    pub pubacked: Vec<PubackedReport>,
}

impl RunReport {
    /// True when nothing was left unacknowledged.
    pub fn all_acknowledged(&self) -> bool {
        self.unacknowledged.is_empty()
    }

    /// Acknowledged reports per lock id.
    pub fn acknowledged_by_lock(&self) -> HashMap<&str, Vec<&AckedReport>> {
        let mut by: HashMap<&str, Vec<&AckedReport>> = HashMap::new();
        for r in &self.acknowledged {
            by.entry(r.lock_id.as_str()).or_default().push(r);
        }
        by
    }
}

/// What every task of a run shares with the coordinator.
#[derive(Clone, Debug)]
pub struct Shared {
    pub clock: SimClock,
    pub stats: Arc<Stats>,
    /// Each device's counters as its task last left them (for periodic
    /// saves): locks in fleet order, then bridges.
    pub counters: Arc<LiveCounters>,
}

/// A run in progress.
pub struct RunHandle {
    stats: Arc<Stats>,
    clock: SimClock,
    cancel: CancellationToken,
    origin: Option<Origin>,
    task: JoinHandle<Result<RunReport, RunError>>,
    /// Where each lock lives: its task's command channel (index into
    /// `controls`) and its index among that task's locks (CoAP).
    addresses: HashMap<String, (usize, Option<usize>)>,
    controls: Vec<mpsc::Sender<Command>>,
    /// The bridges of the run and their task's command channel.
    bridges: HashMap<String, mpsc::Sender<BridgeControl>>,
    /// The 2FA people and their inbox, with [`SimConfig::twofa`].
    twofa: Option<TwoFactorRun>,
}

/// The 2FA part of a running simulation.
struct TwoFactorRun {
    people: Vec<Arc<TwoFactorPerson>>,
    inbox: SmsInbox,
    otp_timeout: Duration,
}

impl RunHandle {
    /// Where the locks' starting counters came from (`None` without
    /// [`SimConfig::state`]).
    pub fn state_origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats
            .snapshot(Instant::now().saturating_duration_since(self.clock.start()))
    }

    /// When the run started: the origin of [`AckedReport::acked_after`] and
    /// of [`RunHandle::snapshot`]'s elapsed time, so a caller sampling the
    /// counters can line its samples up with the ledger.
    pub fn started_at(&self) -> Instant {
        self.clock.start()
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// A handle on lock `id` while the run goes on; `None` if the run has
    /// no such lock (or skipped it). See [`LockHandle`] for an example.
    pub fn lock(&self, id: &str) -> Option<LockHandle> {
        let &(task, slot) = self.addresses.get(id)?;
        Some(LockHandle::new(
            id.to_string(),
            slot,
            self.controls[task].clone(),
        ))
    }

    /// A handle on bridge `id` while the run goes on; `None` if the run
    /// has no such bridge. See [`BridgeHandle`]. A lock linked to it is
    /// reached with [`RunHandle::lock`] as any other.
    pub fn bridge(&self, id: &str) -> Option<BridgeHandle> {
        let task = self.bridges.get(id)?;
        Some(BridgeHandle::new(id.to_string(), task.clone()))
    }

    /// The SMS inbox of the run's 2FA people ([`SimConfig::twofa`]): give
    /// its [`SmsInbox::url`] to the gateway's SMS webhook; read OTPs from
    /// it. `None` without `twofa`.
    pub fn sms_inbox(&self) -> Option<&SmsInbox> {
        self.twofa.as_ref().map(|t| &t.inbox)
    }

    /// A handle on 2FA person `user_id` of [`SimConfig::twofa`], to make
    /// them visit a lock now; `None` if the run has no such person. With a
    /// `mean_interval` the run's people also come on their own: a visit at
    /// a lock where one of them is typing finds the keypad busy.
    pub fn person(&self, user_id: &str) -> Option<PersonHandle> {
        let t = self.twofa.as_ref()?;
        let person = t.people.iter().find(|p| p.user_id == user_id)?;
        Some(PersonHandle::new(
            person.clone(),
            t.inbox.clone(),
            t.otp_timeout,
            self.stats.clone(),
        ))
    }

    /// Waits until every lock has had at least `k` reports acknowledged;
    /// false if `timeout` passes first.
    pub async fn wait_acked_per_lock(&self, k: u32, timeout: Duration) -> bool {
        let give_up = Instant::now() + timeout;
        loop {
            if self.stats.min_acked_per_lock() >= k {
                return true;
            }
            if Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Ends the run: no new reports, drain, then stop cleanly.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Waits for the run to end and returns its report.
    pub async fn finish(self) -> Result<RunReport, RunError> {
        self.task.await.map_err(|e| RunError::Task(e.to_string()))?
    }

    /// Ends the run at once, as a crash would: no drain, no [`RunReport`], and the
    /// state file keeps its last reservation, so the next run starts past
    /// every seq this one may have used.
    pub async fn abort(self) {
        self.task.abort();
        // Dropping the coordinator drops the JoinSet of its tasks, which
        // aborts them.
        let _ = self.task.await;
    }
}

/// Runs `fleet` to the end and returns the report.
pub async fn run(config: SimConfig, fleet: Fleet) -> Result<RunReport, RunError> {
    start(config, fleet).await?.finish().await
}

/// Starts a run on the current tokio runtime.
pub async fn start(config: SimConfig, fleet: Fleet) -> Result<RunHandle, RunError> {
    if !(config.speedup.is_finite() && config.speedup > 0.0) {
        return Err(RunError::Speedup(config.speedup));
    }
    if config.sockets == 0 {
        return Err(RunError::NoSockets);
    }
    if config.ack_timeout.is_zero() || config.mqtt_ack_timeout.is_zero() {
        return Err(RunError::AckTimeout);
    }
    if !(0.0..=1.0).contains(&config.hard_reset_chance) {
        return Err(RunError::HardResetChance(config.hard_reset_chance));
    }
    if let Some(v) = config
        .visits_per_hour
        .filter(|v| !(v.is_finite() && *v >= 0.0))
    {
        return Err(RunError::Visits(v));
    }
    if let Some(twofa) = &config.twofa {
        twofa.check(&fleet)?;
    }
    // The run's devices: locks in fleet order, then bridges.
    let ids: Vec<String> = fleet
        .locks
        .iter()
        .map(|l| l.id.clone())
        .chain(fleet.bridges.iter().map(|b| b.id.clone()))
        .collect();
    let (mut persister, start_counters, origin) = match &config.state {
        Some(options) => {
            let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let (p, start, origin) = Persister::open(options, &id_refs, &config.start_counters)?;
            (Some(p), start, Some(origin))
        }
        None => {
            let start = ids
                .iter()
                .map(|id| config.start_counters.get(id).copied().unwrap_or_default())
                .collect();
            (None, start, None)
        }
    };
    // Started before any task, so a run whose inbox cannot listen never
    // sends a report.
    let inbox = match &config.twofa {
        Some(twofa) => Some(twofa.open_inbox().await?),
        None => None,
    };
    let clock = SimClock::starting_now(config.speedup);
    let stats = Arc::new(Stats::new(fleet.locks.len()));
    let shared = Shared {
        clock,
        stats: stats.clone(),
        counters: Arc::new(LiveCounters::new(&start_counters)),
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let mut tasks: JoinSet<Ledger> = JoinSet::new();

    let security_error = |device: &str| {
        let device = device.to_string();
        move |source| RunError::Security { device, source }
    };
    let mut coap = Vec::new();
    let mut mqtt = Vec::new();
    for (i, spec) in fleet.locks.iter().enumerate() {
        let mut lock = Lock::new(spec, i, config.seed, &clock, config.max_reports_per_device)
            .with_counters(start_counters[i])
            .with_reporting(config.reporting)
            .with_hard_reset_chance(config.hard_reset_chance)
            .with_server_schedule(config.follow_server_schedule);
        if let Some(memory) = persister.as_ref().and_then(|p| p.memory(i)) {
            lock = lock.with_memory(memory.clone());
        }
        if let Some(visits) = config.visits_per_hour {
            lock = lock.with_visits_per_hour(visits);
        }
        if config.power_on_together {
            lock = lock.powered_on_at(clock.start());
        }
        match (spec.transport, route_for(spec)) {
            (Transport::Coap, _) => {
                let keys = config
                    .security
                    .then(|| DeviceKeys::for_lock(&spec.id, &spec.master_secret))
                    .transpose()
                    .map_err(security_error(&spec.id))?;
                coap.push((lock, keys));
            }
            (_, Some(route)) => {
                let security = match route {
                    Route::Direct { .. } if config.security => {
                        Some(MqttSecurity::for_lock(spec).map_err(security_error(&spec.id))?)
                    }
                    _ => None,
                };
                mqtt.push(MqttLock {
                    lock,
                    route,
                    security,
                });
            }
            (_, None) => tracing::warn!(lock = %spec.id, "lock has no way to report; skipped"),
        }
    }
    let mut bridges = Vec::with_capacity(fleet.bridges.len());
    for (b, spec) in fleet.bridges.iter().enumerate() {
        let index = fleet.locks.len() + b;
        let security = config
            .security
            .then(|| MqttSecurity::for_bridge(spec))
            .transpose()
            .map_err(security_error(&spec.id))?;
        // Seeded like the locks: a run's seed gives the same delays.
        let relay_seed = config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        bridges.push(MqttBridge {
            id: spec.id.clone(),
            index,
            counters: start_counters[index],
            security,
            relay: Relay::new(config.ble_delay, relay_seed),
        });
    }
    tracing::info!(
        locks = fleet.locks.len(),
        coap = coap.len(),
        mqtt_direct = fleet.count_by_transport(Transport::Mqtt),
        bridged = fleet.count_by_transport(Transport::Bridge),
        bridges = fleet.bridges.len(),
        speedup = config.speedup,
        security = config.security,
        "starting simulation"
    );

    let mut socket_tasks = Vec::new();
    let mut addresses: HashMap<String, (usize, Option<usize>)> = HashMap::new();
    let mut controls = Vec::new();
    let mut bridge_controls = HashMap::new();
    if !coap.is_empty() {
        let server = resolve(&config.gateway, config.coap_port).await?;
        let params = TransmissionParams {
            ack_timeout: config.ack_timeout,
            ..TransmissionParams::default()
        };
        let sockets = config.sockets.min(coap.len());
        let mut buckets: Vec<(Vec<Lock>, Vec<DeviceKeys>)> =
            (0..sockets).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, (lock, keys)) in coap.into_iter().enumerate() {
            let bucket = &mut buckets[i % sockets];
            // Socket s's commands will be `controls[s]`.
            addresses.insert(lock.id().to_string(), (i % sockets, Some(bucket.0.len())));
            bucket.0.push(lock);
            bucket.1.extend(keys);
        }
        for (s, (locks, keys)) in buckets.into_iter().enumerate() {
            let seed = config.seed.wrapping_add(1 + s as u64);
            let mut task = SocketTask::bind(
                server,
                locks,
                config.security.then_some(keys),
                params,
                Impairment::new(config.faults, seed),
                seed,
                shared.clone(),
            )
            .await
            .map_err(RunError::Bind)?;
            controls.push(task.control());
            socket_tasks.push(task);
        }
    }

    // RFC 8613 Appendix B.1.1: the reservation is on disk before any lock
    // may use a seq from it, so a crash from now on cannot lead to reuse.
    if let Some(p) = persister.as_mut() {
        persist::save(p.path().to_path_buf(), p.text()).await?;
        p.mark_saved();
    }

    for task in socket_tasks {
        tasks.spawn(task.run(phase_rx.clone()));
    }
    if !mqtt.is_empty() || !bridges.is_empty() {
        let target = MqttTarget {
            host: config.gateway.clone(),
            port: config.mqtt_port,
            ack_timeout: config.mqtt_ack_timeout,
            acks: config.mqtt_acks,
        };
        let impairment = Impairment::new(config.faults, config.seed.wrapping_sub(1));
        let ids: Vec<String> = mqtt.iter().map(|m| m.lock.id().to_string()).collect();
        let mut fleet_task = MqttFleet::start(mqtt, bridges, &target, impairment, shared.clone());
        let task = controls.len();
        controls.push(fleet_task.control());
        addresses.extend(ids.into_iter().map(|id| (id, (task, None))));
        let bridge_control = fleet_task.bridge_control();
        bridge_controls.extend(
            fleet_task
                .bridge_ids()
                .map(|id| (id.to_string(), bridge_control.clone())),
        );
        tasks.spawn(fleet_task.run(phase_rx.clone()));
    }

    let twofa = match (config.twofa.as_ref(), inbox) {
        (Some(sim), Some(inbox)) => {
            let run = TwoFactorRun {
                people: sim.people.iter().cloned().map(Arc::new).collect(),
                inbox,
                otp_timeout: sim.otp_timeout,
            };
            if sim.mean_interval.is_some() && !run.people.is_empty() {
                let task = people_task(sim, &run, &addresses, &controls, &shared, config.seed);
                tasks.spawn(task.run(phase_rx.clone()));
            }
            Some(run)
        }
        _ => None,
    };

    let cancel = config.cancel.clone();
    let coordinator = Coordinator {
        config,
        shared,
        phase: phase_tx,
        tasks,
        ids,
        start: start_counters,
        persister,
    };
    Ok(RunHandle {
        stats,
        clock,
        cancel,
        origin,
        task: tokio::spawn(coordinator.run()),
        addresses,
        controls,
        bridges: bridge_controls,
        twofa,
    })
}

/// The task of the run's 2FA people, each with a handle on every lock they
/// go to (all CoAP locks of the run: [`TwoFactorSim::check`]).
fn people_task(
    sim: &TwoFactorSim,
    run: &TwoFactorRun,
    addresses: &HashMap<String, (usize, Option<usize>)>,
    controls: &[mpsc::Sender<Command>],
    shared: &Shared,
    seed: u64,
) -> PeopleTask {
    let now = Instant::now();
    let members = run
        .people
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let locks = spec
                .locks
                .iter()
                .filter_map(|id| {
                    let &(task, slot) = addresses.get(id)?;
                    let handle = LockHandle::new(id.clone(), slot, controls[task].clone());
                    Some((id.clone(), handle))
                })
                .collect();
            // Seeded like the locks, apart from them: a run's seed gives the
            // same visits.
            let person_seed = seed ^ 0x2FA ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            Member {
                spec: spec.clone(),
                person: Person::new(person_seed, sim.knobs(), now, &shared.clock),
                locks,
            }
        })
        .collect();
    PeopleTask {
        members,
        inbox: run.inbox.clone(),
        otp_timeout: sim.otp_timeout,
        stats: shared.stats.clone(),
        clock: shared.clock,
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, RunError> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| RunError::Resolve {
            host: host.to_string(),
            source,
        })?;
    addrs.next().ok_or_else(|| RunError::NoAddress {
        host: host.to_string(),
    })
}

/// The task that moves a run through its [`Phase`]s, keeps the state file
/// current and assembles the [`RunReport`].
struct Coordinator {
    config: SimConfig,
    shared: Shared,
    phase: watch::Sender<Phase>,
    tasks: JoinSet<Ledger>,
    /// Device ids: locks in fleet order, then bridges.
    ids: Vec<String>,
    /// The counters each device started from, in the order of `ids`.
    start: Vec<Counters>,
    persister: Option<Persister>,
}

impl Coordinator {
    async fn run(self) -> Result<RunReport, RunError> {
        let Coordinator {
            config,
            shared,
            phase,
            mut tasks,
            ids,
            start,
            mut persister,
        } = self;
        let Shared {
            clock,
            stats,
            counters: live,
        } = shared;
        let elapsed = || Instant::now().saturating_duration_since(clock.start());
        let end_at = config.duration.map(|d| clock.start() + d);
        let mut progress = config.progress.map(|p| {
            let mut i = tokio::time::interval(p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            i
        });
        let mut poll = tokio::time::interval(SETTLE_POLL);
        let mut save_check = persister.as_ref().map(|_| {
            let every = persist::SAVE_CHECK_EVERY;
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let lock_count = stats.lock_count() as u64;
        let all_finished =
            || config.max_reports_per_device.is_some() && stats.locks_done() >= lock_count;

        // Running. Only now do locks allocate seqs, so only now can they run
        // short of their reservation.
        loop {
            tokio::select! {
                _ = config.cancel.cancelled() => break,
                _ = sleep_until(end_at), if end_at.is_some() => break,
                _ = tick(&mut progress), if progress.is_some() => eprintln!("{}", stats.snapshot(elapsed())),
                _ = tick(&mut save_check), if save_check.is_some() => {
                    if let Some(p) = persister.as_mut() {
                        save_if_due(p, &live).await;
                    }
                }
                _ = poll.tick() => if all_finished() { break },
            }
        }

        // Draining: reports to settle, and 2FA entries a person waits on.
        let unsettled = || stats.outstanding() > 0 || stats.twofa_in_flight() > 0;
        if !config.drain_timeout.is_zero() && unsettled() {
            tracing::info!(
                outstanding = stats.outstanding(),
                twofa_in_flight = stats.twofa_in_flight(),
                "draining outboxes"
            );
            let _ = phase.send(Phase::Draining);
            let drain_end = Instant::now() + config.drain_timeout;
            while unsettled() && Instant::now() < drain_end {
                tokio::select! {
                    _ = tick(&mut progress), if progress.is_some() => eprintln!("{}", stats.snapshot(elapsed())),
                    _ = poll.tick() => {}
                }
            }
        }

        // Stopping.
        let _ = phase.send(Phase::Stopping);
        let mut ledger = Ledger::default();
        while let Some(joined) = tasks.join_next().await {
            ledger.merge(joined.map_err(|e| RunError::Task(e.to_string()))?);
        }
        let mut end = start;
        for (i, c) in std::mem::take(&mut ledger.counters) {
            if let Some(slot) = end.get_mut(i) {
                *slot = c;
            }
        }
        // A clean end: the exact counters replace the reservation.
        if let Some(mut p) = persister {
            p.take_memories(&live);
            p.set_exact(&end);
            persist::save(p.path().to_path_buf(), p.text()).await?;
        }
        ledger
            .acked
            .sort_by(|a, b| (&a.lock_id, a.seq).cmp(&(&b.lock_id, b.seq)));
        ledger
            .pending
            .sort_by(|a, b| (&a.lock_id, a.seq).cmp(&(&b.lock_id, b.seq)));
        ledger.pubacked.sort_by_key(|p| p.pubacked_after);
        Ok(RunReport {
            stats: stats.snapshot(elapsed()),
            acknowledged: ledger.acked,
            unacknowledged: ledger.pending,
            counters: ids.into_iter().zip(end).collect(),
            ack_latency: ledger.latency,
            answered: ledger.answered,
            answer_latency: ledger.answer_latency,
            twofa_latency: stats.twofa_latency(),
            pubacked: ledger.pubacked,
        })
    }
}

/// The periodic save: re-reserves the locks past half of their reservation
/// and writes the file if that changed it (or an earlier write failed).
async fn save_if_due(p: &mut Persister, live: &LiveCounters) {
    p.take_memories(live);
    let re = p.rereserve(live);
    if re.overrun > 0 {
        tracing::warn!(
            locks = re.overrun,
            "devices used more seqs than reserved between two saves; a crash then could have reused some"
        );
    }
    if !p.unsaved() {
        return;
    }
    match persist::save(p.path().to_path_buf(), p.text()).await {
        Ok(()) => {
            p.mark_saved();
            tracing::debug!(devices = re.devices, "re-reserved device counters");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot save lock counters; retrying at the next check")
        }
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
