//! RFC 7662 introspection, for confidential callers (resource servers).

use valet_domain::TokenHash;

use super::{AuthenticatedClient, OAuth, OAuthError};
use crate::clock::Clock;
use crate::ports::EventStore;
use crate::read::{ReadModels, RefreshStatus};

/// RFC 7662 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    Inactive,
    Active {
        scope: String,
        client_id: String,
        token_type: &'static str,
        exp: i64,
        iat: i64,
        iss: String,
        /// The user, or the client itself for client_credentials (RFC 9068 §2.2).
        sub: String,
        username: Option<String>,
    },
}

fn subject(user: Option<impl ToString>, client: &impl ToString) -> String {
    user.map_or_else(|| client.to_string(), |u| u.to_string())
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    pub async fn introspect(
        &self,
        caller: &AuthenticatedClient,
        token: &str,
    ) -> Result<Introspection, OAuthError> {
        if !caller.is_confidential() {
            return Err(OAuthError::invalid_client());
        }
        let hash = TokenHash::of(token);
        let now = self.now();
        if let Some(view) = self.reads.access_token(&hash).await? {
            if view.revoked || now >= view.expires_at {
                return Ok(Introspection::Inactive);
            }
            return Ok(Introspection::Active {
                scope: view.scope.to_string(),
                client_id: view.client_id.to_string(),
                token_type: "access_token",
                exp: view.expires_at.as_unix_seconds(),
                iat: view.issued_at.as_unix_seconds(),
                iss: self.settings.issuer.clone(),
                sub: subject(view.user_id, &view.client_id),
                username: view.username.map(|u| u.to_string()),
            });
        }
        if let Some(view) = self.reads.refresh_token(&hash).await? {
            if view.status != RefreshStatus::Current || now >= view.expires_at {
                return Ok(Introspection::Inactive);
            }
            return Ok(Introspection::Active {
                scope: view.scope.to_string(),
                client_id: view.client_id.to_string(),
                token_type: "refresh_token",
                exp: view.expires_at.as_unix_seconds(),
                iat: view.issued_at.as_unix_seconds(),
                iss: self.settings.issuer.clone(),
                sub: subject(view.user_id, &view.client_id),
                username: view.username.map(|u| u.to_string()),
            });
        }
        Ok(Introspection::Inactive)
    }
}
