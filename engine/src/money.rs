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

/// What [`Money::parse`] accepts, as the reason of its `invalid` error.
pub const MONEY_ACCEPTS: &str =
    "must be a string of digits with at most two decimals, like \"999.00\" or \"5\"";

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

    /// Parses money as it travels in the API and the configuration: the
    /// whole of `text` must match `^[0-9]+(\.[0-9]{1,2})?$` (docs/api.md
    /// "Conventions": a decimal string with at most two places). So `"999"`, `"999.5"`, `"999.00"` and `"01.00"`
    /// (leading zeros are digits) are amounts; `".5"`, `"5."`, `"+1"`,
    /// `"-1"`, `"1e2"`, `"1_000"`, `"0.001"` and any space are not. The
    /// amount must be at most [`MONEY_MAX`]. Returns the amount in fen, or
    /// [`EngineError::Invalid`] naming `field` and saying what it accepts.
    /// Reads no float and allocates nothing.
    pub fn parse(text: &str, field: &'static str) -> Result<Money, EngineError> {
        let malformed = EngineError::Invalid {
            field,
            reason: MONEY_ACCEPTS,
        };
        let too_large = || EngineError::Invalid {
            field,
            reason: "is too large",
        };
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole)
            || (text.len() != whole.len() && !(digits(fraction) && fraction.len() <= 2))
        {
            return Err(malformed);
        }
        let mut fen: i64 = 0;
        let fraction_padded = fraction.bytes().chain(std::iter::repeat(b'0')).take(2);
        for digit in whole.bytes().chain(fraction_padded) {
            fen = fen
                .checked_mul(10)
                .and_then(|fen| fen.checked_add(i64::from(digit - b'0')))
                .ok_or_else(too_large)?;
        }
        Money::from_fen(fen).ok_or_else(too_large)
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
    fn the_api_grammar_is_digits_and_at_most_two_decimals() {
        for (text, fen) in [
            ("999", 99_900),
            ("999.5", 99_950),
            ("999.00", 99_900),
            ("01.00", 100),
            ("0", 0),
            ("0.01", 1),
            ("10000000000000", MONEY_MAX.0),
        ] {
            assert_eq!(Money::parse(text, "price"), Ok(Money(fen)), "{text}");
        }
        for bad in [
            "", ".5", "5.", "+1", "-1", "1e2", "1E1", "1e-2", "1_000", "9_9.9_9", "0.001", " 1",
            "1 ", "1.2.3", "1,00", "١", "0x10", "NaN", "inf",
        ] {
            assert_eq!(
                Money::parse(bad, "price"),
                Err(EngineError::Invalid {
                    field: "price",
                    reason: MONEY_ACCEPTS
                }),
                "{bad:?} accepted"
            );
        }
        for huge in ["10000000000000.01", "99999999999999999999999999"] {
            assert!(
                matches!(
                    Money::parse(huge, "credit"),
                    Err(EngineError::Invalid {
                        field: "credit",
                        reason: "is too large"
                    })
                ),
                "{huge}"
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
