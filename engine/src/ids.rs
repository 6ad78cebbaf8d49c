//! Typed identifiers. Inside the engine every id is a `u64`; outside it is an
//! opaque string with a one-letter prefix (`d_2a`, `s_9`, `o_1f03`), parsed
//! back with [`std::str::FromStr`]. Order and hold ids carry the shard that
//! owns them in their low bits, so finding one takes no index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "_{:x}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ();

            fn from_str(text: &str) -> Result<$name, ()> {
                let digits = text.strip_prefix(concat!($prefix, "_")).ok_or(())?;
                // Reject what `Display` would never print (signs, leading zeros,
                // upper case) so every id has exactly one spelling.
                let canonical = !digits.is_empty()
                    && digits.len() <= 16
                    && digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    && (digits == "0" || !digits.starts_with('0'));
                if !canonical {
                    return Err(());
                }
                u64::from_str_radix(digits, 16).map($name).map_err(|_| ())
            }
        }
    };
}

id_type!(
    /// A merchant account.
    MerchantId, "m"
);
id_type!(
    /// A shopper account and its wallet.
    ShopperId, "s"
);
id_type!(
    /// A flash deal.
    DealId, "d"
);
id_type!(
    /// A hold: stock and funds reserved, not yet paid.
    HoldId, "h"
);
id_type!(
    /// A settled order.
    OrderId, "o"
);

/// How many low bits of an order or hold id name its shard.
pub const SHARD_BITS_MAX: u32 = 10;

/// The shard (of `shards`, a power of two up to 1024) that owns a shopper:
/// the top bits of a multiplicative (Fibonacci) hash of its id. The engine
/// and Redis mode's virtual shards use this one rule.
pub fn shard_of(shopper: ShopperId, shards: usize) -> usize {
    debug_assert!(shards.is_power_of_two() && shards <= 1 << SHARD_BITS_MAX);
    if shards <= 1 {
        return 0;
    }
    (shopper.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - shards.trailing_zeros())) as usize
}

/// Builds a shard-local id: sequence number above, shard index below.
pub fn compose(shard: usize, sequence: u64) -> u64 {
    debug_assert!(shard < (1 << SHARD_BITS_MAX));
    (sequence << SHARD_BITS_MAX) | shard as u64
}

/// Splits an id built by [`compose`] into (shard, sequence).
pub fn decompose(id: u64) -> (usize, u64) {
    let shard = (id & ((1 << SHARD_BITS_MAX) - 1)) as usize;
    (shard, id >> SHARD_BITS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text() {
        for raw in [0, 1, 255, 0xdead_beef, u64::MAX] {
            let id = OrderId(raw);
            assert_eq!(id.to_string().parse::<OrderId>(), Ok(id));
        }
        assert_eq!(DealId(42).to_string(), "d_2a");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for text in [
            "",
            "d_",
            "x_1",
            "d_-1",
            "d_01",
            "d_A",
            "d_1 ",
            "d_10000000000000000",
            "o_1",
        ] {
            assert!(text.parse::<DealId>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn composed_ids_keep_shard_and_sequence() {
        let id = compose(37, 123_456);
        assert_eq!(decompose(id), (37, 123_456));
    }
}
