//! Reading the gateway's `/metrics` (Prometheus text exposition format 0.0.4):
//! the sum of a metric's samples, optionally of one label value, and a
//! histogram's mean (`_sum / _count`). Pure; only what the report needs.

/// The sum of every sample of `name` whose labels include `label="value"`
/// (every sample of `name` when `label` is `None`); `None` when there is
/// none. Comment lines and other metrics are ignored, as are samples whose
/// value does not parse.
pub fn sum(text: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let wanted = label.map(|(k, v)| format!("{k}=\"{v}\""));
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name value`, `name{labels} value` and an optional timestamp after.
        let (labels, value) = if let Some(after) = rest.strip_prefix('{') {
            match after.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            // Another metric whose name starts with `name`.
            continue;
        };
        if let Some(w) = &wanted {
            if !split_labels(labels).any(|l| l == w) {
                continue;
            }
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *total.get_or_insert(0.0) += v;
    }
    total
}

/// Label pairs `k="v"`, split at the commas between them (not inside
/// quoted values).
fn split_labels(labels: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(labels[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(labels[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
}

/// The mean of histogram (or summary) `name`: `name_sum / name_count` over
/// all its series; `None` when it has no observations.
pub fn histogram_mean(text: &str, name: &str) -> Option<f64> {
    let total = sum(text, &format!("{name}_sum"), None)?;
    let count = sum(text, &format!("{name}_count"), None)?;
    (count > 0.0).then(|| total / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As metrics-exporter-prometheus renders it.
    const SAMPLE: &str = r#"# TYPE lockfleet_commit_batch_size histogram
lockfleet_commit_batch_size_bucket{le="1"} 3
lockfleet_commit_batch_size_bucket{le="+Inf"} 10
lockfleet_commit_batch_size_sum 1234
lockfleet_commit_batch_size_count 10
# HELP lockfleet_reports_committed_total Reports committed
lockfleet_reports_committed_total{kind="heartbeat"} 900
lockfleet_reports_committed_total{kind="activity_log"} 40
lockfleet_reports_committed_total_extra 7
lockfleet_uplinks_rejected_total{transport="coap",reason="a,b \"x\""} 2
lockfleet_uplinks_rejected_total{transport="mqtt",reason="malformed"} 1
lockfleet_queue 5 1700000000000
"#;

    #[test]
    fn histogram_mean_is_sum_over_count() {
        assert_eq!(
            histogram_mean(SAMPLE, "lockfleet_commit_batch_size"),
            Some(123.4)
        );
        assert_eq!(histogram_mean(SAMPLE, "lockfleet_missing"), None);
        let empty = "h_sum 0\nh_count 0\n";
        assert_eq!(histogram_mean(empty, "h"), None);
    }

    #[test]
    fn sum_filters_by_label_and_ignores_longer_names() {
        let committed = "lockfleet_reports_committed_total";
        assert_eq!(sum(SAMPLE, committed, None), Some(940.0));
        assert_eq!(
            sum(SAMPLE, committed, Some(("kind", "heartbeat"))),
            Some(900.0)
        );
        assert_eq!(sum(SAMPLE, committed, Some(("kind", "bridge"))), None);
        let rejected = "lockfleet_uplinks_rejected_total";
        assert_eq!(
            sum(SAMPLE, rejected, Some(("transport", "coap"))),
            Some(2.0)
        );
        assert_eq!(sum(SAMPLE, rejected, None), Some(3.0));
        // A timestamp after the value is not part of it.
        assert_eq!(sum(SAMPLE, "lockfleet_queue", None), Some(5.0));
    }
}
