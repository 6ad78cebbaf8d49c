//! The sink's life: [`start`], the run loop with its backoff, and one
//! session on one connection; [`OrderSinkHandle`] to watch and stop it.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flashsale_engine::{Clock, SystemClock};
use flashsale_journal::{Journal, JournalReader};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::watch;

use crate::config::OrderSinkConfig;
use crate::error::OrderSinkError;
use crate::history::check_own_history;
use crate::lookup::BooksLookup;
use crate::progress::Source;
use crate::set_aside::{apply_or_set_aside, read_batch};
use crate::status::{SinkLag, Status};

/// The running sink.
pub struct OrderSinkHandle {
    pub(crate) status: Arc<Status>,
    /// Whether an order is in Postgres yet.
    pub(crate) books: Arc<BooksLookup>,
    /// The journal it follows; `None` in Redis mode ([`streams`]).
    pub(crate) journal: Option<Arc<Journal>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl OrderSinkHandle {
    /// How far behind Postgres is (journal records, or in Redis mode books
    /// entries, and seconds); also sets the lag gauges.
    /// The lookup that says whether an order is in the books.
    pub fn books(&self) -> Arc<BooksLookup> {
        self.books.clone()
    }

    pub fn lag(&self) -> SinkLag {
        match &self.journal {
            Some(journal) => self.status.lag(journal),
            None => self.status.stream_lag(SystemClock.now()),
        }
    }

    /// The last failure (connection, SQL, journal), if the sink is retrying.
    pub fn last_error(&self) -> Option<String> {
        self.status.last_error.lock().clone()
    }

    /// Journal events set aside (see the module doc) since start, of which
    /// conflicts (a row already there with other content), and the last
    /// one's position and reason.
    pub fn set_aside(&self) -> (u64, u64, Option<String>) {
        (
            self.status.set_aside.load(Ordering::Relaxed),
            self.status.conflicts.load(Ordering::Relaxed),
            self.status.last_set_aside.lock().clone(),
        )
    }

    /// Batches whose rows were partly in Postgres already, applied by the
    /// `ON CONFLICT DO NOTHING` fallback instead of `COPY` (see the module doc).
    pub fn merged_batches(&self) -> u64 {
        self.status.merged_batches.load(Ordering::Relaxed)
    }

    /// Waits for the sink to stop. Once its `shutdown` future resolves, a
    /// connected sink first applies everything durable by then (bound the
    /// wait with a timeout); a disconnected one stops at once. What is not
    /// applied stays on disk and is applied after the next start.
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Stops the sink at once, even mid-transaction (which Postgres then
    /// rolls back): what a crash does. For tests.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts the sink in the background with default bounds. Fails only on a
/// malformed URL: an unreachable Postgres is retried, never fatal.
pub async fn start(
    database_url: &str,
    journal: Arc<Journal>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<OrderSinkHandle, OrderSinkError> {
    start_with(OrderSinkConfig::new(database_url), journal, shutdown).await
}

pub async fn start_with(
    config: OrderSinkConfig,
    journal: Arc<Journal>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<OrderSinkHandle, OrderSinkError> {
    let options =
        PgConnectOptions::from_str(&config.database_url).map_err(OrderSinkError::DatabaseUrl)?;
    // Until Postgres says where the sink is, keep everything on disk.
    let oldest = journal.oldest_position()?;
    journal.retain_from(oldest);
    let status = Arc::new(Status::new(oldest));
    let deployment = config
        .deployment_id
        .clone()
        .unwrap_or_else(|| journal.id().to_owned());
    let books = Arc::new(BooksLookup::new(&options, deployment));
    let session_status = status.clone();
    let session_journal = journal.clone();
    let task = tokio::spawn(run(
        config.clone(),
        status.clone(),
        shutdown,
        move |stopping, progressed| {
            let (config, options) = (config.clone(), options.clone());
            let (journal, status) = (session_journal.clone(), session_status.clone());
            async move {
                let outcome =
                    session(&config, &options, &journal, &status, stopping, progressed).await;
                status.lag(&journal);
                outcome
            }
        },
    ));
    Ok(OrderSinkHandle {
        status,
        books,
        journal: Some(journal),
        task,
    })
}

/// Runs `session` (one connection's life, told to stop by the watch,
/// setting the flag when it applied something) again and again until
/// shutdown, with exponential backoff after failures, keeping the last
/// error in `status`.
pub(crate) async fn run<S, F>(
    config: OrderSinkConfig,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut session: S,
) where
    S: FnMut(watch::Receiver<bool>, Arc<AtomicBool>) -> F + Send,
    F: Future<Output = Result<(), OrderSinkError>> + Send,
{
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut delay = config.retry_delay_min;
    loop {
        let progressed = Arc::new(AtomicBool::new(false));
        let outcome = session(stopping.clone(), progressed.clone()).await;
        status.connected.store(false, Ordering::Release);
        if let Err(error) = outcome {
            let chain = error_chain(&error);
            tracing::warn!(error = %chain, retry_in = ?delay, "order sink: unavailable, retrying");
            *status.last_error.lock() = Some(chain);
        }
        if *stopping.borrow() {
            return;
        }
        if progressed.load(Ordering::Relaxed) {
            delay = config.retry_delay_min;
        }
        tokio::select! {
            () = stopped(stopping.clone()) => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(config.retry_delay_max);
    }
}

/// Resolves once shutdown was asked for (never, if it cannot be any more).
pub(crate) async fn stopped(mut stopping: watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) async fn timed<T, E>(
    limit: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, OrderSinkError>
where
    OrderSinkError: From<E>,
{
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(OrderSinkError::from),
        Err(_) => Err(OrderSinkError::Timeout(limit)),
    }
}

/// A connection to Postgres with the sink's tables migrated, within the
/// configured timeouts.
pub(crate) async fn connect(
    config: &OrderSinkConfig,
    options: &PgConnectOptions,
) -> Result<PgConnection, OrderSinkError> {
    let mut conn = timed(config.connect_timeout, PgConnection::connect_with(options)).await?;
    timed(
        config.batch_timeout,
        crate::MIGRATOR.run_direct(None, &mut conn, false),
    )
    .await?;
    Ok(conn)
}

/// One connection's life: migrate, find the position, then apply batches
/// until an error.
pub(crate) async fn session(
    config: &OrderSinkConfig,
    options: &PgConnectOptions,
    journal: &Arc<Journal>,
    status: &Status,
    stopping: watch::Receiver<bool>,
    progressed: Arc<AtomicBool>,
) -> Result<(), OrderSinkError> {
    if *stopping.borrow() {
        return Ok(());
    }
    let mut conn = connect(config, options).await?;
    let journal_id = journal.id().to_owned();
    let deployment = config
        .deployment_id
        .clone()
        .unwrap_or_else(|| journal_id.clone());
    timed(
        config.batch_timeout,
        sqlx::query(
            "INSERT INTO order_sink_positions (journal_id, position) VALUES ($1, 0) \
             ON CONFLICT (journal_id) DO NOTHING",
        )
        .bind(&journal_id)
        .execute(&mut conn),
    )
    .await?;
    let (applied, event_position, event_sha256): (i64, Option<i64>, Option<Vec<u8>>) = timed(
        config.batch_timeout,
        sqlx::query_as(
            "SELECT position, event_position, event_sha256 FROM order_sink_positions \
             WHERE journal_id = $1",
        )
        .bind(&journal_id)
        .fetch_one(&mut conn),
    )
    .await?;
    let mut applied = applied as u64;
    let last_event = event_position.zip(event_sha256);
    if let Err(error) = check_own_history(journal, applied, last_event).await {
        status.counters.foreign_positions.increment(1);
        // `run` logs the error itself; this says, louder, that it is a copy.
        tracing::error!(
            journal = %journal_id,
            position = applied,
            "order sink: the position in Postgres is not this journal's history \
             (a copied data directory?); not adopted, nothing written"
        );
        return Err(error);
    }
    // The event at `applied` stays on disk too, so the next start can check it.
    journal.retain_from(applied);
    status.next.store(applied + 1, Ordering::Release);
    status.connected.store(true, Ordering::Release);
    *status.last_error.lock() = None;

    let dir = journal.dir().to_owned();
    let reader =
        tokio::task::spawn_blocking(move || JournalReader::open(&dir, applied + 1)).await??;
    let max = config.batch_events_max;
    // The next batch is read and converted while the current one is in
    // Postgres: the two overlap on separate cores.
    let mut next = read_batch(reader, max, journal.durable_position(), &deployment);
    loop {
        let (reader, read) = next.await?;
        let Some((last, events, batch)) = read? else {
            // Read with an older `upto`: look again before resting or stopping.
            if applied >= journal.durable_position() {
                status.mark_caught_up();
                status.lag(journal);
                if *stopping.borrow() {
                    return Ok(()); // drained what was durable at shutdown
                }
                tokio::select! {
                    () = tokio::time::sleep(config.idle_poll_interval) => {}
                    () = stopped(stopping.clone()) => {}
                }
            }
            next = read_batch(reader, max, journal.durable_position(), &deployment);
            continue;
        };
        next = read_batch(reader, max, journal.durable_position(), &deployment);
        apply_or_set_aside(
            &mut conn,
            config,
            status,
            &deployment,
            Source::Journal(&journal_id),
            applied,
            &events,
            batch,
        )
        .await?;
        applied = last;
        progressed.store(true, Ordering::Relaxed);
        journal.retain_from(applied);
        status.next.store(applied + 1, Ordering::Release);
        if applied >= journal.durable_position() {
            status.mark_caught_up();
        }
        status.lag(journal);
    }
}
