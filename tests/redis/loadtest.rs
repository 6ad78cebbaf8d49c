//! `flashsale loadtest` against a whole deployment: a burst with one
//! `--target` per Redis-mode node spreads its taps over the nodes, and its
//! invariant check reads every node (each node's own `/metrics` counts
//! its share of the buys and every shopper's wallet read); a dead target
//! among them has each tap it was sent retried on a live node.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::node::{ADMIN_TOKEN, Deployment, Node, Target};

/// How long one small burst may take, setup and checks included.
const LOADTEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Shoppers and units of the bursts here.
const SHOPPERS: u64 = 600;
const STOCK: u64 = 100;

/// What a finished `flashsale loadtest burst` left: its exit status, its
/// JSON report and its output.
struct Run {
    succeeded: bool,
    report: Value,
    output: String,
}

impl Run {
    /// The check named `name`.
    fn check(&self, name: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|check| check["name"] == name))
            .unwrap_or_else(|| panic!("no check {name:?}:\n{}", self.output))
    }

    /// Names of the checks that failed.
    fn failed(&self) -> Vec<&str> {
        self.report["checks"]
            .as_array()
            .map(|checks| {
                checks
                    .iter()
                    .filter(|check| check["passed"] != true)
                    .filter_map(|check| check["name"].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A burst of [`SHOPPERS`] for [`STOCK`] units with one `--target` per
/// URL of `targets`, within [`LOADTEST_TIMEOUT`].
async fn burst(targets: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json = dir.path().join("report.json");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    command.args(["loadtest", "burst"]);
    for target in targets {
        command.args(["--target", target]);
    }
    let (shoppers, stock) = (SHOPPERS.to_string(), STOCK.to_string());
    command
        .args([
            "--shoppers",
            &shoppers,
            "--stock",
            &stock,
            "--ramp",
            "500ms",
        ])
        .args(["--admin-token", ADMIN_TOKEN, "--connections", "16"])
        .args(["--timeout", "5s", "--seed", "5", "--quiet", "--json"])
        .arg(&json)
        .env_remove("FLASHSALE_ADMIN_TOKEN")
        .env_remove("FLASHSALE_LOADTEST_TARGET")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(LOADTEST_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("the burst did not end within {LOADTEST_TIMEOUT:?}"))
        .expect("flashsale loadtest starts");
    let output_text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read(&json)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| panic!("no JSON report:\n{output_text}"));
    Run {
        succeeded: output.status.success(),
        report,
        output: output_text,
    }
}

/// Requests `node` answered on `route`, by its own `/metrics`.
async fn answered_on(node: &Node, route: &str) -> u64 {
    let metrics = node.get("/metrics", None).await.ok(200);
    let label = format!("route=\"{route}\"");
    metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("flashsale_http_requests_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

const BUY_ROUTE: &str = "POST /v1/deals/{id}/orders";
const WALLET_ROUTE: &str = "GET /v1/wallet";

async fn a_burst_through_three_nodes_reaches_and_checks_each(target: Target) {
    let deployment = Deployment::new(target, 16);
    let nodes = [deployment.node(), deployment.node(), deployment.node()];
    let urls: Vec<&str> = nodes.iter().map(|node| node.url.as_str()).collect();
    let run = burst(&urls).await;
    assert!(run.succeeded, "{}", run.output);
    assert_eq!(run.failed(), Vec::<&str>::new(), "{}", run.output);
    assert_eq!(run.report["outcomes"]["ok"], STOCK, "{}", run.output);
    assert_eq!(run.report["outcomes"]["errors"], 0, "{}", run.output);
    let agree = run.check("targets agree");
    assert!(
        agree["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("3 targets show the same deal")),
        "{agree}"
    );
    for (index, node) in nodes.iter().enumerate() {
        // Shopper i taps on node i mod 3 (a retry on the next node); the
        // check reads every wallet on every node.
        let buys = answered_on(node, BUY_ROUTE).await;
        let sent = run.report["by_target"][index]["sent"].as_u64().unwrap_or(0);
        assert!(
            buys >= SHOPPERS / 3 && buys == sent,
            "node {index}: {buys} buys, {sent} sent"
        );
        assert_eq!(
            answered_on(node, WALLET_ROUTE).await,
            SHOPPERS,
            "node {index}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_three_nodes_on_one_redis_reaches_and_checks_each() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    a_burst_through_three_nodes_reaches_and_checks_each(Target::Single(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_three_nodes_on_a_cluster_reaches_and_checks_each() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    let _serial = crate::node::serial().await;
    a_burst_through_three_nodes_reaches_and_checks_each(Target::Cluster(urls)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_sent_to_a_dead_target_are_retried_on_a_live_node() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 16);
    let nodes = [deployment.node(), deployment.node()];
    // A port nobody listens on: every connection to it is refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        format!("http://{}", listener.local_addr().expect("bound"))
    };
    let run = burst(&[&nodes[0].url, &dead, &nodes[1].url]).await;
    // Every shopper got its answer: the taps of shoppers i mod 3 = 1 went
    // to the dead target and their retries to node 1.
    assert_eq!(run.report["outcomes"]["ok"], STOCK, "{}", run.output);
    assert_eq!(
        run.report["outcomes"]["sold_out"],
        SHOPPERS - STOCK,
        "{}",
        run.output
    );
    assert_eq!(run.report["outcomes"]["errors"], 0, "{}", run.output);
    let dead_figures = &run.report["by_target"][1];
    assert_eq!(dead_figures["url"], dead.as_str());
    assert_eq!(dead_figures["answered"], 0);
    // A tap on node 0 answered 503 is retried there too: at least a third.
    let no_answer = dead_figures["no_answer"].as_u64().unwrap_or(0);
    assert!(no_answer >= SHOPPERS / 3, "{dead_figures}");
    assert_eq!(dead_figures["sent"], no_answer, "{dead_figures}");
    let buys = answered_on(&nodes[0], BUY_ROUTE).await + answered_on(&nodes[1], BUY_ROUTE).await;
    assert_eq!(buys, run.report["answered"].as_u64().unwrap_or(0));
    // The check reads every target, and the dead one cannot be read: the
    // run fails on that alone.
    assert!(!run.succeeded, "{}", run.output);
    assert_eq!(run.failed(), ["targets agree"], "{}", run.output);
    let agree = run.check("targets agree");
    assert!(
        agree["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains(&dead)),
        "{agree}"
    );
}
