//! A hold's life after it is given: paid in its time or late, released by
//! its shopper, expired by the sweep (docs/api.md "Endpoints": `POST
//! /v1/holds/{id}/payment`, `DELETE /v1/holds/{id}`).

use crate::clock::Timestamp;
use crate::error::{EngineError, Entity};
use crate::event::ReleaseReason;
use crate::ids::HoldId;
use crate::money::Money;
use crate::records::HoldStatus;

use super::reserve::{counts_new_buyer, within_limit};

/// What paying, releasing or expiring a hold reads of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldView {
    pub id: HoldId,
    /// The caller is the hold's shopper (always `true` for the sweep).
    pub own: bool,
    pub status: HoldStatus,
    /// Units and funds the hold reserves.
    pub quantity: u32,
    pub amount: Money,
    pub expires_at: Timestamp,
    /// The engine's clock, ms since the epoch.
    pub now: Timestamp,
}

/// Whether a hold expiring at `expires_at` is past its time at `now`: it
/// is in time while `now < expires_at`.
#[inline]
pub fn is_due(expires_at: Timestamp, now: Timestamp) -> bool {
    now >= expires_at
}

/// The first step of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayStep {
    /// In its time: settle at once (held units become sold, held funds
    /// spent), with no other check: also while the deal is paused or
    /// after it ended.
    OnTime,
    /// Active but past its time: expire it first (as [`decide_expire`]
    /// would), then judge a late payment ([`decide_late_pay`]) on the
    /// state that leaves.
    ExpireThenLate,
    /// Expired already: judge a late payment.
    Late,
}

/// Decides the first step of paying a hold (docs/api.md "Endpoints", a
/// hold's payment). Refusals, in order: not the caller's hold:
/// `Forbidden(Hold)`; settled: `HoldSettled` with its order; released:
/// `HoldReleased`.
pub fn decide_pay(view: &HoldView) -> Result<PayStep, EngineError> {
    if !view.own {
        return Err(EngineError::Forbidden(Entity::Hold));
    }
    match view.status {
        HoldStatus::Settled(order) => Err(EngineError::HoldSettled {
            hold: view.id,
            order,
        }),
        HoldStatus::Released => Err(EngineError::HoldReleased { hold: view.id }),
        HoldStatus::Active if !is_due(view.expires_at, view.now) => Ok(PayStep::OnTime),
        HoldStatus::Active => Ok(PayStep::ExpireThenLate),
        HoldStatus::Expired => Ok(PayStep::Late),
    }
}

/// What a late payment reads of the hold's shopper (after its expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatePayShopper {
    /// Units of the deal held and bought.
    pub held: u32,
    pub bought: u32,
    pub available: Money,
}

/// Everything [`decide_late_pay`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatePayView {
    pub hold: HoldId,
    pub quantity: u32,
    pub amount: Money,
    pub paused: bool,
    pub now: Timestamp,
    pub ends_at: Timestamp,
    pub per_user_limit: u32,
    /// `None`: the shopper is gone.
    pub shopper: Option<LatePayShopper>,
}

/// A late payment: take `units` from the deal's `remaining` again, move
/// `debit` from available to spent, settle an order marked late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatePayment {
    pub units: u32,
    pub debit: Money,
    /// The order makes the shopper a new buyer of the deal.
    pub new_buyer: bool,
}

/// Decides a late payment of an expired hold, judged afresh like a new
/// buy but answered `HoldExpired` (docs/api.md "Endpoints" and "Errors",
/// `hold_expired`). Refusals, in order: the deal paused or ended
/// (`now >= ends_at`): `HoldExpired`; no such shopper: `NotFound(Shopper)`;
/// held + bought + quantity over `per_user_limit` (or overflowing), or
/// available funds below the hold's amount: `HoldExpired`. The stock is
/// taken when the effects are applied (`HoldExpired` if none is left).
pub fn decide_late_pay(view: &LatePayView) -> Result<LatePayment, EngineError> {
    let expired = EngineError::HoldExpired { hold: view.hold };
    if view.paused || view.now >= view.ends_at {
        return Err(expired);
    }
    let shopper = view.shopper.ok_or(EngineError::NotFound(Entity::Shopper))?;
    let within = shopper
        .held
        .checked_add(shopper.bought)
        .and_then(|owned| within_limit(owned, view.quantity, view.per_user_limit))
        .unwrap_or(false);
    if !within || shopper.available < view.amount {
        return Err(expired);
    }
    Ok(LatePayment {
        units: view.quantity,
        debit: view.amount,
        new_buyer: counts_new_buyer(shopper.bought),
    })
}

/// Giving an active hold's stock and funds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// Units from held back to the deal's `remaining`, and off the
    /// shopper's held units.
    pub units: u32,
    /// Funds from the wallet's held back to available.
    pub funds: Money,
    /// `Released` by its shopper or `Expired` by time.
    pub reason: ReleaseReason,
}

/// What a release or the sweep does to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseEffects {
    /// Nothing: released or expired already, or not due.
    Unchanged,
    Release(Release),
}

fn release_of(view: &HoldView, reason: ReleaseReason) -> ReleaseEffects {
    ReleaseEffects::Release(Release {
        units: view.quantity,
        funds: view.amount,
        reason,
    })
}

/// Decides a shopper's release of a hold (docs/api.md "Endpoints",
/// `DELETE /v1/holds/{id}`): an active hold is released at once, even past
/// its time; a released or expired one again changes nothing. Refusals, in
/// order: not the caller's hold: `Forbidden(Hold)`; settled: `HoldSettled`.
pub fn decide_release(view: &HoldView) -> Result<ReleaseEffects, EngineError> {
    if !view.own {
        return Err(EngineError::Forbidden(Entity::Hold));
    }
    match view.status {
        HoldStatus::Settled(order) => Err(EngineError::HoldSettled {
            hold: view.id,
            order,
        }),
        HoldStatus::Released | HoldStatus::Expired => Ok(ReleaseEffects::Unchanged),
        HoldStatus::Active => Ok(release_of(view, ReleaseReason::Released)),
    }
}

/// Decides the sweep's step on one hold: an active hold past its time
/// ([`is_due`]) expires, giving its stock and funds back (ARCHITECTURE.md
/// "The engine"; docs/api.md: a hold reserves for `hold_seconds`).
/// Otherwise nothing. Never refuses.
pub fn decide_expire(view: &HoldView) -> ReleaseEffects {
    match view.status {
        HoldStatus::Active if is_due(view.expires_at, view.now) => {
            release_of(view, ReleaseReason::Expired)
        }
        _ => ReleaseEffects::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OrderId;

    const NOW: Timestamp = Timestamp(5_000);

    fn fen(fen: i64) -> Money {
        Money::from_fen(fen).unwrap()
    }

    fn hold(status: HoldStatus, expires_at: i64) -> HoldView {
        HoldView {
            id: HoldId(7),
            own: true,
            status,
            quantity: 2,
            amount: fen(300),
            expires_at: Timestamp(expires_at),
            now: NOW,
        }
    }

    #[test]
    fn pay_in_time_then_past_it() {
        assert_eq!(
            decide_pay(&hold(HoldStatus::Active, 5_001)),
            Ok(PayStep::OnTime)
        );
        assert_eq!(
            decide_pay(&hold(HoldStatus::Active, 5_000)),
            Ok(PayStep::ExpireThenLate)
        );
        assert_eq!(
            decide_pay(&hold(HoldStatus::Expired, 9_000)),
            Ok(PayStep::Late)
        );
    }

    #[test]
    fn pay_refusals_in_order() {
        let settled = HoldStatus::Settled(OrderId(9));
        let foreign = HoldView {
            own: false,
            ..hold(settled, 9_000)
        };
        assert_eq!(
            decide_pay(&foreign),
            Err(EngineError::Forbidden(Entity::Hold))
        );
        assert_eq!(
            decide_pay(&hold(settled, 9_000)),
            Err(EngineError::HoldSettled {
                hold: HoldId(7),
                order: OrderId(9)
            })
        );
        assert_eq!(
            decide_pay(&hold(HoldStatus::Released, 9_000)),
            Err(EngineError::HoldReleased { hold: HoldId(7) })
        );
    }

    fn late() -> LatePayView {
        LatePayView {
            hold: HoldId(7),
            quantity: 2,
            amount: fen(300),
            paused: false,
            now: NOW,
            ends_at: Timestamp(6_000),
            per_user_limit: 3,
            shopper: Some(LatePayShopper {
                held: 0,
                bought: 1,
                available: fen(300),
            }),
        }
    }

    #[test]
    fn late_payment_debits_the_holds_amount() {
        assert_eq!(
            decide_late_pay(&late()),
            Ok(LatePayment {
                units: 2,
                debit: fen(300),
                new_buyer: false
            })
        );
    }

    #[test]
    fn late_payment_refusals_in_order() {
        let expired = Err(EngineError::HoldExpired { hold: HoldId(7) });
        let short = Some(LatePayShopper {
            held: 0,
            bought: 0,
            available: fen(299),
        });
        let cases = [
            (
                LatePayView {
                    paused: true,
                    shopper: None,
                    ..late()
                },
                expired.clone(),
            ),
            (
                LatePayView {
                    ends_at: NOW,
                    shopper: None,
                    ..late()
                },
                expired.clone(),
            ),
            (
                LatePayView {
                    shopper: None,
                    ..late()
                },
                Err(EngineError::NotFound(Entity::Shopper)),
            ),
            (
                LatePayView {
                    shopper: Some(LatePayShopper {
                        held: 1,
                        bought: 1,
                        available: fen(300),
                    }),
                    ..late()
                },
                expired.clone(),
            ),
            (
                LatePayView {
                    shopper: Some(LatePayShopper {
                        held: u32::MAX,
                        bought: 1,
                        available: fen(300),
                    }),
                    ..late()
                },
                expired.clone(),
            ),
            (
                LatePayView {
                    shopper: short,
                    ..late()
                },
                expired,
            ),
        ];
        for (view, expected) in cases {
            assert_eq!(decide_late_pay(&view), expected, "{view:?}");
        }
    }

    #[test]
    fn release_gives_back_an_active_hold_even_past_its_time() {
        let back = ReleaseEffects::Release(Release {
            units: 2,
            funds: fen(300),
            reason: ReleaseReason::Released,
        });
        assert_eq!(decide_release(&hold(HoldStatus::Active, 9_000)), Ok(back));
        assert_eq!(decide_release(&hold(HoldStatus::Active, 1)), Ok(back));
        for status in [HoldStatus::Released, HoldStatus::Expired] {
            assert_eq!(
                decide_release(&hold(status, 9_000)),
                Ok(ReleaseEffects::Unchanged)
            );
        }
    }

    #[test]
    fn release_refusals_in_order() {
        let settled = HoldStatus::Settled(OrderId(9));
        let foreign = HoldView {
            own: false,
            ..hold(settled, 9_000)
        };
        assert_eq!(
            decide_release(&foreign),
            Err(EngineError::Forbidden(Entity::Hold))
        );
        assert_eq!(
            decide_release(&hold(settled, 9_000)),
            Err(EngineError::HoldSettled {
                hold: HoldId(7),
                order: OrderId(9)
            })
        );
    }

    #[test]
    fn expiry_only_of_an_active_hold_past_its_time() {
        assert_eq!(
            decide_expire(&hold(HoldStatus::Active, 5_000)),
            ReleaseEffects::Release(Release {
                units: 2,
                funds: fen(300),
                reason: ReleaseReason::Expired,
            })
        );
        assert_eq!(
            decide_expire(&hold(HoldStatus::Active, 5_001)),
            ReleaseEffects::Unchanged
        );
        for status in [
            HoldStatus::Released,
            HoldStatus::Expired,
            HoldStatus::Settled(OrderId(9)),
        ] {
            assert_eq!(decide_expire(&hold(status, 1)), ReleaseEffects::Unchanged);
        }
    }
}
