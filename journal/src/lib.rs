//! # flashsale-journal
//!
//! The engine's write-ahead journal: every [`Event`](flashsale_engine::Event)
//! the engine emits is appended to length- and CRC32C-framed records in
//! segment files in the data directory; one writer thread turns everything
//! pending into one write and one `fdatasync` (group commit) and then wakes
//! the requests waiting on it. Snapshots bound replay time; start-up loads
//! the latest snapshot and replays the records after it.
//!
//! ## Layout
//! - [`config`]: [`JournalConfig`], [`Durability`] and the default bounds.
//! - [`journal`]: [`Journal`]: open (lock, meta, recovery), durability
//!   waits, retention, the snapshot thread, clean shutdown.
//! - `writer` (private): the engine's event sink and the
//!   group-commit writer thread, which times each `fdatasync` into the
//!   `metrics` histogram [`FDATASYNC_SECONDS`] (no HTTP here: the gateway
//!   renders it).
//! - `recovery` (private): snapshot + replay, the
//!   torn-tail rule, the shard-count meta file.
//! - [`reader`]: [`JournalReader`], durable events from the files on disk
//!   (for the Postgres order sink).
//! - `format` (private): file names, headers, frames;
//!   [`event_digest`], an event's SHA-256 as its record holds it (the
//!   order sink's check that a stored position is this journal's history).
//! - [`error`]: [`JournalError`], the crate's one error type.
//!
//! ## The data directory
//! `NNNN….wal` segments (named by their first position), at most one
//! `snapshot-NNNN….snap` (named by the last position it holds),
//! `journal.meta` (format and shard count), `journal.lock` (an advisory
//! lock: one process per directory).
//!
//! ## Durability
//! - [`Durability::Sync`] (default): a request is answered only once
//!   [`Journal::durable`] resolved for its events: they are fsynced, and
//!   survive a process kill and a power loss.
//! - [`Durability::Async`]: a request is answered at once; the writer
//!   flushes every `async_flush_interval` (or sooner when half of
//!   `pending_events_max` is pending). **What a crash can lose:** a kill
//!   of the process loses the events not yet handed to the kernel, at most
//!   those of the last `async_flush_interval` (plus one write in flight); a
//!   power loss or kernel crash loses those not yet fsynced, at most the
//!   last `async_flush_interval` plus one `fdatasync`. Recovery is always a
//!   prefix of what was acknowledged, never a hole: the journal is ordered,
//!   so a lost event takes every later one with it, and a shopper whose 201
//!   was lost sees no charge for it.
//!
//! ## Recovery
//! See `recovery`: a torn tail (a crash mid-write) is cut
//! off; corruption anywhere else stops start-up with an error naming the
//! file and byte offset. The engine's shard count is kept in `journal.meta`
//! and a mismatch is refused: order and hold ids encode their shard.
//!
//! ## Architecture invariants
//! - `emit` (under an engine shard lock) takes one short leaf lock, pushes,
//!   and may `notify` the writer; it never blocks, encodes or does I/O.
//! - The live engine is never locked for a periodic snapshot: a private
//!   replica is rebuilt from the previous snapshot and the durable records
//!   (so while it runs, memory holds a second copy of the state).
//! - Only the writer appends; a record is visible to readers only once its
//!   position is durable.
//! - Segment pruning never deletes positions at or after
//!   [`Journal::retain_from`] (the order sink's backlog and the last event
//!   it applied).
//! - The bound on pending events (`pending_events_max`) is enforced by
//!   admission: past it [`Journal::is_ready`] is false and the gateway
//!   answers 503; `emit` itself cannot fail.
//! - After a disk error the writer stops for good (fail-stop: a failed
//!   `fdatasync` leaves the page cache untrustworthy); waiters get
//!   [`JournalError::WriterFailed`] and the process must be restarted.

pub mod config;
pub mod error;
mod format;
pub mod journal;
pub mod reader;
mod recovery;
mod writer;

pub use config::{
    ASYNC_FLUSH_INTERVAL_DEFAULT, Durability, GROUP_COMMIT_WAIT_MAX_DEFAULT, JournalConfig,
    PENDING_EVENTS_MAX_DEFAULT, ParseDurabilityError, SEGMENT_BYTES_MAX_DEFAULT,
    SNAPSHOT_INTERVAL_DEFAULT,
};
pub use error::JournalError;
pub use format::event_digest;
pub use journal::{DirLock, Journal, JournalStats};
pub use reader::JournalReader;
pub use writer::FDATASYNC_SECONDS;
