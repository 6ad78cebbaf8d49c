//! The auditor's read of Redis: one atomic snapshot per shard and the
//! deals' slots, for `flashsale audit`.

use std::collections::HashMap;

use flashsale_engine::{DealId, Hold, Order, ShopperId};
use redis::Value;

use crate::RedisStore;
use crate::error::Error;
use crate::replies::{hold_of, number, order_of, text};
use crate::steps;

impl RedisStore {
    /// Every shard's atomic snapshot (the `audit` step: stock,
    /// orders, holds and the wallets of its shoppers), then every deal's
    /// pool, total and units in flight between its slot and the shards.
    /// Shards and deals are read one after another, so numbers summed
    /// across slots can be off by what moved meanwhile.
    /// Errors: Redis, or more than [`AUDIT_ACCOUNTS_PER_SHARD_MAX`] shoppers
    /// on one shard.
    pub async fn audit_snapshot(&self) -> Result<RedisSnapshot, Error> {
        let shoppers: Option<u64> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().global("seq"))
                    .arg("shopper"),
            )
            .await?;
        let mut accounts: Vec<Vec<ShopperId>> = vec![Vec::new(); self.inner.shards];
        for id in 1..=shoppers.unwrap_or(0) {
            accounts[self.shard_of(ShopperId(id))].push(ShopperId(id));
        }
        let mut shards = Vec::with_capacity(self.inner.shards);
        for (shard, shoppers) in accounts.into_iter().enumerate() {
            if shoppers.len() > AUDIT_ACCOUNTS_PER_SHARD_MAX {
                return Err(Error::Config(format!(
                    "shard {shard} has {} shoppers, more than the auditor reads at once ({AUDIT_ACCOUNTS_PER_SHARD_MAX})",
                    shoppers.len()
                )));
            }
            let keys = self.keys();
            let call = steps::Audit {
                stock: keys.shard(shard, "stock"),
                orders: keys.shard(shard, "orders"),
                holds: keys.shard(shard, "holds"),
                accounts: shoppers
                    .iter()
                    .map(|shopper| keys.shard_id(shard, "acct", shopper.0))
                    .collect(),
            };
            let values = self.run_done(&call).await?;
            let list = |index: usize| match values.get(index) {
                Some(Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            let stock: Vec<String> = list(1).iter().filter_map(text).collect();
            let stock = stock
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
                .collect();
            let orders = list(2)
                .iter()
                .filter_map(text)
                .map(|json| order_of(&json))
                .collect::<Result<_, _>>()?;
            let holds = list(3)
                .iter()
                .filter_map(text)
                .map(|json| hold_of(&json))
                .collect::<Result<_, _>>()?;
            let wallets = shoppers
                .into_iter()
                .zip(list(4))
                .filter_map(|(shopper, wallet)| match wallet {
                    Value::Array(fields) if fields.first().is_some_and(|f| *f != Value::Nil) => {
                        let field = |index: usize| number(fields.get(index));
                        Some((shopper, [field(0), field(1), field(2), field(3)]))
                    }
                    _ => None,
                })
                .collect();
            let pending: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys().shard(shard, "xout")))
                .await?;
            shards.push(ShardSnapshot {
                stock,
                orders,
                holds,
                wallets,
                sweeps: pending
                    .into_iter()
                    .filter_map(|(id, value)| {
                        let (deal, units) = value.split_once(':')?;
                        Some((id, DealId(deal.parse().ok()?), units.parse().ok()?))
                    })
                    .collect(),
            });
        }
        let ids: Vec<u64> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys().global("deals"))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        let mut deals = Vec::with_capacity(ids.len());
        for id in ids.into_iter().map(DealId) {
            let numbers: Vec<Option<i64>> = self
                .query(
                    redis::cmd("HMGET")
                        .arg(self.keys().deal(id))
                        .arg("pool")
                        .arg("total"),
                )
                .await?;
            let transfers: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.keys().deal_part(id, "tx")))
                .await?;
            let mut in_flight: i64 = 0;
            for (transfer, value) in transfers {
                let mut parts = value
                    .split(':')
                    .map(|part| part.parse::<i64>().unwrap_or(0));
                let (shard, units) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                let accepted: bool = self
                    .query(
                        redis::cmd("SISMEMBER")
                            .arg(
                                self.keys()
                                    .shard(usize::try_from(shard).unwrap_or(0), "xin"),
                            )
                            .arg(format!("{}:{transfer}", id.0)),
                    )
                    .await?;
                if !accepted {
                    in_flight = in_flight.saturating_add(units);
                }
            }
            for shard in &shards {
                for (sweep, deal, units) in &shard.sweeps {
                    if *deal != id {
                        continue;
                    }
                    let accepted: bool = self
                        .query(
                            redis::cmd("SISMEMBER")
                                .arg(self.keys().deal_part(id, "swept"))
                                .arg(sweep),
                        )
                        .await?;
                    if !accepted {
                        in_flight = in_flight.saturating_add(*units);
                    }
                }
            }
            deals.push(DealSnapshot {
                id,
                pool: numbers.first().copied().flatten().unwrap_or(0),
                total: numbers.get(1).copied().flatten().unwrap_or(0),
                in_flight,
            });
        }
        Ok(RedisSnapshot { shards, deals })
    }
}

/// Shoppers of one shard the auditor reads in one atomic call, at most.
pub const AUDIT_ACCOUNTS_PER_SHARD_MAX: usize = 100_000;

/// What the auditor reads of Redis ([`RedisStore::audit_snapshot`]).
pub struct RedisSnapshot {
    /// Per shard, in shard order.
    pub shards: Vec<ShardSnapshot>,
    pub deals: Vec<DealSnapshot>,
}

/// One shard, read atomically.
pub struct ShardSnapshot {
    /// The stock hash: `b:`/`h:`/`s:<deal>` bucket, held, sold units.
    pub stock: HashMap<String, i64>,
    pub orders: Vec<Order>,
    pub holds: Vec<Hold>,
    /// Per shopper: credited, available, held, spent (fen).
    pub wallets: Vec<(ShopperId, [i64; 4])>,
    /// Sweeps on their way to a pool: id, deal, units.
    pub sweeps: Vec<(String, DealId, i64)>,
}

/// One deal's slot.
pub struct DealSnapshot {
    pub id: DealId,
    pub pool: i64,
    pub total: i64,
    /// Units between the pool and a bucket: transfers not yet accepted by
    /// their shard, sweeps not yet accepted by the pool.
    pub in_flight: i64,
}
