//! `GET /v1/feed?order=top` on one node and on a Redis node alike: a deal
//! of a well-reviewed merchant with a buyer outranks a newer deal of a
//! merchant without reviews, while the default order stays newest first.
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
