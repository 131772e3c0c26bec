//! The `gateway` binary as an operator runs it, as a real process over real
//! sockets and files: `serve` with nothing but ephemeral ports and a data
//! directory; `devices import` (all or nothing, every problem named with its
//! line and column); flags over `LOCKFLEET_*` variables over the `--config`
//! file over the defaults; start-up failures that say what is wrong and what
//! to do; and a SIGTERM or SIGINT drain that stores every acknowledged report
//! exactly once and exits 0.

mod common;

use coap_lite::{MessageClass, MessageType, Packet, RequestType, ResponseType};
use common::OscoreDevice;
use device_sim::fleet::{generate, Fleet, FleetSpec};
use dispatcher::keys::{DeviceRef, MasterSecret};
use dispatcher::LockId;
use gateway::store::Store;
use lockfleet_oscore::RequestId;
use schemas::event::Transport;
use schemas::{
    ActivityLogInterval, Battery, BatteryLevel, ChannelInfo, DoorState, Heartbeat,
    HeartbeatInterval, LockState, SignalQuality,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long `serve` gets to log its listeners and answer `/readyz`. It takes
/// well under a second; this covers a loaded 2-core machine building other
/// crates, and fails long before anyone wonders whether the test hangs.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a signalled server gets to drain and exit. Draining a few reports
/// takes well under a second, the MQTT goodbye included; the server's own
/// drain limits (`server::DRAIN_TIMEOUT` and the MQTT timeouts) are longer,
/// so a drain stuck until one of them fails here.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a command that runs to its end (an import, a refused start) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between looks at the server's log or health while waiting.
const POLL: Duration = Duration::from_millis(20);
/// Every listener on an ephemeral loopback port.
const EPHEMERAL: &str = "127.0.0.1:0";
/// Heartbeats acknowledged one by one before the signal.
const ACKED_BEFORE_SIGNAL: u32 = 5;
/// Heartbeats sent back to back just before the signal, so that the server
/// is busy when it comes.
const BURST_AT_SIGNAL: u32 = 20;
/// After the burst, one heartbeat per this pause until the server has
/// exited: traffic throughout the drain without flooding the receive buffers.
const SEND_EVERY: Duration = Duration::from_millis(1);
/// Most heartbeats sent from the burst on; keeps message ids unique (u16)
/// however long the drain takes.
const MAX_SENT_WHILE_DRAINING: u32 = 20_000;

// ---------------------------------------------------------------------------
// Running the binary

/// The binary in `cwd` (so that a default `./data` lands in a temporary
/// directory), without inherited `LOCKFLEET_*` variables, without colour
/// (tracing-subscriber honours `NO_COLOR`), with a known log filter, stdout
/// discarded and stderr captured.
fn gateway<S: AsRef<OsStr>>(cwd: &Path, args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LOCKFLEET_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        // Errors as an operator reads them, without a backtrace after them.
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `serve` with every listener on an ephemeral loopback port, then `extra`.
fn serve_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--coap-listen",
        EPHEMERAL,
        "--mqtt-listen",
        EPHEMERAL,
        "--http-listen",
        EPHEMERAL,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn utf8(path: &Path) -> &str {
    // Temporary directories are ASCII on every platform the CI runs.
    path.to_str().expect("temporary paths are UTF-8")
}

/// A command that ran to its end.
struct Finished {
    status: ExitStatus,
    stderr: String,
}

async fn run_to_end(mut cmd: Command) -> Finished {
    // On timeout the output future is dropped, and kill_on_drop ends the child.
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("gateway did not finish within {COMMAND_TIMEOUT:?}"))
        .expect("the gateway binary runs");
    Finished {
        status: out.status,
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// Colour codes (`ESC [ ... final-byte`) removed, in case `NO_COLOR` is ever ignored.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
        } else if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The address in a log line's `addr=HOST:PORT` field.
fn addr_field(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr=HOST:PORT in {line:?}"))
}

/// Where a started server listens, as it logged.
struct Addrs {
    coap: SocketAddr,
    mqtt: SocketAddr,
    http: SocketAddr,
}

/// A `gateway serve` process and everything it wrote to stderr so far.
/// Dropping it kills the process.
struct Server {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("the gateway binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(strip_ansi(&line));
                }
            })
        };
        Server {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn line_with(&self, needle: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Every line of stderr, once the process has closed it (bounded).
    async fn finish_reading(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }

    /// The first log line containing `needle`; panics (with the log) if the
    /// process exits first or the line does not come within [`START_TIMEOUT`].
    async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(line) = self.line_with(needle) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_reading().await;
                if let Some(line) = self.line_with(needle) {
                    return line;
                }
                panic!(
                    "gateway exited ({status}) without logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not log {needle:?} within {START_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The listeners' addresses. HTTP is bound last, so once it is logged
    /// the other two are too.
    async fn listening(&mut self) -> Addrs {
        let http = addr_field(&self.wait_for_line("metrics and health on http://").await);
        let mqtt = addr_field(&self.wait_for_line("MQTT listening (MQTT 3.1.1").await);
        let coap = addr_field(&self.wait_for_line("CoAP listening (UDP)").await);
        Addrs { coap, mqtt, http }
    }

    /// Wait until `/readyz` answers 200. Signal only after this: `main`
    /// installs its signal handlers as soon as start-up returns, microseconds
    /// after the HTTP listener, and before that SIGTERM's default action would
    /// kill the process instead of draining it. A round trip to `/readyz`
    /// (which pings the database) takes far longer.
    async fn wait_ready(&mut self, http: SocketAddr) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answer = http_get(http, "/readyz").await;
            if matches!(answer, Ok((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never answered 200 within {START_TIMEOUT:?} (last: {answer:?}):\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Send `signal` (`TERM`, `INT`) with kill(1): the workspace has no
    /// signal-sending crate, and `unsafe` is forbidden.
    async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the server is still running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// Wait for the process to exit; its status and whole stderr.
    async fn wait_exit(mut self) -> (ExitStatus, String) {
        let status = match tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.expect("waiting for the gateway"),
            Err(_) => panic!(
                "gateway did not exit within {EXIT_TIMEOUT:?}:\n{}",
                self.log_text()
            ),
        };
        self.finish_reading().await;
        (status, self.log_text())
    }

    /// SIGTERM; the server must drain and exit 0.
    async fn stop(self) {
        self.signal("TERM").await;
        let (status, log) = self.wait_exit().await;
        assert_eq!(status.code(), Some(0), "exit status {status}:\n{log}");
        assert!(log.contains("shutdown complete"), "{log}");
    }
}

/// A minimal HTTP/1.1 GET (as in `tests/common`): status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP answer"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of one series (`name{labels}`) in a Prometheus text exposition.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------
// Fleets and devices

/// Generate a fleet and write it as `dir/fleet.csv`.
fn write_fleet(dir: &Path, spec: &FleetSpec) -> (Fleet, PathBuf) {
    let fleet = generate(spec).expect("a valid fleet spec");
    let path = dir.join("fleet.csv");
    fleet.write_csv(&path).expect("fleet file written");
    (fleet, path)
}

async fn import(cwd: &Path, file: &Path, data_dir: &Path) -> Finished {
    run_to_end(gateway(
        cwd,
        [
            "devices",
            "import",
            utf8(file),
            "--data-dir",
            utf8(data_dir),
            "--secrets-out",
            utf8(&secrets_out(data_dir)),
        ],
    ))
    .await
}

/// A secrets file that does not exist yet, beside the data directory (each
/// import that generates secrets needs a new one).
fn secrets_out(data_dir: &Path) -> PathBuf {
    let dir = data_dir.parent().unwrap_or(data_dir);
    (0..)
        .map(|n| dir.join(format!("secrets-{n}.csv")))
        .find(|p| !p.exists())
        .expect("a free name")
}

fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("lockfleet.db").display())
}

fn heartbeat(lock: &str, seq: u32) -> Heartbeat {
    Heartbeat {
        lock_id: lock.into(),
        seq,
        device_time: 1_790_000_000,
        battery: Battery::Level(BatteryLevel::High),
        signal_db: 18,
        signal_quality: SignalQuality::Good,
        carrier: "Singtel".into(),
        channel: Some(ChannelInfo {
            earfcn: 3734,
            pci: 101,
            cell_id: 0x1A2B3C,
            band: 8,
        }),
        lock_state: LockState::Locked,
        door_state: DoorState::Closed,
        firmware: "1.4.2".into(),
        heartbeat_interval: HeartbeatInterval::DEFAULT,
        activity_log_interval: ActivityLogInterval::DEFAULT,
    }
}

/// One NB-IoT lock speaking CoAP from its own UDP socket.
struct CoapLock {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    next_message_id: u16,
}

impl CoapLock {
    async fn new(server: SocketAddr) -> CoapLock {
        CoapLock {
            socket: Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("UDP bind")),
            server,
            next_message_id: 0,
        }
    }

    /// A confirmable `POST /hb` with the CBOR heartbeat.
    fn heartbeat(&mut self, lock: &str, seq: u32) -> Packet {
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = self.next_message_id;
        p.set_token(self.next_message_id.to_be_bytes().to_vec());
        p.add_option(coap_lite::CoapOption::UriPath, b"hb".to_vec());
        p.set_content_format(coap_lite::ContentFormat::ApplicationCBOR);
        p.payload = schemas::device::encode(&heartbeat(lock, seq));
        p
    }

    async fn send(&self, p: &Packet) {
        let bytes = p.to_bytes().expect("a valid CoAP request");
        self.socket
            .send_to(&bytes, self.server)
            .await
            .expect("UDP send");
    }

    async fn recv(&self, timeout: Duration) -> Option<Packet> {
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(timeout, self.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(Packet::from_bytes(&buf[..n]).expect("server sent valid CoAP")),
            _ => None,
        }
    }

    /// Send and wait for the answer, retransmitting as a lock would (the
    /// same message id, answered from the server's exchange cache).
    async fn exchange(&self, p: &Packet) -> Packet {
        for _ in 0..5 {
            self.send(p).await;
            if let Some(answer) = self.recv(Duration::from_secs(2)).await {
                return answer;
            }
        }
        panic!("no CoAP answer to message {}", p.header.message_id);
    }
}

fn is_changed_ack(answer: &Packet) -> bool {
    answer.header.get_type() == MessageType::Acknowledgement
        && answer.header.code == MessageClass::Response(ResponseType::Changed)
}

/// Whether `answer` to the protected `request` is a piggybacked protected
/// 2.04 that `device` verifies with an inner 2.04; `Err` is the code it
/// carried instead (the inner one when it verifies, else the outer one).
fn acknowledged(
    device: &OscoreDevice,
    request: &RequestId,
    answer: &Packet,
) -> Result<(), MessageClass> {
    match device.open(request, answer) {
        Ok(inner)
            if is_changed_ack(answer)
                && inner.header.code == MessageClass::Response(ResponseType::Changed) =>
        {
            Ok(())
        }
        Ok(inner) => Err(inner.header.code),
        Err(_) => Err(answer.header.code),
    }
}

// ---------------------------------------------------------------------------
// serve

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_flags_but_ports_uses_sqlite_under_the_data_dir_and_answers_health() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data-dir");
    let mut server = Server::spawn(gateway(
        tmp.path(),
        serve_args(&["--data-dir", utf8(&data)]),
    ));
    let addrs = server.listening().await;

    let db = data.join("lockfleet.db");
    let ready = server.wait_for_line("database ready").await;
    assert!(
        ready.contains("engine=\"sqlite\"") && ready.contains(&sqlite_url(&data)),
        "{ready}"
    );
    assert!(db.is_file(), "{} was not created", db.display());
    let loaded = server.wait_for_line("devices loaded").await;
    assert!(loaded.contains("locks=0 bridges=0"), "{loaded}");

    assert_eq!(
        http_get(addrs.http, "/healthz").await.unwrap(),
        (200, "ok\n".to_string())
    );
    server.wait_ready(addrs.http).await;
    assert_eq!(http_get(addrs.http, "/readyz").await.unwrap().1, "ready\n");
    let (code, metrics) = http_get(addrs.http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for kind in ["lock", "bridge"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("lockfleet_devices_registered{{kind=\"{kind}\"}}")
            ),
            Some(0.0),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("# TYPE lockfleet_"),
        "metrics are described:\n{metrics}"
    );

    // The logged CoAP and MQTT addresses are the live listeners: a CoAP ping
    // (empty CON, RFC 7252 §4.3) is answered with RST, and MQTT accepts TCP.
    let coap = CoapLock::new(addrs.coap).await;
    let mut ping = Packet::new();
    ping.header.set_type(MessageType::Confirmable);
    ping.header.code = MessageClass::Empty;
    ping.header.message_id = 7;
    let rst = coap.exchange(&ping).await;
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    assert_eq!(rst.header.message_id, 7);
    TcpStream::connect(addrs.mqtt)
        .await
        .expect("the embedded broker accepts connections");

    server.stop().await;
    assert!(
        !tmp.path().join("data").exists(),
        "nothing is written to the default ./data when --data-dir is given"
    );
}

/// Operators alert on ERROR lines: a start and a SIGTERM with nothing wrong
/// must log none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_and_stop_log_no_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(gateway(
        tmp.path(),
        serve_args(&["--data-dir", utf8(tmp.path())]),
    ));
    let addrs = server.listening().await;
    server.wait_ready(addrs.http).await;
    server.signal("TERM").await;
    let (status, log) = server.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "an operator alerting on ERROR is paged by a clean restart:\n{}",
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------
// devices import

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_import_registers_a_generated_fleet_and_rejects_a_bad_file_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let spec = FleetSpec {
        locks: 20,
        bridges: 3,
        orgs: 2,
        mqtt_share: 0.2,
        seed: 11,
    };
    let (fleet, file) = write_fleet(tmp.path(), &spec);

    let first = import(tmp.path(), &file, &data).await;
    assert_eq!(first.status.code(), Some(0), "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("fleet.csv: 20 locks and 3 bridges are valid; registering..."),
        "{}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("registered: 20 new and 0 updated lock(s), 3 new and 0 updated bridge(s)"),
        "{}",
        first.stderr
    );

    let again = import(tmp.path(), &file, &data).await;
    assert_eq!(again.status.code(), Some(0), "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("registered: 0 new and 20 updated lock(s), 0 new and 3 updated bridge(s)"),
        "{}",
        again.stderr
    );

    // A corrupted copy: one heartbeat interval the guides do not allow, one
    // unknown model, one valid change to an existing lock and one valid new
    // lock. Nothing of it may be registered.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    let col = |name: &str| {
        lines[0]
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("fleet header has no {name} column"))
    };
    let (kind, id, model, zone, hb, transport, bt) = (
        col("kind"),
        col("id"),
        col("model"),
        col("time_zone"),
        col("heartbeat_interval_h"),
        col("transport"),
        col("bluetooth_id"),
    );
    let lock_rows: Vec<usize> = (1..lines.len())
        .filter(|i| lines[*i][kind] == "lock")
        .collect();
    let coap_row = *lock_rows
        .iter()
        .rev()
        .find(|i| lines[**i][transport] == "coap")
        .expect("the fleet has a CoAP lock");
    let mut new_lock = lines[coap_row].clone();
    new_lock[id] = "L-NEW".into();
    new_lock[bt] = "INB1NEW".into();
    let (bad_hb, bad_model, changed) = (lock_rows[0], lock_rows[1], lock_rows[2]);
    lines[bad_hb][hb] = "3".into();
    lines[bad_model][model] = "INB9".into();
    let changed_id = lines[changed][id].clone();
    let original_zone = lines[changed][zone].clone();
    lines[changed][zone] = "UTC".into();
    lines.push(new_lock);
    let bad_file = tmp.path().join("bad-fleet.csv");
    let bad_text: Vec<String> = lines.iter().map(|l| l.join(",")).collect();
    std::fs::write(&bad_file, bad_text.join("\n") + "\n").unwrap();

    let bad = import(tmp.path(), &bad_file, &data).await;
    assert_eq!(bad.status.code(), Some(1), "{}", bad.stderr);
    // Line numbers count the header as line 1.
    for expected in [
        "the fleet file has 2 problem(s); nothing was imported".to_string(),
        format!(
            "line {}, column heartbeat_interval_h: heartbeat interval 3 h is not allowed: use 1, 2, 5, 12 or 24 hours",
            bad_hb + 1
        ),
        format!(
            "line {}, column model: unknown lock model \"INB9\": expected one of INB1, INB1-2FA, SP2E, SP2, KEYBOX3, DEADBOLT2E, PADLOCK2",
            bad_model + 1
        ),
    ] {
        assert!(
            bad.stderr.contains(&expected),
            "stderr should say {expected:?}:\n{}",
            bad.stderr
        );
    }
    assert!(!bad.stderr.contains("registered:"), "{}", bad.stderr);

    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let registry = store.load_registry().await.unwrap();
    store.close().await;
    assert_eq!(
        (registry.lock_count(), registry.bridge_count()),
        (fleet.locks.len(), fleet.bridges.len())
    );
    assert!(
        registry.lock("L-NEW").is_none(),
        "the new lock was registered"
    );
    assert_eq!(
        &*registry.lock(&changed_id).expect("registered").time_zone,
        original_zone.as_str(),
        "a valid row of the refused file changed a registered lock"
    );
}

// ---------------------------------------------------------------------------
// Shutdown

/// A served fleet of one org with a CoAP lock, ready for traffic.
struct Served {
    tmp: tempfile::TempDir,
    server: Server,
    addrs: Addrs,
    lock: String,
    /// The lock's pairing secret: its `master_secret` in the imported
    /// fleet file, what it protects its requests with (RFC 8613).
    secret: MasterSecret,
}

/// Import a small fleet with the binary and serve it until ready.
async fn serve_a_small_fleet() -> Served {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let spec = FleetSpec {
        locks: 4,
        bridges: 1,
        orgs: 1,
        mqtt_share: 0.0,
        seed: 5,
    };
    let (fleet, file) = write_fleet(tmp.path(), &spec);
    let coap_lock = fleet
        .locks
        .iter()
        .find(|l| l.transport == Transport::Coap)
        .expect("the fleet has a CoAP lock");
    let lock = coap_lock.id.clone();
    let secret = MasterSecret::from_bytes(*coap_lock.master_secret.as_bytes());
    let imported = import(tmp.path(), &file, &data).await;
    assert_eq!(imported.status.code(), Some(0), "{}", imported.stderr);

    let mut server = Server::spawn(gateway(
        tmp.path(),
        serve_args(&["--data-dir", utf8(&data)]),
    ));
    let addrs = server.listening().await;
    let loaded = server.wait_for_line("devices loaded").await;
    assert!(loaded.contains("locks=4 bridges=1"), "{loaded}");
    server.wait_ready(addrs.http).await;
    Served {
        tmp,
        server,
        addrs,
        lock,
        secret,
    }
}

/// What a lock saw while the server shut down under its traffic.
struct Drained {
    status: ExitStatus,
    log: String,
    /// Heartbeats answered 2.04 (seq).
    acked: BTreeSet<u32>,
    /// Heartbeats answered with anything else.
    refused: Vec<(u32, MessageClass)>,
    /// Heartbeats 1..=last_sent were sent.
    last_sent: u32,
}

/// Heartbeats acknowledged one by one, then heartbeats still arriving, as
/// from a live fleet, while `signal` lands and the drain runs: some are taken
/// before the intake stops, the rest are never read. Returns once the server
/// has exited.
async fn heartbeats_through_the_shutdown(
    served: Served,
    signal: &str,
) -> (Drained, tempfile::TempDir) {
    let Served {
        tmp,
        server,
        addrs,
        lock,
        secret,
    } = served;
    let mut client = CoapLock::new(addrs.coap).await;
    let mut device = OscoreDevice::new(DeviceRef::Lock(LockId::new(&lock)), &secret);
    let mut acked = BTreeSet::new();
    for seq in 1..=ACKED_BEFORE_SIGNAL {
        let (req, request) = device.protect(&client.heartbeat(&lock, seq));
        let ack = client.exchange(&req).await;
        assert!(
            acknowledged(&device, &request, &ack).is_ok(),
            "heartbeat {seq}: {:?} {}",
            ack.header.code,
            String::from_utf8_lossy(&ack.payload)
        );
        assert_eq!(ack.header.message_id, req.header.message_id);
        acked.insert(seq);
    }

    let stop = CancellationToken::new();
    let answers = tokio::spawn(collect_answers(client.socket.clone(), stop.clone()));
    let (burst_sent, burst_done) = tokio::sync::oneshot::channel();
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = BTreeMap::new();
            let mut burst_sent = Some(burst_sent);
            for seq in ACKED_BEFORE_SIGNAL + 1..=ACKED_BEFORE_SIGNAL + MAX_SENT_WHILE_DRAINING {
                if stop.is_cancelled() {
                    break;
                }
                let (req, request) = device.protect(&client.heartbeat(&lock, seq));
                client.send(&req).await;
                sent.insert(req.header.message_id, (seq, request));
                if seq == ACKED_BEFORE_SIGNAL + BURST_AT_SIGNAL {
                    if let Some(tx) = burst_sent.take() {
                        let _ = tx.send(());
                    }
                }
                if seq > ACKED_BEFORE_SIGNAL + BURST_AT_SIGNAL {
                    tokio::time::sleep(SEND_EVERY).await;
                }
            }
            (sent, device)
        })
    };
    burst_done.await.expect("the burst was sent");
    server.signal(signal).await;
    let (status, log) = server.wait_exit().await;
    stop.cancel();
    let (sent, device) = sender.await.unwrap();
    let answers = answers.await.unwrap();

    let mut refused = Vec::new();
    for answer in &answers {
        let Some((seq, request)) = sent.get(&answer.header.message_id) else {
            panic!("an answer to a message never sent: {answer:?}");
        };
        match acknowledged(&device, request, answer) {
            Ok(()) => {
                acked.insert(*seq);
            }
            Err(code) => refused.push((*seq, code)),
        }
    }
    let drained = Drained {
        status,
        log,
        acked,
        refused,
        last_sent: ACKED_BEFORE_SIGNAL + sent.len() as u32,
    };
    (drained, tmp)
}

/// Every datagram arriving on `socket` until `stop`, then whatever is still
/// queued in it.
async fn collect_answers(socket: Arc<UdpSocket>, stop: CancellationToken) -> Vec<Packet> {
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65536];
    let parse = |b: &[u8]| Packet::from_bytes(b).expect("server sent valid CoAP");
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, _)) = received {
                    answers.push(parse(&buf[..n]));
                }
            }
        }
    }
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
    {
        answers.push(parse(&buf[..n]));
    }
    answers
}

/// The process exits 0 after "shutdown complete"; every heartbeat it took
/// was acknowledged with 2.04; the database holds every acknowledged
/// heartbeat exactly once and nothing that was not sent.
async fn signal_drains_commits_what_was_acknowledged_and_exits_0(signal: &str) {
    let served = serve_a_small_fleet().await;
    let lock = served.lock.clone();
    let (d, tmp) = heartbeats_through_the_shutdown(served, signal).await;
    let data = tmp.path().join("data");
    assert_eq!(
        d.status.code(),
        Some(0),
        "exit status {}:\n{}",
        d.status,
        d.log
    );
    assert!(d.log.contains("shutting down"), "{}", d.log);
    assert!(d.log.contains("shutdown complete"), "{}", d.log);
    // A heartbeat is either taken before the intake stops, and then stored
    // and acknowledged, or never read. Any other answer (5.03 "shutting
    // down", 5.00) means the drain turned away a report it had taken.
    assert!(
        d.refused.is_empty(),
        "heartbeats refused during the drain: {:?}",
        d.refused
    );

    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let audit = store.audit().await.unwrap();
    store.close().await;
    let stored: Vec<u32> = audit
        .heartbeats
        .iter()
        .map(|(id, seq)| {
            assert_eq!(id, &lock, "a heartbeat of a lock that never reported");
            *seq
        })
        .collect();
    let unique: BTreeSet<u32> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "stored twice: {stored:?}");
    let missing: Vec<&u32> = d.acked.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?} (sent {}, acknowledged {})",
        d.last_sent,
        d.acked.len()
    );
    assert!(
        unique.iter().all(|s| (1..=d.last_sent).contains(s)),
        "stored something never sent: {stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_what_was_acknowledged_and_exits_0() {
    signal_drains_commits_what_was_acknowledged_and_exits_0("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_sigint_also_drains_and_exits_0() {
    signal_drains_commits_what_was_acknowledged_and_exits_0("INT").await;
}

/// The dashboard's view: the `seq` of every heartbeat event published on
/// the broker at `mqtt`, until the broker goes away. It logs in as the
/// dashboard backend with the password the server generated in `data`
/// (`backend.password`), as an operator of a single-machine deployment does.
async fn dashboard_heartbeats(
    mqtt: SocketAddr,
    data: &Path,
) -> (Arc<Mutex<BTreeSet<u32>>>, JoinHandle<()>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet as Mqtt, QoS};
    let password = std::fs::read_to_string(data.join("backend.password"))
        .expect("the server generated the backend password");
    let mut opts = MqttOptions::new("dashboard-cli-test", mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials("dashboard", password.trim());
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut subscribed = Some(subscribed);
            // Ends with the connection: the embedded broker dies with the server.
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Mqtt::ConnAck(_)) => client
                        .subscribe("events/v1/#", QoS::AtLeastOnce)
                        .await
                        .expect("subscribe queued"),
                    Event::Incoming(Mqtt::SubAck(_)) => {
                        if let Some(tx) = subscribed.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Mqtt::Publish(p)) if p.topic.ends_with("/heartbeat") => {
                        let event: serde_json::Value =
                            serde_json::from_slice(&p.payload).expect("events are JSON");
                        let seq = event["seq"].as_u64().expect("a heartbeat event has a seq");
                        seen.lock().unwrap().insert(seq as u32);
                    }
                    _ => {}
                }
            }
        })
    };
    tokio::time::timeout(START_TIMEOUT, is_subscribed)
        .await
        .expect("the dashboard subscribed in time")
        .expect("the dashboard subscribed");
    (seen, task)
}

/// Shutdown publishes the last events (server.rs): a dashboard connected to
/// the embedded broker hears of every heartbeat that was acknowledged, also
/// of those taken in the last moments before the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_the_dashboard_event_of_every_acknowledged_heartbeat() {
    let served = serve_a_small_fleet().await;
    let (seen, dashboard) =
        dashboard_heartbeats(served.addrs.mqtt, &served.tmp.path().join("data")).await;
    let (d, _tmp) = heartbeats_through_the_shutdown(served, "TERM").await;
    assert_eq!(
        d.status.code(),
        Some(0),
        "exit status {}:\n{}",
        d.status,
        d.log
    );
    // The broker closed the connection when the process ended: everything it
    // sent has been read once the dashboard's event loop stops.
    let _ = tokio::time::timeout(Duration::from_secs(5), dashboard).await;
    let seen = seen.lock().unwrap().clone();
    let unannounced: Vec<&u32> = d.acked.difference(&seen).collect();
    assert!(
        unannounced.is_empty(),
        "{} of {} acknowledged heartbeats were never announced to the dashboard: {unannounced:?}",
        unannounced.len(),
        d.acked.len()
    );
}

// ---------------------------------------------------------------------------
// Configuration

/// Start `serve` with `args` and `env`, wait until ready, and return the
/// database URL it logged; then stop it.
async fn database_chosen(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = gateway(cwd, serve_args(args));
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut server = Server::spawn(cmd);
    let addrs = server.listening().await;
    server.wait_ready(addrs.http).await;
    let line = server.wait_for_line("database ready").await;
    server.stop().await;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .unwrap_or_else(|| panic!("no url= in {line:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_and_environment_override_defaults_and_flags_override_both() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let [from_file, from_env, from_flag] = ["file", "env", "flag"].map(|d| tmp.path().join(d));
    let config = tmp.path().join("gateway.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n", utf8(&from_file))).unwrap();
    let db = |dir: &Path| dir.join("lockfleet.db");
    let env = [("LOCKFLEET_DATA_DIR", from_env.as_path())];

    // Flag over environment over file.
    let url = database_chosen(
        &cwd,
        &["--config", utf8(&config), "--data-dir", utf8(&from_flag)],
        &env,
    )
    .await;
    assert_eq!(url, sqlite_url(&from_flag));
    assert!(db(&from_flag).is_file());
    assert!(!db(&from_env).exists() && !db(&from_file).exists());

    // Environment over file.
    let url = database_chosen(&cwd, &["--config", utf8(&config)], &env).await;
    assert_eq!(url, sqlite_url(&from_env));
    assert!(db(&from_env).is_file());
    assert!(!db(&from_file).exists());

    // File over the defaults.
    let url = database_chosen(&cwd, &["--config", utf8(&config)], &[]).await;
    assert_eq!(url, sqlite_url(&from_file));
    assert!(db(&from_file).is_file());

    // Nothing set: ./data under the working directory.
    assert!(!cwd.join("data").exists());
    let url = database_chosen(&cwd, &[], &[]).await;
    assert_eq!(url, "sqlite://./data/lockfleet.db");
    assert!(db(&cwd.join("data")).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_config_key_exits_1_naming_the_key_before_touching_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nhttp_listn = \"127.0.0.1:0\"\n",
            utf8(&data)
        ),
    )
    .unwrap();
    let out = run_to_end(gateway(
        tmp.path(),
        serve_args(&["--config", utf8(&config)]),
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("config file {} is not valid", config.display())),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown field `http_listn`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("http_listen"),
        "the valid keys are listed: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("CoAP listening"), "{}", out.stderr);
    assert!(
        !data.exists(),
        "a refused configuration created {}",
        data.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_exits_1_naming_host_and_port() {
    let tmp = tempfile::tempdir().unwrap();
    let key = gateway::store::testing::server_key_file(tmp.path());
    let out = run_to_end(gateway(
        tmp.path(),
        serve_args(&[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/x",
            "--server-key-file",
            utf8(&key),
        ]),
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("is PostgreSQL running"),
        "says what to check: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("CoAP listening"), "{}", out.stderr);
}

/// Instances sharing PostgreSQL must share the server key, so none is made
/// up: the start fails and says how to make and give one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_a_server_key_exits_1_saying_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_to_end(gateway(
        tmp.path(),
        serve_args(&["--database-url", "postgres://postgres@127.0.0.1:5432/test"]),
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("no server key"), "{}", out.stderr);
    assert!(
        out.stderr.contains("gateway keys new-server-key"),
        "says how to make one: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("LOCKFLEET_SERVER_KEY"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("CoAP listening"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_port_already_taken_exits_1_saying_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind(EPHEMERAL).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut args = serve_args(&["--data-dir", utf8(tmp.path())]);
    let mqtt = args.iter().position(|a| a == "--mqtt-listen").unwrap();
    args[mqtt + 1] = addr.clone();
    let out = run_to_end(gateway(tmp.path(), args)).await;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    for expected in [
        format!("cannot listen for MQTT on {addr}"),
        "Address already in use".to_string(),
        "Choose another with --mqtt-listen".to_string(),
        "--mqtt-broker".to_string(),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "stderr should say {expected:?}:\n{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("CoAP listening"), "{}", out.stderr);
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coap_or_http_port_already_taken_exits_1_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let udp = std::net::UdpSocket::bind(EPHEMERAL).unwrap();
    let tcp = std::net::TcpListener::bind(EPHEMERAL).unwrap();
    let cases = [
        (
            "--coap-listen",
            udp.local_addr().unwrap().to_string(),
            "cannot listen for CoAP on UDP",
        ),
        (
            "--http-listen",
            tcp.local_addr().unwrap().to_string(),
            "cannot listen for HTTP on",
        ),
    ];
    for (flag, addr, says) in cases {
        let mut args = serve_args(&["--data-dir", utf8(tmp.path())]);
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = addr.clone();
        let out = run_to_end(gateway(tmp.path(), args)).await;
        assert_eq!(out.status.code(), Some(1), "{flag}: {}", out.stderr);
        for expected in [
            format!("{says} {addr}; choose another with {flag}"),
            "Address already in use".to_string(),
        ] {
            assert!(
                out.stderr.contains(&expected),
                "{flag}: stderr should say {expected:?}:\n{}",
                out.stderr
            );
        }
    }
    drop((udp, tcp));
}
