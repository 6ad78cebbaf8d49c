//! The Postgres order sink: copies settled orders, wallet movements
//! (credits and order debits) and deals from the journal to Postgres, in
//! the background, never on the request path.
//!
//! It follows the journal with a [`JournalReader`] over the files on disk
//! (so its backlog lives on disk, not in memory), reads up to
//! `batch_events_max` durable events, and writes them in **one
//! transaction**: multi-row `INSERT … SELECT FROM UNNEST(…)` per table,
//! `ON CONFLICT DO NOTHING` by id, and the journal position it reached
//! (`order_sink_positions`, keyed by the journal's id). Rows and position
//! commit together, so after any crash the sink resumes exactly after the
//! last committed batch: every order reaches Postgres exactly once.
//!
//! Postgres down or slow: sales go on (nothing here is awaited by a
//! request); the sink retries with exponential backoff and catches up. It
//! tells the journal its position ([`Journal::retain_from`]) so snapshot
//! pruning never deletes what it has not applied. [`OrderSinkHandle::lag`]
//! and the gauges `flashsale_order_sink_lag_records` and
//! `flashsale_order_sink_lag_seconds` say how far behind it is.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale_engine::{DealId, Event, Money};
use flashsale_journal::{Journal, JournalError, JournalReader};
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Executor};
use tokio::sync::watch;

/// Migrations of the sink's tables (`gateway/migrations`), run at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Events read from the journal into one transaction.
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 50_000;

#[derive(Debug, Clone)]
pub struct OrderSinkConfig {
    pub database_url: String,
    /// Events per transaction, at most.
    pub batch_events_max: usize,
    /// How often to look for new durable events when caught up.
    pub idle_poll_interval: Duration,
    /// Backoff after a failure: from `retry_delay_min`, doubling, up to `retry_delay_max`.
    pub retry_delay_min: Duration,
    pub retry_delay_max: Duration,
    /// A connection attempt that takes longer has failed.
    pub connect_timeout: Duration,
    /// A batch transaction that takes longer has failed (Postgres hung).
    pub batch_timeout: Duration,
}

impl OrderSinkConfig {
    pub fn new(database_url: &str) -> OrderSinkConfig {
        OrderSinkConfig {
            database_url: database_url.to_owned(),
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            idle_poll_interval: Duration::from_millis(20),
            retry_delay_min: Duration::from_millis(100),
            retry_delay_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            batch_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrderSinkError {
    #[error("invalid database URL")]
    DatabaseUrl(#[source] sqlx::Error),
    #[error("the journal cannot be read")]
    Journal(#[from] JournalError),
    #[error("Postgres")]
    Database(#[from] sqlx::Error),
    #[error("migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("Postgres did not answer within {0:?}")]
    Timeout(Duration),
    #[error("another sink moved this journal's position in Postgres")]
    Contended,
    #[error("the journal reader task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// How far Postgres is behind the journal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkLag {
    /// Durable events not yet applied. Until the sink first reaches
    /// Postgres it counts from the oldest position on disk (an upper bound).
    pub records: u64,
    /// Seconds since the sink was last caught up (0 when it is).
    pub seconds: f64,
    /// The last position committed to Postgres (`None` before the first connection).
    pub applied: Option<u64>,
    pub connected: bool,
}

/// What the sink task shares with its handle.
struct Status {
    base: Instant,
    /// Last committed position + 1; 0 while unknown.
    next: AtomicU64,
    /// Lower bound used while `next` is unknown.
    oldest: AtomicU64,
    caught_up_at_millis: AtomicU64,
    connected: AtomicBool,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl Status {
    fn mark_caught_up(&self) {
        self.caught_up_at_millis
            .store(self.base.elapsed().as_millis() as u64, Ordering::Release);
    }

    fn lag(&self, journal: &Journal) -> SinkLag {
        let durable = journal.durable_position();
        let next = self.next.load(Ordering::Acquire);
        let from = if next == 0 {
            self.oldest.load(Ordering::Acquire)
        } else {
            next
        };
        let records = (durable + 1).saturating_sub(from);
        let seconds = if records == 0 {
            0.0
        } else {
            let since = self.caught_up_at_millis.load(Ordering::Acquire);
            (self.base.elapsed().as_millis() as u64).saturating_sub(since) as f64 / 1000.0
        };
        let lag = SinkLag {
            records,
            seconds,
            applied: (next != 0).then(|| next - 1),
            connected: self.connected.load(Ordering::Acquire),
        };
        metrics::gauge!("flashsale_order_sink_lag_records").set(lag.records as f64);
        metrics::gauge!("flashsale_order_sink_lag_seconds").set(lag.seconds);
        lag
    }
}

/// The running sink.
pub struct OrderSinkHandle {
    status: Arc<Status>,
    journal: Arc<Journal>,
    task: tokio::task::JoinHandle<()>,
}

impl OrderSinkHandle {
    /// How far behind Postgres is; also sets the lag gauges.
    pub fn lag(&self) -> SinkLag {
        self.status.lag(&self.journal)
    }

    /// The last failure (connection, SQL, journal), if the sink is retrying.
    pub fn last_error(&self) -> Option<String> {
        self.status.last_error.lock().clone()
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
    let status = Arc::new(Status {
        base: Instant::now(),
        next: AtomicU64::new(0),
        oldest: AtomicU64::new(oldest),
        caught_up_at_millis: AtomicU64::new(0),
        connected: AtomicBool::new(false),
        last_error: parking_lot::Mutex::new(None),
    });
    let task = tokio::spawn(run(
        config,
        options,
        journal.clone(),
        status.clone(),
        shutdown,
    ));
    Ok(OrderSinkHandle {
        status,
        journal,
        task,
    })
}

async fn run(
    config: OrderSinkConfig,
    options: PgConnectOptions,
    journal: Arc<Journal>,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut delay = config.retry_delay_min;
    loop {
        let mut progressed = false;
        let outcome = session(
            &config,
            &options,
            &journal,
            &status,
            stopping.clone(),
            &mut progressed,
        )
        .await;
        status.connected.store(false, Ordering::Release);
        if let Err(error) = outcome {
            let chain = error_chain(&error);
            tracing::warn!(error = %chain, retry_in = ?delay, "order sink: Postgres unavailable, retrying");
            *status.last_error.lock() = Some(chain);
        }
        status.lag(&journal);
        if *stopping.borrow() {
            return;
        }
        if progressed {
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
async fn stopped(mut stopping: watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn timed<T, E>(
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

/// One connection's life: migrate, find the position, then apply batches
/// until an error.
async fn session(
    config: &OrderSinkConfig,
    options: &PgConnectOptions,
    journal: &Arc<Journal>,
    status: &Status,
    stopping: watch::Receiver<bool>,
    progressed: &mut bool,
) -> Result<(), OrderSinkError> {
    if *stopping.borrow() {
        return Ok(());
    }
    let mut conn = timed(config.connect_timeout, PgConnection::connect_with(options)).await?;
    timed(
        config.batch_timeout,
        MIGRATOR.run_direct(None, &mut conn, false),
    )
    .await?;
    let journal_id = journal.id().to_owned();
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
    let applied: i64 = timed(
        config.batch_timeout,
        sqlx::query_scalar("SELECT position FROM order_sink_positions WHERE journal_id = $1")
            .bind(&journal_id)
            .fetch_one(&mut conn),
    )
    .await?;
    let mut applied = applied as u64;
    journal.retain_from(applied + 1);
    status.next.store(applied + 1, Ordering::Release);
    status.connected.store(true, Ordering::Release);
    *status.last_error.lock() = None;

    let dir = journal.dir().to_owned();
    let reader =
        tokio::task::spawn_blocking(move || JournalReader::open(&dir, applied + 1)).await??;
    let max = config.batch_events_max;
    // The next batch is read and converted while the current one is in
    // Postgres: the two overlap on separate cores.
    let mut next = read_rows(reader, max, journal.durable_position());
    loop {
        let (reader, read) = next.await?;
        let Some((last, rows)) = read? else {
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
            next = read_rows(reader, max, journal.durable_position());
            continue;
        };
        next = read_rows(reader, max, journal.durable_position());
        timed(
            config.batch_timeout,
            apply(&mut conn, &journal_id, applied, last, &rows),
        )
        .await?;
        applied = last;
        *progressed = true;
        journal.retain_from(applied + 1);
        status.next.store(applied + 1, Ordering::Release);
        if applied >= journal.durable_position() {
            status.mark_caught_up();
        }
        status.lag(journal);
    }
}

type ReadRows = (JournalReader, Result<Option<(u64, Rows)>, JournalError>);

/// Reads up to `max` durable events (to `upto`) on a blocking thread and
/// turns them into rows; `None` when nothing new is durable.
fn read_rows(
    mut reader: JournalReader,
    max: usize,
    upto: u64,
) -> tokio::task::JoinHandle<ReadRows> {
    tokio::task::spawn_blocking(move || {
        let read = reader.next_batch(max, upto).map(|batch| {
            let &(last, _) = batch.last()?;
            Some((last, Rows::from_events(&batch)))
        });
        (reader, read)
    })
}

/// One batch's rows, column by column (for `UNNEST`).
#[derive(Default)]
struct Rows {
    deals: DealRows,
    /// Deal id → stock added in this batch.
    restocks: HashMap<DealId, u64>,
    /// Deal id → (ends_at, paused), the last change in this batch.
    changes: HashMap<DealId, (i64, bool)>,
    orders: OrderRows,
    movements: MovementRows,
}

#[derive(Default)]
struct DealRows {
    id: Vec<String>,
    merchant: Vec<String>,
    title: Vec<String>,
    price: Vec<Decimal>,
    stock: Vec<i64>,
    per_user_limit: Vec<i32>,
    starts_at: Vec<i64>,
    ends_at: Vec<i64>,
    requires_registration: Vec<bool>,
    hold_seconds: Vec<i32>,
    created_at: Vec<i64>,
}

#[derive(Default)]
struct OrderRows {
    id: Vec<String>,
    deal: Vec<String>,
    shopper: Vec<String>,
    quantity: Vec<i64>,
    unit_price: Vec<Decimal>,
    amount: Vec<Decimal>,
    late: Vec<bool>,
    created_at: Vec<i64>,
}

#[derive(Default)]
struct MovementRows {
    id: Vec<String>,
    shopper: Vec<String>,
    kind: Vec<&'static str>,
    amount: Vec<Decimal>,
    order: Vec<Option<String>>,
    created_at: Vec<i64>,
}

fn money(amount: Money) -> Decimal {
    amount.to_decimal()
}

impl Rows {
    fn from_events(batch: &[(u64, Event)]) -> Rows {
        let mut rows = Rows::default();
        for (_, event) in batch {
            match event {
                Event::DealCreated {
                    deal,
                    merchant,
                    spec,
                    at,
                } => {
                    let d = &mut rows.deals;
                    d.id.push(deal.to_string());
                    d.merchant.push(merchant.to_string());
                    d.title.push(spec.title.clone());
                    d.price.push(money(spec.price));
                    d.stock.push(spec.stock as i64);
                    d.per_user_limit.push(spec.per_user_limit as i32);
                    d.starts_at.push(spec.starts_at.millis());
                    d.ends_at.push(spec.ends_at.millis());
                    d.requires_registration.push(spec.requires_registration);
                    d.hold_seconds.push(spec.hold_seconds as i32);
                    d.created_at.push(at.millis());
                }
                Event::StockAdded { deal, quantity, .. } => {
                    *rows.restocks.entry(*deal).or_default() += quantity;
                }
                Event::DealChanged {
                    deal,
                    ends_at,
                    paused,
                    ..
                } => {
                    rows.changes.insert(*deal, (ends_at.millis(), *paused));
                }
                Event::WalletCredited {
                    shopper,
                    amount,
                    reference,
                    at,
                } => {
                    let m = &mut rows.movements;
                    m.id.push(format!("c_{:x}_{reference:032x}", shopper.0));
                    m.shopper.push(shopper.to_string());
                    m.kind.push("credit");
                    m.amount.push(money(*amount));
                    m.order.push(None);
                    m.created_at.push(at.millis());
                }
                Event::OrderSettled { order, .. } => {
                    let id = order.id.to_string();
                    let shopper = order.shopper.to_string();
                    let o = &mut rows.orders;
                    o.id.push(id.clone());
                    o.deal.push(order.deal.to_string());
                    o.shopper.push(shopper.clone());
                    o.quantity.push(i64::from(order.quantity));
                    o.unit_price.push(money(order.unit_price));
                    o.amount.push(money(order.amount));
                    o.late.push(order.late);
                    o.created_at.push(order.created_at.millis());
                    let m = &mut rows.movements;
                    m.id.push(id.clone());
                    m.shopper.push(shopper);
                    m.kind.push("debit");
                    m.amount.push(money(order.amount));
                    m.order.push(Some(id));
                    m.created_at.push(order.created_at.millis());
                }
                // Accounts, registrations, holds, reviews, shares: not the books.
                _ => {}
            }
        }
        rows
    }
}

/// Milliseconds since the epoch (`$n::int8[]`) to `timestamptz`, exactly.
const MILLIS: &str = "timestamptz 'epoch' + interval '1 millisecond' *";

/// Writes one batch and moves the position from `from` to `to`, atomically.
async fn apply(
    conn: &mut PgConnection,
    journal_id: &str,
    from: u64,
    to: u64,
    rows: &Rows,
) -> Result<(), OrderSinkError> {
    let mut tx = conn.begin().await?;
    let d = &rows.deals;
    if !d.id.is_empty() {
        let sql = format!(
            "INSERT INTO deals (id, merchant_id, title, price, stock_total, per_user_limit, \
             starts_at, ends_at, requires_registration, hold_seconds, created_at) \
             SELECT id, merchant_id, title, price, stock, per_user_limit, \
             {MILLIS} starts_at, {MILLIS} ends_at, requires_registration, hold_seconds, \
             {MILLIS} created_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::int8[], \
             $6::int4[], $7::int8[], $8::int8[], $9::bool[], $10::int4[], $11::int8[]) \
             AS t(id, merchant_id, title, price, stock, per_user_limit, starts_at, ends_at, \
             requires_registration, hold_seconds, created_at) \
             ON CONFLICT (id) DO NOTHING"
        );
        tx.execute(
            sqlx::query(AssertSqlSafe(sql))
                .bind(&d.id)
                .bind(&d.merchant)
                .bind(&d.title)
                .bind(&d.price)
                .bind(&d.stock)
                .bind(&d.per_user_limit)
                .bind(&d.starts_at)
                .bind(&d.ends_at)
                .bind(&d.requires_registration)
                .bind(&d.hold_seconds)
                .bind(&d.created_at),
        )
        .await?;
    }
    if !rows.restocks.is_empty() {
        let (ids, added): (Vec<String>, Vec<i64>) = rows
            .restocks
            .iter()
            .map(|(deal, quantity)| (deal.to_string(), *quantity as i64))
            .unzip();
        tx.execute(
            sqlx::query(
                "UPDATE deals SET stock_total = deals.stock_total + t.added \
                 FROM UNNEST($1::text[], $2::int8[]) AS t(id, added) WHERE deals.id = t.id",
            )
            .bind(&ids)
            .bind(&added),
        )
        .await?;
    }
    if !rows.changes.is_empty() {
        let mut ids = Vec::new();
        let mut ends = Vec::new();
        let mut paused = Vec::new();
        for (deal, (ends_at, is_paused)) in &rows.changes {
            ids.push(deal.to_string());
            ends.push(*ends_at);
            paused.push(*is_paused);
        }
        let sql = format!(
            "UPDATE deals SET ends_at = {MILLIS} t.ends_at, paused = t.paused \
             FROM UNNEST($1::text[], $2::int8[], $3::bool[]) AS t(id, ends_at, paused) \
             WHERE deals.id = t.id"
        );
        tx.execute(
            sqlx::query(AssertSqlSafe(sql))
                .bind(&ids)
                .bind(&ends)
                .bind(&paused),
        )
        .await?;
    }
    let o = &rows.orders;
    if !o.id.is_empty() {
        let sql = format!(
            "INSERT INTO orders (id, deal_id, shopper_id, quantity, unit_price, amount, late, \
             created_at) \
             SELECT id, deal_id, shopper_id, quantity, unit_price, amount, late, {MILLIS} created_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::numeric[], \
             $6::numeric[], $7::bool[], $8::int8[]) \
             AS t(id, deal_id, shopper_id, quantity, unit_price, amount, late, created_at) \
             ON CONFLICT (id) DO NOTHING"
        );
        tx.execute(
            sqlx::query(AssertSqlSafe(sql))
                .bind(&o.id)
                .bind(&o.deal)
                .bind(&o.shopper)
                .bind(&o.quantity)
                .bind(&o.unit_price)
                .bind(&o.amount)
                .bind(&o.late)
                .bind(&o.created_at),
        )
        .await?;
    }
    let m = &rows.movements;
    if !m.id.is_empty() {
        let sql = format!(
            "INSERT INTO wallet_movements (id, shopper_id, kind, amount, order_id, created_at) \
             SELECT id, shopper_id, kind, amount, order_id, {MILLIS} created_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], \
             $6::int8[]) AS t(id, shopper_id, kind, amount, order_id, created_at) \
             ON CONFLICT (id) DO NOTHING"
        );
        tx.execute(
            sqlx::query(AssertSqlSafe(sql))
                .bind(&m.id)
                .bind(&m.shopper)
                .bind(&m.kind)
                .bind(&m.amount)
                .bind(&m.order)
                .bind(&m.created_at),
        )
        .await?;
    }
    let moved = tx
        .execute(
            sqlx::query(
                "UPDATE order_sink_positions SET position = $2, updated_at = now() \
                 WHERE journal_id = $1 AND position = $3",
            )
            .bind(journal_id)
            .bind(to as i64)
            .bind(from as i64),
        )
        .await?;
    if moved.rows_affected() != 1 {
        return Err(OrderSinkError::Contended);
    }
    tx.commit().await?;
    Ok(())
}
