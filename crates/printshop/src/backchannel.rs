//! OpenID Connect Back-Channel Logout 1.0 at Printshop: Valet POSTs a logout token when
//! a Valet session Alice signed in to Printshop with ends, when she removes Printshop
//! from her account, or when she is disabled. Printshop checks it (§2.6) with the
//! `jsonwebtoken` crate against Valet's JWKS and signs her out here.

use std::sync::Mutex;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Whom a valid logout token signs out: the sessions of `sid`, or all of `sub`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutFor {
    pub sub: Option<String>,
    pub sid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    sid: Option<String>,
    events: serde_json::Map<String, serde_json::Value>,
    nonce: Option<serde_json::Value>,
}

pub struct LogoutTokens {
    issuer: String,
    client_id: String,
    jwks_uri: String,
    http: reqwest::Client,
    keys: Mutex<JwkSet>,
}

impl LogoutTokens {
    pub fn new(issuer: String, client_id: String, jwks_uri: String, http: reqwest::Client) -> Self {
        LogoutTokens {
            issuer,
            client_id,
            jwks_uri,
            http,
            keys: Mutex::new(JwkSet { keys: Vec::new() }),
        }
    }

    async fn refresh_keys(&self) -> Result<(), String> {
        let set: JwkSet = self
            .http
            .get(&self.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("cannot read the JWKS: {e}"))?
            .json()
            .await
            .map_err(|e| format!("the JWKS is not a key set: {e}"))?;
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    /// The key named `kid` and its algorithm (never the token's own `alg`).
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), String> {
        for attempt in 0..2 {
            if attempt == 1 {
                // A key rotated in since the last read.
                self.refresh_keys().await?;
            }
            let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(jwk) = keys.find(kid) {
                let alg = jwk
                    .common
                    .key_algorithm
                    .ok_or("the key names no algorithm")?
                    .to_string()
                    .parse::<Algorithm>()
                    .map_err(|e| format!("unusable key algorithm: {e}"))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
                return Ok((key, alg));
            }
        }
        Err(format!("no key {kid} in the JWKS"))
    }

    /// Checks a logout token (§2.6): signature by a key of the JWKS with that key's
    /// algorithm, `iss`, `aud`, `iat`/`exp`, the back-channel logout event, `sub` or
    /// `sid`, no `nonce`. The same token twice signs out twice, which is harmless: Valet
    /// sends a token again (same `jti`) when it did not hear the first answer.
    pub async fn verify(&self, token: &str) -> Result<LogoutFor, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        if header.typ.as_deref().is_some_and(|t| t != "logout+jwt") {
            return Err("not a logout token (typ)".into());
        }
        let kid = header.kid.ok_or("the token names no key")?;
        let (key, alg) = self.key(&kid).await?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| format!("the logout token does not verify: {e}"))?
            .claims;
        if !claims.events.get(EVENT).is_some_and(|e| e.is_object()) {
            return Err("no back-channel logout event".into());
        }
        if claims.nonce.is_some() {
            return Err("a logout token never carries a nonce".into());
        }
        if claims.sub.is_none() && claims.sid.is_none() {
            return Err("neither sub nor sid".into());
        }
        Ok(LogoutFor {
            sub: claims.sub,
            sid: claims.sid,
        })
    }
}
