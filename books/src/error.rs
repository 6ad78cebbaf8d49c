//! [`OrderSinkError`], the crate's one error type.

use std::time::Duration;

use flashsale_journal::JournalError;

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
    /// A books entry in Redis that is not what the Redis steps write.
    #[error("a books entry cannot be read: {0}")]
    Entry(String),
    #[error("Redis, reading the books streams")]
    Redis(#[source] Box<flashsale_redis::Error>),
    /// The audit: the deployment's Redis did not answer or refused.
    #[error(transparent)]
    Deployment(#[from] flashsale_redis::Error),
    /// The audit: flags that cannot work, naming the flag.
    #[error("invalid configuration: {0}")]
    Config(String),
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
    pub(crate) fn is_content(&self) -> bool {
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
