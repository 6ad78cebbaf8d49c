//! The newest deals' numbers and merchants' ratings that one node reads
//! for every node each second: the turn (a lease in Redis), reading the
//! deals' hashes and summing their numbers over the shards, writing them
//! to `ns:{g}:sums`, and the other nodes taking them from there.
//!
//! Reading the sums costs a read of every newest deal's hash and a read of
//! every shard's numbers of those deals (`shard_sums`): the same for every
//! node, so one node does it for all. Every
//! [`SUMS_EVERY_POLLS`](crate::SUMS_EVERY_POLLS) polls each node asks for
//! the turn (`SET NX PX` [`SUMS_LEASE_MS`] ms); the one that gets it reads
//! and writes the sums in one hash under the global tag (written
//! whole under a key of its own, then renamed into place, so no node reads
//! a half-written one), stamped with a new `at`. Every poll, the other
//! nodes read that stamp and take the hash when it is new. A node that
//! holds a newer copy of a deal's hash (a re-read on the deals' channel
//! after the sums were read: its change count `c` is higher) keeps that
//! copy and takes only the numbers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flashsale_engine::{DealId, MerchantId, Rating, Timestamp};
use futures_util::future::try_join_all;

use crate::cache::{DealEntry, DealLive};
use crate::error::Error;
use crate::replies::live_of;
use crate::{RedisStore, SUM_PARTS, SUMS_LEASE_MS};

/// How long written sums are kept, in ms, when no node writes them again.
const SUMS_KEPT_MS: u64 = 60_000;

/// The fields of a deal's hash the sums need (`live_of` reads them).
const DEAL_FIELDS: [&str; 7] = [
    "version", "ends", "paused", "total", "pool", "sold_out", "c",
];

/// Numbers in one deal's field of `ns:{g}:sums`, `:`-separated: the change
/// count, version, end (ms), paused (1|0), total, pool, sold-out marker
/// (1|0), then the six sums over the shards (`SUM_FIELDS`' order).
const PACKED_PARTS: usize = 7 + SUM_PARTS;

impl RedisStore {
    /// The shared sums for the newest deals `entries`: read from the
    /// shards and written for all when `ask` and this node gets the turn,
    /// else taken from `ns:{g}:sums` when its stamp is new. Errors: Redis.
    pub(crate) async fn sums(&self, entries: &[Arc<DealEntry>], ask: bool) -> Result<(), Error> {
        if ask && self.take_turn().await? {
            self.read_sums(entries).await
        } else {
            self.take_sums(entries).await
        }
    }

    /// Asks for this second's turn to read the sums for all: `true` when
    /// this node has it.
    async fn take_turn(&self) -> Result<bool, Error> {
        let granted: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.keys().global("sums:lease"))
                    .arg(&self.inner.node_token)
                    .arg("NX")
                    .arg("PX")
                    .arg(SUMS_LEASE_MS),
            )
            .await?;
        Ok(granted.is_some())
    }

    /// Reads the deals' hashes, their numbers over the shards and their
    /// merchants' ratings, takes them in, and writes them for the other
    /// nodes.
    async fn read_sums(&self, entries: &[Arc<DealEntry>]) -> Result<(), Error> {
        // One read per deal, all in flight at once: the deals live on
        // different Cluster slots, so no pipeline may hold two of them.
        let reads = entries.iter().map(|entry| {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys().deal(entry.id)).arg(&DEAL_FIELDS[..]);
            async move { self.query::<Vec<Option<String>>>(&cmd).await }
        });
        let hashes = try_join_all(reads).await?;
        let deal_ids: Vec<DealId> = entries.iter().map(|entry| entry.id).collect();
        let sums = self.shard_sums(&deal_ids).await?;
        let mut lives = Vec::with_capacity(entries.len());
        for ((entry, values), sum) in entries.iter().zip(hashes).zip(&sums) {
            let fields: HashMap<String, String> = DEAL_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(name, value)| value.map(|value| ((*name).to_owned(), value)))
                .collect();
            if fields.is_empty() {
                // Gone (Redis lost its data): the epoch's poll drops it.
                continue;
            }
            let mut live = live_of(&fields);
            live.set_sums(sum);
            lives.push((entry.id, live));
            self.take_live(entry, live).await;
        }
        let merchants: Vec<MerchantId> = entries
            .iter()
            .map(|entry| entry.merchant)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let ratings = self.ratings(&merchants).await?;
        let rated: Vec<(MerchantId, Rating)> = merchants.into_iter().zip(ratings).collect();
        self.take_ratings(&rated).await?;
        self.inner.sums_read.fetch_add(1, Ordering::Relaxed);
        self.write_sums(&lives, &rated).await
    }

    /// Writes the sums for the other nodes, whole, under a new stamp.
    async fn write_sums(
        &self,
        lives: &[(DealId, DealLive)],
        rated: &[(MerchantId, Rating)],
    ) -> Result<(), Error> {
        let stamp = format!(
            "{}:{}",
            self.inner.node_token,
            self.inner.sums_read.load(Ordering::Relaxed)
        );
        let next = self
            .keys()
            .global(&format!("sums:next:{}", self.inner.node_token));
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&next).arg("at").arg(&stamp);
        for (deal, live) in lives {
            cmd.arg(deal.0).arg(pack(live));
        }
        for (merchant, rating) in rated {
            cmd.arg(format!("m:{}", merchant.0))
                .arg(format!("{}:{}", rating.reviews, rating.score_sum));
        }
        self.query::<i64>(&cmd).await?;
        // Sums no node writes again (every node gone) do not outlive it.
        self.query::<()>(redis::cmd("PEXPIRE").arg(&next).arg(SUMS_KEPT_MS))
            .await?;
        self.query::<()>(
            redis::cmd("RENAME")
                .arg(&next)
                .arg(self.keys().global("sums")),
        )
        .await?;
        *self.inner.sums_seen.lock() = stamp;
        Ok(())
    }

    /// Takes the sums another node wrote, when their stamp is not the one
    /// this node last saw.
    async fn take_sums(&self, entries: &[Arc<DealEntry>]) -> Result<(), Error> {
        let key = self.keys().global("sums");
        let stamp: Option<String> = self.query(redis::cmd("HGET").arg(&key).arg("at")).await?;
        let Some(stamp) = stamp else {
            return Ok(());
        };
        if *self.inner.sums_seen.lock() == stamp {
            return Ok(());
        }
        let fields: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(&key)).await?;
        for entry in entries {
            if let Some(live) = fields
                .get(&entry.id.0.to_string())
                .map(String::as_str)
                .and_then(unpack)
            {
                self.take_live(entry, live).await;
            }
        }
        let rated: Vec<(MerchantId, Rating)> = fields
            .iter()
            .filter_map(|(name, value)| {
                let merchant = name.strip_prefix("m:")?.parse().ok().map(MerchantId)?;
                let (reviews, score_sum) = value.split_once(':')?;
                Some((
                    merchant,
                    Rating {
                        reviews: reviews.parse().ok()?,
                        score_sum: score_sum.parse().ok()?,
                    },
                ))
            })
            .collect();
        self.take_ratings(&rated).await?;
        *self.inner.sums_seen.lock() = fields.get("at").cloned().unwrap_or(stamp);
        self.inner.sums_taken.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes in a deal's sums; its hash's fields only when they are at
    /// least as new (change count) as the ones this node holds.
    async fn take_live(&self, entry: &DealEntry, mut live: DealLive) {
        let held = *entry.live.lock();
        if live.changes < held.changes {
            let sums = live;
            live = held;
            live.buckets = sums.buckets;
            live.held = sums.held;
            live.sold = sums.sold;
            live.buyers = sums.buyers;
            live.registrations = sums.registrations;
            live.shares = sums.shares;
        } else if live.version < held.version {
            // Terms installed from a newer read stay (`take_terms`).
            live.version = held.version;
            live.ends_at = held.ends_at;
            live.paused = held.paused;
        }
        self.learn(entry, live).await;
    }

    /// Takes in merchants' ratings, reading the name of a merchant this
    /// node has not seen. Errors: Redis.
    async fn take_ratings(&self, rated: &[(MerchantId, Rating)]) -> Result<(), Error> {
        for &(merchant, rating) in rated {
            let known = self
                .inner
                .merchants
                .read()
                .get(&merchant)
                .map(|(name, _)| name.clone());
            let name = match known {
                Some(name) => name,
                None => match self.merchant(merchant).await? {
                    Some(found) => found.name,
                    None => continue,
                },
            };
            self.inner
                .merchants
                .write()
                .insert(merchant, (name, rating));
        }
        Ok(())
    }

    /// Times this node read the sums from the shards for all nodes, and
    /// took the sums another node read, since it started: in a deployment
    /// of several nodes the reads add up to about one a second.
    pub fn sums_read(&self) -> (u64, u64) {
        (
            self.inner.sums_read.load(Ordering::Relaxed),
            self.inner.sums_taken.load(Ordering::Relaxed),
        )
    }
}

/// A deal's field of `ns:{g}:sums` (see [`PACKED_PARTS`]).
fn pack(live: &DealLive) -> String {
    format!(
        "{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}:{}",
        live.changes,
        live.version,
        live.ends_at.millis(),
        u8::from(live.paused),
        live.total,
        live.pool,
        u8::from(live.marked_sold_out),
        live.buckets,
        live.held,
        live.sold,
        live.buyers,
        live.registrations,
        live.shares
    )
}

/// The deal's numbers of a field [`pack`] wrote; `None` when garbled (a
/// node of another build): the deal waits for the next sums.
fn unpack(text: &str) -> Option<DealLive> {
    let parts: Vec<i64> = text
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [
        changes,
        version,
        ends,
        paused,
        total,
        pool,
        sold_out,
        buckets,
        held,
        sold,
        buyers,
        registrations,
        shares,
    ] = <[i64; PACKED_PARTS]>::try_from(parts).ok()?;
    let count = |value: i64| u64::try_from(value).ok();
    Some(DealLive {
        changes: count(changes)?,
        version: count(version)?,
        ends_at: Timestamp(ends),
        paused: paused == 1,
        total: count(total)?,
        pool: count(pool)?,
        marked_sold_out: sold_out == 1,
        buckets: count(buckets)?,
        held: count(held)?,
        sold: count(sold)?,
        buyers: count(buyers)?,
        registrations: count(registrations)?,
        shares: count(shares)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deal_reads_back_as_written() {
        let live = DealLive {
            changes: 7,
            version: 3,
            ends_at: Timestamp(1_750_000_000_000),
            paused: true,
            total: 100,
            pool: 40,
            marked_sold_out: false,
            buckets: 12,
            held: 3,
            sold: 45,
            buyers: 40,
            registrations: 2,
            shares: 1,
        };
        let back = unpack(&pack(&live)).expect("it reads back");
        assert_eq!(pack(&back), pack(&live));
    }

    #[test]
    fn a_garbled_deal_is_none() {
        assert!(unpack("1:2:3").is_none());
        assert!(unpack("a:1:1:0:1:1:0:0:0:0:0:0:0").is_none());
        assert!(unpack("-1:1:1:0:1:1:0:0:0:0:0:0:0").is_none());
    }
}
