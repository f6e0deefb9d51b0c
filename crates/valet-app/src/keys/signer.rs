//! Signing JWTs with the ring's active keys: a cache of the unsealed keys, kept current
//! by the ring's loop, behind the [`JwtSigner`] port the use cases sign through.

use std::collections::HashMap;
use std::sync::RwLock;

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use valet_domain::signing_key::{Algorithm, KeyId};

use super::{KeyVault, KeysError, SigningKeys};
use crate::clock::Clock;
use crate::ports::EventStore;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no active {0} signing key")]
    NoKey(Algorithm),
    #[error("signing failed: {0}")]
    Failed(String),
}

/// What a JWT is, as its header's `typ` says: verifiers tell an access token from an
/// id_token by it (RFC 9068 §2.1), so one cannot be passed off as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtType {
    /// `JWT`.
    IdToken,
    /// `at+jwt` (RFC 9068).
    AccessToken,
    /// `logout+jwt` (OpenID Connect Back-Channel Logout 1.0 §2.4).
    LogoutToken,
}

impl JwtType {
    pub const fn as_str(self) -> &'static str {
        match self {
            JwtType::IdToken => "JWT",
            JwtType::AccessToken => "at+jwt",
            JwtType::LogoutToken => "logout+jwt",
        }
    }
}

/// Signs a JWT's claims with the active key of an algorithm; the header names the key.
pub trait JwtSigner: Send + Sync + 'static {
    fn sign_json(
        &self,
        algorithm: Algorithm,
        typ: JwtType,
        claims: &serde_json::Value,
    ) -> Result<String, SignError>;
}

/// Signs nothing: a server without signing keys (unit tests of plain OAuth 2.0).
#[derive(Debug, Default)]
pub struct NoKeys;

impl JwtSigner for NoKeys {
    fn sign_json(
        &self,
        algorithm: Algorithm,
        _: JwtType,
        _: &serde_json::Value,
    ) -> Result<String, SignError> {
        Err(SignError::NoKey(algorithm))
    }
}

struct Active {
    key_id: KeyId,
    key: EncodingKey,
}

/// The active keys, unsealed, by algorithm.
#[derive(Default)]
pub struct ActiveKeys {
    keys: RwLock<HashMap<Algorithm, Active>>,
}

impl std::fmt::Debug for ActiveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActiveKeys(…)")
    }
}

fn encoding_key(algorithm: Algorithm, der: &[u8]) -> EncodingKey {
    match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_der(der),
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        Algorithm::EdDSA => EncodingKey::from_ed_der(der),
    }
}

fn jose(algorithm: Algorithm) -> jsonwebtoken::Algorithm {
    match algorithm {
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
    }
}

impl ActiveKeys {
    /// Loads the ring's active keys that are not cached yet (a rotation took effect).
    pub async fn refresh<S: EventStore, V: KeyVault, C: Clock>(
        &self,
        ring_keys: &SigningKeys<S, V, C>,
    ) -> Result<(), KeysError> {
        let ring = ring_keys.ring().await?;
        for algorithm in Algorithm::ALL {
            let Some(active) = ring.active(algorithm) else {
                continue;
            };
            let cached = self
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&algorithm)
                .map(|a| a.key_id);
            if cached == Some(active.key_id) {
                continue;
            }
            let der = ring_keys
                .private_der(active.key_id)
                .await?
                .ok_or(KeysError::Missing(active.key_id))?;
            let key = encoding_key(algorithm, &der);
            self.keys.write().unwrap_or_else(|p| p.into_inner()).insert(
                algorithm,
                Active {
                    key_id: active.key_id,
                    key,
                },
            );
        }
        Ok(())
    }
}

impl JwtSigner for ActiveKeys {
    fn sign_json(
        &self,
        algorithm: Algorithm,
        typ: JwtType,
        claims: &serde_json::Value,
    ) -> Result<String, SignError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let active = keys.get(&algorithm).ok_or(SignError::NoKey(algorithm))?;
        let mut header = Header::new(jose(algorithm));
        header.typ = Some(typ.as_str().to_owned());
        header.kid = Some(active.key_id.to_string());
        jsonwebtoken::encode(&header, claims, &active.key)
            .map_err(|e| SignError::Failed(e.to_string()))
    }
}

/// The claims of a JWT access token (RFC 9068 §2.2).
#[derive(Debug, Clone, Serialize)]
pub struct AccessTokenClaims<'a> {
    pub iss: &'a str,
    pub exp: i64,
    pub aud: &'a str,
    /// The user's id, or the client's own id for a client acting for itself.
    pub sub: &'a str,
    pub client_id: &'a str,
    pub iat: i64,
    pub jti: String,
    /// Space-separated, as in OAuth.
    pub scope: String,
}

/// The claims of a logout token (OpenID Connect Back-Channel Logout 1.0 §2.4): never a
/// `nonce`, so it cannot pass for an id_token.
#[derive(Debug, Clone, Serialize)]
pub struct LogoutTokenClaims<'a> {
    pub iss: &'a str,
    pub sub: String,
    pub aud: &'a str,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub events: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// The `events` member of every logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The claims of an id_token (OpenID Connect Core §2).
#[derive(Debug, Clone, Serialize)]
pub struct IdTokenClaims<'a> {
    pub iss: &'a str,
    pub sub: String,
    pub aud: &'a str,
    pub exp: i64,
    pub iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}
