//! Where a multi-node deployment keeps its state: the flags `serve` and
//! `audit` share ([`RedisArgs`], parsed by clap), validated into
//! [`RedisSettings`].

use std::sync::Arc;

pub use crate::replication::ReplicaAckSettings;
use std::time::Duration;

use flashsale_engine::Clock;

use crate::error::Error;

/// How to reach Redis, from `serve`'s flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// One Redis (`redis://host:port`), or a Cluster's seed addresses.
    pub target: RedisTarget,
    /// Key prefix, so deployments (and tests) can share one Redis.
    pub namespace: String,
    /// Virtual shards (power of two, 1 to 1024).
    pub shards: usize,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// Serve even when Redis persists nothing (`--allow-volatile-redis`):
    /// a restart of Redis then loses every acknowledged order.
    pub allow_volatile: bool,
    /// Entries of one shard's books stream past which a buy or a hold's
    /// payment answers `503 unavailable` (`--books-backlog-max` over the
    /// shards); 0: no bound (no node writes Postgres).
    pub books_backlog_per_stream_max: u64,
    /// `--redis-reserve-calls-in-flight`: the node's `reserve` calls in
    /// flight at most, all lanes together (1 to
    /// [`crate::RESERVE_CALLS_IN_FLIGHT_MAX`]; `redis/src/batch.rs`):
    /// fewer make fuller calls.
    pub reserve_calls_in_flight: usize,
    /// Tests only: a clock of the test's own that this node reads and
    /// hands to every step as its time, in place of Redis' `TIME`, so a
    /// test can move time (hold expiry, a deal's start and end). `None` in
    /// production: the node reads the system clock and the steps Redis'
    /// one clock.
    pub clock: Option<StepClock>,
    /// `--redis-replica-acks`: a change is answered only once this many
    /// replicas of its primary acknowledged it (`WAIT`, group commit:
    /// `replication.rs`); `None`: answered once the primary applied it.
    pub replica_acks: Option<ReplicaAckSettings>,
}

/// A clock given to the steps in place of Redis' `TIME` (tests only;
/// [`RedisSettings::clock`]). Settings compare equal when they share the
/// same clock.
#[derive(Clone)]
pub struct StepClock(pub Arc<dyn Clock>);

impl std::fmt::Debug for StepClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StepClock({})", self.0.now().millis())
    }
}

impl PartialEq for StepClock {
    fn eq(&self, other: &StepClock) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Eq for StepClock {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// Where a multi-node deployment keeps its state: the flags `serve` and
/// `audit` share. The help here is `serve`'s; `audit` gives each flag its
/// own (`flashsale_books::audit::AuditArgs`).
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL of multi-node mode (`redis://host:port`), where the
    /// sale's state lives: this node keeps none; every node started with
    /// the same URL, `--redis-namespace`, `--secret` and `--admin-token`
    /// sells the same deals (it needs those two); unset: one node, state in
    /// this process.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        conflicts_with = "redis_cluster",
        value_parser = parse_redis_url
    )]
    pub redis_url: Option<String>,

    /// A Redis Cluster's seed addresses for multi-node mode, comma-separated
    /// (`redis://h1:p1,redis://h2:p2`); as `--redis-url` otherwise.
    #[arg(
        long,
        env = "REDIS_CLUSTER_URLS",
        hide_env_values = true,
        value_delimiter = ',',
        value_parser = parse_redis_url
    )]
    pub redis_cluster: Vec<String>,

    /// Prefix of every Redis key of this deployment, so deployments can
    /// share one Redis (no `{`, `}` or `:`).
    #[arg(long, env = "FLASHSALE_REDIS_NAMESPACE", default_value = "fs")]
    pub redis_namespace: String,

    /// Virtual shards that shoppers are spread over in Redis (a power of
    /// two from 1 to 1024); every node of a deployment must agree.
    #[arg(long, env = "FLASHSALE_REDIS_SHARDS", default_value_t = 64)]
    pub redis_shards: usize,
}

impl RedisArgs {
    /// The Redis (or Cluster), namespace and shard count, validated;
    /// `None` without `--redis-url` and `--redis-cluster`. Errors:
    /// [`Error::Config`] naming the flag.
    pub fn deployment(&self) -> Result<Option<(RedisTarget, String, usize)>, Error> {
        let target = match &self.redis_url {
            Some(url) => RedisTarget::Single(url.clone()),
            None if !self.redis_cluster.is_empty() => {
                RedisTarget::Cluster(self.redis_cluster.clone())
            }
            None => return Ok(None),
        };
        let namespace = &self.redis_namespace;
        if namespace.is_empty() || namespace.contains(['{', '}', ':']) || namespace.len() > 64 {
            return Err(Error::Config(format!(
                "--redis-namespace must be 1 to 64 characters without {{, }} or :, not {namespace:?}"
            )));
        }
        let shards = self.redis_shards;
        if !shards.is_power_of_two() || shards > 1 << flashsale_engine::ids::SHARD_BITS_MAX {
            return Err(Error::Config(format!(
                "--redis-shards must be a power of two from 1 to 1024, not {shards}"
            )));
        }
        Ok(Some((target, namespace.clone(), shards)))
    }
}

/// What `--redis-url` and each `--redis-cluster` address take, said in
/// every refusal of one.
const REDIS_URL_HINT: &str = "expected redis://HOST:PORT, e.g. redis://127.0.0.1:6379";

/// `--redis-url` and each address of `--redis-cluster`, checked when the
/// command line is read, before anything connects or is written: a URL
/// (the `url` crate), of a Redis scheme, that the Redis client itself
/// accepts (`redis::IntoConnectionInfo`, which finds a missing host, a
/// wildcard address, a bad database number). Returns the URL trimmed;
/// errors: what is wrong, with the form expected (clap names the flag, and
/// the binary the environment variable when the value came from it).
pub fn parse_redis_url(text: &str) -> Result<String, String> {
    use redis::IntoConnectionInfo as _;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("it is empty; {REDIS_URL_HINT}"));
    }
    let url =
        url::Url::parse(text).map_err(|error| format!("not a URL ({error}); {REDIS_URL_HINT}"))?;
    match url.scheme() {
        "redis" | "rediss" | "valkey" | "valkeys" | "redis+unix" | "valkey+unix" | "unix" => {}
        other => {
            return Err(format!(
                "the scheme {other:?} is not a Redis one; {REDIS_URL_HINT}"
            ));
        }
    }
    if !text[url.scheme().len() + 1..].starts_with("//") {
        return Err(format!("no // after the scheme; {REDIS_URL_HINT}"));
    }
    url.into_connection_info()
        .map_err(|error| format!("{error}; {REDIS_URL_HINT}"))?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_by_the_client_and_say_what_is_wrong() {
        assert_eq!(
            parse_redis_url(" redis://127.0.0.1:6391 "),
            Ok("redis://127.0.0.1:6391".to_owned())
        );
        assert!(parse_redis_url("redis://h").is_ok());
        for (bad, says) in [
            ("redis:/127.0.0.1:6391", "no // after the scheme"),
            ("redis:127.0.0.1:6391", "no // after the scheme"),
            (
                "http://127.0.0.1:6379",
                "the scheme \"http\" is not a Redis one",
            ),
            ("localhost:6379", "the scheme \"localhost\""),
            ("127.0.0.1:6379", "not a URL"),
            ("localhost", "not a URL"),
            ("redis://0.0.0.0:6379", "wildcard"),
            ("redis://h:99999", "not a URL"),
            ("", "it is empty"),
        ] {
            let message = parse_redis_url(bad).expect_err(bad);
            assert!(message.contains(says), "{bad:?}: {message}");
            assert!(message.ends_with(REDIS_URL_HINT), "{bad:?}: {message}");
        }
    }
}
