//! The baseline broker: a private Mosquitto (Debian's `mosquitto`) started
//! for one run on an ephemeral loopback port, with a generated
//! configuration in the run's scratch directory, and stopped with SIGTERM.
//! The machine's own Mosquitto service (port 1883) is never touched.
//!
//! The configuration ([`config_text`]) is the broker at its plainest:
//! anonymous clients (the simulated bridges still send their logins, which
//! Mosquitto without a password file accepts), no persistence (the
//! gateway's durability is what the ratio is about, and Mosquitto's
//! autosave would only add noise), TCP_NODELAY as the gateway's MQTT front
//! sets it, and only errors and warnings logged.

use crate::error::{LoadtestError, Result};
use crate::gateway::{terminate, Terminated};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Where Debian's package installs the broker (`/usr/sbin` is not on every
/// user's PATH).
pub const DEBIAN_PATH: &str = "/usr/sbin/mosquitto";

/// How long Mosquitto gets to accept connections: it starts in
/// milliseconds; this covers a loaded machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a SIGTERMed Mosquitto gets to exit (it has nothing to save).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Start attempts: the port is found free, released, then bound by
/// Mosquitto, and another process may take it in between.
pub const START_ATTEMPTS: u32 = 3;

/// Pause between connection attempts while it starts.
const POLL: Duration = Duration::from_millis(20);

/// Lines of stderr kept for error messages.
const LOG_TAIL_LINES: usize = 40;

/// The `mosquitto` binary: `explicit`, else `mosquitto` on the PATH, else
/// [`DEBIAN_PATH`].
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("mosquitto"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from(DEBIAN_PATH)])
            .collect(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| LoadtestError::MosquittoMissing {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Mosquitto's version (`mosquitto -h` prints "mosquitto version X"), for
/// the report; `None` if it cannot tell.
pub async fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin)
        .arg("-h")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).map(str::to_string)
}

/// The version in `mosquitto -h`'s first line.
pub fn parse_version(help: &str) -> Option<&str> {
    help.lines()
        .find_map(|l| l.trim().strip_prefix("mosquitto version "))
        .map(str::trim)
}

/// The configuration of the baseline broker on `port`.
pub fn config_text(port: u16) -> String {
    format!(
        "# loadtest bridges: a private broker for the baseline, removed after the run\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n"
    )
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LoadtestError::io("find a free loopback port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| LoadtestError::io("find a free loopback port", e))
}

/// A running private Mosquitto. Dropping it kills the process.
pub struct Mosquitto {
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Mosquitto {
    /// Starts `bin` with a configuration written to `dir` and returns once
    /// it accepts connections.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Mosquitto> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(bin, dir).await {
                Ok(m) => return Ok(m),
                // Exited at start: most likely the port was taken.
                Err(e @ LoadtestError::MosquittoExited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(LoadtestError::MosquittoExited {
            status: "did not start".into(),
            log: String::new(),
        }))
    }

    async fn try_start(bin: &Path, dir: &Path) -> Result<Mosquitto> {
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config_text(port))
            .map_err(|e| LoadtestError::io("write the Mosquitto configuration", e))?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LoadtestError::MosquittoSpawn {
                path: bin.to_path_buf(),
                source,
            })?;
        let pid = child.id().ok_or_else(|| LoadtestError::MosquittoExited {
            status: "exited at once".into(),
            log: String::new(),
        })?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_TAIL_LINES {
                        log.remove(0);
                    }
                    log.push(line);
                }
            });
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut m = Mosquitto {
            child,
            pid,
            addr,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(m);
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                return Err(m.exited(status).await);
            }
            if Instant::now() >= deadline {
                return Err(LoadtestError::MosquittoTimeout {
                    what: "accept connections",
                    timeout: START_TIMEOUT,
                    log: m.log_tail(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn log_tail(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    async fn exited(&self, status: ExitStatus) -> LoadtestError {
        // Let the reader take the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        LoadtestError::MosquittoExited {
            status: status.to_string(),
            log: self.log_tail(),
        }
    }

    /// SIGTERM, then waits: Mosquitto must exit 0.
    pub async fn stop(mut self) -> Result<()> {
        let status = match terminate(&mut self.child, self.pid, STOP_TIMEOUT, "Mosquitto").await? {
            Terminated::Exited(status) => status,
            Terminated::NotSignalled(sent) => {
                return Err(LoadtestError::MosquittoStop {
                    status: format!("kill -TERM {} failed: {sent}", self.pid),
                    log: self.log_tail(),
                })
            }
            Terminated::StillRunning => {
                return Err(LoadtestError::MosquittoTimeout {
                    what: "exit after SIGTERM",
                    timeout: STOP_TIMEOUT,
                    log: self.log_tail(),
                })
            }
        };
        if status.code() != Some(0) {
            return Err(LoadtestError::MosquittoStop {
                status: status.to_string(),
                log: self.log_tail(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_a_private_anonymous_broker_on_loopback() {
        let text = config_text(40123);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "listener 40123 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
            ]
        );
    }

    #[test]
    fn the_version_is_read_from_the_help_text() {
        let help = "mosquitto version 2.0.11\n\nmosquitto is an MQTT v5.0/v3.1.1/v3.1 broker.\n";
        assert_eq!(parse_version(help), Some("2.0.11"));
        assert_eq!(parse_version("usage: something else"), None);
    }

    #[test]
    fn a_missing_binary_says_to_install_mosquitto_or_skip_it() {
        let err = locate(Some(Path::new("/nonexistent/mosquitto")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/mosquitto"), "{err}");
        assert!(err.contains("apt-get install mosquitto"), "{err}");
        assert!(err.contains("--no-mosquitto"), "{err}");
    }
}
