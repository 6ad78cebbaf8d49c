//! Token revocation across nodes: a revocation answered by one node holds
//! on every other at once, and a buy there with a revoked token changes
//! nothing (docs/api.md "Recovering a token").

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::node::{ADMIN_TOKEN, Deployment, Target};

/// Two nodes on one Redis (or Cluster): reissue on B, revoke on A, and at
/// once on B every earlier token is `401` and buys nothing; a token issued
/// after the answer works on both.
async fn a_revocation_on_one_node_holds_at_once_on_another(target: Target) {
    let deployment = Deployment::new(target, 4);
    let a = deployment.node();
    let b = deployment.node();
    let merchant = a.merchant("Shop").await;
    let deal = a.deal(&merchant, 5, 5).await;
    let (id, old) = a.shoppers(1, "50.00").await.remove(0);
    let tokens = format!("/v1/shoppers/{id}/tokens");
    b.get("/v1/wallet", Some(&old)).await.ok(200);
    let reissued = b
        .call(Method::POST, &tokens, Some(ADMIN_TOKEN), None, None)
        .await
        .ok(201);
    let second = reissued["token"].as_str().unwrap().to_owned();
    a.get("/v1/wallet", Some(&second)).await.ok(200);
    b.get("/v1/wallet", Some(&old)).await.ok(200);

    let asked = Instant::now();
    a.call(Method::DELETE, &tokens, Some(ADMIN_TOKEN), None, None)
        .await
        .ok(200);
    let answered_after = asked.elapsed();
    assert!(
        answered_after >= Duration::from_secs(1),
        "the answer waits out the propagation bound ({answered_after:?})"
    );
    // At once, on the other node: every earlier token is refused.
    for (key, token) in [("k1", &old), ("k2", &second)] {
        let bought = b.buy(token, &deal, 1, key).await.expect("B answers");
        assert_eq!(bought.status, 401, "{}", bought.body);
        assert_eq!(bought.code(), "unauthorized");
        assert_eq!(b.get("/v1/wallet", Some(token)).await.status, 401);
        assert_eq!(a.get("/v1/wallet", Some(token)).await.status, 401);
    }
    // Nothing changed; a token issued after the answer works everywhere.
    let third = b
        .call(Method::POST, &tokens, Some(ADMIN_TOKEN), None, None)
        .await
        .ok(201);
    let third = third["token"].as_str().unwrap();
    let wallet = a.get("/v1/wallet", Some(third)).await.ok(200);
    assert_eq!(
        (&wallet["available"], &wallet["spent"]),
        (&json!("50.00"), &json!("0.00"))
    );
    let orders = b.get("/v1/orders", Some(third)).await.ok(200);
    assert_eq!(orders["orders"], json!([]), "{orders}");
    let bought = b.buy(third, &deal, 1, "k1").await.expect("B answers");
    assert_eq!(bought.status, 201, "{}", bought.body);

    // A node started later learns the revocation from Redis.
    let c = deployment.node();
    assert_eq!(c.get("/v1/wallet", Some(&old)).await.status, 401);
    c.get("/v1/wallet", Some(third)).await.ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_at_once_on_every_node_of_one_redis() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    a_revocation_on_one_node_holds_at_once_on_another(Target::Single(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_at_once_on_every_node_of_a_cluster() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    a_revocation_on_one_node_holds_at_once_on_another(Target::Cluster(urls)).await;
}
