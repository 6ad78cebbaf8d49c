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
//!
//! Waking async waiters ([`DurableWait`]): a flush satisfies thousands of
//! requests at once, and a wake-up sent from the writer thread (outside the
//! runtime) costs a shared-queue push and often a futex call each, which
//! measured 2 ms per 1,600-request flush here. So the writer wakes only
//! one of them and parks the rest in `ready`; the first waiter polled
//! (on a runtime worker, where a wake-up is a local queue push) wakes
//! them all. Any waiter's poll or drop drains `ready`, so a cancelled
//! leader strands nobody.
//!
//! Each `fdatasync` is timed into the histogram [`FDATASYNC_SECONDS`] of
//! the process's `metrics` recorder (the gateway renders it in `/metrics`
//! and sets its buckets); without a recorder the timing goes nowhere.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use flashsale_engine::{Event, EventSink};
use parking_lot::{Condvar, Mutex};

use crate::config::{Durability, JournalConfig};
use crate::error::JournalError;
use crate::format;

/// The histogram of `fdatasync` durations, in seconds, one sample per
/// write round (group commit: far fewer than events).
pub const FDATASYNC_SECONDS: &str = "flashsale_journal_fdatasync_seconds";

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
    /// Async waiters: the position each waits for and its waker. The
    /// writer wakes only those its flush satisfied. Bounded by the
    /// requests in flight (the gateway's admission bound): one entry per
    /// pending [`DurableWait`], plus at most one stale entry per dropped one
    /// until its position is durable.
    waiters: Mutex<Vec<(u64, Waker)>>,
    /// Satisfied waiters not woken yet (see the module doc), and their count.
    ready: Mutex<Vec<Waker>>,
    ready_count: AtomicU64,
    durable_lock: Mutex<()>,
    durable_changed: Condvar,
    /// Write + `fdatasync` rounds done (for tests and metrics).
    pub(crate) syncs: AtomicU64,
    /// [`FDATASYNC_SECONDS`] in the recorder installed when the journal opened.
    fdatasync_seconds: metrics::Histogram,
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
            waiters: Mutex::new(Vec::new()),
            ready: Mutex::new(Vec::new()),
            ready_count: AtomicU64::new(0),
            durable_lock: Mutex::new(()),
            durable_changed: Condvar::new(),
            syncs: AtomicU64::new(0),
            fdatasync_seconds: {
                metrics::describe_histogram!(
                    FDATASYNC_SECONDS,
                    metrics::Unit::Seconds,
                    "Time of one fdatasync of the journal (one per group-commit write)"
                );
                metrics::histogram!(FDATASYNC_SECONDS)
            },
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

    fn is_durable_or_failed(&self, position: u64) -> bool {
        self.durable.load(Ordering::Acquire) >= position || self.failed.load(Ordering::Acquire)
    }

    /// Wakes every satisfied waiter the writer left in `ready`.
    fn wake_ready(&self) {
        if self.ready_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let ready = {
            let mut ready = self.ready.lock();
            self.ready_count.store(0, Ordering::Release);
            std::mem::take(&mut *ready)
        };
        for waker in ready {
            waker.wake();
        }
    }

    /// Hands satisfied wakers to `ready` and wakes one of them, which
    /// wakes the others when it runs.
    fn wake_through_ready(&self, satisfied: Vec<Waker>) {
        let leader = {
            let mut ready = self.ready.lock();
            ready.extend(satisfied);
            let leader = ready.pop();
            self.ready_count
                .store(ready.len() as u64, Ordering::Release);
            leader
        };
        if let Some(leader) = leader {
            leader.wake();
        }
    }

    /// Wakes every waiter, sync and async (failure, close).
    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        self.wake_through_ready(waiters.into_iter().map(|(_, waker)| waker).collect());
        self.wake_ready();
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
        let satisfied: Vec<Waker> = self
            .waiters
            .lock()
            .extract_if(.., |(waits_for, _)| *waits_for <= position)
            .map(|(_, waker)| waker)
            .collect();
        if !satisfied.is_empty() {
            self.wake_through_ready(satisfied);
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

/// Resolves once `position` is durable or the writer failed (the caller
/// tells which). See the module doc for how it is woken.
pub(crate) struct DurableWait<'a> {
    shared: &'a Shared,
    position: u64,
    /// The waker registered last, so a repeated poll registers again only
    /// when the task's waker changed.
    registered: Option<Waker>,
}

impl<'a> DurableWait<'a> {
    pub(crate) fn new(shared: &'a Shared, position: u64) -> DurableWait<'a> {
        DurableWait {
            shared,
            position,
            registered: None,
        }
    }
}

impl Future for DurableWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = self.shared;
        shared.wake_ready();
        if shared.is_durable_or_failed(self.position) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let mut waiters = shared.waiters.lock();
        // Checked again under the lock the writer takes after publishing,
        // so no wake-up is lost.
        if shared.is_durable_or_failed(self.position) {
            return Poll::Ready(());
        }
        waiters.push((self.position, cx.waker().clone()));
        drop(waiters);
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for DurableWait<'_> {
    fn drop(&mut self) {
        self.shared.wake_ready();
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
            append(segment, &bytes[..start], buffered_records, shared)?;
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
    append(segment, bytes, buffered_records, shared)
}

/// One write and one `fdatasync`, timed into [`FDATASYNC_SECONDS`].
fn append(
    segment: &mut ActiveSegment,
    bytes: &[u8],
    records: u64,
    shared: &Shared,
) -> Result<(), JournalError> {
    if records == 0 {
        return Ok(());
    }
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    segment
        .file
        .write_all(bytes)
        .and_then(|()| {
            let started = Instant::now();
            let synced = segment.file.sync_data();
            shared
                .fdatasync_seconds
                .record(started.elapsed().as_secs_f64());
            synced
        })
        .map_err(JournalError::io(&segment.path))?;
    segment.bytes += bytes.len() as u64;
    segment.records += records;
    segment.next_position += records;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// A task's waker that counts its wake-ups.
    #[derive(Default)]
    struct Task {
        woken: AtomicUsize,
    }

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.woken.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn shared() -> Shared {
        Shared::new(
            JournalConfig::new(PathBuf::from("unused"), Durability::Sync),
            0,
        )
    }

    /// Polls `wait` once with `task`'s waker.
    fn poll(wait: &mut DurableWait<'_>, task: &Arc<Task>) -> Poll<()> {
        let waker = Waker::from(task.clone());
        Pin::new(wait).poll(&mut Context::from_waker(&waker))
    }

    /// `count` tasks, each waiting (polled once) for positions 1, 2, ….
    fn pending_waits(shared: &Shared, count: u64) -> (Vec<Arc<Task>>, Vec<DurableWait<'_>>) {
        let tasks: Vec<Arc<Task>> = (0..count).map(|_| Arc::default()).collect();
        let mut waits: Vec<DurableWait<'_>> = (1..=count)
            .map(|position| DurableWait::new(shared, position))
            .collect();
        for (wait, task) in waits.iter_mut().zip(&tasks) {
            assert_eq!(poll(wait, task), Poll::Pending);
        }
        (tasks, waits)
    }

    fn woken(tasks: &[Arc<Task>]) -> usize {
        tasks
            .iter()
            .map(|task| task.woken.load(Ordering::SeqCst))
            .sum()
    }

    #[test]
    fn a_flush_wakes_one_waiter_which_wakes_the_others_it_satisfied() {
        let shared = shared();
        // Waiters for positions 1..=10; the flush makes 1..=6 durable.
        let (tasks, mut waits) = pending_waits(&shared, 10);
        for (wait, task) in waits.iter_mut().zip(&tasks) {
            // A second poll with the same waker registers nothing more.
            assert_eq!(poll(wait, task), Poll::Pending);
        }
        assert_eq!(shared.waiters.lock().len(), 10);

        shared.publish_durable(6);
        assert_eq!(woken(&tasks), 1, "the writer wakes one leader");
        let leader = tasks
            .iter()
            .position(|task| task.woken.load(Ordering::SeqCst) == 1)
            .unwrap();
        assert!(leader < 6);
        assert_eq!(poll(&mut waits[leader], &tasks[leader]), Poll::Ready(()));
        assert_eq!(woken(&tasks[..6]), 6, "the leader woke every satisfied one");
        assert_eq!(woken(&tasks[6..]), 0, "and none it did not satisfy");
        for (wait, task) in waits.iter_mut().zip(&tasks).take(6) {
            assert_eq!(poll(wait, task), Poll::Ready(()));
        }
        for (wait, task) in waits.iter_mut().zip(&tasks).skip(6) {
            assert_eq!(poll(wait, task), Poll::Pending);
        }
        assert_eq!(shared.waiters.lock().len(), 4);
    }

    #[test]
    fn a_cancelled_leader_strands_nobody() {
        let shared = shared();
        let (tasks, waits) = pending_waits(&shared, 5);
        let mut waits: Vec<Option<DurableWait<'_>>> = waits.into_iter().map(Some).collect();
        shared.publish_durable(5);
        let leader = tasks
            .iter()
            .position(|task| task.woken.load(Ordering::SeqCst) == 1)
            .unwrap();
        // The leader's request is cancelled before it runs: dropping its
        // wait wakes the rest.
        waits[leader] = None;
        assert_eq!(woken(&tasks), 5);
    }

    #[test]
    fn a_failed_writer_wakes_every_waiter() {
        let shared = shared();
        let (tasks, mut waits) = pending_waits(&shared, 3);
        shared.fail(&JournalError::Closed);
        assert_eq!(woken(&tasks), 3);
        for (wait, task) in waits.iter_mut().zip(&tasks) {
            assert_eq!(poll(wait, task), Poll::Ready(()));
        }
    }
}
