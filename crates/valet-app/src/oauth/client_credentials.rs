//! RFC 6749 §4.4: a token for the client itself.

use valet_domain::grant::{self, GrantOrigin};
use valet_domain::{GrantId, GrantType, StreamId};

use super::client_auth::GuardedWriteError;
use super::tokens::Minted;
use super::{client_actor, OAuth, OAuthError, RequestMeta, TokenResponse, Unavailable};
use crate::aggregate::{self as agg, Aggregate};
use crate::clock::Clock;
use crate::ports::{EventStore, ExpectedVersion, StreamWrite};
use crate::read::ReadModels;

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// A one-token grant of the client's (or the requested) scope; no refresh token.
    pub async fn client_credentials(
        &self,
        client: &super::AuthenticatedClient,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.state.allows_grant(GrantType::ClientCredentials) {
            return Err(OAuthError::unauthorized_client());
        }
        let requested = super::refresh::parse_scope(scope)?;
        let scope = client
            .state
            .grantable_scope(requested.as_ref())
            .map_err(|_| OAuthError::invalid_scope())?;
        self.issue_client_grant(client, scope, self.settings.access_ttl.seconds(), meta)
            .await
    }

    /// A one-token grant of `scope` for the client itself (checked by the caller).
    pub(crate) async fn issue_client_grant(
        &self,
        client: &super::AuthenticatedClient,
        scope: valet_domain::ScopeSet,
        lifetime_seconds: u32,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.now();
        let Minted { raw, issue } =
            self.access_token(client, None, scope.clone(), now, lifetime_seconds)?;
        let grant_id = GrantId::new(self.ids.new_id());
        let command = grant::Command::Issue {
            grant_id,
            client_id: client.id().clone(),
            subject: None,
            scope: scope.clone(),
            origin: GrantOrigin::ClientCredentials,
            access: issue,
            refresh: None,
            at: now,
        };
        // A fresh grant id: nothing to load, nothing to retry.
        let events = agg::Grant::decide(&Default::default(), command)
            .map_err(|r| Unavailable::Refused(r.error.into()))?;
        let metadata = meta.metadata(client_actor(client.id()));
        let writes = vec![
            self.client_unchanged(client),
            StreamWrite {
                stream: StreamId::grant(&grant_id),
                expected: ExpectedVersion::NoStream,
                events: self.new_events(&events, &metadata),
            },
        ];
        match self.append_for_client(client, writes).await {
            Ok(()) => Ok(super::TokenResponse {
                expires_in: lifetime_seconds,
                ..self.token_response(raw, None, &scope)
            }),
            // The client changed but is still active: the caller may simply ask again.
            Err(GuardedWriteError::Conflict) => Err(Unavailable::Contention(1).into()),
            Err(GuardedWriteError::Failed(e)) => Err(e),
        }
    }
}
