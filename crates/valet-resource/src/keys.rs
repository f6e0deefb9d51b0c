//! Valet's signing keys as the stream announces them (public keys only). Every key
//! message carries the whole key, so what is known of a `kid` is its latest message; a
//! key's stage only moves forward, so a late duplicate never brings back an older one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;
use valet_wire::{KeyEvent, KeyEventType};

/// Where a signing key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStage {
    /// In Valet's JWKS; it signs from `activates_at`.
    Published,
    /// Signing new tokens.
    Active,
    /// Signs no more; what it signed expires by `published_until`.
    Retired,
}

impl From<KeyEventType> for KeyStage {
    fn from(event_type: KeyEventType) -> Self {
        match event_type {
            KeyEventType::KeyPublished => KeyStage::Published,
            KeyEventType::KeyActivated => KeyStage::Active,
            KeyEventType::KeyRetired => KeyStage::Retired,
        }
    }
}

/// A public signing key of Valet's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKey {
    pub kid: String,
    /// `RS256`, `ES256` or `EdDSA`: the only algorithm a token under this key may name.
    pub alg: String,
    /// The public JWK (`kty`, its public members, `kid`, `alg`, `use`).
    pub jwk: BTreeMap<String, String>,
    pub stage: KeyStage,
    /// Unix seconds.
    pub activates_at: i64,
    /// Unix seconds, for a retired key: when it stopped signing.
    pub retired_at: Option<i64>,
    /// Unix seconds, for a retired key: nothing it signed is valid after this.
    pub published_until: Option<i64>,
}

impl From<&KeyEvent> for SigningKey {
    fn from(event: &KeyEvent) -> Self {
        SigningKey {
            kid: event.kid.clone(),
            alg: event.alg.clone(),
            jwk: event.jwk.clone(),
            stage: event.event_type.into(),
            activates_at: event.activates_at,
            retired_at: event.retired_at,
            published_until: event.published_until,
        }
    }
}

/// What verifying a signature under one key needs: the key, its algorithm (the only one
/// a token may name) and when it stopped signing.
#[derive(Clone)]
pub(crate) struct Verifier {
    pub(crate) key: Arc<DecodingKey>,
    pub(crate) algorithm: Algorithm,
    pub(crate) retired_at: Option<i64>,
    pub(crate) published_until: Option<i64>,
}

struct Known {
    key: SigningKey,
    /// `None`: a key of an algorithm or shape this SDK cannot verify with.
    verifier: Option<Verifier>,
}

impl Known {
    fn new(key: SigningKey) -> Self {
        let verifier = verifier_of(&key);
        Known { key, verifier }
    }
}

/// The decoding key of a public JWK, for the algorithms Valet signs with.
fn verifier_of(key: &SigningKey) -> Option<Verifier> {
    let member = |name: &str| key.jwk.get(name).map(String::as_str);
    let (algorithm, decoding) = match (key.alg.as_str(), member("kty")) {
        ("RS256", Some("RSA")) => (
            Algorithm::RS256,
            DecodingKey::from_rsa_components(member("n")?, member("e")?).ok()?,
        ),
        ("ES256", Some("EC")) if member("crv") == Some("P-256") => (
            Algorithm::ES256,
            DecodingKey::from_ec_components(member("x")?, member("y")?).ok()?,
        ),
        ("EdDSA", Some("OKP")) if member("crv") == Some("Ed25519") => (
            Algorithm::EdDSA,
            DecodingKey::from_ed_components(member("x")?).ok()?,
        ),
        _ => return None,
    };
    Some(Verifier {
        key: Arc::new(decoding),
        algorithm,
        retired_at: key.retired_at,
        published_until: key.published_until,
    })
}

/// The keys heard of, by `kid`.
#[derive(Default)]
pub(crate) struct KeyRing(RwLock<BTreeMap<String, Known>>);

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.all()).finish()
    }
}

impl KeyRing {
    pub(crate) fn apply(&self, event: &KeyEvent) {
        let key = SigningKey::from(event);
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        match keys.get(&key.kid) {
            Some(known) if known.key.stage > key.stage => {}
            _ => {
                keys.insert(key.kid.clone(), Known::new(key));
            }
        }
    }

    /// A key from a JWKS document: taken only if the stream has not announced it (the
    /// stream says more, e.g. that a key is retired).
    pub(crate) fn learn(&self, key: SigningKey) {
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        keys.entry(key.kid.clone())
            .or_insert_with(|| Known::new(key));
    }

    pub(crate) fn get(&self, kid: &str) -> Option<SigningKey> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .map(|known| known.key.clone())
    }

    pub(crate) fn verifier(&self, kid: &str) -> Option<Verifier> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .and_then(|known| known.verifier.clone())
    }

    pub(crate) fn all(&self) -> Vec<SigningKey> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|known| known.key.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use valet_wire::SCHEMA_VERSION;

    fn event(n: i64, event_type: KeyEventType) -> KeyEvent {
        KeyEvent {
            schema_version: SCHEMA_VERSION,
            event_id: format!("e{n}"),
            position: n,
            event_type,
            occurred_at: valet_wire::rfc3339_from_unix_millis(n * 1000),
            kid: "k1".into(),
            alg: "ES256".into(),
            jwk: [("kty", "EC"), ("kid", "k1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            activates_at: 10,
            retired_at: (event_type == KeyEventType::KeyRetired).then_some(50),
            published_until: (event_type == KeyEventType::KeyRetired).then_some(99),
        }
    }

    #[test]
    fn a_key_moves_through_its_stages_and_never_back() {
        let ring = KeyRing::default();
        assert_eq!(ring.get("k1"), None);
        ring.apply(&event(1, KeyEventType::KeyPublished));
        assert_eq!(ring.get("k1").map(|k| k.stage), Some(KeyStage::Published));
        ring.apply(&event(2, KeyEventType::KeyActivated));
        ring.apply(&event(3, KeyEventType::KeyRetired));
        // A duplicate of an earlier step, delivered late.
        ring.apply(&event(1, KeyEventType::KeyPublished));
        let key = ring.get("k1").expect("known");
        assert_eq!(key.stage, KeyStage::Retired);
        assert_eq!(key.published_until, Some(99));
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.all(), vec![key]);
    }
}
