//! The Grafana dashboards and Prometheus alert rules in `grafana/`, proven
//! against a real Prometheus (Debian's `prometheus` package) scraping the
//! real `gateway serve` under the simulator's load:
//!
//! * every dashboard panel's query and every rule's expression parses, and
//!   every panel returns data, with the template variables set to "All"
//!   and to one real value each; every variable's query finds values;
//! * every metric name a panel or rule reads is one the gateway exports
//!   (Prometheus's own `up` aside); the gateway's metrics that no panel or
//!   rule reads are listed;
//! * Prometheus loaded every rule and evaluates each without error;
//! * the scenario's events show on the metrics (jobs completed and failed,
//!   doors opened, a bridge offline, a lock overdue, ...);
//! * `promtool check config`, `check rules` and `test rules` pass;
//! * the dashboards and provisioning files load in Grafana as they are.
//!
//! Without prometheus and promtool the tests fail, saying what to install.

#[path = "../common/mod.rs"]
mod common;
mod files;
mod prometheus;
mod promql;
mod scenario;

use prometheus::{promtool, unix_now, Prometheus, SCRAPE_INTERVAL};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Names a query may read that the gateway does not export: the ones
/// Prometheus makes itself for every scrape target.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// What the scenario must have left on the metrics, over the run's window
/// (`$W`). Each must evaluate to a number above zero; `max_over_time` so a
/// series that was born with its first event counts.
const EVIDENCE: &[(&str, &str)] = &[
    (
        "CoAP uplinks decoded",
        r#"sum(max_over_time(lockfleet_uplinks_decoded_total{transport="coap"}[$W]))"#,
    ),
    (
        "MQTT uplinks decoded",
        r#"sum(max_over_time(lockfleet_uplinks_decoded_total{transport="mqtt"}[$W]))"#,
    ),
    (
        "CoAP inputs rejected",
        r#"sum(max_over_time(lockfleet_uplinks_rejected_total{transport="coap"}[$W]))"#,
    ),
    (
        "a wrong MQTT password refused",
        r#"sum(max_over_time(lockfleet_mqtt_front_refused_total{reason="bad_credentials"}[$W]))"#,
    ),
    (
        "jobs completed at a heartbeat",
        r#"sum(max_over_time(lockfleet_job_completion_seconds_count{route="heartbeat"}[$W]))"#,
    ),
    (
        "jobs completed through a bridge",
        r#"sum(max_over_time(lockfleet_job_completion_seconds_count{route="bridge"}[$W]))"#,
    ),
    (
        "a job failed on a hard reset",
        r#"sum(max_over_time(lockfleet_jobs_failed_total{outcome="hard_reset"}[$W]))"#,
    ),
    (
        "a job recreated",
        r#"sum(max_over_time(lockfleet_job_changes_total{change="recreated"}[$W]))"#,
    ),
    (
        "a command refused",
        r#"sum(max_over_time(lockfleet_commands_refused_total[$W]))"#,
    ),
    (
        "a repeated result ignored",
        r#"sum(max_over_time(lockfleet_job_results_ignored_total{reason="already_final"}[$W]))"#,
    ),
    (
        "a job pending",
        r#"max(max_over_time(lockfleet_jobs_pending[$W]))"#,
    ),
    (
        "bridge commands sent",
        r#"sum(max_over_time(lockfleet_bridge_commands_sent_total[$W]))"#,
    ),
    (
        "a bridge offline",
        r#"sum(max_over_time(lockfleet_bridge_connectivity_changes_total{change="offline"}[$W]))"#,
    ),
    (
        "a lock overdue",
        r#"max(max_over_time(lockfleet_locks_overdue[$W]))"#,
    ),
    (
        "a lock reported overdue and back",
        r#"min(max_over_time(lockfleet_overdue_changes_total[$W]))"#,
    ),
    (
        "a low-battery lock",
        r#"max(max_over_time(lockfleet_locks_low_battery[$W]))"#,
    ),
    (
        "retention deleted a heartbeat",
        r#"sum(max_over_time(lockfleet_retention_deleted_total{table="heartbeats"}[$W]))"#,
    ),
    (
        "2FA doors opened",
        r#"sum(max_over_time(lockfleet_twofa_entries_total{result="allowed"}[$W]))"#,
    ),
    (
        "a wrong OTP",
        r#"sum(max_over_time(lockfleet_twofa_entries_total{result="wrong_otp"}[$W]))"#,
    ),
    (
        "the SMS provider failing",
        r#"sum(max_over_time(lockfleet_twofa_notifier_failures_total[$W]))"#,
    ),
    (
        "a lock's 2FA locked out",
        r#"max(max_over_time(lockfleet_twofa_lockouts{scope="lock"}[$W]))"#,
    ),
    (
        "a lock-out started and cleared",
        r#"min(max_over_time(lockfleet_twofa_lockout_changes_total[$W]))"#,
    ),
    (
        "process CPU",
        r#"max(max_over_time(lockfleet_process_cpu_seconds_total[$W]))"#,
    ),
    (
        "tokio tasks",
        r#"max(max_over_time(lockfleet_tokio_alive_tasks[$W]))"#,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alert_rules_hold_against_a_real_prometheus_scraping_a_loaded_gateway() {
    // Before anything starts: missing tools fail the test at once.
    prometheus::tool("prometheus");
    let job = files::gateway_job();
    let rules = files::rules();
    let dashboards = files::dashboards();
    assert!(!rules.is_empty() && !dashboards.is_empty());

    let mut world = scenario::World::start().await;
    let prom = Prometheus::start(&job, world.gateway.http, &files::rule_files()).await;
    prom.wait_scraped(&job).await;
    let started = unix_now();
    world.start_devices().await;
    world.drive().await;
    // Let the last events be scraped. Every query is evaluated at `at`,
    // over a window that reaches back before the first scrape.
    tokio::time::sleep(SCRAPE_INTERVAL * 3).await;
    let at = unix_now();
    let window = format!("{}s", (at - started).ceil() as u64 + 5);
    let exposition = common::http_get(world.gateway.http, "/metrics")
        .await
        .unwrap()
        .1;
    let exported = exported_names(&exposition);

    let mut failures: Vec<String> = Vec::new();
    check_target_and_rules(&prom, &job, &rules, &mut failures).await;

    let mut referenced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in &rules {
        if let Err(e) = prom.query(&rule.expr, at).await {
            failures.push(format!("rule {}: does not evaluate: {e}", rule.name));
        }
        for name in promql::metric_names(&rule.expr) {
            referenced
                .entry(name)
                .or_default()
                .insert(format!("rule {}", rule.name));
        }
    }

    let mut empty_targets = Vec::new();
    for d in &dashboards {
        let passes = variable_passes(&prom, d, &window, at, &mut failures).await;
        let targets = d.targets();
        for t in &targets {
            for name in promql::metric_names(&t.expr) {
                referenced.entry(name).or_default().insert(t.to_string());
            }
        }
        for (pass, vars) in &passes {
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            // Panel title -> (some target had data, some value was a number).
            let mut panels: BTreeMap<String, (bool, bool)> = BTreeMap::new();
            for t in &targets {
                let expr = match promql::substitute(&t.expr, &vars) {
                    Ok(e) => e,
                    Err(e) => {
                        failures.push(format!("{t}: {e}"));
                        continue;
                    }
                };
                let seen = panels.entry(t.panel.clone()).or_default();
                match prom.query(&expr, at).await {
                    Ok(a) => {
                        seen.0 |= a.has_data();
                        seen.1 |= !a.numbers().is_empty();
                        if !a.has_data() && pass == "All" {
                            empty_targets.push(format!("{t}: {expr}"));
                        }
                    }
                    Err(e) => failures.push(format!("{t} ({pass}): {e}\n    {expr}")),
                }
            }
            for (panel, (data, number)) in panels {
                if !data {
                    failures.push(format!("{} / {panel} ({pass}): no data", d.title()));
                } else if !number {
                    failures.push(format!(
                        "{} / {panel} ({pass}): only NaN (no observations in the window)",
                        d.title()
                    ));
                }
            }
        }
    }

    for (name, users) in &referenced {
        if !exported.contains(name) && !PROMETHEUS_OWN.contains(&name.as_str()) {
            failures.push(format!(
                "{name} is read by {} but the gateway does not export it",
                users.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let unused = unused_families(&exposition, &referenced);
    eprintln!(
        "gateway metrics that no panel or rule reads ({}): {unused:?}",
        unused.len()
    );
    eprintln!(
        "panel queries without data with every variable at All ({}): {empty_targets:#?}",
        empty_targets.len()
    );

    for (what, expr) in EVIDENCE {
        let expr = expr.replace("$W", &window);
        match prom.query(&expr, at).await {
            Ok(a) if a.numbers().iter().any(|v| *v > 0.0) => {}
            Ok(a) => failures.push(format!(
                "the scenario left no trace of {what}: {expr} = {:?}",
                a.samples
            )),
            Err(e) => failures.push(format!("evidence {what}: {e}")),
        }
    }

    world.stop().await;
    drop(prom);
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The gateway is scraped and healthy, and Prometheus loaded exactly the
/// rules of the files and evaluates each without error.
async fn check_target_and_rules(
    prom: &Prometheus,
    job: &str,
    rules: &[files::Rule],
    failures: &mut Vec<String>,
) {
    let targets = prom.targets().await;
    let active = targets["data"]["activeTargets"].as_array().cloned();
    let healthy = active.iter().flatten().any(|t| {
        t["labels"]["job"] == job && t["health"] == "up" && t["lastError"].as_str() == Some("")
    });
    if !healthy {
        failures.push(format!("the gateway target is not healthy: {targets}"));
    }
    let loaded = prom.rules().await;
    let mut seen = BTreeSet::new();
    for group in loaded["data"]["groups"].as_array().into_iter().flatten() {
        for r in group["rules"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("?").to_string();
            if r["health"] != "ok" {
                failures.push(format!(
                    "rule {name}: health {} ({})",
                    r["health"],
                    r["lastError"].as_str().unwrap_or("")
                ));
            }
            seen.insert(name);
        }
    }
    let expected: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
    if seen != expected {
        failures.push(format!(
            "Prometheus loaded rules {seen:?}, the files hold {expected:?}"
        ));
    }
}

/// The variable settings each dashboard is queried with: every variable at
/// "All" (its allValue), then every variable at the first value its query
/// finds; `$__rate_interval` and `$__interval` span the whole run, so every
/// event of the scenario is inside the window. A variable whose query
/// finds nothing is a failure.
async fn variable_passes(
    prom: &Prometheus,
    d: &files::Dashboard,
    window: &str,
    at: f64,
    failures: &mut Vec<String>,
) -> Vec<(String, BTreeMap<String, String>)> {
    let base: BTreeMap<String, String> = [
        ("__rate_interval".to_string(), window.to_string()),
        ("__interval".to_string(), window.to_string()),
    ]
    .into();
    let (mut all, mut first) = (base.clone(), base);
    for v in d.variables() {
        if v.kind == "datasource" {
            continue;
        }
        let Some((selector, label)) = v.label_values() else {
            failures.push(format!(
                "{}: variable {} is not label_values(selector, label): {:?}",
                d.title(),
                v.name,
                v.query
            ));
            continue;
        };
        let vars: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let selector = match promql::substitute(&selector, &vars) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: variable {}: {e}", d.title(), v.name));
                continue;
            }
        };
        let values: BTreeSet<String> = match prom
            .query(&format!("group by ({label}) ({selector})"), at)
            .await
        {
            Ok(a) => a
                .samples
                .iter()
                .filter_map(|(m, _)| m[&label].as_str().map(String::from))
                .collect(),
            Err(e) => {
                failures.push(format!("{}: variable {}: {e}", d.title(), v.name));
                BTreeSet::new()
            }
        };
        let Some(one) = values.first() else {
            failures.push(format!(
                "{}: variable {} finds no values ({selector}, {label})",
                d.title(),
                v.name
            ));
            continue;
        };
        all.insert(
            v.name.clone(),
            v.all_value.clone().unwrap_or_else(|| {
                format!("({})", values.iter().cloned().collect::<Vec<_>>().join("|"))
            }),
        );
        first.insert(v.name.clone(), one.clone());
    }
    vec![("All".into(), all), ("first value".into(), first)]
}

/// Every sample name of a Prometheus text exposition.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

/// The metric families (`# TYPE` lines) no name in `referenced` reads.
fn unused_families(
    exposition: &str,
    referenced: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|family| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|s| referenced.contains_key(&format!("{family}{s}")))
        })
        .map(String::from)
        .collect()
}

#[test]
fn promtool_checks_the_configuration_and_rules_and_passes_the_rule_tests() {
    let config = files::prometheus_config();
    promtool(&["check".as_ref(), "config".as_ref(), config.as_os_str()])
        .unwrap_or_else(|e| panic!("promtool check config {}:\n{e}", config.display()));
    let rule_files = files::rule_files();
    assert!(!rule_files.is_empty(), "no rule files");
    let mut args: Vec<&std::ffi::OsStr> = vec!["check".as_ref(), "rules".as_ref()];
    args.extend(rule_files.iter().map(|p| p.as_os_str()));
    promtool(&args).unwrap_or_else(|e| panic!("promtool check rules:\n{e}"));
    let tests = files::rule_test_files();
    assert!(!tests.is_empty(), "no rule tests");
    let mut args: Vec<&std::ffi::OsStr> = vec!["test".as_ref(), "rules".as_ref()];
    args.extend(tests.iter().map(|p| p.as_os_str()));
    promtool(&args).unwrap_or_else(|e| panic!("promtool test rules:\n{e}"));
    // Every alert has a test of its own.
    let tested: String = tests
        .iter()
        .map(|t| std::fs::read_to_string(t).unwrap())
        .collect();
    for rule in files::rules() {
        assert!(
            tested.contains(&format!("alertname: {}", rule.name)),
            "alert {} has no promtool test",
            rule.name
        );
    }
}

#[test]
fn dashboards_and_provisioning_files_load_in_grafana_as_they_are() {
    let dir = files::grafana_dir();
    let provider = files::yaml(&dir.join("provisioning/dashboards/lockfleet.yaml"));
    let p = &provider["providers"][0];
    assert_eq!(p["type"], "file", "{provider}");
    assert!(
        p["options"]["path"].as_str().is_some_and(|s| !s.is_empty()),
        "{provider}"
    );
    let sources = files::yaml(&dir.join("provisioning/datasources/lockfleet-prometheus.yaml"));
    let ds = &sources["datasources"][0];
    assert_eq!(ds["type"], "prometheus", "{sources}");
    assert!(ds["url"].as_str().is_some_and(|u| u.starts_with("http")));

    let readme = std::fs::read_to_string(dir.parent().unwrap().join("README.md")).unwrap();
    let mut uids = BTreeSet::new();
    for d in files::dashboards() {
        let name = d.file.display().to_string();
        let j = &d.json;
        // A dashboard exported "for sharing externally" asks for its
        // datasource on import, and file provisioning never imports.
        assert!(j.get("__inputs").is_none(), "{name}: has __inputs");
        assert!(
            j["id"].is_null(),
            "{name}: a fixed id clashes across Grafanas"
        );
        let uid = j["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} twice");
        assert!(
            j["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&Value::from("lockfleet"))),
            "{name}: not tagged lockfleet (the dashboards' links find each other by it)"
        );
        assert!(
            readme.contains(d.title()),
            "{name}: README does not describe {}",
            d.title()
        );
        let vars = d.variables();
        let var = |n: &str| vars.iter().find(|v| v.name == n);
        assert!(
            var("datasource").is_some_and(|v| v.kind == "datasource"
                && v.query.as_deref() == Some("prometheus")),
            "{name}: no datasource variable"
        );
        assert!(
            var("instance").is_some_and(|v| v.label_values().is_some()),
            "{name}: no instance variable"
        );
        let mut ids = BTreeSet::new();
        for panel in d.panels() {
            let title = panel["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(
                    panel["id"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{name}: {title}: no id"))
                ),
                "{name}: panel id twice ({title})"
            );
            assert!(
                panel["gridPos"]["w"].as_u64().is_some(),
                "{name}: {title}: no gridPos"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {title}: not on the datasource variable"
            );
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(
                    expr.contains("instance=~\"$instance\""),
                    "{name}: {title}: does not follow the instance variable: {expr}"
                );
            }
        }
    }
    assert!(uids.len() >= 5, "five dashboards: {uids:?}");
    let fleet = files::dashboards()
        .into_iter()
        .find(|d| d.json["uid"] == "lockfleet-fleet")
        .expect("the Fleet overview");
    assert!(
        fleet.variables().iter().any(|v| v.name == "transport"),
        "the Fleet overview has a transport variable"
    );

    for rule in files::rule_files() {
        for group in files::yaml(&rule)["groups"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for r in group["rules"].as_array().into_iter().flatten() {
                let Some(alert) = r["alert"].as_str() else {
                    continue;
                };
                assert!(
                    matches!(
                        r["labels"]["severity"].as_str(),
                        Some("critical" | "warning")
                    ),
                    "{alert}: severity critical or warning"
                );
                for a in ["summary", "description", "runbook"] {
                    assert!(
                        r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                        "{alert}: no {a} annotation"
                    );
                }
                assert!(readme.contains(alert), "README does not explain {alert}");
            }
        }
    }
}
