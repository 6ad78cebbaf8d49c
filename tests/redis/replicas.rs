//! `--redis-replica-acks N`: a change is answered `201` only once N
//! replicas of its primary have it. A primary with one replica, both
//! private AOF-always servers; the replica frozen (`SIGSTOP`) while the
//! node sells, then the primary lost (`kill -9`) together with what the
//! frozen replica had received and not yet applied (the replica killed and
//! restarted from its own append-only file), and the replica promoted.
//! Without acknowledgments that loses orders answered `201`; with one, a
//! buy during the freeze answers `503` instead, and every `201` survives.

use std::time::{Duration, Instant};

use crate::node::{Deployment, Node, PrivateRedis, Target};

/// How long a replica may take to connect and sync.
const REPLICA_SYNC_MAX: Duration = Duration::from_secs(20);
/// How long a change waits for its acknowledgment in these tests.
const ACK_TIMEOUT_MS: &str = "300";

/// A primary and its replica, both AOF-always, the replica in sync.
struct Pair {
    primary: PrivateRedis,
    replica: PrivateRedis,
}

fn pair() -> Pair {
    let primary = PrivateRedis::aof_always();
    let port = primary.url.rsplit(':').next().expect("a port").to_owned();
    let replica = PrivateRedis::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--replicaof",
        "127.0.0.1",
        &port,
    ]);
    // In sync, and the replica's append-only file holds what the sync
    // brought: after a full sync a replica rewrites its AOF in the
    // background, and until that ends a kill -9 restarts it empty.
    let synced = || {
        let persistence = replica.cli(&["INFO", "persistence"]);
        primary
            .cli(&["INFO", "replication"])
            .contains("connected_slaves:1")
            && replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
            && !persistence.contains("aof_rewrites:0")
            && persistence.contains("aof_rewrite_in_progress:0")
            && persistence.contains("aof_rewrite_scheduled:0")
    };
    let started = Instant::now();
    while !synced() {
        assert!(
            started.elapsed() < REPLICA_SYNC_MAX,
            "the replica did not sync within {REPLICA_SYNC_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Pair { primary, replica }
}

/// A node of `deployment` asking `acks` replicas of each change.
fn node(deployment: &Deployment, acks: &str) -> Node {
    deployment.node_strict(&[
        "--redis-replica-acks",
        acks,
        "--redis-replica-ack-timeout-ms",
        ACK_TIMEOUT_MS,
    ])
}

/// What a run of the scenario saw: the orders answered `201` before and
/// during the freeze, and how many of them the promoted replica holds.
struct Outcome {
    during_freeze: Vec<u16>,
    acknowledged: Vec<String>,
    kept: usize,
}

/// Sells one unit before the freeze and three during it, loses the
/// primary and whatever the frozen replica had not applied, promotes the
/// replica and reads every acknowledged order through a node on it.
async fn scenario(acks: &str) -> Outcome {
    let mut pair = pair();
    let deployment = Deployment::new(Target::Single(pair.primary.url.clone()), 4);
    let mut first = node(&deployment, acks);
    let merchant = first.merchant("Xiaomi").await;
    let deal = first.deal(&merchant, 100, 10).await;
    let (_, token) = first.shoppers(1, "1000").await.remove(0);
    let mut acknowledged = Vec::new();
    let before = first
        .buy(&token, &deal, 1, "before")
        .await
        .expect("an answer");
    acknowledged.push(before.ok(201)["id"].as_str().unwrap_or_default().to_owned());

    pair.replica.signal("-STOP");
    let mut during_freeze = Vec::new();
    for key in ["frozen-1", "frozen-2", "frozen-3"] {
        let answer = first.buy(&token, &deal, 1, key).await.expect("an answer");
        during_freeze.push(answer.status);
        if answer.status == 201 {
            acknowledged.push(answer.body["id"].as_str().unwrap_or_default().to_owned());
        } else {
            assert_eq!((answer.status, answer.code()), (503, "unavailable"));
        }
    }
    first.kill();
    // The primary's machine is gone, and the frozen replica dies with
    // what it had received and not applied; it restarts from its own AOF.
    drop(pair.primary);
    pair.replica.crash_and_restart();
    pair.replica.cli(&["REPLICAOF", "NO", "ONE"]);

    let promoted = Deployment {
        target: Target::Single(pair.replica.url.clone()),
        namespace: deployment.namespace.clone(),
        shards: deployment.shards,
        secret: deployment.secret.clone(),
    };
    let after = promoted.node_strict(&[]);
    let mut kept = 0;
    for id in &acknowledged {
        let answer = after
            .get_through_unavailable(&format!("/v1/orders/{id}"), Some(&token))
            .await;
        if answer.status == 200 {
            kept += 1;
        } else {
            assert_eq!(answer.status, 404, "{}", answer.body);
        }
    }
    Outcome {
        during_freeze,
        acknowledged,
        kept,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_replica_ack_no_201_is_lost_with_the_primary() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let outcome = scenario("1").await;
    assert_eq!(
        outcome.during_freeze,
        [503, 503, 503],
        "a frozen replica turns every change into 503"
    );
    assert_eq!(
        outcome.kept,
        outcome.acknowledged.len(),
        "every 201 survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replica_acks_201s_are_lost_with_the_primary() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let outcome = scenario("0").await;
    assert_eq!(outcome.during_freeze, [201, 201, 201]);
    assert!(
        outcome.kept < outcome.acknowledged.len(),
        "the orders acknowledged during the freeze are gone: kept {} of {}",
        outcome.kept,
        outcome.acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_from_a_freeze_acknowledges_again_and_the_retry_finds_its_order() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let pair = pair();
    let deployment = Deployment::new(Target::Single(pair.primary.url.clone()), 4);
    let node = node(&deployment, "1");
    let merchant = node.merchant("Xiaomi").await;
    let deal = node.deal(&merchant, 100, 10).await;
    let (_, token) = node.shoppers(1, "1000").await.remove(0);
    pair.replica.signal("-STOP");
    let timed_out = node.buy(&token, &deal, 1, "k").await.expect("an answer");
    assert_eq!((timed_out.status, timed_out.code()), (503, "unavailable"));
    let message = timed_out.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("replica"), "{message}");
    pair.replica.signal("-CONT");
    // The primary applied it: the retry with the same key gets that order,
    // now acknowledged, and no second one.
    let retried = node.buy(&token, &deal, 1, "k").await.expect("an answer");
    let order = retried.ok(201);
    let again = node.buy(&token, &deal, 1, "k").await.expect("an answer");
    assert_eq!(again.ok(201)["id"], order["id"]);
    let wallet = node.get("/v1/wallet", Some(&token)).await.ok(200);
    assert_eq!(wallet["spent"], order["amount"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_replicas_is_refused_at_start_naming_the_flag() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let alone = PrivateRedis::aof_always();
    let deployment = Deployment::new(Target::Single(alone.url.clone()), 4);
    let refused = deployment.refused_start(&["--redis-replica-acks", "1"]);
    assert!(
        refused.contains("--redis-replica-acks") && refused.contains("0 connected replica"),
        "{refused}"
    );
    assert_eq!(
        alone.cli(&["KEYS", "*"]).trim(),
        "",
        "a refused node wrote into Redis"
    );
}

/// How long a node may take to see its primary's replicas change: it reads
/// them every second with Redis' persistence; the rest is slack.
const REPLICAS_SEEN_MAX: Duration = Duration::from_secs(15);

/// Polls `/readyz` until its status is `status`, for at most
/// [`REPLICAS_SEEN_MAX`]; its body then.
async fn readyz_becomes(node: &Node, status: u16) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let answer = node.get("/readyz", None).await;
        if answer.status == status {
            return answer.body;
        }
        assert!(
            started.elapsed() < REPLICAS_SEEN_MAX,
            "/readyz stayed {} ({})",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_without_its_replica_refuses_changes_at_once_and_is_not_ready() {
    if flashsale_testkit::redis_url().is_none() {
        return;
    }
    let pair = pair();
    let port = pair
        .primary
        .url
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    let deployment = Deployment::new(Target::Single(pair.primary.url.clone()), 4);
    let node = node(&deployment, "1");
    let merchant = node.merchant("Xiaomi").await;
    let deal = node.deal(&merchant, 100, 10).await;
    let (_, token) = node.shoppers(1, "1000").await.remove(0);
    drop(pair.replica);
    let why = readyz_becomes(&node, 503).await;
    assert!(why.to_string().contains("replicas"), "{why}");
    // Refused before the step ran (the not-ready refusal, not a WAIT that
    // timed out): nothing changed, so the retry later is a first attempt.
    let refused = node.buy(&token, &deal, 1, "k").await.expect("an answer");
    assert_eq!((refused.status, refused.code()), (503, "unavailable"));
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("fewer connected replicas"), "{message}");
    let wallet = node.get("/v1/wallet", Some(&token)).await.ok(200);
    assert_eq!(wallet["spent"], "0.00");

    let _back = PrivateRedis::start(&["--replicaof", "127.0.0.1", &port]);
    readyz_becomes(&node, 200).await;
    node.buy(&token, &deal, 1, "k")
        .await
        .expect("an answer")
        .ok(201);
}
