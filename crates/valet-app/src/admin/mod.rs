//! Administration use cases behind `valet client …`, `valet user …` and the admin API:
//! what they share here, the clients' in `clients.rs`, the users' in `users.rs`.

mod clients;
mod queries;
mod users;

pub use clients::{ClientChanges, ClientType, CreatedClient, NewClient, RotatedSecret};
pub use queries::{
    AdminReads, Answer, AuditFilter, ClientFilter, ClientRow, ClientStatus, Cursor, GrantAt,
    GrantFilter, GrantRow, GrantStatus, NoAdminReads, Page, PageRequest, PageSize, TokenKind,
    TokenRevocation, TokenStory, UserFilter, UserRow, UserStatus,
};
pub use users::{GrantsOnPasswordChange, ProfileUpdate, UserDetails};

use valet_domain::{GrantId, RevocationReason};

use crate::aggregate::ExecuteError;
use crate::clock::Clock;
use crate::oauth::{OAuth, OAuthError, RequestMeta, Unavailable};
use crate::ports::{EventStore, StoreError};
use crate::read::ReadModels;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The input breaks a rule; the message says which, for the operator.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The change would contradict the state it applies to; the message says how.
    #[error("{0}")]
    Conflict(String),
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

pub(crate) fn failed<E: std::fmt::Display>(e: ExecuteError<E>) -> AdminError {
    match e {
        ExecuteError::Rejected { error, .. } => AdminError::Invalid(error.to_string()),
        ExecuteError::Store(e) => e.into(),
        ExecuteError::Contention(n) => AdminError::Unavailable(Unavailable::Contention(n)),
    }
}

pub(super) const ADMIN: &str = "admin:cli";

/// The actor an administrator's change is recorded under.
pub(super) fn admin_actor(meta: &RequestMeta) -> String {
    meta.admin
        .as_ref()
        .map_or_else(|| ADMIN.to_owned(), |caller| caller.actor())
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Revokes one grant as an administrator (reason `admin`): whether it was standing.
    /// The grant behind the calling token is refused: the caller would lock itself out.
    pub async fn revoke_grant_as_admin(
        &self,
        grant: GrantId,
        meta: &RequestMeta,
    ) -> Result<bool, AdminError> {
        if meta.admin.as_ref().is_some_and(|c| c.grant_id == grant) {
            return Err(AdminError::Conflict(
                "this grant holds the calling token: revoke it with /revoke instead".into(),
            ));
        }
        Ok(self
            .revoke_grant(
                grant,
                RevocationReason::Admin,
                None,
                meta,
                &admin_actor(meta),
            )
            .await?)
    }

    pub(super) async fn revoke_all(
        &self,
        grants: Vec<GrantId>,
        reason: RevocationReason,
        meta: &RequestMeta,
    ) -> Result<usize, AdminError> {
        self.revoke_all_as(grants, reason, meta, &admin_actor(meta))
            .await
    }

    /// [`Self::revoke_all`], recorded with `actor`.
    pub(super) async fn revoke_all_as(
        &self,
        grants: Vec<GrantId>,
        reason: RevocationReason,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<usize, AdminError> {
        let mut revoked = 0;
        for grant in grants {
            if self.revoke_grant(grant, reason, None, meta, actor).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}
