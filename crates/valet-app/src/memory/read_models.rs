//! The read models in memory: the same fold ([`valet_domain::changes`]) as the
//! PostgreSQL projection, rendered into maps. For unit tests of the use cases.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use valet_domain::client::{self, ClientKind};
use valet_domain::grant::{self, Subject};
use valet_domain::oidc::SessionId;
use valet_domain::{
    changes, session, user, Change, ClientId, Event, GrantId, ScopeSet, StreamId, Timestamp,
    TokenHash, UserId, Username,
};

use crate::ports::StoreError;
use crate::read::{
    AccessTokenView, ClientSummary, ConnectedApp, ReadModels, RefreshStatus, RefreshTokenView,
    SessionView, UserCredentials, UserSummary,
};

/// Cheap to clone: clones share the tables.
#[derive(Clone, Default)]
pub struct MemoryReadModels {
    tables: Arc<Mutex<Tables>>,
}

#[derive(Default)]
struct Tables {
    /// In order of registration, as `valet client list` shows them.
    clients: Vec<ClientSummary>,
    users: HashMap<UserId, UserRow>,
    user_ids: HashMap<Username, UserId>,
    passwords: HashMap<UserId, String>,
    grants: BTreeMap<GrantId, GrantRow>,
    access: HashMap<TokenHash, AccessRow>,
    refresh: HashMap<TokenHash, RefreshRow>,
    sessions: HashMap<SessionId, SessionView>,
}

struct UserRow {
    username: Username,
    active: bool,
}

struct GrantRow {
    client_id: ClientId,
    subject: Option<Subject>,
    scope: ScopeSet,
    created_at: Timestamp,
    revoked: bool,
}

struct AccessRow {
    grant_id: GrantId,
    scope: ScopeSet,
    issued_at: Timestamp,
    expires_at: Timestamp,
    revoked: bool,
}

struct RefreshRow {
    grant_id: GrantId,
    issued_at: Timestamp,
    expires_at: Timestamp,
    rotated: bool,
}

impl MemoryReadModels {
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // Every change is applied whole before the lock is released.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one event of `stream` (the store calls this for every append).
    pub fn apply(&self, stream: &StreamId, event: &Event) {
        let mut tables = self.tables();
        for change in changes(stream, event) {
            tables.apply(change);
        }
    }
}

impl Tables {
    fn apply(&mut self, change: Change<'_>) {
        match change {
            Change::Client { client_id, event } => self.client(client_id, event),
            Change::User { user_id, event } => self.user(user_id, event),
            Change::Grant { grant_id, change } => self.grant(grant_id, change),
            Change::Session { session_id, event } => self.session(session_id, event),
            // Consents, codes, the key ring and deliveries are read from their streams.
            Change::Consent { .. }
            | Change::Code { .. }
            | Change::SigningKey { .. }
            | Change::Logout { .. } => {}
        }
    }

    fn session(&mut self, session_id: SessionId, event: &session::Event) {
        match event {
            session::Event::SessionStarted {
                user_id,
                expires_at,
                at,
                ..
            } => {
                self.sessions.insert(
                    session_id,
                    SessionView {
                        session_id,
                        user_id: *user_id,
                        started_at: *at,
                        expires_at: *expires_at,
                        last_used_at: *at,
                        clients: Vec::new(),
                        ended: None,
                    },
                );
            }
            session::Event::SessionUsed { client_id, at } => {
                if let Some(row) = self.sessions.get_mut(&session_id) {
                    row.last_used_at = row.last_used_at.max(*at);
                    if let Some(client) = client_id {
                        if !row.clients.contains(client) {
                            row.clients.push(client.clone());
                        }
                    }
                }
            }
            session::Event::SessionEnded { reason, at } => {
                if let Some(row) = self.sessions.get_mut(&session_id) {
                    row.ended = row.ended.or(Some((*reason, *at)));
                }
            }
        }
    }

    fn client(&mut self, client_id: &ClientId, event: &client::Event) {
        match event {
            client::Event::ClientRegistered {
                name,
                kind,
                redirect_uris,
                grant_types,
                scopes,
                ..
            } => self.clients.push(ClientSummary {
                client_id: client_id.to_string(),
                name: name.to_string(),
                kind: match kind {
                    ClientKind::Confidential { .. } => "confidential",
                    ClientKind::Public => "public",
                }
                .to_owned(),
                redirect_uris: redirect_uris
                    .iter()
                    .map(|u| u.as_str().to_owned())
                    .collect(),
                grant_types: grant_types.iter().map(|g| g.as_str().to_owned()).collect(),
                scopes: scopes.to_string(),
                active: true,
            }),
            client::Event::ClientDisabled { .. } | client::Event::ClientDeleted { .. } => {
                self.set_client_active(client_id, false)
            }
            client::Event::ClientUpdated {
                name,
                redirect_uris,
                grant_types,
                scopes,
                ..
            } => {
                for row in &mut self.clients {
                    if row.client_id == client_id.as_str() {
                        row.name = name.to_string();
                        row.redirect_uris = redirect_uris
                            .iter()
                            .map(|u| u.as_str().to_owned())
                            .collect();
                        row.grant_types =
                            grant_types.iter().map(|g| g.as_str().to_owned()).collect();
                        row.scopes = scopes.to_string();
                    }
                }
            }
            // A deleted client is never enabled (the domain refuses it).
            client::Event::ClientEnabled { .. } => self.set_client_active(client_id, true),
            client::Event::ClientIdTokenAlgorithmSet { .. }
            | client::Event::ClientPostLogoutRedirectUrisSet { .. }
            | client::Event::ClientAccessTokenFormatSet { .. }
            | client::Event::ClientBackchannelLogoutSet { .. }
            | client::Event::ClientSecretRotated { .. }
            | client::Event::ClientRegistrationTokenSet { .. } => {}
        }
    }

    fn set_client_active(&mut self, client_id: &ClientId, active: bool) {
        for row in &mut self.clients {
            if row.client_id == client_id.as_str() {
                row.active = active;
            }
        }
    }

    fn user(&mut self, user_id: UserId, event: &user::Event) {
        match event {
            user::Event::UserRegistered { username, .. } => {
                self.user_ids.insert(username.clone(), user_id);
                self.users.insert(
                    user_id,
                    UserRow {
                        username: username.clone(),
                        active: true,
                    },
                );
            }
            user::Event::UserDisabled { .. } => {
                if let Some(row) = self.users.get_mut(&user_id) {
                    row.active = false;
                }
            }
            user::Event::UserEnabled { .. } => {
                if let Some(row) = self.users.get_mut(&user_id) {
                    row.active = true;
                }
            }
            user::Event::UserProfileChanged { .. }
            | user::Event::UserSignedOutEverywhere { .. }
            | user::Event::UserPasswordChanged { .. } => {}
        }
    }

    fn grant(&mut self, grant_id: GrantId, change: grant::Change<'_>) {
        match change {
            grant::Change::Opened {
                client_id,
                subject,
                scope,
                at,
                ..
            } => {
                self.grants.insert(
                    grant_id,
                    GrantRow {
                        client_id: client_id.clone(),
                        subject: subject.cloned(),
                        scope: scope.clone(),
                        created_at: at,
                        revoked: false,
                    },
                );
            }
            grant::Change::AccessIssued(issue) => {
                self.access.insert(
                    issue.hash,
                    AccessRow {
                        grant_id,
                        scope: issue.scope.clone(),
                        issued_at: issue.issued_at,
                        expires_at: issue.expires_at,
                        revoked: false,
                    },
                );
            }
            grant::Change::RefreshIssued(issue) => {
                self.refresh.insert(
                    issue.hash,
                    RefreshRow {
                        grant_id,
                        issued_at: issue.issued_at,
                        expires_at: issue.expires_at,
                        rotated: false,
                    },
                );
            }
            grant::Change::RefreshRotated(hash) => {
                if let Some(row) = self.refresh.get_mut(hash) {
                    row.rotated = true;
                }
            }
            grant::Change::AccessRevoked { hash, .. } => {
                if let Some(row) = self.access.get_mut(hash) {
                    row.revoked = true;
                }
            }
            grant::Change::Revoked { .. } => {
                if let Some(row) = self.grants.get_mut(&grant_id) {
                    row.revoked = true;
                }
            }
            grant::Change::RefreshReused { .. } => {}
        }
    }

    fn grant_of(&self, grant_id: GrantId) -> Result<&GrantRow, StoreError> {
        self.grants
            .get(&grant_id)
            .ok_or_else(|| StoreError::Malformed(format!("tokens of unknown grant {grant_id}")))
    }
}

impl ReadModels for MemoryReadModels {
    async fn access_token(&self, hash: &TokenHash) -> Result<Option<AccessTokenView>, StoreError> {
        let tables = self.tables();
        let Some(row) = tables.access.get(hash) else {
            return Ok(None);
        };
        let grant = tables.grant_of(row.grant_id)?;
        Ok(Some(AccessTokenView {
            grant_id: row.grant_id,
            client_id: grant.client_id.clone(),
            user_id: grant.subject.as_ref().map(|s| s.user_id),
            username: grant.subject.as_ref().map(|s| s.username.clone()),
            scope: row.scope.clone(),
            issued_at: row.issued_at,
            expires_at: row.expires_at,
            revoked: row.revoked || grant.revoked,
        }))
    }

    async fn refresh_token(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<RefreshTokenView>, StoreError> {
        let tables = self.tables();
        let Some(row) = tables.refresh.get(hash) else {
            return Ok(None);
        };
        let grant = tables.grant_of(row.grant_id)?;
        Ok(Some(RefreshTokenView {
            grant_id: row.grant_id,
            client_id: grant.client_id.clone(),
            user_id: grant.subject.as_ref().map(|s| s.user_id),
            username: grant.subject.as_ref().map(|s| s.username.clone()),
            scope: grant.scope.clone(),
            issued_at: row.issued_at,
            expires_at: row.expires_at,
            status: match (grant.revoked, row.rotated) {
                (true, _) => RefreshStatus::Revoked,
                (false, true) => RefreshStatus::Rotated,
                (false, false) => RefreshStatus::Current,
            },
        }))
    }

    async fn user_by_name(&self, name: &Username) -> Result<Option<UserCredentials>, StoreError> {
        let tables = self.tables();
        Ok(tables.user_ids.get(name).and_then(|id| {
            tables.users.get(id).map(|row| UserCredentials {
                user_id: *id,
                username: row.username.clone(),
                active: row.active,
                password_hash: tables.passwords.get(id).cloned(),
            })
        }))
    }

    async fn set_password(&self, user_id: UserId, password_hash: &str) -> Result<(), StoreError> {
        self.tables()
            .passwords
            .insert(user_id, password_hash.to_owned());
        Ok(())
    }

    async fn active_grants_of_client(&self, client: &ClientId) -> Result<Vec<GrantId>, StoreError> {
        Ok(self
            .tables()
            .grants
            .iter()
            .filter(|(_, g)| !g.revoked && &g.client_id == client)
            .map(|(id, _)| *id)
            .collect())
    }

    async fn active_grants_of_client_beyond(
        &self,
        client: &ClientId,
        allowed: &ScopeSet,
    ) -> Result<Vec<GrantId>, StoreError> {
        Ok(self
            .tables()
            .grants
            .iter()
            .filter(|(_, g)| !g.revoked && &g.client_id == client && !g.scope.is_subset(allowed))
            .map(|(id, _)| *id)
            .collect())
    }

    async fn active_grants_of_user_for_client(
        &self,
        user: UserId,
        client: &ClientId,
    ) -> Result<Vec<GrantId>, StoreError> {
        Ok(self
            .tables()
            .grants
            .iter()
            .filter(|(_, g)| {
                !g.revoked
                    && &g.client_id == client
                    && g.subject.as_ref().is_some_and(|s| s.user_id == user)
            })
            .map(|(id, _)| *id)
            .collect())
    }

    async fn active_grants_of_user(&self, user: UserId) -> Result<Vec<GrantId>, StoreError> {
        Ok(self
            .tables()
            .grants
            .iter()
            .filter(|(_, g)| !g.revoked && g.subject.as_ref().is_some_and(|s| s.user_id == user))
            .map(|(id, _)| *id)
            .collect())
    }

    async fn clients(&self) -> Result<Vec<ClientSummary>, StoreError> {
        Ok(self.tables().clients.clone())
    }

    async fn users(&self) -> Result<Vec<UserSummary>, StoreError> {
        let tables = self.tables();
        let mut users: Vec<UserSummary> = tables
            .users
            .iter()
            .map(|(id, row)| UserSummary {
                user_id: *id,
                username: row.username.clone(),
                active: row.active,
            })
            .collect();
        users.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(users)
    }

    async fn sessions_of_user(
        &self,
        user_id: UserId,
        limit: usize,
    ) -> Result<Vec<SessionView>, StoreError> {
        let tables = self.tables();
        let mut sessions: Vec<SessionView> = tables
            .sessions
            .values()
            .filter(|s| s.user_id == user_id)
            .cloned()
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse((s.started_at, s.session_id)));
        sessions.truncate(limit);
        Ok(sessions)
    }

    async fn connected_apps(&self, user_id: UserId) -> Result<Vec<ConnectedApp>, StoreError> {
        let tables = self.tables();
        let mut apps: BTreeMap<ClientId, ConnectedApp> = BTreeMap::new();
        for (grant_id, grant) in &tables.grants {
            if grant.revoked || grant.subject.as_ref().is_none_or(|s| s.user_id != user_id) {
                continue;
            }
            let last_token = tables
                .access
                .values()
                .filter(|a| a.grant_id == *grant_id)
                .map(|a| a.issued_at)
                .max()
                .unwrap_or(grant.created_at);
            let name = tables
                .clients
                .iter()
                .find(|c| c.client_id == grant.client_id.as_str())
                .map_or_else(|| grant.client_id.to_string(), |c| c.name.clone());
            let app = apps
                .entry(grant.client_id.clone())
                .or_insert_with(|| ConnectedApp {
                    client_id: grant.client_id.clone(),
                    name,
                    scope: ScopeSet::default(),
                    since: grant.created_at,
                    last_used: last_token,
                });
            app.scope = app.scope.union(&grant.scope);
            app.since = app.since.min(grant.created_at);
            app.last_used = app.last_used.max(last_token);
        }
        let mut apps: Vec<ConnectedApp> = apps.into_values().collect();
        apps.sort_by(|a, b| (&a.name, &a.client_id).cmp(&(&b.name, &b.client_id)));
        Ok(apps)
    }
}
