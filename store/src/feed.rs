//! [`FeedSource`]: what the feed's sampler reads of either backend, without
//! waiting on the network.

use flashsale_engine::{DealView, Engine, MerchantId, Rating};

/// The newest deals the feed shows at most (`flashsale-redis` keeps its
/// list of deals to this length).
pub use flashsale_redis::FEED_DEALS_MAX;

/// What the sampler reads: the deals with their live numbers, merchants'
/// names and ratings. Synchronous and cheap: the engine answers from its
/// atomics; Redis mode from the numbers its poller last gathered
/// (`flashsale-redis`), so sampling never waits on the network.
pub trait FeedSource: Send + Sync {
    /// The newest `limit` deals, newest first.
    fn deals(&self, limit: usize) -> Vec<DealView>;
    /// A merchant's rating; `None` for an unknown merchant.
    fn rating(&self, merchant: MerchantId) -> Option<Rating>;
    /// A merchant's name; `None` for an unknown merchant.
    fn merchant_name(&self, merchant: MerchantId) -> Option<String>;
}

impl FeedSource for flashsale_redis::RedisStore {
    fn deals(&self, limit: usize) -> Vec<DealView> {
        self.feed_deals(limit)
    }

    fn rating(&self, merchant: MerchantId) -> Option<Rating> {
        self.cached_rating(merchant)
    }

    fn merchant_name(&self, merchant: MerchantId) -> Option<String> {
        self.cached_merchant_name(merchant)
    }
}

impl FeedSource for Engine {
    fn deals(&self, limit: usize) -> Vec<DealView> {
        self.deals_newest_first(None, limit)
    }

    fn rating(&self, merchant: MerchantId) -> Option<Rating> {
        Engine::rating(self, merchant)
    }

    fn merchant_name(&self, merchant: MerchantId) -> Option<String> {
        self.merchant(merchant).map(|merchant| merchant.name)
    }
}
