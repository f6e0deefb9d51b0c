//! OpenID Connect UserInfo (Core §5.3): the signed-in user's claims, as far as the
//! access token's scope allows (§5.4: `profile`, `email`).

use valet_domain::user::EmailStatus;
use valet_domain::{StreamId, TokenHash};

use super::id_token::OPENID;
use super::{OAuth, Unavailable};
use crate::aggregate::{self as agg, load};
use crate::clock::Clock;
use crate::ports::EventStore;
use crate::read::ReadModels;

/// The claims UserInfo answers with; absent ones are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct UserInfo {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

/// Why UserInfo refused (RFC 6750 §3.1).
#[derive(Debug, thiserror::Error)]
pub enum UserInfoError {
    /// Missing, unknown, expired or revoked token, a token of no user, or a user who
    /// is disabled: 401 `invalid_token`.
    #[error("the access token is not valid")]
    InvalidToken,
    /// A valid token whose scope lacks `openid`: 403 `insufficient_scope`.
    #[error("the access token's scope does not include openid")]
    InsufficientScope,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    pub async fn userinfo(&self, access_token: &str) -> Result<UserInfo, UserInfoError> {
        let hash = TokenHash::of(access_token);
        let view = self
            .reads
            .access_token(&hash)
            .await
            .map_err(Unavailable::from)?
            .filter(|v| !v.revoked && self.now() < v.expires_at)
            .ok_or(UserInfoError::InvalidToken)?;
        let user_id = view.user_id.ok_or(UserInfoError::InvalidToken)?;
        let granted = |scope: &str| view.scope.iter().any(|s| s.as_str() == scope);
        if !granted(OPENID) {
            return Err(UserInfoError::InsufficientScope);
        }
        // The user stream, not a read model: a disabled user's claims are never served,
        // even in the moment before their tokens' revocation is projected.
        let user = load::<agg::User, S>(&self.store, &StreamId::user(&user_id))
            .await
            .map_err(|e| match e {
                crate::ExecuteError::Store(e) => Unavailable::from(e),
                other => Unavailable::Blocking(other.to_string()),
            })?
            .state;
        let user = user
            .user()
            .filter(|u| u.disabled_at.is_none())
            .ok_or(UserInfoError::InvalidToken)?;
        let mut info = UserInfo {
            sub: user_id.to_string(),
            ..UserInfo::default()
        };
        if granted("profile") {
            info.name = user.profile.name.as_ref().map(|n| n.as_str().to_owned());
            info.preferred_username = Some(user.username.to_string());
        }
        if granted("email") {
            if let Some(email) = &user.profile.email {
                info.email = Some(email.as_str().to_owned());
                info.email_verified = Some(user.profile.email_status == EmailStatus::Verified);
            }
        }
        Ok(info)
    }
}
