//! How far behind the sink is ([`SinkLag`]), its counters in the process's
//! recorder, and the status it shares with its handle.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use flashsale_engine::Timestamp;
use flashsale_journal::Journal;

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
pub(crate) const SET_ASIDE_TOTAL: &str = "flashsale_order_sink_set_aside_total";
/// Of those, events whose row was already in Postgres with other content.
pub(crate) const CONFLICTS_TOTAL: &str = "flashsale_order_sink_conflicts_total";
/// `/metrics`' count of stored positions the sink refused to adopt
/// ([`OrderSinkError::ForeignPosition`]): above 0, a copied data directory
/// writes the same database.
pub(crate) const FOREIGN_POSITIONS_TOTAL: &str = "flashsale_order_sink_foreign_positions_total";
/// `/metrics`' count of batches applied by the merge fallback.
pub(crate) const MERGED_BATCHES_TOTAL: &str = "flashsale_order_sink_merged_batches_total";
/// `/metrics`' gauges of [`SinkLag`]: records (or books entries) waiting, and seconds.
pub(crate) const LAG_RECORDS: &str = "flashsale_order_sink_lag_records";
pub(crate) const LAG_SECONDS: &str = "flashsale_order_sink_lag_seconds";

/// The sink's counters in the process's recorder ([`crate::telemetry`]).
pub(crate) struct SinkCounters {
    pub(crate) set_aside: metrics::Counter,
    pub(crate) conflicts: metrics::Counter,
    pub(crate) foreign_positions: metrics::Counter,
    pub(crate) merged_batches: metrics::Counter,
    lag_records: metrics::Gauge,
    lag_seconds: metrics::Gauge,
}

impl SinkCounters {
    /// Describes and registers the counters and the lag gauges when a sink
    /// starts (one node or Redis mode), so `/metrics` lists them at 0
    /// before the first event is set aside and a dashboard or an alert has
    /// a series from the start. The process's recorder is installed first, since the
    /// sink starts before the server's telemetry. Registering never resets
    /// a count: a second sink in one process (tests) adds to it.
    pub(crate) fn register() -> SinkCounters {
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
        metrics::describe_counter!(
            MERGED_BATCHES_TOTAL,
            "Batches whose rows were partly in Postgres already, applied with ON CONFLICT DO NOTHING"
        );
        metrics::describe_gauge!(
            LAG_RECORDS,
            "Journal records (Redis mode: books entries) not yet in Postgres"
        );
        metrics::describe_gauge!(
            LAG_SECONDS,
            metrics::Unit::Seconds,
            "Age of the oldest record not yet in Postgres (0 when caught up)"
        );
        SinkCounters {
            set_aside: metrics::counter!(SET_ASIDE_TOTAL),
            conflicts: metrics::counter!(CONFLICTS_TOTAL),
            foreign_positions: metrics::counter!(FOREIGN_POSITIONS_TOTAL),
            merged_batches: metrics::counter!(MERGED_BATCHES_TOTAL),
            lag_records: metrics::gauge!(LAG_RECORDS),
            lag_seconds: metrics::gauge!(LAG_SECONDS),
        }
    }

    /// Sets the lag gauges to `lag`.
    fn show(&self, lag: &SinkLag) {
        self.lag_records.set(lag.records as f64);
        self.lag_seconds.set(lag.seconds);
    }
}

/// What the sink task shares with its handle.
pub(crate) struct Status {
    pub(crate) base: Instant,
    /// Last committed position + 1; 0 while unknown.
    pub(crate) next: AtomicU64,
    /// Lower bound used while `next` is unknown.
    pub(crate) oldest: AtomicU64,
    pub(crate) caught_up_at_millis: AtomicU64,
    pub(crate) connected: AtomicBool,
    pub(crate) last_error: parking_lot::Mutex<Option<String>>,
    /// Batches applied by the fallback (rows already in Postgres).
    pub(crate) merged_batches: AtomicU64,
    /// Events set aside because Postgres refused their content.
    pub(crate) set_aside: AtomicU64,
    /// Of those, events whose row was in Postgres with other content.
    pub(crate) conflicts: AtomicU64,
    /// `set_aside` and `conflicts` in `/metrics` ([`SinkCounters`]).
    pub(crate) counters: SinkCounters,
    /// Why the last event was set aside, and where.
    pub(crate) last_set_aside: parking_lot::Mutex<Option<String>>,
    /// Redis mode ([`streams`]): books entries not yet acknowledged, and
    /// when the oldest was appended (ms since the epoch; 0: none), as of
    /// the sink's last look.
    pub(crate) backlog_entries: AtomicU64,
    pub(crate) backlog_oldest_millis: AtomicI64,
}

impl Status {
    /// A sink that has not reached Postgres yet; `oldest` is the journal's
    /// oldest position (0 for the streams).
    pub(crate) fn new(oldest: u64) -> Status {
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
    pub(crate) fn stream_lag(&self, now: Timestamp) -> SinkLag {
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
        self.counters.show(&lag);
        lag
    }

    pub(crate) fn mark_caught_up(&self) {
        self.caught_up_at_millis
            .store(self.base.elapsed().as_millis() as u64, Ordering::Release);
    }

    pub(crate) fn lag(&self, journal: &Journal) -> SinkLag {
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
        self.counters.show(&lag);
        lag
    }
}
