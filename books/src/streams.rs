//! Redis mode's books: the order sink of every node, reading the books
//! streams that the Redis steps append to (`redis/flashsale.lua`,
//! "The books") and writing Postgres through the single-node sink's own
//! path (`Batch::from_events`, binary `COPY`, the merge, set-aside).
//!
//! Each stream (one per shopper shard, one per deal) has the consumer group
//! `books`; every node reads as the consumer named by its node id. In each
//! pass over the shard streams (and, once per [`BOOKS_BACKLOG_INTERVAL`],
//! the deal streams: a few entries per deal, and thousands of deals would
//! make every pass thousands of calls), a node reads up to
//! [`BOOKS_STREAMS_PER_POLL_MAX`] streams at once,
//! [`BOOKS_ENTRIES_PER_READ_MAX`] entries each: first its
//! own pending entries (from id `0`: delivered before a restart and never
//! acknowledged), then new ones (`>`). The entries of those streams are
//! written in one transaction, keyed by `(deployment id, id)` so that
//! applying one twice adds nothing, and acknowledged (`XACK`) only after
//! the commit. A restock adds to a total, so each restock entry is applied
//! alone and recorded in `order_sink_stream_entries` in the same
//! transaction; an entry found there is acknowledged without applying it.
//!
//! Entries of one deal's stream can reach Postgres in any order (two nodes'
//! transactions, an entry claimed late), so the rows converge whatever the
//! order (the parent module's "Order"): an older deal change updates
//! nothing, and a change or restock read before its deal's creation is in
//! Postgres is left unacknowledged, so it is claimed again after
//! [`BOOKS_CLAIM_IDLE`] (by this node or another) and applied then. Once
//! no earlier entry of its stream is pending and the deal still has no row,
//! its creation was set aside and will not come: the entry is set aside
//! too (`OrderSinkError::DealMissing`), so it does not wait forever.
//!
//! Every [`BOOKS_BACKLOG_INTERVAL`] the node claims entries that a node
//! was given and has not acknowledged for [`BOOKS_CLAIM_IDLE`]
//! (`XAUTOCLAIM`: that node is likely gone for good, or the entries wait
//! for their deal) and writes them too.
//! Apart from that, Postgres up or down, it measures the backlog (entries
//! not yet acknowledged, and the age of the oldest: `/metrics`, `/readyz`)
//! and trims each stream below its oldest entry not yet acknowledged
//! (`XTRIM MINID`, never `MAXLEN`). Past `--books-backlog-max` the steps
//! themselves refuse new orders (`BACKLOG` in `flashsale.lua`).
//!
//! A row already in Postgres with other content is set aside, counted and
//! logged with both versions, and makes `/readyz` not ready, by the same
//! code as the single-node sink (`apply_or_set_aside`); so is an entry the
//! script did not write. Redis or Postgres failing ends the session; the
//! sink retries with backoff, and what it did not acknowledge waits in the
//! streams.

use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flashsale_engine::{Clock, Event, SystemClock};
use futures_util::future::try_join_all;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::watch;

use crate::config::OrderSinkConfig;
use crate::error::OrderSinkError;
use crate::lookup::BooksLookup;
use crate::progress::{Progress, Source};
use crate::set_aside::{apply_or_set_aside, set_aside};
use crate::sink::{OrderSinkHandle, connect, run, stopped, timed};
use crate::status::Status;
use crate::tables::Batch;
use flashsale_redis::{BooksEntry, RedisStore};

/// Entries read from one stream in one call (`COUNT` of `XREADGROUP` and
/// `XAUTOCLAIM`).
pub const BOOKS_ENTRIES_PER_READ_MAX: usize = 1_000;

/// Streams read at once (one call each, concurrently: a Cluster takes no
/// command over two slots) whose entries then go to Postgres in one
/// transaction: at most this many times [`BOOKS_ENTRIES_PER_READ_MAX`] rows.
pub const BOOKS_STREAMS_PER_POLL_MAX: usize = 16;

/// The rest after a pass over every stream found nothing new. Reads do not
/// `BLOCK`: a read blocked on one quiet stream would hold up the others.
pub const BOOKS_IDLE_WAIT: Duration = Duration::from_millis(20);

/// Entries delivered to a node and not acknowledged for this long are
/// claimed by another node (that one is likely gone for good). Well above
/// a batch's time in Postgres, so a live node's entries are not taken.
pub const BOOKS_CLAIM_IDLE: Duration = Duration::from_secs(5);

/// How often a node claims idle entries, measures the backlog and trims the
/// streams.
pub const BOOKS_BACKLOG_INTERVAL: Duration = Duration::from_secs(1);

/// Bits of an entry id's sequence in [`position`].
const POSITION_SEQUENCE_BITS: u32 = 20;

/// An entry id `<ms>-<seq>` as one number, `ms << 20 | seq`, where
/// `order_sink_set_aside.position` keeps it; 0 for an id that does not fit
/// (a sequence past 2^20 within one millisecond).
pub fn position(entry: &str) -> u64 {
    let Some((millis, sequence)) = entry.split_once('-') else {
        return 0;
    };
    match (millis.parse::<u64>(), sequence.parse::<u64>()) {
        (Ok(millis), Ok(sequence)) if sequence < 1 << POSITION_SEQUENCE_BITS => millis
            .checked_mul(1 << POSITION_SEQUENCE_BITS)
            .map_or(0, |high| high | sequence),
        _ => 0,
    }
}

/// Starts the sink of one Redis-mode node in the background: `consumer` is
/// its node id, `config.deployment_id` the deployment's (kept in Redis).
/// Fails only on a malformed URL: Postgres or Redis unreachable is retried.
pub fn start(
    config: OrderSinkConfig,
    store: RedisStore,
    consumer: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<OrderSinkHandle, OrderSinkError> {
    let options =
        PgConnectOptions::from_str(&config.database_url).map_err(OrderSinkError::DatabaseUrl)?;
    let status = Arc::new(Status::new(0));
    let books = Arc::new(BooksLookup::new(
        &options,
        config.deployment_id.clone().unwrap_or_default(),
    ));
    let sink = Arc::new(StreamSink {
        config: config.clone(),
        options,
        store,
        consumer,
        status: status.clone(),
    });
    let measuring = sink.clone();
    let sessions = run(
        config,
        status.clone(),
        shutdown,
        move |stopping, progressed| {
            let sink = sink.clone();
            async move { sink.session(stopping, progressed).await }
        },
    );
    // The backlog is measured apart from the sessions, so it is known (and
    // bounded by the steps) while Postgres is down.
    let task = tokio::spawn(async move {
        tokio::select! {
            () = sessions => {}
            () = measuring.measure() => {}
        }
    });
    Ok(OrderSinkHandle {
        status,
        books,
        journal: None,
        task,
    })
}

/// What one node's stream sink works with.
struct StreamSink {
    config: OrderSinkConfig,
    options: PgConnectOptions,
    store: RedisStore,
    consumer: String,
    status: Arc<Status>,
}

fn redis(error: flashsale_redis::Error) -> OrderSinkError {
    OrderSinkError::Redis(Box::new(error))
}

impl StreamSink {
    fn deployment(&self) -> &str {
        self.config.deployment_id.as_deref().unwrap_or_default()
    }

    /// One Postgres connection's life: passes over the streams until an
    /// error, or until shutdown once a pass finds nothing.
    async fn session(
        &self,
        stopping: watch::Receiver<bool>,
        progressed: Arc<AtomicBool>,
    ) -> Result<(), OrderSinkError> {
        if *stopping.borrow() {
            return Ok(());
        }
        let mut conn = connect(&self.config, &self.options).await?;
        self.status.connected.store(true, Ordering::Release);
        *self.status.last_error.lock() = None;
        // Streams with a group, and those whose own pending entries were
        // read in this session (a new session reads them again from `0`).
        let mut grouped = HashSet::new();
        let mut drained = HashSet::new();
        let mut streams = self.store.books_streams().await.map_err(redis)?;
        let mut tick_at = Instant::now();
        loop {
            // Shard streams (the orders) every pass; the deal streams (a
            // few entries per deal) and the claims once a tick, and in the
            // passes of a shutdown.
            let tick = tick_at.elapsed() >= BOOKS_BACKLOG_INTERVAL || *stopping.borrow();
            if tick {
                tick_at = Instant::now();
                streams = self.store.books_streams().await.map_err(redis)?;
            }
            let reading = if tick {
                &streams[..]
            } else {
                &streams[..self.store.shards().min(streams.len())]
            };
            let mut found = false;
            for chunk in reading.chunks(BOOKS_STREAMS_PER_POLL_MAX) {
                for stream in chunk {
                    if grouped.insert(stream.clone()) {
                        self.store.books_group(stream).await.map_err(redis)?;
                    }
                }
                let reads = chunk.iter().map(|stream| {
                    let pending = !drained.contains(stream);
                    async move {
                        let entries = self
                            .store
                            .books_read(stream, &self.consumer, pending, BOOKS_ENTRIES_PER_READ_MAX)
                            .await?;
                        Ok::<_, flashsale_redis::Error>((stream, pending, entries))
                    }
                });
                let read = try_join_all(reads).await.map_err(redis)?;
                let mut entries = Vec::new();
                for (stream, pending, read) in read {
                    if pending && read.is_empty() {
                        drained.insert(stream.clone());
                    }
                    entries.extend(read.into_iter().map(|entry| (stream.clone(), entry)));
                }
                if !entries.is_empty() {
                    found = true;
                    self.write(&mut conn, entries).await?;
                    progressed.store(true, Ordering::Relaxed);
                }
            }
            if tick {
                found |= self.claim(&mut conn, &streams).await?;
            }
            if !found {
                if *stopping.borrow() {
                    return Ok(()); // caught up at shutdown
                }
                tokio::select! {
                    () = tokio::time::sleep(BOOKS_IDLE_WAIT) => {}
                    () = stopped(stopping.clone()) => {}
                }
            }
        }
    }

    /// Every [`BOOKS_BACKLOG_INTERVAL`], forever: measures the backlog of
    /// every stream into the status (`/metrics`, `/readyz`) and trims each
    /// below its oldest entry not yet acknowledged. A failure (Redis) is
    /// logged and tried again at the next tick.
    async fn measure(&self) {
        let mut grouped = HashSet::new();
        let mut ticker = tokio::time::interval(BOOKS_BACKLOG_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.measure_once(&mut grouped).await {
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "order sink: cannot measure the books backlog"
                );
            }
        }
    }

    /// One measure (see [`StreamSink::measure`]); `grouped` names the
    /// streams known to have the group.
    async fn measure_once(
        &self,
        grouped: &mut HashSet<String>,
    ) -> Result<(), flashsale_redis::Error> {
        let streams = self.store.books_streams().await?;
        let mut entries_total: u64 = 0;
        let mut oldest: Option<i64> = None;
        for chunk in streams.chunks(BOOKS_STREAMS_PER_POLL_MAX) {
            for stream in chunk {
                if !grouped.contains(stream) {
                    self.store.books_group(stream).await?;
                    grouped.insert(stream.clone());
                }
            }
            let backlogs =
                try_join_all(chunk.iter().map(|stream| self.store.books_backlog(stream))).await?;
            for backlog in backlogs {
                entries_total = entries_total.saturating_add(backlog.entries);
                oldest = match (oldest, backlog.oldest_millis) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        let status = &self.status;
        status
            .backlog_entries
            .store(entries_total, Ordering::Release);
        status
            .backlog_oldest_millis
            .store(oldest.unwrap_or(0), Ordering::Release);
        status.stream_lag(SystemClock.now());
        Ok(())
    }

    /// Claims the entries idle past [`BOOKS_CLAIM_IDLE`] on every stream and
    /// writes them. True when it claimed something.
    async fn claim(
        &self,
        conn: &mut PgConnection,
        streams: &[String],
    ) -> Result<bool, OrderSinkError> {
        let mut claimed = false;
        for chunk in streams.chunks(BOOKS_STREAMS_PER_POLL_MAX) {
            let claims = chunk.iter().map(|stream| async move {
                let entries = self
                    .store
                    .books_claim(
                        stream,
                        &self.consumer,
                        BOOKS_CLAIM_IDLE,
                        BOOKS_ENTRIES_PER_READ_MAX,
                    )
                    .await?;
                Ok::<_, flashsale_redis::Error>((stream, entries))
            });
            let mut entries = Vec::new();
            for (stream, read) in try_join_all(claims).await.map_err(redis)? {
                if !read.is_empty() {
                    tracing::warn!(
                        stream = %stream,
                        entries = read.len(),
                        "order sink: claimed books entries left unacknowledged (by a node gone, \
                         or waiting for their deal's creation)"
                    );
                }
                entries.extend(read.into_iter().map(|entry| (stream.clone(), entry)));
            }
            if !entries.is_empty() {
                claimed = true;
                self.write(conn, entries).await?;
            }
        }
        Ok(claimed)
    }

    /// Writes `entries` (with their streams) to Postgres, then acknowledges
    /// them: the rows in one transaction, each restock alone, each entry
    /// that cannot be read set aside. A change or restock whose deal has no
    /// row yet is not acknowledged: it stays pending and is claimed again
    /// after [`BOOKS_CLAIM_IDLE`].
    async fn write(
        &self,
        conn: &mut PgConnection,
        entries: Vec<(String, BooksEntry)>,
    ) -> Result<(), OrderSinkError> {
        let deployment = self.deployment();
        let config = &self.config;
        let mut rows: Vec<(u64, Event)> = Vec::with_capacity(entries.len());
        let mut origins: Vec<(String, String)> = Vec::with_capacity(entries.len());
        let mut restocks = Vec::new();
        for (stream, entry) in &entries {
            match &entry.event {
                Ok(event @ Event::StockAdded { .. }) => restocks.push((stream, &entry.id, event)),
                Ok(event) => {
                    rows.push((origins.len() as u64, event.clone()));
                    origins.push((stream.clone(), entry.id.clone()));
                }
                Err(reason) => {
                    let reason = OrderSinkError::Entry(reason.clone());
                    self.set_aside_entry(conn, stream, &entry.id, &entry.id, &reason)
                        .await?;
                }
            }
        }
        // Entries that wait for their deal's creation: not acknowledged.
        let mut waiting: HashSet<(&str, &str)> = HashSet::new();
        if !rows.is_empty() {
            let batch = Batch::from_events(&rows, deployment);
            let waits = apply_or_set_aside(
                conn,
                config,
                &self.status,
                deployment,
                Source::Streams(&origins),
                0,
                &rows,
                batch,
            )
            .await?;
            let origin = |position: u64| origins.get(usize::try_from(position).ok()?);
            waiting.extend(
                waits
                    .into_iter()
                    .filter_map(origin)
                    .map(|(stream, entry)| (stream.as_str(), entry.as_str())),
            );
        }
        for (stream, entry, event) in restocks {
            let one = [(0, event.clone())];
            let waits = apply_or_set_aside(
                conn,
                config,
                &self.status,
                deployment,
                Source::Restock { stream, entry },
                0,
                &one,
                Batch::from_events(&one, deployment),
            )
            .await?;
            if !waits.is_empty() {
                waiting.insert((stream.as_str(), entry.as_str()));
            }
        }
        let mut by_stream: Vec<(&str, Vec<String>)> = Vec::new();
        for (stream, entry) in &entries {
            if waiting.contains(&(stream.as_str(), entry.id.as_str())) {
                continue;
            }
            match by_stream.last_mut() {
                Some((last, ids)) if *last == stream.as_str() => ids.push(entry.id.clone()),
                _ => by_stream.push((stream, vec![entry.id.clone()])),
            }
        }
        try_join_all(
            by_stream
                .iter()
                .map(|(stream, ids)| self.store.books_ack(stream, ids)),
        )
        .await
        .map_err(redis)?;
        let waiting = entries
            .iter()
            .filter(|(stream, entry)| waiting.contains(&(stream.as_str(), entry.id.as_str())));
        self.wait_or_set_aside(conn, waiting).await
    }

    /// The entries of `waiting` (changes and restocks whose deal had no row,
    /// in stream order) whose deal's creation will not reach Postgres are
    /// set aside ([`OrderSinkError::DealMissing`]) and acknowledged: no
    /// earlier entry of their stream is pending (so the creation was
    /// applied or set aside; asked after this write's acknowledgements)
    /// and the deal still has no row (asked after Redis, since a node
    /// acknowledges after its commit). The others stay pending, claimed
    /// again after [`BOOKS_CLAIM_IDLE`]; so do all past
    /// [`OrderSinkConfig::set_aside_max`].
    async fn wait_or_set_aside<'e>(
        &self,
        conn: &mut PgConnection,
        waiting: impl Iterator<Item = &'e (String, BooksEntry)>,
    ) -> Result<(), OrderSinkError> {
        let mut left = 0_usize;
        for (stream, entry) in waiting {
            let (event, deal) = match &entry.event {
                Ok(event @ (Event::DealChanged { deal, .. } | Event::StockAdded { deal, .. })) => {
                    (event, *deal)
                }
                _ => continue,
            };
            let bounded =
                self.status.set_aside.load(Ordering::Relaxed) >= self.config.set_aside_max;
            if bounded
                || self
                    .store
                    .books_pending_before(stream, &entry.id)
                    .await
                    .map_err(redis)?
            {
                left += 1;
                continue;
            }
            let exists: bool = timed(
                self.config.batch_timeout,
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM deals WHERE deployment_id = $1 AND id = $2)",
                )
                .bind(self.deployment())
                .bind(deal.to_string())
                .fetch_one(&mut *conn),
            )
            .await?;
            if exists {
                left += 1; // created meanwhile: applied at the next claim
                continue;
            }
            let reason = OrderSinkError::DealMissing;
            self.set_aside_entry(conn, stream, &entry.id, event, &reason)
                .await?;
            self.store
                .books_ack(stream, std::slice::from_ref(&entry.id))
                .await
                .map_err(redis)?;
        }
        if left > 0 {
            tracing::info!(
                entries = left,
                retry_in = ?BOOKS_CLAIM_IDLE,
                "order sink: books entries read before their deal's creation reached Postgres; \
                 left pending"
            );
        }
        Ok(())
    }

    /// Sets the entry `id` of `stream` aside for `reason`, keeping the text
    /// of `event` (see [`set_aside`]); the caller acknowledges it.
    async fn set_aside_entry(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        id: &str,
        event: &(dyn std::fmt::Debug + Sync),
        reason: &OrderSinkError,
    ) -> Result<(), OrderSinkError> {
        let origin = [(stream.to_owned(), id.to_owned())];
        let progress = Progress {
            source: Source::Streams(&origin),
            from: 0,
            to: 0,
            last: None,
        };
        let deployment = self.deployment();
        timed(
            self.config.batch_timeout,
            set_aside(conn, &self.status, deployment, progress, event, reason),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_pack_into_one_number_in_order() {
        assert_eq!(position("0-0"), 0);
        assert_eq!(position("1-0"), 1 << 20);
        assert_eq!(position("1700000000000-5"), (1_700_000_000_000 << 20) | 5);
        assert!(position("1700000000000-5") < position("1700000000000-6"));
        assert!(position("1700000000000-999") < position("1700000000001-0"));
        assert_eq!(position("1-1048576"), 0); // the sequence does not fit
        assert_eq!(position("garbage"), 0);
    }
}
