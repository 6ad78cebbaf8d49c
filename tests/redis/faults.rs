//! Real faults in multi-node mode: a node killed with `kill -9` mid-burst,
//! and a Redis frozen with `SIGSTOP` mid-burst then resumed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::node::{Answer, Deployment, Node, PrivateRedis, Target};

/// How long one answer may take while Redis is frozen: the node's response
/// timeout (300 ms here) plus generous scheduling slack on a loaded box.
const ANSWER_WHILE_FROZEN_MAX: Duration = Duration::from_secs(5);

/// Records every answer per key, and checks one order per key and that
/// every order is in Redis (readable through `reader`).
pub async fn check_keys(
    reader: &Node,
    tokens: &HashMap<String, String>,
    answers: &[(String, Option<Answer>)],
) -> HashSet<String> {
    let mut by_key: HashMap<&str, String> = HashMap::new();
    for (key, answer) in answers {
        let Some(answer) = answer else { continue };
        if answer.status == 201 {
            let id = answer.body["id"].as_str().expect("an id").to_owned();
            if let Some(previous) = by_key.insert(key, id.clone()) {
                assert_eq!(previous, id, "key {key} gave two orders");
            }
        }
    }
    for (key, id) in &by_key {
        let order = reader
            .get_through_unavailable(&format!("/v1/orders/{id}"), Some(&tokens[*key]))
            .await;
        assert_eq!(
            order.status, 200,
            "acknowledged order {id} is in Redis: {:?}",
            order.body
        );
    }
    by_key.into_values().collect()
}

/// Three nodes; one is killed mid-burst. The others go on selling, every
/// 201 any node gave is an order in Redis, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_burst_leaves_the_others_selling() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 64);
    let mut nodes = [deployment.node(), deployment.node(), deployment.node()];
    let merchant = nodes[0].merchant("Crash").await;
    let deal = nodes[0].deal(&merchant, 100, 1).await;
    let shoppers = nodes[0].shoppers(400, "50.00").await;
    let mut tokens = HashMap::new();
    let mut answers = Vec::new();
    for (index, (_, token)) in shoppers.iter().enumerate() {
        if index == 120 {
            nodes[0].kill();
        }
        let key = format!("buy-{index}");
        tokens.insert(key.clone(), token.clone());
        let mut answer = nodes[index % 3].buy(token, &deal, 1, &key).await;
        if answer.is_none() {
            // The node is gone: the client retries the same key elsewhere.
            answer = nodes[1 + index % 2].buy(token, &deal, 1, &key).await;
        }
        assert!(answer.is_some(), "a surviving node answers");
        answers.push((key, answer));
    }
    let orders = check_keys(&nodes[1], &tokens, &answers).await;
    let view = nodes[2]
        .get(&format!("/v1/deals/{deal}"), None)
        .await
        .ok(200);
    assert_eq!(view["sold"].as_u64(), Some(orders.len() as u64), "{view}");
    assert_eq!(
        orders.len(),
        100,
        "the stock sells out through the survivors"
    );
}

/// Redis frozen mid-burst: every buy is answered `503 unavailable` with
/// `Retry-After` within the timeout (none hangs), `/readyz` says not ready;
/// once Redis resumes, retrying every key settles the sale with one order
/// per key and exactly the stock sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_gets_clear_503s_and_nothing_is_lost() {
    // This test freezes a Redis of its own, but only where the tests are
    // given one: that is where redis-server is installed.
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let _serial = crate::node::serial().await;
    let redis = PrivateRedis::volatile();
    let deployment = Deployment::new(Target::Single(redis.url.clone()), 16);
    let node = deployment.node_with(&["--redis-response-timeout-ms", "300"]);
    let merchant = node.merchant("Freeze").await;
    let deal = node.deal(&merchant, 30, 1).await;
    let shoppers = node.shoppers(60, "50.00").await;
    let mut tokens = HashMap::new();
    let mut answers = Vec::new();
    for (index, (_, token)) in shoppers.iter().enumerate().take(20) {
        let key = format!("k{index}");
        tokens.insert(key.clone(), token.clone());
        answers.push((key.clone(), node.buy(token, &deal, 1, &key).await));
    }
    redis.signal("-STOP");
    let mut unavailable = 0;
    for (index, (_, token)) in shoppers.iter().enumerate().skip(20).take(20) {
        let key = format!("k{index}");
        tokens.insert(key.clone(), token.clone());
        let started = Instant::now();
        let answer = node.buy(token, &deal, 1, &key).await.expect("an answer");
        assert!(
            started.elapsed() < ANSWER_WHILE_FROZEN_MAX,
            "a buy hung for {:?}",
            started.elapsed()
        );
        if answer.status == 503 {
            assert_eq!(answer.code(), "unavailable");
            unavailable += 1;
        }
        answers.push((key, Some(answer)));
    }
    assert!(
        unavailable >= 15,
        "buys while Redis is frozen get 503: {unavailable} of 20"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(node.get("/readyz", None).await.status, 503);
    redis.signal("-CONT");
    // Every key is retried until it has an answer that is not 503.
    let started = Instant::now();
    for (index, (_, token)) in shoppers.iter().enumerate() {
        let key = format!("k{index}");
        tokens.insert(key.clone(), token.clone());
        loop {
            let answer = node.buy(token, &deal, 1, &key).await.expect("an answer");
            if answer.status != 503 {
                answers.push((key, Some(answer)));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Redis did not come back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let orders = check_keys(&node, &tokens, &answers).await;
    assert_eq!(orders.len(), 30, "exactly the stock sold");
    let view = node.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
    assert_eq!(
        (view["sold"].as_u64(), view["remaining"].as_u64()),
        (Some(30), Some(0)),
        "{view}"
    );
}

/// A Redis that lost the node's Functions library (`FUNCTION DELETE`, as
/// after a restart without data, or on a new primary) gets it loaded
/// again by the first call that finds its function missing, which is then
/// retried: the buy settles, and Redis holds the library of this build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_functions_library_is_loaded_again_by_the_next_call() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let redis = PrivateRedis::volatile();
    let deployment = Deployment::new(Target::Single(redis.url.clone()), 4);
    let node = deployment.node();
    let library = flashsale_redis::steps::library_name();
    assert!(redis.cli(&["FUNCTION", "LIST"]).contains(&library));
    let merchant = node.merchant("Functions").await;
    let deal = node.deal(&merchant, 5, 2).await;
    let (_, token) = node.shoppers(1, "50.00").await.remove(0);
    assert_eq!(redis.cli(&["FUNCTION", "DELETE", &library]).trim(), "OK");
    assert!(!redis.cli(&["FUNCTION", "LIST"]).contains(&library));
    let bought = node.buy(&token, &deal, 1, "after-delete").await;
    assert_eq!(bought.map(|answer| answer.status), Some(201));
    assert!(redis.cli(&["FUNCTION", "LIST"]).contains(&library));
    let replayed = node.buy(&token, &deal, 1, "after-delete").await;
    assert_eq!(replayed.map(|answer| answer.status), Some(201));
}
