use std::path::Path;
use std::time::{Duration, Instant};

use flashsale_journal::Journal;
use sqlx::PgConnection;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_dirs_writing_one_postgres_keep_each_others_orders() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (shop_a, shop_b) = (shop(dir_a.path(), 50), shop(dir_b.path(), 30));
    let (orders_a, orders_b) = (sell(&shop_a, 0), sell(&shop_b, 0));
    // Both number from the start: the same ids, other content.
    assert_eq!(orders_a[0].id, orders_b[0].id);
    let sink_a = start(sink_config(&db.url), &shop_a.journal).await;
    let sink_b = start(sink_config(&db.url), &shop_b.journal).await;
    caught_up(&sink_a, &shop_a.journal).await;
    caught_up(&sink_b, &shop_b.journal).await;
    let mut conn = db.connect().await;
    assert_eq!(
        deployment_orders(&mut conn, shop_a.journal.id()).await,
        expected_orders(&orders_a)
    );
    assert_eq!(
        deployment_orders(&mut conn, shop_b.journal.id()).await,
        expected_orders(&orders_b)
    );
    for sink in [&sink_a, &sink_b] {
        assert_eq!(sink.set_aside().0, 0);
        assert_eq!(sink.merged_batches(), 0);
    }
    sink_a.abort().await;
    sink_b.abort().await;
    db.drop_db().await;
}

/// Copies the data directory `from` into `to` as a restore or a clone
/// does (`cp -a`, the lock file removed): the same journal id and history.
fn copy_data_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "journal.lock" && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A copy of `shop`'s data directory in `dir` ([`copy_data_dir`]),
/// opened: the same journal id and history so far, its own events from
/// now on. Its shoppers are `shop`'s in reverse, so its orders take the
/// same ids as the original's next ones for other shoppers.
fn copy_shop(shop: &Shop, dir: &Path) -> Shop {
    copy_data_dir(shop.journal.dir(), dir);
    let (journal, engine) = open_journal(dir);
    Shop {
        journal,
        engine,
        deal: shop.deal,
        shoppers: shop.shoppers.iter().rev().copied().collect(),
    }
}

/// The position Postgres holds for `journal`, and the position and
/// SHA-256 of the last event applied recorded with it.
async fn stored_position(
    conn: &mut PgConnection,
    journal: &Journal,
) -> (i64, Option<i64>, Option<Vec<u8>>) {
    sqlx::query_as(
        "SELECT position, event_position, event_sha256 FROM order_sink_positions \
         WHERE journal_id = $1",
    )
    .bind(journal.id())
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Regression (newcomer report 2.): a copied data directory keeps its
/// journal's id, so two journals with one id, diverged after the copy,
/// write one database. The sink that lost the race for the position
/// adopted the other's and skipped its own events silently. Now every
/// event of either copy is in Postgres or its sink says why not, loudly,
/// and writes nothing; a copy's sink started later refuses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_data_dir_on_one_postgres_is_refused_loudly_never_skipped() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shop_a = shop(dir_a.path(), 40);
    let mut orders_a = sell(&shop_a, 0);
    let sink_a = start(sink_config(&db.url), &shop_a.journal).await;
    caught_up(&sink_a, &shop_a.journal).await;
    let shop_b = copy_shop(&shop_a, dir_b.path());
    assert_eq!(shop_b.journal.id(), shop_a.journal.id());
    // The same history so far: the copy's sink adopts the position.
    let sink_b = start(sink_config(&db.url), &shop_b.journal).await;
    caught_up(&sink_b, &shop_b.journal).await;
    assert!(sink_b.last_error().is_none(), "{:?}", sink_b.last_error());

    // They diverge: the original's orders reach Postgres first; the copy
    // sells twice as many, the same ids to other shoppers, so its journal
    // holds the position the original's sink reached, with another event.
    orders_a.extend(sell(&shop_a, 1));
    caught_up(&sink_a, &shop_a.journal).await;
    let mut orders_b = sell(&shop_b, 1);
    orders_b.extend(sell(&shop_b, 2));
    assert!(shop_b.journal.durable_position() > shop_a.journal.durable_position());
    let error = refused(&sink_b, &shop_b.journal).await;
    assert!(error.contains(shop_b.journal.id()), "{error}");
    assert!(
        error.contains(
            "another data directory with this journal's id (a copy?) writes this database"
        ),
        "{error}"
    );
    assert!(!sink_b.lag().connected);

    // The copy wrote nothing: Postgres holds the original's history only,
    // at its position, and nothing set aside.
    let mut conn = db.connect().await;
    let deployment = shop_a.journal.id();
    assert_eq!(
        deployment_orders(&mut conn, deployment).await,
        expected_orders(&orders_a)
    );
    let set_aside: i64 = sqlx::query_scalar("SELECT count(*) FROM order_sink_set_aside")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(set_aside, 0);
    assert_eq!(
        stored_position(&mut conn, &shop_a.journal).await.0 as u64,
        shop_a.journal.durable_position()
    );
    // `in_books` (GET /v1/orders/{id}) confirms the original's orders, and
    // not the copy's orders of the same ids: their rows are the original's.
    for order in &orders_a {
        assert!(sink_a.books().contains(order).await, "{order:?}");
    }
    let reused: Vec<_> = orders_b
        .iter()
        .filter(|order| orders_a.iter().any(|a| a.id == order.id))
        .collect();
    assert!(
        !reused.is_empty(),
        "the copy reused the original's order ids"
    );
    for order in reused {
        assert!(!sink_b.books().contains(order).await, "{order:?}");
    }
    // The original goes on; the copy still refuses, also when started again.
    orders_a.extend(sell(&shop_a, 2));
    caught_up(&sink_a, &shop_a.journal).await;
    assert!(sink_a.last_error().is_none(), "{:?}", sink_a.last_error());
    sink_b.abort().await;
    let sink_b = start(sink_config(&db.url), &shop_b.journal).await;
    refused(&sink_b, &shop_b.journal).await;
    assert_eq!(sink_b.lag().applied, None);
    assert_eq!(
        deployment_orders(&mut conn, deployment).await,
        expected_orders(&orders_a)
    );
    sink_a.abort().await;
    sink_b.abort().await;
    db.drop_db().await;
}

/// The check against copies does not stop a sink restarted on its own
/// journal: it adopts its stored position (recorded with the last event's
/// SHA-256) at once, replays nothing, and the event at that position
/// survives the snapshot that prunes what was applied before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_restarted_on_its_own_journal_adopts_its_checked_position() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 1_500);
    let mut orders = sell(&shop, 0);
    assert_eq!(apply_all(&shop, sink_config(&db.url)).await, 0);
    let mut conn = db.connect().await;
    let (position, event_position, sha256) = stored_position(&mut conn, &shop.journal).await;
    assert_eq!(position as u64, shop.journal.durable_position());
    assert_eq!(event_position, Some(position));
    assert_eq!(sha256.map(|sha256| sha256.len()), Some(32));
    shop.journal.snapshot_now().unwrap();
    let oldest = shop.journal.oldest_position().unwrap();
    assert!(
        oldest > 1 && oldest <= position as u64,
        "pruned before {oldest}, the sink is at {position}"
    );

    orders.extend(sell(&shop, 1));
    let sink = start(sink_config(&db.url), &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    assert!(sink.last_error().is_none(), "{:?}", sink.last_error());
    assert_eq!(sink.merged_batches(), 0, "nothing applied twice");
    assert_eq!(sink.set_aside().0, 0);
    sink.abort().await;
    assert_books(&db, &shop, &orders).await;
    db.drop_db().await;
}

/// An operator who moves the position back (leaving the last event's
/// position and SHA-256 as they were) gets a replay, as before the check
/// against copies: the merge keeps every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_moved_back_by_an_operator_is_replayed() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 300);
    let mut orders = sell(&shop, 0);
    apply_all(&shop, sink_config(&db.url)).await;
    let mut conn = db.connect().await;
    sqlx::query("UPDATE order_sink_positions SET position = position / 2")
        .execute(&mut conn)
        .await
        .unwrap();
    orders.extend(sell(&shop, 1));
    let sink = start(sink_config(&db.url), &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    assert!(sink.last_error().is_none(), "{:?}", sink.last_error());
    assert!(
        sink.merged_batches() >= 1,
        "the moved-back span was replayed"
    );
    assert_eq!(sink.set_aside().0, 0);
    sink.abort().await;
    assert_books(&db, &shop, &orders).await;
    let (position, event_position, _) = stored_position(&mut conn, &shop.journal).await;
    assert_eq!(event_position, Some(position));
    db.drop_db().await;
}

/// The newcomer's report 2., served: a node's data directory copied while
/// it is stopped (`cp -a`, lock file removed), and the original and the
/// copy serving on one database. The original's order reaches the books;
/// the copy's sink refuses the position the original wrote, so its node is
/// not ready and names the copy, `/metrics` counts the refusal, and
/// nothing of the copy's is written (before, it adopted the position and
/// skipped its own orders while ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_copy_of_a_data_dir_is_named_in_readyz_and_writes_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = serve(dir_a.path(), &db).await;
    let api = Api::new(&server);
    let merchant = api.merchant().await;
    let deal = api
        .deal(&merchant, first_come_deal("Phone", "5.00", 100))
        .await;
    let orders_path = format!("/v1/deals/{}/orders", deal["id"].as_str().unwrap());
    let buy = async |api: &Api, shoppers: usize| {
        for (_, token) in api.shoppers(shoppers, "100").await {
            api.post(&orders_path, &token, serde_json::json!({ "quantity": 1 }))
                .await;
        }
    };
    buy(&api, 1).await;
    server.shutdown().await.unwrap();
    copy_data_dir(dir_a.path(), dir_b.path());

    let original = serve(dir_a.path(), &db).await;
    let copy = serve(dir_b.path(), &db).await;
    let (api_a, api_b) = (Api::new(&original), Api::new(&copy));
    let mut conn = db.connect().await;
    let orders_in_books = async |conn: &mut PgConnection| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(conn)
            .await
            .unwrap()
    };
    buy(&api_a, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while orders_in_books(&mut conn).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the original's order never reached the books"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The copy sells more, so its journal reaches the original's position.
    buy(&api_b, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let not_ready = loop {
        let answer = api_b
            .client
            .get(format!("{}/readyz", api_b.url))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body = answer.text().await.unwrap();
        if status == 503 && body.contains("another data directory") {
            break body;
        }
        assert!(
            orders_in_books(&mut conn).await <= 2,
            "the copy wrote to the books: {status} {body}"
        );
        assert!(
            Instant::now() < deadline,
            "the copy stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id: String = sqlx::query_scalar("SELECT journal_id FROM order_sink_positions")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(not_ready.contains(&id), "{not_ready}");
    let metrics = scrape_metrics(&api_b.client, &api_b.url).await;
    let refusals = sample(&metrics, "flashsale_order_sink_foreign_positions_total");
    assert!(refusals >= Some(1.0), "{refusals:?}");
    assert_eq!(orders_in_books(&mut conn).await, 2);
    let ready = api_a.get("/readyz", None).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    original.shutdown().await.unwrap();
    copy.shutdown().await.unwrap();
    db.drop_db().await;
}
