//! `device-sim`: generate a fleet file, or make a fleet live against a gateway.
//! A run continues each device's seqs from the state file beside the fleet
//! file (`fleet.csv.state`) and leaves it current for the next run. Devices
//! speak the security profile (OSCORE, MQTT logins) with the pairing secrets
//! of the fleet file unless `--insecure` says the gateway runs with
//! `--insecure-dev`. With `--twofa-people`, 2FA people visit their INB1-2FA
//! locks and read their OTPs from an SMS inbox on `--sms-listen`.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use device_sim::fleet::{self, Fleet, FleetSpec};
use device_sim::net::NetFaults;
use device_sim::persist::StateOptions;
use device_sim::run::{self, RunReport, SimConfig};
use device_sim::state;
use device_sim::twofa::{self, InboxSource, TwoFactorSim};
use device_sim::{BleDelay, TwoFactorLeg};
use schemas::device::UplinkKind;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    version,
    about = "A simulated fleet of INB1 locks (CoAP, MQTT) and bridges (MQTT)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a fleet file (the CSV the gateway imports), with a random pairing
    /// secret per device: keep it as secret as the devices' keys.
    Fleet(FleetArgs),
    /// Make a fleet live against a gateway.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct FleetArgs {
    /// Number of locks, bridged ones included.
    #[arg(long, default_value_t = 1000)]
    locks: usize,
    /// Number of bridges (each links 1 or 2 locks).
    #[arg(long, default_value_t = 50)]
    bridges: usize,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Seed of everything but the pairing secrets, which always come from
    /// the operating system's randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of organisations.
    #[arg(long, default_value_t = 8)]
    orgs: usize,
    /// Share of INB1 locks on MQTT instead of CoAP.
    #[arg(long, default_value_t = 0.1)]
    mqtt_share: f64,
}

#[derive(Args)]
struct RunArgs {
    /// Fleet file to simulate.
    #[arg(long)]
    fleet: PathBuf,
    /// Gateway host or address.
    #[arg(long, default_value = "127.0.0.1")]
    gateway: String,
    #[arg(long, default_value_t = 5683)]
    coap_port: u16,
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// How much faster than real time the intervals run (600: a 24 h
    /// heartbeat every 144 s).
    #[arg(long, default_value_t = 600.0)]
    speedup: f64,
    /// Stop generating reports after this long (e.g. 60s, 5m, 1h); default:
    /// until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop each lock after this many reports.
    #[arg(long)]
    max_reports: Option<u32>,
    /// After generation stops, keep retrying unacknowledged reports this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    drain: Duration,
    /// Probability of dropping each datagram/publish (and CoAP response).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability of sending a datagram/publish twice.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// UDP sockets shared by the CoAP locks.
    #[arg(long, default_value_t = run::DEFAULT_SOCKETS)]
    sockets: usize,
    /// CoAP ACK_TIMEOUT in milliseconds.
    #[arg(long, default_value_t = 2000)]
    ack_timeout_ms: u64,
    /// How long an MQTT report waits for its answer before being resent.
    #[arg(long, default_value_t = 5000)]
    mqtt_ack_timeout_ms: u64,
    /// Write the acknowledged reports to this CSV file at the end.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Where each lock's next seq and event seq are kept between runs, so a
    /// second run is not taken for duplicates; default: the fleet file's
    /// path with `.state` appended.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Start every device at seq 1 whatever the state file holds (e.g. against
    /// a new gateway database), then overwrite it.
    #[arg(long)]
    fresh_state: bool,
    /// Talk to a gateway started with --insecure-dev: unprotected payloads,
    /// anonymous MQTT. Without it every report is OSCORE-protected and MQTT
    /// clients log in, as a gateway requires by default.
    #[arg(long)]
    insecure: bool,
    /// Chance (0 to 1) that a lock is hard reset just before a heartbeat:
    /// its PINs are wiped and jobs issued before the reset fail.
    #[arg(long, default_value_t = 0.0)]
    hard_reset_chance: f64,
    /// Every lock sends its first heartbeat at once, as after a power cut
    /// (default: each at a random moment of its interval).
    #[arg(long)]
    power_on_together: bool,
    /// How long a bridge's Bluetooth link takes to carry out one of the
    /// gateway's commands (`br/{bridge}/cmd`) at a lock, MIN..MAX in
    /// milliseconds (real time), drawn per command from the run's seed.
    #[arg(long, value_name = "MIN..MAX", default_value = "200..1500", value_parser = BleDelay::parse_ms)]
    ble_delay_ms: BleDelay,
    /// 2FA people who visit their INB1-2FA (CoAP) locks: CSV with the header
    /// `user_id,mobile,passcode,locks`, locks separated by `;`. It holds
    /// their passcodes: keep it as secret as the fleet file.
    #[arg(long, value_name = "FILE", requires = "sms_listen")]
    twofa_people: Option<PathBuf>,
    /// Where the people's SMS inbox listens (e.g. 127.0.0.1:8025); point
    /// the gateway's SMS webhook at http://ADDR/sms.
    #[arg(long, value_name = "ADDR", requires = "twofa_people")]
    sms_listen: Option<SocketAddr>,
    /// Mean time between two visits of one 2FA person (simulated, sped up
    /// like the intervals).
    #[arg(long, value_parser = parse_duration, default_value = "8h")]
    twofa_interval: Duration,
    /// Chance (0 to 1) that a 2FA visit starts with a wrong passcode.
    #[arg(long, default_value_t = twofa::DEFAULT_P_WRONG)]
    twofa_wrong_passcode: f64,
    /// Chance (0 to 1) that a 2FA visit types a wrong OTP before the right one.
    #[arg(long, default_value_t = twofa::DEFAULT_P_WRONG)]
    twofa_wrong_otp: f64,
    /// How long a 2FA person waits for the OTP to reach their phone (real time).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    otp_timeout: Duration,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Fleet(args) => write_fleet(args),
        Command::Run(args) => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
            rt.block_on(run_fleet(*args))
        }
    }
}

fn write_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let spec = FleetSpec {
        locks: args.locks,
        bridges: args.bridges,
        orgs: args.orgs,
        mqtt_share: args.mqtt_share,
        seed: args.seed,
    };
    let fleet = fleet::generate(&spec)?;
    fleet
        .write_csv(&args.out)
        .with_context(|| format!("cannot write the fleet file {}", args.out.display()))?;
    eprintln!(
        "wrote {}: {} locks ({} coap, {} mqtt, {} bridged), {} bridges, each with a random pairing secret (keep the file secret)",
        args.out.display(),
        fleet.locks.len(),
        fleet.count_by_transport(schemas::event::Transport::Coap),
        fleet.count_by_transport(schemas::event::Transport::Mqtt),
        fleet.count_by_transport(schemas::event::Transport::Bridge),
        fleet.bridges.len()
    );
    Ok(())
}

async fn run_fleet(args: RunArgs) -> anyhow::Result<()> {
    let fleet = Fleet::read_csv(&args.fleet)
        .with_context(|| format!("cannot read the fleet file {}", args.fleet.display()))?;
    let cancel = CancellationToken::new();
    let state_path = args
        .state
        .unwrap_or_else(|| state::default_path(&args.fleet));
    let twofa = match (&args.twofa_people, args.sms_listen) {
        (Some(path), Some(addr)) => Some(TwoFactorSim {
            people: twofa::read_people(path)?,
            mean_interval: Some(args.twofa_interval),
            p_wrong_passcode: args.twofa_wrong_passcode,
            p_wrong_otp: args.twofa_wrong_otp,
            otp_timeout: args.otp_timeout,
            inbox: InboxSource::Listen(addr),
        }),
        _ => None,
    };
    let config = SimConfig {
        gateway: args.gateway,
        coap_port: args.coap_port,
        mqtt_port: args.mqtt_port,
        speedup: args.speedup,
        duration: args.duration,
        max_reports_per_device: args.max_reports,
        drain_timeout: args.drain,
        faults: NetFaults::new(args.loss, args.dup)?,
        seed: args.seed,
        sockets: args.sockets,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms),
        mqtt_ack_timeout: Duration::from_millis(args.mqtt_ack_timeout_ms),
        progress: (!args.quiet).then_some(PROGRESS_EVERY),
        cancel: cancel.clone(),
        state: Some(StateOptions {
            path: state_path.clone(),
            fresh: args.fresh_state,
        }),
        security: !args.insecure,
        hard_reset_chance: args.hard_reset_chance,
        power_on_together: args.power_on_together,
        ble_delay: args.ble_delay_ms,
        twofa,
        ..SimConfig::default()
    };
    if args.insecure {
        eprintln!("insecure: reports are not protected and MQTT clients log in anonymously; only a gateway started with --insecure-dev accepts them");
    }
    tokio::spawn(async move {
        // First Ctrl-C: stop generating, drain, disconnect cleanly, save the
        // exact counters. Second: quit now, leaving the reserved counters.
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping (Ctrl-C again to quit at once)");
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let handle = run::start(config, fleet).await?;
    if let Some(origin) = handle.state_origin() {
        eprintln!("{origin}");
    }
    if let Some(inbox) = handle.sms_inbox() {
        eprintln!(
            "SMS inbox listening: point the gateway's SMS webhook at {}",
            inbox.url()
        );
    }
    let report = handle.finish().await?;
    print_summary(&report);
    eprintln!(
        "counters of {} devices written to {}",
        report.counters.len(),
        state_path.display()
    );
    if let Some(path) = args.ledger {
        write_ledger(&report, &path)
            .with_context(|| format!("cannot write the ledger {}", path.display()))?;
    }
    Ok(())
}

fn print_summary(report: &RunReport) {
    let s = &report.stats;
    eprintln!("{s}");
    eprintln!(
        "done: {} reports created, {} acknowledged, {} unacknowledged, {} refused, {} retransmissions, {} duplicates injected, {} dropped",
        s.created,
        report.acknowledged.len(),
        report.unacknowledged.len(),
        s.rejected,
        s.retransmitted,
        s.dup_injected,
        s.dropped
    );
    for kind in [
        UplinkKind::Heartbeat,
        UplinkKind::ActivityLog,
        UplinkKind::JobReport,
    ] {
        let l = &report.ack_latency;
        let ms = |q: f64| {
            l.quantile(kind, q)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        if l.count(kind) > 0 {
            eprintln!(
                "CoAP round trip of {} {} exchanges: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.count(kind),
                kind.as_str(),
                ms(0.5),
                ms(0.99),
                ms(1.0)
            );
        }
    }
    if !s.twofa.is_empty() {
        eprintln!("{}", s.twofa);
    }
    for leg in TwoFactorLeg::ALL {
        let l = &report.twofa_latency;
        let ms = |q: f64| l.quantile(leg, q).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        if l.count(leg) > 0 {
            eprintln!(
                "2FA {} ({}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                leg.as_str(),
                l.count(leg),
                ms(0.5),
                ms(0.99),
                ms(1.0)
            );
        }
    }
}

/// `lock_id,transport,kind,seq,first_event_seq,event_count` per acknowledged report.
fn write_ledger(report: &RunReport, path: &PathBuf) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "lock_id,transport,kind,seq,first_event_seq,event_count"
    )?;
    for r in &report.acknowledged {
        writeln!(
            out,
            "{},{},{},{},{},{}",
            r.lock_id,
            r.transport.as_str(),
            r.kind.as_str(),
            r.seq,
            r.event_seqs.start,
            r.event_seqs.len()
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Parses `500ms`, `60s`, `5m`, `2h` (a bare number is seconds).
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration: use e.g. 500ms, 60s, 5m, 1h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("unknown unit {other:?} in {s:?}: use ms, s, m or h"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_ble_delay_defaults_to_200_to_1500_ms_and_parses_a_range() {
        let run = |extra: &[&str]| {
            let args = ["device-sim", "run", "--fleet", "f.csv"];
            match Cli::try_parse_from(args.iter().chain(extra)).map(|c| c.command) {
                Ok(Command::Run(r)) => Ok(r.ble_delay_ms),
                Ok(_) => unreachable!("a run command"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(run(&[]).unwrap(), BleDelay::DEFAULT);
        let d = run(&["--ble-delay-ms", "10..50"]).unwrap();
        assert_eq!(
            (d.min(), d.max()),
            (Duration::from_millis(10), Duration::from_millis(50))
        );
        assert!(run(&["--ble-delay-ms", "50..10"]).is_err());
    }

    #[test]
    fn twofa_people_and_the_sms_inbox_go_together() {
        let run = |extra: &[&str]| {
            let args = ["device-sim", "run", "--fleet", "f.csv"];
            match Cli::try_parse_from(args.iter().chain(extra)).map(|c| c.command) {
                Ok(Command::Run(r)) => Ok(r),
                Ok(_) => unreachable!("a run command"),
                Err(e) => Err(e),
            }
        };
        let r = run(&[
            "--twofa-people",
            "people.csv",
            "--sms-listen",
            "127.0.0.1:8025",
            "--twofa-interval",
            "2h",
        ])
        .unwrap();
        assert_eq!(r.sms_listen, Some(([127, 0, 0, 1], 8025).into()));
        assert_eq!(r.twofa_interval, Duration::from_secs(7200));
        assert_eq!(r.otp_timeout, Duration::from_secs(30));
        assert!(run(&["--twofa-people", "people.csv"]).is_err());
        assert!(run(&["--sms-listen", "127.0.0.1:8025"]).is_err());
        assert!(run(&[]).unwrap().twofa_people.is_none());
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
