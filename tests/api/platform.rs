//! The platform's shoppers and merchants (`--idp-jwks`): JWTs of the
//! platform's identity provider name accounts by the platform's user ids,
//! made at their first use and the same ever after; bad tokens are `401`
//! and change nothing; the token exchange gives the engine's own token.

use flashsale_testkit::client::Account;
use flashsale_testkit::platform::{self, TestKey, claims, hs256_with_public_key, unsigned};
use flashsale_testkit::server::{TestServer, start_with};
use serde_json::json;

/// A server trusting the test provider's RSA and EC keys (a JWKS file in
/// its data directory), crediting every new wallet 5000.
async fn platform_server() -> TestServer {
    start_with(|config| {
        platform::trust(config, &[TestKey::Rsa1, TestKey::Es256]);
        config.signup_credit = flashsale_engine::Money::parse("5000", "credit").unwrap();
    })
    .await
}

/// An account as a bearer of `token` (its id is learnt from answers).
fn bearer(token: String) -> Account {
    Account {
        id: String::new(),
        token,
    }
}

/// A JWT for `sub` signed by `key`, unique per call (`jti`), so each is a
/// token never seen before.
fn jwt(key: TestKey, sub: &str, role: Option<&str>) -> String {
    let mut claims = claims(sub, role);
    claims["jti"] = json!(format!("{:x}", rand_u64()));
    key.sign(&claims)
}

fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_user_is_one_account_whatever_token_carries_it() {
    let server = platform_server().await;
    let api = server.api();
    let merchant = bearer(jwt(TestKey::Es256, "shop-1", Some("merchant")));
    let deal = api.deal(&merchant, "999.00", 10, 2).await;
    let me = api
        .get("/v1/merchants/me", Some(&merchant.token))
        .await
        .ok(200);
    let again = bearer(jwt(TestKey::Rsa1, "shop-1", Some("merchant")));
    assert_eq!(
        api.get("/v1/merchants/me", Some(&again.token))
            .await
            .ok(200)["id"],
        me["id"],
        "another token of the same merchant"
    );

    let first = bearer(jwt(TestKey::Rsa1, "auth0|alice", None));
    let order = api.buy(&first, &deal, 1, "alice-1").await.ok(201);
    let second = bearer(jwt(TestKey::Es256, "auth0|alice", Some("shopper")));
    let wallet = api.wallet(&second).await;
    assert_eq!(
        wallet["shopper_id"], order["shopper_id"],
        "the same shopper"
    );
    assert_eq!(wallet["credited"], "5000.00", "the signup credit came once");
    assert_eq!(wallet["spent"], "999.00");
    // The retry of the buy under another token of the same user is a replay.
    let replay = api.buy(&second, &deal, 1, "alice-1").await.ok(201);
    assert_eq!(replay["id"], order["id"]);
    // The per-user limit counts the platform user, not the token.
    api.buy(&second, &deal, 1, "alice-2").await.ok(201);
    api.buy(&first, &deal, 1, "alice-3")
        .await
        .refused(409, "purchase_limit_reached");

    // The rest of a sale under yet another token of the same user: a hold
    // paid, a review and a share, and the merchant sees the orders.
    let third = bearer(jwt(TestKey::Rsa1, "auth0|alice", None));
    let hold_deal = api.deal(&merchant, "5.00", 3, 1).await;
    let hold = api.hold(&third, &hold_deal, 1, "alice-hold").await.ok(201);
    let paid = api
        .post(
            &format!("/v1/holds/{}/payment", hold["id"].as_str().unwrap()),
            Some(&second.token),
            &json!({}),
        )
        .await
        .ok(201);
    assert_eq!(paid["shopper_id"], wallet["shopper_id"]);
    let order_id = order["id"].as_str().unwrap();
    api.post(
        &format!("/v1/orders/{order_id}/review"),
        Some(&third.token),
        &json!({ "description": 5, "delivery": 4, "service": 5 }),
    )
    .await
    .ok(201);
    api.post(
        &format!("/v1/orders/{order_id}/share"),
        Some(&first.token),
        &json!({}),
    )
    .await
    .ok(201);
    let listed = api
        .get(&format!("/v1/orders?deal_id={deal}"), Some(&again.token))
        .await
        .ok(200);
    assert_eq!(listed["orders"].as_array().unwrap().len(), 2);
    let mine = api.get("/v1/orders", Some(&third.token)).await.ok(200);
    assert_eq!(mine["orders"].as_array().unwrap().len(), 3);

    let other = bearer(jwt(TestKey::Rsa1, "auth0|bob", None));
    assert_ne!(api.wallet(&other).await["shopper_id"], wallet["shopper_id"]);

    // The token exchange: the engine's own token for the same shopper.
    let exchanged = api
        .post("/v1/tokens/exchange", Some(&first.token), &json!({}))
        .await
        .ok(201);
    assert_eq!(exchanged["role"], "shopper");
    assert_eq!(exchanged["id"], wallet["shopper_id"]);
    let own = bearer(exchanged["token"].as_str().unwrap().to_owned());
    assert!(!own.token.starts_with("eyJ"), "the engine's own token");
    assert_eq!(api.wallet(&own).await["shopper_id"], wallet["shopper_id"]);
    server.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_platform_tokens_are_401_and_change_nothing() {
    let server = platform_server().await;
    let api = server.api();
    let merchant = api.merchant("Phones").await;
    let deal = api.deal(&merchant, "10.00", 5, 5).await;
    let with = |field: &str, value: serde_json::Value| {
        let mut claims = claims("mallory", None);
        claims[field] = value;
        TestKey::Rsa1.sign(&claims)
    };
    let now = platform::unix_now();
    let bad = [
        ("expired", with("exp", json!(now - 600))),
        ("other audience", with("aud", json!("another-app"))),
        ("other issuer", with("iss", json!("https://evil.test"))),
        (
            "alg none",
            unsigned(&claims("mallory", None), TestKey::Rsa1.kid()),
        ),
        (
            "HS256 with the public key",
            hs256_with_public_key(&claims("mallory", None)),
        ),
        ("unknown kid", TestKey::Rsa2.sign(&claims("mallory", None))),
        ("oversized", format!("eyJ{}.a.b", "x".repeat(9_000))),
        ("malformed", "eyJhbGciOi.not.base64!".to_owned()),
    ];
    for (what, token) in bad {
        let reply = api.buy(&bearer(token.clone()), &deal, 1, what).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.text);
        reply.refused(401, "unauthorized");
        api.post("/v1/tokens/exchange", Some(&token), &json!({}))
            .await
            .refused(401, "unauthorized");
    }
    let after = api.get_deal(&deal).await;
    assert_eq!(after["sold"], 0, "nothing sold: {after}");
    // The refusals are counted (the recorder is the process's, shared by
    // this binary's servers: at least these).
    let metrics = api.get("/metrics", None).await.text;
    let refused = metrics
        .lines()
        .find_map(|line| line.strip_prefix("flashsale_platform_tokens_total{outcome=\"refused\"} "))
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused >= 16, "two refusals per bad token: {refused}");
    assert!(
        metrics.contains("flashsale_identity_provider_keys "),
        "{metrics}"
    );
    assert!(
        metrics.contains("flashsale_identity_provider_read_failures_total 0"),
        "{metrics}"
    );
    // The engine's own tokens keep working beside the platform's, and are
    // not exchanged.
    let shopper = api.shopper("Ann", "100").await;
    api.buy(&shopper, &deal, 1, "ann-1").await.ok(201);
    api.post("/v1/tokens/exchange", Some(&shopper.token), &json!({}))
        .await
        .refused(401, "unauthorized");
    server.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_identity_provider_jwts_are_401_and_not_exchanged() {
    let server = start_with(|_| {}).await;
    let api = server.api();
    let token = jwt(TestKey::Rsa1, "alice", None);
    api.post("/v1/tokens/exchange", Some(&token), &json!({}))
        .await
        .refused(401, "unauthorized");
    api.get("/v1/wallet", Some(&token))
        .await
        .refused(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_usable_sub_makes_an_account_named_after_it() {
    let server = platform_server().await;
    let api = server.api();
    // A `sub` may be 255 bytes, a name only 100 characters; a blank `sub`
    // is a usable user id but no name.
    let long = "g".repeat(255);
    let shopper = bearer(jwt(TestKey::Es256, &long, None));
    let wallet = api.wallet(&shopper).await;
    assert_eq!(wallet["external_id"], long.as_str(), "{wallet}");
    let merchant = bearer(jwt(TestKey::Es256, &long, Some("merchant")));
    let me = api
        .get("/v1/merchants/me", Some(&merchant.token))
        .await
        .ok(200);
    assert_eq!(me["external_id"], long.as_str());
    assert_eq!(
        me["name"],
        "g".repeat(100).as_str(),
        "its first 100 characters"
    );
    let blank = bearer(jwt(TestKey::Es256, "   ", Some("merchant")));
    let me = api
        .get("/v1/merchants/me", Some(&blank.token))
        .await
        .ok(200);
    assert_eq!(me["external_id"], "   ");
    assert_eq!(me["name"], "merchant");
    let blank = bearer(jwt(TestKey::Rsa1, "   ", None));
    assert_eq!(api.wallet(&blank).await["external_id"], "   ");
    server.check_invariants();
}
