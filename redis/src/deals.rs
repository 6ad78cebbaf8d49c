//! Deals: creating, reading, changing (pause, resume, restock, extend)
//! and listing them newest first; raffles are one-node only.

use flashsale_engine::{
    Allocation, DealChange, DealId, DealView, EngineError, Entity, MerchantId, NewDeal, ShopperId,
};

use crate::error::Error;
use crate::steps;
use crate::{RedisStore, WALLET_FEN_MAX};

impl RedisStore {
    pub async fn create_deal(&self, merchant: MerchantId, new: NewDeal) -> Result<DealView, Error> {
        let now = self.now();
        if new.allocation != Allocation::FirstCome {
            // Raffles run on one node only (README).
            return Err(Error::Engine(EngineError::Invalid {
                field: "allocation",
                reason: "raffle is not available in Redis mode; run one node without --redis-url",
            }));
        }
        let spec = flashsale_engine::validate_deal(new, now)?;
        if spec
            .price
            .fen()
            .checked_mul(i64::from(spec.per_user_limit))
            .is_none_or(|fen| fen > WALLET_FEN_MAX)
        {
            return Err(Error::Engine(EngineError::Invalid {
                field: "price",
                reason: "times per_user_limit is too large",
            }));
        }
        if self.merchant(merchant).await?.is_none() {
            return Err(Error::Engine(EngineError::NotFound(Entity::Merchant)));
        }
        // The id and its place in the deal index come in one step; the deal
        // itself, complete, with its books entry in one `create` step after
        // it. A crash between the two leaves an indexed id without a deal,
        // which every reader skips (`entry` finds no deal): the deal exists
        // whole or not at all, and is listed as soon as it exists. Its terms'
        // version reaches a shard with the first step there that needs it
        // (its `TERMS` answer), so a shard's stock hash holds fields only
        // of the deals sold there.
        let deal = DealId(self.next_ids("deal", 1, true).await?);
        let call = steps::Create {
            deal: self.keys().deal(deal),
            books: self.keys().deal_part(deal, "books"),
            merchant: merchant.0.to_string(),
            title: spec.title.clone(),
            price: spec.price.fen().to_string(),
            stock: spec.stock.to_string(),
            limit: spec.per_user_limit.to_string(),
            starts: spec.starts_at.millis().to_string(),
            ends: spec.ends_at.millis().to_string(),
            registration: if spec.requires_registration { "1" } else { "0" }.to_owned(),
            hold_seconds: spec.hold_seconds.to_string(),
            created_at: now.millis().to_string(),
        };
        self.run_done(&call).await?;
        let entry = self.entry(deal).await?;
        Ok(entry.view(self.now()))
    }

    pub async fn deal(&self, id: DealId) -> Result<DealView, Error> {
        let entry = self.entry(id).await?;
        self.refresh(&entry).await?;
        Ok(entry.view(self.now()))
    }

    pub async fn update_deal(
        &self,
        merchant: MerchantId,
        id: DealId,
        change: DealChange,
    ) -> Result<DealView, Error> {
        let entry = self.entry(id).await?;
        if entry.merchant != merchant {
            return Err(Error::Engine(EngineError::Forbidden(Entity::Deal)));
        }
        if change.add_stock == Some(0) {
            return Err(Error::Engine(EngineError::Invalid {
                field: "add_stock",
                reason: "must be at least 1",
            }));
        }
        let call = steps::Update {
            deal: self.keys().deal(id),
            books: self.keys().deal_part(id, "books"),
            merchant: merchant.0.to_string(),
            add_stock: change
                .add_stock
                .map(|units| units.to_string())
                .unwrap_or_default(),
            ends_at: change
                .ends_at
                .map(|at| at.millis().to_string())
                .unwrap_or_default(),
            paused: change
                .paused
                .map(|paused| if paused { "1" } else { "0" })
                .unwrap_or("")
                .to_owned(),
            stock_max: flashsale_engine::engine::STOCK_MAX.to_string(),
            channel: self.keys().channel(),
        };
        self.run_done(&call).await?;
        if change.ends_at.is_some() || change.paused.is_some() {
            self.install_terms(&entry, 0..self.inner.shards).await?;
        }
        self.refresh(&entry).await?;
        Ok(entry.view(self.now()))
    }

    pub async fn deals_newest_first(
        &self,
        before: Option<DealId>,
        limit: usize,
    ) -> Result<Vec<DealView>, Error> {
        let top = before.map_or_else(|| "+inf".to_owned(), |before| format!("({}", before.0));
        let ids: Vec<u64> = self
            .query(
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(self.keys().global("deals"))
                    .arg(top)
                    .arg("-inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        let now = self.now();
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(entry) = self.entry(DealId(id)).await {
                views.push(entry.view(now));
            }
        }
        Ok(views)
    }

    /// Redis mode has no raffles (creating one is refused), so no deal
    /// has a draw: `NotFound(Draw)` for a deal that exists.
    pub(crate) async fn no_draw(&self, deal: DealId) -> Result<std::convert::Infallible, Error> {
        self.deal(deal).await?;
        Err(Error::Engine(EngineError::NotFound(Entity::Draw)))
    }

    pub async fn draw_record(
        &self,
        deal: DealId,
        _from: u64,
        _limit: usize,
    ) -> Result<flashsale_engine::DrawRecord, Error> {
        match self.no_draw(deal).await? {}
    }

    pub async fn draw_registrants(
        &self,
        deal: DealId,
        _from: u64,
        _limit: usize,
    ) -> Result<(Vec<ShopperId>, Option<u64>), Error> {
        match self.no_draw(deal).await? {}
    }

    pub async fn draw_standing(
        &self,
        _shopper: ShopperId,
        deal: DealId,
    ) -> Result<flashsale_engine::DrawStanding, Error> {
        match self.no_draw(deal).await? {}
    }

    /// No raffles in Redis mode: nothing to draw.
    pub async fn run_draws(&self) -> Result<usize, Error> {
        Ok(0)
    }
}
