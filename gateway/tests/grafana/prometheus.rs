//! A real Prometheus for one test: Debian's `prometheus` binary on a
//! loopback port of its own, with its own configuration and a temporary
//! storage directory, killed when dropped; and `promtool`.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How often the test's Prometheus scrapes and evaluates rules: short, so
/// that a run of a minute gives every `rate()` many samples.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// `name` (prometheus, promtool) on PATH or in /usr/bin. Missing, the test
/// fails saying what to install: it never passes without having run.
pub fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` was not found on PATH or in /usr/bin. The Grafana and alert-rule \
                 tests need a real Prometheus: install Debian's `prometheus` package \
                 (`apt-get install prometheus`, which provides prometheus and promtool; \
                 `bash .ci/run` installs it)."
            )
        })
}

/// Run promtool with `args`; `Err` carries its output.
pub fn promtool(args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = Command::new(tool("promtool"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running promtool: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One query's answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The series (or the one scalar): labels and value.
    pub samples: Vec<(Value, String)>,
}

impl Answer {
    /// Some series, or a scalar.
    pub fn has_data(&self) -> bool {
        !self.samples.is_empty()
    }

    /// Values that are numbers (not NaN).
    pub fn numbers(&self) -> Vec<f64> {
        self.samples
            .iter()
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .filter(|v| !v.is_nan())
            .collect()
    }
}

impl Prometheus {
    /// Scrape `target` as job `job` every [`SCRAPE_INTERVAL`], evaluating
    /// `rule_files`.
    pub async fn start(job: &str, target: SocketAddr, rule_files: &[PathBuf]) -> Prometheus {
        let binary = tool("prometheus");
        // The port is the OS's pick; another process could take it between
        // our probe and Prometheus's bind, so a failed start is tried again.
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let addr = free_port();
            let rules: Vec<String> = rule_files
                .iter()
                .map(|f| format!("  - {}", yaml_string(f)))
                .collect();
            let config = format!(
                "global:\n  scrape_interval: {s}s\n  scrape_timeout: {s}s\n  evaluation_interval: {s}s\n\
                 rule_files:\n{rules}\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n",
                s = SCRAPE_INTERVAL.as_secs(),
                rules = rules.join("\n"),
            );
            let config_file = dir.path().join("prometheus.yml");
            std::fs::write(&config_file, config).unwrap();
            let log_file = dir.path().join("prometheus.log");
            let log = std::fs::File::create(&log_file).unwrap();
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=1d")
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            let mut p = Prometheus {
                child,
                addr,
                _dir: dir,
                client: reqwest::Client::new(),
            };
            if p.wait_ready().await {
                return p;
            }
            last_log = std::fs::read_to_string(&log_file).unwrap_or_default();
        }
        panic!("Prometheus did not start:\n{last_log}");
    }

    /// Until `/-/ready` answers 200; false if the process ended first.
    async fn wait_ready(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let url = format!("http://{}/-/ready", self.addr);
            if let Ok(r) = self.client.get(url).send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// GET `path` with `params`, as JSON.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("http://{}{path}", self.addr), params)
            .expect("a valid URL");
        let r = self
            .client
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        let text = r
            .text()
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("Prometheus {path}: not JSON ({e}): {text}"))
    }

    /// Evaluate `expr` at `at` (`/api/v1/query`; Unix seconds, so that a
    /// window ending then holds what it held, however long the checks
    /// take); `Err` is Prometheus's error (a parse error, an unknown
    /// function, a type mismatch).
    pub async fn query(&self, expr: &str, at: f64) -> Result<Answer, String> {
        let at = format!("{at:.3}");
        let v = self
            .api("/api/v1/query", &[("query", expr), ("time", &at)])
            .await;
        if v["status"] != "success" {
            return Err(format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ));
        }
        let data = &v["data"];
        let value = |s: &Value| s[1].as_str().unwrap_or("").to_string();
        // `vector`, `matrix`, `scalar` or `string`.
        let samples = match data["resultType"].as_str().unwrap_or("") {
            "vector" => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| (s["metric"].clone(), value(&s["value"])))
                .collect(),
            "matrix" => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let last = s["values"].as_array()?.last()?;
                    Some((s["metric"].clone(), value(last)))
                })
                .collect(),
            _ => vec![(Value::Null, value(&data["result"]))],
        };
        Ok(Answer { samples })
    }

    /// Until Prometheus has scraped `job` twice (its first scrape waits for
    /// service discovery's first update, seconds after start), so that
    /// whatever happens next is a change it sees.
    pub async fn wait_scraped(&self, job: &str) {
        let expr = format!("count_over_time(up{{job=\"{job}\"}}[1m])");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let scrapes = self
                .query(&expr, unix_now())
                .await
                .map(|a| a.numbers().into_iter().fold(0.0, f64::max))
                .unwrap_or(0.0);
            if scrapes >= 2.0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus never scraped {job}: {}",
                self.targets().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `/api/v1/rules`: the loaded rule groups.
    pub async fn rules(&self) -> Value {
        self.api("/api/v1/rules", &[]).await
    }

    /// `/api/v1/targets`: the scrape targets and their health.
    pub async fn targets(&self) -> Value {
        self.api("/api/v1/targets", &[]).await
    }
}

/// A loopback address with a port the OS just had free.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `path` as a YAML string (single-quoted).
fn yaml_string(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// The wall clock, Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    #[test]
    #[should_panic(expected = "install Debian's `prometheus` package")]
    fn a_missing_tool_fails_the_test_saying_what_to_install() {
        super::tool("prometheus-that-is-not-installed");
    }
}
