//! Minting tokens: a fresh secret, its digest and lifetime. The raw value goes to the one
//! response that hands it out; the log gets the digest.

use valet_domain::grant::{AccessTokenIssue, RefreshTokenIssue};
use valet_domain::{ScopeSet, Timestamp};

use super::{OAuth, OAuthError};
use crate::secrets::{self, SecretKind};

/// A token as handed out (`raw`) and as recorded (`issue`).
pub(super) struct Minted<T> {
    pub raw: String,
    pub issue: T,
}

impl<S, R, C> OAuth<S, R, C> {
    pub(super) fn access_token(
        &self,
        scope: ScopeSet,
        now: Timestamp,
    ) -> Result<Minted<AccessTokenIssue>, OAuthError> {
        let secret = secrets::generate(SecretKind::AccessToken, self.random.as_ref())?;
        Ok(Minted {
            raw: secret.raw,
            issue: AccessTokenIssue {
                hash: secret.hash,
                scope,
                issued_at: now,
                expires_at: now.plus_seconds(self.settings.access_ttl.seconds()),
            },
        })
    }

    pub(super) fn refresh_token(
        &self,
        now: Timestamp,
    ) -> Result<Minted<RefreshTokenIssue>, OAuthError> {
        let secret = secrets::generate(SecretKind::RefreshToken, self.random.as_ref())?;
        Ok(Minted {
            raw: secret.raw,
            issue: RefreshTokenIssue {
                hash: secret.hash,
                issued_at: now,
                expires_at: now.plus_seconds(self.settings.refresh_ttl.seconds()),
            },
        })
    }

    /// The /token response for a new access token (and maybe a refresh token).
    pub(super) fn token_response(
        &self,
        access: String,
        refresh: Option<String>,
        scope: &ScopeSet,
    ) -> super::TokenResponse {
        super::TokenResponse {
            access_token: access,
            token_type: "Bearer",
            expires_in: self.settings.access_ttl.seconds(),
            refresh_token: refresh,
            scope: scope.to_string(),
            id_token: None,
        }
    }
}
