//! RFC 6749 §4.1.3 with RFC 7636: redeeming an authorization code, once.

use valet_domain::code;
use valet_domain::grant::{self, GrantOrigin, Subject};
use valet_domain::{
    EventRef, GrantType, PkceVerifier, Rejection, RevocationReason, StreamId, TokenHash,
};

use super::client_auth::GuardedWriteError;
use super::id_token::{has_openid, SignedIn};
use super::tokens::Minted;
use super::{
    client_actor, AuthenticatedClient, ErrorCode, OAuth, OAuthError, RequestMeta, TokenResponse,
    Unavailable,
};
use crate::aggregate::{self as agg, load, Aggregate, MAX_ATTEMPTS};
use crate::clock::Clock;
use crate::ports::{AppendError, EventMetadata, EventStore, ExpectedVersion, StreamWrite};
use crate::read::ReadModels;

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// The redemption and the new grant are one atomic append; a second redemption
    /// revokes that grant (§10.5).
    pub async fn exchange_code(
        &self,
        client: &AuthenticatedClient,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.state.allows_grant(GrantType::AuthorizationCode) {
            return Err(OAuthError::unauthorized_client());
        }
        let verifier = code_verifier
            .map(PkceVerifier::parse)
            .transpose()
            .map_err(|_| {
                OAuthError::protocol(ErrorCode::InvalidRequest, "malformed code_verifier")
            })?;
        let code_hash = TokenHash::of(code);
        let code_stream = StreamId::code(&code_hash);
        let metadata = meta.metadata(client_actor(client.id()));
        let now = self.now();
        for _ in 0..MAX_ATTEMPTS {
            let loaded = load::<agg::Code, S>(&self.store, &code_stream).await?;
            let command = code::Command::Redeem {
                client_id: client.id().clone(),
                redirect_uri: redirect_uri.map(str::to_owned),
                verifier: verifier.clone(),
                at: now,
            };
            let redeemed = match agg::Code::decide(&loaded.state, command) {
                Ok(events) => events,
                Err(Rejection { events, .. }) => {
                    if !events.is_empty() {
                        self.record_code_replay(&code_stream, &loaded, &events, &metadata, meta)
                            .await?;
                    }
                    return Err(OAuthError::invalid_grant());
                }
            };
            let issued = loaded
                .state
                .issued()
                .ok_or_else(OAuthError::invalid_grant)?;
            // Signed before the redemption is recorded: if no key can sign, the code is
            // not spent and the client may try again.
            let id_token = match has_openid(&issued.scope) {
                true => Some(self.id_token(
                    client,
                    issued.user_id,
                    SignedIn {
                        auth_time: issued.auth_time,
                        sid: issued.sid,
                        nonce: issued.nonce.as_ref(),
                    },
                    now,
                )?),
                false => None,
            };
            let access = self.access_token(
                client,
                Some(issued.user_id),
                issued.scope.clone(),
                now,
                self.settings.access_ttl.seconds(),
            )?;
            let refresh = if client.state.allows_grant(GrantType::RefreshToken) {
                Some(self.refresh_token(now)?)
            } else {
                None
            };
            let grant_events = agg::Grant::decide(
                &Default::default(),
                grant::Command::Issue {
                    grant_id: issued.grant_id,
                    client_id: client.id().clone(),
                    subject: Some(Subject {
                        user_id: issued.user_id,
                        username: issued.username.clone(),
                    }),
                    scope: issued.scope.clone(),
                    origin: GrantOrigin::AuthorizationCode { code_hash },
                    access: access.issue,
                    refresh: refresh.as_ref().map(|r| r.issue.clone()),
                    at: now,
                },
            )
            .map_err(|r| Unavailable::Refused(r.error.into()))?;
            let writes = vec![
                self.client_unchanged(client),
                StreamWrite {
                    stream: code_stream.clone(),
                    expected: ExpectedVersion::from_loaded(loaded.version),
                    events: self.new_events(&redeemed, &metadata),
                },
                StreamWrite {
                    stream: StreamId::grant(&issued.grant_id),
                    expected: ExpectedVersion::NoStream,
                    events: self.new_events(&grant_events, &metadata),
                },
            ];
            match self.append_for_client(client, writes).await {
                Ok(()) => {
                    let refresh = refresh.map(|Minted { raw, .. }| raw);
                    let mut response = self.token_response(access.raw, refresh, &issued.scope);
                    response.id_token = id_token;
                    return Ok(response);
                }
                // Someone redeemed it meanwhile: reload, and this becomes a replay.
                Err(GuardedWriteError::Conflict) => continue,
                Err(GuardedWriteError::Failed(e)) => return Err(e),
            }
        }
        Err(Unavailable::Contention(MAX_ATTEMPTS).into())
    }

    /// Records a replayed code and revokes the grant it produced. Under a burst of
    /// replays only one record may win the stream version; the revocation is idempotent.
    async fn record_code_replay(
        &self,
        code_stream: &StreamId,
        loaded: &agg::Loaded<agg::Code>,
        events: &[code::Event],
        metadata: &EventMetadata,
        meta: &RequestMeta,
    ) -> Result<(), OAuthError> {
        let cause = match self
            .store
            .append(
                code_stream,
                ExpectedVersion::from_loaded(loaded.version),
                self.new_events(events, metadata),
            )
            .await
        {
            Ok(outcome) => outcome.recorded.first().map(|e| EventRef {
                stream_id: e.stream.clone(),
                event_id: e.event_id,
            }),
            Err(AppendError::Conflict { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(grant_id) = loaded.state.grant_id() {
            self.revoke_grant(
                grant_id,
                RevocationReason::CodeReplay,
                cause,
                meta,
                "system",
            )
            .await?;
        }
        Ok(())
    }
}
