//! A node passes the deal's terms it has cached to every step, and the
//! shard checks only their version: a node whose copy is older than what
//! another node changed still decides with the newest terms. Two
//! `RedisStore`s share one namespace on the Redis of `REDIS_URL`, neither
//! running the poller or listening on the deals' channel, so the second
//! one's cache stays stale until a step answers `TERMS`.

mod support;

use flashsale_engine::{Answer, DealChange, EngineError, Money, ShopperId};
use flashsale_redis::RedisTarget;
use flashsale_store::{RedisStore, StoreError};

async fn store(url: &str, namespace: &str) -> RedisStore {
    support::connect(RedisTarget::Single(url.to_owned()), namespace, None).await
}

fn refusal(result: Result<impl std::fmt::Debug, flashsale_redis::Error>) -> EngineError {
    match result.map_err(StoreError::from) {
        Err(StoreError::Engine(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Node B caches the deal's terms, node A pauses the deal and B, its copy
/// stale, is refused `deal_paused`; A resumes it and B, its copy now stale
/// the other way (paused), settles. Each time B's step answers `TERMS`, B
/// reads the terms afresh and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_stale_terms_decides_with_the_newest() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("terms");
    let a = store(&url, &namespace).await;
    let b = store(&url, &namespace).await;
    let merchant = a.create_merchant("terms").await.expect("a merchant");
    let shoppers: Vec<ShopperId> = a
        .create_shoppers(1, Money::from_fen(1_000).expect("a credit"))
        .await
        .expect("a shopper");
    let shopper = shoppers[0];
    let deal = a
        .create_deal(merchant.id, support::open_deal("terms", a.now()))
        .await
        .expect("a deal")
        .id;
    let (_, answer) = b
        .buy(shopper, deal, 1, "first", b.epoch())
        .await
        .expect("B sells");
    assert_eq!(answer, Answer::Settled);

    let pause = |paused| DealChange {
        paused: Some(paused),
        ..DealChange::default()
    };
    a.update_deal(merchant.id, deal, pause(true))
        .await
        .expect("A pauses the deal");
    assert_eq!(
        refusal(b.buy(shopper, deal, 1, "while-paused", b.epoch()).await),
        EngineError::DealPaused,
        "B, its copy of the terms older than the pause, sold"
    );

    a.update_deal(merchant.id, deal, pause(false))
        .await
        .expect("A resumes the deal");
    let (order, answer) = b
        .buy(shopper, deal, 1, "resumed", b.epoch())
        .await
        .expect("B, its copy of the terms paused, refused a resumed deal");
    assert_eq!((answer, order.quantity), (Answer::Settled, 1));
    assert_eq!(a.deal(deal).await.expect("the deal").counts.sold, 2);

    support::delete_namespace(&[url], &namespace);
}
