//! Signing a person in, shared by the authorization pages and the account page: failed
//! attempts slowed down per address and per username (across replicas, before any
//! password is hashed), then a session recorded in the log and a cookie naming it.

use axum::http::{HeaderMap, HeaderValue};
use valet_app::attempts::AttemptKey;
use valet_app::oauth::{AuthenticatedUser, LoginError, OAuthError};
use valet_app::read::ReadModels;
use valet_app::{Clock, EventStore};

use crate::cookies::{session, set_cookie_attributes, SESSION_COOKIE};
use crate::html::LoginNotice;
use crate::limits;
use crate::observe::RequestContext;
use crate::signing::Session;
use crate::AppState;

pub(crate) enum SignInResult {
    /// Signed in: the session cookie to set.
    SignedIn {
        cookie: Option<HeaderValue>,
    },
    /// Wrong credentials, or too many failures: the form says which.
    Refused(LoginNotice),
    Unavailable(String),
}

pub(crate) async fn sign_in<S, R, C>(
    app: &AppState<S, R, C>,
    ctx: &RequestContext,
    username: &str,
    password: &str,
) -> SignInResult
where
    S: EventStore,
    R: ReadModels,
    C: Clock,
{
    let (source, user) = (
        AttemptKey::Source(ctx.ip()),
        AttemptKey::User(username.to_owned()),
    );
    let now = app.oauth.clock.now();
    let attempts = app.attempts.as_ref();
    let verdict = limits::verdict(attempts, &source, app.limits.source, now)
        .await
        .and(limits::verdict(attempts, &user, app.limits.user, now).await);
    if let Some(retry_after) = limits::retry_after(verdict) {
        app.metrics.record_rate_limited();
        return SignInResult::Refused(LoginNotice::TooManyAttempts {
            retry_after_secs: retry_after.as_secs(),
        });
    }
    match app.oauth.login(username, password).await {
        Ok(signed_in) => {
            limits::clear(attempts, &user).await;
            let started = match app.oauth.start_session(&signed_in, &ctx.meta()).await {
                Ok(started) => started,
                Err(e) => return SignInResult::Unavailable(e.to_string()),
            };
            let value = app.signer.session(
                &Session {
                    user_id: signed_in.user_id,
                    session_id: started.session_id,
                    authenticated_at: started.started_at.as_unix_seconds(),
                },
                started.expires_at.as_unix_seconds(),
            );
            let max_age = (started.expires_at.as_unix_seconds()
                - app.oauth.clock.now().as_unix_seconds())
            .max(1);
            let cookie = format!(
                "{SESSION_COOKIE}={value}; Max-Age={max_age}{}",
                set_cookie_attributes(app)
            );
            SignInResult::SignedIn {
                cookie: HeaderValue::from_str(&cookie).ok(),
            }
        }
        Err(LoginError::InvalidCredentials) => {
            limits::record_failure(attempts, &source, app.limits.source, now).await;
            limits::record_failure(attempts, &user, app.limits.user, now).await;
            SignInResult::Refused(LoginNotice::WrongCredentials)
        }
        Err(LoginError::Unavailable(detail)) => SignInResult::Unavailable(detail.to_string()),
    }
}

/// A browser whose session stands: its user, its cookie, the session as recorded.
pub(crate) struct SignedIn {
    pub user: AuthenticatedUser,
    pub cookie: Session,
    pub session: valet_domain::session::Session,
}

/// The user the browser's session cookie acts for, while its session stands.
pub(crate) async fn signed_in_user<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
) -> Result<Option<SignedIn>, OAuthError>
where
    S: EventStore,
    R: ReadModels,
    C: Clock,
{
    let Some(cookie) = session(app, headers) else {
        return Ok(None);
    };
    Ok(app
        .oauth
        .session_user(cookie.user_id, cookie.session_id)
        .await?
        .map(|(user, session)| SignedIn {
            user,
            cookie,
            session,
        }))
}
