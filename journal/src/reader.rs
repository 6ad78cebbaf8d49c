//! [`JournalReader`]: durable events, in order, from the files on disk. The
//! order sink follows the journal with it, so its backlog lives on disk,
//! not in memory.

use std::fs::File;
use std::path::{Path, PathBuf};

use flashsale_engine::Event;

use crate::error::JournalError;
use crate::format::{self, Cursor, Frame, Header, SEGMENT_HEADER_BYTES, SegmentFile};

/// Reads durable events in order from a position. It reads only what the
/// caller says is durable (`upto`), so it never sees a write in flight.
pub struct JournalReader {
    dir: PathBuf,
    /// The next position to return.
    next: u64,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    segment: SegmentFile,
    cursor: Cursor,
    /// The position of the record at the cursor.
    position: u64,
}

impl JournalReader {
    /// A reader whose first event will be position `from` (≥ 1).
    pub fn open(dir: &Path, from: u64) -> Result<JournalReader, JournalError> {
        let mut reader = JournalReader {
            dir: dir.to_owned(),
            next: from.max(1),
            open: None,
        };
        // Fail early if `from` has been deleted already.
        reader.locate()?;
        Ok(reader)
    }

    /// The position the next event returned will have.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Up to `max` events with positions from [`JournalReader::position`]
    /// up to `upto` (pass the journal's durable position). Empty when
    /// nothing more is durable yet.
    pub fn next_batch(&mut self, max: usize, upto: u64) -> Result<Vec<(u64, Event)>, JournalError> {
        let mut batch = Vec::with_capacity(max.min(4096));
        if let Some(open) = &mut self.open {
            open.cursor.forget_buffered();
        }
        while batch.len() < max && self.next <= upto {
            if self.open.is_none() && !self.locate()? {
                break;
            }
            let Some(open) = &mut self.open else { break };
            let frame = open
                .cursor
                .next_frame()
                .map_err(JournalError::io(&open.segment.path))?;
            match frame {
                Frame::Record { offset, length } => {
                    let payload = open.cursor.take_payload(length);
                    if open.position == self.next {
                        let event = format::decode_event(payload, &open.segment.path, offset)?;
                        batch.push((self.next, event));
                        self.next += 1;
                    }
                    open.position += 1;
                }
                Frame::End | Frame::Incomplete { .. } => {
                    // The segment is finished once a later one exists.
                    let (segments, _) = format::list(&self.dir)?;
                    let later = segments.iter().find(|s| s.first > open.segment.first);
                    match later {
                        Some(later) if later.first == open.position => self.open = None,
                        Some(later) => {
                            return Err(JournalError::Gap {
                                file: later.path.clone(),
                                expected: open.position,
                                found: later.first,
                            });
                        }
                        None => break,
                    }
                }
                Frame::Invalid { offset, reason, .. } => {
                    return Err(JournalError::Corrupt {
                        file: open.segment.path.clone(),
                        offset,
                        reason,
                    });
                }
            }
        }
        Ok(batch)
    }

    /// Opens the segment that holds `next`; false when it is not written yet.
    fn locate(&mut self) -> Result<bool, JournalError> {
        let (segments, _) = format::list(&self.dir)?;
        let Some(segment) = segments.iter().rev().find(|s| s.first <= self.next) else {
            return match segments.first() {
                Some(oldest) => Err(JournalError::Truncated {
                    dir: self.dir.clone(),
                    requested: self.next,
                    oldest: oldest.first,
                }),
                None => Ok(false),
            };
        };
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        if let Header::Unwritten = format::check_segment_header(&file, segment)? {
            return Ok(false);
        }
        self.open = Some(OpenSegment {
            segment: segment.clone(),
            cursor: Cursor::new(file, SEGMENT_HEADER_BYTES),
            position: segment.first,
        });
        Ok(true)
    }
}
