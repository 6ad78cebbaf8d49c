//! A shopper's own changes that take no stock: crediting the wallet,
//! registering for a deal, reviewing and sharing an order (docs/api.md
//! "Endpoints", "Registrations"); and what a platform's user id (an
//! account's external id) may be.

use crate::clock::Timestamp;
use crate::error::{EngineError, Entity};
use crate::money::Money;

/// The longest external id, in bytes of UTF-8.
pub const EXTERNAL_ID_BYTES_MAX: usize = 255;

/// Checks a platform's user id (a token's `sub`, docs/api.md "External
/// ids"): 1 to [`EXTERNAL_ID_BYTES_MAX`] bytes of UTF-8 without a control
/// character (Unicode class Cc: U+0000–U+001F, U+007F–U+009F), since it is
/// stored as text and shown in answers. Anything else is kept as given
/// (`auth0|123`, `google-oauth2|…`: case and spaces count). Refusal:
/// `Invalid { field: "external_id", .. }`.
pub fn check_external_id(external_id: &str) -> Result<(), EngineError> {
    if external_id.is_empty() || external_id.len() > EXTERNAL_ID_BYTES_MAX {
        return Err(EngineError::Invalid {
            field: "external_id",
            reason: "must be 1 to 255 bytes",
        });
    }
    if external_id.chars().any(char::is_control) {
        return Err(EngineError::Invalid {
            field: "external_id",
            reason: "must not contain control characters (U+0000 to U+001F, U+007F to U+009F)",
        });
    }
    Ok(())
}

/// What a credit reads of the shopper's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditAccount {
    /// The amount an earlier credit with this reference credited.
    pub previous: Option<Money>,
    /// Distinct references credited so far.
    pub references: usize,
    pub credited: Money,
    pub available: Money,
}

/// Everything [`decide_credit`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditView {
    /// Positive (checked before: `check_credit`).
    pub amount: Money,
    /// `EngineConfig::credits_per_shopper_max`.
    pub references_max: usize,
    /// `None`: no such shopper.
    pub account: Option<CreditAccount>,
}

/// What a credit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditEffects {
    /// The reference credited this amount already: nothing changes.
    Replay,
    /// Add `amount`: the wallet's `credited` and `available` become these,
    /// and the reference is remembered.
    Credit {
        amount: Money,
        credited: Money,
        available: Money,
    },
}

/// Decides a credit to a wallet, once per reference (docs/api.md
/// "Idempotency"; ARCHITECTURE.md "Architecture invariants": `credited =
/// available + held + spent`, money checked against `MONEY_MAX`).
/// Refusals, in order: no such shopper: `NotFound(Shopper)`; the reference
/// credited another amount: `IdempotencyKeyReused`; `references_max`
/// references already: `CapacityReached`; `credited` or `available` would
/// pass [`MONEY_MAX`](crate::MONEY_MAX): `Invalid` (`amount` "would
/// overflow the wallet").
pub fn decide_credit(view: &CreditView) -> Result<CreditEffects, EngineError> {
    let account = view.account.ok_or(EngineError::NotFound(Entity::Shopper))?;
    if let Some(previous) = account.previous {
        return if previous == view.amount {
            Ok(CreditEffects::Replay)
        } else {
            Err(EngineError::IdempotencyKeyReused)
        };
    }
    if account.references >= view.references_max {
        return Err(EngineError::CapacityReached {
            bound: "credits_per_shopper_max",
        });
    }
    let too_large = || EngineError::Invalid {
        field: "amount",
        reason: "would overflow the wallet",
    };
    let credited = account
        .credited
        .checked_add(view.amount)
        .ok_or_else(too_large)?;
    let available = account
        .available
        .checked_add(view.amount)
        .ok_or_else(too_large)?;
    Ok(CreditEffects::Credit {
        amount: view.amount,
        credited,
        available,
    })
}

/// What a registration reads of the shopper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterShopper {
    pub registered: bool,
    /// The shopper already tracks this deal, or fewer deals than
    /// `deals_per_shopper_max`.
    pub may_touch: bool,
}

/// Everything [`decide_register`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterView {
    pub now: Timestamp,
    pub starts_at: Timestamp,
    /// `None`: no such shopper.
    pub shopper: Option<RegisterShopper>,
}

/// What a registration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterEffects {
    /// Registered already: nothing changes (`200`).
    Already,
    /// Mark the shopper registered and count a registration (`201`).
    Register,
}

/// Decides a registration (docs/api.md "Registrations": before the deal
/// starts; again is not an error). Refusals, in order: no such shopper:
/// `NotFound(Shopper)`; (registered already is [`RegisterEffects::Already`],
/// even after the start); `now >= starts_at`: `RegistrationClosed`; the
/// shopper tracks `deals_per_shopper_max` other deals: `CapacityReached`.
/// A raffle's list then takes the registrant under its own lock, which may
/// still refuse (closed by the draw, or full).
pub fn decide_register(view: &RegisterView) -> Result<RegisterEffects, EngineError> {
    let shopper = view.shopper.ok_or(EngineError::NotFound(Entity::Shopper))?;
    if shopper.registered {
        return Ok(RegisterEffects::Already);
    }
    if view.now >= view.starts_at {
        return Err(EngineError::RegistrationClosed);
    }
    if !shopper.may_touch {
        return Err(EngineError::CapacityReached {
            bound: "deals_per_shopper_max",
        });
    }
    Ok(RegisterEffects::Register)
}

/// Everything [`decide_review`] reads of a found, settled order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewView {
    /// The caller is the order's shopper.
    pub own: bool,
    /// The order has its review already.
    pub reviewed: bool,
    /// Description, delivery, service: each 1 to 5 (checked before:
    /// `check_review`).
    pub scores: [u8; 3],
}

/// What a review does: store it, and add one review and `score_sum` (the
/// sum of its three scores) to the merchant's rating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewEffects {
    pub score_sum: u64,
}

/// Decides a review (docs/api.md "Endpoints": the order's shopper, once).
/// Refusals, in order: not the caller's order: `Forbidden(Order)`;
/// reviewed already: `AlreadyReviewed`.
pub fn decide_review(view: &ReviewView) -> Result<ReviewEffects, EngineError> {
    if !view.own {
        return Err(EngineError::Forbidden(Entity::Order));
    }
    if view.reviewed {
        return Err(EngineError::AlreadyReviewed);
    }
    Ok(ReviewEffects {
        score_sum: view.scores.iter().map(|&score| u64::from(score)).sum(),
    })
}

/// Everything [`decide_share`] reads of a found, settled order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareView {
    /// The caller is the order's shopper.
    pub own: bool,
    /// The order was shared already.
    pub shared: bool,
}

/// What a share does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareEffects {
    /// Shared already: nothing changes (`200`).
    Already,
    /// Mark the order shared and count one share on its deal (`201`).
    Count,
}

/// Decides a share (docs/api.md "Endpoints": counts once toward the
/// deal's popularity). Refusal: not the caller's order: `Forbidden(Order)`.
pub fn decide_share(view: &ShareView) -> Result<ShareEffects, EngineError> {
    if !view.own {
        return Err(EngineError::Forbidden(Entity::Order));
    }
    Ok(if view.shared {
        ShareEffects::Already
    } else {
        ShareEffects::Count
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fen(fen: i64) -> Money {
        Money::from_fen(fen).unwrap()
    }

    fn credit() -> CreditView {
        CreditView {
            amount: fen(500),
            references_max: 2,
            account: Some(CreditAccount {
                previous: None,
                references: 1,
                credited: fen(1_000),
                available: fen(400),
            }),
        }
    }

    #[test]
    fn external_ids_are_1_to_255_bytes_without_control_characters() {
        let length = Err(EngineError::Invalid {
            field: "external_id",
            reason: "must be 1 to 255 bytes",
        });
        let control = Err(EngineError::Invalid {
            field: "external_id",
            reason: "must not contain control characters (U+0000 to U+001F, U+007F to U+009F)",
        });
        for accepted in ["a", "auth0|123", "google-oauth2|1098", "  spaced  ", "用户"] {
            assert_eq!(check_external_id(accepted), Ok(()), "{accepted:?}");
        }
        assert_eq!(check_external_id(&"x".repeat(255)), Ok(()));
        // 85 three-byte characters are 255 bytes; one more byte is too many.
        assert_eq!(check_external_id(&"用".repeat(85)), Ok(()));
        assert_eq!(check_external_id(&format!("{}x", "用".repeat(85))), length);
        assert_eq!(check_external_id(""), length);
        assert_eq!(check_external_id(&"x".repeat(256)), length);
        for refused in ["a\0b", "tab\there", "line\n", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(check_external_id(refused), control, "{refused:?}");
        }
    }

    #[test]
    fn a_credit_adds_to_credited_and_available() {
        assert_eq!(
            decide_credit(&credit()),
            Ok(CreditEffects::Credit {
                amount: fen(500),
                credited: fen(1_500),
                available: fen(900),
            })
        );
    }

    #[test]
    fn credit_replay_and_refusals_in_order() {
        let account = credit().account.unwrap();
        let with = |account: CreditAccount| CreditView {
            account: Some(account),
            ..credit()
        };
        let cases = [
            (
                CreditView {
                    account: None,
                    ..credit()
                },
                Err(EngineError::NotFound(Entity::Shopper)),
            ),
            (
                with(CreditAccount {
                    previous: Some(fen(500)),
                    references: 2,
                    credited: crate::MONEY_MAX,
                    ..account
                }),
                Ok(CreditEffects::Replay),
            ),
            (
                with(CreditAccount {
                    previous: Some(fen(501)),
                    references: 2,
                    ..account
                }),
                Err(EngineError::IdempotencyKeyReused),
            ),
            (
                with(CreditAccount {
                    references: 2,
                    credited: crate::MONEY_MAX,
                    ..account
                }),
                Err(EngineError::CapacityReached {
                    bound: "credits_per_shopper_max",
                }),
            ),
            (
                with(CreditAccount {
                    credited: crate::MONEY_MAX,
                    ..account
                }),
                Err(EngineError::Invalid {
                    field: "amount",
                    reason: "would overflow the wallet",
                }),
            ),
        ];
        for (view, expected) in cases {
            assert_eq!(decide_credit(&view), expected, "{view:?}");
        }
    }

    fn register(registered: bool, may_touch: bool, now: i64) -> RegisterView {
        RegisterView {
            now: Timestamp(now),
            starts_at: Timestamp(100),
            shopper: Some(RegisterShopper {
                registered,
                may_touch,
            }),
        }
    }

    #[test]
    fn registration_before_the_start_once() {
        assert_eq!(
            decide_register(&register(false, true, 99)),
            Ok(RegisterEffects::Register)
        );
        assert_eq!(
            decide_register(&register(true, false, 100)),
            Ok(RegisterEffects::Already)
        );
    }

    #[test]
    fn registration_refusals_in_order() {
        let gone = RegisterView {
            shopper: None,
            ..register(false, false, 100)
        };
        assert_eq!(
            decide_register(&gone),
            Err(EngineError::NotFound(Entity::Shopper))
        );
        assert_eq!(
            decide_register(&register(false, false, 100)),
            Err(EngineError::RegistrationClosed)
        );
        assert_eq!(
            decide_register(&register(false, false, 99)),
            Err(EngineError::CapacityReached {
                bound: "deals_per_shopper_max"
            })
        );
    }

    #[test]
    fn review_once_by_its_shopper() {
        let view = ReviewView {
            own: true,
            reviewed: false,
            scores: [5, 4, 3],
        };
        assert_eq!(decide_review(&view), Ok(ReviewEffects { score_sum: 12 }));
        let foreign = ReviewView {
            own: false,
            reviewed: true,
            ..view
        };
        assert_eq!(
            decide_review(&foreign),
            Err(EngineError::Forbidden(Entity::Order))
        );
        let again = ReviewView {
            reviewed: true,
            ..view
        };
        assert_eq!(decide_review(&again), Err(EngineError::AlreadyReviewed));
    }

    #[test]
    fn share_counts_once_by_its_shopper() {
        let view = |own, shared| ShareView { own, shared };
        assert_eq!(decide_share(&view(true, false)), Ok(ShareEffects::Count));
        assert_eq!(decide_share(&view(true, true)), Ok(ShareEffects::Already));
        assert_eq!(
            decide_share(&view(false, false)),
            Err(EngineError::Forbidden(Entity::Order))
        );
    }
}
