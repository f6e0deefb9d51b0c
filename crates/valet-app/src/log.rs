//! Events as the log stores them, and the commit-safe cursor that orders them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use valet_domain::{Event, StreamId};

/// The version of a stream: the number of events in it (0 = the stream does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamVersion(pub u64);

impl StreamVersion {
    pub const EMPTY: StreamVersion = StreamVersion(0);
}

impl std::fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Who did it and on whose behalf: recorded with every event, never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event: Event,
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// `event_id` should be a UUID v7 drawn by the caller (see [`Ids`](crate::Ids)).
    pub fn new(event_id: Uuid, event: impl Into<Event>, metadata: EventMetadata) -> Self {
        NewEvent {
            event_id,
            event: event.into(),
            metadata,
        }
    }
}

/// An event read back from the log, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: i64,
    /// The id of the transaction that wrote it: the first half of the commit-safe cursor.
    pub xact: i64,
    pub event_id: Uuid,
    pub stream: StreamId,
    pub stream_version: StreamVersion,
    pub event: Event,
    pub metadata: EventMetadata,
    /// Unix microseconds at which the store recorded it.
    pub recorded_at_micros: i64,
}

impl RecordedEvent {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            xact: self.xact,
            position: self.position,
        }
    }
}

/// What a read of some event types only returns: the events of those types, and how far
/// the read got past events of other types (so the reader's cursor moves on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    Event(Box<ReplayEvent>),
    /// Nothing of interest up to and including this cursor.
    ScannedTo(LogCursor),
}

impl Scanned {
    pub fn cursor(&self) -> LogCursor {
        match self {
            Scanned::Event(e) => e.cursor(),
            Scanned::ScannedTo(cursor) => *cursor,
        }
    }
}

/// An event read for a replay or by a follower that only maps events (the relay):
/// decoded, without metadata or stream version, which a store can read for less.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayEvent {
    pub position: i64,
    pub xact: i64,
    pub event_id: Uuid,
    pub stream: StreamId,
    pub event: Event,
    pub recorded_at_micros: i64,
}

impl ReplayEvent {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            xact: self.xact,
            position: self.position,
        }
    }
}

impl From<RecordedEvent> for ReplayEvent {
    fn from(event: RecordedEvent) -> Self {
        ReplayEvent {
            position: event.position,
            xact: event.xact,
            event_id: event.event_id,
            stream: event.stream,
            event: event.event,
            recorded_at_micros: event.recorded_at_micros,
        }
    }
}

/// A point in the log's commit-safe order: (writing transaction, position).
///
/// Positions alone are not safe: they are drawn at insert, not at commit, so a slow
/// transaction can commit a lower position after a reader already passed a higher one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogCursor {
    pub xact: i64,
    pub position: i64,
}

impl LogCursor {
    pub const START: LogCursor = LogCursor {
        xact: 0,
        position: 0,
    };
}
