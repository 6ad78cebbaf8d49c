//! The sink's settings: the database, batch and set-aside bounds.

use std::time::Duration;

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
    /// Redis, shared by its nodes ([`crate::streams`]).
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
