//! The relay's backlog: committed events after the last one JetStream confirmed,
//! counted from the log on a task of its own, so that a publish stuck waiting for acks
//! (a NATS outage) cannot hold the figure back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use valet_app::outbox::RelayStatus;
use valet_app::{EventStore, LogCursor};

/// How often the backlog is counted while this relay leads.
pub(crate) const EVERY: Duration = Duration::from_millis(500);

/// The cursor after the last confirmed batch, shared with the counting task.
#[derive(Debug, Default)]
pub(crate) struct Confirmed(Mutex<LogCursor>);

impl Confirmed {
    pub fn new(cursor: LogCursor) -> Arc<Self> {
        Arc::new(Confirmed(Mutex::new(cursor)))
    }

    pub fn set(&self, cursor: LogCursor) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = cursor;
    }

    fn get(&self) -> LogCursor {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts the backlog every [`EVERY`] into `status` until dropped.
pub(crate) struct Reporter(tokio::task::JoinHandle<()>);

impl Reporter {
    pub fn start<S: EventStore + Clone>(
        store: S,
        confirmed: Arc<Confirmed>,
        status: Arc<RelayStatus>,
    ) -> Self {
        Reporter(tokio::spawn(async move {
            loop {
                match store.count_after(confirmed.get()).await {
                    Ok(backlog) => status.set_backlog(i64::try_from(backlog).unwrap_or(i64::MAX)),
                    Err(error) => tracing::warn!(%error, "cannot count the relay's backlog"),
                }
                tokio::time::sleep(EVERY).await;
            }
        }))
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}
