//! The books streams: the sink's view of each slot's stream of settled
//! orders, credits, new deals, restocks and deal changes (consumer group,
//! read, claim, acknowledge, backlog).

use std::collections::HashMap;
use std::time::Duration;

use flashsale_engine::{
    Allocation, DealId, DealSpec, Event, MerchantId, Money, ShopperId, Timestamp, fingerprint,
};
use redis::Value;

use crate::RedisStore;
use crate::error::Error;
use crate::replies::{garbled, number, order_of, text};

impl RedisStore {
    /// Every books stream: one per shard, then one per deal (oldest deal
    /// first, at most [`BOOKS_DEALS_MAX`]).
    pub async fn books_streams(&self) -> Result<Vec<String>, Error> {
        let deals: Vec<u64> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.keys().global("deals"))
                    .arg(0)
                    .arg(BOOKS_DEALS_MAX - 1),
            )
            .await?;
        Ok((0..self.inner.shards)
            .map(|shard| self.keys().shard(shard, "books"))
            .chain(
                deals
                    .into_iter()
                    .map(|deal| self.keys().deal_part(DealId(deal), "books")),
            )
            .collect())
    }

    /// Creates the group `books` on `stream` (and the stream), reading
    /// from its first entry; a group already there is kept.
    pub async fn books_group(&self, stream: &str) -> Result<(), Error> {
        let created = self
            .query::<()>(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(BOOKS_GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match created {
            Err(Error::Redis(error)) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Up to `count` entries of `stream` for `consumer`: its own pending
    /// ones (`pending`, from id `0`: delivered before and not acknowledged,
    /// say before a restart) or new ones (`>`).
    pub async fn books_read(
        &self,
        stream: &str,
        consumer: &str,
        pending: bool,
        count: usize,
    ) -> Result<Vec<BooksEntry>, Error> {
        let reply: Value = self
            .query(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(BOOKS_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(if pending { "0" } else { ">" }),
            )
            .await?;
        // [[stream, [[id, [field, value, ...]], ...]]], or nil.
        let entries = match reply {
            Value::Array(mut streams) if !streams.is_empty() => match streams.swap_remove(0) {
                Value::Array(mut pair) if pair.len() == 2 => pair.swap_remove(1),
                _ => return Err(garbled("an XREADGROUP reply")),
            },
            _ => return Ok(Vec::new()),
        };
        books_entries(entries)
    }

    /// Claims for `consumer` up to `count` entries of `stream` delivered to
    /// another consumer and not acknowledged for `idle` (that node is
    /// likely gone), with `XAUTOCLAIM` from the start of the stream.
    pub async fn books_claim(
        &self,
        stream: &str,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<BooksEntry>, Error> {
        let reply: Value = self
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(BOOKS_GROUP)
                    .arg(consumer)
                    .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
                    .arg("0")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        // [next start, [[id, [field, value, ...]], ...], [deleted ids]].
        match reply {
            Value::Array(mut parts) if parts.len() >= 2 => books_entries(parts.swap_remove(1)),
            _ => Err(garbled("an XAUTOCLAIM reply")),
        }
    }

    /// Whether an entry of `stream` below `entry` was delivered to a
    /// consumer of the group `books` and is not acknowledged (`XPENDING
    /// … - (entry COUNT 1`). The group delivers in order, so once `entry`
    /// was delivered, false means every earlier entry is in Postgres or
    /// set aside.
    pub async fn books_pending_before(&self, stream: &str, entry: &str) -> Result<bool, Error> {
        let reply: Value = self
            .query(
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(BOOKS_GROUP)
                    .arg("-")
                    .arg(format!("({entry}"))
                    .arg(1),
            )
            .await?;
        match reply {
            Value::Array(entries) => Ok(!entries.is_empty()),
            _ => Err(garbled("an XPENDING reply")),
        }
    }

    /// Acknowledges entries of `stream` (they are in Postgres).
    pub async fn books_ack(&self, stream: &str, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        self.query::<()>(redis::cmd("XACK").arg(stream).arg(BOOKS_GROUP).arg(ids))
            .await
    }

    /// Where `stream` stands: entries not yet in Postgres (pending plus not
    /// yet delivered) and the id of the oldest of them, if any. Then trims
    /// the entries below that one (`XTRIM MINID`: every one of them is
    /// acknowledged), never by length.
    pub async fn books_backlog(&self, stream: &str) -> Result<BooksBacklog, Error> {
        let groups: Vec<HashMap<String, Value>> = self
            .query(redis::cmd("XINFO").arg("GROUPS").arg(stream))
            .await?;
        let Some(group) = groups
            .iter()
            .find(|group| group.get("name").and_then(text).as_deref() == Some(BOOKS_GROUP))
        else {
            return Ok(BooksBacklog::default());
        };
        let pending = u64::try_from(number(group.get("pending"))).unwrap_or(0);
        let undelivered = u64::try_from(number(group.get("lag"))).unwrap_or(0);
        let delivered = group
            .get("last-delivered-id")
            .and_then(text)
            .unwrap_or_else(|| "0-0".to_owned());
        let oldest = if pending > 0 {
            // XPENDING's summary: [count, smallest id, greatest id, consumers].
            let summary: Vec<Value> = self
                .query(redis::cmd("XPENDING").arg(stream).arg(BOOKS_GROUP))
                .await?;
            summary.get(1).and_then(text)
        } else if undelivered > 0 {
            let next: Value = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(stream)
                        .arg(format!("({delivered}"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(1),
                )
                .await?;
            match next {
                Value::Array(entries) => entries.first().and_then(|entry| match entry {
                    Value::Array(pair) => pair.first().and_then(text),
                    _ => None,
                }),
                _ => None,
            }
        } else {
            None
        };
        // Everything below the oldest entry not in Postgres is: with none,
        // everything up to the last delivered one.
        let keep_from = oldest.clone().unwrap_or(delivered);
        self.query::<()>(redis::cmd("XTRIM").arg(stream).arg("MINID").arg(&keep_from))
            .await?;
        Ok(BooksBacklog {
            entries: pending.saturating_add(undelivered),
            oldest_millis: oldest.as_deref().and_then(entry_millis),
        })
    }
}

/// The consumer group of every books stream.
pub(crate) const BOOKS_GROUP: &str = "books";

/// Deal streams the sink reads at most: one per deal, oldest first (the
/// engine's `deals_max`).
pub const BOOKS_DEALS_MAX: usize = 100_000;

/// One entry of a books stream: its id and the event it holds, or why it
/// cannot be read (an entry the script did not write, or one deleted while
/// pending).
pub struct BooksEntry {
    pub id: String,
    pub event: Result<Event, String>,
}

/// How far Postgres is behind one stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct BooksBacklog {
    /// Entries not yet acknowledged: pending plus not yet delivered.
    pub entries: u64,
    /// When the oldest of them was appended (ms since the epoch, Redis' clock).
    pub oldest_millis: Option<i64>,
}

/// The milliseconds part of a stream entry id (`<ms>-<seq>`).
pub fn entry_millis(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

/// The entries of an `XREADGROUP`/`XAUTOCLAIM` reply: `[[id, [field,
/// value, ...]], ...]` (fields nil for an entry deleted while pending).
pub(crate) fn books_entries(entries: Value) -> Result<Vec<BooksEntry>, Error> {
    let Value::Array(entries) = entries else {
        return Err(garbled("stream entries"));
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(pair) = entry else {
                return Err(garbled("a stream entry"));
            };
            let id = pair
                .first()
                .and_then(text)
                .ok_or_else(|| garbled("an entry id"))?;
            let event = match pair.get(1) {
                Some(Value::Array(fields)) => {
                    let fields: Vec<String> = fields.iter().filter_map(text).collect();
                    book_event(&fields).ok_or_else(|| format!("entry {id}: {fields:?}"))
                }
                _ => Err(format!("entry {id} was deleted while pending")),
            };
            Ok(BooksEntry { id, event })
        })
        .collect()
}

/// The engine event a books entry holds (the script header's layout).
pub(crate) fn book_event(fields: &[String]) -> Option<Event> {
    let (kind, subject) = (fields.first()?.as_str(), fields.get(1)?);
    let field = |name: &str| -> Option<&str> {
        fields[2..]
            .chunks_exact(2)
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str())
    };
    let parse = |name: &str| -> Option<i64> { field(name)?.parse().ok() };
    let at = || parse("t").map(Timestamp);
    let deal = || subject.parse().ok().map(DealId);
    Some(match kind {
        "o" => Event::OrderSettled {
            order: order_of(subject).ok()?,
            key: None,
        },
        "c" => Event::WalletCredited {
            shopper: ShopperId(subject.parse().ok()?),
            amount: Money::from_fen(parse("a")?)?,
            reference: fingerprint(field("r")?),
            at: at()?,
        },
        "d" => Event::DealCreated {
            deal: deal()?,
            merchant: MerchantId(field("m")?.parse().ok()?),
            spec: DealSpec {
                title: field("n")?.to_owned(),
                price: Money::from_fen(parse("p")?)?,
                stock: field("s")?.parse().ok()?,
                per_user_limit: field("l")?.parse().ok()?,
                starts_at: Timestamp(parse("b")?),
                ends_at: Timestamp(parse("e")?),
                requires_registration: field("g")? == "1",
                hold_seconds: field("h")?.parse().ok()?,
                // Redis mode sells first come only (raffles are refused).
                allocation: Allocation::FirstCome,
            },
            at: at()?,
        },
        "r" => Event::StockAdded {
            deal: deal()?,
            quantity: field("q")?.parse().ok()?,
            at: at()?,
        },
        "u" => Event::DealChanged {
            deal: deal()?,
            ends_at: Timestamp(parse("e")?),
            paused: field("p")? == "1",
            at: at()?,
        },
        _ => return None,
    })
}
