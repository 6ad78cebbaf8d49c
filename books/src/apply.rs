//! Writing a batch: the `COPY` fast path, the merge path for rows that may
//! already be there, and the conflict check.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use flashsale_engine::ReleaseReason;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::copy::CopyStream;
use crate::error::OrderSinkError;
use crate::progress::{Progress, Source};
use crate::status::Status;
use crate::tables::{Batch, Table, out_of_range};

/// Bytes per `CopyData` message: bounds the copy sqlx makes of a stream.
pub(crate) const COPY_CHUNK_BYTES: usize = 1 << 20;

/// How a batch's rows enter their tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Insert {
    /// `COPY` straight into the table: fails on a row already there.
    Copy,
    /// `COPY` into a temporary table, then `INSERT … ON CONFLICT (id) DO
    /// NOTHING`: skips rows already there.
    Merge,
}

pub(crate) async fn copy_in(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: &CopyStream,
) -> Result<(), OrderSinkError> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    for chunk in rows.bytes.chunks(COPY_CHUNK_BYTES) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// Inserts the batch's rows, the `insert` way.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    batch: &Batch,
    insert: Insert,
) -> Result<(), OrderSinkError> {
    for (table, rows) in batch.inserts() {
        if insert == Insert::Copy {
            copy_in(conn, table.name, table.columns, rows).await?;
            continue;
        }
        let stage = format!("order_sink_stage_{}", table.name);
        let columns = table.columns;
        conn.execute(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS \
             SELECT {columns} FROM {} WITH NO DATA",
            table.name
        )))
        .await?;
        copy_in(conn, &stage, columns, rows).await?;
        conn.execute(AssertSqlSafe(format!(
            "INSERT INTO {} ({columns}) SELECT {columns} FROM {stage} \
             ON CONFLICT (deployment_id, id) DO NOTHING",
            table.name
        )))
        .await?;
        check_no_conflict(conn, table, &stage).await?;
    }
    Ok(())
}

/// After a merge: every staged row that was already there must be the same
/// row, else [`OrderSinkError::Conflict`] with both versions (the first one
/// found).
pub(crate) async fn check_no_conflict(
    conn: &mut PgConnection,
    table: &Table,
    stage: &str,
) -> Result<(), OrderSinkError> {
    let ours: Vec<String> = table.fixed.iter().map(|c| format!("s.{c}")).collect();
    let theirs: Vec<String> = table.fixed.iter().map(|c| format!("t.{c}")).collect();
    let sql = format!(
        "SELECT s.id, row_to_json(s)::text, row_to_json(t)::text FROM {stage} s \
         JOIN {} t ON t.deployment_id = s.deployment_id AND t.id = s.id \
         WHERE ({}) IS DISTINCT FROM ({}) LIMIT 1",
        table.name,
        ours.join(", "),
        theirs.join(", "),
    );
    let conflict: Option<(String, String, String)> = sqlx::query_as(AssertSqlSafe(sql))
        .fetch_optional(&mut *conn)
        .await?;
    match conflict {
        None => Ok(()),
        Some((id, ours, theirs)) => Err(OrderSinkError::Conflict {
            table: table.name,
            id,
            ours,
            theirs,
        }),
    }
}

/// A row the batch would insert is already there (or twice in the batch).
pub(crate) fn is_duplicate(error: &OrderSinkError) -> bool {
    matches!(error, OrderSinkError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}

/// Milliseconds since the epoch (`$n::int8[]`) to `timestamptz`, exactly.
pub(crate) const MILLIS: &str = "timestamptz 'epoch' + interval '1 millisecond' *";

/// Positions of a batch's events that wait for their deal's row: a deal
/// change or a restock from a books stream read before the deal's creation
/// reached Postgres (Redis mode only; see the module doc, "Order").
pub(crate) type Waiting = Vec<u64>;

/// Writes one batch and records its `progress` in the same transaction:
/// by `COPY` ([`Insert::Copy`]) and, if a row was already there, again from
/// the start by [`Insert::Merge`]. A deal change updates its row only if
/// it is newer than the change the row has (`deals.change_version`).
/// Returns the positions of the events that wait for their deal's row
/// (never any from the journal, which holds a deal's creation before its
/// changes): a restock then commits nothing, not even its record.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    status: &Status,
    deployment: &str,
    progress: Progress<'_>,
    batch: &Batch,
) -> Result<Waiting, OrderSinkError> {
    let mut tx = conn.begin().await?;
    progress.record(&mut tx, deployment).await?;
    let copied = insert(&mut tx, batch, Insert::Copy).await;
    let mut tx = match copied {
        Err(error) if is_duplicate(&error) => {
            tx.rollback().await?;
            status.merged_batches.fetch_add(1, Ordering::Relaxed);
            status.counters.merged_batches.increment(1);
            tracing::info!(
                ?progress,
                "order sink: rows already in Postgres, applying the batch with ON CONFLICT DO NOTHING"
            );
            let mut tx = conn.begin().await?;
            progress.record(&mut tx, deployment).await?;
            insert(&mut tx, batch, Insert::Merge).await?;
            tx
        }
        copied => {
            copied?;
            tx
        }
    };
    if !batch.restocks.is_empty() {
        let restocks = batch.restocks.len();
        let (mut ids, mut versions) = (Vec::with_capacity(restocks), Vec::with_capacity(restocks));
        let mut added = Vec::with_capacity(restocks);
        for &(deal, position, quantity) in &batch.restocks {
            ids.push(deal.to_string());
            let version = progress.source.sequence(position);
            versions.push(i64::try_from(version).map_err(out_of_range("deals.restock_version"))?);
            added.push(i64::try_from(quantity).map_err(out_of_range("deals.stock_total"))?);
        }
        // From the journal a restock adds only if it is newer than the
        // last one the row has (a replay adds nothing twice); a books
        // entry is recorded once by `progress` instead, and its deal's
        // restocks arrive in any order. Rows only for deals that exist.
        let updated = tx
            .execute(
                sqlx::query(
                    "WITH t AS (SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[]) \
                         AS t(id, version, added)), \
                     sums AS (SELECT t.id, sum(t.added)::int8 AS added, max(t.version) AS version \
                         FROM t JOIN deals d ON d.deployment_id = $4 AND d.id = t.id \
                         WHERE NOT $5 OR t.version > d.restock_version GROUP BY t.id) \
                     UPDATE deals SET stock_total = deals.stock_total + sums.added, \
                         restock_version = CASE WHEN $5 THEN sums.version \
                             ELSE deals.restock_version END \
                     FROM sums WHERE deals.deployment_id = $4 AND deals.id = sums.id",
                )
                .bind(&ids)
                .bind(&versions)
                .bind(&added)
                .bind(deployment)
                .bind(matches!(progress.source, Source::Journal(_))),
            )
            .await?;
        if let Source::Restock { .. } = progress.source
            && updated.rows_affected() == 0
        {
            // Not recorded as applied: the entry stays pending until its
            // deal's row is there.
            tx.rollback().await?;
            return Ok(vec![progress.to]);
        }
    }
    let mut waiting = Waiting::new();
    if !batch.changes.is_empty() {
        let changes = batch.changes.len();
        let (mut ids, mut versions) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
        let (mut ends, mut paused) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
        let mut positions = HashMap::with_capacity(changes);
        for (deal, &(position, ends_at, is_paused)) in &batch.changes {
            let id = deal.to_string();
            let version = progress.source.sequence(position);
            versions.push(i64::try_from(version).map_err(out_of_range("deals.change_version"))?);
            ends.push(ends_at.millis());
            paused.push(is_paused);
            positions.insert(id.clone(), position);
            ids.push(id);
        }
        // The statement's snapshot is the one before its UPDATE: a row
        // missing there is missing after it.
        let sql = format!(
            "WITH t AS (SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::bool[]) \
                 AS t(id, version, ends_at, paused)), \
             changed AS (UPDATE deals SET ends_at = {MILLIS} t.ends_at, paused = t.paused, \
                 change_version = t.version FROM t \
                 WHERE deals.deployment_id = $5 AND deals.id = t.id \
                 AND deals.change_version < t.version) \
             SELECT t.id FROM t WHERE NOT EXISTS \
                 (SELECT 1 FROM deals WHERE deals.deployment_id = $5 AND deals.id = t.id)"
        );
        let missing: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(&ids)
            .bind(&versions)
            .bind(&ends)
            .bind(&paused)
            .bind(deployment)
            .fetch_all(&mut *tx)
            .await?;
        // The journal holds a deal's creation before its changes: a
        // missing row there is a creation set aside, and its changes have
        // nowhere to go, as before.
        if !matches!(progress.source, Source::Journal(_)) {
            waiting.extend(missing.iter().filter_map(|id| positions.get(id)));
        }
    }
    if !batch.endings.is_empty() {
        let mut holds = Vec::with_capacity(batch.endings.len());
        let mut ended = Vec::with_capacity(batch.endings.len());
        let mut at = Vec::with_capacity(batch.endings.len());
        for (hold, reason, when) in &batch.endings {
            holds.push(hold.to_string());
            ended.push(match reason {
                ReleaseReason::Released => "released",
                ReleaseReason::Expired => "expired",
            });
            at.push(when.millis());
        }
        // Setting the same values again is harmless: a batch applied twice
        // (its position lost) leaves the places as once.
        let sql = format!(
            "UPDATE draw_places SET ended = t.ended, ended_at = {MILLIS} t.at \
             FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS t(hold_id, ended, at) \
             WHERE draw_places.deployment_id = $4 AND draw_places.hold_id = t.hold_id"
        );
        update_from_arrays(&mut tx, sql, (holds, ended, at), deployment).await?;
    }
    tx.commit().await?;
    Ok(waiting)
}

/// Runs `sql`, an `UPDATE … FROM UNNEST($1, $2, $3)` of one batch, with
/// the three `columns` (one element per row) and the deployment as `$4`.
pub(crate) async fn update_from_arrays<A, B, C>(
    conn: &mut PgConnection,
    sql: String,
    columns: (A, B, C),
    deployment: &str,
) -> Result<(), OrderSinkError>
where
    A: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    B: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    C: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let (a, b, c) = columns;
    conn.execute(
        sqlx::query(AssertSqlSafe(sql))
            .bind(a)
            .bind(b)
            .bind(c)
            .bind(deployment),
    )
    .await?;
    Ok(())
}
