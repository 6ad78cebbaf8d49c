//! The Postgres order sink against a real Postgres (`DATABASE_URL`): every
//! settled order lands exactly once, across sink crashes and Postgres
//! outages. Without `DATABASE_URL` the tests pass after one `skipped:`
//! line (and fail under `CI` or `FLASHSALE_REQUIRE_SERVICES=1`, see
//! `flashsale-testkit`); with it set but unreachable, they fail.
//!
//! Each test creates its own database `flashsale_test_<random>` and drops
//! it after, so runs can be repeated and run in parallel.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_engine::{
    Clock, DealChange, DealId, Engine, EngineConfig, Money, NewDeal, Order, ShopperId, SystemClock,
};
use flashsale_gateway::order_sink::{self, OrderSinkConfig, OrderSinkHandle};
use flashsale_journal::{Durability, Journal, JournalConfig};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};

/// A fresh database, dropped by [`TestDb::drop_db`].
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> Option<TestDb> {
        let admin_url = flashsale_testkit::postgres_url()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("flashsale_test_{}_{nanos:x}", std::process::id());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("DATABASE_URL is set, so Postgres must be reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = with_database(&admin_url, &name);
        Some(TestDb {
            admin_url,
            name,
            url,
        })
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    async fn drop_db(self) {
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map_or(0, |at| at + 3);
    let base = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

struct Shop {
    journal: Arc<Journal>,
    engine: Arc<Engine>,
    deal: DealId,
    shoppers: Vec<ShopperId>,
}

fn fen(amount: i64) -> Money {
    Money::from_fen(amount).unwrap()
}

/// The journal in `dir` (small segments, so snapshots prune) and its engine.
fn open_journal(dir: &Path) -> (Arc<Journal>, Arc<Engine>) {
    let mut config = JournalConfig::new(dir.to_owned(), Durability::Sync);
    config.segment_bytes_max = 64 << 10;
    let engine_config = EngineConfig {
        shards: 8,
        ..EngineConfig::default()
    };
    Journal::open(config, engine_config, Arc::new(SystemClock)).unwrap()
}

fn shop(dir: &Path, shoppers: u32) -> Shop {
    let clock = SystemClock;
    let (journal, engine) = open_journal(dir);
    let merchant = engine.create_merchant("Xiaomi").unwrap().id;
    let now = clock.now();
    let deal = engine
        .create_deal(
            merchant,
            NewDeal {
                title: "Phone".into(),
                price: fen(99_900),
                stock: 1_000_000,
                per_user_limit: Some(10),
                starts_at: now,
                ends_at: now.plus_seconds(3600),
                requires_registration: false,
                hold_seconds: Some(60),
                allocation: flashsale_engine::Allocation::FirstCome,
            },
        )
        .unwrap()
        .id;
    let mut all = Vec::new();
    while all.len() < shoppers as usize {
        let count = (shoppers as usize - all.len()).min(10_000) as u32;
        all.extend(engine.create_shoppers(count, fen(10_000_000)).unwrap());
    }
    Shop {
        journal,
        engine,
        deal,
        shoppers: all,
    }
}

/// Buys one unit for each shopper (round `round`), half of them through a
/// paid hold; returns the orders.
fn sell(shop: &Shop, round: usize) -> Vec<Order> {
    let mut orders = Vec::new();
    for (index, &shopper) in shop.shoppers.iter().enumerate() {
        let key = format!("r{round}-{index}");
        if index % 2 == 0 {
            orders.push(shop.engine.buy(shopper, shop.deal, 1, &key).unwrap());
        } else {
            let hold = shop.engine.hold(shopper, shop.deal, 1, &key).unwrap();
            orders.push(shop.engine.pay_hold(shopper, hold.id).unwrap());
        }
    }
    shop.journal.wait_durable(shop.journal.written()).unwrap();
    orders
}

fn sink_config(url: &str) -> OrderSinkConfig {
    let mut config = OrderSinkConfig::new(url);
    config.batch_events_max = 1_000;
    config.retry_delay_min = Duration::from_millis(20);
    config.retry_delay_max = Duration::from_millis(200);
    config.connect_timeout = Duration::from_secs(2);
    config
}

async fn start(config: OrderSinkConfig, journal: &Arc<Journal>) -> OrderSinkHandle {
    order_sink::start_with(config, journal.clone(), std::future::pending())
        .await
        .unwrap()
}

async fn caught_up(sink: &OrderSinkHandle, journal: &Journal) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lag = sink.lag();
        if lag.records == 0 && lag.applied == Some(journal.durable_position()) {
            assert_eq!(lag.seconds, 0.0);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not catch up: {lag:?}, last error {:?}",
            sink.last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Postgres holds exactly `orders`, each once, with its debit, and the
/// credits of every shopper.
async fn assert_books(db: &TestDb, shop: &Shop, orders: &[Order]) {
    let mut conn = db.connect().await;
    assert_order_rows(&mut conn, orders).await;

    let (debits, debited): (i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), sum(amount) FROM wallet_movements WHERE kind = 'debit'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(debits as usize, orders.len());
    let spent: Decimal = orders.iter().map(|order| order.amount.to_decimal()).sum();
    assert_eq!(debited.unwrap_or_default(), spent);
    let credits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallet_movements WHERE kind = 'credit'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(credits as usize, shop.shoppers.len());
    let deal: (String, i64) = sqlx::query_as("SELECT id, stock_total FROM deals")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(deal, (shop.deal.to_string(), 1_000_000));
    let position: i64 =
        sqlx::query_scalar("SELECT position FROM order_sink_positions WHERE journal_id = $1")
            .bind(shop.journal.id())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(position as u64, shop.journal.durable_position());
}

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

/// Milliseconds since the epoch of a `timestamptz` column, as SQL.
/// An order row as read back: ids, quantity, money as Postgres prints it,
/// `late`, `created_at` in millis.
type OrderRow = (String, String, String, i64, String, String, bool, i64);

/// Postgres's `orders` hold exactly `orders`, every column; returns the rows.
async fn assert_order_rows(conn: &mut sqlx::PgConnection, orders: &[Order]) -> BTreeSet<OrderRow> {
    let found: BTreeSet<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, deal_id, shopper_id, quantity, unit_price::text, amount::text, late, {} \
         FROM orders",
        millis("created_at")
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let expected: BTreeSet<OrderRow> = orders
        .iter()
        .map(|order| {
            (
                order.id.to_string(),
                order.deal.to_string(),
                order.shopper.to_string(),
                i64::from(order.quantity),
                order.unit_price.to_string(),
                order.amount.to_string(),
                order.late,
                order.created_at.millis(),
            )
        })
        .collect();
    assert_eq!(found.len(), orders.len());
    assert_eq!(found, expected);
    found
}

fn millis(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000)::int8")
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

#[test]
fn database_urls_are_rewritten() {
    assert_eq!(
        with_database("postgres://u@h:5432/postgres", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    assert_eq!(
        with_database("postgres://h/db?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
}

/// Runs a sink until it has applied everything durable, then stops it;
/// returns its merged batches.
async fn apply_all(shop: &Shop, config: OrderSinkConfig) -> u64 {
    let sink = start(config, &shop.journal).await;
    caught_up(&sink, &shop.journal).await;
    let merged = sink.merged_batches();
    sink.abort().await;
    merged
}

/// The sink's tables, plus a rule about rows' content (`rule`, SQL) that
/// the engine does not know. The API refuses text Postgres cannot store (a
/// NUL), so a row Postgres refuses for its content is made this way round;
/// to the sink it is the same: a refusal of the row's content (SQLSTATE
/// class 22 or 23) that no retry can get past. Returns a connection.
async fn with_content_rule(db: &TestDb, rule: &str) -> PgConnection {
    let mut conn = db.connect().await;
    order_sink::MIGRATOR.run(&mut conn).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(rule.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// An order as [`deployment_orders`] reads it: (id, shopper, amount).
type ShopperOrder = (String, String, String);

/// Orders of one deployment in Postgres, sorted by id.
async fn deployment_orders(conn: &mut PgConnection, deployment: &str) -> Vec<ShopperOrder> {
    sqlx::query_as(
        "SELECT id, shopper_id, amount::text FROM orders WHERE deployment_id = $1 ORDER BY id",
    )
    .bind(deployment)
    .fetch_all(conn)
    .await
    .unwrap()
}

fn expected_orders(orders: &[Order]) -> Vec<ShopperOrder> {
    let mut rows: Vec<ShopperOrder> = orders
        .iter()
        .map(|order| {
            (
                order.id.to_string(),
                order.shopper.to_string(),
                order.amount.to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

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

/// Waits until `sink` refuses the position Postgres holds for its journal
/// as another data directory's, and returns its error; fails if the sink
/// catches up instead (it would have skipped its own events) or writes.
async fn refused(sink: &OrderSinkHandle, journal: &Journal) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(error) = sink.last_error()
            && error.contains("another data directory")
        {
            return error;
        }
        let lag = sink.lag();
        assert!(
            lag.applied != Some(journal.durable_position()),
            "the sink caught up on a position its journal does not hold as history: {lag:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the sink did not refuse: {lag:?}, last error {:?}",
            sink.last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// `POST url` with `body`, the bearer `token` and an `Idempotency-Key`;
/// the answer's JSON, after checking it is a success.
async fn post_ok(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: serde_json::Value,
    key: &str,
) -> serde_json::Value {
    let answer = client
        .post(url)
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
    answer.json().await.unwrap()
}

/// `GET {url}/metrics`: the server's Prometheus text.
async fn scrape_metrics(client: &reqwest::Client, url: &str) -> String {
    client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the unlabelled series `name` in Prometheus text, if listed.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name).then(|| value.parse().ok()).flatten()
    })
}

/// Regression: the sink's counters appeared in `/metrics` only after
/// their first increment, so a dashboard or an alert on them had no
/// series until something had already gone wrong. A `flashsale serve` of
/// its own (no other test's set-aside events in its process) lists both at
/// 0 with their help before any request, then counts a refused deal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_lists_its_counters_at_zero_from_the_start_then_counts() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    with_content_rule(
        &db,
        "ALTER TABLE deals ADD CONSTRAINT refuse_poison CHECK (title <> 'Poison')",
    )
    .await;
    let server = flashsale_loadtest::SpawnedServer::start(
        Path::new(env!("CARGO_BIN_EXE_flashsale")),
        flashsale_loadtest::Durability::Sync,
        Some(&db.url),
    )
    .await
    .expect("flashsale serve starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let counters = [
        "flashsale_order_sink_set_aside_total",
        "flashsale_order_sink_conflicts_total",
        "flashsale_order_sink_foreign_positions_total",
    ];
    let metrics = scrape_metrics(&client, &server.url).await;
    for name in counters {
        assert_eq!(sample(&metrics, name), Some(0.0), "{name}:\n{metrics}");
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no help:\n{metrics}"
        );
    }

    let post = async |path: &str, token: &str, body: serde_json::Value, key: &str| {
        post_ok(&client, &format!("{}{path}", server.url), token, body, key).await
    };
    let merchant = post(
        "/v1/merchants",
        &server.admin_token,
        serde_json::json!({ "name": "m" }),
        "a",
    )
    .await;
    post(
        "/v1/deals",
        merchant["token"].as_str().unwrap(),
        serde_json::json!({
            "title": "Poison", "price": "5.00", "stock": 10,
            "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2100-01-01T00:00:00Z",
        }),
        "b",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = scrape_metrics(&client, &server.url).await;
        if sample(&metrics, counters[0]) == Some(1.0) {
            assert_eq!(sample(&metrics, counters[1]), Some(0.0), "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "never set aside:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
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

// ----- raffles (issue #14) ---------------------------------------------------

/// A served gateway's HTTP API, as a merchant, shoppers and the admin use it.
struct Api {
    client: reqwest::Client,
    url: String,
    admin: String,
    /// Makes every idempotency key unique.
    keys: std::sync::atomic::AtomicU64,
}

impl Api {
    fn new(server: &flashsale_gateway::RunningServer) -> Api {
        Api {
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            url: server.url(),
            admin: server.admin_token.clone(),
            keys: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `method path` with `token` and `body`; the status must be `expected`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
        expected: u16,
    ) -> serde_json::Value {
        let key = self.keys.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.url))
            .header("idempotency-key", format!("k{key}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        let json = answer.json().await.unwrap_or(serde_json::Value::Null);
        assert_eq!(status, expected, "{method} {path}: {json}");
        json
    }

    async fn get(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        self.call(reqwest::Method::GET, path, token, None, 200)
            .await
    }

    async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> serde_json::Value {
        self.call(reqwest::Method::POST, path, Some(token), Some(body), 201)
            .await
    }

    /// A new merchant's token.
    async fn merchant(&self) -> String {
        let body = serde_json::json!({ "name": "m" });
        let made = self.post("/v1/merchants", &self.admin, body).await;
        made["token"].as_str().unwrap().to_owned()
    }

    /// `count` new shoppers with `credit` each: `(id, token)`.
    async fn shoppers(&self, count: usize, credit: &str) -> Vec<(String, String)> {
        let body = serde_json::json!({ "count": count, "credit": credit });
        let made = self.post("/v1/admin/shoppers", &self.admin, body).await;
        made["shoppers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|shopper| {
                let text = |field: &str| shopper[field].as_str().unwrap().to_owned();
                (text("id"), text("token"))
            })
            .collect()
    }

    /// A deal of `merchant` created with `body`: its JSON.
    async fn deal(&self, merchant: &str, body: serde_json::Value) -> serde_json::Value {
        self.post("/v1/deals", merchant, body).await
    }
}

/// The body that creates a first-come deal open from 2020 to 2100.
fn first_come_deal(title: &str, price: &str, stock: u32) -> serde_json::Value {
    serde_json::json!({
        "title": title, "price": price, "stock": stock,
        "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2100-01-01T00:00:00Z",
    })
}

/// A gateway on `dir` whose order sink writes `db`, once the sink has
/// migrated it.
async fn serve(dir: &Path, db: &TestDb) -> flashsale_gateway::RunningServer {
    let mut config = flashsale_gateway::Config::new(dir.to_owned());
    config.database_url = Some(db.url.clone());
    config.rate_limit_shopper = 0;
    config.rate_limit_address = 0;
    config.expiry_interval = Duration::from_millis(100);
    let server = flashsale_gateway::spawn(config).await.unwrap();
    let mut conn = db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let migrated: bool = sqlx::query_scalar("SELECT to_regclass('draw_places') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if migrated {
            return server;
        }
        assert!(Instant::now() < deadline, "the sink never migrated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// Every row of every books table as JSON text, one per line.
async fn every_row(conn: &mut PgConnection) -> String {
    let mut rows = String::new();
    for table in [
        "deals",
        "orders",
        "wallet_movements",
        "registrations",
        "draws",
        "draw_places",
        "order_sink_set_aside",
    ] {
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM {table} t"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        rows.push_str(&text);
        rows.push('\n');
    }
    rows
}

/// A place of a raffle's ranking as Postgres and the API both tell it:
/// 0-based place, shopper, outcome, and for an offer its hold id,
/// quantity, amount and ending (`released`/`expired`/none).
type PlaceRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// What Postgres says of raffle `deal`: registrants (sorted), the draw row
/// (seed, commitment, registrants, registrants hash), the places, and the
/// deal's orders `(id, shopper, hold, amount)` (sorted).
type RaffleBooks = (
    Vec<String>,
    Option<(String, String, i64, String)>,
    Vec<PlaceRow>,
    Vec<(String, String, Option<String>, String)>,
);

async fn raffle_books(conn: &mut PgConnection, deal: &str) -> RaffleBooks {
    let registrants = sqlx::query_scalar(
        "SELECT shopper_id FROM registrations WHERE deal_id = $1 ORDER BY shopper_id",
    )
    .bind(deal)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let draw = sqlx::query_as(
        "SELECT seed, seed_commitment, registrants, registrants_hash FROM draws WHERE id = $1",
    )
    .bind(deal)
    .fetch_optional(&mut *conn)
    .await
    .unwrap();
    // In walk order.
    let places = sqlx::query_as(
        "SELECT (row_number() OVER (ORDER BY journal_position) - 1)::int8, shopper_id, \
         outcome, hold_id, quantity, amount::text, ended FROM draw_places \
         WHERE deal_id = $1 ORDER BY journal_position",
    )
    .bind(deal)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let orders = sqlx::query_as(
        "SELECT id, shopper_id, hold_id, amount::text FROM orders WHERE deal_id = $1 ORDER BY id",
    )
    .bind(deal)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    (registrants, draw, places, orders)
}

/// Polls Postgres until `raffle_books` of `deal` equals `expected` (the
/// sink is behind by a batch or two), then asserts it.
async fn assert_raffle_books(conn: &mut PgConnection, deal: &str, expected: &RaffleBooks) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = raffle_books(conn, deal).await;
        if found == *expected || Instant::now() > deadline {
            assert_eq!(found, *expected);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RAFFLE_FUNDED: usize = 32;
const RAFFLE_BROKE: usize = 8;
const RAFFLE_STOCK: u64 = 8;

/// A raffle served over HTTP (40 registrants, 8 of them too poor, for 8
/// units) reaches Postgres as the API tells it: the
/// registrations, the draw with its seed (and no seed anywhere in Postgres
/// before the draw), each place of the ranking offered or passed over in
/// walk order, paid holds linked to their orders, released and expired
/// holds marked. Then the sink's position is lost: applying the journal
/// again writes every row once, and a first-come hold's release adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raffle_reaches_postgres_as_the_api_tells_it_and_its_seed_only_after_the_draw() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &db).await;
    let api = Api::new(&server);
    let merchant = api.merchant().await;
    let created = api
        .deal(
            &merchant,
            serde_json::json!({
                "title": "Phone raffle", "price": "10.00", "stock": RAFFLE_STOCK,
                "starts_at": flashsale_testkit::rfc3339_from_now(6),
                "ends_at": flashsale_testkit::rfc3339_from_now(3600),
                "allocation": "raffle", "hold_seconds": 2,
            }),
        )
        .await;
    let deal = created["id"].as_str().unwrap().to_owned();
    let mut registrants = api.shoppers(RAFFLE_FUNDED, "100.00").await;
    registrants.extend(api.shoppers(RAFFLE_BROKE, "5.00").await);
    let registration = format!("/v1/deals/{deal}/registrations");
    for (_, token) in &registrants {
        api.call(reqwest::Method::POST, &registration, Some(token), None, 201)
            .await;
    }

    // Before the draw: the registrations and the commitment are in
    // Postgres, the seed is nowhere.
    let mut conn = db.connect().await;
    let mut ids: Vec<String> = registrants.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_raffle_books(&mut conn, &deal, &(ids.clone(), None, vec![], vec![])).await;
    let before_draw = every_row(&mut conn).await;
    let (allocation, commitment): (String, Option<String>) =
        sqlx::query_as("SELECT allocation, seed_commitment FROM deals WHERE id = $1")
            .bind(&deal)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(allocation, "raffle");
    assert_eq!(commitment.as_deref(), created["seed_commitment"].as_str());
    let draw_path = format!("/v1/deals/{deal}/draw");
    assert_eq!(
        api.get(&draw_path, None).await["drawn"],
        false,
        "Postgres was read before the draw"
    );

    // The draw runs at starts_at; winners: half pay, a quarter release, a
    // quarter let the hold expire; units pass down the waitlist.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut record = api.get(&draw_path, None).await;
    while record["drawn"] != true {
        assert!(Instant::now() < deadline, "the draw never ran: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        record = api.get(&draw_path, None).await;
    }
    let seed = record["seed"].as_str().unwrap().to_owned();
    assert!(
        !before_draw.contains(&seed),
        "the seed was in Postgres before the draw"
    );
    let me_path = format!("/v1/deals/{deal}/draw/me");
    let mut handled = BTreeSet::new();
    loop {
        let view = api.get(&format!("/v1/deals/{deal}"), None).await;
        if view["sold"] == RAFFLE_STOCK {
            break;
        }
        assert!(Instant::now() < deadline, "never sold out: {view}");
        for (id, token) in &registrants {
            let me = api.get(&me_path, Some(token)).await;
            if me["outcome"] != "won" || me["hold"]["status"] != "active" {
                continue;
            }
            let hold = me["hold"]["id"].as_str().unwrap().to_owned();
            if !handled.insert(id.clone()) {
                continue;
            }
            // By the order holds are seen, not by who won them, so the
            // first four winners release, let expire, pay and pay
            // whatever the seed ranks first.
            match (handled.len() - 1) % 4 {
                0 => {
                    let path = format!("/v1/holds/{hold}");
                    api.call(reqwest::Method::DELETE, &path, Some(token), None, 200)
                        .await;
                }
                1 => {} // lets it expire
                _ => {
                    let path = format!("/v1/holds/{hold}/payment");
                    api.call(reqwest::Method::POST, &path, Some(token), None, 201)
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the API says, place by place and order by order.
    let record = api.get(&format!("{draw_path}?limit=1000"), None).await;
    let mut places = Vec::new();
    let mut orders = Vec::new();
    for (id, token) in &registrants {
        let me = api.get(&me_path, Some(token)).await;
        let place = me["place"].as_i64().map(|place| place - 1);
        let hold = &me["hold"];
        match me["outcome"].as_str().unwrap() {
            "won" => {
                let hold_id = hold["id"].as_str().unwrap().to_owned();
                let ended = match hold["status"].as_str().unwrap() {
                    "settled" => {
                        let order = hold["order_id"].as_str().unwrap().to_owned();
                        let amount = hold["amount"].as_str().unwrap().to_owned();
                        orders.push((order, id.clone(), Some(hold_id.clone()), amount));
                        None
                    }
                    ended @ ("released" | "expired") => Some(ended.to_owned()),
                    other => panic!("sold out, yet a hold is {other}"),
                };
                places.push((
                    place.unwrap(),
                    id.clone(),
                    "offered".to_owned(),
                    Some(hold_id),
                    hold["quantity"].as_i64(),
                    hold["amount"].as_str().map(str::to_owned),
                    ended,
                ));
            }
            "passed_over" => {
                places.push((
                    place.unwrap(),
                    id.clone(),
                    "passed_over".to_owned(),
                    None,
                    None,
                    None,
                    None,
                ));
            }
            "not_drawn" => {}
            other => panic!("sold out, yet {id} is {other}"),
        }
    }
    places.sort();
    orders.sort();
    assert_eq!(
        places.len() as u64,
        record["offers_total"].as_u64().unwrap()
    );
    assert_eq!(orders.len() as u64, RAFFLE_STOCK);
    // Units passed down the waitlist: more offers than units, some
    // released, some expired.
    let ended = |how: &str| {
        places
            .iter()
            .filter(|p| p.6.as_deref() == Some(how))
            .count()
    };
    assert!(ended("released") > 0 && ended("expired") > 0, "{places:?}");
    let offered = places.iter().filter(|p| p.2 == "offered").count();
    assert!(offered > RAFFLE_STOCK as usize, "{places:?}");
    // The broke (the last RAFFLE_BROKE registrants) the walk reached are
    // exactly the places passed over (which of them it reaches depends on
    // the seed).
    let broke: BTreeSet<&str> = registrants[RAFFLE_FUNDED..]
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    for place in &places {
        assert_eq!(
            place.2 == "passed_over",
            broke.contains(place.1.as_str()),
            "{place:?}"
        );
    }
    let deal_json = api.get(&format!("/v1/deals/{deal}"), None).await;
    let drawn = (
        seed.clone(),
        deal_json["seed_commitment"].as_str().unwrap().to_owned(),
        record["registrants"].as_i64().unwrap(),
        record["registrants_hash"].as_str().unwrap().to_owned(),
    );
    assert_eq!(drawn.2 as usize, registrants.len());
    assert_eq!(deal_json["seed"].as_str(), Some(seed.as_str()));
    let expected = (ids.clone(), Some(drawn), places, orders);
    assert_raffle_books(&mut conn, &deal, &expected).await;
    // An offered place held its hold for hold_seconds.
    let held: Vec<f64> = sqlx::query_scalar(
        "SELECT DISTINCT extract(epoch FROM expires_at - reached_at)::float8 FROM draw_places \
         WHERE deal_id = $1 AND outcome = 'offered'",
    )
    .bind(&deal)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(held, vec![2.0]);
    // A hold ended after it was offered: expired at or past its expiry,
    // released before it.
    let misdated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM draw_places WHERE deal_id = $1 AND (ended_at < reached_at \
         OR (ended = 'expired' AND ended_at < expires_at) \
         OR (ended = 'released' AND ended_at > expires_at))",
    )
    .bind(&deal)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(misdated, 0);
    let before_loss = every_row(&mut conn).await;
    server.shutdown().await.unwrap();

    // The position lost: the journal is applied again from the start, and
    // what comes after it (a first-come hold released, a new raffle's
    // registrations) lands once too.
    sqlx::query("UPDATE order_sink_positions SET position = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let server = serve(dir.path(), &db).await;
    let api = Api::new(&server);
    let first_come = api
        .deal(&merchant, first_come_deal("Case", "3.00", 5))
        .await;
    let buyer = api.shoppers(1, "10.00").await.remove(0);
    let hold = api
        .post(
            &format!("/v1/deals/{}/holds", first_come["id"].as_str().unwrap()),
            &buyer.1,
            serde_json::json!({ "quantity": 1 }),
        )
        .await;
    let path = format!("/v1/holds/{}", hold["id"].as_str().unwrap());
    api.call(reqwest::Method::DELETE, &path, Some(&buyer.1), None, 200)
        .await;
    let next = api
        .deal(
            &merchant,
            serde_json::json!({
                "title": "Next raffle", "price": "10.00", "stock": 1,
                "starts_at": flashsale_testkit::rfc3339_from_now(3600),
                "ends_at": flashsale_testkit::rfc3339_from_now(7200),
                "allocation": "raffle",
            }),
        )
        .await;
    let next_deal = next["id"].as_str().unwrap().to_owned();
    let late = api.shoppers(3, "100.00").await;
    for (_, token) in &late {
        let path = format!("/v1/deals/{next_deal}/registrations");
        api.call(reqwest::Method::POST, &path, Some(token), None, 201)
            .await;
    }
    let mut late_ids: Vec<String> = late.iter().map(|(id, _)| id.clone()).collect();
    late_ids.sort();
    assert_raffle_books(&mut conn, &next_deal, &(late_ids, None, vec![], vec![])).await;
    assert_raffle_books(&mut conn, &deal, &expected).await;
    let after: Vec<String> = every_row(&mut conn)
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    for row in before_loss.lines().filter(|row| !row.is_empty()) {
        assert_eq!(
            after.iter().filter(|found| *found == row).count(),
            1,
            "once: {row}"
        );
    }
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM draw_places), (SELECT count(*) FROM draws), \
         (SELECT count(*) FROM registrations), (SELECT count(*) FROM order_sink_set_aside)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        counts,
        (
            expected.2.len() as i64,
            1,
            (registrants.len() + late.len()) as i64,
            0
        )
    );
    let metrics = scrape_metrics(&api.client, &api.url).await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("flashsale_order_sink_merged_batches") && !line.ends_with(" 0")
        ),
        "the lost position was applied by the merge: {metrics}"
    );
    server.shutdown().await.unwrap();
    db.drop_db().await;
}
