//! Reviews and shares of an order, the merchant's rating on the feed's
//! cards, `GET /v1/merchants/me`, the signup credit, and the two pages.

use flashsale_engine::Money;
use serde_json::{Value, json};

use crate::helpers::{Account, TestServer, start, start_with};

/// A merchant, a live deal of theirs and a shopper's order of it.
struct Bought {
    merchant: Account,
    deal: String,
    shopper: Account,
    order: String,
}

async fn bought(t: &TestServer) -> Bought {
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "10.00", 10, 2).await;
    let shopper = t.shopper("Li", "100").await;
    let order = t.buy(&shopper, &deal, 1, "k").await.ok(201);
    Bought {
        merchant,
        deal,
        shopper,
        order: order["id"].as_str().expect("an order id").to_owned(),
    }
}

fn scores(description: i64, delivery: i64, service: i64) -> Value {
    json!({ "description": description, "delivery": delivery, "service": service })
}

async fn review(t: &TestServer, order: &str, token: &str, body: &Value) -> crate::helpers::Reply {
    t.post(&format!("/v1/orders/{order}/review"), Some(token), body)
        .await
}

/// The merchant's rating on the deal's card in `GET /v1/feed`.
async fn card_rating(t: &TestServer, deal: &str) -> Value {
    let feed = t.get("/v1/feed", None).await.ok(200);
    let card = feed["cards"]
        .as_array()
        .expect("cards")
        .iter()
        .find(|card| card["id"] == deal)
        .expect("the deal's card")
        .clone();
    card["merchant"]["rating"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_orders_shopper_reviews_it_once_with_scores_from_one_to_five() {
    let t = start().await;
    let Bought {
        merchant,
        deal,
        shopper,
        order,
    } = bought(&t).await;
    assert_eq!(
        card_rating(&t, &deal).await,
        json!({ "average": null, "reviews": 0 })
    );

    let stranger = t.shopper("Han", "0").await;
    review(&t, &order, &stranger.token, &scores(5, 5, 5))
        .await
        .refused(403, "forbidden");
    review(&t, &order, &merchant.token, &scores(5, 5, 5))
        .await
        .refused(403, "forbidden");
    t.post(
        &format!("/v1/orders/{order}/review"),
        None,
        &scores(5, 5, 5),
    )
    .await
    .refused(401, "unauthorized");

    for (body, field) in [
        (scores(0, 5, 5), "description"),
        (scores(5, 6, 5), "delivery"),
        (scores(5, 5, -1), "service"),
        (scores(5, 5, 300), "service"),
    ] {
        let answer = review(&t, &order, &shopper.token, &body).await;
        answer.refused(422, "invalid");
        let message = answer.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{message} names {field}");
    }
    let long = json!({ "description": 5, "delivery": 5, "service": 5, "text": "x".repeat(501) });
    let answer = review(&t, &order, &shopper.token, &long).await;
    answer.refused(422, "invalid");
    assert!(answer.text.contains("text"), "{}", answer.text);
    let missing = review(&t, &order, &shopper.token, &json!({ "description": 5 })).await;
    missing.refused(422, "invalid");
    assert!(missing.text.contains("delivery"), "{}", missing.text);
    review(&t, "o_999999", &shopper.token, &scores(5, 5, 5))
        .await
        .refused(404, "not_found");
    // Nothing refused counted.
    assert_eq!(card_rating(&t, &deal).await["reviews"], 0);

    let script = "<script>alert(\"x\")</script> & <img src=x onerror=alert(1)> \u{1F4F1}\n'quoted'";
    let body = json!({ "description": 5, "delivery": 4, "service": 4, "text": script });
    let created = review(&t, &order, &shopper.token, &body).await;
    assert_eq!(
        created.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    let created = created.ok(201);
    assert_eq!(created["text"], script, "stored and returned as given");
    assert_eq!(
        (&created["order_id"], &created["deal_id"]),
        (&json!(order), &json!(deal))
    );
    assert_eq!(
        (
            &created["description"],
            &created["delivery"],
            &created["service"]
        ),
        (&json!(5), &json!(4), &json!(4))
    );
    assert_eq!(created["merchant_id"], json!(merchant.id));

    review(&t, &order, &shopper.token, &scores(1, 1, 1))
        .await
        .refused(409, "already_reviewed");

    // 13 points over 3 scores: 4.33, on the card and for the merchant.
    let rating = json!({ "average": "4.33", "reviews": 1 });
    assert_eq!(card_rating(&t, &deal).await, rating);
    assert_eq!(created["merchant_rating"], rating);
    let me = t
        .get("/v1/merchants/me", Some(&merchant.token))
        .await
        .ok(200);
    assert_eq!(
        me,
        json!({ "id": merchant.id, "name": "Xiaomi", "rating": rating })
    );
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_me_needs_a_merchant_token() {
    let t = start().await;
    let shopper = t.shopper("Li", "0").await;
    t.get("/v1/merchants/me", Some(&shopper.token))
        .await
        .refused(403, "forbidden");
    t.get("/v1/merchants/me", None)
        .await
        .refused(401, "unauthorized");
    let merchant = t.merchant("Acme").await;
    let me = t
        .get("/v1/merchants/me", Some(&merchant.token))
        .await
        .ok(200);
    assert_eq!(me["rating"], json!({ "average": null, "reviews": 0 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_counts_once_per_order_toward_popularity() {
    let t = start().await;
    let Bought {
        deal,
        shopper,
        order,
        ..
    } = bought(&t).await;
    assert_eq!(t.get_deal(&deal).await["popularity"], 1, "one buyer");
    let path = format!("/v1/orders/{order}/share");
    let stranger = t.shopper("Han", "0").await;
    t.post(&path, Some(&stranger.token), &json!({}))
        .await
        .refused(403, "forbidden");
    let first = t
        .post(&path, Some(&shopper.token), &json!({}))
        .await
        .ok(201);
    assert_eq!(first, json!({ "order_id": order, "shared": true }));
    t.post(&path, Some(&shopper.token), &json!({}))
        .await
        .ok(200);
    let view = t.get_deal(&deal).await;
    assert_eq!(
        (&view["shares"], &view["popularity"]),
        (&json!(1), &json!(2))
    );
    t.post(
        "/v1/orders/o_999999/share",
        Some(&shopper.token),
        &json!({}),
    )
    .await
    .refused(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_is_credited_the_configured_amount() {
    let credit = Money::from_fen(500_000).expect("an amount");
    let t = start_with(|config| config.signup_credit = credit).await;
    let body = t
        .post("/v1/shoppers", None, &json!({ "name": "Li" }))
        .await
        .ok(201);
    let token = body["token"].as_str().expect("a token");
    let wallet = t.get("/v1/wallet", Some(token)).await.ok(200);
    assert_eq!(
        (&wallet["available"], &wallet["credited"]),
        (&json!("5000.00"), &json!("5000.00"))
    );
    // Enough to buy at once, with no admin step.
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "999.00", 5, 1).await;
    let shopper = Account {
        id: body["id"].as_str().expect("an id").to_owned(),
        token: token.to_owned(),
    };
    t.buy(&shopper, &deal, 1, "k").await.ok(201);
    t.check_invariants();

    // The default is no credit.
    let plain = start().await;
    let body = plain
        .post("/v1/shoppers", None, &json!({ "name": "Li" }))
        .await
        .ok(201);
    let wallet = plain
        .get("/v1/wallet", body["token"].as_str())
        .await
        .ok(200);
    assert_eq!(wallet["available"], "0.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_are_served_with_a_strict_policy() {
    let t = start().await;
    for (path, marker) in [
        ("/", "<title>Flash sale</title>"),
        ("/merchant", "Merchant"),
    ] {
        let page = t.get(path, None).await;
        assert_eq!(page.status, 200, "{path}");
        let header = |name: &str| {
            page.headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_else(|| panic!("{path} has {name}"))
                .to_owned()
        };
        assert_eq!(header("content-type"), "text/html; charset=utf-8");
        assert_eq!(header("cache-control"), "no-cache");
        let policy = header("content-security-policy");
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(policy.contains("style-src 'sha256-"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(page.text.starts_with("<!doctype html>"), "{path}");
        assert!(page.text.contains(marker), "{path}");
    }
    t.post("/", None, &json!({}))
        .await
        .refused(405, "method_not_allowed");
}

/// The ids of the feed's cards for `query`, and its `next_cursor`.
async fn feed_ids(t: &TestServer, query: &str) -> (Vec<String>, Value) {
    let feed = t.get(&format!("/v1/feed?{query}"), None).await.ok(200);
    let ids = feed["cards"]
        .as_array()
        .expect("cards")
        .iter()
        .map(|card| card["id"].as_str().expect("an id").to_owned())
        .collect();
    (ids, feed["next_cursor"].clone())
}

/// `order=top`: score = rating in hundredths (300 before a review) ×
/// (popularity + 1), ties newest first, one page; newest first stays the
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_feed_ranks_by_rating_times_popularity() {
    let t = start().await;
    let liked = t.merchant("Liked").await;
    let plain = t.merchant("Plain").await;
    let panned = t.merchant("Panned").await;
    let a = t.deal(&liked, "10.00", 10, 2).await;
    let b = t.deal(&plain, "10.00", 10, 2).await;
    let c = t.deal(&panned, "10.00", 10, 2).await;
    let b2 = t.deal(&plain, "10.00", 10, 2).await;
    let shopper = t.shopper("Li", "100").await;
    for (deal, score, key) in [(&a, 5, "a"), (&c, 1, "c")] {
        let order = t.buy(&shopper, deal, 1, key).await.ok(201);
        let order = order["id"].as_str().expect("an order id");
        review(&t, order, &shopper.token, &scores(score, score, score))
            .await
            .ok(201);
    }
    // a: 500 × 2 = 1000; b2 and b: 300 × 1, newest first; c: 100 × 2 = 200.
    let (top, next) = feed_ids(&t, "order=top").await;
    assert_eq!(top, [&*a, &*b2, &*b, &*c]);
    assert_eq!(next, Value::Null);
    let (first_two, _) = feed_ids(&t, "order=top&limit=2").await;
    assert_eq!(first_two, [&*a, &*b2]);
    for query in ["", "order=newest"] {
        let (newest, _) = feed_ids(&t, query).await;
        assert_eq!(newest, [&*b2, &*c, &*b, &*a], "{query:?}");
    }
    for bad in [
        "order=oldest",
        "order=TOP",
        "order=",
        &format!("order=top&cursor={b}"),
    ] {
        t.get(&format!("/v1/feed?{bad}"), None)
            .await
            .refused(400, "bad_request");
    }
}
