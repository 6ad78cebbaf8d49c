//! The Postgres order sink: copies settled orders, wallet movements
//! (credits and order debits), deals and raffles (registrations, draws and
//! the places of their rankings: migration `0004`) from the journal to
//! Postgres, in the background, never on the request path.
//!
//! It follows the journal with a [`JournalReader`] over the files on disk
//! (so its backlog lives on disk, not in memory), reads up to
//! `batch_events_max` durable events, and writes them in **one
//! transaction** with the journal position it reached
//! (`order_sink_positions`, keyed by the journal's id). Rows and position
//! commit together, so after any crash the sink resumes exactly after the
//! last committed batch: every order reaches Postgres exactly once.
//!
//! The rows of a batch are encoded once, on the reader's blocking thread
//! while the previous batch is in Postgres, as one binary `COPY` stream
//! per table ([`copy`]: timestamps as `timestamptz`, money as `numeric`).
//! **Fast path**: `COPY deals/orders/wallet_movements/registrations/
//! draws/draw_places FROM STDIN (FORMAT binary)` straight into the tables. `COPY` cannot skip a row that is
//! already there, so it fails the batch on a unique violation (SQLSTATE
//! 23505): only when the position was lost or moved back, since a
//! committed batch always moves it past its rows. **Fallback**: the sink
//! rolls that transaction back and applies the same batch again, the same
//! streams copied into temporary tables, then `INSERT … SELECT … ON
//! CONFLICT (id) DO NOTHING`, so rows already there are kept once and the
//! rest are added. [`OrderSinkHandle::merged_batches`] counts fallbacks.
//! Restocks, deal changes and the ending of raffle holds (released or
//! expired, on `draw_places`) are `UPDATE … FROM UNNEST(…)` in the same
//! transaction.
//!
//! **Raffle seeds**: a deal's row carries its seed's commitment, never the
//! seed, although `DealCreated` holds it: the merchant reads Postgres, and
//! a seed known before the draw lets them pick the winners. The seed
//! reaches Postgres only in `draws`, from `DrawRun`, which the engine
//! journals once the draw has run and which carries what it revealed, so
//! no batch needs an earlier event.
//!
//! **Keys**: every row carries `deployment_id` ([`OrderSinkConfig::deployment_id`],
//! by default the journal's random id) and is keyed by `(deployment_id,
//! id)`, so two deployments numbering their orders from the start never
//! collide in one database (migration `0002`). After a merge, a row that
//! was already there must hold the same content in its fixed columns;
//! one that does not is [`OrderSinkError::Conflict`], never skipped.
//!
//! **Refused content**: a batch Postgres refuses for what its rows hold
//! (SQLSTATE class 22 or 23, a value the encoder cannot represent, or a
//! conflict: `OrderSinkError::is_content`) would fail again on every
//! retry and stop every later order from reaching the books. So it is
//! split in halves and applied again, down to the one event refused,
//! which is set aside in `order_sink_set_aside` with the reason and
//! counted ([`OrderSinkHandle::set_aside`],
//! `flashsale_order_sink_set_aside_total`, `_conflicts_total`: in
//! `/metrics` at 0 from the moment a sink starts); the sink goes on.
//! Connection errors and timeouts are retried whole, as before.
//!
//! **Redis mode** ([`streams`]): the events come from the Redis books
//! streams instead of the journal and go through the same path
//! (`Batch::from_events`, `apply_or_set_aside`); what a transaction records
//! beside its rows is its [`Source`]'s: the journal's position, nothing
//! (stream rows are keyed by id), or a restock entry's id.
//!
//! **Order**: the journal gives the sink a deal's events in order, but in
//! Redis mode the entries of one deal's stream are spread over the nodes
//! and a dead node's are claimed seconds later, so they reach Postgres in
//! any order. So a deal's row converges to the deal whatever the order:
//! restocks add (any order gives the same sum; each entry once, recorded
//! in `order_sink_stream_entries`; from the journal, each once by its
//! position, `deals.restock_version`, migration `0006`, so a journal
//! applied again, its position lost, adds no restock twice); a change
//! (`ends_at`, `paused`) carries a version, its journal position or its
//! entry id in the deal's stream ([`Source::sequence`]), and updates the
//! row only if newer than the one the row holds (`deals.change_version`,
//! migration `0005`), so an older change arriving late changes nothing;
//! and a change or restock read before its deal's creation reached
//! Postgres is not applied, not recorded, and not acknowledged: it stays
//! pending in its stream and is claimed again after `BOOKS_CLAIM_IDLE`
//! ([`streams`]), by when the creation is in. (A placeholder row for the
//! creation to complete would have to pass the merge's conflict check on
//! every fixed column; waiting needs nothing new.) One whose deal's
//! creation was set aside is set aside in turn, once no earlier entry of
//! its stream is pending ([`OrderSinkError::DealMissing`]). From the
//! journal the creation always comes first; a change whose deal's creation
//! was set aside updates nothing, as before.
//!
//! **Copies**: a data directory copied (a restore, a clone, lock file
//! removed) keeps its journal's id, so two journals with one id, the same
//! history up to the copy and their own after it, can write one database.
//! Their positions are not comparable, and adopting the other's would skip
//! this journal's own events silently. So each batch records, with the
//! position, the position and SHA-256 of its last event
//! ([`flashsale_journal::event_digest`]; `order_sink_positions.event_position`,
//! `event_sha256`, migration `0007`), and a sink that reads the stored
//! position (at start, and on reconnecting after another sink moved it:
//! [`OrderSinkError::Contended`]) adopts it only if it is this journal's
//! history: not beyond its durable end, and the same event at
//! `event_position` here (`check_own_history`). Otherwise it writes
//! nothing and retries with backoff, its `last_error` (so `/readyz`) names
//! the journal and the copy ([`OrderSinkError::ForeignPosition`]), and
//! `flashsale_order_sink_foreign_positions_total` counts the refusal: the
//! copy that got there first keeps the books, the other's events wait on
//! its disk for an operator. The sink keeps the event at its position on
//! disk (`retain_from(applied)`, one event more than it needs to read on),
//! so its own is always checkable; one already pruned (a position moved
//! forward by hand), a NULL digest (rows from before `0007`) or position 0
//! cannot be checked and is accepted. A position moved back by an
//! operator keeps the digest's own position, so it is checked and
//! replayed (the merge). One event's digest tells two histories apart
//! unless their events at that position are identical byte for byte (the
//! same event at the same millisecond).
//!
//! Postgres down or slow: sales go on (nothing here is awaited by a
//! request); the sink retries with exponential backoff and catches up. It
//! tells the journal its position ([`Journal::retain_from`]) so snapshot
//! pruning never deletes what it has not applied, nor the last event it
//! did ("Copies"). [`OrderSinkHandle::lag`]
//! and the gauges `flashsale_order_sink_lag_records` and
//! `flashsale_order_sink_lag_seconds` say how far behind it is.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale_engine::{
    Allocation, Clock, DealId, Digest, DrawSeed, Event, HoldId, Order, ReleaseReason, ShopperId,
    SystemClock, Timestamp,
};
use flashsale_journal::{Journal, JournalError, JournalReader};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Executor};
use tokio::sync::watch;

mod copy;
pub(crate) mod streams;

use copy::{CopyRows, CopyStream};

/// Migrations of the sink's tables (`gateway/migrations`), run at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Events read from the journal into one transaction.
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 50_000;

/// Events the sink sets aside at most between two starts, by default.
pub const SET_ASIDE_MAX_DEFAULT: u64 = 1_000;

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
    /// The deployment the rows belong to: part of every row's key, so two
    /// deployments writing one database never collide. `None`: the
    /// journal's id (a single node; random, made once with the data
    /// directory). A Redis-mode deployment passes the id it keeps in
    /// Redis, shared by its nodes ([`streams`]).
    pub deployment_id: Option<String>,
    /// Events set aside at most since start. A few refused rows are bad
    /// input that slipped past the API; many more are likely a fault of
    /// the sink or the schema, so past this bound the sink stops setting
    /// aside and retries the refused batch (`/readyz` names the error)
    /// rather than empty the journal into `order_sink_set_aside`.
    pub set_aside_max: u64,
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
            deployment_id: None,
            set_aside_max: SET_ASIDE_MAX_DEFAULT,
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
    /// The position stored for this journal's id is not this journal's
    /// history (see "Copies" in the module doc): adopting it would skip
    /// this journal's own events silently, so the sink writes nothing and
    /// retries. `detail` says what did not match.
    #[error(
        "journal {journal}: position {position} in Postgres is not this journal's history \
         ({detail}): another data directory with this journal's id (a copy?) writes this \
         database; this sink writes nothing and retries"
    )]
    ForeignPosition {
        journal: String,
        position: u64,
        detail: String,
    },
    #[error("the journal reader task failed")]
    Task(#[from] tokio::task::JoinError),
    /// A restock entry of a books stream is already in Postgres
    /// (`order_sink_stream_entries`): nothing to do.
    #[error("this books entry is already in Postgres")]
    AlreadyApplied,
    /// A books entry in Redis that is not what the script writes.
    #[error("a books entry cannot be read: {0}")]
    Entry(String),
    #[error("Redis, reading the books streams")]
    Redis(#[source] Box<flashsale_redis::Error>),
    #[error("{0} is out of range for Postgres")]
    OutOfRange(&'static str),
    /// A deal change or restock from a books stream whose deal's creation
    /// will not reach Postgres: every earlier entry of the deal's stream
    /// is acknowledged, and the deal has no row (its creation was set
    /// aside). Only ever a reason to set the entry aside.
    #[error("its deal is not in Postgres: the deal's creation was set aside")]
    DealMissing,
    /// A row with the same deployment and id is in Postgres with other
    /// content: never skipped silently.
    #[error(
        "{table} row {id} is already in Postgres with other content: ours {ours}, theirs {theirs}"
    )]
    Conflict {
        table: &'static str,
        id: String,
        ours: String,
        theirs: String,
    },
}

impl OrderSinkError {
    /// Postgres (or the encoder) refused the rows for their content, so
    /// retrying cannot help: SQLSTATE class 22 (data exception: a NUL in
    /// text, a number out of range) or 23 (integrity: a check) but not a
    /// unique violation (the merge path's business), a value out of
    /// Postgres' range, or a conflicting row.
    fn is_content(&self) -> bool {
        match self {
            OrderSinkError::OutOfRange(_)
            | OrderSinkError::Conflict { .. }
            | OrderSinkError::Entry(_) => true,
            OrderSinkError::Database(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                (code.starts_with("22") || code.starts_with("23")) && !db.is_unique_violation()
            }
            _ => false,
        }
    }
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

/// `/metrics`' count of events set aside since the process started.
const SET_ASIDE_TOTAL: &str = "flashsale_order_sink_set_aside_total";
/// Of those, events whose row was already in Postgres with other content.
const CONFLICTS_TOTAL: &str = "flashsale_order_sink_conflicts_total";
/// `/metrics`' count of stored positions the sink refused to adopt
/// ([`OrderSinkError::ForeignPosition`]): above 0, a copied data directory
/// writes the same database.
const FOREIGN_POSITIONS_TOTAL: &str = "flashsale_order_sink_foreign_positions_total";

/// The sink's counters in the process's recorder ([`crate::telemetry`]).
struct SinkCounters {
    set_aside: metrics::Counter,
    conflicts: metrics::Counter,
    foreign_positions: metrics::Counter,
}

impl SinkCounters {
    /// Describes and registers the counters when a sink starts (one node
    /// or Redis mode), so `/metrics` lists them at 0 before the first
    /// event is set aside and a dashboard or an alert has a series from
    /// the start. The process's recorder is installed first, since the
    /// sink starts before the server's telemetry. Registering never resets
    /// a count: a second sink in one process (tests) adds to it.
    fn register() -> SinkCounters {
        crate::telemetry::recorder();
        metrics::describe_counter!(
            SET_ASIDE_TOTAL,
            "Events the order sink set aside because Postgres refused their rows"
        );
        metrics::describe_counter!(
            CONFLICTS_TOTAL,
            "Events set aside because their row was already in Postgres with other content"
        );
        metrics::describe_counter!(
            FOREIGN_POSITIONS_TOTAL,
            "Times the order sink refused a position in Postgres that is not its journal's history \
             (a copied data directory writes the same database)"
        );
        SinkCounters {
            set_aside: metrics::counter!(SET_ASIDE_TOTAL),
            conflicts: metrics::counter!(CONFLICTS_TOTAL),
            foreign_positions: metrics::counter!(FOREIGN_POSITIONS_TOTAL),
        }
    }
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
    /// Batches applied by the fallback (rows already in Postgres).
    merged_batches: AtomicU64,
    /// Events set aside because Postgres refused their content.
    set_aside: AtomicU64,
    /// Of those, events whose row was in Postgres with other content.
    conflicts: AtomicU64,
    /// `set_aside` and `conflicts` in `/metrics` ([`SinkCounters`]).
    counters: SinkCounters,
    /// Why the last event was set aside, and where.
    last_set_aside: parking_lot::Mutex<Option<String>>,
    /// Redis mode ([`streams`]): books entries not yet acknowledged, and
    /// when the oldest was appended (ms since the epoch; 0: none), as of
    /// the sink's last look.
    backlog_entries: AtomicU64,
    backlog_oldest_millis: AtomicI64,
}

impl Status {
    /// A sink that has not reached Postgres yet; `oldest` is the journal's
    /// oldest position (0 for the streams).
    fn new(oldest: u64) -> Status {
        Status {
            base: Instant::now(),
            next: AtomicU64::new(0),
            oldest: AtomicU64::new(oldest),
            caught_up_at_millis: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: parking_lot::Mutex::new(None),
            merged_batches: AtomicU64::new(0),
            set_aside: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            counters: SinkCounters::register(),
            last_set_aside: parking_lot::Mutex::new(None),
            backlog_entries: AtomicU64::new(0),
            backlog_oldest_millis: AtomicI64::new(0),
        }
    }

    /// Redis mode's lag: the books entries not yet acknowledged and the
    /// age of the oldest at `now` (see [`streams`]).
    fn stream_lag(&self, now: Timestamp) -> SinkLag {
        let oldest = self.backlog_oldest_millis.load(Ordering::Acquire);
        let lag = SinkLag {
            records: self.backlog_entries.load(Ordering::Acquire),
            seconds: if oldest == 0 {
                0.0
            } else {
                now.millis().saturating_sub(oldest).max(0) as f64 / 1000.0
            },
            applied: None,
            connected: self.connected.load(Ordering::Acquire),
        };
        metrics::gauge!("flashsale_order_sink_lag_records").set(lag.records as f64);
        metrics::gauge!("flashsale_order_sink_lag_seconds").set(lag.seconds);
        lag
    }

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

/// Connections at most that [`BooksLookup`] keeps to Postgres.
pub const BOOKS_LOOKUP_CONNECTIONS_MAX: u32 = 2;
/// A lookup of [`BooksLookup`] that takes longer (a connection included)
/// answers "not confirmed".
pub const BOOKS_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether an order is in the books (in Postgres: "confirmed", DESIGN.md
/// "Multi-node mode"), for `GET /v1/orders/{id}`. A small pool of its own
/// ([`BOOKS_LOOKUP_CONNECTIONS_MAX`], connected on first use), so a read
/// never waits on the sink's batches; never on the buy path.
pub struct BooksLookup {
    pool: sqlx::PgPool,
    /// The deployment whose rows are ours ([`OrderSinkConfig::deployment_id`]).
    deployment: String,
}

impl BooksLookup {
    fn new(options: &PgConnectOptions, deployment: String) -> BooksLookup {
        BooksLookup {
            pool: sqlx::postgres::PgPoolOptions::new()
                .max_connections(BOOKS_LOOKUP_CONNECTIONS_MAX)
                .acquire_timeout(BOOKS_LOOKUP_TIMEOUT)
                .connect_lazy_with(options.clone()),
            deployment,
        }
    }

    /// True when `order` of this deployment is in Postgres: a row with its
    /// id and its content (shopper, deal, quantity, time), so that a row
    /// of the same id written by a copy of this data directory ("Copies"
    /// in the module doc) does not confirm it; false when it is not yet,
    /// or Postgres did not answer within [`BOOKS_LOOKUP_TIMEOUT`] (it
    /// cannot be confirmed now).
    pub async fn contains(&self, order: &Order) -> bool {
        let sql = format!(
            "SELECT 1 FROM orders WHERE deployment_id = $1 AND id = $2 AND shopper_id = $3 \
             AND deal_id = $4 AND quantity = $5 AND created_at = {MILLIS} $6"
        );
        let found = tokio::time::timeout(
            BOOKS_LOOKUP_TIMEOUT,
            sqlx::query_scalar::<_, i32>(AssertSqlSafe(sql))
                .bind(&self.deployment)
                .bind(order.id.to_string())
                .bind(order.shopper.to_string())
                .bind(order.deal.to_string())
                .bind(i64::from(order.quantity))
                .bind(order.created_at.millis())
                .fetch_optional(&self.pool),
        )
        .await;
        matches!(found, Ok(Ok(Some(_))))
    }
}

/// The running sink.
pub struct OrderSinkHandle {
    status: Arc<Status>,
    /// Whether an order is in Postgres yet.
    books: Arc<BooksLookup>,
    /// The journal it follows; `None` in Redis mode ([`streams`]).
    journal: Option<Arc<Journal>>,
    task: tokio::task::JoinHandle<()>,
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
async fn run<S, F>(
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

/// A connection to Postgres with the sink's tables migrated, within the
/// configured timeouts.
async fn connect(
    config: &OrderSinkConfig,
    options: &PgConnectOptions,
) -> Result<PgConnection, OrderSinkError> {
    let mut conn = timed(config.connect_timeout, PgConnection::connect_with(options)).await?;
    timed(
        config.batch_timeout,
        MIGRATOR.run_direct(None, &mut conn, false),
    )
    .await?;
    Ok(conn)
}

/// One connection's life: migrate, find the position, then apply batches
/// until an error.
async fn session(
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

/// Whether `position`, stored in Postgres for this journal's id, is this
/// journal's history ("Copies" in the module doc): not beyond its durable
/// end, and, when Postgres keeps the last applied event's position and
/// SHA-256 (`last_event`, migration `0007`), the same event at that
/// position here. An event already pruned from disk, or no `last_event`
/// (rows older than `0007`, position 0), cannot be checked and is
/// accepted. Errors: [`OrderSinkError::ForeignPosition`], or reading the
/// journal failed.
async fn check_own_history(
    journal: &Arc<Journal>,
    position: u64,
    last_event: Option<(i64, Vec<u8>)>,
) -> Result<(), OrderSinkError> {
    let durable = journal.durable_position();
    let foreign = |position: u64, detail: String| OrderSinkError::ForeignPosition {
        journal: journal.id().to_owned(),
        position,
        detail,
    };
    if position > durable {
        return Err(foreign(
            position,
            format!("this journal's durable end is {durable}"),
        ));
    }
    let Some((at, sha256)) = last_event.and_then(|(at, sha256)| {
        let at = u64::try_from(at).ok().filter(|&at| at >= 1)?;
        Some((at, sha256))
    }) else {
        return Ok(());
    };
    if at > durable {
        return Err(foreign(
            position,
            format!("its last event, at {at}, is beyond this journal's durable end {durable}"),
        ));
    }
    let dir = journal.dir().to_owned();
    let found = tokio::task::spawn_blocking(move || {
        let mut reader = match JournalReader::open(&dir, at) {
            Err(JournalError::Truncated { .. }) => return Ok(None),
            opened => opened?,
        };
        Ok::<_, JournalError>(reader.next_batch(1, at)?.pop())
    })
    .await??;
    let Some((_, event)) = found else {
        tracing::info!(
            journal = %journal.id(),
            position = at,
            "order sink: the last applied event is pruned from disk; its digest cannot be checked"
        );
        return Ok(());
    };
    if flashsale_journal::event_digest(&event)?.as_slice() != sha256.as_slice() {
        return Err(foreign(
            position,
            format!("the event at {at} in this journal has another SHA-256"),
        ));
    }
    Ok(())
}

/// Durable events read from the journal: the last position, the events
/// (kept to be set aside one by one if Postgres refuses the batch), and
/// the batch encoded (or why the encoder refused it).
type ReadEvents = (u64, Vec<(u64, Event)>, Result<Batch, OrderSinkError>);
type ReadBatch = (JournalReader, Result<Option<ReadEvents>, OrderSinkError>);

/// Reads up to `max` durable events (to `upto`) on a blocking thread and
/// encodes them; `None` when nothing new is durable.
fn read_batch(
    mut reader: JournalReader,
    max: usize,
    upto: u64,
    deployment: &str,
) -> tokio::task::JoinHandle<ReadBatch> {
    let deployment = deployment.to_owned();
    tokio::task::spawn_blocking(move || {
        let read = reader
            .next_batch(max, upto)
            .map_err(OrderSinkError::from)
            .map(|events| {
                let last = events.last()?.0;
                let batch = Batch::from_events(&events, &deployment);
                Some((last, events, batch))
            });
        (reader, read)
    })
}

/// Applies `events` (the positions after `from`), encoded as `batch`. If
/// Postgres refuses the rows for their content ([`OrderSinkError::is_content`]),
/// retrying would fail forever and stop every later order reaching the
/// books: the events are split in halves and applied again, down to the
/// single event Postgres refuses, which is set aside ([`set_aside`]) with
/// the reason; the rest go in. Past [`OrderSinkConfig::set_aside_max`]
/// events set aside, the error is returned instead. A refusal costs about 2·log2(batch) extra
/// transactions, once. Any other error (connection, timeout) is returned
/// and the batch is retried whole. Returns the positions of the events
/// that wait for their deal's row ([`apply`]; none from the journal).
#[allow(clippy::too_many_arguments)]
async fn apply_or_set_aside(
    conn: &mut PgConnection,
    config: &OrderSinkConfig,
    status: &Status,
    deployment: &str,
    source: Source<'_>,
    mut from: u64,
    events: &[(u64, Event)],
    batch: Result<Batch, OrderSinkError>,
) -> Result<Waiting, OrderSinkError> {
    let mut waiting = Waiting::new();
    let mut first = Some(batch);
    // Slices still to apply, the next on top.
    let mut pending = vec![events];
    while let Some(slice) = pending.pop() {
        let (Some((last, last_event)), Some((position, event))) = (slice.last(), slice.first())
        else {
            continue;
        };
        let (last, position) = (*last, *position);
        let batch = match first.take() {
            Some(batch) => batch,
            None => Batch::from_events(slice, deployment),
        };
        let progress = Progress {
            source,
            from,
            to: last,
            last: Some(last_event),
        };
        let applied = match batch {
            Ok(batch) => {
                timed(
                    config.batch_timeout,
                    apply(conn, status, deployment, progress, &batch),
                )
                .await
            }
            Err(error) => Err(error),
        };
        match applied {
            Ok(waits) => {
                waiting.extend(waits);
                from = last;
            }
            Err(OrderSinkError::AlreadyApplied) => from = last,
            Err(error)
                if error.is_content()
                    && status.set_aside.load(Ordering::Relaxed) >= config.set_aside_max =>
            {
                return Err(error);
            }
            Err(error) if error.is_content() && slice.len() == 1 => {
                let progress = Progress {
                    source,
                    from,
                    to: position,
                    last: Some(event),
                };
                timed(
                    config.batch_timeout,
                    set_aside(conn, status, deployment, progress, event, &error),
                )
                .await?;
                from = last;
            }
            Err(error) if error.is_content() => {
                let (front, back) = slice.split_at(slice.len() / 2);
                pending.push(back);
                pending.push(front);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(waiting)
}

/// Escapes control characters (NUL above all), so any text can be stored.
fn printable(text: &str) -> String {
    text.escape_debug().to_string()
}

/// Sets one event (at `progress.to`, the one after `progress.from`) aside:
/// records it in `order_sink_set_aside` with `reason` under its origin (the
/// journal's id, or the stream's key and its entry id packed by
/// [`streams::position`]) and records the progress past it, in one transaction;
/// counts it (`flashsale_order_sink_set_aside_total`, and
/// `flashsale_order_sink_conflicts_total` for a conflicting row) and
/// logs it. `/readyz` names the last one.
async fn set_aside(
    conn: &mut PgConnection,
    status: &Status,
    deployment: &str,
    progress: Progress<'_>,
    event: &(dyn std::fmt::Debug + Sync),
    reason: &OrderSinkError,
) -> Result<(), OrderSinkError> {
    let position = progress.to;
    let (origin, origin_position) = progress.origin(position);
    let conflict = matches!(reason, OrderSinkError::Conflict { .. });
    let reason = printable(&error_chain(reason));
    let event_text = printable(&format!("{event:?}"));
    let mut tx = conn.begin().await?;
    tx.execute(
        sqlx::query(
            "INSERT INTO order_sink_set_aside (journal_id, position, reason, event) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (journal_id, position) DO NOTHING",
        )
        .bind(origin)
        .bind(origin_position as i64)
        .bind(&reason)
        .bind(&event_text),
    )
    .await?;
    progress.record(&mut tx, deployment).await?;
    tx.commit().await?;
    status.set_aside.fetch_add(1, Ordering::Relaxed);
    status.counters.set_aside.increment(1);
    if conflict {
        status.conflicts.fetch_add(1, Ordering::Relaxed);
        status.counters.conflicts.increment(1);
    }
    tracing::error!(
        origin,
        position = origin_position,
        event = %event_text,
        %reason,
        "order sink: Postgres refused an event's rows; set aside in order_sink_set_aside"
    );
    *status.last_set_aside.lock() = Some(format!("{origin} position {origin_position}: {reason}"));
    Ok(())
}

/// A table the sink inserts into, and the columns its rows carry, in order
/// (the key, `deployment_id, id`, first).
struct Table {
    name: &'static str,
    columns: &'static str,
    fields: i16,
    /// The columns that never change once written: a row already there
    /// that differs in one of them is a conflict. (A deal's stock and end
    /// change by restock and `PATCH`.)
    fixed: &'static [&'static str],
}

const DEALS: Table = Table {
    name: "deals",
    columns: "deployment_id, id, merchant_id, title, price, stock_total, per_user_limit, \
              starts_at, ends_at, requires_registration, hold_seconds, created_at, \
              allocation, seed_commitment",
    fields: 14,
    fixed: &[
        "merchant_id",
        "title",
        "price",
        "per_user_limit",
        "starts_at",
        "requires_registration",
        "hold_seconds",
        "created_at",
        "allocation",
        "seed_commitment",
    ],
};
/// `hold_id` is not fixed: orders written before migration 0004 have none.
const ORDERS: Table = Table {
    name: "orders",
    columns: "deployment_id, id, deal_id, shopper_id, quantity, unit_price, amount, late, \
              created_at, hold_id",
    fields: 10,
    fixed: &[
        "deal_id",
        "shopper_id",
        "quantity",
        "unit_price",
        "amount",
        "late",
        "created_at",
    ],
};
const MOVEMENTS: Table = Table {
    name: "wallet_movements",
    columns: "deployment_id, id, shopper_id, kind, amount, order_id, created_at",
    fields: 7,
    fixed: &["shopper_id", "kind", "amount", "order_id", "created_at"],
};
const REGISTRATIONS: Table = Table {
    name: "registrations",
    columns: "deployment_id, id, deal_id, shopper_id, registered_at",
    fields: 5,
    fixed: &["deal_id", "shopper_id", "registered_at"],
};
const DRAWS: Table = Table {
    name: "draws",
    columns: "deployment_id, id, drawn_at, seed, seed_commitment, registrants, registrants_hash",
    fields: 7,
    fixed: &[
        "drawn_at",
        "seed",
        "seed_commitment",
        "registrants",
        "registrants_hash",
    ],
};
/// `ended` and `ended_at` are not copied: a release or expiry sets them
/// later ([`Batch::endings`]).
const PLACES: Table = Table {
    name: "draw_places",
    columns: "deployment_id, id, deal_id, shopper_id, journal_position, outcome, reached_at, \
              hold_id, quantity, amount, expires_at",
    fields: 11,
    fixed: &[
        "deal_id",
        "shopper_id",
        "journal_position",
        "outcome",
        "reached_at",
        "hold_id",
        "quantity",
        "amount",
        "expires_at",
    ],
};

/// One batch, ready for Postgres: the new rows of each table as binary
/// `COPY` streams, and the updates to rows already written.
struct Batch {
    deals: CopyStream,
    orders: CopyStream,
    movements: CopyStream,
    registrations: CopyStream,
    draws: CopyStream,
    places: CopyStream,
    /// `(deal, position in the batch, units)` of each restock, in order.
    restocks: Vec<(DealId, u64, u64)>,
    /// Deal id → (position, ends_at, paused) of the last change in this
    /// batch (positions ascend within a batch, and in Redis mode all of a
    /// deal's changes come from its own stream, in order).
    changes: HashMap<DealId, (u64, Timestamp, bool)>,
    /// Holds given back in this batch, in order: `(hold, released or
    /// expired, when)`. Only a raffle hold has a `draw_places` row to
    /// update; a first-come hold's ending updates nothing. At most one per
    /// event of the batch.
    endings: Vec<(HoldId, ReleaseReason, Timestamp)>,
}

/// Starts a `draw_places` row: the columns a place has whether it was
/// offered or passed over (see migration 0004); the hold's four follow.
fn place_row(
    p: &mut CopyRows,
    deployment: &str,
    (deal, shopper): (DealId, ShopperId),
    position: u64,
    outcome: &str,
    reached_at: Timestamp,
) -> Result<(), OrderSinkError> {
    p.row(PLACES.fields);
    p.text("draw_places.deployment_id", deployment)?;
    p.text(
        "draw_places.id",
        format_args!("p_{:x}_{:x}", deal.0, shopper.0),
    )?;
    p.text("draw_places.deal_id", deal)?;
    p.text("draw_places.shopper_id", shopper)?;
    p.int8(i64::try_from(position).map_err(out_of_range("draw_places.journal_position"))?);
    p.text("draw_places.outcome", outcome)?;
    p.timestamptz("draw_places.reached_at", reached_at)
}

/// A `draws` row: what the draw revealed, or four NULLs for a format-2
/// `DrawRunFormat2` that did not carry it.
fn draw_row(
    d: &mut CopyRows,
    deployment: &str,
    deal: DealId,
    at: Timestamp,
    revealed: Option<(&DrawSeed, u64, &Digest)>,
) -> Result<(), OrderSinkError> {
    d.row(DRAWS.fields);
    d.text("draws.deployment_id", deployment)?;
    d.text("draws.id", deal)?;
    d.timestamptz("draws.drawn_at", at)?;
    match revealed {
        Some((seed, registrants, registrants_hash)) => {
            d.hex(&seed.0);
            d.hex(&seed.commitment());
            d.int8(i64::try_from(registrants).map_err(out_of_range("draws.registrants"))?);
            d.hex(registrants_hash);
        }
        None => {
            for _ in 0..4 {
                d.null();
            }
        }
    }
    Ok(())
}

fn out_of_range<T>(column: &'static str) -> impl FnOnce(T) -> OrderSinkError {
    move |_| OrderSinkError::OutOfRange(column)
}

impl Batch {
    /// Encodes the book rows of `events`, each keyed by `deployment`.
    fn from_events(events: &[(u64, Event)], deployment: &str) -> Result<Batch, OrderSinkError> {
        let mut deals = CopyRows::new();
        let mut orders = CopyRows::new();
        let mut movements = CopyRows::new();
        let mut registrations = CopyRows::new();
        let mut draws = CopyRows::new();
        let mut places = CopyRows::new();
        let mut restocks = Vec::new();
        let mut changes = HashMap::new();
        let mut endings = Vec::new();
        for (position, event) in events {
            match event {
                Event::DealCreated {
                    deal,
                    merchant,
                    spec,
                    at,
                } => {
                    let d = &mut deals;
                    d.row(DEALS.fields);
                    d.text("deals.deployment_id", deployment)?;
                    d.text("deals.id", deal)?;
                    d.text("deals.merchant_id", merchant)?;
                    d.text("deals.title", &spec.title)?;
                    d.money(spec.price);
                    d.int8(i64::try_from(spec.stock).map_err(out_of_range("deals.stock_total"))?);
                    d.int4(
                        i32::try_from(spec.per_user_limit)
                            .map_err(out_of_range("deals.per_user_limit"))?,
                    );
                    d.timestamptz("deals.starts_at", spec.starts_at)?;
                    d.timestamptz("deals.ends_at", spec.ends_at)?;
                    d.bool(spec.requires_registration);
                    d.int4(
                        i32::try_from(spec.hold_seconds)
                            .map_err(out_of_range("deals.hold_seconds"))?,
                    );
                    d.timestamptz("deals.created_at", *at)?;
                    // The commitment only: the seed is secret until the
                    // draw, and reaches Postgres with `DrawRun`.
                    d.text("deals.allocation", spec.allocation.name())?;
                    match spec.allocation {
                        Allocation::FirstCome => d.null(),
                        Allocation::Raffle(seed) => d.hex(&seed.commitment()),
                    }
                }
                Event::StockAdded { deal, quantity, .. } => {
                    restocks.push((*deal, *position, *quantity));
                }
                Event::DealChanged {
                    deal,
                    ends_at,
                    paused,
                    ..
                } => {
                    changes.insert(*deal, (*position, *ends_at, *paused));
                }
                Event::WalletCredited {
                    shopper,
                    amount,
                    reference,
                    at,
                } => {
                    let m = &mut movements;
                    m.row(MOVEMENTS.fields);
                    m.text("wallet_movements.deployment_id", deployment)?;
                    m.text(
                        "wallet_movements.id",
                        format_args!("c_{:x}_{reference:032x}", shopper.0),
                    )?;
                    m.text("wallet_movements.shopper_id", shopper)?;
                    m.text("wallet_movements.kind", "credit")?;
                    m.money(*amount);
                    m.null();
                    m.timestamptz("wallet_movements.created_at", *at)?;
                }
                Event::OrderSettled { order, .. } => {
                    let o = &mut orders;
                    o.row(ORDERS.fields);
                    o.text("orders.deployment_id", deployment)?;
                    o.text("orders.id", order.id)?;
                    o.text("orders.deal_id", order.deal)?;
                    o.text("orders.shopper_id", order.shopper)?;
                    o.int8(i64::from(order.quantity));
                    o.money(order.unit_price);
                    o.money(order.amount);
                    o.bool(order.late);
                    o.timestamptz("orders.created_at", order.created_at)?;
                    match order.hold {
                        Some(hold) => o.text("orders.hold_id", hold)?,
                        None => o.null(),
                    }
                    let m = &mut movements;
                    m.row(MOVEMENTS.fields);
                    m.text("wallet_movements.deployment_id", deployment)?;
                    m.text("wallet_movements.id", order.id)?;
                    m.text("wallet_movements.shopper_id", order.shopper)?;
                    m.text("wallet_movements.kind", "debit")?;
                    m.money(order.amount);
                    m.text("wallet_movements.order_id", order.id)?;
                    m.timestamptz("wallet_movements.created_at", order.created_at)?;
                }
                Event::Registered { deal, shopper, at } => {
                    let r = &mut registrations;
                    r.row(REGISTRATIONS.fields);
                    r.text("registrations.deployment_id", deployment)?;
                    r.text(
                        "registrations.id",
                        format_args!("r_{:x}_{:x}", deal.0, shopper.0),
                    )?;
                    r.text("registrations.deal_id", deal)?;
                    r.text("registrations.shopper_id", shopper)?;
                    r.timestamptz("registrations.registered_at", *at)?;
                }
                Event::DrawRun {
                    deal,
                    at,
                    seed,
                    registrants,
                    registrants_hash,
                } => {
                    let revealed = (seed, *registrants, registrants_hash);
                    draw_row(&mut draws, deployment, *deal, *at, Some(revealed))?;
                }
                Event::DrawRunFormat2 { deal, at } => {
                    draw_row(&mut draws, deployment, *deal, *at, None)?;
                }
                Event::DrawOffered { hold } => {
                    let p = &mut places;
                    let place = (hold.deal, hold.shopper);
                    place_row(p, deployment, place, *position, "offered", hold.created_at)?;
                    p.text("draw_places.hold_id", hold.id)?;
                    p.int8(i64::from(hold.quantity));
                    p.money(hold.amount);
                    p.timestamptz("draw_places.expires_at", hold.expires_at)?;
                }
                Event::DrawPassedOver { deal, shopper, at } => {
                    let p = &mut places;
                    let place = (*deal, *shopper);
                    place_row(p, deployment, place, *position, "passed_over", *at)?;
                    for _ in 0..4 {
                        p.null();
                    }
                }
                Event::HoldReleased {
                    hold, reason, at, ..
                } => endings.push((*hold, *reason, *at)),
                // Accounts, first-come holds, reviews, shares: not the books.
                _ => {}
            }
        }
        Ok(Batch {
            deals: deals.finish(),
            orders: orders.finish(),
            movements: movements.finish(),
            registrations: registrations.finish(),
            draws: draws.finish(),
            places: places.finish(),
            restocks,
            changes,
            endings,
        })
    }

    /// The tables with rows in this batch, deals first (restocks and
    /// changes may name a deal created in the same batch; endings name
    /// places offered in it).
    fn inserts(&self) -> impl Iterator<Item = (&'static Table, &CopyStream)> {
        [
            (&DEALS, &self.deals),
            (&ORDERS, &self.orders),
            (&MOVEMENTS, &self.movements),
            (&REGISTRATIONS, &self.registrations),
            (&DRAWS, &self.draws),
            (&PLACES, &self.places),
        ]
        .into_iter()
        .filter(|(_, rows)| rows.rows > 0)
    }
}

/// Bytes per `CopyData` message: bounds the copy sqlx makes of a stream.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// How a batch's rows enter their tables.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Insert {
    /// `COPY` straight into the table: fails on a row already there.
    Copy,
    /// `COPY` into a temporary table, then `INSERT … ON CONFLICT (id) DO
    /// NOTHING`: skips rows already there.
    Merge,
}

async fn copy_in(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: &CopyStream,
) -> Result<(), OrderSinkError> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    for chunk in rows.bytes.chunks(COPY_CHUNK_BYTES) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// Inserts the batch's rows, the `insert` way.
async fn insert(
    conn: &mut PgConnection,
    batch: &Batch,
    insert: Insert,
) -> Result<(), OrderSinkError> {
    for (table, rows) in batch.inserts() {
        if insert == Insert::Copy {
            copy_in(conn, table.name, table.columns, rows).await?;
            continue;
        }
        let stage = format!("order_sink_stage_{}", table.name);
        let columns = table.columns;
        conn.execute(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS \
             SELECT {columns} FROM {} WITH NO DATA",
            table.name
        )))
        .await?;
        copy_in(conn, &stage, columns, rows).await?;
        conn.execute(AssertSqlSafe(format!(
            "INSERT INTO {} ({columns}) SELECT {columns} FROM {stage} \
             ON CONFLICT (deployment_id, id) DO NOTHING",
            table.name
        )))
        .await?;
        check_no_conflict(conn, table, &stage).await?;
    }
    Ok(())
}

/// After a merge: every staged row that was already there must be the same
/// row, else [`OrderSinkError::Conflict`] with both versions (the first one
/// found).
async fn check_no_conflict(
    conn: &mut PgConnection,
    table: &Table,
    stage: &str,
) -> Result<(), OrderSinkError> {
    let ours: Vec<String> = table.fixed.iter().map(|c| format!("s.{c}")).collect();
    let theirs: Vec<String> = table.fixed.iter().map(|c| format!("t.{c}")).collect();
    let sql = format!(
        "SELECT s.id, row_to_json(s)::text, row_to_json(t)::text FROM {stage} s \
         JOIN {} t ON t.deployment_id = s.deployment_id AND t.id = s.id \
         WHERE ({}) IS DISTINCT FROM ({}) LIMIT 1",
        table.name,
        ours.join(", "),
        theirs.join(", "),
    );
    let conflict: Option<(String, String, String)> = sqlx::query_as(AssertSqlSafe(sql))
        .fetch_optional(&mut *conn)
        .await?;
    match conflict {
        None => Ok(()),
        Some((id, ours, theirs)) => Err(OrderSinkError::Conflict {
            table: table.name,
            id,
            ours,
            theirs,
        }),
    }
}

/// A row the batch would insert is already there (or twice in the batch).
fn is_duplicate(error: &OrderSinkError) -> bool {
    matches!(error, OrderSinkError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}

/// Milliseconds since the epoch (`$n::int8[]`) to `timestamptz`, exactly.
const MILLIS: &str = "timestamptz 'epoch' + interval '1 millisecond' *";

/// Positions of a batch's events that wait for their deal's row: a deal
/// change or a restock from a books stream read before the deal's creation
/// reached Postgres (Redis mode only; see the module doc, "Order").
type Waiting = Vec<u64>;

/// Writes one batch and records its `progress` in the same transaction:
/// by `COPY` ([`Insert::Copy`]) and, if a row was already there, again from
/// the start by [`Insert::Merge`]. A deal change updates its row only if
/// it is newer than the change the row has (`deals.change_version`).
/// Returns the positions of the events that wait for their deal's row
/// (never any from the journal, which holds a deal's creation before its
/// changes): a restock then commits nothing, not even its record.
async fn apply(
    conn: &mut PgConnection,
    status: &Status,
    deployment: &str,
    progress: Progress<'_>,
    batch: &Batch,
) -> Result<Waiting, OrderSinkError> {
    let mut tx = conn.begin().await?;
    progress.record(&mut tx, deployment).await?;
    let copied = insert(&mut tx, batch, Insert::Copy).await;
    let mut tx = match copied {
        Err(error) if is_duplicate(&error) => {
            tx.rollback().await?;
            status.merged_batches.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flashsale_order_sink_merged_batches").increment(1);
            tracing::info!(
                ?progress,
                "order sink: rows already in Postgres, applying the batch with ON CONFLICT DO NOTHING"
            );
            let mut tx = conn.begin().await?;
            progress.record(&mut tx, deployment).await?;
            insert(&mut tx, batch, Insert::Merge).await?;
            tx
        }
        copied => {
            copied?;
            tx
        }
    };
    if !batch.restocks.is_empty() {
        let restocks = batch.restocks.len();
        let (mut ids, mut versions) = (Vec::with_capacity(restocks), Vec::with_capacity(restocks));
        let mut added = Vec::with_capacity(restocks);
        for &(deal, position, quantity) in &batch.restocks {
            ids.push(deal.to_string());
            let version = progress.source.sequence(position);
            versions.push(i64::try_from(version).map_err(out_of_range("deals.restock_version"))?);
            added.push(i64::try_from(quantity).map_err(out_of_range("deals.stock_total"))?);
        }
        // From the journal a restock adds only if it is newer than the
        // last one the row has (a replay adds nothing twice); a books
        // entry is recorded once by `progress` instead, and its deal's
        // restocks arrive in any order. Rows only for deals that exist.
        let updated = tx
            .execute(
                sqlx::query(
                    "WITH t AS (SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[]) \
                         AS t(id, version, added)), \
                     sums AS (SELECT t.id, sum(t.added)::int8 AS added, max(t.version) AS version \
                         FROM t JOIN deals d ON d.deployment_id = $4 AND d.id = t.id \
                         WHERE NOT $5 OR t.version > d.restock_version GROUP BY t.id) \
                     UPDATE deals SET stock_total = deals.stock_total + sums.added, \
                         restock_version = CASE WHEN $5 THEN sums.version \
                             ELSE deals.restock_version END \
                     FROM sums WHERE deals.deployment_id = $4 AND deals.id = sums.id",
                )
                .bind(&ids)
                .bind(&versions)
                .bind(&added)
                .bind(deployment)
                .bind(matches!(progress.source, Source::Journal(_))),
            )
            .await?;
        if let Source::Restock { .. } = progress.source
            && updated.rows_affected() == 0
        {
            // Not recorded as applied: the entry stays pending until its
            // deal's row is there.
            tx.rollback().await?;
            return Ok(vec![progress.to]);
        }
    }
    let mut waiting = Waiting::new();
    if !batch.changes.is_empty() {
        let changes = batch.changes.len();
        let (mut ids, mut versions) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
        let (mut ends, mut paused) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
        let mut positions = HashMap::with_capacity(changes);
        for (deal, &(position, ends_at, is_paused)) in &batch.changes {
            let id = deal.to_string();
            let version = progress.source.sequence(position);
            versions.push(i64::try_from(version).map_err(out_of_range("deals.change_version"))?);
            ends.push(ends_at.millis());
            paused.push(is_paused);
            positions.insert(id.clone(), position);
            ids.push(id);
        }
        // The statement's snapshot is the one before its UPDATE: a row
        // missing there is missing after it.
        let sql = format!(
            "WITH t AS (SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::bool[]) \
                 AS t(id, version, ends_at, paused)), \
             changed AS (UPDATE deals SET ends_at = {MILLIS} t.ends_at, paused = t.paused, \
                 change_version = t.version FROM t \
                 WHERE deals.deployment_id = $5 AND deals.id = t.id \
                 AND deals.change_version < t.version) \
             SELECT t.id FROM t WHERE NOT EXISTS \
                 (SELECT 1 FROM deals WHERE deals.deployment_id = $5 AND deals.id = t.id)"
        );
        let missing: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(&ids)
            .bind(&versions)
            .bind(&ends)
            .bind(&paused)
            .bind(deployment)
            .fetch_all(&mut *tx)
            .await?;
        // The journal holds a deal's creation before its changes: a
        // missing row there is a creation set aside, and its changes have
        // nowhere to go, as before.
        if !matches!(progress.source, Source::Journal(_)) {
            waiting.extend(missing.iter().filter_map(|id| positions.get(id)));
        }
    }
    if !batch.endings.is_empty() {
        let mut holds = Vec::with_capacity(batch.endings.len());
        let mut ended = Vec::with_capacity(batch.endings.len());
        let mut at = Vec::with_capacity(batch.endings.len());
        for (hold, reason, when) in &batch.endings {
            holds.push(hold.to_string());
            ended.push(match reason {
                ReleaseReason::Released => "released",
                ReleaseReason::Expired => "expired",
            });
            at.push(when.millis());
        }
        // Setting the same values again is harmless: a batch applied twice
        // (its position lost) leaves the places as once.
        let sql = format!(
            "UPDATE draw_places SET ended = t.ended, ended_at = {MILLIS} t.at \
             FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS t(hold_id, ended, at) \
             WHERE draw_places.deployment_id = $4 AND draw_places.hold_id = t.hold_id"
        );
        update_from_arrays(&mut tx, sql, (holds, ended, at), deployment).await?;
    }
    tx.commit().await?;
    Ok(waiting)
}

/// Runs `sql`, an `UPDATE … FROM UNNEST($1, $2, $3)` of one batch, with
/// the three `columns` (one element per row) and the deployment as `$4`.
async fn update_from_arrays<A, B, C>(
    conn: &mut PgConnection,
    sql: String,
    columns: (A, B, C),
    deployment: &str,
) -> Result<(), OrderSinkError>
where
    A: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    B: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    C: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let (a, b, c) = columns;
    conn.execute(
        sqlx::query(AssertSqlSafe(sql))
            .bind(a)
            .bind(b)
            .bind(c)
            .bind(deployment),
    )
    .await?;
    Ok(())
}

/// Where a batch's events come from, so its transaction can record that
/// they are applied.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// The journal of this id: each batch moves its position.
    Journal(&'a str),
    /// Entries of Redis books streams ([`streams`]), `(stream, entry id)`
    /// at each position of the batch: rows are keyed by id, so a batch
    /// applied twice adds nothing (the merge); the streams' acknowledgement
    /// comes after the commit.
    Streams(&'a [(String, String)]),
    /// One restock entry of a books stream: its `UPDATE … + added` would
    /// count twice if applied twice, so the entry's id is recorded in
    /// `order_sink_stream_entries` in the same transaction, and an entry
    /// found there is [`OrderSinkError::AlreadyApplied`].
    Restock { stream: &'a str, entry: &'a str },
}

impl Source<'_> {
    /// Where the event at `position` (of a batch from this source) stands
    /// in its origin's order: its journal position, or its books entry id
    /// packed by [`streams::position`] (ordered within one stream; 0 for an
    /// id that does not pack). A deal change's version
    /// (`deals.change_version`), and the position `order_sink_set_aside`
    /// keeps.
    fn sequence(&self, position: u64) -> u64 {
        match *self {
            Source::Journal(_) => position,
            Source::Streams(entries) => usize::try_from(position)
                .ok()
                .and_then(|index| entries.get(index))
                .map_or(0, |(_, entry)| streams::position(entry)),
            Source::Restock { entry, .. } => streams::position(entry),
        }
    }
}

/// What one transaction records beside its rows: a [`Source`] and the
/// positions it covers (after `from`, up to `to`), and the event at `to`
/// (a journal's position is recorded with its digest: "Copies").
#[derive(Debug, Clone, Copy)]
struct Progress<'a> {
    source: Source<'a>,
    from: u64,
    to: u64,
    last: Option<&'a Event>,
}

impl Progress<'_> {
    /// Records the progress in `conn`'s transaction.
    async fn record(
        &self,
        conn: &mut PgConnection,
        deployment: &str,
    ) -> Result<(), OrderSinkError> {
        match self.source {
            Source::Journal(journal) => {
                move_position(conn, journal, self.from, self.to, self.last).await
            }
            Source::Streams(_) => Ok(()),
            Source::Restock { stream, entry } => {
                let recorded = conn
                    .execute(
                        sqlx::query(
                            "INSERT INTO order_sink_stream_entries (deployment_id, stream, entry_id) \
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        )
                        .bind(deployment)
                        .bind(stream)
                        .bind(entry),
                    )
                    .await?;
                if recorded.rows_affected() == 0 {
                    return Err(OrderSinkError::AlreadyApplied);
                }
                Ok(())
            }
        }
    }

    /// Where `order_sink_set_aside` keeps the event at `position`: the
    /// journal's id and the position, or the stream's key and the entry id
    /// packed by [`streams::position`].
    fn origin(&self, position: u64) -> (&str, u64) {
        let origin = match self.source {
            Source::Journal(journal) => journal,
            Source::Streams(entries) => usize::try_from(position)
                .ok()
                .and_then(|index| entries.get(index))
                .map_or("", |(stream, _)| stream.as_str()),
            Source::Restock { stream, .. } => stream,
        };
        (origin, self.source.sequence(position))
    }
}

/// Moves the journal's position from `from` to `to` in the transaction
/// `conn` is in, with the SHA-256 of `last`, the event at `to`
/// ([`flashsale_journal::event_digest`]; `None`: NULL, cannot check);
/// [`OrderSinkError::Contended`] if it was not at `from`.
async fn move_position(
    conn: &mut PgConnection,
    journal_id: &str,
    from: u64,
    to: u64,
    last: Option<&Event>,
) -> Result<(), OrderSinkError> {
    let sha256 = last
        .map(flashsale_journal::event_digest)
        .transpose()?
        .map(Vec::from);
    let moved = conn
        .execute(
            sqlx::query(
                "UPDATE order_sink_positions SET position = $2, updated_at = now(), \
                 event_position = $2, event_sha256 = $4 \
                 WHERE journal_id = $1 AND position = $3",
            )
            .bind(journal_id)
            .bind(to as i64)
            .bind(from as i64)
            .bind(sha256),
        )
        .await?;
    if moved.rows_affected() != 1 {
        return Err(OrderSinkError::Contended);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use flashsale_engine::{DealSpec, MerchantId, Money};

    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// A raffle's seed is secret until its draw: its deal's row, and the
    /// text `order_sink_set_aside` would keep of its event, carry the
    /// commitment and never the seed, in hex or raw; the draw's row does.
    #[test]
    fn a_raffle_seed_reaches_the_rows_only_with_its_draw() {
        let seed = DrawSeed([0xab; 32]);
        let deal = DealId(2);
        let at = Timestamp(1_795_262_400_000);
        let created = Event::DealCreated {
            deal,
            merchant: MerchantId(1),
            spec: DealSpec {
                title: "Phone raffle".into(),
                price: Money::from_fen(1_000).unwrap(),
                stock: 8,
                per_user_limit: 1,
                starts_at: at,
                ends_at: at.plus_seconds(3600),
                requires_registration: true,
                hold_seconds: 60,
                allocation: Allocation::Raffle(seed),
            },
            at,
        };
        let seed_hex = hex::encode(seed.0);
        let commitment_hex = hex::encode(seed.commitment());
        let batch = Batch::from_events(&[(1, created.clone())], "dep").unwrap();
        assert!(contains(&batch.deals.bytes, commitment_hex.as_bytes()));
        for rows in [&batch.deals, &batch.draws, &batch.places] {
            assert!(!contains(&rows.bytes, seed_hex.as_bytes()));
            assert!(!contains(&rows.bytes, &seed.0));
        }
        let text = format!("{created:?}");
        assert!(
            !text.contains(&seed_hex) && !text.contains("171, 171"),
            "{text}"
        );

        let drawn = Event::DrawRun {
            deal,
            at,
            seed,
            registrants: 3,
            registrants_hash: [0; 32],
        };
        let batch = Batch::from_events(&[(1, created), (2, drawn)], "dep").unwrap();
        assert_eq!(batch.draws.rows, 1);
        assert!(contains(&batch.draws.bytes, seed_hex.as_bytes()));
        assert!(contains(&batch.draws.bytes, commitment_hex.as_bytes()));
        assert!(!contains(&batch.deals.bytes, seed_hex.as_bytes()));
    }
}
