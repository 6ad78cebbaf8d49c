//! Stock buckets: moving units from a deal's pool to a shard's bucket
//! (refill, transfer, accept, confirm) and back (sweep), each idempotent
//! by transfer id, and finishing those a crashed node left half done.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use flashsale_engine::DealId;
use futures_util::future::try_join_all;

use crate::RedisStore;
use crate::cache::DealEntry;
use crate::error::Error;
use crate::replies::{number, text};
use crate::steps;

impl RedisStore {
    /// Brings the `need` units `shard`'s bucket lacks (of the `total` the
    /// request needs there) from the deal's pool; when the pool is short,
    /// first sweeps every bucket, this one included, back into the pool and
    /// then moves all `total`. `false`: the deal has fewer than `total`
    /// units left anywhere (then marked sold out if it has none).
    ///
    /// `since`: this node's refills of the shard ([`DealEntry::refills_of`])
    /// when the call that answered `REFILL` was sent. When the node has
    /// refilled the shard since (another request of the same call, or of
    /// one after it, found it short too), nothing moves and the caller
    /// retries on what that refill brought: a call whose requests all
    /// found the bucket short moves one chunk, not one per request.
    pub(crate) async fn refill(
        &self,
        entry: &DealEntry,
        shard: usize,
        need: u32,
        total: u32,
        since: Option<u64>,
    ) -> Result<bool, Error> {
        let _one_at_a_time = entry.refill.lock().await;
        if since.is_some_and(|since| entry.refills_of(shard) != since) {
            return Ok(true);
        }
        let moved = self.transfer(entry.id, shard, need).await?
            || {
                self.sweep(entry.id).await?;
                self.transfer(entry.id, shard, total).await?
            }
            || {
                // Units of a transfer whose node died or never heard its reply
                // are on their way to a bucket: bring them in and sweep them
                // back before judging the deal sold out.
                self.finish_transfers(entry.id, 0).await? > 0 && {
                    self.sweep(entry.id).await?;
                    self.transfer(entry.id, shard, total).await?
                }
            };
        if moved {
            *entry.refills.lock().entry(shard).or_insert(0) += 1;
            return Ok(true);
        }
        let call = steps::SoldOut {
            deal: self.keys().deal(entry.id),
            transfers: self.keys().deal_part(entry.id, "tx"),
            channel: self.keys().channel(),
        };
        let values = self.run_done(&call).await?;
        if number(values.get(1)) == 1 {
            let mut live = *entry.live.lock();
            live.marked_sold_out = true;
            live.pool = 0;
            self.learn(entry, live).await;
        }
        Ok(false)
    }

    /// One transfer from the pool into `shard`'s bucket; `false` when the
    /// pool holds fewer than `need`.
    pub(crate) async fn transfer(
        &self,
        deal: DealId,
        shard: usize,
        need: u32,
    ) -> Result<bool, Error> {
        let call = steps::Refill {
            deal: self.keys().deal(deal),
            transfers: self.keys().deal_part(deal, "tx"),
            shard: shard.to_string(),
            need: need.to_string(),
            shards: self.inner.shards.to_string(),
        };
        let values = self.run_done(&call).await?;
        let id = values.get(1).and_then(text).unwrap_or_default();
        let units = number(values.get(2));
        if units <= 0 {
            return Ok(false);
        }
        self.finish_transfer(deal, shard, &id, units).await?;
        Ok(true)
    }

    /// The shard half (`accept`) and the confirmation of a transfer: both
    /// idempotent, so the reconciler may run them again.
    pub(crate) async fn finish_transfer(
        &self,
        deal: DealId,
        shard: usize,
        id: &str,
        units: i64,
    ) -> Result<(), Error> {
        let accept = steps::Accept {
            stock: self.keys().shard(shard, "stock"),
            accepted: self.keys().shard(shard, "xin"),
            deal: deal.0.to_string(),
            transfer: id.to_owned(),
            units: units.to_string(),
        };
        self.run_done(&accept).await?;
        let confirm = steps::Confirm {
            transfers: self.keys().deal_part(deal, "tx"),
            transfer: id.to_owned(),
        };
        self.run_done(&confirm).await?;
        Ok(())
    }

    /// Finishes every transfer of `deal` pending for longer than `age_ms`
    /// (0: all of them); returns how many. Finishing is idempotent, so a
    /// transfer another node is finishing right now is not harmed.
    pub(crate) async fn finish_transfers(&self, deal: DealId, age_ms: i64) -> Result<usize, Error> {
        let now = self.now().millis();
        let pending: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.keys().deal_part(deal, "tx")))
            .await?;
        let mut finished = 0;
        for (id, value) in pending {
            let mut parts = value
                .split(':')
                .map(|part| part.parse::<i64>().unwrap_or(0));
            let (shard, units, at) = (
                parts.next().unwrap_or(0),
                parts.next().unwrap_or(0),
                parts.next().unwrap_or(0),
            );
            if now - at >= age_ms
                && let Ok(shard) = usize::try_from(shard)
            {
                tracing::info!(%deal, transfer = %id, "finishing a pending transfer");
                self.finish_transfer(deal, shard, &id, units).await?;
                finished += 1;
            }
        }
        Ok(finished)
    }

    /// Moves every shard's bucket of the deal back into its pool.
    pub(crate) async fn sweep(&self, deal: DealId) -> Result<(), Error> {
        try_join_all((0..self.inner.shards).map(|shard| self.sweep_shard(deal, shard))).await?;
        Ok(())
    }

    /// Sweeps `shard`'s bucket of `deal` into the pool, and finishes every
    /// earlier sweep of that bucket still on its way (see `sweep_out` in
    /// redis/flashsale.lua).
    pub(crate) async fn sweep_shard(&self, deal: DealId, shard: usize) -> Result<(), Error> {
        let call = steps::SweepOut {
            stock: self.keys().shard(shard, "stock"),
            pending: self.keys().shard(shard, "xout"),
            sequences: self.keys().shard(shard, "seq"),
            deal: deal.0.to_string(),
            shard: shard.to_string(),
        };
        let values = self.run_done(&call).await?;
        for sweep in values.get(1..).unwrap_or_default().chunks(2) {
            let id = sweep.first().and_then(text).unwrap_or_default();
            self.finish_sweep(deal, shard, &id, number(sweep.get(1)))
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn finish_sweep(
        &self,
        deal: DealId,
        shard: usize,
        id: &str,
        units: i64,
    ) -> Result<(), Error> {
        let sweep_in = steps::SweepIn {
            deal: self.keys().deal(deal),
            accepted: self.keys().deal_part(deal, "swept"),
            sweep: id.to_owned(),
            units: units.to_string(),
            channel: self.keys().channel(),
        };
        self.run_done(&sweep_in).await?;
        let done = steps::SweepDone {
            pending: self.keys().shard(shard, "xout"),
            sweep: id.to_owned(),
        };
        self.run_done(&done).await?;
        Ok(())
    }

    /// After stock came back into `shard`'s bucket (a release or an
    /// expiry): if the deal is marked sold out, the units go back to the
    /// pool at once, which clears the marker.
    pub(crate) async fn return_stock(&self, deal: DealId, shard: usize) -> Result<(), Error> {
        let entry = self.entry(deal).await?;
        let marked: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().deal(deal))
                    .arg("sold_out"),
            )
            .await?;
        if marked.as_deref() == Some("1") || entry.sold_out.load(Ordering::Acquire) {
            let _one_at_a_time = entry.refill.lock().await;
            self.sweep_shard(deal, shard).await?;
            self.refresh(&entry).await?;
        }
        Ok(())
    }
}
