//! A node sends the buys and holds of one deal on one shard that arrive
//! while its previous call for them is in flight together, in one
//! `reserve` call (`redis/src/batch.rs`). This property test holds such a
//! call to the same requests sent one at a time: a burst goes at once
//! through one node, and the same requests one after another through a
//! second node on a twin namespace, on the Redis of `REDIS_URL` and on the
//! Cluster of `REDIS_CLUSTER_URLS` (a call's keys share one slot). Each
//! request's answer, and afterwards every wallet, the deal's numbers and
//! its orders, must be the same on both.
//!
//! Bursts mix buys and holds by the shoppers of one shard, with keys drawn
//! from a few (replays, a key reused for another request, the same key
//! twice in one call), quantities past the per-shopper limit, and wallets
//! that run dry within the burst. The shard's bucket holds the deal's
//! stock before the burst (a first buy refilled it), so no request waits
//! on a refill, whose retries would come back in another order. On a
//! current-thread runtime every request of a burst joins its lane before
//! the lane's first call answers: the first request goes alone and the
//! rest in one call; the node's counts check it.
//!
//! The one-at-a-time side is itself held to the engine by the model test
//! (`model.rs`). Cases: `FLASHSALE_BATCH_CASES` (default 200). A second
//! test fills one lane past its bound on requests waiting; a third drops a
//! lane's first request mid-call; a fourth counts the calls of a burst
//! over four lanes with four places for calls in flight and with one; a
//! fifth has a call of buys that all find the bucket empty refill it once.

mod support;

use std::sync::Arc;

use flashsale_engine::ids::shard_of;
use flashsale_engine::{
    Allocation, Clock, ManualClock, Money, NewDeal, OrderCursor, ShopperId, Timestamp,
};
use flashsale_redis::{RedisTarget, StepClock};
use flashsale_store::{RedisStore, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The shards of [`support::connect`]'s stores.
const SHARDS: usize = 4;
/// Shoppers made per case; those on shard 0 buy.
const SHOPPERS: u32 = 16;
/// 2026-11-21T12:00:00Z: both nodes' steps run at this time.
const NOON: Timestamp = Timestamp(1_795_262_400_000);

#[derive(Debug, Clone)]
struct Request {
    /// Index among the case's shoppers on shard 0.
    shopper: usize,
    hold: bool,
    quantity: u32,
    key: usize,
}

#[derive(Debug, Clone)]
struct Case {
    price: i64,
    limit: u32,
    credit: i64,
    requests: Vec<Request>,
}

fn case() -> impl Strategy<Value = Case> {
    let request = (0..4usize, proptest::bool::weighted(0.3), 0..4u32, 0..3usize).prop_map(
        |(shopper, hold, quantity, key)| Request {
            shopper,
            hold,
            quantity,
            key,
        },
    );
    (
        1..400i64,
        1..5u32,
        0..1_500i64,
        proptest::collection::vec(request, 2..24),
    )
        .prop_map(|(price, limit, credit, requests)| Case {
            price,
            limit,
            credit,
            requests,
        })
}

/// One node and the namespace it works in.
struct Node {
    store: RedisStore,
}

impl Node {
    async fn connect(target: &RedisTarget, namespace: &str, clock: &Arc<ManualClock>) -> Node {
        let store = support::connect(
            target.clone(),
            namespace,
            Some(StepClock(clock.clone() as Arc<dyn Clock>)),
        )
        .await;
        Node { store }
    }

    /// The case's deal and shoppers on shard 0, with the shard's bucket
    /// filled by a first buy of one unit.
    async fn set_up(&self, case: &Case) -> (flashsale_engine::DealId, Vec<ShopperId>) {
        let store = &self.store;
        let merchant = store.create_merchant("batch").await.expect("a merchant");
        let shoppers: Vec<ShopperId> = store
            .create_shoppers(SHOPPERS, Money::from_fen(case.credit).expect("a credit"))
            .await
            .expect("shoppers")
            .into_iter()
            .filter(|shopper| shard_of(*shopper, SHARDS) == 0)
            .collect();
        let deal = store
            .create_deal(
                merchant.id,
                NewDeal {
                    title: "batch".to_owned(),
                    price: Money::from_fen(case.price).expect("a price"),
                    stock: 1_000,
                    per_user_limit: Some(case.limit),
                    starts_at: Timestamp(NOON.0 - 60_000),
                    ends_at: Timestamp(NOON.0 + 3_600_000),
                    requires_registration: false,
                    hold_seconds: None,
                    allocation: Allocation::FirstCome,
                },
            )
            .await
            .expect("a deal")
            .id;
        // A shopper of shard 0 made only to fill the bucket.
        let filler = store
            .create_shoppers(SHOPPERS, Money::from_fen(100_000).expect("a credit"))
            .await
            .expect("shoppers")
            .into_iter()
            .find(|shopper| shard_of(*shopper, SHARDS) == 0)
            .expect("a shopper on shard 0");
        store
            .buy(filler, deal, 1, "fill", store.epoch())
            .await
            .expect("the first buy refills the bucket");
        (deal, shoppers)
    }

    /// One request's answer, as text to compare.
    async fn send(
        &self,
        deal: flashsale_engine::DealId,
        shoppers: &[ShopperId],
        request: &Request,
    ) -> String {
        let store = &self.store;
        let shopper = shoppers[request.shopper % shoppers.len()];
        let key = format!("k{}", request.key);
        let answer = if request.hold {
            store
                .hold(shopper, deal, request.quantity, &key, store.epoch())
                .await
                .map(|hold| format!("{hold:?}"))
        } else {
            store
                .buy(shopper, deal, request.quantity, &key, store.epoch())
                .await
                .map(|(order, answer)| format!("{order:?} {answer:?}"))
        };
        match answer.map_err(StoreError::from) {
            Ok(text) => text,
            Err(StoreError::Engine(refusal)) => format!("refused: {refusal:?}"),
            Err(other) => panic!("the store failed rather than answer: {other}"),
        }
    }

    /// What a case leaves: each shopper's wallet and orders, the deal's
    /// numbers and orders.
    async fn state(&self, deal: flashsale_engine::DealId, shoppers: &[ShopperId]) -> String {
        let store = &self.store;
        let mut state = format!("{:?}\n", store.deal(deal).await.expect("the deal"));
        for shopper in shoppers {
            state += &format!(
                "{:?} {:?}\n",
                store.wallet(*shopper).await.expect("a wallet"),
                store
                    .orders_of_shopper(*shopper, None, OrderCursor::default(), 100)
                    .await
                    .expect("orders")
            );
        }
        state += &format!(
            "{:?}",
            store
                .orders_of_deal(deal, OrderCursor::default(), 100)
                .await
                .expect("orders")
        );
        state
    }
}

#[test]
fn a_batched_call_answers_as_calls_one_at_a_time() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    batched_against_one_at_a_time(RedisTarget::Single(url.clone()), &[url]);
}

#[test]
fn a_batched_call_answers_as_calls_one_at_a_time_on_a_cluster() {
    let Some(urls) = flashsale_testkit::redis_cluster_seeds() else {
        return;
    };
    // The seeds are the Cluster's primaries: every key is on one of them.
    batched_against_one_at_a_time(RedisTarget::Cluster(urls.clone()), &urls);
}

/// The property on `target`, whose keys live on the servers of `urls`.
fn batched_against_one_at_a_time(target: RedisTarget, urls: &[String]) {
    // One thread: a burst's requests all join their lane before its first call answers.
    let runtime = current_thread();
    let cases = std::env::var("FLASHSALE_BATCH_CASES")
        .ok()
        .and_then(|cases| cases.trim().parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let batched_requests = std::cell::Cell::new(0u64);
    let result = runner.run(&case(), |case| {
        // Twin namespaces of their own: a failed case (while shrinking)
        // leaves nothing the next one meets.
        let (batched, single) = (support::namespace("batch"), support::namespace("single"));
        let outcome = runtime.block_on(run(&target, &batched, &single, &case));
        support::delete_namespace(urls, &batched);
        support::delete_namespace(urls, &single);
        batched_requests.set(batched_requests.get() + outcome?);
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    eprintln!(
        "{cases} bursts, {} requests in batched calls",
        batched_requests.get()
    );
}

/// One case: the burst on the `batched` namespace, the same requests one
/// at a time on `single`; the requests that were batched.
async fn run(
    target: &RedisTarget,
    batched: &str,
    single: &str,
    case: &Case,
) -> Result<u64, TestCaseError> {
    let clock = Arc::new(ManualClock::new(NOON));
    let burst = Node::connect(target, batched, &clock).await;
    let one_by_one = Node::connect(target, single, &clock).await;
    let (deal, shoppers) = burst.set_up(case).await;
    let (twin_deal, twin_shoppers) = one_by_one.set_up(case).await;
    prop_assert_eq!(deal, twin_deal, "the twins number alike");
    prop_assert_eq!(&shoppers, &twin_shoppers, "the twins number alike");
    let before = burst.store.reserve_calls();
    let answers = futures_util::future::join_all(
        case.requests
            .iter()
            .map(|request| burst.send(deal, &shoppers, request)),
    )
    .await;
    let after = burst.store.reserve_calls();
    // Quantity 0 is refused before it joins a lane.
    let sent = case
        .requests
        .iter()
        .filter(|request| request.quantity > 0)
        .count() as u64;
    prop_assert_eq!(after.requests - before.requests, sent);
    // The first goes alone; the rest, waiting behind it, in one call.
    prop_assert_eq!(
        after.calls - before.calls,
        sent.min(2),
        "the first alone, then one call"
    );
    for (request, answer) in case.requests.iter().zip(&answers) {
        let alone = one_by_one.send(deal, &shoppers, request).await;
        prop_assert_eq!(answer, &alone, "{:?}", request);
    }
    prop_assert_eq!(
        burst.state(deal, &shoppers).await,
        one_by_one.state(deal, &shoppers).await
    );
    Ok(sent)
}

/// A node on a namespace of its own (deleted when this is dropped, pass or
/// fail) on a current-thread runtime, so requests made at once join their
/// lane before its first call answers, with `case`'s deal set up.
struct Fresh {
    runtime: tokio::runtime::Runtime,
    node: Node,
    deal: flashsale_engine::DealId,
    shoppers: Vec<ShopperId>,
    url: String,
    namespace: String,
}

impl Fresh {
    /// `None` (the test says it is skipped) without `REDIS_URL`.
    fn new(what: &str, case: &Case) -> Option<Fresh> {
        let url = flashsale_testkit::redis_url()?;
        let namespace = support::namespace(what);
        let runtime = current_thread();
        let (node, deal, shoppers) = runtime.block_on(async {
            let clock = Arc::new(ManualClock::new(NOON));
            let node = Node::connect(&RedisTarget::Single(url.clone()), &namespace, &clock).await;
            let (deal, shoppers) = node.set_up(case).await;
            (node, deal, shoppers)
        });
        Some(Fresh {
            runtime,
            node,
            deal,
            shoppers,
            url,
            namespace,
        })
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        support::delete_namespace(std::slice::from_ref(&self.url), &self.namespace);
    }
}

/// A lane holds at most `REQUESTS_WAITING_MAX` requests waiting on one
/// node: one more is refused at once (`503 unavailable` in the API) and
/// never sent, while the others are answered by Redis.
#[test]
fn a_full_lane_refuses_the_next_request_without_sending_it() {
    let case = Case {
        price: 1,
        limit: 1,
        credit: 100,
        requests: Vec::new(),
    };
    let Some(fresh) = Fresh::new("lane", &case) else {
        return;
    };
    let (store, deal, shopper) = (&fresh.node.store, fresh.deal, fresh.shoppers[0]);
    fresh.runtime.block_on(async {
        let wallet = store.wallet(shopper).await.expect("a wallet");
        let before = store.reserve_calls();
        // The first goes alone; the bound counts those behind it.
        let requests = flashsale_redis::REQUESTS_WAITING_MAX + 2;
        let keys: Vec<String> = (0..requests).map(|index| format!("lane-{index}")).collect();
        // Every request joins the lane before its first call answers.
        let answers = futures_util::future::join_all(
            keys.iter()
                .map(|key| store.buy(shopper, deal, 1, key, store.epoch())),
        )
        .await;
        let sent = store.reserve_calls().requests - before.requests;
        assert_eq!(sent, flashsale_redis::REQUESTS_WAITING_MAX as u64 + 1);
        let waiting: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, answer)| matches!(answer, Err(flashsale_redis::Error::RequestsWaiting)))
            .map(|(index, _)| index)
            .collect();
        assert_eq!(waiting, [requests - 1], "only the request past the bound");
        let settled = answers.iter().filter(|answer| answer.is_ok()).count();
        assert_eq!(settled, 1, "one unit per shopper");
        let after = store.wallet(shopper).await.expect("a wallet");
        assert_eq!(after.spent.fen(), wallet.spent.fen() + 1);
    });
}

/// The first request of an idle lane sends its call from its own task; a
/// caller that stops waiting mid-call (its client hung up) still hands
/// the requests waiting behind it to the lane, which answers them.
#[test]
fn a_first_request_dropped_mid_call_leaves_its_lane_answering() {
    use futures_util::FutureExt;
    let case = Case {
        price: 1,
        limit: 2,
        credit: 100,
        requests: Vec::new(),
    };
    let Some(fresh) = Fresh::new("handoff", &case) else {
        return;
    };
    let (store, deal, shopper) = (&fresh.node.store, fresh.deal, fresh.shoppers[0]);
    fresh.runtime.block_on(async {
        let mut first = Box::pin(store.buy(shopper, deal, 1, "first", store.epoch()));
        assert!(
            (&mut first).now_or_never().is_none(),
            "the first request's call is in flight"
        );
        let mut second = Box::pin(store.buy(shopper, deal, 1, "second", store.epoch()));
        assert!(
            (&mut second).now_or_never().is_none(),
            "the second waits behind it"
        );
        drop(first);
        // Polled between the runtime's other tasks, for 10 s at most.
        let started = std::time::Instant::now();
        let answer = loop {
            if let Some(answer) = (&mut second).now_or_never() {
                break answer;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the request waiting behind the dropped one is never answered"
            );
            tokio::task::yield_now().await;
        };
        assert!(answer.is_ok(), "{answer:?}");
    });
}

/// A node sends at most `--redis-reserve-calls-in-flight` calls at once: a
/// lane whose first request finds no place free waits, gathering what
/// arrives, and sends it all in one call. A burst of three buys on each of
/// four shards, every request joining its lane before a call answers:
/// with four places each lane's first buy goes alone and its other two
/// after it (8 calls); with one place only the first lane's first buy goes
/// alone and every lane then sends what it gathered in one call (5).
#[test]
fn fewer_calls_in_flight_carry_more_buys_each() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    for (places, calls) in [(4, 8), (1, 5)] {
        let namespace = support::namespace("places");
        let runtime = current_thread();
        runtime.block_on(async {
            let clock = Arc::new(ManualClock::new(NOON));
            let store = support::connect_with_calls(
                RedisTarget::Single(url.clone()),
                &namespace,
                Some(StepClock(clock.clone() as Arc<dyn Clock>)),
                places,
            )
            .await;
            let (deal, shoppers) = one_per_shopper(&store, "places").await;
            // Per shard: one shopper's buy fills its bucket, three buy in the burst.
            let mut burst = Vec::new();
            for shard in 0..SHARDS {
                let on_shard: Vec<ShopperId> = shoppers
                    .iter()
                    .copied()
                    .filter(|shopper| shard_of(*shopper, SHARDS) == shard)
                    .collect();
                assert!(on_shard.len() >= 4, "four shoppers on shard {shard}");
                store
                    .buy(on_shard[0], deal, 1, "fill", store.epoch())
                    .await
                    .expect("the first buy refills the bucket");
                burst.extend_from_slice(&on_shard[1..4]);
            }
            let before = store.reserve_calls();
            let answers = futures_util::future::join_all(
                burst
                    .iter()
                    .map(|shopper| store.buy(*shopper, deal, 1, "burst", store.epoch())),
            )
            .await;
            let after = store.reserve_calls();
            assert!(
                answers.iter().all(Result::is_ok),
                "every buy settles: {answers:?}"
            );
            assert_eq!(after.requests - before.requests, burst.len() as u64);
            assert_eq!(
                after.calls - before.calls,
                calls,
                "{places} places in flight"
            );
        });
        support::delete_namespace(std::slice::from_ref(&url), &namespace);
    }
}

/// The buys of one call that all find their shard's bucket empty move one
/// chunk from the pool between them, not one each: a request whose shard
/// the node refilled after its call was sent retries on that chunk. Four
/// shoppers of one shard buy at once on a deal whose bucket has never
/// been filled: the first goes alone and refills, the other three find
/// the bucket still empty in the call behind it; one transfer in all
/// (the deal's `transfers` count), every buy settled.
#[test]
fn the_buys_of_one_call_that_find_the_bucket_empty_refill_it_once() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("refill");
    let runtime = current_thread();
    runtime.block_on(async {
        let clock = Arc::new(ManualClock::new(NOON));
        let node = Node::connect(&RedisTarget::Single(url.clone()), &namespace, &clock).await;
        let store = &node.store;
        let (deal, shoppers) = one_per_shopper(store, "refill").await;
        let shoppers: Vec<ShopperId> = shoppers
            .into_iter()
            .filter(|shopper| shard_of(*shopper, SHARDS) == 0)
            .take(4)
            .collect();
        assert_eq!(shoppers.len(), 4, "four shoppers on shard 0");
        let answers = futures_util::future::join_all(
            shoppers
                .iter()
                .map(|shopper| store.buy(*shopper, deal, 1, "once", store.epoch())),
        )
        .await;
        assert!(
            answers.iter().all(Result::is_ok),
            "every buy settles: {answers:?}"
        );
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let mut connection = client.get_connection().expect("Redis answers");
        let transfers: u64 = redis::cmd("HGET")
            .arg(format!("{namespace}:{{d:{}}}", deal.0))
            .arg("transfers")
            .query(&mut connection)
            .expect("the deal's transfer count");
        assert_eq!(transfers, 1, "one chunk for the four buys");
    });
    support::delete_namespace(std::slice::from_ref(&url), &namespace);
}

/// A deal of 1,000 units at 1.00, one per shopper, titled `title`, and
/// [`SHOPPERS`] shoppers with 10.00 each, made on `store`.
async fn one_per_shopper(
    store: &RedisStore,
    title: &str,
) -> (flashsale_engine::DealId, Vec<ShopperId>) {
    let merchant = store.create_merchant(title).await.expect("a merchant");
    let deal = store
        .create_deal(
            merchant.id,
            NewDeal {
                stock: 1_000,
                per_user_limit: Some(1),
                ..support::open_deal(title, NOON)
            },
        )
        .await
        .expect("a deal")
        .id;
    let shoppers = store
        .create_shoppers(SHOPPERS, Money::from_fen(1_000).expect("a credit"))
        .await
        .expect("shoppers");
    (deal, shoppers)
}

/// A runtime of one thread: requests made at once all join their lanes
/// before any call answers.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}
