//! Recovery: rebuilding an engine from a snapshot and the events after it.
//!
//! [`Engine::apply`] replays one event as a fact: it does not judge the
//! request again, it repeats the state change through the same effect
//! functions the live path uses, and emits nothing. It refuses an event that
//! does not fit the state (a counter that would go below zero, an unknown
//! id): the journal is then inconsistent and recovery must stop.
//!
//! [`Engine::snapshot`] copies the whole state, one lock at a time; it is
//! exact only on an engine no request is running on (a replica that replays
//! the journal, or an engine at clean shutdown).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::deal::{DealCounters, DealState, MerchantState};
use crate::draw::{RaffleSnapshot, Revealed};
use crate::engine::{Engine, commit_hold, commit_order, release, settle, settle_late};
use crate::error::EngineError;
use crate::event::{DiscardEvents, Event};
use crate::ids::{DealId, MerchantId, ShopperId};
use crate::records::{DealSpec, HoldStatus, Merchant, Rating, StockCounts};
use crate::shard::{Account, Shard};

/// The whole state of an engine at one point of its journal.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    shards: Vec<Shard>,
    merchants: Vec<(Merchant, Rating)>,
    deals: Vec<DealSnapshot>,
    next_shopper: u64,
    /// Last but one, so that an encoding without it and `revocations`
    /// (journal format 3) is this one cut short by three empty lists.
    links: SnapshotLinks,
    /// Each revoked account's token not-before time (format 4 on).
    revocations: Vec<(crate::tokens::Account, Timestamp)>,
}

/// Every external id linked to an account (the records' own encoding
/// leaves `external_id` out).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotLinks {
    shoppers: Vec<(String, ShopperId)>,
    merchants: Vec<(String, MerchantId)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DealSnapshot {
    id: DealId,
    merchant: MerchantId,
    spec: DealSpec,
    created_at: Timestamp,
    counts: StockCounts,
    registrations: u64,
    buyers: u64,
    shares: u64,
    paused: bool,
    raffle: Option<RaffleSnapshot>,
}

fn inconsistent(reason: &'static str) -> EngineError {
    EngineError::Inconsistent { reason }
}

impl Engine {
    /// Replays one journalled event. See the module doc.
    pub fn apply(&self, event: &Event) -> Result<(), EngineError> {
        match event {
            Event::MerchantCreated { merchant, name, at } => {
                self.replay_merchant(*merchant, name, *at, None)?;
            }
            Event::MerchantLinked {
                merchant,
                external_id,
                name,
                at,
            } => {
                if !self.restore_merchant_link(external_id, *merchant) {
                    return Err(inconsistent("an external id is linked twice"));
                }
                self.replay_merchant(*merchant, name, *at, Some(external_id))?;
            }
            Event::ShopperCreated { shopper, name, at } => {
                self.replay_shopper(*shopper, name, *at, None)?;
            }
            Event::ShopperLinked {
                shopper,
                external_id,
                name,
                at,
            } => {
                if !self.restore_shopper_link(external_id, *shopper) {
                    return Err(inconsistent("an external id is linked twice"));
                }
                self.replay_shopper(*shopper, name, *at, Some(external_id))?;
            }
            Event::WalletCredited {
                shopper,
                amount,
                reference,
                ..
            } => {
                let mut shard = self.lock_shopper(*shopper);
                let account = shard
                    .accounts
                    .get_mut(shopper)
                    .ok_or(inconsistent("credit to an unknown shopper"))?;
                let wallet = &mut account.wallet;
                wallet.credited = wallet
                    .credited
                    .checked_add(*amount)
                    .ok_or(inconsistent("credit overflows"))?;
                wallet.available = wallet
                    .available
                    .checked_add(*amount)
                    .ok_or(inconsistent("credit overflows"))?;
                account.credits.insert(*reference, *amount);
            }
            Event::DealCreated {
                deal,
                merchant,
                spec,
                at,
            } => {
                if !self
                    .deal_table()
                    .publish(deal.0, DealState::new(*deal, *merchant, spec.clone(), *at))
                {
                    return Err(inconsistent("a deal id is taken or out of range"));
                }
            }
            Event::StockAdded { deal, quantity, .. } => {
                let deal = self.replay_deal(*deal)?;
                deal.stock.add_total(*quantity);
                deal.stock.put_back(*quantity);
            }
            Event::DealChanged {
                deal,
                ends_at,
                paused,
                ..
            } => {
                let deal = self.replay_deal(*deal)?;
                deal.set_ends_at(*ends_at);
                deal.set_paused(*paused);
            }
            Event::Registered { deal, shopper, .. } => {
                let state = self.replay_deal(*deal)?;
                let mut shard = self.lock_shopper(*shopper);
                let account = shard
                    .accounts
                    .get_mut(shopper)
                    .ok_or(inconsistent("registration of an unknown shopper"))?;
                // Shard, then the raffle's enrolment leaf: the live order.
                self.replay_enrol(state, *shopper)?;
                account.units_mut(*deal).registered = true;
                state.add_registration();
            }
            Event::DrawRun {
                deal,
                seed,
                registrants,
                registrants_hash,
                ..
            } => {
                let revealed = Revealed {
                    seed,
                    registrants: *registrants,
                    registrants_hash,
                };
                self.replay_draw_run(self.replay_deal(*deal)?, Some(revealed))?;
            }
            Event::DrawRunFormat2 { deal, .. } => {
                self.replay_draw_run(self.replay_deal(*deal)?, None)?;
            }
            Event::DrawOffered { hold } => {
                self.replay_offer(self.replay_deal(hold.deal)?, hold.shopper, Some(hold))?;
            }
            Event::DrawPassedOver { deal, shopper, .. } => {
                self.replay_offer(self.replay_deal(*deal)?, *shopper, None)?;
            }
            Event::HoldCreated { hold, key } => {
                let deal = self.replay_deal(hold.deal)?;
                let mut shard = self.lock_shopper(hold.shopper);
                if hold.id != shard.next_hold_id() {
                    return Err(inconsistent("hold ids out of order"));
                }
                self.check_funds(&shard, hold.shopper, hold.amount)?;
                if !deal.stock.try_take(u64::from(hold.quantity)) {
                    return Err(inconsistent("a hold takes more stock than remains"));
                }
                commit_hold(&mut shard, deal, hold.clone(), *key, &DiscardEvents);
            }
            Event::HoldReleased {
                hold,
                shopper,
                reason,
                at,
            } => {
                let mut shard = self.lock_shopper(*shopper);
                let position = shard
                    .hold_position(*hold)
                    .ok_or(inconsistent("release of an unknown hold"))?;
                if shard.holds[position].status != HoldStatus::Active {
                    return Err(inconsistent("release of a hold that is not active"));
                }
                let deal = self.replay_deal(shard.holds[position].deal)?;
                release(&mut shard, deal, position, *reason, *at, &DiscardEvents);
            }
            Event::OrderSettled { order, key } => {
                let deal = self.replay_deal(order.deal)?;
                let mut shard = self.lock_shopper(order.shopper);
                if order.id != shard.next_order_id() {
                    return Err(inconsistent("order ids out of order"));
                }
                match (order.hold, key) {
                    (None, Some(key)) => {
                        self.check_funds(&shard, order.shopper, order.amount)?;
                        if !deal.stock.try_take(u64::from(order.quantity)) {
                            return Err(inconsistent("an order takes more stock than remains"));
                        }
                        commit_order(&mut shard, deal, order.clone(), *key, &DiscardEvents);
                    }
                    (Some(hold), None) => {
                        let position = shard
                            .hold_position(hold)
                            .ok_or(inconsistent("payment of an unknown hold"))?;
                        let held = shard.holds[position].clone();
                        match (held.status, order.late) {
                            (HoldStatus::Active, false) => {
                                settle(
                                    &mut shard,
                                    deal,
                                    &held,
                                    false,
                                    order.created_at,
                                    &DiscardEvents,
                                );
                            }
                            (HoldStatus::Expired, true) => {
                                self.check_funds(&shard, order.shopper, order.amount)?;
                                if !deal.stock.try_take(u64::from(order.quantity)) {
                                    return Err(inconsistent(
                                        "a late payment takes more stock than remains",
                                    ));
                                }
                                settle_late(
                                    &mut shard,
                                    deal,
                                    &held,
                                    order.created_at,
                                    &DiscardEvents,
                                );
                            }
                            _ => return Err(inconsistent("payment of a hold in the wrong state")),
                        }
                    }
                    _ => return Err(inconsistent("an order needs a key or a hold, not both")),
                }
            }
            Event::Reviewed { review } => {
                let mut shard = self
                    .lock_owner_of(review.order.0)
                    .ok_or(inconsistent("a review of an unknown order"))?;
                if shard.order(review.order).is_none()
                    || shard.reviews.insert(review.order, review.clone()).is_some()
                {
                    return Err(inconsistent("a review of an unknown or reviewed order"));
                }
                drop(shard);
                self.merchant_table()
                    .get(review.merchant.0)
                    .ok_or(inconsistent("a review names an unknown merchant"))?
                    .add_review(review.score_sum());
            }
            Event::Shared { order, deal, .. } => {
                let deal = self.replay_deal(*deal)?;
                let mut shard = self
                    .lock_owner_of(order.0)
                    .ok_or(inconsistent("a share of an unknown order"))?;
                if shard.order(*order).is_none() || !shard.shared.insert(*order) {
                    return Err(inconsistent("a share of an unknown or shared order"));
                }
                deal.add_share();
            }
            Event::TokensRevoked {
                account,
                not_before,
                ..
            } => self.restore_revocation(*account, *not_before)?,
        }
        Ok(())
    }

    fn replay_merchant(
        &self,
        merchant: MerchantId,
        name: &str,
        at: Timestamp,
        external_id: Option<&String>,
    ) -> Result<(), EngineError> {
        let record = Merchant {
            id: merchant,
            name: name.to_owned(),
            created_at: at,
            external_id: external_id.cloned(),
        };
        let state = MerchantState::new(record, Rating::default());
        if !self.merchant_table().publish(merchant.0, state) {
            return Err(inconsistent("a merchant id is taken or out of range"));
        }
        Ok(())
    }

    fn replay_shopper(
        &self,
        shopper: ShopperId,
        name: &str,
        at: Timestamp,
        external_id: Option<&String>,
    ) -> Result<(), EngineError> {
        let mut shard = self.lock_shopper(shopper);
        let account = Account::new(crate::records::Shopper {
            id: shopper,
            name: name.to_owned(),
            created_at: at,
            external_id: external_id.cloned(),
        });
        if shard.accounts.insert(shopper, account).is_some() {
            return Err(inconsistent("a shopper is created twice"));
        }
        self.advance_next_shopper(shopper.0 + 1);
        Ok(())
    }

    fn replay_deal(&self, deal: DealId) -> Result<&DealState, EngineError> {
        self.deal_table()
            .get(deal.0)
            .ok_or(inconsistent("an event names an unknown deal"))
    }

    fn check_funds(
        &self,
        shard: &Shard,
        shopper: crate::ids::ShopperId,
        amount: crate::Money,
    ) -> Result<(), EngineError> {
        let account = shard
            .accounts
            .get(&shopper)
            .ok_or(inconsistent("an event names an unknown shopper"))?;
        if account.wallet.available < amount {
            return Err(inconsistent("a payment exceeds the available funds"));
        }
        Ok(())
    }

    /// Copies the whole state. See the module doc for when it is exact.
    pub fn snapshot(&self) -> Snapshot {
        let deals = self
            .deal_table()
            .newest_first()
            .map(|deal| {
                let DealCounters {
                    counts,
                    registrations,
                    buyers,
                    shares,
                    paused,
                    raffle,
                } = deal.counters();
                DealSnapshot {
                    id: deal.id,
                    merchant: deal.merchant,
                    spec: deal.spec(),
                    created_at: deal.created_at,
                    counts,
                    registrations,
                    buyers,
                    shares,
                    paused,
                    raffle,
                }
            })
            .collect();
        Snapshot {
            shards: self.shard_copies(),
            merchants: self
                .merchant_table()
                .newest_first()
                .map(|state| (state.merchant.clone(), state.rating()))
                .collect(),
            deals,
            next_shopper: self.next_shopper(),
            links: {
                let (shoppers, merchants) = self.link_copies();
                SnapshotLinks {
                    shoppers,
                    merchants,
                }
            },
            revocations: self.revocation_entries(),
        }
    }

    /// Loads a snapshot into a new, empty engine (then replay what follows
    /// it with [`Engine::apply`]). The shard count must be the one the
    /// snapshot was taken with: order and hold ids name their shard.
    pub fn restore(&self, snapshot: Snapshot) -> Result<(), EngineError> {
        if snapshot.shards.len() != self.config().shards {
            return Err(inconsistent(
                "the snapshot was taken with another shard count",
            ));
        }
        if self.next_shopper() != 1 {
            return Err(inconsistent("a snapshot loads into an empty engine only"));
        }
        for deal in snapshot.deals.into_iter().rev() {
            let counters = DealCounters {
                counts: deal.counts,
                registrations: deal.registrations,
                buyers: deal.buyers,
                shares: deal.shares,
                paused: deal.paused,
                raffle: deal.raffle,
            };
            if !self.deal_table().publish(
                deal.id.0,
                DealState::restore(deal.id, deal.merchant, deal.spec, deal.created_at, counters),
            ) {
                return Err(inconsistent("a deal id is taken or out of range"));
            }
        }
        for shard in &snapshot.shards {
            for ((shopper, _), record) in &shard.idempotency {
                if let Some(deal) = self.deal_table().get(record.request.deal().0) {
                    deal.records.insert(*shopper);
                }
            }
        }
        let mut merchant_links: FxHashMap<MerchantId, String> = snapshot
            .links
            .merchants
            .into_iter()
            .map(|(external, id)| (id, external))
            .collect();
        for (mut merchant, rating) in snapshot.merchants.into_iter().rev() {
            let id = merchant.id.0;
            if let Some(external) = merchant_links.remove(&merchant.id) {
                if !self.restore_merchant_link(&external, merchant.id) {
                    return Err(inconsistent("an external id is linked twice"));
                }
                merchant.external_id = Some(external);
            }
            if !self
                .merchant_table()
                .publish(id, MerchantState::new(merchant, rating))
            {
                return Err(inconsistent("a merchant id is taken or out of range"));
            }
        }
        if !merchant_links.is_empty() {
            return Err(inconsistent(
                "an external id is linked to an unknown merchant",
            ));
        }
        self.advance_next_shopper(snapshot.next_shopper);
        for (account, not_before) in snapshot.revocations {
            self.restore_revocation(account, not_before)?;
        }
        let mut shards = snapshot.shards;
        for (external, id) in snapshot.links.shoppers {
            let account = shards
                .get_mut(crate::ids::shard_of(id, self.config().shards))
                .and_then(|shard| shard.accounts.get_mut(&id))
                .ok_or(inconsistent(
                    "an external id is linked to an unknown shopper",
                ))?;
            if !self.restore_shopper_link(&external, id) {
                return Err(inconsistent("an external id is linked twice"));
            }
            account.shopper.external_id = Some(external);
        }
        self.load_shards(shards)
    }
}
