use std::time::{Duration, Instant};

use flashsale_engine::{Clock, NewDeal, SystemClock};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgres_refuses_is_set_aside_and_later_orders_still_reach_postgres() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut conn = with_content_rule(
        &db,
        "ALTER TABLE deals ADD CONSTRAINT refuse_poison CHECK (title <> 'Poison')",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 200);
    let mut orders = sell(&shop, 0);
    let merchant = shop.engine.create_merchant("Poisoner").unwrap().id;
    let now = SystemClock.now();
    let poison = NewDeal {
        title: "Poison".into(),
        price: fen(100),
        stock: 10,
        per_user_limit: Some(1),
        starts_at: now,
        ends_at: now.plus_seconds(60),
        requires_registration: false,
        hold_seconds: Some(60),
        allocation: flashsale_engine::Allocation::FirstCome,
    };
    shop.engine.create_deal(merchant, poison).unwrap();
    orders.extend(sell(&shop, 1));
    // One batch for everything: the poisoned event sits among good ones.
    let mut config = sink_config(&db.url);
    config.batch_events_max = 100_000;
    let sink = start(config, &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    assert_books(&db, &shop, &orders).await;
    let (set_aside, conflicts, last) = sink.set_aside();
    assert_eq!((set_aside, conflicts), (1, 0));
    let last = last.unwrap();
    assert!(last.contains("refuse_poison"), "{last}");
    assert!(sink.last_error().is_none(), "{:?}", sink.last_error());
    let (position, reason, event): (i64, String, String) = sqlx::query_as(
        "SELECT position, reason, event FROM order_sink_set_aside WHERE journal_id = $1",
    )
    .bind(shop.journal.id())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(reason.contains("refuse_poison"), "{reason}");
    assert!(event.contains("Poison"), "{event}");
    assert!(last.contains(&format!("position {position}")), "{last}");
    // Later orders still reach Postgres.
    orders.extend(sell(&shop, 2));
    caught_up(&sink, &shop.journal).await;
    assert_books(&db, &shop, &orders).await;
    assert_eq!(sink.set_aside().0, 1);
    sink.abort().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_already_there_with_other_content_is_a_conflict_never_skipped() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 40);
    let orders = sell(&shop, 0);
    apply_all(&shop, sink_config(&db.url)).await;
    // Someone changed a row the sink wrote, and the position was lost: the
    // sink meets its own order with other content on the way again.
    let tampered = orders[7].id.to_string();
    let mut conn = db.connect().await;
    sqlx::query("UPDATE orders SET amount = amount + 1 WHERE id = $1")
        .bind(&tampered)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE order_sink_positions SET position = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let sink = start(sink_config(&db.url), &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    let (set_aside, conflicts, last) = sink.set_aside();
    assert_eq!((set_aside, conflicts), (1, 1));
    let last = last.unwrap();
    assert!(
        last.contains(&tampered) && last.contains("other content"),
        "{last}"
    );
    assert!(last.contains("ours") && last.contains("theirs"), "{last}");
    // The tampered row is left as it was (not overwritten, not hidden); the
    // rest are exactly the journal's.
    let rows = deployment_orders(&mut conn, shop.journal.id()).await;
    let expected = expected_orders(&orders);
    assert_eq!(rows.len(), expected.len());
    for (row, wanted) in rows.iter().zip(&expected) {
        assert_eq!(row.0, wanted.0);
        assert_eq!(row.2 != wanted.2, row.0 == tampered, "{row:?} {wanted:?}");
    }
    sink.abort().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_deal_postgres_refuses_is_named_in_readyz_and_orders_still_reach_postgres() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut conn = with_content_rule(
        &db,
        "ALTER TABLE deals ADD CONSTRAINT refuse_poison CHECK (title <> 'Poison')",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = flashsale_gateway::Config::new(dir.path().to_owned());
    config.database_url = Some(db.url.clone());
    config.rate_limit_shopper = 0;
    config.rate_limit_address = 0;
    let server = flashsale_gateway::spawn(config).await.unwrap();
    let admin = server.admin_token.clone();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = server.url();
    let post = async |path: &str, token: &str, body: serde_json::Value, key: &str| {
        post_ok(&client, &format!("{url}{path}"), token, body, key).await
    };
    let get = async |path: &str, token: Option<&str>| -> serde_json::Value {
        let mut request = client.get(format!("{url}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    };
    let merchant = post(
        "/v1/merchants",
        &admin,
        serde_json::json!({ "name": "m" }),
        "a",
    )
    .await;
    let merchant_token = merchant["token"].as_str().unwrap().to_owned();
    let deal = |title: &str| {
        serde_json::json!({
            "title": title, "price": "5.00", "stock": 10,
            "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2100-01-01T00:00:00Z",
        })
    };
    post("/v1/deals", &merchant_token, deal("Poison"), "b").await;
    let good = post("/v1/deals", &merchant_token, deal("Phone"), "c").await;
    let buyers = post(
        "/v1/admin/shoppers",
        &admin,
        serde_json::json!({ "count": 1, "credit": "100" }),
        "d",
    )
    .await;
    let shopper_token = buyers["shoppers"][0]["token"].as_str().unwrap().to_owned();
    let order = post(
        &format!("/v1/deals/{}/orders", good["id"].as_str().unwrap()),
        &shopper_token,
        serde_json::json!({ "quantity": 1 }),
        "e",
    )
    .await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let ready = get("/readyz", None).await;
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = $1")
            .bind(&order_id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if stored == 1 && ready["order_sink_set_aside"].is_string() {
            break ready;
        }
        assert!(Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The order says it is in the books (GET /v1/orders/{id}, `in_books`).
    let read = get(&format!("/v1/orders/{order_id}"), Some(&shopper_token)).await;
    assert_eq!(read["in_books"], true, "{read}");
    // Ready (sales go on), with the set-aside event and its real reason.
    assert_eq!(ready["status"], "ready", "{ready}");
    let named = ready["order_sink_set_aside"].as_str().unwrap();
    assert!(named.contains("refuse_poison"), "{named}");
    let metrics = scrape_metrics(&client, &url).await;
    assert!(
        metrics.contains("flashsale_order_sink_set_aside_total"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_bound_the_sink_stops_setting_aside_and_says_why() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Postgres refuses every order: a fault of the schema, not of a row.
    let mut conn = with_content_rule(
        &db,
        "ALTER TABLE orders ADD CONSTRAINT refuse_all CHECK (quantity < 0)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 10);
    sell(&shop, 0);
    let mut config = sink_config(&db.url);
    config.set_aside_max = 2;
    let sink = start(config, &shop.journal).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let error = loop {
        if let Some(error) = sink.last_error() {
            break error;
        }
        assert!(Instant::now() < deadline, "the sink never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("refuse_all"), "{error}");
    // Two set aside, then it stopped: the rest wait in the journal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.set_aside().0, 2);
    assert!(sink.lag().records > 0);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM order_sink_set_aside")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(parked, 2);
    sink.abort().await;
    db.drop_db().await;
}
