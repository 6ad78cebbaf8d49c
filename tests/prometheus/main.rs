//! Monitoring with the tools SREs run, against real nodes:
//!
//! - the rules in `deploy/prometheus/` (here): `promtool check rules`
//!   accepts them, `promtool test rules` passes their unit tests, every
//!   alert has a firing and a quiet case there and a section of
//!   `docs/runbook.md`, and every metric the rules read is one a freshly
//!   started `flashsale serve` exports, so renaming a metric breaks a test
//!   here rather than an alert in production;
//! - `exported.rs`: `docs/metrics.md`'s table is exactly what nodes export;
//! - `dashboard.rs`: the Grafana dashboard reads only exported series;
//! - `alerting.rs`: Debian's `prometheus` scrapes a real node with the
//!   rules, and the books-lag alert goes pending while the node's own
//!   Postgres is stopped and resolves once it is back.
//!
//! Without `promtool` or `prometheus` on `$PATH` (Debian's `prometheus`
//! package; or the files named by `PROMTOOL`, `PROMETHEUS`), or without
//! Postgres' `initdb` and `pg_ctl` (`INITDB`, `PG_CTL`), the tests needing
//! them print one `skipped:` line and pass, and fail under `CI` or
//! `FLASHSALE_REQUIRE_SERVICES=1` (`flashsale_testkit::services_required`).
//! The order sink's series (`flashsale_order_sink_*`) are checked against
//! a server given a `--database-url` nobody serves (they are listed before
//! the sink first reaches Postgres); Redis mode's (`flashsale_redis_*`)
//! against a server on `REDIS_URL`, skipped or failed like the other Redis
//! tests (`flashsale_testkit::redis_url`).

mod alerting;
mod dashboard;
mod exported;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const RULES: &str = "deploy/prometheus/flashsale.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests.yml";
const RUNBOOK: &str = "docs/runbook.md";
const METRICS_TABLE: &str = "docs/metrics.md";
const ADMIN_TOKEN: &str = "prometheus-test-admin-token";
const SECRET: &str = "prometheus-test-secret-0123456789";
/// A Postgres nobody serves: the order sink starts, retries, and lists its series.
const UNSERVED_DATABASE_URL: &str = "postgres://flashsale@127.0.0.1:1/flashsale";
const LISTENING: &str = "flashsale listening on http://";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to list a series that appears after start
/// (the order sink's lag gauges, after its first pass).
const SERIES_TIMEOUT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

// ---- promtool -------------------------------------------------------------

/// `promtool` (`PROMTOOL`, else `$PATH`), or `None` after the skip line.
///
/// # Panics
/// Without it under CI or `FLASHSALE_REQUIRE_SERVICES=1`.
fn promtool() -> Option<PathBuf> {
    tool("PROMTOOL", "promtool", "Prometheus rules tests")
}

/// The program `name` (the file the variable `variable` names, else on
/// `$PATH`), or `None` after one skip line per program saying that `what`
/// is skipped.
///
/// # Panics
/// Without it under CI or `FLASHSALE_REQUIRE_SERVICES=1`.
fn tool(variable: &str, name: &str, what: &str) -> Option<PathBuf> {
    static PRINTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if let Some(path) = flashsale_testkit::program(variable, &[name]) {
        return Some(path);
    }
    let line = format!(
        "{what}, {name} is not on $PATH (set {variable}, or install Debian's package: \
         `apt-get install -y prometheus postgresql`)"
    );
    if flashsale_testkit::services_required() {
        panic!("{line}; required because CI or FLASHSALE_REQUIRE_SERVICES=1 is set");
    }
    let first = PRINTED
        .lock()
        .map(|mut printed| printed.insert(name.to_owned()))
        .unwrap_or(true);
    if first {
        // Past libtest's capture, like flashsale-testkit's skip lines.
        let _ = std::io::stderr()
            .lock()
            .write_all(format!("skipped: {line}\n").as_bytes());
    }
    None
}

#[track_caller]
fn run_promtool(promtool: &Path, args: &[&str]) {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|error| panic!("{} runs: {error}", promtool.display()));
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules() {
    let Some(promtool) = promtool() else { return };
    run_promtool(&promtool, &["check", "rules", RULES]);
}

#[test]
fn every_alert_passes_its_promtool_unit_tests() {
    let Some(promtool) = promtool() else { return };
    run_promtool(&promtool, &["test", "rules", RULE_TESTS]);
}

// ---- the rules' text --------------------------------------------------------

/// One alerting rule as the rules file spells it.
#[derive(Debug, Default)]
struct Alert {
    name: String,
    summary: bool,
    runbook: Option<String>,
}

/// The alerts of the rules file, read line by line (the file keeps one
/// key per line; no YAML parser is needed for these three keys).
fn alerts(rules: &str) -> Vec<Alert> {
    let mut alerts: Vec<Alert> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alerts.push(Alert {
                name: name.trim().to_owned(),
                ..Alert::default()
            });
        } else if let Some(alert) = alerts.last_mut() {
            if line.starts_with("- record:") {
                break;
            } else if line.starts_with("summary:") {
                alert.summary = true;
            } else if let Some(runbook) = line.strip_prefix("runbook:") {
                alert.runbook = Some(runbook.trim().trim_matches('"').to_owned());
            }
        }
    }
    alerts
}

/// The series names the rules' expressions read: every `flashsale_…`
/// identifier outside comments and annotations, and `up`.
fn metric_names(rules: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in rules.lines().map(str::trim) {
        if ["#", "summary:", "description:", "runbook:"]
            .iter()
            .any(|prefix| line.starts_with(prefix))
        {
            continue;
        }
        let bytes = line.as_bytes();
        let identifier = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':';
        let mut at = 0;
        while let Some(found) = line[at..].find("flashsale_") {
            let start = at + found;
            let mut end = start;
            while end < bytes.len() && identifier(bytes[end]) {
                end += 1;
            }
            if start == 0 || !identifier(bytes[start - 1]) {
                names.insert(line[start..end].to_owned());
            }
            at = end;
        }
        if line.contains("up{") {
            names.insert("up".to_owned());
        }
    }
    names
}

/// Alert names of `tests.yml`'s cases that expect it to fire, and of those
/// that expect it not to (`exp_alerts: []`).
fn cases(tests: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts follows an alertname");
            if expected.trim() == "[]" {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    (firing, quiet)
}

/// GitHub's anchor for a Markdown heading: lowercase, spaces to `-`, other
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_summary_a_runbook_section_and_both_kinds_of_unit_test() {
    let alerts = alerts(&read(RULES));
    assert!(alerts.len() >= 10, "alerts read from {RULES}: {alerts:?}");
    let runbook = read(RUNBOOK);
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(anchor)
        .collect();
    let (firing, quiet) = cases(&read(RULE_TESTS));
    for alert in &alerts {
        let name = &alert.name;
        assert!(alert.summary, "{name} has no summary annotation");
        let runbook = alert.runbook.as_deref().unwrap_or_default();
        let section = runbook.strip_prefix("docs/runbook.md#").unwrap_or_else(|| {
            panic!("{name}'s runbook is not a docs/runbook.md section: {runbook:?}")
        });
        assert!(
            sections.contains(section),
            "{name}'s runbook section #{section} is not a `## ` heading of {RUNBOOK}"
        );
        assert!(
            firing.contains(name),
            "{RULE_TESTS} has no case where {name} fires"
        );
        assert!(
            quiet.contains(name),
            "{RULE_TESTS} has no case where {name} stays quiet"
        );
    }
    let names: BTreeSet<&String> = alerts.iter().map(|alert| &alert.name).collect();
    for tested in firing.iter().chain(&quiet) {
        assert!(
            names.contains(tested),
            "{RULE_TESTS} tests {tested}, which is no alert"
        );
    }
}

// ---- the metrics a server exports ------------------------------------------

/// What a server needs before it exports a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Any server, from its start.
    Nothing,
    /// A server with `--database-url` (the order sink).
    Postgres,
    /// A server in Redis mode.
    Redis,
    /// A server trusting an identity provider (`--idp-jwks`).
    IdentityProvider,
    /// Prometheus itself (`up`).
    Prometheus,
}

fn needs(name: &str) -> Needs {
    if name == "up" {
        Needs::Prometheus
    } else if name.starts_with("flashsale_order_sink_") {
        Needs::Postgres
    } else if name.starts_with("flashsale_redis_") {
        Needs::Redis
    } else if name.starts_with("flashsale_identity_provider_") {
        Needs::IdentityProvider
    } else {
        Needs::Nothing
    }
}

/// The rules' series a server exports when given `what`.
fn rule_metrics(what: Needs) -> BTreeSet<String> {
    let names: BTreeSet<String> = metric_names(&read(RULES))
        .into_iter()
        .filter(|name| needs(name) == what)
        .collect();
    assert!(
        !names.is_empty(),
        "{RULES} reads no series needing {what:?}"
    );
    names
}

/// `flashsale serve` on `127.0.0.1:0` with its own data directory; killed
/// (its data is thrown away) when dropped.
struct Server {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts one with `args`; none of the environment's stores or
    /// `FLASHSALE_*` settings reach it.
    fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--admin-token", ADMIN_TOKEN])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (variable, _) in std::env::vars_os() {
            let removed = variable.to_str().is_some_and(|name| {
                name.starts_with("FLASHSALE_")
                    || ["DATABASE_URL", "REDIS_URL", "REDIS_CLUSTER_URLS"].contains(&name)
            });
            if removed {
                command.env_remove(variable);
            }
        }
        let mut child = command.spawn().expect("the flashsale binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
            }
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut sender = Some(sender);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix(LISTENING)
                    && let Some(sender) = sender.take()
                {
                    let _ = sender.send(address.trim().trim_end_matches('/').to_owned());
                }
            }
        });
        let Ok(address) = receiver.recv_timeout(STARTUP_TIMEOUT) else {
            let exit = child.try_wait();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not start within {STARTUP_TIMEOUT:?} ({exit:?}); see [server] lines"
            );
        };
        Server {
            child,
            address,
            _dir: dir,
        }
    }

    /// `GET /metrics`' body.
    fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(&self.address).expect("the server accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a read timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        )
        .expect("the request is sent");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("the answer is read");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
        body.to_owned()
    }

    /// Polls `/metrics` until every one of `names` has a sample (or
    /// [`SERIES_TIMEOUT`] passes), and returns those still missing.
    fn missing(&self, names: &BTreeSet<String>) -> Vec<String> {
        let deadline = Instant::now() + SERIES_TIMEOUT;
        loop {
            let body = self.metrics();
            let missing: Vec<String> = names
                .iter()
                .filter(|name| !has_sample(&body, name))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether Prometheus text `body` has a sample of series `name`.
fn has_sample(body: &str, name: &str) -> bool {
    body.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[test]
fn every_series_the_rules_read_is_exported_by_a_fresh_server() {
    let names = rule_metrics(Needs::Nothing);
    let server = Server::start(&[]);
    let missing = server.missing(&names);
    assert!(
        missing.is_empty(),
        "{RULES} reads series a fresh server does not export: {missing:?}"
    );
}

/// The order sink's series are listed from the sink's start, before it
/// first reaches Postgres: the lag and set-aside alerts must have series
/// exactly when Postgres is down. So the server is given a database nobody
/// serves (port 1 of loopback), and no Postgres is needed.
#[test]
fn the_order_sink_series_the_rules_read_are_exported_with_a_database_url() {
    let names = rule_metrics(Needs::Postgres);
    let server = Server::start(&["--database-url", UNSERVED_DATABASE_URL]);
    let missing = server.missing(&names);
    assert!(
        missing.is_empty(),
        "{RULES} reads series a server with --database-url does not export \
         (before it reaches Postgres): {missing:?}"
    );
}

/// The identity provider's series are listed from the start, before any
/// read fails, so its alert has a series from the first scrape.
#[test]
fn the_identity_provider_series_the_rules_read_are_exported_with_idp_jwks() {
    use flashsale_testkit::platform::{self, AUDIENCE, ISSUER, TestKey};
    let names = rule_metrics(Needs::IdentityProvider);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, platform::jwks(&[TestKey::Es256])).expect("the JWKS");
    let jwks = jwks.to_str().expect("a UTF-8 path");
    let server = Server::start(&[
        "--idp-jwks",
        jwks,
        "--idp-issuer",
        ISSUER,
        "--idp-audience",
        AUDIENCE,
    ]);
    let missing = server.missing(&names);
    assert!(
        missing.is_empty(),
        "{RULES} reads series a server with --idp-jwks does not export: {missing:?}"
    );
}

#[test]
fn the_redis_series_the_rules_read_are_exported_in_redis_mode() {
    let names = rule_metrics(Needs::Redis);
    let Some(node) = RedisNode::start("rules") else {
        return;
    };
    let server = &node.server;
    let missing = server.missing(&names);
    assert!(
        missing.is_empty(),
        "{RULES} reads series a Redis-mode server does not export: {missing:?}"
    );
}

/// A Redis-mode server on `REDIS_URL` in a namespace of its own, whose
/// keys are deleted once the server is gone.
struct RedisNode {
    // Dropped first (fields drop in order): the server, then its keys.
    server: Server,
    _keys: RedisKeys,
}

impl RedisNode {
    /// Starts one in the namespace `fs-prometheus-<label>-<pid>`, or `None`
    /// after the skip line without `REDIS_URL` (failing under CI).
    fn start(label: &str) -> Option<RedisNode> {
        let url = flashsale_testkit::redis_url()?;
        let namespace = format!("fs-prometheus-{label}-{}", std::process::id());
        let keys = RedisKeys {
            url: url.clone(),
            namespace: namespace.clone(),
        };
        // The development Redis persists nothing: the flag lets the node
        // serve it (and say so in flashsale_redis_durability).
        let server = Server::start(&[
            "--redis-url",
            &url,
            "--redis-namespace",
            &namespace,
            "--secret",
            SECRET,
            "--allow-volatile-redis",
        ]);
        Some(RedisNode {
            server,
            _keys: keys,
        })
    }
}

/// Deletes a namespace's keys on a single Redis when dropped (after the
/// server, declared later, is gone), as tests/redis does: by `redis-cli`,
/// and best effort.
struct RedisKeys {
    url: String,
    namespace: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let script = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end";
        let pattern = format!("{}:*", self.namespace);
        let _ = Command::new("redis-cli")
            .args(["-u", &self.url, "EVAL", script, "0", &pattern])
            .output();
    }
}

#[test]
fn the_rules_text_is_read_as_intended() {
    let rules = "  - alert: A\n    expr: rate(flashsale_x_total[1m]) / flashsale_y > 0 \
                 and up{job=\"flashsale\"}\n    annotations:\n      summary: \"flashsale_not_a_series\"\n      \
                 runbook: \"docs/runbook.md#a\"\n  # flashsale_comment\n  - record: flashsale:ratio\n";
    let names: Vec<String> = metric_names(rules).into_iter().collect();
    assert_eq!(names, ["flashsale_x_total", "flashsale_y", "up"]);
    let alerts = alerts(rules);
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].summary);
    assert_eq!(alerts[0].runbook.as_deref(), Some("docs/runbook.md#a"));
    let (firing, quiet) = cases(
        "- eval_time: 5m\n  alertname: A\n  exp_alerts:\n    - exp_labels: {}\n- eval_time: 5m\n  alertname: A\n  exp_alerts: []\n",
    );
    assert!(firing.contains("A") && quiet.contains("A"));
    assert_eq!(anchor("FlashsaleBooksLagAge"), "flashsalebookslagage");
    assert_eq!(anchor("What it means, now"), "what-it-means-now");
}
