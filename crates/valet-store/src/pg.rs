//! The PostgreSQL event store.
//!
//! Appends are one autocommit statement: the expected-version check and the insert happen
//! together, and the unique (stream_id, stream_version) index makes concurrent writers at
//! the same version collide, so no lock is held across commit and writers of different
//! streams never wait for each other.
//!
//! Wake-ups: writers do not NOTIFY inside their transaction, because PostgreSQL
//! serialises the commits of all notifying transactions on one global lock. Instead a
//! background task sends one NOTIFY after commits, coalescing bursts, and readers in the
//! same process are woken directly.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;
use valet_app::{
    AppendError, AppendOutcome, EventMetadata, EventStore, ExpectedVersion, LogCursor, NewEvent,
    RecordedEvent, ReplayEvent, StoreError, StreamVersion, StreamWrite,
};
use valet_domain::StreamId;

mod group;

const CHANNEL: &str = "valet_events";
/// Appends of at most this many streams are composed into one statement.
const COMPOSE_LIMIT: usize = 4;

/// Group-commit workers: groups being written at once. One: appends that arrive while
/// a group is written wait for the next, so groups are larger and PostgreSQL pays its
/// per-statement and per-commit costs less often; two backends inserting at once also
/// contend for the same right-most index pages and the WAL flush. /token did 7.2–7.6 k
/// rps against 6.0–6.7 k with two workers (five alternated pairs, 32 connections), with
/// about 12% less PostgreSQL CPU per token. The price: a long group (disabling a client
/// sweeps all of its live tokens) delays the appends queued behind it.
const GROUP_WORKERS: usize = 1;

/// The least time between two NOTIFYs of one process.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

const APPEND_SQL: &str = "
WITH cur AS (
    SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = $1
)
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT e.event_id, $1, cur.v + e.ord, e.event_type, e.schema_version, e.payload, e.metadata
FROM cur,
     unnest($3::uuid[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])
         WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, ord)
WHERE cur.v = $2
ORDER BY e.ord
RETURNING position, stream_version, xact, recorded_at";

/// APPEND_SQL for exactly one event.
const APPEND_ONE_SQL: &str = "
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT $3, $1, cur.v + 1, $4, $5, $6, $7
FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = $1) cur
WHERE cur.v = $2
RETURNING position, stream_version, xact, recorded_at";

const VERSION_SQL: &str =
    "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1";

pub const EVENT_COLUMNS: &str = "position, xact, event_id, stream_id, stream_version, event_type, \
     schema_version, payload, metadata, recorded_at";

/// The columns of a [`ReplayEvent`] (read by `replay_row`).
const REPLAY_COLUMNS: &str =
    "position, xact, event_id, stream_id, event_type, schema_version, payload::text, recorded_at";

#[derive(Debug, Clone)]
pub struct PgStoreConfig {
    pub database_url: String,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl PgStoreConfig {
    pub fn new(database_url: impl Into<String>) -> Self {
        PgStoreConfig {
            database_url: database_url.into(),
            pool_size: 16,
        }
    }
}

/// A pool of up to `size` connections, opened on first use.
pub fn new_pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Adds server settings (`-c name=value …`) to those the connection string already has.
pub fn with_options(config: &mut tokio_postgres::Config, options: &str) {
    let combined = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {options}"),
        _ => options.to_owned(),
    };
    config.options(combined);
}

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

/// A snapshot (as `pg_snapshot` text) and the batches of events read in it.
pub struct SnapshotRead {
    pub snapshot: String,
    pub batches: mpsc::Receiver<Result<Vec<ReplayEvent>, StoreError>>,
}

/// Cheap to clone; all clones share the pool and the wake-up machinery.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

/// Writes read-model rows inside the append's transaction, so a reader of the read
/// models sees exactly the committed log (read-your-writes).
///
/// Two phases, so the store can send the whole transaction at once: `plan` may read
/// (outside the transaction; it only reads what never changes) and prepares the
/// statements; the store then pipelines BEGIN, the inserts and the planned statements.
pub trait InlineProjection: Send + Sync + 'static {
    fn plan<'a>(
        &'a self,
        db: &'a deadpool_postgres::Client,
        events: Vec<RecordedEvent>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<Planned>, StoreError>> + Send + 'a>,
    >;
}

/// A data-modifying statement (INSERT, UPDATE or DELETE without RETURNING) and its
/// parameters (`$1`…), to be run in the append's statement or a caller's transaction.
pub struct Planned {
    pub sql: &'static str,
    pub params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
}

type Flight<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>,
>;

/// Drives `requests` to completion, polling them in order every time. tokio-postgres
/// sends a request when its future is first polled, so they reach PostgreSQL in this
/// order, all before the first answer comes back (one round trip for the lot).
async fn in_order(mut requests: Vec<Flight<'_>>) -> Vec<Result<Vec<Row>, tokio_postgres::Error>> {
    let mut done: Vec<Option<Result<Vec<Row>, tokio_postgres::Error>>> =
        requests.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (request, slot) in requests.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match request.as_mut().poll(cx) {
                    std::task::Poll::Ready(result) => *slot = Some(result),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Runs planned statements pipelined on `db` (e.g. inside a caller's transaction).
pub async fn execute_planned<C: GenericClient + Sync>(
    db: &C,
    planned: &[Planned],
) -> Result<(), StoreError> {
    let mut statements = Vec::with_capacity(planned.len());
    for p in planned {
        statements.push(db.prepare_cached(p.sql).await.map_err(db_error)?);
    }
    let requests: Vec<Flight<'_>> = planned
        .iter()
        .zip(&statements)
        .map(|(p, statement)| {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                p.params.iter().map(|x| x.as_ref() as _).collect();
            Box::pin(async move { db.query(statement, &params).await }) as Flight<'_>
        })
        .collect();
    for result in in_order(requests).await {
        result.map_err(db_error)?;
    }
    Ok(())
}

struct Inner {
    pool: Pool,
    config: tokio_postgres::Config,
    projection: Option<Arc<dyn InlineProjection>>,
    wake: Arc<watch::Sender<u64>>,
    notify_needed: Arc<Notify>,
    /// Appends with read models go through group commit (see `group`).
    group: mpsc::UnboundedSender<group::Job>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PgEventStore {
    /// Opens the pool and checks that the database answers.
    pub async fn connect(config: PgStoreConfig) -> Result<Self, StoreError> {
        Self::connect_with(config, None).await
    }

    /// Like [`connect`](Self::connect), with read models maintained in every append.
    pub async fn connect_with(
        config: PgStoreConfig,
        projection: Option<Arc<dyn InlineProjection>>,
    ) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = config
            .database_url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Unavailable(e.to_string()))?;
        // No JIT: PostgreSQL compiles a query's expressions anew at every execution once
        // its estimated cost passes `jit_above_cost`, which the log scans of a rebuild or
        // an audit do. Valet runs no query that JIT would speed up (on a rebuild of 1M
        // events it cost about 0.3 s of CPU, within the run-to-run noise here).
        with_options(&mut pg, "-c jit=off");
        let pool = new_pool(&pg, config.pool_size.max(2))?;
        drop(pool.get().await.map_err(unavailable)?);

        let wake = Arc::new(watch::channel(0u64).0);
        let notify_needed = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(listen_forever(pg.clone(), wake.clone())),
            tokio::spawn(notify_forever(pool.clone(), notify_needed.clone())),
        ];
        let (group, queue) = mpsc::unbounded_channel();
        group::start(
            group::Queue::new(queue),
            new_pool(&pg, GROUP_WORKERS)?,
            projection.clone(),
            GROUP_WORKERS,
        )?;
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool,
                config: pg.clone(),
                projection,
                wake,
                notify_needed,
                group,
                tasks,
            }),
        })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.inner.config
    }

    /// The same store (log, group commit, wake-ups) with a pool of its own of `size`
    /// connections. Connections are opened on first use, so a task on another runtime
    /// (the relay's thread) gets connections whose I/O that runtime drives.
    pub fn with_own_pool(&self, size: usize) -> Result<Self, StoreError> {
        let inner = &self.inner;
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool: new_pool(&inner.config, size.max(1))?,
                config: inner.config.clone(),
                projection: inner.projection.clone(),
                wake: inner.wake.clone(),
                notify_needed: inner.notify_needed.clone(),
                group: inner.group.clone(),
                // The original's tasks (LISTEN, NOTIFY) serve this one too.
                tasks: Vec::new(),
            }),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Tells readers that events were committed. `append` calls it; callers that append
    /// inside their own transaction with [`append_on`] call it after their commit.
    pub fn announce_commit(&self) {
        self.inner.wake.send_modify(|v| *v = v.wrapping_add(1));
        self.inner.notify_needed.notify_one();
    }

    /// Large multi-stream appends (bulk seeding, imports): a transaction with every
    /// insert and projection statement pipelined. (A statement with thousands of CTEs
    /// would spend longer being planned than executed.)
    async fn append_in_transaction(
        &self,
        client: &mut deadpool_postgres::Client,
        writes: &[StreamWrite],
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        let planned = plan_writes(client, self.inner.projection.as_deref(), writes).await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let appends = writes.iter().map(|write| {
            let tx = &tx;
            async move {
                if write.events.is_empty() {
                    check_version(tx, write).await
                } else {
                    append_on(tx, &write.stream, write.expected, &write.events).await
                }
            }
        });
        let outcomes = futures_util::future::try_join_all(appends).await?;
        execute_planned(&tx, &planned).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(outcomes)
    }
}

/// The projection's statements for the events of `writes` (none without a projection).
async fn plan_writes<'w>(
    client: &deadpool_postgres::Client,
    projection: Option<&dyn InlineProjection>,
    writes: impl IntoIterator<Item = &'w StreamWrite>,
) -> Result<Vec<Planned>, StoreError> {
    let Some(projection) = projection else {
        return Ok(Vec::new());
    };
    let provisional: Vec<RecordedEvent> = writes
        .into_iter()
        .flat_map(|w| w.events.iter().map(|e| provisional(&w.stream, e)))
        .collect();
    projection.plan(client, provisional).await
}

/// The planned statements as CTEs `p0 AS (…)`, `p1 AS (…)`… of a larger statement
/// whose parameters so far are `params`; theirs are appended.
fn embed_planned<'a>(
    planned: &'a [Planned],
    params: &mut Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>,
) -> Vec<String> {
    planned
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let cte = format!("p{j} AS ({})", renumber(p.sql, params.len()));
            params.extend(
                p.params
                    .iter()
                    .map(|x| x.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)),
            );
            cte
        })
        .collect()
}

/// The transactional append as ONE statement: a data-modifying CTE per stream (an
/// empty write only checks the version) and one per projection statement. A wrong
/// expected version raises `valet_version_conflict`, so nothing of it commits; no
/// BEGIN/COMMIT round trips, one plan per shape of append (cached).
async fn append_composed(
    client: &deadpool_postgres::Client,
    projection: Option<&dyn InlineProjection>,
    writes: &[StreamWrite],
) -> Result<Vec<AppendOutcome>, AppendError> {
    let planned = plan_writes(client, projection, writes).await?;
    let inputs: Vec<AppendInput> = writes
        .iter()
        .map(AppendInput::new)
        .collect::<Result<_, _>>()?;
    let mut sql = String::from("WITH ");
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    let mut outputs = Vec::new();
    for (i, (write, input)) in writes.iter().zip(&inputs).enumerate() {
        let n = params.len();
        if write.events.is_empty() {
            sql.push_str(&format!(
                    "w{i} AS (SELECT CASE WHEN v = ${e} THEN v ELSE valet_version_conflict(${s}, ${e}, v) END AS v
                     FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = ${s}) cur), ",
                    s = n + 1,
                    e = n + 2
                ));
            params.push(&input.stream);
            params.push(&input.expected);
            outputs.push(format!(
                "SELECT {i}, v, 0::bigint, 0::bigint, NULL::timestamptz FROM w{i}"
            ));
        } else if let [event] = write.events.as_slice() {
            // One event (the common case): plain parameters, no unnest.
            sql.push_str(&format!(
                    "w{i} AS (INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                     SELECT ${id}, ${s},
                            CASE WHEN cur.v = ${x} THEN cur.v + 1 ELSE valet_version_conflict(${s}, ${x}, cur.v) END,
                            ${t}, ${v}, ${p}, ${m}
                     FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = ${s}) cur
                     RETURNING position, stream_version, xact, recorded_at), ",
                    s = n + 1,
                    x = n + 2,
                    id = n + 3,
                    t = n + 4,
                    v = n + 5,
                    p = n + 6,
                    m = n + 7
                ));
            params.push(&input.stream);
            params.push(&input.expected);
            params.push(&event.event_id);
            params.push(&event.event_type);
            params.push(&input.versions[0]);
            params.push(&event.payload);
            params.push(&input.metadata[0]);
            outputs.push(format!(
                "SELECT {i}, position, stream_version, xact, recorded_at FROM w{i}"
            ));
        } else {
            sql.push_str(&format!(
                    "w{i} AS (INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                     SELECT e.event_id, ${s},
                            CASE WHEN cur.v = ${x} THEN cur.v + e.ord ELSE valet_version_conflict(${s}, ${x}, cur.v) END,
                            e.event_type, e.schema_version, e.payload, e.metadata
                     FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = ${s}) cur,
                          unnest(${a}::uuid[], ${b}::text[], ${c}::int4[], ${d}::jsonb[], ${f}::jsonb[])
                              WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, ord)
                     ORDER BY e.ord
                     RETURNING position, stream_version, xact, recorded_at), ",
                    s = n + 1,
                    x = n + 2,
                    a = n + 3,
                    b = n + 4,
                    c = n + 5,
                    d = n + 6,
                    f = n + 7
                ));
            params.extend(input.params());
            outputs.push(format!(
                "SELECT {i}, position, stream_version, xact, recorded_at FROM w{i}"
            ));
        }
    }
    for cte in embed_planned(&planned, &mut params) {
        sql.push_str(&cte);
        sql.push_str(", ");
    }
    sql.truncate(sql.len() - 2);
    sql.push(' ');
    sql.push_str(&outputs.join(" UNION ALL "));
    let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
    let rows = client
        .query(&statement, &params)
        .await
        .map_err(|e| conflict_or_error(e, writes))?;
    let mut outcomes = Vec::with_capacity(writes.len());
    for (i, write) in writes.iter().enumerate() {
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| r.get::<_, i32>(0) as usize == i)
            .collect();
        if write.events.is_empty() {
            outcomes.push(AppendOutcome {
                version: write.expected.as_version(),
                recorded: Vec::new(),
            });
        } else {
            if mine.len() != write.events.len() {
                return Err(
                    StoreError::Malformed("an append returned the wrong rows".into()).into(),
                );
            }
            let landed = mine
                .iter()
                .map(|r| (r.get(2), r.get(1), r.get(3), micros(r.get(4))))
                .collect();
            outcomes.push(recorded(
                &write.stream,
                write.expected.as_version(),
                write.events.iter().cloned(),
                landed,
            ));
        }
    }
    Ok(outcomes)
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

    /// Writes independent appends (each one a caller's `append_all`) with ONE statement,
    /// as group commit does with concurrent appends; if that fails, one at a time, so
    /// every append gets the answer it would have got alone. One result per append, in
    /// order. The appends must not write a stream another of them touches.
    pub async fn append_grouped(
        &self,
        appends: Vec<Vec<StreamWrite>>,
    ) -> Result<Vec<Result<Vec<AppendOutcome>, AppendError>>, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        let results = group::write_group(&client, self.inner.projection.as_deref(), appends).await;
        self.announce_commit();
        Ok(results)
    }

    /// Streams, in commit order, every event of one consistent snapshot of the log that
    /// falls in `scope`, `batch` events at a time, from a background task. Unlike
    /// `read_log` it does not wait for the commit horizon: what a snapshot shows is
    /// final for that snapshot, which is what an audit or the bulk of a rebuild needs.
    /// The snapshot is returned (as `pg_snapshot` text) so a later read can take exactly
    /// what committed after it.
    pub async fn read_snapshot(
        &self,
        scope: SnapshotScope,
        batch: usize,
    ) -> Result<SnapshotRead, StoreError> {
        let mut client = crate::connect(&self.inner.config).await.map_err(db_error)?;
        let (tx_snapshot, rx_snapshot) = tokio::sync::oneshot::channel();
        let (tx, rx) = mpsc::channel(2);
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
                let (filter, params): (
                    &str,
                    Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
                ) = match scope {
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
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p.as_ref() as _).collect();
                let rows = transaction
                    .query_raw(&sql, params)
                    .await
                    .map_err(db_error)?;
                futures_util::pin_mut!(rows);
                let mut events = Vec::with_capacity(batch);
                while let Some(row) = rows.next().await {
                    events.push(replay_row(&row.map_err(db_error)?)?);
                    if events.len() >= batch.max(1)
                        && tx.send(Ok(std::mem::take(&mut events))).await.is_err()
                    {
                        return Ok(());
                    }
                }
                if !events.is_empty() {
                    let _ = tx.send(Ok(events)).await;
                }
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(error) = result {
                let _ = tx.send(Err(error)).await;
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

    /// A 32-byte key shared by all replicas: the stored one, or `candidate` if this is
    /// the first process to ask (the caller draws it from the OS CSPRNG).
    pub async fn shared_secret(
        &self,
        name: &str,
        candidate: [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        client
            .execute(
                "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &candidate.as_slice()],
            )
            .await
            .map_err(db_error)?;
        let row = client
            .query_one("SELECT value FROM server_secrets WHERE name = $1", &[&name])
            .await
            .map_err(db_error)?;
        let value: &[u8] = row.get(0);
        value
            .try_into()
            .map_err(|_| StoreError::Malformed(format!("server secret {name} is not 32 bytes")))
    }

    /// The current version of a stream (0 when it does not exist).
    pub async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        current_version(&client, stream.as_str()).await
    }
}

/// Appends inside the caller's connection or transaction, so read-model rows can be
/// written atomically with the events. The caller announces the commit.
pub async fn append_on<C: GenericClient + Sync>(
    client: &C,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, AppendError> {
    let input = AppendInput::of(stream, expected, events)?;
    let rows = if let [event] = events {
        // The common case (one event, e.g. a token issued) without array parameters.
        let statement = client
            .prepare_cached(APPEND_ONE_SQL)
            .await
            .map_err(db_error)?;
        let metadata = &input.metadata[0];
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &input.stream,
            &input.expected,
            &event.event_id,
            &event.event_type,
            &input.versions[0],
            &event.payload,
            metadata,
        ];
        client.query(&statement, &params).await
    } else {
        let statement = client.prepare_cached(APPEND_SQL).await.map_err(db_error)?;
        client.query(&statement, &input.params()).await
    };
    let failed_by_count = matches!(&rows, Ok(r) if r.len() != events.len());
    match interpret(stream, expected, events, rows) {
        // Zero rows: the expectation was wrong; outside an aborted transaction we can
        // ask what the stream is at.
        Err(AppendError::Conflict { .. }) if failed_by_count => Err(AppendError::Conflict {
            stream: stream.as_str().to_owned(),
            expected,
            actual: current_version(client, stream.as_str()).await?,
        }),
        other => other,
    }
}

/// The array parameters of one append statement, borrowed from its events (payloads
/// and metadata are serialized straight into the statement's buffer).
struct AppendInput<'e> {
    stream: &'e str,
    expected: i64,
    ids: Vec<Uuid>,
    types: Vec<&'e str>,
    versions: Vec<i32>,
    payloads: Vec<&'e Value>,
    metadata: Vec<Json<&'e EventMetadata>>,
}

impl<'e> AppendInput<'e> {
    fn new(write: &'e StreamWrite) -> Result<Self, AppendError> {
        Self::of(&write.stream, write.expected, &write.events)
    }

    fn of(
        stream: &'e StreamId,
        expected: ExpectedVersion,
        events: &'e [NewEvent],
    ) -> Result<Self, AppendError> {
        Ok(AppendInput {
            stream: stream.as_str(),
            expected: i64::try_from(expected.as_version().0)
                .map_err(|_| StoreError::Malformed("expected version out of range".into()))?,
            ids: events.iter().map(|e| e.event_id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            versions: events
                .iter()
                .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
                .collect(),
            payloads: events.iter().map(|e| &e.payload).collect(),
            metadata: events.iter().map(|e| Json(&e.metadata)).collect(),
        })
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.stream,
            &self.expected,
            &self.ids,
            &self.types,
            &self.versions,
            &self.payloads,
            &self.metadata,
        ]
    }
}

/// Shifts `$n` placeholders by `offset`, to embed a statement in a larger one. (Our
/// statements hold no `$` in literals or quoted identifiers.)
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '$' {
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            match digits.parse::<usize>() {
                Ok(n) => out.push_str(&(n + offset).to_string()),
                Err(_) => out.push_str(&digits),
            }
        }
    }
    out
}

/// Maps the errors of a composed append: a version conflict names its stream; a unique
/// violation on (stream_id, stream_version) is a concurrent writer on that stream.
fn conflict_or_error(e: tokio_postgres::Error, writes: &[StreamWrite]) -> AppendError {
    let Some(db) = e.as_db_error() else {
        return AppendError::Store(db_error(e));
    };
    let find = |stream: &str| writes.iter().find(|w| w.stream.as_str() == stream);
    if db.code().code() == "VA001" {
        if let Some(write) = db.hint().and_then(find) {
            let actual = db.detail().and_then(|d| d.parse().ok()).unwrap_or(0);
            return AppendError::Conflict {
                stream: write.stream.as_str().to_owned(),
                expected: write.expected,
                actual: StreamVersion(actual),
            };
        }
    }
    if *db.code() == SqlState::UNIQUE_VIOLATION {
        if db.constraint() == Some("events_event_id_key") {
            let id = writes
                .iter()
                .flat_map(|w| &w.events)
                .map(|e| e.event_id)
                .next();
            return AppendError::DuplicateEventId(id.unwrap_or_default());
        }
        // "Key (stream_id, stream_version)=(<stream>, <n>) already exists."
        let stream = db
            .detail()
            .and_then(|d| d.split_once(")=("))
            .and_then(|(_, rest)| rest.rsplit_once(", "))
            .map(|(stream, _)| stream);
        if let Some(write) = stream.and_then(find) {
            return AppendError::Conflict {
                stream: write.stream.as_str().to_owned(),
                expected: write.expected,
                actual: StreamVersion(write.expected.as_version().0 + 1),
            };
        }
        if db.constraint() == Some("events_stream_version_key") {
            if let Some(write) = writes.iter().find(|w| !w.events.is_empty()) {
                return AppendError::Conflict {
                    stream: write.stream.as_str().to_owned(),
                    expected: write.expected,
                    actual: StreamVersion(write.expected.as_version().0 + 1),
                };
            }
        }
        // A read model refused (e.g. a username taken concurrently).
        return AppendError::Store(StoreError::Constraint(
            db.constraint().unwrap_or("unique value").to_owned(),
        ));
    }
    AppendError::Store(db_error(e))
}

/// What the projection needs of an event before the log has numbered it.
fn provisional(stream: &StreamId, event: &NewEvent) -> RecordedEvent {
    RecordedEvent {
        position: 0,
        xact: 0,
        event_id: event.event_id,
        stream_id: stream.as_str().to_owned(),
        stream_version: StreamVersion::EMPTY,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        payload: event.payload.clone(),
        metadata: event.metadata.clone(),
        recorded_at_micros: 0,
    }
}

/// Turns the answer of one pipelined append (or version check) into its outcome.
fn interpret(
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    rows: Result<Vec<Row>, tokio_postgres::Error>,
) -> Result<AppendOutcome, AppendError> {
    let expected_version = expected.as_version();
    let conflict = |actual| AppendError::Conflict {
        stream: stream.as_str().to_owned(),
        expected,
        actual,
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            return Err(match e.as_db_error() {
                Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => {
                    if db.constraint() == Some("events_event_id_key") {
                        AppendError::DuplicateEventId(
                            events.first().map(|e| e.event_id).unwrap_or_default(),
                        )
                    } else {
                        conflict(StreamVersion(expected_version.0 + 1))
                    }
                }
                _ => AppendError::Store(db_error(e)),
            })
        }
    };
    if events.is_empty() {
        let actual = StreamVersion(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64);
        return if actual == expected_version {
            Ok(AppendOutcome {
                version: actual,
                recorded: Vec::new(),
            })
        } else {
            Err(conflict(actual))
        };
    }
    if rows.len() != events.len() {
        return Err(conflict(expected_version));
    }
    let landed = rows
        .iter()
        .map(|r| (r.get(1), r.get(0), r.get(2), micros(r.get(3))))
        .collect();
    Ok(recorded(
        stream,
        expected_version,
        events.iter().cloned(),
        landed,
    ))
}

/// The appended events as recorded, from the (stream version, position, xact,
/// recorded-at micros) the insert returned. Takes the events by value: the group-commit
/// path moves its callers' events into their outcomes instead of copying payloads.
fn recorded(
    stream: &StreamId,
    expected_version: StreamVersion,
    events: impl ExactSizeIterator<Item = NewEvent>,
    mut landed: Vec<(i64, i64, i64, i64)>,
) -> AppendOutcome {
    let version = StreamVersion(expected_version.0 + events.len() as u64);
    landed.sort_unstable();
    let recorded = landed
        .into_iter()
        .zip(events)
        .map(
            |((version, position, xact, recorded_at_micros), event)| RecordedEvent {
                position,
                xact,
                event_id: event.event_id,
                stream_id: stream.as_str().to_owned(),
                stream_version: StreamVersion(version as u64),
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata: event.metadata,
                recorded_at_micros,
            },
        )
        .collect();
    AppendOutcome { version, recorded }
}

/// An empty write still asserts the stream's version.
async fn check_version<C: GenericClient + Sync>(
    client: &C,
    write: &StreamWrite,
) -> Result<AppendOutcome, AppendError> {
    let actual = current_version(client, write.stream.as_str()).await?;
    if actual == write.expected.as_version() {
        Ok(AppendOutcome {
            version: actual,
            recorded: Vec::new(),
        })
    } else {
        Err(AppendError::Conflict {
            stream: write.stream.as_str().to_owned(),
            expected: write.expected,
            actual,
        })
    }
}

async fn current_version<C: GenericClient + Sync>(
    client: &C,
    stream: &str,
) -> Result<StreamVersion, StoreError> {
    let statement = client.prepare_cached(VERSION_SQL).await.map_err(db_error)?;
    let row = client
        .query_one(&statement, &[&stream])
        .await
        .map_err(db_error)?;
    Ok(StreamVersion(row.get::<_, i64>(0) as u64))
}

impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, AppendError> {
        let mut outcomes = self
            .append_all(vec![StreamWrite {
                stream: stream.clone(),
                expected,
                events,
            }])
            .await?;
        Ok(outcomes.remove(0))
    }

    async fn append_all(
        &self,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        let projection = self.inner.projection.as_ref();
        let outcomes = if writes.len() == 1 && projection.is_none() {
            // One autocommit statement: no BEGIN/COMMIT round trips.
            let client = self.inner.pool.get().await.map_err(unavailable)?;
            let write = &writes[0];
            vec![if write.events.is_empty() {
                check_version(&client, write).await?
            } else {
                append_on(&client, &write.stream, write.expected, &write.events).await?
            }]
        } else if writes.len() <= COMPOSE_LIMIT {
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.inner
                .group
                .send(group::Job { writes, reply })
                .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
            answer
                .await
                .map_err(|_| StoreError::Unavailable("the append was abandoned".into()))??
        } else {
            let mut client = self.inner.pool.get().await.map_err(unavailable)?;
            self.append_in_transaction(&mut client, &writes).await?
        };
        if outcomes.iter().any(|o| !o.recorded.is_empty()) {
            self.announce_commit();
        }
        Ok(outcomes)
    }

    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version"
        );
        let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
        let rows = client
            .query(&statement, &[&stream.as_str()])
            .await
            .map_err(db_error)?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_log(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = self.read_log_rows(EVENT_COLUMNS, after, limit).await?;
        rows.iter().map(decode_row).collect()
    }

    /// The relay's read: no metadata (which PostgreSQL would turn from jsonb into text
    /// for every row) and the payload as text, parsed straight into the domain event.
    async fn read_log_replay(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        let rows = self.read_log_rows(REPLAY_COLUMNS, after, limit).await?;
        rows.iter().map(replay_row).collect()
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}

fn replay_row(row: &Row) -> Result<ReplayEvent, StoreError> {
    Ok(ReplayEvent {
        position: row.try_get(0).map_err(malformed)?,
        xact: row.try_get(1).map_err(malformed)?,
        event_id: row.try_get(2).map_err(malformed)?,
        stream_id: row.try_get(3).map_err(malformed)?,
        event_type: row.try_get(4).map_err(malformed)?,
        schema_version: row.try_get::<_, i32>(5).map_err(malformed)? as u32,
        payload: row.try_get(6).map_err(malformed)?,
        recorded_at_micros: micros(row.try_get(7).map_err(malformed)?),
    })
}

/// Reads a row of `SELECT {EVENT_COLUMNS} FROM events`.
pub fn decode_row(row: &Row) -> Result<RecordedEvent, StoreError> {
    let metadata: Value = row.try_get(8).map_err(malformed)?;
    Ok(RecordedEvent {
        position: row.try_get(0).map_err(malformed)?,
        xact: row.try_get(1).map_err(malformed)?,
        event_id: row.try_get(2).map_err(malformed)?,
        stream_id: row.try_get(3).map_err(malformed)?,
        stream_version: StreamVersion(row.try_get::<_, i64>(4).map_err(malformed)? as u64),
        event_type: row.try_get(5).map_err(malformed)?,
        schema_version: row.try_get::<_, i32>(6).map_err(malformed)? as u32,
        payload: row.try_get(7).map_err(malformed)?,
        metadata: serde_json::from_value::<EventMetadata>(metadata)
            .map_err(|e| StoreError::Malformed(e.to_string()))?,
        recorded_at_micros: micros(row.try_get(9).map_err(malformed)?),
    })
}

/// Keeps a LISTEN connection open and turns notifications into wake-ups; reconnects with
/// backoff, waking readers after each reconnect since notifications may have been lost.
async fn listen_forever(config: tokio_postgres::Config, wake: Arc<watch::Sender<u64>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &wake).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(error) => tracing::warn!(%error, "event log LISTEN connection lost"),
        }
        wake.send_modify(|v| *v = v.wrapping_add(1));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    wake: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    wake.send_modify(|v| *v = v.wrapping_add(1));
    while rx.recv().await.is_some() {
        wake.send_modify(|v| *v = v.wrapping_add(1));
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Sends at most one NOTIFY at a time; appends made meanwhile are covered by the next.
async fn notify_forever(pool: Pool, needed: Arc<Notify>) {
    let sql = format!("NOTIFY {CHANNEL}");
    loop {
        needed.notified().await;
        let sent = match pool.get().await {
            Ok(client) => client.batch_execute(&sql).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "event log NOTIFY failed; readers fall back to polling");
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            // At most one NOTIFY per interval: under load every append would otherwise
            // cost a notification transaction. Readers in this process are woken directly;
            // other processes learn of commits at most this much later.
            tokio::time::sleep(NOTIFY_INTERVAL).await;
        }
    }
}

/// Unix microseconds of a `timestamptz` (decoded as SystemTime: cheaper for the server
/// than computing the epoch in SQL for every row of a replay).
fn micros(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

fn unavailable(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// tokio-postgres prints a server error as just "db error": name the server's message.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {db}"),
        None => e.to_string(),
    }
}

fn malformed(e: tokio_postgres::Error) -> StoreError {
    StoreError::Malformed(e.to_string())
}

impl valet_app::Readiness for PgEventStore {
    async fn ready(&self) -> Result<(), StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        client.simple_query("SELECT 1").await.map_err(db_error)?;
        Ok(())
    }
}
