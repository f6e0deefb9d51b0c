//! Who may call the admin HTTP API: the bearer of an access token that is active and
//! holds scope `valet:admin` (a client_credentials client registered with it). Changes
//! made through the API are recorded with the caller as their actor.

use valet_domain::{ClientId, GrantId, TokenHash};

use crate::clock::Clock;
use crate::oauth::{OAuth, Unavailable};
use crate::ports::EventStore;
use crate::read::ReadModels;

/// The scope an admin API caller's token must hold.
pub const ADMIN_SCOPE: &str = "valet:admin";

#[derive(Debug, thiserror::Error)]
pub enum AdminAuthError {
    /// No such token, or revoked, or expired.
    #[error("the access token is not valid")]
    InvalidToken,
    #[error("the access token lacks scope valet:admin")]
    InsufficientScope,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// An admin API caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCaller {
    pub client_id: ClientId,
    /// The grant of the token it called with.
    pub grant_id: GrantId,
}

impl AdminCaller {
    /// The actor its changes are recorded under.
    pub fn actor(&self) -> String {
        format!("client:{}", self.client_id)
    }
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// The caller behind `access_token`, if it may administer Valet.
    pub async fn admin_caller(&self, access_token: &str) -> Result<AdminCaller, AdminAuthError> {
        let view = self
            .reads
            .access_token(&TokenHash::of(access_token))
            .await
            .map_err(Unavailable::from)?
            .filter(|v| !v.revoked && self.now() < v.expires_at)
            .ok_or(AdminAuthError::InvalidToken)?;
        if !view.scope.iter().any(|s| s.as_str() == ADMIN_SCOPE) {
            return Err(AdminAuthError::InsufficientScope);
        }
        Ok(AdminCaller {
            client_id: view.client_id,
            grant_id: view.grant_id,
        })
    }
}
