//! Interoperability: clients written by others talk to the real server.
//! Python's aiocoap posts an OSCORE-protected heartbeat (RFC 8613, with the
//! lock's security context) and verifies the protected 2.04 with its CBOR
//! Downlink; libcoap's `coap-client`, which speaks no OSCORE, posts a plain
//! heartbeat: a server with `--insecure-dev` answers it with a piggybacked
//! 2.04, a default one with 4.01 and stores nothing. Mosquitto's
//! `mosquitto_sub`, logged in as the dashboard backend, receives the
//! dashboard event.
//! The tools come from Debian (libcoap3-bin, mosquitto-clients, coreutils)
//! and PyPI (`aiocoap[oscore]`); `bash .ci/run` installs them. A missing tool
//! fails the test with a message naming its package: it never skips.

mod common;

use coap_lite::{MessageClass, RequestType, ResponseType};
use common::{CoapClient, Engine, Harness, OscoreDevice};
use dispatcher::import::ParsedFleet;
use dispatcher::keys::DeviceRef;
use dispatcher::registry::{LockRecord, ReportPath};
use dispatcher::{LockId, OrgId};
use gateway::store::testing::registration;
use schemas::device::encode;
use schemas::security::{DEVICE_OSCORE_ID, SERVER_OSCORE_ID};
use schemas::*;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// Longest one external client may run. They answer within milliseconds on
/// loopback; this covers a loaded 2-core CI machine, and a hung tool fails
/// its test instead of stalling the run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client waits for the CoAP answer before it gives up itself
/// (libcoap's `-B`, the aiocoap script's argument). Below `TOOL_TIMEOUT`, so
/// the tool's own diagnostic is what the failure shows.
const COAP_ANSWER_SECS: u64 = 10;

/// Longest `mosquitto_sub` runs (its `-W`): a backstop should this process
/// die without killing it; the test's own deadline is `TOOL_TIMEOUT`.
const SUB_LIFETIME_SECS: u64 = 30;

/// What to install when a tool is missing.
const INSTALL_HINT: &str = "run `bash .ci/run` (it installs every tool these tests use)";

/// The aiocoap client script.
const AIOCOAP_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/aiocoap_post.py");

/// Exit status of the aiocoap script when `import aiocoap` fails.
const AIOCOAP_MISSING: i32 = 3;

fn fleet() -> ParsedFleet {
    ParsedFleet {
        locks: vec![registration(LockRecord {
            id: LockId::new("L1"),
            model: LockModel::Inb1,
            org: OrgId::new("org-1"),
            departments: vec!["dept-1".into()].into(),
            time_zone: "Asia/Singapore".into(),
            heartbeat_interval: HeartbeatInterval::from_hours(12).unwrap(),
            activity_log_interval: ActivityLogInterval::from_minutes(30).unwrap(),
            bridge: None,
            path: ReportPath::Coap,
        })],
        bridges: vec![],
        ..ParsedFleet::default()
    }
}

fn heartbeat(seq: u32) -> Heartbeat {
    Heartbeat {
        lock_id: "L1".into(),
        seq,
        device_time: 1_790_000_000,
        battery: Battery::Level(BatteryLevel::Low),
        signal_db: 6,
        signal_quality: SignalQuality::Poor,
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

/// The first of `names` found on PATH; a missing tool fails the test, naming
/// the package that provides it.
fn tool(names: &[&str], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found on PATH: install {package}, or {INSTALL_HINT}",
        names.join(" / ")
    );
}

/// Run `cmd` to completion within `TOOL_TIMEOUT`; the child is killed if the
/// deadline passes or the test panics.
async fn run_bounded(what: &str, cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(TOOL_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {what}: {e}"),
        Err(_) => panic!("{what} did not finish within {TOOL_TIMEOUT:?}"),
    }
}

fn transcript(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd-length hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16).unwrap_or_else(|e| panic!("{text:?}: {e}"))
        })
        .collect()
}

fn hb_url(coap: std::net::SocketAddr) -> String {
    format!("coap://{}:{}/hb", coap.ip(), coap.port())
}

/// The heartbeat with `seq` is stored exactly once, and nothing else is.
async fn assert_stored_once(h: &Harness, seq: u32) {
    let audit = h.server.store.audit().await.unwrap();
    assert_eq!(audit.heartbeats, vec![("L1".to_string(), seq)]);
    assert!(audit.events.is_empty(), "{:?}", audit.events);
}

/// The Downlink answers the heartbeat with `seq` and carries the registry's
/// intervals (12 h, 30 min), not the ones the lock reported.
fn assert_downlink_answers(payload: &[u8], seq: u32) {
    let down = Downlink::decode(payload)
        .unwrap_or_else(|e| panic!("2.04 payload {} is not a Downlink: {e}", to_hex(payload)));
    assert_eq!(down.seq, seq);
    assert_eq!(down.heartbeat_interval.hours(), 12);
    assert_eq!(down.activity_log_interval.minutes(), 30);
}

/// libcoap's `coap-client` POSTs heartbeat `seq` to `h`'s /hb, confirmable
/// and unprotected (it speaks no OSCORE). Returns its output, its transcript,
/// and the file it writes an answer's payload to (`-o`, written only for a
/// success).
async fn coap_client_posts(h: &Harness, files: &Path, seq: u32) -> (Output, String, PathBuf) {
    let coap_client = tool(
        &["coap-client-notls", "coap-client"],
        "the Debian package libcoap3-bin",
    );
    let body = files.join("heartbeat.cbor");
    let answer = files.join("downlink.cbor");
    std::fs::write(&body, encode(&heartbeat(seq))).unwrap();

    // -v 6 (info) makes libcoap log each PDU it receives, with its code;
    // -o writes the binary payload to a file instead of the terminal.
    let out = run_bounded(
        "coap-client",
        Command::new(&coap_client)
            .args(["-m", "post", "-t", "60", "-v", "6"])
            .arg("-B")
            .arg(COAP_ANSWER_SECS.to_string())
            .arg("-f")
            .arg(&body)
            .arg("-o")
            .arg(&answer)
            .arg(hb_url(h.server.coap_addr)),
    )
    .await;
    let log = transcript(&out);
    (out, log, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_coap_client_posts_a_plain_heartbeat_under_insecure_dev_and_gets_2_04() {
    let h = Harness::start_insecure(Engine::Sqlite, &fleet()).await;
    let files = tempfile::tempdir().unwrap();
    let (out, log, answer) = coap_client_posts(&h, files.path(), 5).await;
    assert!(out.status.success(), "coap-client failed:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("t:ACK") && l.contains("c:2.04")),
        "no piggybacked 2.04 in coap-client's log:\n{log}"
    );
    let payload = std::fs::read(&answer)
        .unwrap_or_else(|e| panic!("coap-client wrote no payload to {answer:?}: {e}\n{log}"));
    assert_downlink_answers(&payload, 5);
    assert_stored_once(&h, 5).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_coap_client_plain_heartbeat_gets_4_01_and_stores_nothing_with_security_on() {
    let h = Harness::start(Engine::Sqlite, &fleet()).await;
    let files = tempfile::tempdir().unwrap();
    let (out, log, _) = coap_client_posts(&h, files.path(), 5).await;
    // coap-client exits 0 on any answer; the code is in its log.
    assert!(out.status.success(), "coap-client failed:\n{log}");
    let refusal = log
        .lines()
        .find(|l| l.contains("t:ACK") && l.contains("c:4.01"))
        .unwrap_or_else(|| panic!("no piggybacked 4.01 in coap-client's log:\n{log}"));
    assert!(
        refusal.contains(gateway::coap::oscore::UNPROTECTED_DIAGNOSTIC),
        "the 4.01 says why: {refusal}"
    );
    let audit = h.server.store.audit().await.unwrap();
    assert!(audit.heartbeats.is_empty(), "{:?}", audit.heartbeats);
    assert!(audit.events.is_empty(), "{:?}", audit.events);
    assert_eq!(
        h.metric("lockfleet_uplinks_rejected_total{transport=\"coap\",reason=\"unprotected\"}")
            .await,
        1.0
    );
    h.stop().await;
}

/// Lock `lock`'s OSCORE security context (the profile of
/// `schemas::security`: sender id h'01', recipient id h'', ID Context
/// `lk/{lock}`, no master salt, the default AES-CCM-16-64-128 and HKDF
/// SHA-256) with its test secret, as aiocoap's `settings.json` in `dir`.
fn write_aiocoap_context(dir: &Path, lock: &str) {
    let device = DeviceRef::Lock(LockId::new(lock));
    let secret = gateway::store::testing::secret_for(&device);
    let settings = serde_json::json!({
        "sender-id_hex": to_hex(DEVICE_OSCORE_ID),
        "recipient-id_hex": to_hex(SERVER_OSCORE_ID),
        "id-context_hex": to_hex(&device.oscore_id_context()),
        "secret_hex": secret.to_hex().as_str(),
        "salt_hex": "",
        "algorithm": "AES-CCM-16-64-128",
        "kdf-hashfun": "sha256",
    });
    std::fs::write(dir.join("settings.json"), settings.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiocoap_client_posts_an_oscore_protected_heartbeat_and_verifies_the_2_04() {
    let python = tool(&["python3"], "the Debian package python3");
    let h = Harness::start(Engine::Sqlite, &fleet()).await;
    // aiocoap keeps its sequence numbers beside the settings: writable.
    let context = tempfile::tempdir().unwrap();
    write_aiocoap_context(context.path(), "L1");

    let out = run_bounded(
        "the aiocoap script",
        Command::new(&python)
            .arg(AIOCOAP_SCRIPT)
            .arg(hb_url(h.server.coap_addr))
            .arg(to_hex(&encode(&heartbeat(6))))
            .arg(COAP_ANSWER_SECS.to_string())
            .arg(context.path()),
    )
    .await;
    let log = transcript(&out);
    assert!(
        out.status.code() != Some(AIOCOAP_MISSING),
        "Python's aiocoap is not installed: run `bash .ci/run` or \
         `python3 -m pip install 'aiocoap[oscore]'`\n{log}"
    );
    assert!(out.status.success(), "the aiocoap script failed:\n{log}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no `{name}` line in the script's output:\n{log}"))
            .trim()
            .to_string()
    };
    // aiocoap reports only an answer it verified with the lock's context.
    assert_eq!(field("oscore"), "yes", "{log}");
    assert_eq!(field("code"), "2.04", "{log}");
    assert_downlink_answers(&from_hex(&field("payload")), 6);
    assert_stored_once(&h, 6).await;
    // The server found the key by the kid context aiocoap sent, and
    // verified the request with it.
    assert_eq!(
        h.metric("lockfleet_oscore_requests_verified_total{transport=\"coap\"}")
            .await,
        1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_receives_the_dashboard_event() {
    let mosquitto_sub = tool(&["mosquitto_sub"], "the Debian package mosquitto-clients");
    // mosquitto_sub's debug lines go through stdio, block-buffered on a pipe:
    // stdbuf makes it line-buffered so SUBACK is seen when it happens.
    let stdbuf = tool(&["stdbuf"], "the Debian package coreutils");
    let h = Harness::start(Engine::Sqlite, &fleet()).await;
    let mqtt = h.server.mqtt_addr;

    let mut child = Command::new(&stdbuf)
        .arg("-oL")
        .arg(&mosquitto_sub)
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-i", &format!("dashboard-interop-{}", std::process::id())])
        .args(["-u", common::DASHBOARD_USERNAME])
        .args(["-P", gateway::store::testing::BACKEND_PASSWORD])
        .args(["-t", "events/v1/#", "-q", "1", "-v", "-d"])
        .arg("-W")
        .arg(SUB_LIFETIME_SECS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start mosquitto_sub: {e}"));
    let mut stderr = child.stderr.take().unwrap(); // piped above
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut out = Lines {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(), // piped above
        seen: Vec::new(),
        deadline: tokio::time::Instant::now() + TOOL_TIMEOUT,
    };

    // Subscribed once the broker's SUBACK is in: with -d, mosquitto_sub then
    // prints "Subscribed (mid: 1): <granted QoS>" (128 is a refusal).
    let granted = loop {
        match out.next().await {
            Some(l) => {
                if let Some(qos) = l.strip_prefix("Subscribed (mid: 1): ") {
                    break qos.trim().to_string();
                }
            }
            None => panic!(
                "mosquitto_sub never subscribed; its output:\n{}\n--- stderr\n{}",
                out.seen.join("\n"),
                stderr_so_far(&mut child, stderr).await
            ),
        }
    };
    assert_eq!(
        granted, "1",
        "events are QoS 1; the broker granted {granted}"
    );

    let mut c = CoapClient::new(h.server.coap_addr).await;
    let mut l1 = OscoreDevice::lock("L1");
    let req = c.request(RequestType::Post, "hb", encode(&heartbeat(7)), true);
    let (_, ack) = c.exchange_verified(&mut l1, &req).await;
    assert_eq!(
        ack.header.code,
        MessageClass::Response(ResponseType::Changed)
    );

    // -v prints "<topic> <payload>" per message; debug lines start "Client ".
    let topic = "events/v1/org-1/lock/L1/heartbeat";
    let payload = loop {
        match out.next().await {
            Some(l) => {
                if let Some(p) = l.strip_prefix(topic).and_then(|r| r.strip_prefix(' ')) {
                    break p.to_string();
                }
            }
            None => panic!(
                "mosquitto_sub never printed {topic}; its output:\n{}\n--- stderr\n{}",
                out.seen.join("\n"),
                stderr_so_far(&mut child, stderr).await
            ),
        }
    };
    let _ = child.kill().await;

    let event: serde_json::Value = serde_json::from_str(&payload)
        .unwrap_or_else(|e| panic!("{topic}: payload is not JSON ({e}): {payload}"));
    let schema_text = schemas::spec::event_schema_for_topic(topic)
        .unwrap_or_else(|| panic!("no schema for topic {topic}"));
    let schema: serde_json::Value = serde_json::from_str(schema_text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&event)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{topic}: {event} does not match its schema: {errors:?}"
    );
    assert_eq!(event["lock_id"], "L1");
    assert_eq!(event["seq"], 7);
    assert_eq!(event["event_id"], "heartbeat:L1:7");
    assert_stored_once(&h, 7).await;
    h.stop().await;
}

/// A child's stdout, line by line, until a shared deadline.
struct Lines {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Every line read so far, for a failure message.
    seen: Vec<String>,
    deadline: tokio::time::Instant,
}

impl Lines {
    /// The next line, or None once the child has closed stdout or the
    /// deadline has passed.
    async fn next(&mut self) -> Option<String> {
        let line = tokio::time::timeout_at(self.deadline, self.lines.next_line())
            .await
            .ok()?
            .ok()??;
        self.seen.push(line.clone());
        Some(line)
    }
}

/// Kill `child` and return what it wrote on stderr, for a failure message.
async fn stderr_so_far(
    child: &mut tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
) -> String {
    let _ = child.kill().await;
    match tokio::time::timeout(Duration::from_secs(2), stderr).await {
        Ok(Ok(text)) => text,
        _ => "(unreadable)".into(),
    }
}
