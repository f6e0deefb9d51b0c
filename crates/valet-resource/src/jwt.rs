//! JWT access tokens (RFC 9068) verified offline: the signature under a key Valet
//! announced on the stream (or in its JWKS at start), the algorithm pinned to that key's,
//! `typ`, `iss`, `aud`, `exp` and `nbf` checked with a small clock-skew allowance. A token
//! verified once is answered from a cache keyed by its digest until it expires; the
//! store is asked first every time, so a revocation is never hidden behind the cache.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::RwLock;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde::Deserialize;

use crate::keys::KeyRing;
use crate::store::{Key, KeyHasher};
use crate::{Source, TokenDetails, TokenDigest, TokenInfo};

/// How this service checks JWT access tokens. See [`crate::ValidatorConfig::with_jwt`].
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Valet's issuer identifier, exactly as its discovery document says.
    pub issuer: String,
    /// The `aud` this service answers to: Valet's `--access-token-audience` (by default
    /// the issuer).
    pub audience: String,
    /// Valet's `jwks_uri`, read once at start for keys announced longer ago than the
    /// stream keeps messages (a key usually outlives the stream's `max_age`). Default:
    /// `<issuer>/jwks.json`, where Valet serves it. `None`: keys come from the stream
    /// only, and a JWT under an older key is refused.
    pub jwks_uri: Option<String>,
    /// Clock difference allowed for `exp`, `nbf` and `iat`. Default: 30 s.
    pub leeway: Duration,
    /// How many verified tokens are remembered. Default: 100,000.
    pub cache_capacity: usize,
}

impl JwtConfig {
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let issuer = issuer.into();
        JwtConfig {
            jwks_uri: Some(format!("{}/jwks.json", issuer.trim_end_matches('/'))),
            issuer,
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            cache_capacity: 100_000,
        }
    }

    pub fn with_jwks_uri(mut self, jwks_uri: impl Into<String>) -> Self {
        self.jwks_uri = Some(jwks_uri.into());
        self
    }
}

/// Why a JWT access token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtRejection {
    #[error("not a signed JWT")]
    Malformed,
    /// `typ` is not `at+jwt`: e.g. an id_token offered as an access token.
    #[error("not an access token (typ {0:?})")]
    NotAnAccessToken(Option<String>),
    #[error("signed by an unknown key {0:?}")]
    UnknownKey(Option<String>),
    /// The header names another algorithm than the key's (`none`, `HS256`…).
    #[error("algorithm {0} is not the key's")]
    WrongAlgorithm(String),
    #[error("the signature does not verify")]
    BadSignature,
    /// Issued after the key stopped signing, or to outlive what it signed.
    #[error("signed by a retired key")]
    RetiredKey,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("not meant for this service (aud)")]
    WrongAudience,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("claim {0} missing or malformed")]
    BadClaim(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    client_id: String,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    scope: String,
}

/// Whether a bearer token is shaped like a JWS (three base64url parts): only those are
/// verified; anything else is an opaque token.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

fn media_type_is_at_jwt(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    typ == "at+jwt" || typ == "application/at+jwt"
}

type Verified = HashMap<Key, TokenInfo, BuildHasherDefault<KeyHasher>>;

/// The JWT checks of one validator: its settings and the verified tokens.
pub(crate) struct JwtVerifier {
    config: JwtConfig,
    verified: RwLock<Verified>,
}

impl JwtVerifier {
    pub(crate) fn new(config: JwtConfig) -> Self {
        JwtVerifier {
            config,
            verified: RwLock::new(Verified::default()),
        }
    }

    /// The token's details if it verifies (or verified before and has not expired).
    pub(crate) fn verify(
        &self,
        token: &str,
        digest: &TokenDigest,
        keys: &KeyRing,
        now: i64,
    ) -> Result<TokenInfo, JwtRejection> {
        let key = Key(*digest);
        if let Some(info) = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return match now < info.expires_at {
                true => Ok(info.clone()),
                false => Err(JwtRejection::Expired),
            };
        }
        let info = self.verify_signed(token, keys, now)?;
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= self.config.cache_capacity {
            verified.retain(|_, info| now < info.expires_at);
            if verified.len() >= self.config.cache_capacity {
                verified.clear();
            }
        }
        verified.insert(key, info.clone());
        Ok(info)
    }

    fn verify_signed(
        &self,
        token: &str,
        keys: &KeyRing,
        now: i64,
    ) -> Result<TokenInfo, JwtRejection> {
        // An unknown `alg` (e.g. `none`) does not even parse as a header.
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRejection::Malformed)?;
        if !header.typ.as_deref().is_some_and(media_type_is_at_jwt) {
            return Err(JwtRejection::NotAnAccessToken(header.typ));
        }
        let verifier = header
            .kid
            .as_deref()
            .and_then(|kid| keys.verifier(kid))
            .ok_or_else(|| JwtRejection::UnknownKey(header.kid.clone()))?;
        if header.alg != verifier.algorithm {
            return Err(JwtRejection::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        let leeway = self.config.leeway.as_secs();
        let mut validation = Validation::new(verifier.algorithm);
        // Times are checked below against the validator's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &verifier.key, &validation)
            .map_err(|e| rejection(e.kind()))?
            .claims;
        let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
        if now >= claims.exp.saturating_add(leeway) {
            return Err(JwtRejection::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now < nbf.saturating_sub(leeway))
        {
            return Err(JwtRejection::NotYetValid);
        }
        let signed_after_retirement = verifier
            .retired_at
            .is_some_and(|retired| claims.iat > retired.saturating_add(leeway));
        let outlives_the_key = verifier
            .published_until
            .is_some_and(|until| claims.exp > until.saturating_add(leeway));
        if signed_after_retirement || outlives_the_key {
            return Err(JwtRejection::RetiredKey);
        }
        Ok(TokenInfo::new(TokenDetails {
            sub: Some(claims.sub),
            username: None,
            client_id: claims.client_id,
            scopes: TokenInfo::parse_scope(&claims.scope),
            expires_at: claims.exp,
            grant_id: None,
            source: Source::Jwt,
        }))
    }

    /// Forgets verified tokens that have expired; returns how many.
    pub(crate) fn evict_expired(&self, now: i64) -> usize {
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        let before = verified.len();
        verified.retain(|_, info| now < info.expires_at);
        before - verified.len()
    }
}

fn rejection(kind: &ErrorKind) -> JwtRejection {
    match kind {
        ErrorKind::InvalidSignature => JwtRejection::BadSignature,
        ErrorKind::ExpiredSignature => JwtRejection::Expired,
        ErrorKind::ImmatureSignature => JwtRejection::NotYetValid,
        ErrorKind::InvalidIssuer => JwtRejection::WrongIssuer,
        ErrorKind::InvalidAudience => JwtRejection::WrongAudience,
        ErrorKind::InvalidAlgorithm => JwtRejection::WrongAlgorithm("?".to_owned()),
        ErrorKind::MissingRequiredClaim(claim) => JwtRejection::BadClaim(claim.clone()),
        ErrorKind::Json(e) => JwtRejection::BadClaim(e.to_string()),
        _ => JwtRejection::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::{json, Value};
    use valet_wire::{KeyEvent, KeyEventType, SCHEMA_VERSION};

    use super::*;
    use crate::token_digest;

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://valet.example";
    const AUDIENCE: &str = "https://designs.example";

    struct Signer {
        key: EncodingKey,
        x: String,
    }

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a pair");
        Signer {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }
    }

    fn announce(ring: &KeyRing, kid: &str, signer: &Signer, event_type: KeyEventType) {
        let retired = event_type == KeyEventType::KeyRetired;
        ring.apply(&KeyEvent {
            schema_version: SCHEMA_VERSION,
            event_id: format!("{kid}-{}", event_type.as_str()),
            position: 1,
            event_type,
            occurred_at: valet_wire::rfc3339_from_unix_millis(NOW * 1000),
            kid: kid.to_owned(),
            alg: "EdDSA".to_owned(),
            jwk: [("kty", "OKP"), ("crv", "Ed25519"), ("x", signer.x.as_str())]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            activates_at: NOW - 1000,
            retired_at: retired.then_some(NOW - 100),
            published_until: retired.then_some(NOW + 3600),
        });
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "client_id": "app",
            "iat": NOW - 200, "exp": NOW + 600, "jti": "j1", "scope": "read write"
        })
    }

    fn sign(signer: &Signer, kid: &str, typ: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &signer.key).expect("signed")
    }

    fn verifier() -> JwtVerifier {
        let mut config = JwtConfig::new(ISSUER, AUDIENCE);
        config.leeway = Duration::from_secs(5);
        JwtVerifier::new(config)
    }

    fn check(
        verifier: &JwtVerifier,
        ring: &KeyRing,
        token: &str,
    ) -> Result<TokenInfo, JwtRejection> {
        verifier.verify(token, &token_digest(token), ring, NOW)
    }

    /// A token with its header replaced (the signature kept).
    fn with_header(token: &str, header: Value) -> String {
        let rest = token.split_once('.').expect("a JWS").1;
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
    }

    #[test]
    fn a_valid_token_is_verified_once_then_answered_from_the_cache() {
        let (key, ring, verifier) = (signer(), KeyRing::default(), verifier());
        announce(&ring, "k1", &key, KeyEventType::KeyActivated);
        let token = sign(&key, "k1", "at+jwt", &claims());
        let info = check(&verifier, &ring, &token).expect("valid");
        assert_eq!(info.sub.as_deref(), Some("user-1"));
        assert_eq!(info.client_id, "app");
        assert!(info.has_scope("write"));
        assert_eq!(info.expires_at, NOW + 600);
        assert_eq!(info.source, Source::Jwt);
        // Answered from the cache: the key itself is no longer needed.
        let empty = KeyRing::default();
        assert_eq!(check(&verifier, &empty, &token), Ok(info));
        // Until it expires.
        assert_eq!(
            verifier.verify(&token, &token_digest(&token), &empty, NOW + 600),
            Err(JwtRejection::Expired)
        );
        assert_eq!(verifier.evict_expired(NOW + 600), 1);
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let (key, ring, verifier) = (signer(), KeyRing::default(), verifier());
        announce(&ring, "k1", &key, KeyEventType::KeyActivated);
        let good = sign(&key, "k1", "at+jwt", &claims());
        let mut cases: Vec<(&str, String, JwtRejection)> = vec![
            (
                "unknown kid",
                sign(&key, "k9", "at+jwt", &claims()),
                JwtRejection::UnknownKey(Some("k9".into())),
            ),
            (
                "an id_token",
                sign(&key, "k1", "JWT", &claims()),
                JwtRejection::NotAnAccessToken(Some("JWT".into())),
            ),
            (
                "alg none",
                format!(
                    "{}.",
                    with_header(&good, json!({"alg": "none", "typ": "at+jwt", "kid": "k1"}))
                        .rsplit_once('.')
                        .expect("parts")
                        .0
                ),
                JwtRejection::Malformed,
            ),
            (
                "alg HS256 with the public key as secret",
                {
                    let mut header = Header::new(Algorithm::HS256);
                    header.typ = Some("at+jwt".into());
                    header.kid = Some("k1".into());
                    let secret = EncodingKey::from_secret(key.x.as_bytes());
                    jsonwebtoken::encode(&header, &claims(), &secret).expect("signed")
                },
                JwtRejection::WrongAlgorithm("HS256".into()),
            ),
            (
                "another key's signature",
                sign(&signer(), "k1", "at+jwt", &claims()),
                JwtRejection::BadSignature,
            ),
        ];
        for (claim, value, rejection) in [
            (
                "iss",
                json!("https://evil.example"),
                JwtRejection::WrongIssuer,
            ),
            (
                "aud",
                json!("https://other.example"),
                JwtRejection::WrongAudience,
            ),
            ("exp", json!(NOW - 10), JwtRejection::Expired),
            ("nbf", json!(NOW + 60), JwtRejection::NotYetValid),
        ] {
            let mut changed = claims();
            changed[claim] = value;
            cases.push((claim, sign(&key, "k1", "at+jwt", &changed), rejection));
        }
        for (what, token, rejection) in cases {
            assert_eq!(check(&verifier, &ring, &token), Err(rejection), "{what}");
        }
        // A token within the clock-skew allowance of its expiry still passes.
        let mut skewed = claims();
        skewed["exp"] = json!(NOW - 2);
        assert!(check(&verifier, &ring, &sign(&key, "k1", "at+jwt", &skewed)).is_ok());
    }

    #[test]
    fn a_retired_key_verifies_what_it_signed_before_but_nothing_after() {
        let (key, ring, verifier) = (signer(), KeyRing::default(), verifier());
        announce(&ring, "k1", &key, KeyEventType::KeyActivated);
        announce(&ring, "k1", &key, KeyEventType::KeyRetired);
        // Signed before the retirement (NOW - 100).
        assert!(check(&verifier, &ring, &sign(&key, "k1", "at+jwt", &claims())).is_ok());
        let mut after = claims();
        after["iat"] = json!(NOW - 10);
        assert_eq!(
            check(&verifier, &ring, &sign(&key, "k1", "at+jwt", &after)),
            Err(JwtRejection::RetiredKey)
        );
        let mut outliving = claims();
        outliving["exp"] = json!(NOW + 7200);
        outliving["jti"] = json!("j2");
        assert_eq!(
            check(&verifier, &ring, &sign(&key, "k1", "at+jwt", &outliving)),
            Err(JwtRejection::RetiredKey)
        );
    }
}
