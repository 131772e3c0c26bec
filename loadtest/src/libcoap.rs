//! libcoap's example server (`coap-server`, Debian package libcoap3-bin) as
//! the raw CoAP baseline of `ingest`: the ceiling of a UDP CoAP service on
//! this machine under the same generator. It runs as its own process on an
//! ephemeral loopback port, `coap-server -A 127.0.0.1 -p PORT`, and is ready
//! when it answers a CoAP ping; SIGTERM stops it.
//!
//! It knows neither OSCORE nor the gateway's resources, so it answers every
//! request of the simulated locks at once with a 4.xx (4.02 Bad Option for
//! the OSCORE option, 4.04 for `/hb` without security): a request/response
//! round trip with no work behind it, which is what a ceiling is.
//!
//! It has no "listening" log line and does not always exit when it cannot
//! bind (a TCP port taken is only logged), so the port is a free one found
//! just before (bind 127.0.0.1:0, release), readiness is a ping, and a bind
//! failure in its log means another port and another attempt. Its stdout
//! and stderr go to a file in the scratch directory: it writes its start-up
//! lines before it serves, so once it answers the ping the file holds them.

use crate::error::{LoadtestError, Result};
use crate::gateway::{terminate, LogSummary, Terminated};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The server binaries of libcoap3-bin, in the order tried: without TLS
/// first (the baseline is plain UDP, and the TLS builds also listen on
/// PORT+1 for DTLS), then the generic name other packagings use.
pub const BINARIES: [&str; 4] = [
    "coap-server-notls",
    "coap-server",
    "coap-server-openssl",
    "coap-server-gnutls",
];

/// Ports tried before giving up: a port found free a moment earlier is
/// taken again only by a race with another program, so a few attempts make
/// failure for that reason practically impossible.
pub const START_ATTEMPTS: u32 = 5;

/// How long one attempt may take to answer a ping: it answers within
/// milliseconds; this covers a loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a SIGTERMed coap-server may take to exit (it has nothing to
/// drain and exits at once).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between pings while it starts.
pub const PING_EVERY: Duration = Duration::from_millis(50);

/// Lines of its log kept for error messages and counted for the report.
pub const LOG_TAIL_LINES: usize = 40;

/// The first coap-server of [`BINARIES`] in a directory of `PATH`.
pub fn locate() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in(std::env::split_paths(&path)).ok_or_else(|| LoadtestError::LibcoapMissing {
        searched: BINARIES.join(", "),
    })
}

/// The first of [`BINARIES`] (in that order) that is an executable file in
/// one of `dirs` (searched in order for each name).
pub fn find_in(dirs: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = dirs.into_iter().collect();
    BINARIES
        .iter()
        .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// libcoap's version as `bin` reports it (`coap-server-notls v4.3.1 -- a
/// small CoAP implementation` in its usage text), e.g. `4.3.1`.
pub fn version(bin: &Path) -> Option<String> {
    // An unknown option makes it print the usage text and exit.
    let out = std::process::Command::new(bin)
        .arg("-?")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_version(&text)
}

/// The first `vX.Y...` word of a usage text, without the `v`.
pub fn parse_version(usage: &str) -> Option<String> {
    usage.split_whitespace().find_map(|w| {
        let v = w.strip_prefix('v')?;
        let mut parts = v.split('.');
        let numeric = parts
            .clone()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        (numeric && parts.nth(1).is_some()).then(|| v.to_string())
    })
}

/// RFC 7252 §4.3: a CoAP ping is an empty confirmable message (version 1,
/// type CON, no token, code 0.00); a server answers it with an RST of the
/// same message id.
pub fn ping(message_id: u16) -> [u8; 4] {
    let [hi, lo] = message_id.to_be_bytes();
    [0x40, 0x00, hi, lo]
}

/// True for the RST (or, from a lenient server, the empty ACK) answering
/// [`ping`]`(message_id)`.
pub fn is_pong(datagram: &[u8], message_id: u16) -> bool {
    let [hi, lo] = message_id.to_be_bytes();
    // Version 1, type RST (3) or ACK (2), token length 0, code 0.00.
    matches!(datagram, [0x70 | 0x60, 0x00, h, l] if *h == hi && *l == lo)
}

/// True for a log line saying an endpoint could not bind its port: libcoap
/// logs `coap_socket_bind_udp: bind: Address already in use` and `cannot
/// create UDP endpoint` (and exits), or the same for TCP (and carries on).
pub fn is_bind_failure(line: &str) -> bool {
    line.contains("Address already in use")
        || line.contains("cannot create UDP endpoint")
        || line.contains("cannot create TCP endpoint")
}

/// The level word of a libcoap log line (`Nov 24 19:45:05.599 CRIT ...`).
pub fn level(line: &str) -> Option<&str> {
    line.split_whitespace().nth(3).filter(|l| {
        matches!(
            *l,
            "EMRG" | "ALRT" | "CRIT" | "ERR" | "WARN" | "NOTE" | "INFO" | "DEBG"
        )
    })
}

/// WARN lines as warnings, ERR and worse as errors, the first few kept.
pub fn summarize(log: &str) -> LogSummary {
    let mut s = LogSummary::default();
    for line in log.lines() {
        let problem = match level(line) {
            Some("WARN") => {
                s.warnings += 1;
                true
            }
            Some("ERR" | "CRIT" | "ALRT" | "EMRG") => {
                s.errors += 1;
                true
            }
            _ => false,
        };
        if problem && s.samples.len() < crate::gateway::KEPT_PROBLEM_LINES {
            s.samples.push(line.to_string());
        }
    }
    s
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// A loopback UDP port nobody holds now (bound and released).
fn free_udp_port() -> Result<u16> {
    let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| LoadtestError::io("bind a UDP socket to find a free port", e))?;
    let port = socket
        .local_addr()
        .map_err(|e| LoadtestError::io("read a UDP socket's port", e))?
        .port();
    Ok(port)
}

/// A running coap-server. Dropping it kills the process.
pub struct CoapServer {
    child: Child,
    pid: u32,
    log_file: PathBuf,
    pub addr: SocketAddr,
}

/// How one start attempt ended.
enum Attempt {
    /// Boxed: a running server is large beside the other variant.
    Ready(Box<CoapServer>),
    /// The port was taken after all: try another.
    PortTaken { log: String },
}

impl CoapServer {
    /// Starts `bin` on a free loopback port (another one after a bind
    /// failure, up to [`START_ATTEMPTS`]) and returns once it answers a ping.
    /// Its log goes to a file in `scratch`.
    pub async fn start(bin: &Path, scratch: &Path) -> Result<CoapServer> {
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_udp_port()?;
            match Self::attempt(bin, scratch, port).await? {
                Attempt::Ready(server) => return Ok(*server),
                Attempt::PortTaken { log } => {
                    eprintln!(
                        "    coap-server could not bind port {port} (attempt {attempt}/{START_ATTEMPTS}): trying another"
                    );
                    last_log = log;
                }
            }
        }
        Err(LoadtestError::LibcoapStart {
            what: format!("bind a free loopback port in {START_ATTEMPTS} attempts"),
            log: tail(&last_log),
        })
    }

    async fn attempt(bin: &Path, scratch: &Path, port: u16) -> Result<Attempt> {
        let log_file = scratch.join(format!("coap-server-{port}.log"));
        let out = std::fs::File::create(&log_file)
            .map_err(|e| LoadtestError::io(format!("create {}", log_file.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| LoadtestError::io("share coap-server's log file", e))?;
        let mut child = Command::new(bin)
            .args(["-A", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(scratch)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LoadtestError::LibcoapSpawn {
                path: bin.to_path_buf(),
                source,
            })?;
        let pid = child.id().ok_or_else(|| LoadtestError::LibcoapStart {
            what: "stay up after starting".into(),
            log: String::new(),
        })?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| LoadtestError::io("bind the ping socket", e))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut message_id: u16 = 1;
        let mut buf = [0u8; 64];
        loop {
            let log = read_log(&log_file);
            if log.lines().any(is_bind_failure) {
                // Dropping `child` kills it if it is still up.
                return Ok(Attempt::PortTaken { log });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LoadtestError::LibcoapExited {
                    status: status.to_string(),
                    log: tail(&log),
                });
            }
            if Instant::now() >= deadline {
                return Err(LoadtestError::LibcoapStart {
                    what: format!("answer a CoAP ping within {START_TIMEOUT:?}"),
                    log: tail(&log),
                });
            }
            message_id = message_id.wrapping_add(1);
            // A send error (nobody bound yet can mean ECONNREFUSED) is one
            // more unanswered ping.
            let _ = probe.send_to(&ping(message_id), addr).await;
            let pong = tokio::time::timeout(PING_EVERY, async {
                loop {
                    match probe.recv_from(&mut buf).await {
                        Ok((n, from)) if from == addr && is_pong(&buf[..n], message_id) => {
                            return true
                        }
                        Ok(_) => continue,
                        Err(_) => return false,
                    }
                }
            })
            .await;
            match pong {
                // Its start-up lines were written before it could answer.
                Ok(true) if !read_log(&log_file).lines().any(is_bind_failure) => {
                    return Ok(Attempt::Ready(Box::new(CoapServer {
                        child,
                        pid,
                        log_file,
                        addr,
                    })))
                }
                Ok(true) => continue,
                // ECONNREFUSED from the previous ping: nobody listens yet.
                Ok(false) => tokio::time::sleep(PING_EVERY).await,
                Err(_) => {}
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, then waits: it must exit 0. Returns what it logged.
    pub async fn stop(mut self) -> Result<LogSummary> {
        let ended = terminate(&mut self.child, self.pid, STOP_TIMEOUT, "coap-server").await?;
        let log = || read_log(&self.log_file);
        let status = match ended {
            Terminated::Exited(status) => status,
            Terminated::NotSignalled(sent) => {
                return Err(LoadtestError::LibcoapStop {
                    status: format!("kill -TERM {} failed: {sent}", self.pid),
                    log: tail(&log()),
                })
            }
            Terminated::StillRunning => {
                return Err(LoadtestError::LibcoapStop {
                    status: format!("still running {STOP_TIMEOUT:?} after SIGTERM"),
                    log: tail(&log()),
                })
            }
        };
        if !status.success() {
            return Err(LoadtestError::LibcoapStop {
                status: status.to_string(),
                log: tail(&log()),
            });
        }
        let summary = summarize(&log());
        let _ = std::fs::remove_file(&self.log_file);
        Ok(summary)
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines coap-server-notls 4.3.1 logs when its port is taken: UDP (it
    /// exits 255), TCP (it carries on).
    const UDP_TAKEN: &str = "\
Nov 24 19:59:06.412 WARN coap_socket_bind_udp: bind: Address already in use
Nov 24 19:59:06.412 CRIT cannot create UDP endpoint
no context available for interface '127.0.0.1'";
    const TCP_TAKEN: &str = "\
Nov 24 19:59:07.409 ALRT coap_socket_bind_tcp: bind: Address already in use
Nov 24 19:59:07.409 CRIT cannot create TCP endpoint";

    fn executable(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_lookup_prefers_notls_and_skips_what_cannot_run() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = || vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_in(dirs()), None);
        // Not executable: not a candidate.
        std::fs::write(a.path().join("coap-server-notls"), "").unwrap();
        assert_eq!(find_in(dirs()), None);
        // A directory of that name is not one either.
        std::fs::create_dir(b.path().join("coap-server")).unwrap();
        assert_eq!(find_in(dirs()), None);
        let gnutls = executable(a.path(), "coap-server-gnutls");
        assert_eq!(find_in(dirs()), Some(gnutls));
        let openssl = executable(b.path(), "coap-server-openssl");
        assert_eq!(find_in(dirs()), Some(openssl), "openssl before gnutls");
        let notls = executable(b.path(), "coap-server-notls");
        assert_eq!(find_in(dirs()), Some(notls), "notls before any TLS build");
    }

    #[test]
    fn no_coap_server_on_the_path_says_what_to_install_or_pass() {
        let err = LoadtestError::LibcoapMissing {
            searched: BINARIES.join(", "),
        };
        let msg = err.to_string();
        for needle in ["libcoap3-bin", "--no-libcoap", "coap-server-notls"] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
    }

    #[test]
    fn a_ping_is_an_empty_con_and_its_pong_an_rst_of_the_same_id() {
        assert_eq!(ping(0x1234), [0x40, 0x00, 0x12, 0x34]);
        // As coap-server-notls answered [0x40, 0, 0x12, 0x34].
        assert!(is_pong(&[0x70, 0x00, 0x12, 0x34], 0x1234));
        assert!(is_pong(&[0x60, 0x00, 0x12, 0x34], 0x1234));
        assert!(!is_pong(&[0x70, 0x00, 0x12, 0x35], 0x1234), "other id");
        assert!(!is_pong(&[0x60, 0x44, 0x12, 0x34], 0x1234), "a response");
        assert!(!is_pong(&[0x70, 0x00, 0x12], 0x1234));
    }

    #[test]
    fn bind_failures_are_recognised_in_its_log() {
        assert!(UDP_TAKEN.lines().any(is_bind_failure));
        assert!(TCP_TAKEN.lines().any(is_bind_failure));
        assert!(!is_bind_failure(
            "Nov 24 19:59:07.409 WARN coap_handle_request: unknown critical option"
        ));
    }

    #[test]
    fn its_log_levels_are_counted() {
        let s = summarize(&format!("{UDP_TAKEN}\n{TCP_TAKEN}\nplain text"));
        assert_eq!((s.warnings, s.errors), (1, 3));
        assert_eq!(s.samples.len(), 4);
        assert_eq!(level("Nov 24 19:59:06.412 DEBG x"), Some("DEBG"));
        assert_eq!(level("no context available for interface"), None);
    }

    #[test]
    fn the_version_is_read_from_the_usage_text() {
        let usage = "coap-server-notls: invalid option -- '?'\n\
                     coap-server-notls v4.3.1 -- a small CoAP implementation\n\
                     (c) 2010,2011,2015-2022 Olaf Bergmann";
        assert_eq!(parse_version(usage), Some("4.3.1".into()));
        assert_eq!(parse_version("verbose vX.1 v4"), None);
    }

    /// The real server of libcoap3-bin (installed by `.ci/run`): it starts
    /// on a free port, answers an OSCORE-protected-looking POST with a
    /// 4.02 and stops cleanly.
    #[tokio::test]
    async fn the_installed_coap_server_starts_answers_and_stops() {
        let bin = locate().expect("libcoap3-bin is installed (.ci/run installs it)");
        assert!(version(&bin).is_some_and(|v| v.starts_with('4')));
        let scratch = tempfile::tempdir().unwrap();
        let server = CoapServer::start(&bin, scratch.path()).await.unwrap();
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        // CON POST, message id 7, token 0xAB, OSCORE option (9) = 0x09 0x01.
        let request = [0x41, 0x02, 0x00, 0x07, 0xAB, 0x92, 0x09, 0x01];
        socket.send_to(&request, server.addr).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        // A piggybacked ACK, same id and token, 4.02 Bad Option.
        assert_eq!(
            &buf[..5],
            &[0x61, 0x82, 0x00, 0x07, 0xAB],
            "{:x?}",
            &buf[..n]
        );
        // Exit status 0 after SIGTERM, nothing worse than a warning logged.
        let log = server.stop().await.unwrap();
        assert_eq!(log.errors, 0, "{:?}", log.samples);
    }
}
