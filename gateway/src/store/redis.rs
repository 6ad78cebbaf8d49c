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
//! | `ns:{s:K}:books`, `ns:{d:D}:books` | the books streams: every settled order, credit, new deal, restock and deal change of the slot, read by the consumer group `books` (see "Books") |
//! | `ns:{g}:seq`, `:m:<id>`, `:deals`, `:deployment` | id sequences, merchants, the deals newest first, the deployment's id for Postgres |
//! | `ns:{g}:epoch` | the deployment's epoch: a random 64-bit number, set by the first node that finds it missing |
//! | `ns:{g}:layout` | `shards=N fingerprint=F`: the shard count and secret fingerprint every node must share (set by the first) |
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
//! ## Epochs
//! Ids are numbered by Redis (`ns:{g}:seq`); a Redis that restarts empty
//! numbers from 1 again. So the deployment has an **epoch** in Redis, a
//! random number set (`SET NX`) by whichever node first finds it missing.
//! Tokens carry it ([`crate::auth`]), ids are handed out only under the
//! epoch the node knows (the `ids` step checks it in the same call), and
//! the poller re-reads it every poll: a new epoch (Redis lost its data)
//! drops every cached deal, sold-out flag and merchant, and from then on
//! tokens of the old epoch are `401`.
//!
//! ## Durability
//! What an acknowledged change is worth is what Redis promises for it: the
//! node reads Redis' persistence at start and every
//! [`DURABILITY_EVERY_POLLS`] polls ([`durability`]), refuses to start
//! against a Redis that persists nothing unless `--allow-volatile-redis`,
//! is not ready while it finds one later, and reports the mode in
//! `/readyz` and `/metrics`.
//! ## Books
//! The steps append the engine's events for the books to their slot's
//! stream (the layout is in the script's header). [`RedisStore::books_read`]
//! and its neighbours are the sink's view of them
//! (`gateway/src/order_sink/streams.rs`): a consumer group `books` per
//! stream, created from id `0` with `MKSTREAM`; each node reads as the
//! consumer named by its node id, first its own pending entries, then new
//! ones; entries idle past a bound are claimed with `XAUTOCLAIM`; streams
//! are trimmed with `XTRIM MINID` below the oldest entry not yet acknowledged.
//!
//! ## Failures
//! Every call has a response timeout (`--redis-response-timeout-ms`). A
//! timeout or a lost connection is an unknown outcome: the request is
//! answered `503 unavailable` with `Retry-After`, and the client's retry with
//! the same `Idempotency-Key` gets the original outcome (the steps are
//! idempotent, which also makes the Cluster client's own retries safe).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flashsale_engine::ids::{decompose, shard_of};
use flashsale_engine::{
    Allocation, Answer, Clock, DealChange, DealId, DealSpec, DealStatus, DealView, EngineError,
    Entity, Event, Hold, HoldId, HoldStatus, Merchant, MerchantId, Money, NewDeal, Order,
    OrderCursor, OrderId, OrderPage, Rating, Review, Shopper, ShopperId, StockCounts, SystemClock,
    Timestamp, Wallet, fingerprint,
};
use futures_util::future::try_join_all;
use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value};
use serde::Deserialize;

use self::durability::ServerReply;
pub use self::durability::{Durability, DurabilityMode};
use crate::error::Error;
use crate::feed::{FEED_DEALS_MAX, FeedSource};

mod durability;

/// The server-side steps, one script (see its header).
const STEPS_LUA: &str = include_str!("../../redis/flashsale.lua");
/// How often the poller refreshes deals, gathers their numbers across the
/// shards, and checks that Redis answers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often (in polls) the poller sums deals' numbers and merchants'
/// ratings over the shards: the costly part of a poll.
const SUMS_EVERY_POLLS: u32 = 4;
/// How often (in polls) the poller re-reads Redis' persistence settings:
/// an operator may change them at runtime (`CONFIG SET`).
const DURABILITY_EVERY_POLLS: u32 = 4;
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
    /// Serve even when Redis persists nothing (`--allow-volatile-redis`):
    /// a restart of Redis then loses every acknowledged order.
    pub allow_volatile: bool,
    /// Entries of one shard's books stream past which a buy or a hold's
    /// payment answers `503 unavailable` (`--books-backlog-max` over the
    /// shards); 0: no bound (no node writes Postgres).
    pub books_backlog_per_stream_max: u64,
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
    /// The deployment's epoch in Redis is not the one the node knows.
    Epoch,
    /// The shard's books stream is at its bound (Postgres is behind).
    Backlog,
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
    /// [`RedisSettings::books_backlog_per_stream_max`], as the script's argument.
    books_backlog: String,
    clock: SystemClock,
    deals: RwLock<HashMap<DealId, Arc<DealEntry>>>,
    merchants: RwLock<HashMap<MerchantId, (String, Rating)>>,
    /// Newest deals, newest first, as of the last poll.
    newest: RwLock<Vec<DealId>>,
    reachable: AtomicBool,
    /// The deployment's epoch as this node last read it (0 before the
    /// first read).
    epoch: AtomicU64,
    /// Redis' persistence as last read (at start, then by the poller).
    durability: RwLock<Durability>,
    allow_volatile: bool,
    /// Redis persists nothing and that is not allowed: changes are refused
    /// (`not_ready`). Kept apart from `durability` so the check on every
    /// request is one relaxed load.
    volatile_refused: AtomicBool,
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

/// Whether Redis refused a command (unknown, renamed, denied by an ACL)
/// rather than failed to answer.
fn is_refusal(error: &redis::RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
            | ErrorKind::Extension
    )
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
        "EPOCH" => Ok(Reply::Epoch),
        "BACKLOG" => Ok(Reply::Backlog),
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
                books_backlog: settings.books_backlog_per_stream_max.to_string(),
                clock: SystemClock,
                deals: RwLock::new(HashMap::new()),
                merchants: RwLock::new(HashMap::new()),
                newest: RwLock::new(Vec::new()),
                reachable: AtomicBool::new(true),
                epoch: AtomicU64::new(crate::auth::NO_EPOCH),
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
        if !self.inner.reachable.load(Ordering::Relaxed) {
            return Some("Redis does not answer");
        }
        self.inner
            .volatile_refused
            .load(Ordering::Relaxed)
            .then_some(
                "Redis persists nothing now (its settings changed since this node started), so a \
             restart of Redis would lose acknowledged orders: set appendonly yes again, or \
             restart the node with --allow-volatile-redis",
            )
    }

    /// Checks that this node belongs to the deployment already in this
    /// namespace: the first node keeps `shards=N fingerprint=F` in
    /// `ns:{g}:layout` (`SET NX GET`, one call), every later one must
    /// match it. `fingerprint` is [`crate::auth::Signer::fingerprint`].
    /// Returns `Err((kept, ours))`, both layouts, when they differ;
    /// errors: Redis did not answer.
    pub(crate) async fn agree_layout(
        &self,
        fingerprint: &str,
    ) -> Result<Result<(), (String, String)>, Error> {
        let ours = format!("shards={} fingerprint={fingerprint}", self.inner.shards);
        let found: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.keys().global("layout"))
                    .arg(&ours)
                    .arg("NX")
                    .arg("GET"),
            )
            .await?;
        Ok(match found {
            Some(found) if found != ours => Err((found, ours)),
            _ => Ok(()),
        })
    }

    /// The layout kept by [`RedisStore::agree_layout`] (`shards=N
    /// fingerprint=F`), or `None` when no node has served this namespace.
    pub(crate) async fn layout(&self) -> Result<Option<String>, Error> {
        self.query(redis::cmd("GET").arg(self.keys().global("layout")))
            .await
    }

    /// The deployment's epoch as last read (see the module doc, "Epochs").
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Reads the deployment's epoch, setting a new random one when Redis
    /// has none (the first start, or Redis lost its data): `SET NX GET`,
    /// one call, so nodes racing on an empty Redis agree on one. A new
    /// epoch drops every deal, sold-out flag and merchant this node
    /// cached: none of them is Redis' any more. Errors: Redis did not
    /// answer; [`Error::Random`].
    async fn follow_epoch(&self) -> Result<u64, Error> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(Error::Random)?;
        let proposed = u64::from_le_bytes(bytes).max(1);
        let found: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.keys().global("epoch"))
                    .arg(proposed)
                    .arg("NX")
                    .arg("GET"),
            )
            .await?;
        let epoch = match found {
            None => proposed,
            Some(text) => text
                .parse()
                .map_err(|_| garbled("the deployment's epoch"))?,
        };
        let before = self.inner.epoch.swap(epoch, Ordering::AcqRel);
        if before != epoch && before != crate::auth::NO_EPOCH {
            tracing::warn!(
                before = format_args!("{before:016x}"),
                now = format_args!("{epoch:016x}"),
                "the deployment's epoch changed (Redis lost its data): cached deals dropped, \
                 tokens of the old epoch refused"
            );
            self.inner.deals.write().clear();
            self.inner.merchants.write().clear();
            self.inner.newest.write().clear();
        }
        Ok(epoch)
    }

    /// The last of `count` new ids of `kind` (`merchant`, `shopper`,
    /// `deal`), handed out only under the epoch this node knows (the `ids`
    /// step), so a node that missed Redis losing its data never numbers
    /// an account from the old count or signs it with the old epoch. A
    /// new deal's id goes into the deployment's deal index in the same
    /// step (`index`). Errors: Redis did not answer, or the epoch kept
    /// moving ([`Error::RedisBusy`]).
    async fn next_ids(&self, kind: &str, count: u32, index: bool) -> Result<u64, Error> {
        let mut keys = vec![self.keys().global("seq"), self.keys().global("epoch")];
        if index {
            keys.push(self.keys().global("deals"));
        }
        let count_text = count.to_string();
        for _ in 0..STEP_ATTEMPTS_MAX {
            let epoch = self.epoch().to_string();
            match self
                .step(&keys, &["ids", kind, &count_text, &epoch], None)
                .await?
            {
                Reply::Done(values) => {
                    return u64::try_from(number(values.get(1))).map_err(|_| garbled("an id"));
                }
                Reply::Epoch => {
                    self.follow_epoch().await?;
                }
                Reply::Refused(_) | Reply::Refill { .. } | Reply::Terms | Reply::Backlog => {
                    return Err(garbled("an id step"));
                }
            }
        }
        Err(Error::RedisBusy)
    }

    /// Redis' persistence as last read: what a `201` is worth now.
    pub(crate) fn durability(&self) -> Durability {
        self.inner.durability.read().clone()
    }

    /// Reads Redis' persistence on every primary, keeps it, and says when
    /// it changed. Errors: Redis did not answer.
    async fn check_durability(&self) -> Result<(), Error> {
        let configs = self
            .on_every_primary(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("appendonly")
                    .arg("appendfsync"),
            )
            .await?;
        let infos = self
            .on_every_primary(redis::cmd("COMMAND").arg("INFO").arg("WAITAOF"))
            .await?;
        let servers: Vec<(String, ServerReply, ServerReply)> = configs
            .into_iter()
            .map(|(address, config)| {
                let info = infos
                    .iter()
                    .find(|(other, _)| *other == address)
                    .map_or_else(|| Err("no reply".to_owned()), |(_, info)| info.clone());
                (address, config, info)
            })
            .collect();
        let now = Durability::of_servers(&servers);
        let refused = now.mode == DurabilityMode::Volatile && !self.inner.allow_volatile;
        self.inner
            .volatile_refused
            .store(refused, Ordering::Relaxed);
        let before = std::mem::replace(&mut *self.inner.durability.write(), now.clone());
        if before.mode != now.mode {
            if now.mode < before.mode {
                tracing::warn!(mode = now.mode.name(), found = %now.found, "Redis' persistence is weaker than before");
            } else {
                tracing::info!(mode = now.mode.name(), found = %now.found, "Redis' persistence");
            }
        }
        Ok(())
    }

    /// `cmd`'s reply from the one Redis, or from every primary of a
    /// Cluster, by server address; a server's refusal (an unknown or
    /// denied command) is that server's `Err`, not the call's. Errors: a
    /// server did not answer.
    async fn on_every_primary(&self, cmd: &Cmd) -> Result<Vec<(String, ServerReply)>, Error> {
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
            Reply::Refill { .. } | Reply::Terms | Reply::Epoch | Reply::Backlog => {
                Err(garbled("a step that can only be done or refused"))
            }
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
        if fields.is_empty() {
            // Redis lost it (its data, before the poll saw the new epoch).
            self.inner.deals.write().remove(&entry.id);
            return Err(Error::Engine(EngineError::NotFound(Entity::Deal)));
        }
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
        // Units of a transfer whose node died or never heard its reply are
        // on their way to a bucket: bring them in and sweep them back
        // before judging the deal sold out.
        if self.finish_transfers(entry.id, 0).await? > 0 {
            self.sweep(entry.id).await?;
            if self.transfer(entry.id, shard, total).await? {
                return Ok(true);
            }
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

    /// Finishes every transfer of `deal` pending for longer than `age_ms`
    /// (0: all of them); returns how many. Finishing is idempotent, so a
    /// transfer another node is finishing right now is not harmed.
    async fn finish_transfers(&self, deal: DealId, age_ms: i64) -> Result<usize, Error> {
        let now = self.now().millis();
        let pending: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal_part(deal, "tx")))
            .await?;
        let mut finished = 0;
        for (id, value) in pending {
            let mut parts = value
                .split(':')
                .map(|part| part.parse::<i64>().unwrap_or(0));
            let (shard, units, at) = (
                parts.next().unwrap_or(0),
                parts.next().unwrap_or(0),
                parts.next().unwrap_or(0),
            );
            if now - at >= age_ms
                && let Ok(shard) = usize::try_from(shard)
            {
                tracing::info!(%deal, transfer = %id, "finishing a pending transfer");
                self.finish_transfer(deal, shard, &id, units).await?;
                finished += 1;
            }
        }
        Ok(finished)
    }

    /// Moves every shard's bucket of the deal back into its pool.
    async fn sweep(&self, deal: DealId) -> Result<(), Error> {
        try_join_all((0..self.inner.shards).map(|shard| self.sweep_shard(deal, shard))).await?;
        Ok(())
    }

    /// Sweeps `shard`'s bucket of `deal` into the pool, and finishes every
    /// earlier sweep of that bucket still on its way (see `sweep_out` in
    /// flashsale.lua).
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
        for sweep in values.get(1..).unwrap_or_default().chunks(2) {
            let id = sweep.first().and_then(text).unwrap_or_default();
            self.finish_sweep(deal, shard, &id, number(sweep.get(1)))
                .await?;
        }
        Ok(())
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
            self.keys().shard(shard, "books"),
        ];
        let deal_text = deal.0.to_string();
        let shopper_text = shopper.0.to_string();
        let quantity_text = quantity.to_string();
        let shard_text = shard.to_string();
        let retention = KEY_RETENTION_SECONDS.to_string();
        let backlog = &self.inner.books_backlog;
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
                backlog,
            ];
            match self.step(&keys, &args, None).await? {
                Reply::Done(values) => {
                    let replayed = values.get(3).and_then(text).as_deref() == Some("1");
                    return Ok((values, replayed));
                }
                Reply::Refused(refusal) => return Err(Error::Engine(refusal)),
                Reply::Terms => self.install_terms(deal, shard).await?,
                Reply::Backlog => return Err(Error::BooksBacklog),
                Reply::Refill { need, total } => {
                    if !self.refill(&entry, shard, need, total).await? {
                        return Err(Error::Engine(EngineError::SoldOut));
                    }
                }
                Reply::Epoch => return Err(garbled("reserve cannot answer EPOCH")),
            }
        }
        Err(Error::RedisBusy)
    }

    // ----- the books streams (the module doc's "Books") -------------------------------

    /// The deployment's id for Postgres' keys, shared by its nodes: kept in
    /// `ns:{g}:deployment`, set to `candidate` by the first node that asks.
    pub(crate) async fn deployment_id(&self, candidate: &str) -> Result<String, Error> {
        let key = self.keys().global("deployment");
        self.query::<()>(redis::cmd("SET").arg(&key).arg(candidate).arg("NX"))
            .await?;
        self.query(redis::cmd("GET").arg(&key)).await
    }

    /// The deployment's id for Postgres' keys, if a node has set it.
    pub(crate) async fn known_deployment_id(&self) -> Result<Option<String>, Error> {
        self.query(redis::cmd("GET").arg(self.keys().global("deployment")))
            .await
    }

    /// Virtual shards of the deployment (`--redis-shards`).
    pub(crate) fn shards(&self) -> usize {
        self.inner.shards
    }

    /// Every books stream: one per shard, then one per deal (oldest deal
    /// first, at most [`BOOKS_DEALS_MAX`]).
    pub(crate) async fn books_streams(&self) -> Result<Vec<String>, Error> {
        let deals: Vec<u64> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys().global("deals"))
                    .arg(0)
                    .arg(BOOKS_DEALS_MAX - 1),
            )
            .await?;
        Ok((0..self.inner.shards)
            .map(|shard| self.keys().shard(shard, "books"))
            .chain(
                deals
                    .into_iter()
                    .map(|deal| self.keys().deal_part(DealId(deal), "books")),
            )
            .collect())
    }

    /// Creates the group `books` on `stream` (and the stream), reading
    /// from its first entry; a group already there is kept.
    pub(crate) async fn books_group(&self, stream: &str) -> Result<(), Error> {
        let created = self
            .query::<()>(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(BOOKS_GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match created {
            Err(Error::Redis(error)) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Up to `count` entries of `stream` for `consumer`: its own pending
    /// ones (`pending`, from id `0`: delivered before and not acknowledged,
    /// say before a restart) or new ones (`>`).
    pub(crate) async fn books_read(
        &self,
        stream: &str,
        consumer: &str,
        pending: bool,
        count: usize,
    ) -> Result<Vec<BooksEntry>, Error> {
        let reply: Value = self
            .query(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(BOOKS_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(if pending { "0" } else { ">" }),
            )
            .await?;
        // [[stream, [[id, [field, value, ...]], ...]]], or nil.
        let entries = match reply {
            Value::Array(mut streams) if !streams.is_empty() => match streams.swap_remove(0) {
                Value::Array(mut pair) if pair.len() == 2 => pair.swap_remove(1),
                _ => return Err(garbled("an XREADGROUP reply")),
            },
            _ => return Ok(Vec::new()),
        };
        books_entries(entries)
    }

    /// Claims for `consumer` up to `count` entries of `stream` delivered to
    /// another consumer and not acknowledged for `idle` (that node is
    /// likely gone), with `XAUTOCLAIM` from the start of the stream.
    pub(crate) async fn books_claim(
        &self,
        stream: &str,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<BooksEntry>, Error> {
        let reply: Value = self
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(BOOKS_GROUP)
                    .arg(consumer)
                    .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
                    .arg("0")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        // [next start, [[id, [field, value, ...]], ...], [deleted ids]].
        match reply {
            Value::Array(mut parts) if parts.len() >= 2 => books_entries(parts.swap_remove(1)),
            _ => Err(garbled("an XAUTOCLAIM reply")),
        }
    }

    /// Whether an entry of `stream` below `entry` was delivered to a
    /// consumer of the group `books` and is not acknowledged (`XPENDING
    /// … - (entry COUNT 1`). The group delivers in order, so once `entry`
    /// was delivered, false means every earlier entry is in Postgres or
    /// set aside.
    pub(crate) async fn books_pending_before(
        &self,
        stream: &str,
        entry: &str,
    ) -> Result<bool, Error> {
        let reply: Value = self
            .query(
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(BOOKS_GROUP)
                    .arg("-")
                    .arg(format!("({entry}"))
                    .arg(1),
            )
            .await?;
        match reply {
            Value::Array(entries) => Ok(!entries.is_empty()),
            _ => Err(garbled("an XPENDING reply")),
        }
    }

    /// Acknowledges entries of `stream` (they are in Postgres).
    pub(crate) async fn books_ack(&self, stream: &str, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        self.query::<()>(redis::cmd("XACK").arg(stream).arg(BOOKS_GROUP).arg(ids))
            .await
    }

    /// Where `stream` stands: entries not yet in Postgres (pending plus not
    /// yet delivered) and the id of the oldest of them, if any. Then trims
    /// the entries below that one (`XTRIM MINID`: every one of them is
    /// acknowledged), never by length.
    pub(crate) async fn books_backlog(&self, stream: &str) -> Result<BooksBacklog, Error> {
        let groups: Vec<HashMap<String, Value>> = self
            .query(redis::cmd("XINFO").arg("GROUPS").arg(stream))
            .await?;
        let Some(group) = groups
            .iter()
            .find(|group| group.get("name").and_then(text).as_deref() == Some(BOOKS_GROUP))
        else {
            return Ok(BooksBacklog::default());
        };
        let pending = u64::try_from(number(group.get("pending"))).unwrap_or(0);
        let undelivered = u64::try_from(number(group.get("lag"))).unwrap_or(0);
        let delivered = group
            .get("last-delivered-id")
            .and_then(text)
            .unwrap_or_else(|| "0-0".to_owned());
        let oldest = if pending > 0 {
            // XPENDING's summary: [count, smallest id, greatest id, consumers].
            let summary: Vec<Value> = self
                .query(redis::cmd("XPENDING").arg(stream).arg(BOOKS_GROUP))
                .await?;
            summary.get(1).and_then(text)
        } else if undelivered > 0 {
            let next: Value = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(stream)
                        .arg(format!("({delivered}"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(1),
                )
                .await?;
            match next {
                Value::Array(entries) => entries.first().and_then(|entry| match entry {
                    Value::Array(pair) => pair.first().and_then(text),
                    _ => None,
                }),
                _ => None,
            }
        } else {
            None
        };
        // Everything below the oldest entry not in Postgres is: with none,
        // everything up to the last delivered one.
        let keep_from = oldest.clone().unwrap_or(delivered);
        self.query::<()>(redis::cmd("XTRIM").arg(stream).arg("MINID").arg(&keep_from))
            .await?;
        Ok(BooksBacklog {
            entries: pending.saturating_add(undelivered),
            oldest_millis: oldest.as_deref().and_then(entry_millis),
        })
    }

    // ----- the auditor's view (gateway/src/audit.rs) -----------------------------------

    /// Every shard's atomic snapshot (the script's `audit` step: stock,
    /// orders, holds and the wallets of its shoppers), then every deal's
    /// pool, total and units in flight between its slot and the shards.
    /// Shards and deals are read one after another, so numbers summed
    /// across slots can be off by what moved meanwhile.
    /// Errors: Redis, or more than [`AUDIT_ACCOUNTS_PER_SHARD_MAX`] shoppers
    /// on one shard.
    pub(crate) async fn audit_snapshot(&self) -> Result<RedisSnapshot, Error> {
        let shoppers: Option<u64> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().global("seq"))
                    .arg("shopper"),
            )
            .await?;
        let mut accounts: Vec<Vec<ShopperId>> = vec![Vec::new(); self.inner.shards];
        for id in 1..=shoppers.unwrap_or(0) {
            accounts[self.shard_of(ShopperId(id))].push(ShopperId(id));
        }
        let mut shards = Vec::with_capacity(self.inner.shards);
        for (shard, shoppers) in accounts.into_iter().enumerate() {
            if shoppers.len() > AUDIT_ACCOUNTS_PER_SHARD_MAX {
                return Err(Error::Config(format!(
                    "shard {shard} has {} shoppers, more than the auditor reads at once ({AUDIT_ACCOUNTS_PER_SHARD_MAX})",
                    shoppers.len()
                )));
            }
            let mut keys = vec![
                self.keys().shard(shard, "stock"),
                self.keys().shard(shard, "orders"),
                self.keys().shard(shard, "holds"),
            ];
            keys.extend(
                shoppers
                    .iter()
                    .map(|shopper| self.keys().shard_id(shard, "acct", shopper.0)),
            );
            let values = self.step_done(&keys, &["audit"]).await?;
            let list = |index: usize| match values.get(index) {
                Some(Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            let stock: Vec<String> = list(1).iter().filter_map(text).collect();
            let stock = stock
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
                .collect();
            let orders = list(2)
                .iter()
                .filter_map(text)
                .map(|json| order_of(&json))
                .collect::<Result<_, _>>()?;
            let holds = list(3)
                .iter()
                .filter_map(text)
                .map(|json| hold_of(&json))
                .collect::<Result<_, _>>()?;
            let wallets = shoppers
                .into_iter()
                .zip(list(4))
                .filter_map(|(shopper, wallet)| match wallet {
                    Value::Array(fields) if fields.first().is_some_and(|f| *f != Value::Nil) => {
                        let field = |index: usize| number(fields.get(index));
                        Some((shopper, [field(0), field(1), field(2), field(3)]))
                    }
                    _ => None,
                })
                .collect();
            let pending: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys().shard(shard, "xout")))
                .await?;
            shards.push(ShardSnapshot {
                stock,
                orders,
                holds,
                wallets,
                sweeps: pending
                    .into_iter()
                    .filter_map(|(id, value)| {
                        let (deal, units) = value.split_once(':')?;
                        Some((id, DealId(deal.parse().ok()?), units.parse().ok()?))
                    })
                    .collect(),
            });
        }
        let ids: Vec<u64> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys().global("deals"))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        let mut deals = Vec::with_capacity(ids.len());
        for id in ids.into_iter().map(DealId) {
            let numbers: Vec<Option<i64>> = self
                .query(
                    redis::cmd("HMGET")
                        .arg(self.keys().deal(id))
                        .arg("pool")
                        .arg("total"),
                )
                .await?;
            let transfers: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys().deal_part(id, "tx")))
                .await?;
            let mut in_flight: i64 = 0;
            for (transfer, value) in transfers {
                let mut parts = value
                    .split(':')
                    .map(|part| part.parse::<i64>().unwrap_or(0));
                let (shard, units) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                let accepted: bool = self
                    .query(
                        redis::cmd("SISMEMBER")
                            .arg(
                                self.keys()
                                    .shard(usize::try_from(shard).unwrap_or(0), "xin"),
                            )
                            .arg(format!("{}:{transfer}", id.0)),
                    )
                    .await?;
                if !accepted {
                    in_flight = in_flight.saturating_add(units);
                }
            }
            for shard in &shards {
                for (sweep, deal, units) in &shard.sweeps {
                    if *deal != id {
                        continue;
                    }
                    let accepted: bool = self
                        .query(
                            redis::cmd("SISMEMBER")
                                .arg(self.keys().deal_part(id, "swept"))
                                .arg(sweep),
                        )
                        .await?;
                    if !accepted {
                        in_flight = in_flight.saturating_add(*units);
                    }
                }
            }
            deals.push(DealSnapshot {
                id,
                pool: numbers.first().copied().flatten().unwrap_or(0),
                total: numbers.get(1).copied().flatten().unwrap_or(0),
                in_flight,
            });
        }
        Ok(RedisSnapshot { shards, deals })
    }

    // ----- the store's operations (see `store::Store`) --------------------------------

    pub(crate) async fn create_merchant(&self, name: &str) -> Result<Merchant, Error> {
        flashsale_engine::check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)?;
        let id = self.next_ids("merchant", 1, false).await?;
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
        let last = self.next_ids("shopper", count, false).await?;
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
            let keys: Vec<String> = std::iter::once(self.keys().shard(shard, "books"))
                .chain(
                    accounts
                        .iter()
                        .map(|(id, _, _)| self.keys().shard_id(shard, "acct", id.0)),
                )
                .collect();
            let ids: Vec<String> = accounts.iter().map(|(id, _, _)| id.0.to_string()).collect();
            let (created, credit_text) = (&created, &credit_text);
            async move {
                let mut args: Vec<&str> = vec!["accounts", created, credit_text];
                for ((_, name, reference), id) in accounts.iter().zip(&ids) {
                    args.push(id);
                    args.push(name);
                    args.push(reference);
                }
                self.step_done(&keys, &args).await
            }
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
        let shopper_text = shopper.0.to_string();
        let values = self
            .step_done(
                &[
                    self.keys().shard_id(shard, "acct", shopper.0),
                    self.keys().shard(shard, "books"),
                ],
                &["credit", &amount_text, reference, &bound, &shopper_text],
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
        // The id and its place in the deal index come in one step; the deal
        // itself, complete, with its books entry in one `create` step after
        // it. A crash between the two leaves an indexed id without a deal,
        // which every reader skips (`entry` finds no deal): the deal exists
        // whole or not at all, and is listed as soon as it exists. Its terms
        // reach the shards here, or on a buy's `TERMS` answer if this node
        // stops first.
        let deal = DealId(self.next_ids("deal", 1, true).await?);
        self.step_done(
            &[self.keys().deal(deal), self.keys().deal_part(deal, "books")],
            &[
                "create",
                &merchant.0.to_string(),
                &spec.title,
                &spec.price.fen().to_string(),
                &spec.stock.to_string(),
                &spec.per_user_limit.to_string(),
                &spec.starts_at.millis().to_string(),
                &spec.ends_at.millis().to_string(),
                if spec.requires_registration { "1" } else { "0" },
                &spec.hold_seconds.to_string(),
                &now.millis().to_string(),
            ],
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
            &[self.keys().deal(id), self.keys().deal_part(id, "books")],
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
                Reply::Refill { .. } | Reply::Epoch | Reply::Backlog => {
                    return Err(garbled("register cannot refill or answer EPOCH or BACKLOG"));
                }
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
            self.keys().shard(shard, "books"),
        ];
        let id_text = id.0.to_string();
        let shopper_text = shopper.0.to_string();
        let shard_text = shard.to_string();
        for _ in 0..STEP_ATTEMPTS_MAX {
            let version = entry.live.lock().version.to_string();
            let args = [
                "pay",
                &id_text,
                &shopper_text,
                &version,
                &shard_text,
                &self.inner.books_backlog,
            ];
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
                Reply::Backlog => return Err(Error::BooksBacklog),
                Reply::Refill { need, total } => {
                    if !self.refill(&entry, shard, need, total).await? {
                        return Err(Error::Engine(EngineError::HoldExpired { hold: id }));
                    }
                }
                Reply::Epoch => return Err(garbled("pay cannot answer EPOCH")),
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
            Reply::Refill { .. } | Reply::Terms | Reply::Epoch | Reply::Backlog => {
                return Err(garbled("release cannot refill or answer EPOCH or BACKLOG"));
            }
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

    /// Runs until dropped: every [`POLL_INTERVAL`] follows the deployment's
    /// epoch and refreshes the newest deals and their numbers (the feed,
    /// `/metrics` and the sold-out flags read them); every few polls
    /// re-reads Redis' persistence and finishes transfers and sweeps left
    /// half done. A failed poll marks the store not ready. Beside it,
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
            let mut result = self.poll(with_sums).await;
            if result.is_ok() && polls.is_multiple_of(DURABILITY_EVERY_POLLS) {
                result = self.check_durability().await;
            }
            if result.is_ok() && polls.is_multiple_of(RECONCILE_EVERY_POLLS) {
                result = self.reconcile().await;
            }
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
        self.follow_epoch().await?;
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
        let entries: Vec<Arc<DealEntry>> = self.inner.deals.read().values().cloned().collect();
        for entry in &entries {
            self.finish_transfers(entry.id, TRANSFER_ABANDONED_MS)
                .await?;
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

/// Shoppers of one shard the auditor reads in one atomic call, at most.
pub(crate) const AUDIT_ACCOUNTS_PER_SHARD_MAX: usize = 100_000;

/// What the auditor reads of Redis ([`RedisStore::audit_snapshot`]).
pub(crate) struct RedisSnapshot {
    /// Per shard, in shard order.
    pub(crate) shards: Vec<ShardSnapshot>,
    pub(crate) deals: Vec<DealSnapshot>,
}

/// One shard, read atomically.
pub(crate) struct ShardSnapshot {
    /// The stock hash: `b:`/`h:`/`s:<deal>` bucket, held, sold units.
    pub(crate) stock: HashMap<String, i64>,
    pub(crate) orders: Vec<Order>,
    pub(crate) holds: Vec<Hold>,
    /// Per shopper: credited, available, held, spent (fen).
    pub(crate) wallets: Vec<(ShopperId, [i64; 4])>,
    /// Sweeps on their way to a pool: id, deal, units.
    pub(crate) sweeps: Vec<(String, DealId, i64)>,
}

/// One deal's slot.
pub(crate) struct DealSnapshot {
    pub(crate) id: DealId,
    pub(crate) pool: i64,
    pub(crate) total: i64,
    /// Units between the pool and a bucket: transfers not yet accepted by
    /// their shard, sweeps not yet accepted by the pool.
    pub(crate) in_flight: i64,
}

/// The consumer group of every books stream.
const BOOKS_GROUP: &str = "books";

/// Deal streams the sink reads at most: one per deal, oldest first (the
/// engine's `deals_max`).
pub(crate) const BOOKS_DEALS_MAX: usize = 100_000;

/// One entry of a books stream: its id and the event it holds, or why it
/// cannot be read (an entry the script did not write, or one deleted while
/// pending).
pub(crate) struct BooksEntry {
    pub(crate) id: String,
    pub(crate) event: Result<Event, String>,
}

/// How far Postgres is behind one stream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BooksBacklog {
    /// Entries not yet acknowledged: pending plus not yet delivered.
    pub(crate) entries: u64,
    /// When the oldest of them was appended (ms since the epoch, Redis' clock).
    pub(crate) oldest_millis: Option<i64>,
}

/// The milliseconds part of a stream entry id (`<ms>-<seq>`).
pub(crate) fn entry_millis(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

/// The entries of an `XREADGROUP`/`XAUTOCLAIM` reply: `[[id, [field,
/// value, ...]], ...]` (fields nil for an entry deleted while pending).
fn books_entries(entries: Value) -> Result<Vec<BooksEntry>, Error> {
    let Value::Array(entries) = entries else {
        return Err(garbled("stream entries"));
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(pair) = entry else {
                return Err(garbled("a stream entry"));
            };
            let id = pair
                .first()
                .and_then(text)
                .ok_or_else(|| garbled("an entry id"))?;
            let event = match pair.get(1) {
                Some(Value::Array(fields)) => {
                    let fields: Vec<String> = fields.iter().filter_map(text).collect();
                    book_event(&fields).ok_or_else(|| format!("entry {id}: {fields:?}"))
                }
                _ => Err(format!("entry {id} was deleted while pending")),
            };
            Ok(BooksEntry { id, event })
        })
        .collect()
}

/// The engine event a books entry holds (the script header's layout).
fn book_event(fields: &[String]) -> Option<Event> {
    let (kind, subject) = (fields.first()?.as_str(), fields.get(1)?);
    let field = |name: &str| -> Option<&str> {
        fields[2..]
            .chunks_exact(2)
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str())
    };
    let parse = |name: &str| -> Option<i64> { field(name)?.parse().ok() };
    let at = || parse("t").map(Timestamp);
    let deal = || subject.parse().ok().map(DealId);
    Some(match kind {
        "o" => Event::OrderSettled {
            order: order_of(subject).ok()?,
            key: None,
        },
        "c" => Event::WalletCredited {
            shopper: ShopperId(subject.parse().ok()?),
            amount: Money::from_fen(parse("a")?)?,
            reference: fingerprint(field("r")?),
            at: at()?,
        },
        "d" => Event::DealCreated {
            deal: deal()?,
            merchant: MerchantId(field("m")?.parse().ok()?),
            spec: DealSpec {
                title: field("n")?.to_owned(),
                price: Money::from_fen(parse("p")?)?,
                stock: field("s")?.parse().ok()?,
                per_user_limit: field("l")?.parse().ok()?,
                starts_at: Timestamp(parse("b")?),
                ends_at: Timestamp(parse("e")?),
                requires_registration: field("g")? == "1",
                hold_seconds: field("h")?.parse().ok()?,
                // Redis mode sells first come only (raffles are refused).
                allocation: Allocation::FirstCome,
            },
            at: at()?,
        },
        "r" => Event::StockAdded {
            deal: deal()?,
            quantity: field("q")?.parse().ok()?,
            at: at()?,
        },
        "u" => Event::DealChanged {
            deal: deal()?,
            ends_at: Timestamp(parse("e")?),
            paused: field("p")? == "1",
            at: at()?,
        },
        _ => return None,
    })
}

fn wallet_too_large() -> Error {
    Error::Engine(EngineError::Invalid {
        field: "credit",
        reason: "is larger than a wallet may hold in Redis mode",
    })
}
