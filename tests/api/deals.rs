//! Deals: creating, reading, changing, registering, and the feed.

use serde_json::{Value, json};

use crate::helpers::{at, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_is_created_read_and_changed_by_its_merchant() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t
        .deal_with(
            &merchant,
            json!({
                "title": "Mi 15",
                "price": "999",
                "stock": 500,
                "starts_at": at(-1),
                "ends_at": at(3600),
                "hold_seconds": 60
            }),
        )
        .await
        .ok(201);
    assert_eq!(deal["price"], "999.00");
    assert_eq!(deal["merchant_id"], json!(merchant.id));
    assert_eq!(deal["per_user_limit"], 1, "the default limit");
    assert_eq!(deal["status"], "live");
    assert_eq!(
        (&deal["remaining"], &deal["held"], &deal["sold"]),
        (&json!(500), &json!(0), &json!(0))
    );
    assert!(deal["ends_at"].as_str().unwrap().ends_with('Z'));
    let id = deal["id"].as_str().unwrap();
    assert_eq!(t.get_deal(id).await["title"], "Mi 15");

    let path = format!("/v1/deals/{id}");
    let changed = t
        .patch(
            &path,
            &merchant.token,
            &json!({ "add_stock": 20, "paused": true }),
        )
        .await
        .ok(200);
    assert_eq!(
        (&changed["stock"], &changed["remaining"]),
        (&json!(520), &json!(520))
    );
    assert_eq!(changed["status"], "paused");

    // A paused deal: the merchant's decision, not an outage: 409
    // deal_paused, and nothing tells the client to retry.
    let shopper = t.shopper("Li", "2000").await;
    let paused = t.buy(&shopper, id, 1, "k1").await;
    paused.refused(409, "deal_paused");
    assert!(!paused.headers.contains_key("retry-after"));

    let resumed = t
        .patch(
            &path,
            &merchant.token,
            &json!({ "paused": false, "ends_at": at(7200) }),
        )
        .await
        .ok(200);
    assert_eq!(resumed["status"], "live");
    t.buy(&shopper, id, 1, "k1").await.ok(201);

    t.patch(&path, &merchant.token, &json!({ "ends_at": at(-10) }))
        .await
        .refused(422, "invalid");
    t.patch(&path, &merchant.token, &json!({ "add_stock": 0 }))
        .await
        .refused(422, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deal_fields_are_validated_with_the_field_named() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let base = json!({
        "title": "Mi 15", "price": "999.00", "stock": 5,
        "starts_at": at(-1), "ends_at": at(3600)
    });
    let cases: [(&str, Value, &str); 6] = [
        ("price", json!("9.999"), "price"),
        ("price", json!("lots"), "price"),
        ("stock", json!(0), "stock"),
        ("ends_at", json!(at(-5)), "ends_at"),
        ("starts_at", json!("tomorrow"), "starts_at"),
        ("per_user_limit", json!(0), "per_user_limit"),
    ];
    for (field, value, named) in cases {
        let mut body = base.clone();
        body[field] = value;
        let reply = t.deal_with(&merchant, body).await;
        reply.refused(422, "invalid");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(named),
            "{}",
            reply.text
        );
    }
    // A number where money must be a string is the wrong type: 422
    // naming the field and what it accepts.
    let mut body = base.clone();
    body["price"] = json!(999.0);
    let number = t.deal_with(&merchant, body).await;
    number.refused(422, "invalid");
    assert!(
        number.text.contains("price must be a string of digits"),
        "{}",
        number.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_deals_are_not_found() {
    let t = start().await;
    for id in ["d_7f", "garbage", "d_01"] {
        t.get(&format!("/v1/deals/{id}"), None)
            .await
            .refused(404, "not_found");
    }
    let shopper = t.shopper("Li", "10").await;
    t.buy(&shopper, "d_7f", 1, "k")
        .await
        .refused(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_happens_before_the_start_only() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let shopper = t.shopper("Li", "5000").await;
    let upcoming = t
        .deal_with(
            &merchant,
            json!({
                "title": "Mi 15 Pro", "price": "1999.00", "stock": 10,
                "starts_at": at(3600), "ends_at": at(7200), "requires_registration": true
            }),
        )
        .await
        .ok(201);
    let upcoming = upcoming["id"].as_str().unwrap();
    assert_eq!(t.get_deal(upcoming).await["status"], "scheduled");
    let path = format!("/v1/deals/{upcoming}/registrations");
    let first = t
        .post(&path, Some(&shopper.token), &json!({}))
        .await
        .ok(201);
    assert_eq!(first["registered"], true);
    t.post(&path, Some(&shopper.token), &json!({}))
        .await
        .ok(200);
    assert_eq!(t.get_deal(upcoming).await["registrations"], 1);
    t.buy(&shopper, upcoming, 1, "early")
        .await
        .refused(425, "not_started");

    // Started already: registration is closed, buying needs it.
    let started = t
        .deal_with(
            &merchant,
            json!({
                "title": "Mi 15 Ultra", "price": "10.00", "stock": 10,
                "starts_at": at(-60), "ends_at": at(3600), "requires_registration": true
            }),
        )
        .await
        .ok(201);
    let started = started["id"].as_str().unwrap();
    t.post(
        &format!("/v1/deals/{started}/registrations"),
        Some(&shopper.token),
        &json!({}),
    )
    .await
    .refused(422, "invalid");
    t.buy(&shopper, started, 1, "late")
        .await
        .refused(403, "not_registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_lists_deals_newest_first_by_pages() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(t.deal(&merchant, "1.00", 10, 1).await);
    }
    let first = t.get("/v1/feed?limit=3", None).await.ok(200);
    let cards = first["cards"].as_array().unwrap();
    let seen: Vec<&str> = cards
        .iter()
        .map(|card| card["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, [&ids[4], &ids[3], &ids[2]]);
    assert_eq!(cards[0]["merchant"]["name"], "Xiaomi");
    assert_eq!(
        cards[0]["merchant"]["rating"],
        json!({ "average": null, "reviews": 0 })
    );
    assert_eq!(cards[0]["price"], "1.00");
    assert_eq!(cards[0]["remaining"], 10);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = t
        .get(&format!("/v1/feed?limit=3&cursor={cursor}"), None)
        .await
        .ok(200);
    let seen: Vec<&str> = second["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|card| card["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, [&ids[1], &ids[0]]);
    assert!(second["next_cursor"].is_null());
    t.get("/v1/feed?limit=0", None)
        .await
        .refused(400, "bad_request");
    t.get("/v1/feed?cursor=nope", None)
        .await
        .refused(400, "bad_request");
}
