//! What the store's Redis tests share: a node's settings for a test
//! namespace on the Redis of `REDIS_URL`.

use std::sync::Arc;
use std::time::Duration;

use flashsale_engine::Clock;
use flashsale_redis::{RedisSettings, RedisTarget, StepClock};
use flashsale_store::RedisStore;

/// A node of `namespace` on the Redis at `url` (4 shards, volatile Redis
/// allowed, no books bound), reading `clock` if given (its steps too),
/// else the system's; connected and started. Panics when Redis does not
/// answer: the tests run it only when Redis is configured.
pub async fn redis_node(url: &str, namespace: &str, clock: Option<Arc<dyn Clock>>) -> RedisStore {
    let settings = RedisSettings {
        target: RedisTarget::Single(url.to_owned()),
        namespace: namespace.to_owned(),
        shards: 4,
        response_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        allow_volatile: true,
        books_backlog_per_stream_max: 0,
        clock: clock.map(StepClock),
        replica_acks: None,
    };
    RedisStore::connect(&settings)
        .await
        .unwrap_or_else(|error| panic!("Redis is configured but does not answer: {error}"))
}
