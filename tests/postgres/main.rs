//! The Postgres order sink against a real Postgres (`DATABASE_URL`): every
//! settled order lands exactly once, across sink crashes and Postgres
//! outages. Without `DATABASE_URL` the tests pass after one `skipped:`
//! line (and fail under `CI` or `FLASHSALE_REQUIRE_SERVICES=1`, see
//! `flashsale-testkit`); with it set but unreachable, they fail.
//!
//! Each test creates its own database `flashsale_test_<random>` and drops
//! it after, so runs can be repeated and run in parallel.
//!
//! One binary, one module per topic:
//! - [`sink`]: exactly once through crashes, batches, the `COPY` rows and
//!   a Postgres outage;
//! - [`deals`]: a deal's changes and restocks, versioned by position;
//! - [`set_aside`]: rows Postgres refuses, conflicts, the set-aside bound;
//! - [`copies`]: two data directories on one database, a copied one
//!   refused, a sink restarted on its own journal, a position moved back;
//! - [`metrics`]: the sink's counters in `/metrics`;
//! - [`raffles`]: a raffle's registrations, draw and places in the books;
//! - [`support`]: the fixtures they share.

mod copies;
mod deals;
mod metrics;
mod raffles;
mod set_aside;
mod sink;
mod support;
