//! RFC 7009 revocation, and revoking a whole grant (code replay, admin actions).

use valet_domain::grant;
use valet_domain::{EventRef, GrantId, RevocationReason, StreamId, TokenHash};

use super::{client_actor, AuthenticatedClient, OAuth, OAuthError, RequestMeta};
use crate::aggregate::{self as agg, execute, ExecuteError};
use crate::clock::Clock;
use crate::ports::EventStore;
use crate::read::ReadModels;

/// Which kind of token a revocation request names first (`token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Access,
    Refresh,
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Unknown tokens and other clients' tokens are answered with success and left
    /// alone; a refresh token takes its whole grant with it.
    pub async fn revoke(
        &self,
        client: &AuthenticatedClient,
        token: &str,
        token_type_hint: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<(), OAuthError> {
        let hash = TokenHash::of(token);
        let order = match token_type_hint {
            Some("refresh_token") => [Lookup::Refresh, Lookup::Access],
            _ => [Lookup::Access, Lookup::Refresh],
        };
        let actor = client_actor(client.id());
        for lookup in order {
            match lookup {
                Lookup::Refresh => {
                    if let Some(view) = self.reads.refresh_token(&hash).await? {
                        if &view.client_id == client.id() {
                            let reason = RevocationReason::ClientRequest;
                            self.revoke_grant(view.grant_id, reason, None, meta, &actor)
                                .await?;
                        }
                        return Ok(());
                    }
                }
                Lookup::Access => {
                    if let Some(view) = self.reads.access_token(&hash).await? {
                        if &view.client_id == client.id() && !view.revoked {
                            self.revoke_access_token(view.grant_id, hash, meta, &actor)
                                .await?;
                        }
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    async fn revoke_access_token(
        &self,
        grant_id: GrantId,
        hash: TokenHash,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<(), OAuthError> {
        let command = grant::Command::RevokeAccessToken {
            hash,
            reason: RevocationReason::ClientRequest,
            at: self.now(),
        };
        let metadata = meta.metadata(actor.to_owned());
        let stream = StreamId::grant(&grant_id);
        match execute::<agg::Grant, S>(&self.store, self.ids.as_ref(), &stream, command, &metadata)
            .await
        {
            Ok(_) | Err(ExecuteError::Rejected { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes a whole grant (idempotent; unknown grants are ignored). Whether this call
    /// revoked it.
    pub async fn revoke_grant(
        &self,
        grant_id: GrantId,
        reason: RevocationReason,
        cause: Option<EventRef>,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<bool, OAuthError> {
        let command = grant::Command::RevokeGrant {
            reason,
            cause,
            at: self.now(),
        };
        let metadata = meta.metadata(actor.to_owned());
        let stream = StreamId::grant(&grant_id);
        match execute::<agg::Grant, S>(&self.store, self.ids.as_ref(), &stream, command, &metadata)
            .await
        {
            Ok(executed) => Ok(!executed.events.is_empty()),
            Err(ExecuteError::Rejected { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
