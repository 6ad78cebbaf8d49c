//! Merchants, shoppers, bulk accounts, wallets and credits.

use serde_json::json;

use crate::helpers::{ADMIN, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_and_shoppers_get_ids_and_working_tokens() {
    let t = start().await;
    let merchant = t
        .post("/v1/merchants", Some(ADMIN), &json!({ "name": "Xiaomi" }))
        .await
        .ok(201);
    assert!(merchant["id"].as_str().unwrap().starts_with("m_"));
    assert_eq!(merchant["name"], "Xiaomi");
    let shopper = t
        .post("/v1/shoppers", None, &json!({ "name": "Li Lei" }))
        .await
        .ok(201);
    assert!(shopper["id"].as_str().unwrap().starts_with("s_"));
    let wallet = t.get("/v1/wallet", shopper["token"].as_str()).await.ok(200);
    assert_eq!(wallet["shopper_id"], shopper["id"]);
    assert_eq!(
        (&wallet["available"], &wallet["held"], &wallet["spent"]),
        (&json!("0.00"), &json!("0.00"), &json!("0.00"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_reference_counts_once() {
    let t = start().await;
    let shopper = t.shopper("Han Meimei", "0").await;
    let wallet = t.credit(&shopper, "1000.5", "pay-1").await.ok(201);
    assert_eq!(wallet["available"], "1000.50");
    let again = t.credit(&shopper, "1000.5", "pay-1").await.ok(201);
    assert_eq!(
        again["available"], "1000.50",
        "the same reference changes nothing"
    );
    t.credit(&shopper, "1.00", "pay-1")
        .await
        .refused(422, "idempotency_key_reused");
    t.credit(&shopper, "0.001", "pay-2")
        .await
        .refused(422, "invalid");
    t.credit(&shopper, "-1", "pay-3")
        .await
        .refused(422, "invalid");
    assert_eq!(t.wallet(&shopper).await["available"], "1000.50");
    // An unknown shopper.
    let ghost = crate::helpers::Account {
        id: "s_fffff".into(),
        token: String::new(),
    };
    t.credit(&ghost, "1.00", "pay-4")
        .await
        .refused(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_shoppers_come_credited_with_tokens() {
    let t = start().await;
    let body = t
        .post(
            "/v1/admin/shoppers",
            Some(ADMIN),
            &json!({ "count": 50, "credit": "200.00" }),
        )
        .await
        .ok(201);
    let shoppers = body["shoppers"].as_array().unwrap();
    assert_eq!(shoppers.len(), 50);
    let last = &shoppers[49];
    let wallet = t.get("/v1/wallet", last["token"].as_str()).await.ok(200);
    assert_eq!(wallet["shopper_id"], last["id"]);
    assert_eq!(wallet["available"], "200.00");
    for count in [0, 10_001] {
        t.post(
            "/v1/admin/shoppers",
            Some(ADMIN),
            &json!({ "count": count, "credit": "1.00" }),
        )
        .await
        .refused(422, "invalid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_validated() {
    let t = start().await;
    t.post("/v1/merchants", Some(ADMIN), &json!({ "name": "  " }))
        .await
        .refused(422, "invalid");
    t.post("/v1/shoppers", None, &json!({ "name": "x".repeat(101) }))
        .await
        .refused(422, "invalid");
}
