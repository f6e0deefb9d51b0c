//! Minting tokens: a fresh secret (or, for a client registered for them, a signed JWT
//! access token), its digest and lifetime. The raw value goes to the one response that
//! hands it out; the log gets the digest (and a JWT's `jti`).

use valet_domain::client::AccessTokenFormat;
use valet_domain::grant::{AccessTokenIssue, JwtId, RefreshTokenIssue};
use valet_domain::{ScopeSet, Timestamp, TokenHash, UserId};

use super::{AuthenticatedClient, OAuth, OAuthError, Unavailable};
use crate::keys::{AccessTokenClaims, JwtType, SignError};
use crate::secrets::{self, SecretKind};

/// A token as handed out (`raw`) and as recorded (`issue`).
pub(super) struct Minted<T> {
    pub raw: String,
    pub issue: T,
}

impl<S, R, C> OAuth<S, R, C> {
    /// An access token for `client`, acting for `user` (or for itself), in the format
    /// the client is registered for. A JWT's `scope` claim is `scope`: pass the scope
    /// the grant will record.
    pub(super) fn access_token(
        &self,
        client: &AuthenticatedClient,
        user: Option<UserId>,
        scope: ScopeSet,
        now: Timestamp,
        lifetime_seconds: u32,
    ) -> Result<Minted<AccessTokenIssue>, OAuthError> {
        let expires_at = now.plus_seconds(lifetime_seconds);
        let format = client
            .state
            .client()
            .map_or(AccessTokenFormat::Opaque, |c| c.access_token_format);
        let alg = match format {
            AccessTokenFormat::Opaque => {
                let secret = secrets::generate(SecretKind::AccessToken, self.random.as_ref())?;
                return Ok(Minted {
                    raw: secret.raw,
                    issue: AccessTokenIssue {
                        hash: secret.hash,
                        jti: None,
                        scope,
                        issued_at: now,
                        expires_at,
                    },
                });
            }
            AccessTokenFormat::Jwt { alg } => alg,
        };
        let jti = JwtId::new(self.ids.new_id());
        let sub = user.map_or_else(|| client.id().to_string(), |u| u.to_string());
        let claims = AccessTokenClaims {
            iss: &self.settings.issuer,
            exp: expires_at.as_unix_seconds(),
            aud: self.audience.as_deref().unwrap_or(&self.settings.issuer),
            sub: &sub,
            client_id: client.id().as_str(),
            iat: now.as_unix_seconds(),
            jti: jti.to_string(),
            scope: scope.to_string(),
        };
        let claims = serde_json::to_value(&claims)
            .map_err(|e| Unavailable::Signing(SignError::Failed(e.to_string())))?;
        let raw = self
            .signer
            .sign_json(alg, JwtType::AccessToken, &claims)
            .map_err(Unavailable::Signing)?;
        Ok(Minted {
            issue: AccessTokenIssue {
                hash: TokenHash::of(&raw),
                jti: Some(jti),
                scope,
                issued_at: now,
                expires_at,
            },
            raw,
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
