//! Nobody reads or changes what is not theirs, and nothing changes when
//! they try.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{ADMIN, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_cannot_touch_another_shoppers_orders_holds_or_wallet() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "10.00", 10, 2).await;
    let alice = t.shopper("Alice", "100").await;
    let bob = t.shopper("Bob", "100").await;
    let order = t.buy(&bob, &deal, 1, "b1").await.ok(201);
    let hold = t.hold(&bob, &deal, 1, "b2").await.ok(201);
    let bob_wallet = t.wallet(&bob).await;
    let deal_before = t.get_deal(&deal).await;

    let order_path = format!("/v1/orders/{}", order["id"].as_str().unwrap());
    t.get(&order_path, Some(&alice.token))
        .await
        .refused(403, "forbidden");
    let hold_id = hold["id"].as_str().unwrap();
    t.call(
        Method::POST,
        &format!("/v1/holds/{hold_id}/payment"),
        Some(&alice.token),
        None,
        None,
    )
    .await
    .refused(403, "forbidden");
    t.call(
        Method::DELETE,
        &format!("/v1/holds/{hold_id}"),
        Some(&alice.token),
        None,
        None,
    )
    .await
    .refused(403, "forbidden");
    // The only wallet a shopper reads is its own; crediting is the admin's.
    assert_eq!(t.wallet(&alice).await["shopper_id"], json!(alice.id));
    t.post(
        &format!("/v1/wallets/{}/credits", bob.id),
        Some(&alice.token),
        &json!({ "amount": "1000.00", "reference": "steal" }),
    )
    .await
    .refused(403, "forbidden");
    // Alice's own order list does not show Bob's order.
    let mine = t.get("/v1/orders", Some(&alice.token)).await.ok(200);
    assert_eq!(mine["orders"], json!([]));

    assert_eq!(t.wallet(&bob).await, bob_wallet);
    assert_eq!(t.get_deal(&deal).await, deal_before);
    // The hold is still Bob's to pay.
    t.call(
        Method::POST,
        &format!("/v1/holds/{hold_id}/payment"),
        Some(&bob.token),
        None,
        None,
    )
    .await
    .ok(201);
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_cannot_change_or_read_another_merchants_deal() {
    let t = start().await;
    let xiaomi = t.merchant("Xiaomi").await;
    let huawei = t.merchant("Huawei").await;
    let deal = t.deal(&xiaomi, "10.00", 10, 2).await;
    let shopper = t.shopper("Li", "100").await;
    let order = t.buy(&shopper, &deal, 1, "k").await.ok(201);
    let before = t.get_deal(&deal).await;

    t.patch(
        &format!("/v1/deals/{deal}"),
        &huawei.token,
        &json!({ "paused": true, "add_stock": 1000 }),
    )
    .await
    .refused(403, "forbidden");
    t.get(
        &format!("/v1/orders/{}", order["id"].as_str().unwrap()),
        Some(&huawei.token),
    )
    .await
    .refused(403, "forbidden");
    t.get(&format!("/v1/orders?deal_id={deal}"), Some(&huawei.token))
        .await
        .refused(403, "forbidden");
    assert_eq!(t.get_deal(&deal).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "10.00", 10, 2).await;
    let shopper = t.shopper("Li", "100").await;
    let name = json!({ "name": "Sneaky" });
    // A shopper calling admin and merchant endpoints.
    t.post("/v1/merchants", Some(&shopper.token), &name)
        .await
        .refused(403, "forbidden");
    t.post(
        "/v1/admin/shoppers",
        Some(&shopper.token),
        &json!({ "count": 5, "credit": "1000.00" }),
    )
    .await
    .refused(403, "forbidden");
    t.post(
        "/v1/deals",
        Some(&shopper.token),
        &json!({ "title": "Fake", "price": "1.00", "stock": 1,
                 "starts_at": crate::helpers::at(-1), "ends_at": crate::helpers::at(60) }),
    )
    .await
    .refused(403, "forbidden");
    t.patch(
        &format!("/v1/deals/{deal}"),
        &shopper.token,
        &json!({ "paused": true }),
    )
    .await
    .refused(403, "forbidden");
    // A merchant buying, the admin buying or reading a wallet.
    t.buy(
        &crate::helpers::Account {
            id: merchant.id.clone(),
            token: merchant.token.clone(),
        },
        &deal,
        1,
        "m",
    )
    .await
    .refused(403, "forbidden");
    t.get("/v1/wallet", Some(ADMIN))
        .await
        .refused(403, "forbidden");
    t.post("/v1/merchants", Some(&merchant.token), &name)
        .await
        .refused(403, "forbidden");
    // Nothing was created or changed.
    let view = t.get_deal(&deal).await;
    assert_eq!(
        (&view["stock"], &view["sold"], &view["status"]),
        (&json!(10), &json!(0), &json!("live"))
    );
    let feed = t.get("/v1/feed", None).await.ok(200);
    assert_eq!(feed["cards"].as_array().unwrap().len(), 1);
}
