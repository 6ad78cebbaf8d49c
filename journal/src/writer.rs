//! The hot path: [`Shared`] is the engine's [`EventSink`] (push under a
//! short lock, number the event, never block), and the writer thread turns
//! everything pending into one write and one `fdatasync` (group commit),
//! then wakes whoever waits on those positions.
//!
//! Why a `parking_lot::Mutex<Vec<Event>>` and not a channel: `emit` runs
//! under an engine shard lock, so it must be a few nanoseconds; pushing to
//! a `Vec` whose capacity the writer hands back (two buffers swapped) does
//! not allocate, and taking the whole batch is one swap. Events are encoded
//! in the writer thread, never in `emit`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use flashsale_engine::{Event, EventSink};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::config::{Durability, JournalConfig};
use crate::error::JournalError;
use crate::format;

pub(crate) struct Pending {
    pub(crate) events: Vec<Event>,
    /// Position of the last event pushed.
    pub(crate) last: u64,
    /// The writer is parked and wants a notify.
    writer_idle: bool,
    /// While idle in `Sync` mode, the pending count at which `emit` wakes the writer.
    wake_at_events: usize,
    pub(crate) stop: bool,
}

/// State shared by the engine (through `emit`), the writer thread, the
/// snapshot thread and [`crate::Journal`].
pub(crate) struct Shared {
    pub(crate) config: JournalConfig,
    pub(crate) pending: Mutex<Pending>,
    writer_wake: Condvar,
    pub(crate) written: AtomicU64,
    pub(crate) durable: AtomicU64,
    pub(crate) failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Async waiters by the position they wait for; the writer wakes only
    /// those its flush satisfied (a watch channel would wake all of them on
    /// every flush: thousands of useless wake-ups per fsync).
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
    durable_lock: Mutex<()>,
    durable_changed: Condvar,
    /// Write + `fdatasync` rounds done (for tests and metrics).
    pub(crate) syncs: AtomicU64,
    /// In `Async` mode a backlog this long is flushed before the interval ends.
    async_wake_events: usize,
}

impl Shared {
    pub(crate) fn new(config: JournalConfig, last: u64) -> Shared {
        let async_wake_events = (config.pending_events_max / 2).max(1);
        Shared {
            config,
            pending: Mutex::new(Pending {
                events: Vec::with_capacity(1024),
                last,
                writer_idle: false,
                wake_at_events: 1,
                stop: false,
            }),
            writer_wake: Condvar::new(),
            written: AtomicU64::new(last),
            durable: AtomicU64::new(last),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            waiters: Mutex::new(BTreeMap::new()),
            durable_lock: Mutex::new(()),
            durable_changed: Condvar::new(),
            syncs: AtomicU64::new(0),
            async_wake_events,
        }
    }

    pub(crate) fn failure(&self) -> JournalError {
        JournalError::WriterFailed {
            reason: self
                .failure
                .lock()
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
        }
    }

    /// Sets the position after recovery, before any event is emitted.
    pub(crate) fn reset_position(&self, last: u64) {
        self.pending.lock().last = last;
        self.written.store(last, Ordering::Release);
        self.durable.store(last, Ordering::Release);
    }

    /// After the writer's final flush: later events are refused (dropped,
    /// never durable) and waiters on them get an error.
    pub(crate) fn mark_closed(&self) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            *failure = Some("the journal is closed".to_owned());
        }
        drop(failure);
        self.failed.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Registers an async waiter for `position`; `None` when it is durable
    /// already. Checked under the waiters' lock, which the writer takes
    /// after publishing, so no wake-up is lost.
    pub(crate) fn register_waiter(&self, position: u64) -> Option<oneshot::Receiver<()>> {
        let mut waiters = self.waiters.lock();
        if self.durable.load(Ordering::Acquire) >= position || self.failed.load(Ordering::Acquire) {
            return None;
        }
        let (sender, receiver) = oneshot::channel();
        waiters.entry(position).or_default().push(sender);
        Some(receiver)
    }

    /// Wakes every waiter, sync and async (failure, close).
    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for sender in waiters.into_values().flatten() {
            let _ = sender.send(());
        }
        let _guard = self.durable_lock.lock();
        self.durable_changed.notify_all();
    }

    /// Blocks until `position` is durable (or the writer failed).
    pub(crate) fn wait_durable(&self, position: u64) -> Result<(), JournalError> {
        let mut guard = self.durable_lock.lock();
        loop {
            if self.failed.load(Ordering::Acquire) {
                return Err(self.failure());
            }
            if self.durable.load(Ordering::Acquire) >= position {
                return Ok(());
            }
            self.durable_changed.wait(&mut guard);
        }
    }

    /// Asks the writer to flush what is pending and exit.
    pub(crate) fn stop_writer(&self) {
        let mut pending = self.pending.lock();
        pending.stop = true;
        drop(pending);
        self.writer_wake.notify_one();
    }

    fn publish_durable(&self, position: u64) {
        self.durable.store(position, Ordering::Release);
        let satisfied = {
            let mut waiters = self.waiters.lock();
            let later = waiters.split_off(&(position + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for sender in satisfied.into_values().flatten() {
            let _ = sender.send(());
        }
        let _guard = self.durable_lock.lock();
        self.durable_changed.notify_all();
    }

    fn fail(&self, error: &JournalError) {
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::error!(error = %chain, "journal writer failed; nothing more becomes durable");
        *self.failure.lock() = Some(chain);
        self.failed.store(true, Ordering::Release);
        self.wake_all();
    }
}

impl EventSink for Shared {
    fn emit(&self, event: Event) {
        let mut pending = self.pending.lock();
        pending.last += 1;
        self.written.store(pending.last, Ordering::Release);
        if self.failed.load(Ordering::Relaxed) {
            return; // never durable now; do not grow memory
        }
        pending.events.push(event);
        let wake = pending.writer_idle
            && match self.config.durability {
                Durability::Sync => pending.events.len() >= pending.wake_at_events,
                Durability::Async => {
                    pending.events.len() == 1 || pending.events.len() >= self.async_wake_events
                }
            };
        if wake {
            pending.writer_idle = false;
            drop(pending);
            self.writer_wake.notify_one();
        }
    }
}

/// The segment the writer appends to.
pub(crate) struct ActiveSegment {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
    /// The position its next record will have.
    pub(crate) next_position: u64,
    /// Records it holds.
    pub(crate) records: u64,
}

/// The writer thread's body: runs until stopped (after a final flush) or
/// until a disk error, which it reports through [`Shared::fail`].
pub(crate) fn run(shared: &Shared, mut segment: ActiveSegment) {
    let mut batch: Vec<Event> = Vec::with_capacity(1024);
    let mut bytes: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut last_flush = Instant::now();
    let mut last_batch_events = 1;
    loop {
        let mut gather_deadline: Option<Instant> = None;
        let (last, stop) = {
            let mut pending = shared.pending.lock();
            loop {
                if pending.stop {
                    break;
                }
                match shared.config.durability {
                    Durability::Sync if !pending.events.is_empty() => {
                        // Group commit: the requests the last flush woke are
                        // about to emit; give them until `group_commit_wait_max`
                        // to join this batch instead of the next one.
                        let target = (last_batch_events * 3 / 4).max(1);
                        let deadline = *gather_deadline.get_or_insert_with(|| {
                            Instant::now() + shared.config.group_commit_wait_max
                        });
                        if pending.events.len() >= target || Instant::now() >= deadline {
                            break;
                        }
                        pending.writer_idle = true;
                        pending.wake_at_events = target;
                        shared.writer_wake.wait_until(&mut pending, deadline);
                    }
                    Durability::Sync => {
                        pending.writer_idle = true;
                        pending.wake_at_events = 1;
                        shared.writer_wake.wait(&mut pending);
                    }
                    Durability::Async => {
                        let deadline = last_flush + shared.config.async_flush_interval;
                        let due = Instant::now() >= deadline
                            || pending.events.len() >= shared.async_wake_events;
                        if !pending.events.is_empty() && due {
                            break;
                        }
                        pending.writer_idle = true;
                        if pending.events.is_empty() {
                            shared.writer_wake.wait(&mut pending);
                        } else {
                            shared.writer_wake.wait_until(&mut pending, deadline);
                        }
                    }
                }
            }
            pending.writer_idle = false;
            std::mem::swap(&mut pending.events, &mut batch);
            (pending.last, pending.stop)
        };
        if !batch.is_empty() {
            last_flush = Instant::now();
            let first = last - batch.len() as u64 + 1;
            if let Err(error) = write_batch(shared, &mut segment, &batch, first, &mut bytes) {
                shared.fail(&error);
                return;
            }
            last_batch_events = batch.len();
            batch.clear();
            shared.publish_durable(last);
        }
        if stop {
            return;
        }
    }
}

/// Encodes `batch` (positions `first..`), appends it, rolling segments at
/// `segment_bytes_max`, and fdatasyncs once per touched segment.
fn write_batch(
    shared: &Shared,
    segment: &mut ActiveSegment,
    batch: &[Event],
    first: u64,
    bytes: &mut Vec<u8>,
) -> Result<(), JournalError> {
    debug_assert_eq!(first, segment.next_position, "positions are contiguous");
    bytes.clear();
    let mut buffered_records = 0;
    for event in batch {
        let start = bytes.len();
        format::encode_record(bytes, event)?;
        let after = segment.bytes + bytes.len() as u64;
        let holds_records = segment.records + buffered_records > 0;
        if after > shared.config.segment_bytes_max && holds_records {
            // Flush what fits, then start a new segment with this record.
            append(segment, &bytes[..start], buffered_records, &shared.syncs)?;
            let next = segment.next_position;
            let (file, path) = format::create_segment(&shared.config.dir, next)?;
            *segment = ActiveSegment {
                file,
                path,
                bytes: format::SEGMENT_HEADER_BYTES,
                next_position: next,
                records: 0,
            };
            bytes.drain(..start);
            buffered_records = 0;
        }
        buffered_records += 1;
    }
    append(segment, bytes, buffered_records, &shared.syncs)
}

/// One write and one `fdatasync`.
fn append(
    segment: &mut ActiveSegment,
    bytes: &[u8],
    records: u64,
    syncs: &AtomicU64,
) -> Result<(), JournalError> {
    if records == 0 {
        return Ok(());
    }
    syncs.fetch_add(1, Ordering::Relaxed);
    segment
        .file
        .write_all(bytes)
        .and_then(|()| segment.file.sync_data())
        .map_err(JournalError::io(&segment.path))?;
    segment.bytes += bytes.len() as u64;
    segment.records += records;
    segment.next_position += records;
    Ok(())
}
