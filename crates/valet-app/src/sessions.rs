//! Login sessions as a lifecycle in the log (stream `session-<sid>`): started at sign-in,
//! used when they sign the user in to a client, ended by logout, expiry, a password
//! change, "sign out everywhere", an administrator or the user's disabling. The session
//! cookie only names a session: whether it still acts for the user is the stream's
//! answer, so ending a session anywhere ends it on every replica at once.
//!
//! The `sessions` read model lists a user's sessions (the account page, `valet user
//! sessions`); a session's own stream decides whether it stands.

use valet_domain::oidc::SessionId;
use valet_domain::session::{self, EndReason, IdleTimeout, Standing};
use valet_domain::{consent, user, ClientId, RevocationReason, StreamId, Timestamp, UserId};

use crate::aggregate::{self as agg, execute, load, ExecuteError};
use crate::clock::Clock;
use crate::oauth::{AuthenticatedUser, OAuth, OAuthError, RequestMeta};
use crate::ports::EventStore;
use crate::read::{ConnectedApp, ReadModels, SessionView};

/// How long sessions last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// From sign-in, whatever the use.
    pub lifetime_seconds: u32,
    /// Without use (a new sign-in to a client, the account page).
    pub idle: IdleTimeout,
}

impl Default for SessionPolicy {
    /// Eight hours, and half an hour without use.
    fn default() -> Self {
        SessionPolicy {
            lifetime_seconds: 8 * 60 * 60,
            idle: IdleTimeout(Some(30 * 60)),
        }
    }
}

/// A session just started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartedSession {
    pub session_id: SessionId,
    pub started_at: Timestamp,
    pub expires_at: Timestamp,
}

/// What happened when a session was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionUse {
    Recorded,
    /// It ended meanwhile (or never existed): the user must sign in again.
    Ended,
}

/// How many sessions of a user the use cases look at (newest first).
const SESSIONS_SCANNED: usize = 10_000;

impl SessionView {
    /// Whether the session may act for its user at `now`, by the read model's copy.
    pub fn standing(&self, now: Timestamp, idle: IdleTimeout) -> Standing {
        session::Session {
            session_id: self.session_id,
            user_id: self.user_id,
            started_at: self.started_at,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            clients: Vec::new(),
            ended: self.ended,
        }
        .standing(now, idle)
    }
}

/// The actor of a user's own actions, in event metadata.
pub fn user_actor(user: &AuthenticatedUser) -> String {
    format!("user:{}", user.username)
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Starts a session for a user who just proved who they are.
    pub async fn start_session(
        &self,
        user: &AuthenticatedUser,
        meta: &RequestMeta,
    ) -> Result<StartedSession, OAuthError> {
        let policy = self.session_policy();
        let now = self.now();
        let started = StartedSession {
            session_id: SessionId::new(self.ids().new_id()),
            started_at: now,
            expires_at: now.plus_seconds(policy.lifetime_seconds),
        };
        let command = session::Command::Start {
            session_id: started.session_id,
            user_id: user.user_id,
            expires_at: started.expires_at,
            at: now,
        };
        execute::<agg::Session, S>(
            &self.store,
            self.ids(),
            &StreamId::session(&started.session_id),
            command,
            &meta.metadata(user_actor(user)),
        )
        .await?;
        Ok(started)
    }

    /// The user a session acts for, while it stands: the session's stream says it has
    /// not ended, expired or idled out, and the user is active and has not been signed
    /// out everywhere since it started. A session found past its time is recorded as
    /// ended (`expired`).
    pub async fn session_user(
        &self,
        user_id: UserId,
        session_id: SessionId,
    ) -> Result<Option<(AuthenticatedUser, session::Session)>, OAuthError> {
        let stream = StreamId::session(&session_id);
        let loaded = load::<agg::Session, S>(&self.store, &stream).await?;
        let Some(found) = loaded.state.session().filter(|s| s.user_id == user_id) else {
            return Ok(None);
        };
        let Some(user) = self
            .user_if(user_id, |u| u.session_stands(found.started_at))
            .await?
        else {
            return Ok(None);
        };
        match found.standing(self.now(), self.session_policy().idle) {
            Standing::Stands => Ok(Some((user, found.clone()))),
            Standing::Ended(_) => Ok(None),
            Standing::Lapsed => {
                let meta = RequestMeta::default();
                if let Err(error) = self
                    .end_session(session_id, EndReason::Expired, &meta, "valet")
                    .await
                {
                    tracing::warn!(%error, "cannot record a session's expiry");
                }
                Ok(None)
            }
        }
    }

    /// Records that the session signed its user in to `client` (or was used on the
    /// account page, with `None`): the idle timeout starts again, and the client will
    /// hear of the session's end. `as_loaded`: the session as the caller just loaded it;
    /// a use that would record nothing is then not even attempted (the common case).
    pub async fn use_session(
        &self,
        as_loaded: &session::Session,
        client: Option<&ClientId>,
        user: &AuthenticatedUser,
        meta: &RequestMeta,
    ) -> Result<SessionUse, OAuthError> {
        let (now, idle) = (self.now(), self.session_policy().idle);
        if !as_loaded.use_is_due(client, now, idle) {
            return Ok(SessionUse::Recorded);
        }
        let session_id = as_loaded.session_id;
        let command = session::Command::Use {
            client_id: client.cloned(),
            idle,
            at: now,
        };
        match execute::<agg::Session, S>(
            &self.store,
            self.ids(),
            &StreamId::session(&session_id),
            command,
            &meta.metadata(user_actor(user)),
        )
        .await
        {
            Ok(_) => Ok(SessionUse::Recorded),
            Err(ExecuteError::Rejected { .. }) => Ok(SessionUse::Ended),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends one session; `false` when it had ended already (or never existed).
    pub async fn end_session(
        &self,
        session_id: SessionId,
        reason: EndReason,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<bool, OAuthError> {
        let command = session::Command::End {
            reason,
            at: self.now(),
        };
        match execute::<agg::Session, S>(
            &self.store,
            self.ids(),
            &StreamId::session(&session_id),
            command,
            &meta.metadata(actor.to_owned()),
        )
        .await
        {
            Ok(executed) => Ok(!executed.events.is_empty()),
            Err(ExecuteError::Rejected { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends every session of the user that has not ended. Returns how many ended.
    pub async fn end_sessions_of_user(
        &self,
        user_id: UserId,
        reason: EndReason,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<usize, OAuthError> {
        let mut ended = 0;
        for view in self
            .reads
            .sessions_of_user(user_id, SESSIONS_SCANNED)
            .await?
        {
            if view.ended.is_none()
                && self
                    .end_session(view.session_id, reason, meta, actor)
                    .await?
            {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Signs the user out everywhere: sessions begun until now no longer act for them
    /// (even one the read model has not listed yet), and each listed one is ended with
    /// `reason` so its clients hear of it. Returns how many ended.
    pub async fn sign_out_everywhere_as(
        &self,
        user_id: UserId,
        reason: EndReason,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<usize, OAuthError> {
        let sign_out = user::Command::SignOutEverywhere { at: self.now() };
        execute::<agg::User, S>(
            &self.store,
            self.ids(),
            &StreamId::user(&user_id),
            sign_out,
            &meta.metadata(actor.to_owned()),
        )
        .await?;
        self.end_sessions_of_user(user_id, reason, meta, actor)
            .await
    }

    /// The user's sessions that stand now, newest first.
    pub async fn active_sessions(&self, user_id: UserId) -> Result<Vec<SessionView>, OAuthError> {
        let (now, idle) = (self.now(), self.session_policy().idle);
        let mut sessions = self
            .reads
            .sessions_of_user(user_id, SESSIONS_SCANNED)
            .await?;
        sessions.retain(|s| s.standing(now, idle) == Standing::Stands);
        Ok(sessions)
    }

    /// One of the user's sessions, if it is theirs.
    pub async fn session_of(
        &self,
        user_id: UserId,
        session_id: SessionId,
    ) -> Result<Option<session::Session>, OAuthError> {
        let loaded = load::<agg::Session, S>(&self.store, &StreamId::session(&session_id)).await?;
        Ok(loaded
            .state
            .session()
            .filter(|s| s.user_id == user_id)
            .cloned())
    }

    /// The display names of clients (their id when unknown), from the client cache.
    pub async fn client_names(
        &self,
        ids: &[ClientId],
    ) -> Result<Vec<(ClientId, String)>, OAuthError> {
        let mut names = Vec::with_capacity(ids.len());
        for id in ids {
            let state = self.client_state(id.as_str()).await?;
            let name = state
                .client()
                .map_or_else(|| id.to_string(), |c| c.name.to_string());
            names.push((id.clone(), name));
        }
        Ok(names)
    }

    /// The apps holding grants of the user.
    pub async fn connected_apps(&self, user_id: UserId) -> Result<Vec<ConnectedApp>, OAuthError> {
        Ok(self.reads.connected_apps(user_id).await?)
    }

    /// The user takes an app's access away: their consent to it is revoked, and every
    /// grant they made it is revoked with reason `consent_revoked` (resource services
    /// hear `grant.revoked` over NATS; the app hears a logout token if it registered
    /// for them). Returns how many grants were revoked.
    pub async fn remove_app(
        &self,
        user: &AuthenticatedUser,
        client_id: &ClientId,
        meta: &RequestMeta,
    ) -> Result<usize, OAuthError> {
        let actor = user_actor(user);
        let revoke = consent::Command::Revoke { at: self.now() };
        execute::<agg::Consent, S>(
            &self.store,
            self.ids(),
            &StreamId::consent(&user.user_id, client_id),
            revoke,
            &meta.metadata(actor.clone()),
        )
        .await?;
        let grants = self
            .reads
            .active_grants_of_user_for_client(user.user_id, client_id)
            .await?;
        let mut revoked = 0;
        for grant in grants {
            if self
                .revoke_grant(grant, RevocationReason::ConsentRevoked, None, meta, &actor)
                .await?
            {
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}
