//! The node's cache of deals: terms and live numbers per deal, the
//! sold-out flag with the shoppers that have a record on it, installing a
//! deal's terms on a shard, and the feed's view of the newest deals.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flashsale_engine::{
    Clock, DealId, DealStatus, DealView, EngineError, Entity, MerchantId, Money, Rating, ShopperId,
    StockCounts, Timestamp,
};
use futures_util::future::try_join_all;
use parking_lot::{Mutex, RwLock};

use crate::error::Error;
use crate::replies::{entry_of, live_of};
use crate::steps;
use crate::{RedisStore, SUM_FIELDS, SUM_PARTS};

/// A deal's terms and numbers as this node last saw them.
pub(crate) struct DealEntry {
    pub(crate) id: DealId,
    pub(crate) merchant: MerchantId,
    pub(crate) title: String,
    pub(crate) price: Money,
    pub(crate) per_user_limit: u32,
    pub(crate) starts_at: Timestamp,
    pub(crate) requires_registration: bool,
    pub(crate) hold_seconds: u32,
    pub(crate) created_at: Timestamp,
    pub(crate) live: Mutex<DealLive>,
    /// The local sold-out flag: set only once `records` holds every shopper
    /// with a record on the deal, cleared on restock or returned stock.
    pub(crate) sold_out: AtomicBool,
    pub(crate) records: RwLock<HashSet<ShopperId>>,
    /// One refill or sweep of this deal at a time on this node.
    pub(crate) refill: tokio::sync::Mutex<()>,
    /// The refills this node made of each shard's bucket of the deal (at
    /// most one entry per shard), so that the requests of one call that
    /// all found the bucket short move one chunk, not one each
    /// ([`RedisStore::refill`]).
    pub(crate) refills: Mutex<HashMap<usize, u64>>,
}

impl DealEntry {
    /// The refills this node made of `shard`'s bucket so far.
    pub(crate) fn refills_of(&self, shard: usize) -> u64 {
        self.refills.lock().get(&shard).copied().unwrap_or(0)
    }
}

#[derive(Clone, Copy, Default)]
pub(crate) struct DealLive {
    /// The deal hash's change count (`c`) when these fields were read.
    pub(crate) changes: u64,
    pub(crate) version: u64,
    pub(crate) ends_at: Timestamp,
    pub(crate) paused: bool,
    pub(crate) total: u64,
    pub(crate) pool: u64,
    pub(crate) marked_sold_out: bool,
    /// Summed over the shards by the poller (or a fresh read).
    pub(crate) buckets: u64,
    pub(crate) held: u64,
    pub(crate) sold: u64,
    pub(crate) buyers: u64,
    pub(crate) registrations: u64,
    pub(crate) shares: u64,
}

impl DealEntry {
    pub(crate) fn view(&self, now: Timestamp) -> DealView {
        let live = *self.live.lock();
        let counts = StockCounts {
            total: live.total,
            remaining: live.pool.saturating_add(live.buckets),
            held: live.held,
            sold: live.sold,
        };
        DealView {
            id: self.id,
            merchant: self.merchant,
            title: self.title.clone(),
            price: self.price,
            per_user_limit: self.per_user_limit,
            starts_at: self.starts_at,
            ends_at: live.ends_at,
            requires_registration: self.requires_registration,
            hold_seconds: self.hold_seconds,
            raffle: None,
            created_at: self.created_at,
            paused: live.paused,
            status: DealStatus::at(now, live.paused, self.starts_at, live.ends_at, &counts),
            counts,
            registrations: live.registrations,
            buyers: live.buyers,
            shares: live.shares,
        }
    }

    /// The deal's terms as a step takes them (the library's `terms_of`):
    /// `version:price:limit:starts:ends:paused:registration:hold_seconds`,
    /// price in fen, times in ms, flags 1|0. The shard checks only the
    /// version against its own and answers `TERMS` when they differ.
    pub(crate) fn terms_arg(&self) -> String {
        let live = *self.live.lock();
        format!(
            "{}:{}:{}:{}:{}:{}:{}:{}",
            live.version,
            self.price.fen(),
            self.per_user_limit,
            self.starts_at.millis(),
            live.ends_at.millis(),
            u8::from(live.paused),
            u8::from(self.requires_registration),
            self.hold_seconds
        )
    }

    /// The lock-free refusal of the rejected majority: flagged sold out and
    /// the shopper has nothing to replay.
    pub(crate) fn sold_out_for(&self, shopper: ShopperId) -> bool {
        self.sold_out.load(Ordering::Acquire) && !self.records.read().contains(&shopper)
    }
}

impl RedisStore {
    /// The deal's entry, read from Redis when this node has not seen it.
    pub(crate) async fn entry(&self, id: DealId) -> Result<Arc<DealEntry>, Error> {
        if let Some(entry) = self.inner.deals.read().get(&id) {
            return Ok(entry.clone());
        }
        let fields: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal(id)))
            .await?;
        let entry = Arc::new(entry_of(id, &fields)?);
        Ok(self.inner.deals.write().entry(id).or_insert(entry).clone())
    }

    /// Reads the deal's terms afresh into `entry` (the newer of what it
    /// had and what Redis has) and installs their version on `shards`, all
    /// calls in flight at once: a step's `TERMS` answer on one shard, a
    /// change of the terms on every shard before it is answered. Errors:
    /// the deal is gone (`not_found`), Redis.
    pub(crate) async fn install_terms(
        &self,
        entry: &DealEntry,
        shards: impl IntoIterator<Item = usize>,
    ) -> Result<(), Error> {
        let fields: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal(entry.id)))
            .await?;
        if fields.is_empty() {
            return Err(Error::Engine(EngineError::NotFound(Entity::Deal)));
        }
        let fresh = live_of(&fields);
        entry.live.lock().take_terms(&fresh);
        let (deal, version) = (entry.id.0.to_string(), fresh.version.to_string());
        try_join_all(shards.into_iter().map(|shard| {
            let call = steps::Terms {
                stock: self.keys().shard(shard, "stock"),
                deal: deal.clone(),
                version: version.clone(),
            };
            async move { self.run_done(&call).await }
        }))
        .await?;
        Ok(())
    }

    /// Reads the deal's fields and its numbers on every shard, fresh.
    pub(crate) async fn refresh(&self, entry: &DealEntry) -> Result<(), Error> {
        let fields: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal(entry.id)))
            .await?;
        if fields.is_empty() {
            // Redis lost it (its data, before the poll saw the new epoch).
            self.inner.deals.write().remove(&entry.id);
            return Err(Error::Engine(EngineError::NotFound(Entity::Deal)));
        }
        let mut live = live_of(&fields);
        let sums = self.shard_sums(&[entry.id]).await?;
        if let Some(sum) = sums.first() {
            live.set_sums(sum);
        }
        self.learn(entry, live).await;
        Ok(())
    }

    /// Per deal, the sums over every shard of [`SUM_FIELDS`], all shards
    /// in flight at once. A shard's stock hash holds fields only of the
    /// deals sold there, so for many deals the shard's whole hash is often
    /// the smaller read: its length first (`HLEN`), then `HGETALL` when it
    /// has at most the fields asked for, else one `HMGET` of six fields per
    /// deal (one deal: the `HMGET` alone).
    pub(crate) async fn shard_sums(
        &self,
        deals: &[DealId],
    ) -> Result<Vec<[u64; SUM_PARTS]>, Error> {
        let mut sums = vec![[0u64; SUM_PARTS]; deals.len()];
        if deals.is_empty() {
            return Ok(sums);
        }
        let index: HashMap<u64, usize> = deals
            .iter()
            .enumerate()
            .map(|(at, deal)| (deal.0, at))
            .collect();
        let asked = deals.len() * SUM_PARTS;
        let reads = (0..self.inner.shards).map(|shard| {
            let key = self.keys().shard(shard, "stock");
            let index = &index;
            async move {
                if deals.len() > 1 {
                    let length: usize = self.query(redis::cmd("HLEN").arg(&key)).await?;
                    if length <= asked {
                        let all: HashMap<String, String> =
                            self.query(redis::cmd("HGETALL").arg(&key)).await?;
                        return Ok::<_, Error>(values_of_hash(&all, index, deals.len()));
                    }
                }
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&key);
                for deal in deals {
                    for part in SUM_FIELDS {
                        cmd.arg(format!("{part}:{}", deal.0));
                    }
                }
                self.query::<Vec<Option<i64>>>(&cmd).await
            }
        });
        for values in try_join_all(reads).await? {
            for (index, sum) in sums.iter_mut().enumerate() {
                for (part, total) in sum.iter_mut().enumerate() {
                    let value = values
                        .get(index * SUM_PARTS + part)
                        .copied()
                        .flatten()
                        .unwrap_or(0);
                    *total = total.saturating_add(u64::try_from(value).unwrap_or(0));
                }
            }
        }
        Ok(sums)
    }

    /// Takes in what Redis says of a deal: numbers, terms, and the sold-out
    /// marker (learning a set marker loads the shoppers with records first,
    /// so the local flag never refuses a replay).
    pub(crate) async fn learn(&self, entry: &DealEntry, live: DealLive) {
        *entry.live.lock() = live;
        if !live.marked_sold_out {
            entry.sold_out.store(false, Ordering::Release);
        } else if !entry.sold_out.load(Ordering::Acquire)
            && let Ok(records) = self.records(entry.id).await
        {
            *entry.records.write() = records;
            entry.sold_out.store(true, Ordering::Release);
        }
    }

    /// Every shopper with a record on the deal, over every shard.
    pub(crate) async fn records(&self, deal: DealId) -> Result<HashSet<ShopperId>, Error> {
        let reads = (0..self.inner.shards).map(|shard| {
            let key = self.keys().shard_id(shard, "rec", deal.0);
            async move {
                self.query::<Vec<u64>>(redis::cmd("SMEMBERS").arg(key))
                    .await
            }
        });
        Ok(try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .map(ShopperId)
            .collect())
    }
}

impl RedisStore {
    /// The newest `limit` deals as this node last read them, newest first
    /// (the feed's view).
    pub fn feed_deals(&self, limit: usize) -> Vec<DealView> {
        let now = self.inner.clock.now();
        let deals = self.inner.deals.read();
        self.inner
            .newest
            .read()
            .iter()
            .filter_map(|id| deals.get(id))
            .take(limit)
            .map(|entry| entry.view(now))
            .collect()
    }

    /// A merchant's rating as this node last read it.
    pub fn cached_rating(&self, merchant: MerchantId) -> Option<Rating> {
        self.inner
            .merchants
            .read()
            .get(&merchant)
            .map(|(_, rating)| *rating)
    }

    /// A merchant's name as this node last read it.
    pub fn cached_merchant_name(&self, merchant: MerchantId) -> Option<String> {
        self.inner
            .merchants
            .read()
            .get(&merchant)
            .map(|(name, _)| name.clone())
    }
}

/// The values an `HMGET` of [`SUM_FIELDS`] per deal would answer, out of
/// a shard's whole stock hash `all`: `index` gives each deal's place among
/// `deals` of them.
fn values_of_hash(
    all: &HashMap<String, String>,
    index: &HashMap<u64, usize>,
    deals: usize,
) -> Vec<Option<i64>> {
    let mut values = vec![None; deals * SUM_PARTS];
    for (name, value) in all {
        let Some((part, deal)) = name.split_once(':') else {
            continue;
        };
        let (Some(part), Some(&at)) = (
            SUM_FIELDS.iter().position(|field| *field == part),
            deal.parse::<u64>().ok().and_then(|deal| index.get(&deal)),
        ) else {
            continue;
        };
        if let Some(slot) = values.get_mut(at * SUM_PARTS + part) {
            *slot = value.parse().ok();
        }
    }
    values
}

impl DealLive {
    /// The terms of `fresh` (version, end, pause) when they are at least
    /// as new as these.
    pub(crate) fn take_terms(&mut self, fresh: &DealLive) {
        if fresh.version >= self.version {
            self.version = fresh.version;
            self.ends_at = fresh.ends_at;
            self.paused = fresh.paused;
        }
    }

    pub(crate) fn set_sums(&mut self, sum: &[u64; SUM_PARTS]) {
        let [buckets, held, sold, buyers, registrations, shares] = *sum;
        self.shares = shares;
        self.buckets = buckets;
        self.held = held;
        self.sold = sold;
        self.buyers = buyers;
        self.registrations = registrations;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_stock_hash_answers_as_the_hmget_would() {
        let all: HashMap<String, String> = [
            ("b:7", "4"),
            ("s:7", "6"),
            ("v:7", "2"),
            ("x:9", "1"),
            ("b:8", "5"),
            ("order", "12"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        let index: HashMap<u64, usize> = [(7, 0), (9, 1)].into_iter().collect();
        let values = values_of_hash(&all, &index, 2);
        // Deal 7: b h s n g x; then deal 9.
        let expected = [
            Some(4),
            None,
            Some(6),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(1),
        ];
        assert_eq!(values, expected);
    }
}
