//! The embedded store: the in-memory engine and its journal, one node.
//!
//! Each change is one synchronous engine call (which hands its event to the
//! journal under the shard lock), then a wait until the journal says
//! everything written so far is durable ([`MemoryStore::commit`]): with
//! `--durability sync` that is the group commit's fsync, with `async` it
//! returns at once. Reads are engine calls and wait for nothing. A refusal
//! returns before the wait: it changed nothing, so there is nothing to make
//! durable.

use std::sync::Arc;

use flashsale_engine::{
    Account, Answer, DealChange, DealId, DealView, DrawRecord, DrawStanding, Engine, Hold, HoldId,
    Merchant, MerchantId, Money, NewDeal, Order, OrderCursor, OrderId, OrderPage, Rating, Review,
    Shopper, ShopperId, Timestamp, Wallet,
};
use flashsale_journal::Journal;

use crate::error::StoreError as Error;
use crate::feed::FeedSource;

/// How long a revocation's answer waits at most for the clock to reach its
/// not-before time (one millisecond ahead; a clock stepped back waits no
/// longer than this).
const CLOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// The embedded store: the engine and the journal its events go to.
pub struct MemoryStore {
    pub engine: Arc<Engine>,
    pub journal: Arc<Journal>,
}

impl MemoryStore {
    /// Waits until every event emitted so far, the caller's included, is
    /// durable. Called after a change and before it is acknowledged.
    async fn commit(&self) -> Result<(), Error> {
        let position = self.journal.written();
        self.journal.durable(position).await.map_err(|error| {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "a change could not be made durable"
            );
            Error::Journal(error)
        })
    }

    /// A change's result, acknowledged once durable.
    async fn committed<T>(
        &self,
        result: Result<T, flashsale_engine::EngineError>,
    ) -> Result<T, Error> {
        let value = result?;
        self.commit().await?;
        Ok(value)
    }

    pub fn now(&self) -> Timestamp {
        self.engine.now()
    }

    pub fn not_ready(&self) -> Option<&'static str> {
        (!self.journal.is_ready()).then_some("the journal is not ready")
    }

    pub fn feed_source(&self) -> &dyn FeedSource {
        &*self.engine
    }

    pub async fn create_merchant(&self, name: &str) -> Result<Merchant, Error> {
        self.committed(self.engine.create_merchant(name)).await
    }

    /// Revokes the account's tokens ([`Engine::revoke_tokens`]), durably,
    /// and answers once the engine's clock has reached the not-before time
    /// (at most `CLOCK_WAIT_MAX`, 50 ms, more), so a token issued after the
    /// answer is on the right side of it.
    pub async fn revoke_tokens(&self, account: Account) -> Result<Timestamp, Error> {
        let not_before = self.committed(self.engine.revoke_tokens(account)).await?;
        let deadline = tokio::time::Instant::now() + CLOCK_WAIT_MAX;
        while self.engine.now() < not_before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(not_before)
    }

    /// The account's token not-before time ([`Engine::tokens_not_before`]).
    pub fn tokens_not_before(&self, account: Account) -> Option<Timestamp> {
        self.engine.tokens_not_before(account)
    }

    pub async fn merchant(&self, id: MerchantId) -> Result<Option<Merchant>, Error> {
        Ok(self.engine.merchant(id))
    }

    pub async fn rating(&self, id: MerchantId) -> Result<Option<Rating>, Error> {
        Ok(self.engine.rating(id))
    }

    pub async fn create_shopper(
        &self,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<Shopper, Error> {
        let shopper = self.engine.create_shopper(name)?;
        if credit != Money::ZERO
            && let Err(error) = self.engine.credit_wallet(shopper.id, credit, reference)
        {
            // The account exists and is journalled; the admin can still credit it.
            tracing::warn!(
                shopper = %shopper.id,
                error = &error as &dyn std::error::Error,
                "the signup credit was refused"
            );
        }
        self.commit().await?;
        Ok(shopper)
    }

    /// The engine's `link_shopper_credited`: the signup credit lands with
    /// the new shopper, under the engine's link map.
    pub async fn link_shopper(
        &self,
        external_id: &str,
        name: &str,
        credit: Money,
        reference: &str,
    ) -> Result<(Shopper, bool), Error> {
        // A found shopper may still be on its way to the disk (made by a
        // racing request an instant ago): its answer waits for it too.
        self.committed(
            self.engine
                .link_shopper_credited(external_id, name, credit, reference),
        )
        .await
    }

    pub async fn link_merchant(
        &self,
        external_id: &str,
        name: &str,
    ) -> Result<(Merchant, bool), Error> {
        self.committed(self.engine.link_merchant(external_id, name))
            .await
    }

    pub async fn shopper_of_external(&self, external_id: &str) -> Result<Option<ShopperId>, Error> {
        Ok(self.engine.shopper_of_external(external_id))
    }

    pub async fn shopper(&self, id: ShopperId) -> Result<Option<Shopper>, Error> {
        Ok(self.engine.shopper(id))
    }

    pub async fn create_shoppers(
        &self,
        count: u32,
        credit: Money,
    ) -> Result<Vec<ShopperId>, Error> {
        self.committed(self.engine.create_shoppers(count, credit))
            .await
    }

    pub async fn credit_wallet(
        &self,
        shopper: ShopperId,
        amount: Money,
        reference: &str,
    ) -> Result<Wallet, Error> {
        self.committed(self.engine.credit_wallet(shopper, amount, reference))
            .await
    }

    pub async fn wallet(&self, shopper: ShopperId) -> Result<Wallet, Error> {
        Ok(self.engine.wallet(shopper)?)
    }

    pub async fn create_deal(&self, merchant: MerchantId, new: NewDeal) -> Result<DealView, Error> {
        self.committed(self.engine.create_deal(merchant, new)).await
    }

    pub async fn deal(&self, id: DealId) -> Result<DealView, Error> {
        Ok(self.engine.deal(id)?)
    }

    pub async fn update_deal(
        &self,
        merchant: MerchantId,
        id: DealId,
        change: DealChange,
    ) -> Result<DealView, Error> {
        self.committed(self.engine.update_deal(merchant, id, change))
            .await
    }

    pub async fn deals_newest_first(
        &self,
        before: Option<DealId>,
        limit: usize,
    ) -> Result<Vec<DealView>, Error> {
        Ok(self.engine.deals_newest_first(before, limit))
    }

    pub async fn draw_record(
        &self,
        deal: DealId,
        from: u64,
        limit: usize,
    ) -> Result<DrawRecord, Error> {
        Ok(self.engine.draw_record(deal, from, limit)?)
    }

    pub async fn draw_registrants(
        &self,
        deal: DealId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<ShopperId>, Option<u64>), Error> {
        Ok(self.engine.draw_registrants(deal, from, limit)?)
    }

    pub async fn draw_standing(
        &self,
        shopper: ShopperId,
        deal: DealId,
    ) -> Result<DrawStanding, Error> {
        Ok(self.engine.draw_standing(shopper, deal)?)
    }

    /// One bounded step on a blocking thread: ranking a million
    /// registrants takes a CPU for a fraction of a second, which must not
    /// stall a runtime worker. Journalled; nobody waits on it (the next
    /// acknowledged change makes it durable, as with expiry).
    pub async fn run_draws(&self) -> Result<usize, Error> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.run_draws())
            .await
            .map_err(Error::Task)
    }

    pub async fn register(&self, shopper: ShopperId, deal: DealId) -> Result<bool, Error> {
        self.committed(self.engine.register(shopper, deal)).await
    }

    pub async fn buy(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
    ) -> Result<(Order, Answer), Error> {
        self.committed(self.engine.buy_answer(shopper, deal, quantity, key))
            .await
    }

    pub async fn hold(
        &self,
        shopper: ShopperId,
        deal: DealId,
        quantity: u32,
        key: &str,
    ) -> Result<Hold, Error> {
        self.committed(self.engine.hold(shopper, deal, quantity, key))
            .await
    }

    pub async fn pay_hold(&self, shopper: ShopperId, hold: HoldId) -> Result<Order, Error> {
        self.committed(self.engine.pay_hold(shopper, hold)).await
    }

    pub async fn release_hold(&self, shopper: ShopperId, hold: HoldId) -> Result<Hold, Error> {
        self.committed(self.engine.release_hold(shopper, hold))
            .await
    }

    /// Expiry is journalled like any change, but nobody waits on it: the
    /// next acknowledged change makes it durable too.
    pub async fn expire_holds(&self) -> Result<usize, Error> {
        Ok(self.engine.expire_holds())
    }

    pub async fn review(
        &self,
        shopper: ShopperId,
        order: OrderId,
        scores: [u8; 3],
        text: &str,
    ) -> Result<Review, Error> {
        self.committed(self.engine.review(shopper, order, scores, text))
            .await
    }

    pub async fn share(&self, shopper: ShopperId, order: OrderId) -> Result<bool, Error> {
        self.committed(self.engine.share(shopper, order)).await
    }

    pub async fn order(&self, id: OrderId) -> Result<Order, Error> {
        Ok(self.engine.order(id)?)
    }

    pub async fn orders_of_deal(
        &self,
        deal: DealId,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        Ok(self.engine.orders_of_deal(deal, from, limit))
    }

    pub async fn orders_of_shopper(
        &self,
        shopper: ShopperId,
        deal: Option<DealId>,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        Ok(self.engine.orders_of_shopper(shopper, deal, from, limit))
    }
}
