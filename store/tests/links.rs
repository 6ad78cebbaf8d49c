//! The first requests of one external id race: 50 concurrent
//! `link_shopper` calls through 3 `RedisStore`s (3 nodes, 3 connections)
//! on the Redis of `REDIS_URL` and on the Cluster of `REDIS_CLUSTER_URLS`,
//! and through the embedded store on a multi-threaded runtime, make one
//! shopper credited once; `link_merchant` likewise makes one merchant. A
//! link whose account a crashed node never made is repaired by the next
//! request.

use std::sync::Arc;
mod support;

use flashsale_engine::{Clock, EngineConfig, Money, ShopperId, SystemClock};
use flashsale_journal::{Durability, Journal, JournalConfig};
use flashsale_redis::RedisTarget;
use flashsale_store::{MemoryStore, Store};

const RACERS: usize = 50;
const NODES: usize = 3;
const SIGNUP_FEN: i64 = 1_000;

async fn node(target: RedisTarget, namespace: &str) -> Store {
    Store::Redis(support::connect(target, namespace, None).await)
}

/// `RACERS` concurrent first requests of one external id, spread over
/// `stores`: one shopper, made by one of them, its signup credit landed
/// once; one merchant likewise.
async fn race(stores: Vec<Arc<Store>>) {
    let external = "auth0|racer";
    let signup = Money::from_fen(SIGNUP_FEN).expect("a credit");
    let tasks: Vec<_> = (0..RACERS)
        .map(|racer| {
            let store = stores[racer % stores.len()].clone();
            tokio::spawn(async move {
                let shopper = store
                    .link_shopper(external, &format!("racer {racer}"), signup, "signup")
                    .await
                    .expect("link_shopper");
                let merchant = store
                    .link_merchant(external, &format!("racer {racer}"))
                    .await
                    .expect("link_merchant");
                (shopper, merchant)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("a racer"));
    }
    let shoppers: Vec<_> = results.iter().map(|(shopper, _)| shopper).collect();
    let merchants: Vec<_> = results.iter().map(|(_, merchant)| merchant).collect();
    assert_eq!(shoppers.iter().filter(|(_, made)| *made).count(), 1);
    assert_eq!(merchants.iter().filter(|(_, made)| *made).count(), 1);
    let (shopper, _) = shoppers[0];
    let (merchant, _) = merchants[0];
    for (other, _) in &shoppers {
        assert_eq!(other.id, shopper.id, "one shopper for the external id");
        assert_eq!(other.name, shopper.name, "the first name stays");
        assert_eq!(other.external_id.as_deref(), Some(external));
    }
    for (other, _) in &merchants {
        assert_eq!(other.id, merchant.id, "one merchant for the external id");
    }
    for store in &stores {
        let wallet = store.wallet(shopper.id).await.expect("the wallet");
        assert_eq!(wallet.credited, signup, "the signup credit landed once");
        assert_eq!(wallet.available, signup);
        let read = store.shopper(shopper.id).await.expect("a read");
        assert_eq!(read.and_then(|s| s.external_id).as_deref(), Some(external));
        let read = store.merchant(merchant.id).await.expect("a read");
        assert_eq!(read.and_then(|m| m.external_id).as_deref(), Some(external));
        assert_eq!(
            store.shopper_of_external(external).await.expect("a read"),
            Some(shopper.id)
        );
    }
}

/// The link points at an id whose account was never made (a node died
/// between `HSETNX` and the `link` step): the next request makes it, with
/// its credit, once.
async fn repair(target: &RedisTarget, namespace: &str, store: &Store) {
    let Store::Redis(redis_store) = store else {
        unreachable!("a Redis store")
    };
    let orphan = ShopperId(1_000_000);
    let mut hsetnx = redis::cmd("HSETNX");
    hsetnx
        .arg(format!("{namespace}:{{g}}:ext:shoppers"))
        .arg("auth0|crashed")
        .arg(orphan.0);
    let set: bool = match target {
        RedisTarget::Single(url) => {
            let client = redis::Client::open(url.as_str()).expect("a Redis URL");
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .expect("Redis answers");
            hsetnx.query_async(&mut connection).await.expect("HSETNX")
        }
        RedisTarget::Cluster(urls) => {
            // The client asks the node that holds the key's slot.
            let client = redis::cluster::ClusterClient::new(urls.clone()).expect("a Cluster");
            let mut connection = client
                .get_async_connection()
                .await
                .expect("the Cluster answers");
            hsetnx.query_async(&mut connection).await.expect("HSETNX")
        }
    };
    assert!(set);
    assert_eq!(
        redis_store.shopper(orphan).await.expect("a read"),
        None,
        "the crash left no account"
    );
    let signup = Money::from_fen(SIGNUP_FEN).expect("a credit");
    let (shopper, made) = store
        .link_shopper("auth0|crashed", "late", signup, "signup")
        .await
        .expect("the repair");
    assert!(made);
    assert_eq!(shopper.id, orphan);
    let (again, made) = store
        .link_shopper("auth0|crashed", "later", signup, "signup")
        .await
        .expect("found");
    assert!(!made);
    assert_eq!(again, shopper);
    assert_eq!(
        store.wallet(orphan).await.expect("a wallet").credited,
        signup
    );
}

/// Prints how many shopper ids the racers reserved: more than one means
/// several found no link and offered their own (one won).
fn offered(url: &str, namespace: &str) {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut connection = client.get_connection().expect("Redis answers");
    let reserved: Option<u64> = redis::cmd("HGET")
        .arg(format!("{namespace}:{{g}}:seq"))
        .arg("shopper")
        .query(&mut connection)
        .expect("HGET");
    eprintln!("racing links reserved {reserved:?} shopper ids for one shopper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_links_on_redis_make_one_shopper_credited_once() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("links");
    let mut stores = Vec::new();
    for _ in 0..NODES {
        stores.push(Arc::new(
            node(RedisTarget::Single(url.clone()), &namespace).await,
        ));
    }
    race(stores.clone()).await;
    offered(&url, &namespace);
    repair(&RedisTarget::Single(url.clone()), &namespace, &stores[0]).await;
    support::delete_namespace(&[url], &namespace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_links_on_a_cluster_make_one_shopper_credited_once() {
    let Some(urls) = flashsale_testkit::redis_cluster_seeds() else {
        return;
    };
    let namespace = support::namespace("links");
    let mut stores = Vec::new();
    for _ in 0..NODES {
        stores.push(Arc::new(
            node(RedisTarget::Cluster(urls.clone()), &namespace).await,
        ));
    }
    race(stores.clone()).await;
    repair(&RedisTarget::Cluster(urls.clone()), &namespace, &stores[0]).await;
    support::delete_namespace(&urls, &namespace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_links_on_the_embedded_store_make_one_shopper_credited_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (journal, engine) = Journal::open(
        JournalConfig::new(dir.path().join("data"), Durability::Sync),
        EngineConfig::default(),
        Arc::new(SystemClock) as Arc<dyn Clock>,
    )
    .expect("the journal opens");
    let store = Arc::new(Store::Memory(MemoryStore { engine, journal }));
    race(vec![store]).await;
}
