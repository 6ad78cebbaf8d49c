//! A request's own input, checked before anything else is read: the
//! bounds of a deal's terms, names, texts, credits, reviews and the
//! quantity and key of a buy or hold (docs/api.md "Conventions" and
//! "Errors", `422 invalid`). Each check names the field it refuses.

use crate::clock::Timestamp;
use crate::error::EngineError;
use crate::money::Money;
use crate::records::{Allocation, DealSpec};

use super::NewDeal;

/// Upper bounds on what a deal may say; requests past them are `Invalid`.
pub const STOCK_MAX: u64 = 1_000_000_000;
pub const PER_USER_LIMIT_MAX: u32 = 1_000;
pub const HOLD_SECONDS_MAX: u32 = 24 * 60 * 60;
pub const TITLE_CHARS_MAX: usize = 200;
pub const NAME_CHARS_MAX: usize = 100;
pub const REVIEW_TEXT_CHARS_MAX: usize = 500;
/// Defaults for what a merchant may leave out of a deal.
pub const PER_USER_LIMIT_DEFAULT: u32 = 1;
pub const HOLD_SECONDS_DEFAULT: u32 = 120;
/// Shoppers one bulk call may create.
pub const BULK_SHOPPERS_MAX: u32 = 10_000;

pub(crate) fn invalid(field: &'static str, reason: &'static str) -> EngineError {
    EngineError::Invalid { field, reason }
}

/// Checks a buy's or hold's own input before anything else: the
/// idempotency key is 1 to 255 bytes, the quantity from 1 to
/// [`PER_USER_LIMIT_MAX`].
pub fn check_reservation(quantity: u32, key: &str) -> Result<(), EngineError> {
    if key.is_empty() || key.len() > 255 {
        return Err(invalid("idempotency_key", "must be 1 to 255 bytes"));
    }
    if quantity == 0 {
        return Err(invalid("quantity", "must be at least 1"));
    }
    if quantity > PER_USER_LIMIT_MAX {
        return Err(invalid("quantity", "must be at most 1000"));
    }
    Ok(())
}

/// Checks a credit's own input: a positive amount, a reference of 1 to
/// 255 bytes of one-line text (`check_text`).
pub fn check_credit(amount: Money, reference: &str) -> Result<(), EngineError> {
    if amount == Money::ZERO {
        return Err(invalid("amount", "must be positive"));
    }
    if reference.is_empty() || reference.len() > 255 {
        return Err(invalid("reference", "must be 1 to 255 bytes"));
    }
    check_text(reference, "reference", false)
}

/// Checks that `text` holds only characters Postgres (and a reader) can
/// take: no control character (Unicode class Cc: U+0000–U+001F, U+007F–
/// U+009F), NUL above all, which Postgres' `text` refuses. Multi-line text
/// (a review) may also hold tab, line feed and carriage return. Lone
/// surrogates cannot reach here: a Rust `str` cannot hold them.
fn check_text(text: &str, field: &'static str, multi_line: bool) -> Result<(), EngineError> {
    let allowed = |c: char| multi_line && matches!(c, '\t' | '\n' | '\r');
    if text.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(invalid(
            field,
            if multi_line {
                "must not contain control characters other than tab and line breaks"
            } else {
                "must not contain control characters (U+0000 to U+001F, U+007F to U+009F)"
            },
        ));
    }
    Ok(())
}

/// Checks a review's own input: three scores (description, delivery,
/// service) from 1 to 5, a text of at most [`REVIEW_TEXT_CHARS_MAX`]
/// characters that may span lines (`check_text`).
pub fn check_review(scores: [u8; 3], text: &str) -> Result<(), EngineError> {
    const FIELDS: [&str; 3] = ["description", "delivery", "service"];
    for (field, score) in FIELDS.into_iter().zip(scores) {
        if !(1..=5).contains(&score) {
            return Err(invalid(field, "must be from 1 to 5"));
        }
    }
    check_text(text, "text", true)?;
    if text.chars().count() > REVIEW_TEXT_CHARS_MAX {
        return Err(invalid("text", "must be at most 500 characters"));
    }
    Ok(())
}

/// A name or title: not blank, at most `chars_max` characters, one line
/// of text (`check_text`).
pub fn check_name(name: &str, field: &'static str, chars_max: usize) -> Result<(), EngineError> {
    check_text(name, field, false)?;
    if name.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.chars().count() > chars_max {
        return Err(invalid(field, "is too long"));
    }
    Ok(())
}

/// Checks a merchant's deal and fills in the defaults (the rules of
/// `POST /v1/deals`, docs/api.md "Endpoints"): the one check for every
/// store.
pub fn validate_deal(new: NewDeal, now: Timestamp) -> Result<DealSpec, EngineError> {
    check_name(&new.title, "title", TITLE_CHARS_MAX)?;
    if new.price == Money::ZERO {
        return Err(invalid("price", "must be positive"));
    }
    if new.stock == 0 || new.stock > STOCK_MAX {
        return Err(invalid("stock", "must be from 1 to 1000000000"));
    }
    let per_user_limit = new.per_user_limit.unwrap_or(PER_USER_LIMIT_DEFAULT);
    if per_user_limit == 0 || per_user_limit > PER_USER_LIMIT_MAX {
        return Err(invalid("per_user_limit", "must be from 1 to 1000"));
    }
    if new.price.checked_mul(per_user_limit).is_none() {
        return Err(invalid("price", "times per_user_limit is too large"));
    }
    if new.ends_at <= new.starts_at {
        return Err(invalid("ends_at", "must be after starts_at"));
    }
    if new.ends_at <= now {
        return Err(invalid("ends_at", "must be in the future"));
    }
    let hold_seconds = new.hold_seconds.unwrap_or(HOLD_SECONDS_DEFAULT);
    if hold_seconds == 0 || hold_seconds > HOLD_SECONDS_MAX {
        return Err(invalid("hold_seconds", "must be from 1 to 86400"));
    }
    // A raffle ranks its registrants, so it needs them.
    if matches!(new.allocation, Allocation::Raffle(_)) && !new.requires_registration {
        return Err(invalid(
            "requires_registration",
            "must be true for a raffle (allocation: raffle)",
        ));
    }
    // Registrations close at starts_at, so a raffle starting now or before
    // would draw from nobody and leave its stock to no one.
    if matches!(new.allocation, Allocation::Raffle(_)) && new.starts_at <= now {
        return Err(invalid(
            "starts_at",
            "must be in the future for a raffle: registrations close when it starts",
        ));
    }
    Ok(DealSpec {
        title: new.title,
        price: new.price,
        stock: new.stock,
        per_user_limit,
        starts_at: new.starts_at,
        ends_at: new.ends_at,
        requires_registration: new.requires_registration,
        hold_seconds,
        allocation: new.allocation,
    })
}
