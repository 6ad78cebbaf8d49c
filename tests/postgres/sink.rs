use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flashsale_engine::{Clock, NewDeal, SystemClock};
use flashsale_gateway::order_sink::{self};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_settled_order_reaches_postgres_exactly_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 1_500);
    let mut orders = sell(&shop, 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = order_sink::start(&db.url, shop.journal.clone(), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    orders.extend(sell(&shop, 1));
    caught_up(&sink, &shop.journal).await;
    assert_books(&db, &shop, &orders).await;
    // A clean stop first applies everything durable by then.
    orders.extend(sell(&shop, 2));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), sink.join())
        .await
        .expect("the sink drains and stops");
    assert_books(&db, &shop, &orders).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_stopped_mid_batch_resumes_exactly_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = Arc::new(shop(dir.path(), 2_000));
    let seller = {
        let shop = shop.clone();
        std::thread::spawn(move || {
            (0..3)
                .flat_map(|round| sell(&shop, round))
                .collect::<Vec<_>>()
        })
    };
    // Kill the sink at assorted moments while sales go on.
    for round in 0..6u64 {
        let sink = start(sink_config(&db.url), &shop.journal).await;
        tokio::time::sleep(Duration::from_millis(15 + 37 * round)).await;
        sink.abort().await;
    }
    let orders = tokio::task::spawn_blocking(move || seller.join().unwrap())
        .await
        .unwrap();
    let sink = start(sink_config(&db.url), &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    assert_books(&db, &shop, &orders).await;
    sink.abort().await;

    // Even if the position were lost, rows are idempotent by id.
    let mut conn = db.connect().await;
    sqlx::query("UPDATE order_sink_positions SET position = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let sink = start(sink_config(&db.url), &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    assert_books(&db, &shop, &orders).await;
    sink.abort().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_writes_exactly_the_expected_rows() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 20);
    let merchant = shop.engine.create_merchant("Odd prices").unwrap();
    let now = SystemClock.now();
    // Prices whose numeric encodings differ in digits, weight and dscale use.
    let mut deals = vec![shop.deal];
    // The last one asks for registration, so nobody buys it.
    let prices = [1, 99_907, 1_000_000, 1_000_001, 50];
    for (index, &price) in prices.iter().enumerate() {
        let spec = NewDeal {
            title: format!("Odd {index} 价"),
            price: fen(price),
            stock: 100,
            per_user_limit: Some(1),
            starts_at: now,
            ends_at: now.plus_seconds(60),
            requires_registration: index == 4,
            hold_seconds: Some(30 + index as u32),
            allocation: flashsale_engine::Allocation::FirstCome,
        };
        deals.push(shop.engine.create_deal(merchant.id, spec).unwrap().id);
    }
    let mut orders = sell(&shop, 0);
    for (index, &deal) in deals.iter().enumerate().take(5).skip(1) {
        let shopper = shop.shoppers[index];
        orders.push(
            shop.engine
                .buy(shopper, deal, 1, &format!("odd-{index}"))
                .unwrap(),
        );
    }
    shop.journal.wait_durable(shop.journal.written()).unwrap();
    let sink = start(sink_config(&db.url), &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    assert_eq!(
        sink.merged_batches(),
        0,
        "no row was there before: all by COPY"
    );
    sink.abort().await;
    let mut conn = db.connect().await;

    let found = assert_order_rows(&mut conn, &orders).await;
    let amounts: BTreeSet<String> = found.iter().map(|row| row.5.clone()).collect();
    let wanted = ["0.01", "999.07", "10000.00", "10000.01", "999.00"];
    assert_eq!(amounts, wanted.iter().map(|a| a.to_string()).collect());

    type MovementRow = (String, String, String, String, Option<String>, i64);
    let movements: Vec<MovementRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, shopper_id, kind, amount::text, order_id, {} FROM wallet_movements",
        millis("created_at")
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let (credits, debits): (Vec<_>, Vec<_>) = movements
        .into_iter()
        .partition(|movement| movement.2 == "credit");
    let expected_debits: BTreeSet<MovementRow> = orders
        .iter()
        .map(|order| {
            (
                order.id.to_string(),
                order.shopper.to_string(),
                "debit".to_owned(),
                order.amount.to_string(),
                Some(order.id.to_string()),
                order.created_at.millis(),
            )
        })
        .collect();
    assert_eq!(debits.len(), orders.len());
    assert_eq!(debits.into_iter().collect::<BTreeSet<_>>(), expected_debits);
    assert_eq!(credits.len(), shop.shoppers.len());
    let credited: BTreeSet<String> = credits.iter().map(|c| c.1.clone()).collect();
    assert_eq!(
        credited,
        shop.shoppers.iter().map(|s| s.to_string()).collect()
    );
    for (id, shopper, _, amount, order, at) in &credits {
        let hex = shopper.strip_prefix("s_").unwrap();
        let reference = id.strip_prefix(&format!("c_{hex}_")).unwrap();
        assert_eq!(reference.len(), 32, "{id}");
        assert_eq!(amount, "100000.00");
        assert_eq!(order, &None);
        assert!((now.millis() - 60_000..=now.millis()).contains(at), "{at}");
    }

    type DealRow = (
        String,
        String,
        String,
        i64,
        i32,
        i64,
        i64,
        bool,
        i32,
        bool,
        i64,
    );
    let found: std::collections::BTreeMap<String, DealRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, title, price::text, stock_total, per_user_limit, {}, {}, \
             requires_registration, hold_seconds, paused, {} FROM deals",
            millis("starts_at"),
            millis("ends_at"),
            millis("created_at")
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|deal: DealRow| (deal.0.clone(), deal))
        .collect();
    assert_eq!(found.len(), deals.len());
    let prices = ["0.01", "999.07", "10000.00", "10000.01", "0.50"];
    for (index, price) in prices.into_iter().enumerate() {
        let deal = &found[&deals[index + 1].to_string()];
        let (_, title, found_price, stock, limit, starts, ends, registration, hold, paused, at) =
            deal;
        assert_eq!(title, &format!("Odd {index} 价"));
        assert_eq!(found_price, price);
        assert_eq!((*stock, *limit), (100, 1));
        assert_eq!((*starts, *ends), (now.millis(), now.millis() + 60_000));
        assert_eq!(*registration, index == 4);
        assert_eq!(*hold, 30 + index as i32);
        assert!(!paused);
        assert!(*at >= now.millis(), "{at}");
    }
    let merchant_id: String =
        sqlx::query_scalar("SELECT merchant_id FROM deals WHERE title = 'Odd 0 价'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(merchant_id, merchant.id.to_string());
    let (title, price, stock): (String, String, i64) =
        sqlx::query_as("SELECT title, price::text, stock_total FROM deals WHERE id = $1")
            .bind(shop.deal.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        (title.as_str(), price.as_str(), stock),
        ("Phone", "999.00", 1_000_000)
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_rows_already_there_falls_back_and_stays_exactly_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 1_000);
    // One batch for everything: the replayed batch mixes old and new rows.
    let mut config = sink_config(&db.url);
    config.batch_events_max = 100_000;
    let mut orders = sell(&shop, 0);
    assert_eq!(apply_all(&shop, config.clone()).await, 0);
    assert_books(&db, &shop, &orders).await;

    let mut conn = db.connect().await;
    sqlx::query("UPDATE order_sink_positions SET position = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    orders.extend(sell(&shop, 1));
    let sink = start(config, &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    assert_eq!(
        sink.merged_batches(),
        1,
        "COPY hit the old rows, the merge applied the batch"
    );
    assert_books(&db, &shop, &orders).await;
    // Past the replayed rows, COPY again.
    orders.extend(sell(&shop, 2));
    caught_up(&sink, &shop.journal).await;
    assert_eq!(sink.merged_batches(), 1);
    assert!(sink.last_error().is_none(), "{:?}", sink.last_error());
    sink.abort().await;
    assert_books(&db, &shop, &orders).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_go_on_while_postgres_is_unreachable_and_the_backlog_drains() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = format!("postgres://postgres@127.0.0.1:{closed_port}/postgres");
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 1_000);
    let sink = start(sink_config(&unreachable), &shop.journal).await;
    let mut orders = sell(&shop, 0);
    orders.extend(sell(&shop, 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lag = sink.lag();
    assert!(!lag.connected);
    assert!(lag.records >= orders.len() as u64, "{lag:?}");
    assert!(lag.seconds > 0.0, "{lag:?}");
    assert!(sink.last_error().is_some());
    // A snapshot meanwhile must not prune the sink's backlog.
    shop.journal.snapshot_now().unwrap();
    sink.abort().await;

    let sink = start(sink_config(&db.url), &shop.journal).await;
    orders.extend(sell(&shop, 2));
    caught_up(&sink, &shop.journal).await;
    assert_books(&db, &shop, &orders).await;
    // Once applied, the next snapshot may prune.
    let oldest = shop.journal.oldest_position().unwrap();
    shop.engine.create_shopper("late").unwrap();
    shop.journal.wait_durable(shop.journal.written()).unwrap();
    caught_up(&sink, &shop.journal).await;
    shop.journal.snapshot_now().unwrap();
    assert!(shop.journal.oldest_position().unwrap() > oldest);
    sink.abort().await;
    db.drop_db().await;
}
