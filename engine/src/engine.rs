//! The engine: every operation of the domain, each one atomic.
//!
//! Layout of the state:
//! - deals and merchants live in lock-free write-once [`SlotTable`]s; a
//!   deal's stock and a merchant's rating are atomics;
//! - everything a shopper owns (wallet, units per deal, registrations,
//!   holds, orders, idempotency records) lives in one [`Shard`], chosen by a
//!   multiplicative hash of the shopper id, behind a `parking_lot::Mutex`;
//!
//! **A request takes at most one lock at a time** (one shard, or the
//! merchant list, or one deal's change lock), so no lock order exists and no
//! deadlock is possible. The event sink's own lock is a leaf below them.
//! Nothing here blocks, sleeps or does I/O while holding a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};

use crate::clock::{Clock, Timestamp};
use crate::deal::{DealState, MerchantState, SlotTable};
use crate::error::{EngineError, Entity};
use crate::event::{Event, EventSink, Fingerprint, ReleaseReason, fingerprint};
use crate::ids::{self, DealId, HoldId, MerchantId, OrderId, ShopperId};
use crate::money::Money;
use crate::records::{
    Allocation, DealSpec, DealView, Hold, HoldStatus, Merchant, Order, Rating, Review, Shopper,
    StockCounts, Wallet,
};
use crate::shard::{IdempotencyRecord, Outcome, Request, Shard, ShardBounds};

/// Upper bounds on what a deal may say; requests past them are `Invalid`.
pub const STOCK_MAX: u64 = 1_000_000_000;
pub const PER_USER_LIMIT_MAX: u32 = 1_000;
pub const HOLD_SECONDS_MAX: u32 = 24 * 60 * 60;
pub const TITLE_CHARS_MAX: usize = 200;
pub const NAME_CHARS_MAX: usize = 100;
pub const REVIEW_TEXT_CHARS_MAX: usize = 500;
/// Defaults for what a merchant may leave out of a deal.
pub const PER_USER_LIMIT_DEFAULT: u32 = 1;
pub const HOLD_SECONDS_DEFAULT: u32 = 120;
/// Shoppers one bulk call may create.
pub const BULK_SHOPPERS_MAX: u32 = 10_000;

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
}

fn invalid(field: &'static str, reason: &'static str) -> EngineError {
    EngineError::Invalid { field, reason }
}

/// Checks a buy's or hold's own input before anything else: the
/// idempotency key is 1 to 255 bytes, the quantity from 1 to
/// [`PER_USER_LIMIT_MAX`].
pub fn check_reservation(quantity: u32, key: &str) -> Result<(), EngineError> {
    if key.is_empty() || key.len() > 255 {
        return Err(invalid("idempotency_key", "must be 1 to 255 bytes"));
    }
    if quantity == 0 {
        return Err(invalid("quantity", "must be at least 1"));
    }
    if quantity > PER_USER_LIMIT_MAX {
        return Err(invalid("quantity", "must be at most 1000"));
    }
    Ok(())
}

/// Checks a credit's own input: a positive amount, a reference of 1 to
/// 255 bytes of one-line text ([`check_text`]).
pub fn check_credit(amount: Money, reference: &str) -> Result<(), EngineError> {
    if amount == Money::ZERO {
        return Err(invalid("amount", "must be positive"));
    }
    if reference.is_empty() || reference.len() > 255 {
        return Err(invalid("reference", "must be 1 to 255 bytes"));
    }
    check_text(reference, "reference", false)
}

/// Checks that `text` holds only characters Postgres (and a reader) can
/// take: no control character (Unicode class Cc: U+0000–U+001F, U+007F–
/// U+009F), NUL above all, which Postgres' `text` refuses. Multi-line text
/// (a review) may also hold tab, line feed and carriage return. Lone
/// surrogates cannot reach here: a Rust `str` cannot hold them.
fn check_text(text: &str, field: &'static str, multi_line: bool) -> Result<(), EngineError> {
    let allowed = |c: char| multi_line && matches!(c, '\t' | '\n' | '\r');
    if text.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(invalid(
            field,
            if multi_line {
                "must not contain control characters other than tab and line breaks"
            } else {
                "must not contain control characters (U+0000 to U+001F, U+007F to U+009F)"
            },
        ));
    }
    Ok(())
}

/// Checks a review's own input: three scores (description, delivery,
/// service) from 1 to 5, a text of at most [`REVIEW_TEXT_CHARS_MAX`]
/// characters that may span lines ([`check_text`]).
pub fn check_review(scores: [u8; 3], text: &str) -> Result<(), EngineError> {
    const FIELDS: [&str; 3] = ["description", "delivery", "service"];
    for (field, score) in FIELDS.into_iter().zip(scores) {
        if !(1..=5).contains(&score) {
            return Err(invalid(field, "must be from 1 to 5"));
        }
    }
    check_text(text, "text", true)?;
    if text.chars().count() > REVIEW_TEXT_CHARS_MAX {
        return Err(invalid("text", "must be at most 500 characters"));
    }
    Ok(())
}

/// A name or title: not blank, at most `chars_max` characters, one line
/// of text ([`check_text`]).
pub fn check_name(name: &str, field: &'static str, chars_max: usize) -> Result<(), EngineError> {
    check_text(name, field, false)?;
    if name.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.chars().count() > chars_max {
        return Err(invalid(field, "is too long"));
    }
    Ok(())
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

    pub fn create_merchant(&self, name: &str) -> Result<Merchant, EngineError> {
        check_name(name, "name", NAME_CHARS_MAX)?;
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
        };
        self.sink.emit(Event::MerchantCreated {
            merchant: merchant.id,
            name: merchant.name.clone(),
            at: merchant.created_at,
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
        self.sink.emit(Event::ShopperCreated {
            shopper: shopper.id,
            name: shopper.name.clone(),
            at: shopper.created_at,
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
    /// `IdempotencyKeyReused`.
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
        let account = shard
            .accounts
            .get_mut(&shopper)
            .ok_or(EngineError::NotFound(Entity::Shopper))?;
        if let Some(&credited) = account.credits.get(&reference) {
            return if credited == amount {
                Ok(account.wallet)
            } else {
                Err(EngineError::IdempotencyKeyReused)
            };
        }
        if account.credits.len() >= self.config.credits_per_shopper_max {
            return Err(EngineError::CapacityReached {
                bound: "credits_per_shopper_max",
            });
        }
        let too_large = invalid("amount", "would overflow the wallet");
        let credited = account
            .wallet
            .credited
            .checked_add(amount)
            .ok_or(too_large.clone())?;
        let available = account
            .wallet
            .available
            .checked_add(amount)
            .ok_or(too_large)?;
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

    pub fn update_deal(
        &self,
        merchant: MerchantId,
        id: DealId,
        change: DealChange,
    ) -> Result<DealView, EngineError> {
        let deal = self.deal_state(id)?;
        if deal.merchant != merchant {
            return Err(EngineError::Forbidden(Entity::Deal));
        }
        let now = self.now();
        let _changing = deal.changes.lock();
        if let Some(quantity) = change.add_stock {
            if quantity == 0 {
                return Err(invalid("add_stock", "must be at least 1"));
            }
            let total = deal
                .stock
                .counts()
                .total
                .checked_add(quantity)
                .filter(|&total| total <= STOCK_MAX);
            if total.is_none() {
                return Err(invalid("add_stock", "would take stock past 1000000000"));
            }
        }
        if let Some(ends_at) = change.ends_at
            && (ends_at <= deal.starts_at || ends_at <= now)
        {
            return Err(invalid("ends_at", "must be after starts_at and after now"));
        }
        if let Some(quantity) = change.add_stock {
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
        if change.ends_at.is_some() || change.paused.is_some() {
            let ends_at = change.ends_at.unwrap_or(deal.ends_at());
            let paused = change.paused.unwrap_or(deal.paused());
            self.sink.emit(Event::DealChanged {
                deal: id,
                ends_at,
                paused,
                at: now,
            });
            deal.set_ends_at(ends_at);
            deal.set_paused(paused);
        }
        Ok(deal.view(now))
    }

    /// Registers a shopper for a deal before it starts. `Ok(true)` when new,
    /// `Ok(false)` when already registered.
    pub fn register(&self, shopper: ShopperId, id: DealId) -> Result<bool, EngineError> {
        let deal = self.deal_state(id)?;
        let now = self.now();
        let mut shard = self.lock_shopper(shopper);
        let account = shard
            .accounts
            .get_mut(&shopper)
            .ok_or(EngineError::NotFound(Entity::Shopper))?;
        if account.units(id).registered {
            return Ok(false);
        }
        if now >= deal.starts_at {
            return Err(EngineError::RegistrationClosed);
        }
        if !account.may_touch(id, self.config.deals_per_shopper_max) {
            return Err(EngineError::CapacityReached {
                bound: "deals_per_shopper_max",
            });
        }
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

    // ----- buying -------------------------------------------------------------

    /// One-tap buy: in one step, checks the deal, the registration, the
    /// per-user limit and the funds, takes the stock, debits the wallet and
    /// settles the order. A retry with the same `key` and request gets the
    /// same order.
    pub fn buy(
        &self,
        shopper: ShopperId,
        id: DealId,
        quantity: u32,
        key: &str,
    ) -> Result<Order, EngineError> {
        self.buy_answer(shopper, id, quantity, key)
            .map(|(order, _)| order)
    }

    /// [`Engine::buy`], also saying whether the order was settled by this
    /// call ([`Answer::Settled`]) or is the order an earlier request with
    /// the same `key` settled, given again ([`Answer::Replayed`], DESIGN.md
    /// "Idempotency"), so that metrics count orders, not requests. Costs
    /// nothing more than `buy`: the answer is known where the record is
    /// read. Errors: those of `buy`.
    pub fn buy_answer(
        &self,
        shopper: ShopperId,
        id: DealId,
        quantity: u32,
        key: &str,
    ) -> Result<(Order, Answer), EngineError> {
        let request = Request::Buy { deal: id, quantity };
        match self.reserve(shopper, id, quantity, key, request)? {
            (Reserved::Order(order), answer) => Ok((order, answer)),
            (Reserved::Hold(_), _) => unreachable!("a buy request yields an order"),
        }
    }

    /// Two-phase, first step: reserves stock and funds until `hold_seconds`
    /// from now. A retry with the same `key` and request gets the same hold.
    pub fn hold(
        &self,
        shopper: ShopperId,
        id: DealId,
        quantity: u32,
        key: &str,
    ) -> Result<Hold, EngineError> {
        let request = Request::Hold { deal: id, quantity };
        match self.reserve(shopper, id, quantity, key, request)? {
            (Reserved::Hold(hold), _) => Ok(hold),
            (Reserved::Order(_), _) => unreachable!("a hold request yields a hold"),
        }
    }

    /// The shared path of buy and hold.
    fn reserve(
        &self,
        shopper: ShopperId,
        id: DealId,
        quantity: u32,
        key: &str,
        request: Request,
    ) -> Result<(Reserved, Answer), EngineError> {
        check_reservation(quantity, key)?;
        let deal = self.deal_state(id)?;
        if deal.raffle.is_some() {
            return Err(invalid(
                "allocation",
                "is raffle: units go to the draw's ranks as holds, paid with POST /v1/holds/{id}/payment",
            ));
        }
        // Fast path: a sold-out deal refuses a shopper with no record on it
        // with one load of the flag (and one of the filter): no lock, not
        // even a clock read. Ended, paused and not started deals refuse the
        // same way just after.
        if deal.stock.is_sold_out() && !deal.records.may_contain(shopper) {
            return Err(EngineError::SoldOut);
        }
        let now = self.now();
        let refusal = deal.refusal(now);
        if let Some(refusal) = &refusal
            && !deal.records.may_contain(shopper)
        {
            return Err(refusal.clone());
        }
        let key = fingerprint(key);
        let mut guard = self.lock_shopper(shopper);
        let shard = &mut *guard;
        // A record on this deal answers first: its order or hold again, or
        // `IdempotencyKeyReused`. A key used on another deal is judged after
        // this deal's own refusals, so the lock-free fast path above and
        // this path always agree.
        let record = shard.idempotency.get(&(shopper, key)).copied();
        if let Some(record) = record.filter(|record| record.request.deal() == id) {
            if record.request != request {
                return Err(EngineError::IdempotencyKeyReused);
            }
            let remembered = match record.outcome {
                Outcome::Order(order) => Reserved::Order(
                    shard
                        .order(order)
                        .cloned()
                        .expect("a record names an order that exists"),
                ),
                Outcome::Hold(hold) => {
                    let position = shard
                        .hold_position(hold)
                        .expect("a record names a hold that exists");
                    Reserved::Hold(shard.holds[position].clone())
                }
            };
            return Ok((remembered, Answer::Replayed));
        }
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        if record.is_some() {
            return Err(EngineError::IdempotencyKeyReused);
        }
        let account = shard
            .accounts
            .get(&shopper)
            .ok_or(EngineError::NotFound(Entity::Shopper))?;
        let units = account.units(id);
        if deal.requires_registration && !units.registered {
            return Err(EngineError::NotRegistered);
        }
        let owned = units
            .owned()
            .checked_add(quantity)
            .ok_or(invalid("quantity", "is too large"))?;
        if owned > deal.per_user_limit {
            return Err(EngineError::PurchaseLimitReached {
                limit: deal.per_user_limit,
            });
        }
        if !account.may_touch(id, self.config.deals_per_shopper_max) {
            return Err(EngineError::CapacityReached {
                bound: "deals_per_shopper_max",
            });
        }
        let amount = deal
            .price
            .checked_mul(quantity)
            .ok_or(invalid("quantity", "makes the amount too large"))?;
        if account.wallet.available < amount {
            return Err(EngineError::InsufficientFunds);
        }
        let is_hold = matches!(request, Request::Hold { .. });
        shard.check_room(&self.bounds, now, !is_hold, is_hold, true)?;
        if !deal.stock.try_take(u64::from(quantity)) {
            return Err(EngineError::SoldOut);
        }
        // From here on nothing can fail: the stock is taken.
        let reserved = if is_hold {
            let hold = new_hold(shard, deal, shopper, quantity, amount, now);
            commit_hold(shard, deal, hold.clone(), key, &*self.sink);
            Reserved::Hold(hold)
        } else {
            let order = Order {
                id: shard.next_order_id(),
                deal: id,
                shopper,
                quantity,
                unit_price: deal.price,
                amount,
                late: false,
                hold: None,
                created_at: now,
            };
            commit_order(shard, deal, order.clone(), key, &*self.sink);
            Reserved::Order(order)
        };
        Ok((reserved, Answer::Settled))
    }

    // ----- holds ----------------------------------------------------------------

    pub fn hold_by_id(&self, id: HoldId) -> Result<Hold, EngineError> {
        let shard = self
            .lock_owner_of(id.0)
            .ok_or(EngineError::NotFound(Entity::Hold))?;
        let position = shard
            .hold_position(id)
            .ok_or(EngineError::NotFound(Entity::Hold))?;
        Ok(shard.holds[position].clone())
    }

    /// Pays a hold. On time: the held funds become spent and the held stock
    /// sold, also while the deal is paused: a pause stops new sales (buys,
    /// holds, late payments), not the holds already given, whose time runs
    /// on (otherwise a merchant could pause a raffle until a winner's hold
    /// ran out and pass its units down the public ranking). After expiry:
    /// honoured as a late order if the deal is still on (not paused, not
    /// ended) and the stock, funds and limit allow; otherwise `HoldExpired`
    /// and nothing is charged.
    ///
    /// A raffle's hold follows the same rules. An expired one refused late
    /// payment (a paused or ended deal, a capacity bound) leaves its units
    /// to the draw's periodic step (`run_draws`), which passes them on.
    pub fn pay_hold(&self, shopper: ShopperId, id: HoldId) -> Result<Order, EngineError> {
        let now = self.now();
        let mut guard = self
            .lock_owner_of(id.0)
            .ok_or(EngineError::NotFound(Entity::Hold))?;
        let shard = &mut *guard;
        let position = shard
            .hold_position(id)
            .ok_or(EngineError::NotFound(Entity::Hold))?;
        let hold = shard.holds[position].clone();
        if hold.shopper != shopper {
            return Err(EngineError::Forbidden(Entity::Hold));
        }
        let deal = self.deal_state(hold.deal)?;
        match hold.status {
            HoldStatus::Settled(order) => return Err(EngineError::HoldSettled { hold: id, order }),
            HoldStatus::Released => return Err(EngineError::HoldReleased { hold: id }),
            HoldStatus::Active if now < hold.expires_at => {
                return Ok(settle(shard, deal, &hold, false, now, &*self.sink));
            }
            HoldStatus::Active => release(
                shard,
                deal,
                position,
                ReleaseReason::Expired,
                now,
                &*self.sink,
            ),
            HoldStatus::Expired => {}
        }
        // Late: judged afresh, like a new buy, but answered `HoldExpired`.
        let expired = EngineError::HoldExpired { hold: id };
        if deal.paused() || now >= deal.ends_at() {
            return Err(expired);
        }
        let account = shard
            .accounts
            .get(&shopper)
            .ok_or(EngineError::NotFound(Entity::Shopper))?;
        let within_limit = account
            .units(hold.deal)
            .owned()
            .checked_add(hold.quantity)
            .is_some_and(|owned| owned <= deal.per_user_limit);
        if !within_limit || account.wallet.available < hold.amount {
            return Err(expired);
        }
        shard.check_room(&self.bounds, now, true, false, false)?;
        if !deal.stock.try_take(u64::from(hold.quantity)) {
            return Err(expired);
        }
        Ok(settle_late(shard, deal, &hold, now, &*self.sink))
    }

    /// Releases a hold at once: its stock and funds go back. Releasing a
    /// released or expired hold again changes nothing.
    pub fn release_hold(&self, shopper: ShopperId, id: HoldId) -> Result<Hold, EngineError> {
        let now = self.now();
        let mut guard = self
            .lock_owner_of(id.0)
            .ok_or(EngineError::NotFound(Entity::Hold))?;
        let shard = &mut *guard;
        let position = shard
            .hold_position(id)
            .ok_or(EngineError::NotFound(Entity::Hold))?;
        let hold = &shard.holds[position];
        if hold.shopper != shopper {
            return Err(EngineError::Forbidden(Entity::Hold));
        }
        match hold.status {
            HoldStatus::Settled(order) => Err(EngineError::HoldSettled { hold: id, order }),
            HoldStatus::Released | HoldStatus::Expired => Ok(hold.clone()),
            HoldStatus::Active => {
                let deal = self.deal_state(hold.deal)?;
                release(
                    shard,
                    deal,
                    position,
                    ReleaseReason::Released,
                    now,
                    &*self.sink,
                );
                let released = shard.holds[position].clone();
                drop(guard);
                // A raffle's units go to its next ranks at once.
                self.refill_raffle(deal);
                Ok(released)
            }
        }
    }

    /// Expires every active hold whose time is up: one shard at a time, at
    /// most `expiry_batch_max` per shard per call. Returns how many expired;
    /// call again while it returns a full batch.
    pub fn expire_holds(&self) -> usize {
        let now = self.now();
        let mut expired = 0;
        let mut raffle_expired = false;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for _ in 0..self.config.expiry_batch_max {
                let Some(&(expires_at, id)) = shard.expiries.first() else {
                    break;
                };
                if expires_at > now {
                    break;
                }
                let position = shard
                    .hold_position(id)
                    .expect("an expiry names a hold of its shard");
                let deal = self
                    .deals
                    .get(shard.holds[position].deal.0)
                    .expect("a hold's deal exists");
                raffle_expired |= deal.raffle.is_some();
                release(
                    &mut shard,
                    deal,
                    position,
                    ReleaseReason::Expired,
                    now,
                    &*self.sink,
                );
                expired += 1;
            }
        }
        if raffle_expired {
            // The units of expired raffle holds go to the next ranks in
            // this same call, one deal's draw lock at a time.
            self.refill_raffles();
        }
        expired
    }

    // ----- reviews and shares -----------------------------------------------------

    /// Reviews a settled order, once, by its shopper: three scores from 1 to
    /// 5 and an optional text of at most `REVIEW_TEXT_CHARS_MAX` characters.
    /// The merchant's rating follows.
    pub fn review(
        &self,
        shopper: ShopperId,
        order: OrderId,
        scores: [u8; 3],
        text: &str,
    ) -> Result<Review, EngineError> {
        check_review(scores, text)?;
        let now = self.now();
        let review = {
            let mut shard = self
                .lock_owner_of(order.0)
                .ok_or(EngineError::NotFound(Entity::Order))?;
            let settled = shard
                .order(order)
                .ok_or(EngineError::NotFound(Entity::Order))?;
            if settled.shopper != shopper {
                return Err(EngineError::Forbidden(Entity::Order));
            }
            if shard.reviews.contains_key(&order) {
                return Err(EngineError::AlreadyReviewed);
            }
            let deal = self.deal_state(settled.deal)?;
            let [description, delivery, service] = scores;
            let review = Review {
                order,
                deal: settled.deal,
                merchant: deal.merchant,
                shopper,
                description,
                delivery,
                service,
                text: text.to_owned(),
                created_at: now,
            };
            self.sink.emit(Event::Reviewed {
                review: review.clone(),
            });
            shard.reviews.insert(order, review.clone());
            review
        };
        // After the shard lock is released: one lock at a time.
        if let Some(merchant) = self.merchants.get(review.merchant.0) {
            merchant.add_review(review.score_sum());
        }
        Ok(review)
    }

    /// Counts a shared order toward its deal's popularity, once per order.
    /// `Ok(true)` the first time, `Ok(false)` after.
    pub fn share(&self, shopper: ShopperId, order: OrderId) -> Result<bool, EngineError> {
        let now = self.now();
        let mut shard = self
            .lock_owner_of(order.0)
            .ok_or(EngineError::NotFound(Entity::Order))?;
        let settled = shard
            .order(order)
            .ok_or(EngineError::NotFound(Entity::Order))?;
        if settled.shopper != shopper {
            return Err(EngineError::Forbidden(Entity::Order));
        }
        let deal = self.deal_state(settled.deal)?;
        if !shard.shared.insert(order) {
            return Ok(false);
        }
        self.sink.emit(Event::Shared {
            order,
            deal: deal.id,
            at: now,
        });
        deal.add_share();
        Ok(true)
    }

    // ----- orders -------------------------------------------------------------------

    pub fn order(&self, id: OrderId) -> Result<Order, EngineError> {
        let shard = self
            .lock_owner_of(id.0)
            .ok_or(EngineError::NotFound(Entity::Order))?;
        shard
            .order(id)
            .cloned()
            .ok_or(EngineError::NotFound(Entity::Order))
    }

    /// A deal's orders across all shards, in (shard, time) order, one shard
    /// lock at a time.
    pub fn orders_of_deal(&self, deal: DealId, from: OrderCursor, limit: usize) -> OrderPage {
        let mut orders = Vec::with_capacity(limit.min(1024));
        let mut cursor = from;
        while (cursor.shard as usize) < self.shards.len() {
            let shard = self.shards[cursor.shard as usize].lock();
            let ids = shard
                .orders_by_deal
                .get(&deal)
                .map_or(&[][..], |ids| &ids[..]);
            let start = (cursor.position as usize).min(ids.len());
            let room = limit - orders.len();
            let page = &ids[start..ids.len().min(start + room)];
            orders.extend(page.iter().filter_map(|&id| shard.order(id).cloned()));
            cursor.position = (start + page.len()) as u32;
            if orders.len() == limit {
                let more = cursor.position as usize != ids.len()
                    || (cursor.shard as usize + 1) < self.shards.len();
                return OrderPage {
                    orders,
                    next: more.then_some(cursor),
                };
            }
            cursor = OrderCursor {
                shard: cursor.shard + 1,
                position: 0,
            };
        }
        OrderPage { orders, next: None }
    }

    /// A shopper's own orders, oldest first, optionally of one deal.
    pub fn orders_of_shopper(
        &self,
        shopper: ShopperId,
        deal: Option<DealId>,
        from: OrderCursor,
        limit: usize,
    ) -> OrderPage {
        let shard = self.lock_shopper(shopper);
        let Some(account) = shard.accounts.get(&shopper) else {
            return OrderPage {
                orders: Vec::new(),
                next: None,
            };
        };
        let mut orders = Vec::with_capacity(limit.min(1024));
        let mut position = from.position as usize;
        while position < account.orders.len() && orders.len() < limit {
            if let Some(order) = shard.order(account.orders[position])
                && deal.is_none_or(|deal| order.deal == deal)
            {
                orders.push(order.clone());
            }
            position += 1;
        }
        let next = (position < account.orders.len()).then_some(OrderCursor {
            shard: 0,
            position: position as u32,
        });
        OrderPage { orders, next }
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

    /// Checks every conservation rule of DESIGN.md over the whole state,
    /// one lock at a time; exact only when no request is running.
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

enum Reserved {
    Order(Order),
    Hold(Hold),
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

/// Checks a merchant's deal and fills in the defaults (the rules of
/// `POST /v1/deals`, DESIGN.md): the one check for every store.
pub fn validate_deal(new: NewDeal, now: Timestamp) -> Result<DealSpec, EngineError> {
    check_name(&new.title, "title", TITLE_CHARS_MAX)?;
    if new.price == Money::ZERO {
        return Err(invalid("price", "must be positive"));
    }
    if new.stock == 0 || new.stock > STOCK_MAX {
        return Err(invalid("stock", "must be from 1 to 1000000000"));
    }
    let per_user_limit = new.per_user_limit.unwrap_or(PER_USER_LIMIT_DEFAULT);
    if per_user_limit == 0 || per_user_limit > PER_USER_LIMIT_MAX {
        return Err(invalid("per_user_limit", "must be from 1 to 1000"));
    }
    if new.price.checked_mul(per_user_limit).is_none() {
        return Err(invalid("price", "times per_user_limit is too large"));
    }
    if new.ends_at <= new.starts_at {
        return Err(invalid("ends_at", "must be after starts_at"));
    }
    if new.ends_at <= now {
        return Err(invalid("ends_at", "must be in the future"));
    }
    let hold_seconds = new.hold_seconds.unwrap_or(HOLD_SECONDS_DEFAULT);
    if hold_seconds == 0 || hold_seconds > HOLD_SECONDS_MAX {
        return Err(invalid("hold_seconds", "must be from 1 to 86400"));
    }
    // Issue #14: a raffle ranks its registrants, so it needs them.
    if matches!(new.allocation, Allocation::Raffle(_)) && !new.requires_registration {
        return Err(invalid(
            "requires_registration",
            "must be true for a raffle (allocation: raffle)",
        ));
    }
    // Registrations close at starts_at, so a raffle starting now or before
    // would draw from nobody and leave its stock to no one.
    if matches!(new.allocation, Allocation::Raffle(_)) && new.starts_at <= now {
        return Err(invalid(
            "starts_at",
            "must be in the future for a raffle: registrations close when it starts",
        ));
    }
    Ok(DealSpec {
        title: new.title,
        price: new.price,
        stock: new.stock,
        per_user_limit,
        starts_at: new.starts_at,
        ends_at: new.ends_at,
        requires_registration: new.requires_registration,
        hold_seconds,
        allocation: new.allocation,
    })
}

// ----- effects ------------------------------------------------------------------
//
// The state changes themselves, shared by the live operations (after their
// checks) and by replay (which passes `DiscardEvents`). Each one emits its
// event while the shard lock is held, and before any stock it gives back
// becomes visible.

/// Records a one-tap buy whose stock is already taken.
pub(crate) fn commit_order(
    shard: &mut Shard,
    deal: &DealState,
    order: Order,
    key: Fingerprint,
    sink: &dyn EventSink,
) {
    let account = shard
        .accounts
        .get_mut(&order.shopper)
        .expect("the buyer exists");
    account.wallet.available = account
        .wallet
        .available
        .checked_sub(order.amount)
        .expect("funds checked before");
    account.wallet.spent = account
        .wallet
        .spent
        .checked_add(order.amount)
        .expect("spent ≤ credited ≤ MONEY_MAX");
    let units = account.units_mut(order.deal);
    if units.bought == 0 {
        deal.stock.add_buyer();
    }
    units.bought += order.quantity;
    deal.stock.add_sold(u64::from(order.quantity));
    let record = IdempotencyRecord {
        request: Request::Buy {
            deal: order.deal,
            quantity: order.quantity,
        },
        outcome: Outcome::Order(order.id),
        created_at: order.created_at,
    };
    let shopper = order.shopper;
    sink.emit(Event::OrderSettled {
        order: order.clone(),
        key: Some(key),
    });
    shard.push_order(order);
    shard.remember(shopper, key, record);
    deal.records.insert(shopper);
    shard.assert_account(shopper);
}

/// Records a hold whose stock is already taken.
pub(crate) fn commit_hold(
    shard: &mut Shard,
    deal: &DealState,
    hold: Hold,
    key: Fingerprint,
    sink: &dyn EventSink,
) {
    place_hold(shard, deal, &hold);
    let record = IdempotencyRecord {
        request: Request::Hold {
            deal: hold.deal,
            quantity: hold.quantity,
        },
        outcome: Outcome::Hold(hold.id),
        created_at: hold.created_at,
    };
    let shopper = hold.shopper;
    sink.emit(Event::HoldCreated { hold, key });
    shard.remember(shopper, key, record);
    deal.records.insert(shopper);
    shard.assert_account(shopper);
}

/// The next active hold of `shard` for `quantity` units of `deal` costing
/// `amount`, made at `now` and lasting the deal's `hold_seconds`.
pub(crate) fn new_hold(
    shard: &Shard,
    deal: &DealState,
    shopper: ShopperId,
    quantity: u32,
    amount: Money,
    now: Timestamp,
) -> Hold {
    Hold {
        id: shard.next_hold_id(),
        deal: deal.id,
        shopper,
        quantity,
        amount,
        created_at: now,
        expires_at: now.plus_seconds(deal.hold_seconds),
        status: HoldStatus::Active,
    }
}

/// Places a hold whose stock is already taken: its funds and units
/// reserved, the hold stored and its expiry scheduled. Shared by a shopper's
/// hold ([`commit_hold`]) and a raffle's offer (`crate::draw`).
pub(crate) fn place_hold(shard: &mut Shard, deal: &DealState, hold: &Hold) {
    assert_eq!(
        hold.id,
        shard.next_hold_id(),
        "holds are appended in id order"
    );
    reserve_for(shard, deal, hold);
    shard.expiries.insert((hold.expires_at, hold.id));
    shard.holds.push(hold.clone());
}

/// Moves a hold's amount from available to held funds and its units to
/// held stock: the reservation half of a hold, its stock already taken.
fn reserve_for(shard: &mut Shard, deal: &DealState, hold: &Hold) {
    let account = shard
        .accounts
        .get_mut(&hold.shopper)
        .expect("the shopper exists");
    account.wallet.available = account
        .wallet
        .available
        .checked_sub(hold.amount)
        .expect("funds checked before");
    account.wallet.held = account
        .wallet
        .held
        .checked_add(hold.amount)
        .expect("held ≤ credited ≤ MONEY_MAX");
    account.units_mut(hold.deal).held += hold.quantity;
    deal.stock.add_held(u64::from(hold.quantity));
}

/// Pays an expired hold late whose stock is already taken again: reserves
/// the funds anew, then settles.
pub(crate) fn settle_late(
    shard: &mut Shard,
    deal: &DealState,
    hold: &Hold,
    now: Timestamp,
    sink: &dyn EventSink,
) -> Order {
    reserve_for(shard, deal, hold);
    settle(shard, deal, hold, true, now, sink)
}

/// Turns a hold's reserved stock and funds into a settled order.
pub(crate) fn settle(
    shard: &mut Shard,
    deal: &DealState,
    hold: &Hold,
    late: bool,
    now: Timestamp,
    sink: &dyn EventSink,
) -> Order {
    let account = shard
        .accounts
        .get_mut(&hold.shopper)
        .expect("a hold's shopper exists");
    account.wallet.held = account
        .wallet
        .held
        .checked_sub(hold.amount)
        .expect("the hold's funds are held");
    account.wallet.spent = account
        .wallet
        .spent
        .checked_add(hold.amount)
        .expect("spent ≤ credited");
    let units = account.units_mut(hold.deal);
    let first_purchase = units.bought == 0;
    units.held -= hold.quantity;
    units.bought += hold.quantity;
    let order = Order {
        id: shard.next_order_id(),
        deal: hold.deal,
        shopper: hold.shopper,
        quantity: hold.quantity,
        unit_price: deal.price,
        amount: hold.amount,
        late,
        hold: Some(hold.id),
        created_at: now,
    };
    deal.stock.remove_held(u64::from(hold.quantity));
    deal.stock.add_sold(u64::from(hold.quantity));
    if first_purchase {
        deal.stock.add_buyer();
    }
    sink.emit(Event::OrderSettled {
        order: order.clone(),
        key: None,
    });
    let position = shard.hold_position(hold.id).expect("the hold exists");
    shard.holds[position].status = HoldStatus::Settled(order.id);
    shard.expiries.remove(&(hold.expires_at, hold.id));
    shard.push_order(order.clone());
    shard.assert_account(hold.shopper);
    order
}

/// Gives an active hold's stock and funds back.
pub(crate) fn release(
    shard: &mut Shard,
    deal: &DealState,
    position: usize,
    reason: ReleaseReason,
    now: Timestamp,
    sink: &dyn EventSink,
) {
    let hold = &mut shard.holds[position];
    assert_eq!(
        hold.status,
        HoldStatus::Active,
        "only an active hold is released"
    );
    hold.status = match reason {
        ReleaseReason::Released => HoldStatus::Released,
        ReleaseReason::Expired => HoldStatus::Expired,
    };
    let hold = hold.clone();
    shard.expiries.remove(&(hold.expires_at, hold.id));
    let account = shard
        .accounts
        .get_mut(&hold.shopper)
        .expect("a hold's shopper exists");
    account.wallet.held = account
        .wallet
        .held
        .checked_sub(hold.amount)
        .expect("the hold's funds are held");
    account.wallet.available = account
        .wallet
        .available
        .checked_add(hold.amount)
        .expect("available ≤ credited");
    account.units_mut(hold.deal).held -= hold.quantity;
    // Event first, then the stock: see the `event` module.
    sink.emit(Event::HoldReleased {
        hold: hold.id,
        shopper: hold.shopper,
        reason,
        at: now,
    });
    deal.stock.remove_held(u64::from(hold.quantity));
    deal.stock.put_back(u64::from(hold.quantity));
    shard.assert_account(hold.shopper);
}
