//! The deals' numbers one node reads for every node each second
//! (`redis/src/sums.rs`), on the Redis of `REDIS_URL`: in a deployment of
//! three nodes about one of them reads the sums a second and the others
//! take them, a change no message told of still reaches every node
//! within the bound, and a node never takes an older copy of a deal's
//! hash over the newer one it read.

mod support;

use std::time::{Duration, Instant};

use flashsale_engine::{DealChange, DealId, DealView};
use flashsale_redis::RedisTarget;
use flashsale_store::RedisStore;

/// How long the nodes' pollers run while the test counts their reads.
const WATCH: Duration = Duration::from_millis(4_000);
/// How long a change no message told of may take to reach a node: the
/// sums' second, a poll, and slack for a loaded machine.
const SAFETY_NET_BOUND: Duration = Duration::from_millis(2_500);

async fn store(url: &str, namespace: &str) -> RedisStore {
    support::connect(RedisTarget::Single(url.to_owned()), namespace, None).await
}

fn redis_connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_connection()
        .expect("Redis answers")
}

fn cached(node: &RedisStore, deal: DealId) -> Option<DealView> {
    node.feed_deals(100)
        .into_iter()
        .find(|view| view.id == deal)
}

/// Three nodes with their pollers: over four seconds the sums are read
/// from the shards about once a second in all (not once a second per
/// node), and every node takes the others' sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_a_second_reads_the_sums_for_all() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("sums");
    let nodes = [
        store(&url, &namespace).await,
        store(&url, &namespace).await,
        store(&url, &namespace).await,
    ];
    let merchant = nodes[0].create_merchant("sums").await.expect("a merchant");
    for index in 0..5 {
        nodes[0]
            .create_deal(
                merchant.id,
                support::open_deal(&format!("sums {index}"), nodes[0].now()),
            )
            .await
            .expect("a deal");
    }
    let before: Vec<(u64, u64)> = nodes.iter().map(RedisStore::sums_read).collect();
    let pollers: Vec<_> = nodes
        .iter()
        .map(|node| tokio::spawn(node.clone().run_poller()))
        .collect();
    tokio::time::sleep(WATCH).await;
    for poller in &pollers {
        poller.abort();
    }
    let counts: Vec<(u64, u64)> = nodes
        .iter()
        .zip(&before)
        .map(|(node, (read, taken))| {
            let (read_now, taken_now) = node.sums_read();
            (read_now - read, taken_now - taken)
        })
        .collect();
    let reads: u64 = counts.iter().map(|(read, _)| read).sum();
    // Each node alone would read them 4 times (12 in all).
    assert!(
        (3..=6).contains(&reads),
        "the sums were read {reads} times in 4 s by three nodes: {counts:?}"
    );
    eprintln!("sums read and taken per node in 4 s: {counts:?}");
    for (node, (read, taken)) in counts.iter().enumerate() {
        // A second's sums are taken at the poll after they are written.
        assert!(
            read + taken >= 2,
            "node {node} read {read} and took {taken} sums in 4 s"
        );
    }
    support::delete_namespace(&[url], &namespace);
}

/// A restock whose message no node heard (written to the deal's hash as
/// the step would, without publishing) reaches every node with a poller
/// within the safety net's bound, whichever node reads the sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_message_told_of_reaches_every_node() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("sumsnet");
    let nodes = [
        store(&url, &namespace).await,
        store(&url, &namespace).await,
        store(&url, &namespace).await,
    ];
    let merchant = nodes[0].create_merchant("net").await.expect("a merchant");
    let deal = nodes[0]
        .create_deal(merchant.id, support::open_deal("net", nodes[0].now()))
        .await
        .expect("a deal")
        .id;
    let pollers: Vec<_> = nodes
        .iter()
        .map(|node| tokio::spawn(node.clone().run_poller()))
        .collect();
    let mut connection = redis_connection(&url);
    let key = format!("{namespace}:{{d:{}}}", deal.0);
    let _: () = redis::pipe()
        .cmd("HINCRBY")
        .arg(&key)
        .arg("pool")
        .arg(5)
        .cmd("HINCRBY")
        .arg(&key)
        .arg("total")
        .arg(5)
        .cmd("HINCRBY")
        .arg(&key)
        .arg("c")
        .arg(1)
        .query(&mut connection)
        .expect("the deal's hash changes");
    let started = Instant::now();
    for (index, node) in nodes.iter().enumerate() {
        loop {
            let total = cached(node, deal).map(|view| view.counts.total);
            if total == Some(15) {
                break;
            }
            assert!(
                started.elapsed() < SAFETY_NET_BOUND,
                "node {index} still shows a total of {total:?} after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for poller in &pollers {
        poller.abort();
    }
    support::delete_namespace(&[url], &namespace);
}

/// A node that re-read a deal after a restock (change count 1) and then
/// takes sums read before it (change count 0) keeps its newer total and
/// pool, and takes the sums' numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_sums_never_undo_a_newer_read() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("sumsold");
    let a = store(&url, &namespace).await;
    let b = store(&url, &namespace).await;
    let mut connection = redis_connection(&url);
    // No node gets the turn to read the sums: b takes what is written.
    let _: () = redis::cmd("SET")
        .arg(format!("{namespace}:{{g}}:sums:lease"))
        .arg("test")
        .arg("PX")
        .arg(60_000)
        .query(&mut connection)
        .expect("the lease is taken");
    let merchant = a.create_merchant("old").await.expect("a merchant");
    let deal = a
        .create_deal(merchant.id, support::open_deal("old", a.now()))
        .await
        .expect("a deal");
    let ends = deal.ends_at.millis();
    a.update_deal(
        merchant.id,
        deal.id,
        DealChange {
            add_stock: Some(5),
            ..DealChange::default()
        },
    )
    .await
    .expect("a restock");
    b.deal(deal.id).await.expect("b reads the deal afresh");
    // Sums read before the restock: change count 0, total and pool 10,
    // 3 sold.
    let _: () = redis::cmd("HSET")
        .arg(format!("{namespace}:{{g}}:sums"))
        .arg("at")
        .arg("before-the-restock")
        .arg(deal.id.0)
        .arg(format!("0:1:{ends}:0:10:7:0:0:0:3:3:0:0"))
        .query(&mut connection)
        .expect("the sums are written");
    b.start().await.expect("b polls");
    let view = cached(&b, deal.id).expect("b lists the deal");
    assert_eq!(view.counts.sold, 3, "b took the sums' numbers");
    assert_eq!(view.counts.total, 15, "b kept its newer total");
    assert_eq!(view.counts.remaining, 15, "b kept its newer pool");
    support::delete_namespace(&[url], &namespace);
}
