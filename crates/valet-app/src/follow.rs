//! A follower that reads the log in commit-safe order and sleeps until new commits.

use std::time::Duration;

use crate::log::{LogCursor, RecordedEvent, ReplayEvent, Scanned};
use crate::ports::{EventStore, StoreError};

/// The longest pause between reads while new events wait behind the commit horizon.
const RETRY_CAP: Duration = Duration::from_millis(20);

/// What a [`LogFollower`] can return: the full [`RecordedEvent`] or the leaner
/// [`ReplayEvent`], each read by its own `EventStore` method.
pub trait Followed: Sized + Send {
    fn cursor(&self) -> LogCursor;

    /// `types`: the event types wanted, for readers that take only some ([`Scanned`]).
    fn read<S: EventStore>(
        store: &S,
        after: LogCursor,
        limit: usize,
        types: &'static [&'static str],
    ) -> impl std::future::Future<Output = Result<Vec<Self>, StoreError>> + Send;
}

impl Followed for RecordedEvent {
    fn cursor(&self) -> LogCursor {
        RecordedEvent::cursor(self)
    }

    fn read<S: EventStore>(
        store: &S,
        after: LogCursor,
        limit: usize,
        _: &'static [&'static str],
    ) -> impl std::future::Future<Output = Result<Vec<Self>, StoreError>> + Send {
        store.read_log(after, limit)
    }
}

impl Followed for ReplayEvent {
    fn cursor(&self) -> LogCursor {
        ReplayEvent::cursor(self)
    }

    fn read<S: EventStore>(
        store: &S,
        after: LogCursor,
        limit: usize,
        _: &'static [&'static str],
    ) -> impl std::future::Future<Output = Result<Vec<Self>, StoreError>> + Send {
        store.read_log_replay(after, limit)
    }
}

impl Followed for Scanned {
    fn cursor(&self) -> LogCursor {
        Scanned::cursor(self)
    }

    fn read<S: EventStore>(
        store: &S,
        after: LogCursor,
        limit: usize,
        types: &'static [&'static str],
    ) -> impl std::future::Future<Output = Result<Vec<Self>, StoreError>> + Send {
        store.read_log_of_types(after, limit, types)
    }
}

/// Follows the log from a cursor: returns batches in order and sleeps until woken when
/// it has caught up. A fallback poll covers wake-ups lost to a broken connection and
/// transactions of other writers that hold the commit horizon back.
pub struct LogFollower<'s, S: EventStore, E: Followed = RecordedEvent> {
    store: &'s S,
    cursor: LogCursor,
    wakeups: tokio::sync::watch::Receiver<u64>,
    batch: usize,
    fallback_poll: Duration,
    /// The event types a [`Scanned`] follower takes.
    types: &'static [&'static str],
    kind: std::marker::PhantomData<fn() -> E>,
}

impl<'s, S: EventStore> LogFollower<'s, S> {
    /// A follower that returns full events.
    pub fn new(store: &'s S, from: LogCursor) -> Self {
        Self::from_cursor(store, from)
    }
}

impl<'s, S: EventStore> LogFollower<'s, S, Scanned> {
    /// A follower that returns the events of `types` only (and how far it read).
    pub fn of_types(store: &'s S, from: LogCursor, types: &'static [&'static str]) -> Self {
        let mut follower = Self::from_cursor(store, from);
        follower.types = types;
        follower
    }
}

impl<'s, S: EventStore, E: Followed> LogFollower<'s, S, E> {
    /// A follower that returns `E`s: `LogFollower::<_, ReplayEvent>::from_cursor(..)`.
    pub fn from_cursor(store: &'s S, from: LogCursor) -> Self {
        let mut wakeups = store.wakeups();
        wakeups.mark_unchanged();
        LogFollower {
            store,
            cursor: from,
            wakeups,
            batch: 1000,
            fallback_poll: Duration::from_millis(500),
            types: &[],
            kind: std::marker::PhantomData,
        }
    }

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    pub fn with_fallback_poll(mut self, every: Duration) -> Self {
        self.fallback_poll = every;
        self
    }

    pub fn cursor(&self) -> LogCursor {
        self.cursor
    }

    /// Events after the cursor, if any are readable now; does not wait.
    pub async fn poll(&mut self) -> Result<Vec<E>, StoreError> {
        // Mark first: a wake-up that races with the read below is then kept for `next`.
        self.wakeups.mark_unchanged();
        let events = E::read(self.store, self.cursor, self.batch, self.types).await?;
        if let Some(last) = events.last() {
            self.cursor = last.cursor();
        }
        Ok(events)
    }

    /// The next non-empty batch, waiting for new commits when caught up.
    pub async fn next(&mut self) -> Result<Vec<E>, StoreError> {
        // After a wake-up the new events may not be readable yet: an older transaction
        // (of any database on the server) can hold the commit horizon back for a moment.
        // Retry quickly for a while instead of sleeping until the fallback poll.
        let mut retry: Option<Duration> = None;
        let mut retrying_since = tokio::time::Instant::now();
        loop {
            let events = self.poll().await?;
            if !events.is_empty() {
                return Ok(events);
            }
            // A wake-up whose events were already read also lands here: give up retrying
            // after the fallback interval and wait for the next wake-up instead.
            if retrying_since.elapsed() >= self.fallback_poll {
                retry = None;
            }
            if let Some(delay) = retry {
                // A new commit (ours, most likely the one holding the horizon) cuts the
                // wait short; otherwise back off, but never beyond RETRY_CAP, so a
                // horizon held by another database's transaction costs little lag.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = self.wakeups.changed() => {}
                }
                retry = Some((delay * 2).min(RETRY_CAP));
                continue;
            }
            match tokio::time::timeout(self.fallback_poll, self.wakeups.changed()).await {
                Ok(Ok(())) => {
                    retry = Some(Duration::from_millis(2));
                    retrying_since = tokio::time::Instant::now();
                }
                // A closed channel degrades to polling.
                Ok(Err(_closed)) => tokio::time::sleep(self.fallback_poll).await,
                Err(_elapsed) => {}
            }
        }
    }
}
