//! One-tap buys: orders, idempotency, and every refusal of the burst.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Account, TestServer, at, start};

async fn sale(t: &TestServer, stock: u64, limit: u32) -> (Account, String) {
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "999.00", stock, limit).await;
    (merchant, deal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buy_is_paid_from_the_wallet_and_retries_get_the_same_order() {
    let t = start().await;
    let (merchant, deal) = sale(&t, 10, 2).await;
    let shopper = t.shopper("Li", "5000").await;
    let order = t.buy(&shopper, &deal, 2, "tap-1").await.ok(201);
    assert_eq!(order["deal_id"], json!(deal));
    assert_eq!(order["shopper_id"], json!(shopper.id));
    assert_eq!(
        (&order["quantity"], &order["unit_price"], &order["amount"]),
        (&json!(2), &json!("999.00"), &json!("1998.00"))
    );
    assert_eq!(
        (&order["status"], &order["late"]),
        (&json!("paid"), &json!(false))
    );
    assert!(order["created_at"].as_str().unwrap().ends_with('Z'));

    let retry = t.buy(&shopper, &deal, 2, "tap-1").await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.body, order, "the same key yields the same order");
    t.buy(&shopper, &deal, 1, "tap-1")
        .await
        .refused(422, "idempotency_key_reused");

    let wallet = t.wallet(&shopper).await;
    assert_eq!(
        (&wallet["available"], &wallet["spent"]),
        (&json!("3002.00"), &json!("1998.00"))
    );
    let view = t.get_deal(&deal).await;
    assert_eq!((&view["remaining"], &view["sold"]), (&json!(8), &json!(2)));

    // The order, to its shopper and to the deal's merchant.
    let id = order["id"].as_str().unwrap();
    let path = format!("/v1/orders/{id}");
    assert_eq!(t.get(&path, Some(&shopper.token)).await.ok(200), order);
    assert_eq!(t.get(&path, Some(&merchant.token)).await.ok(200), order);
    let mine = t.get("/v1/orders", Some(&shopper.token)).await.ok(200);
    assert_eq!(mine["orders"], json!([order]));
    let theirs = t
        .get(&format!("/v1/orders?deal_id={deal}"), Some(&merchant.token))
        .await
        .ok(200);
    assert_eq!(theirs["orders"], json!([order]));
    t.get("/v1/orders", Some(&merchant.token))
        .await
        .refused(400, "bad_request");
    t.get("/v1/orders/o_fffff", Some(&shopper.token))
        .await
        .refused(404, "not_found");
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_burst_have_their_codes_and_charge_nothing() {
    let t = start().await;
    let (_, deal) = sale(&t, 2, 1).await;
    let rich = t.shopper("Rich", "5000").await;
    let poor = t.shopper("Poor", "10").await;
    let late = t.shopper("Late", "5000").await;

    t.buy(&poor, &deal, 1, "p1")
        .await
        .refused(402, "insufficient_funds");
    t.buy(&rich, &deal, 2, "r0")
        .await
        .refused(409, "purchase_limit_reached");
    t.buy(&rich, &deal, 1, "r1").await.ok(201);
    t.buy(&rich, &deal, 1, "r2")
        .await
        .refused(409, "purchase_limit_reached");
    t.buy(&late, &deal, 1, "l1").await.ok(201);
    let sold_out = t.shopper("Sold out", "5000").await;
    t.buy(&sold_out, &deal, 1, "s1")
        .await
        .refused(409, "sold_out");
    t.buy(&sold_out, &deal, 1, "s1")
        .await
        .refused(409, "sold_out");
    t.buy(&rich, &deal, 0, "z").await.refused(422, "invalid");

    assert_eq!(t.wallet(&poor).await["available"], "10.00");
    assert_eq!(t.wallet(&sold_out).await["available"], "5000.00");
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_is_required_and_bounded() {
    let t = start().await;
    let (_, deal) = sale(&t, 2, 1).await;
    let shopper = t.shopper("Li", "5000").await;
    let path = format!("/v1/deals/{deal}/orders");
    let body = json!({ "quantity": 1 });
    for key in [None, Some("k".repeat(256))] {
        t.call(
            Method::POST,
            &path,
            Some(&shopper.token),
            Some(&body),
            key.as_deref(),
        )
        .await
        .refused(400, "bad_request");
        t.call(
            Method::POST,
            &format!("/v1/deals/{deal}/holds"),
            Some(&shopper.token),
            Some(&body),
            key.as_deref(),
        )
        .await
        .refused(400, "bad_request");
    }
    t.buy(&shopper, &deal, 1, &"k".repeat(255)).await.ok(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_deal_is_gone() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let shopper = t.shopper("Li", "5000").await;
    let now = crate::helpers::now_seconds();
    let deal = t
        .deal_with(
            &merchant,
            json!({
                "title": "Blink", "price": "1.00", "stock": 5,
                "starts_at": at(-60), "ends_at": crate::helpers::rfc3339(now + 1)
            }),
        )
        .await
        .ok(201);
    let deal = deal["id"].as_str().unwrap().to_owned();
    // Wait for the wall clock to pass `ends_at`, watching the deal.
    for _ in 0..100 {
        if t.get_deal(&deal).await["status"] == "ended" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.get_deal(&deal).await["status"], "ended");
    t.buy(&shopper, &deal, 1, "k")
        .await
        .refused(410, "deal_ended");
}
