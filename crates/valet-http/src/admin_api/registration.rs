//! `/admin/v1/initial-access-tokens`: tokens that let their bearer register clients at
//! `/register` when `valet serve --registration initial-access-token` is set.

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use valet_app::admin::AdminError;
use valet_domain::InitialAccessTokenTtl;

use super::{admin_handler, body, created};

/// What the token is for (the body may be left out).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InitialAccessTokenRequest {
    /// Seconds it stays valid: 1 to 2592000 (30 days); default, the access tokens'
    /// lifetime.
    #[schema(minimum = 1, maximum = 2_592_000)]
    expires_in: Option<u32>,
}

/// An initial access token (RFC 7591 §1.2), shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InitialAccessToken {
    /// Send as `Authorization: Bearer` to `POST /register`.
    initial_access_token: String,
    /// Seconds it stays valid.
    expires_in: u32,
    /// `valet:register`.
    scope: String,
}

admin_handler!(
    /// Issues an initial access token for dynamic client registration: a one-token grant
    /// of scope `valet:register` to the calling client (revocable like any grant).
    #[utoipa::path(post, path = "/admin/v1/initial-access-tokens", tag = "registration",
        request_body(content = Option<InitialAccessTokenRequest>),
        responses((status = 201, body = InitialAccessToken)))]
    issue(bytes: Bytes) |app, meta| {
        let request: InitialAccessTokenRequest = match bytes.is_empty() {
            true => InitialAccessTokenRequest::default(),
            false => body(&bytes)?,
        };
        let lifetime = request
            .expires_in
            .map(InitialAccessTokenTtl::new)
            .transpose()
            .map_err(|e| AdminError::Invalid(format!("expires_in: {e}")))?;
        let token = app.oauth.issue_initial_access_token(lifetime, &meta).await?;
        Ok(created(InitialAccessToken {
            initial_access_token: token.access_token,
            expires_in: token.expires_in,
            scope: token.scope,
        }))
    }
);
