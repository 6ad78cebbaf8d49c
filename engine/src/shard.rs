//! One shard of per-shopper state: accounts and wallets, per-deal units and
//! registrations, holds, orders and idempotency records. A shopper and
//! everything it owns live in the shard its id hashes to, so every request
//! of a shopper needs exactly that one shard's lock.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::event::Fingerprint;
use crate::ids::{self, DealId, HoldId, OrderId, ShopperId};
use crate::money::Money;
use crate::records::{Hold, Order, Review, Shopper, Wallet};

/// How long an idempotency record is kept at least: 24 hours.
pub const IDEMPOTENCY_RETENTION_MILLIS: i64 = 24 * 60 * 60 * 1000;

/// A shopper's units of one deal: held (reserved) and bought (settled).
/// Their sum is what the per-user limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DealUnits {
    pub(crate) deal: DealId,
    pub(crate) held: u32,
    pub(crate) bought: u32,
    pub(crate) registered: bool,
}

impl DealUnits {
    pub(crate) fn owned(&self) -> u32 {
        self.held + self.bought
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    pub(crate) shopper: Shopper,
    pub(crate) wallet: Wallet,
    /// Credit references seen, with the amount each credited.
    pub(crate) credits: FxHashMap<Fingerprint, Money>,
    /// Deals this shopper touched; a shopper touches few, so a short vector
    /// beats a map.
    pub(crate) deals: Vec<DealUnits>,
    pub(crate) orders: Vec<OrderId>,
}

impl Account {
    pub(crate) fn new(shopper: Shopper) -> Account {
        Account {
            shopper,
            wallet: Wallet::default(),
            credits: FxHashMap::default(),
            deals: Vec::new(),
            orders: Vec::new(),
        }
    }

    pub(crate) fn units(&self, deal: DealId) -> DealUnits {
        self.deals
            .iter()
            .find(|units| units.deal == deal)
            .copied()
            .unwrap_or(DealUnits {
                deal,
                held: 0,
                bought: 0,
                registered: false,
            })
    }

    /// [`Account::units`], and whether this shopper may hold, buy or
    /// register on `deal` without tracking more than `deals_max` deals (it
    /// tracks `deal` already, or fewer than `deals_max`), in one pass.
    pub(crate) fn units_and_room(&self, deal: DealId, deals_max: usize) -> (DealUnits, bool) {
        match self.deals.iter().find(|units| units.deal == deal) {
            Some(&units) => (units, true),
            None => (
                DealUnits {
                    deal,
                    held: 0,
                    bought: 0,
                    registered: false,
                },
                self.deals.len() < deals_max,
            ),
        }
    }

    pub(crate) fn units_mut(&mut self, deal: DealId) -> &mut DealUnits {
        let position = match self.deals.iter().position(|units| units.deal == deal) {
            Some(position) => position,
            None => {
                self.deals.push(DealUnits {
                    deal,
                    held: 0,
                    bought: 0,
                    registered: false,
                });
                self.deals.len() - 1
            }
        };
        &mut self.deals[position]
    }
}

/// What a remembered request asked for: a retry must ask for the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Request {
    Buy { deal: DealId, quantity: u32 },
    Hold { deal: DealId, quantity: u32 },
}

impl Request {
    pub(crate) fn deal(self) -> DealId {
        match self {
            Request::Buy { deal, .. } | Request::Hold { deal, .. } => deal,
        }
    }
}

/// What a remembered request produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Order(OrderId),
    Hold(HoldId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdempotencyRecord {
    pub(crate) request: Request,
    pub(crate) outcome: Outcome,
    pub(crate) created_at: Timestamp,
}

/// The bounds of one shard: the engine's bounds divided by the shard count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardBounds {
    pub(crate) orders_max: usize,
    pub(crate) holds_max: usize,
    pub(crate) idempotency_records_max: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Shard {
    pub(crate) index: usize,
    pub(crate) accounts: FxHashMap<ShopperId, Account>,
    /// Orders by sequence number: `OrderId` = (sequence, shard).
    pub(crate) orders: Vec<Order>,
    pub(crate) orders_by_deal: FxHashMap<DealId, Vec<OrderId>>,
    /// Holds by sequence number: `HoldId` = (sequence, shard).
    pub(crate) holds: Vec<Hold>,
    /// Active holds by expiry, for the sweep.
    pub(crate) expiries: BTreeSet<(Timestamp, HoldId)>,
    pub(crate) idempotency: FxHashMap<(ShopperId, Fingerprint), IdempotencyRecord>,
    /// Reviews of this shard's orders, one per order at most.
    pub(crate) reviews: FxHashMap<OrderId, Review>,
    /// Orders their shoppers shared.
    pub(crate) shared: rustc_hash::FxHashSet<OrderId>,
    /// Records in creation order, for retention.
    pub(crate) idempotency_ages: VecDeque<(Timestamp, ShopperId, Fingerprint)>,
}

impl Shard {
    pub(crate) fn new(index: usize) -> Shard {
        Shard {
            index,
            ..Shard::default()
        }
    }

    pub(crate) fn next_order_id(&self) -> OrderId {
        OrderId(ids::compose(self.index, self.orders.len() as u64))
    }

    pub(crate) fn next_hold_id(&self) -> HoldId {
        HoldId(ids::compose(self.index, self.holds.len() as u64))
    }

    pub(crate) fn order(&self, id: OrderId) -> Option<&Order> {
        let (shard, sequence) = ids::decompose(id.0);
        if shard != self.index {
            return None;
        }
        self.orders.get(usize::try_from(sequence).ok()?)
    }

    pub(crate) fn hold_position(&self, id: HoldId) -> Option<usize> {
        let (shard, sequence) = ids::decompose(id.0);
        let position = usize::try_from(sequence).ok()?;
        (shard == self.index && position < self.holds.len()).then_some(position)
    }

    /// Checks the capacity one more order, hold or record needs, first
    /// forgetting idempotency records past retention.
    pub(crate) fn check_room(
        &mut self,
        bounds: &ShardBounds,
        now: Timestamp,
        order: bool,
        hold: bool,
        record: bool,
    ) -> Result<(), crate::EngineError> {
        use crate::EngineError::CapacityReached;
        if order && self.orders.len() >= bounds.orders_max {
            return Err(CapacityReached {
                bound: "orders_max",
            });
        }
        if hold && self.holds.len() >= bounds.holds_max {
            return Err(CapacityReached { bound: "holds_max" });
        }
        if record {
            self.forget_records_before(now.plus_millis(-IDEMPOTENCY_RETENTION_MILLIS));
            if self.idempotency.len() >= bounds.idempotency_records_max {
                return Err(CapacityReached {
                    bound: "idempotency_records_max",
                });
            }
        }
        Ok(())
    }

    fn forget_records_before(&mut self, cutoff: Timestamp) {
        while let Some(&(created_at, shopper, key)) = self.idempotency_ages.front() {
            if created_at >= cutoff {
                break;
            }
            self.idempotency_ages.pop_front();
            self.idempotency.remove(&(shopper, key));
        }
    }

    pub(crate) fn remember(
        &mut self,
        shopper: ShopperId,
        key: Fingerprint,
        record: IdempotencyRecord,
    ) {
        self.idempotency.insert((shopper, key), record);
        self.idempotency_ages
            .push_back((record.created_at, shopper, key));
    }

    /// Appends an order under the id [`Shard::next_order_id`] gave.
    pub(crate) fn push_order(&mut self, order: Order) {
        assert_eq!(
            order.id,
            self.next_order_id(),
            "orders are appended in id order"
        );
        self.orders_by_deal
            .entry(order.deal)
            .or_default()
            .push(order.id);
        if let Some(account) = self.accounts.get_mut(&order.shopper) {
            account.orders.push(order.id);
        }
        self.orders.push(order);
    }

    /// Wallet and units must balance: checked after every change in debug
    /// builds and tests.
    pub(crate) fn assert_account(&self, shopper: ShopperId) {
        if let Some(account) = self.accounts.get(&shopper) {
            debug_assert!(
                account.wallet.is_balanced(),
                "wallet of {shopper} does not balance"
            );
        }
    }
}
