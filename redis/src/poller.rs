//! The poller: follows the epoch, refreshes the newest deals and their
//! numbers, re-reads durability, finishes transfers and sweeps, and
//! listens on the deployment's channel for deals to re-read at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flashsale_engine::DealId;

use crate::cache::DealEntry;
use crate::connection::Connection;
use crate::error::Error;
use crate::{
    DURABILITY_EVERY_POLLS, FEED_DEALS_MAX, POLL_INTERVAL, RECONCILE_EVERY_POLLS,
    RECONNECT_AFTER_FAILED_POLLS, RedisStore, SUMS_EVERY_POLLS, TRANSFER_ABANDONED_MS,
};

impl RedisStore {
    /// Runs until dropped: every [`POLL_INTERVAL`] follows the deployment's
    /// epoch and the newest deals' ids and takes the deals' numbers one
    /// node read for all when they are new; every fourth poll (once a
    /// second) asks for the turn to read them (`sums`: the feed, `/metrics`
    /// and the sold-out flags read them); every few polls re-reads Redis'
    /// persistence and finishes transfers and sweeps left half done. A
    /// failed poll marks the store not ready. Beside it, listens on the
    /// deployment's channel and re-reads a deal at once when a step
    /// publishes it (sold out, restocked, new terms); the refresh with the
    /// sums is the safety net for messages missed while disconnected.
    pub async fn run_poller(self) {
        tokio::join!(
            self.poll_loop(),
            self.subscribe_loop(),
            self.revocations_loop()
        );
    }

    /// Reads the token revocations made since the last read every
    /// [`POLL_INTERVAL`], apart from the poll, so a slow refresh of the
    /// deals never lets the node's copy go stale (`tokens`). A failed read
    /// is retried at the next tick; the poll reports Redis unreachable.
    pub(crate) async fn revocations_loop(&self) {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.sync_revocations().await {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "the token revocations could not be read; reading them again shortly"
                );
            }
        }
    }

    pub(crate) async fn poll_loop(&self) {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls: u32 = 0;
        let mut failed_in_a_row: u32 = 0;
        loop {
            ticker.tick().await;
            polls = polls.wrapping_add(1);
            let with_sums = polls.is_multiple_of(SUMS_EVERY_POLLS);
            let mut result = self.poll(with_sums).await;
            if result.is_ok() && polls.is_multiple_of(DURABILITY_EVERY_POLLS) {
                result = self.check_durability().await;
            }
            if result.is_ok() && polls.is_multiple_of(RECONCILE_EVERY_POLLS) {
                result = self.reconcile().await;
            }
            let reachable = result.is_ok();
            failed_in_a_row = if reachable { 0 } else { failed_in_a_row + 1 };
            if failed_in_a_row >= RECONNECT_AFTER_FAILED_POLLS
                && matches!(self.connection(), Connection::Cluster(_))
            {
                failed_in_a_row = 0;
                match self.reconnect().await {
                    Ok(()) => tracing::warn!(
                        failed_polls = RECONNECT_AFTER_FAILED_POLLS,
                        "the Redis Cluster client kept failing; connected afresh"
                    ),
                    Err(error) => tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "the Redis Cluster client kept failing, and connecting afresh failed too"
                    ),
                }
            }
            if self.inner.reachable.swap(reachable, Ordering::Relaxed) != reachable {
                match &result {
                    Ok(()) => tracing::info!("Redis answers again"),
                    Err(error) => tracing::warn!(
                        error = error as &dyn std::error::Error,
                        "Redis does not answer"
                    ),
                }
            }
        }
    }

    /// Listens on the channel, reconnecting after [`POLL_INTERVAL`] when
    /// the subscription drops.
    pub(crate) async fn subscribe_loop(&self) {
        loop {
            if let Err(error) = self.subscribe().await {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "the deals channel dropped; listening again shortly"
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub(crate) async fn subscribe(&self) -> Result<(), Error> {
        use futures_util::StreamExt as _;
        let client =
            redis::Client::open(self.inner.subscribe_url.as_str()).map_err(Error::Redis)?;
        let mut pubsub =
            tokio::time::timeout(self.inner.connect_timeout, client.get_async_pubsub())
                .await
                .map_err(|_| Error::RedisTimeout)?
                .map_err(Error::Redis)?;
        pubsub
            .subscribe(self.keys().channel())
            .await
            .map_err(Error::Redis)?;
        let revocations = self.keys().global("revocations");
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(key) = message.get_payload::<String>() else {
                continue;
            };
            if key == revocations {
                // A failure here is the revocations loop's to repair.
                let _ = self.sync_revocations().await;
                continue;
            }
            let id = key
                .split_once("{d:")
                .and_then(|(_, rest)| rest.split_once('}'))
                .and_then(|(id, _)| id.parse().ok())
                .map(DealId);
            let entry = id.and_then(|id| self.inner.deals.read().get(&id).cloned());
            if let Some(entry) = entry {
                // A failure here is the poll's to repair.
                let _ = self.refresh(&entry).await;
            }
        }
        Ok(())
    }

    /// One poll (see [`RedisStore::run_poller`]): the epoch and the newest
    /// deals' ids, and the shared sums (`sums`): `with_sums`, the node asks
    /// for the turn to read them from the shards for all; otherwise, or
    /// when another node has the turn, it takes the ones last written
    /// when they are new.
    pub(crate) async fn poll(&self, with_sums: bool) -> Result<(), Error> {
        self.follow_epoch().await?;
        let ids: Vec<u64> = self
            .query(
                redis::cmd("ZREVRANGE")
                    .arg(self.keys().global("deals"))
                    .arg(0)
                    .arg(FEED_DEALS_MAX - 1),
            )
            .await?;
        let ids: Vec<DealId> = ids.into_iter().map(DealId).collect();
        let mut entries = Vec::with_capacity(ids.len());
        for &id in &ids {
            if let Ok(entry) = self.entry(id).await {
                entries.push(entry);
            }
        }
        // Between the sums no deal's hash is read: every change a node
        // must see at once (sold out, restock, new terms) is published on
        // the channel, and the rest (the pool a refill moved) waits for the
        // next sums with the numbers it goes with.
        self.sums(&entries, with_sums).await?;
        *self.inner.newest.write() = ids;
        Ok(())
    }

    /// Finishes transfers pending past [`TRANSFER_ABANDONED_MS`], every
    /// sweep still on its way back to a pool, and sweeps the buckets of any
    /// deal marked sold out that still has units in a bucket. A transfer's
    /// units have left the deal's pool, so a newest deal whose pool holds
    /// its whole stock as of the last sums (at most a second old, newer
    /// than any transfer abandoned) has none pending and is not read.
    pub(crate) async fn reconcile(&self) -> Result<(), Error> {
        let entries: Vec<Arc<DealEntry>> = self.inner.deals.read().values().cloned().collect();
        let newest: HashSet<DealId> = self.inner.newest.read().iter().copied().collect();
        for entry in &entries {
            let live = *entry.live.lock();
            if !(newest.contains(&entry.id) && live.pool == live.total) {
                self.finish_transfers(entry.id, TRANSFER_ABANDONED_MS)
                    .await?;
            }
            if live.marked_sold_out && live.buckets > 0 {
                let _one_at_a_time = entry.refill.lock().await;
                self.sweep(entry.id).await?;
            }
        }
        for shard in 0..self.inner.shards {
            let pending: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys().shard(shard, "xout")))
                .await?;
            for (id, value) in pending {
                let Some((deal, units)) = value.split_once(':') else {
                    continue;
                };
                if let (Ok(deal), Ok(units)) = (deal.parse::<u64>(), units.parse::<i64>()) {
                    self.finish_sweep(DealId(deal), shard, &id, units).await?;
                }
            }
        }
        Ok(())
    }
}
