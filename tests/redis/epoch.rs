//! Ids are never reused across Redis losing its data: a Redis
//! that restarts empty numbers accounts from 1 again, so tokens carry the
//! deployment's epoch and a node drops what it cached of the old data.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::node::{Deployment, Node, PrivateRedis, Target};

/// How long a node may take to see the new epoch: its poller reads it
/// every 250 ms; the rest is slack for a loaded machine.
const EPOCH_SEEN_MAX: Duration = Duration::from_secs(10);

/// `GET /v1/wallet` with `token`: its status and error message.
async fn wallet(node: &Node, token: &str) -> (u16, String) {
    let answer = node.get("/v1/wallet", Some(token)).await;
    let message = answer.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (answer.status, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_reuses_no_id_and_no_token() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let mut redis = PrivateRedis::volatile();
    let deployment = Deployment::new(Target::Single(redis.url.clone()), 4);
    let node = deployment.node();
    let merchant = node.merchant("Before").await;
    let deal = node.deal(&merchant, 5, 1).await;
    let (old_id, old_token) = node.shoppers(1, "50.00").await.remove(0);
    let bought = node.buy(&old_token, &deal, 1, "before").await;
    assert_eq!(bought.map(|answer| answer.status), Some(201));
    assert_eq!(wallet(&node, &old_token).await.0, 200);

    // Redis restarts empty under the running node.
    redis.crash_and_restart();
    let started = Instant::now();
    let message = loop {
        let (status, message) = wallet(&node, &old_token).await;
        if status == 401 {
            break message;
        }
        assert!(
            started.elapsed() < EPOCH_SEEN_MAX,
            "the old token still answers {status} after {EPOCH_SEEN_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(message.contains("epoch"), "the refusal says why: {message}");

    // Nothing of the old data is served from the node's cache.
    let old_deal = node.get(&format!("/v1/deals/{deal}"), None).await;
    assert_eq!(old_deal.status, 404, "{}", old_deal.body);
    let feed = node.get("/v1/feed", None).await.ok(200);
    assert_eq!(feed["cards"], json!([]), "{feed}");

    // New accounts are numbered from 1 again: the old token names the same
    // id as a new shopper's, and still acts for nobody.
    let (new_id, new_token) = node.shoppers(1, "5.00").await.remove(0);
    assert_eq!(new_id, old_id, "Redis numbers from the start again");
    let (status, _) = wallet(&node, &new_token).await;
    assert_eq!(status, 200, "the new shopper's own token works");
    let body = node.get("/v1/wallet", Some(&new_token)).await.ok(200);
    assert_eq!(body["available"], "5.00", "{body}");
    assert_eq!(wallet(&node, &old_token).await.0, 401);
    let new_merchant = node.merchant("After").await;
    let new_deal = node.deal(&new_merchant, 5, 1).await;
    assert_eq!(new_deal, deal, "deal ids start again too");
    let stale = node.buy(&old_token, &new_deal, 1, "after").await;
    assert_eq!(stale.map(|answer| answer.status), Some(401));
    let stale_merchant = node
        .call(
            reqwest::Method::POST,
            "/v1/deals",
            Some(&merchant),
            Some(json!({
                "title": "Stale", "price": "1.00", "stock": 1,
                "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z",
            })),
            None,
        )
        .await;
    assert_eq!(stale_merchant.status, 401, "{}", stale_merchant.body);
}

/// A node that dies between a deal's id (indexed in the same step) and the
/// deal's one `HSET` leaves an id without a deal: the deal is not there at
/// all (not found, in no listing), and the next deal is created whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_cut_short_by_a_crash_does_not_exist_at_all() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let deployment = Deployment::new(Target::Single(url), 4);
    let node = deployment.node();
    let merchant = node.merchant("Cut short").await;
    let first = node.deal(&merchant, 5, 1).await;
    // What the `ids` step does for a deal, with no deal written after it.
    let sequences = format!("{}:{{g}}:seq", deployment.namespace);
    let index = format!("{}:{{g}}:deals", deployment.namespace);
    let cut: u64 = deployment
        .target
        .run_cli(&["HINCRBY", &sequences, "deal", "1"])
        .trim()
        .parse()
        .expect("the deal sequence");
    let cut_text = cut.to_string();
    deployment
        .target
        .run_cli(&["ZADD", &index, &cut_text, &cut_text]);
    let cut_id = format!("d_{cut:x}");
    assert_ne!(cut_id, first);
    let second = node.deal(&merchant, 5, 1).await;
    assert_eq!(
        node.get(&format!("/v1/deals/{cut_id}"), None).await.status,
        404
    );
    let started = Instant::now();
    loop {
        let feed = node.get("/v1/feed", None).await.ok(200);
        let ids: Vec<&str> = feed["cards"]
            .as_array()
            .map(|cards| {
                cards
                    .iter()
                    .filter_map(|card| card["id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert!(!ids.contains(&cut_id.as_str()), "{feed}");
        if ids == [second.as_str(), first.as_str()] {
            break;
        }
        assert!(
            started.elapsed() < EPOCH_SEEN_MAX,
            "the feed lists the two whole deals: {feed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bought = node.shoppers(1, "50.00").await.remove(0).1;
    let order = node.buy(&bought, &second, 1, "whole").await;
    assert_eq!(order.map(|answer| answer.status), Some(201));
}

/// A node started on a namespace already served with another
/// `--redis-shards`, another `--secret` or by a build of another key
/// layout is refused at start, naming the flags (it would see none of its
/// peers' shoppers, answer their tokens with 401, or misread their
/// records), and the deployment's own nodes go on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_layout_or_secret_is_refused() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let deployment = Deployment::new(Target::Single(url.clone()), 64);
    let node = deployment.node();
    let merchant = node.merchant("Layout").await;
    let mut other = Deployment::new(Target::Single(url), 16);
    other.namespace = deployment.namespace.clone();
    let refusal = other.refused_start(&["--allow-volatile-redis"]);
    assert!(
        refusal.contains("shards=64") && refusal.contains("--redis-shards"),
        "{refusal}"
    );
    other.shards = 64;
    other.secret = "another-secret-0123456789".to_owned();
    let refusal = other.refused_start(&["--allow-volatile-redis"]);
    assert!(refusal.contains("--secret"), "{refusal}");
    // It says how to start afresh: another namespace, or the key to delete.
    let key = format!("{}:{{g}}:layout", deployment.namespace);
    assert!(
        refusal.contains("--redis-namespace") && refusal.contains(&key),
        "{refusal}"
    );
    other.secret = deployment.secret.clone();
    // A build of another key layout (`keys=` in the kept layout: its
    // records' formats differ) is refused too.
    let kept = deployment.target.run_cli(&["GET", &key]);
    let kept = kept.trim();
    let older = kept.split(" keys=").next().unwrap_or_default();
    assert_ne!(older, kept, "the layout names its key layout: {kept}");
    deployment.target.run_cli(&["SET", &key, older]);
    let refusal = other.refused_start(&["--allow-volatile-redis"]);
    assert!(refusal.contains("keys="), "{refusal}");
    deployment.target.run_cli(&["SET", &key, kept]);
    let peer = other.node();
    peer.deal(&merchant, 5, 1).await;
}
