//! What the store's test binaries share: a `RedisStore` on a test's own
//! key namespace.

use std::time::Duration;

use flashsale_engine::{Allocation, Money, NewDeal, Timestamp};
use flashsale_redis::{RESERVE_CALLS_IN_FLIGHT_DEFAULT, RedisSettings, RedisTarget, StepClock};
use flashsale_store::RedisStore;

/// A `RedisStore` of 4 shards on `namespace` of `target`, taking a Redis
/// that persists nothing (the test servers'); `clock`, when given, is the
/// time of every step. Panics when Redis does not answer: it is configured.
pub async fn connect(target: RedisTarget, namespace: &str, clock: Option<StepClock>) -> RedisStore {
    connect_with_calls(target, namespace, clock, RESERVE_CALLS_IN_FLIGHT_DEFAULT).await
}

/// [`connect`], with `calls_in_flight` places for the node's `reserve`
/// calls (`--redis-reserve-calls-in-flight`).
pub async fn connect_with_calls(
    target: RedisTarget,
    namespace: &str,
    clock: Option<StepClock>,
    calls_in_flight: usize,
) -> RedisStore {
    let settings = RedisSettings {
        target,
        namespace: namespace.to_owned(),
        shards: 4,
        response_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        allow_volatile: true,
        books_backlog_per_stream_max: 0,
        reserve_calls_in_flight: calls_in_flight,
        clock,
        replica_acks: None,
    };
    RedisStore::connect(&settings)
        .await
        .unwrap_or_else(|error| panic!("Redis is configured but does not answer: {error}"))
}

/// A key namespace starting with `what` that no other test (nor an
/// earlier run) uses.
pub fn namespace(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{what}{}x{nanos}", std::process::id())
}

/// Deletes every key of `namespace` on every server of `urls` (SCAN and
/// UNLINK; never FLUSHALL: other tests share these servers).
pub fn delete_namespace(urls: &[String], namespace: &str) {
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let mut connection = client.get_connection().expect("Redis answers");
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{namespace}:*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut connection)
                .expect("SCAN");
            for key in keys {
                // One key per call: a Cluster refuses keys of several slots.
                let _: i64 = redis::cmd("UNLINK")
                    .arg(&key)
                    .query(&mut connection)
                    .expect("UNLINK");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// A first-come deal titled `title` on sale from a minute before `now`
/// to an hour after it: 10 units at 1.00, at most 5 per shopper, no
/// registration, the default hold time.
#[allow(
    dead_code,
    reason = "every test binary includes this module; not every one makes a deal"
)]
pub fn open_deal(title: &str, now: Timestamp) -> NewDeal {
    NewDeal {
        title: title.to_owned(),
        price: Money::from_fen(100).expect("a price"),
        stock: 10,
        per_user_limit: Some(5),
        starts_at: Timestamp(now.0 - 60_000),
        ends_at: Timestamp(now.0 + 3_600_000),
        requires_registration: false,
        hold_seconds: None,
        allocation: Allocation::FirstCome,
    }
}
