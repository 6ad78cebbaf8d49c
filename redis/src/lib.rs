//! # flashsale-redis
//!
//! Multi-node mode: the sale's state in Redis or a Redis Cluster, shared by
//! any number of stateless nodes (`docs/multi-node.md`). It owns the key
//! layout, the server-side steps (`redis/flashsale.lua`), the node's caches
//! and poller, the books streams' read side and the auditor's snapshot.
//! It answers with the engine's records and refusals, so one mapping to
//! HTTP serves both backends.
//!
//! ## Layout
//! Shoppers are spread over `shards` virtual shards (a power of two, 64 by
//! default) by the engine's own rule ([`flashsale_engine::ids::shard_of`]).
//! Everything one shopper owns lives under the hash tag `{s:K}` of its
//! shard, so a buy is one script on one Cluster slot:
//!
//! | key (`ns` is `--redis-namespace`) | what |
//! |---|---|
//! | `ns:{s:K}:acct:<shopper>` | hash: name, `e` the epoch it was made in, wallet (`credited/available/held/spent`, fen), per deal `b:`/`h:` units bought/held and `r:` registered, `c:<reference>` credits, `k:<idempotency key>` a record `deal:kind:quantity:outcome` (kept with the account), `o:<order>` the deal of each order |
//! | `ns:{s:K}:stock` | hash: per deal `b:` the shard's **stock bucket**, `h:` held, `s:` sold, `n:` buyers, `g:` registrations, `x:` shares, `v:` the version of the deal's terms the shard's steps take (the node passes the terms themselves); `order`: the shard's order sequence |
//! | `ns:{s:K}:orders`, `:holds`, `:exp`, `:seq` | orders and holds by id (JSON), hold expiries (sorted set), hold and sweep id sequences |
//! | `ns:{s:K}:do:<deal>`, `:rec:<deal>` | order ids per deal; shoppers with a record on a deal |
//! | `ns:{s:K}:xin`, `:xout` | transfer ids accepted into buckets; sweeps on their way back to a pool |
//! | `ns:{d:D}` | hash: the deal, its undistributed stock (`pool`), `total`, the `sold_out` marker, the terms' `version`, `c` the count of changes to it since its creation |
//! | `ns:{d:D}:tx`, `:swept` | transfers on their way from the pool to a bucket; sweeps accepted into the pool |
//! | `ns:{s:K}:books`, `ns:{d:D}:books` | the books streams: every settled order, credit, new deal, restock and deal change of the slot, read by the consumer group `books` (see "Books") |
//! | `ns:{g}:seq`, `:m:<id>`, `:deals`, `:deployment` | id sequences, merchants (hash: name, created_at, `ext` its external id), the deals newest first, the deployment's id for Postgres |
//! | `ns:{g}:ext:shoppers`, `ns:{g}:ext:merchants` | hashes: external id → shopper or merchant id, set once by `HSETNX` (`links`); a shopper's `acct` hash holds its external id as `ext` |
//! | `ns:{g}:not-before`, `:revocations` | each revoked account's token not-before time (hash, ms), and the stream of revocations the nodes read on from where they left off (`tokens`) |
//! | `ns:{g}:sums` | hash: the newest deals' numbers summed over the shards and the merchants' ratings, as one node last read them for all (`sums`): `at` the read's stamp, per deal `<deal>`, per merchant `m:<merchant>` |
//! | `ns:{g}:sums:lease`, `:sums:next:<node>` | string: the node reading the sums for all this second (expires); the next `sums` being written by a node, renamed into place |
//! | `ns:{g}:epoch` | the deployment's epoch: a random 64-bit number, set by the first node that finds it missing |
//! | `ns:{g}:layout` | `shards=N fingerprint=F keys=V`: the shard count, secret fingerprint and key layout version ([`KEY_LAYOUT_VERSION`]) every node must share (set by the first) |
//!
//! ## Steps
//! Every change is one step: a function of the Redis Functions library
//! `redis/flashsale.lua`, called with `FCALL` (`FCALL_RO` for the one
//! read-only step, `audit`). The library is named `flashsale_<version>`,
//! the version a hash of its source computed at build time, and each step
//! is the function `<library>_<step>`, so two builds of the node run side
//! by side during a rolling upgrade, each calling its own library. A node
//! loads its library on every primary when it connects (`FUNCTION LOAD
//! REPLACE`, replacing only a library of its own name) and again when a
//! call answers that the function does not exist (a Redis restarted empty,
//! a new primary), then retries that call once. Each step is defined once
//! on this side ([`steps`]: its keys and arguments in order, read only or
//! not, its reply tags), every call is built from that definition, and a
//! unit test holds it equal to the header the Lua states above each step.
//! In the Lua, each changing step reads the state it needs, decides in a
//! local `decide_<rule>` that mirrors the engine's
//! (`engine/src/rules/`: same checks in the same order, same refusal
//! codes), then applies the effects.
//!
//! A buy whose shard's bucket is short
//! gets `REFILL`: the node moves a chunk from the deal's pool (a transfer:
//! `refill` on the deal's slot, `accept` on the shard's, `confirm` back,
//! each idempotent by transfer id) and retries. When the pool is short too,
//! the node sweeps every bucket of the deal back to the pool and tries once
//! more; only when the pool is then empty is the deal marked sold out, so a
//! deal is never reported sold out while a unit waits anywhere. The poller
//! finishes transfers and sweeps that a crashed node left half done.
//!
//! ## The node's own state
//! Only caches: each deal's terms and live numbers (refreshed at once on
//! the `ns:deals` channel, and once a second from the numbers one node
//! reads for all: see `sums`), and a
//! **sold-out flag** per deal with the set of shoppers that have a record
//! on it. A buy of a deal flagged sold out by a shopper without a record is
//! refused here, without touching Redis; the rest go to Redis, which
//! replays their key.
//!
//! ## Epochs
//! Ids are numbered by Redis (`ns:{g}:seq`); a Redis that restarts empty
//! numbers from 1 again. So the deployment has an **epoch** in Redis, a
//! random number set (`SET NX`) by whichever node first finds it missing.
//! Tokens carry it (the gateway's `auth`), ids are handed out only under the
//! epoch the node knows (the `ids` step checks it in the same call), and
//! the poller re-reads it every poll: a new epoch (Redis lost its data)
//! drops every cached deal, sold-out flag and merchant, and from then on
//! tokens of the old epoch are `401`. Until that poll a node still takes
//! the old epoch's tokens, so each shopper's account keeps the epoch it was
//! made in (`e`), and the steps acting for a token (`reserve`, `pay`,
//! `release`, `register`, `review`, `share`) take the epoch the node
//! verified it under and answer `EPOCH`, changing nothing, for an account
//! of another ([`Error::EarlierEpoch`], `401` like the token's own
//! refusal).
//!
//! ## Durability
//! What an acknowledged change is worth is what Redis promises for it: the
//! node reads Redis' persistence at start and every
//! `DURABILITY_EVERY_POLLS` polls (`durability`), refuses to start
//! against a Redis that persists nothing unless `--allow-volatile-redis`,
//! is not ready while it finds one later, and reports the mode in
//! `/readyz` and `/metrics`.
//! ## Books
//! The steps append the engine's events for the books to their slot's
//! stream (the layout is in the script's header). [`RedisStore::books_read`]
//! and its neighbours are the sink's view of them
//! (`books/src/streams.rs`): a consumer group `books` per
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
//! After `RECONNECT_AFTER_FAILED_POLLS` (8) failed polls in a row on a
//! Cluster, the poller replaces the node's connections with new ones made
//! from the seeds: the Cluster client re-reads its slot map only on a
//! redirection, so one whose primary died for good and whose calls time
//! out retrying that address finds the promoted replica no other way.
//!
//! ## Files
//! - `settings`: [`RedisArgs`] (the flags `serve` and `audit` share) and
//!   [`RedisSettings`].
//! - `connection`: connecting, loading the Functions library, running a step.
//! - [`steps`]: the library, its versioned name, and each step's definition.
//! - `keys`: the key layout above; `replies`: reading the steps' replies.
//! - `epoch`: the deployment's layout, epoch, id and id sequences.
//! - `durability`: what Redis' persistence makes a `201` worth.
//! - `cache`: the node's deal cache and the feed's view of it.
//! - `transfer`: stock buckets, refills and sweeps.
//! - `reserve`: buy, hold, payment, release, expiry, registration.
//! - `batch`: the lanes that send a shard's buys and holds of one deal
//!   that arrive together in one `reserve` call.
//! - `links`: accounts of a platform's user ids (external ids), made once
//!   across nodes.
//! - `accounts`, `deals`, `orders`: the rest of the store's methods.
//! - `books`: the books streams, read by the Postgres sink.
//! - `audit`: the auditor's snapshot; `poller`: the background poll;
//!   `sums`: the deals' numbers one node reads for all each second.
//! - `error`: [`Error`], the crate's one error type.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flashsale_engine::{Clock, DealId, MerchantId, Rating, Timestamp};
use parking_lot::RwLock;

use crate::cache::DealEntry;
use crate::connection::Connection;
use crate::keys::Keys;

pub use crate::audit::{AUDIT_ACCOUNTS_PER_SHARD_MAX, DealSnapshot, RedisSnapshot, ShardSnapshot};
pub use crate::batch::{
    REQUESTS_WAITING_MAX, RESERVE_BATCH_MAX, RESERVE_CALL_PLACE_HOLD_MAX,
    RESERVE_CALLS_IN_FLIGHT_DEFAULT, RESERVE_CALLS_IN_FLIGHT_MAX, ReserveCalls,
};
pub use crate::books::{BOOKS_DEALS_MAX, BooksBacklog, BooksEntry, entry_millis};
pub use crate::durability::{Durability, DurabilityMode};
pub use crate::error::Error;
pub use crate::replication::{PrimaryReplicas, REPLICA_ACK_SECONDS, Replicas};
pub use crate::settings::{RedisArgs, RedisSettings, RedisTarget, ReplicaAckSettings, StepClock};

mod accounts;
mod audit;
mod batch;
mod books;
mod cache;
mod connection;
mod deals;
mod durability;
mod epoch;
mod error;
mod keys;
mod links;
mod orders;
mod poller;
mod replication;
mod replies;
mod reserve;
mod settings;
pub mod steps;
mod sums;
mod tokens;
mod transfer;

/// The epoch of a store that has none (one node), and of a Redis node
/// before its first read: tokens carry it ([`RedisStore::epoch`]).
pub const NO_EPOCH: u64 = 0;
pub use tokens::{REVOCATION_MARGIN, REVOCATION_PROPAGATION};
/// The newest deals the feed shows at most; the list of deals newest
/// first in Redis is kept to this length.
pub const FEED_DEALS_MAX: usize = 1_000;

/// How often the poller follows the epoch and the newest deals' ids, and
/// checks that Redis answers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often (in polls) a node asks to read the newest deals and sum their
/// numbers and merchants' ratings over the shards for every node: the
/// costly part of a poll, done by one node of the deployment a second
/// (`sums`; between them the deals' channel carries every change a node
/// must see at once).
pub(crate) const SUMS_EVERY_POLLS: u32 = 4;
/// How long the node that reads the sums for all holds that turn, in ms
/// (`ns:{g}:sums:lease`): a little under the [`SUMS_EVERY_POLLS`] polls
/// between two asks, so the deployment reads the sums once a second
/// whichever nodes live, and at most a poll later when the node that had
/// the turn is gone.
pub(crate) const SUMS_LEASE_MS: u64 = 900;
/// How often (in polls) the poller re-reads Redis' persistence settings:
/// an operator may change them at runtime (`CONFIG SET`).
pub(crate) const DURABILITY_EVERY_POLLS: u32 = 4;
/// Failed polls in a row (2 s) after which the node drops its Redis
/// Cluster client (and the acknowledgments' one) and connects afresh: a
/// client whose view of the Cluster went stale through failovers (a
/// primary lost for good, its replacement elsewhere) can keep timing out
/// without finding the new primaries on its own.
pub(crate) const RECONNECT_AFTER_FAILED_POLLS: u32 = 8;
/// How often the poller finishes transfers and sweeps left half done.
pub(crate) const RECONCILE_EVERY_POLLS: u32 = 8;
/// A transfer pending longer than this is taken to be abandoned by a
/// crashed node and finished by the reconciler (finishing is idempotent,
/// so a live one finished twice changes nothing).
pub(crate) const TRANSFER_ABANDONED_MS: i64 = 2_000;
/// Tries of one buy, hold or payment while its bucket is being refilled or
/// its shard's terms installed; past it the answer is `503 unavailable`.
pub(crate) const STEP_ATTEMPTS_MAX: usize = 4;
/// The version of the key layout and the records' formats in Redis (the
/// table above), kept in the deployment's layout: nodes of builds with
/// another version are refused at start rather than read records they
/// cannot parse.
pub const KEY_LAYOUT_VERSION: u32 = 3;
/// Largest wallet balance in Redis mode, in fen: Lua computes in doubles,
/// exact up to 2^53.
pub const WALLET_FEN_MAX: i64 = (1 << 53) - 1;
/// A deal's numbers kept per shard in `ns:{s:K}:stock`, summed by the
/// poller: bucket, held, sold, buyers, registrations, shares.
pub(crate) const SUM_FIELDS: [&str; 6] = ["b", "h", "s", "n", "g", "x"];
pub(crate) const SUM_PARTS: usize = SUM_FIELDS.len();
/// Holds expired per shard per call at most.
pub(crate) const EXPIRY_BATCH_MAX: usize = 256;
/// Orders read per Redis call when listing.
pub(crate) const ORDERS_PAGE_READ_MAX: usize = 1_000;

/// The Redis store of one node. Cheap to share: the state is behind an
/// `Arc`, used by requests and by the poller.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Replaced whole when a Cluster client stays broken
    /// ([`RECONNECT_AFTER_FAILED_POLLS`]); each call clones it.
    pub(crate) connection: RwLock<Connection>,
    /// What the connections were opened with, to open them afresh.
    pub(crate) settings: crate::settings::RedisSettings,
    /// The server whose channel this node listens on: the Redis, or the
    /// first seed of a Cluster (a Cluster passes every publish to every
    /// node).
    pub(crate) subscribe_url: String,
    pub(crate) connect_timeout: Duration,
    /// The Functions library, under its versioned name ([`steps`]).
    pub(crate) library: String,
    pub(crate) keys: Keys,
    pub(crate) shards: usize,
    /// [`RedisSettings::books_backlog_per_stream_max`], as the script's argument.
    pub(crate) books_backlog: String,
    /// The node's clock: the system's, or a test's
    /// ([`RedisSettings::clock`]).
    pub(crate) clock: Arc<dyn Clock>,
    /// `clock` is a test's: every step gets its time as a first argument `@ms`.
    pub(crate) clock_to_steps: bool,
    pub(crate) deals: RwLock<HashMap<DealId, Arc<DealEntry>>>,
    /// Buys and holds waiting for their shard's next `reserve` call (`batch`).
    pub(crate) lanes: crate::batch::Lanes,
    pub(crate) merchants: RwLock<HashMap<MerchantId, (String, Rating)>>,
    /// Newest deals, newest first, as of the last poll.
    pub(crate) newest: RwLock<Vec<DealId>>,
    /// This node's name in the sums' lease and its next-sums key: random,
    /// made at connect.
    pub(crate) node_token: String,
    /// The stamp (`at`) of the shared sums this node last took or wrote
    /// (`sums`); empty before the first.
    pub(crate) sums_seen: parking_lot::Mutex<String>,
    /// Sums this node read from the shards for all, and shared sums it
    /// took from another node, since it started ([`RedisStore::sums_read`]).
    pub(crate) sums_read: AtomicU64,
    pub(crate) sums_taken: AtomicU64,
    pub(crate) reachable: AtomicBool,
    /// The deployment's epoch as this node last read it (0 before the
    /// first read).
    pub(crate) epoch: AtomicU64,
    /// Redis' persistence as last read (at start, then by the poller).
    pub(crate) durability: RwLock<Durability>,
    pub(crate) allow_volatile: bool,
    /// Redis persists nothing and that is not allowed: changes are refused
    /// (`not_ready`). Kept apart from `durability` so the check on every
    /// request is one relaxed load.
    pub(crate) volatile_refused: AtomicBool,
    /// A primary has fewer connected replicas than `--redis-replica-acks`
    /// (read with the durability, every second): changes on its slots are
    /// refused at once instead of waiting out the acknowledgment timeout
    /// (`replication`), and when no primary can acknowledge, the node is
    /// not ready. One relaxed load on every change while none is short.
    pub(crate) replicas_short: AtomicBool,
    /// `--redis-replica-acks`: the group commit every change waits on.
    pub(crate) replica_acks: Option<Arc<crate::replication::ReplicaAcks>>,
    /// The deployment's token not-before times as this node last read
    /// them (`tokens`).
    pub(crate) revocations: crate::tokens::Revocations,
}

impl RedisStore {
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Each primary's replicas online as last read (every second), with
    /// `--redis-replica-acks`; `None` without it.
    pub fn replicas(&self) -> Option<Replicas> {
        self.inner.replica_acks.as_ref().map(|acks| acks.replicas())
    }

    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.inner.reachable.load(Ordering::Relaxed) {
            return Some("Redis does not answer");
        }
        if self.inner.replicas_short.load(Ordering::Relaxed)
            && self
                .inner
                .replica_acks
                .as_ref()
                .is_some_and(|acks| acks.none_can_acknowledge())
        {
            return Some(
                "every Redis primary has fewer connected replicas than --redis-replica-acks asks, \
                 so no change could be acknowledged: changes answer 503 until their replicas return",
            );
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
}
