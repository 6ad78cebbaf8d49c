//! # flashsale-store
//!
//! The store interface: every state the gateway's handlers read or change
//! goes through [`Store`], which is either the embedded engine with its
//! journal ([`MemoryStore`], one node) or Redis ([`RedisStore`], many
//! stateless nodes; `docs/multi-node.md`). Handlers do not know which one
//! they have.
//!
//! Both sides answer with the engine's records and refusals
//! ([`flashsale_engine::EngineError`]) inside [`StoreError`], so one
//! mapping to HTTP (the gateway's `Error::http`) serves both. A change is acknowledged
//! only when it is as durable as the store promises: the journal's fsync
//! (or its async flush) in memory, Redis' reply in Redis mode (whose
//! persistence decides what that reply is worth; see README).
//!
//! Dispatch is a `match` on the enum (no boxing, no `dyn` future): the buy
//! path of the memory store stays a direct call.
//!
//! ## Layout
//! - this file: [`Store`] and its dispatch;
//! - `memory`: [`MemoryStore`], the engine and its journal, one node;
//! - `feed`: [`FeedSource`], the synchronous view of the newest deals the
//!   feed samples, for both backends;
//! - `error`: [`StoreError`], the crate's one error type.

mod error;
mod feed;
mod memory;

use flashsale_engine::{
    Account, Answer, DealChange, DealId, DealView, DrawRecord, DrawStanding, HoldId, Merchant,
    MerchantId, Money, NewDeal, Order, OrderCursor, OrderId, OrderPage, Rating, Review, Shopper,
    ShopperId, Timestamp, Wallet,
};

pub use self::error::StoreError;
pub use self::feed::{FEED_DEALS_MAX, FeedSource};
pub use self::memory::MemoryStore;
pub use flashsale_redis::{Durability, NO_EPOCH, RedisStore, Replicas, ReserveCalls};

use self::error::StoreError as Error;

/// Where the sale's state lives.
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Calls the same method on whichever store this is.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Memory($store) => $call,
            Store::Redis($store) => $call,
        }
    };
}

/// Calls the same fallible method on whichever store this is; a Redis
/// error becomes the crate's [`Error`].
macro_rules! dispatch_result {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Memory($store) => $call,
            Store::Redis($store) => Ok($call?),
        }
    };
}

impl Store {
    /// The store's clock: the engine's in memory, this node's in Redis mode.
    pub fn now(&self) -> Timestamp {
        dispatch!(self, store => store.now())
    }

    /// Why changes cannot be taken now, if they cannot (journal not ready,
    /// Redis unreachable); `None` when ready.
    pub fn not_ready(&self) -> Option<&'static str> {
        dispatch!(self, store => store.not_ready())
    }

    /// The deployment's epoch, which tokens carry (the gateway's `auth`): in
    /// Redis mode the random number kept in Redis, new whenever Redis
    /// starts empty; on one node [`NO_EPOCH`].
    pub fn epoch(&self) -> u64 {
        match self {
            Store::Memory(_) => NO_EPOCH,
            Store::Redis(redis) => redis.epoch(),
        }
    }

    /// Redis' persistence as last read, in Redis mode (what a `201` is
    /// worth there); `None` on one node, whose promise is the journal's
    /// `--durability`.
    pub fn redis_durability(&self) -> Option<Durability> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(redis) => Some(redis.durability()),
        }
    }

    /// The `reserve` calls this node sent to Redis and the buys and holds
    /// they held, in Redis mode; `None` on one node.
    pub fn redis_reserve_calls(&self) -> Option<ReserveCalls> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(redis) => Some(redis.reserve_calls()),
        }
    }

    /// Times this node read the deals' shared numbers from the shards for
    /// every node and times it took the ones another node read
    /// (`RedisStore::sums_read`), in Redis mode; `None` on one node.
    pub fn redis_sums_read(&self) -> Option<(u64, u64)> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(redis) => Some(redis.sums_read()),
        }
    }

    /// Each Redis primary's replicas online as last read, in Redis mode
    /// with `--redis-replica-acks`; `None` otherwise.
    pub fn redis_replicas(&self) -> Option<Replicas> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(redis) => redis.replicas(),
        }
    }

    /// The feed's view of the deals ([`FeedSource`]).
    pub fn feed_source(&self) -> &dyn FeedSource {
        match self {
            Store::Memory(memory) => memory.feed_source(),
            Store::Redis(redis) => redis,
        }
    }

    pub async fn create_merchant(&self, name: &str) -> Result<Merchant, Error> {
        dispatch_result!(self, store => store.create_merchant(name).await)
    }

    /// Revokes every token of `account` issued up to now (its not-before
    /// time, `flashsale_engine::rules::tokens`) and returns that time (Unix
    /// ms). Answers once every node refuses those tokens: on one node once
    /// the revocation is durable; in Redis mode once the propagation bound
    /// has passed (`flashsale_redis::REVOCATION_PROPAGATION`). Errors:
    /// `NotFound` for an unknown account, `CapacityReached` past
    /// [`flashsale_engine::TOKEN_REVOCATIONS_MAX`], the backend's failures.
    pub async fn revoke_tokens(&self, account: Account) -> Result<Timestamp, Error> {
        dispatch_result!(self, store => store.revoke_tokens(account).await)
    }

    /// The account's token not-before time as this node knows it (`None`:
    /// never revoked), without any I/O: the engine's map on one node, the
    /// node's copy in Redis mode, which is an error (`Redis`, `503`) when
    /// older than the propagation bound, so a node that cannot hear of
    /// revocations refuses rather than take a revoked token.
    pub fn tokens_not_before(&self, account: Account) -> Result<Option<Timestamp>, Error> {
        match self {
            Store::Memory(memory) => Ok(memory.tokens_not_before(account)),
            Store::Redis(redis) => Ok(redis.tokens_not_before(account)?),
        }
    }

    pub async fn merchant(&self, id: MerchantId) -> Result<Option<Merchant>, Error> {
        dispatch_result!(self, store => store.merchant(id).await)
    }

    pub async fn rating(&self, id: MerchantId) -> Result<Option<Rating>, Error> {
        dispatch_result!(self, store => store.rating(id).await)
    }

    /// A new shopper; with `credit` > 0 its wallet is credited that much
    /// under the reference `reference` in the same acknowledgement.
    pub async fn create_shopper(
        &self,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<Shopper, Error> {
        dispatch_result!(self, store => store.create_shopper(name, credit, reference).await)
    }

    /// The shopper of the platform's user id `external_id`, made with
    /// `name` if none exists yet, its wallet then credited `credit` (zero:
    /// none) under `reference` in the same acknowledgement; `true` when
    /// this call made it. Of any number of racing calls, on one node or
    /// many, one makes the shopper and its credit lands once (engine:
    /// `link_shopper`; Redis: `links`). Refusals: `Invalid` external id
    /// (`check_external_id`), name or credit; `CapacityReached`.
    pub async fn link_shopper(
        &self,
        external_id: &str,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<(Shopper, bool), Error> {
        dispatch_result!(self, store => store.link_shopper(external_id, name, credit, reference).await)
    }

    /// The merchant of the platform's user id `external_id`, made with
    /// `name` if none exists yet; `true` when this call made it (engine:
    /// `link_merchant`). Refusals: `Invalid` external id or name;
    /// `CapacityReached`.
    pub async fn link_merchant(
        &self,
        external_id: &str,
        name: &str,
    ) -> Result<(Merchant, bool), Error> {
        dispatch_result!(self, store => store.link_merchant(external_id, name).await)
    }

    /// The shopper linked to `external_id`, if any.
    pub async fn shopper_of_external(&self, external_id: &str) -> Result<Option<ShopperId>, Error> {
        dispatch_result!(self, store => store.shopper_of_external(external_id).await)
    }

    /// A shopper's account (with its external id, if linked); `None`: no
    /// such shopper.
    pub async fn shopper(&self, id: ShopperId) -> Result<Option<Shopper>, Error> {
        dispatch_result!(self, store => store.shopper(id).await)
    }

    /// `count` shoppers (1 to 10,000), each credited `credit`.
    pub async fn create_shoppers(
        &self,
        count: u32,
        credit: Money,
    ) -> Result<Vec<ShopperId>, Error> {
        dispatch_result!(self, store => store.create_shoppers(count, credit).await)
    }

    pub async fn credit_wallet(
        &self,
        shopper: ShopperId,
        amount: Money,
        reference: &str,
    ) -> Result<Wallet, Error> {
        dispatch_result!(self, store => store.credit_wallet(shopper, amount, reference).await)
    }

    pub async fn wallet(&self, shopper: ShopperId) -> Result<Wallet, Error> {
        dispatch_result!(self, store => store.wallet(shopper).await)
    }

    pub async fn create_deal(&self, merchant: MerchantId, new: NewDeal) -> Result<DealView, Error> {
        dispatch_result!(self, store => store.create_deal(merchant, new).await)
    }

    pub async fn deal(&self, id: DealId) -> Result<DealView, Error> {
        dispatch_result!(self, store => store.deal(id).await)
    }

    pub async fn update_deal(
        &self,
        merchant: MerchantId,
        id: DealId,
        change: DealChange,
    ) -> Result<DealView, Error> {
        dispatch_result!(self, store => store.update_deal(merchant, id, change).await)
    }

    /// Deals, newest first, from `before` (exclusive); at most `limit`.
    pub async fn deals_newest_first(
        &self,
        before: Option<DealId>,
        limit: usize,
    ) -> Result<Vec<DealView>, Error> {
        dispatch_result!(self, store => store.deals_newest_first(before, limit).await)
    }

    /// A raffle's public record with one page of its offered ranks
    /// (engine: `draw_record`); `NotFound(Draw)` on a first-come deal.
    pub async fn draw_record(
        &self,
        deal: DealId,
        from: u64,
        limit: usize,
    ) -> Result<DrawRecord, Error> {
        dispatch_result!(self, store => store.draw_record(deal, from, limit).await)
    }

    /// One page of a drawn raffle's registrants in text order, and where
    /// the next starts (engine: `draw_registrants`).
    pub async fn draw_registrants(
        &self,
        deal: DealId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<ShopperId>, Option<u64>), Error> {
        dispatch_result!(self, store => store.draw_registrants(deal, from, limit).await)
    }

    /// A shopper's own result in a raffle (engine: `draw_standing`).
    pub async fn draw_standing(
        &self,
        shopper: ShopperId,
        deal: DealId,
    ) -> Result<DrawStanding, Error> {
        dispatch_result!(self, store => store.draw_standing(shopper, deal).await)
    }

    /// Runs due draws and passes units left to the next ranks: one bounded
    /// step; how many draws and offers it made (more than zero: call
    /// again).
    pub async fn run_draws(&self) -> Result<usize, Error> {
        dispatch_result!(self, store => store.run_draws().await)
    }

    // The calls acting for a shopper's token take `epoch`, the epoch the
    // token was verified under ([`Store::epoch`] then): in Redis mode the
    // step refuses, [`flashsale_redis::Error::EarlierEpoch`], when the
    // shopper's account was made in another (Redis lost its data and the
    // id names a newer account); one node has no epoch and ignores it.

    /// `true` when newly registered, `false` when already; `epoch`: the
    /// caller's token's.
    pub async fn register(
        &self,
        shopper: ShopperId,
        deal: DealId,
        epoch: u64,
    ) -> Result<bool, Error> {
        match self {
            Store::Memory(store) => store.register(shopper, deal).await,
            Store::Redis(store) => Ok(store.register(shopper, deal, epoch).await?),
        }
    }

    /// One-tap buy; the same `key` and request again gets the same order,
    /// [`Answer::Replayed`] (engine: `buy_answer`); `epoch`: the caller's
    /// token's.
    pub async fn buy(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
        epoch: u64,
    ) -> Result<(Order, Answer), Error> {
        match self {
            Store::Memory(store) => store.buy(shopper, deal, quantity, key).await,
            Store::Redis(store) => Ok(store.buy(shopper, deal, quantity, key, epoch).await?),
        }
    }

    /// A hold of stock and funds; `epoch`: the caller's token's.
    pub async fn hold(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
        epoch: u64,
    ) -> Result<flashsale_engine::Hold, Error> {
        match self {
            Store::Memory(store) => store.hold(shopper, deal, quantity, key).await,
            Store::Redis(store) => Ok(store.hold(shopper, deal, quantity, key, epoch).await?),
        }
    }

    /// Pays the caller's hold; `epoch`: the caller's token's.
    pub async fn pay_hold(
        &self,
        shopper: ShopperId,
        hold: HoldId,
        epoch: u64,
    ) -> Result<Order, Error> {
        match self {
            Store::Memory(store) => store.pay_hold(shopper, hold).await,
            Store::Redis(store) => Ok(store.pay_hold(shopper, hold, epoch).await?),
        }
    }

    /// Releases the caller's hold; `epoch`: the caller's token's.
    pub async fn release_hold(
        &self,
        shopper: ShopperId,
        hold: HoldId,
        epoch: u64,
    ) -> Result<flashsale_engine::Hold, Error> {
        match self {
            Store::Memory(store) => store.release_hold(shopper, hold).await,
            Store::Redis(store) => Ok(store.release_hold(shopper, hold, epoch).await?),
        }
    }

    /// Expires holds whose time is up; how many, a full batch meaning
    /// "call again".
    pub async fn expire_holds(&self) -> Result<usize, Error> {
        dispatch_result!(self, store => store.expire_holds().await)
    }

    /// The order's shopper reviews it once; `epoch`: the caller's token's.
    pub async fn review(
        &self,
        shopper: ShopperId,
        order: OrderId,
        scores: [u8; 3],
        text: &str,
        epoch: u64,
    ) -> Result<Review, Error> {
        match self {
            Store::Memory(store) => store.review(shopper, order, scores, text).await,
            Store::Redis(store) => Ok(store.review(shopper, order, scores, text, epoch).await?),
        }
    }

    /// `true` the first time an order is shared; `epoch`: the caller's
    /// token's.
    pub async fn share(
        &self,
        shopper: ShopperId,
        order: OrderId,
        epoch: u64,
    ) -> Result<bool, Error> {
        match self {
            Store::Memory(store) => store.share(shopper, order).await,
            Store::Redis(store) => Ok(store.share(shopper, order, epoch).await?),
        }
    }

    pub async fn order(&self, id: OrderId) -> Result<Order, Error> {
        dispatch_result!(self, store => store.order(id).await)
    }

    pub async fn orders_of_deal(
        &self,
        deal: DealId,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        dispatch_result!(self, store => store.orders_of_deal(deal, from, limit).await)
    }

    pub async fn orders_of_shopper(
        &self,
        shopper: ShopperId,
        deal: Option<DealId>,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        dispatch_result!(self, store => store.orders_of_shopper(shopper, deal, from, limit).await)
    }
}
