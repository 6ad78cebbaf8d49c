//! What the journal is told: where it lives, how durable an answer is, and
//! every bound it keeps (segment size, flush interval, snapshot cadence,
//! backlog).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// When an acknowledged event is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A request is answered only after its events are fsynced (group commit).
    #[default]
    Sync,
    /// A request is answered at once; the writer flushes every
    /// `async_flush_interval`. See the crate doc for what a crash can lose.
    Async,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The text was neither `sync` nor `async`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("durability must be `sync` or `async`, not {0:?}")]
pub struct ParseDurabilityError(pub String);

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    fn from_str(text: &str) -> Result<Durability, ParseDurabilityError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "sync" => Ok(Durability::Sync),
            "async" => Ok(Durability::Async),
            _ => Err(ParseDurabilityError(text.to_owned())),
        }
    }
}

/// Default size at which the writer starts a new segment file.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Default flush period in [`Durability::Async`] mode.
pub const ASYNC_FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_millis(10);
/// Default longest wait of the writer, in `Sync` mode, for the requests
/// its last flush woke to join the next batch.
pub const GROUP_COMMIT_WAIT_MAX_DEFAULT: Duration = Duration::from_micros(500);
/// Default period of background snapshots.
pub const SNAPSHOT_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Default bound on events emitted but not yet durable (≈ 50 MiB of
/// events in memory). Past it [`crate::Journal::is_ready`] is false.
pub const PENDING_EVENTS_MAX_DEFAULT: usize = 1 << 18;

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The data directory: segments, snapshots, `journal.meta`, the lock.
    pub dir: PathBuf,
    pub durability: Durability,
    /// A segment file is closed and a new one started before it would grow
    /// past this (a single record larger than it gets a segment of its own).
    pub segment_bytes_max: u64,
    /// In `Async` mode, the longest an emitted event waits before its write
    /// and `fdatasync` start.
    pub async_flush_interval: Duration,
    /// In `Sync` mode, after a flush that made N requests durable, the
    /// writer waits up to this long for ¾·N events before the next write
    /// (so the woken requests share one `fdatasync` rather than trickle
    /// into two). A lone request is never delayed: the target is then 1.
    pub group_commit_wait_max: Duration,
    /// How often the background thread writes a snapshot (when anything
    /// was journalled since the last one).
    pub snapshot_interval: Duration,
    /// Events emitted but not yet durable beyond which the journal reports
    /// itself not ready, so the gateway sheds load (503 overloaded). The
    /// engine's `emit` cannot fail, so this bound is enforced by admission,
    /// not by dropping events.
    pub pending_events_max: usize,
}

impl JournalConfig {
    pub fn new(dir: PathBuf, durability: Durability) -> JournalConfig {
        JournalConfig {
            dir,
            durability,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            async_flush_interval: ASYNC_FLUSH_INTERVAL_DEFAULT,
            group_commit_wait_max: GROUP_COMMIT_WAIT_MAX_DEFAULT,
            snapshot_interval: SNAPSHOT_INTERVAL_DEFAULT,
            pending_events_max: PENDING_EVENTS_MAX_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_prints() {
        assert_eq!("sync".parse(), Ok(Durability::Sync));
        assert_eq!("ASYNC".parse(), Ok(Durability::Async));
        assert!("fast".parse::<Durability>().is_err());
        assert_eq!(Durability::Async.to_string(), "async");
        assert_eq!(Durability::default(), Durability::Sync);
    }
}
