//! Redis mode's books: every node runs the books sink (`--database-url`);
//! after a burst through three nodes, every order answered `201` is in
//! Postgres exactly once with the content it was answered with, and the
//! wallet movements and the deal's total match what Redis says.
//!
//! Each deployment's rows carry its own deployment id (kept in Redis), so
//! the tests share the `DATABASE_URL` database and read only their rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::burst::{burst, fen};
use crate::node::{Deployment, Node, Target};

/// How long the books may take to reach Postgres after a burst.
const BOOKS_WAIT: Duration = Duration::from_secs(30);

/// `REDIS_URL` and `DATABASE_URL`, or `None`: the test is skipped.
pub fn redis_and_postgres() -> Option<(String, String)> {
    Some((
        flashsale_testkit::redis_url()?,
        flashsale_testkit::postgres_url()?,
    ))
}

/// A connection to the books' Postgres.
pub async fn connect(database_url: &str) -> PgConnection {
    PgConnection::connect(database_url)
        .await
        .expect("DATABASE_URL is set, so Postgres must be reachable")
}

/// `flashsale audit`'s exit codes (docs/operations.md): every invariant
/// holds, a violation, could not check.
pub const AUDIT_HOLDS: Option<i32> = Some(0);
pub const AUDIT_VIOLATION: Option<i32> = Some(1);
pub const AUDIT_CANNOT_CHECK: Option<i32> = Some(2);

/// `flashsale audit` of the deployment and its books (`--in-flight` while
/// sales go on): its exit code, and its report.
pub fn audit(
    deployment: &Deployment,
    database_url: &str,
    in_flight: bool,
) -> (Option<i32>, String) {
    let shards = deployment.shards.to_string();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    command
        .arg("audit")
        .args(deployment.target.flags())
        .args(["--redis-namespace", &deployment.namespace])
        .args(["--redis-shards", &shards])
        .args(["--database-url", database_url])
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS");
    if in_flight {
        command.arg("--in-flight");
    }
    let output = command.output().expect("flashsale audit runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), report)
}

/// `redis-cli` on the deployment's Redis: its output.
pub fn redis_cli(deployment: &Deployment, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(deployment.target.cli())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The books stream of `deal` (its id as the API prints it, `d_<hex>`).
pub fn deal_stream(deployment: &Deployment, deal: &str) -> String {
    let number = u64::from_str_radix(deal.trim_start_matches("d_"), 16).expect("a hex deal id");
    format!("{}:{{d:{number}}}:books", deployment.namespace)
}

/// Entries of `streams` delivered to a consumer of the group `books` and
/// not acknowledged (`XPENDING`), in all.
pub fn pending_entries(deployment: &Deployment, streams: &[String]) -> u64 {
    streams
        .iter()
        .map(|stream| {
            redis_cli(deployment, &["XPENDING", stream, "books"])
                .lines()
                .next()
                .and_then(|count| count.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// The deployment's id, as its nodes keep it in Redis.
pub fn deployment_id(deployment: &Deployment) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(deployment.target.cli())
        .args(["GET", &format!("{}:{{g}}:deployment", deployment.namespace)])
        .output()
        .expect("redis-cli runs");
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        id.starts_with("redis-"),
        "no deployment id in Redis: {id:?}"
    );
    id
}

/// One order row: deal, shopper, quantity, unit price and amount (text),
/// late.
type OrderRow = (String, String, i64, String, String, bool);

/// The deployment's orders in Postgres by id.
pub async fn orders_in_postgres(
    conn: &mut PgConnection,
    deployment: &str,
) -> HashMap<String, OrderRow> {
    let rows: Vec<(String, String, String, i64, String, String, bool)> = sqlx::query_as(
        "SELECT id, deal_id, shopper_id, quantity, unit_price::text, amount::text, late \
         FROM orders WHERE deployment_id = $1",
    )
    .bind(deployment)
    .fetch_all(&mut *conn)
    .await
    .expect("orders");
    rows.into_iter()
        .map(|(id, deal, shopper, quantity, price, amount, late)| {
            (id, (deal, shopper, quantity, price, amount, late))
        })
        .collect()
}

/// Waits until Postgres holds `count` orders of the deployment.
pub async fn wait_for_orders(conn: &mut PgConnection, deployment: &str, count: usize) {
    let started = Instant::now();
    loop {
        // A fresh database has no tables until a sink made them.
        let made: (bool,) = sqlx::query_as("SELECT to_regclass('orders') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .expect("a catalog query");
        let found = if made.0 {
            orders_in_postgres(conn, deployment).await.len()
        } else {
            0
        };
        if found >= count {
            return;
        }
        assert!(
            started.elapsed() < BOOKS_WAIT,
            "only {found} of {count} orders reached Postgres within {BOOKS_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three nodes with the books sink; a burst of 2,000 buys (each key twice,
/// to two nodes) by 500 shoppers of a 200-unit deal, a restock of 50 that
/// also sells; then the books in Postgres are the orders answered, once
/// each, with their content, and the money and stock agree.
async fn three_nodes_write_every_order_once(target: Target, database_url: &str) {
    const STOCK: u64 = 200;
    const RESTOCK: u64 = 50;
    const SHOPPERS: u32 = 500;
    let deployment = Deployment::new(target, 64);
    let flags = ["--database-url", database_url];
    let nodes = [
        deployment.node_with(&flags),
        deployment.node_with(&flags),
        deployment.node_with(&flags),
    ];
    let merchant = nodes[0].merchant("Books").await;
    let deal = nodes[1].deal(&merchant, STOCK, 1).await;
    let shoppers = nodes[2].shoppers(SHOPPERS, "100.00").await;
    let mut plan = Vec::new();
    for round in 0..4 {
        for shopper in 0..SHOPPERS as usize {
            plan.push((shopper, format!("book-{shopper}-{}", round / 2)));
        }
    }
    // The auditor runs while the burst is under way: what holds mid-flight.
    let auditing = {
        let (deployment, database) = (&deployment, database_url.to_owned());
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tokio::task::block_in_place(|| audit(deployment, &database, true))
        }
    };
    let (mut attempts, (code, report)) =
        tokio::join!(burst(&nodes, &shoppers, &deal, &plan), auditing);
    assert_eq!(code, AUDIT_HOLDS, "the audit during the burst: {report}");
    eprintln!("mid-burst: {report}");
    nodes[0]
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/deals/{deal}"),
            Some(&merchant),
            Some(json!({ "add_stock": RESTOCK })),
            None,
        )
        .await
        .ok(200);
    let plan: Vec<(usize, String)> = (0..SHOPPERS as usize)
        .map(|shopper| (shopper, format!("book-{shopper}-again")))
        .collect();
    attempts.extend(burst(&nodes, &shoppers, &deal, &plan).await);

    let mut answered: HashMap<String, Value> = HashMap::new();
    for attempt in &attempts {
        if let Some(answer) = attempt
            .answer
            .as_ref()
            .filter(|answer| answer.status == 201)
        {
            let id = answer.body["id"].as_str().expect("an id").to_owned();
            answered.insert(id, answer.body.clone());
        }
    }
    assert_eq!(
        answered.len() as u64,
        STOCK + RESTOCK,
        "every unit sold once"
    );

    let id = deployment_id(&deployment);
    let mut conn = connect(database_url).await;
    wait_for_orders(&mut conn, &id, answered.len()).await;
    let books = orders_in_postgres(&mut conn, &id).await;
    assert_eq!(books.len(), answered.len(), "no order twice, none more");
    for (order, body) in &answered {
        let row = books
            .get(order)
            .unwrap_or_else(|| panic!("{order} not in Postgres"));
        let expected = (
            body["deal_id"].as_str().unwrap_or_default().to_owned(),
            body["shopper_id"].as_str().unwrap_or_default().to_owned(),
            body["quantity"].as_i64().unwrap_or_default(),
            body["unit_price"].as_str().unwrap_or_default().to_owned(),
            body["amount"].as_str().unwrap_or_default().to_owned(),
            body["late"].as_bool().unwrap_or_default(),
        );
        assert_eq!(row, &expected, "order {order} in Postgres");
    }

    // Money: one credit per shopper, one debit per order, as Redis says.
    let (credits, credited): (i64, String) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(amount), 0)::text FROM wallet_movements \
         WHERE deployment_id = $1 AND kind = 'credit'",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await
    .expect("credits");
    assert_eq!(credits, i64::from(SHOPPERS));
    assert_eq!(fen(&json!(credited)), i64::from(SHOPPERS) * 10_000);
    let (debits, debited): (i64, String) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(amount), 0)::text FROM wallet_movements \
         WHERE deployment_id = $1 AND kind = 'debit'",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await
    .expect("debits");
    assert_eq!(debits as usize, answered.len());
    let mut spent = 0;
    for (_, token) in &shoppers {
        spent += fen(&nodes[0].get("/v1/wallet", Some(token)).await.ok(200)["spent"]);
    }
    assert_eq!(
        fen(&json!(debited)),
        spent,
        "debits in Postgres = spent in Redis"
    );

    // The deal, restocked once (deal streams are read once a second).
    wait_for_deal_total(&mut conn, &id, &deal, STOCK + RESTOCK).await;

    // Every node is ready, and says the backlog is empty.
    for node in &nodes {
        wait_for_backlog(node, 0).await;
        node.get("/readyz", None).await.ok(200);
    }
    // The whole audit, sales quiet: it passes, and names a wallet broken
    // behind its back.
    let (code, report) = audit(&deployment, database_url, false);
    assert_eq!(code, AUDIT_HOLDS, "the audit after the burst: {report}");
    assert!(
        report.contains(&format!("{} order(s) in Redis", answered.len())),
        "{report}"
    );
    let shopper =
        u64::from_str_radix(shoppers[0].0.trim_start_matches("s_"), 16).expect("a hex shopper id");
    let shard = flashsale_engine::ids::shard_of(
        flashsale_engine::ShopperId(shopper),
        deployment.shards as usize,
    );
    let account = format!("{}:{{s:{shard}}}:acct:{shopper}", deployment.namespace);
    redis_cli(&deployment, &["HINCRBY", &account, "available", "1"]);
    let (code, report) = audit(&deployment, database_url, false);
    assert_eq!(code, AUDIT_VIOLATION, "a broken wallet: {report}");
    assert!(
        report.contains(&format!("wallet of {}", shoppers[0].0)),
        "{report}"
    );
}

/// Waits until the deal's row in Postgres has `total` units (initial stock
/// plus restocks), failing if it passes it.
async fn wait_for_deal_total(conn: &mut PgConnection, deployment: &str, deal: &str, total: u64) {
    let started = Instant::now();
    loop {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT stock_total FROM deals WHERE deployment_id = $1 AND id = $2",
        )
        .bind(deployment)
        .bind(deal)
        .fetch_optional(&mut *conn)
        .await
        .expect("deals");
        let found = found.map(|units| units as u64);
        assert!(
            found <= Some(total),
            "the deal has {found:?} units, past {total}"
        );
        if found == Some(total) {
            return;
        }
        assert!(
            started.elapsed() < BOOKS_WAIT,
            "the deal's row never reached {total} units: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the node's `/metrics` says `entries` books entries wait.
pub async fn wait_for_backlog(node: &Node, entries: u64) {
    let series = format!("flashsale_order_sink_lag_records {entries}\n");
    let started = Instant::now();
    loop {
        let metrics = node.get("/metrics", None).await.ok(200);
        let text = metrics.as_str().unwrap_or_default();
        if text.contains(&series) {
            return;
        }
        assert!(
            started.elapsed() < BOOKS_WAIT,
            "the backlog never reached {entries}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_redis_write_every_order_to_postgres_once() {
    let Some((url, database)) = redis_and_postgres() else {
        return;
    };
    let _serial = crate::node::serial().await;
    three_nodes_write_every_order_once(Target::Single(url), &database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_cluster_write_every_order_to_postgres_once() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    let Some(database) = flashsale_testkit::postgres_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    three_nodes_write_every_order_once(Target::Cluster(urls), &database).await;
}

/// A node that read books entries and died for good (here a consumer
/// `ghost` that reads every entry and never acknowledges one): a live node
/// claims them once idle past its bound and they reach Postgres; nothing
/// stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_dead_node_held_are_claimed_and_reach_postgres() {
    const SHOPPERS: u32 = 40;
    let Some((url, database)) = redis_and_postgres() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 8);
    let seller = deployment.node();
    let merchant = seller.merchant("Ghost").await;
    let deal = seller.deal(&merchant, u64::from(SHOPPERS), 1).await;
    let shoppers = seller.shoppers(SHOPPERS, "100.00").await;
    for (index, (_, token)) in shoppers.iter().enumerate() {
        let answer = seller.buy(token, &deal, 1, &format!("ghost-{index}")).await;
        answer.expect("an answer").ok(201);
    }
    let streams: Vec<String> = (0..deployment.shards)
        .map(|shard| format!("{}:{{s:{shard}}}:books", deployment.namespace))
        .chain([deal_stream(&deployment, &deal)])
        .collect();
    let cli = |args: &[&str]| redis_cli(&deployment, args);
    for stream in &streams {
        cli(&["XGROUP", "CREATE", stream, "books", "0", "MKSTREAM"]);
        cli(&[
            "XREADGROUP",
            "GROUP",
            "books",
            "ghost",
            "COUNT",
            "10000",
            "STREAMS",
            stream,
            ">",
        ]);
    }
    let pending = |streams: &[String]| pending_entries(&deployment, streams);
    // Orders, credits and the deal: all held by the ghost.
    assert_eq!(pending(&streams), u64::from(SHOPPERS) * 2 + 1);

    let _sink = deployment.node_with(&["--database-url", &database]);
    let id = deployment_id(&deployment);
    let mut conn = connect(&database).await;
    wait_for_orders(&mut conn, &id, SHOPPERS as usize).await;
    let started = Instant::now();
    while pending(&streams) > 0 {
        assert!(started.elapsed() < BOOKS_WAIT, "entries stay pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deals WHERE deployment_id = $1 AND id = $2")
            .bind(&id)
            .bind(&deal)
            .fetch_one(&mut conn)
            .await
            .expect("deals");
    assert_eq!(deals, 1);
}

/// A TCP proxy to Postgres that the test can cut: while closed it refuses
/// new connections and drops the open ones, as a Postgres gone down would.
struct PostgresProxy {
    url: String,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl PostgresProxy {
    /// A proxy to the Postgres of `database_url`; the URL to reach it by.
    async fn start(database_url: &str) -> PostgresProxy {
        let (head, rest) = database_url
            .split_once('@')
            .expect("user@host in DATABASE_URL");
        let (upstream, database) = rest.split_once('/').expect("a database in DATABASE_URL");
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let port = listener.local_addr().expect("an address").port();
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (open, links) = (open.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let upstream = upstream.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().expect("links").push(link);
                }
            })
        };
        PostgresProxy {
            url: format!("{head}@127.0.0.1:{port}/{database}"),
            open,
            links,
            accept,
        }
    }

    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for PostgresProxy {
    fn drop(&mut self) {
        self.close();
        self.accept.abort();
    }
}

/// Regression: the sink's counters appeared in `/metrics` only after
/// their first increment. A Redis-mode node (a process of its own) with
/// the books sink lists both at 0, with their help, before any request,
/// as one node does (`tests/postgres/metrics.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_books_sink_lists_its_counters_at_zero_from_the_start() {
    let Some((url, database)) = redis_and_postgres() else {
        return;
    };
    let deployment = Deployment::new(Target::Single(url), 8);
    let node = deployment.node_with(&["--database-url", &database]);
    let metrics = node.get("/metrics", None).await.ok(200);
    let text = metrics.as_str().unwrap_or_default();
    for name in [
        "flashsale_order_sink_set_aside_total",
        "flashsale_order_sink_conflicts_total",
    ] {
        assert!(text.contains(&format!("\n{name} 0\n")), "{name}:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
    }
}

/// Postgres down: sales go on while the backlog grows, `/metrics` and
/// `/readyz` show it, past `--books-backlog-max` buys answer 503
/// unavailable (nothing changed: the same key later gets one order), and
/// when Postgres returns the backlog drains and sales resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_the_backlog_is_bounded_and_drains_when_it_returns() {
    const SHOPPERS: u32 = 200;
    const BACKLOG_MAX: u32 = 80;
    let Some((url, database)) = redis_and_postgres() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let proxy = PostgresProxy::start(&database).await;
    let deployment = Deployment::new(Target::Single(url), 8);
    let node = deployment.node_with(&[
        "--database-url",
        &proxy.url,
        "--books-backlog-max",
        &BACKLOG_MAX.to_string(),
    ]);
    let merchant = node.merchant("Down").await;
    let deal = node.deal(&merchant, u64::from(SHOPPERS), 1).await;
    let shoppers = node.shoppers(SHOPPERS, "100.00").await;
    // The deal and the credits reach Postgres and are trimmed from the
    // streams (each keeps its last entry at most).
    let id = deployment_id(&deployment);
    let mut conn = connect(&database).await;
    wait_for_deal_total(&mut conn, &id, &deal, u64::from(SHOPPERS)).await;
    let started = Instant::now();
    loop {
        let length: u64 = (0..deployment.shards)
            .map(|shard| {
                let stream = format!("{}:{{s:{shard}}}:books", deployment.namespace);
                redis_cli(&deployment, &["XLEN", &stream])
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum();
        if length <= u64::from(deployment.shards) {
            break;
        }
        assert!(
            started.elapsed() < BOOKS_WAIT,
            "the streams are never trimmed: {length}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.close();
    let mut sold = Vec::new();
    let mut refused = Vec::new();
    let mut first_buyer = None;
    for (index, (_, token)) in shoppers.iter().enumerate() {
        let key = format!("down-{index}");
        let answer = node.buy(token, &deal, 1, &key).await.expect("an answer");
        match answer.status {
            201 => {
                first_buyer.get_or_insert(index);
                sold.push(answer.body["id"].as_str().unwrap_or_default().to_owned());
            }
            503 => {
                assert_eq!(answer.code(), "unavailable", "{:?}", answer.body);
                refused.push((index, key));
            }
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    assert!(!sold.is_empty(), "sales go on while Postgres is down");
    assert!(
        sold.len() <= BACKLOG_MAX as usize,
        "{} orders waited past the bound of {BACKLOG_MAX}",
        sold.len()
    );
    assert!(!refused.is_empty(), "past the bound, buys answer 503");
    let metrics = node.get("/metrics", None).await.ok(200);
    let waiting = format!("flashsale_order_sink_lag_records {}\n", sold.len());
    let started = Instant::now();
    let mut metrics = metrics.as_str().unwrap_or_default().to_owned();
    while !metrics.contains(&waiting) {
        assert!(
            started.elapsed() < BOOKS_WAIT,
            "no backlog of {}: {metrics}",
            sold.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = node.get("/metrics", None).await.ok(200);
        metrics = answer.as_str().unwrap_or_default().to_owned();
    }
    // Not confirmed while Postgres is down.
    let first = format!("/v1/orders/{}", sold[0]);
    let buyer = &shoppers[first_buyer.expect("a first order")].1;
    assert_eq!(
        node.get(&first, Some(buyer)).await.ok(200)["in_books"],
        false
    );
    let ready = node.get("/readyz", None).await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    let reason = ready.body["error"]["message"].as_str().unwrap_or_default();
    assert!(reason.contains("wait for Postgres"), "{reason}");

    proxy.reopen();
    wait_for_backlog(&node, 0).await;
    // Sales resume: each refused key, retried (past the bound again while
    // the sink trims, each second), gets its one order.
    let started = Instant::now();
    for (index, key) in &refused {
        loop {
            let answer = node
                .buy(&shoppers[*index].1, &deal, 1, key)
                .await
                .expect("an answer");
            if answer.status == 503 && started.elapsed() < BOOKS_WAIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            sold.push(answer.ok(201)["id"].as_str().unwrap_or_default().to_owned());
            break;
        }
    }
    assert_eq!(
        sold.len(),
        SHOPPERS as usize,
        "every buy sold once in the end"
    );
    wait_for_orders(&mut conn, &id, sold.len()).await;
    let books = orders_in_postgres(&mut conn, &id).await;
    assert_eq!(books.len(), sold.len());
    assert!(sold.iter().all(|order| books.contains_key(order)));
    // Confirmed now.
    assert_eq!(
        node.get(&first, Some(buyer)).await.ok(200)["in_books"],
        true
    );
}

/// `flashsale audit` of a namespace no node has served (a typo) cannot
/// check and says so (exit 2), instead of passing as a clean audit of
/// nothing; of a served one with another `--redis-shards`, it cannot check
/// either, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_an_unserved_namespace_or_other_shards_fails() {
    let (Some(url), Some(database)) = (
        flashsale_testkit::redis_url(),
        flashsale_testkit::postgres_url(),
    ) else {
        return;
    };
    let typo = Deployment::new(Target::Single(url.clone()), 64);
    let (code, report) = audit(&typo, &database, false);
    assert_eq!(code, AUDIT_CANNOT_CHECK, "{report}");
    assert!(report.contains("no deployment"), "{report}");
    // The audit only reads: it leaves no key in the namespace it read.
    let pattern = format!("{}:*", typo.namespace);
    let keys = typo.target.run_cli(&["--scan", "--pattern", &pattern]);
    assert_eq!(keys.trim(), "", "the audit wrote into Redis");
    let served = Deployment::new(Target::Single(url), 64);
    let node = served.node_with(&["--database-url", &database]);
    node.merchant("Audited").await;
    let mut other = Deployment::new(served.target.clone(), 16);
    other.namespace = served.namespace.clone();
    let (code, report) = audit(&other, &database, false);
    assert_eq!(code, AUDIT_CANNOT_CHECK, "{report}");
    assert!(report.contains("--redis-shards"), "{report}");
    let (code, report) = audit(&served, &database, false);
    assert_eq!(code, AUDIT_HOLDS, "{report}");
}
