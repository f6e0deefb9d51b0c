//! Ports for catch-up readers that must run once across all processes (the NATS relay):
//! a lease that elects one active reader and guards its checkpoint, and a status the
//! HTTP layer reports in /readyz and /metrics.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::log::LogCursor;
use crate::ports::StoreError;

/// Elects one active reader per name across processes, with leases that expire unless
/// their holder renews them.
pub trait Leadership: Send + Sync + 'static {
    type Lease: Lease;

    /// Takes the lease for `ttl` if it is free or has expired; otherwise says who holds
    /// it (stand by and ask again later).
    fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Acquisition<Self::Lease>, StoreError>> + Send;

    /// The checkpoint saved under `name` (readable by anyone: standbys report their
    /// backlog from it).
    fn checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LogCursor>, StoreError>> + Send;
}

/// The answer to [`Leadership::try_acquire`].
#[derive(Debug)]
pub enum Acquisition<L> {
    Acquired(L),
    /// Someone else holds it.
    HeldBy(String),
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another holder took the lease (this one expired): stop acting on it.
    #[error("the lease was taken over")]
    Lost,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Held by the active reader. Renewals and checkpoint writes are checked against the
/// lease's epoch, so a reader that lost its lease cannot keep it or move the checkpoint.
pub trait Lease: Send + Sync + 'static {
    /// Extends the lease by its ttl from now.
    fn renew(&self) -> impl Future<Output = Result<(), LeaseError>> + Send;
    fn save_checkpoint(
        &self,
        cursor: LogCursor,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;
    /// Lets a standby take over at once (a lease taken over meanwhile is left alone).
    fn release(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What the relay is doing, shared with /readyz and /metrics. Plain atomics: written by
/// the relay task, read by request handlers.
#[derive(Debug, Default)]
pub struct RelayStatus {
    active: AtomicBool,
    nats_connected: AtomicBool,
    backlog: AtomicI64,
    published: AtomicU64,
    duplicates: AtomicU64,
    publish_failures: AtomicU64,
    last_position: AtomicI64,
    confirmed_by_last_ack: AtomicU64,
    confirmed_by_every_ack: AtomicU64,
    republished: AtomicU64,
    step_downs: AtomicU64,
    rewinds: AtomicU64,
    reissues: AtomicU64,
    /// Who holds the lease, as last seen by this process.
    leader: Mutex<Option<String>>,
}

/// How JetStream confirmed that a batch was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// One ack, on the last message, which proves the whole batch stored in order.
    LastAck,
    /// An ack per message (the end of the stream was not known).
    EveryAck,
    /// The last ack did not prove the batch stored, which was sent again with an ack per
    /// message.
    Republished,
}

/// A consistent-enough copy of the status for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySnapshot {
    pub active: bool,
    pub nats_connected: bool,
    pub backlog: i64,
    pub published: u64,
    pub duplicates: u64,
    pub publish_failures: u64,
    pub last_position: i64,
    /// Batches by how they were confirmed (see [`Confirmation`]).
    pub confirmed_by_last_ack: u64,
    pub confirmed_by_every_ack: u64,
    pub republished: u64,
    /// Times this process gave up leading (it could not publish or renew in time, or
    /// another took the lease).
    pub step_downs: u64,
    /// Times the stream was found to end before messages JetStream had confirmed, and
    /// the relay published again from the stream's real end.
    pub rewinds: u64,
    /// Rewinds that made no progress because JetStream answered the lost messages as
    /// duplicates, after which the relay published them again under new message ids.
    pub reissues: u64,
}

impl RelayStatus {
    pub fn snapshot(&self) -> RelaySnapshot {
        RelaySnapshot {
            active: self.active.load(Ordering::Relaxed),
            nats_connected: self.nats_connected.load(Ordering::Relaxed),
            backlog: self.backlog.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
            last_position: self.last_position.load(Ordering::Relaxed),
            confirmed_by_last_ack: self.confirmed_by_last_ack.load(Ordering::Relaxed),
            confirmed_by_every_ack: self.confirmed_by_every_ack.load(Ordering::Relaxed),
            republished: self.republished.load(Ordering::Relaxed),
            step_downs: self.step_downs.load(Ordering::Relaxed),
            rewinds: self.rewinds.load(Ordering::Relaxed),
            reissues: self.reissues.load(Ordering::Relaxed),
        }
    }

    /// Who holds the relay lease, as last seen by this process.
    pub fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_leader(&self, leader: Option<&str>) {
        let mut current = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() != leader {
            *current = leader.map(str::to_owned);
        }
    }

    pub fn record_step_down(&self) {
        self.step_downs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rewind(&self) {
        self.rewinds.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_reissue(&self) {
        self.reissues.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    pub fn set_connected(&self, connected: bool) {
        self.nats_connected.store(connected, Ordering::Relaxed);
    }

    pub fn set_backlog(&self, backlog: i64) {
        self.backlog.store(backlog, Ordering::Relaxed);
    }

    pub fn record_published(&self, messages: u64, duplicates: u64, last_position: i64) {
        self.published.fetch_add(messages, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.last_position.store(last_position, Ordering::Relaxed);
    }

    pub fn record_confirmation(&self, confirmation: Confirmation) {
        let counter = match confirmation {
            Confirmation::LastAck => &self.confirmed_by_last_ack,
            Confirmation::EveryAck => &self.confirmed_by_every_ack,
            Confirmation::Republished => &self.republished,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failure(&self) {
        self.publish_failures.fetch_add(1, Ordering::Relaxed);
    }
}
