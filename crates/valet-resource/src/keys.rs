//! Valet's signing keys as the stream announces them (public keys only). Every key
//! message carries the whole key, so what is known of a `kid` is its latest message; a
//! key's stage only moves forward, so a late duplicate never brings back an older one.

use std::collections::BTreeMap;
use std::sync::RwLock;

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
    /// Unix seconds, for a retired key.
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
            published_until: event.published_until,
        }
    }
}

/// The keys heard of, by `kid`.
#[derive(Debug, Default)]
pub(crate) struct KeyRing(RwLock<BTreeMap<String, SigningKey>>);

impl KeyRing {
    pub(crate) fn apply(&self, event: &KeyEvent) {
        let key = SigningKey::from(event);
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        match keys.get(&key.kid) {
            Some(known) if known.stage > key.stage => {}
            _ => {
                keys.insert(key.kid.clone(), key);
            }
        }
    }

    pub(crate) fn get(&self, kid: &str) -> Option<SigningKey> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    pub(crate) fn all(&self) -> Vec<SigningKey> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
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
