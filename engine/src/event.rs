//! Events: the facts the engine emits, one per state change, in the order
//! the state changed. The journal makes them durable, the order sink copies
//! the settled ones to Postgres, and [`crate::Engine::apply`] rebuilds state
//! from them on recovery.
//!
//! The engine hands each event to an [`EventSink`] while it still holds the
//! lock that serialises the change, and, for changes that give stock back
//! (release, expiry, restock), before the stock is visible to other
//! requests. So in the sink's order, an event that takes stock never comes
//! before the event that made that stock available, and replay never runs a
//! counter below zero.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::draw::{Digest, DrawSeed};
use crate::ids::{DealId, HoldId, MerchantId, OrderId, ShopperId};
use crate::money::Money;
use crate::records::{DealSpec, Hold, Order, Review};
use crate::tokens::Account;

/// A 128-bit digest of a client-chosen string (an idempotency key, a credit
/// reference). The engine keeps digests, not strings: fixed size, no
/// allocation on the buy path.
pub type Fingerprint = u128;

pub fn fingerprint(text: &str) -> Fingerprint {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// Why a hold's stock and funds went back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// The shopper released it.
    Released,
    /// Its `hold_seconds` ran out.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    MerchantCreated {
        merchant: MerchantId,
        name: String,
        at: Timestamp,
    },
    ShopperCreated {
        shopper: ShopperId,
        name: String,
        at: Timestamp,
    },
    WalletCredited {
        shopper: ShopperId,
        amount: Money,
        reference: Fingerprint,
        at: Timestamp,
    },
    DealCreated {
        deal: DealId,
        merchant: MerchantId,
        spec: DealSpec,
        at: Timestamp,
    },
    StockAdded {
        deal: DealId,
        quantity: u64,
        at: Timestamp,
    },
    DealChanged {
        deal: DealId,
        ends_at: Timestamp,
        paused: bool,
        at: Timestamp,
    },
    Registered {
        deal: DealId,
        shopper: ShopperId,
        at: Timestamp,
    },
    HoldCreated {
        hold: Hold,
        key: Fingerprint,
    },
    HoldReleased {
        hold: HoldId,
        shopper: ShopperId,
        reason: ReleaseReason,
        at: Timestamp,
    },
    /// An order settled: a one-tap buy (`key` is its idempotency key) or a
    /// hold's payment (`order.hold` names it, `key` is `None`).
    OrderSettled {
        order: Order,
        key: Option<Fingerprint>,
    },
    Reviewed {
        review: Review,
    },
    Shared {
        order: OrderId,
        deal: DealId,
        at: Timestamp,
    },
    /// A raffle's draw as journal format 2 recorded it, without what the
    /// draw revealed: replayed like [`Event::DrawRun`], never emitted. It
    /// keeps its place in the enum so format-2 records decode unchanged.
    DrawRunFormat2 {
        deal: DealId,
        at: Timestamp,
    },
    /// The next place of a raffle's ranking got this hold.
    DrawOffered {
        hold: Hold,
    },
    /// The next place of a raffle's ranking was passed over: its wallet
    /// could not cover the hold.
    DrawPassedOver {
        deal: DealId,
        shopper: ShopperId,
        at: Timestamp,
    },
    /// A raffle's draw ran: its registrant list closed (every `Registered`
    /// of the deal comes before this) and was ranked from the seed, which
    /// is public from here on. Carries what the draw revealed, so a reader
    /// of the journal (the order sink) needs no earlier event: the seed,
    /// the number of registrants ranked and the published registrant set's
    /// hash ([`crate::draw::registrants_hash`]). Journal format 3 appended
    /// it last, so every format-2 record decodes as before.
    DrawRun {
        deal: DealId,
        at: Timestamp,
        seed: DrawSeed,
        registrants: u64,
        registrants_hash: Digest,
    },
    /// A merchant was made for the platform's user id `external_id`
    /// ([`crate::Engine::link_merchant`]): [`Event::MerchantCreated`] and
    /// the link in one fact. Journal format 4 appended it.
    MerchantLinked {
        merchant: MerchantId,
        external_id: String,
        name: String,
        at: Timestamp,
    },
    /// A shopper was made for the platform's user id `external_id`
    /// ([`crate::Engine::link_shopper`]): [`Event::ShopperCreated`] and the
    /// link in one fact. Journal format 4 appended it.
    ShopperLinked {
        shopper: ShopperId,
        external_id: String,
        name: String,
        at: Timestamp,
    },
    /// Every token of `account` issued before `not_before` is revoked
    /// (`crate::rules::tokens`): the time in force after the revocation
    /// decided `at`. Journal format 4 appended it last, so every format-3
    /// record decodes as before.
    TokensRevoked {
        account: Account,
        not_before: Timestamp,
        at: Timestamp,
    },
}

/// Where the engine sends its events. Called with a shard lock held: an
/// implementation must be quick, must not block, and must not call back
/// into the engine.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Drops every event: an engine with no journal (benchmarks, tests).
#[derive(Debug, Default)]
pub struct DiscardEvents;

impl EventSink for DiscardEvents {
    fn emit(&self, _event: Event) {}
}

/// Keeps every event in memory, in order: for tests of replay.
#[derive(Debug, Default)]
pub struct RecordEvents {
    events: parking_lot::Mutex<Vec<Event>>,
}

impl RecordEvents {
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl EventSink for RecordEvents {
    fn emit(&self, event: Event) {
        self.events.lock().push(event);
    }
}
