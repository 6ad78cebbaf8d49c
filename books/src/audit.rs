//! `flashsale audit`: checks a Redis-mode deployment's invariants
//! (ARCHITECTURE.md, "Invariants") against Redis and, with `--database-url`, its books in
//! Postgres, and reports every violation it finds.
//!
//! Per shard, from one atomic read (the Functions library's `audit` step), so these
//! hold even while sales go on: every wallet has `credited = available +
//! held + spent`, each ≥ 0, and `spent` = the sum of its shopper's orders;
//! per deal, the shard's sold units = its orders' units, its held units =
//! its active holds' units, its bucket ≥ 0. Every order in Postgres is in
//! Redis with the same content.
//!
//! Only once sales are quiet (without `--in-flight`), because they sum
//! numbers read from many slots one after another: per deal, `pool +
//! buckets + held + sold + units in flight between slots = total`; the
//! orders in Postgres are exactly Redis' orders; the debits in Postgres sum
//! to the wallets' `spent`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use flashsale_engine::{HoldStatus, Order};
use sqlx::{Connection, PgConnection};

use crate::error::OrderSinkError as Error;
use flashsale_redis::{RedisArgs, RedisSettings, RedisStore};

/// Waits for a Redis reply or a connection, at most.
const AUDIT_REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// `flashsale audit`'s flags. The Redis ones are `serve`'s
/// ([`RedisArgs`]: the same names, variables and checks), with help that
/// says what each does for an audit rather than for a node.
#[derive(Debug, Clone, clap::Args)]
#[command(
    mut_arg("redis_url", |arg| arg.help(
        "The Redis of the deployment to audit (`redis://host:port`), as its nodes \
         were given it; this or --redis-cluster is required. The audit only reads"
    )),
    mut_arg("redis_cluster", |arg| arg.help(
        "The deployment's Redis Cluster to audit instead of --redis-url: its seed \
         addresses, comma-separated (`redis://h1:p1,redis://h2:p2`)"
    )),
    mut_arg("redis_namespace", |arg| arg.help(
        "The deployment's key prefix, as its nodes were given it; one that no node \
         has served (a typo) is an error, not a clean audit of nothing"
    )),
    mut_arg("redis_shards", |arg| arg.help(
        "The deployment's virtual shard count, as its nodes were given it (a power \
         of two from 1 to 1024); another count is an error naming the nodes' one"
    )),
)]
pub struct AuditArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// The deployment's books in Postgres: also check that every order
    /// there is in Redis with the same content and, with sales quiet, that
    /// they are exactly Redis' orders and their debits sum to the wallets'
    /// `spent`. Unset: Redis only.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = crate::parse_database_url)]
    pub database_url: Option<String>,

    /// Sales may be under way: check only what holds mid-flight (each
    /// shard's wallets, units and orders; Postgres' orders within Redis').
    /// Without it sales must be quiet: each deal's units are also summed
    /// over every shard and the pool, and Postgres must match Redis.
    #[arg(long)]
    pub in_flight: bool,
}

/// What the audit found: the violations, one readable line each, and what
/// it looked at.
#[derive(Debug, Default)]
pub struct AuditReport {
    pub violations: Vec<String>,
    pub orders_in_redis: usize,
    pub orders_in_postgres: Option<usize>,
    pub wallets: usize,
    pub deals: usize,
}

impl AuditReport {
    /// The report for people: what was checked, then each violation.
    pub fn text(&self) -> String {
        let mut text = format!(
            "audited {} deal(s), {} wallet(s), {} order(s) in Redis",
            self.deals, self.wallets, self.orders_in_redis
        );
        if let Some(books) = self.orders_in_postgres {
            let _ = write!(text, ", {books} in Postgres");
        }
        if self.violations.is_empty() {
            text.push_str(": every invariant holds\n");
        } else {
            let _ = writeln!(text, ": {} violation(s)", self.violations.len());
            for violation in &self.violations {
                let _ = writeln!(text, "  - {violation}");
            }
        }
        text
    }
}

/// Runs the audit. Errors: the flags (no Redis given), Redis or Postgres
/// unreachable; a violation is not an error but a line of the report.
pub async fn run(args: AuditArgs) -> Result<AuditReport, Error> {
    let Some((target, namespace, shards)) = args.redis.deployment()? else {
        return Err(Error::Config(
            "audit needs --redis-url or --redis-cluster".into(),
        ));
    };
    // Connected without starting: a node's start sets the deployment's
    // epoch on an empty namespace, and the audit writes nothing.
    let store = RedisStore::connect_unstarted(&RedisSettings {
        target,
        namespace,
        shards,
        response_timeout: AUDIT_REDIS_TIMEOUT,
        connect_timeout: AUDIT_REDIS_TIMEOUT,
        // The auditor only reads: a Redis that persists nothing can be audited.
        allow_volatile: true,
        books_backlog_per_stream_max: 0,
        // The auditor sends no `reserve` call.
        reserve_calls_in_flight: flashsale_redis::RESERVE_CALLS_IN_FLIGHT_DEFAULT,
        clock: None,
        replica_acks: None,
    })
    .await?;
    // A namespace no node has served (a typo) must not pass as a clean
    // audit of nothing; one served with another shard count would be read
    // on the wrong shards.
    match store.layout().await? {
        None => {
            return Err(Error::Config(format!(
                "no deployment in this namespace ({}): no node has served it; \
                 check --redis-namespace",
                args.redis.redis_namespace
            )));
        }
        Some(layout) if !layout.starts_with(&format!("shards={shards} ")) => {
            return Err(Error::Config(format!(
                "the deployment's nodes run with {layout}; audit it with the same --redis-shards"
            )));
        }
        Some(_) => {}
    }
    // Postgres first: what is there then is in Redis by the time Redis is
    // read, so "Postgres within Redis" holds mid-flight.
    let books = match &args.database_url {
        Some(url) => {
            let deployment = store.known_deployment_id().await?.unwrap_or_default();
            Some(postgres_orders(url, &deployment).await?)
        }
        None => None,
    };
    let snapshot = store.audit_snapshot().await?;
    let mut report = AuditReport {
        deals: snapshot.deals.len(),
        ..AuditReport::default()
    };
    let violations = &mut report.violations;
    let mut orders: HashMap<String, &Order> = HashMap::new();
    let mut spent_total: i64 = 0;
    // Per deal: units in buckets, held and sold over every shard.
    let mut units: HashMap<String, [i64; 3]> = HashMap::new();
    for (shard, snap) in snapshot.shards.iter().enumerate() {
        let mut sold: HashMap<String, i64> = HashMap::new();
        let mut spent: HashMap<u64, i64> = HashMap::new();
        for order in &snap.orders {
            *sold.entry(order.deal.0.to_string()).or_default() += i64::from(order.quantity);
            *spent.entry(order.shopper.0).or_default() += order.amount.fen();
            if orders.insert(order.id.to_string(), order).is_some() {
                violations.push(format!("order {} is in Redis twice", order.id));
            }
        }
        let mut held: HashMap<String, i64> = HashMap::new();
        for hold in snap
            .holds
            .iter()
            .filter(|hold| hold.status == HoldStatus::Active)
        {
            *held.entry(hold.deal.0.to_string()).or_default() += i64::from(hold.quantity);
        }
        for (field, value) in &snap.stock {
            let Some((part, deal)) = field.split_once(':') else {
                continue;
            };
            let sums = units.entry(deal.to_owned()).or_default();
            let (expected, slot) = match part {
                "b" => (None, 0),
                "h" => (Some(held.get(deal).copied().unwrap_or(0)), 1),
                "s" => (Some(sold.get(deal).copied().unwrap_or(0)), 2),
                _ => continue,
            };
            sums[slot] += value;
            if *value < 0 {
                violations.push(format!("shard {shard}: {field} is {value}, below zero"));
            }
            if let Some(expected) = expected.filter(|expected| expected != value) {
                violations.push(format!(
                    "shard {shard}: {field} is {value}, its orders/holds say {expected}"
                ));
            }
        }
        for (deal, quantity) in &sold {
            if !snap.stock.contains_key(&format!("s:{deal}")) {
                violations.push(format!(
                    "shard {shard}: deal {deal} has {quantity} unit(s) in orders and no sold count"
                ));
            }
        }
        for (shopper, [credited, available, held, spent_fen]) in &snap.wallets {
            report.wallets += 1;
            spent_total += spent_fen;
            if [credited, available, held, spent_fen]
                .iter()
                .any(|fen| **fen < 0)
                || available + held + spent_fen != *credited
            {
                violations.push(format!(
                    "wallet of {shopper}: credited {credited} != available {available} + held {held} + spent {spent_fen} (fen)"
                ));
            }
            let ordered = spent.get(&shopper.0).copied().unwrap_or(0);
            if ordered != *spent_fen {
                violations.push(format!(
                    "wallet of {shopper}: spent {spent_fen} fen, its orders sum to {ordered}"
                ));
            }
        }
    }
    report.orders_in_redis = orders.len();
    if !args.in_flight {
        for deal in &snapshot.deals {
            let [buckets, held, sold] = units
                .get(&deal.id.0.to_string())
                .copied()
                .unwrap_or_default();
            let counted = deal.pool + buckets + held + sold + deal.in_flight;
            if counted != deal.total || deal.pool < 0 {
                violations.push(format!(
                    "deal {}: pool {} + buckets {buckets} + held {held} + sold {sold} + in flight {} = {counted}, total {}",
                    deal.id, deal.pool, deal.in_flight, deal.total
                ));
            }
        }
    }
    if let Some(books) = books {
        report.orders_in_postgres = Some(books.orders.len());
        let violations = &mut report.violations;
        for (id, row) in &books.orders {
            match orders.get(id) {
                None => violations.push(format!("order {id} is in Postgres, not in Redis")),
                Some(order) => {
                    let ours = (
                        order.deal.to_string(),
                        order.shopper.to_string(),
                        i64::from(order.quantity),
                        order.amount.to_string(),
                        order.late,
                    );
                    if &ours != row {
                        violations.push(format!("order {id}: Redis {ours:?}, Postgres {row:?}"));
                    }
                }
            }
        }
        if !args.in_flight {
            for id in orders.keys().filter(|id| !books.orders.contains_key(*id)) {
                violations.push(format!("order {id} is in Redis, not in Postgres"));
            }
            if books.debits_fen != spent_total {
                violations.push(format!(
                    "Postgres' debits sum to {} fen, the wallets' spent to {spent_total}",
                    books.debits_fen
                ));
            }
        }
    }
    Ok(report)
}

/// An order row: deal, shopper, quantity, amount (text), late.
type OrderRow = (String, String, i64, String, bool);

/// The deployment's books in Postgres.
struct Books {
    orders: HashMap<String, OrderRow>,
    debits_fen: i64,
}

async fn postgres_orders(url: &str, deployment: &str) -> Result<Books, Error> {
    let postgres = Error::Database;
    let mut conn = PgConnection::connect(url).await.map_err(postgres)?;
    // A database no sink has written yet has no tables: no books at all.
    let made: bool = sqlx::query_scalar(
        "SELECT to_regclass('orders') IS NOT NULL AND to_regclass('wallet_movements') IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(postgres)?;
    if !made {
        return Ok(Books {
            orders: HashMap::new(),
            debits_fen: 0,
        });
    }
    let rows: Vec<(String, String, String, i64, String, bool)> = sqlx::query_as(
        "SELECT id, deal_id, shopper_id, quantity, amount::text, late FROM orders \
         WHERE deployment_id = $1",
    )
    .bind(deployment)
    .fetch_all(&mut conn)
    .await
    .map_err(postgres)?;
    let debits_fen: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount * 100), 0)::int8 FROM wallet_movements \
         WHERE deployment_id = $1 AND kind = 'debit'",
    )
    .bind(deployment)
    .fetch_one(&mut conn)
    .await
    .map_err(postgres)?;
    Ok(Books {
        orders: rows
            .into_iter()
            .map(|(id, deal, shopper, quantity, amount, late)| {
                (id, (deal, shopper, quantity, amount, late))
            })
            .collect(),
        debits_fen,
    })
}
