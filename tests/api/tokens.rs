//! Recovering a token: the admin issues a fresh one for an existing
//! account and revokes every earlier one (docs/api.md "Recovering a
//! token").

use serde_json::json;

use crate::helpers::{ADMIN, Account, start, start_on, test_config};

/// A fresh token works beside the old one; a revocation refuses both
/// (`401` with `WWW-Authenticate`), and a token issued after it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reissue_then_revoke_refuses_every_earlier_token_and_takes_later_ones() {
    let t = start().await;
    for first in [t.shopper("Li", "10").await, t.merchant("Xiaomi").await] {
        let me = if first.id.starts_with("s_") {
            "/v1/wallet"
        } else {
            "/v1/merchants/me"
        };
        let issued = t.issue_token(&first.id, None).await.ok(201);
        assert_eq!(issued["id"], first.id.as_str());
        assert!(issued["expires_at"].as_str().unwrap().ends_with('Z'));
        let second = Account::from_json(&issued);
        assert!(second.token.starts_with("v2."), "{}", second.token);
        assert_ne!(second.token, first.token);
        t.get(me, Some(&second.token)).await.ok(200);
        t.get(me, Some(&first.token)).await.ok(200);

        let revoked = t.revoke_tokens(&first.id).await.ok(200);
        assert_eq!(revoked["id"], first.id.as_str());
        for old in [&first.token, &second.token] {
            let refused = t.get(me, Some(old)).await;
            refused.refused(401, "unauthorized");
            assert!(refused.text.contains("revoked"), "{}", refused.text);
        }
        // Issued right after the answer: valid, however soon.
        let third = Account::from_json(&t.issue_token(&first.id, None).await.ok(201));
        t.get(me, Some(&third.token)).await.ok(200);
        // A second revocation refuses it too.
        t.revoke_tokens(&first.id).await.ok(200);
        t.get(me, Some(&third.token))
            .await
            .refused(401, "unauthorized");
    }
}

/// A buy with a revoked token changes nothing: not the wallet, not the
/// stock, and the same key later with a valid token is a fresh buy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buy_with_a_revoked_token_changes_nothing() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "10.00", 5, 5).await;
    let old = t.shopper("Li", "100").await;
    t.revoke_tokens(&old.id).await.ok(200);
    t.buy(&old, &deal, 1, "k1")
        .await
        .refused(401, "unauthorized");
    let fresh = Account::from_json(&t.issue_token(&old.id, None).await.ok(201));
    let wallet = t.wallet(&fresh).await;
    assert_eq!(
        (&wallet["available"], &wallet["spent"]),
        (&json!("100.00"), &json!("0.00"))
    );
    let numbers = t.get_deal(&deal).await;
    assert_eq!(
        (&numbers["remaining"], &numbers["sold"]),
        (&json!(5), &json!(0))
    );
    t.buy(&fresh, &deal, 1, "k1").await.ok(201);
    assert_eq!(t.wallet(&fresh).await["available"], "90.00");
}

/// Tokens of the `v1.` form (no issue time) still work until the account
/// is revoked, then never again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_token_works_until_any_revocation() {
    use base64::Engine as _;
    use hmac::{Hmac, KeyInit, Mac};
    let t = start().await;
    let shopper = t.shopper("Li", "0").await;
    let payload = format!("v1.{}.{}", shopper.id, crate::helpers::now_seconds() + 3600);
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(flashsale_testkit::server::SECRET.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let v1 = format!(
        "{payload}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    t.get("/v1/wallet", Some(&v1)).await.ok(200);
    t.revoke_tokens(&shopper.id).await.ok(200);
    t.get("/v1/wallet", Some(&v1))
        .await
        .refused(401, "unauthorized");
}

/// Bad bodies, ids and callers get the contract's codes and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_ids_and_callers_are_refused() {
    let t = start().await;
    let shopper = t.shopper("Li", "0").await;
    let merchant = t.merchant("Xiaomi").await;
    let path = format!("/v1/shoppers/{}/tokens", shopper.id);
    // The lifetime: 1 s up to --token-ttl-hours (720 h by default).
    let short = t
        .issue_token(&shopper.id, Some(&json!({ "ttl_seconds": 1 })))
        .await
        .ok(201);
    assert!(short["expires_at"].is_string());
    t.issue_token(&shopper.id, Some(&json!({ "ttl_seconds": 720 * 3600 })))
        .await
        .ok(201);
    t.issue_token(&shopper.id, Some(&json!({}))).await.ok(201);
    for bad in [
        json!({ "ttl_seconds": 0 }),
        json!({ "ttl_seconds": 720 * 3600 + 1 }),
        json!({ "ttl_seconds": -5 }),
        json!({ "ttl_seconds": "60" }),
        json!({ "ttl_seconds": null }),
        json!({ "ttl": 60 }),
    ] {
        let refused = t.issue_token(&shopper.id, Some(&bad)).await;
        refused.refused(422, "invalid");
    }
    t.issue_token(&shopper.id, Some(&json!([1])))
        .await
        .refused(400, "malformed_json");
    let with_field = t
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(ADMIN),
            Some(&json!({ "now": true })),
            None,
        )
        .await;
    with_field.refused(422, "invalid");
    // Unknown or malformed ids; a merchant's id under shoppers.
    for id in ["s_fffff", "x_1", "s_01"] {
        t.issue_token(id, None).await.refused(404, "not_found");
        t.revoke_tokens(id).await.refused(404, "not_found");
    }
    t.issue_token("m_fffff", None)
        .await
        .refused(404, "not_found");
    t.call(
        reqwest::Method::POST,
        &format!("/v1/shoppers/{}/tokens", merchant.id),
        Some(ADMIN),
        None,
        None,
    )
    .await
    .refused(404, "not_found");
    // Only the admin: the account itself may not, nor anyone else.
    for token in [Some(shopper.token.as_str()), Some(merchant.token.as_str())] {
        t.call(reqwest::Method::POST, &path, token, None, None)
            .await
            .refused(403, "forbidden");
        t.call(reqwest::Method::DELETE, &path, token, None, None)
            .await
            .refused(403, "forbidden");
    }
    t.call(reqwest::Method::DELETE, &path, None, None, None)
        .await
        .refused(401, "unauthorized");
    t.call(reqwest::Method::GET, &path, Some(ADMIN), None, None)
        .await
        .refused(405, "method_not_allowed");
    // Nothing was revoked by any of it.
    t.wallet(&shopper).await;
}

/// A revocation survives a restart of the node (the journal holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_survives_a_restart() {
    let t = start().await;
    let shopper = t.shopper("Li", "0").await;
    t.revoke_tokens(&shopper.id).await.ok(200);
    let fresh = Account::from_json(&t.issue_token(&shopper.id, None).await.ok(201));
    let (stopped, dir) = t.shutdown().await;
    stopped.expect("a clean stop");
    let config = test_config(&dir);
    let t = start_on(dir, config, |_| {}).await;
    t.get("/v1/wallet", Some(&shopper.token))
        .await
        .refused(401, "unauthorized");
    t.wallet(&fresh).await;
}
