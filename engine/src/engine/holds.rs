//! A hold after it is given: reading it, paying it in its time or late,
//! releasing it, and the expiry sweep. The rules are
//! [`crate::rules::holds`]; this applies them under the hold's shard lock.

use crate::clock::Timestamp;
use crate::error::{EngineError, Entity};
use crate::event::ReleaseReason;
use crate::ids::{HoldId, ShopperId};
use crate::records::{Hold, Order};
use crate::rules::{self, HoldView, LatePayShopper, LatePayView, PayStep, ReleaseEffects};

use super::Engine;
use super::effects::{release, settle, settle_late};

/// What the hold rules read of `hold`, asked by `shopper` at `now`.
fn hold_view(hold: &Hold, shopper: ShopperId, now: Timestamp) -> HoldView {
    HoldView {
        id: hold.id,
        own: hold.shopper == shopper,
        status: hold.status,
        quantity: hold.quantity,
        amount: hold.amount,
        expires_at: hold.expires_at,
        now,
    }
}

impl Engine {
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
    /// and nothing is charged. The rules: [`rules::decide_pay`], then
    /// [`rules::decide_late_pay`].
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
        let step = rules::decide_pay(&hold_view(&hold, shopper, now))?;
        let deal = self.deal_state(hold.deal)?;
        match step {
            PayStep::OnTime => return Ok(settle(shard, deal, &hold, false, now, &*self.sink)),
            PayStep::ExpireThenLate => release(
                shard,
                deal,
                position,
                ReleaseReason::Expired,
                now,
                &*self.sink,
            ),
            PayStep::Late => {}
        }
        // Late: judged on the state the expiry left.
        let view = LatePayView {
            hold: id,
            quantity: hold.quantity,
            amount: hold.amount,
            paused: deal.paused(),
            now,
            ends_at: deal.ends_at(),
            per_user_limit: deal.per_user_limit,
            shopper: shard.accounts.get(&shopper).map(|account| {
                let units = account.units(hold.deal);
                LatePayShopper {
                    held: units.held,
                    bought: units.bought,
                    available: account.wallet.available,
                }
            }),
        };
        let payment = rules::decide_late_pay(&view)?;
        // Not part of the rule: the engine's bound, then the stock.
        shard.check_room(&self.bounds, now, true, false, false)?;
        if !deal.stock.try_take(u64::from(payment.units)) {
            return Err(EngineError::HoldExpired { hold: id });
        }
        Ok(settle_late(shard, deal, &hold, now, &*self.sink))
    }

    /// Releases a hold at once: its stock and funds go back. Releasing a
    /// released or expired hold again changes nothing. The rule:
    /// [`rules::decide_release`].
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
        match rules::decide_release(&hold_view(hold, shopper, now))? {
            ReleaseEffects::Unchanged => Ok(hold.clone()),
            ReleaseEffects::Release(effects) => {
                let deal = self.deal_state(hold.deal)?;
                release(shard, deal, position, effects.reason, now, &*self.sink);
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
    /// call again while it returns a full batch. The rule:
    /// [`rules::decide_expire`].
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
                if !rules::is_due(expires_at, now) {
                    break;
                }
                let position = shard
                    .hold_position(id)
                    .expect("an expiry names a hold of its shard");
                let hold = &shard.holds[position];
                let ReleaseEffects::Release(effects) =
                    rules::decide_expire(&hold_view(hold, hold.shopper, now))
                else {
                    unreachable!("the expiry set holds active holds only");
                };
                let deal = self.deals.get(hold.deal.0).expect("a hold's deal exists");
                raffle_expired |= deal.raffle.is_some();
                release(&mut shard, deal, position, effects.reason, now, &*self.sink);
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
}
