//! Token revocation decided alike by both stores, and a Redis-mode node
//! that cannot read the revocations refusing to vouch for tokens.
//!
//! The engine is the specification (`rules::tokens`): a revocation at `T`
//! sets not-before `T + 1 ms`, a later one never lowers it, an unknown
//! account is `NotFound`. The Redis `revoke` step is held to it here, with
//! the same manual clock passed to both stores. Then two `RedisStore`s
//! share a namespace without running their pollers: the one that did not
//! revoke learns of it only when it reads Redis again, and its copy goes
//! stale (an error, `503`) once the propagation bound passes unread.

use std::sync::Arc;
use std::time::Duration;

use flashsale_engine::TOKEN_REVOCATIONS_MAX;
use flashsale_engine::{
    Account, Clock, EngineConfig, EngineError, Entity, ManualClock, MerchantId, Money, ShopperId,
    Timestamp,
};
use flashsale_journal::{Durability, Journal, JournalConfig};
use flashsale_redis::{REVOCATION_PROPAGATION, RedisTarget, StepClock};
use flashsale_store::{MemoryStore, RedisStore, Store, StoreError};

mod support;

const NOON: Timestamp = Timestamp(1_750_000_000_000);

async fn redis(url: &str, namespace: &str, clock: Option<Arc<ManualClock>>) -> RedisStore {
    support::connect(
        RedisTarget::Single(url.to_owned()),
        namespace,
        clock.map(|clock| StepClock(clock as Arc<dyn Clock>)),
    )
    .await
}

fn not_found(result: Result<Timestamp, StoreError>) -> Entity {
    match result {
        Err(StoreError::Engine(EngineError::NotFound(entity))) => entity,
        other => panic!("expected not_found, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_revoke_alike() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let memory_clock = Arc::new(ManualClock::new(NOON));
    let (journal, engine) = Journal::open(
        JournalConfig::new(dir.path().join("data"), Durability::Sync),
        EngineConfig {
            shards: 4,
            ..EngineConfig::default()
        },
        memory_clock.clone() as Arc<dyn Clock>,
    )
    .expect("the journal opens");
    let redis_clock = Arc::new(ManualClock::new(NOON));
    let namespace = support::namespace("revoke");
    let node = redis(&url, &namespace, Some(redis_clock.clone())).await;
    // Its poller keeps its copy of the revocations fresh.
    let poller = tokio::spawn(node.clone().run_poller());
    let stores = [
        (Store::Memory(MemoryStore { engine, journal }), memory_clock),
        (Store::Redis(node), redis_clock),
    ];
    let mut revoked = Vec::new();
    for (store, clock) in &stores {
        let merchant = store.create_merchant("m").await.expect("a merchant").id;
        let shopper = store
            .create_shopper("s", Money::ZERO, "signup")
            .await
            .expect("a shopper")
            .id;
        assert_eq!(
            not_found(store.revoke_tokens(Account::Shopper(ShopperId(999))).await),
            Entity::Shopper
        );
        assert_eq!(
            not_found(
                store
                    .revoke_tokens(Account::Merchant(MerchantId(999)))
                    .await
            ),
            Entity::Merchant
        );
        let account = Account::Shopper(shopper);
        assert_eq!(store.tokens_not_before(account).unwrap(), None);
        let first = store.revoke_tokens(account).await.unwrap();
        assert_eq!(
            first,
            Timestamp(NOON.0 + 1),
            "one millisecond after the clock"
        );
        assert_eq!(store.tokens_not_before(account).unwrap(), Some(first));
        clock.advance_millis(5);
        let second = store.revoke_tokens(account).await.unwrap();
        assert_eq!(second, Timestamp(NOON.0 + 6));
        revoked.push(account);
        assert_eq!(
            store
                .tokens_not_before(Account::Merchant(merchant))
                .unwrap(),
            None,
            "other accounts are untouched"
        );
    }
    poller.abort();
    // A node whose clock is behind (skew) never lowers the time in Redis.
    let behind = redis(&url, &namespace, Some(Arc::new(ManualClock::new(NOON)))).await;
    assert_eq!(
        behind.revoke_tokens(revoked[1]).await.unwrap(),
        Timestamp(NOON.0 + 6)
    );
    support::delete_namespace(&[url], &namespace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_learns_revocations_by_reading_and_goes_stale_without() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("revokenodes");
    let a = redis(&url, &namespace, None).await;
    let b = redis(&url, &namespace, None).await;
    let shopper = a.create_shoppers(1, Money::ZERO).await.expect("a shopper")[0];
    let account = Account::Shopper(shopper);
    // A reads Redis as a serving node does; B does not (yet).
    let a_poller = tokio::spawn(a.clone().run_poller());
    assert_eq!(b.tokens_not_before(account).unwrap(), None);
    let revoked = a.revoke_tokens(account).await.unwrap();
    assert_eq!(a.tokens_not_before(account).unwrap(), Some(revoked));
    // B has not read Redis since it started, before the revocation, and
    // the bound has passed while A waited: B refuses to vouch for tokens.
    assert!(matches!(
        b.tokens_not_before(account),
        Err(flashsale_redis::Error::RevocationsStale)
    ));
    // Its poller reads what is new, and B knows.
    let poller = tokio::spawn(b.clone().run_poller());
    let deadline = std::time::Instant::now() + REVOCATION_PROPAGATION;
    loop {
        match b.tokens_not_before(account) {
            Ok(found) => {
                assert_eq!(found, Some(revoked));
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("B did not read the revocation within the bound: {error}"),
        }
    }
    poller.abort();
    a_poller.abort();
    support::delete_namespace(&[url], &namespace);
}

/// Redis holds at most `TOKEN_REVOCATIONS_MAX` revoked accounts: one more
/// is refused (`CapacityReached`, `503`) and changes nothing, while an
/// account already there may be revoked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_a_revocation_past_the_bound() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("revokebound");
    let node = redis(&url, &namespace, None).await;
    let poller = tokio::spawn(node.clone().run_poller());
    let shoppers = node
        .create_shoppers(2, Money::ZERO)
        .await
        .expect("two shoppers");
    let (first, second) = (Account::Shopper(shoppers[0]), Account::Shopper(shoppers[1]));
    // All but one place taken by other accounts (merchants that need not
    // exist: the step counts entries), written straight into the hash.
    let fill = "for i = 1, tonumber(ARGV[1]) do \
                redis.call('HSET', KEYS[1], string.format('m_%x', i), '1') end";
    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let _: () = redis::cmd("EVAL")
        .arg(fill)
        .arg(1)
        .arg(format!("{namespace}:{{g}}:not-before"))
        .arg(TOKEN_REVOCATIONS_MAX - 1)
        .query_async(&mut connection)
        .await
        .expect("the hash fills");
    let line = node.revoke_tokens(first).await.expect("the last place");
    assert!(matches!(
        node.revoke_tokens(second).await,
        Err(flashsale_redis::Error::Engine(
            EngineError::CapacityReached {
                bound: "token_revocations_max"
            }
        ))
    ));
    assert_eq!(node.tokens_not_before(second).unwrap(), None);
    assert!(node.revoke_tokens(first).await.unwrap() >= line);
    poller.abort();
    support::delete_namespace(&[url], &namespace);
}
