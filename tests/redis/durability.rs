//! What a `201` promises in multi-node mode, checked against Redis servers
//! the tests start themselves: a node refuses a Redis that persists nothing
//! unless told `--allow-volatile-redis`, reports Redis' persistence in
//! `/readyz` and `/metrics` and follows it at runtime, and no acknowledged
//! order is lost when an AOF-always Redis is killed with `kill -9` under a
//! burst and restarted from its append-only file.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::faults::check_keys;
use crate::node::{Answer, Deployment, Node, PrivateRedis, Target};

/// How long a node may take to see a `CONFIG SET`: its poller re-reads the
/// settings every second; the rest is slack for a loaded machine.
const SETTING_SEEN_MAX: Duration = Duration::from_secs(10);
/// Rounds of burst, `kill -9` of Redis and restart.
const CRASH_ROUNDS: usize = 5;
/// Shoppers buying in each round (each buys one unit once).
const SHOPPERS_PER_ROUND: usize = 80;
/// Units of the deal: fewer than all rounds' buys, so the last round sells
/// out and refuses the rest.
const CRASH_STOCK: u64 = 300;
/// Buys in flight at once during a burst.
const BURST_CONCURRENCY: usize = 12;
/// How long unknown outcomes are retried, and the books given to settle,
/// after the last restart.
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// The `/readyz` body once it is 200.
async fn ready(node: &Node) -> Value {
    node.get("/readyz", None).await.ok(200)
}

/// Polls `/readyz` until `done` holds of its answer, for at most
/// [`SETTING_SEEN_MAX`].
pub async fn readyz_until(node: &Node, what: &str, done: impl Fn(&Answer) -> bool) -> Answer {
    let started = Instant::now();
    loop {
        let answer = node.get("/readyz", None).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < SETTING_SEEN_MAX,
            "/readyz did not show {what} within {SETTING_SEEN_MAX:?}: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `flashsale_redis_durability{mode="<mode>"}` in `/metrics`.
async fn durability_metric(node: &Node, mode: &str) -> Option<String> {
    let metrics = node.get("/metrics", None).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    let series = format!("flashsale_redis_durability{{mode=\"{mode}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series).map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_persists_nothing_is_refused_unless_allowed() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let redis = PrivateRedis::volatile();
    let deployment = Deployment::new(Target::Single(redis.url.clone()), 4);
    let refusal = deployment.refused_start(&[]);
    for named in ["appendonly no", "--allow-volatile-redis", &redis.url] {
        assert!(
            refusal.contains(named),
            "the refusal names {named}: {refusal}"
        );
    }
    let node = deployment.node();
    let body = ready(&node).await;
    assert_eq!(body["redis_durability"]["mode"], "volatile", "{body}");
    assert_eq!(body["redis_durability"]["found"], "appendonly no", "{body}");
    assert_eq!(
        durability_metric(&node, "volatile").await.as_deref(),
        Some("1")
    );
    assert_eq!(
        durability_metric(&node, "always").await.as_deref(),
        Some("0")
    );
}

/// On a Cluster every primary is asked; the test Cluster persists nothing,
/// so the weakest primary, named by its address, is `volatile`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_judged_by_each_of_its_primaries() {
    let Some(urls) = flashsale_testkit::redis_cluster_urls() else {
        return;
    };
    let deployment = Deployment::new(Target::Cluster(urls), 8);
    let refusal = deployment.refused_start(&[]);
    assert!(refusal.contains("appendonly no"), "{refusal}");
    let node = deployment.node();
    let body = ready(&node).await;
    let found = body["redis_durability"]["found"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(body["redis_durability"]["mode"], "volatile", "{body}");
    assert!(
        found.starts_with("127.0.0.1:") && found.ends_with(": appendonly no"),
        "the weakest primary is named by its address: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_will_not_show_its_settings_counts_as_volatile() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let redis = PrivateRedis::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--rename-command",
        "CONFIG",
        "",
    ]);
    let deployment = Deployment::new(Target::Single(redis.url.clone()), 4);
    let refusal = deployment.refused_start(&[]);
    for named in ["CONFIG GET was refused", "--allow-volatile-redis"] {
        assert!(
            refusal.contains(named),
            "the refusal names {named}: {refusal}"
        );
    }
}

/// An AOF-always Redis is served without the flag and reported `always`;
/// weakened at runtime the node reports `everysec`, then, persisting
/// nothing, stops taking changes (not ready) until the setting is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aof_always_redis_is_reported_and_followed_at_runtime() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let redis = PrivateRedis::aof_always();
    let deployment = Deployment::new(Target::Single(redis.url.clone()), 4);
    let node = deployment.node_strict(&[]);
    let body = ready(&node).await;
    assert_eq!(body["redis_durability"]["mode"], "always", "{body}");
    assert_eq!(
        body["redis_durability"]["found"], "appendonly yes, appendfsync always",
        "{body}"
    );
    assert_eq!(
        body["redis_durability"]["waitaof"],
        redis.cli(&["COMMAND", "INFO", "WAITAOF"]).trim() != "",
        "WAITAOF is reported as the server has it: {body}"
    );
    assert_eq!(
        durability_metric(&node, "always").await.as_deref(),
        Some("1")
    );
    assert_eq!(
        durability_metric(&node, "volatile").await.as_deref(),
        Some("0")
    );

    assert!(
        redis
            .cli(&["CONFIG", "SET", "appendfsync", "everysec"])
            .contains("OK")
    );
    readyz_until(&node, "everysec", |answer| {
        answer.status == 200 && answer.body["redis_durability"]["mode"] == "everysec"
    })
    .await;
    assert_eq!(
        durability_metric(&node, "everysec").await.as_deref(),
        Some("1")
    );

    assert!(
        redis
            .cli(&["CONFIG", "SET", "appendonly", "no"])
            .contains("OK")
    );
    let refused = readyz_until(&node, "not ready", |answer| answer.status == 503).await;
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("--allow-volatile-redis"), "{message}");
    let change = node
        .call(
            reqwest::Method::POST,
            "/v1/merchants",
            Some(crate::node::ADMIN_TOKEN),
            Some(serde_json::json!({ "name": "Refused" })),
            None,
        )
        .await;
    assert_eq!(
        (change.status, change.code()),
        (503, "unavailable"),
        "no change is acknowledged while Redis persists nothing: {}",
        change.body
    );

    assert!(
        redis
            .cli(&["CONFIG", "SET", "appendonly", "yes"])
            .contains("OK")
    );
    readyz_until(&node, "ready again", |answer| answer.status == 200).await;
}

/// `kill -9` of an AOF-always Redis at a moment of a burst, then a restart
/// from its append-only file, [`CRASH_ROUNDS`] times, under a burst through
/// three nodes. Every request's outcome is recorded (order, refusal, or
/// unknown: a 503 or no answer); unknown ones are resolved by retrying
/// their key. Then: each key yields at most one order, every acknowledged
/// order is in Redis, nothing is oversold, every wallet's money is
/// conserved, and (with `DATABASE_URL`, the nodes running the books sink)
/// every order is in Postgres exactly once and `flashsale audit` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_aof_always_redis_loses_no_acknowledged_order() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let _serial = crate::node::serial().await;
    let mut redis = PrivateRedis::aof_always();
    let deployment = Deployment::new(Target::Single(redis.url.clone()), 16);
    let database = flashsale_testkit::postgres_url();
    let mut flags = vec!["--redis-response-timeout-ms", "300"];
    if let Some(url) = &database {
        flags.extend(["--database-url", url.as_str()]);
    }
    let nodes = [
        deployment.node_strict(&flags),
        deployment.node_strict(&flags),
        deployment.node_strict(&flags),
    ];
    let node = &nodes[0];
    let merchant = node.merchant("Crash-proof").await;
    let deal = node.deal(&merchant, CRASH_STOCK, 1).await;
    let shoppers = node
        .shoppers((SHOPPERS_PER_ROUND * CRASH_ROUNDS) as u32, "100.00")
        .await;
    let mut tokens = HashMap::new();
    let mut answers: Vec<(String, Option<Answer>)> = Vec::new();
    let mut unknown = 0;
    for round in 0..CRASH_ROUNDS {
        let buyers: Vec<(String, String)> = shoppers
            [round * SHOPPERS_PER_ROUND..(round + 1) * SHOPPERS_PER_ROUND]
            .iter()
            .enumerate()
            .map(|(index, (_, token))| (format!("r{round}-{index}"), token.clone()))
            .collect();
        for (key, token) in &buyers {
            tokens.insert(key.clone(), token.clone());
        }
        // The kill lands while the burst runs: after a share of the
        // round's time that moves with the round.
        let delay = Duration::from_millis(30 + 60 * round as u64);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            redis.crash_and_restart();
            redis
        });
        let chunks = buyers.chunks(buyers.len().div_ceil(BURST_CONCURRENCY));
        let workers = chunks.enumerate().map(|(worker, chunk)| {
            let node = &nodes[worker % nodes.len()];
            let deal = &deal;
            async move {
                let mut answered = Vec::new();
                for (key, token) in chunk {
                    answered.push((key.clone(), node.buy(token, deal, 1, key).await));
                }
                answered
            }
        });
        for (key, answer) in join_all(workers).await.into_iter().flatten() {
            if answer.as_ref().is_none_or(|answer| answer.status == 503) {
                unknown += 1;
            }
            answers.push((key, answer));
        }
        redis = killer.join().expect("the Redis restarts");
    }
    // Resolve every unknown outcome by retrying its key until it has one.
    let started = Instant::now();
    let mut resolved = Vec::new();
    for (key, answer) in &answers {
        if answer.as_ref().is_some_and(|answer| answer.status != 503) {
            continue;
        }
        loop {
            let retry = node.buy(&tokens[key], &deal, 1, key).await;
            if let Some(retry) = retry.filter(|retry| retry.status != 503) {
                resolved.push((key.clone(), Some(retry)));
                break;
            }
            assert!(
                started.elapsed() < SETTLE_MAX,
                "key {key} never got an outcome"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    answers.extend(resolved);
    for (key, answer) in &answers {
        let Some(answer) = answer else { continue };
        assert!(
            matches!(
                (answer.status, answer.code()),
                (201, _) | (503, "unavailable") | (409, "sold_out")
            ),
            "key {key}: an answer outside the contract of this burst: {} {}",
            answer.status,
            answer.body
        );
    }
    let orders = check_keys(node, &tokens, &answers).await;
    eprintln!(
        "{CRASH_ROUNDS} kill -9 rounds: {} orders acknowledged, {unknown} outcomes unknown at first",
        orders.len()
    );
    assert!(
        orders.len() as u64 <= CRASH_STOCK,
        "oversold: {}",
        orders.len()
    );
    assert!(!orders.is_empty(), "the burst sold something");
    // The books settle (transfers a crash cut in half are finished by the
    // poller): every unit is sold or remaining, and sold is the orders.
    let started = Instant::now();
    loop {
        let view = node.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
        let (sold, remaining, held) = (
            view["sold"].as_u64().unwrap_or(0),
            view["remaining"].as_u64().unwrap_or(0),
            view["held"].as_u64().unwrap_or(0),
        );
        assert_eq!(sold, orders.len() as u64, "sold is the orders: {view}");
        if sold + remaining + held == CRASH_STOCK {
            break;
        }
        assert!(
            started.elapsed() < SETTLE_MAX,
            "stock is not conserved: {view}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut orders_of: HashMap<&str, u64> = HashMap::new();
    for (key, answer) in &answers {
        if answer.as_ref().is_some_and(|answer| answer.status == 201) {
            orders_of.insert(tokens[key].as_str(), 1);
        }
    }
    let wallets = join_all(
        shoppers
            .iter()
            .map(|(_, token)| node.get("/v1/wallet", Some(token))),
    )
    .await;
    for ((id, token), wallet) in shoppers.iter().zip(wallets) {
        let wallet = wallet.ok(200);
        let bought = orders_of.get(token.as_str()).copied().unwrap_or(0);
        let spent = format!("{}.00", 10 * bought);
        let available = format!("{}.00", 100 - 10 * bought);
        assert_eq!(
            (
                wallet["spent"].as_str(),
                wallet["available"].as_str(),
                wallet["held"].as_str()
            ),
            (Some(spent.as_str()), Some(available.as_str()), Some("0.00")),
            "shopper {id}: money conserved, {bought} order(s): {wallet}"
        );
    }
    // The books: every acknowledged order reached Postgres once, with no
    // other order beside it, and the auditor agrees.
    if let Some(url) = &database {
        let id = crate::books::deployment_id(&deployment);
        let mut conn = crate::books::connect(url).await;
        crate::books::wait_for_orders(&mut conn, &id, orders.len()).await;
        let books = crate::books::orders_in_postgres(&mut conn, &id).await;
        let booked: std::collections::HashSet<String> = books.into_keys().collect();
        assert_eq!(
            booked, orders,
            "Postgres holds exactly the acknowledged orders"
        );
        let (code, report) = crate::books::audit(&deployment, url, false);
        assert_eq!(
            code,
            crate::books::AUDIT_HOLDS,
            "flashsale audit after the crashes: {report}"
        );
    }
}

/// Regression: a node refused at start (a Redis that persists nothing,
/// without `--allow-volatile-redis`) had already written the deployment's
/// layout and epoch, so the next start with another `--secret` was refused
/// as if a deployment existed. A refused start writes no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refused_at_start_writes_nothing_into_redis() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let target = Target::Single(url);
    if !target
        .run_cli(&["CONFIG", "GET", "appendonly"])
        .contains("no")
    {
        return; // this Redis persists: the refusal under test does not happen
    }
    let mut deployment = Deployment::new(target.clone(), 4);
    let refusal = deployment.refused_start(&[]);
    assert!(refusal.contains("--allow-volatile-redis"), "{refusal}");
    let pattern = format!("{}:{{g}}:*", deployment.namespace);
    let keys = target.run_cli(&["--scan", "--pattern", &pattern]);
    assert_eq!(keys.trim(), "", "a refused start wrote keys");
    deployment.secret = "another-redis-secret-0123456789".to_owned();
    let node = deployment.node();
    let body = ready(&node).await;
    assert_eq!(body["redis_durability"]["mode"], "volatile", "{body}");
}
