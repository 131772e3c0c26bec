//! The files under `grafana/` as the proof reads them: dashboards (their
//! panels' queries and template variables), alert and recording rules,
//! the scrape configuration and the Grafana provisioning files.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The repository's `grafana/` directory.
pub fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the workspace")
        .join("grafana")
}

/// The files in `dir` whose names end with `suffix`, sorted.
pub fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// A dashboard file.
pub struct Dashboard {
    pub file: PathBuf,
    pub json: Value,
}

impl Dashboard {
    pub fn title(&self) -> &str {
        self.json["title"].as_str().unwrap_or("(untitled)")
    }

    /// Every panel, those inside rows included.
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Every query of every panel.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for p in self.panels() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Target {
                    dashboard: self.title().to_string(),
                    panel: p["title"].as_str().unwrap_or("(untitled)").to_string(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                    expr: t["expr"].as_str().unwrap_or("").to_string(),
                });
            }
        }
        out
    }

    /// The template variables, in order.
    pub fn variables(&self) -> Vec<Variable> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| Variable {
                name: v["name"].as_str().unwrap_or("").to_string(),
                kind: v["type"].as_str().unwrap_or("").to_string(),
                query: match &v["query"] {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("query").and_then(Value::as_str).map(String::from),
                    _ => None,
                },
                all_value: v["allValue"].as_str().map(String::from),
            })
            .collect()
    }
}

/// One query of one panel.
#[derive(Clone, Debug)]
pub struct Target {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {} / {}", self.dashboard, self.panel, self.ref_id)
    }
}

/// A dashboard's template variable.
#[derive(Clone, Debug)]
pub struct Variable {
    pub name: String,
    /// `query`, `datasource`, `custom`, ...
    pub kind: String,
    pub query: Option<String>,
    pub all_value: Option<String>,
}

impl Variable {
    /// `label_values(selector, label)` as (selector, label).
    pub fn label_values(&self) -> Option<(String, String)> {
        let q = self.query.as_deref()?.trim();
        let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
        let (selector, label) = inner.rsplit_once(',')?;
        Some((selector.trim().to_string(), label.trim().to_string()))
    }
}

/// Every dashboard under `grafana/dashboards/`.
pub fn dashboards() -> Vec<Dashboard> {
    files(&grafana_dir().join("dashboards"), ".json")
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
            Dashboard { file, json }
        })
        .collect()
}

/// The rule files Prometheus loads.
pub fn rule_files() -> Vec<PathBuf> {
    files(&grafana_dir().join("prometheus/rules"), ".yml")
}

/// The rule-test files of `promtool test rules`.
pub fn rule_test_files() -> Vec<PathBuf> {
    files(&grafana_dir().join("prometheus/tests"), ".test.yml")
}

/// The scrape configuration.
pub fn prometheus_config() -> PathBuf {
    grafana_dir().join("prometheus/prometheus.yml")
}

/// A YAML file as JSON values.
pub fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One rule: an alert or a recording rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub expr: String,
}

/// Every rule of every rule file.
pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for file in rule_files() {
        for group in yaml(&file)["groups"].as_array().into_iter().flatten() {
            for r in group["rules"].as_array().into_iter().flatten() {
                let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
                out.push(Rule {
                    name: name.to_string(),
                    expr: r["expr"].as_str().unwrap_or("").trim().to_string(),
                });
            }
        }
    }
    out
}

/// The job name of the gateways in the scrape configuration.
pub fn gateway_job() -> String {
    let config = yaml(&prometheus_config());
    let jobs: Vec<&str> = config["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["job_name"].as_str())
        .collect();
    assert_eq!(jobs.len(), 1, "one scrape job, the gateways': {jobs:?}");
    jobs[0].to_string()
}
