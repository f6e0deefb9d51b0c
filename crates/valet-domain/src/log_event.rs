//! The log-wide event: any aggregate's, decoded by its stream's kind.

use serde_json::Value;

use crate::event::{current_version, DecodeError, DomainEvent};
use crate::ids::StreamId;
use crate::{backchannel, client, code, consent, grant, session, signing_key, user};

/// Any event of the log, by aggregate. Which aggregate an event belongs to follows from
/// its stream's kind (a `grant-` stream holds grant events only), which is how a stored
/// event is decoded: see [`Event::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Client(client::Event),
    User(user::Event),
    Code(code::Event),
    Grant(grant::Event),
    Consent(consent::Event),
    SigningKey(signing_key::Event),
    Session(session::Event),
    Backchannel(backchannel::Event),
}

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Client(e) => e.event_type(),
            Event::User(e) => e.event_type(),
            Event::Code(e) => e.event_type(),
            Event::Grant(e) => e.event_type(),
            Event::Consent(e) => e.event_type(),
            Event::SigningKey(e) => e.event_type(),
            Event::Session(e) => e.event_type(),
            Event::Backchannel(e) => e.event_type(),
        }
    }

    pub fn schema_version(&self) -> u32 {
        current_version(self.event_type())
    }

    /// The payload as the log stores it: the event's fields as JSON text.
    pub fn payload_json(&self) -> String {
        match self {
            Event::Client(e) => e.payload_json(),
            Event::User(e) => e.payload_json(),
            Event::Code(e) => e.payload_json(),
            Event::Grant(e) => e.payload_json(),
            Event::Consent(e) => e.payload_json(),
            Event::SigningKey(e) => e.payload_json(),
            Event::Session(e) => e.payload_json(),
            Event::Backchannel(e) => e.payload_json(),
        }
    }

    /// The payload as a JSON value (for display; the store writes [`payload_json`](Self::payload_json)).
    pub fn to_payload(&self) -> Value {
        match self {
            Event::Client(e) => e.to_payload(),
            Event::User(e) => e.to_payload(),
            Event::Code(e) => e.to_payload(),
            Event::Grant(e) => e.to_payload(),
            Event::Consent(e) => e.to_payload(),
            Event::SigningKey(e) => e.to_payload(),
            Event::Session(e) => e.to_payload(),
            Event::Backchannel(e) => e.to_payload(),
        }
    }

    /// Decodes a stored event of `stream` from its payload's JSON text. Fails closed: a
    /// type that is not one of the stream's aggregate, an unknown schema version or a
    /// malformed payload is an error, never skipped.
    pub fn decode(
        stream: &StreamId,
        event_type: &str,
        schema_version: u32,
        payload: &str,
    ) -> Result<Self, DecodeError> {
        fn with<E: DomainEvent + Into<Event>>(
            event_type: &str,
            version: u32,
            payload: &str,
        ) -> Result<Event, DecodeError> {
            E::from_payload_json(event_type, version, payload).map(Into::into)
        }
        match stream {
            StreamId::Client(_) => with::<client::Event>(event_type, schema_version, payload),
            StreamId::User(_) => with::<user::Event>(event_type, schema_version, payload),
            StreamId::Code(_) => with::<code::Event>(event_type, schema_version, payload),
            StreamId::Grant(_) => with::<grant::Event>(event_type, schema_version, payload),
            StreamId::Consent(..) => with::<consent::Event>(event_type, schema_version, payload),
            StreamId::SigningKeys => {
                with::<signing_key::Event>(event_type, schema_version, payload)
            }
            StreamId::Session(_) => with::<session::Event>(event_type, schema_version, payload),
            StreamId::Logout(_) => with::<backchannel::Event>(event_type, schema_version, payload),
        }
    }

    /// Whether this event belongs in `stream`: its aggregate is the stream's kind.
    pub fn fits(&self, stream: &StreamId) -> bool {
        matches!(
            (self, stream),
            (Event::Client(_), StreamId::Client(_))
                | (Event::User(_), StreamId::User(_))
                | (Event::Code(_), StreamId::Code(_))
                | (Event::Grant(_), StreamId::Grant(_))
                | (Event::Consent(_), StreamId::Consent(..))
                | (Event::SigningKey(_), StreamId::SigningKeys)
                | (Event::Session(_), StreamId::Session(_))
                | (Event::Backchannel(_), StreamId::Logout(_))
        )
    }
}

/// Conversions between an aggregate's events and [`Event`].
macro_rules! log_event {
    ($($variant:ident => $module:ident),+ $(,)?) => {$(
        impl From<$module::Event> for Event {
            fn from(event: $module::Event) -> Self {
                Event::$variant(event)
            }
        }

        impl TryFrom<Event> for $module::Event {
            /// The event, when it is another aggregate's.
            type Error = Event;
            fn try_from(event: Event) -> Result<Self, Event> {
                match event {
                    Event::$variant(event) => Ok(event),
                    other => Err(other),
                }
            }
        }
    )+};
}
log_event!(
    Client => client,
    User => user,
    Code => code,
    Grant => grant,
    Consent => consent,
    SigningKey => signing_key,
    Session => session,
    Backchannel => backchannel,
);
