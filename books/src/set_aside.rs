//! Reading the journal in batches, and setting aside the events Postgres
//! refuses (bisecting a batch to the one event at fault).

use std::sync::atomic::Ordering;

use flashsale_engine::Event;
use flashsale_journal::JournalReader;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use crate::apply::{Waiting, apply};
use crate::config::OrderSinkConfig;
use crate::error::OrderSinkError;
use crate::progress::{Progress, Source};
use crate::sink::{error_chain, timed};
use crate::status::Status;
use crate::tables::Batch;

/// Durable events read from the journal: the last position, the events
/// (kept to be set aside one by one if Postgres refuses the batch), and
/// the batch encoded (or why the encoder refused it).
pub(crate) type ReadEvents = (u64, Vec<(u64, Event)>, Result<Batch, OrderSinkError>);
pub(crate) type ReadBatch = (JournalReader, Result<Option<ReadEvents>, OrderSinkError>);

/// Reads up to `max` durable events (to `upto`) on a blocking thread and
/// encodes them; `None` when nothing new is durable.
pub(crate) fn read_batch(
    mut reader: JournalReader,
    max: usize,
    upto: u64,
    deployment: &str,
) -> tokio::task::JoinHandle<ReadBatch> {
    let deployment = deployment.to_owned();
    tokio::task::spawn_blocking(move || {
        let read = reader
            .next_batch(max, upto)
            .map_err(OrderSinkError::from)
            .map(|events| {
                let last = events.last()?.0;
                let batch = Batch::from_events(&events, &deployment);
                Some((last, events, batch))
            });
        (reader, read)
    })
}

/// Applies `events` (the positions after `from`), encoded as `batch`. If
/// Postgres refuses the rows for their content ([`OrderSinkError::is_content`]),
/// retrying would fail forever and stop every later order reaching the
/// books: the events are split in halves and applied again, down to the
/// single event Postgres refuses, which is set aside ([`set_aside`]) with
/// the reason; the rest go in. Past [`OrderSinkConfig::set_aside_max`]
/// events set aside, the error is returned instead. A refusal costs about 2·log2(batch) extra
/// transactions, once. Any other error (connection, timeout) is returned
/// and the batch is retried whole. Returns the positions of the events
/// that wait for their deal's row ([`apply`]; none from the journal).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_or_set_aside(
    conn: &mut PgConnection,
    config: &OrderSinkConfig,
    status: &Status,
    deployment: &str,
    source: Source<'_>,
    mut from: u64,
    events: &[(u64, Event)],
    batch: Result<Batch, OrderSinkError>,
) -> Result<Waiting, OrderSinkError> {
    let mut waiting = Waiting::new();
    let mut first = Some(batch);
    // Slices still to apply, the next on top.
    let mut pending = vec![events];
    while let Some(slice) = pending.pop() {
        let (Some((last, last_event)), Some((position, event))) = (slice.last(), slice.first())
        else {
            continue;
        };
        let (last, position) = (*last, *position);
        let batch = match first.take() {
            Some(batch) => batch,
            None => Batch::from_events(slice, deployment),
        };
        let progress = Progress {
            source,
            from,
            to: last,
            last: Some(last_event),
        };
        let applied = match batch {
            Ok(batch) => {
                timed(
                    config.batch_timeout,
                    apply(conn, status, deployment, progress, &batch),
                )
                .await
            }
            Err(error) => Err(error),
        };
        match applied {
            Ok(waits) => {
                waiting.extend(waits);
                from = last;
            }
            Err(OrderSinkError::AlreadyApplied) => from = last,
            Err(error)
                if error.is_content()
                    && status.set_aside.load(Ordering::Relaxed) >= config.set_aside_max =>
            {
                return Err(error);
            }
            Err(error) if error.is_content() && slice.len() == 1 => {
                let progress = Progress {
                    source,
                    from,
                    to: position,
                    last: Some(event),
                };
                timed(
                    config.batch_timeout,
                    set_aside(conn, status, deployment, progress, event, &error),
                )
                .await?;
                from = last;
            }
            Err(error) if error.is_content() => {
                let (front, back) = slice.split_at(slice.len() / 2);
                pending.push(back);
                pending.push(front);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(waiting)
}

/// Escapes control characters (NUL above all), so any text can be stored.
pub(crate) fn printable(text: &str) -> String {
    text.escape_debug().to_string()
}

/// Sets one event (at `progress.to`, the one after `progress.from`) aside:
/// records it in `order_sink_set_aside` with `reason` under its origin (the
/// journal's id, or the stream's key and its entry id packed by
/// [`streams::position`]) and records the progress past it, in one transaction;
/// counts it (`flashsale_order_sink_set_aside_total`, and
/// `flashsale_order_sink_conflicts_total` for a conflicting row) and
/// logs it. `/readyz` names the last one.
pub(crate) async fn set_aside(
    conn: &mut PgConnection,
    status: &Status,
    deployment: &str,
    progress: Progress<'_>,
    event: &(dyn std::fmt::Debug + Sync),
    reason: &OrderSinkError,
) -> Result<(), OrderSinkError> {
    let position = progress.to;
    let (origin, origin_position) = progress.origin(position);
    let conflict = matches!(reason, OrderSinkError::Conflict { .. });
    let reason = printable(&error_chain(reason));
    let event_text = printable(&format!("{event:?}"));
    let mut tx = conn.begin().await?;
    tx.execute(
        sqlx::query(
            "INSERT INTO order_sink_set_aside (journal_id, position, reason, event) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (journal_id, position) DO NOTHING",
        )
        .bind(origin)
        .bind(origin_position as i64)
        .bind(&reason)
        .bind(&event_text),
    )
    .await?;
    progress.record(&mut tx, deployment).await?;
    tx.commit().await?;
    status.set_aside.fetch_add(1, Ordering::Relaxed);
    status.counters.set_aside.increment(1);
    if conflict {
        status.conflicts.fetch_add(1, Ordering::Relaxed);
        status.counters.conflicts.increment(1);
    }
    tracing::error!(
        origin,
        position = origin_position,
        event = %event_text,
        %reason,
        "order sink: Postgres refused an event's rows; set aside in order_sink_set_aside"
    );
    *status.last_set_aside.lock() = Some(format!("{origin} position {origin_position}: {reason}"));
    Ok(())
}
