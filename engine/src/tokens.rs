//! Token revocation: each account's **not-before** time.
//!
//! Tokens are signed, not stored (the gateway's `auth`), so revoking them
//! needs no list of tokens: an account's not-before time refuses every
//! token issued before it, and a token issued at or after it stays valid
//! (the rule: [`crate::rules::tokens`]). [`TokenRevocations`] is the map
//! from account to not-before time, bounded by
//! [`TOKEN_REVOCATIONS_MAX`] accounts: the engine's own (journalled and
//! in its snapshot) on one node, and each Redis-mode node's copy of the
//! deployment's (which Redis bounds by the same number).
//!
//! Reading it is one read lock and, while no account has ever been
//! revoked, not even that: one relaxed atomic load, so requests of a sale
//! in which nobody lost a token pay nothing for the feature.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::EngineError;
use crate::ids::{MerchantId, ShopperId};

/// Accounts with a not-before time at most, in one engine or one node's
/// copy: a revocation of one more is refused (`CapacityReached`,
/// `503 unavailable`), a revocation of an account already there is not.
pub const TOKEN_REVOCATIONS_MAX: usize = 100_000;

/// An account that holds tokens: a merchant or a shopper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Account {
    Merchant(MerchantId),
    Shopper(ShopperId),
}

impl fmt::Display for Account {
    /// The id as the API spells it (`m_1`, `s_2a`): the prefix tells the role.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Merchant(id) => id.fmt(f),
            Account::Shopper(id) => id.fmt(f),
        }
    }
}

impl std::str::FromStr for Account {
    type Err = ();

    /// Parses what [`Account`]'s `Display` writes.
    fn from_str(text: &str) -> Result<Account, ()> {
        if let Ok(id) = text.parse::<ShopperId>() {
            Ok(Account::Shopper(id))
        } else {
            text.parse::<MerchantId>().map(Account::Merchant)
        }
    }
}

/// Not-before times by account, at most [`TOKEN_REVOCATIONS_MAX`].
#[derive(Debug, Default)]
pub struct TokenRevocations {
    /// Set once the first account is revoked: the fast path's one load.
    any: AtomicBool,
    map: RwLock<HashMap<Account, Timestamp>>,
}

impl TokenRevocations {
    pub fn new() -> TokenRevocations {
        TokenRevocations::default()
    }

    /// The account's not-before time (Unix milliseconds), `None` if its
    /// tokens were never revoked.
    pub fn not_before(&self, account: Account) -> Option<Timestamp> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.map.read().get(&account).copied()
    }

    /// Sets the account's not-before time to `not_before`, or keeps a later
    /// one already there (a revocation never makes an older token valid
    /// again); returns the time now in force. `CapacityReached
    /// { bound: "token_revocations_max" }` when the account is new and the
    /// map holds [`TOKEN_REVOCATIONS_MAX`] accounts; nothing changes then.
    pub fn revoke(
        &self,
        account: Account,
        not_before: Timestamp,
    ) -> Result<Timestamp, EngineError> {
        self.revoke_with(account, not_before, |_| {})
    }

    /// [`TokenRevocations::revoke`], calling `decided` with the time in
    /// force while the map's write lock is held, before any other revocation
    /// can change it: the engine emits its journal event there, so the
    /// journal's order is the map's.
    pub fn revoke_with(
        &self,
        account: Account,
        not_before: Timestamp,
        decided: impl FnOnce(Timestamp),
    ) -> Result<Timestamp, EngineError> {
        let mut map = self.map.write();
        let in_force = match map.get(&account) {
            Some(&earlier) => earlier.max(not_before),
            None if map.len() >= TOKEN_REVOCATIONS_MAX => {
                return Err(EngineError::CapacityReached {
                    bound: "token_revocations_max",
                });
            }
            None => not_before,
        };
        decided(in_force);
        map.insert(account, in_force);
        self.any.store(true, Ordering::Relaxed);
        Ok(in_force)
    }

    /// Every account and its not-before time, in no order.
    pub fn entries(&self) -> Vec<(Account, Timestamp)> {
        self.map
            .read()
            .iter()
            .map(|(&account, &at)| (account, at))
            .collect()
    }

    /// Forgets every account (a Redis-mode node whose deployment's Redis
    /// lost its data: every token of the old epoch is refused anyway).
    pub fn clear(&self) {
        self.map.write().clear();
    }

    /// How many accounts have a not-before time.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// No account has a not-before time.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_keeps_the_latest_time_and_the_bound_refuses_new_accounts() {
        let revocations = TokenRevocations::new();
        let shopper = Account::Shopper(ShopperId(7));
        assert_eq!(revocations.not_before(shopper), None);
        assert_eq!(
            revocations.revoke(shopper, Timestamp(50)).unwrap(),
            Timestamp(50)
        );
        assert_eq!(
            revocations.revoke(shopper, Timestamp(40)).unwrap(),
            Timestamp(50),
            "an earlier time never replaces a later one"
        );
        assert_eq!(revocations.not_before(shopper), Some(Timestamp(50)));
        assert_eq!(
            revocations.not_before(Account::Merchant(MerchantId(7))),
            None,
            "merchant 7 is another account than shopper 7"
        );
        for id in 0..TOKEN_REVOCATIONS_MAX as u64 - 1 {
            revocations
                .revoke(Account::Merchant(MerchantId(id)), Timestamp(1))
                .unwrap();
        }
        assert_eq!(revocations.len(), TOKEN_REVOCATIONS_MAX);
        assert!(matches!(
            revocations.revoke(Account::Shopper(ShopperId(8)), Timestamp(1)),
            Err(EngineError::CapacityReached { .. })
        ));
        assert_eq!(revocations.not_before(Account::Shopper(ShopperId(8))), None);
        assert_eq!(
            revocations.revoke(shopper, Timestamp(60)).unwrap(),
            Timestamp(60),
            "an account already there may be revoked again when full"
        );
    }

    #[test]
    fn accounts_spell_like_the_api() {
        for account in [
            Account::Shopper(ShopperId(0x2a)),
            Account::Merchant(MerchantId(1)),
        ] {
            assert_eq!(account.to_string().parse::<Account>(), Ok(account));
        }
        assert_eq!(Account::Shopper(ShopperId(0x2a)).to_string(), "s_2a");
        assert!("x_1".parse::<Account>().is_err());
    }
}
