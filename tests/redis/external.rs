//! The admin's credit by external id (`POST
//! /v1/wallets/external/{external_id}/credits`) through two `flashsale
//! serve` nodes sharing one Redis or Cluster: racing first credits make
//! one shopper, and every credit lands on it once. With Postgres, the
//! books agree and `flashsale audit` passes (the racers' unused shopper
//! ids are no accounts, not broken ones).

use serde_json::json;

use crate::books::{AUDIT_HOLDS, audit, wait_for_backlog};
use crate::node::{ADMIN_TOKEN, Deployment, Node, Target};

const CREDITS: usize = 20;

async fn credit(node: &Node, reference: String) -> serde_json::Value {
    node.call(
        reqwest::Method::POST,
        "/v1/wallets/external/google-oauth2%7C1098/credits",
        Some(ADMIN_TOKEN),
        Some(json!({ "amount": "1.00", "reference": reference })),
        None,
    )
    .await
    .ok(201)
}

async fn racing_credits_make_one_shopper(target: Target) {
    let database = flashsale_testkit::postgres_url();
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(target, 4);
    let flags: Vec<&str> = match &database {
        Some(url) => vec!["--database-url", url],
        None => Vec::new(),
    };
    let nodes = [deployment.node_with(&flags), deployment.node_with(&flags)];
    let calls = (0..CREDITS).map(|index| credit(&nodes[index % 2], format!("pay-{index}")));
    let answers = futures_util::future::join_all(calls).await;
    let shopper = &answers[0]["shopper_id"];
    for answer in &answers {
        assert_eq!(&answer["shopper_id"], shopper, "one shopper: {answer}");
        assert_eq!(answer["external_id"], "google-oauth2|1098");
    }
    // Every credit landed once: one more, and a replay of the first.
    let last = credit(&nodes[1], "pay-last".into()).await;
    assert_eq!(last["available"], format!("{}.00", CREDITS + 1));
    let replay = credit(&nodes[0], "pay-0".into()).await;
    assert_eq!(replay["available"], format!("{}.00", CREDITS + 1));
    assert_eq!(replay["shopper_id"], *shopper);
    let Some(database) = database else {
        return;
    };
    for node in &nodes {
        wait_for_backlog(node, 0).await;
    }
    let (code, report) = tokio::task::block_in_place(|| audit(&deployment, &database, false));
    assert_eq!(code, AUDIT_HOLDS, "the audit after the credits: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_credits_by_external_id_on_redis_make_one_shopper() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    racing_credits_make_one_shopper(Target::Single(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_credits_by_external_id_on_a_cluster_make_one_shopper() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    racing_credits_make_one_shopper(Target::Cluster(urls)).await;
}
