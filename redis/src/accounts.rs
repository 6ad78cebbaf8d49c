//! Merchants, shoppers and wallets: creating accounts, crediting and
//! reading wallets, ratings, reviews and shares.

use std::collections::HashMap;

use flashsale_engine::ids::decompose;
use flashsale_engine::{
    EngineError, Entity, Merchant, MerchantId, Money, OrderId, Rating, Review, Shopper, ShopperId,
    Timestamp, Wallet,
};
use futures_util::future::try_join_all;
use redis::Value;

use crate::error::Error;
use crate::replies::{text, wallet_of};
use crate::steps;
use crate::{RedisStore, WALLET_FEN_MAX};

impl RedisStore {
    pub async fn create_merchant(&self, name: &str) -> Result<Merchant, Error> {
        flashsale_engine::check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)?;
        let id = self.next_ids("merchant", 1, false).await?;
        let merchant = Merchant {
            id: MerchantId(id),
            name: name.to_owned(),
            created_at: self.now(),
            external_id: None,
        };
        let key = self.keys().merchant(MerchantId(id));
        self.query::<()>(
            redis::cmd("HSET")
                .arg(&key)
                .arg("name")
                .arg(name)
                .arg("created_at")
                .arg(merchant.created_at.millis()),
        )
        .await?;
        Ok(merchant)
    }

    /// A merchant with its external id, if it has one; `None`: no such
    /// merchant.
    pub async fn merchant(&self, id: MerchantId) -> Result<Option<Merchant>, Error> {
        let record = self.account_record(self.keys().merchant(id)).await?;
        Ok(record.map(|(name, created_at, external_id)| Merchant {
            id,
            name,
            created_at,
            external_id,
        }))
    }

    /// A shopper with its external id, if it has one; `None`: no such
    /// shopper.
    pub async fn shopper(&self, id: ShopperId) -> Result<Option<Shopper>, Error> {
        let key = self.keys().shard_id(self.shard_of(id), "acct", id.0);
        let record = self.account_record(key).await?;
        Ok(record.map(|(name, created_at, external_id)| Shopper {
            id,
            name,
            created_at,
            external_id,
        }))
    }

    /// An account hash's name, creation time and external id; `None`
    /// when there is no such account.
    async fn account_record(
        &self,
        key: String,
    ) -> Result<Option<(String, Timestamp, Option<String>)>, Error> {
        let (name, created_at, external_id): (Option<String>, Option<i64>, Option<String>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("name")
                    .arg("created_at")
                    .arg("ext"),
            )
            .await?;
        Ok(name.map(|name| (name, Timestamp(created_at.unwrap_or(0)), external_id)))
    }

    pub async fn rating(&self, id: MerchantId) -> Result<Option<Rating>, Error> {
        if self.merchant(id).await?.is_none() {
            return Ok(None);
        }
        Ok(self.ratings(&[id]).await?.first().copied())
    }

    /// Each merchant's rating: the review counts and score sums that the
    /// `review` step keeps per shard, summed (one `HMGET` per shard).
    pub(crate) async fn ratings(&self, merchants: &[MerchantId]) -> Result<Vec<Rating>, Error> {
        let mut ratings = vec![Rating::default(); merchants.len()];
        if merchants.is_empty() {
            return Ok(ratings);
        }
        let reads = (0..self.inner.shards).map(|shard| {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys().shard(shard, "ratings"));
            for merchant in merchants {
                cmd.arg(format!("n:{}", merchant.0))
                    .arg(format!("s:{}", merchant.0));
            }
            async move { self.query::<Vec<Option<u64>>>(&cmd).await }
        });
        for values in try_join_all(reads).await? {
            for (index, rating) in ratings.iter_mut().enumerate() {
                let part = |offset: usize| {
                    values
                        .get(index * 2 + offset)
                        .copied()
                        .flatten()
                        .unwrap_or(0)
                };
                rating.reviews = rating.reviews.saturating_add(part(0));
                rating.score_sum = rating.score_sum.saturating_add(part(1));
            }
        }
        Ok(ratings)
    }

    pub async fn create_shopper(
        &self,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<Shopper, Error> {
        flashsale_engine::check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)?;
        let id = self.reserve_shoppers(1).await?;
        let shopper = Shopper {
            id,
            name: name.to_owned(),
            created_at: self.now(),
            external_id: None,
        };
        self.create_accounts(
            &[(id, name.to_owned(), reference.to_owned())],
            credit,
            shopper.created_at,
        )
        .await?;
        Ok(shopper)
    }

    pub(crate) async fn reserve_shoppers(&self, count: u32) -> Result<ShopperId, Error> {
        let last = self.next_ids("shopper", count, false).await?;
        Ok(ShopperId(last + 1 - u64::from(count)))
    }

    /// Creates accounts `(id, name, credit reference)`, one call per shard.
    pub(crate) async fn create_accounts(
        &self,
        accounts: &[(ShopperId, String, String)],
        credit: Money,
        at: Timestamp,
    ) -> Result<(), Error> {
        let mut by_shard: HashMap<usize, Vec<&(ShopperId, String, String)>> = HashMap::new();
        for account in accounts {
            by_shard
                .entry(self.shard_of(account.0))
                .or_default()
                .push(account);
        }
        let created = at.millis().to_string();
        let credit_text = credit.fen().to_string();
        // The epoch the ids were handed out under (the `ids` step), or a
        // newer one: each account keeps it (`other_epoch` in the Lua).
        let epoch = self.epoch().to_string();
        let calls = by_shard.into_iter().map(|(shard, accounts)| {
            let keys = self.keys();
            let call = steps::Accounts {
                books: keys.shard(shard, "books"),
                accounts: accounts
                    .iter()
                    .map(|(id, _, _)| keys.shard_id(shard, "acct", id.0))
                    .collect(),
                created_at: created.clone(),
                credit: credit_text.clone(),
                epoch: epoch.clone(),
                each: accounts
                    .iter()
                    .flat_map(|(id, name, reference)| {
                        [id.0.to_string(), name.clone(), reference.clone()]
                    })
                    .collect(),
            };
            async move { self.run_done(&call).await }
        });
        try_join_all(calls).await?;
        Ok(())
    }

    pub async fn create_shoppers(
        &self,
        count: u32,
        credit: Money,
    ) -> Result<Vec<ShopperId>, Error> {
        if count == 0 || count > flashsale_engine::engine::BULK_SHOPPERS_MAX {
            return Err(Error::Engine(EngineError::Invalid {
                field: "count",
                reason: "must be from 1 to 10000",
            }));
        }
        if credit.fen() > WALLET_FEN_MAX {
            return Err(wallet_too_large());
        }
        let first = self.reserve_shoppers(count).await?;
        let accounts: Vec<(ShopperId, String, String)> = (0..u64::from(count))
            .map(|offset| {
                let id = ShopperId(first.0 + offset);
                (id, id.to_string(), format!("bulk:{id}"))
            })
            .collect();
        self.create_accounts(&accounts, credit, self.now()).await?;
        Ok(accounts.into_iter().map(|(id, _, _)| id).collect())
    }

    pub async fn credit_wallet(
        &self,
        shopper: ShopperId,
        amount: Money,
        reference: &str,
    ) -> Result<Wallet, Error> {
        flashsale_engine::check_credit(amount, reference)?;
        let shard = self.shard_of(shopper);
        let keys = self.keys();
        let call = steps::Credit {
            account: keys.shard_id(shard, "acct", shopper.0),
            books: keys.shard(shard, "books"),
            amount: amount.fen().to_string(),
            reference: reference.to_owned(),
            bound: WALLET_FEN_MAX.to_string(),
            shopper: shopper.0.to_string(),
        };
        let values = self.run_done(&call).await?;
        wallet_of(&values[1..])
    }

    pub async fn wallet(&self, shopper: ShopperId) -> Result<Wallet, Error> {
        let shard = self.shard_of(shopper);
        let values: Vec<Value> = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.keys().shard_id(shard, "acct", shopper.0))
                    .arg("credited")
                    .arg("available")
                    .arg("held")
                    .arg("spent"),
            )
            .await?;
        if values.first().is_none_or(|value| *value == Value::Nil) {
            return Err(Error::Engine(EngineError::NotFound(Entity::Shopper)));
        }
        wallet_of(&values)
    }
}

impl RedisStore {
    pub async fn review(
        &self,
        shopper: ShopperId,
        order: OrderId,
        scores: [u8; 3],
        text: &str,
        epoch: u64,
    ) -> Result<Review, Error> {
        flashsale_engine::check_review(scores, text)?;
        let settled = self.order(order).await?;
        if settled.shopper != shopper {
            return Err(Error::Engine(EngineError::Forbidden(Entity::Order)));
        }
        let merchant = self.entry(settled.deal).await?.merchant;
        let (shard, _) = decompose(order.0);
        let created_at = self.now();
        let [description, delivery, service] = scores.map(|score| score.to_string());
        let keys = self.keys();
        let call = steps::Review {
            orders: keys.shard(shard, "orders"),
            reviews: keys.shard(shard, "reviews"),
            ratings: keys.shard(shard, "ratings"),
            account: keys.shard_id(shard, "acct", shopper.0),
            order: order.0.to_string(),
            shopper: shopper.0.to_string(),
            merchant: merchant.0.to_string(),
            description,
            delivery,
            service,
            text: text.to_owned(),
            created_at: created_at.millis().to_string(),
            epoch: epoch.to_string(),
        };
        self.run_done(&call).await?;
        let [description, delivery, service] = scores;
        Ok(Review {
            order,
            deal: settled.deal,
            merchant,
            shopper,
            description,
            delivery,
            service,
            text: text.to_owned(),
            created_at,
        })
    }

    pub async fn share(
        &self,
        shopper: ShopperId,
        order: OrderId,
        epoch: u64,
    ) -> Result<bool, Error> {
        let (shard, _) = decompose(order.0);
        if shard >= self.inner.shards {
            return Err(Error::Engine(EngineError::NotFound(Entity::Order)));
        }
        let keys = self.keys();
        let call = steps::Share {
            orders: keys.shard(shard, "orders"),
            shared: keys.shard(shard, "shared"),
            stock: keys.shard(shard, "stock"),
            account: keys.shard_id(shard, "acct", shopper.0),
            order: order.0.to_string(),
            shopper: shopper.0.to_string(),
            epoch: epoch.to_string(),
        };
        let values = self.run_done(&call).await?;
        Ok(values.get(1).and_then(text).as_deref() == Some("new"))
    }
}

pub(crate) fn wallet_too_large() -> Error {
    Error::Engine(EngineError::Invalid {
        field: "credit",
        reason: "is larger than a wallet may hold in Redis mode",
    })
}
