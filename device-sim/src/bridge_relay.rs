//! What a bridge does with the gateway's commands, sans I/O. A command on
//! `br/{bridge}/cmd` is verified ([`open_command`]: the protected message,
//! the gateway's sequence number against a replay window, the MAC under the
//! bridge's own context, an inner `0.02 POST` carrying a
//! [`BridgeCommand`]) or, in an insecure run, read as plain CBOR; then it
//! waits for the Bluetooth link ([`Relay`]), which carries out one command
//! at a time, each after a delay drawn from [`BleDelay`]. Time comes in as
//! an argument; nothing here sleeps or touches a socket.
//!
//! What a command does at the lock is
//! [`crate::lock::Lock::apply_bridge_job`]'s; publishing its job report and
//! the bridge's connection are the MQTT task's ([`crate::mqtt_fleet`]).

use crate::security::DeviceKeys;
use lockfleet_oscore::{OptionError, OscoreOption, Replay, ReplayWindow, CODE_POST};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use schemas::device::{BridgeCommand, DecodeError};
use schemas::security::{decode_protected, ProtectedFrameError};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Commands a bridge holds for its Bluetooth link; past it new ones are
/// refused. The gateway sends a command when someone asks for a lock
/// action, a handful a minute per bridge at most, and each takes at most a
/// few seconds: 32 waiting means the link is stuck, and a bridge's memory is
/// small.
pub const MAX_QUEUED_COMMANDS: usize = 32;

/// How long the Bluetooth link takes to carry out one command (connect to
/// the lock, authenticate, act, read the result), drawn uniformly from
/// `min..=max` for each command. Real time: the speedup of the locks'
/// intervals does not shorten it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BleDelay {
    min: Duration,
    max: Duration,
}

/// Why a [`BleDelay`] was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BleDelayError {
    #[error(
        "{0:?} is not a delay range: write MIN..MAX in milliseconds, e.g. 200..1500, or one number"
    )]
    Syntax(String),
    #[error("the shortest Bluetooth delay ({min:?}) is longer than the longest ({max:?})")]
    Order { min: Duration, max: Duration },
}

impl BleDelay {
    /// 200 ms to 1.5 s: a BLE connection to a lock that advertises every
    /// few hundred milliseconds, plus a round trip or two.
    pub const DEFAULT: BleDelay = BleDelay {
        min: Duration::from_millis(200),
        max: Duration::from_millis(1500),
    };

    pub fn new(min: Duration, max: Duration) -> Result<Self, BleDelayError> {
        if min > max {
            return Err(BleDelayError::Order { min, max });
        }
        Ok(BleDelay { min, max })
    }

    /// Parses `MIN..MAX` (milliseconds, both ends included) or a single
    /// number (a fixed delay).
    pub fn parse_ms(s: &str) -> Result<Self, BleDelayError> {
        let ms = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| BleDelayError::Syntax(s.to_string()))
        };
        match s.split_once("..") {
            Some((min, max)) => Self::new(ms(min)?, ms(max.trim_start_matches('='))?),
            None => {
                let fixed = ms(s)?;
                Self::new(fixed, fixed)
            }
        }
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// One command's delay.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> Duration {
        rng.random_range(self.min..=self.max)
    }
}

impl Default for BleDelay {
    fn default() -> Self {
        BleDelay::DEFAULT
    }
}

/// Why a bridge dropped a command. The bridge answers none of them: the
/// gateway learns nothing from a refusal, so a forger learns nothing either.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("not a protected message: {0}")]
    Frame(ProtectedFrameError),
    #[error("a protected command, but the bridge runs insecure and has no keys to verify it")]
    NoKeys,
    #[error("bad OSCORE option: {0}")]
    Option(OptionError),
    #[error(transparent)]
    Replay(Replay),
    #[error("does not verify: {0}")]
    Oscore(lockfleet_oscore::Error),
    #[error("the inner code {0:#04x} is not 0.02 POST")]
    Code(u8),
    #[error("not a bridge command: {0}")]
    Decode(DecodeError),
    #[error("{MAX_QUEUED_COMMANDS} commands already wait for the Bluetooth link")]
    Busy,
}

impl Refused {
    /// A stable name for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Frame(_) => "frame",
            Refused::NoKeys => "no_keys",
            Refused::Option(_) => "option",
            Refused::Replay(_) => "replay",
            Refused::Oscore(_) => "oscore",
            Refused::Code(_) => "code",
            Refused::Decode(_) => "decode",
            Refused::Busy => "busy",
        }
    }
}

/// The command in an MQTT payload on `br/{bridge}/cmd`.
///
/// With the bridge's `keys` (a secure run) the payload must be a protected
/// message (`schemas::security`): the Partial IV, the gateway's sequence
/// number, must pass `window`, the request must verify under the bridge's
/// context (`kid` = the gateway's empty sender id), and once it has, its
/// sequence number is accepted into `window` whatever the plaintext holds;
/// the inner message must be `0.02 POST` with a [`BridgeCommand`].
///
/// Without keys (an insecure run, a gateway with `--insecure-dev`) the
/// payload is the plain CBOR map of the command; a protected message (a
/// CBOR array) cannot be verified and is refused.
pub fn open_command(
    payload: &[u8],
    keys: Option<&DeviceKeys>,
    window: &mut ReplayWindow,
) -> Result<BridgeCommand, Refused> {
    let Some(keys) = keys else {
        // RFC 8949 §3.1: major type 4 (the top three bits) is an array.
        if payload.first().is_some_and(|b| b >> 5 == 4) {
            return Err(Refused::NoKeys);
        }
        return BridgeCommand::decode(payload).map_err(Refused::Decode);
    };
    let (option, ciphertext) = decode_protected(payload).map_err(Refused::Frame)?;
    let option = OscoreOption::decode(&option).map_err(Refused::Option)?;
    let seq = option
        .partial_iv
        .ok_or(Refused::Option(OptionError::MissingPartialIv))?
        .seq();
    // RFC 8613 §7.4: the window before the MAC, the accept after it.
    window.check(seq).map_err(Refused::Replay)?;
    let inner = keys
        .open_request(&option, &ciphertext)
        .map_err(Refused::Oscore)?;
    window.accept(seq).map_err(Refused::Replay)?;
    if inner.code != CODE_POST {
        return Err(Refused::Code(inner.code));
    }
    BridgeCommand::decode(&inner.payload).map_err(Refused::Decode)
}

/// What a bridge's relay has seen, for [`crate::control::BridgeStatus`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Payloads that arrived on the command topic.
    pub received: u64,
    /// Of those, dropped ([`Refused`]).
    pub refused: u64,
    /// Commands carried out at a linked lock for the first time.
    pub applied: u64,
    /// Commands for a job the lock had handled already: answered with the
    /// remembered result, nothing applied again.
    pub repeated: u64,
    /// Commands for a lock not linked to the bridge: answered `Rejected`.
    pub unlinked: u64,
}

/// One bridge's command relay: the replay window over the gateway's
/// sequence numbers and the commands waiting for the Bluetooth link.
///
/// The window is kept in memory only. A real bridge persists it (RFC 8613
/// §7.4, Appendix B.1.2), so that no reboot makes it accept an old command
/// again; the simulator's starts empty with each process, so a command
/// recorded during an earlier run would be accepted again by a later one.
#[derive(Debug)]
pub struct Relay {
    window: ReplayWindow,
    delay: BleDelay,
    rng: SmallRng,
    /// Verified commands and when the link is done with each, in order.
    queue: VecDeque<(Instant, BridgeCommand)>,
    pub counts: RelayCounts,
}

impl Relay {
    /// A relay whose delays are drawn from `delay` with a generator seeded
    /// by `seed` (the run's seed and the bridge's index: reproducible).
    pub fn new(delay: BleDelay, seed: u64) -> Self {
        Relay {
            window: ReplayWindow::new(),
            delay,
            rng: SmallRng::seed_from_u64(seed),
            queue: VecDeque::new(),
            counts: RelayCounts::default(),
        }
    }

    /// A payload arrived on the command topic at `now`: verified
    /// ([`open_command`]) and queued for the link, which takes it up when
    /// the commands before it are done. Returns when it will be done.
    pub fn receive(
        &mut self,
        payload: &[u8],
        keys: Option<&DeviceKeys>,
        now: Instant,
    ) -> Result<Instant, Refused> {
        self.counts.received += 1;
        let admitted = self.admit(payload, keys, now);
        if admitted.is_err() {
            self.counts.refused += 1;
        }
        admitted
    }

    fn admit(
        &mut self,
        payload: &[u8],
        keys: Option<&DeviceKeys>,
        now: Instant,
    ) -> Result<Instant, Refused> {
        if self.queue.len() >= MAX_QUEUED_COMMANDS {
            return Err(Refused::Busy);
        }
        let command = open_command(payload, keys, &mut self.window)?;
        let start = self
            .queue
            .back()
            .map_or(now, |(busy_until, _)| (*busy_until).max(now));
        let done = start + self.delay.draw(&mut self.rng);
        self.queue.push_back((done, command));
        Ok(done)
    }

    /// When the link is done with the next command.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// The next command the link is done with by `now`, to carry out at
    /// its lock.
    pub fn pop_due(&mut self, now: Instant) -> Option<BridgeCommand> {
        if self.next_due()? > now {
            return None;
        }
        self.queue.pop_front().map(|(_, command)| command)
    }

    /// Commands waiting for the link.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
#[path = "bridge_relay_tests.rs"]
mod tests;
