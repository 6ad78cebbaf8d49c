//! Raffles are one-node only: Redis mode refuses
//! `allocation: "raffle"` with `422 invalid` naming the field, creates
//! nothing, and a first-come deal there has no draw.

use serde_json::json;

use crate::node::{Deployment, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_refuses_a_raffle_naming_allocation() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 8);
    let node = deployment.node();
    let merchant = node.merchant("Raffler").await;
    let refused = node
        .call(
            reqwest::Method::POST,
            "/v1/deals",
            Some(&merchant),
            Some(json!({
                "title": "Phone raffle", "price": "10.00", "stock": 10,
                "starts_at": "2099-01-01T00:00:00Z", "ends_at": "2099-01-02T00:00:00Z",
                "allocation": "raffle",
            })),
            None,
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "invalid"),
        "{:?}",
        refused.body
    );
    let message = refused.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("allocation"), "{message}");
    // Nothing was created: the feed shows no raffle.
    let deal = node.deal(&merchant, 10, 1).await;
    let feed = node.get("/v1/feed?limit=100", None).await;
    assert_eq!(feed.status, 200);
    let cards = feed.body["cards"].as_array().cloned().unwrap_or_default();
    assert!(cards.iter().any(|card| card["id"] == deal.as_str()));
    assert!(cards.iter().all(|card| card["title"] != "Phone raffle"));
    let draw = node.get(&format!("/v1/deals/{deal}/draw"), None).await;
    assert_eq!(
        (draw.status, draw.code()),
        (404, "not_found"),
        "{:?}",
        draw.body
    );
}
