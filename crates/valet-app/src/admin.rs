//! Administration use cases behind `valet client …` and `valet user …`.

use uuid::Uuid;
use valet_domain::client::{self, ClientKind};
use valet_domain::{
    user, ClientId, ClientName, GrantType, RedirectUri, RevocationReason, ScopeSet, StreamId,
    UserId, Username,
};

use crate::aggregate::{self as agg, execute, ExecuteError};
use crate::clock::Clock;
use crate::oauth::{OAuth, OAuthError, RequestMeta};
use crate::ports::{EventStore, StoreError};
use crate::read::{ClientSummary, ReadModels};
use crate::secrets::{self, SecretKind};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The input breaks a rule; the message says which, for the operator.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Constraint(what) => AdminError::AlreadyExists(what),
            other => AdminError::Unavailable(other.to_string()),
        }
    }
}

impl From<OAuthError> for AdminError {
    fn from(e: OAuthError) -> Self {
        AdminError::Unavailable(e.to_string())
    }
}

fn failed<E: std::fmt::Display>(e: ExecuteError<E>) -> AdminError {
    match e {
        ExecuteError::Rejected { error, .. } => AdminError::Invalid(error.to_string()),
        ExecuteError::Store(e) => e.into(),
        other => AdminError::Unavailable(other.to_string()),
    }
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
}

#[derive(Debug, Clone)]
pub struct CreatedClient {
    pub client_id: String,
    /// Shown once; only its SHA-256 is kept.
    pub client_secret: Option<String>,
}

const ADMIN: &str = "admin:cli";

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    pub async fn create_client(
        &self,
        spec: NewClient,
        meta: &RequestMeta,
    ) -> Result<CreatedClient, AdminError> {
        let invalid =
            |what: &str, e: &dyn std::fmt::Display| AdminError::Invalid(format!("{what}: {e}"));
        let name = ClientName::parse(&spec.name).map_err(|e| invalid("--name", &e))?;
        let redirect_uris = spec
            .redirect_uris
            .iter()
            .map(|u| RedirectUri::parse(u).map_err(|e| invalid("--redirect-uri", &e)))
            .collect::<Result<Vec<_>, _>>()?;
        let grant_types = spec
            .grant_types
            .iter()
            .map(|g| GrantType::parse(g).map_err(|e| invalid("--grant-type", &e)))
            .collect::<Result<Vec<_>, _>>()?;
        if spec.scopes.is_empty() {
            return Err(AdminError::Invalid(
                "at least one --scope is required: a client may only be granted the scopes it is registered with".into(),
            ));
        }
        let scopes = ScopeSet::parse(&spec.scopes.join(" ")).map_err(|e| invalid("--scope", &e))?;
        let client_id = ClientId::parse(
            &secrets::client_id().map_err(|e| AdminError::Unavailable(e.to_string()))?,
        )
        .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let (kind, secret) = match spec.client_type {
            ClientType::Public => (ClientKind::Public, None),
            ClientType::Confidential => {
                let secret = secrets::generate(SecretKind::ClientSecret)
                    .map_err(|e| AdminError::Unavailable(e.to_string()))?;
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
            at: self.now(),
        };
        execute::<agg::Client, S>(
            &self.store,
            &StreamId::client(&client_id),
            command,
            &meta.metadata(ADMIN.to_owned()),
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
        let client_id =
            ClientId::parse(id).map_err(|_| AdminError::NotFound(format!("client {id}")))?;
        let command = client::Command::Disable { at: self.now() };
        execute::<agg::Client, S>(
            &self.store,
            &StreamId::client(&client_id),
            command,
            &meta.metadata(ADMIN.to_owned()),
        )
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected {
                error: client::Error::NotFound,
                ..
            } => AdminError::NotFound(format!("client {id}")),
            other => failed(other),
        })?;
        let mut revoked = 0;
        for grant in self.reads.active_grants_of_client(&client_id).await? {
            if self
                .revoke_grant(grant, RevocationReason::ClientDisabled, None, meta, ADMIN)
                .await?
            {
                revoked += 1;
            }
        }
        Ok(revoked)
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
        if password.is_empty() {
            return Err(AdminError::Invalid("the password is empty".into()));
        }
        if self.reads.user_by_name(&username).await?.is_some() {
            return Err(AdminError::AlreadyExists(format!("user {username}")));
        }
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&password))
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let user_id = UserId::new(Uuid::now_v7());
        let command = user::Command::Register {
            user_id,
            username: username.clone(),
            at: self.now(),
        };
        execute::<agg::User, S>(
            &self.store,
            &StreamId::user(&user_id),
            command,
            &meta.metadata(ADMIN.to_owned()),
        )
        .await
        .map_err(failed)?;
        self.reads.set_password(user_id, &hash).await?;
        Ok(user_id)
    }

    /// Disables the user and revokes every grant made on their behalf.
    pub async fn disable_user(
        &self,
        username: &str,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        let not_found = || AdminError::NotFound(format!("user {username}"));
        let name = Username::parse(username).map_err(|_| not_found())?;
        let user = self
            .reads
            .user_by_name(&name)
            .await?
            .ok_or_else(not_found)?;
        let command = user::Command::Disable { at: self.now() };
        execute::<agg::User, S>(
            &self.store,
            &StreamId::user(&user.user_id),
            command,
            &meta.metadata(ADMIN.to_owned()),
        )
        .await
        .map_err(failed)?;
        let mut revoked = 0;
        for grant in self.reads.active_grants_of_user(user.user_id).await? {
            if self
                .revoke_grant(grant, RevocationReason::UserDisabled, None, meta, ADMIN)
                .await?
            {
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}
