//! `deploy/grafana/flashsale.json`: every metric its queries name is one a
//! node exports (checked against real nodes' `/metrics`: one with
//! `--database-url`, and a Redis-mode node for Redis mode's series), and
//! every recording rule it names is one of `deploy/prometheus/`'s (whose
//! own series `main.rs` holds to the nodes). That
//! every query is valid PromQL is checked by `alerting.rs`, in a real
//! Prometheus.

use std::collections::BTreeSet;

use serde_json::Value;

use super::exported::{families, table};
use super::{RULES, RedisNode, Server, UNSERVED_DATABASE_URL, read};

pub(crate) const DASHBOARD: &str = "deploy/grafana/flashsale.json";

/// Every PromQL query of the dashboard: the panels' `expr`s and the
/// template variables' queries (`label_values(QUERY, label)`: its QUERY).
pub(crate) fn queries() -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("expr", Value::String(query)) => found.push(query.clone()),
                        ("definition", Value::String(query)) => found.push(
                            query
                                .strip_prefix("label_values(")
                                .and_then(|inner| inner.rsplit_once(','))
                                .map_or(query.as_str(), |(inner, _)| inner)
                                .to_owned(),
                        ),
                        _ => walk(child, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|error| panic!("{DASHBOARD} is not JSON: {error}"));
    let mut found = Vec::new();
    walk(&dashboard, &mut found);
    assert!(
        found.len() >= 10,
        "queries read from {DASHBOARD}: {found:?}"
    );
    found
}

/// The series names `query` reads: every identifier starting `flashsale_`,
/// `flashsale:` (a recording rule) or `process_`, outside string literals.
pub(crate) fn names(query: &str) -> BTreeSet<String> {
    let identifier = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut outside = String::with_capacity(query.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in query.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => escaped = false,
            }
            outside.push(' ');
        } else {
            quoted = c == '"';
            outside.push(c);
        }
    }
    outside
        .split(|c: char| !identifier(c))
        .filter(|word| {
            ["flashsale_", "flashsale:", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

/// A histogram's sample name to its family (`x_bucket` to `x`).
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

#[test]
fn every_series_the_dashboard_reads_is_exported_or_recorded() {
    let mut metrics = BTreeSet::new();
    let mut recorded = BTreeSet::new();
    for query in queries() {
        for name in names(&query) {
            if name.contains(':') {
                recorded.insert(name);
            } else {
                metrics.insert(family(&name).to_owned());
            }
        }
    }
    for signal in [
        "flashsale_buys_total",
        "flashsale_http_request_duration_seconds",
        "flashsale_requests_shed_total",
        "flashsale_order_sink_lag_seconds",
        "flashsale_journal_fdatasync_seconds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            metrics.contains(signal),
            "{DASHBOARD} does not read {signal}"
        );
    }
    let rules = read(RULES);
    for rule in &recorded {
        assert!(
            rules.contains(&format!("- record: {rule}\n")),
            "{DASHBOARD} reads {rule}, which {RULES} does not record"
        );
    }
    let table = table();
    let (redis_names, node_names): (BTreeSet<&String>, BTreeSet<&String>) =
        metrics.iter().partition(|name| {
            table
                .get(*name)
                .is_some_and(|row| row.exported == "Redis mode")
        });
    let node = Server::start(&["--database-url", UNSERVED_DATABASE_URL]);
    assert_served(&node, &node_names, "a node with --database-url");
    // A recording rule's own series are held to the nodes by the rules'
    // tests (`main.rs`).
    if redis_names.is_empty() {
        return;
    }
    if let Some(node) = RedisNode::start("dashboard") {
        assert_served(&node.server, &redis_names, "a Redis-mode node");
    }
}

/// Asserts that `server` exports every one of `names`.
#[track_caller]
fn assert_served(server: &Server, names: &BTreeSet<&String>, what: &str) {
    let served = families(&server.metrics());
    let missing: Vec<_> = names
        .iter()
        .filter(|name| !served.contains_key(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} reads series {what} does not export: {missing:?}"
    );
}

#[test]
fn a_query_s_names_are_read_outside_its_strings() {
    let names: Vec<String> = names(
        r#"histogram_quantile(0.99, sum by (le) (rate(flashsale_x_bucket{route=~"flashsale_no|\"q\""}[1m]))) / flashsale:y:rate1m + process_z"#,
    )
    .into_iter()
    .collect();
    assert_eq!(
        names,
        ["flashsale:y:rate1m", "flashsale_x_bucket", "process_z"]
    );
    assert_eq!(family("flashsale_x_bucket"), "flashsale_x");
}
