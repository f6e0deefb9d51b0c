//! Events to and from rows of `events`: the one place where they are JSON.

use bytes::BufMut;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;
use valet_app::{EventMetadata, RecordedEvent, ReplayEvent, StoreError, StreamVersion};
use valet_domain::{Event, StreamId};

use super::errors::malformed;

/// The columns [`recorded_row`] reads.
pub const EVENT_COLUMNS: &str = "position, xact, event_id, stream_id, stream_version, event_type, \
     schema_version, payload::text, metadata::text, recorded_at";

/// The columns [`replay_row`] reads: no metadata (which PostgreSQL would turn from jsonb
/// into text for every row of a replay), no stream version.
pub(super) const REPLAY_COLUMNS: &str =
    "position, xact, event_id, stream_id, event_type, schema_version, payload::text, recorded_at";

/// JSON text bound to a `jsonb` parameter as it is: the event was serialized once, into
/// this text, and PostgreSQL parses it.
#[derive(Debug)]
pub(super) struct JsonText(pub String);

impl ToSql for JsonText {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary format: a version byte, then the text.
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// What the insert of one event needs: its type, version and payload, encoded.
pub(super) struct EncodedEvent<'e> {
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub schema_version: i32,
    pub payload: JsonText,
    pub metadata: tokio_postgres::types::Json<&'e EventMetadata>,
}

impl<'e> EncodedEvent<'e> {
    pub fn of(event: &'e valet_app::NewEvent) -> Self {
        EncodedEvent {
            event_id: event.event_id,
            event_type: event.event.event_type(),
            schema_version: i32::try_from(event.event.schema_version()).unwrap_or(i32::MAX),
            payload: JsonText(event.event.payload_json()),
            metadata: tokio_postgres::types::Json(&event.metadata),
        }
    }
}

fn stream(text: &str) -> Result<StreamId, StoreError> {
    StreamId::parse(text).map_err(|_| StoreError::Malformed(format!("stream id {text:?}")))
}

fn decode(
    event_id: Uuid,
    stream: &StreamId,
    event_type: &str,
    schema_version: i32,
    payload: &str,
) -> Result<Event, StoreError> {
    let version = u32::try_from(schema_version).unwrap_or(u32::MAX);
    Event::decode(stream, event_type, version, payload)
        .map_err(|error| StoreError::Undecodable { event_id, error })
}

/// Reads a row of `SELECT {EVENT_COLUMNS} FROM events`.
pub fn recorded_row(row: &Row) -> Result<RecordedEvent, StoreError> {
    let event_id: Uuid = row.try_get(2).map_err(malformed)?;
    let stream = stream(row.try_get(3).map_err(malformed)?)?;
    let event = decode(
        event_id,
        &stream,
        row.try_get(5).map_err(malformed)?,
        row.try_get(6).map_err(malformed)?,
        row.try_get(7).map_err(malformed)?,
    )?;
    let metadata: &str = row.try_get(8).map_err(malformed)?;
    Ok(RecordedEvent {
        position: row.try_get(0).map_err(malformed)?,
        xact: row.try_get(1).map_err(malformed)?,
        event_id,
        stream,
        stream_version: StreamVersion(row.try_get::<_, i64>(4).map_err(malformed)? as u64),
        event,
        metadata: serde_json::from_str(metadata)
            .map_err(|e| StoreError::Malformed(format!("metadata of event {event_id}: {e}")))?,
        recorded_at_micros: micros(row.try_get(9).map_err(malformed)?),
    })
}

/// Reads a row of `SELECT {REPLAY_COLUMNS} FROM events`.
pub(super) fn replay_row(row: &Row) -> Result<ReplayEvent, StoreError> {
    let event_id: Uuid = row.try_get(2).map_err(malformed)?;
    let stream = stream(row.try_get(3).map_err(malformed)?)?;
    let event = decode(
        event_id,
        &stream,
        row.try_get(4).map_err(malformed)?,
        row.try_get(5).map_err(malformed)?,
        row.try_get(6).map_err(malformed)?,
    )?;
    Ok(ReplayEvent {
        position: row.try_get(0).map_err(malformed)?,
        xact: row.try_get(1).map_err(malformed)?,
        event_id,
        stream,
        event,
        recorded_at_micros: micros(row.try_get(7).map_err(malformed)?),
    })
}

/// Unix microseconds of a `timestamptz` (decoded as SystemTime: cheaper for the server
/// than computing the epoch in SQL for every row of a replay).
pub(super) fn micros(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}
