//! `/admin/v1/initial-access-tokens`: tokens that let their bearer register clients at
//! `/register` when `valet serve --registration initial-access-token` is set.

use serde::Serialize;
use utoipa::ToSchema;

use super::{admin_handler, created};

/// An initial access token (RFC 7591 §1.2), shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InitialAccessToken {
    /// Send as `Authorization: Bearer` to `POST /register`.
    initial_access_token: String,
    /// Seconds it stays valid (as the server's access tokens).
    expires_in: u32,
    /// `valet:register`.
    scope: String,
}

admin_handler!(
    /// Issues an initial access token for dynamic client registration: a one-token grant
    /// of scope `valet:register` to the calling client (revocable like any grant).
    #[utoipa::path(post, path = "/admin/v1/initial-access-tokens", tag = "registration",
        responses((status = 201, body = InitialAccessToken)))]
    issue() |app, meta| {
        let token = app.oauth.issue_initial_access_token(&meta).await?;
        Ok(created(InitialAccessToken {
            initial_access_token: token.access_token,
            expires_in: token.expires_in,
            scope: token.scope,
        }))
    }
);
