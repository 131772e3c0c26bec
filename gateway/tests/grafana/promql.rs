//! Just enough PromQL for the proof: which metric names an expression
//! reads, and Grafana's template variables substituted into it.
//!
//! Prometheus 2.42 (Debian's) has no endpoint that returns a query's syntax
//! tree, so the names are found by a small lexer: strings, label matchers
//! (`{...}`), ranges (`[...]`), numbers and durations are skipped; an
//! identifier followed by `(` is a function or aggregation; the label lists
//! of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`
//! are skipped; keywords are not names. Every other identifier is a metric.

use std::collections::BTreeSet;

/// Operators and modifiers that read like identifiers.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Aggregations, which may be followed by `by (...)` before their `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names `expr` selects, sorted.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'{' => i = skip_group(b, i, b'{', b'}'),
            b'[' => i = skip_group(b, i, b'[', b']'),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' => {
                // A number or a duration (5m, 1h30m, 1e3, 0x1f).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = next_non_space(b, i);
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if next.is_some_and(|n| b[n] == b'(') {
                        i = skip_group(b, next.unwrap_or(i), b'(', b')');
                    }
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&word)
                    || next.is_some_and(|n| b[n] == b'(')
                {
                    // An operator, or a function's or aggregation's name.
                } else {
                    names.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn next_non_space(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    (i < b.len()).then_some(i)
}

/// The index after the string that starts at `i` (its quote).
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if quote != b'`' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    j
}

/// The index after the group that opens at `i`, strings inside skipped.
fn skip_group(b: &[u8], i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => {
                j = skip_string(b, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// `expr` with Grafana's template variables replaced (`$name`, `${name}`,
/// `${name:format}`, `[[name]]`); `Err` names a variable left over.
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut vars: Vec<&(&str, &str)> = vars.iter().collect();
    // $__rate_interval before $__interval's prefix, and so on.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    'outer: while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        for (name, value) in &vars {
            for form in [
                format!("${{{name}}}"),
                format!("[[{name}]]"),
                format!("${name}"),
            ] {
                if let Some(after) = rest.strip_prefix(form.as_str()) {
                    // `$name` must not be the start of a longer name.
                    let longer = form.starts_with("$")
                        && !form.starts_with("${")
                        && after
                            .bytes()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
                    if !longer {
                        out.push_str(value);
                        rest = after;
                        continue 'outer;
                    }
                }
            }
            let braced = format!("${{{name}:");
            if let Some(after) = rest.strip_prefix(braced.as_str()) {
                if let Some(end) = after.find('}') {
                    out.push_str(value);
                    rest = &after[end + 1..];
                    continue 'outer;
                }
            }
        }
        if let Some(after) = rest.strip_prefix('$') {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '{')
                .collect();
            return Err(format!("unknown template variable ${name} in {expr}"));
        }
        out.push_str(&rest[..1]);
        rest = &rest[1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn names_are_found_and_functions_labels_and_durations_are_not() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (le, instance) (rate(lockfleet_ack_latency_seconds_bucket{instance=~"$instance", le!="x"}[5m])))"#
            ),
            ["lockfleet_ack_latency_seconds_bucket"]
        );
        assert_eq!(
            names(
                "sum without (instance) (a_total) / on (job) group_left (kind) b offset 1h > bool 0.5 and c unless d or e"
            ),
            ["a_total", "b", "c", "d", "e"]
        );
        assert_eq!(
            names(r#"max by (job) (delta(x{age="over_1d"}[1h])) > 0"#),
            ["x"]
        );
        assert_eq!(names("sum(rate(x[5m])) by (le)"), ["x"]);
        assert_eq!(names("time() - start_seconds"), ["start_seconds"]);
        assert_eq!(names(r#"up{job="a", instance=~"b|c"} == 0"#), ["up"]);
        assert_eq!(
            names(r#"label_replace(x, "dst", "$1", "src", "(.*)")"#),
            ["x"]
        );
        assert_eq!(names("clamp_min(0.01 * y, 10) + 1e3 + 0x1f"), ["y"]);
        assert_eq!(names("rate(z[$__rate_interval])"), ["z"]);
        assert_eq!(names(r#"{__name__="hidden"}"#), Vec::<String>::new());
        assert_eq!(
            names("# a comment naming not_a_metric\nreal_metric"),
            ["real_metric"]
        );
    }

    #[test]
    fn variables_are_substituted_in_every_form_and_unknown_ones_refused() {
        let vars = [
            ("instance", "gw:9100"),
            ("__rate_interval", "60s"),
            ("__interval", "15s"),
        ];
        assert_eq!(
            substitute(
                r#"rate(x{instance=~"$instance"}[$__rate_interval]) + y[${__interval}] + z{i="[[instance]]"} + w{i="${instance:regex}"}"#,
                &vars
            )
            .unwrap(),
            r#"rate(x{instance=~"gw:9100"}[60s]) + y[15s] + z{i="gw:9100"} + w{i="gw:9100"}"#
        );
        assert_eq!(substitute("a[5m]", &vars).unwrap(), "a[5m]");
        let err = substitute(r#"x{transport=~"$transport"}"#, &vars).unwrap_err();
        assert!(err.contains("$transport"), "{err}");
        let err = substitute(r#"x{i=~"$instances"}"#, &vars).unwrap_err();
        assert!(err.contains("$instances"), "{err}");
    }
}
