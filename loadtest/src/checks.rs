//! The invariant checks run after the load, against the server's own
//! account of what happened.
//!
//! The client trusts nothing it was told during the run: it reads the deal,
//! every order of the deal (as its merchant) and every scenario shopper's
//! wallet, and compares them with each other and with the `201`s it saw.
//! With several targets it reads each one's [`View`]: every check must
//! pass on every target ([`on_every_node`]), and all targets must show
//! the same deal, orders and wallets ([`agreement`]). [`evaluate`] and
//! [`agreement`] are pure, so each rule is tested on hand-made evidence.
//! With `--database-url`, [`postgres_check`] also looks for every
//! acknowledged order in the order sink's table.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use rust_decimal::Decimal;

use crate::api::{Deal, Order, Shopper, Wallet};
use crate::error::LoadtestError;
use crate::recorder::Acknowledged;
use crate::report::{Check, amount, grouped};

/// How long the Postgres check waits for the sink to catch up: the books
/// follow within seconds (docs/durability.md, "The books (Postgres)").
pub const POSTGRES_SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause between two looks at Postgres while it catches up.
pub const POSTGRES_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Most ids named in a failed check's detail.
pub const DETAIL_IDS_MAX: usize = 5;

/// What the server says, next to what the client saw.
#[derive(Debug)]
pub struct Evidence<'a> {
    /// The deal, read after the run.
    pub deal: &'a Deal,
    /// Every order of the deal, as its merchant lists them.
    pub orders: &'a [Order],
    /// Wallets of every scenario shopper.
    pub wallets: &'a [Wallet],
    pub shoppers: &'a [Shopper],
    /// Every `201` order the client got.
    pub acknowledged: &'a [Acknowledged],
    /// Most orders one shopper can have made: one per tap in a burst;
    /// `None` when the scenario does not bound it (steady).
    pub orders_per_shopper_max: Option<usize>,
}

/// One target's account of the run, read after the load.
#[derive(Debug)]
pub struct View {
    /// The target's URL.
    pub url: String,
    pub deal: Deal,
    /// Every order of the deal, as its merchant lists them there.
    pub orders: Vec<Order>,
    /// Wallets of every scenario shopper, in the shoppers' order.
    pub wallets: Vec<Wallet>,
}

/// Merges the checks [`evaluate`] made of each target's view, given as
/// (URL, checks): a check passes when it passed on every target. Its
/// detail is the first target's when it passed everywhere, else each
/// failing target's, named by URL. One target's checks come back as they
/// are.
pub fn on_every_node(mut evaluated: Vec<(String, Vec<Check>)>) -> Vec<Check> {
    if evaluated.len() <= 1 {
        return evaluated
            .pop()
            .map(|(_, checks)| checks)
            .unwrap_or_default();
    }
    let targets = evaluated.len();
    let Some((_, first)) = evaluated.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|check| {
            let failing: Vec<String> = evaluated
                .iter()
                .filter_map(|(url, checks)| {
                    match checks.iter().find(|other| other.name == check.name) {
                        Some(other) if other.passed => None,
                        Some(other) => Some(format!("{url}: {}", other.detail)),
                        None => Some(format!("{url}: not checked")),
                    }
                })
                .collect();
            if failing.is_empty() {
                Check::new(
                    &check.name,
                    true,
                    format!("{} (each of {targets} targets)", check.detail),
                )
            } else {
                Check::new(&check.name, false, failing.join("; "))
            }
        })
        .collect()
}

/// The deal's numbers as a target shows them.
fn numbers(deal: &Deal) -> (u64, u64, u64, u64) {
    (deal.stock, deal.remaining, deal.held, deal.sold)
}

/// Checks that every target could be read (`unread` says why each one
/// that could not was not) and shows what the first one read shows: the
/// deal's stock, remaining, held and sold, the same orders (id, shopper,
/// quantity, amount) and every wallet's spent. Nodes of one deployment
/// share their state, so after the load any difference is a node serving
/// a view of its own.
pub fn agreement(views: &[View], unread: &[String]) -> Check {
    let Some((first, others)) = views.split_first() else {
        return Check::new("targets agree", false, unread.join("; "));
    };
    let orders = |view: &View| -> BTreeSet<(String, String, u64, Decimal)> {
        view.orders
            .iter()
            .map(|order| {
                let (id, shopper, quantity, amount) = content(order);
                (id.to_owned(), shopper.to_owned(), quantity, amount)
            })
            .collect()
    };
    let first_orders = orders(first);
    let mut differences: Vec<String> = unread.to_vec();
    for view in others {
        let mut differs = Vec::new();
        if numbers(&view.deal) != numbers(&first.deal) {
            let (stock, remaining, held, sold) = numbers(&view.deal);
            differs.push(format!(
                "the deal (stock {}, remaining {}, held {}, sold {})",
                grouped(stock),
                grouped(remaining),
                grouped(held),
                grouped(sold)
            ));
        }
        let view_orders = orders(view);
        if view_orders != first_orders {
            differs.push(format!(
                "the orders ({} of {} the same)",
                grouped(view_orders.intersection(&first_orders).count() as u64),
                grouped(view_orders.len() as u64)
            ));
        }
        let wallets_differing = view
            .wallets
            .iter()
            .zip(&first.wallets)
            .filter(|(a, b)| a.shopper_id != b.shopper_id || a.spent != b.spent)
            .count()
            + view.wallets.len().abs_diff(first.wallets.len());
        if wallets_differing > 0 {
            differs.push(format!("{} wallets", grouped(wallets_differing as u64)));
        }
        if !differs.is_empty() {
            differences.push(format!("{} differs in {}", view.url, differs.join(", ")));
        }
    }
    if differences.is_empty() {
        let (_, _, _, sold) = numbers(&first.deal);
        Check::new(
            "targets agree",
            true,
            format!(
                "{} targets show the same deal (sold {}), the same {} orders and the same {} \
                 wallets",
                views.len(),
                grouped(sold),
                grouped(first_orders.len() as u64),
                grouped(first.wallets.len() as u64)
            ),
        )
    } else {
        Check::new(
            "targets agree",
            false,
            format!("against {}: {}", first.url, differences.join("; ")),
        )
    }
}

fn some_ids<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let shown: Vec<&str> = ids.take(DETAIL_IDS_MAX).collect();
    shown.join(", ")
}

/// Runs every check on the evidence.
pub fn evaluate(evidence: &Evidence<'_>) -> Vec<Check> {
    let deal = evidence.deal;
    let orders = evidence.orders;
    let units_in_orders: u64 = orders.iter().map(|order| order.quantity).sum();
    let amount_in_orders: Decimal = orders.iter().map(|order| order.amount).sum();
    let mut checks = Vec::new();

    checks.push(Check::new(
        "sold within stock",
        deal.sold <= deal.stock && units_in_orders <= deal.stock,
        format!(
            "sold {} and {} units in orders, stock {}",
            grouped(deal.sold),
            grouped(units_in_orders),
            grouped(deal.stock)
        ),
    ));

    let accounted = deal.remaining + deal.held + deal.sold;
    checks.push(Check::new(
        "stock conserved",
        accounted == deal.stock,
        format!(
            "remaining {} + held {} + sold {} = {}, stock {} ({})",
            grouped(deal.remaining),
            grouped(deal.held),
            grouped(deal.sold),
            grouped(accounted),
            grouped(deal.stock),
            deal.status
        ),
    ));

    checks.push(Check::new(
        "sold equals orders",
        deal.sold == units_in_orders,
        format!(
            "deal says {} sold, its {} orders hold {} units",
            grouped(deal.sold),
            grouped(orders.len() as u64),
            grouped(units_in_orders)
        ),
    ));

    let foreign: Vec<&Order> = orders
        .iter()
        .filter(|order| order.deal_id != deal.id)
        .collect();
    let mut ids = HashSet::with_capacity(orders.len());
    let duplicates: Vec<&str> = orders
        .iter()
        .filter(|order| !ids.insert(order.id.as_str()))
        .map(|order| order.id.as_str())
        .collect();
    checks.push(Check::new(
        "orders listed once",
        foreign.is_empty() && duplicates.is_empty(),
        if foreign.is_empty() && duplicates.is_empty() {
            format!(
                "{} distinct orders, all of this deal",
                grouped(orders.len() as u64)
            )
        } else {
            format!(
                "{} listed twice ({}); {} of another deal",
                grouped(duplicates.len() as u64),
                some_ids(duplicates.iter().copied()),
                grouped(foreign.len() as u64)
            )
        },
    ));

    let mut units_by_shopper: HashMap<&str, u64> = HashMap::new();
    let mut orders_by_shopper: HashMap<&str, usize> = HashMap::new();
    for order in orders {
        *units_by_shopper
            .entry(order.shopper_id.as_str())
            .or_default() += order.quantity;
        *orders_by_shopper
            .entry(order.shopper_id.as_str())
            .or_default() += 1;
    }
    let over_limit: Vec<&str> = units_by_shopper
        .iter()
        .filter(|(_, units)| **units > deal.per_user_limit)
        .map(|(shopper, _)| *shopper)
        .collect();
    checks.push(Check::new(
        "per-user limit",
        over_limit.is_empty(),
        if over_limit.is_empty() {
            format!(
                "{} buyers, none over {} units",
                grouped(units_by_shopper.len() as u64),
                grouped(deal.per_user_limit)
            )
        } else {
            format!(
                "{} shoppers over {} units: {}",
                grouped(over_limit.len() as u64),
                grouped(deal.per_user_limit),
                some_ids(over_limit.iter().copied())
            )
        },
    ));

    if let Some(most) = evidence.orders_per_shopper_max {
        let repeated: Vec<&str> = orders_by_shopper
            .iter()
            .filter(|(_, count)| **count > most)
            .map(|(shopper, _)| *shopper)
            .collect();
        checks.push(Check::new(
            "one order per tap",
            repeated.is_empty(),
            if repeated.is_empty() {
                format!(
                    "no shopper has more than {} order(s) for as many tap(s)",
                    grouped(most as u64)
                )
            } else {
                format!(
                    "{} shoppers have more orders than taps (a key bought twice?): {}",
                    grouped(repeated.len() as u64),
                    some_ids(repeated.iter().copied())
                )
            },
        ));
    }

    // Wallets come back in the shoppers' order; each must be its own.
    let spent: Decimal = evidence.wallets.iter().map(|wallet| wallet.spent).sum();
    let misattributed = evidence
        .wallets
        .iter()
        .zip(evidence.shoppers)
        .filter(|(wallet, shopper)| wallet.shopper_id != shopper.id)
        .count();
    let complete = evidence.wallets.len() == evidence.shoppers.len();
    checks.push(Check::new(
        "wallets match orders",
        spent == amount_in_orders && complete && misattributed == 0,
        if complete && misattributed == 0 {
            format!(
                "{} wallets spent {}, orders total {}",
                grouped(evidence.wallets.len() as u64),
                amount(spent),
                amount(amount_in_orders)
            )
        } else {
            format!(
                "{} wallets read for {} shoppers, {} of another shopper; \
                 spent {}, orders total {}",
                grouped(evidence.wallets.len() as u64),
                grouped(evidence.shoppers.len() as u64),
                grouped(misattributed as u64),
                amount(spent),
                amount(amount_in_orders)
            )
        },
    ));

    let owners: HashMap<&str, &str> = orders
        .iter()
        .map(|order| (order.id.as_str(), order.shopper_id.as_str()))
        .collect();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut acknowledged_ids = HashSet::with_capacity(evidence.acknowledged.len());
    for ack in evidence.acknowledged {
        acknowledged_ids.insert(ack.order_id.as_str());
        let expected = evidence.shoppers.get(ack.shopper).map(|s| s.id.as_str());
        match owners.get(ack.order_id.as_str()) {
            None => missing.push(ack.order_id.as_str()),
            Some(owner) if Some(*owner) != expected => mismatched.push(ack.order_id.as_str()),
            Some(_) => {}
        }
    }
    checks.push(Check::new(
        "acknowledged orders kept",
        missing.is_empty() && mismatched.is_empty(),
        if missing.is_empty() && mismatched.is_empty() {
            format!(
                "all {} orders answered 201 are listed",
                grouped(acknowledged_ids.len() as u64)
            )
        } else {
            format!(
                "{} answered 201 but not listed ({}); {} listed for another shopper",
                grouped(missing.len() as u64),
                some_ids(missing.iter().copied()),
                grouped(mismatched.len() as u64)
            )
        },
    ));
    checks
}

/// Checks that every acknowledged order reached Postgres with the content
/// the server gave it (shopper, quantity, amount), waiting up to
/// [`POSTGRES_SETTLE_TIMEOUT`] for the sink to catch up. A row with the
/// order's id but other content (another deployment's order, or one
/// changed since) does not count: ids alone would pass a sink that
/// dropped the order.
pub async fn postgres_check(
    database_url: &str,
    deal_id: &str,
    acknowledged: &[Acknowledged],
    orders: &[Order],
) -> Result<Check, LoadtestError> {
    postgres_check_within(
        database_url,
        deal_id,
        acknowledged,
        orders,
        POSTGRES_SETTLE_TIMEOUT,
    )
    .await
}

/// What of an order Postgres must hold: id, shopper, quantity, amount.
fn content(order: &Order) -> (&str, &str, u64, Decimal) {
    (
        &order.id,
        &order.shopper_id,
        order.quantity,
        order.amount.normalize(),
    )
}

async fn postgres_check_within(
    database_url: &str,
    deal_id: &str,
    acknowledged: &[Acknowledged],
    orders: &[Order],
    settle: Duration,
) -> Result<Check, LoadtestError> {
    let served: HashMap<&str, &Order> = orders
        .iter()
        .map(|order| (order.id.as_str(), order))
        .collect();
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let stored = postgres_orders(database_url, deal_id).await?;
        let stored_ids: HashSet<&str> = stored.iter().map(|order| order.id.as_str()).collect();
        let stored_content: HashSet<_> = stored.iter().map(content).collect();
        let mut missing = Vec::new();
        let mut differing = Vec::new();
        for ack in acknowledged {
            let id = ack.order_id.as_str();
            if !stored_ids.contains(id) {
                missing.push(id);
            } else if !served
                .get(id)
                .is_some_and(|order| stored_content.contains(&content(order)))
            {
                differing.push(id);
            }
        }
        let passed = missing.is_empty() && differing.is_empty();
        if passed || tokio::time::Instant::now() >= deadline {
            let detail = if passed {
                format!(
                    "all {} acknowledged orders are in Postgres as the server answered them",
                    grouped(acknowledged.len() as u64)
                )
            } else {
                format!(
                    "of {} acknowledged orders, {} not in Postgres after {settle:?} ({}) and {} \
                     there with other content than the server's ({})",
                    grouped(acknowledged.len() as u64),
                    grouped(missing.len() as u64),
                    some_ids(missing.iter().copied()),
                    grouped(differing.len() as u64),
                    some_ids(differing.iter().copied())
                )
            };
            return Ok(Check::new("orders in Postgres", passed, detail));
        }
        tokio::time::sleep(POSTGRES_POLL_INTERVAL).await;
    }
}

/// A deal's orders in the order sink's table `orders(id, deal_id,
/// shopper_id, quantity, amount, …)`, from every deployment writing it.
#[cfg(feature = "postgres")]
pub async fn postgres_orders(
    database_url: &str,
    deal_id: &str,
) -> Result<Vec<Order>, LoadtestError> {
    use sqlx::Connection as _;
    let database = |error: sqlx::Error| LoadtestError::Database(Box::new(error));
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .map_err(database)?;
    let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
        "SELECT id, deal_id, shopper_id, quantity, amount::text FROM orders WHERE deal_id = $1",
    )
    .bind(deal_id)
    .fetch_all(&mut connection)
    .await
    .map_err(database)?;
    let _ = connection.close().await;
    rows.into_iter()
        .map(|(id, deal_id, shopper_id, quantity, amount)| {
            Ok(Order {
                amount: amount.parse().map_err(|error: rust_decimal::Error| {
                    LoadtestError::Database(
                        format!("order {id}'s amount {amount:?}: {error}").into(),
                    )
                })?,
                quantity: u64::try_from(quantity).unwrap_or_default(),
                id,
                deal_id,
                shopper_id,
            })
        })
        .collect()
}

/// Built without the `postgres` feature: the check cannot run.
#[cfg(not(feature = "postgres"))]
pub async fn postgres_orders(
    _database_url: &str,
    _deal_id: &str,
) -> Result<Vec<Order>, LoadtestError> {
    Err(LoadtestError::Database(
        "flashsale-loadtest was built without the `postgres` feature".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deal(stock: u64, remaining: u64, sold: u64) -> Deal {
        Deal {
            id: "d1".into(),
            stock,
            per_user_limit: 1,
            remaining,
            held: 0,
            sold,
            status: "live".into(),
        }
    }

    fn order(id: &str, shopper: &str) -> Order {
        Order {
            id: id.into(),
            deal_id: "d1".into(),
            shopper_id: shopper.into(),
            quantity: 1,
            amount: Decimal::new(99_900, 2),
        }
    }

    fn shopper(id: &str) -> Shopper {
        Shopper {
            id: id.into(),
            auth: hyper::header::HeaderValue::from_static("Bearer x"),
        }
    }

    fn wallet(id: &str, spent: i64) -> Wallet {
        Wallet {
            shopper_id: id.into(),
            spent: Decimal::new(spent, 2),
        }
    }

    fn ack(id: &str, shopper: usize) -> Acknowledged {
        Acknowledged {
            order_id: id.into(),
            shopper,
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|check| !check.passed)
            .map(|check| check.name.as_str())
            .collect()
    }

    struct Case {
        deal: Deal,
        orders: Vec<Order>,
        wallets: Vec<Wallet>,
        acknowledged: Vec<Acknowledged>,
    }

    fn check(case: &Case) -> Vec<Check> {
        let shoppers = [shopper("s0"), shopper("s1"), shopper("s2")];
        evaluate(&Evidence {
            deal: &case.deal,
            orders: &case.orders,
            wallets: &case.wallets,
            shoppers: &shoppers,
            acknowledged: &case.acknowledged,
            orders_per_shopper_max: Some(1),
        })
    }

    fn healthy() -> Case {
        Case {
            deal: deal(2, 0, 2),
            orders: vec![order("o0", "s0"), order("o1", "s1")],
            wallets: vec![wallet("s0", 99_900), wallet("s1", 99_900), wallet("s2", 0)],
            acknowledged: vec![ack("o0", 0), ack("o1", 1)],
        }
    }

    fn view(url: &str, case: &Case) -> View {
        View {
            url: url.into(),
            deal: case.deal.clone(),
            orders: case.orders.clone(),
            wallets: case.wallets.clone(),
        }
    }

    #[test]
    fn targets_that_show_the_same_agree() {
        let case = healthy();
        let agreed = agreement(&[view("http://a", &case), view("http://b", &case)], &[]);
        assert!(agreed.passed, "{}", agreed.detail);
        assert!(agreed.detail.contains("2 targets"), "{}", agreed.detail);
    }

    #[test]
    fn a_target_with_a_view_of_its_own_disagrees() {
        let case = healthy();
        let mut stale = healthy();
        stale.deal = deal(2, 1, 1);
        stale.orders.pop();
        stale.wallets[1] = wallet("s1", 0);
        let disagreed = agreement(
            &[
                view("http://a", &case),
                view("http://b", &case),
                view("http://c", &stale),
            ],
            &[],
        );
        assert!(!disagreed.passed);
        let detail = &disagreed.detail;
        assert!(detail.contains("http://c differs"), "{detail}");
        assert!(!detail.contains("http://b"), "{detail}");
        for part in ["the deal", "the orders (1 of 1 the same)", "1 wallets"] {
            assert!(detail.contains(part), "{part} in {detail}");
        }
        let unread = ["http://d cannot be read: reading the deal: no answer".to_owned()];
        let one_unread = agreement(&[view("http://a", &case)], &unread);
        assert!(!one_unread.passed);
        assert!(
            one_unread.detail.contains("http://d"),
            "{}",
            one_unread.detail
        );
    }

    #[test]
    fn a_check_passes_only_on_every_target() {
        let good = check(&healthy());
        let mut oversold = healthy();
        oversold.deal = deal(2, 0, 3);
        let bad = check(&oversold);
        let merged = on_every_node(vec![
            ("http://a".into(), good.clone()),
            ("http://b".into(), bad),
        ]);
        assert_eq!(merged.len(), good.len());
        let stock = merged
            .iter()
            .find(|check| check.name == "sold within stock")
            .expect("the check");
        assert!(!stock.passed);
        assert!(stock.detail.starts_with("http://b: "), "{}", stock.detail);
        assert!(!stock.detail.contains("http://a"), "{}", stock.detail);
        let kept = merged
            .iter()
            .find(|check| check.name == "acknowledged orders kept")
            .expect("the check");
        assert!(kept.passed && kept.detail.contains("each of 2 targets"));
        assert_eq!(on_every_node(vec![("http://a".into(), good.clone())]), good);
    }

    #[test]
    fn a_healthy_run_passes_every_check() {
        let checks = check(&healthy());
        assert_eq!(failed(&checks), Vec::<&str>::new(), "{checks:#?}");
        assert_eq!(checks.len(), 8);
    }

    #[test]
    fn an_oversold_deal_fails() {
        let mut case = healthy();
        case.deal = deal(2, 0, 3);
        case.orders.push(order("o2", "s2"));
        case.wallets[2] = wallet("s2", 99_900);
        assert_eq!(
            failed(&check(&case)),
            vec!["sold within stock", "stock conserved"]
        );
    }

    #[test]
    fn a_lost_order_fails() {
        let mut case = healthy();
        case.orders.pop();
        assert_eq!(
            failed(&check(&case)),
            vec![
                "sold equals orders",
                "wallets match orders",
                "acknowledged orders kept"
            ]
        );
    }

    #[test]
    fn a_double_charge_fails() {
        let mut case = healthy();
        case.wallets[0] = wallet("s0", 199_800);
        assert_eq!(failed(&check(&case)), vec!["wallets match orders"]);
    }

    #[test]
    fn two_orders_for_one_tap_fail() {
        let mut case = healthy();
        case.deal = deal(3, 0, 3);
        case.orders.push(order("o2", "s0"));
        case.wallets[0] = wallet("s0", 199_800);
        assert_eq!(
            failed(&check(&case)),
            vec!["per-user limit", "one order per tap"]
        );
    }

    #[test]
    fn an_order_credited_to_the_wrong_shopper_fails() {
        let mut case = healthy();
        case.acknowledged[1] = ack("o1", 2);
        assert_eq!(failed(&check(&case)), vec!["acknowledged orders kept"]);
    }

    /// Against the Postgres of `DATABASE_URL` (skipped without it, see
    /// `flashsale-testkit`), in a schema of its own so that it never meets
    /// the order sink's real table.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_check_finds_stored_orders_and_misses_lost_ones() {
        use sqlx::Connection as _;
        let Some(base) = flashsale_testkit::postgres_url() else {
            return;
        };
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("DATABASE_URL is set, so Postgres must be reachable");
        let schema = format!("loadtest_check_{}", crate::spawn::random_hex(4));
        for statement in [
            format!("CREATE SCHEMA {schema}"),
            format!(
                "CREATE TABLE {schema}.orders (id text PRIMARY KEY, deal_id text NOT NULL, \
                 shopper_id text NOT NULL, quantity bigint NOT NULL, amount numeric NOT NULL)"
            ),
            format!(
                "INSERT INTO {schema}.orders VALUES ('o1', 'd1', 's1', 1, 999.00), \
                 ('o2', 'd1', 's2', 1, 999.00), ('o3', 'd2', 's3', 1, 5.00)"
            ),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .expect("set up the schema");
        }
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-csearch_path%3D{schema}");

        let stored = postgres_orders(&url, "d1").await.expect("query runs");
        let ids: HashSet<String> = stored.into_iter().map(|order| order.id).collect();
        assert_eq!(ids, HashSet::from(["o1".to_owned(), "o2".to_owned()]));
        let served = [order("o1", "s1"), order("o2", "s2")];
        let kept = postgres_check(&url, "d1", &[ack("o1", 0), ack("o2", 1)], &served)
            .await
            .expect("check runs");
        assert!(kept.passed, "{kept:?}");

        let lost = postgres_check_within(
            &url,
            "d1",
            &[ack("o1", 0), ack("o9", 1)],
            &served,
            Duration::from_millis(600),
        )
        .await
        .expect("check runs");
        assert!(!lost.passed && lost.detail.contains("o9"), "{lost:?}");

        // The same id with other content (another deployment's o2, or a
        // changed row) is not the acknowledged order.
        let other = [order("o1", "s1"), order("o2", "s7")];
        let differing = postgres_check_within(
            &url,
            "d1",
            &[ack("o1", 0), ack("o2", 1)],
            &other,
            Duration::from_millis(600),
        )
        .await
        .expect("check runs");
        assert!(
            !differing.passed && differing.detail.contains("other content"),
            "{differing:?}"
        );

        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut admin)
            .await
            .expect("drop the schema");
    }
}
