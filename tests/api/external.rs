//! The platform's user ids (external ids): the admin's credit by external
//! id makes the shopper on the first call and credits the same one on the
//! next; bad external ids are `422 invalid` and make nothing; answers carry
//! `external_id` when the account has one.

use flashsale_engine::ShopperId;
use flashsale_gateway::{Caller, NO_EPOCH};
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Reply, TestServer, now_seconds, signer, start};

async fn credit_external(t: &TestServer, segment: &str, amount: &str, reference: &str) -> Reply {
    t.post(
        &format!("/v1/wallets/external/{segment}/credits"),
        Some(ADMIN),
        &json!({ "amount": amount, "reference": reference }),
    )
    .await
}

fn shopper_number(id: &Value) -> u64 {
    id.as_str()
        .and_then(|id| id.parse::<ShopperId>().ok())
        .map(|id| id.0)
        .unwrap_or_else(|| panic!("a shopper id: {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_by_external_id_makes_the_shopper_once_then_credits_it() {
    let t = start().await;
    let first = credit_external(&t, "auth0%7C123", "10.00", "pay-1")
        .await
        .ok(201);
    assert_eq!(first["external_id"], "auth0|123", "percent-decoded");
    assert_eq!(first["available"], "10.00");
    assert_eq!(first["credited"], "10.00");
    let second = credit_external(&t, "auth0%7C123", "5.50", "pay-2")
        .await
        .ok(201);
    assert_eq!(
        second["shopper_id"], first["shopper_id"],
        "the same shopper"
    );
    assert_eq!(second["available"], "15.50");
    // The same reference again changes nothing; with another amount it is
    // refused, as for a credit by shopper id.
    let again = credit_external(&t, "auth0%7C123", "5.50", "pay-2")
        .await
        .ok(201);
    assert_eq!(again["available"], "15.50");
    credit_external(&t, "auth0%7C123", "6.00", "pay-2")
        .await
        .refused(422, "idempotency_key_reused");
    // `|` unencoded is the same external id.
    let raw = credit_external(&t, "auth0|123", "1.00", "pay-3")
        .await
        .ok(201);
    assert_eq!(raw["shopper_id"], first["shopper_id"]);
    // Another external id is another shopper.
    let other = credit_external(&t, "google-oauth2%7C1098", "1.00", "pay-1")
        .await
        .ok(201);
    assert_ne!(other["shopper_id"], first["shopper_id"]);

    // The shopper's own wallet says its external id; the credit by shopper
    // id too.
    let id: ShopperId = first["shopper_id"].as_str().unwrap().parse().unwrap();
    let issued = flashsale_gateway::Timestamp(now_seconds() * 1000);
    let token = signer().issue(Caller::Shopper(id), issued, now_seconds() + 3600, NO_EPOCH);
    let wallet = t.get("/v1/wallet", Some(&token)).await.ok(200);
    assert_eq!(wallet["external_id"], "auth0|123");
    assert_eq!(wallet["available"], "16.50");
    let by_id = t
        .post(
            &format!(
                "/v1/wallets/{}/credits",
                first["shopper_id"].as_str().unwrap()
            ),
            Some(ADMIN),
            &json!({ "amount": "1.00", "reference": "pay-4" }),
        )
        .await
        .ok(201);
    assert_eq!(by_id["external_id"], "auth0|123");
    assert_eq!(by_id["available"], "17.50");

    // The request counters have the route: five answered 201, one 422.
    let metrics = t.get("/metrics", None).await.text;
    let route = r#"route="POST /v1/wallets/external/{id}/credits""#;
    for (status, count) in [("201", 5), ("422", 1)] {
        let series =
            format!("flashsale_http_requests_total{{{route},status=\"{status}\"}} {count}\n");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_external_ids_and_credits_are_refused_and_make_no_shopper() {
    let t = start().await;
    let before = t.shopper("before", "0").await;
    let long = "x".repeat(256);
    for segment in [
        long.as_str(),
        "auth0%0A123",
        "nul%00",
        "del%7F",
        "c1%C2%85",
        "not-utf8%FF",
    ] {
        credit_external(&t, segment, "1.00", "pay-1")
            .await
            .refused(422, "invalid");
    }
    // A valid external id with a refused credit makes no shopper either.
    for (amount, reference) in [("0", "pay-1"), ("1.001", "pay-1"), ("1.00", "")] {
        credit_external(&t, "auth0%7Cfine", amount, reference)
            .await
            .refused(422, "invalid");
    }
    // The external id is a path segment: none at all is no path of the API.
    credit_external(&t, "", "1.00", "pay-1")
        .await
        .refused(404, "not_found");
    // Only the admin credits.
    t.post(
        "/v1/wallets/external/auth0%7Cfine/credits",
        Some(&before.token),
        &json!({ "amount": "1.00", "reference": "pay-1" }),
    )
    .await
    .refused(403, "forbidden");
    // Nothing was made in between: the next shopper has the next id.
    let made = credit_external(&t, "auth0%7Cfine", "1.00", "pay-1")
        .await
        .ok(201);
    assert_eq!(
        shopper_number(&made["shopper_id"]),
        shopper_number(&json!(before.id)) + 1
    );
    // 255 bytes is the longest external id.
    let longest = "y".repeat(255);
    let made = credit_external(&t, &longest, "1.00", "pay-1").await.ok(201);
    assert_eq!(made["external_id"], longest.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_without_an_external_id_answer_without_one() {
    let t = start().await;
    let shopper = t.shopper("Li Lei", "0").await;
    let wallet = t.wallet(&shopper).await;
    assert!(wallet.get("external_id").is_none(), "{wallet}");
    let credited = t.credit(&shopper, "1.00", "pay-1").await.ok(201);
    assert!(credited.get("external_id").is_none(), "{credited}");
    let merchant = t.merchant("Xiaomi").await;
    let me = t
        .get("/v1/merchants/me", Some(&merchant.token))
        .await
        .ok(200);
    assert_eq!(me["name"], "Xiaomi");
    assert!(me.get("external_id").is_none(), "{me}");
}
