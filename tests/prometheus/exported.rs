//! `docs/metrics.md`'s table is what nodes export: for a node of each
//! kind (one node; one node with `--database-url`; a Redis-mode node), the
//! metric families its `/metrics` lists (by their `# TYPE` lines) are
//! exactly the table's rows for that kind, with the table's type, and the
//! labels of every sample are the table's.

use std::collections::{BTreeMap, BTreeSet};

use super::{METRICS_TABLE, RedisNode, Server, UNSERVED_DATABASE_URL, read};

/// One row of the table.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) kind: String,
    pub(crate) labels: BTreeSet<String>,
    pub(crate) exported: String,
}

/// The table's rows by metric name: every line `` | `name` | type |
/// labels | exported | meaning | ``.
pub(crate) fn table() -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for line in read(METRICS_TABLE).lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, labels, exported, _meaning, _] = cells[..] else {
            continue;
        };
        let Some(name) = name
            .strip_prefix('`')
            .and_then(|name| name.strip_suffix('`'))
        else {
            continue;
        };
        let labels = labels
            .split(',')
            .map(|label| label.trim().trim_matches('`'))
            .filter(|label| !label.is_empty())
            .map(str::to_owned)
            .collect();
        let row = Row {
            kind: kind.to_owned(),
            labels,
            exported: exported.to_owned(),
        };
        assert!(
            rows.insert(name.to_owned(), row).is_none(),
            "{METRICS_TABLE} lists {name} twice"
        );
    }
    assert!(rows.len() > 20, "rows read from {METRICS_TABLE}: {rows:?}");
    rows
}

/// A family as `/metrics` shows it: its type, and the label names of its
/// samples (without a histogram's `le`).
#[derive(Debug, Default)]
pub(crate) struct Family {
    pub(crate) kind: String,
    pub(crate) labels: BTreeSet<String>,
    pub(crate) samples: usize,
}

/// The families of Prometheus text `body`, by name.
pub(crate) fn families(body: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in body.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').expect("`# TYPE name type`");
            families.entry(name.to_owned()).or_default().kind = kind.to_owned();
        }
    }
    for line in body
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
            .unwrap_or(name);
        let family = families
            .get_mut(family)
            .unwrap_or_else(|| panic!("{name} has no # TYPE line in /metrics"));
        family.samples += 1;
        if line[end..].starts_with('{') {
            family.labels.extend(
                label_names(&line[end + 1..])
                    .into_iter()
                    .filter(|label| label != "le"),
            );
        }
    }
    families
}

/// The label names of a sample's labels, `text` being what follows its
/// `{` (values are quoted and may hold `,`, `=`, `{`, `}` and `\"`).
fn label_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut name, mut quoted, mut escaped) = (String::new(), false, false);
    for c in text.chars() {
        match (quoted, escaped, c) {
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (true, _, _) => escaped = false,
            (false, _, '"') => quoted = true,
            (false, _, '=') => names.push(std::mem::take(&mut name)),
            (false, _, '}') => break,
            (false, _, ',' | ' ') => {}
            (false, _, c) => name.push(c),
        }
    }
    names
}

/// Holds a node's `/metrics` against the table's rows exported by `kinds`.
fn check(server: &Server, kinds: &[&str], what: &str) {
    let table = table();
    let expected: BTreeSet<&String> = table
        .iter()
        .filter(|(_, row)| kinds.contains(&row.exported.as_str()))
        .map(|(name, _)| name)
        .collect();
    let families = families(&server.metrics());
    let served: BTreeSet<&String> = families.keys().collect();
    let undocumented: Vec<_> = served.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&served).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "{what}: served but not in {METRICS_TABLE} (or not as exported {kinds:?}): \
         {undocumented:?}; in the table but not served: {missing:?}"
    );
    for (name, family) in &families {
        let row = &table[name];
        assert_eq!(family.kind, row.kind, "{name}'s type");
        if family.samples > 0 {
            assert_eq!(family.labels, row.labels, "{name}'s labels");
        }
    }
}

#[test]
fn the_metrics_table_is_what_one_node_exports() {
    let server = Server::start(&[]);
    check(&server, &["always", "one node"], "one node");
}

#[test]
fn the_metrics_table_is_what_a_node_with_a_database_url_exports() {
    let server = Server::start(&["--database-url", UNSERVED_DATABASE_URL]);
    check(
        &server,
        &["always", "one node", "`--database-url`"],
        "one node with --database-url",
    );
}

#[test]
fn the_metrics_table_is_what_a_redis_mode_node_exports() {
    let Some(node) = RedisNode::start("table") else {
        return;
    };
    check(&node.server, &["always", "Redis mode"], "a Redis-mode node");
}

#[test]
fn the_table_and_the_text_are_read_as_intended() {
    let body = "# TYPE a_seconds histogram\na_seconds_bucket{route=\"GET /\",le=\"0.1\"} 1\n\
                a_seconds_sum{route=\"GET /\"} 0.01\na_seconds_count{route=\"GET /\"} 1\n\
                # TYPE b_total counter\nb_total{x=\"1,2\",y=\"GET /{id} \\\"q\\\"\"} 3\n\n# TYPE c gauge\n";
    let families = families(body);
    assert_eq!(families["a_seconds"].kind, "histogram");
    assert_eq!(families["a_seconds"].samples, 3);
    assert_eq!(
        families["a_seconds"].labels,
        BTreeSet::from(["route".to_owned()])
    );
    assert_eq!(
        families["b_total"].labels,
        BTreeSet::from(["x".to_owned(), "y".to_owned()])
    );
    assert_eq!(families["c"].samples, 0);
    let table = table();
    assert_eq!(table["flashsale_http_requests_total"].kind, "counter");
    assert_eq!(
        table["flashsale_http_requests_total"].labels,
        BTreeSet::from(["route".to_owned(), "status".to_owned()])
    );
    assert_eq!(table["flashsale_redis_durability"].exported, "Redis mode");
}
