//! The `gateway serve` binary as a child process on ephemeral loopback
//! ports, over a database the test prepared (the test server key and
//! backend password of `gateway::store::testing`), with its log kept.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `gateway serve`; killed if dropped.
pub struct GatewayProcess {
    pub child: Child,
    /// Its log lines (stderr), in order.
    pub log: Arc<Mutex<Vec<String>>>,
    pub coap: SocketAddr,
    pub mqtt: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: SocketAddr,
}

impl GatewayProcess {
    /// `gateway serve` on `database_url` with its data in `dir`.
    pub async fn start(database_url: &str, dir: &std::path::Path) -> GatewayProcess {
        GatewayProcess::start_with(database_url, dir, &[]).await
    }

    /// [`GatewayProcess::start`] with more flags.
    pub async fn start_with(
        database_url: &str,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> GatewayProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LOCKFLEET_") {
                cmd.env_remove(key);
            }
        }
        let key_file = gateway::store::testing::server_key_file(dir);
        cmd.args([
            "serve",
            "--coap-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ])
        .arg("--data-dir")
        .arg(dir)
        .arg("--server-key-file")
        .arg(&key_file)
        .arg("--backend-password-hash")
        .arg(gateway::store::testing::backend_password_hash())
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().expect("the gateway binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = |needle: &str| {
            log.lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .and_then(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| {
                            a.trim_end_matches(|c: char| !c.is_ascii_digit())
                                .parse()
                                .ok()
                        })
                })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let (Some(coap), Some(mqtt), Some(http)) = (
                addr("CoAP listening (UDP)"),
                addr("MQTT listening (MQTT 3.1.1"),
                addr("metrics and health on http://"),
            ) {
                let p = GatewayProcess {
                    child,
                    log,
                    coap,
                    mqtt,
                    http,
                };
                // The MQTT sessions come up just after the listeners.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not start:\n{}",
                log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill_9(mut self) {
        let pid = self.child.id().expect("running");
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait().await;
    }

    /// SIGTERM, and wait for the drain to end.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
