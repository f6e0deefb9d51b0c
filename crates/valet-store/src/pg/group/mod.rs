//! Group commit: concurrent appends (with their read-model writes) share one statement.
//!
//! Under load most of a token's cost in PostgreSQL is per statement and per commit
//! (executor start-up, snapshot, WAL commit record and flush), not per row. So appends
//! queue here and a worker (one: see `GROUP_WORKERS`) takes whatever is waiting and
//! writes it with ONE statement (`statement`). Which appends may share a group is
//! `formation`'s rule. A lone append takes the ordinary composed path, so an idle
//! server's latency is unchanged.

mod formation;
mod statement;

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Mutex};
use valet_app::{AppendError, AppendOutcome, StoreError, StreamWrite};

use super::errors::unavailable;
use super::projection::InlineProjection;
use formation::{Formation, Writes};
pub(super) use statement::write_group;

/// The most appends written by one statement.
const GROUP_LIMIT: usize = 64;

/// How often a worker lets other tasks run before it takes a group.
const GATHER_YIELDS: usize = 4;

/// One caller's append, waiting for a worker.
pub(in crate::pg) struct Job {
    pub writes: Vec<StreamWrite>,
    pub reply: oneshot::Sender<Result<Vec<AppendOutcome>, AppendError>>,
}

impl Writes for Job {
    fn writes(&self) -> &[StreamWrite] {
        &self.writes
    }
}

/// The queue the workers share: the channel, and the appends put back for the next
/// group.
struct Queue {
    rx: mpsc::UnboundedReceiver<Job>,
    formation: Formation<Job>,
}

impl Queue {
    /// Waits for one append, then takes every compatible one already waiting (without
    /// waiting longer: the group's latency is the previous group's duration, no timer).
    /// `None` once the store is gone.
    async fn take(&mut self) -> Option<Vec<Job>> {
        let first = match self.formation.carried() {
            Some(job) => job,
            None => self.rx.recv().await?,
        };
        // Let the request tasks that are ready run first, so this group takes their
        // appends too instead of leaving with one (a statement per token is what
        // grouping saves). When nothing else is ready a yield returns at once.
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
        }
        let rx = &mut self.rx;
        Some(self.formation.form(first, || rx.try_recv().ok()))
    }
}

/// Runs `workers` workers on a thread of their own, with their own runtime and `pool`
/// (whose connections are opened there, so their socket I/O is driven there too), until
/// the store is dropped.
///
/// Why not on the server's runtime: there, under load, a group's reply from PostgreSQL
/// waited behind every ready HTTP task before the worker saw it, twice per group (the
/// connection task, then the worker), and every request waits for a group. On its own
/// thread the reply is handled at once: /token did 7.9–8.8 k rps instead of 6.7–7.9 k
/// in alternated runs, with less idle CPU and a lower p99.
pub(in crate::pg) fn start(
    queue: mpsc::UnboundedReceiver<Job>,
    pool: Pool,
    projection: Option<Arc<dyn InlineProjection>>,
    workers: usize,
) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("group commit runtime: {e}")))?;
    std::thread::Builder::new()
        .name("valet-group".into())
        .spawn(move || {
            runtime.block_on(async move {
                let queue = Arc::new(Mutex::new(Queue {
                    rx: queue,
                    formation: Formation::new(GROUP_LIMIT),
                }));
                let running: Vec<_> = (0..workers)
                    .map(|_| tokio::spawn(work(queue.clone(), pool.clone(), projection.clone())))
                    .collect();
                for worker in running {
                    let _ = worker.await;
                }
            });
        })
        .map_err(|e| StoreError::Unavailable(format!("group commit thread: {e}")))?;
    Ok(())
}

/// A worker: takes groups off the queue and writes them, until the store is dropped.
async fn work(queue: Arc<Mutex<Queue>>, pool: Pool, projection: Option<Arc<dyn InlineProjection>>) {
    loop {
        let Some(jobs) = queue.lock().await.take().await else {
            return;
        };
        write_jobs(jobs, &pool, projection.as_deref()).await;
    }
}

async fn write_jobs(jobs: Vec<Job>, pool: &Pool, projection: Option<&dyn InlineProjection>) {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(e) => {
            let error = unavailable(e);
            for job in jobs {
                let _ = job.reply.send(Err(AppendError::Store(error.clone())));
            }
            return;
        }
    };
    let (writes, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.writes, j.reply)).unzip();
    let started = std::time::Instant::now();
    let appends = writes.len();
    let results = write_group(&client, projection, writes).await;
    tracing::trace!(
        appends,
        micros = started.elapsed().as_micros() as u64,
        "group written"
    );
    for (reply, result) in replies.into_iter().zip(results) {
        // The caller may have gone (request cancelled); the append stands regardless.
        let _ = reply.send(result);
    }
}
