//! A platform user's first request racing itself through three Redis-mode
//! nodes (`--idp-jwks`): 50 requests at once, each on its own connection,
//! carrying the same never-seen JWT make one shopper with one signup
//! credit, on Redis and on a Cluster; the user then buys as that shopper
//! through any node.

use serde_json::json;

use crate::node::{Deployment, Target};
use flashsale_testkit::platform::{self, AUDIENCE, ISSUER, TestKey, claims};

/// Requests of the race.
const RACERS: usize = 50;

async fn a_first_request_racing_itself_makes_one_shopper(target: Target) {
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(target, 4);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, platform::jwks(&[TestKey::Es256])).expect("the JWKS");
    let jwks = jwks.to_str().expect("a UTF-8 path").to_owned();
    let flags = [
        "--idp-jwks",
        &jwks,
        "--idp-issuer",
        ISSUER,
        "--idp-audience",
        AUDIENCE,
        "--signup-credit",
        "100",
    ];
    let nodes = [
        deployment.node_with(&flags),
        deployment.node_with(&flags),
        deployment.node_with(&flags),
    ];
    let token = TestKey::Es256.sign(&claims("platform|racer", None));
    let racers = (0..RACERS).map(|index| {
        // A client of its own: its own connection.
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client");
        let url = format!("{}/v1/wallet", nodes[index % nodes.len()].url);
        let token = token.clone();
        async move {
            let response = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("the node answers");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("a JSON body");
            (status, body)
        }
    });
    let answers = futures_util::future::join_all(racers).await;
    let shopper = answers[0].1["shopper_id"].clone();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["shopper_id"], shopper, "one shopper: {body}");
        assert_eq!(body["external_id"], "platform|racer");
        assert_eq!(body["credited"], "100.00", "one signup credit: {body}");
    }
    // The user buys through any node as that shopper.
    let merchant_token = TestKey::Es256.sign(&claims("platform|shop", Some("merchant")));
    let deal = nodes[0]
        .call(
            reqwest::Method::POST,
            "/v1/deals",
            Some(&merchant_token),
            Some(json!({
                "title": "Phone X", "price": "10.00", "stock": 5, "per_user_limit": 1,
                "starts_at": flashsale_testkit::rfc3339_from_now(-60),
                "ends_at": flashsale_testkit::rfc3339_from_now(3600),
            })),
            None,
        )
        .await
        .ok(201);
    let deal = deal["id"].as_str().expect("a deal id");
    let order = nodes[2]
        .call(
            reqwest::Method::POST,
            &format!("/v1/deals/{deal}/orders"),
            Some(&token),
            Some(json!({ "quantity": 1 })),
            Some("racer-1"),
        )
        .await
        .ok(201);
    assert_eq!(order["shopper_id"], shopper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_users_racing_first_requests_on_redis_make_one_shopper() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    a_first_request_racing_itself_makes_one_shopper(Target::Single(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_users_racing_first_requests_on_a_cluster_make_one_shopper() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    a_first_request_racing_itself_makes_one_shopper(Target::Cluster(urls)).await;
}
