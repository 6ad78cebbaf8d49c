//! The sink's position: where an event came from (journal or stream) and
//! recording how far the books reached, in the batch's transaction.

use flashsale_engine::Event;
use sqlx::Executor;
use sqlx::postgres::PgConnection;

use crate::error::OrderSinkError;

/// Where a batch's events come from, so its transaction can record that
/// they are applied.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// The journal of this id: each batch moves its position.
    Journal(&'a str),
    /// Entries of Redis books streams ([`streams`]), `(stream, entry id)`
    /// at each position of the batch: rows are keyed by id, so a batch
    /// applied twice adds nothing (the merge); the streams' acknowledgement
    /// comes after the commit.
    Streams(&'a [(String, String)]),
    /// One restock entry of a books stream: its `UPDATE … + added` would
    /// count twice if applied twice, so the entry's id is recorded in
    /// `order_sink_stream_entries` in the same transaction, and an entry
    /// found there is [`OrderSinkError::AlreadyApplied`].
    Restock { stream: &'a str, entry: &'a str },
}

impl Source<'_> {
    /// Where the event at `position` (of a batch from this source) stands
    /// in its origin's order: its journal position, or its books entry id
    /// packed by [`streams::position`] (ordered within one stream; 0 for an
    /// id that does not pack). A deal change's version
    /// (`deals.change_version`), and the position `order_sink_set_aside`
    /// keeps.
    pub(crate) fn sequence(&self, position: u64) -> u64 {
        match *self {
            Source::Journal(_) => position,
            Source::Streams(entries) => usize::try_from(position)
                .ok()
                .and_then(|index| entries.get(index))
                .map_or(0, |(_, entry)| crate::streams::position(entry)),
            Source::Restock { entry, .. } => crate::streams::position(entry),
        }
    }
}

/// What one transaction records beside its rows: a [`Source`] and the
/// positions it covers (after `from`, up to `to`), and the event at `to`
/// (a journal's position is recorded with its digest: "Copies").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress<'a> {
    pub(crate) source: Source<'a>,
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) last: Option<&'a Event>,
}

impl Progress<'_> {
    /// Records the progress in `conn`'s transaction.
    pub(crate) async fn record(
        &self,
        conn: &mut PgConnection,
        deployment: &str,
    ) -> Result<(), OrderSinkError> {
        match self.source {
            Source::Journal(journal) => {
                move_position(conn, journal, self.from, self.to, self.last).await
            }
            Source::Streams(_) => Ok(()),
            Source::Restock { stream, entry } => {
                let recorded = conn
                    .execute(
                        sqlx::query(
                            "INSERT INTO order_sink_stream_entries (deployment_id, stream, entry_id) \
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        )
                        .bind(deployment)
                        .bind(stream)
                        .bind(entry),
                    )
                    .await?;
                if recorded.rows_affected() == 0 {
                    return Err(OrderSinkError::AlreadyApplied);
                }
                Ok(())
            }
        }
    }

    /// Where `order_sink_set_aside` keeps the event at `position`: the
    /// journal's id and the position, or the stream's key and the entry id
    /// packed by [`streams::position`].
    pub(crate) fn origin(&self, position: u64) -> (&str, u64) {
        let origin = match self.source {
            Source::Journal(journal) => journal,
            Source::Streams(entries) => usize::try_from(position)
                .ok()
                .and_then(|index| entries.get(index))
                .map_or("", |(stream, _)| stream.as_str()),
            Source::Restock { stream, .. } => stream,
        };
        (origin, self.source.sequence(position))
    }
}

/// Moves the journal's position from `from` to `to` in the transaction
/// `conn` is in, with the SHA-256 of `last`, the event at `to`
/// ([`flashsale_journal::event_digest`]; `None`: NULL, cannot check);
/// [`OrderSinkError::Contended`] if it was not at `from`.
pub(crate) async fn move_position(
    conn: &mut PgConnection,
    journal_id: &str,
    from: u64,
    to: u64,
    last: Option<&Event>,
) -> Result<(), OrderSinkError> {
    let sha256 = last
        .map(flashsale_journal::event_digest)
        .transpose()?
        .map(Vec::from);
    let moved = conn
        .execute(
            sqlx::query(
                "UPDATE order_sink_positions SET position = $2, updated_at = now(), \
                 event_position = $2, event_sha256 = $4 \
                 WHERE journal_id = $1 AND position = $3",
            )
            .bind(journal_id)
            .bind(to as i64)
            .bind(from as i64)
            .bind(sha256),
        )
        .await?;
    if moved.rows_affected() != 1 {
        return Err(OrderSinkError::Contended);
    }
    Ok(())
}
