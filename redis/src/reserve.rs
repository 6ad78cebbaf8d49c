//! The reservation steps: buy, hold, pay a hold, release, expiry and
//! registration, each one step on the shopper's shard (with a refill and a
//! retry when the shard's bucket is short).

use flashsale_engine::{
    Answer, DealId, EngineError, Entity, Hold, HoldId, HoldStatus, Order, ShopperId,
};
use redis::Value;

use crate::batch::Request;
use crate::error::Error;
use crate::replies::{Reply, garbled, hold_of, order_of, text};
use crate::steps;
use crate::{EXPIRY_BATCH_MAX, RedisStore, STEP_ATTEMPTS_MAX};

impl RedisStore {
    /// The shared path of buy and hold (engine: `reserve`), one run of
    /// the step per attempt in its lane's batch (`batch`); `epoch`: the
    /// caller's token's ([`Error::EarlierEpoch`] when the account is of
    /// another).
    pub(crate) async fn reserve(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
        kind: &'static str,
        epoch: u64,
    ) -> Result<(Vec<Value>, bool), Error> {
        flashsale_engine::check_reservation(quantity, key)?;
        let entry = self.entry(deal).await?;
        if entry.sold_out_for(shopper) {
            return Err(Error::Engine(EngineError::SoldOut));
        }
        let shard = self.shard_of(shopper);
        let request = Request {
            shopper,
            kind,
            quantity,
            key: key.to_owned(),
            epoch,
        };
        // A request that found its bucket short and retried on another
        // request's refill refills itself if short again.
        let mut on_others = true;
        for _ in 0..STEP_ATTEMPTS_MAX {
            let (reply, refills) = self.reserve_step(&entry, shard, request.clone()).await?;
            match reply {
                Reply::Done(values) => {
                    let replayed = values.get(3).and_then(text).as_deref() == Some("1");
                    return Ok((values, replayed));
                }
                Reply::Refused(refusal) => return Err(Error::Engine(refusal)),
                Reply::Terms => self.install_terms(&entry, [shard]).await?,
                Reply::Backlog => return Err(Error::BooksBacklog),
                Reply::Refill { need, total } => {
                    let since = on_others.then_some(refills);
                    on_others = false;
                    if !self.refill(&entry, shard, need, total, since).await? {
                        return Err(Error::Engine(EngineError::SoldOut));
                    }
                }
                Reply::Epoch => return Err(Error::EarlierEpoch),
            }
        }
        Err(Error::RedisBusy)
    }
}

impl RedisStore {
    pub async fn register(
        &self,
        shopper: ShopperId,
        deal: DealId,
        epoch: u64,
    ) -> Result<bool, Error> {
        let entry = self.entry(deal).await?;
        let shard = self.shard_of(shopper);
        let keys = self.keys();
        let mut call = steps::Register {
            account: keys.shard_id(shard, "acct", shopper.0),
            stock: keys.shard(shard, "stock"),
            deal: deal.0.to_string(),
            terms: String::new(),
            epoch: epoch.to_string(),
        };
        for _ in 0..STEP_ATTEMPTS_MAX {
            call.terms = entry.terms_arg();
            match self.run(&call, None).await? {
                Reply::Done(values) => {
                    return Ok(values.get(1).and_then(text).as_deref() == Some("new"));
                }
                Reply::Refused(refusal) => return Err(Error::Engine(refusal)),
                Reply::Terms => self.install_terms(&entry, [shard]).await?,
                Reply::Epoch => return Err(Error::EarlierEpoch),
                Reply::Refill { .. } | Reply::Backlog => {
                    return Err(garbled("register cannot refill or answer BACKLOG"));
                }
            }
        }
        Err(Error::RedisBusy)
    }

    pub async fn buy(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
        epoch: u64,
    ) -> Result<(Order, Answer), Error> {
        let (values, replayed) = self
            .reserve(shopper, deal, quantity, key, "order", epoch)
            .await?;
        let answer = if replayed {
            Answer::Replayed
        } else {
            Answer::Settled
        };
        Ok((
            order_of(&values.get(2).and_then(text).unwrap_or_default())?,
            answer,
        ))
    }

    pub async fn hold(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
        epoch: u64,
    ) -> Result<Hold, Error> {
        let (values, _replayed) = self
            .reserve(shopper, deal, quantity, key, "hold", epoch)
            .await?;
        hold_of(&values.get(2).and_then(text).unwrap_or_default())
    }
}

impl RedisStore {
    pub async fn pay_hold(
        &self,
        shopper: ShopperId,
        id: HoldId,
        epoch: u64,
    ) -> Result<Order, Error> {
        let (hold, shard) = self.hold_record(id).await?;
        if hold.shopper != shopper {
            return Err(Error::Engine(EngineError::Forbidden(Entity::Hold)));
        }
        let entry = self.entry(hold.deal).await?;
        let deal = hold.deal;
        let keys = self.keys();
        let mut call = steps::Pay {
            account: keys.shard_id(shard, "acct", shopper.0),
            stock: keys.shard(shard, "stock"),
            orders: keys.shard(shard, "orders"),
            holds: keys.shard(shard, "holds"),
            expiries: keys.shard(shard, "exp"),
            deal_orders: keys.shard_id(shard, "do", deal.0),
            books: keys.shard(shard, "books"),
            hold: id.0.to_string(),
            shopper: shopper.0.to_string(),
            shard: shard.to_string(),
            backlog: self.inner.books_backlog.clone(),
            terms: String::new(),
            epoch: epoch.to_string(),
        };
        for _ in 0..STEP_ATTEMPTS_MAX {
            call.terms = entry.terms_arg();
            match self.run(&call, Some(id)).await? {
                Reply::Done(values) => {
                    return order_of(&values.get(2).and_then(text).unwrap_or_default());
                }
                Reply::Refused(refusal) => {
                    if matches!(refusal, EngineError::HoldExpired { .. }) {
                        // The expired hold's units went back to the bucket.
                        self.return_stock(deal, shard).await?;
                    }
                    return Err(Error::Engine(refusal));
                }
                Reply::Terms => self.install_terms(&entry, [shard]).await?,
                Reply::Backlog => return Err(Error::BooksBacklog),
                Reply::Refill { need, total } => {
                    if !self.refill(&entry, shard, need, total, None).await? {
                        return Err(Error::Engine(EngineError::HoldExpired { hold: id }));
                    }
                }
                Reply::Epoch => return Err(Error::EarlierEpoch),
            }
        }
        Err(Error::RedisBusy)
    }

    pub async fn release_hold(
        &self,
        shopper: ShopperId,
        id: HoldId,
        epoch: u64,
    ) -> Result<Hold, Error> {
        let (_, shard) = self.hold_record(id).await?;
        self.release(
            id,
            shard,
            shopper,
            &shopper.0.to_string(),
            &epoch.to_string(),
        )
        .await
    }

    /// The `release` step for the caller (`who` its id, `epoch` its
    /// token's) or the expiry sweep (`who` is `*`, `shopper` the hold's
    /// own, `epoch` empty).
    pub(crate) async fn release(
        &self,
        id: HoldId,
        shard: usize,
        shopper: ShopperId,
        who: &str,
        epoch: &str,
    ) -> Result<Hold, Error> {
        let keys = self.keys();
        let call = steps::Release {
            account: keys.shard_id(shard, "acct", shopper.0),
            stock: keys.shard(shard, "stock"),
            holds: keys.shard(shard, "holds"),
            expiries: keys.shard(shard, "exp"),
            hold: id.0.to_string(),
            shopper: who.to_owned(),
            epoch: epoch.to_owned(),
        };
        let values = match self.run(&call, Some(id)).await? {
            Reply::Done(values) => values,
            Reply::Refused(refusal) => return Err(Error::Engine(refusal)),
            Reply::Epoch => return Err(Error::EarlierEpoch),
            Reply::Refill { .. } | Reply::Terms | Reply::Backlog => {
                return Err(garbled("release cannot refill or answer TERMS or BACKLOG"));
            }
        };
        let hold = hold_of(&values.get(2).and_then(text).unwrap_or_default())?;
        if matches!(hold.status, HoldStatus::Released | HoldStatus::Expired) {
            self.return_stock(hold.deal, shard).await?;
        }
        Ok(hold)
    }

    pub async fn expire_holds(&self) -> Result<usize, Error> {
        let now = self.now().millis();
        let mut expired = 0;
        for shard in 0..self.inner.shards {
            let due: Vec<u64> = self
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.keys().shard(shard, "exp"))
                        .arg("-inf")
                        .arg(now)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(EXPIRY_BATCH_MAX),
                )
                .await?;
            for id in due {
                let (hold, _) = self.hold_record(HoldId(id)).await?;
                self.release(HoldId(id), shard, hold.shopper, "*", "")
                    .await?;
                expired += 1;
            }
        }
        Ok(expired)
    }
}
