//! What the process and its tokio runtime use, for the Process dashboard:
//! CPU time, memory, file descriptors and threads read from `/proc/self`
//! (Linux, where the gateway runs; elsewhere those gauges are not set), and
//! the main runtime's workers, tasks and busy time. Sampled at each scrape
//! of `/metrics`, so the values are as of the scrape.
//!
//! The parsers are pure functions over the files' text, tested below; this
//! module only reads, it never changes what it measures.

use crate::metrics;
use std::time::Duration;

/// Clock ticks per second of the CPU times in `/proc/self/stat` (`USER_HZ`).
/// Linux fixes it at 100 for userspace on every architecture it supports
/// today; Prometheus's own procfs reader (client_golang) assumes the same.
const USER_HZ: f64 = 100.0;

/// One reading of `/proc/self`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Read and record everything this module measures.
pub fn sample() {
    if let Some(p) = read_proc() {
        metrics::process(&p);
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let m = handle.metrics();
        let busy: Duration = (0..m.num_workers())
            .map(|w| m.worker_total_busy_duration(w))
            .sum();
        metrics::tokio_runtime(
            m.num_workers(),
            m.num_alive_tasks(),
            m.global_queue_depth(),
            busy,
        );
    }
}

/// `/proc/self` now; `None` where there is no procfs.
fn read_proc() -> Option<ProcessSample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let (cpu_seconds, start_ticks) = parse_stat(&stat)?;
    let status = parse_status(&status);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| parse_max_open_files(&l));
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s));
    Some(ProcessSample {
        cpu_seconds,
        resident_bytes: status.resident_bytes,
        virtual_bytes: status.virtual_bytes,
        threads: status.threads,
        open_fds,
        max_fds,
        start_time_seconds: boot.map(|b| b as f64 + start_ticks as f64 / USER_HZ),
    })
}

/// `/proc/self/stat`: user plus system CPU seconds, and the start time in
/// ticks after boot. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after the
/// last `)`.
pub fn parse_stat(stat: &str) -> Option<(f64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on; utime and stime are 14 and 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    Some(((utime + stime) as f64 / USER_HZ, start))
}

/// What [`parse_status`] reads from `/proc/self/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
}

/// `VmRSS`, `VmSize` (in kB) and `Threads` from `/proc/self/status`;
/// a missing line reads as 0.
pub fn parse_status(status: &str) -> Status {
    let mut s = Status::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = || value.split_whitespace().next()?.parse::<u64>().ok();
        match key {
            "VmRSS" => s.resident_bytes = number().unwrap_or(0) * 1024,
            "VmSize" => s.virtual_bytes = number().unwrap_or(0) * 1024,
            "Threads" => s.threads = number().unwrap_or(0),
            _ => {}
        }
    }
    s
}

/// The soft limit of "Max open files" in `/proc/self/limits`; `None` when
/// unlimited or absent.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name_even_with_spaces_and_parentheses() {
        // A real line, with the command name changed to "(a) b)".
        let stat = "4242 ((a) b)) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 104857600 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17987 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some((3.25, 123456)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None, "too few fields");
    }

    #[test]
    fn status_gives_resident_and_virtual_memory_in_bytes_and_threads() {
        let status = "Name:\tgateway\nVmPeak:\t  999 kB\nVmSize:\t  204800 kB\n\
                      VmRSS:\t   10240 kB\nThreads:\t17\nSigQ:\t0/1\n";
        assert_eq!(
            parse_status(status),
            Status {
                resident_bytes: 10_485_760,
                virtual_bytes: 209_715_200,
                threads: 17,
            }
        );
        assert_eq!(parse_status(""), Status::default());
    }

    #[test]
    fn the_soft_open_files_limit_is_read_and_unlimited_is_none() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_max_open_files(unlimited), None);
        assert_eq!(parse_max_open_files(""), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        let stat = "cpu  1 2 3 4\nintr 5\nbtime 1790000000\nprocesses 9\n";
        assert_eq!(parse_boot_time(stat), Some(1_790_000_000));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_alive_and_using_something() {
        let p = read_proc().expect("procfs on Linux");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes);
        assert!(p.threads >= 1);
        assert!(p.open_fds >= 3, "stdin, stdout, stderr at least");
        let start = p.start_time_seconds.expect("btime and starttime");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0);
    }
}
