//! Redis mode: the sale's state in Redis or a Redis Cluster, shared by any
//! number of stateless gateway nodes (DESIGN.md "Multi-node mode").
//!
//! ## Layout
//! Shoppers are spread over `shards` virtual shards (a power of two, 64 by
//! default) by the engine's own rule ([`flashsale_engine::ids::shard_of`]).
//! Everything one shopper owns lives under the hash tag `{s:K}` of its
//! shard, so a buy is one script on one Cluster slot:
//!
//! | key (`ns` is `--redis-namespace`) | what |
//! |---|---|
//! | `ns:{s:K}:acct:<shopper>` | hash: name, wallet (`credited/available/held/spent`, fen), per deal `b:`/`h:` units bought/held and `r:` registered, `c:<reference>` credits |
//! | `ns:{s:K}:key:<shopper>:<key>` | hash: an idempotency record (deal, kind, quantity, outcome), expiring after 24 h |
//! | `ns:{s:K}:stock` | hash: per deal `b:` the shard's **stock bucket**, `h:` held, `s:` sold, `n:` buyers, `g:` registrations |
//! | `ns:{s:K}:terms:<deal>` | hash: the deal's terms as this shard knows them, with a version |
//! | `ns:{s:K}:orders`, `:holds`, `:exp`, `:seq` | orders and holds by id (JSON), hold expiries (sorted set), id sequences |
//! | `ns:{s:K}:do:<deal>`, `:so:<shopper>`, `:rec:<deal>` | order ids per deal and per shopper; shoppers with a record on a deal |
//! | `ns:{s:K}:xin`, `:xout` | transfer ids accepted into buckets; sweeps on their way back to a pool |
//! | `ns:{d:D}` | hash: the deal, its undistributed stock (`pool`), `total`, the `sold_out` marker, the terms' `version` |
//! | `ns:{d:D}:tx`, `:swept` | transfers on their way from the pool to a bucket; sweeps accepted into the pool |
//! | `ns:{g}:seq`, `:m:<id>`, `:deals` | id sequences, merchants, the deals newest first |
//!
//! ## Steps
//! Every change is one step of `gateway/redis/flashsale.lua` (EVALSHA,
//! reloaded by redis-rs on `NOSCRIPT`). A buy whose shard's bucket is short
//! gets `REFILL`: the node moves a chunk from the deal's pool (a transfer:
//! `refill` on the deal's slot, `accept` on the shard's, `confirm` back,
//! each idempotent by transfer id) and retries. When the pool is short too,
//! the node sweeps every bucket of the deal back to the pool and tries once
//! more; only when the pool is then empty is the deal marked sold out, so a
//! deal is never reported sold out while a unit waits anywhere. The poller
//! finishes transfers and sweeps that a crashed node left half done.
//!
//! ## The node's own state
//! Only caches: each deal's terms and live numbers (refreshed by the poller
//! every [`POLL_INTERVAL`], and at once on the `ns:deals` channel), and a
//! **sold-out flag** per deal with the set of shoppers that have a record
//! on it. A buy of a deal flagged sold out by a shopper without a record is
//! refused here, without touching Redis; the rest go to Redis, which
//! replays their key.
//!
//! ## Failures
//! Every call has a response timeout (`--redis-response-timeout-ms`). A
//! timeout or a lost connection is an unknown outcome: the request is
//! answered `503 unavailable` with `Retry-After`, and the client's retry with
//! the same `Idempotency-Key` gets the original outcome (the steps are
//! idempotent, which also makes the Cluster client's own retries safe).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flashsale_engine::ids::{decompose, shard_of};
use flashsale_engine::{
    Allocation, Answer, Clock, DealChange, DealId, DealStatus, DealView, EngineError, Entity, Hold,
    HoldId, HoldStatus, Merchant, MerchantId, Money, NewDeal, Order, OrderCursor, OrderId,
    OrderPage, Rating, Review, Shopper, ShopperId, StockCounts, SystemClock, Timestamp, Wallet,
};
use futures_util::future::try_join_all;
use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use serde::Deserialize;

use crate::error::Error;
use crate::feed::{FEED_DEALS_MAX, FeedSource};

/// The server-side steps, one script (see its header).
const STEPS_LUA: &str = include_str!("../../redis/flashsale.lua");
/// How often the poller refreshes deals, gathers their numbers across the
/// shards, and checks that Redis answers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often (in polls) the poller sums deals' numbers and merchants'
/// ratings over the shards: the costly part of a poll.
const SUMS_EVERY_POLLS: u32 = 4;
/// How often the poller finishes transfers and sweeps left half done.
const RECONCILE_EVERY_POLLS: u32 = 8;
/// A transfer pending longer than this is taken to be abandoned by a
/// crashed node and finished by the reconciler (finishing is idempotent,
/// so a live one finished twice changes nothing).
const TRANSFER_ABANDONED_MS: i64 = 2_000;
/// Tries of one buy, hold or payment while its bucket is being refilled or
/// its shard's terms installed; past it the answer is `503 unavailable`.
const STEP_ATTEMPTS_MAX: usize = 4;
/// Idempotency records are kept this long (DESIGN.md: at least 24 hours).
const KEY_RETENTION_SECONDS: u64 = 24 * 60 * 60;
/// Largest wallet balance in Redis mode, in fen: Lua computes in doubles,
/// exact up to 2^53.
pub const WALLET_FEN_MAX: i64 = (1 << 53) - 1;
/// A deal's numbers kept per shard in `ns:{s:K}:stock`, summed by the
/// poller: bucket, held, sold, buyers, registrations, shares.
const SUM_FIELDS: [&str; 6] = ["b", "h", "s", "n", "g", "x"];
const SUM_PARTS: usize = SUM_FIELDS.len();
/// Holds expired per shard per call at most.
const EXPIRY_BATCH_MAX: usize = 256;
/// Orders read per Redis call when listing.
const ORDERS_PAGE_READ_MAX: usize = 1_000;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// One multiplexed connection (or one Cluster client) per node, cloned by
/// every request so concurrent calls pipeline on it.
#[derive(Clone)]
enum Connection {
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

/// A step's reply (the script header's reply shapes).
enum Reply {
    Done(Vec<Value>),
    Refused(EngineError),
    /// The bucket lacks `need` of the `total` units the request needs.
    Refill {
        need: u32,
        total: u32,
    },
    Terms,
}

/// An order as the script writes it (`encode_order`).
#[derive(Deserialize)]
struct OrderRecord {
    id: u64,
    deal: u64,
    shopper: u64,
    quantity: u32,
    unit_price: i64,
    amount: i64,
    late: bool,
    created_at: i64,
    hold: Option<u64>,
}

/// A hold as the script writes it (`encode_hold`).
#[derive(Deserialize)]
struct HoldRecord {
    id: u64,
    deal: u64,
    shopper: u64,
    quantity: u32,
    amount: i64,
    created_at: i64,
    expires_at: i64,
    status: String,
    order: Option<u64>,
}

/// A deal's terms and numbers as this node last saw them.
struct DealEntry {
    id: DealId,
    merchant: MerchantId,
    title: String,
    price: Money,
    per_user_limit: u32,
    starts_at: Timestamp,
    requires_registration: bool,
    hold_seconds: u32,
    created_at: Timestamp,
    live: Mutex<DealLive>,
    /// The local sold-out flag: set only once `records` holds every shopper
    /// with a record on the deal, cleared on restock or returned stock.
    sold_out: AtomicBool,
    records: RwLock<HashSet<ShopperId>>,
    /// One refill or sweep of this deal at a time on this node.
    refill: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy, Default)]
struct DealLive {
    version: u64,
    ends_at: Timestamp,
    paused: bool,
    total: u64,
    pool: u64,
    marked_sold_out: bool,
    /// Summed over the shards by the poller (or a fresh read).
    buckets: u64,
    held: u64,
    sold: u64,
    buyers: u64,
    registrations: u64,
    shares: u64,
}

impl DealEntry {
    fn view(&self, now: Timestamp) -> DealView {
        let live = *self.live.lock();
        let counts = StockCounts {
            total: live.total,
            remaining: live.pool.saturating_add(live.buckets),
            held: live.held,
            sold: live.sold,
        };
        DealView {
            id: self.id,
            merchant: self.merchant,
            title: self.title.clone(),
            price: self.price,
            per_user_limit: self.per_user_limit,
            starts_at: self.starts_at,
            ends_at: live.ends_at,
            requires_registration: self.requires_registration,
            hold_seconds: self.hold_seconds,
            raffle: None,
            created_at: self.created_at,
            paused: live.paused,
            status: DealStatus::at(now, live.paused, self.starts_at, live.ends_at, &counts),
            counts,
            registrations: live.registrations,
            buyers: live.buyers,
            shares: live.shares,
        }
    }

    /// The lock-free refusal of the rejected majority: flagged sold out and
    /// the shopper has nothing to replay.
    fn sold_out_for(&self, shopper: ShopperId) -> bool {
        self.sold_out.load(Ordering::Acquire) && !self.records.read().contains(&shopper)
    }
}

/// The Redis store of one node. Cheap to share: the state is behind an
/// `Arc`, used by requests and by the poller.
#[derive(Clone)]
pub(crate) struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    /// The server whose channel this node listens on: the Redis, or the
    /// first seed of a Cluster (a Cluster passes every publish to every
    /// node).
    subscribe_url: String,
    connect_timeout: Duration,
    script: redis::Script,
    keys: Keys,
    shards: usize,
    clock: SystemClock,
    deals: RwLock<HashMap<DealId, Arc<DealEntry>>>,
    merchants: RwLock<HashMap<MerchantId, (String, Rating)>>,
    /// Newest deals, newest first, as of the last poll.
    newest: RwLock<Vec<DealId>>,
    reachable: AtomicBool,
}

/// Key names (the module doc's table).
struct Keys {
    namespace: String,
}

impl Keys {
    /// `ns:{s:K}:part`.
    fn shard(&self, shard: usize, part: &str) -> String {
        format!("{}:{{s:{shard}}}:{part}", self.namespace)
    }
    /// `ns:{s:K}:part:id`.
    fn shard_id(&self, shard: usize, part: &str, id: u64) -> String {
        format!("{}:{{s:{shard}}}:{part}:{id}", self.namespace)
    }
    /// `ns:{s:K}:key:<shopper>:<idempotency key>`.
    fn idempotency(&self, shard: usize, shopper: ShopperId, key: &str) -> String {
        format!("{}:{{s:{shard}}}:key:{}:{key}", self.namespace, shopper.0)
    }
    fn deal(&self, deal: DealId) -> String {
        format!("{}:{{d:{}}}", self.namespace, deal.0)
    }
    fn deal_part(&self, deal: DealId, part: &str) -> String {
        format!("{}:{{d:{}}}:{part}", self.namespace, deal.0)
    }
    /// `ns:{g}:part`.
    fn global(&self, part: &str) -> String {
        format!("{}:{{g}}:{part}", self.namespace)
    }
    /// `ns:{g}:m:<merchant>`.
    fn merchant(&self, merchant: MerchantId) -> String {
        format!("{}:{{g}}:m:{}", self.namespace, merchant.0)
    }
    fn channel(&self) -> String {
        format!("{}:deals", self.namespace)
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(number) => Some(number.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

fn number(value: Option<&Value>) -> i64 {
    value
        .and_then(text)
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// A reply Redis should never give: the script and this file disagree.
fn garbled(what: &'static str) -> Error {
    tracing::error!(what, "an unexpected reply from the Redis script");
    Error::Engine(EngineError::Inconsistent { reason: what })
}

fn money(fen: i64) -> Result<Money, Error> {
    Money::from_fen(fen).ok_or_else(|| garbled("money out of range"))
}

fn order_of(json: &str) -> Result<Order, Error> {
    let record: OrderRecord = serde_json::from_str(json).map_err(|_| garbled("an order record"))?;
    Ok(Order {
        id: OrderId(record.id),
        deal: DealId(record.deal),
        shopper: ShopperId(record.shopper),
        quantity: record.quantity,
        unit_price: money(record.unit_price)?,
        amount: money(record.amount)?,
        late: record.late,
        hold: record.hold.map(HoldId),
        created_at: Timestamp(record.created_at),
    })
}

fn hold_of(json: &str) -> Result<Hold, Error> {
    let record: HoldRecord = serde_json::from_str(json).map_err(|_| garbled("a hold record"))?;
    let status = match (record.status.as_str(), record.order) {
        ("active", _) => HoldStatus::Active,
        ("released", _) => HoldStatus::Released,
        ("expired", _) => HoldStatus::Expired,
        ("settled", Some(order)) => HoldStatus::Settled(OrderId(order)),
        _ => return Err(garbled("a hold status")),
    };
    Ok(Hold {
        id: HoldId(record.id),
        deal: DealId(record.deal),
        shopper: ShopperId(record.shopper),
        quantity: record.quantity,
        amount: money(record.amount)?,
        created_at: Timestamp(record.created_at),
        expires_at: Timestamp(record.expires_at),
        status,
    })
}

fn entity(name: &str) -> Entity {
    match name {
        "shopper" => Entity::Shopper,
        "hold" => Entity::Hold,
        "order" => Entity::Order,
        "merchant" => Entity::Merchant,
        _ => Entity::Deal,
    }
}

/// The engine's refusal for a script's refusal code.
fn refusal(code: &str, arg: &str, hold: Option<HoldId>) -> Result<EngineError, Error> {
    let hold = || hold.ok_or_else(|| garbled("a hold refusal without a hold"));
    Ok(match code {
        "sold_out" => EngineError::SoldOut,
        "purchase_limit_reached" => EngineError::PurchaseLimitReached {
            limit: arg.parse().map_err(|_| garbled("a limit"))?,
        },
        "insufficient_funds" => EngineError::InsufficientFunds,
        "not_registered" => EngineError::NotRegistered,
        "not_started" => EngineError::NotStarted,
        "deal_ended" => EngineError::DealEnded,
        "deal_paused" => EngineError::DealPaused,
        "registration_closed" => EngineError::RegistrationClosed,
        "idempotency_key_reused" => EngineError::IdempotencyKeyReused,
        "already_reviewed" => EngineError::AlreadyReviewed,
        "hold_expired" => EngineError::HoldExpired { hold: hold()? },
        "hold_released" => EngineError::HoldReleased { hold: hold()? },
        "hold_settled" => EngineError::HoldSettled {
            hold: hold()?,
            order: OrderId(arg.parse().map_err(|_| garbled("an order id"))?),
        },
        "not_found" => EngineError::NotFound(entity(arg)),
        "forbidden" => EngineError::Forbidden(entity(arg)),
        "invalid" => match arg {
            "amount" => EngineError::Invalid {
                field: "amount",
                reason: "would overflow the wallet",
            },
            "add_stock" => EngineError::Invalid {
                field: "add_stock",
                reason: "would take stock past 1000000000",
            },
            _ => EngineError::Invalid {
                field: "ends_at",
                reason: "must be after starts_at and after now",
            },
        },
        _ => return Err(garbled("a refusal code")),
    })
}

fn reply_of(values: Vec<Value>, hold: Option<HoldId>) -> Result<Reply, Error> {
    let tag = values.first().and_then(text).unwrap_or_default();
    match tag.as_str() {
        "OK" => Ok(Reply::Done(values)),
        "ERR" => {
            let code = values.get(1).and_then(text).unwrap_or_default();
            let arg = values.get(2).and_then(text).unwrap_or_default();
            Ok(Reply::Refused(refusal(&code, &arg, hold)?))
        }
        "REFILL" => {
            let units = |index: usize| {
                u32::try_from(number(values.get(index))).map_err(|_| garbled("a refill need"))
            };
            Ok(Reply::Refill {
                need: units(1)?,
                total: units(2)?,
            })
        }
        "TERMS" => Ok(Reply::Terms),
        _ => Err(garbled("a reply tag")),
    }
}

impl RedisStore {
    /// Connects (bounded by the connect timeout), loads the script on every
    /// primary, and checks that Redis answers.
    pub(crate) async fn connect(settings: &RedisSettings) -> Result<RedisStore, Error> {
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
                script: redis::Script::new(STEPS_LUA),
                keys: Keys {
                    namespace: settings.namespace.clone(),
                },
                shards: settings.shards,
                clock: SystemClock,
                deals: RwLock::new(HashMap::new()),
                merchants: RwLock::new(HashMap::new()),
                newest: RwLock::new(Vec::new()),
                reachable: AtomicBool::new(true),
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
        store.poll(true).await?;
        Ok(store)
    }

    fn connection(&self) -> Connection {
        self.inner.connection.clone()
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        (!self.inner.reachable.load(Ordering::Relaxed)).then_some("Redis does not answer")
    }

    pub(crate) fn feed_source(&self) -> &dyn FeedSource {
        &*self.inner
    }

    /// Runs one command; an I/O error or a timeout is `503 unavailable`.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let mut connection = self.connection();
        cmd.query_async(&mut connection).await.map_err(Error::Redis)
    }

    /// Runs one step of the script with `keys` and `args` (the step name
    /// first).
    async fn step(
        &self,
        keys: &[String],
        args: &[&str],
        hold: Option<HoldId>,
    ) -> Result<Reply, Error> {
        let mut invocation = self.inner.script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection();
        let values: Vec<Value> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(Error::Redis)?;
        reply_of(values, hold)
    }

    /// A step that can only be done or refused.
    async fn step_done(&self, keys: &[String], args: &[&str]) -> Result<Vec<Value>, Error> {
        match self.step(keys, args, None).await? {
            Reply::Done(values) => Ok(values),
            Reply::Refused(refusal) => Err(Error::Engine(refusal)),
            Reply::Refill { .. } | Reply::Terms => Err(garbled("a step that cannot refill")),
        }
    }

    fn shard_of(&self, shopper: ShopperId) -> usize {
        shard_of(shopper, self.inner.shards)
    }

    // ----- deals ------------------------------------------------------------------

    /// The deal's entry, read from Redis when this node has not seen it.
    async fn entry(&self, id: DealId) -> Result<Arc<DealEntry>, Error> {
        if let Some(entry) = self.inner.deals.read().get(&id) {
            return Ok(entry.clone());
        }
        let fields: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal(id)))
            .await?;
        let entry = Arc::new(entry_of(id, &fields)?);
        Ok(self.inner.deals.write().entry(id).or_insert(entry).clone())
    }

    /// Installs the deal's current terms on one shard (when missing or
    /// older there).
    async fn install_terms(&self, deal: DealId, shard: usize) -> Result<(), Error> {
        let fields: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal(deal)))
            .await?;
        if fields.is_empty() {
            return Err(Error::Engine(EngineError::NotFound(Entity::Deal)));
        }
        let field = |name: &str| fields.get(name).map_or("", String::as_str);
        let key = self.keys().shard_id(shard, "terms", deal.0);
        self.step_done(
            &[key],
            &[
                "terms",
                field("version"),
                field("price"),
                field("limit"),
                field("starts"),
                field("ends"),
                field("paused"),
                field("registration"),
                field("hold_seconds"),
                field("merchant"),
            ],
        )
        .await?;
        Ok(())
    }

    /// Installs the deal's terms on every shard, all calls in flight at once.
    async fn install_terms_everywhere(&self, deal: DealId) -> Result<(), Error> {
        try_join_all((0..self.inner.shards).map(|shard| self.install_terms(deal, shard))).await?;
        Ok(())
    }

    /// Reads the deal's fields and its numbers on every shard, fresh.
    async fn refresh(&self, entry: &DealEntry) -> Result<(), Error> {
        let fields: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal(entry.id)))
            .await?;
        let mut live = live_of(&fields);
        let sums = self.shard_sums(&[entry.id]).await?;
        if let Some(sum) = sums.first() {
            live.set_sums(sum);
        }
        self.learn(entry, live).await;
        Ok(())
    }

    /// Per deal, the sums over every shard of [`SUM_FIELDS`]: one `HMGET`
    /// per shard, all in flight at once.
    async fn shard_sums(&self, deals: &[DealId]) -> Result<Vec<[u64; SUM_PARTS]>, Error> {
        let mut sums = vec![[0u64; SUM_PARTS]; deals.len()];
        if deals.is_empty() {
            return Ok(sums);
        }
        let reads = (0..self.inner.shards).map(|shard| {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys().shard(shard, "stock"));
            for deal in deals {
                for part in SUM_FIELDS {
                    cmd.arg(format!("{part}:{}", deal.0));
                }
            }
            async move { self.query::<Vec<Option<i64>>>(&cmd).await }
        });
        for values in try_join_all(reads).await? {
            for (index, sum) in sums.iter_mut().enumerate() {
                for (part, total) in sum.iter_mut().enumerate() {
                    let value = values
                        .get(index * SUM_PARTS + part)
                        .copied()
                        .flatten()
                        .unwrap_or(0);
                    *total = total.saturating_add(u64::try_from(value).unwrap_or(0));
                }
            }
        }
        Ok(sums)
    }

    /// Takes in what Redis says of a deal: numbers, terms, and the sold-out
    /// marker (learning a set marker loads the shoppers with records first,
    /// so the local flag never refuses a replay).
    async fn learn(&self, entry: &DealEntry, live: DealLive) {
        *entry.live.lock() = live;
        if !live.marked_sold_out {
            entry.sold_out.store(false, Ordering::Release);
        } else if !entry.sold_out.load(Ordering::Acquire)
            && let Ok(records) = self.records(entry.id).await
        {
            *entry.records.write() = records;
            entry.sold_out.store(true, Ordering::Release);
        }
    }

    /// Every shopper with a record on the deal, over every shard.
    async fn records(&self, deal: DealId) -> Result<HashSet<ShopperId>, Error> {
        let reads = (0..self.inner.shards).map(|shard| {
            let key = self.keys().shard_id(shard, "rec", deal.0);
            async move {
                self.query::<Vec<u64>>(redis::cmd("SMEMBERS").arg(key))
                    .await
            }
        });
        Ok(try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .map(ShopperId)
            .collect())
    }

    // ----- stock transfers ----------------------------------------------------------

    /// Brings the `need` units `shard`'s bucket lacks (of the `total` the
    /// request needs there) from the deal's pool; when the pool is short,
    /// first sweeps every bucket, this one included, back into the pool and
    /// then moves all `total`. `false`: the deal has fewer than `total`
    /// units left anywhere (then marked sold out if it has none).
    async fn refill(
        &self,
        entry: &DealEntry,
        shard: usize,
        need: u32,
        total: u32,
    ) -> Result<bool, Error> {
        let _one_at_a_time = entry.refill.lock().await;
        if self.transfer(entry.id, shard, need).await? {
            return Ok(true);
        }
        self.sweep(entry.id).await?;
        if self.transfer(entry.id, shard, total).await? {
            return Ok(true);
        }
        let channel = self.keys().channel();
        let values = self
            .step_done(
                &[
                    self.keys().deal(entry.id),
                    self.keys().deal_part(entry.id, "tx"),
                ],
                &["sold_out", &channel],
            )
            .await?;
        if number(values.get(1)) == 1 {
            let mut live = *entry.live.lock();
            live.marked_sold_out = true;
            live.pool = 0;
            self.learn(entry, live).await;
        }
        Ok(false)
    }

    /// One transfer from the pool into `shard`'s bucket; `false` when the
    /// pool holds fewer than `need`.
    async fn transfer(&self, deal: DealId, shard: usize, need: u32) -> Result<bool, Error> {
        let shard_text = shard.to_string();
        let need_text = need.to_string();
        let shards_text = self.inner.shards.to_string();
        let values = self
            .step_done(
                &[self.keys().deal(deal), self.keys().deal_part(deal, "tx")],
                &["refill", &shard_text, &need_text, &shards_text],
            )
            .await?;
        let id = values.get(1).and_then(text).unwrap_or_default();
        let units = number(values.get(2));
        if units <= 0 {
            return Ok(false);
        }
        self.finish_transfer(deal, shard, &id, units).await?;
        Ok(true)
    }

    /// The shard half (`accept`) and the confirmation of a transfer: both
    /// idempotent, so the reconciler may run them again.
    async fn finish_transfer(
        &self,
        deal: DealId,
        shard: usize,
        id: &str,
        units: i64,
    ) -> Result<(), Error> {
        let deal_text = deal.0.to_string();
        let units_text = units.to_string();
        self.step_done(
            &[
                self.keys().shard(shard, "stock"),
                self.keys().shard(shard, "xin"),
            ],
            &["accept", &deal_text, id, &units_text],
        )
        .await?;
        self.step_done(&[self.keys().deal_part(deal, "tx")], &["confirm", id])
            .await?;
        Ok(())
    }

    /// Moves every shard's bucket of the deal back into its pool.
    async fn sweep(&self, deal: DealId) -> Result<(), Error> {
        try_join_all((0..self.inner.shards).map(|shard| self.sweep_shard(deal, shard))).await?;
        Ok(())
    }

    async fn sweep_shard(&self, deal: DealId, shard: usize) -> Result<(), Error> {
        let deal_text = deal.0.to_string();
        let shard_text = shard.to_string();
        let values = self
            .step_done(
                &[
                    self.keys().shard(shard, "stock"),
                    self.keys().shard(shard, "xout"),
                    self.keys().shard(shard, "seq"),
                ],
                &["sweep_out", &deal_text, &shard_text],
            )
            .await?;
        let units = number(values.get(2));
        if units <= 0 {
            return Ok(());
        }
        let id = values.get(1).and_then(text).unwrap_or_default();
        self.finish_sweep(deal, shard, &id, units).await
    }

    async fn finish_sweep(
        &self,
        deal: DealId,
        shard: usize,
        id: &str,
        units: i64,
    ) -> Result<(), Error> {
        let units_text = units.to_string();
        let channel = self.keys().channel();
        self.step_done(
            &[self.keys().deal(deal), self.keys().deal_part(deal, "swept")],
            &["sweep_in", id, &units_text, &channel],
        )
        .await?;
        self.step_done(&[self.keys().shard(shard, "xout")], &["sweep_done", id])
            .await?;
        Ok(())
    }

    /// After stock came back into `shard`'s bucket (a release or an
    /// expiry): if the deal is marked sold out, the units go back to the
    /// pool at once, which clears the marker.
    async fn return_stock(&self, deal: DealId, shard: usize) -> Result<(), Error> {
        let entry = self.entry(deal).await?;
        let marked: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().deal(deal))
                    .arg("sold_out"),
            )
            .await?;
        if marked.as_deref() == Some("1") || entry.sold_out.load(Ordering::Acquire) {
            let _one_at_a_time = entry.refill.lock().await;
            self.sweep_shard(deal, shard).await?;
            self.refresh(&entry).await?;
        }
        Ok(())
    }

    // ----- buying -------------------------------------------------------------------

    /// The shared path of buy and hold (engine: `reserve`).
    async fn reserve(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
        kind: &str,
    ) -> Result<(Vec<Value>, bool), Error> {
        flashsale_engine::check_reservation(quantity, key)?;
        let entry = self.entry(deal).await?;
        if entry.sold_out_for(shopper) {
            return Err(Error::Engine(EngineError::SoldOut));
        }
        let shard = self.shard_of(shopper);
        let keys = [
            self.keys().shard_id(shard, "acct", shopper.0),
            self.keys().idempotency(shard, shopper, key),
            self.keys().shard(shard, "stock"),
            self.keys().shard_id(shard, "terms", deal.0),
            self.keys().shard(shard, "orders"),
            self.keys().shard(shard, "holds"),
            self.keys().shard(shard, "exp"),
            self.keys().shard(shard, "seq"),
            self.keys().shard_id(shard, "do", deal.0),
            self.keys().shard_id(shard, "so", shopper.0),
            self.keys().shard_id(shard, "rec", deal.0),
        ];
        let deal_text = deal.0.to_string();
        let shopper_text = shopper.0.to_string();
        let quantity_text = quantity.to_string();
        let shard_text = shard.to_string();
        let retention = KEY_RETENTION_SECONDS.to_string();
        for _ in 0..STEP_ATTEMPTS_MAX {
            let version = entry.live.lock().version.to_string();
            let sold_out = if entry.sold_out.load(Ordering::Acquire) {
                "1"
            } else {
                "0"
            };
            let args = [
                "reserve",
                &deal_text,
                &shopper_text,
                kind,
                &quantity_text,
                &version,
                &shard_text,
                sold_out,
                &retention,
            ];
            match self.step(&keys, &args, None).await? {
                Reply::Done(values) => {
                    let replayed = values.get(3).and_then(text).as_deref() == Some("1");
                    return Ok((values, replayed));
                }
                Reply::Refused(refusal) => return Err(Error::Engine(refusal)),
                Reply::Terms => self.install_terms(deal, shard).await?,
                Reply::Refill { need, total } => {
                    if !self.refill(&entry, shard, need, total).await? {
                        return Err(Error::Engine(EngineError::SoldOut));
                    }
                }
            }
        }
        Err(Error::RedisBusy)
    }

    // ----- the store's operations (see `store::Store`) --------------------------------

    pub(crate) async fn create_merchant(&self, name: &str) -> Result<Merchant, Error> {
        flashsale_engine::check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)?;
        let id: u64 = self
            .query(
                redis::cmd("HINCRBY")
                    .arg(self.keys().global("seq"))
                    .arg("merchant")
                    .arg(1),
            )
            .await?;
        let merchant = Merchant {
            id: MerchantId(id),
            name: name.to_owned(),
            created_at: self.now(),
        };
        let key = self.keys().merchant(MerchantId(id));
        self.query::<()>(
            redis::cmd("HSET")
                .arg(&key)
                .arg("name")
                .arg(name)
                .arg("created_at")
                .arg(merchant.created_at.millis()),
        )
        .await?;
        Ok(merchant)
    }

    pub(crate) async fn merchant(&self, id: MerchantId) -> Result<Option<Merchant>, Error> {
        let key = self.keys().merchant(id);
        let (name, created_at): (Option<String>, Option<i64>) = self
            .query(redis::cmd("HMGET").arg(key).arg("name").arg("created_at"))
            .await?;
        Ok(name.map(|name| Merchant {
            id,
            name,
            created_at: Timestamp(created_at.unwrap_or(0)),
        }))
    }

    pub(crate) async fn rating(&self, id: MerchantId) -> Result<Option<Rating>, Error> {
        if self.merchant(id).await?.is_none() {
            return Ok(None);
        }
        Ok(self.ratings(&[id]).await?.first().copied())
    }

    /// Each merchant's rating: the review counts and score sums that the
    /// `review` step keeps per shard, summed (one `HMGET` per shard).
    async fn ratings(&self, merchants: &[MerchantId]) -> Result<Vec<Rating>, Error> {
        let mut ratings = vec![Rating::default(); merchants.len()];
        if merchants.is_empty() {
            return Ok(ratings);
        }
        let reads = (0..self.inner.shards).map(|shard| {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys().shard(shard, "ratings"));
            for merchant in merchants {
                cmd.arg(format!("n:{}", merchant.0))
                    .arg(format!("s:{}", merchant.0));
            }
            async move { self.query::<Vec<Option<u64>>>(&cmd).await }
        });
        for values in try_join_all(reads).await? {
            for (index, rating) in ratings.iter_mut().enumerate() {
                let part = |offset: usize| {
                    values
                        .get(index * 2 + offset)
                        .copied()
                        .flatten()
                        .unwrap_or(0)
                };
                rating.reviews = rating.reviews.saturating_add(part(0));
                rating.score_sum = rating.score_sum.saturating_add(part(1));
            }
        }
        Ok(ratings)
    }

    pub(crate) async fn create_shopper(
        &self,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<Shopper, Error> {
        flashsale_engine::check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)?;
        let id = self.reserve_shoppers(1).await?;
        let shopper = Shopper {
            id,
            name: name.to_owned(),
            created_at: self.now(),
        };
        self.create_accounts(
            &[(id, name.to_owned(), reference.to_owned())],
            credit,
            shopper.created_at,
        )
        .await?;
        Ok(shopper)
    }

    async fn reserve_shoppers(&self, count: u32) -> Result<ShopperId, Error> {
        let last: u64 = self
            .query(
                redis::cmd("HINCRBY")
                    .arg(self.keys().global("seq"))
                    .arg("shopper")
                    .arg(count),
            )
            .await?;
        Ok(ShopperId(last + 1 - u64::from(count)))
    }

    /// Creates accounts `(id, name, credit reference)`, one call per shard.
    async fn create_accounts(
        &self,
        accounts: &[(ShopperId, String, String)],
        credit: Money,
        at: Timestamp,
    ) -> Result<(), Error> {
        let mut by_shard: HashMap<usize, Vec<&(ShopperId, String, String)>> = HashMap::new();
        for account in accounts {
            by_shard
                .entry(self.shard_of(account.0))
                .or_default()
                .push(account);
        }
        let created = at.millis().to_string();
        let credit_text = credit.fen().to_string();
        let calls = by_shard.into_iter().map(|(shard, accounts)| {
            let keys: Vec<String> = accounts
                .iter()
                .map(|(id, _, _)| self.keys().shard_id(shard, "acct", id.0))
                .collect();
            let mut args: Vec<&str> = vec!["accounts", &created, &credit_text];
            for (_, name, reference) in &accounts {
                args.push(name);
                args.push(reference);
            }
            async move { self.step_done(&keys, &args).await }
        });
        try_join_all(calls).await?;
        Ok(())
    }

    pub(crate) async fn create_shoppers(
        &self,
        count: u32,
        credit: Money,
    ) -> Result<Vec<ShopperId>, Error> {
        if count == 0 || count > flashsale_engine::engine::BULK_SHOPPERS_MAX {
            return Err(Error::Engine(EngineError::Invalid {
                field: "count",
                reason: "must be from 1 to 10000",
            }));
        }
        if credit.fen() > WALLET_FEN_MAX {
            return Err(wallet_too_large());
        }
        let first = self.reserve_shoppers(count).await?;
        let accounts: Vec<(ShopperId, String, String)> = (0..u64::from(count))
            .map(|offset| {
                let id = ShopperId(first.0 + offset);
                (id, id.to_string(), format!("bulk:{id}"))
            })
            .collect();
        self.create_accounts(&accounts, credit, self.now()).await?;
        Ok(accounts.into_iter().map(|(id, _, _)| id).collect())
    }

    pub(crate) async fn credit_wallet(
        &self,
        shopper: ShopperId,
        amount: Money,
        reference: &str,
    ) -> Result<Wallet, Error> {
        flashsale_engine::check_credit(amount, reference)?;
        let shard = self.shard_of(shopper);
        let amount_text = amount.fen().to_string();
        let bound = WALLET_FEN_MAX.to_string();
        let values = self
            .step_done(
                &[self.keys().shard_id(shard, "acct", shopper.0)],
                &["credit", &amount_text, reference, &bound],
            )
            .await?;
        wallet_of(&values[1..])
    }

    pub(crate) async fn wallet(&self, shopper: ShopperId) -> Result<Wallet, Error> {
        let shard = self.shard_of(shopper);
        let values: Vec<Value> = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.keys().shard_id(shard, "acct", shopper.0))
                    .arg("credited")
                    .arg("available")
                    .arg("held")
                    .arg("spent"),
            )
            .await?;
        if values.first().is_none_or(|value| *value == Value::Nil) {
            return Err(Error::Engine(EngineError::NotFound(Entity::Shopper)));
        }
        wallet_of(&values)
    }

    pub(crate) async fn create_deal(
        &self,
        merchant: MerchantId,
        new: NewDeal,
    ) -> Result<DealView, Error> {
        let now = self.now();
        if new.allocation != Allocation::FirstCome {
            // Issue #14: raffles run on one node only, for now (README).
            return Err(Error::Engine(EngineError::Invalid {
                field: "allocation",
                reason: "raffle is not available in Redis mode; run one node without --redis-url",
            }));
        }
        let spec = flashsale_engine::validate_deal(new, now)?;
        if spec
            .price
            .fen()
            .checked_mul(i64::from(spec.per_user_limit))
            .is_none_or(|fen| fen > WALLET_FEN_MAX)
        {
            return Err(Error::Engine(EngineError::Invalid {
                field: "price",
                reason: "times per_user_limit is too large",
            }));
        }
        if self.merchant(merchant).await?.is_none() {
            return Err(Error::Engine(EngineError::NotFound(Entity::Merchant)));
        }
        let id: u64 = self
            .query(
                redis::cmd("HINCRBY")
                    .arg(self.keys().global("seq"))
                    .arg("deal")
                    .arg(1),
            )
            .await?;
        let deal = DealId(id);
        self.query::<()>(redis::cmd("HSET").arg(self.keys().deal(deal)).arg(&[
            ("merchant", merchant.0.to_string()),
            ("title", spec.title.clone()),
            ("price", spec.price.fen().to_string()),
            ("limit", spec.per_user_limit.to_string()),
            ("starts", spec.starts_at.millis().to_string()),
            ("ends", spec.ends_at.millis().to_string()),
            ("paused", "0".to_owned()),
            (
                "registration",
                if spec.requires_registration { "1" } else { "0" }.to_owned(),
            ),
            ("hold_seconds", spec.hold_seconds.to_string()),
            ("created_at", now.millis().to_string()),
            ("total", spec.stock.to_string()),
            ("pool", spec.stock.to_string()),
            ("sold_out", "0".to_owned()),
            ("version", "1".to_owned()),
        ]))
        .await?;
        self.query::<()>(
            redis::cmd("ZADD")
                .arg(self.keys().global("deals"))
                .arg(id)
                .arg(id),
        )
        .await?;
        self.install_terms_everywhere(deal).await?;
        let entry = self.entry(deal).await?;
        Ok(entry.view(self.now()))
    }

    pub(crate) async fn deal(&self, id: DealId) -> Result<DealView, Error> {
        let entry = self.entry(id).await?;
        self.refresh(&entry).await?;
        Ok(entry.view(self.now()))
    }

    pub(crate) async fn update_deal(
        &self,
        merchant: MerchantId,
        id: DealId,
        change: DealChange,
    ) -> Result<DealView, Error> {
        let entry = self.entry(id).await?;
        if entry.merchant != merchant {
            return Err(Error::Engine(EngineError::Forbidden(Entity::Deal)));
        }
        if change.add_stock == Some(0) {
            return Err(Error::Engine(EngineError::Invalid {
                field: "add_stock",
                reason: "must be at least 1",
            }));
        }
        let add = change
            .add_stock
            .map(|units| units.to_string())
            .unwrap_or_default();
        let ends = change
            .ends_at
            .map(|at| at.millis().to_string())
            .unwrap_or_default();
        let paused = change
            .paused
            .map(|paused| if paused { "1" } else { "0" })
            .unwrap_or("");
        let bound = flashsale_engine::engine::STOCK_MAX.to_string();
        let channel = self.keys().channel();
        self.step_done(
            &[self.keys().deal(id)],
            &[
                "update",
                &merchant.0.to_string(),
                &add,
                &ends,
                paused,
                &bound,
                &channel,
            ],
        )
        .await?;
        if change.ends_at.is_some() || change.paused.is_some() {
            self.install_terms_everywhere(id).await?;
        }
        self.refresh(&entry).await?;
        Ok(entry.view(self.now()))
    }

    pub(crate) async fn deals_newest_first(
        &self,
        before: Option<DealId>,
        limit: usize,
    ) -> Result<Vec<DealView>, Error> {
        let top = before.map_or_else(|| "+inf".to_owned(), |before| format!("({}", before.0));
        let ids: Vec<u64> = self
            .query(
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(self.keys().global("deals"))
                    .arg(top)
                    .arg("-inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        let now = self.now();
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(entry) = self.entry(DealId(id)).await {
                views.push(entry.view(now));
            }
        }
        Ok(views)
    }

    /// Redis mode has no raffles (creating one is refused), so no deal
    /// has a draw: `NotFound(Draw)` for a deal that exists.
    async fn no_draw(&self, deal: DealId) -> Result<std::convert::Infallible, Error> {
        self.deal(deal).await?;
        Err(Error::Engine(EngineError::NotFound(Entity::Draw)))
    }

    pub(crate) async fn draw_record(
        &self,
        deal: DealId,
        _from: u64,
        _limit: usize,
    ) -> Result<flashsale_engine::DrawRecord, Error> {
        match self.no_draw(deal).await? {}
    }

    pub(crate) async fn draw_registrants(
        &self,
        deal: DealId,
        _from: u64,
        _limit: usize,
    ) -> Result<(Vec<ShopperId>, Option<u64>), Error> {
        match self.no_draw(deal).await? {}
    }

    pub(crate) async fn draw_standing(
        &self,
        _shopper: ShopperId,
        deal: DealId,
    ) -> Result<flashsale_engine::DrawStanding, Error> {
        match self.no_draw(deal).await? {}
    }

    /// No raffles in Redis mode: nothing to draw.
    pub(crate) async fn run_draws(&self) -> Result<usize, Error> {
        Ok(0)
    }

    pub(crate) async fn register(&self, shopper: ShopperId, deal: DealId) -> Result<bool, Error> {
        let entry = self.entry(deal).await?;
        let shard = self.shard_of(shopper);
        let keys = [
            self.keys().shard_id(shard, "acct", shopper.0),
            self.keys().shard(shard, "stock"),
            self.keys().shard_id(shard, "terms", deal.0),
        ];
        let deal_text = deal.0.to_string();
        for _ in 0..STEP_ATTEMPTS_MAX {
            let version = entry.live.lock().version.to_string();
            match self
                .step(&keys, &["register", &deal_text, &version], None)
                .await?
            {
                Reply::Done(values) => {
                    return Ok(values.get(1).and_then(text).as_deref() == Some("new"));
                }
                Reply::Refused(refusal) => return Err(Error::Engine(refusal)),
                Reply::Terms => self.install_terms(deal, shard).await?,
                Reply::Refill { .. } => return Err(garbled("register cannot refill")),
            }
        }
        Err(Error::RedisBusy)
    }

    pub(crate) async fn buy(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
    ) -> Result<(Order, Answer), Error> {
        let (values, replayed) = self.reserve(shopper, deal, quantity, key, "order").await?;
        let answer = if replayed {
            Answer::Replayed
        } else {
            Answer::Settled
        };
        Ok((
            order_of(&values.get(2).and_then(text).unwrap_or_default())?,
            answer,
        ))
    }

    pub(crate) async fn hold(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
    ) -> Result<Hold, Error> {
        let (values, _replayed) = self.reserve(shopper, deal, quantity, key, "hold").await?;
        hold_of(&values.get(2).and_then(text).unwrap_or_default())
    }

    /// The JSON of an order or hold (`table` "orders" or "holds") by id,
    /// with the shard its low bits name; `NotFound(entity)` when there is
    /// none.
    async fn record(&self, id: u64, table: &str, entity: Entity) -> Result<(String, usize), Error> {
        let (shard, _) = decompose(id);
        let missing = || Error::Engine(EngineError::NotFound(entity));
        if shard >= self.inner.shards {
            return Err(missing());
        }
        let json: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().shard(shard, table))
                    .arg(id),
            )
            .await?;
        Ok((json.ok_or_else(missing)?, shard))
    }

    /// The hold's record, with the shard that owns it.
    async fn hold_record(&self, id: HoldId) -> Result<(Hold, usize), Error> {
        let (json, shard) = self.record(id.0, "holds", Entity::Hold).await?;
        Ok((hold_of(&json)?, shard))
    }

    pub(crate) async fn pay_hold(&self, shopper: ShopperId, id: HoldId) -> Result<Order, Error> {
        let (hold, shard) = self.hold_record(id).await?;
        if hold.shopper != shopper {
            return Err(Error::Engine(EngineError::Forbidden(Entity::Hold)));
        }
        let entry = self.entry(hold.deal).await?;
        let deal = hold.deal;
        let keys = [
            self.keys().shard_id(shard, "acct", shopper.0),
            self.keys().shard(shard, "stock"),
            self.keys().shard_id(shard, "terms", deal.0),
            self.keys().shard(shard, "orders"),
            self.keys().shard(shard, "holds"),
            self.keys().shard(shard, "exp"),
            self.keys().shard(shard, "seq"),
            self.keys().shard_id(shard, "do", deal.0),
            self.keys().shard_id(shard, "so", shopper.0),
        ];
        let id_text = id.0.to_string();
        let shopper_text = shopper.0.to_string();
        let shard_text = shard.to_string();
        for _ in 0..STEP_ATTEMPTS_MAX {
            let version = entry.live.lock().version.to_string();
            let args = ["pay", &id_text, &shopper_text, &version, &shard_text];
            match self.step(&keys, &args, Some(id)).await? {
                Reply::Done(values) => {
                    return order_of(&values.get(2).and_then(text).unwrap_or_default());
                }
                Reply::Refused(refusal) => {
                    if matches!(refusal, EngineError::HoldExpired { .. }) {
                        // The expired hold's units went back to the bucket.
                        self.return_stock(deal, shard).await?;
                    }
                    return Err(Error::Engine(refusal));
                }
                Reply::Terms => self.install_terms(deal, shard).await?,
                Reply::Refill { need, total } => {
                    if !self.refill(&entry, shard, need, total).await? {
                        return Err(Error::Engine(EngineError::HoldExpired { hold: id }));
                    }
                }
            }
        }
        Err(Error::RedisBusy)
    }

    pub(crate) async fn release_hold(&self, shopper: ShopperId, id: HoldId) -> Result<Hold, Error> {
        let (_, shard) = self.hold_record(id).await?;
        self.release(id, shard, shopper, &shopper.0.to_string())
            .await
    }

    /// The `release` step for the caller (`who` its id) or the expiry sweep
    /// (`who` is `*`, `shopper` the hold's own).
    async fn release(
        &self,
        id: HoldId,
        shard: usize,
        shopper: ShopperId,
        who: &str,
    ) -> Result<Hold, Error> {
        let keys = [
            self.keys().shard_id(shard, "acct", shopper.0),
            self.keys().shard(shard, "stock"),
            self.keys().shard(shard, "holds"),
            self.keys().shard(shard, "exp"),
        ];
        let values = match self
            .step(&keys, &["release", &id.0.to_string(), who], Some(id))
            .await?
        {
            Reply::Done(values) => values,
            Reply::Refused(refusal) => return Err(Error::Engine(refusal)),
            Reply::Refill { .. } | Reply::Terms => return Err(garbled("release cannot refill")),
        };
        let hold = hold_of(&values.get(2).and_then(text).unwrap_or_default())?;
        if matches!(hold.status, HoldStatus::Released | HoldStatus::Expired) {
            self.return_stock(hold.deal, shard).await?;
        }
        Ok(hold)
    }

    pub(crate) async fn expire_holds(&self) -> Result<usize, Error> {
        let now = self.now().millis();
        let mut expired = 0;
        for shard in 0..self.inner.shards {
            let due: Vec<u64> = self
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.keys().shard(shard, "exp"))
                        .arg("-inf")
                        .arg(now)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(EXPIRY_BATCH_MAX),
                )
                .await?;
            for id in due {
                let (hold, _) = self.hold_record(HoldId(id)).await?;
                self.release(HoldId(id), shard, hold.shopper, "*").await?;
                expired += 1;
            }
        }
        Ok(expired)
    }

    pub(crate) async fn review(
        &self,
        shopper: ShopperId,
        order: OrderId,
        scores: [u8; 3],
        text: &str,
    ) -> Result<Review, Error> {
        flashsale_engine::check_review(scores, text)?;
        let settled = self.order(order).await?;
        if settled.shopper != shopper {
            return Err(Error::Engine(EngineError::Forbidden(Entity::Order)));
        }
        let merchant = self.entry(settled.deal).await?.merchant;
        let (shard, _) = decompose(order.0);
        let created_at = self.now();
        let [description, delivery, service] = scores.map(|score| score.to_string());
        self.step_done(
            &[
                self.keys().shard(shard, "orders"),
                self.keys().shard(shard, "reviews"),
                self.keys().shard(shard, "ratings"),
            ],
            &[
                "review",
                &order.0.to_string(),
                &shopper.0.to_string(),
                &merchant.0.to_string(),
                &description,
                &delivery,
                &service,
                text,
                &created_at.millis().to_string(),
            ],
        )
        .await?;
        let [description, delivery, service] = scores;
        Ok(Review {
            order,
            deal: settled.deal,
            merchant,
            shopper,
            description,
            delivery,
            service,
            text: text.to_owned(),
            created_at,
        })
    }

    pub(crate) async fn share(&self, shopper: ShopperId, order: OrderId) -> Result<bool, Error> {
        let (shard, _) = decompose(order.0);
        if shard >= self.inner.shards {
            return Err(Error::Engine(EngineError::NotFound(Entity::Order)));
        }
        let values = self
            .step_done(
                &[
                    self.keys().shard(shard, "orders"),
                    self.keys().shard(shard, "shared"),
                    self.keys().shard(shard, "stock"),
                ],
                &["share", &order.0.to_string(), &shopper.0.to_string()],
            )
            .await?;
        Ok(values.get(1).and_then(text).as_deref() == Some("new"))
    }

    pub(crate) async fn order(&self, id: OrderId) -> Result<Order, Error> {
        order_of(&self.record(id.0, "orders", Entity::Order).await?.0)
    }

    /// Orders of `ids` on `shard`, in the order given.
    async fn orders_on(&self, shard: usize, ids: &[u64]) -> Result<Vec<Order>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let jsons: Vec<Option<String>> = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.keys().shard(shard, "orders"))
                    .arg(ids),
            )
            .await?;
        jsons.iter().flatten().map(|json| order_of(json)).collect()
    }

    pub(crate) async fn orders_of_deal(
        &self,
        deal: DealId,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        let mut orders = Vec::with_capacity(limit.min(ORDERS_PAGE_READ_MAX));
        let mut shard = from.shard as usize;
        let mut position = from.position as usize;
        while shard < self.inner.shards && orders.len() < limit {
            let want = (limit - orders.len()).min(ORDERS_PAGE_READ_MAX);
            let ids: Vec<u64> = self
                .query(
                    redis::cmd("LRANGE")
                        .arg(self.keys().shard_id(shard, "do", deal.0))
                        .arg(position)
                        .arg(position + want - 1),
                )
                .await?;
            let read = ids.len();
            orders.extend(self.orders_on(shard, &ids).await?);
            if read < want {
                shard += 1;
                position = 0;
            } else {
                position += read;
            }
        }
        let next = (shard < self.inner.shards).then_some(OrderCursor {
            shard: shard as u32,
            position: position as u32,
        });
        Ok(OrderPage { orders, next })
    }

    pub(crate) async fn orders_of_shopper(
        &self,
        shopper: ShopperId,
        deal: Option<DealId>,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        let shard = self.shard_of(shopper);
        let ids: Vec<u64> = self
            .query(
                redis::cmd("LRANGE")
                    .arg(self.keys().shard_id(shard, "so", shopper.0))
                    .arg(from.position)
                    .arg(-1),
            )
            .await?;
        let mut orders = Vec::new();
        let mut position = from.position as usize;
        for chunk in ids.chunks(ORDERS_PAGE_READ_MAX) {
            for order in self.orders_on(shard, chunk).await? {
                if orders.len() == limit {
                    break;
                }
                position += 1;
                if deal.is_none_or(|deal| order.deal == deal) {
                    orders.push(order);
                }
            }
        }
        let next = (position < from.position as usize + ids.len()).then_some(OrderCursor {
            shard: 0,
            position: position as u32,
        });
        Ok(OrderPage { orders, next })
    }

    // ----- the poller -----------------------------------------------------------------

    /// Runs until dropped: every [`POLL_INTERVAL`] refreshes the newest
    /// deals and their numbers (the feed, `/metrics` and the sold-out
    /// flags read them), and every few polls finishes transfers and sweeps
    /// left half done. A failed poll marks the store not ready. Beside it,
    /// listens on the deployment's channel and re-reads a deal at once when
    /// a step publishes it (sold out, restocked, new terms); the poll is the
    /// safety net for messages missed while disconnected.
    pub(crate) async fn run_poller(self) {
        tokio::join!(self.poll_loop(), self.subscribe_loop());
    }

    async fn poll_loop(&self) {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls: u32 = 0;
        loop {
            ticker.tick().await;
            polls = polls.wrapping_add(1);
            let with_sums = polls.is_multiple_of(SUMS_EVERY_POLLS);
            let result = match self.poll(with_sums).await {
                Ok(()) if polls.is_multiple_of(RECONCILE_EVERY_POLLS) => self.reconcile().await,
                other => other,
            };
            let reachable = result.is_ok();
            if self.inner.reachable.swap(reachable, Ordering::Relaxed) != reachable {
                match &result {
                    Ok(()) => tracing::info!("Redis answers again"),
                    Err(error) => tracing::warn!(
                        error = error as &dyn std::error::Error,
                        "Redis does not answer"
                    ),
                }
            }
        }
    }

    /// Listens on the channel, reconnecting after [`POLL_INTERVAL`] when
    /// the subscription drops.
    async fn subscribe_loop(&self) {
        loop {
            if let Err(error) = self.subscribe().await {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "the deals channel dropped; listening again shortly"
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn subscribe(&self) -> Result<(), Error> {
        use futures_util::StreamExt as _;
        let client =
            redis::Client::open(self.inner.subscribe_url.as_str()).map_err(Error::Redis)?;
        let mut pubsub =
            tokio::time::timeout(self.inner.connect_timeout, client.get_async_pubsub())
                .await
                .map_err(|_| Error::RedisTimeout)?
                .map_err(Error::Redis)?;
        pubsub
            .subscribe(self.keys().channel())
            .await
            .map_err(Error::Redis)?;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(key) = message.get_payload::<String>() else {
                continue;
            };
            let id = key
                .split_once("{d:")
                .and_then(|(_, rest)| rest.split_once('}'))
                .and_then(|(id, _)| id.parse().ok())
                .map(DealId);
            let entry = id.and_then(|id| self.inner.deals.read().get(&id).cloned());
            if let Some(entry) = entry {
                // A failure here is the poll's to repair.
                let _ = self.refresh(&entry).await;
            }
        }
        Ok(())
    }

    /// One poll (see [`RedisStore::run_poller`]); `with_sums` also sums
    /// the deals' numbers and the merchants' ratings over the shards.
    async fn poll(&self, with_sums: bool) -> Result<(), Error> {
        let ids: Vec<u64> = self
            .query(
                redis::cmd("ZREVRANGE")
                    .arg(self.keys().global("deals"))
                    .arg(0)
                    .arg(FEED_DEALS_MAX - 1),
            )
            .await?;
        let ids: Vec<DealId> = ids.into_iter().map(DealId).collect();
        let mut entries = Vec::with_capacity(ids.len());
        for &id in &ids {
            if let Ok(entry) = self.entry(id).await {
                entries.push(entry);
            }
        }
        // One read per deal, all in flight at once: the deals live on
        // different Cluster slots, so no pipeline may hold two of them.
        let reads = entries.iter().map(|entry| {
            let key = self.keys().deal(entry.id);
            async move {
                self.query::<HashMap<String, String>>(redis::cmd("HGETALL").arg(key))
                    .await
            }
        });
        let fields = try_join_all(reads).await?;
        // The numbers summed over the shards cost one HMGET per shard of six
        // fields per deal: every [`SUMS_EVERY_POLLS`] polls; between them a
        // deal keeps the sums it had (its hash is still read every poll).
        let deal_ids: Vec<DealId> = entries.iter().map(|entry| entry.id).collect();
        let sums = if with_sums {
            Some(self.shard_sums(&deal_ids).await?)
        } else {
            None
        };
        for (index, (entry, fields)) in entries.iter().zip(&fields).enumerate() {
            let mut live = live_of(fields);
            match sums.as_ref().and_then(|sums| sums.get(index)) {
                Some(sum) => live.set_sums(sum),
                None => live.keep_sums(&entry.live.lock()),
            }
            self.learn(entry, live).await;
        }
        if !with_sums {
            *self.inner.newest.write() = ids;
            return Ok(());
        }
        let merchants: Vec<MerchantId> = entries
            .iter()
            .map(|entry| entry.merchant)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let ratings = self.ratings(&merchants).await?;
        for (merchant, rating) in merchants.into_iter().zip(ratings) {
            let known = self
                .inner
                .merchants
                .read()
                .get(&merchant)
                .map(|(name, _)| name.clone());
            let name = match known {
                Some(name) => name,
                None => match self.merchant(merchant).await? {
                    Some(found) => found.name,
                    None => continue,
                },
            };
            self.inner
                .merchants
                .write()
                .insert(merchant, (name, rating));
        }
        *self.inner.newest.write() = ids;
        Ok(())
    }

    /// Finishes transfers pending past [`TRANSFER_ABANDONED_MS`], every
    /// sweep still on its way back to a pool, and sweeps the buckets of any
    /// deal marked sold out that still has units in a bucket.
    async fn reconcile(&self) -> Result<(), Error> {
        let now = self.now().millis();
        let entries: Vec<Arc<DealEntry>> = self.inner.deals.read().values().cloned().collect();
        for entry in &entries {
            let pending: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys().deal_part(entry.id, "tx")))
                .await?;
            for (id, value) in pending {
                let mut parts = value
                    .split(':')
                    .map(|part| part.parse::<i64>().unwrap_or(0));
                let (shard, units, at) = (
                    parts.next().unwrap_or(0),
                    parts.next().unwrap_or(0),
                    parts.next().unwrap_or(0),
                );
                if now - at > TRANSFER_ABANDONED_MS
                    && let Ok(shard) = usize::try_from(shard)
                {
                    tracing::info!(deal = %entry.id, transfer = %id, "finishing an abandoned transfer");
                    self.finish_transfer(entry.id, shard, &id, units).await?;
                }
            }
            let live = *entry.live.lock();
            if live.marked_sold_out && live.buckets > 0 {
                let _one_at_a_time = entry.refill.lock().await;
                self.sweep(entry.id).await?;
            }
        }
        for shard in 0..self.inner.shards {
            let pending: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys().shard(shard, "xout")))
                .await?;
            for (id, value) in pending {
                let Some((deal, units)) = value.split_once(':') else {
                    continue;
                };
                if let (Ok(deal), Ok(units)) = (deal.parse::<u64>(), units.parse::<i64>()) {
                    self.finish_sweep(DealId(deal), shard, &id, units).await?;
                }
            }
        }
        Ok(())
    }
}

impl FeedSource for Inner {
    fn deals(&self, limit: usize) -> Vec<DealView> {
        let now = self.clock.now();
        let deals = self.deals.read();
        self.newest
            .read()
            .iter()
            .filter_map(|id| deals.get(id))
            .take(limit)
            .map(|entry| entry.view(now))
            .collect()
    }

    fn rating(&self, merchant: MerchantId) -> Option<Rating> {
        self.merchants
            .read()
            .get(&merchant)
            .map(|(_, rating)| *rating)
    }

    fn merchant_name(&self, merchant: MerchantId) -> Option<String> {
        self.merchants
            .read()
            .get(&merchant)
            .map(|(name, _)| name.clone())
    }
}

impl DealLive {
    /// The sums of `before`, when this read did not sum the shards.
    fn keep_sums(&mut self, before: &DealLive) {
        self.buckets = before.buckets;
        self.held = before.held;
        self.sold = before.sold;
        self.buyers = before.buyers;
        self.registrations = before.registrations;
        self.shares = before.shares;
    }

    fn set_sums(&mut self, sum: &[u64; SUM_PARTS]) {
        let [buckets, held, sold, buyers, registrations, shares] = *sum;
        self.shares = shares;
        self.buckets = buckets;
        self.held = held;
        self.sold = sold;
        self.buyers = buyers;
        self.registrations = registrations;
    }
}

fn field<T: std::str::FromStr>(fields: &HashMap<String, String>, name: &str) -> Option<T> {
    fields.get(name).and_then(|value| value.parse().ok())
}

fn live_of(fields: &HashMap<String, String>) -> DealLive {
    DealLive {
        version: field(fields, "version").unwrap_or(0),
        ends_at: Timestamp(field(fields, "ends").unwrap_or(0)),
        paused: fields.get("paused").is_some_and(|paused| paused == "1"),
        total: field(fields, "total").unwrap_or(0),
        pool: field(fields, "pool").unwrap_or(0),
        marked_sold_out: fields.get("sold_out").is_some_and(|marked| marked == "1"),
        ..DealLive::default()
    }
}

fn entry_of(id: DealId, fields: &HashMap<String, String>) -> Result<DealEntry, Error> {
    let merchant =
        field(fields, "merchant").ok_or(Error::Engine(EngineError::NotFound(Entity::Deal)))?;
    Ok(DealEntry {
        id,
        merchant: MerchantId(merchant),
        title: fields.get("title").cloned().unwrap_or_default(),
        price: money(field(fields, "price").unwrap_or(0))?,
        per_user_limit: field(fields, "limit").unwrap_or(1),
        starts_at: Timestamp(field(fields, "starts").unwrap_or(0)),
        requires_registration: fields.get("registration").is_some_and(|flag| flag == "1"),
        hold_seconds: field(fields, "hold_seconds").unwrap_or(0),
        created_at: Timestamp(field(fields, "created_at").unwrap_or(0)),
        live: Mutex::new(live_of(fields)),
        sold_out: AtomicBool::new(false),
        records: RwLock::new(HashSet::new()),
        refill: tokio::sync::Mutex::new(()),
    })
}

fn wallet_of(values: &[Value]) -> Result<Wallet, Error> {
    let part = |index: usize| money(number(values.get(index)));
    Ok(Wallet {
        credited: part(0)?,
        available: part(1)?,
        held: part(2)?,
        spent: part(3)?,
    })
}

fn wallet_too_large() -> Error {
    Error::Engine(EngineError::Invalid {
        field: "credit",
        reason: "is larger than a wallet may hold in Redis mode",
    })
}
