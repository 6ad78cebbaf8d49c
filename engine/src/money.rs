//! Money. Amounts are whole fen (CNY cents) in an `i64`, so the hot path
//! adds integers; they enter and leave the engine as `rust_decimal::Decimal`
//! with at most two decimal places. No float ever touches money, and every
//! operation is overflow-checked against [`MONEY_MAX`].

use std::fmt;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// The largest amount the engine holds anywhere: 10^13 yuan, far above any
/// wallet or order, far below `i64::MAX` so sums of a few never overflow.
pub const MONEY_MAX: Money = Money(1_000_000_000_000_000);

/// An amount of money in fen, never negative.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// Exactly `fen` fen; `None` when outside `0..=MONEY_MAX`.
    pub fn from_fen(fen: i64) -> Option<Money> {
        (0..=MONEY_MAX.0).contains(&fen).then_some(Money(fen))
    }

    pub fn fen(self) -> i64 {
        self.0
    }

    /// Parses a client's amount: at most two places, `0 ..= MONEY_MAX`.
    /// `field` names the JSON field in the error.
    pub fn from_decimal(amount: Decimal, field: &'static str) -> Result<Money, EngineError> {
        let invalid = |reason: &'static str| EngineError::Invalid { field, reason };
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(invalid("must not be negative"));
        }
        if amount.normalize().scale() > 2 {
            return Err(invalid("must have at most 2 decimal places"));
        }
        let fen = amount
            .checked_mul(Decimal::ONE_HUNDRED)
            .and_then(|fen| fen.to_i64())
            .ok_or(invalid("is too large"))?;
        Money::from_fen(fen).ok_or(invalid("is too large"))
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, 2)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).and_then(Money::from_fen)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).and_then(Money::from_fen)
    }

    pub fn checked_mul(self, quantity: u32) -> Option<Money> {
        self.0
            .checked_mul(i64::from(quantity))
            .and_then(Money::from_fen)
    }
}

impl fmt::Display for Money {
    /// Always two places: `999.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn parse(text: &str) -> Result<Money, EngineError> {
        Money::from_decimal(Decimal::from_str(text).unwrap(), "price")
    }

    #[test]
    fn parses_and_prints_two_places() {
        assert_eq!(parse("999").unwrap().to_string(), "999.00");
        assert_eq!(parse("999.5").unwrap().fen(), 99_950);
        assert_eq!(parse("0.01").unwrap().to_string(), "0.01");
        assert_eq!(
            parse("1.230").unwrap().fen(),
            123,
            "trailing zeros are not places"
        );
        assert_eq!(
            parse("999.99").unwrap().to_decimal(),
            Decimal::from_str("999.99").unwrap()
        );
    }

    #[test]
    fn refuses_three_places_negative_and_huge() {
        for bad in [
            "0.001",
            "-1",
            "-0.01",
            "10000000000000.01",
            "79228162514264337593543950335",
        ] {
            assert!(
                matches!(parse(bad), Err(EngineError::Invalid { field: "price", .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(MONEY_MAX.checked_add(Money(1)), None);
        assert_eq!(Money(1).checked_sub(Money(2)), None);
        assert_eq!(MONEY_MAX.checked_mul(2), None);
        assert_eq!(Money(250).checked_mul(3), Some(Money(750)));
    }
}
