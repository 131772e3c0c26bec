//! The gateway under test as a separate process, run as an operator would:
//! `gateway devices import FILE`, then `gateway serve` with every listener on
//! an ephemeral loopback port (the actual addresses are read from its log),
//! `/readyz` awaited, and at the end SIGTERM and a check that it drained and
//! exited 0.
//!
//! Its stderr is read all along (a full pipe would block its logging): the
//! last lines are kept for error messages, WARN and ERROR lines are counted
//! and the first few kept for the report.

use crate::error::{LoadtestError, Result};
use crate::http;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long `serve` gets to log its listeners and answer `/readyz`: well
/// under a second normally; this covers loading a large registry on a
/// loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `devices import` may take: an Argon2id hash per device makes a
/// million take several minutes on a 2-core machine.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a SIGTERMed gateway gets to drain and exit. Its own drain limits
/// are shorter; a gateway that needs this long has a drain problem.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between looks at the log or `/readyz` while starting.
pub const POLL: Duration = Duration::from_millis(20);
/// Lines of stderr kept for error messages.
pub const LOG_TAIL_LINES: usize = 60;
/// WARN/ERROR lines kept verbatim for the report (all are counted).
pub const KEPT_PROBLEM_LINES: usize = 8;
/// Listeners on ephemeral loopback ports: nothing collides with a broker or
/// another gateway already on the machine (Mosquitto often holds 1883).
pub const EPHEMERAL: &str = "127.0.0.1:0";

/// The gateway binary: `explicit`, or `gateway` beside this executable
/// (`target/release/` when this is `target/release/loadtest`).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| LoadtestError::io("find this executable's directory", e))?;
            let dir = exe.parent().unwrap_or(Path::new("."));
            dir.join(format!("gateway{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if path.is_file() {
        // Absolute, as the gateway is started in a run directory.
        Ok(std::fs::canonicalize(&path).unwrap_or(path))
    } else {
        Err(LoadtestError::GatewayMissing { path })
    }
}

/// Which listener a log line announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Coap,
    Mqtt,
    Http,
}

/// The listener and its address if `line` is one of `serve`'s
/// "... listening ... addr=IP:PORT" lines.
pub fn parse_listener(line: &str) -> Option<(Listener, SocketAddr)> {
    let which = if line.contains("CoAP listening") {
        Listener::Coap
    } else if line.contains("MQTT listening") || line.contains("MQTT broker listening") {
        // Secure: "MQTT listening (MQTT 3.1.1) ..." (the front); with
        // --insecure-dev: "INSECURE: embedded MQTT broker listening ...".
        Listener::Mqtt
    } else if line.contains("metrics and health") {
        Listener::Http
    } else {
        return None;
    };
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?
        .trim_matches('"')
        .parse()
        .ok()?;
    Some((which, addr))
}

/// The level of a tracing-subscriber line (`2026-01-01T00:00:00Z  WARN target: ...`).
pub fn level(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|l| matches!(*l, "TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR"))
}

/// Where a started gateway listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listeners {
    pub coap: SocketAddr,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
}

/// What the gateway logged that a reader of the report should know.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogSummary {
    pub warnings: u64,
    pub errors: u64,
    /// The first [`KEPT_PROBLEM_LINES`] WARN/ERROR lines.
    pub samples: Vec<String>,
}

#[derive(Default)]
struct Log {
    tail: VecDeque<String>,
    coap: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    http: Option<SocketAddr>,
    summary: LogSummary,
}

impl Log {
    fn push(&mut self, line: String) {
        if let Some((which, addr)) = parse_listener(&line) {
            match which {
                Listener::Coap => self.coap = Some(addr),
                Listener::Mqtt => self.mqtt = Some(addr),
                Listener::Http => self.http = Some(addr),
            }
        }
        let problem = match level(&line) {
            Some("WARN") => {
                self.summary.warnings += 1;
                true
            }
            Some("ERROR") => {
                self.summary.errors += 1;
                true
            }
            _ => false,
        };
        if problem && self.summary.samples.len() < KEPT_PROBLEM_LINES {
            self.summary.samples.push(line.clone());
        }
        if self.tail.len() == LOG_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn listeners(&self) -> Option<Listeners> {
        Some(Listeners {
            coap: self.coap?,
            mqtt: self.mqtt?,
            http: self.http?,
        })
    }
}

/// The binary run in `cwd` with stderr captured, without inherited
/// `LOCKFLEET_*` variables or `RUST_LOG` (so its default filter and log
/// lines are the ones parsed here), without colour, killed if dropped.
/// The server key of the load test's gateways: a throwaway for throwaway
/// databases, the same in every run so an import and a serve agree.
const LOADTEST_SERVER_KEY: &str =
    "10ad7e5710ad7e5710ad7e5710ad7e5710ad7e5710ad7e5710ad7e5710ad7e57";

/// The dashboard backend's MQTT password in the load test's gateways (a
/// throwaway, like the server key; PostgreSQL deployments must be given
/// one, SQLite would generate one).
pub const LOADTEST_BACKEND_PASSWORD: &str = "loadtest-backend-password";

fn command(bin: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LOCKFLEET_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd)
        // Every run's gateway, import and serve, uses the same server key.
        .env("LOCKFLEET_SERVER_KEY", LOADTEST_SERVER_KEY)
        .env("LOCKFLEET_BACKEND_PASSWORD", LOADTEST_BACKEND_PASSWORD)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `gateway devices import FILE --database-url URL`.
pub async fn import(bin: &Path, cwd: &Path, fleet_file: &Path, database_url: &str) -> Result<()> {
    let mut cmd = command(bin, cwd);
    // The simulator's fleet files carry every device's pairing secret, so
    // none is generated; `--secrets-out` stays for a fleet file without them
    // (generated ones are written here; the file must be new, so an earlier
    // run's goes first).
    let secrets = cwd.join("secrets.csv");
    let _ = std::fs::remove_file(&secrets);
    cmd.arg("devices")
        .arg("import")
        .arg(fleet_file)
        .arg("--database-url")
        .arg(database_url)
        .arg("--secrets-out")
        .arg(&secrets);
    let child = cmd.spawn().map_err(|source| LoadtestError::GatewaySpawn {
        path: bin.to_path_buf(),
        source,
    })?;
    // On timeout the future is dropped, and kill_on_drop ends the child.
    let out = tokio::time::timeout(IMPORT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| LoadtestError::GatewayTimeout {
            what: "finish `devices import`",
            timeout: IMPORT_TIMEOUT,
            log: String::new(),
        })?
        .map_err(|e| LoadtestError::io("wait for `gateway devices import`", e))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    Err(LoadtestError::Import {
        status: out.status.to_string(),
        log: tail,
    })
}

/// How a process sent SIGTERM by [`terminate`] ended.
#[derive(Debug)]
pub enum Terminated {
    /// It exited, with this status.
    Exited(ExitStatus),
    /// kill(1) failed, with this status: no signal was sent.
    NotSignalled(ExitStatus),
    /// Still running when the timeout passed.
    StillRunning,
}

/// SIGTERM to `pid` (the process of `child`), then its exit within
/// `timeout`. `what` names the process in the error of a failed wait. The
/// caller says what a failed signal, a timeout or an exit status means for
/// its process.
pub async fn terminate(
    child: &mut Child,
    pid: u32,
    timeout: Duration,
    what: &str,
) -> Result<Terminated> {
    // kill(1): the workspace forbids the `unsafe` a libc call needs.
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .map_err(|e| LoadtestError::io("run kill(1)", e))?;
    if !sent.success() {
        return Ok(Terminated::NotSignalled(sent));
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(Terminated::Exited(status)),
        Ok(Err(e)) => Err(LoadtestError::io(format!("wait for {what} to exit"), e)),
        Err(_) => Ok(Terminated::StillRunning),
    }
}

/// A running `gateway serve`. Dropping it kills the process.
pub struct Gateway {
    child: Child,
    pid: u32,
    log: Arc<Mutex<Log>>,
    reader: Option<JoinHandle<()>>,
    pub listeners: Listeners,
}

impl Gateway {
    /// Starts `serve` on `database_url` with ephemeral listeners and `extra`
    /// flags, and returns once `/readyz` answers 200.
    pub async fn start(
        bin: &Path,
        cwd: &Path,
        database_url: &str,
        extra: &[String],
    ) -> Result<Gateway> {
        let mut cmd = command(bin, cwd);
        cmd.arg("serve")
            .args(["--coap-listen", EPHEMERAL])
            .args(["--mqtt-listen", EPHEMERAL])
            .args(["--http-listen", EPHEMERAL])
            .args(["--database-url", database_url])
            .args(extra);
        let mut child = cmd.spawn().map_err(|source| LoadtestError::GatewaySpawn {
            path: bin.to_path_buf(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| LoadtestError::GatewayExited {
            status: "exited at once".into(),
            log: String::new(),
        })?;
        let log = Arc::new(Mutex::new(Log::default()));
        let reader = child.stderr.take().map(|stderr| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    lock(&log).push(line);
                }
            })
        });
        let mut starting = Starting {
            child,
            log,
            reader,
            deadline: Instant::now() + START_TIMEOUT,
        };
        let listeners = starting.listeners().await?;
        starting.ready(listeners.http).await?;
        let Starting {
            child, log, reader, ..
        } = starting;
        Ok(Gateway {
            child,
            pid,
            log,
            reader,
            listeners,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The WARN/ERROR lines so far.
    pub fn log_summary(&self) -> LogSummary {
        lock(&self.log).summary.clone()
    }

    /// The last lines of stderr.
    pub fn log_tail(&self) -> String {
        tail_text(&self.log)
    }

    /// SIGTERM, then waits for the drain: the process must exit 0.
    pub async fn stop(mut self) -> Result<LogSummary> {
        let status = match terminate(&mut self.child, self.pid, STOP_TIMEOUT, "the gateway").await?
        {
            Terminated::Exited(status) => status,
            Terminated::NotSignalled(sent) => {
                return Err(LoadtestError::GatewayStop {
                    status: format!("kill -TERM {} failed: {sent}", self.pid),
                    log: self.log_tail(),
                })
            }
            Terminated::StillRunning => {
                return Err(LoadtestError::GatewayTimeout {
                    what: "exit after SIGTERM",
                    timeout: STOP_TIMEOUT,
                    log: self.log_tail(),
                })
            }
        };
        self.finish_reading().await;
        if status.code() != Some(0) {
            return Err(LoadtestError::GatewayStop {
                status: status.to_string(),
                log: self.log_tail(),
            });
        }
        Ok(self.log_summary())
    }

    async fn finish_reading(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }
}

/// A `serve` process between spawn and ready.
struct Starting {
    child: Child,
    log: Arc<Mutex<Log>>,
    reader: Option<JoinHandle<()>>,
    deadline: Instant,
}

impl Starting {
    async fn listeners(&mut self) -> Result<Listeners> {
        loop {
            if let Some(l) = lock(&self.log).listeners() {
                return Ok(l);
            }
            self.check_alive("log its listen addresses").await?;
            tokio::time::sleep(POLL).await;
        }
    }

    async fn ready(&mut self, http_addr: SocketAddr) -> Result<()> {
        loop {
            if let Ok((200, _)) = http::get(http_addr, "/readyz").await {
                return Ok(());
            }
            self.check_alive("answer 200 on /readyz").await?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// An error if the process exited or the start-up deadline passed.
    async fn check_alive(&mut self, what: &'static str) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(self.exited(status).await);
        }
        if Instant::now() >= self.deadline {
            return Err(LoadtestError::GatewayTimeout {
                what,
                timeout: START_TIMEOUT,
                log: tail_text(&self.log),
            });
        }
        Ok(())
    }

    async fn exited(&mut self, status: ExitStatus) -> LoadtestError {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        LoadtestError::GatewayExited {
            status: status.to_string(),
            log: tail_text(&self.log),
        }
    }
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    // A poisoned log only means a reader panicked mid-push; the lines are fine.
    log.lock().unwrap_or_else(|p| p.into_inner())
}

fn tail_text(log: &Mutex<Log>) -> String {
    let log = lock(log);
    log.tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `gateway serve` logs them with NO_COLOR=1.
    const STARTUP: &str = "\
2026-11-24T04:59:06.876359Z  INFO gateway::server: database ready engine=\"sqlite\" url=sqlite:///tmp/x.db
2026-11-24T04:59:06.880000Z  INFO gateway::mqtt::client: MQTT session up broker=127.0.0.1:40000 client_id=lockfleet-gateway-vm:backend
2026-11-24T04:59:06.884584Z  INFO gateway::mqtt::topology: MQTT listening (MQTT 3.1.1): devices log in with their id and key-derived password addr=127.0.0.1:43383 tls=false backend_username=dashboard
2026-11-24T04:59:06.885683Z  INFO gateway::server: CoAP listening (UDP) addr=127.0.0.1:45231
2026-11-24T04:59:06.885838Z  INFO gateway::server: metrics and health on http://127.0.0.1:41135/metrics, /healthz, /readyz addr=127.0.0.1:41135
2026-11-24T04:59:07.000000Z  WARN gateway::ingest: something slow
2026-11-24T04:59:08.000000Z ERROR gateway::store: something broken";

    #[test]
    fn listen_addresses_are_read_from_the_log() {
        let found: Vec<_> = STARTUP.lines().filter_map(parse_listener).collect();
        assert_eq!(
            found,
            vec![
                (Listener::Mqtt, "127.0.0.1:43383".parse().unwrap()),
                (Listener::Coap, "127.0.0.1:45231".parse().unwrap()),
                (Listener::Http, "127.0.0.1:41135".parse().unwrap()),
            ]
        );
        assert_eq!(parse_listener("CoAP listening (UDP) addr=nonsense"), None);
        assert_eq!(parse_listener("CoAP listening (UDP)"), None);
        let v6 = "INFO x: CoAP listening (UDP) addr=[::1]:5683";
        assert_eq!(
            parse_listener(v6),
            Some((Listener::Coap, "[::1]:5683".parse().unwrap()))
        );
    }

    #[test]
    fn the_log_collects_listeners_and_counts_problems() {
        let mut log = Log::default();
        for line in STARTUP.lines() {
            log.push(line.to_string());
        }
        let l = log.listeners().unwrap();
        assert_eq!(l.http.port(), 41135);
        assert_eq!((log.summary.warnings, log.summary.errors), (1, 1));
        assert_eq!(log.summary.samples.len(), 2);
        assert_eq!(level("2026-11-24T04:59:06Z  INFO a: b"), Some("INFO"));
        assert_eq!(level("registered: 5 locks"), None);
        for i in 0..LOG_TAIL_LINES + 5 {
            log.push(format!("line {i}"));
        }
        assert_eq!(log.tail.len(), LOG_TAIL_LINES);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = locate(Some(Path::new("/nonexistent/gateway"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("cargo build --release -p gateway")
                && msg.contains("/nonexistent/gateway"),
            "{msg}"
        );
    }
}
