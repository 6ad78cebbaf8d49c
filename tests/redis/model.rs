//! A late payment on Redis' own clock: a hold of one second really
//! expires, and a one-node server and a Redis node pay it late or refuse
//! it alike. The rules over random sequences are held to the reference
//! model by `store/tests/model.rs` (every store operation, on the embedded
//! store, a Redis and a Cluster), which gives the steps the test's clock;
//! this test keeps the production path, where the steps read Redis' `TIME`.

use serde_json::json;

use crate::node::{Deployment, Target};

/// Late payment, the engine's rule: an expired hold is still paid if the
/// stock and funds allow (`late: true`), and answered `hold_expired` with
/// nothing charged when they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_paid_late_or_refused_as_the_engine_does() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 64);
    for node in [crate::node::one_node(), deployment.node()] {
        let merchant = node.merchant("Late").await;
        let deal = node
            .deal_with(
                &merchant,
                json!({ "stock": 1, "per_user_limit": 1, "hold_seconds": 1 }),
            )
            .await;
        let shoppers = node.shoppers(2, "20.00").await;
        let hold_of = |index: usize| {
            let (node, deal, shoppers) = (&node, &deal, &shoppers);
            async move {
                node.call(
                    reqwest::Method::POST,
                    &format!("/v1/deals/{deal}/holds"),
                    Some(&shoppers[index].1),
                    Some(json!({ "quantity": 1 })),
                    Some("h"),
                )
                .await
                .ok(201)["id"]
                    .as_str()
                    .expect("a hold id")
                    .to_owned()
            }
        };
        let first = hold_of(0).await;
        tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
        let late = node
            .call(
                reqwest::Method::POST,
                &format!("/v1/holds/{first}/payment"),
                Some(&shoppers[0].1),
                None,
                None,
            )
            .await
            .ok(201);
        assert_eq!(late["late"], true);
        // The second shopper's hold expires while the unit is sold: refused.
        let view = node.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
        assert_eq!(view["sold"], 1);
        let refused = node
            .call(
                reqwest::Method::POST,
                &format!("/v1/deals/{deal}/holds"),
                Some(&shoppers[1].1),
                Some(json!({ "quantity": 1 })),
                Some("h"),
            )
            .await;
        assert_eq!(refused.code(), "sold_out");
        let wallet = node.get("/v1/wallet", Some(&shoppers[1].1)).await.ok(200);
        assert_eq!(wallet["available"], "20.00", "a refusal charges nothing");
    }
}
