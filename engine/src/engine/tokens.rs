//! Revoking an account's tokens: its not-before time
//! ([`crate::tokens`], the rule in [`crate::rules::tokens`]).

use crate::clock::Timestamp;
use crate::engine::Engine;
use crate::error::{EngineError, Entity};
use crate::event::Event;
use crate::rules::revocation_not_before;
use crate::tokens::Account;

impl Engine {
    /// Revokes every token of `account` issued up to now: its not-before
    /// time becomes the clock's reading + 1 ms (or stays a later one), and
    /// [`Event::TokensRevoked`] is emitted. Returns the time in force
    /// (Unix ms); the caller answers once the clock has passed it.
    /// Errors: `NotFound(Merchant | Shopper)` for an unknown account,
    /// `CapacityReached { bound: "token_revocations_max" }` when
    /// [`crate::TOKEN_REVOCATIONS_MAX`] other accounts are revoked.
    pub fn revoke_tokens(&self, account: Account) -> Result<Timestamp, EngineError> {
        let exists = match account {
            Account::Merchant(id) => self.merchant(id).is_some(),
            Account::Shopper(id) => self.lock_shopper(id).accounts.contains_key(&id),
        };
        if !exists {
            return Err(EngineError::NotFound(match account {
                Account::Merchant(_) => Entity::Merchant,
                Account::Shopper(_) => Entity::Shopper,
            }));
        }
        let at = self.now();
        self.revocations
            .revoke_with(account, revocation_not_before(at), |not_before| {
                self.sink().emit(Event::TokensRevoked {
                    account,
                    not_before,
                    at,
                });
            })
    }

    /// The account's token not-before time (Unix ms), `None` if never
    /// revoked: one relaxed load while no account was ever revoked.
    pub fn tokens_not_before(&self, account: Account) -> Option<Timestamp> {
        self.revocations.not_before(account)
    }

    /// Replays [`Event::TokensRevoked`] or loads a snapshot's entry.
    pub(crate) fn restore_revocation(
        &self,
        account: Account,
        not_before: Timestamp,
    ) -> Result<(), EngineError> {
        self.revocations
            .revoke(account, not_before)
            .map(|_| ())
            .map_err(|_| EngineError::Inconsistent {
                reason: "more accounts revoked than token_revocations_max",
            })
    }

    /// Every account's not-before time, for a snapshot.
    pub(crate) fn revocation_entries(&self) -> Vec<(Account, Timestamp)> {
        self.revocations.entries()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::{ManualClock, Timestamp};
    use crate::engine::{Engine, EngineConfig};
    use crate::error::{EngineError, Entity};
    use crate::event::{Event, RecordEvents};
    use crate::ids::{MerchantId, ShopperId};
    use crate::tokens::Account;

    #[test]
    fn a_revocation_is_journalled_and_replays_to_the_same_time() {
        let clock = Arc::new(ManualClock::new(Timestamp(10_000)));
        let events = Arc::new(RecordEvents::default());
        let engine = Engine::new(EngineConfig::default(), clock.clone(), events.clone());
        let shopper = engine.create_shopper("ann").unwrap().id;
        let merchant = engine.create_merchant("shop").unwrap().id;
        assert_eq!(
            engine.revoke_tokens(Account::Shopper(ShopperId(99))),
            Err(EngineError::NotFound(Entity::Shopper))
        );
        assert_eq!(
            engine.revoke_tokens(Account::Merchant(MerchantId(99))),
            Err(EngineError::NotFound(Entity::Merchant))
        );
        let line = engine.revoke_tokens(Account::Shopper(shopper)).unwrap();
        assert_eq!(line, Timestamp(10_001));
        clock.advance_millis(5);
        engine.revoke_tokens(Account::Merchant(merchant)).unwrap();
        let journal = events.take();
        assert!(matches!(
            journal.last(),
            Some(Event::TokensRevoked {
                not_before: Timestamp(10_006),
                ..
            })
        ));

        let replica = Engine::new(
            EngineConfig::default(),
            clock.clone(),
            Arc::new(crate::event::DiscardEvents),
        );
        for event in &journal {
            replica.apply(event).unwrap();
        }
        assert_eq!(
            replica.tokens_not_before(Account::Shopper(shopper)),
            Some(line)
        );
        let restored = Engine::new(
            EngineConfig::default(),
            clock,
            Arc::new(crate::event::DiscardEvents),
        );
        restored.restore(replica.snapshot()).unwrap();
        assert_eq!(
            restored.tokens_not_before(Account::Merchant(merchant)),
            Some(Timestamp(10_006))
        );
        assert_eq!(
            restored.tokens_not_before(Account::Shopper(ShopperId(2))),
            None
        );
    }
}
