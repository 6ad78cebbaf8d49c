//! The crate's one error type. `Display` names the file and byte offset
//! where it applies and does not repeat the source's text (walk
//! `source()` for the chain).

use std::io;
use std::path::{Path, PathBuf};

use flashsale_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record that is not the torn tail of the last segment fails its
    /// length or checksum: start-up stops rather than drop what follows.
    #[error(
        "journal file {file} is corrupt at byte offset {offset}: {reason}; \
         refusing to start rather than drop the records after it"
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error(
        "journal file {file} has format version {found}, this build reads versions {oldest} to {newest}"
    )]
    UnsupportedFormat {
        file: PathBuf,
        found: u8,
        oldest: u8,
        newest: u8,
    },
    #[error("cannot decode the record in {file} at byte offset {offset}")]
    Decode {
        file: PathBuf,
        offset: u64,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot encode an event or snapshot")]
    Encode(#[source] postcard::Error),
    /// Events are missing between two files (or before the first one).
    #[error("journal positions {expected}..{found} are missing (next file: {file})")]
    Gap {
        file: PathBuf,
        expected: u64,
        found: u64,
    },
    /// A reader asked for positions that segment deletion has removed.
    #[error("journal position {requested} is no longer on disk (oldest kept: {oldest}) in {dir}")]
    Truncated {
        dir: PathBuf,
        requested: u64,
        oldest: u64,
    },
    #[error("snapshot {file} is invalid: {reason}")]
    SnapshotCorrupt { file: PathBuf, reason: &'static str },
    #[error("the engine refuses the snapshot {file}")]
    Restore {
        file: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("the engine refuses journal position {position} ({file}, byte offset {offset})")]
    Replay {
        file: PathBuf,
        offset: u64,
        position: u64,
        #[source]
        source: EngineError,
    },
    #[error(
        "the data directory {dir} was created with {stored} engine shards, \
         but the engine is configured with {configured}; order and hold ids \
         encode the shard, so the shard count cannot change"
    )]
    ShardCountMismatch {
        dir: PathBuf,
        stored: usize,
        configured: usize,
    },
    #[error("{file} is not a valid journal meta file: {reason}")]
    Meta { file: PathBuf, reason: String },
    #[error(
        "the data directory {dir} is in use by another process (it holds the lock on {dir}/journal.lock); stop it or give another --data-dir"
    )]
    Locked { dir: PathBuf },
    /// The writer thread stopped on a disk error; nothing more becomes
    /// durable until a restart (the gateway answers 503 unavailable).
    #[error("the journal writer failed: {reason}")]
    WriterFailed { reason: String },
    #[error("the journal is closed")]
    Closed,
    /// `close` found events emitted after it began: a request was still
    /// running, so no exact final snapshot can be taken.
    #[error(
        "events were emitted during close (written {written}, durable {durable}); no final snapshot written"
    )]
    Busy { written: u64, durable: u64 },
}

impl JournalError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
        move |source| JournalError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
