//! `/account`: the signed-in user's own page. It lists the apps holding their grants
//! ("Remove access" revokes the consent and every grant of that app) and their sessions
//! ("Sign out" one, "Sign out everywhere"). Every POST carries the CSRF field; without a
//! session the page asks the user to sign in first.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use valet_app::oauth::AuthenticatedUser;
use valet_app::read::ReadModels;
use valet_app::sessions::user_actor;
use valet_app::{Clock, EventStore, Readiness};
use valet_domain::oidc::SessionId;
use valet_domain::session::EndReason;
use valet_domain::{ClientId, Timestamp};

use crate::account_page::{account_page, AccountView, AppRow, Notice, SessionRow};
use crate::cookies::{csrf_cookie, csrf_matches, end_session, with_cookie};
use crate::html::{self, LoginNotice, LoginView};
use crate::observe::RequestContext;
use crate::params::Params;
use crate::signin::{sign_in, signed_in_user, SignInResult, SignedIn};
use crate::signing::Session;
use crate::{read_form, AppState};

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    html::response(status, html::message_page(title, message))
}

fn unavailable(detail: &dyn std::fmt::Display) -> Response {
    tracing::warn!(%detail, "account page failed: service unavailable");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "Your account can't be shown right now. Please try again in a moment.",
    )
}

fn expired_form() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The form was not sent from this page or is too old. Open your account page and try again.",
    )
}

/// 303 to the account page, saying what was done.
fn back_to_account(notice: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/account?done={notice}")) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn signed_out_page<S, R, C>(app: &AppState<S, R, C>) -> Response {
    let res = page(StatusCode::OK, "Signed out", "You are signed out.");
    with_cookie(res, end_session(app))
}

/// "Since 2026-12-07 05:12 UTC": minutes are enough for people.
fn when(at: Timestamp) -> String {
    let text = valet_wire::rfc3339_from_unix_millis(at.as_unix_millis());
    match (text.get(..10), text.get(11..16)) {
        (Some(date), Some(time)) => format!("{date} {time} UTC"),
        _ => text,
    }
}

fn sign_in_form<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
    username: &str,
    notice: LoginNotice,
) -> Response {
    let (csrf, set_cookie) = match csrf_cookie(app, headers) {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    let field = app.signer.csrf_field(&csrf);
    let body = html::login_page(&LoginView {
        action: "/account/login",
        client_name: "your account",
        hidden: &[html::Hidden {
            name: "csrf_token",
            value: &field,
        }],
        username,
        notice,
    });
    let status = match notice {
        LoginNotice::None => StatusCode::OK,
        LoginNotice::WrongCredentials => StatusCode::UNAUTHORIZED,
        LoginNotice::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    with_cookie(html::response(status, body), set_cookie)
}

/// `GET /account`.
pub async fn show<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    uri: Uri,
    headers: HeaderMap,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let SignedIn {
        user,
        cookie,
        session,
    } = match signed_in_user(&app, &headers).await {
        Ok(Some(signed_in)) => signed_in,
        Ok(None) => return sign_in_form(&app, &headers, "", LoginNotice::None),
        Err(e) => return unavailable(&e),
    };
    // Looking at the account uses the session (the idle timeout starts again).
    if let Err(e) = app
        .oauth
        .use_session(&session, None, &user, &ctx.meta())
        .await
    {
        return unavailable(&e);
    }
    let notice = Params::parse(uri.query().unwrap_or_default().as_bytes())
        .ok()
        .map(|q| Notice::parse(q.field("done").value()))
        .unwrap_or(Notice::None);
    render(&app, &headers, &user, &cookie, notice).await
}

async fn render<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
    user: &AuthenticatedUser,
    cookie: &Session,
    notice: Notice,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let (apps, sessions) = match (
        app.oauth.connected_apps(user.user_id).await,
        app.oauth.active_sessions(user.user_id).await,
    ) {
        (Ok(apps), Ok(sessions)) => (apps, sessions),
        (Err(e), _) | (_, Err(e)) => return unavailable(&e),
    };
    let mut joined: Vec<ClientId> = sessions.iter().flat_map(|s| s.clients.clone()).collect();
    joined.sort();
    joined.dedup();
    let names = match app.oauth.client_names(&joined).await {
        Ok(names) => names,
        Err(e) => return unavailable(&e),
    };
    let name_of = |id: &ClientId| -> &str {
        names
            .iter()
            .find(|(c, _)| c == id)
            .map_or("an app", |(_, n)| n.as_str())
    };
    let (csrf, set_cookie) = match csrf_cookie(app, headers) {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    let field = app.signer.csrf_field(&csrf);
    let view = AccountView {
        username: user.username.as_str(),
        csrf: &field,
        apps: apps
            .iter()
            .map(|a| AppRow {
                client_id: a.client_id.as_str(),
                name: &a.name,
                scopes: a.scope.iter().map(|s| s.as_str()).collect(),
                since: when(a.since),
                last_used: when(a.last_used),
            })
            .collect(),
        sessions: sessions
            .iter()
            .map(|s| SessionRow {
                session_id: s.session_id.to_string(),
                started: when(s.started_at),
                last_used: when(s.last_used_at),
                apps: s.clients.iter().map(name_of).collect(),
                current: s.session_id == cookie.session_id,
            })
            .collect(),
        notice,
    };
    with_cookie(
        html::response(StatusCode::OK, account_page(&view)),
        set_cookie,
    )
}

/// `POST /account/login`.
pub async fn login<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let Some(form) = checked_form(&app, &headers, &body) else {
        return expired_form();
    };
    let username = form.field("username").value().unwrap_or_default();
    let password = form.field("password").value().unwrap_or_default();
    match sign_in(&app, &ctx, username, password).await {
        SignInResult::SignedIn { cookie, .. } => {
            let mut res = StatusCode::SEE_OTHER.into_response();
            res.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/account"));
            with_cookie(res, cookie)
        }
        SignInResult::Refused(notice) => sign_in_form(&app, &headers, username, notice),
        SignInResult::Unavailable(detail) => unavailable(&detail),
    }
}

/// A POSTed form with a valid CSRF field (`None`: answer [`expired_form`]).
fn checked_form<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Params> {
    read_form(headers, body)
        .ok()
        .filter(|form| csrf_matches(app, headers, form))
}

/// The signed-in user behind a POST with a valid CSRF field, or the response.
async fn authorized<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(AuthenticatedUser, Session, Params), Response>
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let form = checked_form(app, headers, body).ok_or_else(expired_form)?;
    match signed_in_user(app, headers).await {
        Ok(Some(SignedIn { user, cookie, .. })) => Ok((user, cookie, form)),
        Ok(None) => Err(page(
            StatusCode::FORBIDDEN,
            "You are signed out",
            "Open your account page and sign in again.",
        )),
        Err(e) => Err(unavailable(&e)),
    }
}

/// `POST /account/apps/remove`: the app loses every grant the user made it.
pub async fn remove_app<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let (user, _, form) = match authorized(&app, &headers, &body).await {
        Ok(authorized) => authorized,
        Err(res) => return res,
    };
    let Some(client_id) = form
        .field("client_id")
        .value()
        .and_then(|c| ClientId::parse(c).ok())
    else {
        return page(
            StatusCode::BAD_REQUEST,
            "Unknown app",
            "Open your account page and try again.",
        );
    };
    match app.oauth.remove_app(&user, &client_id, &ctx.meta()).await {
        Ok(_) => back_to_account("app_removed"),
        Err(e) => unavailable(&e),
    }
}

/// `POST /account/sessions/end`: signs one of the user's sessions out.
pub async fn end_one<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let (user, cookie, form) = match authorized(&app, &headers, &body).await {
        Ok(authorized) => authorized,
        Err(res) => return res,
    };
    let Some(session_id) = form.field("session_id").value().and_then(SessionId::parse) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Unknown session",
            "Open your account page and try again.",
        );
    };
    // Only the user's own sessions: another's id is answered like an unknown one.
    match app.oauth.session_of(user.user_id, session_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return back_to_account("session_ended"),
        Err(e) => return unavailable(&e),
    }
    let actor = user_actor(&user);
    if let Err(e) = app
        .oauth
        .end_session(session_id, EndReason::Logout, &ctx.meta(), &actor)
        .await
    {
        return unavailable(&e);
    }
    match session_id == cookie.session_id {
        true => signed_out_page(&app),
        false => back_to_account("session_ended"),
    }
}

/// `POST /account/sessions/end-all`: "Sign out everywhere".
pub async fn end_all<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let (user, _, _) = match authorized(&app, &headers, &body).await {
        Ok(authorized) => authorized,
        Err(res) => return res,
    };
    let actor = user_actor(&user);
    match app
        .oauth
        .sign_out_everywhere_as(
            user.user_id,
            EndReason::SignedOutEverywhere,
            &ctx.meta(),
            &actor,
        )
        .await
    {
        Ok(_) => signed_out_page(&app),
        Err(e) => unavailable(&e),
    }
}
