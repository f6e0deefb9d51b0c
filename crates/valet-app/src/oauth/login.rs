//! Signing a user in on the authorization pages.

use valet_domain::{user, StreamId, UserId, Username};

use super::{LoginError, OAuth, OAuthError, Unavailable};
use crate::aggregate::{self as agg, load};
use crate::clock::Clock;
use crate::ports::EventStore;
use crate::read::ReadModels;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    pub user_id: UserId,
    pub username: Username,
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Checks a username and password (argon2id on a blocking thread). Unknown users
    /// cost the same as wrong passwords.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<AuthenticatedUser, LoginError> {
        let found = match Username::parse(username) {
            Ok(name) => self
                .reads
                .user_by_name(&name)
                .await
                .map_err(Unavailable::from)?,
            Err(_) => None,
        };
        let stored = match found.as_ref().and_then(|u| u.password_hash.clone()) {
            Some(stored) => stored,
            None => self.dummy_password_hash()?.to_owned(),
        };
        let password = password.to_owned();
        let passwords = self.passwords.clone();
        let matches = tokio::task::spawn_blocking(move || passwords.verify(&password, &stored))
            .await
            .map_err(|e| Unavailable::Blocking(e.to_string()))?;
        match found {
            Some(user) if matches && user.active && user.password_hash.is_some() => {
                Ok(AuthenticatedUser {
                    user_id: user.user_id,
                    username: user.username,
                })
            }
            _ => Err(LoginError::InvalidCredentials),
        }
    }

    /// A real argon2id hash of a random password, verified against when the user is
    /// unknown so that both cases take the same time. Made on first use.
    fn dummy_password_hash(&self) -> Result<&str, Unavailable> {
        if let Some(hash) = self.dummy_password.get() {
            return Ok(hash);
        }
        let password = crate::entropy::random_bytes::<16>(self.random.as_ref())?;
        let hash = self
            .passwords
            .hash(&format!("{password:02x?}"), self.random.as_ref())?;
        Ok(self.dummy_password.get_or_init(|| hash))
    }

    /// The user, if still registered and active.
    pub async fn active_user(
        &self,
        user_id: UserId,
    ) -> Result<Option<AuthenticatedUser>, OAuthError> {
        self.user_if(user_id, |_| true).await
    }

    pub(crate) async fn user_if(
        &self,
        user_id: UserId,
        stands: impl FnOnce(&user::User) -> bool,
    ) -> Result<Option<AuthenticatedUser>, OAuthError> {
        let loaded = load::<agg::User, S>(&self.store, &StreamId::user(&user_id)).await?;
        Ok(loaded
            .state
            .user()
            .filter(|_| loaded.state.is_active())
            .filter(|u| stands(u))
            .map(|u| AuthenticatedUser {
                user_id: u.user_id,
                username: u.username.clone(),
            }))
    }
}
