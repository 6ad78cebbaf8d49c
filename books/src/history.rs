//! Copy detection: a position in Postgres is adopted only if this
//! journal holds the same event there (a copied data directory is refused).

use std::sync::Arc;

use flashsale_journal::{Journal, JournalError, JournalReader};

use crate::error::OrderSinkError;

/// Whether `position`, stored in Postgres for this journal's id, is this
/// journal's history ("Copies" in the module doc): not beyond its durable
/// end, and, when Postgres keeps the last applied event's position and
/// SHA-256 (`last_event`, migration `0007`), the same event at that
/// position here. An event already pruned from disk, or no `last_event`
/// (rows older than `0007`, position 0), cannot be checked and is
/// accepted. Errors: [`OrderSinkError::ForeignPosition`], or reading the
/// journal failed.
pub(crate) async fn check_own_history(
    journal: &Arc<Journal>,
    position: u64,
    last_event: Option<(i64, Vec<u8>)>,
) -> Result<(), OrderSinkError> {
    let durable = journal.durable_position();
    let foreign = |position: u64, detail: String| OrderSinkError::ForeignPosition {
        journal: journal.id().to_owned(),
        position,
        detail,
    };
    if position > durable {
        return Err(foreign(
            position,
            format!("this journal's durable end is {durable}"),
        ));
    }
    let Some((at, sha256)) = last_event.and_then(|(at, sha256)| {
        let at = u64::try_from(at).ok().filter(|&at| at >= 1)?;
        Some((at, sha256))
    }) else {
        return Ok(());
    };
    if at > durable {
        return Err(foreign(
            position,
            format!("its last event, at {at}, is beyond this journal's durable end {durable}"),
        ));
    }
    let dir = journal.dir().to_owned();
    let found = tokio::task::spawn_blocking(move || {
        let mut reader = match JournalReader::open(&dir, at) {
            Err(JournalError::Truncated { .. }) => return Ok(None),
            opened => opened?,
        };
        Ok::<_, JournalError>(reader.next_batch(1, at)?.pop())
    })
    .await??;
    let Some((_, event)) = found else {
        tracing::info!(
            journal = %journal.id(),
            position = at,
            "order sink: the last applied event is pruned from disk; its digest cannot be checked"
        );
        return Ok(());
    };
    if flashsale_journal::event_digest(&event)?.as_slice() != sha256.as_slice() {
        return Err(foreign(
            position,
            format!("the event at {at} in this journal has another SHA-256"),
        ));
    }
    Ok(())
}
