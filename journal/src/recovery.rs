//! Recovery: the latest snapshot, then every record after it, applied to an
//! empty engine. Also the torn-tail rule and the directory's meta file.
//!
//! **The torn-tail rule.** The writer appends one batch at a time and
//! starts the next only after the previous one's `fdatasync`, so at most
//! the end of the last segment can hold a write cut short by a crash. A bad
//! frame there is cut off (the file is truncated to the last good record)
//! when nothing valid follows it: the bytes after it are missing, zero, or
//! more bad frames. A bad frame followed by a valid one, or a bad frame in
//! any earlier segment, is corruption of data that may have been
//! acknowledged: start-up stops with an error naming the file and offset.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use flashsale_engine::Engine;

use crate::error::JournalError;
use crate::format::{self, Cursor, Frame, Header, META_FILE, SEGMENT_HEADER_BYTES, SegmentFile};

/// How far replay goes and whether it may repair.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Start-up: read to the end and cut off a torn tail.
    Open,
    /// A replica for a background snapshot: read only to `upto` (durable),
    /// repair nothing; anything bad before `upto` is corruption.
    Replica { upto: u64 },
}

/// The last segment after replay, for the writer to append to.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    pub(crate) segment: SegmentFile,
    /// Where the next record goes; 0 when the header must be rewritten.
    pub(crate) end_offset: u64,
    /// The position of its last record (`first - 1` when it has none).
    pub(crate) last_position: u64,
}

#[derive(Debug)]
pub(crate) struct Replayed {
    /// The last position applied (or held by the snapshot).
    pub(crate) last: u64,
    /// The snapshot that was loaded, if any.
    pub(crate) snapshot: u64,
    pub(crate) tail: Option<Tail>,
    /// Bytes cut off a torn tail.
    pub(crate) truncated_bytes: u64,
}

/// Loads the latest snapshot into `engine` (which must be new and empty)
/// and applies every record after it.
pub(crate) fn replay(dir: &Path, engine: &Engine, mode: Mode) -> Result<Replayed, JournalError> {
    let (segments, snapshots) = format::list(dir)?;
    let mut snapshot = 0;
    if let Some((position, path)) = snapshots.last() {
        let loaded = format::read_snapshot(path, *position)?;
        engine
            .restore(loaded)
            .map_err(|source| JournalError::Restore {
                file: path.clone(),
                source,
            })?;
        snapshot = *position;
    }
    let upto = match mode {
        Mode::Open => u64::MAX,
        Mode::Replica { upto } => upto,
    };
    let mut next = snapshot + 1;
    let mut replayed = Replayed {
        last: snapshot,
        snapshot,
        tail: None,
        truncated_bytes: 0,
    };
    for (index, segment) in segments.iter().enumerate() {
        if next > upto {
            break;
        }
        let following = segments.get(index + 1);
        if following.is_some_and(|following| following.first <= next) {
            continue; // wholly held by the snapshot
        }
        if segment.first > next {
            return Err(JournalError::Gap {
                file: segment.path.clone(),
                expected: next,
                found: segment.first,
            });
        }
        let repair = following.is_none() && matches!(mode, Mode::Open);
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        if let Header::Unwritten = format::check_segment_header(&file, segment)? {
            if !repair {
                return Err(JournalError::Corrupt {
                    file: segment.path.clone(),
                    offset: 0,
                    reason: "the segment header is missing",
                });
            }
            replayed.tail = Some(Tail {
                segment: segment.clone(),
                end_offset: 0,
                last_position: segment.first - 1,
            });
            break;
        }
        let mut cursor = Cursor::new(file, SEGMENT_HEADER_BYTES);
        let mut position = segment.first;
        let end_offset = loop {
            if position > upto {
                break cursor.offset();
            }
            let frame = cursor
                .next_frame()
                .map_err(JournalError::io(&segment.path))?;
            match frame {
                Frame::Record { offset, length } => {
                    let payload = cursor.take_payload(length);
                    if position == next {
                        let event = format::decode_event(payload, &segment.path, offset)?;
                        engine
                            .apply(&event)
                            .map_err(|source| JournalError::Replay {
                                file: segment.path.clone(),
                                offset,
                                position,
                                source,
                            })?;
                        next += 1;
                    }
                    position += 1;
                }
                Frame::End => break cursor.offset(),
                Frame::Incomplete { offset } | Frame::Invalid { offset, .. } => {
                    let reason = match frame {
                        Frame::Invalid { reason, .. } => reason,
                        _ => "the segment ends inside a record",
                    };
                    if !repair || !tail_is_torn(&mut cursor, frame, &segment.path)? {
                        return Err(JournalError::Corrupt {
                            file: segment.path.clone(),
                            offset,
                            reason,
                        });
                    }
                    replayed.truncated_bytes = truncate(&segment.path, offset)?;
                    tracing::warn!(
                        file = %segment.path.display(),
                        offset,
                        bytes = replayed.truncated_bytes,
                        "cut off a torn journal tail (a write cut short by a crash)"
                    );
                    break offset;
                }
            }
        };
        if let Some(following) = following
            && position <= upto
            && following.first != position
        {
            return Err(JournalError::Gap {
                file: following.path.clone(),
                expected: position,
                found: following.first,
            });
        }
        if following.is_none() {
            replayed.tail = Some(Tail {
                segment: segment.clone(),
                end_offset,
                last_position: position - 1,
            });
        }
    }
    replayed.last = next - 1;
    Ok(replayed)
}

/// Whether the bad frame the cursor stopped at starts a torn tail: nothing
/// valid follows it. See the module doc.
fn tail_is_torn(cursor: &mut Cursor, first: Frame, path: &Path) -> Result<bool, JournalError> {
    let mut frame = first;
    loop {
        match frame {
            Frame::End | Frame::Incomplete { .. } => return Ok(true),
            Frame::Record { .. } => return Ok(false),
            Frame::Invalid {
                offset,
                length: Some(length),
                ..
            } => cursor.skip(offset, length),
            Frame::Invalid { length: None, .. } => {
                return cursor.rest_is_zero().map_err(JournalError::io(path));
            }
        }
        frame = cursor.next_frame().map_err(JournalError::io(path))?;
    }
}

/// Cuts `path` to `length` bytes, durably; returns the bytes removed.
fn truncate(path: &Path, length: u64) -> Result<u64, JournalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(JournalError::io(path))?;
    let before = file.metadata().map_err(JournalError::io(path))?.len();
    file.set_len(length)
        .and_then(|()| file.sync_all())
        .map_err(JournalError::io(path))?;
    Ok(before.saturating_sub(length))
}

/// Checks (or, in a new directory, records) the engine's shard count, and
/// returns the directory's journal id: order and hold ids encode their
/// shard, so the count can never change; the id tells a consumer (the order
/// sink) that a position belongs to this journal and not to one that was
/// wiped and restarted at 1.
pub(crate) fn check_meta(dir: &Path, shards: usize) -> Result<String, JournalError> {
    let path = dir.join(META_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = new_journal_id();
            write_meta(dir, &path, shards, &id)?;
            return Ok(id);
        }
        Err(source) => return Err(JournalError::Io { path, source }),
    };
    let meta_error = |reason: String| JournalError::Meta {
        file: path.clone(),
        reason,
    };
    let mut stored = None;
    let mut id = None;
    let mut older = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("flashsale-journal"), Some("format"), Some(version)) => {
                match version.parse::<u8>() {
                    Ok(version) if format::is_readable(version) => {
                        older = version < format::FORMAT_VERSION;
                    }
                    _ => return Err(meta_error(format!("unsupported format {version}"))),
                }
            }
            (Some("shards"), Some(count), None) => {
                stored = Some(
                    count
                        .parse::<usize>()
                        .map_err(|_| meta_error(format!("bad shard count {count:?}")))?,
                );
            }
            (Some("id"), Some(text), None) => id = Some(text.to_owned()),
            (None, ..) => {}
            _ => return Err(meta_error(format!("unknown line {line:?}"))),
        }
    }
    let stored = stored.ok_or_else(|| meta_error("no shard count".into()))?;
    if stored != shards {
        return Err(JournalError::ShardCountMismatch {
            dir: dir.to_owned(),
            stored,
            configured: shards,
        });
    }
    match id {
        // An older format's directory is written in this one from now on:
        // the meta file says so, so an older build refuses it.
        Some(id) if older => {
            write_meta(dir, &path, shards, &id)?;
            Ok(id)
        }
        Some(id) => Ok(id),
        None => {
            let id = new_journal_id();
            write_meta(dir, &path, shards, &id)?;
            Ok(id)
        }
    }
}

fn write_meta(dir: &Path, path: &Path, shards: usize, id: &str) -> Result<(), JournalError> {
    let text = format!(
        "flashsale-journal format {}\nshards {shards}\nid {id}\n",
        format::FORMAT_VERSION
    );
    format::write_atomically(dir, path, &[text.as_bytes()])
}

/// 128 random bits in hex, from the standard library's randomly keyed hasher.
fn new_journal_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos()),
        );
        hasher.write_u32(std::process::id());
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}
