//! Ports for catch-up readers that must run once across all processes (the NATS relay,
//! later the catch-up projector): a lease that elects one active reader and carries its
//! checkpoint, and a status the HTTP layer reports in /readyz and /metrics.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::log::LogCursor;
use crate::ports::StoreError;

/// Elects one active reader per name across processes.
pub trait Leadership: Send + Sync + 'static {
    type Lease: Lease;

    /// The lease if nobody else holds it; `None` means stand by and ask again later.
    fn try_acquire(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Self::Lease>, StoreError>> + Send;
}

/// Held by the active reader. Every checkpoint write goes through it, so a reader that
/// lost its lease cannot move the checkpoint.
pub trait Lease: Send + 'static {
    fn checkpoint(&mut self) -> impl Future<Output = Result<Option<LogCursor>, StoreError>> + Send;
    fn save_checkpoint(
        &mut self,
        cursor: LogCursor,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
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
}

/// How JetStream confirmed that a batch was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// One ack, on the last message, at the sequence that accounts for the whole batch.
    LastAck,
    /// An ack per message (the stream's sequence was not known).
    EveryAck,
    /// The last ack did not account for the batch, which was sent again with an ack per
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
        }
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
