//! The users' administration: create, update the profile, change the password,
//! disable, enable, sign out everywhere, revoke grants, list, show.

use valet_domain::session::EndReason;
use valet_domain::{user, ClientId, RevocationReason, StreamId, UserId, Username};

use crate::aggregate::{self as agg, execute, load};
use crate::clock::Clock;
use crate::oauth::{OAuth, RequestMeta, Unavailable};
use crate::ports::EventStore;
use crate::read::{ConnectedApp, ReadModels, SessionView, UserSummary};

use super::{admin_actor, failed, AdminError};

/// A change to a user's profile claims; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub name: Option<String>,
    pub email: Option<String>,
    pub email_status: Option<user::EmailStatus>,
}

/// `valet user show`: the user as the log has them, their sessions and apps.
#[derive(Debug, Clone)]
pub struct UserDetails {
    pub user: user::User,
    pub sessions: Vec<SessionView>,
    pub apps: Vec<ConnectedApp>,
}

/// What a password change does to the user's grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantsOnPasswordChange {
    /// Revoke them all (the default: a changed password often means a stolen one).
    Revoke,
    Keep,
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Registers a user; the password is hashed with argon2id off the async executor and
    /// kept outside the log.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        meta: &RequestMeta,
    ) -> Result<UserId, AdminError> {
        let username = Username::parse(username)
            .map_err(|e| AdminError::Invalid(format!("--username: {e}")))?;
        if self.reads.user_by_name(&username).await?.is_some() {
            return Err(AdminError::AlreadyExists(format!("user {username}")));
        }
        let hash = self.hash_password(password).await?;
        let user_id = UserId::new(self.ids().new_id());
        let command = user::Command::Register {
            user_id,
            username: username.clone(),
            at: self.now(),
        };
        self.execute_on_user(user_id, command, meta).await?;
        self.reads.set_password(user_id, &hash).await?;
        Ok(user_id)
    }

    /// Changes a user's profile claims: each field given replaces the current one
    /// (`None` leaves it as it is); recorded only when something changed.
    pub async fn update_user_profile(
        &self,
        username: &str,
        update: ProfileUpdate,
        meta: &RequestMeta,
    ) -> Result<user::Profile, AdminError> {
        let not_found = || AdminError::NotFound(format!("user {username}"));
        let found = self.user_named(username).await?;
        let stream = StreamId::user(&found.user_id);
        let current = crate::aggregate::load::<agg::User, S>(&self.store, &stream)
            .await
            .map_err(failed)?
            .state
            .user()
            .map(|u| u.profile.clone())
            .ok_or_else(not_found)?;
        let profile = user::Profile {
            name: match update.name {
                Some(name) => Some(
                    user::PersonName::parse(&name)
                        .map_err(|e| AdminError::Invalid(format!("--name: {e}")))?,
                ),
                None => current.name,
            },
            email: match update.email {
                Some(email) => Some(
                    user::Email::parse(&email)
                        .map_err(|e| AdminError::Invalid(format!("--email: {e}")))?,
                ),
                None => current.email,
            },
            email_status: update.email_status.unwrap_or(current.email_status),
        };
        let command = user::Command::SetProfile {
            profile: profile.clone(),
            at: self.now(),
        };
        self.execute_on_user(found.user_id, command, meta).await?;
        Ok(profile)
    }

    /// Disables the user and revokes every grant made on their behalf.
    pub async fn disable_user(
        &self,
        username: &str,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        let user = self.user_named(username).await?;
        self.execute_on_user(
            user.user_id,
            user::Command::Disable { at: self.now() },
            meta,
        )
        .await?;
        self.end_sessions_of_user(
            user.user_id,
            EndReason::UserDisabled,
            meta,
            &admin_actor(meta),
        )
        .await?;
        self.revoke_all(
            self.reads.active_grants_of_user(user.user_id).await?,
            RevocationReason::UserDisabled,
            meta,
        )
        .await
    }

    /// Lets a disabled user sign in again. Their grants stay revoked and no session from
    /// before comes back: they sign in afresh.
    pub async fn enable_user(&self, username: &str, meta: &RequestMeta) -> Result<(), AdminError> {
        let user = self.user_named(username).await?;
        let command = user::Command::Enable { at: self.now() };
        self.execute_on_user(user.user_id, command, meta).await
    }

    /// Every registered user, by username.
    pub async fn list_users(&self) -> Result<Vec<UserSummary>, AdminError> {
        Ok(self.reads.users().await?)
    }

    /// One user as the log has them: registration, state, profile; with their
    /// standing sessions and the apps holding their grants.
    pub async fn show_user(&self, username: &str) -> Result<UserDetails, AdminError> {
        let found = self.user_named(username).await?;
        let loaded = load::<agg::User, S>(&self.store, &StreamId::user(&found.user_id))
            .await
            .map_err(failed)?;
        let user = loaded
            .state
            .user()
            .cloned()
            .ok_or_else(|| AdminError::NotFound(format!("user {username}")))?;
        Ok(UserDetails {
            sessions: self.active_sessions(found.user_id).await?,
            apps: self.connected_apps(found.user_id).await?,
            user,
        })
    }

    /// argon2id off the async executor; an empty password is refused.
    async fn hash_password(&self, password: &str) -> Result<String, AdminError> {
        if password.is_empty() {
            return Err(AdminError::Invalid("the password is empty".into()));
        }
        let password = password.to_owned();
        let (passwords, random) = (self.password_hashing().clone(), self.shared_randomness());
        Ok(
            tokio::task::spawn_blocking(move || passwords.hash(&password, random.as_ref()))
                .await
                .map_err(|e| Unavailable::Blocking(e.to_string()))?
                .map_err(Unavailable::from)?,
        )
    }

    /// Gives a user a new password. Every sign-in session begun until now ends (the
    /// change is recorded, never the password); with [`GrantsOnPasswordChange::Revoke`]
    /// every grant made on their behalf is revoked too (reason `admin`). Returns how many.
    pub async fn change_password(
        &self,
        username: &str,
        password: &str,
        grants: GrantsOnPasswordChange,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        let user = self.user_named(username).await?;
        let hash = self.hash_password(password).await?;
        // Sessions end before the new password works: a failure in between leaves the
        // old password and no session, never a session that outlives the change.
        let change = user::Command::ChangePassword { at: self.now() };
        self.execute_on_user(user.user_id, change, meta).await?;
        self.end_sessions_of_user(
            user.user_id,
            EndReason::PasswordChanged,
            meta,
            &admin_actor(meta),
        )
        .await?;
        self.reads.set_password(user.user_id, &hash).await?;
        match grants {
            GrantsOnPasswordChange::Revoke => {
                let active = self.reads.active_grants_of_user(user.user_id).await?;
                self.revoke_all(active, RevocationReason::Admin, meta).await
            }
            GrantsOnPasswordChange::Keep => Ok(0),
        }
    }

    /// An administrator's command on a user's stream.
    pub(super) async fn execute_on_user(
        &self,
        user_id: UserId,
        command: user::Command,
        meta: &RequestMeta,
    ) -> Result<(), AdminError> {
        execute::<agg::User, S>(
            &self.store,
            self.ids(),
            &StreamId::user(&user_id),
            command,
            &meta.metadata(admin_actor(meta)),
        )
        .await
        .map_err(failed)?;
        Ok(())
    }

    /// The user called `username` (not found: an error naming them).
    pub(super) async fn user_named(
        &self,
        username: &str,
    ) -> Result<crate::read::UserCredentials, AdminError> {
        let not_found = || AdminError::NotFound(format!("user {username}"));
        let name = Username::parse(username).map_err(|_| not_found())?;
        self.reads.user_by_name(&name).await?.ok_or_else(not_found)
    }

    /// Ends every sign-in session of a user begun until now: the next authorization
    /// request asks them to sign in (`prompt=none` gets `login_required`), and each
    /// session's clients hear of it (back-channel logout). Grants stay. Returns how many
    /// sessions ended.
    pub async fn sign_out_everywhere(
        &self,
        username: &str,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        let user = self.user_named(username).await?;
        Ok(self
            .sign_out_everywhere_as(user.user_id, EndReason::Admin, meta, &admin_actor(meta))
            .await?)
    }

    /// A user's sessions, newest first (at most `limit`), ended ones too.
    pub async fn user_sessions(
        &self,
        username: &str,
        limit: usize,
    ) -> Result<Vec<SessionView>, AdminError> {
        let user = self.user_named(username).await?;
        Ok(self.reads.sessions_of_user(user.user_id, limit).await?)
    }

    /// Revokes every grant made on behalf of a user (those of one client only, with
    /// `client`), as an administrator: resource services hear `grant.revoked` with
    /// reason `admin`. The user stays enabled and may sign in and consent again.
    pub async fn revoke_user_grants(
        &self,
        username: &str,
        client: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        let user = self.user_named(username).await?;
        let grants = match client {
            None => self.reads.active_grants_of_user(user.user_id).await?,
            Some(client) => {
                let unknown = || AdminError::NotFound(format!("client {client}"));
                let client_id = ClientId::parse(client).map_err(|_| unknown())?;
                let known = load::<agg::Client, S>(&self.store, &StreamId::client(&client_id))
                    .await
                    .map_err(failed)?;
                if known.state.client().is_none() {
                    return Err(unknown());
                }
                self.reads
                    .active_grants_of_user_for_client(user.user_id, &client_id)
                    .await?
            }
        };
        self.revoke_all(grants, RevocationReason::Admin, meta).await
    }
}
