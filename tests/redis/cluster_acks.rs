//! `--redis-replica-acks 1` on a Redis Cluster of 3 primaries and 3
//! replicas, every server persistent (AOF, `appendfsync always`):
//!
//! - a primary that loses its replica refuses changes on its own slots at
//!   once while the other primaries sell on; the node stays ready,
//!   `degraded`, naming it, and `/metrics` counts its replicas;
//! - rounds of failovers with the disk gone: during a burst through three
//!   nodes, a random primary is `kill -9`ed and its data directory deleted,
//!   the Cluster promotes its replica on its own, and a fresh empty server
//!   comes back as the new primary's replica. Afterwards every order
//!   answered `201` is in Redis with its content (and in Postgres once,
//!   when `DATABASE_URL` is set), every unknown outcome retried with its key
//!   gives one order or a fresh refusal, stock and wallets add up, and
//!   `flashsale audit` passes. The test prints the seed that chose the
//!   primaries (`FLASHSALE_FAILOVER_SEED` replays it), how many `201`s
//!   were kept, and how long each failed primary's shards sold nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flashsale_engine::ShopperId;
use flashsale_engine::ids::shard_of;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::burst::{Attempt, burst, fen, resolve_unknowns};
use crate::cluster::{Persistence, PrivateCluster, cli, role, shards_on, wait_until};
use crate::durability::readyz_until;
use crate::node::{Deployment, Node, Target};

/// Virtual shards of the test deployments.
const SHARDS: u32 = 64;
/// How long a change waits for its replica's acknowledgment (the default):
/// on a loaded 2-core machine shorter bounds turn slow answers into 503s.
const ACK_TIMEOUT_MS: &str = "1000";

/// A node asking one replica's acknowledgment of every change.
fn acked_node(deployment: &Deployment, extra: &[&str]) -> Node {
    let mut args = vec![
        "--redis-replica-acks",
        "1",
        "--redis-replica-ack-timeout-ms",
        ACK_TIMEOUT_MS,
    ];
    args.extend(extra);
    deployment.node_strict(&args)
}

/// Each shopper's virtual shard (`{s:K}`, the hash tag of every key the
/// shopper's buys touch), by shopper index.
fn shopper_shards(shoppers: &[(String, String)]) -> Vec<usize> {
    shoppers
        .iter()
        .map(|(id, _)| {
            let id: ShopperId = id.parse().expect("a shopper id");
            shard_of(id, SHARDS as usize)
        })
        .collect()
}

/// The value of the sample `series` (name and labels) in `node`'s `/metrics`.
async fn sample(node: &Node, series: &str) -> Option<f64> {
    let metrics = node.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_short_of_replicas_refuses_only_its_slots_and_the_node_stays_ready_degraded() {
    if flashsale_testkit::redis_cluster_urls().is_none() {
        return;
    }
    let _serial = crate::node::serial().await;
    let mut cluster = PrivateCluster::start(Persistence::AofAlways);
    let deployment = Deployment::new(Target::Cluster(cluster.urls()), SHARDS);
    let node = acked_node(&deployment, &[]);
    let merchant = node.merchant("Xiaomi").await;
    let deal = node.deal(&merchant, 1_000, 10).await;
    let shoppers = node.shoppers(64, "1000.00").await;
    let (primary, replica) = cluster.replica_pairs()[0];
    let short_shards = shards_on(primary, SHARDS);
    let shards = shopper_shards(&shoppers);
    let on_short = shards
        .iter()
        .position(|shard| short_shards.contains(shard))
        .expect("a shopper on the primary that loses its replica");
    let elsewhere = shards
        .iter()
        .position(|shard| !short_shards.contains(shard))
        .expect("a shopper on another primary");
    node.buy(&shoppers[elsewhere].1, &deal, 1, "before")
        .await
        .expect("an answer")
        .ok(201);
    let address = format!("127.0.0.1:{primary}");
    let online = format!("flashsale_redis_replicas_online{{primary=\"{address}\"}}");
    assert_eq!(sample(&node, &online).await, Some(1.0));
    assert!(
        sample(&node, "flashsale_redis_replica_ack_seconds_count").await >= Some(1.0),
        "the buy's round is timed"
    );

    let lost_id = cli(replica, &["CLUSTER", "MYID"]).trim().to_owned();
    cluster.lose_with_disk(replica);
    let body = readyz_until(&node, "degraded", |answer| {
        answer.status == 200 && answer.body["status"] == "degraded"
    })
    .await
    .body;
    assert_eq!(
        body["redis_replicas"],
        serde_json::json!({ "required": 1, "short": [{ "primary": address, "online": 0 }] }),
        "{body}"
    );
    assert_eq!(sample(&node, &online).await, Some(0.0));

    // The short primary's shopper is refused before the step ran (at once,
    // not after the acknowledgment timeout); the other buys.
    let asked = Instant::now();
    let refused = node
        .buy(&shoppers[on_short].1, &deal, 1, "k")
        .await
        .expect("an answer");
    assert!(
        asked.elapsed() < Duration::from_millis(800),
        "refused at once, not after the acknowledgment timeout"
    );
    assert_eq!((refused.status, refused.code()), (503, "unavailable"));
    let message = refused.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(&address), "{message}");
    let wallet = node
        .get("/v1/wallet", Some(&shoppers[on_short].1))
        .await
        .ok(200);
    assert_eq!(wallet["spent"], "0.00", "nothing changed");
    node.buy(&shoppers[elsewhere].1, &deal, 1, "during")
        .await
        .expect("an answer")
        .ok(201);

    // A fresh replica: ready again, and the refused key now buys.
    cluster.rejoin_as_replica(replica, &lost_id, primary);
    readyz_until(&node, "ready again", |answer| {
        answer.status == 200 && answer.body["status"] == "ready"
    })
    .await;
    node.buy(&shoppers[on_short].1, &deal, 1, "k")
        .await
        .expect("an answer")
        .ok(201);
}

/// Failover rounds of one run (at least 10), and the stock and shoppers of
/// its burst (never sold out within the run).
const ROUNDS: usize = 10;
const STOCK: u64 = 200_000;
const SHOPPERS: u32 = 200;
const PER_SHOPPER_MAX: u32 = 1_000;
/// Buys sent per burst chunk while the rounds run, and the pause between
/// chunks (it keeps the orders to check in the thousands).
const CHUNK: usize = 120;
const BETWEEN_CHUNKS: Duration = Duration::from_millis(250);
/// How long sales go on between a round's rejoin and the next kill.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(1_500);

/// One failover: the primary lost with its disk, its replica promoted.
struct Round {
    lost: u16,
    promoted: u16,
    /// The fresh server that replaced the lost one, as a replica.
    fresh: u16,
    /// The virtual shards the lost primary served.
    shards: HashSet<usize>,
    killed_at: Instant,
    promoted_after: Duration,
    rejoined_after: Duration,
}

/// Loses a random primary with its disk `rounds` times; each time waits
/// for the Cluster to promote its replica, brings a fresh empty server
/// back as the new primary's replica and lets sales go on a while.
fn failover_rounds(cluster: &mut PrivateCluster, rounds: usize, seed: u64) -> Vec<Round> {
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let mut done = Vec::new();
    for _ in 0..rounds {
        std::thread::sleep(BETWEEN_ROUNDS);
        let pairs = cluster.replica_pairs();
        assert_eq!(pairs.len(), 3, "3 primaries with a replica each");
        let (lost, promoted) = pairs[random.random_range(0..pairs.len())];
        let shards = shards_on(lost, SHARDS);
        let lost_id = cli(lost, &["CLUSTER", "MYID"]).trim().to_owned();
        let killed_at = Instant::now();
        cluster.lose_with_disk(lost);
        wait_until("the Cluster promotes the replica", || {
            role(promoted) == "master"
                && cli(promoted, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
        });
        let promoted_after = killed_at.elapsed();
        eprintln!(
            "round {}: primary {lost} lost with its disk, replica {promoted} promoted after {:?}",
            done.len() + 1,
            killed_at.elapsed()
        );
        let fresh = cluster.rejoin_as_replica(lost, &lost_id, promoted);
        done.push(Round {
            lost,
            promoted,
            fresh,
            shards,
            killed_at,
            promoted_after,
            rejoined_after: killed_at.elapsed(),
        });
    }
    done
}

/// How long the shoppers on `round`'s shards sold nothing: the last
/// `201` among them answered before the kill to the first after.
fn interruption(round: &Round, shards: &[usize], attempts: &[Attempt]) -> Option<Duration> {
    let sold = |attempt: &&Attempt| {
        round.shards.contains(&shards[attempt.shopper])
            && attempt
                .answer
                .as_ref()
                .is_some_and(|answer| answer.status == 201)
    };
    let last = attempts
        .iter()
        .filter(sold)
        .filter(|attempt| attempt.at <= round.killed_at)
        .map(|attempt| attempt.at)
        .max()?;
    let first = attempts
        .iter()
        .filter(sold)
        .filter(|attempt| attempt.at > round.killed_at)
        .map(|attempt| attempt.at)
        .min()?;
    Some(first - last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_with_the_disk_gone_keep_every_replica_acknowledged_order() {
    if flashsale_testkit::redis_cluster_urls().is_none() {
        return;
    }
    let database_url = flashsale_testkit::postgres_url();
    let _serial = crate::node::serial().await;
    let seed = std::env::var("FLASHSALE_FAILOVER_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("failover rounds: seed {seed} (FLASHSALE_FAILOVER_SEED={seed} replays the choice)");
    let started = Instant::now();
    let cluster = PrivateCluster::start(Persistence::AofAlways);
    let deployment = Deployment::new(Target::Cluster(cluster.seeds()), SHARDS);
    let books: Vec<&str> = match &database_url {
        Some(url) => vec!["--database-url", url],
        None => Vec::new(),
    };
    let nodes = [
        acked_node(&deployment, &books),
        acked_node(&deployment, &books),
        acked_node(&deployment, &books),
    ];
    let merchant = nodes[0].merchant("Failover").await;
    let deal = nodes[1].deal(&merchant, STOCK, PER_SHOPPER_MAX).await;
    let shoppers = nodes[2].shoppers(SHOPPERS, "10000.00").await;
    let shards = shopper_shards(&shoppers);

    // The burst runs in chunks until the rounds are over.
    let over = Arc::new(AtomicBool::new(false));
    let selling = async {
        let mut attempts = Vec::new();
        let mut chunk = 0;
        while !over.load(Ordering::Relaxed) {
            let plan: Vec<(usize, String)> = (0..CHUNK)
                .map(|i| {
                    (
                        (chunk * CHUNK + i) % SHOPPERS as usize,
                        format!("c{chunk}-{i}"),
                    )
                })
                .collect();
            attempts.extend(burst(&nodes, &shoppers, &deal, &plan).await);
            chunk += 1;
            tokio::time::sleep(BETWEEN_CHUNKS).await;
        }
        attempts
    };
    let failing = {
        let over = over.clone();
        let mut cluster = cluster;
        tokio::task::spawn_blocking(move || {
            let rounds = failover_rounds(&mut cluster, ROUNDS, seed);
            // Sales go on a while on the last fresh replica too.
            std::thread::sleep(BETWEEN_ROUNDS);
            over.store(true, Ordering::Relaxed);
            (cluster, rounds)
        })
    };
    let (mut attempts, failed) = tokio::join!(selling, failing);
    let (cluster, rounds) = failed.expect("the rounds ran");
    let unknown = resolve_unknowns(&nodes, &shoppers, &deal, &mut attempts).await;

    // One order per key, and every 201 is in Redis with its content.
    let mut orders: HashMap<String, Value> = HashMap::new();
    let mut by_key: HashMap<&str, String> = HashMap::new();
    for attempt in &attempts {
        let Some(answer) = &attempt.answer else {
            continue;
        };
        match answer.status {
            201 => {
                let id = answer.body["id"].as_str().expect("an id").to_owned();
                let previous = by_key.insert(&attempt.key, id.clone());
                assert!(
                    previous.as_ref().is_none_or(|previous| *previous == id),
                    "key {} gave two orders: {previous:?} and {id}",
                    attempt.key
                );
                orders.insert(id, answer.body.clone());
            }
            409 => assert_eq!(answer.code(), "purchase_limit_reached", "{}", answer.body),
            503 => assert_eq!(answer.code(), "unavailable", "{}", answer.body),
            other => panic!("unexpected answer {other}: {}", answer.body),
        }
    }
    let answered_201 = attempts
        .iter()
        .filter(|attempt| attempt.answer.as_ref().is_some_and(|a| a.status == 201))
        .count();
    // The merchant's list of the deal's orders, read across every shard:
    // each one answered 201 is there with the content it was answered
    // with, and there is no other (every unknown outcome was resolved).
    let mut listed: HashMap<String, Value> = HashMap::new();
    let mut cursor = String::new();
    loop {
        let page = nodes[0]
            .get_through_unavailable(
                &format!("/v1/orders?deal_id={deal}&limit=1000{cursor}"),
                Some(&merchant),
            )
            .await
            .ok(200);
        for order in page["orders"].as_array().expect("orders") {
            let id = order["id"].as_str().unwrap_or_default().to_owned();
            listed.insert(id, order.clone());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let mut kept = 0;
    let mut lost = Vec::new();
    for (id, order) in &orders {
        match listed.get(id) {
            Some(found) if found == order => kept += 1,
            found => lost.push(format!("{id}: answered {order}, now {found:?}")),
        }
    }
    let unanswered: Vec<&String> = listed
        .keys()
        .filter(|id| !orders.contains_key(*id))
        .collect();
    eprintln!(
        "{} failover rounds in {:?}: {kept} of {} acknowledged orders kept ({answered_201} \
         answers 201, {} attempts, {unknown} unknown outcomes resolved by their keys)",
        rounds.len(),
        started.elapsed(),
        orders.len(),
        attempts.len()
    );
    let mut interruptions = Vec::new();
    for round in &rounds {
        let gap = interruption(round, &shards, &attempts);
        eprintln!(
            "  primary {} lost with its disk, replica {} promoted after {:?}, fresh replica {} in \
             sync after {:?}; its shards sold nothing for {gap:?}",
            round.lost, round.promoted, round.promoted_after, round.fresh, round.rejoined_after
        );
        interruptions.extend(gap);
    }
    interruptions.sort();
    if let (Some(median), Some(longest)) = (
        interruptions.get(interruptions.len() / 2),
        interruptions.last(),
    ) {
        eprintln!(
            "  interruption on the lost primary's shards: median {median:?}, longest {longest:?}"
        );
    }
    assert!(rounds.len() >= ROUNDS);
    assert!(lost.is_empty(), "acknowledged orders lost: {lost:?}");
    assert!(
        unanswered.is_empty(),
        "orders no answer acknowledged: {unanswered:?}"
    );

    // Stock and money add up over what exists.
    let view = nodes[1]
        .get_through_unavailable(&format!("/v1/deals/{deal}"), None)
        .await
        .ok(200);
    let sold = view["sold"].as_u64().expect("sold");
    assert_eq!(sold, orders.len() as u64, "sold counts the orders: {view}");
    assert_eq!(view["held"], 0, "{view}");
    assert_eq!(
        view["remaining"].as_u64().expect("remaining") + sold,
        STOCK,
        "{view}"
    );
    let wallets = futures_util::future::join_all(
        shoppers
            .iter()
            .map(|(_, token)| nodes[0].get_through_unavailable("/v1/wallet", Some(token))),
    )
    .await;
    let mut spent = 0;
    for wallet in wallets {
        let wallet = wallet.ok(200);
        assert_eq!(
            fen(&wallet["available"]) + fen(&wallet["held"]) + fen(&wallet["spent"]),
            fen(&wallet["credited"]),
            "{wallet}"
        );
        spent += fen(&wallet["spent"]);
    }
    assert_eq!(spent, sold as i64 * 1_000, "money moved only for orders");

    // The books: every order in Postgres once, with its content; and the
    // auditor agrees with all of it (reached through live servers).
    let deployment = Deployment {
        target: Target::Cluster(cluster.urls()),
        namespace: deployment.namespace.clone(),
        shards: deployment.shards,
        secret: deployment.secret.clone(),
    };
    let (code, report) = match &database_url {
        Some(url) => {
            let mut conn = crate::books::connect(url).await;
            let id = crate::books::deployment_id(&deployment);
            crate::books::wait_for_orders(&mut conn, &id, orders.len()).await;
            let rows = crate::books::orders_in_postgres(&mut conn, &id).await;
            assert_eq!(rows.len(), orders.len(), "each order in Postgres once");
            for (id, order) in &orders {
                let row = rows
                    .get(id)
                    .unwrap_or_else(|| panic!("{id} not in Postgres"));
                assert_eq!(Some(row.1.as_str()), order["shopper_id"].as_str(), "{id}");
                assert_eq!(Some(row.4.as_str()), order["amount"].as_str(), "{id}");
            }
            tokio::task::block_in_place(|| crate::books::audit(&deployment, url, false))
        }
        None => tokio::task::block_in_place(|| audit(&deployment)),
    };
    assert_eq!(code, crate::books::AUDIT_HOLDS, "{report}");
}

/// `flashsale audit` of the deployment without books: its exit code and
/// report.
fn audit(deployment: &Deployment) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("audit")
        .args(deployment.target.flags())
        .args(["--redis-namespace", &deployment.namespace])
        .args(["--redis-shards", &deployment.shards.to_string()])
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .env_remove("DATABASE_URL")
        .output()
        .expect("flashsale audit runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), report)
}
