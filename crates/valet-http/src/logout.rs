//! `GET` and `POST /logout`: OpenID Connect RP-Initiated Logout 1.0 (the
//! `end_session_endpoint`). A request with a valid `id_token_hint` signs the user out at
//! once; without one the user confirms on a page (CSRF-protected). Then the session
//! cookie ends and the user goes back to a registered `post_logout_redirect_uri` (with
//! `state`), or sees a page saying they are signed out.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use valet_app::oauth::{HintStatus, LogoutError, LogoutParams};
use valet_app::read::ReadModels;
use valet_app::{Clock, EventStore, Readiness};

use valet_domain::session::EndReason;

use crate::cookies::{csrf_cookie, csrf_matches, end_session, session, with_cookie};
use crate::html::{self, Hidden};
use crate::observe::RequestContext;
use crate::params::{append_query, Params};
use crate::{read_form, AppState};

fn params_of(p: &Params) -> LogoutParams {
    let value = |name| p.field(name).value().map(str::to_owned);
    LogoutParams {
        id_token_hint: value("id_token_hint"),
        post_logout_redirect_uri: value("post_logout_redirect_uri"),
        client_id: value("client_id"),
        state: value("state"),
    }
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    html::response(status, html::message_page(title, message))
}

/// Ends the session and says so: a redirect to the client, or a page.
fn signed_out<S, R, C>(
    app: &AppState<S, R, C>,
    redirect: Option<&str>,
    state: Option<&str>,
) -> Response {
    let res = match redirect {
        Some(uri) => {
            let pairs: Vec<(&str, &str)> = state.map(|s| ("state", s)).into_iter().collect();
            match HeaderValue::from_str(&append_query(uri, &pairs)) {
                Ok(location) => {
                    let mut res = StatusCode::SEE_OTHER.into_response();
                    let h = res.headers_mut();
                    h.insert(header::LOCATION, location);
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    res
                }
                Err(_) => page(StatusCode::OK, "Signed out", "You are signed out."),
            }
        }
        None => page(StatusCode::OK, "Signed out", "You are signed out."),
    };
    with_cookie(res, end_session(app))
}

pub(crate) async fn logout<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let form = if method == Method::POST {
        match read_form(&headers, &body) {
            Ok(form) => form,
            Err(_) => {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Cannot sign out",
                    "The request could not be read.",
                )
            }
        }
    } else {
        match Params::parse(uri.query().unwrap_or_default().as_bytes()) {
            Ok(query) => query,
            Err(_) => {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Cannot sign out",
                    "The request could not be read.",
                )
            }
        }
    };
    if form.first_repeated().is_some() {
        return page(
            StatusCode::BAD_REQUEST,
            "Cannot sign out",
            "A parameter was repeated.",
        );
    }
    let params = params_of(&form);
    let plan = match app.oauth.plan_logout(&params).await {
        Ok(plan) => plan,
        Err(LogoutError::InvalidHint | LogoutError::ClientMismatch) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Cannot sign out",
                "The application's sign-out request is not valid. You are still signed in.",
            )
        }
        Err(LogoutError::UnregisteredRedirect) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Cannot sign out",
                "The application asked to send you to an address it did not register. You are still signed in.",
            )
        }
        Err(LogoutError::Unavailable(detail)) => {
            tracing::warn!(%detail, "logout failed: service unavailable");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "The service is unavailable. Please try again in a moment.",
            );
        }
    };
    let confirmed = method == Method::POST
        && form.field("decision").value() == Some("sign_out")
        && csrf_matches(&app, &headers, &form);
    if plan.hint == HintStatus::Verified || confirmed {
        // The session ends in the log (on every replica, and its clients hear of it),
        // not only in this browser.
        if let Some(cookie) = session(&app, &headers) {
            let actor = format!("user:{}", cookie.user_id);
            if let Err(detail) = app
                .oauth
                .end_session(cookie.session_id, EndReason::Logout, &ctx.meta(), &actor)
                .await
            {
                tracing::warn!(%detail, "logout failed: service unavailable");
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again later",
                    "The service is unavailable. You are still signed in; please try again in a moment.",
                );
            }
        }
        return signed_out(&app, plan.redirect.as_deref(), params.state.as_deref());
    }
    // No proof the application asked: the user confirms.
    let (csrf, set_cookie) = match csrf_cookie(&app, &headers) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "logout failed");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "Please try again in a moment.",
            );
        }
    };
    let field = app.signer.csrf_field(&csrf);
    let mut hidden = vec![Hidden {
        name: "csrf_token",
        value: &field,
    }];
    for (name, value) in [
        ("post_logout_redirect_uri", &params.post_logout_redirect_uri),
        ("client_id", &params.client_id),
        ("state", &params.state),
    ] {
        if let Some(value) = value {
            hidden.push(Hidden { name, value });
        }
    }
    with_cookie(
        html::response(StatusCode::OK, html::logout_page(&hidden)),
        set_cookie,
    )
}
