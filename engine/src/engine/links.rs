//! Accounts made for a platform's user ids (external ids, docs/api.md
//! "External ids"): the first request of a new external id makes its
//! shopper or merchant, once, however many race; every later one finds
//! that same account.
//!
//! Each kind has one map from external id to account id, in stripes each
//! behind its own lock ([`LINK_STRIPES`]); the stripe of an external id
//! is taken before the shard lock of the shopper it makes (lock order:
//! link map → shard → event sink), so the check, the new account and its
//! event are one step: no second request of the same external id can
//! find the map without the account. A request of a known external id
//! lets the stripe go before it reads the account. The maps hold one
//! entry per linked account, so `shoppers_max` and `merchants_max` bound
//! them.

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};
use rustc_hash::FxHashMap;

use super::{Engine, NAME_CHARS_MAX, check_credit, check_name};
use crate::error::EngineError;
use crate::ids::{MerchantId, ShopperId};
use crate::money::Money;
use crate::records::{Merchant, Shopper};
use crate::rules::check_external_id;

/// Stripes of each link map: a lookup locks one, chosen by a hash of the
/// external id, so requests of different external ids seldom wait on
/// each other.
const LINK_STRIPES: usize = 64;

/// One stripe: external id → account id.
type Stripe<Id> = CachePadded<Mutex<FxHashMap<String, Id>>>;

/// One kind's map from external id to account id, in stripes.
#[derive(Debug)]
pub(crate) struct LinkMap<Id> {
    stripes: Box<[Stripe<Id>]>,
}

impl<Id: Copy> LinkMap<Id> {
    fn new() -> LinkMap<Id> {
        LinkMap {
            stripes: (0..LINK_STRIPES)
                .map(|_| CachePadded::new(Mutex::new(FxHashMap::default())))
                .collect(),
        }
    }

    /// The stripe that holds `external_id`, locked.
    fn lock(&self, external_id: &str) -> MutexGuard<'_, FxHashMap<String, Id>> {
        let hash = xxhash_rust::xxh3::xxh3_64(external_id.as_bytes());
        // invariant: LINK_STRIPES is a power of two, so the index is in range.
        self.stripes[(hash as usize) & (LINK_STRIPES - 1)].lock()
    }

    fn get(&self, external_id: &str) -> Option<Id> {
        self.lock(external_id).get(external_id).copied()
    }

    /// Records a link; `false` when the external id is linked already.
    fn insert(&self, external_id: &str, id: Id) -> bool {
        self.lock(external_id)
            .insert(external_id.to_owned(), id)
            .is_none()
    }

    /// Every link, one stripe at a time.
    fn copies(&self) -> Vec<(String, Id)> {
        self.stripes
            .iter()
            .flat_map(|stripe| {
                stripe
                    .lock()
                    .iter()
                    .map(|(external, &id)| (external.clone(), id))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The external ids linked so far, each to its account.
#[derive(Debug)]
pub(crate) struct Links {
    shoppers: LinkMap<ShopperId>,
    merchants: LinkMap<MerchantId>,
}

impl Default for Links {
    fn default() -> Links {
        Links {
            shoppers: LinkMap::new(),
            merchants: LinkMap::new(),
        }
    }
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
        let mut links = self.links.shoppers.lock(external_id);
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
        let mut links = self.links.merchants.lock(external_id);
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
        self.links.shoppers.get(external_id)
    }

    /// The merchant linked to `external_id`, if any.
    pub fn merchant_of_external(&self, external_id: &str) -> Option<MerchantId> {
        self.links.merchants.get(external_id)
    }

    /// Replay and restore: records a link; `false` when the external id is
    /// linked already (a damaged journal).
    pub(crate) fn restore_shopper_link(&self, external_id: &str, id: ShopperId) -> bool {
        self.links.shoppers.insert(external_id, id)
    }

    /// [`Engine::restore_shopper_link`] for a merchant.
    pub(crate) fn restore_merchant_link(&self, external_id: &str, id: MerchantId) -> bool {
        self.links.merchants.insert(external_id, id)
    }

    /// Every link, for a snapshot: shoppers', then merchants'.
    pub(crate) fn link_copies(&self) -> LinkCopies {
        (self.links.shoppers.copies(), self.links.merchants.copies())
    }
}
