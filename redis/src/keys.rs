//! The key layout: every key name of a deployment (the crate doc's table),
//! and which virtual shard a shopper's keys live on.

use flashsale_engine::ids::shard_of;
use flashsale_engine::{DealId, MerchantId, ShopperId};

use crate::RedisStore;

/// Key names (the module doc's table).
pub(crate) struct Keys {
    pub(crate) namespace: String,
}

impl Keys {
    /// `ns:{s:K}:part`.
    pub(crate) fn shard(&self, shard: usize, part: &str) -> String {
        format!("{}:{{s:{shard}}}:{part}", self.namespace)
    }
    /// `ns:{s:K}:part:id`.
    pub(crate) fn shard_id(&self, shard: usize, part: &str, id: u64) -> String {
        format!("{}:{{s:{shard}}}:{part}:{id}", self.namespace)
    }
    pub(crate) fn deal(&self, deal: DealId) -> String {
        format!("{}:{{d:{}}}", self.namespace, deal.0)
    }
    pub(crate) fn deal_part(&self, deal: DealId, part: &str) -> String {
        format!("{}:{{d:{}}}:{part}", self.namespace, deal.0)
    }
    /// `ns:{g}:part`.
    pub(crate) fn global(&self, part: &str) -> String {
        format!("{}:{{g}}:{part}", self.namespace)
    }
    /// `ns:{g}:m:<merchant>`.
    pub(crate) fn merchant(&self, merchant: MerchantId) -> String {
        format!("{}:{{g}}:m:{}", self.namespace, merchant.0)
    }
    pub(crate) fn channel(&self) -> String {
        format!("{}:deals", self.namespace)
    }
}
impl RedisStore {
    pub(crate) fn shard_of(&self, shopper: ShopperId) -> usize {
        shard_of(shopper, self.inner.shards)
    }
}
