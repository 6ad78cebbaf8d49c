//! [`BooksLookup`]: the read path that tells whether an order is in the
//! books (a bounded pool of connections, a bounded wait).

use std::time::Duration;

use flashsale_engine::Order;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnectOptions;

use crate::apply::MILLIS;

/// Connections at most that [`BooksLookup`] keeps to Postgres.
pub const BOOKS_LOOKUP_CONNECTIONS_MAX: u32 = 2;
/// A lookup of [`BooksLookup`] that takes longer (a connection included)
/// answers "not confirmed".
pub const BOOKS_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether an order is in the books (in Postgres: "confirmed",
/// docs/durability.md "The books (Postgres)"), for `GET /v1/orders/{id}`. A small pool of its own
/// ([`BOOKS_LOOKUP_CONNECTIONS_MAX`], connected on first use), so a read
/// never waits on the sink's batches; never on the buy path.
pub struct BooksLookup {
    pub(crate) pool: sqlx::PgPool,
    /// The deployment whose rows are ours ([`OrderSinkConfig::deployment_id`]).
    pub(crate) deployment: String,
}

impl BooksLookup {
    pub(crate) fn new(options: &PgConnectOptions, deployment: String) -> BooksLookup {
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
