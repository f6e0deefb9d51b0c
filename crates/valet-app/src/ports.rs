//! Ports: what the use cases need from the outside world.

use std::future::Future;

use tokio::sync::watch;
use uuid::Uuid;
use valet_domain::StreamId;

pub use crate::log::{EventMetadata, StreamVersion};
use crate::log::{LogCursor, NewEvent, RecordedEvent, ReplayEvent, Scanned};

/// What the writer believes the stream's version is; the append fails unless it is so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version.
    Exactly(StreamVersion),
}

impl ExpectedVersion {
    pub fn as_version(self) -> StreamVersion {
        match self {
            ExpectedVersion::NoStream => StreamVersion::EMPTY,
            ExpectedVersion::Exactly(v) => v,
        }
    }

    /// The expectation that holds for a stream loaded at `version`.
    pub fn from_loaded(version: StreamVersion) -> Self {
        if version == StreamVersion::EMPTY {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exactly(version)
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's version after the append.
    pub version: StreamVersion,
    /// The appended events as the log recorded them, in order.
    pub recorded: Vec<RecordedEvent>,
}

impl AppendOutcome {
    pub fn positions(&self) -> Vec<i64> {
        self.recorded.iter().map(|e| e.position).collect()
    }
}

/// Events for one stream, part of an atomic multi-stream append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamWrite {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer got there first (or the expectation was wrong): reload and decide again.
    #[error("stream {stream} is not at the expected version {expected:?} (it is at {actual})")]
    Conflict {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: StreamVersion,
    },
    #[error("an event with id {0} was already appended")]
    DuplicateEventId(uuid::Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store could not be reached or answered something unexpected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("event store returned a malformed row: {0}")]
    Malformed(String),
    /// An event in the log that this build cannot read: stop rather than skip it.
    #[error("event {event_id} cannot be decoded: {error}")]
    Undecodable {
        event_id: uuid::Uuid,
        error: valet_domain::DecodeError,
    },
    /// An append of an event to a stream of another aggregate (a programming error).
    #[error("a {event_type} event does not belong in stream {stream}")]
    ForeignEvent {
        stream: StreamId,
        event_type: &'static str,
    },
    /// A read model refused the change (e.g. a username taken by a concurrent writer).
    #[error("constraint violated: {0}")]
    Constraint(String),
}

/// The event log. Implementations: PostgreSQL (valet-store) and in memory (tests).
///
/// Contract:
/// - `append` is atomic: all events land with contiguous stream versions, or none do.
/// - `read_log` returns events in the log's commit-safe order after `cursor`: an event is
///   only returned once no event can ever appear before it, so a follower never skips one.
/// - `wakeups` changes after every append made through any store on the same log
///   (eventually, for other processes), so followers need not poll fast.
pub trait EventStore: Send + Sync + 'static {
    /// Appends to one stream: [`append_all`](Self::append_all) with one write.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, AppendError>> + Send {
        let write = StreamWrite {
            stream: stream.clone(),
            expected,
            events,
        };
        async move {
            let mut outcomes = self.append_all(vec![write]).await?;
            outcomes
                .pop()
                .ok_or_else(|| StoreError::Malformed("an append returned no outcome".into()).into())
        }
    }

    /// Appends to several streams atomically: all writes land, or none does.
    fn append_all(
        &self,
        writes: Vec<StreamWrite>,
    ) -> impl Future<Output = Result<Vec<AppendOutcome>, AppendError>> + Send;

    fn read_stream(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    fn read_log(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// What `read_log` returns, as [`ReplayEvent`]s: the payload as JSON text and no
    /// metadata. For a follower that only maps events (the relay), a store can read this
    /// for less than the full events: here it is derived from them.
    fn read_log_replay(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ReplayEvent>, StoreError>> + Send {
        async move {
            let events = self.read_log(after, limit).await?;
            Ok(events.into_iter().map(ReplayEvent::from).collect())
        }
    }

    /// What `read_log_replay` returns, of the events whose type is one of `types` only,
    /// in the same order; a trailing [`Scanned::ScannedTo`] says how far the read got
    /// past other events (absent when it got nowhere new). For a follower that needs a
    /// few rare event types (the back-channel logout dispatcher), a store can skip the
    /// rest without decoding it: here they are read and dropped.
    fn read_log_of_types(
        &self,
        after: LogCursor,
        limit: usize,
        types: &'static [&'static str],
    ) -> impl Future<Output = Result<Vec<Scanned>, StoreError>> + Send {
        async move {
            let events = self.read_log_replay(after, limit).await?;
            let last = events.last().map(ReplayEvent::cursor);
            let mut out: Vec<Scanned> = events
                .into_iter()
                .filter(|e| types.contains(&e.event.event_type()))
                .map(|e| Scanned::Event(Box::new(e)))
                .collect();
            if let Some(last) = last {
                if out.last().map(Scanned::cursor) != Some(last) {
                    out.push(Scanned::ScannedTo(last));
                }
            }
            Ok(out)
        }
    }

    /// How many events the log holds after `after` (committed ones: a relay's backlog).
    /// Here counted by reading them; a store can do it for less.
    fn count_after(
        &self,
        after: LogCursor,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move {
            let mut cursor = after;
            let mut count = 0u64;
            loop {
                let page = self.read_log(cursor, 1000).await?;
                let Some(last) = page.last() else {
                    return Ok(count);
                };
                cursor = last.cursor();
                count += page.len() as u64;
            }
        }
    }

    /// Where in the log the event `event_id` sits (`None`: no such event). The relay
    /// asks when the stream does not end where it knew it to end. Here found by reading
    /// the log; a store with an index on event ids does it for less.
    fn cursor_of(
        &self,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<LogCursor>, StoreError>> + Send {
        async move {
            let mut cursor = LogCursor::START;
            loop {
                let page = self.read_log(cursor, 1000).await?;
                let Some(last) = page.last() else {
                    return Ok(None);
                };
                if let Some(found) = page.iter().find(|e| e.event_id == event_id) {
                    return Ok(Some(found.cursor()));
                }
                cursor = last.cursor();
            }
        }
    }

    /// A receiver whose value changes whenever new events may be readable.
    fn wakeups(&self) -> watch::Receiver<u64>;
}

/// Whether the process can serve requests that need the database.
pub trait Readiness: Send + Sync + 'static {
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
