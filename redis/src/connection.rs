//! The connection: one multiplexed connection (or one Cluster client) per
//! node, connecting under a timeout, loading the script, running a step.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use flashsale_engine::{HoldId, SystemClock};
use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::durability::{Durability, DurabilityMode, ServerReply};
use crate::error::Error;
use crate::keys::Keys;
use crate::replies::{Reply, garbled, is_refusal, reply_of, text};
use crate::settings::{RedisSettings, RedisTarget};
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
    /// Connects (bounded by the connect timeout), loads the script on every
    /// primary, and checks that Redis answers.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisStore, Error> {
        let connection = match &settings.target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(Error::Redis)?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.response_timeout))
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
                    .response_timeout(settings.response_timeout)
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
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                connection,
                subscribe_url: match &settings.target {
                    RedisTarget::Single(url) => url.clone(),
                    RedisTarget::Cluster(urls) => urls.first().cloned().unwrap_or_default(),
                },
                connect_timeout: settings.connect_timeout,
                script: redis::Script::new(crate::STEPS_LUA),
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
                merchants: RwLock::new(HashMap::new()),
                newest: RwLock::new(Vec::new()),
                reachable: AtomicBool::new(true),
                epoch: AtomicU64::new(NO_EPOCH),
                durability: RwLock::new(Durability {
                    mode: DurabilityMode::Volatile,
                    found: "not read yet".to_owned(),
                    waitaof: false,
                }),
                allow_volatile: settings.allow_volatile,
                volatile_refused: AtomicBool::new(false),
            }),
        };
        let mut connection = store.connection();
        store
            .inner
            .script
            .prepare_invoke()
            .load_async(&mut connection)
            .await
            .map_err(Error::Redis)?;
        store.check_durability().await?;
        store.follow_epoch().await?;
        store.poll(true).await?;
        Ok(store)
    }

    pub(crate) fn connection(&self) -> Connection {
        self.inner.connection.clone()
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
        match &self.inner.connection {
            Connection::Single(connection) => {
                let reply = match cmd.query_async::<Value>(&mut connection.clone()).await {
                    Ok(Value::ServerError(refusal)) => Err(refusal.to_string()),
                    Ok(value) => Ok(value),
                    Err(error) if is_refusal(&error) => Err(error.to_string()),
                    Err(error) => return Err(Error::Redis(error)),
                };
                Ok(vec![("the Redis".to_owned(), reply)])
            }
            Connection::Cluster(connection) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = connection
                    .clone()
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

    /// Runs one step of the script with `keys` and `args` (the step name
    /// first). With a test's clock ([`RedisSettings::clock`]) the step
    /// name goes as `name@ms`, the script's time in place of `TIME`.
    pub(crate) async fn step(
        &self,
        keys: &[String],
        args: &[&str],
        hold: Option<HoldId>,
    ) -> Result<Reply, Error> {
        let mut invocation = self.inner.script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for (index, arg) in args.iter().enumerate() {
            if index == 0 && self.inner.clock_to_steps {
                invocation.arg(format!("{arg}@{}", self.now().millis()));
            } else {
                invocation.arg(*arg);
            }
        }
        let mut connection = self.connection();
        let values: Vec<Value> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(Error::Redis)?;
        reply_of(values, hold)
    }

    /// A step that can only be done or refused.
    pub(crate) async fn step_done(
        &self,
        keys: &[String],
        args: &[&str],
    ) -> Result<Vec<Value>, Error> {
        match self.step(keys, args, None).await? {
            Reply::Done(values) => Ok(values),
            Reply::Refused(refusal) => Err(Error::Engine(refusal)),
            Reply::Refill { .. } | Reply::Terms | Reply::Epoch | Reply::Backlog => {
                Err(garbled("a step that can only be done or refused"))
            }
        }
    }
}
