//! Redis mode's books when the entries of one deal's stream reach Postgres
//! out of order: the consumer group spreads them over the nodes and a dead
//! node's entries are claimed 5 s later (`BOOKS_CLAIM_IDLE`), so a deal change
//! can arrive after a newer one, and a change or a restock before the deal's
//! creation. Here a consumer `ghost` (a node that read entries and died)
//! holds chosen entries while a live node's sink writes the others, then
//! that node claims them; the deal's row must end as the deal is. And a
//! change and a restock of a deal whose creation Postgres refused must not
//! wait for it forever.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::books::{
    connect, deal_stream, deployment_id, pending_entries, redis_and_postgres, redis_cli,
};
use crate::node::{Deployment, Node, Target};

/// How long the entries may take to reach Postgres: the ghost's are
/// claimed once idle for 5 s, a deferred entry again 5 s later.
const SETTLE_WAIT: Duration = Duration::from_secs(40);

/// A deal's row in Postgres: `ends_at` (RFC 3339, UTC, to the second),
/// `paused`, `stock_total`.
type DealRow = (String, bool, i64);

/// A deployment on `REDIS_URL` with one node that writes no books (the
/// seller), its merchant and a 10-unit deal ending 2099-01-01.
struct Sale {
    deployment: Deployment,
    seller: Node,
    merchant: String,
    deal: String,
    /// The deal's books stream.
    stream: String,
    /// `DATABASE_URL`.
    database: String,
}

impl Sale {
    /// The sale of `merchant`, its deal titled `title`; `None` without
    /// `REDIS_URL` and `DATABASE_URL` (the test is skipped).
    async fn open(merchant: &str, title: &str) -> Option<Sale> {
        let (url, database) = redis_and_postgres()?;
        let deployment = Deployment::new(Target::Single(url), 8);
        let seller = deployment.node();
        let merchant = seller.merchant(merchant).await;
        let fields = json!({ "title": title, "stock": 10, "per_user_limit": 1 });
        let deal = seller.deal_with(&merchant, fields).await;
        let stream = deal_stream(&deployment, &deal);
        Some(Sale {
            deployment,
            seller,
            merchant,
            deal,
            stream,
            database,
        })
    }

    /// Starts a node that writes the books.
    fn sink(&self) -> Node {
        self.deployment
            .node_with(&["--database-url", &self.database])
    }

    /// `PATCH /v1/deals/{deal}` with `fields`, as its merchant.
    async fn patch(&self, fields: Value) {
        self.seller
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/deals/{}", self.deal),
                Some(&self.merchant),
                Some(fields),
                None,
            )
            .await
            .ok(200);
    }

    /// The ghost reads the next `count` entries of the deal's stream and
    /// never acknowledges them (the group is made first if need be).
    fn ghost_reads(&self, count: u32) {
        let (deployment, stream) = (&self.deployment, self.stream.as_str());
        redis_cli(
            deployment,
            &["XGROUP", "CREATE", stream, "books", "0", "MKSTREAM"],
        );
        let count = count.to_string();
        let read = [
            "XREADGROUP",
            "GROUP",
            "books",
            "ghost",
            "COUNT",
            &count,
            "STREAMS",
            stream,
            ">",
        ];
        redis_cli(deployment, &read);
    }

    /// Waits until no entry of the deal's stream is pending (every one
    /// delivered is acknowledged: in Postgres) and the deal has a row in
    /// Postgres under the deployment `id`, then returns that row.
    async fn settled_row(&self, conn: &mut PgConnection, id: &str) -> DealRow {
        let started = Instant::now();
        loop {
            let pending = pending_entries(&self.deployment, std::slice::from_ref(&self.stream));
            let row: Option<DealRow> = sqlx::query_as(
                "SELECT to_char(ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                 paused, stock_total FROM deals WHERE deployment_id = $1 AND id = $2",
            )
            .bind(id)
            .bind(&self.deal)
            .fetch_optional(&mut *conn)
            .await
            .expect("deals");
            if let (0, Some(row)) = (pending, &row) {
                return row.clone();
            }
            assert!(
                started.elapsed() < SETTLE_WAIT,
                "{pending} entries stay pending, the row is {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Bug: the sink's UPDATE took whichever change came last, so an older
/// change claimed from a dead node after a newer one reverted the row.
/// Here the ghost holds the first change; a live node writes the second,
/// then claims the first: the row keeps the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_keep_the_newer_deal_change_when_an_older_one_arrives_later() {
    let _serial = crate::node::serial().await;
    let Some(sale) = Sale::open("Order", "Phone").await else {
        return;
    };
    // The creation reaches Postgres, then that sink is gone.
    let mut first = sale.sink();
    let id = deployment_id(&sale.deployment);
    let mut conn = connect(&sale.database).await;
    let created = sale.settled_row(&mut conn, &id).await;
    assert_eq!(created, ("2099-01-01T00:00:00Z".to_owned(), false, 10));
    first.kill();

    sale.patch(json!({ "ends_at": "2098-01-01T00:00:00Z", "paused": true }))
        .await;
    sale.patch(json!({ "ends_at": "2097-06-01T00:00:00Z", "paused": false }))
        .await;
    sale.ghost_reads(1); // the older change

    let _sink = sale.sink();
    let row = sale.settled_row(&mut conn, &id).await;
    assert_eq!(row, ("2097-06-01T00:00:00Z".to_owned(), false, 10));
}

/// Bug: a change or a restock read before its deal's creation updated no
/// row, yet the restock was recorded as applied and both were
/// acknowledged, so the row, created later, kept the initial stock and
/// end. Here the ghost holds the creation; a live node reads the change
/// and the restock first, then claims the creation: the row has both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_apply_a_change_and_a_restock_read_before_their_deal() {
    let _serial = crate::node::serial().await;
    let Some(sale) = Sale::open("Early", "Phone").await else {
        return;
    };
    sale.patch(json!({ "ends_at": "2098-01-01T00:00:00Z", "paused": true }))
        .await;
    sale.patch(json!({ "add_stock": 5 })).await;
    sale.ghost_reads(1); // the creation

    let _sink = sale.sink();
    let id = deployment_id(&sale.deployment);
    let mut conn = connect(&sale.database).await;
    let row = sale.settled_row(&mut conn, &id).await;
    assert_eq!(row, ("2098-01-01T00:00:00Z".to_owned(), true, 15));
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_sink_stream_entries WHERE deployment_id = $1 AND stream = $2",
    )
    .bind(&id)
    .bind(&sale.stream)
    .fetch_one(&mut conn)
    .await
    .expect("order_sink_stream_entries");
    assert_eq!(recorded, 1, "the restock is recorded once");
}

/// A change and a restock of a deal whose creation Postgres refused (set
/// aside) would otherwise wait for it forever: once no earlier entry of the
/// stream is pending and the deal still has no row, they are set aside
/// too, and nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_set_aside_a_change_and_a_restock_whose_deal_was_set_aside() {
    const TITLE: &str = "Refused by the books";
    const RULE: &str = "books_order_refused_title";
    let _serial = crate::node::serial().await;
    let Some(sale) = Sale::open("Refused", TITLE).await else {
        return;
    };
    // A rule the engine does not know, so Postgres refuses the creation's
    // row for its content (as it would a value it cannot store).
    let mut conn = connect(&sale.database).await;
    flashsale_gateway::order_sink::MIGRATOR
        .run(&mut conn)
        .await
        .expect("the books' migrations");
    let rule = |sql: String| sqlx::raw_sql(sqlx::AssertSqlSafe(sql));
    rule(format!(
        "ALTER TABLE deals DROP CONSTRAINT IF EXISTS {RULE}; \
         ALTER TABLE deals ADD CONSTRAINT {RULE} CHECK (title <> '{TITLE}') NOT VALID"
    ))
    .execute(&mut conn)
    .await
    .expect("the rule");
    sale.patch(json!({ "ends_at": "2098-01-01T00:00:00Z", "paused": true }))
        .await;
    sale.patch(json!({ "add_stock": 5 })).await;

    let _sink = sale.sink();
    let id = deployment_id(&sale.deployment);
    let started = Instant::now();
    let reasons = loop {
        let pending = pending_entries(&sale.deployment, std::slice::from_ref(&sale.stream));
        let reasons: Vec<String> = sqlx::query_scalar(
            "SELECT reason FROM order_sink_set_aside WHERE journal_id = $1 ORDER BY position",
        )
        .bind(&sale.stream)
        .fetch_all(&mut conn)
        .await
        .expect("order_sink_set_aside");
        if pending == 0 && reasons.len() == 3 {
            break reasons;
        }
        assert!(
            started.elapsed() < SETTLE_WAIT,
            "{pending} entries stay pending, set aside: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    rule(format!("ALTER TABLE deals DROP CONSTRAINT {RULE}"))
        .execute(&mut conn)
        .await
        .expect("the rule dropped");
    assert!(reasons[0].contains(RULE), "{reasons:?}");
    for reason in &reasons[1..] {
        assert!(
            reason.contains("its deal is not in Postgres"),
            "{reasons:?}"
        );
    }
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM deals WHERE deployment_id = $1) \
         + (SELECT count(*) FROM order_sink_stream_entries WHERE deployment_id = $1)",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await
    .expect("deals");
    assert_eq!(rows, 0, "no row of the deal, no restock recorded");
}
