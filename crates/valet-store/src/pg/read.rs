//! Reading the log: a stream, the log in commit-safe order after a cursor, and whole
//! snapshots for replays.

use deadpool_postgres::GenericClient;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use valet_app::{LogCursor, RecordedEvent, ReplayEvent, Scanned, StoreError, StreamVersion};
use valet_domain::StreamId;

use super::errors::{db_error, unavailable};
use super::rows::{recorded_row, replay_row, EVENT_COLUMNS, REPLAY_COLUMNS};
use super::PgEventStore;

/// Which events of a snapshot [`PgEventStore::read_snapshot`] streams.
#[derive(Debug, Clone)]
pub enum SnapshotScope {
    All,
    /// Those visible in an earlier snapshot, after a cursor (resuming a replay).
    VisibleIn {
        snapshot: String,
        after: LogCursor,
    },
}

/// A snapshot (as `pg_snapshot` text) and what the caller's `map` made of each batch of
/// the events read in it, in order.
pub struct SnapshotRead<T> {
    pub snapshot: String,
    pub batches: mpsc::Receiver<Result<T, StoreError>>,
}

const VERSION_SQL: &str =
    "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1";

/// The version a stream is at (0 when it does not exist).
pub(super) async fn current_version<C: GenericClient + Sync>(
    client: &C,
    stream: &StreamId,
) -> Result<StreamVersion, StoreError> {
    let statement = client.prepare_cached(VERSION_SQL).await.map_err(db_error)?;
    let row = client
        .query_one(&statement, &[&stream.to_string()])
        .await
        .map_err(db_error)?;
    Ok(StreamVersion(row.get::<_, i64>(0) as u64))
}

/// How many committed events follow `after` in commit order (an index range count).
pub(super) async fn count_after<C: GenericClient + Sync>(
    client: &C,
    after: LogCursor,
) -> Result<u64, StoreError> {
    let statement = client
        .prepare_cached("SELECT count(*) FROM events WHERE (xact, position) > ($1, $2)")
        .await
        .map_err(db_error)?;
    let row = client
        .query_one(&statement, &[&after.xact, &after.position])
        .await
        .map_err(db_error)?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Where the event `event_id` sits in the log (the `events_event_id_key` index).
pub(super) async fn cursor_of<C: GenericClient + Sync>(
    client: &C,
    event_id: uuid::Uuid,
) -> Result<Option<LogCursor>, StoreError> {
    let statement = client
        .prepare_cached("SELECT xact, position FROM events WHERE event_id = $1")
        .await
        .map_err(db_error)?;
    let row = client
        .query_opt(&statement, &[&event_id])
        .await
        .map_err(db_error)?;
    Ok(row.map(|row| LogCursor {
        xact: row.get(0),
        position: row.get(1),
    }))
}

pub(super) async fn read_stream<C: GenericClient + Sync>(
    client: &C,
    stream: &StreamId,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql =
        format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version");
    let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
    let rows = client
        .query(&statement, &[&stream.to_string()])
        .await
        .map_err(db_error)?;
    rows.iter().map(recorded_row).collect()
}

impl PgEventStore {
    /// `columns` of the events after `after` in commit-safe order, at most `limit`.
    async fn read_log_rows(
        &self,
        columns: &str,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        // Only transactions below the snapshot's xmin are finished: everything they wrote
        // is visible now and nothing can ever commit below them again.
        let sql = format!(
            "SELECT {columns} FROM events
             WHERE (xact, position) > ($1, $2)
               AND xact < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
             ORDER BY xact, position
             LIMIT $3"
        );
        let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .query(&statement, &[&after.xact, &after.position, &limit])
            .await
            .map_err(db_error)
    }

    pub(super) async fn read_log_recorded(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = self.read_log_rows(EVENT_COLUMNS, after, limit).await?;
        rows.iter().map(recorded_row).collect()
    }

    pub(super) async fn read_log_lean(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        let rows = self.read_log_rows(REPLAY_COLUMNS, after, limit).await?;
        rows.iter().map(replay_row).collect()
    }

    /// The events of `types` after `after` in commit-safe order, and how far the read
    /// got: PostgreSQL skips the other events (an index range scan with a filter), so
    /// they are neither sent nor decoded.
    pub(super) async fn read_log_filtered(
        &self,
        after: LogCursor,
        limit: usize,
        types: &'static [&'static str],
    ) -> Result<Vec<Scanned>, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        // One round trip: the horizon (everything below it is final, so a read that
        // returns fewer than `limit` events has seen all of it) and the events below it;
        // a single row of NULL events and the horizon when there are none.
        let sql = format!(
            "WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS x)
             SELECT e.*, h.x FROM h LEFT JOIN LATERAL (
                 SELECT {REPLAY_COLUMNS} FROM events
                 WHERE (xact, position) > ($1, $2) AND xact < h.x AND event_type = ANY($4)
                 ORDER BY xact, position
                 LIMIT $3) e ON TRUE"
        );
        let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
        let wanted: Vec<&str> = types.to_vec();
        let rows = client
            .query(
                &statement,
                &[
                    &after.xact,
                    &after.position,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                    &wanted,
                ],
            )
            .await
            .map_err(db_error)?;
        let horizon: i64 = match rows.first() {
            Some(row) => row.try_get(8).map_err(db_error)?,
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if row
                .try_get::<_, Option<i64>>(0)
                .map_err(db_error)?
                .is_some()
            {
                out.push(Scanned::Event(Box::new(replay_row(row)?)));
            }
        }
        let full = out.len() >= limit;
        let scanned_to = LogCursor {
            xact: horizon - 1,
            position: i64::MAX,
        };
        if !full && scanned_to > after {
            out.push(Scanned::ScannedTo(scanned_to));
        }
        Ok(out)
    }

    /// Streams, in commit order, every event of one consistent snapshot of the log that
    /// falls in `scope`, `batch` events at a time. Unlike `read_log` it does not wait for
    /// the commit horizon: what a snapshot shows is final for that snapshot, which is
    /// what an audit or the bulk of a rebuild needs. The snapshot is returned (as
    /// `pg_snapshot` text) so a later read can take exactly what committed after it.
    ///
    /// Two background tasks, a batch or two ahead of the caller: one receives rows, the
    /// other decodes each batch (JSON, most of a replay's CPU) and hands it to `map` (the
    /// caller's fold), so that an event is decoded, folded and dropped on one thread.
    pub async fn read_snapshot<T, F>(
        &self,
        scope: SnapshotScope,
        batch: usize,
        mut map: F,
    ) -> Result<SnapshotRead<T>, StoreError>
    where
        T: Send + 'static,
        F: FnMut(Vec<ReplayEvent>) -> T + Send + 'static,
    {
        let mut client = self.inner.endpoint.connect().await.map_err(db_error)?;
        let batch = batch.max(1);
        let (tx_snapshot, rx_snapshot) = tokio::sync::oneshot::channel();
        let (rows_tx, mut rows_rx) = mpsc::channel::<Result<Vec<Row>, StoreError>>(2);
        tokio::spawn(async move {
            let result = async {
                let transaction = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(db_error)?;
                let snapshot: String = transaction
                    .query_one("SELECT pg_current_snapshot()::text", &[])
                    .await
                    .map_err(db_error)?
                    .get(0);
                let _ = tx_snapshot.send(snapshot);
                let (filter, params): (&str, Vec<Box<dyn ToSql + Sync + Send>>) = match scope {
                    SnapshotScope::All => ("TRUE", vec![]),
                    SnapshotScope::VisibleIn { snapshot, after } => (
                        "pg_visible_in_snapshot(xact::text::xid8, $1::text::pg_snapshot)
                         AND (xact, position) > ($2, $3)",
                        vec![
                            Box::new(snapshot),
                            Box::new(after.xact),
                            Box::new(after.position),
                        ],
                    ),
                };
                let sql = format!(
                    "SELECT {REPLAY_COLUMNS} FROM events WHERE {filter} ORDER BY xact, position"
                );
                let params: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p.as_ref() as _).collect();
                let rows = transaction
                    .query_raw(&sql, params)
                    .await
                    .map_err(db_error)?;
                futures_util::pin_mut!(rows);
                let mut pending = Vec::with_capacity(batch);
                while let Some(row) = rows.next().await {
                    pending.push(row.map_err(db_error)?);
                    if pending.len() >= batch {
                        let full = std::mem::replace(&mut pending, Vec::with_capacity(batch));
                        if rows_tx.send(Ok(full)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                if !pending.is_empty() {
                    let _ = rows_tx.send(Ok(pending)).await;
                }
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(error) = result {
                let _ = rows_tx.send(Err(error)).await;
            }
        });
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            while let Some(rows) = rows_rx.recv().await {
                let mapped = rows
                    .and_then(|rows| rows.iter().map(replay_row).collect())
                    .map(&mut map);
                let failed = mapped.is_err();
                if tx.send(mapped).await.is_err() || failed {
                    return;
                }
            }
        });
        let snapshot = rx_snapshot
            .await
            .map_err(|_| StoreError::Unavailable("the snapshot reader stopped".into()))?;
        Ok(SnapshotRead {
            snapshot,
            batches: rx,
        })
    }
}
