//! `valet projections rebuild [--verify]`: replays the whole log into a scratch schema,
//! then either replaces the live read models with it or compares the two.
//!
//! The scratch schema is built on its own connection whose search_path points at it, so
//! the very same projection code writes there. Each batch commits together with its
//! progress row: a rebuild killed mid-batch resumes from the last committed batch and
//! ends with the same tables as one that never stopped.

use std::time::Instant;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use valet_app::{LogCursor, RecordedEvent, StoreError};
use valet_store::PgEventStore;

use crate::db_error;
use crate::project::apply_batch;

/// Where rebuilt read models are assembled.
pub const SCRATCH_SCHEMA: &str = "valet_rebuild";

/// The projected tables, parents before children. (`user_credentials` and
/// `server_secrets` are not projections: they are not in the log.)
pub const READ_MODEL_TABLES: [&str; 6] = [
    "clients",
    "users",
    "grants",
    "access_tokens",
    "refresh_tokens",
    "consents",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildMode {
    /// Replace the live read models with the rebuilt ones.
    Replace,
    /// Only compare: the live read models are left as they are.
    Verify,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDiff {
    pub table: &'static str,
    /// Rows in the live table that the rebuild does not have.
    pub only_live: i64,
    /// Rows the rebuild has that the live table lacks.
    pub only_rebuilt: i64,
    /// A few differing rows as JSON, prefixed with `live:` or `rebuilt:`.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub events: u64,
    /// Events already applied by an interrupted run that this one resumed.
    pub resumed_from: u64,
    pub seconds: f64,
    pub differences: Vec<TableDiff>,
}

/// Progress callback: (events applied so far, events in the log).
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

pub async fn rebuild(
    store: &PgEventStore,
    mode: RebuildMode,
    batch: usize,
    progress: Progress<'_>,
) -> Result<RebuildReport, StoreError> {
    let started = Instant::now();
    let admin = store
        .pool()
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let (mut cursor, resumed_from) = prepare_scratch(&admin).await?;
    let scratch = scratch_pool(store)?;
    let total: i64 = admin
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let mut applied = resumed_from;
    progress(applied, total as u64);
    let mut batches = valet_app::read_ahead(store.clone(), cursor, batch);
    while let Some(events) = batches.recv().await {
        let events = events?;
        let Some(last) = events.last().map(RecordedEvent::cursor) else {
            break;
        };
        let count = events.len() as u64;
        commit_batch(&scratch, events, last).await?;
        cursor = last;
        applied += count;
        progress(applied, (total as u64).max(applied));
    }

    // The tail: in one REPEATABLE READ snapshot, apply what committed since and then
    // replace or compare. Events and live read models commit together, so the snapshot
    // sees both at the same point of the log.
    let mut client = scratch
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(db_error)?;
    if mode == RebuildMode::Replace {
        // Hold writers off while the live tables are swapped (appends take ROW EXCLUSIVE).
        tx.batch_execute("LOCK TABLE public.events IN EXCLUSIVE MODE")
            .await
            .map_err(db_error)?;
    }
    let tail = tx
        .query(
            "SELECT position, xact, event_id, stream_id, stream_version, event_type, schema_version,
                    payload, metadata, 0::bigint
             FROM public.events WHERE (xact, position) > ($1, $2) ORDER BY xact, position",
            &[&cursor.xact, &cursor.position],
        )
        .await
        .map_err(db_error)?;
    let mut tail: Vec<RecordedEvent> = tail.iter().map(tail_event).collect::<Result<_, _>>()?;
    while !tail.is_empty() {
        let rest = tail.split_off(tail.len().min(batch.max(1)));
        applied += tail.len() as u64;
        apply_batch(&tx, std::mem::replace(&mut tail, rest)).await?;
    }
    let differences = match mode {
        RebuildMode::Verify => compare(&tx).await?,
        RebuildMode::Replace => {
            for table in READ_MODEL_TABLES.iter().rev() {
                tx.batch_execute(&format!("DELETE FROM public.{table}"))
                    .await
                    .map_err(db_error)?;
            }
            for table in READ_MODEL_TABLES {
                tx.batch_execute(&format!(
                    "INSERT INTO public.{table} SELECT * FROM {SCRATCH_SCHEMA}.{table}"
                ))
                .await
                .map_err(db_error)?;
            }
            Vec::new()
        }
    };
    tx.commit().await.map_err(db_error)?;
    drop(client);
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE"))
        .await
        .map_err(db_error)?;
    progress(applied, applied);
    Ok(RebuildReport {
        events: applied,
        resumed_from,
        seconds: started.elapsed().as_secs_f64(),
        differences,
    })
}

/// Creates the scratch schema, or finds an interrupted one to resume.
async fn prepare_scratch(
    admin: &deadpool_postgres::Client,
) -> Result<(LogCursor, u64), StoreError> {
    let resumable = admin
        .query_opt(
            &format!("SELECT xact, position, applied FROM {SCRATCH_SCHEMA}.rebuild_progress"),
            &[],
        )
        .await
        .ok()
        .flatten();
    if let Some(row) = resumable {
        let cursor = LogCursor {
            xact: row.get(0),
            position: row.get(1),
        };
        return Ok((cursor, row.get::<_, i64>(2) as u64));
    }
    let mut sql =
        format!("DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE; CREATE SCHEMA {SCRATCH_SCHEMA};");
    for table in READ_MODEL_TABLES {
        // LIKE copies columns, defaults, checks and indexes, so the scratch tables
        // follow every migration of the live ones.
        // UNLOGGED: the scratch copy needs no crash safety (an interrupted rebuild
        // resumes from its progress row, or starts over), and skipping WAL halves the
        // work of a replay.
        sql.push_str(&format!(
            "CREATE UNLOGGED TABLE {SCRATCH_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL);"
        ));
    }
    sql.push_str(&format!(
        "CREATE TABLE {SCRATCH_SCHEMA}.rebuild_progress (xact BIGINT NOT NULL, position BIGINT NOT NULL, applied BIGINT NOT NULL);
         INSERT INTO {SCRATCH_SCHEMA}.rebuild_progress VALUES (0, 0, 0);"
    ));
    admin.batch_execute(&sql).await.map_err(db_error)?;
    Ok((LogCursor::START, 0))
}

/// A pool of one connection whose unqualified table names resolve to the scratch schema.
fn scratch_pool(store: &PgEventStore) -> Result<Pool, StoreError> {
    let mut config = store.config().clone();
    // Batches need not wait for the WAL flush: the scratch tables are unlogged anyway.
    config.options(format!(
        "-c search_path={SCRATCH_SCHEMA} -c synchronous_commit=off"
    ));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(1)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

async fn commit_batch(
    scratch: &Pool,
    events: Vec<RecordedEvent>,
    last: LogCursor,
) -> Result<(), StoreError> {
    let count = events.len() as i64;
    let mut client = scratch
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let tx = client.transaction().await.map_err(db_error)?;
    apply_batch(&tx, events).await?;
    tx.execute(
        "UPDATE rebuild_progress SET xact = $1, position = $2, applied = applied + $3",
        &[&last.xact, &last.position, &count],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)
}

fn tail_event(row: &tokio_postgres::Row) -> Result<RecordedEvent, StoreError> {
    let malformed = |e: tokio_postgres::Error| StoreError::Malformed(e.to_string());
    Ok(RecordedEvent {
        position: row.try_get(0).map_err(malformed)?,
        xact: row.try_get(1).map_err(malformed)?,
        event_id: row.try_get(2).map_err(malformed)?,
        stream_id: row.try_get(3).map_err(malformed)?,
        stream_version: valet_app::StreamVersion(
            row.try_get::<_, i64>(4).map_err(malformed)? as u64
        ),
        event_type: row.try_get(5).map_err(malformed)?,
        schema_version: row.try_get::<_, i32>(6).map_err(malformed)? as u32,
        payload: row.try_get(7).map_err(malformed)?,
        metadata: Default::default(),
        recorded_at_micros: 0,
    })
}

async fn compare(tx: &deadpool_postgres::Transaction<'_>) -> Result<Vec<TableDiff>, StoreError> {
    let mut differences = Vec::new();
    for table in READ_MODEL_TABLES {
        let live = format!("SELECT * FROM public.{table}");
        let rebuilt = format!("SELECT * FROM {SCRATCH_SCHEMA}.{table}");
        let count = |a: &str, b: &str| format!("SELECT count(*) FROM ({a} EXCEPT ALL {b}) d");
        let only_live: i64 = tx
            .query_one(&count(&live, &rebuilt), &[])
            .await
            .map_err(db_error)?
            .get(0);
        let only_rebuilt: i64 = tx
            .query_one(&count(&rebuilt, &live), &[])
            .await
            .map_err(db_error)?
            .get(0);
        if only_live == 0 && only_rebuilt == 0 {
            continue;
        }
        let sample = |a: &str, b: &str| {
            format!("SELECT row_to_json(d)::text FROM ({a} EXCEPT ALL {b}) d LIMIT 5")
        };
        let mut samples = Vec::new();
        for (label, a, b) in [("live", &live, &rebuilt), ("rebuilt", &rebuilt, &live)] {
            for row in tx.query(&sample(a, b), &[]).await.map_err(db_error)? {
                samples.push(format!("{label}: {}", row.get::<_, String>(0)));
            }
        }
        differences.push(TableDiff {
            table,
            only_live,
            only_rebuilt,
            samples,
        });
    }
    Ok(differences)
}
