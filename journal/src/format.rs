//! The bytes on disk: file names, segment and snapshot headers, record
//! frames, and a buffered cursor that parses frames back.
//!
//! ```text
//! segment  NNNNNNNNNNNNNNNNNNNN.wal   (N = position of its first record)
//!   header  "FSJL" | format u8 | 0 0 0 | first position u64 LE      16 bytes
//!   record  length u32 LE | crc32c(length ‖ payload) u32 LE | payload
//!   record  …   (positions follow one by one from the header's)
//! snapshot snapshot-NNNNNNNNNNNNNNNNNNNN.snap (N = last position it holds)
//!   header  "FSSN" | format u8 | 0 0 0 | position u64 | length u64 | crc32c u32 | 0 u32
//!   body    postcard(Snapshot)
//! ```
//!
//! Payloads are `postcard` encodings of [`flashsale_engine::Event`]. The
//! format byte changes whenever the encoding does, so an old build refuses
//! a newer directory instead of misreading it. A build reads every format
//! from [`FORMAT_VERSION_OLDEST_READ`] on when the newer ones only add
//! (format 3 appended the `DrawRun` that carries the revealed seed, so a
//! format-2 record decodes unchanged; its old draw event is
//! `DrawRunFormat2`; format 4 appended `MerchantLinked`, `ShopperLinked`
//! and `TokensRevoked`, and the snapshot's external-id links and token
//! not-before times after the rest of its body, which an older snapshot
//! reads as three empty lists: [`SNAPSHOT_FORMAT_3_TAIL`]), and writes
//! [`FORMAT_VERSION`]; opening an older directory records the new format
//! in its meta file, so an older build refuses it from then on.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flashsale_engine::{Digest, Event, Snapshot};
use sha2::{Digest as _, Sha256};

use crate::error::JournalError;

/// The format this build writes.
pub(crate) const FORMAT_VERSION: u8 = 4;
/// The oldest format this build reads: every format-2 and format-3 record
/// is a format-4 record (see the module doc).
pub(crate) const FORMAT_VERSION_OLDEST_READ: u8 = 2;

/// The first format whose snapshots end with the external-id links and
/// the token not-before times.
const FORMAT_VERSION_SNAPSHOT_TAIL: u8 = 4;
/// The end of a snapshot with no links and no revocations, as `postcard`
/// writes it: three empty lists (shoppers' links, merchants' links,
/// revocations), one zero length byte each. An older snapshot's body
/// followed by these bytes is a format-4 body.
pub(crate) const SNAPSHOT_FORMAT_3_TAIL: [u8; 3] = [0, 0, 0];

/// Whether this build reads files of format `version`.
pub(crate) fn is_readable(version: u8) -> bool {
    (FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION).contains(&version)
}
const SEGMENT_MAGIC: [u8; 4] = *b"FSJL";
const SNAPSHOT_MAGIC: [u8; 4] = *b"FSSN";
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 16;
const SNAPSHOT_HEADER_BYTES: usize = 32;
pub(crate) const FRAME_HEADER_BYTES: usize = 8;
/// A frame claiming more than this is corrupt: no event comes near it.
pub(crate) const RECORD_BYTES_MAX: u32 = 16 << 20;
/// What a cursor reads from disk at once.
const READ_CHUNK_BYTES: usize = 256 << 10;

pub(crate) const META_FILE: &str = "journal.meta";

/// Permissions of every file the journal writes: its owner's only. Segments
/// and snapshots hold what must stay private, e.g. the seed of a raffle not
/// yet drawn (README "Fair draws": nobody may learn the ranking early), so
/// no other local user may read them. Files an older build left readable
/// are tightened when the journal opens ([`tighten`]).
pub(crate) const FILE_MODE: u32 = 0o600;

/// Takes group and other permissions off every file in `dir` (a journal
/// directory written by a build that created them `0644`).
pub(crate) fn tighten(dir: &Path) -> Result<(), JournalError> {
    for entry in fs::read_dir(dir).map_err(JournalError::io(dir))? {
        let path = entry.map_err(JournalError::io(dir))?.path();
        let metadata = fs::symlink_metadata(&path).map_err(JournalError::io(&path))?;
        let mode = metadata.permissions().mode();
        if metadata.is_file() && mode & 0o077 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o700))
                .map_err(JournalError::io(&path))?;
        }
    }
    Ok(())
}
pub(crate) const LOCK_FILE: &str = "journal.lock";

pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

pub(crate) fn snapshot_name(position: u64) -> String {
    format!("snapshot-{position:020}.snap")
}

/// One segment file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    pub(crate) first: u64,
    pub(crate) path: PathBuf,
}

fn parse_number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Snapshot files found in the directory: (position, path).
pub(crate) type SnapshotFiles = Vec<(u64, PathBuf)>;

/// Segments sorted by first position, and snapshots sorted by position.
pub(crate) fn list(dir: &Path) -> Result<(Vec<SegmentFile>, SnapshotFiles), JournalError> {
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for entry in fs::read_dir(dir).map_err(JournalError::io(dir))? {
        let entry = entry.map_err(JournalError::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_number(name, "", ".wal") {
            segments.push(SegmentFile {
                first,
                path: entry.path(),
            });
        } else if let Some(position) = parse_number(name, "snapshot-", ".snap") {
            snapshots.push((position, entry.path()));
        }
    }
    segments.sort_by_key(|segment| segment.first);
    snapshots.sort_by_key(|(position, _)| *position);
    Ok((segments, snapshots))
}

pub(crate) fn segment_header(first: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    header[..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4] = FORMAT_VERSION;
    header[8..].copy_from_slice(&first.to_le_bytes());
    header
}

/// What a segment's first bytes say.
pub(crate) enum Header {
    Valid,
    /// Shorter than a header, or all zero: a crash while creating it.
    Unwritten,
}

pub(crate) fn check_segment_header(
    file: &File,
    segment: &SegmentFile,
) -> Result<Header, JournalError> {
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    let read = read_full_at(file, &mut header, 0).map_err(JournalError::io(&segment.path))?;
    if read < header.len() || header.iter().all(|&b| b == 0) {
        return Ok(Header::Unwritten);
    }
    let corrupt = |reason| JournalError::Corrupt {
        file: segment.path.clone(),
        offset: 0,
        reason,
    };
    if header[..4] != SEGMENT_MAGIC {
        return Err(corrupt("not a journal segment (bad magic)"));
    }
    if !is_readable(header[4]) {
        return Err(JournalError::UnsupportedFormat {
            file: segment.path.clone(),
            found: header[4],
            oldest: FORMAT_VERSION_OLDEST_READ,
            newest: FORMAT_VERSION,
        });
    }
    let mut first = [0; 8];
    first.copy_from_slice(&header[8..]);
    if u64::from_le_bytes(first) != segment.first {
        return Err(corrupt(
            "the header's first position differs from the file name",
        ));
    }
    Ok(Header::Valid)
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let read = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

fn frame_crc(length: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&length), payload)
}

/// Appends one framed record holding `event` to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, event: &Event) -> Result<(), JournalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    postcard::to_io(event, &mut *buf).map_err(JournalError::Encode)?;
    let length = u32::try_from(buf.len() - start - FRAME_HEADER_BYTES)
        .ok()
        .filter(|&length| length <= RECORD_BYTES_MAX)
        .ok_or(JournalError::Encode(postcard::Error::SerializeBufferFull))?;
    let length = length.to_le_bytes();
    let crc = frame_crc(length, &buf[start + FRAME_HEADER_BYTES..]);
    buf[start..start + 4].copy_from_slice(&length);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// SHA-256 of `event`'s record payload (its `postcard` encoding, as this
/// build writes it), so the same event has the same digest in any journal
/// and two events that differ in any field have different ones. The order
/// sink keeps the digest of the last event it applied beside its position
/// to tell its own journal's history from a copy's (gateway
/// `order_sink.rs`, "Copies"). Errors: [`JournalError::Encode`] only if
/// the event cannot be encoded at all, which a journaled event always can.
pub fn event_digest(event: &Event) -> Result<Digest, JournalError> {
    let payload = postcard::to_stdvec(event).map_err(JournalError::Encode)?;
    Ok(Sha256::digest(&payload).into())
}

pub(crate) fn decode_event(
    payload: &[u8],
    file: &Path,
    offset: u64,
) -> Result<Event, JournalError> {
    postcard::from_bytes(payload).map_err(|source| JournalError::Decode {
        file: file.to_owned(),
        offset,
        source,
    })
}

/// One step of a cursor through a segment.
pub(crate) enum Frame {
    /// A whole record whose checksum holds; `offset` is where its frame starts.
    Record { offset: u64, length: usize },
    /// The file ends exactly at a frame boundary.
    End,
    /// The file ends inside a frame (a write cut short).
    Incomplete { offset: u64 },
    /// A frame whose length is impossible (`length` is `None`) or whose
    /// checksum fails (`length` is the frame's claimed payload length).
    Invalid {
        offset: u64,
        length: Option<usize>,
        reason: &'static str,
    },
}

/// Reads frames from one segment file through a buffer.
pub(crate) struct Cursor {
    file: File,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Cursor {
    pub(crate) fn new(file: File, offset: u64) -> Cursor {
        Cursor {
            file,
            base: offset,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// File offset of the next frame.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Forgets buffered bytes past the current frame: the file may have
    /// grown, and bytes read while a write was in flight may be stale.
    pub(crate) fn forget_buffered(&mut self) {
        self.base = self.offset();
        self.start = 0;
        self.end = 0;
    }

    pub(crate) fn seek(&mut self, offset: u64) {
        self.base = offset;
        self.start = 0;
        self.end = 0;
    }

    /// Makes `need` bytes available from `start`; false at end of file.
    fn ensure(&mut self, need: usize) -> io::Result<bool> {
        if self.end - self.start >= need {
            return Ok(true);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.base += self.start as u64;
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() < need.max(READ_CHUNK_BYTES) {
            self.buf.resize(need.max(READ_CHUNK_BYTES), 0);
        }
        while self.end < need {
            let read = self
                .file
                .read_at(&mut self.buf[self.end..], self.base + self.end as u64)?;
            if read == 0 {
                return Ok(false);
            }
            self.end += read;
        }
        Ok(true)
    }

    /// Parses the next frame. After `Record`, [`Cursor::payload`] is its
    /// payload until the next call; after anything else the cursor stays put.
    pub(crate) fn next_frame(&mut self) -> io::Result<Frame> {
        let offset = self.offset();
        if !self.ensure(FRAME_HEADER_BYTES)? {
            return Ok(if self.end == self.start {
                Frame::End
            } else {
                Frame::Incomplete { offset }
            });
        }
        let header = &self.buf[self.start..self.start + FRAME_HEADER_BYTES];
        let length = [header[0], header[1], header[2], header[3]];
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let payload_length = u32::from_le_bytes(length);
        if payload_length == 0 || payload_length > RECORD_BYTES_MAX {
            return Ok(Frame::Invalid {
                offset,
                length: None,
                reason: "impossible record length",
            });
        }
        let payload_length = payload_length as usize;
        if !self.ensure(FRAME_HEADER_BYTES + payload_length)? {
            return Ok(Frame::Incomplete { offset });
        }
        let payload = &self.buf
            [self.start + FRAME_HEADER_BYTES..self.start + FRAME_HEADER_BYTES + payload_length];
        if frame_crc(length, payload) != crc {
            return Ok(Frame::Invalid {
                offset,
                length: Some(payload_length),
                reason: "record checksum mismatch",
            });
        }
        Ok(Frame::Record {
            offset,
            length: payload_length,
        })
    }

    /// The payload of the record `next_frame` just returned; moves past it.
    pub(crate) fn take_payload(&mut self, length: usize) -> &[u8] {
        let from = self.start + FRAME_HEADER_BYTES;
        self.start = from + length;
        &self.buf[from..from + length]
    }

    /// Moves past a frame of the given payload length without reading it.
    pub(crate) fn skip(&mut self, offset: u64, length: usize) {
        self.seek(offset + (FRAME_HEADER_BYTES + length) as u64);
    }

    /// True when every byte from the cursor to the end of the file is zero.
    pub(crate) fn rest_is_zero(&mut self) -> io::Result<bool> {
        loop {
            if self.end > self.start {
                if self.buf[self.start..self.end].iter().any(|&b| b != 0) {
                    return Ok(false);
                }
                self.start = self.end;
            }
            if !self.ensure(1)? {
                return Ok(true);
            }
        }
    }
}

/// fsyncs a directory, so file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(JournalError::io(dir))
}

/// Creates a new segment: header written and fsynced, directory fsynced.
pub(crate) fn create_segment(dir: &Path, first: u64) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(segment_name(first));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(JournalError::io(&path))?;
    file.write_all(&segment_header(first))
        .and_then(|()| file.sync_all())
        .map_err(JournalError::io(&path))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Writes `bytes` to `path` atomically: tmp file, fsync, rename, fsync dir.
pub(crate) fn write_atomically(
    dir: &Path,
    path: &Path,
    parts: &[&[u8]],
) -> Result<(), JournalError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(JournalError::io(&tmp))?;
    for part in parts {
        file.write_all(part).map_err(JournalError::io(&tmp))?;
    }
    file.sync_all().map_err(JournalError::io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(JournalError::io(path))?;
    sync_dir(dir)
}

/// Writes the snapshot of position `position` durably; returns its path.
pub(crate) fn write_snapshot(
    dir: &Path,
    position: u64,
    snapshot: &Snapshot,
) -> Result<PathBuf, JournalError> {
    let body = postcard::to_stdvec(snapshot).map_err(JournalError::Encode)?;
    let mut header = [0; SNAPSHOT_HEADER_BYTES];
    header[..4].copy_from_slice(&SNAPSHOT_MAGIC);
    header[4] = FORMAT_VERSION;
    header[8..16].copy_from_slice(&position.to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let path = dir.join(snapshot_name(position));
    write_atomically(dir, &path, &[&header, &body])?;
    Ok(path)
}

/// Reads and checks a snapshot file.
pub(crate) fn read_snapshot(path: &Path, position: u64) -> Result<Snapshot, JournalError> {
    let bytes = fs::read(path).map_err(JournalError::io(path))?;
    let corrupt = |reason| JournalError::SnapshotCorrupt {
        file: path.to_owned(),
        reason,
    };
    if bytes.len() < SNAPSHOT_HEADER_BYTES || bytes[..4] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad header"));
    }
    if !is_readable(bytes[4]) {
        return Err(JournalError::UnsupportedFormat {
            file: path.to_owned(),
            found: bytes[4],
            oldest: FORMAT_VERSION_OLDEST_READ,
            newest: FORMAT_VERSION,
        });
    }
    let field = |range: std::ops::Range<usize>| {
        let mut word = [0; 8];
        word[..range.len()].copy_from_slice(&bytes[range]);
        u64::from_le_bytes(word)
    };
    if field(8..16) != position {
        return Err(corrupt("the header's position differs from the file name"));
    }
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if field(16..24) != body.len() as u64 {
        return Err(corrupt("length mismatch"));
    }
    if field(24..28) != u64::from(crc32c::crc32c(body)) {
        return Err(corrupt("checksum mismatch"));
    }
    let extended;
    let body = if bytes[4] < FORMAT_VERSION_SNAPSHOT_TAIL {
        extended = [body, &SNAPSHOT_FORMAT_3_TAIL[..]].concat();
        &extended[..]
    } else {
        body
    };
    postcard::from_bytes(body).map_err(|source| JournalError::Decode {
        file: path.to_owned(),
        offset: SNAPSHOT_HEADER_BYTES as u64,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_engine::{MerchantId, Timestamp};

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_number(&segment_name(42), "", ".wal"), Some(42));
        assert_eq!(
            parse_number(&snapshot_name(7), "snapshot-", ".snap"),
            Some(7)
        );
        assert_eq!(parse_number("42.wal", "", ".wal"), None);
    }

    /// A format-3 snapshot (the same body without the links at its end)
    /// reads as a format-4 one without links; a format-4 one keeps them.
    #[test]
    fn a_format_3_snapshot_reads_without_links_and_a_format_4_one_with() {
        use flashsale_engine::{DiscardEvents, Engine, EngineConfig, ManualClock};
        let engine = Engine::new(
            EngineConfig::default(),
            std::sync::Arc::new(ManualClock::new(Timestamp(5))),
            std::sync::Arc::new(DiscardEvents),
        );
        engine.create_shopper("plain").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), 1, &engine.snapshot()).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        assert!(bytes.ends_with(&SNAPSHOT_FORMAT_3_TAIL));
        bytes.truncate(bytes.len() - SNAPSHOT_FORMAT_3_TAIL.len());
        let body_bytes = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
        let crc = crc32c::crc32c(&bytes[SNAPSHOT_HEADER_BYTES..]);
        bytes[4] = 3;
        bytes[16..24].copy_from_slice(&body_bytes.to_le_bytes());
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let restored = |snapshot| {
            let engine = Engine::new(
                EngineConfig::default(),
                std::sync::Arc::new(ManualClock::new(Timestamp(5))),
                std::sync::Arc::new(DiscardEvents),
            );
            engine.restore(snapshot).unwrap();
            engine
        };
        let old = restored(read_snapshot(&path, 1).unwrap());
        assert_eq!(
            old.shopper(flashsale_engine::ShopperId(1)).unwrap().name,
            "plain"
        );

        engine.link_shopper("auth0|1", "linked").unwrap();
        let path = write_snapshot(dir.path(), 2, &engine.snapshot()).unwrap();
        let new = restored(read_snapshot(&path, 2).unwrap());
        let shopper = new.shopper(flashsale_engine::ShopperId(2)).unwrap();
        assert_eq!(shopper.external_id.as_deref(), Some("auth0|1"));
        assert_eq!(
            new.link_shopper("auth0|1", "again").unwrap(),
            (shopper, false)
        );
    }

    #[test]
    fn a_record_frames_and_parses_back() {
        let event = Event::MerchantCreated {
            merchant: MerchantId(1),
            name: "m".into(),
            at: Timestamp(5),
        };
        let mut buf = Vec::new();
        encode_record(&mut buf, &event).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, &buf).unwrap();
        let mut cursor = Cursor::new(File::open(&path).unwrap(), 0);
        let Frame::Record { length, .. } = cursor.next_frame().unwrap() else {
            panic!("a record")
        };
        let payload = cursor.take_payload(length).to_vec();
        assert_eq!(decode_event(&payload, &path, 0).unwrap(), event);
        assert!(matches!(cursor.next_frame().unwrap(), Frame::End));
        // The digest is the SHA-256 of exactly the payload on disk.
        let on_disk: Digest = Sha256::digest(&payload).into();
        assert_eq!(event_digest(&event).unwrap(), on_disk);
    }

    /// The order sink tells two journals' histories apart by one event's
    /// digest: the same event gives the same digest, one field changed
    /// (here only its time, by a millisecond) another.
    #[test]
    fn an_event_digest_is_the_same_for_the_same_event_and_differs_for_another() {
        let event = |at: i64| Event::MerchantCreated {
            merchant: MerchantId(1),
            name: "m".into(),
            at: Timestamp(at),
        };
        assert_eq!(
            event_digest(&event(5)).unwrap(),
            event_digest(&event(5)).unwrap()
        );
        assert_ne!(
            event_digest(&event(5)).unwrap(),
            event_digest(&event(6)).unwrap()
        );
    }
}
