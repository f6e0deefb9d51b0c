//! `valet projections rebuild [--verify]`: replays the whole log into a scratch schema,
//! then either replaces the live read models with it or compares the two.
//!
//! The scratch schema is built on its own connection whose search_path points at it, so
//! the very same projection code writes there. Each batch commits together with its
//! progress row: a rebuild killed mid-batch resumes from the last committed batch and
//! ends with the same tables as one that never stopped.

use std::time::Instant;

use deadpool_postgres::Pool;
use valet_app::{LogCursor, RecordedEvent, ReplayEvent, StoreError};
use valet_store::{recorded_row, PgEventStore, SnapshotScope, EVENT_COLUMNS};

use crate::db_error;
use crate::project::{apply_batch, apply_deferred, fold, EarlierRows, Folded, DEFERRED_TABLES};

/// Where rebuilt read models are assembled.
pub const SCRATCH_SCHEMA: &str = "valet_rebuild";

/// The projected tables, parents before children. (`user_credentials` and
/// `server_secrets` are not projections: they are not in the log.)
pub const READ_MODEL_TABLES: [&str; 7] = [
    "clients",
    "users",
    "grants",
    "access_tokens",
    "refresh_tokens",
    "consents",
    "sessions",
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
    // One rebuild at a time: a second would resume from the first one's progress.
    let _lock = store
        .try_lock(REBUILD_LOCK)
        .await?
        .ok_or_else(|| StoreError::Unavailable("another projections rebuild is running".into()))?;
    let resume = prepare_scratch(&admin).await?;
    let scratch = scratch_pool(store)?;
    let total: i64 = admin
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let resumed_from = resume.as_ref().map_or(0, |r| r.applied);
    let mut applied = resumed_from;
    progress(applied, total as u64);

    // The bulk: every event of one snapshot S (no waiting for the commit horizon: what
    // S shows is final). A resumed run reads what S showed after its cursor.
    // Each batch is folded into rows where it is decoded (CPU), while this loop writes
    // the previous one (PostgreSQL).
    let to_rows = |events: Vec<ReplayEvent>| {
        let last = events.last().map(ReplayEvent::cursor);
        let count = events.len() as u64;
        let folded = fold(events.iter().map(|e| (&e.stream, &e.event)));
        (folded, count, last)
    };
    let read = match &resume {
        Some(r) => {
            let scope = SnapshotScope::VisibleIn {
                snapshot: r.snapshot.clone(),
                after: r.cursor,
            };
            store.read_snapshot(scope, batch, to_rows).await?
        }
        None => {
            store
                .read_snapshot(SnapshotScope::All, batch, to_rows)
                .await?
        }
    };
    let snapshot = match &resume {
        Some(r) => r.snapshot.clone(),
        None => read.snapshot.clone(),
    };
    admin
        .execute(
            &format!("UPDATE {SCRATCH_SCHEMA}.rebuild_progress SET snapshot = $1"),
            &[&snapshot],
        )
        .await
        .map_err(db_error)?;
    let mut batches = read.batches;
    while let Some(batch) = batches.recv().await {
        let (batch, count, last) = batch?;
        let Some(last) = last else {
            break;
        };
        commit_batch(&scratch, batch, applied, count, last).await?;
        applied += count;
        progress(applied, (total as u64).max(applied));
    }

    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "rebuild: bulk replayed"
    );
    // The tail: in one REPEATABLE READ snapshot, apply what committed after S and then
    // replace or compare. Events and live read models commit together, so this snapshot
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
    let live_digests = match mode {
        RebuildMode::Replace => {
            // Hold writers off while the live tables are swapped (appends take ROW
            // EXCLUSIVE).
            tx.batch_execute("LOCK TABLE public.events IN EXCLUSIVE MODE")
                .await
                .map_err(db_error)?;
            None
        }
        RebuildMode::Verify => {
            // This first statement fixes the transaction's snapshot; another connection
            // takes the same one and digests the live tables meanwhile (on the other
            // core), while this one applies the tail and digests the rebuild.
            let snapshot: String = tx
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .map_err(db_error)?
                .get(0);
            Some(tokio::spawn(digests_in(store.clone(), snapshot)))
        }
    };
    let tail = tx
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM public.events
                 WHERE xact >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint
                   AND NOT pg_visible_in_snapshot(xact::text::xid8, $1::text::pg_snapshot)
                 ORDER BY xact, position"
            ),
            &[&snapshot],
        )
        .await
        .map_err(db_error)?;
    let tail: Vec<RecordedEvent> = tail.iter().map(recorded_row).collect::<Result<_, _>>()?;
    for chunk in tail.chunks(batch.max(1)) {
        let seq = applied as i64;
        applied += chunk.len() as u64;
        let events = chunk.iter().map(|e| (&e.stream, &e.event));
        apply_batch(&tx, events, EarlierRows::Defer { seq }).await?;
    }
    apply_deferred(&tx).await?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "rebuild: tail applied"
    );
    let differences = match live_digests {
        Some(live) => {
            let live = live
                .await
                .map_err(|e| StoreError::Unavailable(format!("live digests: {e}")))??;
            compare(&tx, &live).await?
        }
        None => {
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
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "rebuild: compared or swapped"
    );
    drop(client);
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE"))
        .await
        .map_err(db_error)?;
    if applied != total as u64 {
        progress(applied, applied);
    }
    Ok(RebuildReport {
        events: applied,
        resumed_from,
        seconds: started.elapsed().as_secs_f64(),
        differences,
    })
}

/// Where an interrupted rebuild stopped.
struct Resume {
    snapshot: String,
    cursor: LogCursor,
    applied: u64,
}

/// The lease that keeps rebuilds from running twice at once.
const REBUILD_LOCK: &str = "projections-rebuild";

/// Creates the scratch schema, or finds an interrupted rebuild to resume.
async fn prepare_scratch(admin: &deadpool_postgres::Client) -> Result<Option<Resume>, StoreError> {
    let resumable = admin
        .query_opt(
            &format!(
                "SELECT snapshot, xact, position, applied FROM {SCRATCH_SCHEMA}.rebuild_progress
                 WHERE snapshot IS NOT NULL"
            ),
            &[],
        )
        .await
        .ok()
        .flatten();
    if let Some(row) = resumable {
        return Ok(Some(Resume {
            snapshot: row.get(0),
            cursor: LogCursor {
                xact: row.get(1),
                position: row.get(2),
            },
            applied: row.get::<_, i64>(3) as u64,
        }));
    }
    let mut sql =
        format!("DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE; CREATE SCHEMA {SCRATCH_SCHEMA};");
    for table in READ_MODEL_TABLES {
        // UNLOGGED: the scratch copy needs no crash safety (after a server crash the
        // tables and the progress row are emptied together and the rebuild starts over),
        // and skipping WAL halves the work of a replay. LIKE copies columns, defaults
        // and checks, so the scratch tables follow every migration.
        //
        // Indexes: the token tables get none. Maintaining them was most of a rebuild's
        // work, and nothing needs them: changes to earlier rows are deferred (see
        // `EarlierRows::Defer`) and applied with hash joins, and the comparison scans.
        // The small tables keep theirs (consents are upserted), and grants keep their
        // primary key, by which a batch finds the owners of earlier grants.
        let like = match table {
            "access_tokens" | "refresh_tokens" | "grants" => {
                "INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            }
            _ => "INCLUDING ALL",
        };
        sql.push_str(&format!(
            "CREATE UNLOGGED TABLE {SCRATCH_SCHEMA}.{table} (LIKE public.{table} {like});"
        ));
    }
    sql.push_str(&format!(
        "ALTER TABLE {SCRATCH_SCHEMA}.grants ADD PRIMARY KEY (grant_id);
         SET search_path = {SCRATCH_SCHEMA}; {DEFERRED_TABLES} RESET search_path;"
    ));
    sql.push_str(&format!(
        "CREATE UNLOGGED TABLE {SCRATCH_SCHEMA}.rebuild_progress (
             snapshot TEXT, xact BIGINT NOT NULL, position BIGINT NOT NULL, applied BIGINT NOT NULL);
         INSERT INTO {SCRATCH_SCHEMA}.rebuild_progress VALUES (NULL, 0, 0, 0);"
    ));
    admin.batch_execute(&sql).await.map_err(db_error)?;
    Ok(None)
}

/// A pool of one connection whose unqualified table names resolve to the scratch schema.
fn scratch_pool(store: &PgEventStore) -> Result<Pool, StoreError> {
    // Batches need not wait for the WAL flush: the scratch tables are unlogged anyway.
    let endpoint = store.endpoint().with_config(|config| {
        valet_store::with_options(
            config,
            &format!("-c search_path={SCRATCH_SCHEMA} -c synchronous_commit=off"),
        )
    });
    valet_store::new_pool(&endpoint, 1)
}

async fn commit_batch(
    scratch: &Pool,
    batch: Folded,
    applied: u64,
    count: u64,
    last: LogCursor,
) -> Result<(), StoreError> {
    let count = count as i64;
    let mut client = scratch
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let tx = client.transaction().await.map_err(db_error)?;
    let seq = applied as i64;
    batch.write_scratch(&tx, seq).await?;
    tx.execute(
        "UPDATE rebuild_progress SET xact = $1, position = $2, applied = applied + $3",
        &[&last.xact, &last.position, &count],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)
}

/// An order-independent digest of a table: its row count and the XOR of 64-bit row
/// hashes (a row and its duplicate cancel out in the XOR, but not in the count). One
/// scan, no sort, no formatting of rows as text.
fn digest_sql(schema: &str, table: &str) -> String {
    format!(
        "SELECT count(*)::text || ':' || coalesce(bit_xor(hash_record_extended(t, 0)), 0)::text
         FROM {schema}.{table} t"
    )
}

/// The digests of the live tables in an exported snapshot, on a connection of its own.
async fn digests_in(store: PgEventStore, snapshot: String) -> Result<Vec<String>, StoreError> {
    let mut client = store
        .pool()
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_error)?;
    // The snapshot id is PostgreSQL's own output; quote it all the same.
    let quoted = snapshot.replace('\'', "''");
    tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{quoted}'"))
        .await
        .map_err(db_error)?;
    let mut digests = Vec::with_capacity(READ_MODEL_TABLES.len());
    for table in READ_MODEL_TABLES {
        let row = tx
            .query_one(&digest_sql("public", table), &[])
            .await
            .map_err(db_error)?;
        digests.push(row.get(0));
    }
    tx.commit().await.map_err(db_error)?;
    Ok(digests)
}

/// Compares the rebuild with the live tables, whose digests (in READ_MODEL_TABLES
/// order) were taken in this transaction's snapshot. Only tables whose digests differ
/// get the row-by-row comparison.
async fn compare(
    tx: &deadpool_postgres::Transaction<'_>,
    live_digests: &[String],
) -> Result<Vec<TableDiff>, StoreError> {
    let mut differences = Vec::new();
    for (table, live_digest) in READ_MODEL_TABLES.into_iter().zip(live_digests) {
        let rebuilt_digest: String = tx
            .query_one(&digest_sql(SCRATCH_SCHEMA, table), &[])
            .await
            .map_err(db_error)?
            .get(0);
        if *live_digest == rebuilt_digest {
            continue;
        }
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
