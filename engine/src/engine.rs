//! The engine: [`Engine`], its state and its sizes, and the operations on
//! merchants, shoppers, wallets and deals. Each operation is atomic: it
//! reads what its rule ([`crate::rules`]) needs under the one lock it holds,
//! calls the decision, and applies the effects.
//!
//! Layout of the state:
//! - deals and merchants live in lock-free write-once `SlotTable`s; a
//!   deal's stock and a merchant's rating are atomics;
//! - everything a shopper owns (wallet, units per deal, registrations,
//!   holds, orders, idempotency records) lives in one `Shard`, chosen by a
//!   multiplicative hash of the shopper id, behind a `parking_lot::Mutex`;
//! - each revoked account's token not-before time lives in one bounded
//!   map behind a `parking_lot::RwLock` ([`crate::tokens`]);
//!
//! **A request takes at most one lock at a time** (one shard, or the
//! merchant list, or one deal's change lock, or the revocation map), so
//! no lock order exists and no deadlock is possible. The event sink's own
//! lock is a leaf below them. Nothing here blocks, sleeps or does I/O
//! while holding a lock.
//!
//! The other operations live beside this file: `reserve` (buy and hold),
//! `holds` (pay, release, expiry), `orders` (order reads, reviews,
//! shares), `links` (accounts of a platform's user ids), `validate` (a
//! request's own input), `tokens` (revoking an account's tokens) and
//! `effects` (the state changes shared with replay).

mod effects;
mod holds;
mod links;
mod orders;
mod reserve;
mod tokens;
mod validate;

pub(crate) use effects::{commit_hold, commit_order, place_hold, release, settle, settle_late};
pub use validate::{
    BULK_SHOPPERS_MAX, HOLD_SECONDS_DEFAULT, HOLD_SECONDS_MAX, NAME_CHARS_MAX,
    PER_USER_LIMIT_DEFAULT, PER_USER_LIMIT_MAX, REVIEW_TEXT_CHARS_MAX, STOCK_MAX, TITLE_CHARS_MAX,
    check_credit, check_name, check_reservation, check_review, validate_deal,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};

use crate::clock::{Clock, Timestamp};
use crate::deal::{DealState, MerchantState, SlotTable};
use crate::error::{EngineError, Entity};
use crate::event::{Event, EventSink, fingerprint};
use crate::ids::{self, DealId, MerchantId, ShopperId};
use crate::money::Money;
use crate::records::{Allocation, DealView, Merchant, Order, Rating, Shopper, StockCounts, Wallet};
use crate::rules::{
    self, CreditAccount, CreditEffects, CreditView, DealChangeView, RegisterEffects,
    RegisterShopper, RegisterView,
};
use crate::shard::{Shard, ShardBounds};

use validate::invalid;

/// The engine's sizes and bounds. Every container has one.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// A power of two, at most 1024; default 64 (≥ 4 × cores on up to 16).
    pub shards: usize,
    pub deals_max: usize,
    pub merchants_max: usize,
    pub shoppers_max: u64,
    pub orders_max: usize,
    pub holds_max: usize,
    pub idempotency_records_max: usize,
    /// Distinct credit references per shopper.
    pub credits_per_shopper_max: usize,
    /// Deals one shopper may hold, buy or register on.
    pub deals_per_shopper_max: usize,
    /// Holds one sweep pass expires per shard, so a sweep never holds a
    /// shard lock for long.
    pub expiry_batch_max: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            shards: 64,
            deals_max: 1 << 16,
            merchants_max: 1 << 16,
            shoppers_max: 1 << 26,
            orders_max: 1 << 26,
            holds_max: 1 << 25,
            idempotency_records_max: 1 << 26,
            credits_per_shopper_max: 10_000,
            deals_per_shopper_max: 1_000,
            expiry_batch_max: 1_024,
        }
    }
}

/// A merchant's change to its deal; every field optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DealChange {
    pub add_stock: Option<u64>,
    pub ends_at: Option<Timestamp>,
    pub paused: Option<bool>,
}

/// What a merchant asks for; `None` fields take the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeal {
    pub title: String,
    pub price: Money,
    pub stock: u64,
    pub per_user_limit: Option<u32>,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub requires_registration: bool,
    pub hold_seconds: Option<u32>,
    /// First come, or a raffle with the seed the caller drew from its RNG.
    pub allocation: Allocation,
}

/// A page position in an order listing, opaque to clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderCursor {
    pub shard: u32,
    pub position: u32,
}

/// One page of orders and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    pub next: Option<OrderCursor>,
}

pub struct Engine {
    config: EngineConfig,
    bounds: ShardBounds,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn EventSink>,
    deals: SlotTable<DealState>,
    merchants: SlotTable<MerchantState>,
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    next_shopper: AtomicU64,
    links: links::Links,
    /// Each account's token not-before time (`engine/tokens.rs`).
    revocations: crate::tokens::TokenRevocations,
}

impl Engine {
    pub fn new(config: EngineConfig, clock: Arc<dyn Clock>, sink: Arc<dyn EventSink>) -> Engine {
        assert!(
            config.shards.is_power_of_two() && config.shards <= 1 << ids::SHARD_BITS_MAX,
            "shards must be a power of two up to 1024"
        );
        let per_shard = |total: usize| total.div_ceil(config.shards);
        Engine {
            bounds: ShardBounds {
                orders_max: per_shard(config.orders_max),
                holds_max: per_shard(config.holds_max),
                idempotency_records_max: per_shard(config.idempotency_records_max),
            },
            clock,
            sink,
            deals: SlotTable::new(config.deals_max),
            merchants: SlotTable::new(config.merchants_max),
            shards: (0..config.shards)
                .map(|index| CachePadded::new(Mutex::new(Shard::new(index))))
                .collect(),
            next_shopper: AtomicU64::new(1),
            links: links::Links::default(),
            revocations: crate::tokens::TokenRevocations::new(),
            config,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    // ----- locating state -------------------------------------------------

    fn shard_of(&self, shopper: ShopperId) -> usize {
        ids::shard_of(shopper, self.shards.len())
    }

    pub(crate) fn lock_shopper(&self, shopper: ShopperId) -> MutexGuard<'_, Shard> {
        self.shards[self.shard_of(shopper)].lock()
    }

    /// The shard an order or hold id names, if it exists.
    pub(crate) fn lock_owner_of(&self, id: u64) -> Option<MutexGuard<'_, Shard>> {
        let (shard, _) = ids::decompose(id);
        self.shards.get(shard).map(|shard| shard.lock())
    }

    pub(crate) fn sink(&self) -> &dyn EventSink {
        &*self.sink
    }

    pub(crate) fn bounds(&self) -> &ShardBounds {
        &self.bounds
    }

    pub(crate) fn deal_state(&self, deal: DealId) -> Result<&DealState, EngineError> {
        self.deals
            .get(deal.0)
            .ok_or(EngineError::NotFound(Entity::Deal))
    }

    // ----- merchants and shoppers -----------------------------------------

    /// A new merchant named `name` (1 to [`NAME_CHARS_MAX`] characters).
    /// Refusals: `Invalid` name, `CapacityReached { bound: "merchants_max" }`.
    pub fn create_merchant(&self, name: &str) -> Result<Merchant, EngineError> {
        check_name(name, "name", NAME_CHARS_MAX)?;
        self.make_merchant(name, None)
    }

    /// Makes a merchant of a checked name, linked to `external_id` if
    /// given, and emits its event.
    fn make_merchant(
        &self,
        name: &str,
        external_id: Option<&str>,
    ) -> Result<Merchant, EngineError> {
        let id = self
            .merchants
            .reserve()
            .ok_or(EngineError::CapacityReached {
                bound: "merchants_max",
            })?;
        let merchant = Merchant {
            id: MerchantId(id),
            name: name.to_owned(),
            created_at: self.now(),
            external_id: external_id.map(str::to_owned),
        };
        self.sink.emit(match &merchant.external_id {
            Some(external_id) => Event::MerchantLinked {
                merchant: merchant.id,
                external_id: external_id.clone(),
                name: merchant.name.clone(),
                at: merchant.created_at,
            },
            None => Event::MerchantCreated {
                merchant: merchant.id,
                name: merchant.name.clone(),
                at: merchant.created_at,
            },
        });
        let published = self
            .merchants
            .publish(id, MerchantState::new(merchant.clone(), Rating::default()));
        assert!(published, "a reserved merchant slot is free");
        Ok(merchant)
    }

    pub fn merchant(&self, id: MerchantId) -> Option<Merchant> {
        self.merchants.get(id.0).map(|state| state.merchant.clone())
    }

    /// A merchant's rating from its shoppers' reviews.
    pub fn rating(&self, id: MerchantId) -> Option<Rating> {
        self.merchants.get(id.0).map(MerchantState::rating)
    }

    pub fn create_shopper(&self, name: &str) -> Result<Shopper, EngineError> {
        check_name(name, "name", NAME_CHARS_MAX)?;
        let id = self.reserve_shoppers(1)?;
        let shopper = Shopper {
            id,
            name: name.to_owned(),
            created_at: self.now(),
            external_id: None,
        };
        self.insert_shopper(shopper.clone());
        Ok(shopper)
    }

    /// Creates `count` shoppers, each credited `credit` (for load tests).
    pub fn create_shoppers(
        &self,
        count: u32,
        credit: Money,
    ) -> Result<Vec<ShopperId>, EngineError> {
        if count == 0 || count > BULK_SHOPPERS_MAX {
            return Err(invalid("count", "must be from 1 to 10000"));
        }
        let first = self.reserve_shoppers(count)?;
        let at = self.now();
        let mut created = Vec::with_capacity(count as usize);
        for offset in 0..u64::from(count) {
            let id = ShopperId(first.0 + offset);
            self.insert_shopper(Shopper {
                id,
                name: id.to_string(),
                created_at: at,
                external_id: None,
            });
            if credit > Money::ZERO {
                self.credit_wallet(id, credit, &format!("bulk:{id}"))?;
            }
            created.push(id);
        }
        Ok(created)
    }

    fn reserve_shoppers(&self, count: u32) -> Result<ShopperId, EngineError> {
        let first = self
            .next_shopper
            .fetch_add(u64::from(count), Ordering::AcqRel);
        if first + u64::from(count) > self.config.shoppers_max + 1 {
            self.next_shopper
                .fetch_sub(u64::from(count), Ordering::AcqRel);
            return Err(EngineError::CapacityReached {
                bound: "shoppers_max",
            });
        }
        Ok(ShopperId(first))
    }

    fn insert_shopper(&self, shopper: Shopper) {
        let mut shard = self.lock_shopper(shopper.id);
        self.sink.emit(match &shopper.external_id {
            Some(external_id) => Event::ShopperLinked {
                shopper: shopper.id,
                external_id: external_id.clone(),
                name: shopper.name.clone(),
                at: shopper.created_at,
            },
            None => Event::ShopperCreated {
                shopper: shopper.id,
                name: shopper.name.clone(),
                at: shopper.created_at,
            },
        });
        let previous = shard
            .accounts
            .insert(shopper.id, crate::shard::Account::new(shopper));
        assert!(previous.is_none(), "shopper ids are never reused");
    }

    pub fn shopper(&self, id: ShopperId) -> Option<Shopper> {
        self.lock_shopper(id)
            .accounts
            .get(&id)
            .map(|account| account.shopper.clone())
    }

    // ----- wallets ----------------------------------------------------------

    /// Credits a wallet once per `reference`: the same reference and amount
    /// again changes nothing; the same reference with another amount is
    /// `IdempotencyKeyReused`. The rule: [`rules::decide_credit`].
    pub fn credit_wallet(
        &self,
        shopper: ShopperId,
        amount: Money,
        reference: &str,
    ) -> Result<Wallet, EngineError> {
        check_credit(amount, reference)?;
        let reference = fingerprint(reference);
        let at = self.now();
        let mut shard = self.lock_shopper(shopper);
        let account = shard.accounts.get_mut(&shopper);
        let view = CreditView {
            amount,
            references_max: self.config.credits_per_shopper_max,
            account: account.as_deref().map(|account| CreditAccount {
                previous: account.credits.get(&reference).copied(),
                references: account.credits.len(),
                credited: account.wallet.credited,
                available: account.wallet.available,
            }),
        };
        let effects = rules::decide_credit(&view)?;
        let account = account.ok_or(EngineError::NotFound(Entity::Shopper))?;
        let CreditEffects::Credit {
            amount,
            credited,
            available,
        } = effects
        else {
            return Ok(account.wallet);
        };
        self.sink.emit(Event::WalletCredited {
            shopper,
            amount,
            reference,
            at,
        });
        account.wallet.credited = credited;
        account.wallet.available = available;
        account.credits.insert(reference, amount);
        shard.assert_account(shopper);
        Ok(shard.accounts[&shopper].wallet)
    }

    pub fn wallet(&self, shopper: ShopperId) -> Result<Wallet, EngineError> {
        let shard = self.lock_shopper(shopper);
        shard
            .accounts
            .get(&shopper)
            .map(|account| account.wallet)
            .ok_or(EngineError::NotFound(Entity::Shopper))
    }

    // ----- deals -------------------------------------------------------------

    pub fn create_deal(&self, merchant: MerchantId, new: NewDeal) -> Result<DealView, EngineError> {
        let now = self.now();
        let spec = validate_deal(new, now)?;
        if self.merchant(merchant).is_none() {
            return Err(EngineError::NotFound(Entity::Merchant));
        }
        let id = DealId(
            self.deals
                .reserve()
                .ok_or(EngineError::CapacityReached { bound: "deals_max" })?,
        );
        self.sink.emit(Event::DealCreated {
            deal: id,
            merchant,
            spec: spec.clone(),
            at: now,
        });
        let published = self
            .deals
            .publish(id.0, DealState::new(id, merchant, spec, now));
        assert!(published, "a reserved deal slot is free");
        self.deal(id)
    }

    pub fn deal(&self, id: DealId) -> Result<DealView, EngineError> {
        Ok(self.deal_state(id)?.view(self.now()))
    }

    /// A deal's stock counters alone: the cheapest read, for feeds.
    pub fn stock(&self, id: DealId) -> Result<StockCounts, EngineError> {
        Ok(self.deal_state(id)?.stock.counts())
    }

    /// The merchant that owns a deal: the cheapest access check.
    pub fn deal_merchant(&self, id: DealId) -> Result<MerchantId, EngineError> {
        Ok(self.deal_state(id)?.merchant)
    }

    /// Every deal's id and stock counters, newest first, copying no text:
    /// for metrics and the feed's change detection.
    pub fn deal_stocks(&self) -> impl Iterator<Item = (DealId, StockCounts)> + '_ {
        self.deals
            .newest_first()
            .map(|deal| (deal.id, deal.stock.counts()))
    }

    /// Deals, newest first, from `before` (exclusive) on; at most `limit`.
    pub fn deals_newest_first(&self, before: Option<DealId>, limit: usize) -> Vec<DealView> {
        let now = self.now();
        self.deals
            .newest_first()
            .filter(|deal| before.is_none_or(|before| deal.id < before))
            .take(limit)
            .map(|deal| deal.view(now))
            .collect()
    }

    /// A merchant's change to its own deal: restock, a new end, pause or
    /// resume, under the deal's change lock. The rule:
    /// [`rules::decide_deal_change`].
    pub fn update_deal(
        &self,
        merchant: MerchantId,
        id: DealId,
        change: DealChange,
    ) -> Result<DealView, EngineError> {
        let deal = self.deal_state(id)?;
        let now = self.now();
        let _changing = deal.changes.lock();
        let effects = rules::decide_deal_change(&DealChangeView {
            own: deal.merchant == merchant,
            change,
            total: deal.stock.counts().total,
            starts_at: deal.starts_at,
            ends_at: deal.ends_at(),
            paused: deal.paused(),
            now,
        })?;
        if let Some(quantity) = effects.restock {
            // Event first, then the stock: no buy can take a unit whose
            // restock is not yet in the journal.
            self.sink.emit(Event::StockAdded {
                deal: id,
                quantity,
                at: now,
            });
            deal.stock.add_total(quantity);
            deal.stock.put_back(quantity);
        }
        if let Some(terms) = effects.terms {
            self.sink.emit(Event::DealChanged {
                deal: id,
                ends_at: terms.ends_at,
                paused: terms.paused,
                at: now,
            });
            deal.set_ends_at(terms.ends_at);
            deal.set_paused(terms.paused);
        }
        Ok(deal.view(now))
    }

    /// Registers a shopper for a deal before it starts. `Ok(true)` when new,
    /// `Ok(false)` when already registered. The rule:
    /// [`rules::decide_register`]; a raffle's list may still refuse.
    pub fn register(&self, shopper: ShopperId, id: DealId) -> Result<bool, EngineError> {
        let deal = self.deal_state(id)?;
        let now = self.now();
        let mut shard = self.lock_shopper(shopper);
        let account = shard.accounts.get_mut(&shopper);
        let view = RegisterView {
            now,
            starts_at: deal.starts_at,
            shopper: account.as_deref().map(|account| {
                let (units, may_touch) =
                    account.units_and_room(id, self.config.deals_per_shopper_max);
                RegisterShopper {
                    registered: units.registered,
                    may_touch,
                }
            }),
        };
        if rules::decide_register(&view)? == RegisterEffects::Already {
            return Ok(false);
        }
        let account = account.ok_or(EngineError::NotFound(Entity::Shopper))?;
        let event = Event::Registered {
            deal: id,
            shopper,
            at: now,
        };
        match deal.raffle.as_deref() {
            // A raffle's list takes the event under its own leaf lock, so the
            // draw that closes the list comes after it in the journal.
            Some(raffle) => raffle.enrol(shopper, || self.sink.emit(event))?,
            None => self.sink.emit(event),
        }
        account.units_mut(id).registered = true;
        deal.add_registration();
        Ok(true)
    }

    // ----- access for replay ---------------------------------------------------------

    pub(crate) fn deal_table(&self) -> &SlotTable<DealState> {
        &self.deals
    }

    pub(crate) fn merchant_table(&self) -> &SlotTable<MerchantState> {
        &self.merchants
    }

    pub(crate) fn next_shopper(&self) -> u64 {
        self.next_shopper.load(Ordering::Acquire)
    }

    pub(crate) fn advance_next_shopper(&self, next: u64) {
        self.next_shopper.fetch_max(next, Ordering::AcqRel);
    }

    pub(crate) fn shard_copies(&self) -> Vec<Shard> {
        self.shards
            .iter()
            .map(|shard| shard.lock().clone())
            .collect()
    }

    pub(crate) fn load_shards(&self, shards: Vec<Shard>) -> Result<(), EngineError> {
        for (index, loaded) in shards.into_iter().enumerate() {
            if loaded.index != index {
                return Err(EngineError::Inconsistent {
                    reason: "a snapshot's shards are out of order",
                });
            }
            *self.shards[index].lock() = loaded;
        }
        Ok(())
    }

    // ----- invariants ------------------------------------------------------------------

    /// Checks every conservation rule (ARCHITECTURE.md "Architecture
    /// invariants") over the whole state, one lock at a time; exact only
    /// when no request is running.
    pub fn check_invariants(&self) -> Result<(), String> {
        for deal in self.deals.newest_first() {
            let counts = deal.stock.counts();
            let sum = counts
                .remaining
                .checked_add(counts.held)
                .and_then(|sum| sum.checked_add(counts.sold));
            if sum != Some(counts.total) {
                return Err(format!("deal {}: {counts:?} does not balance", deal.id));
            }
        }
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (id, account) in &shard.accounts {
                if !account.wallet.is_balanced() {
                    return Err(format!(
                        "wallet of {id} does not balance: {:?}",
                        account.wallet
                    ));
                }
                let settled: i64 = account
                    .orders
                    .iter()
                    .filter_map(|&order| shard.order(order))
                    .map(|order| order.amount.fen())
                    .sum();
                if settled != account.wallet.spent.fen() {
                    return Err(format!(
                        "wallet of {id}: spent {} but orders sum to {settled} fen",
                        account.wallet.spent
                    ));
                }
                for units in &account.deals {
                    let limit = self
                        .deals
                        .get(units.deal.0)
                        .map_or(0, |deal| deal.per_user_limit);
                    if units.owned() > limit {
                        return Err(format!(
                            "{id} owns {} of {} over the limit {limit}",
                            units.owned(),
                            units.deal
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether an answer was made by the call that returned it or is the
/// remembered answer of an earlier request with the same idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This call settled the order: stock taken, wallet debited.
    Settled,
    /// An earlier request settled it; this retry changed nothing.
    Replayed,
}
