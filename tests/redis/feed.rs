//! `GET /v1/feed?order=top` on one node and on a Redis node alike: a deal
//! of a well-reviewed merchant with a buyer outranks a newer deal of a
//! merchant without reviews, while the default order stays newest first;
//! and two Redis nodes take those numbers from one read a second for all.
//! In Redis mode the ranking reads the node's cache, which its poller
//! refreshes every 250 ms: the test waits for it, bounded.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::node::{Deployment, Node, Target};

/// How long a Redis node's cache may take to show a review and a buy.
const CACHE_WAIT_MAX: Duration = Duration::from_secs(10);

/// The ids of `ours` in the order the feed answered them.
async fn feed_order(node: &Node, query: &str, ours: &[&str]) -> (Vec<String>, Value) {
    let feed = node.get(&format!("/v1/feed?{query}"), None).await.ok(200);
    let ids = feed["cards"]
        .as_array()
        .expect("cards")
        .iter()
        .filter_map(|card| card["id"].as_str())
        .filter(|id| ours.contains(id))
        .map(str::to_owned)
        .collect();
    (ids, feed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_feed_ranks_review_scores_and_popularity_on_one_node_and_on_redis() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 64);
    for node in [crate::node::one_node(), deployment.node()] {
        let liked = node.merchant("Liked").await;
        let plain = node.merchant("Plain").await;
        let older = node.deal(&liked, 10, 1).await;
        let newer = node.deal(&plain, 10, 1).await;
        let (_, shopper) = node.shoppers(1, "100.00").await.remove(0);
        let order = node
            .buy(&shopper, &older, 1, "k")
            .await
            .expect("an answer")
            .ok(201);
        let order = order["id"].as_str().expect("an order id");
        node.call(
            reqwest::Method::POST,
            &format!("/v1/orders/{order}/review"),
            Some(&shopper),
            Some(json!({ "description": 5, "delivery": 5, "service": 5 })),
            None,
        )
        .await
        .ok(201);
        let ours = [older.as_str(), newer.as_str()];
        // 500 × (1 + 1) for the liked merchant's deal, 300 × (0 + 1) for
        // the other: the older deal first.
        let deadline = Instant::now() + CACHE_WAIT_MAX;
        loop {
            let (ids, feed) = feed_order(&node, "order=top", &ours).await;
            if ids == [older.as_str(), newer.as_str()] {
                assert_eq!(feed["next_cursor"], Value::Null, "one page");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order=top never ranked the reviewed deal first: {feed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for query in ["", "order=newest"] {
            let (ids, _) = feed_order(&node, query, &ours).await;
            assert_eq!(ids, [newer.as_str(), older.as_str()], "{query:?}");
        }
    }
}

/// `flashsale_redis_sums_total{source}` in a node's `/metrics`: (read,
/// taken).
async fn sums_metric(node: &Node) -> (u64, u64) {
    let metrics = node.get("/metrics", None).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    let value = |source: &str| {
        let series = format!("flashsale_redis_sums_total{{source=\"{source}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}in /metrics"))
    };
    (value("read"), value("taken"))
}

/// The feed's numbers come from one read a second for every node: in a
/// deployment of two nodes, `/metrics` shows reads made for all on one
/// node and reads taken from another on some node, both growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_deals_numbers_one_reads_for_all() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 4);
    let nodes = [deployment.node(), deployment.node()];
    let merchant = nodes[0].merchant("Sums").await;
    nodes[0].deal(&merchant, 10, 1).await;
    let mut before = Vec::new();
    for node in &nodes {
        before.push(sums_metric(node).await);
    }
    let started = Instant::now();
    loop {
        let mut read = 0;
        let mut taken = 0;
        for (node, (read_before, taken_before)) in nodes.iter().zip(&before) {
            let (read_now, taken_now) = sums_metric(node).await;
            read += read_now - read_before;
            taken += taken_now - taken_before;
        }
        if read >= 2 && taken >= 1 {
            break;
        }
        assert!(
            started.elapsed() < CACHE_WAIT_MAX,
            "after {CACHE_WAIT_MAX:?}: {read} reads for all and {taken} taken over both nodes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
