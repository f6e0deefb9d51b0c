//! id_tokens (OpenID Connect Core §2): for a code whose scope holds `openid`, and again
//! at each refresh of such a grant (§12.2: same `iss`, `sub`, `aud` and `auth_time`).
//! Signed before anything is recorded, so a failure to sign spends no code or token.

use valet_domain::grant::GrantOrigin;
use valet_domain::oidc::{Nonce, SessionId};
use valet_domain::signing_key::Algorithm;
use valet_domain::{ScopeSet, StreamId, Timestamp, UserId};

use super::{AuthenticatedClient, OAuth, OAuthError, Unavailable};
use crate::aggregate::{self as agg, load};
use crate::clock::Clock;
use crate::keys::{IdTokenClaims, JwtType, SignError};
use crate::ports::EventStore;
use crate::read::ReadModels;

/// The scope that makes an authorization request an OpenID Connect one.
pub(crate) const OPENID: &str = "openid";

/// What an id_token says of the authentication: when, in which session, and the
/// request's nonce.
pub(super) struct SignedIn<'a> {
    pub auth_time: Option<Timestamp>,
    pub sid: Option<SessionId>,
    pub nonce: Option<&'a Nonce>,
}

pub(crate) fn has_openid(scope: &ScopeSet) -> bool {
    scope.iter().any(|s| s.as_str() == OPENID)
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// An id_token for `sub` at client `aud`; `sub` is the user id, the same for every
    /// client.
    pub(super) fn id_token(
        &self,
        client: &AuthenticatedClient,
        sub: UserId,
        sign_in: SignedIn<'_>,
        now: Timestamp,
    ) -> Result<String, OAuthError> {
        let claims = IdTokenClaims {
            iss: &self.settings.issuer,
            sub: sub.to_string(),
            aud: client.id().as_str(),
            exp: now
                .plus_seconds(self.settings.access_ttl.seconds())
                .as_unix_seconds(),
            iat: now.as_unix_seconds(),
            auth_time: sign_in.auth_time.map(Timestamp::as_unix_seconds),
            nonce: sign_in.nonce.map(Nonce::as_str),
            sid: sign_in.sid.map(|s| s.to_string()),
        };
        let claims = serde_json::to_value(&claims)
            .map_err(|e| Unavailable::Signing(SignError::Failed(e.to_string())))?;
        // The client's registered algorithm (RS256 unless it chose another).
        let algorithm = client
            .state
            .client()
            .map_or(Algorithm::RS256, |c| c.id_token_alg);
        Ok(self
            .signer
            .sign_json(algorithm, JwtType::IdToken, &claims)
            .map_err(Unavailable::Signing)?)
    }

    /// The id_token a refresh of `grant_id` answers with, if its scope holds `openid`:
    /// the sign-in time comes from the code the grant was made from. No `nonce` (it
    /// belongs to the authentication request).
    pub(super) async fn refreshed_id_token(
        &self,
        client: &AuthenticatedClient,
        grant_id: valet_domain::GrantId,
        now: Timestamp,
    ) -> Result<Option<String>, OAuthError> {
        let grant = load::<agg::Grant, S>(&self.store, &StreamId::grant(&grant_id))
            .await?
            .state;
        let Some(grant) = grant.grant() else {
            return Ok(None);
        };
        let (Some(subject), GrantOrigin::AuthorizationCode { code_hash }) =
            (&grant.subject, &grant.origin)
        else {
            return Ok(None);
        };
        if !has_openid(&grant.scope) {
            return Ok(None);
        }
        let code = load::<agg::Code, S>(&self.store, &StreamId::code(code_hash))
            .await?
            .state;
        let issued = code.issued();
        let sign_in = SignedIn {
            auth_time: issued.and_then(|c| c.auth_time),
            sid: issued.and_then(|c| c.sid),
            nonce: None,
        };
        self.id_token(client, subject.user_id, sign_in, now)
            .map(Some)
    }
}
