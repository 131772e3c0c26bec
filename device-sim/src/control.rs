//! Reaching one lock of a running simulation from outside: make it send a
//! heartbeat now and wait until the conversation about its jobs is over,
//! type a PIN at its keypad, type a 2FA passcode or OTP at an INB1-2FA lock
//! and get the gateway's answer, hard reset it, look at its state. Reaching one
//! bridge: take it offline and back ([`BridgeHandle`]), look at what it did
//! with the gateway's commands. For tests (a gateway's integration tests
//! drive one simulated lock step by step) and operators.
//!
//! No lock is shared: a [`LockHandle`] sends a command over a bounded
//! channel to the one task that owns the lock (its CoAP socket task or the
//! MQTT task), which applies it between network events and answers on a
//! oneshot channel. This module holds the commands, their replies and the
//! waiters of [`LockHandle::heartbeat_now`]; the tasks only route commands
//! and tell the waiters what happened to the lock's reports.

use crate::clock::SimClock;
use crate::lock::{Counters, Lock, Report, TwoFactorRefusal, TwoFactorStep, WakeOutcome};
use schemas::device::{JobReport, JobResult, UplinkKind};
use schemas::twofa::TwoFactorAnswer;
use schemas::{ActivityLogInterval, DoorState, HeartbeatInterval, LockState};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

/// Commands queued for one task before senders wait (backpressure). Commands
/// come from tests and operators, a handful at a time.
pub const CONTROL_CHANNEL_CAPACITY: usize = 64;

/// Why a command to a lock did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the simulation has ended: its locks take no more commands")]
    Ended,
    #[error("the run is draining or stopping: locks start no new reports")]
    NotRunning,
    #[error("the bridge was told to go the other way before this finished")]
    Superseded,
    #[error("the lock's outbox is full of log batches: no room for a heartbeat now")]
    OutboxFull,
    #[error("the {kind} report {seq} got no answer that verifies (retransmissions exhausted); it goes again at the lock's next wake")]
    GaveUp { kind: &'static str, seq: u32 },
    #[error("the gateway refused the {kind} report {seq}: {code}")]
    Refused {
        kind: &'static str,
        seq: u32,
        code: String,
    },
    #[error("lock {lock} takes no 2FA entries: it is a {model} on {transport}, and only INB1-2FA locks on CoAP do")]
    NotTwoFactor {
        lock: String,
        model: &'static str,
        transport: &'static str,
    },
    #[error("the lock's keypad is busy: another 2FA entry waits for its answer")]
    KeypadBusy,
    /// The gateway answered a `/2fa` or `/otp` request with a 4.xx or 5.xx
    /// (or RST: code `rst`); `diagnostic` is its diagnostic payload.
    #[error("the gateway refused the /{path} request {seq}: {code} {diagnostic:?}")]
    TwoFactorRefused {
        path: &'static str,
        seq: u32,
        code: String,
        diagnostic: String,
    },
    /// A `/2fa` or `/otp` request got no answer the lock can use; `reason`:
    /// `gave_up` (retransmissions exhausted), `unverified_answer`,
    /// `undecodable_answer`, `seq_mismatch`, `unsendable`, `no_message_id`,
    /// `oscore_exhausted`. Entries are not retried: the person types again.
    #[error("the /{path} request {seq} failed: {reason}")]
    TwoFactorFailed {
        path: &'static str,
        seq: u32,
        reason: &'static str,
    },
}

/// A lock's state as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockStatus {
    pub id: String,
    pub pin_count: usize,
    /// The access ids of the PINs in the table, in slot order (no digits).
    pub pin_accesses: Vec<String>,
    /// AlgoPIN access ids deleted (blocked) at the lock, oldest first.
    pub blocked_algo_pins: Vec<String>,
    /// Job outcomes remembered for repeats.
    pub remembered_jobs: usize,
    /// When the lock was last hard reset ([`Lock::wall_clock`] seconds).
    pub last_hard_reset: Option<u64>,
    /// The lock's clock for PINs and jobs now ([`Lock::wall_clock`]).
    pub wall_clock: u64,
    pub heartbeat_interval: HeartbeatInterval,
    pub activity_log_interval: ActivityLogInterval,
    pub lock_state: LockState,
    pub door_state: DoorState,
    pub counters: Counters,
    /// Reports awaiting an acknowledgement.
    pub outbox: usize,
    /// A heartbeat or job report is still waiting ([`Lock::conversation_open`]).
    pub conversation_open: bool,
}

impl LockStatus {
    pub fn of(lock: &Lock, now: Instant, clock: &SimClock) -> LockStatus {
        let memory = lock.memory();
        let (heartbeat_interval, activity_log_interval) = lock.intervals();
        LockStatus {
            id: lock.id().to_string(),
            pin_count: lock.pin_count(),
            pin_accesses: memory.pins().iter().map(|p| p.access.clone()).collect(),
            blocked_algo_pins: memory.blocked_algo_pins().map(str::to_string).collect(),
            remembered_jobs: memory.remembered_count(),
            last_hard_reset: lock.last_hard_reset(),
            wall_clock: lock.wall_clock(now, clock),
            heartbeat_interval,
            activity_log_interval,
            lock_state: lock.physical().lock,
            door_state: lock.physical().door,
            counters: lock.counters(),
            outbox: lock.outbox().count(),
            conversation_open: lock.conversation_open(),
        }
    }
}

/// What one [`LockHandle::heartbeat_now`] led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// The seq of the heartbeat sent.
    pub heartbeat_seq: u32,
    /// The job reports the gateway acknowledged while the conversation
    /// lasted, in order (none when the heartbeat's answer had no jobs).
    pub job_reports: Vec<JobReport>,
    /// The lock once the conversation was over.
    pub status: LockStatus,
}

impl Conversation {
    /// Every job result reported, in order.
    pub fn results(&self) -> impl Iterator<Item = &JobResult> {
        self.job_reports.iter().flat_map(|r| r.results.iter())
    }
}

/// One lock of a running simulation (from [`crate::run::RunHandle::lock`]).
/// Cheap to clone; every call is answered by the task that owns the lock,
/// between its network events.
///
/// A gateway integration test drives one CoAP lock with OSCORE like this:
///
/// ```no_run
/// # async fn example(coap_port: u16) -> anyhow::Result<()> {
/// use device_sim::fleet::{generate, FleetSpec};
/// use device_sim::run::{self, SimConfig};
/// use device_sim::Reporting;
/// use schemas::device::JobOutcome;
/// use std::time::Duration;
///
/// let fleet = generate(&FleetSpec { locks: 1, bridges: 0, orgs: 1, mqtt_share: 0.0, seed: 1 })?;
/// // ... register `fleet` with the gateway (its pairing secrets too) ...
/// let sim = run::start(
///     SimConfig {
///         gateway: "127.0.0.1".into(),
///         coap_port,
///         speedup: 1.0,
///         // The lock reports only when told: no heartbeat at a random moment.
///         reporting: Reporting::OnDemand,
///         ..SimConfig::default()
///     },
///     fleet.clone(),
/// )
/// .await?;
/// let lock = sim.lock(&fleet.locks[0].id).expect("the lock is in the run");
///
/// // ... create a PIN job for the lock through the gateway ...
/// let talk = tokio::time::timeout(Duration::from_secs(10), lock.heartbeat_now()).await??;
/// assert!(talk.results().all(|r| r.outcome == JobOutcome::Done));
/// assert_eq!(talk.status.pin_count, 1);
/// assert!(lock.enter_pin("482916").await?);
/// assert!(!lock.enter_pin("000000").await?);
/// // The unlock is in the activity log the next heartbeat uploads.
/// lock.heartbeat_now().await?;
///
/// lock.hard_reset().await?; // PINs gone; jobs issued before now will fail
/// assert_eq!(lock.status().await?.pin_count, 0);
///
/// sim.stop();
/// let report = sim.finish().await?;
/// assert!(report.all_acknowledged());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LockHandle {
    id: String,
    /// The lock's index among its task's locks, when the task indexes them
    /// (CoAP sockets); the MQTT task finds locks by id.
    slot: Option<usize>,
    task: mpsc::Sender<Command>,
}

impl LockHandle {
    pub(crate) fn new(id: String, slot: Option<usize>, task: mpsc::Sender<Command>) -> Self {
        LockHandle { id, slot, task }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lock reports now ([`Lock::heartbeat_now`]: pending activity,
    /// then a heartbeat). Resolves once the conversation that follows is
    /// over: the heartbeat is acknowledged, the jobs of every answer are
    /// applied and their job reports acknowledged, and the last answer
    /// carried no jobs. Fails as soon as one of those reports is refused or
    /// gives up; a gateway that never answers is the caller's timeout.
    pub async fn heartbeat_now(&self) -> Result<Conversation, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(Action::HeartbeatNow(reply)).await?;
        rx.await.map_err(|_| ControlError::Ended)?
    }

    /// Types `digits` at the keypad ([`Lock::enter_pin`]): true if the lock
    /// opened. PIN validity is judged at the lock's [`Lock::wall_clock`].
    pub async fn enter_pin(&self, digits: &str) -> Result<bool, ControlError> {
        self.pin(digits, None).await
    }

    /// Types `digits` with validity judged at `wall_s` (Unix seconds, the
    /// clock of PIN start and end), to test a PIN's window without waiting.
    pub async fn enter_pin_at(&self, digits: &str, wall_s: u64) -> Result<bool, ControlError> {
        self.pin(digits, Some(wall_s)).await
    }

    async fn pin(&self, digits: &str, at_s: Option<u64>) -> Result<bool, ControlError> {
        let (reply, rx) = oneshot::channel();
        let digits = digits.to_string();
        self.send(Action::EnterPin {
            digits,
            at_s,
            reply,
        })
        .await?;
        rx.await.map_err(|_| ControlError::Ended)
    }

    /// Types `passcode` as a 2FA passcode at the keypad of an INB1-2FA lock
    /// on CoAP ([`Lock::type_2fa`]): the lock sends `POST /2fa` (OSCORE,
    /// under its next uplink seq and sender sequence number, both kept in
    /// the state file), retransmitted as any request, and returns the
    /// gateway's verified answer. Other locks: [`ControlError::NotTwoFactor`];
    /// an entry already waiting: [`ControlError::KeypadBusy`]; a 4.xx/5.xx:
    /// [`ControlError::TwoFactorRefused`]; no usable answer:
    /// [`ControlError::TwoFactorFailed`]. The digits go as given.
    ///
    /// A gateway integration test unlocks an INB1-2FA lock like this:
    ///
    /// ```no_run
    /// # async fn example(coap_port: u16) -> anyhow::Result<()> {
    /// use device_sim::fleet::{generate, FleetSpec};
    /// use device_sim::phone::SmsInbox;
    /// use device_sim::run::{self, SimConfig};
    /// use device_sim::Reporting;
    /// use schemas::twofa::TwoFactorResult;
    /// use schemas::{LockModel, LockState};
    /// use std::time::{Duration, Instant};
    ///
    /// // The phones first: the gateway's SMS webhook needs the inbox's URL.
    /// let inbox = SmsInbox::start("127.0.0.1:0".parse()?).await?;
    /// let mut fleet = generate(&FleetSpec { locks: 1, bridges: 0, orgs: 1, mqtt_share: 0.0, seed: 1 })?;
    /// fleet.locks[0].model = LockModel::Inb1TwoFactor;
    /// // ... start the gateway with its SMS webhook at inbox.url(); register
    /// // `fleet`, a user with mobile +6591234567 (verified), 2FA passcode
    /// // 48291637 and a grant at the lock ...
    /// let config = SimConfig { coap_port, reporting: Reporting::OnDemand, ..SimConfig::default() };
    /// let sim = run::start(config, fleet.clone()).await?;
    /// let lock = sim.lock(&fleet.locks[0].id).expect("the lock is in the run");
    ///
    /// let typed = Instant::now();
    /// let sent = lock.enter_2fa_passcode("48291637").await?;
    /// assert_eq!(sent.result, TwoFactorResult::OtpSent);
    /// let challenge = sent.challenge.expect("otp_sent names its challenge");
    /// let sms = inbox
    ///     .wait_challenge_otp("+6591234567", challenge, typed, Duration::from_secs(10))
    ///     .await
    ///     .expect("the OTP reached the phone");
    /// let opened = lock.enter_otp(challenge, &sms.otp).await?;
    /// assert_eq!(opened.result, TwoFactorResult::Allowed);
    /// assert_eq!(lock.status().await?.lock_state, LockState::Unlocked);
    /// lock.heartbeat_now().await?; // uploads the unlocked_2fa event
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// With [`crate::run::SimConfig::twofa`] (the same inbox as
    /// [`crate::twofa::InboxSource::Given`]) the run's people do this on
    /// their own, and [`crate::run::RunHandle::person`] makes one visit now.
    pub async fn enter_2fa_passcode(
        &self,
        passcode: &str,
    ) -> Result<TwoFactorAnswer, ControlError> {
        self.two_factor(TwoFactorStep::Passcode, passcode).await
    }

    /// Types `otp` as the OTP of `challenge` (from the `/2fa` answer): the
    /// lock sends `POST /otp` as [`LockHandle::enter_2fa_passcode`] sends
    /// `/2fa`. On [`TwoFactorResult::Allowed`](schemas::twofa::TwoFactorResult)
    /// the lock opens and logs `unlocked_2fa` (actor `2fa-{challenge}`),
    /// which its next activity upload carries.
    pub async fn enter_otp(
        &self,
        challenge: u64,
        otp: &str,
    ) -> Result<TwoFactorAnswer, ControlError> {
        self.two_factor(TwoFactorStep::Otp { challenge }, otp).await
    }

    async fn two_factor(
        &self,
        step: TwoFactorStep,
        digits: &str,
    ) -> Result<TwoFactorAnswer, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(Action::TwoFactor {
            step,
            digits: Zeroizing::new(digits.to_string()),
            reply,
        })
        .await?;
        rx.await.map_err(|_| ControlError::Ended)?
    }

    /// Hard resets the lock now ([`Lock::hard_reset`]); returns the reset
    /// time it recorded. Jobs issued strictly before that second fail with
    /// `HardReset`: a job issued in the same second as the reset is applied.
    pub async fn hard_reset(&self) -> Result<u64, ControlError> {
        self.reset(None).await
    }

    /// Hard resets the lock as if at `at_s` ([`Lock::hard_reset_as_of`]),
    /// so a test can place the reset exactly between two jobs' `issued`.
    pub async fn hard_reset_as_of(&self, at_s: u64) -> Result<u64, ControlError> {
        self.reset(Some(at_s)).await
    }

    async fn reset(&self, at_s: Option<u64>) -> Result<u64, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(Action::HardReset { at_s, reply }).await?;
        rx.await.map_err(|_| ControlError::Ended)
    }

    /// The lock's state now.
    pub async fn status(&self) -> Result<LockStatus, ControlError> {
        let (reply, rx) = oneshot::channel();
        let f = move |lock: &Lock, now: Instant, clock: &SimClock| {
            let _ = reply.send(LockStatus::of(lock, now, clock));
        };
        self.send(Action::Inspect(Box::new(f))).await?;
        rx.await.map_err(|_| ControlError::Ended)
    }

    /// Runs `f` on the lock, inside its task, and returns what it returns.
    /// Keep it short: the task's other locks wait meanwhile.
    pub async fn inspect<R, F>(&self, f: F) -> Result<R, ControlError>
    where
        R: Send + 'static,
        F: FnOnce(&Lock) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let f = move |lock: &Lock, _: Instant, _: &SimClock| {
            let _ = reply.send(f(lock));
        };
        self.send(Action::Inspect(Box::new(f))).await?;
        rx.await.map_err(|_| ControlError::Ended)
    }

    async fn send(&self, action: Action) -> Result<(), ControlError> {
        let command = Command {
            lock: self.id.clone(),
            slot: self.slot,
            action,
        };
        self.task
            .send(command)
            .await
            .map_err(|_| ControlError::Ended)
    }
}

/// A bridge's state as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeStatus {
    pub id: String,
    /// Connected and subscribed: commands reach it, reports leave it.
    pub online: bool,
    /// Held offline by [`BridgeHandle::go_offline`] until
    /// [`BridgeHandle::go_online`].
    pub held_offline: bool,
    /// Payloads that arrived on `br/{bridge}/cmd`.
    pub commands_received: u64,
    /// Of those, dropped unanswered: not protected, not verifying, replayed,
    /// not a POST of a bridge command, or the link's queue full.
    pub commands_refused: u64,
    /// Commands carried out at a linked lock for the first time.
    pub commands_applied: u64,
    /// Commands for a (job id, attempt) the lock had handled: answered with
    /// the remembered result, nothing applied again.
    pub commands_repeated: u64,
    /// Commands for a lock not linked to this bridge: answered `Rejected`.
    pub commands_unlinked: u64,
    /// Commands waiting for the Bluetooth link.
    pub commands_queued: usize,
    /// Reports of its linked locks awaiting the gateway's answer.
    pub outbox: usize,
    /// Its linked locks, as in the fleet.
    pub locks: Vec<String>,
}

/// One bridge of a running simulation (from
/// [`crate::run::RunHandle::bridge`]), for a gateway's end-to-end tests of
/// bridge commands and of a bridge that goes away. Cheap to clone; every
/// call is answered by the MQTT task between its network events.
///
/// While the run goes on, the bridge verifies the commands the gateway
/// publishes on `br/{bridge}/cmd`, carries each out at its lock after a
/// Bluetooth delay ([`crate::run::SimConfig::ble_delay`]) and reports the
/// result on `br/{bridge}/up/jr`; the linked locks' [`LockHandle`]s show
/// what changed ([`LockStatus::lock_state`], the PIN table).
///
/// Offline, the bridge hears nothing: no command reaches it, and the
/// reports it still has to send stay in its locks' outboxes. Its MQTT
/// session is persistent (`clean_session = false`, subscriptions at QoS 1),
/// so a broker that keeps sessions (Mosquitto does) queues the commands
/// published meanwhile and delivers them when the bridge reconnects: they
/// are carried out then, not lost, and nothing is applied while it is
/// offline.
#[derive(Clone, Debug)]
pub struct BridgeHandle {
    id: String,
    task: mpsc::Sender<BridgeControl>,
}

impl BridgeHandle {
    pub(crate) fn new(id: String, task: mpsc::Sender<BridgeControl>) -> Self {
        BridgeHandle { id, task }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes the bridge offline, as when its Wi-Fi is switched off
    /// politely: it publishes `offline` on `br/{bridge}/status`, disconnects
    /// cleanly (so the broker does not publish its Last Will) and stays
    /// disconnected, without reconnecting, until [`BridgeHandle::go_online`].
    /// A report in flight is kept for later. Resolves once disconnected
    /// (at once if it already was).
    pub async fn go_offline(&self) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(BridgeAction::GoOffline(reply)).await?;
        rx.await.map_err(|_| ControlError::Ended)?
    }

    /// Brings the bridge back: it reconnects (resuming its session),
    /// publishes `online` and sends the reports its locks kept. Resolves
    /// once it is connected and subscribed again; a broker that cannot be
    /// reached is the caller's timeout.
    pub async fn go_online(&self) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(BridgeAction::GoOnline(reply)).await?;
        rx.await.map_err(|_| ControlError::Ended)?
    }

    /// The bridge's state now.
    pub async fn status(&self) -> Result<BridgeStatus, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send(BridgeAction::Status(reply)).await?;
        rx.await.map_err(|_| ControlError::Ended)
    }

    async fn send(&self, action: BridgeAction) -> Result<(), ControlError> {
        let command = BridgeControl {
            bridge: self.id.clone(),
            action,
        };
        self.task
            .send(command)
            .await
            .map_err(|_| ControlError::Ended)
    }
}

/// A command for the MQTT task about `bridge`.
pub(crate) struct BridgeControl {
    pub bridge: String,
    pub action: BridgeAction,
}

pub(crate) enum BridgeAction {
    GoOffline(oneshot::Sender<Result<(), ControlError>>),
    GoOnline(oneshot::Sender<Result<(), ControlError>>),
    Status(oneshot::Sender<BridgeStatus>),
}

/// A new channel for bridge commands to the MQTT task.
pub(crate) fn bridge_channel() -> (mpsc::Sender<BridgeControl>, mpsc::Receiver<BridgeControl>) {
    mpsc::channel(CONTROL_CHANNEL_CAPACITY)
}

/// Receives the next bridge command, or waits forever without a channel.
pub(crate) async fn recv_bridge(
    commands: &mut Option<mpsc::Receiver<BridgeControl>>,
) -> Option<BridgeControl> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A command for the task that owns `lock`.
pub(crate) struct Command {
    pub lock: String,
    pub slot: Option<usize>,
    pub action: Action,
}

type Inspector = Box<dyn FnOnce(&Lock, Instant, &SimClock) + Send>;

pub(crate) enum Action {
    HeartbeatNow(oneshot::Sender<Result<Conversation, ControlError>>),
    EnterPin {
        digits: String,
        at_s: Option<u64>,
        reply: oneshot::Sender<bool>,
    },
    HardReset {
        at_s: Option<u64>,
        reply: oneshot::Sender<u64>,
    },
    TwoFactor {
        step: TwoFactorStep,
        digits: Zeroizing<String>,
        reply: TwoFactorReply,
    },
    Inspect(Inspector),
}

type TwoFactorReply = oneshot::Sender<Result<TwoFactorAnswer, ControlError>>;

/// A new command channel for one task.
pub(crate) fn channel() -> (mpsc::Sender<Command>, mpsc::Receiver<Command>) {
    mpsc::channel(CONTROL_CHANNEL_CAPACITY)
}

/// Receives the next command, or waits forever without a channel.
pub(crate) async fn recv(commands: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies `action` to `lock` (at `slot` of its task) at `now`. Returns
/// what it queued, for the task's counters; the task then stores the
/// lock's counters and memory, re-arms its timer and lets it send.
pub(crate) fn execute(
    action: Action,
    lock: &mut Lock,
    slot: usize,
    now: Instant,
    clock: &SimClock,
    running: bool,
    waiters: &mut Waiters,
) -> WakeOutcome {
    match action {
        Action::HeartbeatNow(reply) => {
            if !running {
                let _ = reply.send(Err(ControlError::NotRunning));
                return WakeOutcome::default();
            }
            let out = lock.heartbeat_now(now, clock);
            match out.heartbeat {
                Some(seq) => waiters.wait(slot, seq, reply),
                None => {
                    let _ = reply.send(Err(ControlError::OutboxFull));
                }
            }
            out
        }
        Action::EnterPin {
            digits,
            at_s,
            reply,
        } => {
            let opened = match at_s {
                Some(at_s) => lock.enter_pin_at(&digits, at_s, now, clock),
                None => lock.enter_pin(&digits, now, clock),
            };
            let _ = reply.send(opened);
            WakeOutcome::default()
        }
        Action::HardReset { at_s, reply } => {
            let at_s = match at_s {
                Some(at_s) => {
                    lock.hard_reset_as_of(at_s, now, clock);
                    at_s
                }
                None => lock.hard_reset(now, clock),
            };
            let _ = reply.send(at_s);
            WakeOutcome {
                hard_reset: true,
                ..WakeOutcome::default()
            }
        }
        Action::TwoFactor {
            step,
            digits,
            reply,
        } => {
            if !running {
                let _ = reply.send(Err(ControlError::NotRunning));
                return WakeOutcome::default();
            }
            match lock.type_2fa(step, &digits) {
                Ok(seq) => waiters.wait_2fa(slot, seq, reply),
                Err(TwoFactorRefusal::Busy) => {
                    let _ = reply.send(Err(ControlError::KeypadBusy));
                }
                Err(TwoFactorRefusal::NotTwoFactor { model, transport }) => {
                    let _ = reply.send(Err(ControlError::NotTwoFactor {
                        lock: lock.id().to_string(),
                        model: model.as_str(),
                        transport: transport.as_str(),
                    }));
                }
            }
            WakeOutcome::default()
        }
        Action::Inspect(f) => {
            f(lock, now, clock);
            WakeOutcome::default()
        }
    }
}

struct Waiter {
    heartbeat_seq: u32,
    job_reports: Vec<JobReport>,
    reply: oneshot::Sender<Result<Conversation, ControlError>>,
}

/// The [`LockHandle::heartbeat_now`] calls of one task still waiting, by
/// the lock's slot in the task. Empty almost always: every hook returns at
/// once then.
#[derive(Default)]
pub(crate) struct Waiters {
    by_slot: HashMap<usize, Vec<Waiter>>,
    /// The 2FA entry of each slot's lock awaiting its answer (one at most:
    /// [`Lock::type_2fa`]), with its seq.
    twofa: HashMap<usize, (u32, TwoFactorReply)>,
}

impl Waiters {
    fn wait(
        &mut self,
        slot: usize,
        heartbeat_seq: u32,
        reply: oneshot::Sender<Result<Conversation, ControlError>>,
    ) {
        self.by_slot.entry(slot).or_default().push(Waiter {
            heartbeat_seq,
            job_reports: Vec::new(),
            reply,
        });
    }

    fn wait_2fa(&mut self, slot: usize, seq: u32, reply: TwoFactorReply) {
        self.twofa.insert(slot, (seq, reply));
    }

    /// The 2FA entry `seq` of the lock in `slot` ended with `result`.
    pub fn on_2fa(&mut self, slot: usize, seq: u32, result: Result<TwoFactorAnswer, ControlError>) {
        if self.twofa.get(&slot).is_some_and(|(s, _)| *s == seq) {
            if let Some((_, reply)) = self.twofa.remove(&slot) {
                let _ = reply.send(result);
            }
        }
    }

    /// A report of the lock in `slot` was acknowledged.
    pub fn on_acked(&mut self, slot: usize, report: &Report) {
        if report.kind != UplinkKind::JobReport {
            return;
        }
        let Some(waiters) = self.by_slot.get_mut(&slot) else {
            return;
        };
        // The lock encoded it: it decodes.
        if let Ok(r) = JobReport::decode(&report.payload) {
            for w in waiters {
                w.job_reports.push(r.clone());
            }
        }
    }

    /// A `kind` report `seq` of the lock in `slot` was refused with `code`.
    pub fn on_refused(&mut self, slot: usize, kind: UplinkKind, seq: u32, code: &str) {
        self.fail(slot, kind, || ControlError::Refused {
            kind: kind.as_str(),
            seq,
            code: code.to_string(),
        });
    }

    /// A `kind` report `seq` of the lock in `slot` gave up until the next wake.
    pub fn on_gave_up(&mut self, slot: usize, kind: UplinkKind, seq: u32) {
        self.fail(slot, kind, || ControlError::GaveUp {
            kind: kind.as_str(),
            seq,
        });
    }

    fn fail(&mut self, slot: usize, kind: UplinkKind, error: impl Fn() -> ControlError) {
        if kind == UplinkKind::ActivityLog || !self.by_slot.contains_key(&slot) {
            return;
        }
        for w in self.by_slot.remove(&slot).unwrap_or_default() {
            let _ = w.reply.send(Err(error()));
        }
    }

    /// Answers the waiters of the lock in `slot` if its conversation is over.
    pub fn settle(&mut self, slot: usize, lock: &Lock, now: Instant, clock: &SimClock) {
        if !self.by_slot.contains_key(&slot) || lock.conversation_open() {
            return;
        }
        let status = LockStatus::of(lock, now, clock);
        for w in self.by_slot.remove(&slot).unwrap_or_default() {
            let _ = w.reply.send(Ok(Conversation {
                heartbeat_seq: w.heartbeat_seq,
                job_reports: w.job_reports,
                status: status.clone(),
            }));
        }
    }
}
