//! Accounts of a platform's user ids (external ids) in Redis: made once
//! across every node, on Redis or a Cluster, where one step touches one
//! slot.
//!
//! 1. The `{g}` link maps (`ns:{g}:ext:shoppers`, `ns:{g}:ext:merchants`)
//!    give an external id its account id: a known one is read (`HGET`); a
//!    new one reserves an id (`ids`) and offers it with `HSETNX`, and
//!    whoever loses takes the winner's id (a loser's reserved id is never
//!    used: ids are unique, not dense).
//! 2. Whoever holds the linked id runs the step that makes the account
//!    unless it exists (`link` on the shopper's shard, with the signup
//!    credit; `merchant` in `{g}`), which answers whether it made it. So
//!    of racing requests exactly one makes the account and credits it,
//!    and a crash between the two steps is repaired by the next request
//!    for that external id.

use flashsale_engine::{
    Merchant, MerchantId, Money, Shopper, ShopperId, Timestamp, check_external_id, check_name,
};
use redis::Value;

use crate::accounts::wallet_too_large;
use crate::error::Error;
use crate::replies::{garbled, number, text};
use crate::{RedisStore, WALLET_FEN_MAX, steps};

/// The link map of shoppers (`shoppers`) or merchants (`merchants`).
fn links_part(kind: &str) -> String {
    format!("ext:{kind}")
}

impl RedisStore {
    /// The shopper of `external_id`, made with `name` if none exists yet and
    /// then credited `credit` (fen, zero: none) under `reference`; `true`
    /// when this call made it. The engine's `link_shopper` with the signup
    /// credit of `create_shopper`. Refusals: `Invalid` external id, name or
    /// credit; errors: Redis.
    pub async fn link_shopper(
        &self,
        external_id: &str,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<(Shopper, bool), Error> {
        check_external_id(external_id)?;
        check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)?;
        if credit != Money::ZERO {
            flashsale_engine::check_credit(credit, reference)?;
        }
        if credit.fen() > WALLET_FEN_MAX {
            return Err(wallet_too_large());
        }
        let id = match self.shopper_of_external(external_id).await? {
            Some(id) => id,
            None => {
                let offered = self.reserve_shoppers(1).await?;
                ShopperId(self.offer_link("shoppers", external_id, offered.0).await?)
            }
        };
        let shard = self.shard_of(id);
        let keys = self.keys();
        let call = steps::Link {
            books: keys.shard(shard, "books"),
            account: keys.shard_id(shard, "acct", id.0),
            created_at: self.now().millis().to_string(),
            credit: credit.fen().to_string(),
            shopper: id.0.to_string(),
            name: name.to_owned(),
            reference: reference.to_owned(),
            external: external_id.to_owned(),
            epoch: self.epoch().to_string(),
        };
        let values = self.run_done(&call).await?;
        let shopper = Shopper {
            id,
            name: values
                .get(2)
                .and_then(text)
                .ok_or(garbled("a shopper's name"))?,
            created_at: Timestamp(number(values.get(3))),
            external_id: values.get(4).and_then(text),
        };
        Ok((shopper, number(values.get(1)) == 1))
    }

    /// The merchant of `external_id`, made with `name` if none exists yet;
    /// `true` when this call made it (the engine's `link_merchant`).
    /// Refusals: `Invalid` external id or name; errors: Redis.
    pub async fn link_merchant(
        &self,
        external_id: &str,
        name: &str,
    ) -> Result<(Merchant, bool), Error> {
        check_external_id(external_id)?;
        check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)?;
        let id = match self.linked("merchants", external_id).await? {
            Some(id) => id,
            None => {
                let offered = self.next_ids("merchant", 1, false).await?;
                self.offer_link("merchants", external_id, offered).await?
            }
        };
        let call = steps::Merchant {
            merchant: self.keys().merchant(MerchantId(id)),
            name: name.to_owned(),
            created_at: self.now().millis().to_string(),
            external: external_id.to_owned(),
        };
        let values = self.run_done(&call).await?;
        let merchant = Merchant {
            id: MerchantId(id),
            name: values
                .get(2)
                .and_then(text)
                .ok_or(garbled("a merchant's name"))?,
            created_at: Timestamp(number(values.get(3))),
            external_id: Some(external_id.to_owned()),
        };
        Ok((merchant, number(values.get(1)) == 1))
    }

    /// The shopper id linked to `external_id`, if any (its account may
    /// still be missing after a crash; [`RedisStore::link_shopper`] makes
    /// it).
    pub async fn shopper_of_external(&self, external_id: &str) -> Result<Option<ShopperId>, Error> {
        Ok(self.linked("shoppers", external_id).await?.map(ShopperId))
    }

    /// The id a link map holds for `external_id`.
    async fn linked(&self, kind: &str, external_id: &str) -> Result<Option<u64>, Error> {
        let value: Value = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().global(&links_part(kind)))
                    .arg(external_id),
            )
            .await?;
        match value {
            Value::Nil => Ok(None),
            value => text(&value)
                .and_then(|id| id.parse().ok())
                .map(Some)
                .ok_or(garbled("a linked id")),
        }
    }

    /// Offers `offered` as the id of `external_id` (`HSETNX`): the id the
    /// link map holds afterwards, `offered` or an earlier winner's.
    async fn offer_link(&self, kind: &str, external_id: &str, offered: u64) -> Result<u64, Error> {
        let key = self.keys().global(&links_part(kind));
        let set: bool = self
            .query(redis::cmd("HSETNX").arg(&key).arg(external_id).arg(offered))
            .await?;
        if set {
            return Ok(offered);
        }
        self.linked(kind, external_id)
            .await?
            .ok_or(garbled("a link that HSETNX found is gone"))
    }
}
