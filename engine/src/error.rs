//! The engine's one error type. Business refusals (`SoldOut`,
//! `InsufficientFunds`, …) are plain variants, cheap to build and to match;
//! the gateway maps each variant to the contract's status and code in one
//! function. A refusal never leaves state changed.

use crate::ids::{HoldId, OrderId};

/// What kind of thing a [`EngineError::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Merchant,
    Shopper,
    Deal,
    Hold,
    Order,
    /// A deal's draw: a first-come deal has none.
    Draw,
}

impl Entity {
    pub fn name(self) -> &'static str {
        match self {
            Entity::Merchant => "merchant",
            Entity::Shopper => "shopper",
            Entity::Deal => "deal",
            Entity::Hold => "hold",
            Entity::Order => "order",
            Entity::Draw => "draw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("the deal is sold out")]
    SoldOut,
    #[error("the purchase limit of {limit} per shopper is reached")]
    PurchaseLimitReached { limit: u32 },
    #[error("the wallet's available balance is too low")]
    InsufficientFunds,
    #[error("the deal requires registration before it starts")]
    NotRegistered,
    #[error("the deal has not started yet")]
    NotStarted,
    #[error("the deal has ended")]
    DealEnded,
    #[error("the deal is paused by its merchant")]
    DealPaused,
    #[error("registration closed when the deal started")]
    RegistrationClosed,
    #[error("hold {hold} expired and could not be paid late")]
    HoldExpired { hold: HoldId },
    #[error("hold {hold} was released")]
    HoldReleased { hold: HoldId },
    #[error("hold {hold} is already paid by order {order}")]
    HoldSettled { hold: HoldId, order: OrderId },
    #[error("this order is already reviewed")]
    AlreadyReviewed,
    #[error("this idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error("{} not found", .0.name())]
    NotFound(Entity),
    #[error("not the owner of this {}", .0.name())]
    Forbidden(Entity),
    #[error("{field} {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// A named capacity bound is reached; the caller may retry later.
    #[error("the engine's {bound} bound is reached")]
    CapacityReached { bound: &'static str },
    /// Replay met an event that does not fit the state: the journal or
    /// snapshot is damaged.
    #[error("journal and state disagree: {reason}")]
    Inconsistent { reason: &'static str },
}
