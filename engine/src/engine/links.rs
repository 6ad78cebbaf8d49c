//! Accounts made for a platform's user ids (external ids, docs/api.md
//! "External ids"): the first request of a new external id makes its
//! shopper or merchant, once, however many race; every later one finds
//! that same account.
//!
//! Each kind has one map from external id to account id behind its own
//! lock, taken before the shard lock of the shopper it makes (lock order:
//! link map → shard → event sink), so the check, the new account and its
//! event are one step: no second request of the same external id can
//! find the map without the account. The maps hold one entry per linked
//! account, so `shoppers_max` and `merchants_max` bound them.

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::{Engine, NAME_CHARS_MAX, check_credit, check_name};
use crate::error::EngineError;
use crate::ids::{MerchantId, ShopperId};
use crate::money::Money;
use crate::records::{Merchant, Shopper};
use crate::rules::check_external_id;

/// The external ids linked so far, each to its account.
#[derive(Debug, Default)]
pub(crate) struct Links {
    pub(crate) shoppers: Mutex<FxHashMap<String, ShopperId>>,
    pub(crate) merchants: Mutex<FxHashMap<String, MerchantId>>,
}

/// Every link of each kind, as a snapshot holds them: shoppers', merchants'.
pub(crate) type LinkCopies = (Vec<(String, ShopperId)>, Vec<(String, MerchantId)>);

fn missing(reason: &'static str) -> EngineError {
    EngineError::Inconsistent { reason }
}

impl Engine {
    /// The shopper of the platform's user id `external_id`, made with the
    /// name `name` if it has none yet; `true` when this call made it (its
    /// event is `ShopperLinked`). Refusals: `Invalid` for the external id
    /// ([`check_external_id`]) or the name, `CapacityReached
    /// { bound: "shoppers_max" }` when a new shopper does not fit.
    pub fn link_shopper(
        &self,
        external_id: &str,
        name: &str,
    ) -> Result<(Shopper, bool), EngineError> {
        self.link_shopper_credited(external_id, name, Money::ZERO, "")
    }

    /// [`Engine::link_shopper`], and when this call makes the shopper, its
    /// wallet credited `credit` (zero: none) under `reference` (a signup
    /// credit) before the link map is let go: a racing request finds the
    /// shopper credited, and its events follow each other in the journal.
    /// Refusals: those of [`Engine::link_shopper`], and `Invalid` credit
    /// ([`check_credit`]) before anything changes.
    pub fn link_shopper_credited(
        &self,
        external_id: &str,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<(Shopper, bool), EngineError> {
        check_external_id(external_id)?;
        check_name(name, "name", NAME_CHARS_MAX)?;
        if credit != Money::ZERO {
            check_credit(credit, reference)?;
        }
        let mut links = self.links.shoppers.lock();
        if let Some(&id) = links.get(external_id) {
            drop(links);
            let shopper = self
                .shopper(id)
                .ok_or(missing("a linked shopper is missing"))?;
            return Ok((shopper, false));
        }
        let id = self.reserve_shoppers(1)?;
        let shopper = Shopper {
            id,
            name: name.to_owned(),
            created_at: self.now(),
            external_id: Some(external_id.to_owned()),
        };
        self.insert_shopper(shopper.clone());
        links.insert(external_id.to_owned(), id);
        if credit != Money::ZERO {
            // Not refused: the wallet is empty, `credit` is at most
            // `MONEY_MAX` and its reference the wallet's first (only
            // `credits_per_shopper_max` = 0 could refuse it, and then the
            // shopper stands uncredited, as `create_shopper` leaves it).
            let _ = self.credit_wallet(id, credit, reference);
        }
        Ok((shopper, true))
    }

    /// The merchant of the platform's user id `external_id`, made with the
    /// name `name` if it has none yet; `true` when this call made it (its
    /// event is `MerchantLinked`). Refusals: `Invalid` for the external id
    /// ([`check_external_id`]) or the name, `CapacityReached
    /// { bound: "merchants_max" }` when a new merchant does not fit.
    pub fn link_merchant(
        &self,
        external_id: &str,
        name: &str,
    ) -> Result<(Merchant, bool), EngineError> {
        check_external_id(external_id)?;
        check_name(name, "name", NAME_CHARS_MAX)?;
        let mut links = self.links.merchants.lock();
        if let Some(&id) = links.get(external_id) {
            drop(links);
            let merchant = self
                .merchant(id)
                .ok_or(missing("a linked merchant is missing"))?;
            return Ok((merchant, false));
        }
        let merchant = self.make_merchant(name, Some(external_id))?;
        links.insert(external_id.to_owned(), merchant.id);
        Ok((merchant, true))
    }

    /// The shopper linked to `external_id`, if any.
    pub fn shopper_of_external(&self, external_id: &str) -> Option<ShopperId> {
        self.links.shoppers.lock().get(external_id).copied()
    }

    /// The merchant linked to `external_id`, if any.
    pub fn merchant_of_external(&self, external_id: &str) -> Option<MerchantId> {
        self.links.merchants.lock().get(external_id).copied()
    }

    /// Replay and restore: records a link; `false` when the external id is
    /// linked already (a damaged journal).
    pub(crate) fn restore_shopper_link(&self, external_id: &str, id: ShopperId) -> bool {
        self.links
            .shoppers
            .lock()
            .insert(external_id.to_owned(), id)
            .is_none()
    }

    /// [`Engine::restore_shopper_link`] for a merchant.
    pub(crate) fn restore_merchant_link(&self, external_id: &str, id: MerchantId) -> bool {
        self.links
            .merchants
            .lock()
            .insert(external_id.to_owned(), id)
            .is_none()
    }

    /// Every link, for a snapshot: shoppers', then merchants'.
    pub(crate) fn link_copies(&self) -> LinkCopies {
        let shoppers = self
            .links
            .shoppers
            .lock()
            .iter()
            .map(|(external, &id)| (external.clone(), id))
            .collect();
        let merchants = self
            .links
            .merchants
            .lock()
            .iter()
            .map(|(external, &id)| (external.clone(), id))
            .collect();
        (shoppers, merchants)
    }
}
