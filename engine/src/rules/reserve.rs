//! Reserving stock: a one-tap buy and a hold (`POST /v1/deals/{id}/orders`
//! and `…/holds`, docs/api.md), the deal's sale window they share, and a
//! raffle's offer to one rank of its draw (docs/api.md "Raffles").

use crate::clock::Timestamp;
use crate::error::{EngineError, Entity};
use crate::money::Money;

/// A deal's sale window as read at one instant: what [`decide_open`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DealWindow {
    /// The deal's sold-out flag (nothing `remaining`, as last seen).
    pub sold_out: bool,
    /// The engine's clock, ms since the epoch.
    pub now: Timestamp,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// Paused by its merchant.
    pub paused: bool,
}

/// Whether a deal sells now, whoever asks: `Ok(())`, or its refusal, in
/// this order: `SoldOut`, `NotStarted` (`now < starts_at`), `DealEnded`
/// (`now >= ends_at`), `DealPaused`. The statuses of docs/api.md
/// "Endpoints" (a deal is `live` between `starts_at` and `ends_at`); the
/// same order as the Lua's `refusal`.
#[inline]
pub fn decide_open(window: &DealWindow) -> Result<(), EngineError> {
    if window.sold_out {
        Err(EngineError::SoldOut)
    } else if window.now < window.starts_at {
        Err(EngineError::NotStarted)
    } else if window.now >= window.ends_at {
        Err(EngineError::DealEnded)
    } else if window.paused {
        Err(EngineError::DealPaused)
    } else {
        Ok(())
    }
}

/// The refusal of a buy or hold on a raffle deal: `Invalid` naming
/// `allocation` (its units go to the draw's ranks, docs/api.md "Raffles").
pub fn raffle_refusal() -> EngineError {
    EngineError::Invalid {
        field: "allocation",
        reason: "is raffle: units go to the draw's ranks as holds, paid with POST /v1/holds/{id}/payment",
    }
}

/// Whether `owned` units (held + bought) and `quantity` more stay within
/// `limit` (ARCHITECTURE.md "Architecture invariants": no shopper holds or
/// owns more of a deal than its `per_user_limit`). `None` when the sum
/// overflows a `u32`.
#[inline]
pub fn within_limit(owned: u32, quantity: u32, limit: u32) -> Option<bool> {
    owned.checked_add(quantity).map(|owned| owned <= limit)
}

/// Whether settling an order makes its shopper a new buyer of the deal
/// (counted once, on the shopper's first settled order of it): `bought`
/// is the shopper's settled units of the deal before this order.
#[inline]
pub fn counts_new_buyer(bought: u32) -> bool {
    bought == 0
}

/// When a hold made at `now` on a deal of `hold_seconds` expires: `now +
/// hold_seconds × 1000` ms, saturating at the clock's end (docs/api.md
/// "Endpoints": stock and funds reserved for the deal's `hold_seconds`).
#[inline]
pub fn hold_expiry(now: Timestamp, hold_seconds: u32) -> Timestamp {
    now.plus_seconds(hold_seconds)
}

/// A buy settles an order at once; a hold reserves until it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveKind {
    Buy,
    Hold,
}

/// The shopper's idempotency record under the request's key, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordView {
    /// No record: the key is new (or past retention).
    None,
    /// A record on this deal for the same kind and quantity.
    SameRequest,
    /// A record on this deal for another kind or quantity.
    OtherRequest,
    /// A record on another deal.
    OtherDeal,
}

/// What a buy or hold reads of its shopper, under the shopper's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShopperView {
    /// Registered for this deal.
    pub registered: bool,
    /// Units of this deal held (active holds) and bought (settled orders).
    pub held: u32,
    pub bought: u32,
    /// The shopper already tracks this deal, or tracks fewer deals than
    /// `deals_per_shopper_max`.
    pub may_touch: bool,
    /// The wallet's available balance.
    pub available: Money,
}

/// Everything [`decide_reserve`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveView {
    pub kind: ReserveKind,
    /// Units asked for (1 to 1000, checked before: `check_reservation`).
    pub quantity: u32,
    /// The deal is a raffle.
    pub raffle: bool,
    pub window: DealWindow,
    pub record: RecordView,
    pub requires_registration: bool,
    pub per_user_limit: u32,
    /// The deal's unit price.
    pub price: Money,
    /// How long a hold lasts, seconds.
    pub hold_seconds: u32,
    /// `None`: no such shopper.
    pub shopper: Option<ShopperView>,
}

/// A new reservation: take `units` from the deal's `remaining`, move
/// `debit` out of the wallet's available funds (to `spent` for a buy, to
/// `held` for a hold), and add `units` to the shopper's bought or held units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub kind: ReserveKind,
    pub units: u32,
    pub unit_price: Money,
    /// `unit_price × units`, fen.
    pub debit: Money,
    pub created_at: Timestamp,
    /// A hold's expiry ([`hold_expiry`]); `None` for a buy.
    pub expires_at: Option<Timestamp>,
    /// A buy that makes the shopper a new buyer of the deal
    /// ([`counts_new_buyer`]); always `false` for a hold.
    pub new_buyer: bool,
}

/// What a buy or hold does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveEffects {
    /// The key's earlier order or hold is the answer again; nothing changes
    /// (docs/api.md "Idempotency").
    Replay,
    Reserve(Reservation),
}

/// Decides a buy or hold (docs/api.md "Endpoints", "Idempotency",
/// "Errors"; ARCHITECTURE.md "The engine"). Checks, in this order:
/// 1. a raffle deal: [`raffle_refusal`];
/// 2. a record of this key on this deal: the same request is
///    [`ReserveEffects::Replay`], another is `IdempotencyKeyReused` (so a
///    retry gets its answer even once the deal is sold out or over);
/// 3. the window, [`decide_open`];
/// 4. a record of this key on another deal: `IdempotencyKeyReused`;
/// 5. no such shopper: `NotFound(Shopper)`;
/// 6. `requires_registration` and not registered: `NotRegistered`;
/// 7. held + bought + quantity over `per_user_limit`:
///    `PurchaseLimitReached`, or `Invalid` (`quantity` "is too large") when
///    the sum overflows;
/// 8. the shopper tracks `deals_per_shopper_max` other deals:
///    `CapacityReached`;
/// 9. `price × quantity` past [`MONEY_MAX`](crate::MONEY_MAX): `Invalid`
///    (`quantity` "makes the amount too large");
/// 10. available funds below that amount: `InsufficientFunds`.
///
/// Otherwise a [`Reservation`] of `quantity` units at `price` made at
/// `window.now`. The stock itself is taken when the effects are applied
/// (`SoldOut` if another shard took it first).
#[inline]
pub fn decide_reserve(view: &ReserveView) -> Result<ReserveEffects, EngineError> {
    if view.raffle {
        return Err(raffle_refusal());
    }
    match view.record {
        RecordView::SameRequest => return Ok(ReserveEffects::Replay),
        RecordView::OtherRequest => return Err(EngineError::IdempotencyKeyReused),
        RecordView::None | RecordView::OtherDeal => {}
    }
    decide_open(&view.window)?;
    if view.record == RecordView::OtherDeal {
        return Err(EngineError::IdempotencyKeyReused);
    }
    let shopper = view.shopper.ok_or(EngineError::NotFound(Entity::Shopper))?;
    if view.requires_registration && !shopper.registered {
        return Err(EngineError::NotRegistered);
    }
    let owned = shopper
        .held
        .checked_add(shopper.bought)
        .ok_or(invalid("quantity", "is too large"))?;
    if !within_limit(owned, view.quantity, view.per_user_limit)
        .ok_or(invalid("quantity", "is too large"))?
    {
        return Err(EngineError::PurchaseLimitReached {
            limit: view.per_user_limit,
        });
    }
    if !shopper.may_touch {
        return Err(EngineError::CapacityReached {
            bound: "deals_per_shopper_max",
        });
    }
    let debit = view
        .price
        .checked_mul(view.quantity)
        .ok_or(invalid("quantity", "makes the amount too large"))?;
    if shopper.available < debit {
        return Err(EngineError::InsufficientFunds);
    }
    let now = view.window.now;
    Ok(ReserveEffects::Reserve(Reservation {
        kind: view.kind,
        units: view.quantity,
        unit_price: view.price,
        debit,
        created_at: now,
        expires_at: match view.kind {
            ReserveKind::Buy => None,
            ReserveKind::Hold => Some(hold_expiry(now, view.hold_seconds)),
        },
        new_buyer: view.kind == ReserveKind::Buy && counts_new_buyer(shopper.bought),
    }))
}

/// What a raffle's walk reads of the next rank, the deal and its stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferView {
    pub per_user_limit: u32,
    /// The rank's shopper's units of the deal, held + bought.
    pub owned: u32,
    /// The deal's `remaining` units (above zero: the walk stops at zero).
    pub remaining: u64,
    pub price: Money,
    /// The rank's wallet's available balance.
    pub available: Money,
    pub now: Timestamp,
    pub hold_seconds: u32,
}

/// What one rank of a raffle is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferEffects {
    /// A hold of `units` for `debit` (`price × units`), expiring at
    /// `expires_at`.
    Hold {
        units: u32,
        debit: Money,
        expires_at: Timestamp,
    },
    /// Passed over: no room under the limit, or the wallet cannot cover
    /// the hold. The units go on down the ranking.
    PassOver,
}

/// Decides a raffle's offer to one rank (docs/api.md "Raffles";
/// ARCHITECTURE.md "The engine", `draw.rs`): a hold of
/// `min(per_user_limit − owned, remaining)` units for their price, or a
/// pass-over when that is no unit, its price overflows, or the wallet
/// cannot cover it. Never refuses.
pub fn decide_offer(view: &OfferView) -> OfferEffects {
    let room = view.per_user_limit.saturating_sub(view.owned);
    let units = u32::try_from(view.remaining).map_or(room, |left| left.min(room));
    match view.price.checked_mul(units) {
        Some(debit) if units > 0 && view.available >= debit => OfferEffects::Hold {
            units,
            debit,
            expires_at: hold_expiry(view.now, view.hold_seconds),
        },
        _ => OfferEffects::PassOver,
    }
}

fn invalid(field: &'static str, reason: &'static str) -> EngineError {
    EngineError::Invalid { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_000_000);

    fn fen(fen: i64) -> Money {
        Money::from_fen(fen).unwrap()
    }

    fn open() -> DealWindow {
        DealWindow {
            sold_out: false,
            now: NOW,
            starts_at: Timestamp(NOW.0 - 1),
            ends_at: Timestamp(NOW.0 + 1),
            paused: false,
        }
    }

    fn shopper() -> ShopperView {
        ShopperView {
            registered: true,
            held: 1,
            bought: 0,
            may_touch: true,
            available: fen(1_000),
        }
    }

    fn view(kind: ReserveKind) -> ReserveView {
        ReserveView {
            kind,
            quantity: 2,
            raffle: false,
            window: open(),
            record: RecordView::None,
            requires_registration: true,
            per_user_limit: 3,
            price: fen(250),
            hold_seconds: 120,
            shopper: Some(shopper()),
        }
    }

    #[test]
    fn open_refuses_in_order() {
        assert_eq!(decide_open(&open()), Ok(()));
        let all = DealWindow {
            sold_out: true,
            now: NOW,
            starts_at: Timestamp(NOW.0 + 1),
            ends_at: NOW,
            paused: true,
        };
        assert_eq!(decide_open(&all), Err(EngineError::SoldOut));
        let window = DealWindow {
            sold_out: false,
            ..all
        };
        assert_eq!(decide_open(&window), Err(EngineError::NotStarted));
        let window = DealWindow {
            starts_at: NOW,
            ..window
        };
        assert_eq!(decide_open(&window), Err(EngineError::DealEnded));
        let window = DealWindow {
            ends_at: Timestamp(NOW.0 + 1),
            ..window
        };
        assert_eq!(decide_open(&window), Err(EngineError::DealPaused));
    }

    #[test]
    fn a_buy_takes_units_and_debits_their_price() {
        let expected = Reservation {
            kind: ReserveKind::Buy,
            units: 2,
            unit_price: fen(250),
            debit: fen(500),
            created_at: NOW,
            expires_at: None,
            new_buyer: true,
        };
        assert_eq!(
            decide_reserve(&view(ReserveKind::Buy)),
            Ok(ReserveEffects::Reserve(expected))
        );
        let mut again = view(ReserveKind::Buy);
        again.shopper = Some(ShopperView {
            held: 0,
            bought: 1,
            ..shopper()
        });
        assert_eq!(
            decide_reserve(&again),
            Ok(ReserveEffects::Reserve(Reservation {
                new_buyer: false,
                ..expected
            }))
        );
    }

    #[test]
    fn a_hold_expires_after_hold_seconds() {
        assert_eq!(
            decide_reserve(&view(ReserveKind::Hold)),
            Ok(ReserveEffects::Reserve(Reservation {
                kind: ReserveKind::Hold,
                units: 2,
                unit_price: fen(250),
                debit: fen(500),
                created_at: NOW,
                expires_at: Some(Timestamp(NOW.0 + 120_000)),
                new_buyer: false,
            }))
        );
    }

    #[test]
    fn each_refusal_in_its_order() {
        let base = view(ReserveKind::Buy);
        let cases: Vec<(ReserveView, Result<ReserveEffects, EngineError>)> = vec![
            (
                ReserveView {
                    raffle: true,
                    record: RecordView::SameRequest,
                    ..base
                },
                Err(raffle_refusal()),
            ),
            (
                ReserveView {
                    record: RecordView::SameRequest,
                    window: DealWindow {
                        sold_out: true,
                        ..open()
                    },
                    ..base
                },
                Ok(ReserveEffects::Replay),
            ),
            (
                ReserveView {
                    record: RecordView::OtherRequest,
                    window: DealWindow {
                        paused: true,
                        ..open()
                    },
                    ..base
                },
                Err(EngineError::IdempotencyKeyReused),
            ),
            (
                ReserveView {
                    record: RecordView::OtherDeal,
                    window: DealWindow {
                        paused: true,
                        ..open()
                    },
                    ..base
                },
                Err(EngineError::DealPaused),
            ),
            (
                ReserveView {
                    record: RecordView::OtherDeal,
                    shopper: None,
                    ..base
                },
                Err(EngineError::IdempotencyKeyReused),
            ),
            (
                ReserveView {
                    shopper: None,
                    ..base
                },
                Err(EngineError::NotFound(Entity::Shopper)),
            ),
            (
                ReserveView {
                    shopper: Some(ShopperView {
                        registered: false,
                        held: 3,
                        ..shopper()
                    }),
                    ..base
                },
                Err(EngineError::NotRegistered),
            ),
            (
                ReserveView {
                    shopper: Some(ShopperView {
                        held: 2,
                        may_touch: false,
                        ..shopper()
                    }),
                    ..base
                },
                Err(EngineError::PurchaseLimitReached { limit: 3 }),
            ),
            (
                ReserveView {
                    shopper: Some(ShopperView {
                        held: u32::MAX,
                        ..shopper()
                    }),
                    ..base
                },
                Err(invalid("quantity", "is too large")),
            ),
            (
                ReserveView {
                    shopper: Some(ShopperView {
                        may_touch: false,
                        available: Money::ZERO,
                        ..shopper()
                    }),
                    ..base
                },
                Err(EngineError::CapacityReached {
                    bound: "deals_per_shopper_max",
                }),
            ),
            (
                ReserveView {
                    price: crate::MONEY_MAX,
                    ..base
                },
                Err(invalid("quantity", "makes the amount too large")),
            ),
            (
                ReserveView {
                    shopper: Some(ShopperView {
                        available: fen(499),
                        ..shopper()
                    }),
                    ..base
                },
                Err(EngineError::InsufficientFunds),
            ),
        ];
        for (view, expected) in cases {
            assert_eq!(decide_reserve(&view), expected, "{view:?}");
        }
    }

    #[test]
    fn registration_is_read_only_when_required() {
        let view = ReserveView {
            requires_registration: false,
            shopper: Some(ShopperView {
                registered: false,
                ..shopper()
            }),
            ..view(ReserveKind::Buy)
        };
        assert!(matches!(
            decide_reserve(&view),
            Ok(ReserveEffects::Reserve(_))
        ));
    }

    fn offer_view() -> OfferView {
        OfferView {
            per_user_limit: 3,
            owned: 1,
            remaining: 10,
            price: fen(100),
            available: fen(200),
            now: NOW,
            hold_seconds: 60,
        }
    }

    #[test]
    fn an_offer_is_the_room_under_the_limit_or_what_remains() {
        assert_eq!(
            decide_offer(&offer_view()),
            OfferEffects::Hold {
                units: 2,
                debit: fen(200),
                expires_at: Timestamp(NOW.0 + 60_000),
            }
        );
        let view = OfferView {
            remaining: 1,
            ..offer_view()
        };
        assert_eq!(
            decide_offer(&view),
            OfferEffects::Hold {
                units: 1,
                debit: fen(100),
                expires_at: Timestamp(NOW.0 + 60_000),
            }
        );
    }

    #[test]
    fn an_offer_passes_over_a_short_wallet_or_a_full_limit() {
        for view in [
            OfferView {
                available: fen(199),
                ..offer_view()
            },
            OfferView {
                owned: 3,
                ..offer_view()
            },
            OfferView {
                price: crate::MONEY_MAX,
                available: crate::MONEY_MAX,
                ..offer_view()
            },
        ] {
            assert_eq!(decide_offer(&view), OfferEffects::PassOver, "{view:?}");
        }
    }
}
