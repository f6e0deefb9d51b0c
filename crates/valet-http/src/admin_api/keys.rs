//! `/admin/v1/keys`: the signing key ring, its rotation and the retirement of a key (the
//! server seals new private keys with its key-encryption key, as `valet keys` does).

use axum::body::Bytes;
use axum::extract::Path;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use valet_app::admin::AdminError;
use valet_app::keys::KeysError;
use valet_app::oauth::Unavailable;
use valet_domain::signing_key::{self, Algorithm, Key, KeyId};

use super::{admin_handler, body, created, ok, time};

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

/// Which algorithm gets a new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRotation {
    /// `RS256`, `ES256` or `EdDSA`.
    algorithm: String,
}

fn refused(e: KeysError) -> AdminError {
    match e {
        KeysError::Refused(signing_key::Error::NotFound(kid)) => {
            AdminError::NotFound(format!("signing key {kid}"))
        }
        KeysError::Refused(other) => AdminError::Conflict(other.to_string()),
        other => AdminError::Unavailable(Unavailable::Store(valet_app::StoreError::Unavailable(
            other.to_string(),
        ))),
    }
}

fn key_admin<S, R, C>(
    app: &crate::AppState<S, R, C>,
) -> Result<&dyn valet_app::keys::KeyAdmin, AdminError> {
    app.key_admin
        .as_deref()
        .ok_or_else(|| AdminError::Conflict("this server does not change signing keys".into()))
}

admin_handler!(
    /// Publishes a new key of the algorithm; it signs once the publication lead has
    /// passed (`--key-publish-lead`), and the key it replaces stays published while its
    /// tokens live.
    #[utoipa::path(post, path = "/admin/v1/keys/rotate", tag = "keys", request_body = KeyRotation,
        responses((status = 201, body = SigningKey)))]
    rotate(bytes: Bytes) |app, meta| {
        let rotation: KeyRotation = body(&bytes)?;
        let algorithm = Algorithm::parse(&rotation.algorithm)
            .map_err(|e| AdminError::Invalid(format!("algorithm: {e}")))?;
        let actor = meta.admin.as_ref().map(|c| c.actor()).unwrap_or_default();
        let key = key_admin(&app)?.rotate_key(algorithm, actor).await.map_err(refused)?;
        Ok(created(SigningKey::from(&key)))
    }
);

admin_handler!(
    /// Stops signing with a key (its successor must be published); it stays in the JWKS
    /// while its tokens live.
    #[utoipa::path(post, path = "/admin/v1/keys/{kid}/retire", tag = "keys",
        params(("kid" = String, Path)),
        responses((status = 200, body = SigningKey)))]
    retire(kid: Path<String>) |app, meta| {
        let key_id = KeyId::parse(&kid).map_err(|_| AdminError::NotFound(format!("signing key {}", kid.0)))?;
        let actor = meta.admin.as_ref().map(|c| c.actor()).unwrap_or_default();
        let key = key_admin(&app)?.retire_key(key_id, actor).await.map_err(refused)?;
        Ok(ok(SigningKey::from(&key)))
    }
);
