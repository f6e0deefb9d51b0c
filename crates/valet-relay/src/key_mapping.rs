//! Signing-key events → wire messages: each message carries the key as the ring's fold
//! has it right after the event (read from the ring's stream, once per batch).

use valet_app::keys::PublishedKey;
use valet_app::{EventStore, RecordedEvent, ReplayEvent};
use valet_domain::signing_key::{self, Event as KeyChange};
use valet_domain::{Event, StreamId, Timestamp};
use valet_wire::{rfc3339_from_unix_millis, KeyEvent, KeyEventType, SCHEMA_VERSION};

use crate::mapping::MappingError;

/// The ring's stream, read on the first key event of a batch.
#[derive(Default)]
pub(crate) struct RingLog(Option<Vec<RecordedEvent>>);

impl RingLog {
    async fn events<S: EventStore>(&mut self, store: &S) -> Result<&[RecordedEvent], MappingError> {
        if self.0.is_none() {
            self.0 = Some(store.read_stream(&StreamId::SigningKeys).await?);
        }
        Ok(self.0.as_deref().unwrap_or_default())
    }
}

/// The wire message of one key event; `None` for a step resource services do not see
/// (generation: it is always followed by publication, which carries the key).
pub(crate) async fn key_message<S: EventStore>(
    store: &S,
    ring_log: &mut RingLog,
    event: &ReplayEvent,
    change: &KeyChange,
) -> Result<Option<KeyEvent>, MappingError> {
    let (event_type, key_id, at) = match change {
        KeyChange::SigningKeyGenerated { .. } => return Ok(None),
        KeyChange::SigningKeyPublished { key_id, at, .. } => {
            (KeyEventType::KeyPublished, key_id, at)
        }
        KeyChange::SigningKeyActivated { key_id, at } => (KeyEventType::KeyActivated, key_id, at),
        KeyChange::SigningKeyRetired { key_id, at, .. } => (KeyEventType::KeyRetired, key_id, at),
    };
    let log = ring_log.events(store).await?;
    let upto = log
        .iter()
        .position(|recorded| recorded.event_id == event.event_id)
        .ok_or(MappingError::UnknownKeyEvent(event.event_id))?;
    let ring = signing_key::State::from_events(log[..=upto].iter().filter_map(|recorded| {
        match &recorded.event {
            Event::SigningKey(e) => Some(e),
            _ => None,
        }
    }));
    let key = ring
        .key(*key_id)
        .ok_or(MappingError::UnknownKeyEvent(event.event_id))?;
    Ok(Some(KeyEvent {
        schema_version: SCHEMA_VERSION,
        event_id: event.event_id.to_string(),
        position: event.position,
        event_type,
        occurred_at: rfc3339_from_unix_millis(at.as_unix_millis()),
        kid: key.key_id.to_string(),
        alg: key.algorithm.as_str().to_owned(),
        jwk: PublishedKey::of(key).into_members(),
        activates_at: key.activates_at.as_unix_seconds(),
        retired_at: key.retired_at.map(Timestamp::as_unix_seconds),
        published_until: key.published_until.map(Timestamp::as_unix_seconds),
    }))
}
