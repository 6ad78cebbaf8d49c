//! Buying and holding: [`Engine::buy`], [`Engine::buy_answer`] and
//! [`Engine::hold`], one path ([`crate::rules::decide_reserve`]) with the
//! lock-free early refusals in front of the shopper's lock.

use crate::error::EngineError;
use crate::event::fingerprint;
use crate::ids::{DealId, ShopperId};
use crate::records::{Hold, HoldStatus, Order};
use crate::rules::{self, RecordView, ReserveEffects, ReserveKind, ReserveView, ShopperView};
use crate::shard::{Outcome, Request, Shard};

use super::effects::{commit_hold, commit_order};
use super::validate::check_reservation;
use super::{Answer, Engine};

enum Reserved {
    Order(Order),
    Hold(Hold),
}

impl Engine {
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
    /// the same `key` settled, given again ([`Answer::Replayed`], docs/api.md
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
        match self.reserve(shopper, id, quantity, key, ReserveKind::Buy)? {
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
        match self.reserve(shopper, id, quantity, key, ReserveKind::Hold)? {
            (Reserved::Hold(hold), _) => Ok(hold),
            (Reserved::Order(_), _) => unreachable!("a hold request yields a hold"),
        }
    }

    /// The shared path of buy and hold: the input, the lock-free early
    /// refusals, then under the shopper's lock the decision, the engine's
    /// bounds, the stock and the commit.
    fn reserve(
        &self,
        shopper: ShopperId,
        id: DealId,
        quantity: u32,
        key: &str,
        kind: ReserveKind,
    ) -> Result<(Reserved, Answer), EngineError> {
        check_reservation(quantity, key)?;
        let deal = self.deal_state(id)?;
        // The decision's first steps, answered before any lock when they do
        // not depend on the shopper: a raffle; then, for a shopper with no
        // record on this deal (the filter's bit is clear), the window. A
        // sold-out deal refuses with one load of the flag (and one of the
        // filter): no lock, not even a clock read.
        if deal.raffle.is_some() {
            return Err(rules::raffle_refusal());
        }
        if deal.stock.is_sold_out() && !deal.records.may_contain(shopper) {
            return Err(EngineError::SoldOut);
        }
        let window = deal.window(self.now());
        if let Err(refusal) = rules::decide_open(&window)
            && !deal.records.may_contain(shopper)
        {
            return Err(refusal);
        }
        let request = match kind {
            ReserveKind::Buy => Request::Buy { deal: id, quantity },
            ReserveKind::Hold => Request::Hold { deal: id, quantity },
        };
        let key = fingerprint(key);
        let mut guard = self.lock_shopper(shopper);
        let shard = &mut *guard;
        let record = shard.idempotency.get(&(shopper, key)).copied();
        let record_view = match record {
            None => RecordView::None,
            Some(record) if record.request.deal() != id => RecordView::OtherDeal,
            Some(record) if record.request == request => RecordView::SameRequest,
            Some(_) => RecordView::OtherRequest,
        };
        let view = ReserveView {
            kind,
            quantity,
            raffle: deal.raffle.is_some(),
            window,
            record: record_view,
            requires_registration: deal.requires_registration,
            per_user_limit: deal.per_user_limit,
            price: deal.price,
            hold_seconds: deal.hold_seconds,
            shopper: shard.accounts.get(&shopper).map(|account| {
                let (units, may_touch) =
                    account.units_and_room(id, self.config.deals_per_shopper_max);
                ShopperView {
                    registered: units.registered,
                    held: units.held,
                    bought: units.bought,
                    may_touch,
                    available: account.wallet.available,
                }
            }),
        };
        let reservation = match (rules::decide_reserve(&view)?, record) {
            (ReserveEffects::Reserve(reservation), _) => reservation,
            (ReserveEffects::Replay, Some(record)) => {
                return Ok((remembered(shard, record.outcome), Answer::Replayed));
            }
            (ReserveEffects::Replay, None) => unreachable!("a replay answers a record"),
        };
        // Not part of the rule: the engine's own bounds, then the stock,
        // a lock-free counter shared by every shard.
        let is_hold = kind == ReserveKind::Hold;
        shard.check_room(&self.bounds, window.now, !is_hold, is_hold, true)?;
        if !deal.stock.try_take(u64::from(reservation.units)) {
            return Err(EngineError::SoldOut);
        }
        // From here on nothing can fail: the stock is taken.
        let reserved = match reservation.expires_at {
            Some(expires_at) => {
                let hold = Hold {
                    id: shard.next_hold_id(),
                    deal: id,
                    shopper,
                    quantity: reservation.units,
                    amount: reservation.debit,
                    created_at: reservation.created_at,
                    expires_at,
                    status: HoldStatus::Active,
                };
                commit_hold(shard, deal, hold.clone(), key, &*self.sink);
                Reserved::Hold(hold)
            }
            None => {
                let order = Order {
                    id: shard.next_order_id(),
                    deal: id,
                    shopper,
                    quantity: reservation.units,
                    unit_price: reservation.unit_price,
                    amount: reservation.debit,
                    late: false,
                    hold: None,
                    created_at: reservation.created_at,
                };
                commit_order(shard, deal, order.clone(), key, &*self.sink);
                Reserved::Order(order)
            }
        };
        Ok((reserved, Answer::Settled))
    }
}

/// The order or hold an idempotency record names.
fn remembered(shard: &Shard, outcome: Outcome) -> Reserved {
    match outcome {
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
    }
}
