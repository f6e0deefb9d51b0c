//! Administration use cases behind `valet client …` and `valet user …`.

use valet_domain::client::{self, AccessTokenFormat, ClientKind};
use valet_domain::session::EndReason;
use valet_domain::signing_key::Algorithm;
use valet_domain::{
    user, ClientId, ClientName, GrantId, GrantType, RedirectUri, RevocationReason, ScopeSet,
    StreamId, UserId, Username,
};

use crate::aggregate::{self as agg, execute, load, ExecuteError};
use crate::clock::Clock;
use crate::oauth::{OAuth, OAuthError, RequestMeta, Unavailable};
use crate::ports::{EventStore, StoreError};
use crate::read::{ClientSummary, ConnectedApp, ReadModels, SessionView, UserSummary};
use crate::secrets::{self, SecretKind};

/// A change to a user's profile claims; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub name: Option<String>,
    pub email: Option<String>,
    pub email_status: Option<user::EmailStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The input breaks a rule; the message says which, for the operator.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Constraint(what) => AdminError::AlreadyExists(what),
            other => AdminError::Unavailable(other.into()),
        }
    }
}

impl From<OAuthError> for AdminError {
    fn from(e: OAuthError) -> Self {
        match e {
            OAuthError::Unavailable(e) => AdminError::Unavailable(e),
            // The admin use cases call no flow that answers with a protocol error.
            protocol @ OAuthError::Protocol { .. } => AdminError::Invalid(protocol.to_string()),
        }
    }
}

fn failed<E: std::fmt::Display>(e: ExecuteError<E>) -> AdminError {
    match e {
        ExecuteError::Rejected { error, .. } => AdminError::Invalid(error.to_string()),
        ExecuteError::Store(e) => e.into(),
        ExecuteError::Contention(n) => AdminError::Unavailable(Unavailable::Contention(n)),
    }
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

/// Whether a new client can keep a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Confidential,
    Public,
}

#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    pub client_type: ClientType,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    /// `RS256` (the default), `ES256` or `EdDSA`.
    pub id_token_alg: Option<String>,
    /// Where RP-Initiated Logout may return the user (same rules as redirect URIs).
    pub post_logout_redirect_uris: Vec<String>,
    /// `opaque` (the default) or `jwt` (RFC 9068).
    pub access_token_format: Option<String>,
    /// How JWT access tokens are signed: `RS256` (the default), `ES256` or `EdDSA`.
    pub access_token_alg: Option<String>,
    /// Where logout tokens are POSTed (same rules as redirect URIs).
    pub backchannel_logout_uri: Option<String>,
    /// Whether those tokens must carry `sid` (`backchannel_logout_session_required`).
    pub backchannel_logout_sid: client::LogoutSid,
}

/// What `valet client update` changes: `None` and empty lists keep the current value.
#[derive(Debug, Clone, Default)]
pub struct ClientChanges {
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub id_token_alg: Option<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub access_token_format: Option<String>,
    pub access_token_alg: Option<String>,
    pub backchannel_logout_uri: Option<String>,
    pub backchannel_logout_sid: client::LogoutSid,
}

/// A client's new secret.
#[derive(Debug, Clone)]
pub struct RotatedSecret {
    /// Shown once; only its SHA-256 is kept.
    pub client_secret: String,
    /// Until when the secret before it still works.
    pub previous_valid_until: valet_domain::Timestamp,
}

#[derive(Debug, Clone)]
pub struct CreatedClient {
    pub client_id: String,
    /// Shown once; only its SHA-256 is kept.
    pub client_secret: Option<String>,
}

impl NewClient {
    /// A client of `client_type` called `name`, registering `settings` (whose `name` is
    /// ignored).
    pub fn new(name: String, client_type: ClientType, settings: ClientChanges) -> Self {
        NewClient {
            name,
            client_type,
            redirect_uris: settings.redirect_uris,
            grant_types: settings.grant_types,
            scopes: settings.scopes,
            id_token_alg: settings.id_token_alg,
            post_logout_redirect_uris: settings.post_logout_redirect_uris,
            access_token_format: settings.access_token_format,
            access_token_alg: settings.access_token_alg,
            backchannel_logout_uri: settings.backchannel_logout_uri,
            backchannel_logout_sid: settings.backchannel_logout_sid,
        }
    }
}

const ADMIN: &str = "admin:cli";

/// The actor an administrator's change is recorded under.
fn admin_actor(meta: &RequestMeta) -> String {
    meta.admin.clone().unwrap_or_else(|| ADMIN.to_owned())
}

/// `--access-token-format` and `--access-token-signed-response-alg` as one choice.
fn access_token_format(
    format: Option<&str>,
    alg: Option<&str>,
) -> Result<AccessTokenFormat, AdminError> {
    let alg = alg
        .map(Algorithm::parse)
        .transpose()
        .map_err(|e| AdminError::Invalid(format!("--access-token-signed-response-alg: {e}")))?;
    match (format.unwrap_or("opaque"), alg) {
        ("opaque", None) => Ok(AccessTokenFormat::Opaque),
        ("opaque", Some(_)) => Err(AdminError::Invalid(
            "--access-token-signed-response-alg needs --access-token-format jwt".into(),
        )),
        ("jwt", alg) => Ok(AccessTokenFormat::Jwt {
            alg: alg.unwrap_or(Algorithm::RS256),
        }),
        (other, _) => Err(AdminError::Invalid(format!(
            "--access-token-format: {other:?} is neither opaque nor jwt"
        ))),
    }
}

fn invalid(what: &str, e: &dyn std::fmt::Display) -> AdminError {
    AdminError::Invalid(format!("{what}: {e}"))
}

fn uris(list: &[String], flag: &str) -> Result<Vec<RedirectUri>, AdminError> {
    list.iter()
        .map(|u| RedirectUri::parse(u).map_err(|e| invalid(flag, &e)))
        .collect()
}

fn grant_types(list: &[String]) -> Result<Vec<GrantType>, AdminError> {
    list.iter()
        .map(|g| GrantType::parse(g).map_err(|e| invalid("--grant-type", &e)))
        .collect()
}

fn scope_set(list: &[String]) -> Result<ScopeSet, AdminError> {
    if list.is_empty() {
        return Err(AdminError::Invalid(
            "at least one --scope is required: a client may only be granted the scopes it is registered with".into(),
        ));
    }
    ScopeSet::parse(&list.join(" ")).map_err(|e| invalid("--scope", &e))
}

fn algorithm(alg: Option<&str>) -> Result<Option<Algorithm>, AdminError> {
    alg.map(Algorithm::parse)
        .transpose()
        .map_err(|e| invalid("--id-token-signed-response-alg", &e))
}

fn backchannel_logout(
    uri: Option<&str>,
    sid: client::LogoutSid,
) -> Result<Option<client::BackchannelLogout>, AdminError> {
    uri.map(|u| {
        RedirectUri::parse(u)
            .map(|uri| client::BackchannelLogout { uri, sid })
            .map_err(|e| invalid("--backchannel-logout-uri", &e))
    })
    .transpose()
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Changes what a client registered (`None` and empty lists keep the current
    /// value; a list given replaces the current one). The registration's rules hold.
    /// Returns whether anything changed.
    pub async fn update_client(
        &self,
        id: &str,
        changes: ClientChanges,
        meta: &RequestMeta,
    ) -> Result<bool, AdminError> {
        let nonempty = |list: Vec<String>| (!list.is_empty()).then_some(list);
        let update = client::ClientUpdate {
            name: changes
                .name
                .as_deref()
                .map(|n| ClientName::parse(n).map_err(|e| invalid("--name", &e)))
                .transpose()?,
            redirect_uris: nonempty(changes.redirect_uris)
                .map(|l| uris(&l, "--redirect-uri"))
                .transpose()?,
            grant_types: nonempty(changes.grant_types)
                .map(|l| grant_types(&l))
                .transpose()?,
            scopes: nonempty(changes.scopes)
                .map(|l| scope_set(&l))
                .transpose()?,
            id_token_alg: algorithm(changes.id_token_alg.as_deref())?,
            post_logout_redirect_uris: nonempty(changes.post_logout_redirect_uris)
                .map(|l| uris(&l, "--post-logout-redirect-uri"))
                .transpose()?,
            access_token_format: match (&changes.access_token_format, &changes.access_token_alg) {
                (None, None) => None,
                (format, alg) => Some(access_token_format(format.as_deref(), alg.as_deref())?),
            },
            backchannel_logout: backchannel_logout(
                changes.backchannel_logout_uri.as_deref(),
                changes.backchannel_logout_sid,
            )?,
        };
        let command = client::Command::Update {
            update,
            at: self.now(),
        };
        let (_, recorded) = self.execute_on_client(id, command, meta).await?;
        Ok(recorded > 0)
    }

    pub async fn create_client(
        &self,
        spec: NewClient,
        meta: &RequestMeta,
    ) -> Result<CreatedClient, AdminError> {
        let name = ClientName::parse(&spec.name).map_err(|e| invalid("--name", &e))?;
        let redirect_uris = uris(&spec.redirect_uris, "--redirect-uri")?;
        let grant_types = grant_types(&spec.grant_types)?;
        let scopes = scope_set(&spec.scopes)?;
        let id_token_alg = algorithm(spec.id_token_alg.as_deref())?.unwrap_or(Algorithm::RS256);
        let post_logout_redirect_uris = uris(
            &spec.post_logout_redirect_uris,
            "--post-logout-redirect-uri",
        )?;
        let access_token_format = access_token_format(
            spec.access_token_format.as_deref(),
            spec.access_token_alg.as_deref(),
        )?;
        let backchannel_logout = backchannel_logout(
            spec.backchannel_logout_uri.as_deref(),
            spec.backchannel_logout_sid,
        )?;
        let random = self.randomness();
        let drawn = secrets::client_id(random).map_err(Unavailable::from)?;
        // 32 hex characters always make a valid client id.
        let client_id = ClientId::parse(&drawn).map_err(|e| invalid("client id", &e))?;
        let (kind, secret) = match spec.client_type {
            ClientType::Public => (ClientKind::Public, None),
            ClientType::Confidential => {
                let secret = secrets::generate(SecretKind::ClientSecret, random)
                    .map_err(Unavailable::from)?;
                (
                    ClientKind::Confidential {
                        secret_hash: secret.hash,
                    },
                    Some(secret.raw),
                )
            }
        };
        let command = client::Command::Register {
            client_id: client_id.clone(),
            name,
            kind,
            redirect_uris,
            grant_types,
            scopes,
            id_token_alg,
            post_logout_redirect_uris,
            access_token_format,
            backchannel_logout,
            at: self.now(),
        };
        execute::<agg::Client, S>(
            &self.store,
            self.ids(),
            &StreamId::client(&client_id),
            command,
            &meta.metadata(admin_actor(meta)),
        )
        .await
        .map_err(failed)?;
        Ok(CreatedClient {
            client_id: client_id.to_string(),
            client_secret: secret,
        })
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientSummary>, AdminError> {
        Ok(self.reads.clients().await?)
    }

    /// Disables the client and revokes every grant it holds. Returns how many grants.
    pub async fn disable_client(&self, id: &str, meta: &RequestMeta) -> Result<usize, AdminError> {
        let command = client::Command::Disable { at: self.now() };
        self.stop_client(id, command, meta).await
    }

    /// Disables or deletes a client, then revokes every grant it holds (reason
    /// `client_disabled`, which resource services of every version know).
    async fn stop_client(
        &self,
        id: &str,
        command: client::Command,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        let (client_id, _) = self.execute_on_client(id, command, meta).await?;
        self.revoke_all(
            self.reads.active_grants_of_client(&client_id).await?,
            RevocationReason::ClientDisabled,
            meta,
        )
        .await
    }

    /// Lets a disabled client authenticate again (its revoked grants stay revoked).
    pub async fn enable_client(&self, id: &str, meta: &RequestMeta) -> Result<(), AdminError> {
        let command = client::Command::Enable { at: self.now() };
        self.execute_on_client(id, command, meta).await?;
        Ok(())
    }

    /// Deletes the client for good: it never authenticates again, its id is never
    /// registered again, and every grant it holds is revoked. Returns how many grants.
    pub async fn delete_client(&self, id: &str, meta: &RequestMeta) -> Result<usize, AdminError> {
        let command = client::Command::Delete { at: self.now() };
        self.stop_client(id, command, meta).await
    }

    /// Gives a confidential client a new secret (shown once; only its SHA-256 is kept).
    /// The current secret keeps working for `overlap_seconds` (0: it stops at once), so
    /// the client's deployments can switch over.
    pub async fn rotate_client_secret(
        &self,
        id: &str,
        overlap_seconds: u32,
        meta: &RequestMeta,
    ) -> Result<RotatedSecret, AdminError> {
        let secret = secrets::generate(SecretKind::ClientSecret, self.randomness())
            .map_err(Unavailable::from)?;
        let now = self.now();
        let previous_valid_until = now.plus_seconds(overlap_seconds);
        let command = client::Command::RotateSecret {
            secret_hash: secret.hash,
            previous_valid_until,
            at: now,
        };
        self.execute_on_client(id, command, meta).await?;
        Ok(RotatedSecret {
            client_secret: secret.raw,
            previous_valid_until,
        })
    }

    /// An administrator's command on a client's stream; the client's id and how many
    /// events it recorded.
    async fn execute_on_client(
        &self,
        id: &str,
        command: client::Command,
        meta: &RequestMeta,
    ) -> Result<(ClientId, usize), AdminError> {
        let not_found = || AdminError::NotFound(format!("client {id}"));
        let client_id = ClientId::parse(id).map_err(|_| not_found())?;
        let executed = execute::<agg::Client, S>(
            &self.store,
            self.ids(),
            &StreamId::client(&client_id),
            command,
            &meta.metadata(admin_actor(meta)),
        )
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected {
                error: client::Error::NotFound,
                ..
            } => not_found(),
            other => failed(other),
        })?;
        Ok((client_id, executed.events.len()))
    }

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
    async fn execute_on_user(
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
    async fn user_named(&self, username: &str) -> Result<crate::read::UserCredentials, AdminError> {
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

    async fn revoke_all(
        &self,
        grants: Vec<GrantId>,
        reason: RevocationReason,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        let mut revoked = 0;
        for grant in grants {
            if self
                .revoke_grant(grant, reason, None, meta, &admin_actor(meta))
                .await?
            {
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}
