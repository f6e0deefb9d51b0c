//! The public contract between Valet and resource services: the NATS JetStream stream,
//! its subjects, and the JSON payload of every message: token lifecycle events
//! ([`TokenEvent`]) and signing-key lifecycle events ([`KeyEvent`]), read together as
//! [`Message`].
//!
//! This crate is the stability boundary. It depends on nothing of Valet, so a resource
//! service links it without the server. A changed payload shape gets a new
//! `schema_version`; consumers refuse versions they do not know (fail closed) rather
//! than skipping what might be a revocation.

use serde::{Deserialize, Serialize};

mod key;
mod message;

pub use key::{KeyEvent, KeyEventType};
pub use message::Message;

/// The JetStream stream holding token lifecycle events.
pub const STREAM: &str = "VALET_TOKENS";
/// Every subject of the stream starts with this.
pub const SUBJECT_PREFIX: &str = "valet.v1";
/// The stream's subject filter.
pub const SUBJECTS: &str = "valet.v1.>";
/// The message header carrying the event id, used by JetStream to drop duplicates. A
/// message published again after JetStream answered it as a duplicate without holding
/// it carries `<event id>:<suffix>` (see [`event_id_of_msg_id`]); its payload is the
/// same event, so consumers drop copies by the payload's `event_id`, not this header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The event id a `Nats-Msg-Id` names: the header itself, or what precedes the first
/// `:` of a message published again under a new id.
pub fn event_id_of_msg_id(msg_id: &str) -> &str {
    msg_id
        .split_once(':')
        .map_or(msg_id, |(event_id, _)| event_id)
}
/// The payload schema this crate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The servers of a NATS URL setting: one URL, or a comma-separated list of a cluster's
/// servers (a client reconnects to another when its server goes away).
pub fn nats_servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// TLS to NATS beyond what a `tls://` URL asks for: the roots to trust instead of the
/// system's, and a client certificate for servers that verify clients (mutual TLS).
/// Files are PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    pub ca_file: Option<std::path::PathBuf>,
    /// Certificate chain and private key.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl NatsTls {
    /// Whether the connection must be TLS: a `tls://` URL, or any file given.
    pub fn required(&self, urls: &str) -> bool {
        self.ca_file.is_some()
            || self.client_cert.is_some()
            || nats_servers(urls)
                .iter()
                .any(|url| url.len() >= 6 && url[..6].eq_ignore_ascii_case("tls://"))
    }
}

/// What happened to a token or grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "token.issued")]
    TokenIssued,
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    #[serde(rename = "grant.revoked")]
    GrantRevoked,
}

impl EventType {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::TokenIssued => "token.issued",
            EventType::TokenRevoked => "token.revoked",
            EventType::GrantRevoked => "grant.revoked",
        }
    }

    /// `valet.v1.<type>.<client_id>`; client ids are subject-safe by construction.
    pub fn subject(self, client_id: &str) -> String {
        format!("{SUBJECT_PREFIX}.{}.{client_id}", self.as_str())
    }
}

/// Why a token or grant stopped being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    ClientRequest,
    CodeReplay,
    RefreshReuse,
    ConsentRevoked,
    UserDisabled,
    ClientDisabled,
    Admin,
}

/// One message on the stream. Token events carry the token's SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEvent {
    pub schema_version: u32,
    /// The id of the event in Valet's log (also the `Nats-Msg-Id` header).
    pub event_id: String,
    /// The event's position in Valet's log. Messages arrive in the log's commit order,
    /// which is by (transaction, position): positions are unique but NOT increasing
    /// along the stream, so consumers deduplicate by `event_id`, not by position.
    pub position: i64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    pub client_id: String,
    pub grant_id: String,
    /// Lowercase hex SHA-256 of the token string (token events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// `access_token` (token events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// The user the token acts for; absent for client_credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Space-separated, as in OAuth (token.issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Unix seconds (token.issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Revocations only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RevocationReason>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A payload written by a newer (or unknown) schema: stop, do not skip it.
    #[error("unknown schema version {0} (this consumer knows {SCHEMA_VERSION})")]
    UnknownSchemaVersion(u32),
    #[error("malformed token event: {0}")]
    Malformed(String),
}

impl TokenEvent {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a token event always serialises")
    }

    /// Reads a token message, refusing unknown schema versions before anything else (a
    /// consumer of the whole stream reads [`Message`]s: key events share it).
    pub fn from_json(payload: &[u8]) -> Result<Self, DecodeError> {
        match Message::from_json(payload)? {
            Message::Token(event) => Ok(event),
            Message::Key(event) => Err(DecodeError::Malformed(format!(
                "{} is a key event, not a token event",
                event.event_type.as_str()
            ))),
        }
    }

    pub fn subject(&self) -> String {
        self.event_type.subject(&self.client_id)
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339_from_unix_millis(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day); H. Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_names_its_event_with_or_without_a_suffix() {
        let id = "0192f4d2-0000-7000-8000-000000000001";
        assert_eq!(event_id_of_msg_id(id), id);
        assert_eq!(event_id_of_msg_id(&format!("{id}:1765104000000")), id);
    }

    fn sample() -> TokenEvent {
        TokenEvent {
            schema_version: SCHEMA_VERSION,
            event_id: "0192f4d2-0000-7000-8000-000000000001".into(),
            position: 42,
            event_type: EventType::TokenIssued,
            occurred_at: rfc3339_from_unix_millis(0),
            client_id: "app".into(),
            grant_id: "0192f4d2-0000-7000-8000-000000000002".into(),
            token_sha256: Some("ab".repeat(32)),
            token_type: Some("access_token".into()),
            sub: None,
            username: None,
            scope: Some("read write".into()),
            expires_at: Some(3600),
            reason: None,
        }
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339_from_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_unix_millis(1_764_300_000_123),
            "2025-11-28T03:20:00.123Z"
        );
        assert_eq!(
            rfc3339_from_unix_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(rfc3339_from_unix_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(
            EventType::TokenIssued.subject("app"),
            "valet.v1.token.issued.app"
        );
        assert_eq!(
            EventType::TokenRevoked.subject("app"),
            "valet.v1.token.revoked.app"
        );
        assert_eq!(
            EventType::GrantRevoked.subject("app"),
            "valet.v1.grant.revoked.app"
        );
    }

    #[test]
    fn round_trip_and_wire_names() {
        let mut event = sample();
        event.reason = Some(RevocationReason::RefreshReuse);
        let json = event.to_json();
        let text = String::from_utf8(json.clone()).expect("utf-8");
        assert!(text.contains("\"type\":\"token.issued\""), "{text}");
        assert!(text.contains("\"reason\":\"refresh_reuse\""), "{text}");
        assert!(
            !text.contains("\"sub\""),
            "absent fields are omitted: {text}"
        );
        assert_eq!(TokenEvent::from_json(&json).expect("decode"), event);
    }

    fn key_event() -> KeyEvent {
        KeyEvent {
            schema_version: SCHEMA_VERSION,
            event_id: "0192f4d2-0000-7000-8000-000000000003".into(),
            position: 7,
            event_type: KeyEventType::KeyPublished,
            occurred_at: rfc3339_from_unix_millis(0),
            kid: "k1".into(),
            alg: "ES256".into(),
            jwk: [("kty", "EC"), ("crv", "P-256"), ("x", "AQ"), ("y", "Ag")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            activates_at: 300,
            retired_at: None,
            published_until: None,
        }
    }

    #[test]
    fn key_events_share_the_stream_with_token_events() {
        assert_eq!(
            KeyEventType::KeyPublished.subject(),
            "valet.v1.key.published"
        );
        assert_eq!(
            KeyEventType::KeyActivated.subject(),
            "valet.v1.key.activated"
        );
        assert_eq!(KeyEventType::KeyRetired.subject(), "valet.v1.key.retired");
        let key = Message::from(key_event());
        let json = key.to_json();
        let text = String::from_utf8(json.clone()).expect("utf-8");
        assert!(text.contains("\"type\":\"key.published\""), "{text}");
        assert_eq!(Message::from_json(&json).expect("decode"), key);
        let token = Message::from(sample());
        assert_eq!(Message::from_json(&token.to_json()).expect("decode"), token);
        assert_eq!(token.event_id(), sample().event_id);
        // A reader of token events only is told what it met, not handed a wrong event.
        let err = TokenEvent::from_json(&json).expect_err("not a token event");
        assert!(err.to_string().contains("key.published"), "{err}");
    }

    #[test]
    fn a_key_event_with_private_key_material_is_refused() {
        let mut event = key_event();
        event.jwk.insert("d".into(), "secret".into());
        let err = Message::from_json(&Message::from(event).to_json()).expect_err("refused");
        assert!(err.to_string().contains("\"d\""), "{err}");
        let mut event = key_event();
        event.jwk.remove("kty");
        assert!(Message::from_json(&Message::from(event).to_json()).is_err());
    }

    #[test]
    fn unknown_schema_versions_fail_closed() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&sample().to_json()).expect("json");
        value["schema_version"] = 2.into();
        let err = TokenEvent::from_json(value.to_string().as_bytes()).expect_err("must refuse");
        assert!(matches!(err, DecodeError::UnknownSchemaVersion(2)));
        let mut key: serde_json::Value =
            serde_json::from_slice(&Message::from(key_event()).to_json()).expect("json");
        key["schema_version"] = 2.into();
        assert!(matches!(
            Message::from_json(key.to_string().as_bytes()),
            Err(DecodeError::UnknownSchemaVersion(2))
        ));
        value
            .as_object_mut()
            .expect("object")
            .remove("schema_version");
        assert!(TokenEvent::from_json(value.to_string().as_bytes()).is_err());
    }
}
