//! The domain's records as the engine's callers see them: a deal's terms,
//! holds, orders and wallets. Plain values, cloned out of the engine.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::draw::{Digest, DrawSeed};
use crate::ids::{DealId, HoldId, MerchantId, OrderId, ShopperId};
use crate::money::Money;

/// What a merchant posts: the terms of a deal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealSpec {
    pub title: String,
    pub price: Money,
    pub stock: u64,
    pub per_user_limit: u32,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub requires_registration: bool,
    pub hold_seconds: u32,
    /// Who gets the stock: first come, or a raffle with its secret seed.
    pub allocation: Allocation,
}

/// How a deal's stock goes to shoppers: `first_come` (buys and
/// holds, first come first served) or `raffle` (registered shoppers are
/// ranked by the draw at `starts_at`, the first ranks get holds; see
/// [`crate::draw`]). The raffle carries its seed, chosen by the gateway from
/// the OS RNG: the engine draws no randomness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Allocation {
    #[default]
    FirstCome,
    Raffle(DrawSeed),
}

impl Allocation {
    /// The API's name of the allocation: `first_come` or `raffle`.
    pub fn name(self) -> &'static str {
        match self {
            Allocation::FirstCome => "first_come",
            Allocation::Raffle(_) => "raffle",
        }
    }
}

/// What the public sees of a raffle on its deal: the seed's commitment
/// (SHA-256 of the seed) from creation on, the seed itself once drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaffleView {
    pub commitment: Digest,
    /// `Some` once the draw has run (at or after `starts_at`).
    pub seed: Option<DrawSeed>,
}

/// A deal's state as the clock and its counters say now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DealStatus {
    Scheduled,
    Live,
    SoldOut,
    Ended,
    Paused,
}

impl DealStatus {
    /// A deal's status at `now`: paused first, then ended, scheduled, sold
    /// out (nothing remaining), live.
    pub fn at(
        now: Timestamp,
        paused: bool,
        starts_at: Timestamp,
        ends_at: Timestamp,
        counts: &StockCounts,
    ) -> DealStatus {
        if paused {
            DealStatus::Paused
        } else if now >= ends_at {
            DealStatus::Ended
        } else if now < starts_at {
            DealStatus::Scheduled
        } else if counts.remaining == 0 {
            DealStatus::SoldOut
        } else {
            DealStatus::Live
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DealStatus::Scheduled => "scheduled",
            DealStatus::Live => "live",
            DealStatus::SoldOut => "sold_out",
            DealStatus::Ended => "ended",
            DealStatus::Paused => "paused",
        }
    }
}

/// A deal with its live numbers, read without a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DealView {
    pub id: DealId,
    pub merchant: MerchantId,
    pub title: String,
    pub price: Money,
    pub per_user_limit: u32,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub requires_registration: bool,
    pub hold_seconds: u32,
    /// `Some` for a raffle deal: its commitment, and its seed once drawn.
    pub raffle: Option<RaffleView>,
    pub created_at: Timestamp,
    pub paused: bool,
    pub counts: StockCounts,
    pub registrations: u64,
    pub buyers: u64,
    /// Orders of this deal their shoppers shared.
    pub shares: u64,
    pub status: DealStatus,
}

impl DealView {
    /// How much the feed talks about a deal: buyers + registrations + shares.
    pub fn popularity(&self) -> u64 {
        self.buyers
            .saturating_add(self.registrations)
            .saturating_add(self.shares)
    }
}

/// A deal's stock: `total = remaining + held + sold`, where `total` is the
/// initial stock plus every restock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCounts {
    pub total: u64,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Active,
    Settled(OrderId),
    Released,
    Expired,
}

/// Stock and funds reserved for one shopper until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: HoldId,
    pub deal: DealId,
    pub shopper: ShopperId,
    pub quantity: u32,
    pub amount: Money,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub status: HoldStatus,
}

/// A settled, paid order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub deal: DealId,
    pub shopper: ShopperId,
    pub quantity: u32,
    pub unit_price: Money,
    pub amount: Money,
    /// Paid after its hold had expired.
    pub late: bool,
    /// The hold it settled, if any.
    pub hold: Option<HoldId>,
    pub created_at: Timestamp,
}

/// A shopper's wallet: `credited = available + held + spent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    pub credited: Money,
    pub available: Money,
    pub held: Money,
    pub spent: Money,
}

impl Wallet {
    /// The conservation rule, checked.
    pub fn is_balanced(&self) -> bool {
        self.available
            .checked_add(self.held)
            .and_then(|sum| sum.checked_add(self.spent))
            == Some(self.credited)
    }
}

/// A merchant's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    pub id: MerchantId,
    pub name: String,
    pub created_at: Timestamp,
    /// The platform's user id this merchant was made for
    /// ([`crate::Engine::link_merchant`]); `None` for a merchant the admin
    /// made. Not part of the record's own encoding: a snapshot carries the
    /// links apart, after everything else (journal format 4).
    #[serde(skip)]
    pub external_id: Option<String>,
}

/// A shopper's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shopper {
    pub id: ShopperId,
    pub name: String,
    pub created_at: Timestamp,
    /// The platform's user id this shopper was made for
    /// ([`crate::Engine::link_shopper`]); `None` for a shopper made by
    /// signup or in bulk. Not part of the record's own encoding: a snapshot
    /// carries the links apart, after everything else (journal format 4).
    #[serde(skip)]
    pub external_id: Option<String>,
}

/// A merchant's rating: every review adds its three scores (1 to 5 each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rating {
    pub reviews: u64,
    pub score_sum: u64,
}

impl Rating {
    /// The average score out of 5 in hundredths (`425` is 4.25), or `None`
    /// before the first review. Integer arithmetic, rounded half up.
    pub fn average_hundredths(&self) -> Option<u64> {
        let scores = self.reviews.checked_mul(3).filter(|&scores| scores > 0)?;
        Some((self.score_sum * 100 + scores / 2) / scores)
    }
}

/// A shopper's review of a settled order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub order: OrderId,
    pub deal: DealId,
    pub merchant: MerchantId,
    pub shopper: ShopperId,
    /// As described, delivery, service: each 1 to 5.
    pub description: u8,
    pub delivery: u8,
    pub service: u8,
    /// Stored as given; whoever shows it escapes it.
    pub text: String,
    pub created_at: Timestamp,
}

impl Review {
    pub(crate) fn score_sum(&self) -> u64 {
        u64::from(self.description) + u64::from(self.delivery) + u64::from(self.service)
    }
}
