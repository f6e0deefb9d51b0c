//! Signing-key messages: each names one lifecycle step and carries the whole public key,
//! so a consumer that missed earlier steps (expired from the stream) still has the key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DecodeError, SUBJECT_PREFIX};

/// What happened to a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyEventType {
    /// In the JWKS; it signs from `activates_at`.
    #[serde(rename = "key.published")]
    KeyPublished,
    /// It signs new tokens.
    #[serde(rename = "key.activated")]
    KeyActivated,
    /// It signs no more; what it signed stays verifiable until `published_until`.
    #[serde(rename = "key.retired")]
    KeyRetired,
}

impl KeyEventType {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyEventType::KeyPublished => "key.published",
            KeyEventType::KeyActivated => "key.activated",
            KeyEventType::KeyRetired => "key.retired",
        }
    }

    /// `valet.v1.key.<event>`.
    pub fn subject(self) -> String {
        format!("{SUBJECT_PREFIX}.{}", self.as_str())
    }
}

/// JWK members that carry private key material (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037):
/// a key message holding one is refused.
const PRIVATE_MEMBERS: [&str; 9] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "r"];

/// A signing key as it stands after one lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEvent {
    pub schema_version: u32,
    /// The id of the event in Valet's log (also the `Nats-Msg-Id` header).
    pub event_id: String,
    /// The event's position in Valet's log (see [`crate::TokenEvent::position`]).
    pub position: i64,
    #[serde(rename = "type")]
    pub event_type: KeyEventType,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    /// The key id tokens name in their header.
    pub kid: String,
    /// The JWS algorithm the key signs with: `RS256`, `ES256` or `EdDSA`.
    pub alg: String,
    /// The public key as the JWKS shows it (`kty`, its public members, `kid`, `alg`, `use`).
    pub jwk: BTreeMap<String, String>,
    /// Unix seconds: when it started (or starts) signing.
    pub activates_at: i64,
    /// Unix seconds (key.retired): when it stopped signing. A token it signed later is
    /// forged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
    /// Unix seconds (key.retired): after this nothing it signed is still valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_until: Option<i64>,
}

impl KeyEvent {
    pub fn subject(&self) -> String {
        self.event_type.subject()
    }

    pub(crate) fn checked(self) -> Result<Self, DecodeError> {
        if let Some(private) = self
            .jwk
            .keys()
            .find(|member| PRIVATE_MEMBERS.contains(&member.as_str()))
        {
            return Err(DecodeError::Malformed(format!(
                "key {} carries the private JWK member {private:?}",
                self.kid
            )));
        }
        if !self.jwk.contains_key("kty") {
            return Err(DecodeError::Malformed(format!(
                "key {} has no kty",
                self.kid
            )));
        }
        Ok(self)
    }
}
