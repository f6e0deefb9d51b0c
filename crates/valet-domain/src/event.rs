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
    /// The payload as JSON text, as the log stores it.
    fn payload_json(&self) -> String;
    /// Fails closed: an unknown type or schema version is an error, never skipped.
    fn from_payload(
        event_type: &str,
        schema_version: u32,
        payload: Value,
    ) -> Result<Self, DecodeError>;

    /// Like [`from_payload`](Self::from_payload), from the payload's JSON text. A payload
    /// at the current version is parsed straight into the event (no intermediate
    /// `Value`), which is what makes replays of millions of events fast; older versions
    /// go through the upcasters.
    fn from_payload_json(
        event_type: &str,
        schema_version: u32,
        payload: &str,
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
//   4. append v2 lines to `tests/fixtures/events.jsonl`: update the sample in
//      `tests/fixture_samples/mod.rs`, then run
//      `cargo run -p valet-domain --example append_fixtures`
//      (it appends lines for the (type, current version) pairs the file lacks).
// Never edit or delete an old fixture line: each one stands for events already in some log,
// which must keep decoding for as long as that log exists.
// ---------------------------------------------------------------------------------------

/// Rewrites a payload of version `from` into version `from + 1` of the same event type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upcaster {
    pub(crate) event_type: &'static str,
    pub(crate) from: u32,
    pub(crate) upcast: fn(Value) -> Result<Value, String>,
}

/// The event types whose current schema version is above 1. Every other type is at 1.
const CURRENT_VERSIONS: &[(&str, u32)] = &[("CodeIssued", 3)];

/// Every upcaster ever needed, one per (event type, from version).
const UPCASTERS: &[Upcaster] = &[
    Upcaster {
        event_type: "CodeIssued",
        from: 1,
        upcast: code_issued_v1_to_v2,
    },
    Upcaster {
        event_type: "CodeIssued",
        from: 2,
        upcast: code_issued_v2_to_v3,
    },
];

/// `CodeIssued` v2 (OpenID Connect) adds the request's `nonce` and the sign-in time
/// `auth_time`; a version-1 code had neither.
fn code_issued_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let fields = payload
        .as_object_mut()
        .ok_or_else(|| "the payload is not an object".to_owned())?;
    fields.insert("nonce".to_owned(), Value::Null);
    fields.insert("auth_time".to_owned(), Value::Null);
    Ok(payload)
}

/// `CodeIssued` v3 adds the sign-in session `sid`; a version-2 code had none.
fn code_issued_v2_to_v3(mut payload: Value) -> Result<Value, String> {
    payload
        .as_object_mut()
        .ok_or_else(|| "the payload is not an object".to_owned())?
        .insert("sid".to_owned(), Value::Null);
    Ok(payload)
}

/// The schema of the log: current versions and the upcasters that reach them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema {
    current: &'static [(&'static str, u32)],
    upcasters: &'static [Upcaster],
}

/// The schema this build reads and writes.
const SCHEMA: Schema = Schema {
    current: CURRENT_VERSIONS,
    upcasters: UPCASTERS,
};

/// The version events of `event_type` are written with today.
pub fn current_version(event_type: &str) -> u32 {
    SCHEMA.current_version(event_type)
}

impl Schema {
    fn current_version(&self, event_type: &str) -> u32 {
        self.current
            .iter()
            .find(|(t, _)| *t == event_type)
            .map_or(1, |(_, v)| *v)
    }

    /// Brings a payload of `version` up to the current version of `event_type`, one
    /// upcaster at a time. Fails closed on a version from the future or a missing step.
    fn upcast(
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

/// [`encode`] as JSON text, straight from the serializer: `{"<type>":<payload>}` less
/// the tag (event types are plain identifiers, never escaped).
pub(crate) fn encode_json<E: Serialize>(event: &E, event_type: &str) -> String {
    let mut text = match serde_json::to_string(event) {
        Ok(text) => text,
        // Unreachable for struct-variant enums of plain data; fail loudly if someone breaks that.
        Err(e) => panic!("event did not serialise: {e}"),
    };
    let tag = event_type.len() + 4; // {"<type>":
    debug_assert!(text.starts_with("{\"") && text.ends_with('}'), "{text}");
    text.truncate(text.len() - 1);
    text.drain(..tag);
    text
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

pub(crate) fn decode_json<E: DeserializeOwned>(
    known: &[&str],
    event_type: &str,
    version: u32,
    payload: &str,
) -> Result<E, DecodeError> {
    if !known.contains(&event_type) {
        return Err(DecodeError::UnknownType(event_type.to_owned()));
    }
    let malformed = |e: serde_json::Error| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    };
    if version != SCHEMA.current_version(event_type) {
        let value: Value = serde_json::from_str(payload).map_err(malformed)?;
        return decode(known, event_type, version, value);
    }
    // The externally tagged form {"<type>": <payload>}; event types are plain
    // identifiers, so they need no escaping.
    let mut tagged = String::with_capacity(payload.len() + event_type.len() + 5);
    tagged.push_str("{\"");
    tagged.push_str(event_type);
    tagged.push_str("\":");
    tagged.push_str(payload);
    tagged.push('}');
    serde_json::from_str(&tagged).map_err(malformed)
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

            fn payload_json(&self) -> String {
                $crate::event::encode_json(self, $crate::event::DomainEvent::event_type(self))
            }

            fn from_payload(
                event_type: &str,
                schema_version: u32,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::event::DecodeError> {
                $crate::event::decode(Self::EVENT_TYPES, event_type, schema_version, payload)
            }

            fn from_payload_json(
                event_type: &str,
                schema_version: u32,
                payload: &str,
            ) -> Result<Self, $crate::event::DecodeError> {
                $crate::event::decode_json(Self::EVENT_TYPES, event_type, schema_version, payload)
            }
        }
    };
}
pub(crate) use domain_event;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backchannel, client, code, consent, grant, session, signing_key, user};
    use serde_json::json;

    #[test]
    fn event_types_are_unique_across_aggregates() {
        let all: Vec<&str> = [
            client::Event::EVENT_TYPES,
            user::Event::EVENT_TYPES,
            code::Event::EVENT_TYPES,
            grant::Event::EVENT_TYPES,
            consent::Event::EVENT_TYPES,
            signing_key::Event::EVENT_TYPES,
            session::Event::EVENT_TYPES,
            backchannel::Event::EVENT_TYPES,
        ]
        .concat();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        assert_eq!(all.len(), 36);
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
    // ----- upcasting ---------------------------------------------------------------------

    /// A synthetic history: ConsentGiven v0 had a list of scopes and a time in seconds.
    fn consent_given_v0_to_v1(mut payload: Value) -> Result<Value, String> {
        let fields = payload.as_object_mut().ok_or("not an object")?;
        let scopes = fields.remove("scopes").ok_or("no scopes")?;
        let scopes: Vec<&str> = scopes
            .as_array()
            .ok_or("scopes is not a list")?
            .iter()
            .map(|s| s.as_str().ok_or("a scope is not a string"))
            .collect::<Result<_, _>>()?;
        let seconds = fields
            .remove("at_seconds")
            .and_then(|s| s.as_i64())
            .ok_or("no at_seconds")?;
        Ok(json!({"scope": scopes.join(" "), "at": seconds * 1000}))
    }

    const V0_SCHEMA: Schema = Schema {
        current: &[],
        upcasters: &[Upcaster {
            event_type: "ConsentGiven",
            from: 0,
            upcast: consent_given_v0_to_v1,
        }],
    };

    fn decode_consent(
        schema: &Schema,
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<consent::Event, DecodeError> {
        decode_with(
            schema,
            consent::Event::EVENT_TYPES,
            event_type,
            version,
            payload,
        )
    }

    #[test]
    fn an_old_payload_is_upcast_then_decoded() {
        let v0 = json!({"scopes": ["read", "write"], "at_seconds": 7});
        let expected = consent::Event::ConsentGiven {
            scope: crate::ScopeSet::parse("read write").unwrap(),
            at: crate::Timestamp::from_unix_millis(7000),
        };
        assert_eq!(
            decode_consent(&V0_SCHEMA, "ConsentGiven", 0, v0.clone()),
            Ok(expected.clone())
        );
        // The current version goes through untouched.
        assert_eq!(
            decode_consent(&V0_SCHEMA, "ConsentGiven", 1, expected.to_payload()),
            Ok(expected)
        );
        // No upcaster for another type's v0, and nothing from the future.
        assert_eq!(
            decode_consent(&V0_SCHEMA, "ConsentRevoked", 0, json!({"at": 1})),
            Err(DecodeError::UnknownSchemaVersion {
                event_type: "ConsentRevoked".into(),
                version: 0
            })
        );
        assert_eq!(
            decode_consent(
                &V0_SCHEMA,
                "ConsentGiven",
                2,
                json!({"scope": "read", "at": 1})
            ),
            Err(DecodeError::UnknownSchemaVersion {
                event_type: "ConsentGiven".into(),
                version: 2
            })
        );
        // An upcaster that cannot make sense of a payload refuses it.
        let result = decode_consent(&V0_SCHEMA, "ConsentGiven", 0, json!({"scopes": "read"}));
        assert!(
            matches!(&result, Err(DecodeError::Malformed { event_type, reason })
                if event_type == "ConsentGiven" && reason.starts_with("upcasting from version 0")),
            "{result:?}"
        );
        // The upcast payload still has to be a valid current event.
        let result = decode_consent(
            &V0_SCHEMA,
            "ConsentGiven",
            0,
            json!({"scopes": ["caf\u{e9}"], "at_seconds": 1}),
        );
        assert!(
            matches!(result, Err(DecodeError::Malformed { .. })),
            "{result:?}"
        );
    }

    fn step(marker: &str, mut payload: Value) -> Result<Value, String> {
        payload["steps"]
            .as_array_mut()
            .ok_or("no steps")?
            .push(json!(marker));
        Ok(payload)
    }

    #[test]
    fn upcasters_chain_in_order_and_a_gap_fails_closed() {
        const CHAIN: &[Upcaster] = &[
            // Deliberately out of order: lookup is by (type, from), not by position.
            Upcaster {
                event_type: "T",
                from: 2,
                upcast: |p| step("2->3", p),
            },
            Upcaster {
                event_type: "T",
                from: 0,
                upcast: |p| step("0->1", p),
            },
            Upcaster {
                event_type: "T",
                from: 1,
                upcast: |p| step("1->2", p),
            },
            Upcaster {
                event_type: "U",
                from: 1,
                upcast: |_| Err("never".into()),
            },
        ];
        let schema = Schema {
            current: &[("T", 3)],
            upcasters: CHAIN,
        };
        let start = json!({"steps": []});
        assert_eq!(schema.current_version("T"), 3);
        assert_eq!(
            schema.current_version("U"),
            1,
            "unlisted types are at version 1"
        );
        assert_eq!(
            schema.upcast("T", 0, start.clone()),
            Ok(json!({"steps": ["0->1", "1->2", "2->3"]}))
        );
        assert_eq!(
            schema.upcast("T", 2, start.clone()),
            Ok(json!({"steps": ["2->3"]}))
        );
        assert_eq!(schema.upcast("T", 3, start.clone()), Ok(start.clone()));
        assert_eq!(
            schema.upcast("T", 4, start.clone()),
            Err(DecodeError::UnknownSchemaVersion {
                event_type: "T".into(),
                version: 4
            })
        );
        // "U" is at version 1: its 1->2 upcaster is never used.
        assert_eq!(schema.upcast("U", 1, start.clone()), Ok(start.clone()));

        let gap = Schema {
            current: &[("T", 3)],
            upcasters: &CHAIN[..2],
        };
        assert_eq!(
            gap.upcast("T", 0, start.clone()),
            Err(DecodeError::UnknownSchemaVersion {
                event_type: "T".into(),
                version: 1
            })
        );
        assert_eq!(
            gap.upcast("T", 2, start.clone()),
            Ok(json!({"steps": ["2->3"]}))
        );
    }

    #[test]
    fn the_schema_in_force_is_consistent() {
        let all: Vec<&str> = [
            client::Event::EVENT_TYPES,
            user::Event::EVENT_TYPES,
            code::Event::EVENT_TYPES,
            grant::Event::EVENT_TYPES,
            consent::Event::EVENT_TYPES,
        ]
        .concat();
        for (event_type, version) in SCHEMA.current {
            assert!(
                all.contains(event_type),
                "current version of unknown type {event_type}"
            );
            assert!(*version > 1, "{event_type}: list only versions above 1");
            // Every version since 1 can be brought up to date.
            for from in 1..*version {
                assert!(
                    SCHEMA
                        .upcasters
                        .iter()
                        .any(|u| u.event_type == *event_type && u.from == from),
                    "{event_type}: no upcaster from version {from}"
                );
            }
        }
        for (i, u) in SCHEMA.upcasters.iter().enumerate() {
            assert!(
                all.contains(&u.event_type),
                "upcaster of unknown type {}",
                u.event_type
            );
            assert!(
                u.from < current_version(u.event_type),
                "{} from {} is never used",
                u.event_type,
                u.from
            );
            assert!(
                !SCHEMA.upcasters[..i]
                    .iter()
                    .any(|v| v.event_type == u.event_type && v.from == u.from),
                "two upcasters of {} from {}",
                u.event_type,
                u.from
            );
        }
    }
}
