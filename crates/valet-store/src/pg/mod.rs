//! The PostgreSQL event store: the `EventStore` port over a pool of connections, with
//! the read-model projection run inside every append (see `projection`).
//!
//! The jobs live in their own files: `append` (the ways an append reaches the log),
//! `group` (group commit), `read` (streams, the log, snapshots), `rows` (events to and
//! from rows, the only JSON), `errors` (PostgreSQL's errors as the store's), `wakeups`
//! (LISTEN/NOTIFY) and `secrets` (keys shared by replicas).

mod append;
mod attempts;
mod errors;
mod group;
mod in_order;
mod projection;
mod read;
mod rows;
mod secrets;
mod wakeups;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use valet_app::{
    AppendError, AppendOutcome, EventStore, LogCursor, RecordedEvent, ReplayEvent, StoreError,
    StreamVersion, StreamWrite,
};
use valet_domain::StreamId;

pub use append::append_on;
pub use attempts::PgAttempts;
pub use errors::describe;
pub use projection::{execute_writes, InlineProjection, Params, RowWrite, WriteSql};
pub use read::{SnapshotRead, SnapshotScope};
pub use rows::{recorded_row, EVENT_COLUMNS};

use crate::endpoint::{PgEndpoint, PgUrlError};
use errors::{db_error, unavailable};

/// Appends of at most this many streams are composed into one statement (group commit
/// included); larger ones are a pipelined transaction.
const COMPOSE_LIMIT: usize = 4;

/// Group-commit workers: groups being written at once. One: appends that arrive while
/// a group is written wait for the next, so groups are larger and PostgreSQL pays its
/// per-statement and per-commit costs less often; two backends inserting at once also
/// contend for the same right-most index pages and the WAL flush. /token did 7.2–7.6 k
/// rps against 6.0–6.7 k with two workers (five alternated pairs, 32 connections), with
/// about 12% less PostgreSQL CPU per token. The price: a long group (disabling a client
/// sweeps all of its live tokens) delays the appends queued behind it.
const GROUP_WORKERS: usize = 1;

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
pub fn new_pool(endpoint: &PgEndpoint, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        endpoint.config().clone(),
        endpoint.tls(),
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

/// Cheap to clone; all clones share the pool and the wake-up machinery.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    endpoint: PgEndpoint,
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
        let endpoint: PgEndpoint = config
            .database_url
            .parse()
            .map_err(|e: PgUrlError| StoreError::Unavailable(e.to_string()))?;
        // No JIT: PostgreSQL compiles a query's expressions anew at every execution once
        // its estimated cost passes `jit_above_cost`, which the log scans of a rebuild or
        // an audit do. Valet runs no query that JIT would speed up (on a rebuild of 1M
        // events it cost about 0.3 s of CPU, within the run-to-run noise here).
        let pg = endpoint.with_config(|c| with_options(c, "-c jit=off"));
        let pool = new_pool(&pg, config.pool_size.max(2))?;
        drop(pool.get().await.map_err(unavailable)?);

        let wake = Arc::new(watch::channel(0u64).0);
        let notify_needed = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(wakeups::listen_forever(pg.clone(), wake.clone())),
            tokio::spawn(wakeups::notify_forever(pool.clone(), notify_needed.clone())),
        ];
        let (group, queue) = mpsc::unbounded_channel();
        group::start(
            queue,
            new_pool(&pg, GROUP_WORKERS)?,
            projection.clone(),
            GROUP_WORKERS,
        )?;
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool,
                endpoint: pg,
                projection,
                wake,
                notify_needed,
                group,
                tasks,
            }),
        })
    }

    /// The server and how to reach it (TLS included).
    pub fn endpoint(&self) -> &PgEndpoint {
        &self.inner.endpoint
    }

    /// The same store (log, group commit, wake-ups) with a pool of its own of `size`
    /// connections. Connections are opened on first use, so a task on another runtime
    /// (the relay's thread) gets connections whose I/O that runtime drives.
    pub fn with_own_pool(&self, size: usize) -> Result<Self, StoreError> {
        let inner = &self.inner;
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool: new_pool(&inner.endpoint, size.max(1))?,
                endpoint: inner.endpoint.clone(),
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

    /// The current version of a stream (0 when it does not exist).
    pub async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        read::current_version(&client, stream).await
    }
}

impl EventStore for PgEventStore {
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
                append::check_version(&client, write).await?
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
            append::append_in_transaction(&mut client, projection.map(|p| p.as_ref()), &writes)
                .await?
        };
        if outcomes.iter().any(|o| !o.recorded.is_empty()) {
            self.announce_commit();
        }
        Ok(outcomes)
    }

    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        read::read_stream(&client, stream).await
    }

    async fn read_log(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_log_recorded(after, limit).await
    }

    /// The relay's read: no metadata (which PostgreSQL would turn from jsonb into text
    /// for every row) and no stream version.
    async fn read_log_replay(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        self.read_log_lean(after, limit).await
    }

    async fn read_log_of_types(
        &self,
        after: LogCursor,
        limit: usize,
        types: &'static [&'static str],
    ) -> Result<Vec<valet_app::Scanned>, StoreError> {
        self.read_log_filtered(after, limit, types).await
    }

    async fn count_after(&self, after: LogCursor) -> Result<u64, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        read::count_after(&client, after).await
    }

    async fn cursor_of(&self, event_id: uuid::Uuid) -> Result<Option<LogCursor>, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        read::cursor_of(&client, event_id).await
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}

impl valet_app::Readiness for PgEventStore {
    async fn ready(&self) -> Result<(), StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        client.simple_query("SELECT 1").await.map_err(db_error)?;
        Ok(())
    }
}
