//! `loadtest twofa`: 2FA unlocks against a real gateway, beside heartbeats
//! on the same locks, the same OSCORE-protected CoAP path and the same
//! gateway process as the baseline.
//!
//! Each run: a fresh database; a fleet of `--people` INB1-2FA locks on CoAP
//! imported; an SMS provider stand-in started ([`device_sim::phone::SmsInbox`],
//! a real HTTP server) and `gateway serve --notifier webhook` pointed at it;
//! one person per lock set up through the dashboard's MQTT command API as a
//! dashboard would (mobile set and verified, passcode generated, a grant
//! for their lock); then the simulator's locks, told what to type, in four
//! phases:
//!
//! 1. **baseline**: heartbeats offered open-loop at `--rate` for
//!    `--duration` (round the fleet);
//! 2. **challenges**: whole 2FA unlocks offered open-loop at `--rate`: the
//!    passcode typed, the OTP taken from the phone's inbox, the OTP typed.
//!    The challenge latency is from the passcode's due time to the SMS
//!    provider reading the gateway's webhook request (lock request to
//!    notifier call);
//! 3. **heartbeat throughput**: heartbeats with `--window` outstanding for
//!    `--duration`: the rate this path sustains;
//! 4. **verification throughput**: a challenge opened for every person
//!    (`--window` outstanding), then every OTP typed (`--window`
//!    outstanding): verifications per second.
//!
//! After the run the database is checked: every unlock the locks were
//! answered `allowed` is one allowed challenge and one `allowed` entry of
//! the 2FA log. Runs are repeated (`--runs`) and medians reported.
//!
//! Each person gets at most 3 challenges per run (2 at the defaults in
//! phase 2, one in phase 4), within the gateway's 5 per user per 15
//! minutes and 10 passcode entries per lock per minute, so no answer is
//! `rate_limited` by design: any that is shows as a failure.

mod drive;
mod report;

pub use drive::{Leg, PhaseFigures, Quantiles, Sample};

use crate::cli::{parse_duration, EngineChoice, DEFAULT_WARMUP_SHARE};
use crate::dashboard::{Command, Dashboard};
use crate::database::{self, Engine, FreshDatabase, DEFAULT_POSTGRES_URL};
use crate::error::{LoadtestError, Result};
use crate::gateway::{self, Gateway};
use crate::{machine, procfs, prom, workload};
use device_sim::control::{ControlError, LockHandle};
use device_sim::fleet::Fleet;
use device_sim::phone::SmsInbox;
use device_sim::run::SimConfig;
use device_sim::Reporting;
use drive::{closed_loop, open_loop};
use schemas::twofa::TwoFactorResult;
use schemas::LockModel;
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Challenges one user may start in 15 minutes (the gateway's default).
pub const USER_CHALLENGES_PER_15_MIN: u64 = 5;
/// Challenges each person gets in phase 4.
const THROUGHPUT_CHALLENGES: u64 = 1;
/// How long a person waits for the OTP: as the simulator's people.
pub const OTP_WAIT: Duration = device_sim::twofa::DEFAULT_OTP_TIMEOUT;
/// Dashboard commands outstanding while people are set up.
pub const SETUP_WINDOW: usize = 64;

/// Options of `loadtest twofa`.
#[derive(clap::Args, Debug, Clone)]
pub struct TwoFactorArgs {
    /// Storage engine
    #[arg(long, value_enum, default_value = "sqlite")]
    pub engine: EngineChoice,
    /// Runs (each: a fresh database and gateway, all four phases)
    #[arg(long, default_value_t = 2)]
    pub runs: u32,
    /// Offered 2FA unlocks (challenges) per second in the latency phase, and
    /// heartbeats per second in its baseline
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long each open-loop phase offers load, and the longest a
    /// throughput phase runs
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// People with 2FA access, one INB1-2FA lock each (each may start 5
    /// challenges per 15 minutes: --rate x --duration / --people must stay
    /// at most 4)
    #[arg(long, default_value_t = 10_000)]
    pub people: usize,
    /// Operations outstanding in the throughput phases
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Share of each open-loop phase not counted (warm-up), 0 to 0.9
    #[arg(long, default_value_t = DEFAULT_WARMUP_SHARE)]
    pub warmup_share: f64,
    /// The gateway binary [default: `gateway` beside this executable]
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Admin URL of PostgreSQL; each run creates and drops its own database there
    #[arg(long, default_value = DEFAULT_POSTGRES_URL)]
    pub postgres_url: String,
    /// Seed of the fleet
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl TwoFactorArgs {
    /// The engine, or what is wrong with the options.
    pub fn validate(&self) -> Result<Engine> {
        let bad = |s: String| Err(LoadtestError::InvalidOption(s));
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad(format!(
                "--rate must be a positive number, got {}",
                self.rate
            ));
        }
        if self.runs == 0 || self.people == 0 || self.window == 0 || self.duration.is_zero() {
            return bad("--runs, --people, --window and --duration must be above zero".into());
        }
        if !(0.0..=crate::cli::MAX_WARMUP_SHARE).contains(&self.warmup_share) {
            return bad(format!(
                "--warmup-share must be between 0 and {}, got {}",
                crate::cli::MAX_WARMUP_SHARE,
                self.warmup_share
            ));
        }
        let per_person = self.challenges_per_person();
        if per_person + THROUGHPUT_CHALLENGES > USER_CHALLENGES_PER_15_MIN {
            return bad(format!(
                "--rate {} for {} s gives each of --people {} {per_person} challenges, and the \
                 throughput phase one more: over the gateway's {USER_CHALLENGES_PER_15_MIN} per user \
                 per 15 minutes. Raise --people to at least {}",
                self.rate,
                self.duration.as_secs_f64(),
                self.people,
                self.min_people()
            ));
        }
        let engine = match self.engine {
            EngineChoice::Sqlite => Engine::Sqlite,
            EngineChoice::Postgres => Engine::Postgres,
            EngineChoice::Both => {
                return bad("--engine takes sqlite or postgres here, one per invocation".into())
            }
        };
        if engine == Engine::Postgres && !database::is_postgres_url(&self.postgres_url) {
            return bad(format!(
                "--postgres-url must start with postgres:// or postgresql://, got {}",
                database::redact(&self.postgres_url)
            ));
        }
        Ok(engine)
    }

    /// Unlocks offered in the latency phase.
    fn offered(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }

    /// The most challenges one person gets in the latency phase (round robin).
    fn challenges_per_person(&self) -> u64 {
        self.offered().div_ceil(self.people as u64)
    }

    fn min_people(&self) -> u64 {
        self.offered()
            .div_ceil(USER_CHALLENGES_PER_15_MIN - THROUGHPUT_CHALLENGES)
    }
}

/// One person at their lock, as the locks are told to type.
struct Person {
    mobile: String,
    passcode: Zeroizing<String>,
    lock: LockHandle,
}

/// A challenge opened for the verification phase: the person, the
/// challenge id and its OTP.
type Opened = (usize, u64, Zeroizing<String>);

/// The figures of one run.
#[derive(Clone, Debug, Default)]
pub struct RunFigures {
    pub baseline: PhaseFigures,
    pub challenges: PhaseFigures,
    pub heartbeat_throughput: PhaseFigures,
    pub opened: PhaseFigures,
    pub verification: PhaseFigures,
    /// Gateway CPU per operation in phases 1 and 2, milliseconds.
    pub cpu_ms_per_heartbeat: f64,
    pub cpu_ms_per_unlock: f64,
    /// The same for this process: the simulated locks, phones and dashboard.
    pub sim_cpu_ms_per_heartbeat: f64,
    pub sim_cpu_ms_per_unlock: f64,
    pub gateway_rss_mib: f64,
    /// The gateway's own mean Argon2id time per passcode, milliseconds.
    pub mean_hash_ms: Option<f64>,
    /// The gateway's mean webhook call, milliseconds.
    pub mean_notifier_ms: Option<f64>,
    pub setup: Duration,
    /// Allowed answers the locks got; allowed challenges and 2FA log
    /// entries in the database afterwards.
    pub allowed_answers: u64,
    pub allowed_in_db: i64,
    pub allowed_logged: i64,
    pub gateway_warnings: u64,
    pub gateway_errors: u64,
}

/// Runs `loadtest twofa` and returns the Markdown report.
pub async fn run(args: &TwoFactorArgs, command_line: String) -> Result<String> {
    let engine = args.validate()?;
    let bin = gateway::locate(args.gateway_bin.as_deref())?;
    let scratch = tempfile::Builder::new()
        .prefix("loadtest_twofa_")
        .tempdir()
        .map_err(|e| LoadtestError::io("create a scratch directory", e))?;
    let fleet = twofa_fleet(args.people, args.seed)?;
    let fleet_file = scratch.path().join("fleet.csv");
    workload::write_fleet(&fleet, &fleet_file)?;
    let postgres_version = match engine {
        Engine::Postgres => Some(database::postgres_version(&args.postgres_url).await?),
        Engine::Sqlite => None,
    };
    eprintln!(
        "loadtest twofa: {} people at {} INB1-2FA locks, {:.0}/s for {} s, window {}, {} runs, {engine}",
        args.people,
        args.people,
        args.rate,
        args.duration.as_secs_f64(),
        args.window,
        args.runs
    );
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        eprintln!("  run {n}/{}", args.runs);
        let db = FreshDatabase::create(engine, scratch.path(), &args.postgres_url, n).await?;
        let cwd = scratch.path().join(format!("run_{n}"));
        let result = match std::fs::create_dir_all(&cwd) {
            Ok(()) => one_run(args, &bin, &cwd, &fleet, &fleet_file, db.url()).await,
            Err(e) => Err(LoadtestError::io("create a run directory", e)),
        };
        let figures = db.remove_after(result).await?;
        eprintln!("{}", report::run_line(&figures));
        runs.push(figures);
    }
    let _ = scratch.close();
    Ok(report::markdown(
        &command_line,
        &machine::Machine::detect(),
        postgres_version.as_deref(),
        args,
        engine,
        &runs,
    ))
}

/// `people` INB1-2FA locks on CoAP (hourly heartbeats), the fleet's orgs.
fn twofa_fleet(people: usize, seed: u64) -> Result<Fleet> {
    let mut fleet = workload::heartbeat_heavy_fleet(people, seed)?;
    for lock in &mut fleet.locks {
        lock.model = LockModel::Inb1TwoFactor;
    }
    Ok(fleet)
}

async fn one_run(
    args: &TwoFactorArgs,
    bin: &std::path::Path,
    cwd: &std::path::Path,
    fleet: &Fleet,
    fleet_file: &std::path::Path,
    url: &str,
) -> Result<RunFigures> {
    gateway::import(bin, cwd, fleet_file, url).await?;
    let inbox = SmsInbox::start(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| LoadtestError::io("start the SMS provider stand-in", e))?;
    let serve_args = [
        "--notifier".to_string(),
        "webhook".to_string(),
        "--sms-webhook-url".to_string(),
        inbox.url(),
    ];
    let gw = Gateway::start(bin, cwd, url, &serve_args).await?;
    // On error `gw` is dropped, which kills the process.
    let mut figures = measure(args, fleet, &gw, &inbox).await?;
    let log = gw.stop().await?;
    figures.gateway_warnings = log.warnings;
    figures.gateway_errors = log.errors;
    for line in &log.samples {
        eprintln!("    gateway: {line}");
    }
    figures.allowed_in_db = database::scalar(
        url,
        "SELECT count(*) FROM tfa_challenges WHERE state = 'allowed'",
    )
    .await?;
    figures.allowed_logged = database::scalar(
        url,
        "SELECT count(*) FROM tfa_log WHERE outcome = 'allowed'",
    )
    .await?;
    Ok(figures)
}

async fn measure(
    args: &TwoFactorArgs,
    fleet: &Fleet,
    gw: &Gateway,
    inbox: &SmsInbox,
) -> Result<RunFigures> {
    let started = Instant::now();
    let secrets = set_up_people(fleet, gw).await?;
    let setup = started.elapsed();
    eprintln!(
        "    {} people set up through the command API in {:.1} s",
        secrets.len(),
        setup.as_secs_f64()
    );
    let sim = device_sim::run::start(
        SimConfig {
            gateway: gw.listeners.coap.ip().to_string(),
            coap_port: gw.listeners.coap.port(),
            mqtt_port: gw.listeners.mqtt.port(),
            speedup: 1.0,
            // The locks report and type only when told.
            reporting: Reporting::OnDemand,
            visits_per_hour: Some(0.0),
            seed: args.seed,
            security: true,
            ..SimConfig::default()
        },
        fleet.clone(),
    )
    .await?;
    let mut people = Vec::with_capacity(secrets.len());
    for (lock, (mobile, passcode)) in fleet.locks.iter().zip(secrets) {
        let handle = sim.lock(&lock.id).ok_or_else(|| {
            LoadtestError::Fleet(format!("the simulator has no lock {}", lock.id))
        })?;
        people.push(Person {
            mobile,
            passcode,
            lock: handle,
        });
    }
    let people = Arc::new(people);
    let result = phases(args, gw, inbox, &people).await;
    sim.stop();
    let report = sim.finish().await;
    let mut figures = result?;
    report?;
    figures.setup = setup;
    Ok(figures)
}

/// Sets every lock's person up as the dashboard would; returns each one's
/// mobile and passcode, in the order of the fleet's locks.
async fn set_up_people(fleet: &Fleet, gw: &Gateway) -> Result<Vec<(String, Zeroizing<String>)>> {
    let mut dashboard = Dashboard::connect(
        gw.listeners.mqtt,
        gateway::LOADTEST_BACKEND_PASSWORD,
        SETUP_WINDOW,
    )
    .await?;
    let user = |i: usize| format!("lt-user-{i}");
    let mobile = |i: usize| format!("+659{i:07}");
    // One kind at a time: commands in flight together may be taken in any
    // order, and each of these needs the one before for the same user.
    let each = |f: &dyn Fn(usize) -> serde_json::Value| -> Vec<Command> {
        fleet
            .locks
            .iter()
            .enumerate()
            .map(|(i, lock)| Command {
                org: lock.org.clone(),
                department: None,
                command: f(i),
            })
            .collect()
    };
    let steps: [(&str, Vec<Command>); 3] = [
        (
            "mobiles",
            each(&|i| json!({"type": "set_user_mobile", "user_id": user(i), "mobile": mobile(i)})),
        ),
        (
            "mobiles verified",
            each(
                &|i| json!({"type": "verify_user_mobile", "user_id": user(i), "mobile": mobile(i)}),
            ),
        ),
        (
            "passcodes",
            each(&|i| json!({"type": "generate_2fa_passcode", "user_id": user(i)})),
        ),
    ];
    let mut answers = Vec::new();
    for (what, commands) in &steps {
        answers = dashboard.run_all(what, commands, SETUP_WINDOW).await?;
    }
    let mut secrets = Vec::with_capacity(fleet.locks.len());
    for (i, answer) in answers.iter().enumerate() {
        let passcode = answer["result"]["passcode"].as_str().ok_or_else(|| {
            LoadtestError::Fleet(format!(
                "generate_2fa_passcode for {} answered without a passcode",
                user(i)
            ))
        })?;
        secrets.push((mobile(i), Zeroizing::new(passcode.to_string())));
    }
    let mut grants = Vec::with_capacity(fleet.locks.len());
    for (i, lock) in fleet.locks.iter().enumerate() {
        grants.push(Command {
            org: lock.org.clone(),
            department: lock.departments.first().cloned(),
            command: json!({
                "type": "grant_2fa", "user_id": user(i), "lock_id": lock.id,
                "start": local_time(&lock.time_zone, -3600)?,
                "end": local_time(&lock.time_zone, 7 * 24 * 3600)?,
            }),
        });
    }
    dashboard.run_all("grants", &grants, SETUP_WINDOW).await?;
    dashboard.close().await;
    Ok(secrets)
}

/// Wall-clock time in `zone`, `offset_s` from now, as a grant names it.
fn local_time(zone: &str, offset_s: i64) -> Result<String> {
    let tz = jiff::tz::TimeZone::get(zone)
        .map_err(|e| LoadtestError::Fleet(format!("time zone {zone}: {e}")))?;
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(offset_s);
    Ok(at
        .to_zoned_datetime(tz)
        .datetime()
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string())
}

async fn phases(
    args: &TwoFactorArgs,
    gw: &Gateway,
    inbox: &SmsInbox,
    people: &Arc<Vec<Person>>,
) -> Result<RunFigures> {
    let ticks = procfs::clock_ticks();
    let pid = gw.pid().to_string();
    let cpu = || procfs::read(&pid, ticks).map(|u| u.cpu);
    let sim_cpu = || procfs::read("self", ticks).map(|u| u.cpu);
    let n = people.len() as u64;
    let mut f = RunFigures::default();

    let (before, sim_before) = (cpu()?, sim_cpu()?);
    f.baseline = open_loop(
        "baseline: heartbeats",
        args.rate,
        args.duration,
        args.warmup_share,
        {
            let people = people.clone();
            move |k, due| heartbeat(people.clone(), (k % n) as usize, due)
        },
    )
    .await;
    f.cpu_ms_per_heartbeat = per_op_ms(cpu()?.saturating_sub(before), f.baseline.started);
    f.sim_cpu_ms_per_heartbeat =
        per_op_ms(sim_cpu()?.saturating_sub(sim_before), f.baseline.started);

    let (before, sim_before) = (cpu()?, sim_cpu()?);
    f.challenges = open_loop(
        "2FA unlocks",
        args.rate,
        args.duration,
        args.warmup_share,
        {
            let (people, inbox) = (people.clone(), inbox.clone());
            move |k, due| unlock(people.clone(), inbox.clone(), (k % n) as usize, due)
        },
    )
    .await;
    f.cpu_ms_per_unlock = per_op_ms(cpu()?.saturating_sub(before), f.challenges.started);
    f.sim_cpu_ms_per_unlock =
        per_op_ms(sim_cpu()?.saturating_sub(sim_before), f.challenges.started);

    f.heartbeat_throughput = closed_loop(
        "heartbeat throughput",
        u64::MAX,
        args.window,
        args.duration,
        {
            let people = people.clone();
            move |k, due| heartbeat(people.clone(), (k % n) as usize, due)
        },
    )
    .await;

    let opened: Arc<Mutex<Vec<Opened>>> = Arc::default();
    f.opened = closed_loop(
        "challenges for verification",
        n,
        args.window,
        args.duration,
        {
            let (people, inbox, opened) = (people.clone(), inbox.clone(), opened.clone());
            move |k, due| {
                challenge(
                    people.clone(),
                    inbox.clone(),
                    opened.clone(),
                    k as usize,
                    due,
                )
            }
        },
    )
    .await;
    let opened: Arc<Vec<_>> = Arc::new(std::mem::take(
        &mut *opened.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    f.verification = closed_loop(
        "verifications",
        opened.len() as u64,
        args.window,
        args.duration,
        {
            let (people, opened) = (people.clone(), opened.clone());
            move |k, due| verify(people.clone(), opened.clone(), k as usize, due)
        },
    )
    .await;
    f.allowed_answers = f.challenges.ok_total + f.verification.ok_total;

    let (_, metrics) = crate::http::get(gw.listeners.http, "/metrics").await?;
    f.mean_hash_ms =
        prom::histogram_mean(&metrics, "lockfleet_twofa_passcode_hash_seconds").map(|s| s * 1000.0);
    f.mean_notifier_ms =
        prom::histogram_mean(&metrics, "lockfleet_twofa_notifier_seconds").map(|s| s * 1000.0);
    f.gateway_rss_mib = procfs::read(&pid, ticks)?.peak_rss_bytes as f64 / (1024.0 * 1024.0);
    Ok(f)
}

fn per_op_ms(cpu: Duration, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        cpu.as_secs_f64() * 1000.0 / ops as f64
    }
}

/// A short name for why a lock's request failed.
fn control_failure(e: &ControlError) -> &'static str {
    match e {
        ControlError::GaveUp { .. } => "gave_up",
        ControlError::Refused { code, .. } | ControlError::TwoFactorRefused { code, .. } => {
            match code.as_str() {
                "5.03" => "refused_5.03_busy",
                "4.01" => "refused_4.01_unauthorized",
                "4.00" => "refused_4.00_bad_request",
                "5.00" => "refused_5.00_internal",
                _ => "refused_other",
            }
        }
        ControlError::KeypadBusy => "keypad_busy",
        ControlError::Ended | ControlError::NotRunning => "simulator_ended",
        _ => "lock_error",
    }
}

async fn heartbeat(people: Arc<Vec<Person>>, i: usize, due: Instant) -> Sample {
    match people[i].lock.heartbeat_now().await {
        Ok(_) => Sample::ok(vec![(Leg::Heartbeat, due.elapsed())]),
        Err(e) => Sample::failed(control_failure(&e)),
    }
}

/// The passcode typed at person `i`'s lock and the OTP taken from the
/// inbox: the challenge id and the OTP, or why not.
async fn open_challenge(
    person: &Person,
    inbox: &SmsInbox,
    due: Instant,
    legs: &mut Vec<(Leg, Duration)>,
) -> Result<(u64, Zeroizing<String>), &'static str> {
    let answer = person
        .lock
        .enter_2fa_passcode(&person.passcode)
        .await
        .map_err(|e| control_failure(&e))?;
    legs.push((Leg::PasscodeAnswer, due.elapsed()));
    let challenge = match (answer.result, answer.challenge) {
        (TwoFactorResult::OtpSent, Some(c)) => c,
        (result, _) => return Err(result.as_str()),
    };
    let sms = inbox
        .wait_challenge_otp(&person.mobile, challenge, due, OTP_WAIT)
        .await
        .ok_or("otp_never_arrived")?;
    legs.push((Leg::Challenge, sms.at.saturating_duration_since(due)));
    Ok((challenge, sms.otp))
}

async fn unlock(people: Arc<Vec<Person>>, inbox: SmsInbox, i: usize, due: Instant) -> Sample {
    let person = &people[i];
    let mut legs = Vec::with_capacity(4);
    let (challenge, otp) = match open_challenge(person, &inbox, due, &mut legs).await {
        Ok(c) => c,
        Err(why) => return Sample::failed(why),
    };
    let typed = Instant::now();
    match person.lock.enter_otp(challenge, &otp).await {
        Ok(a) if a.result == TwoFactorResult::Allowed => {
            legs.push((Leg::Verification, typed.elapsed()));
            legs.push((Leg::Unlock, due.elapsed()));
            Sample::ok(legs)
        }
        Ok(a) => Sample::failed(a.result.as_str()),
        Err(e) => Sample::failed(control_failure(&e)),
    }
}

async fn challenge(
    people: Arc<Vec<Person>>,
    inbox: SmsInbox,
    opened: Arc<Mutex<Vec<Opened>>>,
    i: usize,
    due: Instant,
) -> Sample {
    let mut legs = Vec::with_capacity(2);
    match open_challenge(&people[i], &inbox, due, &mut legs).await {
        Ok((challenge, otp)) => {
            opened
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((i, challenge, otp));
            Sample::ok(legs)
        }
        Err(why) => Sample::failed(why),
    }
}

async fn verify(
    people: Arc<Vec<Person>>,
    opened: Arc<Vec<Opened>>,
    k: usize,
    due: Instant,
) -> Sample {
    let (i, challenge, otp) = &opened[k];
    match people[*i].lock.enter_otp(*challenge, otp).await {
        Ok(a) if a.result == TwoFactorResult::Allowed => {
            Sample::ok(vec![(Leg::Verification, due.elapsed())])
        }
        Ok(a) => Sample::failed(a.result.as_str()),
        Err(e) => Sample::failed(control_failure(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as Sub};
    use clap::Parser;

    fn args(extra: &[&str]) -> TwoFactorArgs {
        let mut argv = vec!["loadtest", "twofa"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Sub::Twofa(a) => a,
            _ => unreachable!("parsed `twofa`"),
        }
    }

    #[test]
    fn defaults_offer_a_thousand_unlocks_a_second_within_the_users_limit() {
        let a = args(&[]);
        assert_eq!((a.rate, a.people, a.runs), (1000.0, 10_000, 2));
        assert_eq!(a.validate().unwrap(), Engine::Sqlite);
        assert_eq!(a.challenges_per_person(), 2);
    }

    #[test]
    fn too_few_people_for_the_rate_is_refused_with_the_number_needed() {
        let err = args(&["--people", "3000"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--people to at least 5000"), "{err}");
        for (argv, name) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--window", "0"][..], "--window"),
            (&["--engine", "both"][..], "--engine"),
            (&["--warmup-share", "0.95"][..], "--warmup-share"),
        ] {
            let err = args(argv).validate().unwrap_err().to_string();
            assert!(err.contains(name), "{argv:?}: {err}");
        }
    }

    #[test]
    fn grant_times_are_local_wall_clock_in_the_locks_zone() {
        let t = local_time("Asia/Singapore", 0).unwrap();
        assert_eq!(t.len(), "2026-11-24T10:00:00".len());
        assert!(jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M:%S", &t).is_ok());
        assert!(local_time("Not/AZone", 0).is_err());
    }

    #[test]
    fn the_fleet_is_all_2fa_locks_on_coap() {
        let f = twofa_fleet(50, 1).unwrap();
        assert_eq!(f.locks.len(), 50);
        assert!(f.locks.iter().all(|l| l.model == LockModel::Inb1TwoFactor
            && l.transport == schemas::event::Transport::Coap));
    }
}
