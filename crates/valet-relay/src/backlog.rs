//! The relay's backlog: committed events after the last one JetStream confirmed,
//! counted from the log on a task of its own, so that a publish stuck waiting for acks
//! (a NATS outage) cannot hold the figure back. A leader counts from what it has
//! confirmed; a standby from the saved checkpoint, so every replica's `/readyz` shows it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use valet_app::outbox::{Leadership, RelayStatus};
use valet_app::{EventStore, LogCursor};

use crate::LEASE;

/// How often the backlog is counted.
pub(crate) const EVERY: Duration = Duration::from_millis(500);

/// The cursor after this relay's last confirmed batch while it leads (`None`: standing
/// by), shared with the counting task.
#[derive(Debug, Default)]
pub(crate) struct Confirmed(Mutex<Option<LogCursor>>);

impl Confirmed {
    pub fn standing_by() -> Arc<Self> {
        Arc::default()
    }

    /// Leading, confirmed up to `cursor`.
    pub fn set(&self, cursor: LogCursor) {
        self.put(Some(cursor));
    }

    pub fn stand_by(&self) {
        self.put(None);
    }

    fn put(&self, cursor: Option<LogCursor>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = cursor;
    }

    fn get(&self) -> Option<LogCursor> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts the backlog every [`EVERY`] into `status` until dropped.
pub(crate) struct Reporter(tokio::task::JoinHandle<()>);

impl Reporter {
    pub fn start<S: EventStore + Leadership + Clone>(
        store: S,
        confirmed: Arc<Confirmed>,
        status: Arc<RelayStatus>,
    ) -> Self {
        Reporter(tokio::spawn(async move {
            loop {
                let from = match confirmed.get() {
                    Some(cursor) => Ok(cursor),
                    None => store
                        .checkpoint(LEASE)
                        .await
                        .map(|saved| saved.unwrap_or(LogCursor::START)),
                };
                match async { store.count_after(from?).await }.await {
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
