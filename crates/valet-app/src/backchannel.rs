//! OpenID Connect Back-Channel Logout 1.0, the use cases: which logout tokens an event
//! of the log calls for, the token itself, and the record of each attempt to deliver it
//! (stream `logout-<delivery id>`). The dispatcher (valet-relay) follows the log and
//! does the HTTP.
//!
//! Causes: a session's end (to every client it signed in to, with `sid`), an app's
//! removal by its user (to that app), a user's disabling (to every app the user signed
//! in to, without `sid`: their sessions' ends say the rest).

use valet_domain::backchannel::{self, Delivery, DeliveryId, Next, Outcome, RetryPolicy};
use valet_domain::client::LogoutSid;
use valet_domain::session::{self, Standing};
use valet_domain::signing_key::Algorithm;
use valet_domain::{consent, user, ClientId, Event, StreamId, Timestamp, UserId};

use crate::aggregate::{self as agg, execute, load, ExecuteError};
use crate::clock::Clock;
use crate::keys::{JwtType, LogoutTokenClaims, SignError, BACKCHANNEL_LOGOUT_EVENT};
use crate::log::ReplayEvent;
use crate::oauth::{OAuth, OAuthError, RequestMeta, Unavailable};
use crate::ports::EventStore;
use crate::read::ReadModels;

/// The event types that can call for logout tokens.
pub const LOGOUT_CAUSES: &[&str] = &["SessionEnded", "ConsentRevoked", "UserDisabled"];

/// How long a logout token is valid after it is signed.
const LOGOUT_TOKEN_SECONDS: u32 = 120;

/// The actor recorded for the dispatcher's attempts.
const DISPATCHER: &str = "valet:backchannel-logout";

/// One logout token to deliver: what it says, where it goes, how it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDelivery {
    pub id: DeliveryId,
    pub delivery: Delivery,
    pub uri: String,
    pub alg: Algorithm,
    /// When its cause happened: attempts stop a retry window after it.
    pub caused_at: Timestamp,
}

/// Where a delivery stands, for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStep {
    AttemptAt(Timestamp),
    GiveUp,
    Done,
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// The logout tokens `event` calls for (none for most events: only those of
    /// [`LOGOUT_CAUSES`]).
    pub async fn logout_deliveries(
        &self,
        event: &ReplayEvent,
    ) -> Result<Vec<PlannedDelivery>, OAuthError> {
        let cause = event.event_id;
        let mut out = Vec::new();
        match (&event.stream, &event.event) {
            (
                StreamId::Session(session_id),
                Event::Session(session::Event::SessionEnded { at, .. }),
            ) => {
                let loaded =
                    load::<agg::Session, S>(&self.store, &StreamId::session(session_id)).await?;
                let Some(ended) = loaded.state.session() else {
                    return Ok(out);
                };
                for client in &ended.clients {
                    self.plan(
                        &mut out,
                        client,
                        ended.user_id,
                        Some(*session_id),
                        cause,
                        *at,
                    )
                    .await?;
                }
            }
            (
                StreamId::Consent(user_id, client_id),
                Event::Consent(consent::Event::ConsentRevoked { at }),
            ) => {
                // Sessions of the user that signed in to the app and still stand: a
                // client that needs `sid` hears of each; otherwise `sub` says it all.
                let sessions = self.reads.sessions_of_user(*user_id, 1000).await?;
                let idle = self.session_policy().idle;
                let sids: Vec<_> = sessions
                    .iter()
                    .filter(|s| s.clients.contains(client_id))
                    .filter(|s| s.standing(*at, idle) == Standing::Stands)
                    .map(|s| s.session_id)
                    .collect();
                let needs_sid = self
                    .client_state(client_id.as_str())
                    .await?
                    .client()
                    .and_then(|c| c.backchannel_logout.as_ref())
                    .is_some_and(|l| l.sid == LogoutSid::Required);
                if needs_sid && !sids.is_empty() {
                    for sid in sids {
                        self.plan(&mut out, client_id, *user_id, Some(sid), cause, *at)
                            .await?;
                    }
                } else {
                    self.plan(&mut out, client_id, *user_id, None, cause, *at)
                        .await?;
                }
            }
            (StreamId::User(user_id), Event::User(user::Event::UserDisabled { at })) => {
                let mut clients: Vec<ClientId> = self
                    .reads
                    .sessions_of_user(*user_id, 1000)
                    .await?
                    .into_iter()
                    .flat_map(|s| s.clients)
                    .collect();
                clients.sort();
                clients.dedup();
                for client in &clients {
                    self.plan(&mut out, client, *user_id, None, cause, *at)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(out)
    }

    /// Adds the delivery to `client`, if it registered a back-channel logout URI.
    async fn plan(
        &self,
        out: &mut Vec<PlannedDelivery>,
        client: &ClientId,
        user_id: UserId,
        session_id: Option<valet_domain::oidc::SessionId>,
        cause: uuid::Uuid,
        caused_at: Timestamp,
    ) -> Result<(), OAuthError> {
        let state = self.client_state(client.as_str()).await?;
        let Some(registered) = state.client() else {
            return Ok(());
        };
        let Some(logout) = &registered.backchannel_logout else {
            return Ok(());
        };
        out.push(PlannedDelivery {
            id: DeliveryId::of(cause, client, session_id),
            delivery: Delivery {
                client_id: client.clone(),
                user_id,
                session_id,
                cause,
            },
            uri: logout.uri.as_str().to_owned(),
            alg: registered.id_token_alg,
            caused_at,
        });
        Ok(())
    }

    /// The signed logout token of a delivery (a fresh `iat` for each attempt; its `jti`
    /// is the delivery's id, so a client can drop a token it has seen).
    pub fn logout_token(&self, planned: &PlannedDelivery) -> Result<String, SignError> {
        let now = self.now();
        let claims = LogoutTokenClaims {
            iss: &self.settings.issuer,
            sub: planned.delivery.user_id.to_string(),
            aud: planned.delivery.client_id.as_str(),
            iat: now.as_unix_seconds(),
            exp: now.plus_seconds(LOGOUT_TOKEN_SECONDS).as_unix_seconds(),
            jti: planned.id.to_string(),
            events: serde_json::json!({ BACKCHANNEL_LOGOUT_EVENT: {} }),
            sid: planned.delivery.session_id.map(|s| s.to_string()),
        };
        let claims = serde_json::to_value(&claims).map_err(|e| SignError::Failed(e.to_string()))?;
        self.signer
            .sign_json(planned.alg, JwtType::LogoutToken, &claims)
    }

    /// What to do next with a delivery, from its stream.
    pub async fn delivery_step(
        &self,
        planned: &PlannedDelivery,
        policy: RetryPolicy,
    ) -> Result<DeliveryStep, OAuthError> {
        let loaded = load::<agg::Delivery, S>(&self.store, &StreamId::logout(&planned.id)).await?;
        let now = self.now();
        // The window counts from the cause, so a delivery found late (a dispatcher down
        // for long) is not tried for a day after it.
        let window_end = planned.caused_at.plus_seconds(policy.window);
        Ok(match loaded.state.next(policy, now) {
            Next::Done => DeliveryStep::Done,
            Next::GiveUp => DeliveryStep::GiveUp,
            Next::AttemptAt(_) if now > window_end => DeliveryStep::GiveUp,
            Next::AttemptAt(at) => DeliveryStep::AttemptAt(at),
        })
    }

    /// Records one attempt's outcome. `false`: the delivery had finished already
    /// (another dispatcher got there first).
    pub async fn record_attempt(
        &self,
        planned: &PlannedDelivery,
        outcome: Outcome,
    ) -> Result<bool, OAuthError> {
        let command = backchannel::Command::Record {
            delivery: planned.delivery.clone(),
            outcome,
            at: self.now(),
        };
        self.on_delivery(planned, command).await
    }

    /// Stops trying a delivery (its retry window is over).
    pub async fn abandon_delivery(&self, planned: &PlannedDelivery) -> Result<bool, OAuthError> {
        let command = backchannel::Command::Abandon { at: self.now() };
        self.on_delivery(planned, command).await
    }

    async fn on_delivery(
        &self,
        planned: &PlannedDelivery,
        command: backchannel::Command,
    ) -> Result<bool, OAuthError> {
        let meta = RequestMeta::default().metadata(DISPATCHER.to_owned());
        match execute::<agg::Delivery, S>(
            &self.store,
            self.ids(),
            &StreamId::logout(&planned.id),
            command,
            &meta,
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(ExecuteError::Rejected { .. }) => Ok(false),
            Err(e) => Err(OAuthError::Unavailable(Unavailable::from(e))),
        }
    }
}
