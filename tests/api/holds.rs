//! Holds: reserve, pay, release, expire, pay late.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestServer, at, start};

/// `POST /v1/holds/{hold}/payment` with `token`.
pub(crate) async fn pay(t: &TestServer, token: &str, hold: &str) -> crate::helpers::Reply {
    t.call(
        Method::POST,
        &format!("/v1/holds/{hold}/payment"),
        Some(token),
        None,
        None,
    )
    .await
}

async fn release(t: &TestServer, token: &str, hold: &str) -> crate::helpers::Reply {
    t.call(
        Method::DELETE,
        &format!("/v1/holds/{hold}"),
        Some(token),
        None,
        None,
    )
    .await
}

/// Polls the deal until `held` is `expected` (expiry runs every 250 ms).
async fn await_held(t: &TestServer, deal: &str, expected: u64) -> Value {
    for _ in 0..200 {
        let view = t.get_deal(deal).await;
        if view["held"] == expected {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("deal {deal} never had {expected} held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_reserves_then_pays_once() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "100.00", 5, 2).await;
    let shopper = t.shopper("Li", "500").await;
    let hold = t.hold(&shopper, &deal, 2, "h1").await.ok(201);
    assert_eq!(
        (&hold["deal_id"], &hold["quantity"], &hold["amount"]),
        (&json!(deal), &json!(2), &json!("200.00"))
    );
    assert!(hold["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        t.hold(&shopper, &deal, 2, "h1").await.ok(201),
        hold,
        "idempotent"
    );
    let wallet = t.wallet(&shopper).await;
    assert_eq!(
        (&wallet["available"], &wallet["held"]),
        (&json!("300.00"), &json!("200.00"))
    );
    assert_eq!(t.get_deal(&deal).await["held"], 2);

    let id = hold["id"].as_str().unwrap();
    let order = pay(&t, &shopper.token, id).await.ok(201);
    assert_eq!(
        (&order["amount"], &order["late"]),
        (&json!("200.00"), &json!(false))
    );
    // Paying or releasing it again is refused, naming the order.
    for settled in [
        pay(&t, &shopper.token, id).await,
        release(&t, &shopper.token, id).await,
    ] {
        settled.refused(409, "hold_settled");
        let named = &settled.body["error"]["order_id"];
        assert_eq!(named, &order["id"], "{}", settled.text);
    }
    let wallet = t.wallet(&shopper).await;
    assert_eq!(
        (&wallet["held"], &wallet["spent"]),
        (&json!("0.00"), &json!("200.00"))
    );
    let view = t.get_deal(&deal).await;
    assert_eq!((&view["held"], &view["sold"]), (&json!(0), &json!(2)));
    pay(&t, &shopper.token, "h_fffff")
        .await
        .refused(404, "not_found");
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_hold_gives_the_stock_back_at_once() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "100.00", 1, 1).await;
    let shopper = t.shopper("Li", "500").await;
    let hold = t.hold(&shopper, &deal, 1, "h1").await.ok(201);
    let id = hold["id"].as_str().unwrap();
    let other = t.shopper("Han", "500").await;
    t.buy(&other, &deal, 1, "b1").await.refused(409, "sold_out");
    let released = release(&t, &shopper.token, id).await.ok(200);
    assert_eq!(released["status"], "released");
    release(&t, &shopper.token, id).await.ok(200);
    assert_eq!(t.wallet(&shopper).await["available"], "500.00");
    pay(&t, &shopper.token, id)
        .await
        .refused(409, "hold_expired");
    t.buy(&other, &deal, 1, "b2").await.ok(201);
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_released_by_the_clock_and_may_be_paid_late() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t
        .deal_with(
            &merchant,
            json!({
                "title": "Quick", "price": "10.00", "stock": 1, "per_user_limit": 1,
                "starts_at": at(-60), "ends_at": at(3600), "hold_seconds": 1
            }),
        )
        .await
        .ok(201);
    let deal = deal["id"].as_str().unwrap().to_owned();
    let shopper = t.shopper("Li", "100").await;
    let hold = t.hold(&shopper, &deal, 1, "h1").await.ok(201);
    await_held(&t, &deal, 0).await;
    assert_eq!(t.wallet(&shopper).await["held"], "0.00", "funds are back");

    // Stock and funds allow: honoured, marked late.
    let order = pay(&t, &shopper.token, hold["id"].as_str().unwrap())
        .await
        .ok(201);
    assert_eq!(order["late"], true);
    assert_eq!(t.get_deal(&deal).await["sold"], 1);

    // Stock gone meanwhile: 409 hold_expired and nothing charged.
    let deal2 = t
        .deal_with(
            &merchant,
            json!({
                "title": "Quick 2", "price": "10.00", "stock": 1,
                "starts_at": at(-60), "ends_at": at(3600), "hold_seconds": 1
            }),
        )
        .await
        .ok(201);
    let deal2 = deal2["id"].as_str().unwrap().to_owned();
    let hold = t.hold(&shopper, &deal2, 1, "h2").await.ok(201);
    await_held(&t, &deal2, 0).await;
    let rival = t.shopper("Han", "100").await;
    t.buy(&rival, &deal2, 1, "r").await.ok(201);
    let before = t.wallet(&shopper).await;
    pay(&t, &shopper.token, hold["id"].as_str().unwrap())
        .await
        .refused(409, "hold_expired");
    assert_eq!(t.wallet(&shopper).await, before);
    t.check_invariants();
}
