//! The sink's settings: the database (and the check of its URL that
//! every `--database-url` goes through), batch and set-aside bounds.

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

/// What `--database-url` takes, said in every refusal of one.
const DATABASE_URL_HINT: &str = "expected postgres://USER@HOST:PORT/DATABASE, e.g. postgres://postgres@127.0.0.1:5432/flashsale";

/// Every `--database-url` (`serve`, `audit`, `loadtest`), checked when the
/// command line is read, before anything connects or is written: a URL
/// (the `url` crate) of the scheme `postgres` or `postgresql` that the
/// Postgres client itself accepts (`sqlx`'s `PgConnectOptions`, which finds
/// a bad port or `sslmode`). Returns the URL trimmed; errors: what is
/// wrong, with the form expected (clap names the flag, and the binary
/// the environment variable when the value came from it).
pub fn parse_database_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("it is empty; {DATABASE_URL_HINT}"));
    }
    let url = url::Url::parse(text)
        .map_err(|error| format!("not a URL ({error}); {DATABASE_URL_HINT}"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "the scheme {:?} is not postgres or postgresql; {DATABASE_URL_HINT}",
            url.scheme()
        ));
    }
    if !text[url.scheme().len() + 1..].starts_with("//") {
        return Err(format!("no // after the scheme; {DATABASE_URL_HINT}"));
    }
    use sqlx::ConnectOptions as _;
    sqlx::postgres::PgConnectOptions::from_url(&url)
        .map_err(|error| format!("{error}; {DATABASE_URL_HINT}"))?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_checked_by_the_client_and_say_what_is_wrong() {
        for good in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgresql://u:p@h/db?sslmode=disable",
        ] {
            assert_eq!(parse_database_url(good).as_deref(), Ok(good));
        }
        for (bad, says) in [
            ("postgress:/127.0.0.1/test", "the scheme \"postgress\""),
            ("http://127.0.0.1:5432/test", "the scheme \"http\""),
            ("postgres:/127.0.0.1/test", "no // after the scheme"),
            ("127.0.0.1:5432", "not a URL"),
            ("postgres://h/db?sslmode=sometimes", "\"sometimes\""),
            ("", "it is empty"),
        ] {
            let message = parse_database_url(bad).expect_err(bad);
            assert!(message.contains(says), "{bad:?}: {message}");
            assert!(message.ends_with(DATABASE_URL_HINT), "{bad:?}: {message}");
        }
    }
}
