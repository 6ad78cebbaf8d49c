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
        conflicts_with = "redis_cluster"
    )]
    pub redis_url: Option<String>,

    /// A Redis Cluster's seed addresses for multi-node mode, comma-separated
    /// (`redis://h1:p1,redis://h2:p2`); as `--redis-url` otherwise.
    #[arg(
        long,
        env = "REDIS_CLUSTER_URLS",
        hide_env_values = true,
        value_delimiter = ','
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
        let cluster: Vec<String> = self
            .redis_cluster
            .iter()
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        let target = match self.redis_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => RedisTarget::Single(url.to_owned()),
            _ if !cluster.is_empty() => RedisTarget::Cluster(cluster),
            _ => return Ok(None),
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
