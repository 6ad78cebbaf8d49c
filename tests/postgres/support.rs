//! What the topics share: a fresh database per test ([`TestDb`]), a shop on
//! a journal of its own ([`shop`], [`sell`]), an order sink on it
//! ([`sink_config`], [`start`], [`caught_up`]), what Postgres must hold
//! ([`assert_books`]), and a served gateway writing the books ([`serve`],
//! [`Api`]).

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
pub struct TestDb {
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Option<TestDb> {
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

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    pub async fn drop_db(self) {
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
pub fn with_database(url: &str, name: &str) -> String {
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

pub struct Shop {
    pub journal: Arc<Journal>,
    pub engine: Arc<Engine>,
    pub deal: DealId,
    pub shoppers: Vec<ShopperId>,
}

pub fn fen(amount: i64) -> Money {
    Money::from_fen(amount).unwrap()
}

/// The journal in `dir` (small segments, so snapshots prune) and its engine.
pub fn open_journal(dir: &Path) -> (Arc<Journal>, Arc<Engine>) {
    let mut config = JournalConfig::new(dir.to_owned(), Durability::Sync);
    config.segment_bytes_max = 64 << 10;
    let engine_config = EngineConfig {
        shards: 8,
        ..EngineConfig::default()
    };
    Journal::open(config, engine_config, Arc::new(SystemClock)).unwrap()
}

pub fn shop(dir: &Path, shoppers: u32) -> Shop {
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
pub fn sell(shop: &Shop, round: usize) -> Vec<Order> {
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

pub fn sink_config(url: &str) -> OrderSinkConfig {
    let mut config = OrderSinkConfig::new(url);
    config.batch_events_max = 1_000;
    config.retry_delay_min = Duration::from_millis(20);
    config.retry_delay_max = Duration::from_millis(200);
    config.connect_timeout = Duration::from_secs(2);
    config
}

pub async fn start(config: OrderSinkConfig, journal: &Arc<Journal>) -> OrderSinkHandle {
    order_sink::start_with(config, journal.clone(), std::future::pending())
        .await
        .unwrap()
}

pub async fn caught_up(sink: &OrderSinkHandle, journal: &Journal) {
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
pub async fn assert_books(db: &TestDb, shop: &Shop, orders: &[Order]) {
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

/// Milliseconds since the epoch of a `timestamptz` column, as SQL.
/// An order row as read back: ids, quantity, money as Postgres prints it,
/// `late`, `created_at` in millis.
pub type OrderRow = (String, String, String, i64, String, String, bool, i64);

/// Postgres's `orders` hold exactly `orders`, every column; returns the rows.
pub async fn assert_order_rows(
    conn: &mut sqlx::PgConnection,
    orders: &[Order],
) -> BTreeSet<OrderRow> {
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

pub fn millis(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000)::int8")
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
pub async fn apply_all(shop: &Shop, config: OrderSinkConfig) -> u64 {
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
pub async fn with_content_rule(db: &TestDb, rule: &str) -> PgConnection {
    let mut conn = db.connect().await;
    order_sink::MIGRATOR.run(&mut conn).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(rule.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// An order as [`deployment_orders`] reads it: (id, shopper, amount).
pub type ShopperOrder = (String, String, String);

/// Orders of one deployment in Postgres, sorted by id.
pub async fn deployment_orders(conn: &mut PgConnection, deployment: &str) -> Vec<ShopperOrder> {
    sqlx::query_as(
        "SELECT id, shopper_id, amount::text FROM orders WHERE deployment_id = $1 ORDER BY id",
    )
    .bind(deployment)
    .fetch_all(conn)
    .await
    .unwrap()
}

pub fn expected_orders(orders: &[Order]) -> Vec<ShopperOrder> {
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

/// Waits until `sink` refuses the position Postgres holds for its journal
/// as another data directory's, and returns its error; fails if the sink
/// catches up instead (it would have skipped its own events) or writes.
pub async fn refused(sink: &OrderSinkHandle, journal: &Journal) -> String {
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

/// `POST url` with `body`, the bearer `token` and an `Idempotency-Key`;
/// the answer's JSON, after checking it is a success.
pub async fn post_ok(
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
pub async fn scrape_metrics(client: &reqwest::Client, url: &str) -> String {
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
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name).then(|| value.parse().ok()).flatten()
    })
}

/// A served gateway's HTTP API, as a merchant, shoppers and the admin use
/// it: `flashsale_testkit`'s client, each call with a fresh idempotency key
/// and its status checked.
pub struct Api {
    pub api: flashsale_testkit::client::Api,
    /// Makes every idempotency key unique.
    pub keys: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Api {
    type Target = flashsale_testkit::client::Api;

    fn deref(&self) -> &flashsale_testkit::client::Api {
        &self.api
    }
}

impl Api {
    pub fn new(server: &flashsale_gateway::RunningServer) -> Api {
        Api {
            api: flashsale_testkit::client::Api::new(server.url(), server.admin_token.clone()),
            keys: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `method path` with `token` and `body`; the status must be `expected`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
        expected: u16,
    ) -> serde_json::Value {
        let key = self.keys.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = self
            .api
            .call(
                method.clone(),
                path,
                token,
                body.as_ref(),
                Some(&format!("k{key}")),
            )
            .await;
        assert_eq!(answer.status, expected, "{method} {path}: {}", answer.body);
        answer.body
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> serde_json::Value {
        self.call(reqwest::Method::GET, path, token, None, 200)
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        self.call(reqwest::Method::POST, path, Some(token), Some(body), 201)
            .await
    }

    /// A new merchant's token.
    pub async fn merchant(&self) -> String {
        self.api.merchant("m").await.token
    }

    /// `count` new shoppers with `credit` each: `(id, token)`.
    pub async fn shoppers(&self, count: usize, credit: &str) -> Vec<(String, String)> {
        self.api
            .bulk_shoppers(count, credit)
            .await
            .into_iter()
            .map(|shopper| (shopper.id, shopper.token))
            .collect()
    }

    /// A deal of `merchant` created with `body`: its JSON.
    pub async fn deal(&self, merchant: &str, body: serde_json::Value) -> serde_json::Value {
        self.post("/v1/deals", merchant, body).await
    }
}

/// The body that creates a first-come deal open from 2020 to 2100.
pub fn first_come_deal(title: &str, price: &str, stock: u32) -> serde_json::Value {
    serde_json::json!({
        "title": title, "price": price, "stock": stock,
        "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2100-01-01T00:00:00Z",
    })
}

/// A gateway on `dir` whose order sink writes `db`, once the sink has
/// migrated it.
pub async fn serve(dir: &Path, db: &TestDb) -> flashsale_gateway::RunningServer {
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
