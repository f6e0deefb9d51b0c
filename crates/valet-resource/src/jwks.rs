//! Valet's JWKS, read once at start: keys announced longer ago than the stream keeps
//! messages are known only there. Retried with backoff until it answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::keys::{KeyStage, SigningKey};
use crate::validator::Shared;

#[derive(Deserialize)]
struct Document {
    keys: Vec<BTreeMap<String, serde_json::Value>>,
}

/// The signing keys of a JWKS document (members that are not strings are dropped:
/// Valet's keys have none).
fn keys_of(document: Document) -> Vec<SigningKey> {
    document
        .keys
        .into_iter()
        .filter_map(|members| {
            let jwk: BTreeMap<String, String> = members
                .into_iter()
                .filter_map(|(name, value)| value.as_str().map(|v| (name, v.to_owned())))
                .collect();
            Some(SigningKey {
                kid: jwk.get("kid")?.clone(),
                alg: jwk.get("alg")?.clone(),
                // The JWKS does not say; the stream will when it announces a change.
                stage: KeyStage::Active,
                activates_at: 0,
                retired_at: None,
                published_until: None,
                jwk,
            })
        })
        .collect()
}

pub(crate) async fn fetch_once(shared: Arc<Shared>, http: reqwest::Client, uri: String) {
    let mut wait = Duration::from_millis(200);
    loop {
        let answer = async {
            let text = |e: reqwest::Error| e.to_string();
            let response = http.get(&uri).send().await.map_err(text)?;
            let body = response
                .error_for_status()
                .map_err(text)?
                .bytes()
                .await
                .map_err(text)?;
            serde_json::from_slice::<Document>(&body).map_err(|e| e.to_string())
        };
        match answer.await {
            Ok(document) => {
                let keys = keys_of(document);
                tracing::info!(keys = keys.len(), %uri, "read the JWKS");
                for key in keys {
                    shared.keys.learn(key);
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, %uri, "cannot read the JWKS; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_document_gives_keys_by_kid_with_their_algorithm() {
        let document: Document = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": "AQ", "y": "Ag", "kid": "k1", "alg": "ES256", "use": "sig"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"}
        ]}))
        .expect("a JWKS");
        let keys = keys_of(document);
        assert_eq!(keys.len(), 1, "a key without kid or alg cannot be matched");
        assert_eq!(keys[0].kid, "k1");
        assert_eq!(keys[0].alg, "ES256");
        assert_eq!(keys[0].jwk["x"], "AQ");
    }
}
