//! RFC 6749 §6 with rotation: the presented refresh token is spent and a new pair is
//! issued; a spent token coming back revokes the grant (RFC 9700 §4.14).

use valet_domain::grant;
use valet_domain::{GrantType, ScopeSet, StreamId, TokenHash};

use super::id_token::has_openid;
use super::{
    client_actor, AuthenticatedClient, OAuth, OAuthError, RequestMeta, TokenResponse, Unavailable,
};
use crate::aggregate::{self as agg, execute, ExecuteError};
use crate::clock::Clock;
use crate::ports::EventStore;
use crate::read::ReadModels;

/// The `scope` parameter: absent, or a valid scope set.
pub(super) fn parse_scope(scope: Option<&str>) -> Result<Option<ScopeSet>, OAuthError> {
    scope
        .map(ScopeSet::parse)
        .transpose()
        .map_err(|_| OAuthError::invalid_scope())
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    pub async fn refresh(
        &self,
        client: &AuthenticatedClient,
        refresh_token: &str,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.state.allows_grant(GrantType::RefreshToken) {
            return Err(OAuthError::unauthorized_client());
        }
        let requested = parse_scope(scope)?;
        if !self.reloaded_client(client.id()).await?.is_active() {
            return Err(OAuthError::invalid_client());
        }
        let presented = TokenHash::of(refresh_token);
        let Some(view) = self.reads.refresh_token(&presented).await? else {
            return Err(OAuthError::invalid_grant());
        };
        if &view.client_id != client.id() {
            return Err(OAuthError::invalid_grant());
        }
        let now = self.now();
        // Signed before the rotation is recorded (see `id_token`); a grant without
        // `openid` costs no extra read.
        let id_token = match has_openid(&view.scope) {
            true => self.refreshed_id_token(client, view.grant_id, now).await?,
            false => None,
        };
        // The scope the grant will record (the domain checks it is no wider): a JWT
        // carries it.
        let access_scope = requested.clone().unwrap_or_else(|| view.scope.clone());
        let access = self.access_token(
            client,
            view.user_id,
            access_scope,
            now,
            self.settings.access_ttl.seconds(),
        )?;
        let refresh = self.refresh_token(now)?;
        let command = grant::Command::Refresh {
            client_id: client.id().clone(),
            presented,
            requested_scope: requested,
            access: access.issue,
            refresh: refresh.issue,
            at: now,
        };
        let metadata = meta.metadata(client_actor(client.id()));
        let stream = StreamId::grant(&view.grant_id);
        match execute::<agg::Grant, S>(&self.store, self.ids.as_ref(), &stream, command, &metadata)
            .await
        {
            Ok(executed) => {
                // The domain decides the new access token's scope (it may be narrower). No
                // recorded rotation, no tokens: they would not be known to introspection.
                let scope = executed
                    .events
                    .iter()
                    .find_map(|(_, e)| match e {
                        grant::Event::TokensRefreshed { access, .. } => Some(&access.scope),
                        _ => None,
                    })
                    .ok_or(Unavailable::NothingRecorded)?;
                let mut response = self.token_response(access.raw, Some(refresh.raw), scope);
                response.id_token = id_token;
                Ok(response)
            }
            Err(ExecuteError::Rejected {
                error: grant::Error::InvalidScope,
                ..
            }) => Err(OAuthError::invalid_scope()),
            Err(ExecuteError::Rejected { .. }) => Err(OAuthError::invalid_grant()),
            Err(e) => Err(e.into()),
        }
    }
}
