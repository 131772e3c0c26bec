//! `loadtest wakeup`: a fleet that powers on together, and how the
//! gateway's wake-up phases spread it. The simulator starts `--locks` INB1
//! locks (1 h heartbeat) with their first heartbeat at the same instant
//! (`--power-on-together`), at `--speedup`; every heartbeat answer carries
//! `next_heartbeat_at`, the next moment on the lock's phase, which the
//! simulated locks follow. After `--intervals` heartbeat intervals the
//! stored heartbeats are counted per simulated minute: the first interval
//! is the power-on burst (the baseline, same run), the last one shows the
//! spread. Reported: heartbeats per minute, peak, mean and peak-to-mean per
//! interval.

use crate::database::{Engine, FreshDatabase};
use crate::error::{LoadtestError, Result};
use crate::gateway::{self, Gateway};
use crate::workload;
use device_sim::run::{self, SimConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `loadtest wakeup`.
#[derive(clap::Args, Debug, Clone)]
pub struct WakeupArgs {
    /// Locks in the fleet, all INB1 on a 1 h heartbeat
    #[arg(long, default_value_t = 10_000)]
    pub locks: usize,
    /// Simulated seconds per real second
    #[arg(long, default_value_t = 60.0)]
    pub speedup: f64,
    /// Heartbeat intervals to run (the first is the power-on burst)
    #[arg(long, default_value_t = 4)]
    pub intervals: u32,
    /// The gateway binary [default: `gateway` beside this executable]
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
}

/// One heartbeat interval's counts per simulated minute.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalCounts {
    pub heartbeats: u64,
    pub peak_per_min: u64,
    pub mean_per_min: f64,
}

impl IntervalCounts {
    pub fn peak_to_mean(&self) -> f64 {
        if self.mean_per_min > 0.0 {
            self.peak_per_min as f64 / self.mean_per_min
        } else {
            0.0
        }
    }
}

/// Count `received_ms` (real Unix ms) per simulated minute since `t0_ms`
/// at `speedup`, per interval of `minutes_per_interval` simulated minutes.
pub fn per_interval(
    received_ms: &[u64],
    t0_ms: u64,
    speedup: f64,
    minutes_per_interval: usize,
    intervals: usize,
) -> Vec<IntervalCounts> {
    let mut bins = vec![0u64; minutes_per_interval * intervals];
    for &t in received_ms {
        let sim_min = (t.saturating_sub(t0_ms) as f64 * speedup / 60_000.0) as usize;
        if let Some(b) = bins.get_mut(sim_min) {
            *b += 1;
        }
    }
    bins.chunks(minutes_per_interval)
        .map(|c| {
            let total: u64 = c.iter().sum();
            IntervalCounts {
                heartbeats: total,
                peak_per_min: c.iter().copied().max().unwrap_or(0),
                mean_per_min: total as f64 / c.len() as f64,
            }
        })
        .collect()
}

/// Runs `loadtest wakeup` and returns the Markdown report.
pub async fn run(args: &WakeupArgs, command_line: String) -> Result<String> {
    if args.locks == 0 || args.intervals < 2 || !(args.speedup.is_finite() && args.speedup >= 1.0) {
        return Err(LoadtestError::InvalidOption(
            "--locks must be above zero, --intervals at least 2, --speedup at least 1".into(),
        ));
    }
    let bin = gateway::locate(args.gateway_bin.as_deref())?;
    let scratch = tempfile::Builder::new()
        .prefix("loadtest_wakeup_")
        .tempdir()
        .map_err(|e| LoadtestError::io("create a scratch directory", e))?;
    let fleet = workload::heartbeat_heavy_fleet(args.locks, 1)?;
    let fleet_file = scratch.path().join("fleet.csv");
    workload::write_fleet(&fleet, &fleet_file)?;
    let db = FreshDatabase::create(Engine::Sqlite, scratch.path(), "", 1).await?;
    gateway::import(&bin, scratch.path(), &fleet_file, db.url()).await?;
    let gw = Gateway::start(&bin, scratch.path(), db.url(), &[]).await?;
    let interval = workload::shortest_heartbeat().as_secs();
    let real_interval = Duration::from_secs_f64(interval as f64 / args.speedup);
    let t0_ms = now_ms();
    eprintln!(
        "{} locks power on together; {} intervals of {:.0} s real at {}x",
        args.locks,
        args.intervals,
        real_interval.as_secs_f64(),
        args.speedup
    );
    let report = run::run(
        SimConfig {
            gateway: "127.0.0.1".into(),
            coap_port: gw.listeners.coap.port(),
            mqtt_port: gw.listeners.mqtt.port(),
            speedup: args.speedup,
            duration: Some(real_interval * args.intervals),
            drain_timeout: Duration::from_secs(20),
            progress: None,
            state: None,
            power_on_together: true,
            visits_per_hour: Some(0.0),
            ..SimConfig::default()
        },
        fleet,
    )
    .await?;
    gw.stop().await?;
    let pool = sqlx::SqlitePool::connect(db.url())
        .await
        .map_err(|e| LoadtestError::Fleet(format!("open the run's database: {e}")))?;
    let received: Vec<i64> = sqlx::query_scalar("SELECT received_at_ms FROM heartbeats")
        .fetch_all(&pool)
        .await
        .map_err(|e| LoadtestError::Fleet(format!("read the stored heartbeats: {e}")))?;
    pool.close().await;
    db.remove().await?;
    let received: Vec<u64> = received.into_iter().map(|t| t.max(0) as u64).collect();
    let minutes = (interval / 60) as usize;
    let counts = per_interval(
        &received,
        t0_ms,
        args.speedup,
        minutes,
        args.intervals as usize,
    );
    let mut out = format!(
        "## Wake-up phases: a fleet powered on together (SQLite)\n\n`{command_line}`\n\n\
         {} locks, {} s heartbeat interval, {}x; {} reports acknowledged by the simulator.\n\n\
         | interval | heartbeats | peak per minute | mean per minute | peak-to-mean |\n| --- | --- | --- | --- | --- |\n",
        args.locks,
        interval,
        args.speedup,
        report.acknowledged.len()
    );
    for (i, c) in counts.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} |\n",
            i + 1,
            c.heartbeats,
            c.peak_per_min,
            c.mean_per_min,
            c.peak_to_mean()
        ));
    }
    if let (Some(first), Some(last)) = (counts.first(), counts.last()) {
        out.push_str(&format!(
            "\nBefore (interval 1, the power-on burst): peak-to-mean {:.2}; after (interval {}): {:.2}.\n",
            first.peak_to_mean(),
            counts.len(),
            last.peak_to_mean()
        ));
    }
    Ok(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_simulated_minute_and_interval() {
        // 60x: one real second is one simulated minute.
        let received = [0, 10, 999, 1_000, 59_999, 60_000, 61_000, 200_000];
        let c = per_interval(&received, 0, 60.0, 60, 2);
        assert_eq!(c[0].heartbeats, 5);
        assert_eq!(c[0].peak_per_min, 3);
        assert_eq!(c[1].heartbeats, 2);
        assert!((c[0].peak_to_mean() - 3.0 / (5.0 / 60.0)).abs() < 1e-9);
    }
}
