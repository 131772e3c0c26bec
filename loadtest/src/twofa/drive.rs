//! The two ways `loadtest twofa` offers work, and what it keeps of each
//! operation.
//!
//! * [`open_loop`]: operation `k` is due at `start + k / rate` whatever
//!   happened to the ones before (open-loop, as locks in the field do not
//!   wait for each other). Every latency is taken from the operation's due
//!   time, not from when it actually went, so a generator or server that
//!   falls behind shows in the figures instead of hiding (coordinated
//!   omission accounted for). Only operations due in the steady window
//!   (after the warm-up) are counted.
//! * [`closed_loop`]: `window` operations outstanding at all times, the
//!   next one started as soon as one ends: the rate the gateway sustains.
//!
//! An operation reports a [`Sample`]: its outcome (`ok` or why not) and
//! the time of each of its [`Leg`]s. The arithmetic ([`Tally`]) is pure.

use crate::stats::Window;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Longest an operation may take before it counts as `timeout`: far
/// beyond any leg a working gateway needs (an OTP lives 5 minutes, a
/// person waits half a minute for it).
pub const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Most operations the open-loop generator keeps outstanding; one due
/// beyond it is not started and counts as `generator_backlog`, so an
/// overloaded server shows as failures instead of unbounded memory.
pub const MAX_OUTSTANDING: usize = 20_000;

/// How often a progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The outcome of an operation that did what it should.
pub const OK: &str = "ok";

/// A timed part of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leg {
    /// A heartbeat: due time to its verified answer.
    Heartbeat,
    /// `POST /2fa`: due time to the lock's verified answer.
    PasscodeAnswer,
    /// Due time of the passcode entry to the SMS provider receiving the
    /// OTP (the gateway's webhook request read by the provider): the
    /// challenge latency, lock request to notifier call.
    Challenge,
    /// `POST /otp`: the OTP typed (or due, in a closed loop) to the lock's
    /// verified answer: the verification.
    Verification,
    /// The whole unlock: passcode due to the lock's `allowed`.
    Unlock,
}

impl Leg {
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Heartbeat => "heartbeat answer",
            Leg::PasscodeAnswer => "/2fa answer",
            Leg::Challenge => "challenge (request to notifier call)",
            Leg::Verification => "/otp answer (verification)",
            Leg::Unlock => "whole unlock",
        }
    }
}

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// [`OK`], or a short reason (`rate_limited`, `timeout`, ...).
    pub outcome: &'static str,
    pub legs: Vec<(Leg, Duration)>,
}

impl Sample {
    pub fn ok(legs: Vec<(Leg, Duration)>) -> Sample {
        Sample { outcome: OK, legs }
    }

    pub fn failed(outcome: &'static str) -> Sample {
        Sample {
            outcome,
            legs: Vec::new(),
        }
    }
}

/// Latency quantiles of one leg, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The figures of one phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseFigures {
    /// Operations started (open loop: due in the whole phase).
    pub started: u64,
    /// Operations that ended `ok`, counted for the rate.
    pub ok: u64,
    /// Operations that ended `ok`, whenever (warm-up and drain too).
    pub ok_total: u64,
    /// `ok` operations per second (open loop: those ending in the steady
    /// window; closed loop: all, over the phase's length).
    pub ok_per_s: f64,
    /// Every outcome but `ok`, with its count.
    pub failures: BTreeMap<&'static str, u64>,
    pub legs: BTreeMap<Leg, Quantiles>,
    /// How long the phase took (closed loop) or generated (open loop).
    pub elapsed: Duration,
}

impl PhaseFigures {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn leg(&self, leg: Leg) -> Option<&Quantiles> {
        self.legs.get(&leg)
    }
}

/// Counts samples into figures. Sans I/O: times are offsets from the start.
#[derive(Debug)]
pub struct Tally {
    window: Window,
    started: u64,
    ok_in_window: u64,
    ok_total: u64,
    failures: BTreeMap<&'static str, u64>,
    legs: BTreeMap<Leg, Histogram<u64>>,
}

impl Tally {
    /// Counts latencies of operations due in `window`, and the rate of
    /// `ok` operations ending in it.
    pub fn new(window: Window) -> Tally {
        Tally {
            window,
            started: 0,
            ok_in_window: 0,
            ok_total: 0,
            failures: BTreeMap::new(),
            legs: BTreeMap::new(),
        }
    }

    pub fn started(&mut self) {
        self.started += 1;
    }

    /// An operation due at `due` that ended at `ended` (both since the
    /// start) with `sample`.
    pub fn record(&mut self, due: Duration, ended: Duration, sample: &Sample) {
        if sample.outcome != OK {
            *self.failures.entry(sample.outcome).or_default() += 1;
            return;
        }
        self.ok_total += 1;
        if self.window.contains(ended) {
            self.ok_in_window += 1;
        }
        if !self.window.contains(due) {
            return;
        }
        for &(leg, took) in &sample.legs {
            let h = self.legs.entry(leg).or_insert_with(new_histogram);
            // Auto-resizing: recording cannot fail within u64 microseconds.
            let _ = h.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// Open loop: the rate over the steady window.
    pub fn open_loop_figures(&self, generated: Duration) -> PhaseFigures {
        let rate = if self.window.is_empty() {
            0.0
        } else {
            self.ok_in_window as f64 / self.window.len().as_secs_f64()
        };
        self.figures(self.ok_in_window, rate, generated)
    }

    /// Closed loop: every `ok` over `elapsed`.
    pub fn closed_loop_figures(&self, elapsed: Duration) -> PhaseFigures {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.ok_total as f64 / secs
        } else {
            0.0
        };
        self.figures(self.ok_total, rate, elapsed)
    }

    fn figures(&self, ok: u64, ok_per_s: f64, elapsed: Duration) -> PhaseFigures {
        let ms = |us: u64| us as f64 / 1000.0;
        let legs = self
            .legs
            .iter()
            .map(|(leg, h)| {
                let q = |p: f64| ms(h.value_at_quantile(p));
                let quantiles = Quantiles {
                    count: h.len(),
                    p50: q(0.5),
                    p90: q(0.9),
                    p99: q(0.99),
                    p999: q(0.999),
                    max: ms(h.max()),
                };
                (*leg, quantiles)
            })
            .collect();
        PhaseFigures {
            started: self.started,
            ok,
            ok_total: self.ok_total,
            ok_per_s,
            failures: self.failures.clone(),
            legs,
            elapsed,
        }
    }

    fn progress(&self, label: &str, since: Duration, outstanding: usize) {
        eprintln!(
            "    [{:>5.1}s] {label}: started {}, ok {}, not ok {}, outstanding {outstanding}",
            since.as_secs_f64(),
            self.started,
            self.ok_total,
            self.failures.values().sum::<u64>(),
        );
    }
}

fn new_histogram() -> Histogram<u64> {
    // Infallible: 3 significant digits is within hdrhistogram's 0..=5.
    Histogram::new(3).expect("3 significant digits")
}

/// Offers `op(k, due)` at `rate` per second for `duration`; see the module
/// docs. Waits for the outstanding operations (each at most
/// [`OP_TIMEOUT`]) before returning.
pub async fn open_loop<F, Fut>(
    label: &str,
    rate: f64,
    duration: Duration,
    warmup_share: f64,
    mut op: F,
) -> PhaseFigures
where
    F: FnMut(u64, Instant) -> Fut,
    Fut: Future<Output = Sample> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut tally = Tally::new(Window::steady(duration, warmup_share));
    let start = Instant::now();
    let due = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
    let mut running: JoinSet<(Instant, Sample)> = JoinSet::new();
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut k = 0u64;
    loop {
        let next = (k < total).then(|| due(k));
        if next.is_none() && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let ended = start.elapsed();
                // A panicked operation is a bug of the load test: count it.
                let (at, sample) = joined.unwrap_or((start, Sample::failed("panicked")));
                tally.record(at.saturating_duration_since(start), ended, &sample);
            }
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                while k < total && due(k) <= now {
                    let at = due(k);
                    tally.started();
                    if running.len() >= MAX_OUTSTANDING {
                        let offset = at.saturating_duration_since(start);
                        tally.record(offset, offset, &Sample::failed("generator_backlog"));
                    } else {
                        let fut = op(k, at);
                        running.spawn(async move {
                            let sample = tokio::time::timeout(OP_TIMEOUT, fut)
                                .await
                                .unwrap_or_else(|_| Sample::failed("timeout"));
                            (at, sample)
                        });
                    }
                    k += 1;
                }
            }
            _ = progress.tick() => tally.progress(label, start.elapsed(), running.len()),
        }
    }
    tally.open_loop_figures(duration)
}

/// Runs `op(k, started)` for `k` in `0..items`, `window` at a time, until
/// all are done or `limit` has passed (no new one starts after it).
pub async fn closed_loop<F, Fut>(
    label: &str,
    items: u64,
    window: usize,
    limit: Duration,
    mut op: F,
) -> PhaseFigures
where
    F: FnMut(u64, Instant) -> Fut,
    Fut: Future<Output = Sample> + Send + 'static,
{
    // Everything counts: the window is the whole phase.
    let mut tally = Tally::new(Window {
        start: Duration::ZERO,
        end: Duration::MAX,
    });
    let start = Instant::now();
    let mut running: JoinSet<(Instant, Sample)> = JoinSet::new();
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut k = 0u64;
    loop {
        while running.len() < window.max(1) && k < items && start.elapsed() < limit {
            let at = Instant::now();
            tally.started();
            let fut = op(k, at);
            running.spawn(async move {
                let sample = tokio::time::timeout(OP_TIMEOUT, fut)
                    .await
                    .unwrap_or_else(|_| Sample::failed("timeout"));
                (at, sample)
            });
            k += 1;
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next() => {
                let (at, sample) = joined.unwrap_or((start, Sample::failed("panicked")));
                tally.record(at.saturating_duration_since(start), start.elapsed(), &sample);
            }
            _ = progress.tick() => tally.progress(label, start.elapsed(), running.len()),
        }
    }
    tally.closed_loop_figures(start.elapsed())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn latencies_count_only_operations_due_in_the_window_and_the_rate_those_ending_in_it() {
        let mut t = Tally::new(Window::steady(s(10.0), 0.2));
        let ok = |ms: u64| Sample::ok(vec![(Leg::Heartbeat, Duration::from_millis(ms))]);
        // Due in the warm-up, ends after it: counts for the rate only.
        t.record(s(1.0), s(2.5), &ok(1500));
        // Due and ended in the window.
        for ms in [10, 20, 30, 40] {
            t.record(s(5.0), s(5.0) + Duration::from_millis(ms), &ok(ms));
        }
        // Ends after generation stopped (the drain): latency yes, rate no.
        t.record(s(9.9), s(10.5), &ok(600));
        t.record(s(6.0), s(6.1), &Sample::failed("rate_limited"));
        let f = t.open_loop_figures(s(10.0));
        assert_eq!(f.ok, 5);
        assert!((f.ok_per_s - 5.0 / 8.0).abs() < 1e-9, "{}", f.ok_per_s);
        let q = f.leg(Leg::Heartbeat).unwrap();
        assert_eq!(q.count, 5);
        assert!((q.p50 - 30.0).abs() < 0.1, "{q:?}");
        assert!((q.max - 600.0).abs() < 1.0, "{q:?}");
        assert_eq!(f.failures.get("rate_limited"), Some(&1));
        assert_eq!(f.failed(), 1);
    }

    #[test]
    fn a_closed_loop_counts_everything_over_its_length() {
        let mut t = Tally::new(Window {
            start: Duration::ZERO,
            end: Duration::MAX,
        });
        for i in 0..100 {
            t.started();
            t.record(
                s(i as f64 / 100.0),
                s(i as f64 / 100.0 + 0.01),
                &Sample::ok(vec![]),
            );
        }
        let f = t.closed_loop_figures(s(2.0));
        assert_eq!((f.started, f.ok), (100, 100));
        assert!((f.ok_per_s - 50.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn the_open_loop_starts_operations_on_time_and_measures_from_their_due_time() {
        // Every operation takes 20 ms; 200/s for 0.5 s is 100 of them.
        let f = open_loop("test", 200.0, s(0.5), 0.0, |_, due| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Sample::ok(vec![(Leg::Heartbeat, due.elapsed())])
        })
        .await;
        assert_eq!(f.started, 100);
        assert_eq!(f.ok_total, 100);
        assert!(
            f.ok < 100,
            "those ending after generation stopped are not in the rate"
        );
        let q = f.leg(Leg::Heartbeat).unwrap();
        assert_eq!(q.count, 100);
        assert!(q.p50 >= 20.0, "measured from the due time: {q:?}");
    }

    #[tokio::test]
    async fn the_closed_loop_keeps_its_window_full_and_counts_failures() {
        let f = closed_loop("test", 50, 5, s(30.0), |k, _| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if k % 10 == 0 {
                Sample::failed("denied")
            } else {
                Sample::ok(vec![])
            }
        })
        .await;
        assert_eq!((f.started, f.ok, f.failed()), (50, 45, 5));
        assert!(f.ok_per_s > 0.0);
    }
}
