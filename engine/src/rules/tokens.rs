//! Which tokens a revocation refuses (docs/api.md "Recovering a token").
//!
//! A revocation sets the account's **not-before** time to one millisecond
//! after the clock's reading when it is decided
//! ([`revocation_not_before`]), and a token counts while it was issued at
//! or after that time ([`token_in_force`]). Tokens carry their issue time
//! in milliseconds, so two tokens of the same millisecond cannot be told
//! apart; the millisecond added puts every token issued up to and
//! including the revocation's own millisecond before the line, and the
//! revocation answers only once the clock has passed the line, so every
//! token issued after its answer is after it. A token without an issue
//! time (format `v1`) is older than any revocation.
//!
//! A time, not a per-account generation counter: the check needs only the
//! token and the not-before map (no counter to read or to carry in every
//! token), and a token issued on one node and a revocation decided on
//! another compare on their clocks, whose skew the revocation's answer
//! waits out (docs/decisions/token-revocation.md).

use crate::clock::Timestamp;

/// The not-before time of a revocation decided at `now`: `now` + 1 ms.
pub fn revocation_not_before(now: Timestamp) -> Timestamp {
    now.plus_millis(1)
}

/// Whether a token issued at `issued_at` (`None`: a `v1` token, whose
/// issue time is unknown) still counts against the account's
/// `not_before` (`None`: never revoked): issued at or after it.
pub fn token_in_force(issued_at: Option<Timestamp>, not_before: Option<Timestamp>) -> bool {
    match (issued_at, not_before) {
        (_, None) => true,
        (Some(issued_at), Some(not_before)) => issued_at >= not_before,
        (None, Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_refuses_its_own_millisecond_and_earlier_and_takes_the_next() {
        let revoked_at = Timestamp(1_000);
        let line = revocation_not_before(revoked_at);
        assert!(!token_in_force(Some(Timestamp(999)), Some(line)));
        assert!(
            !token_in_force(Some(revoked_at), Some(line)),
            "a token of the revocation's own millisecond may predate it"
        );
        assert!(token_in_force(Some(Timestamp(1_001)), Some(line)));
        assert!(token_in_force(Some(Timestamp(5)), None), "never revoked");
        assert!(
            !token_in_force(None, Some(line)),
            "v1 predates any revocation"
        );
        assert!(token_in_force(None, None));
    }
}
