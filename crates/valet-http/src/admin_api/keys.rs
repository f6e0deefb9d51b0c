//! `/admin/v1/keys`: the signing key ring. Rotating and retiring keys needs the
//! key-encryption key, so it stays with `valet keys` on the operator's side.

use serde::Serialize;
use utoipa::ToSchema;
use valet_app::admin::AdminError;
use valet_app::oauth::Unavailable;
use valet_domain::signing_key::Key;

use super::{admin_handler, ok, time};

/// A signing key's public half and lifecycle.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SigningKey {
    kid: String,
    alg: String,
    /// `published`, `active` or `retired`.
    stage: String,
    generated_at: String,
    activates_at: String,
    activated_at: Option<String>,
    retired_at: Option<String>,
    /// Until when the JWKS shows it; absent while it is not retired.
    published_until: Option<String>,
}

impl From<&Key> for SigningKey {
    fn from(key: &Key) -> Self {
        let at = |t: Option<valet_domain::Timestamp>| t.map(|t| time(t.as_unix_millis()));
        SigningKey {
            kid: key.key_id.to_string(),
            alg: key.algorithm.as_str().to_owned(),
            stage: key.stage().as_str().to_owned(),
            generated_at: time(key.generated_at.as_unix_millis()),
            activates_at: time(key.activates_at.as_unix_millis()),
            activated_at: at(key.activated_at),
            retired_at: at(key.retired_at),
            published_until: at(key.published_until),
        }
    }
}

/// The key ring.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyList {
    items: Vec<SigningKey>,
}

admin_handler!(
    /// Every signing key, published, active and retired.
    #[utoipa::path(get, path = "/admin/v1/keys", tag = "keys",
        responses((status = 200, body = KeyList)))]
    list() |app, _meta| {
        let ring = valet_app::keys::ring(&app.oauth.store)
            .await
            .map_err(|e| {
                AdminError::Unavailable(Unavailable::Store(valet_app::StoreError::Unavailable(
                    e.to_string(),
                )))
            })?;
        Ok(ok(KeyList { items: ring.keys().iter().map(SigningKey::from).collect() }))
    }
);
