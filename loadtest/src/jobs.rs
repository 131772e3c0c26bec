//! `loadtest jobs`: durable job creations per second through the
//! dashboard's MQTT command API, beside a baseline measured in the same
//! run on the same path: `get_job` reads (the same broker, front, session,
//! JSON and answer, but no write and no fsync), so the ratio is the cost of
//! a durable, idempotent command.
//!
//! Each run: a fresh database, the fleet imported, `gateway serve` started,
//! one dashboard session (logged in with the generated backend password)
//! keeping `--window` commands outstanding for `--duration`, each answered
//! only after its transaction committed. Runs are repeated and medians
//! reported.

use crate::cli::parse_duration;
use crate::dashboard::{request, Dashboard, ANSWER_TIMEOUT};
use crate::database::{self, Engine, FreshDatabase, DEFAULT_POSTGRES_URL};
use crate::error::{LoadtestError, Result};
use crate::gateway::{self, Gateway};
use crate::workload;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `loadtest jobs`.
#[derive(clap::Args, Debug, Clone)]
pub struct JobsArgs {
    /// Storage engine
    #[arg(long, value_enum, default_value = "sqlite")]
    pub engine: crate::cli::EngineChoice,
    /// Runs (each: creations, then the read baseline)
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// How long each phase of a run sends commands
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Commands outstanding at once (the dashboard's pipeline depth)
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Locks in the fleet (each takes at most 199 PINs)
    #[arg(long, default_value_t = 5_000)]
    pub locks: usize,
    /// The gateway binary [default: `gateway` beside this executable]
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Admin URL of PostgreSQL; each run creates and drops its own database there
    #[arg(long, default_value = DEFAULT_POSTGRES_URL)]
    pub postgres_url: String,
}

/// One phase's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Phase {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    refused: u64,
}

/// Runs `loadtest jobs` and returns the Markdown report.
pub async fn run(args: &JobsArgs, command_line: String) -> Result<String> {
    if args.runs == 0 || args.window == 0 || args.locks == 0 || args.duration.is_zero() {
        return Err(LoadtestError::InvalidOption(
            "--runs, --window, --locks and --duration must be above zero".into(),
        ));
    }
    let engine = match args.engine {
        crate::cli::EngineChoice::Sqlite => Engine::Sqlite,
        crate::cli::EngineChoice::Postgres => Engine::Postgres,
        crate::cli::EngineChoice::Both => {
            return Err(LoadtestError::InvalidOption(
                "loadtest jobs measures one engine at a time: --engine sqlite or postgres".into(),
            ))
        }
    };
    if engine == Engine::Postgres && !database::is_postgres_url(&args.postgres_url) {
        return Err(LoadtestError::InvalidOption(format!(
            "--postgres-url must be a postgres:// URL, got {}",
            database::redact(&args.postgres_url)
        )));
    }
    let bin = gateway::locate(args.gateway_bin.as_deref())?;
    let scratch = tempfile::Builder::new()
        .prefix("loadtest_jobs_")
        .tempdir()
        .map_err(|e| LoadtestError::io("create a scratch directory", e))?;
    let fleet = workload::heartbeat_heavy_fleet(args.locks, 1)?;
    let fleet_file = scratch.path().join("fleet.csv");
    workload::write_fleet(&fleet, &fleet_file)?;
    let locks: Vec<(String, String, Option<String>)> = fleet
        .locks
        .iter()
        .filter(|l| l.departments.len() <= 1)
        .map(|l| (l.id.clone(), l.org.clone(), l.departments.first().cloned()))
        .collect();
    let mut creates = Vec::new();
    let mut reads = Vec::new();
    let mut checks = Vec::new();
    for n in 1..=args.runs {
        let db = FreshDatabase::create(engine, scratch.path(), &args.postgres_url, n).await?;
        // The database goes whatever happens in the run, errors included.
        let run = async {
            let cwd = scratch.path().join(format!("run_{n}"));
            std::fs::create_dir_all(&cwd)
                .map_err(|e| LoadtestError::io("create a run directory", e))?;
            gateway::import(&bin, &cwd, &fleet_file, db.url()).await?;
            let gw = Gateway::start(&bin, &cwd, db.url(), &[]).await?;
            let password = gateway::LOADTEST_BACKEND_PASSWORD.to_string();
            let mqtt = gw.listeners.mqtt;
            let (c, job_ids) =
                drive(mqtt, password.trim(), &locks, args, Mode::Create, &[]).await?;
            eprintln!(
                "run {n}/{}: {:.0} job creations/s (p50 {:.1} ms, p99 {:.1} ms, {} refused)",
                args.runs, c.per_s, c.p50_ms, c.p99_ms, c.refused
            );
            let (r, _) = drive(mqtt, password.trim(), &locks, args, Mode::Read, &job_ids).await?;
            eprintln!(
                "run {n}/{}: {:.0} get_job reads/s (p50 {:.1} ms, p99 {:.1} ms)",
                args.runs, r.per_s, r.p50_ms, r.p99_ms
            );
            gw.stop().await?;
            // With the gateway stopped: every creation answered `ok` is a job
            // row, and there is no other.
            let rows = database::column_i64(db.url(), "SELECT job_id FROM jobs").await?;
            let check = JobCheck::of(&job_ids, &rows);
            eprintln!("run {n}/{}: database check {}", args.runs, check.describe());
            Ok((c, r, check))
        }
        .await;
        let (c, r, check) = db.remove_after(run).await?;
        checks.push(check);
        creates.push(c);
        reads.push(r);
    }
    Ok(report(
        args,
        engine,
        &command_line,
        &creates,
        &reads,
        &checks,
    ))
}

/// After a run: the jobs the dashboard was answered `ok` for against the
/// rows of `jobs` (the run's database is fresh, so it holds only these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCheck {
    /// Creations answered `ok` (each with its job id).
    pub acked: u64,
    /// Rows of `jobs`.
    pub rows: u64,
    /// Acknowledged job ids with no row.
    pub missing: u64,
}

impl JobCheck {
    pub fn of(acked: &[(String, Option<String>, u64)], rows: &[i64]) -> JobCheck {
        let stored: std::collections::HashSet<i64> = rows.iter().copied().collect();
        JobCheck {
            acked: acked.len() as u64,
            rows: rows.len() as u64,
            missing: acked
                .iter()
                .filter(|(_, _, id)| i64::try_from(*id).map_or(true, |id| !stored.contains(&id)))
                .count() as u64,
        }
    }

    /// Every acknowledged job is there, and nothing else (every command
    /// had its own idempotency key and was answered).
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.rows == self.acked
    }

    pub fn describe(&self) -> String {
        if self.passed() {
            format!(
                "passed: {} of {} jobs",
                self.acked - self.missing,
                self.acked
            )
        } else {
            format!(
                "**FAILED**: {} acknowledged, {} missing, {} rows",
                self.acked, self.missing, self.rows
            )
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Read,
}

/// Keep `window` commands outstanding for `duration`; count answers.
async fn drive(
    mqtt: std::net::SocketAddr,
    password: &str,
    locks: &[(String, String, Option<String>)],
    args: &JobsArgs,
    mode: Mode,
    job_ids: &[(String, Option<String>, u64)],
) -> Result<(Phase, Vec<(String, Option<String>, u64)>)> {
    let mut dashboard = Dashboard::connect(mqtt, password, args.window).await?;
    let started = Instant::now();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut created = Vec::new();
    let mut refused = 0u64;
    let mut next = 0usize;
    let send = |n: usize| {
        let (lock, org, dept) = &locks[n % locks.len()];
        let corr = format!("c{n}");
        let command = match mode {
            Mode::Create => serde_json::json!({
                "type": "create_custom_pin", "lock_id": lock, "pin_name": format!("Guest {n}"),
                "pin": format!("{:08}", n % 100_000_000), "pin_type": "permanent",
                "start_s": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            }),
            Mode::Read => {
                let (_, _, id) = job_ids[n % job_ids.len().max(1)];
                serde_json::json!({"type": "get_job", "job_id": id})
            }
        };
        let (org, dept) = match mode {
            Mode::Create => (org.clone(), dept.clone()),
            Mode::Read => {
                let (o, d, _) = &job_ids[n % job_ids.len().max(1)];
                (o.clone(), d.clone())
            }
        };
        let key = format!("lt-{}-{n}", std::process::id());
        let body = request(&corr, &key, &org, dept.as_deref(), command);
        (corr, org, body)
    };
    if mode == Mode::Read && job_ids.is_empty() {
        dashboard.close().await;
        return Ok((Phase::default(), created));
    }
    let deadline = started + args.duration;
    loop {
        while sent.len() < args.window && Instant::now() < deadline {
            let (corr, org, body) = send(next);
            next += 1;
            dashboard.publish(&org, &body).await?;
            sent.insert(corr, Instant::now());
        }
        if sent.is_empty() {
            break;
        }
        let Some(v) = dashboard.answer(ANSWER_TIMEOUT).await else {
            return Err(LoadtestError::Fleet(format!(
                "{} commands were not answered within {} s",
                sent.len(),
                ANSWER_TIMEOUT.as_secs()
            )));
        };
        let Some(at) = v["correlation_id"].as_str().and_then(|c| sent.remove(c)) else {
            continue;
        };
        latencies_us.push(at.elapsed().as_micros() as u64);
        if v["status"] != "ok" {
            refused += 1;
        } else if let (Mode::Create, Some(job)) = (mode, v["result"]["job"].as_object()) {
            if let Some(id) = job.get("job_id").and_then(|i| i.as_u64()) {
                let org = job
                    .get("org")
                    .and_then(|o| o.as_str())
                    .unwrap_or_default()
                    .to_string();
                let dept = job
                    .get("department")
                    .and_then(|d| d.as_str())
                    .map(str::to_string);
                created.push((org, dept, id));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    dashboard.close().await;
    latencies_us.sort_unstable();
    let q = |p: f64| {
        latencies_us
            .get(((latencies_us.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Ok((
        Phase {
            per_s: (latencies_us.len() as u64 - refused) as f64 / elapsed,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            refused,
        },
        created,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn report(
    args: &JobsArgs,
    engine: Engine,
    command_line: &str,
    c: &[Phase],
    r: &[Phase],
    checks: &[JobCheck],
) -> String {
    let m = crate::machine::Machine::detect().summary();
    let cm = median(c.iter().map(|p| p.per_s).collect());
    let rm = median(r.iter().map(|p| p.per_s).collect());
    let mut out = String::new();
    out.push_str(&format!(
        "## Job creations through the dashboard API ({})\n\n`{command_line}`\n\nMachine: {m}. {} runs, {} per phase, {} commands outstanding, {} locks.\n\n",
        engine.as_str(),
        args.runs,
        humantime(args.duration),
        args.window,
        args.locks
    ));
    out.push_str("| run | create_custom_pin /s (durable) | p50 ms | p99 ms | refused | baseline get_job /s | p50 ms | p99 ms | database check |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (i, ((a, b), check)) in c.iter().zip(r).zip(checks).enumerate() {
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {:.0} | {:.1} | {:.1} | {} |\n",
            i + 1,
            a.per_s,
            a.p50_ms,
            a.p99_ms,
            a.refused,
            b.per_s,
            b.p50_ms,
            b.p99_ms,
            check.describe()
        ));
    }
    out.push_str(&format!(
        "\nMedian: {cm:.0} durable job creations/s; baseline {rm:.0} reads/s on the same path; ratio {:.2}.\n",
        if rm > 0.0 { cm / rm } else { 0.0 }
    ));
    out
}

fn humantime(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(ids: &[u64]) -> Vec<(String, Option<String>, u64)> {
        ids.iter().map(|&id| ("org-1".into(), None, id)).collect()
    }

    #[test]
    fn every_acknowledged_job_must_be_a_row_and_nothing_else() {
        let check = JobCheck::of(&acked(&[1, 2, 3]), &[3, 1, 2]);
        assert!(check.passed(), "{check:?}");
        assert_eq!(check.describe(), "passed: 3 of 3 jobs");

        let missing = JobCheck::of(&acked(&[1, 2, 3]), &[1, 3, 9]);
        assert_eq!((missing.missing, missing.rows), (1, 3));
        assert!(!missing.passed());
        assert!(
            missing.describe().contains("FAILED"),
            "{}",
            missing.describe()
        );

        // A row nobody was answered for: a creation committed twice, or
        // an answer lost.
        let extra = JobCheck::of(&acked(&[1, 2]), &[1, 2, 3]);
        assert_eq!(extra.missing, 0);
        assert!(!extra.passed());
    }
}
