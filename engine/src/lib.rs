//! # flashsale-engine
//!
//! The flash-sale domain and its invariants: deals and their stock, shoppers
//! and their wallets, registrations, holds, settled orders, per-user limits
//! and idempotency records. Pure and synchronous: no tokio, no sockets, no
//! SQL, no files. Time comes from an injected [`Clock`]; every state change
//! is handed to an [`EventSink`] as an [`Event`] (the journal's input).
//!
//! ## Layout
//! - [`rules`]: every business rule as a pure decision over the plain
//!   values it reads (`decide_reserve`, `decide_pay`, `decide_credit`, …),
//!   returning the effects to apply or the refusal; the engine calls them,
//!   and the Redis steps mirror them.
//! - [`engine`]: [`Engine`], its state and sizes, merchants, shoppers,
//!   wallets, deals and registrations; beside it (private) `reserve` (buy
//!   and hold), `holds` (pay, release, expiry), `orders` (order reads,
//!   reviews, shares), `validate` (a request's own input, re-exported from
//!   [`engine`]), `tokens` (revoking an account's tokens) and `effects`
//!   (the state changes, shared with replay).
//! - `deal` (private): the lock-free deal table, stock
//!   counters and sold-out flag.
//! - `shard` (private): per-shopper state behind one lock.
//! - [`draw`]: raffle deals: the ranking rule, the draw, the waitlist.
//! - [`replay`]: rebuilding state from a [`Snapshot`] and events.
//! - [`tokens`]: each account's token not-before time
//!   ([`TokenRevocations`]).
//! - [`event`], [`records`], [`money`], [`ids`], [`clock`], [`error`]: the
//!   vocabulary.
//!
//! ## Invariants (checked by [`Engine::check_invariants`] and the tests)
//! - every deal: `total = remaining + held + sold`, all ≥ 0;
//! - every wallet: `credited = available + held + spent`, and `spent` is
//!   the sum of the shopper's orders;
//! - no shopper holds or owns more of a deal than its `per_user_limit`;
//! - one idempotency key yields at most one order or hold.

pub mod clock;
mod deal;
pub mod draw;
pub mod engine;
pub mod error;
pub mod event;
pub mod ids;
pub mod money;
pub mod records;
pub mod replay;
pub mod rules;
mod shard;
pub mod tokens;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use draw::{
    DRAW_OFFERS_PER_STEP, Digest, DrawRecord, DrawResult, DrawSeed, DrawStanding, OfferedRank,
    Ranker, Ranking, registrants_hash,
};
pub use engine::{
    Answer, DealChange, Engine, EngineConfig, NewDeal, OrderCursor, OrderPage, check_credit,
    check_name, check_reservation, check_review, validate_deal,
};
pub use error::{EngineError, Entity};
pub use event::{
    DiscardEvents, Event, EventSink, Fingerprint, RecordEvents, ReleaseReason, fingerprint,
};
pub use ids::{DealId, HoldId, MerchantId, OrderId, ShopperId};
pub use money::{MONEY_ACCEPTS, MONEY_MAX, Money};
pub use records::{
    Allocation, DealSpec, DealStatus, DealView, Hold, HoldStatus, Merchant, Order, RaffleView,
    Rating, Review, Shopper, StockCounts, Wallet,
};
pub use replay::Snapshot;
pub use rules::{EXTERNAL_ID_BYTES_MAX, check_external_id};
pub use shard::IDEMPOTENCY_RETENTION_MILLIS;
pub use tokens::{Account, TOKEN_REVOCATIONS_MAX, TokenRevocations};
