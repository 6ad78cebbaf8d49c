//! Bursts through several nodes: exactly the stock sells, no shopper over
//! its limit, money conserved, one order per idempotency key whichever
//! node a retry reaches; the last units in scattered buckets still sell;
//! sold-out refusals never reach Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::Value;

use crate::node::{Deployment, Node, Target};

/// Concurrent requests of a burst.
const BURST_CONCURRENCY: usize = 48;

/// Fen of a `"12.34"` amount.
pub fn fen(amount: &Value) -> i64 {
    let text = amount.as_str().expect("an amount string");
    let (units, cents) = text.split_once('.').expect("two places");
    units.parse::<i64>().expect("digits") * 100 + cents.parse::<i64>().expect("digits")
}

/// What one buy attempt got.
pub struct Attempt {
    pub shopper: usize,
    pub key: String,
    pub answer: Option<crate::node::Answer>,
    /// When the answer (or the failed call) came back.
    pub at: std::time::Instant,
}

/// `attempts` buys of 1 unit, `(shopper, key)` each, sent round-robin over
/// `nodes`, at most [`BURST_CONCURRENCY`] at once; the retry of a key goes
/// to the next node.
pub async fn burst(
    nodes: &[Node],
    shoppers: &[(String, String)],
    deal: &str,
    plan: &[(usize, String)],
) -> Vec<Attempt> {
    let plan = Arc::new(plan.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(std::sync::Mutex::new(Vec::with_capacity(plan.len())));
    let workers = (0..BURST_CONCURRENCY).map(|_| {
        let (plan, next, results) = (plan.clone(), next.clone(), results.clone());
        async move {
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((shopper, key)) = plan.get(index) else {
                    return;
                };
                let node = &nodes[index % nodes.len()];
                let answer = node.buy(&shoppers[*shopper].1, deal, 1, key).await;
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Attempt {
                        shopper: *shopper,
                        key: key.clone(),
                        answer,
                        at: std::time::Instant::now(),
                    });
            }
        }
    });
    join_all(workers).await;
    std::mem::take(
        &mut *results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// How long the retries of a burst's unknown outcomes may take in all.
const RESOLVE_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Retries a buy of 1 under `key` until it is answered other than 503 (an
/// unknown outcome is resolved only by its key: docs/api.md "Idempotency").
pub async fn resolve(node: &Node, token: &str, deal: &str, key: &str) -> crate::node::Answer {
    let started = std::time::Instant::now();
    loop {
        let answer = node.buy(token, deal, 1, key).await;
        if let Some(answer) = answer.as_ref()
            && answer.status != 503
        {
            return answer.clone();
        }
        assert!(
            started.elapsed() < RESOLVE_MAX,
            "key {key} never resolved; the last answer: {answer:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Retries every attempt of `attempts` whose outcome is unknown (503 or no
/// answer) until it resolves, alternating over `nodes`, and appends the
/// answers; returns how many there were.
pub async fn resolve_unknowns(
    nodes: &[Node],
    shoppers: &[(String, String)],
    deal: &str,
    attempts: &mut Vec<Attempt>,
) -> usize {
    let unknown: Vec<(usize, String)> = attempts
        .iter()
        .filter(|attempt| {
            attempt
                .answer
                .as_ref()
                .is_none_or(|answer| answer.status == 503)
        })
        .map(|attempt| (attempt.shopper, attempt.key.clone()))
        .collect();
    for (index, (shopper, key)) in unknown.iter().enumerate() {
        let node = &nodes[index % nodes.len()];
        let answer = resolve(node, &shoppers[*shopper].1, deal, key).await;
        attempts.push(Attempt {
            shopper: *shopper,
            key: key.clone(),
            answer: Some(answer),
            at: std::time::Instant::now(),
        });
    }
    unknown.len()
}

/// Checks the books after a burst: `stock` sold, every 201 one order per
/// key and in the merchant's list, wallets conserved.
pub async fn check_books(
    node: &Node,
    merchant: &str,
    deal: &str,
    stock: u64,
    shoppers: &[(String, String)],
    attempts: &[Attempt],
    credit_fen: i64,
) {
    let view = node.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
    assert_eq!(view["sold"], stock, "exactly the stock sold: {view}");
    assert_eq!(view["remaining"], 0, "{view}");
    assert_eq!(view["held"], 0, "{view}");
    assert_eq!(view["status"], "sold_out");

    let mut by_key: HashMap<&str, &str> = HashMap::new();
    let mut orders: HashSet<String> = HashSet::new();
    for attempt in attempts {
        let Some(answer) = &attempt.answer else {
            continue;
        };
        match answer.status {
            201 => {
                let id = answer.body["id"].as_str().expect("an order id");
                let previous = by_key.insert(&attempt.key, id);
                assert!(
                    previous.is_none_or(|previous| previous == id),
                    "key {} gave two orders: {previous:?} and {id}",
                    attempt.key
                );
                assert_eq!(
                    answer.body["shopper_id"].as_str(),
                    Some(shoppers[attempt.shopper].0.as_str())
                );
                orders.insert(id.to_owned());
            }
            409 => assert!(
                ["sold_out", "purchase_limit_reached"].contains(&answer.code()),
                "{:?}",
                answer.body
            ),
            503 => assert_eq!(answer.code(), "unavailable", "{:?}", answer.body),
            other => panic!("unexpected answer {other}: {:?}", answer.body),
        }
    }
    assert_eq!(orders.len() as u64, stock, "one 201'd order per unit");

    // The merchant's list, read across every shard, has exactly them.
    let mut listed = HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = node
            .get(
                &format!("/v1/orders?deal_id={deal}&limit=100{cursor}"),
                Some(merchant),
            )
            .await
            .ok(200);
        for order in page["orders"].as_array().expect("orders") {
            assert!(listed.insert(order["id"].as_str().unwrap_or_default().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(listed, orders);

    // Money: every wallet still adds up, and spent sums to the sales.
    let wallets = join_all(
        shoppers
            .iter()
            .map(|(_, token)| node.get("/v1/wallet", Some(token))),
    )
    .await;
    let mut spent = 0;
    for wallet in wallets {
        let wallet = wallet.ok(200);
        assert_eq!(fen(&wallet["credited"]), credit_fen);
        assert_eq!(
            fen(&wallet["available"]) + fen(&wallet["held"]) + fen(&wallet["spent"]),
            credit_fen,
            "{wallet}"
        );
        assert!(
            fen(&wallet["spent"]) <= 1_000,
            "over the limit of 1: {wallet}"
        );
        spent += fen(&wallet["spent"]);
    }
    assert_eq!(spent, stock as i64 * 1_000);
}

/// 1,000 shoppers try 5,000 buys (each key sent twice, to different nodes)
/// of a 300-unit deal, one per shopper, through three nodes.
async fn three_nodes_sell_exactly_the_stock(target: Target) {
    const STOCK: u64 = 300;
    const SHOPPERS: u32 = 1_000;
    let deployment = Deployment::new(target, 64);
    let nodes = [deployment.node(), deployment.node(), deployment.node()];
    let merchant = nodes[0].merchant("Xiaomi").await;
    let deal = nodes[1].deal(&merchant, STOCK, 1).await;
    let shoppers = nodes[2].shoppers(SHOPPERS, "100.00").await;
    // Each shopper: two keys, each sent twice (the retry lands elsewhere),
    // plus a fifth try with a third key.
    let mut plan = Vec::new();
    for round in 0..5 {
        for shopper in 0..SHOPPERS as usize {
            let key = format!("tap-{shopper}-{}", round.min(3) / 2 + round / 4);
            plan.push((shopper, key));
        }
    }
    let attempts = burst(&nodes, &shoppers, &deal, &plan).await;
    assert_eq!(attempts.len(), 5_000);
    check_books(
        &nodes[0], &merchant, &deal, STOCK, &shoppers, &attempts, 10_000,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_redis_sell_exactly_the_stock() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    three_nodes_sell_exactly_the_stock(Target::Single(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_cluster_sell_exactly_the_stock() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    let _serial = crate::node::serial().await;
    // Script calls per seed (the test Cluster's seeds are its primaries).
    let script_calls = || -> Vec<u64> {
        urls.split(',')
            .map(|url| calls_on(&Target::Single(url.to_owned()), "fcall"))
            .collect()
    };
    let before = script_calls();
    three_nodes_sell_exactly_the_stock(Target::Cluster(urls.clone())).await;
    let after = script_calls();
    let served: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    let all: u64 = served.iter().sum();
    eprintln!("script calls per primary: {served:?} of {all}");
    for (primary, calls) in served.iter().enumerate() {
        // One hot deal is spread over the shards, so over every primary.
        assert!(
            *calls * 10 >= all,
            "primary {primary} served {calls} of {all} script calls: {served:?}"
        );
    }
}

/// Milliseconds a Cluster node's poller is given to list every new deal.
const CLUSTER_POLL_WAIT_MS: u64 = 10_000;

/// Several deals on a Cluster live on different slots: the node's poll
/// (the only source of `/metrics`' per-deal series) reads them all, the
/// node stays ready, and it sells on each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_polls_deals_on_different_slots() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Cluster(urls), 8);
    let node = deployment.node();
    let merchant = node.merchant("Slots").await;
    let mut deals = Vec::new();
    for _ in 0..4 {
        deals.push(node.deal(&merchant, 5, 1).await);
    }
    let series = |deal: &str| format!("flashsale_deal_remaining{{deal=\"{deal}\"}} 5");
    let started = std::time::Instant::now();
    let metrics = loop {
        let metrics = node.get("/metrics", None).await.ok(200);
        let text = metrics.as_str().unwrap_or_default().to_owned();
        if deals.iter().all(|deal| text.contains(&series(deal)))
            || started.elapsed().as_millis() > u128::from(CLUSTER_POLL_WAIT_MS)
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for deal in &deals {
        assert!(
            metrics.contains(&series(deal)),
            "the poll never listed {deal}: {metrics}"
        );
    }
    node.get("/readyz", None).await.ok(200);
    let shoppers = node.shoppers(1, "100.00").await;
    for (index, deal) in deals.iter().enumerate() {
        let answer = node
            .buy(&shoppers[0].1, deal, 1, &format!("slot-{index}"))
            .await
            .expect("an answer");
        answer.ok(201);
    }
}

/// A deal of 10 units over 64 shards: ten shoppers hold one unit each and
/// release it, so the units wait in ten scattered buckets; ten shoppers of
/// other shards then buy them all, and the next is told sold out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_units_in_scattered_buckets_all_sell() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 64);
    let (a, b) = (deployment.node(), deployment.node());
    let merchant = a.merchant("Tail").await;
    let deal = a.deal(&merchant, 10, 1).await;
    let shoppers = a.shoppers(21, "100.00").await;
    for (index, (_, token)) in shoppers[..10].iter().enumerate() {
        let hold = a
            .call(
                reqwest::Method::POST,
                &format!("/v1/deals/{deal}/holds"),
                Some(token),
                Some(serde_json::json!({ "quantity": 1 })),
                Some(&format!("hold-{index}")),
            )
            .await
            .ok(201);
        let id = hold["id"].as_str().expect("a hold id");
        b.call(
            reqwest::Method::DELETE,
            &format!("/v1/holds/{id}"),
            Some(token),
            None,
            None,
        )
        .await
        .ok(200);
    }
    let mut sold = 0;
    for (index, (_, token)) in shoppers[10..].iter().enumerate() {
        let node = if index % 2 == 0 { &a } else { &b };
        let answer = node
            .buy(token, &deal, 1, &format!("buy-{index}"))
            .await
            .expect("an answer");
        match answer.status {
            201 => sold += 1,
            409 => assert_eq!(answer.code(), "sold_out"),
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    assert_eq!(sold, 10, "every unit sells, none twice");
    let view = a.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
    assert_eq!(
        (view["sold"].as_u64(), view["remaining"].as_u64()),
        (Some(10), Some(0))
    );
}

/// The calls of one Redis command in `INFO commandstats` of `target`.
fn calls_on(target: &Target, command: &str) -> u64 {
    let output = std::process::Command::new("redis-cli")
        .args(target.cli())
        .args(["INFO", "commandstats"])
        .output()
        .expect("redis-cli runs");
    let stats = String::from_utf8_lossy(&output.stdout);
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Once a node knows a deal is sold out, its refusals of shoppers with
/// nothing to replay never reach Redis: no script call in
/// `INFO commandstats` during a burst of 2,000 refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_refusals_do_not_touch_redis() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 64);
    let node = deployment.node();
    let merchant = node.merchant("Gone").await;
    let deal = node.deal(&merchant, 1, 1).await;
    let shoppers = node.shoppers(50, "100.00").await;
    node.buy(&shoppers[0].1, &deal, 1, "first")
        .await
        .expect("an answer")
        .ok(201);
    // The next buy finds nothing anywhere and marks the deal sold out.
    let refused = node
        .buy(&shoppers[1].1, &deal, 1, "second")
        .await
        .expect("an answer");
    assert_eq!(refused.code(), "sold_out");
    let before = calls_on(&deployment.target, "fcall");
    let refusals = join_all((0..2_000).map(|index| {
        let (node, shoppers, deal) = (&node, &shoppers, &deal);
        async move {
            let shopper = 1 + index % (shoppers.len() - 1);
            node.buy(&shoppers[shopper].1, deal, 1, &format!("k{index}"))
                .await
        }
    }))
    .await;
    for refusal in refusals {
        assert_eq!(refusal.expect("an answer").code(), "sold_out");
    }
    let after = calls_on(&deployment.target, "fcall");
    assert_eq!(after, before, "script calls during 2,000 sold-out refusals");
    // The buyer's own retry still replays its order, through Redis.
    let replay = node
        .buy(&shoppers[0].1, &deal, 1, "first")
        .await
        .expect("an answer");
    assert_eq!(replay.status, 201);
}

/// A node that learned a deal is sold out sells again once the merchant
/// restocks through another node (told on the deployment's channel; the
/// poll is the safety net), within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_through_one_node_reopens_sales_on_another() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 64);
    let (a, b) = (deployment.node(), deployment.node());
    let merchant = a.merchant("Again").await;
    let deal = a.deal(&merchant, 1, 1).await;
    let shoppers = a.shoppers(3, "100.00").await;
    b.buy(&shoppers[0].1, &deal, 1, "one")
        .await
        .expect("an answer")
        .ok(201);
    let refused = b
        .buy(&shoppers[1].1, &deal, 1, "two")
        .await
        .expect("an answer");
    assert_eq!(refused.code(), "sold_out", "b now holds the deal sold out");
    a.call(
        reqwest::Method::PATCH,
        &format!("/v1/deals/{deal}"),
        Some(&merchant),
        Some(serde_json::json!({ "add_stock": 1 })),
        None,
    )
    .await
    .ok(200);
    let started = std::time::Instant::now();
    loop {
        let answer = b
            .buy(&shoppers[1].1, &deal, 1, "two")
            .await
            .expect("an answer");
        if answer.status == 201 {
            break;
        }
        assert_eq!(answer.code(), "sold_out");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "b still refuses 2 s after the restock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
