//! Any message of the stream: a token event or a signing-key event, told apart by `type`.

use serde::Deserialize;

use crate::{DecodeError, KeyEvent, TokenEvent, SCHEMA_VERSION};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Token(TokenEvent),
    Key(KeyEvent),
}

impl Message {
    /// Reads a message payload, refusing unknown schema versions before anything else.
    pub fn from_json(payload: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Head {
            schema_version: Option<u32>,
            #[serde(rename = "type")]
            event_type: Option<String>,
        }
        let head: Head =
            serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        match head.schema_version {
            Some(SCHEMA_VERSION) => {}
            Some(other) => return Err(DecodeError::UnknownSchemaVersion(other)),
            None => return Err(DecodeError::Malformed("no schema_version".into())),
        }
        let malformed = |e: serde_json::Error| DecodeError::Malformed(e.to_string());
        match head.event_type.as_deref() {
            Some(t) if t.starts_with("key.") => serde_json::from_slice::<KeyEvent>(payload)
                .map_err(malformed)?
                .checked()
                .map(Message::Key),
            _ => serde_json::from_slice(payload)
                .map(Message::Token)
                .map_err(malformed),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Message::Token(event) => event.to_json(),
            Message::Key(event) => {
                serde_json::to_vec(event).expect("a key event always serialises")
            }
        }
    }

    /// The log event's id (the `Nats-Msg-Id` header).
    pub fn event_id(&self) -> &str {
        match self {
            Message::Token(event) => &event.event_id,
            Message::Key(event) => &event.event_id,
        }
    }

    pub fn subject(&self) -> String {
        match self {
            Message::Token(event) => event.subject(),
            Message::Key(event) => event.subject(),
        }
    }

    pub fn token(&self) -> Option<&TokenEvent> {
        match self {
            Message::Token(event) => Some(event),
            Message::Key(_) => None,
        }
    }

    pub fn into_token(self) -> Option<TokenEvent> {
        match self {
            Message::Token(event) => Some(event),
            Message::Key(_) => None,
        }
    }
}

impl From<TokenEvent> for Message {
    fn from(event: TokenEvent) -> Self {
        Message::Token(event)
    }
}

impl From<KeyEvent> for Message {
    fn from(event: KeyEvent) -> Self {
        Message::Key(event)
    }
}
