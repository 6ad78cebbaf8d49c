//! The Postgres order sink against a real Postgres (`DATABASE_URL`): every
//! settled order lands exactly once, across sink crashes and Postgres
//! outages. Without `DATABASE_URL` each test prints a skip note and
//! passes; with it set but unreachable, the tests fail.
//!
//! Each test creates its own database `flashsale_test_<random>` and drops
//! it after, so runs can be repeated and run in parallel.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_engine::{
    Clock, DealId, Engine, EngineConfig, Money, NewDeal, Order, ShopperId, SystemClock,
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
    async fn create(test: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var("DATABASE_URL") else {
            eprintln!("skipping {test}: DATABASE_URL is not set");
            return None;
        };
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

fn shop(dir: &Path, shoppers: u32) -> Shop {
    let mut config = JournalConfig::new(dir.to_owned(), Durability::Sync);
    config.segment_bytes_max = 64 << 10;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine_config = EngineConfig {
        shards: 8,
        ..EngineConfig::default()
    };
    let (journal, engine) = Journal::open(config, engine_config, clock.clone()).unwrap();
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
    let rows: Vec<(String, String, String, i64, Decimal, Decimal, bool)> = sqlx::query_as(
        "SELECT id, deal_id, shopper_id, quantity, unit_price, amount, late FROM orders",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), orders.len(), "one row per order");
    let expected: BTreeSet<_> = orders
        .iter()
        .map(|order| {
            (
                order.id.to_string(),
                order.deal.to_string(),
                order.shopper.to_string(),
                i64::from(order.quantity),
                order.unit_price.to_decimal(),
                order.amount.to_decimal(),
                order.late,
            )
        })
        .collect();
    let found: BTreeSet<_> = rows.into_iter().collect();
    assert_eq!(found, expected);

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
    let Some(db) = TestDb::create("every_settled_order_reaches_postgres_exactly_once").await else {
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
    let Some(db) = TestDb::create("a_sink_stopped_mid_batch_resumes_exactly_once").await else {
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
async fn sales_go_on_while_postgres_is_unreachable_and_the_backlog_drains() {
    let Some(db) =
        TestDb::create("sales_go_on_while_postgres_is_unreachable_and_the_backlog_drains").await
    else {
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
