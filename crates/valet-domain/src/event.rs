//! The contract between aggregates and the event log.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

/// How an aggregate's events are stored: the type and schema version live in
/// their own columns, the payload holds only the event's fields.
pub trait DomainEvent: Sized {
    /// Unique across all aggregates (e.g. "ClientRegistered").
    fn event_type(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn to_payload(&self) -> Value;
    /// Fails closed: an unknown type or schema version is an error, never skipped.
    fn from_payload(
        event_type: &str,
        schema_version: u32,
        payload: Value,
    ) -> Result<Self, DecodeError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("unknown schema version {version} of event type {event_type}")]
    UnknownSchemaVersion { event_type: String, version: u32 },
    #[error("malformed {event_type} payload: {reason}")]
    Malformed { event_type: String, reason: String },
}

/// A refused command that still produced facts worth recording (code replay,
/// refresh-token reuse): the app appends `events`, then reports `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection<Ev, E> {
    pub error: E,
    pub events: Vec<Ev>,
}

impl<Ev, E> From<E> for Rejection<Ev, E> {
    fn from(error: E) -> Self {
        Self {
            error,
            events: Vec::new(),
        }
    }
}

impl<Ev, E: std::fmt::Display> std::fmt::Display for Rejection<Ev, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<Ev: std::fmt::Debug, E: std::error::Error + 'static> std::error::Error for Rejection<Ev, E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Rebuilds state from a stream, oldest event first.
pub fn fold<'a, E: 'a, S: Default>(
    events: impl IntoIterator<Item = &'a E>,
    evolve: impl Fn(S, &E) -> S,
) -> S {
    events.into_iter().fold(S::default(), evolve)
}

// ---------------------------------------------------------------------------------------
// Schema versions and upcasting
//
// The log is immutable: an event keeps the schema version it was written with forever.
// Readers decode the current shape only, so an older payload is first rewritten ("upcast")
// one version at a time by the upcasters below; a version newer than the current one, or
// a gap with no upcaster, is refused (fail closed), never guessed at.
//
// To change the shape of an event type (say `GrantRevoked`, from v1 to v2):
//   1. change the variant's fields to the new shape;
//   2. set its current version to 2 in `CURRENT_VERSIONS` (types not listed are at 1);
//   3. add an `Upcaster { event_type: "GrantRevoked", from: 1, upcast: grant_revoked_v1_to_v2 }`
//      to `UPCASTERS`, a pure function from a v1 payload to a v2 payload;
//   4. append a v2 line to `tests/fixtures/events.jsonl` (the generator in
//      `tests/event_fixtures.rs` appends lines for missing (type, current version) pairs).
// Never edit or delete an old fixture line: each one stands for events already in some log,
// which must keep decoding for as long as that log exists.
// ---------------------------------------------------------------------------------------

/// Rewrites a payload of version `from` into version `from + 1` of the same event type.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    pub event_type: &'static str,
    pub from: u32,
    pub upcast: fn(Value) -> Result<Value, String>,
}

/// The event types whose current schema version is above 1. Every other type is at 1.
const CURRENT_VERSIONS: &[(&str, u32)] = &[];

/// Every upcaster ever needed, one per (event type, from version).
const UPCASTERS: &[Upcaster] = &[];

/// The schema of the log: current versions and the upcasters that reach them.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub current: &'static [(&'static str, u32)],
    pub upcasters: &'static [Upcaster],
}

/// The schema this build reads and writes.
pub const SCHEMA: Schema = Schema {
    current: CURRENT_VERSIONS,
    upcasters: UPCASTERS,
};

/// The version events of `event_type` are written with today.
pub fn current_version(event_type: &str) -> u32 {
    SCHEMA.current_version(event_type)
}

impl Schema {
    pub fn current_version(&self, event_type: &str) -> u32 {
        self.current
            .iter()
            .find(|(t, _)| *t == event_type)
            .map_or(1, |(_, v)| *v)
    }

    /// Brings a payload of `version` up to the current version of `event_type`, one
    /// upcaster at a time. Fails closed on a version from the future or a missing step.
    pub fn upcast(
        &self,
        event_type: &str,
        mut version: u32,
        mut payload: Value,
    ) -> Result<Value, DecodeError> {
        let current = self.current_version(event_type);
        let unknown = |version| DecodeError::UnknownSchemaVersion {
            event_type: event_type.to_owned(),
            version,
        };
        if version > current {
            return Err(unknown(version));
        }
        while version < current {
            let step = self
                .upcasters
                .iter()
                .find(|u| u.event_type == event_type && u.from == version)
                .ok_or_else(|| unknown(version))?;
            payload = (step.upcast)(payload).map_err(|reason| DecodeError::Malformed {
                event_type: event_type.to_owned(),
                reason: format!("upcasting from version {version}: {reason}"),
            })?;
            version += 1;
        }
        Ok(payload)
    }
}

/// Event enums derive serde's externally tagged form `{"Variant": {fields}}`,
/// whose tag is the event type; the payload is the inner object.
pub(crate) fn encode<E: Serialize>(event: &E) -> Value {
    match serde_json::to_value(event) {
        Ok(Value::Object(tagged)) => tagged
            .into_iter()
            .next()
            .map_or(Value::Null, |(_, fields)| fields),
        // Unreachable for struct-variant enums of plain data; fail loudly if someone breaks that.
        other => panic!("event did not serialise to a tagged object: {other:?}"),
    }
}

pub(crate) fn decode<E: DeserializeOwned>(
    known: &[&str],
    event_type: &str,
    version: u32,
    payload: Value,
) -> Result<E, DecodeError> {
    decode_with(&SCHEMA, known, event_type, version, payload)
}

fn decode_with<E: DeserializeOwned>(
    schema: &Schema,
    known: &[&str],
    event_type: &str,
    version: u32,
    payload: Value,
) -> Result<E, DecodeError> {
    if !known.contains(&event_type) {
        return Err(DecodeError::UnknownType(event_type.to_owned()));
    }
    let payload = schema.upcast(event_type, version, payload)?;
    let tagged = Value::Object(Map::from_iter([(event_type.to_owned(), payload)]));
    serde_json::from_value(tagged).map_err(|e| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    })
}

/// Implements [`DomainEvent`] for an event enum whose variant names are the
/// event types, and lists those types in `EVENT_TYPES`.
macro_rules! domain_event {
    ($ty:ident { $($variant:ident),+ $(,)? }) => {
        impl $ty {
            pub const EVENT_TYPES: &'static [&'static str] = &[$(stringify!($variant)),+];
        }

        impl $crate::event::DomainEvent for $ty {
            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)+
                }
            }

            fn schema_version(&self) -> u32 {
                $crate::event::current_version($crate::event::DomainEvent::event_type(self))
            }

            fn to_payload(&self) -> serde_json::Value {
                $crate::event::encode(self)
            }

            fn from_payload(
                event_type: &str,
                schema_version: u32,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::event::DecodeError> {
                $crate::event::decode(Self::EVENT_TYPES, event_type, schema_version, payload)
            }
        }
    };
}
pub(crate) use domain_event;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client, code, consent, grant, user};
    use serde_json::json;

    #[test]
    fn event_types_are_unique_across_aggregates() {
        let all: Vec<&str> = [
            client::Event::EVENT_TYPES,
            user::Event::EVENT_TYPES,
            code::Event::EVENT_TYPES,
            grant::Event::EVENT_TYPES,
            consent::Event::EVENT_TYPES,
        ]
        .concat();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        assert_eq!(all.len(), 14);
    }

    #[test]
    fn unknown_type_and_version_fail_closed() {
        let payload = json!({"at": 1});
        assert_eq!(
            consent::Event::from_payload("ConsentRevoked", 1, payload.clone()),
            Ok(consent::Event::ConsentRevoked {
                at: crate::Timestamp::from_unix_millis(1)
            })
        );
        // Another aggregate's type is unknown here, even with a compatible payload.
        assert_eq!(
            consent::Event::from_payload("UserDisabled", 1, payload.clone()),
            Err(DecodeError::UnknownType("UserDisabled".into()))
        );
        assert_eq!(
            consent::Event::from_payload("consentrevoked", 1, payload.clone()),
            Err(DecodeError::UnknownType("consentrevoked".into()))
        );
        for version in [0, 2, u32::MAX] {
            assert_eq!(
                consent::Event::from_payload("ConsentRevoked", version, payload.clone()),
                Err(DecodeError::UnknownSchemaVersion {
                    event_type: "ConsentRevoked".into(),
                    version
                })
            );
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let cases = [
            ("ConsentRevoked", json!({})),                       // missing field
            ("ConsentRevoked", json!({"at": 1, "extra": true})), // unknown field
            ("ConsentRevoked", json!({"at": "yesterday"})),      // wrong type
            ("ConsentRevoked", json!([1])),                      // not an object
            ("ConsentGiven", json!({"scope": "read  write", "at": 1})), // invalid newtype
        ];
        for (event_type, payload) in cases {
            let result = consent::Event::from_payload(event_type, 1, payload.clone());
            assert!(
                matches!(&result, Err(DecodeError::Malformed { event_type: t, .. }) if t == event_type),
                "{payload}: {result:?}"
            );
        }
        let bad_client = json!({"grant_id": "00000000-0000-0000-0000-000000000001", "client_id": "a.b", "at": 1});
        assert!(matches!(
            code::Event::from_payload("CodeRedeemed", 1, bad_client),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn payload_has_no_type_tag() {
        let event = user::Event::UserDisabled {
            at: crate::Timestamp::from_unix_millis(5),
        };
        assert_eq!(event.to_payload(), json!({"at": 5}));
        assert_eq!(event.event_type(), "UserDisabled");
    }

    #[test]
    fn rejection_from_error_has_no_events() {
        let r: Rejection<user::Event, user::Error> = user::Error::NotFound.into();
        assert_eq!(
            r,
            Rejection {
                error: user::Error::NotFound,
                events: vec![]
            }
        );
        assert_eq!(r.to_string(), "user not found");
    }

    #[test]
    fn fold_applies_in_order() {
        let at = crate::Timestamp::from_unix_millis;
        let events = [
            consent::Event::ConsentGiven {
                scope: crate::ScopeSet::parse("a").unwrap(),
                at: at(1),
            },
            consent::Event::ConsentRevoked { at: at(2) },
            consent::Event::ConsentGiven {
                scope: crate::ScopeSet::parse("b").unwrap(),
                at: at(3),
            },
        ];
        let state: consent::State = fold(&events, consent::evolve);
        assert_eq!(state.scope(), &crate::ScopeSet::parse("b").unwrap());
    }
}
