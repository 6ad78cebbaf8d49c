//! Every business rule of the engine as a pure decision: for each one a
//! small `…View` of the plain values it reads, a `decide_…` function, and
//! the effects it returns. A decision reads nothing else (no lock, no clock,
//! no atomics), changes nothing and never panics: its arithmetic is
//! checked, and an overflow is a refusal, never a wrap. [`crate::Engine`]
//! builds each view from its state under the lock it already holds, calls
//! the decision, and applies the effects apart from it
//! (`engine/src/engine/effects.rs`).
//!
//! Refusals are the [`EngineError`](crate::EngineError) variants the
//! contract names (`docs/api.md` "Errors"), checked in a fixed order that
//! is part of the contract: the same request gets the same error code from
//! every store. The Redis steps (`redis/flashsale.lua`) read the same
//! fields and mirror these decisions, each in a local `decide_<rule>` of
//! the same name (ARCHITECTURE.md "One buy in Redis mode").
//!
//! What is not decided here, and why, is said where the engine applies it:
//! taking stock (`remaining` is a lock-free atomic shared by every shard,
//! taken by compare-and-swap after the decision, `SoldOut` when it lost the
//! race), the engine's container bounds (`CapacityReached` of
//! [`EngineConfig`](crate::EngineConfig), checked between decision and
//! stock), lookups by id (`NotFound`), and a raffle's registrant list (its
//! own lock).
//!
//! - [`reserve`](mod@reserve): buy and hold, the deal's window, a raffle's
//!   offer to one rank.
//! - [`holds`](mod@holds): paying, releasing and expiring a hold.
//! - [`account`](mod@account): crediting a wallet, registering, reviewing
//!   and sharing an order; what an external id (a platform's user id) may
//!   be.
//! - [`deal`](mod@deal): a merchant's change to its deal.
//! - [`tokens`](mod@tokens): which tokens a revocation refuses.

pub mod account;
pub mod deal;
pub mod holds;
pub mod reserve;
pub mod tokens;

pub use account::{
    CreditAccount, CreditEffects, CreditView, EXTERNAL_ID_BYTES_MAX, RegisterEffects,
    RegisterShopper, RegisterView, ReviewEffects, ReviewView, ShareEffects, ShareView,
    check_external_id, decide_credit, decide_register, decide_review, decide_share,
};
pub use deal::{DealChangeEffects, DealChangeView, DealTerms, decide_deal_change};
pub use holds::{
    HoldView, LatePayShopper, LatePayView, LatePayment, PayStep, Release, ReleaseEffects,
    decide_expire, decide_late_pay, decide_pay, decide_release, is_due,
};
pub use reserve::{
    DealWindow, OfferEffects, OfferView, RecordView, Reservation, ReserveEffects, ReserveKind,
    ReserveView, ShopperView, counts_new_buyer, decide_offer, decide_open, decide_reserve,
    hold_expiry, raffle_refusal, within_limit,
};
pub use tokens::{revocation_not_before, token_in_force};
