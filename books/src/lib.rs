//! # flashsale-books
//!
//! The books: the Postgres order sink and the audit.
//!
//! The order sink copies settled orders, wallet movements
//! (credits and order debits), deals and raffles (registrations, draws and
//! the places of their rankings: migration `0004`) from the journal to
//! Postgres, in the background, never on the request path.
//!
//! It follows the journal with a
//! [`JournalReader`](flashsale_journal::JournalReader) over the files on
//! disk (so its backlog lives on disk, not in memory), reads up to
//! `batch_events_max` durable events, and writes them in **one
//! transaction** with the journal position it reached
//! (`order_sink_positions`, keyed by the journal's id). Rows and position
//! commit together, so after any crash the sink resumes exactly after the
//! last committed batch: every order reaches Postgres exactly once.
//!
//! The rows of a batch are encoded once, on the reader's blocking thread
//! while the previous batch is in Postgres, as one binary `COPY` stream
//! per table (`copy`: timestamps as `timestamptz`, money as `numeric`).
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
//! beside its rows is its `Source`'s: the journal's position, nothing
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
//! entry id in the deal's stream (`Source::sequence`), and updates the
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
//! tells the journal its position
//! ([`Journal::retain_from`](flashsale_journal::Journal::retain_from)) so
//! snapshot pruning never deletes what it has not applied, nor the last event it
//! did ("Copies"). [`OrderSinkHandle::lag`]
//! and the gauges `flashsale_order_sink_lag_records` and
//! `flashsale_order_sink_lag_seconds` say how far behind it is.
//!
//! ## Layout
//! - `config`: [`OrderSinkConfig`]; `error`: [`OrderSinkError`].
//! - `sink`: [`start`], the run loop and one session; [`OrderSinkHandle`].
//! - `set_aside`: reading the journal in batches, setting aside what
//!   Postgres refuses; `history`: refusing a copied data directory.
//! - `tables`: events to rows (`Batch`); `copy`: the
//!   binary `COPY` encoding; `apply`: writing a batch; `progress`: the
//!   position, in the batch's transaction.
//! - `status`: lag and counters; `lookup`: [`BooksLookup`], whether an
//!   order is in the books.
//! - [`streams`]: the same sink fed by the Redis books streams
//!   (multi-node mode).
//! - [`audit`]: `flashsale audit`, a Redis-mode deployment's invariants
//!   checked against Redis and the books.

mod apply;
pub mod audit;
mod config;
mod copy;
mod error;
mod history;
mod lookup;
mod progress;
mod set_aside;
mod sink;
mod status;
pub mod streams;
mod tables;

pub use config::{
    BATCH_EVENTS_MAX_DEFAULT, OrderSinkConfig, SET_ASIDE_MAX_DEFAULT, parse_database_url,
};
pub use error::OrderSinkError;
pub use lookup::{BOOKS_LOOKUP_CONNECTIONS_MAX, BOOKS_LOOKUP_TIMEOUT, BooksLookup};
pub use sink::{OrderSinkHandle, start, start_with};
pub use status::SinkLag;

/// Migrations of the books' tables (`books/migrations`), run at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
