//! [`Journal`]: opening a data directory (lock, meta, recovery), the writer
//! and snapshot threads, durability waits, retention and clean shutdown.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use flashsale_engine::{Clock, DiscardEvents, Engine, EngineConfig};
use parking_lot::{Condvar, Mutex};

use crate::config::{Durability, JournalConfig};
use crate::error::JournalError;
use crate::format::{self, LOCK_FILE, SEGMENT_HEADER_BYTES};
use crate::recovery::{self, Mode};
use crate::writer::{self, ActiveSegment, Shared};

/// The write-ahead journal of one engine. See the crate doc.
pub struct Journal {
    shared: Arc<Shared>,
    background: Arc<Background>,
    writer: Mutex<Option<JoinHandle<()>>>,
    snapshotter: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    id: String,
    /// Held (with an advisory lock) for the journal's lifetime.
    _lock: DirLock,
}

/// The advisory lock on a data directory's `journal.lock`: one process
/// at a time uses the directory. Taken before anything is written there;
/// released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir` (created if missing). Errors:
    /// [`JournalError::Locked`] when another process holds it.
    pub fn take(dir: &Path) -> Result<DirLock, JournalError> {
        fs::create_dir_all(dir).map_err(JournalError::io(dir))?;
        Ok(DirLock {
            _file: lock_dir(dir)?,
        })
    }
}

/// Counters for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    pub written: u64,
    pub durable: u64,
    /// Write + `fdatasync` rounds so far (group commit: far fewer than events).
    pub syncs: u64,
    /// Position held by the latest snapshot on disk (0: none).
    pub snapshot_position: u64,
}

/// What the snapshot thread (and `close`) need.
struct Background {
    shared: Arc<Shared>,
    engine_config: EngineConfig,
    clock: Arc<dyn Clock>,
    /// Segments holding positions ≥ this are kept (the order sink's last
    /// applied position); `u64::MAX` when no reader asked.
    retain_from: AtomicU64,
    snapshot_position: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
    /// One snapshot write and pruning at a time.
    snapshot_lock: Mutex<()>,
}

impl Journal {
    /// Recovers (snapshot + replay) and starts the writer; the engine it
    /// returns emits into the journal.
    pub fn open(
        config: JournalConfig,
        engine_config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Journal>, Arc<Engine>), JournalError> {
        let lock = DirLock::take(&config.dir)?;
        Journal::open_locked(config, engine_config, clock, lock)
    }

    /// [`Journal::open`] with the directory's lock already taken (by
    /// [`DirLock::take`] on `config.dir`).
    pub fn open_locked(
        config: JournalConfig,
        engine_config: EngineConfig,
        clock: Arc<dyn Clock>,
        lock: DirLock,
    ) -> Result<(Arc<Journal>, Arc<Engine>), JournalError> {
        let dir = config.dir.clone();
        format::tighten(&dir)?;
        let id = recovery::check_meta(&dir, engine_config.shards)?;
        remove_tmp_files(&dir)?;

        let shared = Arc::new(Shared::new(config, 0));
        let engine = Arc::new(Engine::new(engine_config, clock.clone(), shared.clone()));
        let replayed = recovery::replay(&dir, &engine, Mode::Open)?;
        let segment = active_segment(&dir, replayed.tail, replayed.last)?;
        shared.reset_position(replayed.last);
        tracing::info!(
            dir = %dir.display(),
            snapshot = replayed.snapshot,
            position = replayed.last,
            truncated_bytes = replayed.truncated_bytes,
            "journal recovered"
        );

        let background = Arc::new(Background {
            shared: shared.clone(),
            engine_config,
            clock,
            retain_from: AtomicU64::new(u64::MAX),
            snapshot_position: AtomicU64::new(replayed.snapshot),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            snapshot_lock: Mutex::new(()),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || writer::run(&shared, segment))
                .map_err(JournalError::io(&dir))?
        };
        let snapshotter = {
            let background = background.clone();
            std::thread::Builder::new()
                .name("journal-snapshot".into())
                .spawn(move || background.run())
                .map_err(JournalError::io(&dir))?
        };
        let journal = Arc::new(Journal {
            shared,
            background,
            writer: Mutex::new(Some(writer)),
            snapshotter: Mutex::new(Some(snapshotter)),
            closed: AtomicBool::new(false),
            id,
            _lock: lock,
        });
        Ok((journal, engine))
    }

    /// A random id made with the data directory: positions are meaningful
    /// only together with it (a wiped directory starts again at 1 under a
    /// new id).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    pub fn durability(&self) -> Durability {
        self.shared.config.durability
    }

    /// Position of the last event emitted so far (events are numbered 1, 2, …).
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    pub fn durable_position(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Resolves once every event up to `position` is durable (fsynced).
    /// `Async` mode: returns at once. Err if the writer failed (disk error).
    pub async fn durable(&self, position: u64) -> Result<(), JournalError> {
        if self.durable_position() >= position {
            return Ok(());
        }
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.failure());
        }
        if self.shared.config.durability == Durability::Async {
            return Ok(());
        }
        writer::DurableWait::new(&self.shared, position).await;
        if self.durable_position() >= position {
            Ok(())
        } else if self.shared.failed.load(Ordering::Acquire) {
            Err(self.shared.failure())
        } else {
            Err(JournalError::Closed)
        }
    }

    /// Blocks the calling thread until `position` is durable, whatever the
    /// durability mode (for threads outside tokio: tests, benchmarks, tools).
    pub fn wait_durable(&self, position: u64) -> Result<(), JournalError> {
        self.shared.wait_durable(position)
    }

    /// True while the writer is healthy and fewer than `pending_events_max`
    /// events wait to become durable.
    pub fn is_ready(&self) -> bool {
        !self.shared.failed.load(Ordering::Acquire)
            && self.written().saturating_sub(self.durable_position())
                < self.shared.config.pending_events_max as u64
    }

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            written: self.written(),
            durable: self.durable_position(),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            snapshot_position: self.background.snapshot_position.load(Ordering::Acquire),
        }
    }

    /// Keeps every segment holding positions ≥ `position` when snapshots
    /// prune old segments. The order sink calls it with the last position
    /// it applied, so its backlog is never deleted and that event stays
    /// readable for its check against copied data directories. Call it
    /// with [`Journal::oldest_position`] before the reader's position is
    /// known.
    pub fn retain_from(&self, position: u64) {
        self.background
            .retain_from
            .store(position, Ordering::Release);
    }

    /// The first position still on disk (1 when nothing was pruned).
    pub fn oldest_position(&self) -> Result<u64, JournalError> {
        let (segments, _) = format::list(self.dir())?;
        Ok(segments.first().map_or(1, |segment| segment.first))
    }

    /// Writes a snapshot of the durable journal now, from a replica (the
    /// live engine is not locked), and prunes. Returns its position.
    pub fn snapshot_now(&self) -> Result<u64, JournalError> {
        self.background.snapshot_durable()
    }

    /// Clean shutdown: flush, fsync, write a final snapshot of `engine` (no
    /// request may be running), stop the writer. Calling it again does nothing.
    pub fn close(&self, engine: &Engine) -> Result<(), JournalError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_threads();
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.failure());
        }
        self.shared.mark_closed();
        let position = self.durable_position();
        if self.written() != position {
            return Err(JournalError::Busy {
                written: self.written(),
                durable: position,
            });
        }
        if position > self.background.snapshot_position.load(Ordering::Acquire) {
            let snapshot = engine.snapshot();
            if self.written() != position {
                return Err(JournalError::Busy {
                    written: self.written(),
                    durable: position,
                });
            }
            self.background.install_snapshot(position, &snapshot)?;
        }
        Ok(())
    }

    fn stop_threads(&self) {
        *self.background.stop.lock() = true;
        self.background.wake.notify_all();
        if let Some(handle) = self.snapshotter.lock().take() {
            let _ = handle.join();
        }
        self.shared.stop_writer();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Journal {
    /// Without `close`: flushes what is pending and stops the threads, but
    /// writes no snapshot (the next start replays).
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.stop_threads();
            self.shared.mark_closed();
        }
    }
}

impl Background {
    fn run(&self) {
        loop {
            {
                let mut stop = self.stop.lock();
                if !*stop {
                    self.wake
                        .wait_for(&mut stop, self.shared.config.snapshot_interval);
                }
                if *stop {
                    return;
                }
            }
            let durable = self.shared.durable.load(Ordering::Acquire);
            if durable <= self.snapshot_position.load(Ordering::Acquire) {
                continue;
            }
            if let Err(error) = self.snapshot_durable() {
                tracing::warn!(error = %error_chain(&error), "background snapshot failed");
            }
        }
    }

    /// Builds a private replica from the last snapshot and the durable
    /// segments after it, snapshots it (exact: nothing runs on it), writes
    /// it and prunes.
    fn snapshot_durable(&self) -> Result<u64, JournalError> {
        let _one_at_a_time = self.snapshot_lock.lock();
        let upto = self.shared.durable.load(Ordering::Acquire);
        let replica = Engine::new(
            self.engine_config,
            self.clock.clone(),
            Arc::new(DiscardEvents),
        );
        let dir = &self.shared.config.dir;
        let replayed = recovery::replay(dir, &replica, Mode::Replica { upto })?;
        if replayed.last > self.snapshot_position.load(Ordering::Acquire) {
            let snapshot = replica.snapshot();
            drop(replica);
            self.write_and_prune(replayed.last, &snapshot)?;
        }
        Ok(replayed.last)
    }

    fn install_snapshot(
        &self,
        position: u64,
        snapshot: &flashsale_engine::Snapshot,
    ) -> Result<(), JournalError> {
        let _one_at_a_time = self.snapshot_lock.lock();
        self.write_and_prune(position, snapshot)
    }

    fn write_and_prune(
        &self,
        position: u64,
        snapshot: &flashsale_engine::Snapshot,
    ) -> Result<(), JournalError> {
        let dir = &self.shared.config.dir;
        format::write_snapshot(dir, position, snapshot)?;
        self.snapshot_position.store(position, Ordering::Release);
        let keep_from = (position + 1).min(self.retain_from.load(Ordering::Acquire));
        let (segments, snapshots) = format::list(dir)?;
        // A segment goes when the next one starts at or before `keep_from`:
        // all its records are older. The last segment always stays.
        for pair in segments.windows(2) {
            if pair[1].first <= keep_from {
                fs::remove_file(&pair[0].path).map_err(JournalError::io(&pair[0].path))?;
            }
        }
        for (older, path) in &snapshots {
            if *older < position {
                fs::remove_file(path).map_err(JournalError::io(path))?;
            }
        }
        format::sync_dir(dir)?;
        tracing::info!(position, "journal snapshot written");
        Ok(())
    }
}

fn error_chain(error: &JournalError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(JournalError::io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(JournalError::Locked {
            dir: dir.to_owned(),
        }),
        Err(TryLockError::Error(source)) => Err(JournalError::Io { path, source }),
    }
}

/// Leftovers of a snapshot or meta write cut short by a crash.
fn remove_tmp_files(dir: &Path) -> Result<(), JournalError> {
    for entry in fs::read_dir(dir).map_err(JournalError::io(dir))? {
        let path = entry.map_err(JournalError::io(dir))?.path();
        if path.extension().is_some_and(|extension| extension == "tmp") {
            fs::remove_file(&path).map_err(JournalError::io(&path))?;
        }
    }
    Ok(())
}

/// The segment the writer continues: the recovered last one, or a new one
/// when there is none or it is behind the snapshot.
fn active_segment(
    dir: &Path,
    tail: Option<recovery::Tail>,
    last: u64,
) -> Result<ActiveSegment, JournalError> {
    if let Some(tail) = tail {
        let continues = tail.last_position == last && tail.end_offset >= SEGMENT_HEADER_BYTES;
        if continues {
            let path = tail.segment.path;
            let mut file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(JournalError::io(&path))?;
            // Records a killed process left in the page cache become durable now.
            file.sync_all()
                .and_then(|()| file.seek(SeekFrom::Start(tail.end_offset)))
                .map_err(JournalError::io(&path))?;
            return Ok(ActiveSegment {
                file,
                path,
                bytes: tail.end_offset,
                next_position: last + 1,
                records: last + 1 - tail.segment.first,
            });
        }
        if tail.end_offset < SEGMENT_HEADER_BYTES && tail.segment.first != last + 1 {
            // An empty, headerless segment that no longer fits: drop it.
            fs::remove_file(&tail.segment.path).map_err(JournalError::io(&tail.segment.path))?;
        }
    }
    let (file, path) = format::create_segment(dir, last + 1)?;
    Ok(ActiveSegment {
        file,
        path,
        bytes: SEGMENT_HEADER_BYTES,
        next_position: last + 1,
        records: 0,
    })
}
