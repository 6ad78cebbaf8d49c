//! Settled orders: reading one, listing a deal's or a shopper's, and a
//! shopper's review and share of its own order (the rules:
//! [`crate::rules::decide_review`], [`crate::rules::decide_share`]).

use crate::error::{EngineError, Entity};
use crate::event::Event;
use crate::ids::{DealId, OrderId, ShopperId};
use crate::records::{Order, Review};
use crate::rules::{self, ReviewView, ShareEffects, ShareView};

use super::validate::check_review;
use super::{Engine, OrderCursor, OrderPage};

impl Engine {
    /// Reviews a settled order, once, by its shopper: three scores from 1 to
    /// 5 and an optional text of at most `REVIEW_TEXT_CHARS_MAX` characters.
    /// The merchant's rating follows. The rule: [`rules::decide_review`].
    pub fn review(
        &self,
        shopper: ShopperId,
        order: OrderId,
        scores: [u8; 3],
        text: &str,
    ) -> Result<Review, EngineError> {
        check_review(scores, text)?;
        let now = self.now();
        let (review, effects) = {
            let mut shard = self
                .lock_owner_of(order.0)
                .ok_or(EngineError::NotFound(Entity::Order))?;
            let settled = shard
                .order(order)
                .ok_or(EngineError::NotFound(Entity::Order))?;
            let effects = rules::decide_review(&ReviewView {
                own: settled.shopper == shopper,
                reviewed: shard.reviews.contains_key(&order),
                scores,
            })?;
            let deal = self.deal_state(settled.deal)?;
            let [description, delivery, service] = scores;
            let review = Review {
                order,
                deal: settled.deal,
                merchant: deal.merchant,
                shopper,
                description,
                delivery,
                service,
                text: text.to_owned(),
                created_at: now,
            };
            self.sink.emit(Event::Reviewed {
                review: review.clone(),
            });
            shard.reviews.insert(order, review.clone());
            (review, effects)
        };
        // After the shard lock is released: one lock at a time.
        if let Some(merchant) = self.merchants.get(review.merchant.0) {
            merchant.add_review(effects.score_sum);
        }
        Ok(review)
    }

    /// Counts a shared order toward its deal's popularity, once per order.
    /// `Ok(true)` the first time, `Ok(false)` after. The rule:
    /// [`rules::decide_share`].
    pub fn share(&self, shopper: ShopperId, order: OrderId) -> Result<bool, EngineError> {
        let now = self.now();
        let mut shard = self
            .lock_owner_of(order.0)
            .ok_or(EngineError::NotFound(Entity::Order))?;
        let settled = shard
            .order(order)
            .ok_or(EngineError::NotFound(Entity::Order))?;
        let effects = rules::decide_share(&ShareView {
            own: settled.shopper == shopper,
            shared: shard.shared.contains(&order),
        })?;
        let deal = self.deal_state(settled.deal)?;
        if effects == ShareEffects::Already {
            return Ok(false);
        }
        shard.shared.insert(order);
        self.sink.emit(Event::Shared {
            order,
            deal: deal.id,
            at: now,
        });
        deal.add_share();
        Ok(true)
    }

    // ----- orders -------------------------------------------------------------------

    pub fn order(&self, id: OrderId) -> Result<Order, EngineError> {
        let shard = self
            .lock_owner_of(id.0)
            .ok_or(EngineError::NotFound(Entity::Order))?;
        shard
            .order(id)
            .cloned()
            .ok_or(EngineError::NotFound(Entity::Order))
    }

    /// A deal's orders across all shards, in (shard, time) order, one shard
    /// lock at a time.
    pub fn orders_of_deal(&self, deal: DealId, from: OrderCursor, limit: usize) -> OrderPage {
        let mut orders = Vec::with_capacity(limit.min(1024));
        let mut cursor = from;
        while (cursor.shard as usize) < self.shards.len() {
            let shard = self.shards[cursor.shard as usize].lock();
            let ids = shard
                .orders_by_deal
                .get(&deal)
                .map_or(&[][..], |ids| &ids[..]);
            let start = (cursor.position as usize).min(ids.len());
            let room = limit - orders.len();
            let page = &ids[start..ids.len().min(start + room)];
            orders.extend(page.iter().filter_map(|&id| shard.order(id).cloned()));
            cursor.position = (start + page.len()) as u32;
            if orders.len() == limit {
                let more = cursor.position as usize != ids.len()
                    || (cursor.shard as usize + 1) < self.shards.len();
                return OrderPage {
                    orders,
                    next: more.then_some(cursor),
                };
            }
            cursor = OrderCursor {
                shard: cursor.shard + 1,
                position: 0,
            };
        }
        OrderPage { orders, next: None }
    }

    /// A shopper's own orders, oldest first, optionally of one deal.
    pub fn orders_of_shopper(
        &self,
        shopper: ShopperId,
        deal: Option<DealId>,
        from: OrderCursor,
        limit: usize,
    ) -> OrderPage {
        let shard = self.lock_shopper(shopper);
        let Some(account) = shard.accounts.get(&shopper) else {
            return OrderPage {
                orders: Vec::new(),
                next: None,
            };
        };
        let mut orders = Vec::with_capacity(limit.min(1024));
        let mut position = from.position as usize;
        while position < account.orders.len() && orders.len() < limit {
            if let Some(order) = shard.order(account.orders[position])
                && deal.is_none_or(|deal| order.deal == deal)
            {
                orders.push(order.clone());
            }
            position += 1;
        }
        let next = (position < account.orders.len()).then_some(OrderCursor {
            shard: 0,
            position: position as u32,
        });
        OrderPage { orders, next }
    }
}
