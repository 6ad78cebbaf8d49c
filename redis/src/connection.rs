//! The connection: one multiplexed connection (or one Cluster client) per
//! node, connecting under a timeout, loading the Functions library on
//! every primary, running a step (`FCALL`, or `FCALL_RO` for a read-only
//! one) and loading the library again when Redis has lost it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flashsale_engine::{EngineError, HoldId, SystemClock};
use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::durability::{Durability, DurabilityMode, ServerReply};
use crate::error::Error;
use crate::keys::Keys;
use crate::replication::{REPLICA_ACK_CONNECTIONS, ReplicaAcks};
use crate::replies::{Reply, garbled, is_refusal, reply_of, text};
use crate::settings::{RedisSettings, RedisTarget};
use crate::steps::{Call, library_code, library_name};
use crate::{Inner, NO_EPOCH, RedisStore};

/// One multiplexed connection (or one Cluster client) per node, cloned by
/// every request so concurrent calls pipeline on it.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

impl RedisStore {
    /// Connects (bounded by the connect timeout), loads the Functions
    /// library on every primary, and checks that Redis answers.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisStore, Error> {
        let store = RedisStore::connect_unstarted(settings).await?;
        store.start().await?;
        Ok(store)
    }

    /// [`RedisStore::connect`] that writes no key: it loads the Functions
    /// library and reads Redis' durability, but neither sets nor follows
    /// the deployment's epoch. A node checks what it must at start, then
    /// calls [`RedisStore::start`].
    pub async fn connect_unstarted(settings: &RedisSettings) -> Result<RedisStore, Error> {
        let connection = open(settings, settings.response_timeout).await?;
        let replica_acks = match settings.replica_acks {
            Some(acks) => {
                // Its own connection: a `WAIT` blocks the one it is sent on.
                let waits = open_for_waits(settings, acks.timeout).await?;
                Some(Arc::new(ReplicaAcks::new(acks, waits)))
            }
            None => None,
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                connection: RwLock::new(connection),
                settings: settings.clone(),
                subscribe_url: match &settings.target {
                    RedisTarget::Single(url) => url.clone(),
                    RedisTarget::Cluster(urls) => urls.first().cloned().unwrap_or_default(),
                },
                connect_timeout: settings.connect_timeout,
                library: library_code(),
                keys: Keys {
                    namespace: settings.namespace.clone(),
                },
                shards: settings.shards,
                books_backlog: settings.books_backlog_per_stream_max.to_string(),
                clock: match &settings.clock {
                    Some(clock) => clock.0.clone(),
                    None => Arc::new(SystemClock),
                },
                clock_to_steps: settings.clock.is_some(),
                deals: RwLock::new(HashMap::new()),
                lanes: crate::batch::Lanes::new(settings.shards, settings.reserve_calls_in_flight),
                merchants: RwLock::new(HashMap::new()),
                newest: RwLock::new(Vec::new()),
                node_token: node_token()?,
                sums_seen: parking_lot::Mutex::new(String::new()),
                sums_read: AtomicU64::new(0),
                sums_taken: AtomicU64::new(0),
                reachable: AtomicBool::new(true),
                epoch: AtomicU64::new(NO_EPOCH),
                durability: RwLock::new(Durability {
                    mode: DurabilityMode::Volatile,
                    found: "not read yet".to_owned(),
                    waitaof: false,
                }),
                allow_volatile: settings.allow_volatile,
                volatile_refused: AtomicBool::new(false),
                replicas_short: AtomicBool::new(false),
                replica_acks,
                revocations: crate::tokens::Revocations::new(),
            }),
        };
        store.load_library().await?;
        store.check_durability().await?;
        if let Some(acks) = settings.replica_acks {
            store.check_replicas(acks.required).await?;
        }
        Ok(store)
    }

    /// Refuses to start when a primary has fewer than `required` connected
    /// replicas: every change would answer `503`. Errors:
    /// [`Error::Config`] naming the primary and the flag.
    async fn check_replicas(&self, required: u32) -> Result<(), Error> {
        for (server, connected) in self.connected_replicas().await? {
            if connected < required {
                return Err(Error::Config(format!(
                    "--redis-replica-acks {required}: {server} has {connected} connected replica(s) online; \
                     start its replicas (redis-server --replicaof), or lower the flag"
                )));
            }
        }
        Ok(())
    }

    /// Each primary's replicas online (`INFO replication`: the `slaveN:`
    /// lines with `state=online`; one still in its first sync cannot
    /// acknowledge yet). Errors: a primary did not answer.
    pub(crate) async fn connected_replicas(&self) -> Result<Vec<(String, u32)>, Error> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("replication");
        Ok(self
            .on_every_primary(&cmd)
            .await?
            .into_iter()
            .map(|(server, reply)| {
                let info = reply
                    .ok()
                    .and_then(|value| text(&value))
                    .unwrap_or_default();
                let online = info
                    .lines()
                    .filter(|line| line.starts_with("slave") && line.contains("state=online"))
                    .count();
                (server, u32::try_from(online).unwrap_or(u32::MAX))
            })
            .collect())
    }

    /// Reads (or, on an empty namespace, sets) the deployment's epoch, the
    /// token revocations, and polls the deals once: the first writes of a
    /// node into Redis.
    pub async fn start(&self) -> Result<(), Error> {
        self.follow_epoch().await?;
        self.sync_revocations().await?;
        self.poll(true).await
    }

    pub(crate) fn connection(&self) -> Connection {
        self.inner.connection.read().clone()
    }

    /// Opens the node's connections afresh and puts them in place of the
    /// old ones (calls under way finish on the old). Errors: Redis did
    /// not accept a connection in time; the old ones stay.
    pub(crate) async fn reconnect(&self) -> Result<(), Error> {
        let settings = &self.inner.settings;
        let connection = open(settings, settings.response_timeout).await?;
        if let Some(acks) = &self.inner.replica_acks {
            acks.replace_connections(open_for_waits(settings, acks.timeout()).await?);
        }
        *self.inner.connection.write() = connection;
        Ok(())
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }
}

impl RedisStore {
    /// `cmd`'s reply from the one Redis, or from every primary of a
    /// Cluster, by server address; a server's refusal (an unknown or
    /// denied command) is that server's `Err`, not the call's. Errors: a
    /// server did not answer.
    pub(crate) async fn on_every_primary(
        &self,
        cmd: &Cmd,
    ) -> Result<Vec<(String, ServerReply)>, Error> {
        match self.connection() {
            Connection::Single(mut connection) => {
                let reply = match cmd.query_async::<Value>(&mut connection).await {
                    Ok(Value::ServerError(refusal)) => Err(refusal.to_string()),
                    Ok(value) => Ok(value),
                    Err(error) if is_refusal(&error) => Err(error.to_string()),
                    Err(error) => return Err(Error::Redis(error)),
                };
                Ok(vec![("the Redis".to_owned(), reply)])
            }
            Connection::Cluster(mut connection) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = connection
                    .route_command(cmd.clone(), routing)
                    .await
                    .map_err(Error::Redis)?;
                let Value::Map(replies) = reply else {
                    return Err(garbled("a reply of every primary"));
                };
                Ok(replies
                    .into_iter()
                    .map(|(address, reply)| {
                        let reply = match reply {
                            Value::ServerError(refusal) => Err(refusal.to_string()),
                            value => Ok(value),
                        };
                        (text(&address).unwrap_or_default(), reply)
                    })
                    .collect())
            }
        }
    }
}
impl RedisStore {
    /// Runs one command; an I/O error or a timeout is `503 unavailable`.
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let mut connection = self.connection();
        cmd.query_async(&mut connection).await.map_err(Error::Redis)
    }

    /// Loads this build's Functions library on the Redis, or on every
    /// primary of a Cluster (`FUNCTION LOAD REPLACE`, which replaces only
    /// the library of this name: the same code). Errors: a server did not
    /// answer, or refused the library (a Redis older than 7.0, an ACL).
    pub(crate) async fn load_library(&self) -> Result<(), Error> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(&self.inner.library);
        for (server, reply) in self.on_every_primary(&cmd).await? {
            if let Err(refusal) = reply {
                return Err(Error::Config(format!(
                    "{server} refused the Functions library {} (Redis 7.0 or later is needed): {refusal}",
                    library_name()
                )));
            }
        }
        Ok(())
    }

    /// Runs one step; when Redis answers that its function does not exist
    /// (a Redis restarted empty, a new primary), loads the library and
    /// tries once more. A reply tag the step does not give is garbled. A
    /// change done (or replayed) is answered once `--redis-replica-acks`
    /// replicas have it ([`RedisStore::acknowledge`]).
    pub(crate) async fn run<C: Call>(
        &self,
        call: &C,
        hold: Option<HoldId>,
    ) -> Result<Reply, Error> {
        let reply = reply_of(self.send(call).await?, hold)?;
        // A refusal or a retry tag changed nothing; a replay waits too: its
        // first answer may have been a 503.
        if let Reply::Done(_) = reply {
            self.acknowledge(call).await?;
        }
        Ok(reply)
    }

    /// Sends one step and checks its reply tag, as [`RedisStore::run`]
    /// does, without waiting for replicas. With a test's clock
    /// ([`RedisSettings::clock`]) the call carries its time, which the
    /// step reads in place of `TIME`. Errors: a change on a primary short
    /// of replicas ([`Error::ReplicasShort`], nothing sent); Redis did not
    /// answer ([`Error::Redis`]); a tag the step does not give (garbled).
    pub(crate) async fn send<C: Call>(&self, call: &C) -> Result<Vec<Value>, Error> {
        let cmd = if self.inner.clock_to_steps {
            call.command_at(self.now().millis())
        } else {
            call.command()
        };
        // A change on a primary short of replicas could not be
        // acknowledged: refused before it runs, so nothing changes.
        if let (Some(acks), false) = (&self.inner.replica_acks, C::STEP.read_only)
            && self.inner.replicas_short.load(Ordering::Relaxed)
        {
            acks.check_primary(call.keys().first().copied().unwrap_or_default())?;
        }
        let mut connection = self.connection();
        let values: Vec<Value> = match cmd.query_async(&mut connection).await {
            Err(error) if is_missing_function(&error) => {
                tracing::info!(library = %library_name(), "Redis lacks the Functions library; loading it");
                self.load_library().await?;
                cmd.query_async(&mut connection)
                    .await
                    .map_err(Error::Redis)?
            }
            reply => reply.map_err(Error::Redis)?,
        };
        let tag = values.first().and_then(text).unwrap_or_default();
        if !C::STEP.replies.contains(&tag.as_str()) {
            tracing::error!(step = C::STEP.name, %tag, "a reply tag the step does not give");
            return Err(Error::Engine(EngineError::Inconsistent {
                reason: "a reply tag the step does not give",
            }));
        }
        Ok(values)
    }

    /// Waits until `--redis-replica-acks` replicas have every write the
    /// primary of `call`'s slot applied so far (a group commit,
    /// `replication`); at once without the flag or for a read-only step.
    /// Errors: [`Error::ReplicasBehind`] and the acknowledgments' own.
    pub(crate) async fn acknowledge<C: Call>(&self, call: &C) -> Result<(), Error> {
        if let (Some(acks), false) = (&self.inner.replica_acks, C::STEP.read_only) {
            acks.acknowledged(call.keys().first().copied().unwrap_or_default())
                .await?;
        }
        Ok(())
    }

    /// A step that can only be done or refused.
    pub(crate) async fn run_done<C: Call>(&self, call: &C) -> Result<Vec<Value>, Error> {
        match self.run(call, None).await? {
            Reply::Done(values) => Ok(values),
            Reply::Refused(refusal) => Err(Error::Engine(refusal)),
            // Only the steps acting for a token answer it (`ids` runs apart).
            Reply::Epoch => Err(Error::EarlierEpoch),
            Reply::Refill { .. } | Reply::Terms | Reply::Backlog => {
                Err(garbled("a step that can only be done or refused"))
            }
        }
    }
}

/// A connection to `settings`' Redis or Cluster whose calls time out
/// after `response_timeout`, connecting under the connect timeout.
async fn open(settings: &RedisSettings, response_timeout: Duration) -> Result<Connection, Error> {
    Ok(match &settings.target {
        RedisTarget::Single(url) => {
            let client = redis::Client::open(url.as_str()).map_err(Error::Redis)?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(response_timeout))
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_number_of_retries(1)
                .set_max_delay(settings.connect_timeout);
            let manager = tokio::time::timeout(
                settings.connect_timeout.saturating_mul(2),
                client.get_connection_manager_with_config(config),
            )
            .await
            .map_err(|_| Error::RedisTimeout)?
            .map_err(Error::Redis)?;
            Connection::Single(manager)
        }
        RedisTarget::Cluster(urls) => {
            let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                .response_timeout(response_timeout)
                .connection_timeout(settings.connect_timeout)
                .build()
                .map_err(Error::Redis)?;
            let connection = tokio::time::timeout(
                settings.connect_timeout.saturating_mul(2),
                client.get_async_connection(),
            )
            .await
            .map_err(|_| Error::RedisTimeout)?
            .map_err(Error::Redis)?;
            Connection::Cluster(connection)
        }
    })
}

/// The acknowledgments' own connections (one on a single Redis, where
/// one group serves every change; [`REPLICA_ACK_CONNECTIONS`] on a
/// Cluster): their calls may block for a `WAIT` of up to `ack_timeout` on
/// top of the response timeout.
async fn open_for_waits(
    settings: &RedisSettings,
    ack_timeout: Duration,
) -> Result<Vec<Connection>, Error> {
    let count = match settings.target {
        RedisTarget::Single(_) => 1,
        RedisTarget::Cluster(_) => REPLICA_ACK_CONNECTIONS,
    };
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(
            open(
                settings,
                settings.response_timeout.saturating_add(ack_timeout),
            )
            .await?,
        );
    }
    Ok(connections)
}

/// Whether Redis answered that the called function does not exist.
fn is_missing_function(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|detail| detail.starts_with("Function not found"))
        || error.to_string().contains("Function not found")
}

/// A random name for this node (16 hex digits): its value in the sums'
/// lease and the name of its next-sums key (`sums`). Errors: the system
/// gave no randomness.
fn node_token() -> Result<String, Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(Error::Random)?;
    Ok(format!("{:016x}", u64::from_le_bytes(bytes)))
}
