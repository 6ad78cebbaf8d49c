//! What the store's test binaries share: a `RedisStore` on a test's own
//! key namespace.

use std::time::Duration;

use flashsale_redis::{RedisSettings, RedisTarget, StepClock};
use flashsale_store::RedisStore;

/// A `RedisStore` of 4 shards on `namespace` of `target`, taking a Redis
/// that persists nothing (the test servers'); `clock`, when given, is the
/// time of every step. Panics when Redis does not answer: it is configured.
pub async fn connect(target: RedisTarget, namespace: &str, clock: Option<StepClock>) -> RedisStore {
    let settings = RedisSettings {
        target,
        namespace: namespace.to_owned(),
        shards: 4,
        response_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        allow_volatile: true,
        books_backlog_per_stream_max: 0,
        clock,
        replica_acks: None,
    };
    RedisStore::connect(&settings)
        .await
        .unwrap_or_else(|error| panic!("Redis is configured but does not answer: {error}"))
}
