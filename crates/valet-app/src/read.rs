//! The read models the use cases query: projections of the log (plus the password
//! table, which is deliberately not in the log). Implemented in valet-projector.

use std::future::Future;

use valet_domain::oidc::SessionId;
use valet_domain::session::EndReason;
use valet_domain::{ClientId, GrantId, ScopeSet, Timestamp, TokenHash, UserId, Username};

use crate::ports::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenView {
    pub grant_id: GrantId,
    pub client_id: ClientId,
    pub user_id: Option<UserId>,
    pub username: Option<Username>,
    pub scope: ScopeSet,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshStatus {
    Current,
    Rotated,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenView {
    pub grant_id: GrantId,
    pub client_id: ClientId,
    pub user_id: Option<UserId>,
    pub username: Option<Username>,
    pub scope: ScopeSet,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub status: RefreshStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCredentials {
    pub user_id: UserId,
    pub username: Username,
    pub active: bool,
    /// argon2id PHC string; None if the password was never set.
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    pub client_id: String,
    pub name: String,
    pub kind: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: String,
    pub active: bool,
}

/// A user as `valet user list` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub user_id: UserId,
    pub username: Username,
    pub active: bool,
}

/// A login session as the `sessions` read model keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub started_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_used_at: Timestamp,
    /// The clients it signed in to, in order.
    pub clients: Vec<ClientId>,
    pub ended: Option<(EndReason, Timestamp)>,
}

/// An app holding grants made by a user: what the account page lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedApp {
    pub client_id: ClientId,
    pub name: String,
    /// The union of the scopes of its grants that are not revoked.
    pub scope: ScopeSet,
    /// When the oldest of those grants was made.
    pub since: Timestamp,
    /// When it last got an access token.
    pub last_used: Timestamp,
}

pub trait ReadModels: Send + Sync + 'static {
    fn access_token(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<AccessTokenView>, StoreError>> + Send;

    fn refresh_token(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<RefreshTokenView>, StoreError>> + Send;

    fn user_by_name(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<Option<UserCredentials>, StoreError>> + Send;

    fn set_password(
        &self,
        user_id: UserId,
        password_hash: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Grants of the client that are not revoked.
    fn active_grants_of_client(
        &self,
        client_id: &ClientId,
    ) -> impl Future<Output = Result<Vec<GrantId>, StoreError>> + Send;

    /// Grants of the client that are not revoked and hold a scope outside `allowed`.
    fn active_grants_of_client_beyond(
        &self,
        client_id: &ClientId,
        allowed: &ScopeSet,
    ) -> impl Future<Output = Result<Vec<GrantId>, StoreError>> + Send;

    /// Grants the user made to the client that are not revoked.
    fn active_grants_of_user_for_client(
        &self,
        user_id: UserId,
        client_id: &ClientId,
    ) -> impl Future<Output = Result<Vec<GrantId>, StoreError>> + Send;

    /// Grants of the user that are not revoked.
    fn active_grants_of_user(
        &self,
        user_id: UserId,
    ) -> impl Future<Output = Result<Vec<GrantId>, StoreError>> + Send;

    fn clients(&self) -> impl Future<Output = Result<Vec<ClientSummary>, StoreError>> + Send;

    /// Every registered user, by username.
    fn users(&self) -> impl Future<Output = Result<Vec<UserSummary>, StoreError>> + Send;

    /// The user's sessions, newest first (at most `limit`); ended ones too.
    fn sessions_of_user(
        &self,
        user_id: UserId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<SessionView>, StoreError>> + Send;

    /// The apps holding grants of the user that are not revoked, by name.
    fn connected_apps(
        &self,
        user_id: UserId,
    ) -> impl Future<Output = Result<Vec<ConnectedApp>, StoreError>> + Send;
}
