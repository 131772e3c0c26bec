//! Facts about the machine a measurement ran on, for the report: cores,
//! CPU model, kernel, memory, and the exact command line.

/// What the report says about the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: Option<u64>,
    /// When the measurement started, UTC, if `date` could tell.
    pub date: Option<String>,
}

impl Machine {
    /// Reads `/proc` and runs `date -u`; anything unreadable is left empty.
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            memory_gib: mem_total_kib(&read("/proc/meminfo")).map(|k| k.div_ceil(1024 * 1024)),
            date: std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%d %H:%M UTC"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        }
    }
}

impl Machine {
    /// One line for a report: cores, CPU, kernel, memory, date.
    pub fn summary(&self) -> String {
        format!(
            "{} cores, {}, kernel {}, {} GiB{}",
            self.cores,
            self.cpu_model,
            self.kernel,
            self.memory_gib.map_or("?".into(), |g| g.to_string()),
            self.date
                .as_ref()
                .map_or(String::new(), |d| format!(", {d}"))
        )
    }
}

/// The first `model name` of `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

/// `MemTotal` of `/proc/meminfo`, KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The lines under a report's heading: the command, the machine and, on
/// PostgreSQL, the server's version.
pub fn report_header(
    out: &mut String,
    command_line: &str,
    machine: &Machine,
    postgres_version: Option<&str>,
) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "Command: `{command_line}`\n");
    let _ = writeln!(out, "Machine: {}.\n", machine.summary());
    if let Some(v) = postgres_version {
        let _ = writeln!(out, "PostgreSQL: {v}\n");
    }
}

/// `args` as one line a POSIX shell reads back as the same words.
pub fn shell_line(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_and_memory_are_read() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(
            mem_total_kib("MemTotal:       24641856 kB\nMemFree: 1 kB\n"),
            Some(24_641_856)
        );
    }

    #[test]
    fn command_lines_are_quoted_only_where_needed() {
        let args = [
            "target/release/loadtest",
            "ingest",
            "--engine",
            "both",
            "a b",
            "it's",
            "",
        ];
        assert_eq!(
            shell_line(args.map(String::from)),
            r"target/release/loadtest ingest --engine both 'a b' 'it'\''s' ''"
        );
    }
}
