//! A process's resource use as Linux reports it in `/proc`: CPU time
//! (`/proc/PID/stat` utime + stime), peak and current resident memory
//! (`/proc/PID/status` VmHWM and VmRSS). The parsers are pure; the readers are thin.

use crate::error::{LoadtestError, Result};
use std::time::Duration;

/// Clock ticks per second when `getconf CLK_TCK` cannot tell: Linux's
/// USER_HZ, 100 on every architecture this runs on. (sysconf would need
/// `unsafe`, which the workspace forbids.)
pub const DEFAULT_CLOCK_TICKS: u64 = 100;

/// CPU time and peak memory of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Resident set size now (VmRSS), bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_CLOCK_TICKS)
}

/// `pid`'s usage now (`"self"` for this process).
pub fn read(pid: &str, ticks_per_sec: u64) -> Result<Usage> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = read_text(&stat_path)?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| LoadtestError::Proc {
        path: stat_path,
        detail: "no utime/stime fields".into(),
    })?;
    let status_path = format!("/proc/{pid}/status");
    let status = read_text(&status_path)?;
    let missing = |line: &str| LoadtestError::Proc {
        path: status_path.clone(),
        detail: format!("no {line} line"),
    };
    let kib = vm_hwm_kib(&status).ok_or_else(|| missing("VmHWM"))?;
    let rss_kib = vm_rss_kib(&status).ok_or_else(|| missing("VmRSS"))?;
    Ok(Usage {
        cpu: Duration::from_secs_f64(ticks as f64 / ticks_per_sec.max(1) as f64),
        peak_rss_bytes: kib * 1024,
        rss_bytes: rss_kib * 1024,
    })
}

fn read_text(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| LoadtestError::Proc {
        path: path.to_string(),
        detail: e.to_string(),
    })
}

/// utime + stime (fields 14 and 15 of proc(5)) in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses, so
/// fields are counted after the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // The first field after the name is field 3 (state): utime is 11 further.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The `VmHWM:` value of `/proc/PID/status`, in KiB.
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmHWM")
}

/// The `VmRSS:` value of `/proc/PID/status`, in KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS")
}

/// The value of the `name:` line of `/proc/PID/status` (`VmRSS`, `VmHWM`,
/// ...), in KiB.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => Some(value),
            Some(_) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_command_names() {
        let stat = "4242 (gate way) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 6 0 1000 123456789 4000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("4242 (gw) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status =
            "Name:\tgateway\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(51_200));
        assert_eq!(vm_rss_kib(status), Some(40_000));
        assert_eq!(vm_hwm_kib("Name:\tkthreadd\n"), None);
        assert_eq!(status_kib(status, "VmRSS"), Some(40_000));
        assert_eq!(status_kib(status, "VmHW"), None);
        assert_eq!(vm_rss_kib("VmRSS:\t 12 MB\n"), None, "only kB is known");
    }

    #[test]
    fn this_process_can_be_read() {
        let u = read("self", clock_ticks()).unwrap();
        assert!(u.rss_bytes > 0 && u.peak_rss_bytes >= u.rss_bytes, "{u:?}");
    }
}
