use flashsale_engine::{Clock, DealChange, SystemClock};

use crate::support::*;

/// One node's journal gives a deal's changes in order, each its own batch
/// here: the row ends with the last one, versioned by its journal position
/// (`deals.change_version`), and a replay of the whole journal (the
/// position lost) leaves it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deals_changes_reach_postgres_in_journal_order_and_a_replay_keeps_the_last() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 2);
    let merchant = shop.engine.deal_merchant(shop.deal).unwrap();
    let now = SystemClock.now();
    let mut last = (0, 0);
    for (ends_in, paused) in [(7_200, true), (5_400, false)] {
        let change = DealChange {
            add_stock: None,
            ends_at: Some(now.plus_seconds(ends_in)),
            paused: Some(paused),
        };
        let view = shop
            .engine
            .update_deal(merchant, shop.deal, change)
            .unwrap();
        last = (view.ends_at.millis(), shop.journal.written());
    }
    shop.journal.wait_durable(shop.journal.written()).unwrap();
    let mut config = sink_config(&db.url);
    config.batch_events_max = 1;
    let expected = (last.0, false, i64::try_from(last.1).unwrap());
    let row = || async {
        let mut conn = db.connect().await;
        let found: (i64, bool, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {}, paused, change_version FROM deals WHERE id = $1",
            millis("ends_at")
        )))
        .bind(shop.deal.to_string())
        .fetch_one(&mut conn)
        .await
        .unwrap();
        found
    };
    apply_all(&shop, config.clone()).await;
    assert_eq!(row().await, expected);

    let mut conn = db.connect().await;
    sqlx::query("UPDATE order_sink_positions SET position = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    apply_all(&shop, config).await;
    assert_eq!(row().await, expected);
    db.drop_db().await;
}

/// A deal's restocks add to `stock_total` once each, also when the whole
/// journal is applied again (the position lost) in other batch bounds:
/// each restock is versioned by its journal position
/// (`deals.restock_version`), so a replayed one adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deals_restocks_reach_postgres_once_when_the_journal_is_replayed() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 2);
    let merchant = shop.engine.deal_merchant(shop.deal).unwrap();
    for added in [5, 7, 11] {
        let change = DealChange {
            add_stock: Some(added),
            ends_at: None,
            paused: None,
        };
        shop.engine
            .update_deal(merchant, shop.deal, change)
            .unwrap();
    }
    shop.journal.wait_durable(shop.journal.written()).unwrap();
    let total = i64::try_from(shop.engine.deal(shop.deal).unwrap().counts.total).unwrap();
    assert_eq!(total, 1_000_000 + 5 + 7 + 11);
    let stock_total = || async {
        let mut conn = db.connect().await;
        let found: i64 = sqlx::query_scalar("SELECT stock_total FROM deals WHERE id = $1")
            .bind(shop.deal.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        found
    };
    let mut config = sink_config(&db.url);
    config.batch_events_max = 1;
    apply_all(&shop, config.clone()).await;
    assert_eq!(stock_total().await, total);

    // Replayed from the start, two events a batch: the first restock
    // shares a batch with the deal's creation, the others are split
    // differently from the first run.
    let mut conn = db.connect().await;
    sqlx::query("UPDATE order_sink_positions SET position = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    config.batch_events_max = 2;
    assert!(apply_all(&shop, config).await > 0, "the replay merged");
    assert_eq!(stock_total().await, total, "a replayed restock added again");
    db.drop_db().await;
}
