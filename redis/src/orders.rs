//! Orders and holds by id, and the pages of a deal's or a shopper's
//! orders.

use flashsale_engine::ids::decompose;
use flashsale_engine::{
    DealId, EngineError, Entity, Hold, HoldId, Order, OrderCursor, OrderId, OrderPage, ShopperId,
};

use crate::error::Error;
use crate::replies::{hold_of, order_of};
use crate::{ORDERS_PAGE_READ_MAX, RedisStore};

impl RedisStore {
    /// The JSON of an order or hold (`table` "orders" or "holds") by id,
    /// with the shard its low bits name; `NotFound(entity)` when there is
    /// none.
    pub(crate) async fn record(
        &self,
        id: u64,
        table: &str,
        entity: Entity,
    ) -> Result<(String, usize), Error> {
        let (shard, _) = decompose(id);
        let missing = || Error::Engine(EngineError::NotFound(entity));
        if shard >= self.inner.shards {
            return Err(missing());
        }
        let json: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().shard(shard, table))
                    .arg(id),
            )
            .await?;
        Ok((json.ok_or_else(missing)?, shard))
    }

    /// The hold's record, with the shard that owns it.
    pub(crate) async fn hold_record(&self, id: HoldId) -> Result<(Hold, usize), Error> {
        let (json, shard) = self.record(id.0, "holds", Entity::Hold).await?;
        Ok((hold_of(&json)?, shard))
    }
}

impl RedisStore {
    pub async fn order(&self, id: OrderId) -> Result<Order, Error> {
        order_of(&self.record(id.0, "orders", Entity::Order).await?.0)
    }

    /// Orders of `ids` on `shard`, in the order given.
    pub(crate) async fn orders_on(&self, shard: usize, ids: &[u64]) -> Result<Vec<Order>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let jsons: Vec<Option<String>> = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.keys().shard(shard, "orders"))
                    .arg(ids),
            )
            .await?;
        jsons.iter().flatten().map(|json| order_of(json)).collect()
    }

    pub async fn orders_of_deal(
        &self,
        deal: DealId,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        let mut orders = Vec::with_capacity(limit.min(ORDERS_PAGE_READ_MAX));
        let mut shard = from.shard as usize;
        let mut position = from.position as usize;
        while shard < self.inner.shards && orders.len() < limit {
            let want = (limit - orders.len()).min(ORDERS_PAGE_READ_MAX);
            let ids: Vec<u64> = self
                .query(
                    redis::cmd("LRANGE")
                        .arg(self.keys().shard_id(shard, "do", deal.0))
                        .arg(position)
                        .arg(position + want - 1),
                )
                .await?;
            let read = ids.len();
            orders.extend(self.orders_on(shard, &ids).await?);
            if read < want {
                shard += 1;
                position = 0;
            } else {
                position += read;
            }
        }
        let next = (shard < self.inner.shards).then_some(OrderCursor {
            shard: shard as u32,
            position: position as u32,
        });
        Ok(OrderPage { orders, next })
    }

    /// The shopper's orders, oldest first, from its account's `o:<order>`
    /// fields (their ids grow with the shard's order sequence); `deal`
    /// keeps one deal's.
    pub async fn orders_of_shopper(
        &self,
        shopper: ShopperId,
        deal: Option<DealId>,
        from: OrderCursor,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        let shard = self.shard_of(shopper);
        let fields: Vec<String> = self
            .query(redis::cmd("HKEYS").arg(self.keys().shard_id(shard, "acct", shopper.0)))
            .await?;
        let mut ids: Vec<u64> = fields
            .iter()
            .filter_map(|field| field.strip_prefix("o:")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let ids = ids.get(from.position as usize..).unwrap_or_default();
        let mut orders = Vec::new();
        let mut position = from.position as usize;
        for chunk in ids.chunks(ORDERS_PAGE_READ_MAX) {
            for order in self.orders_on(shard, chunk).await? {
                if orders.len() == limit {
                    break;
                }
                position += 1;
                if deal.is_none_or(|deal| order.deal == deal) {
                    orders.push(order);
                }
            }
        }
        let next = (position < from.position as usize + ids.len()).then_some(OrderCursor {
            shard: 0,
            position: position as u32,
        });
        Ok(OrderPage { orders, next })
    }
}
