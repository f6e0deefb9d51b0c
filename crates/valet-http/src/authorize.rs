//! The authorization endpoint (RFC 6749 §4.1.1) and its login and consent forms.
//!
//! Parameters travel GET → form → POST through the browser, so every POST validates
//! them again. Errors about the client or its redirect URI are shown here and never
//! redirected (§4.1.2.1); every other error goes back to the client with its `state`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use valet_app::oauth::{
    AuthenticatedUser, AuthorizationRequest, AuthorizeParams, AuthorizeRejection, ConsentState,
    ErrorCode, OAuthError, SignIn, Step,
};
use valet_app::read::ReadModels;
use valet_app::sessions::SessionUse;
use valet_app::{Clock, EventStore, Readiness};
use valet_domain::oidc::Prompt;
use valet_domain::Timestamp;

use crate::cookies::{csrf_cookie, csrf_matches, with_cookie};
use crate::html::{self, ConsentView, Hidden, LoginNotice, LoginView};
use crate::observe::RequestContext;
use crate::params::{append_query, encode_pairs, Params};
use crate::signin::{sign_in, signed_in_user, SignInResult, SignedIn};
use crate::{read_form, AppState};

/// Whether a parameter came twice, and whether that leaves the redirect URI trustworthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    None,
    /// client_id or redirect_uri: we cannot know where to send the error.
    Untrusted,
    Other,
}

/// The authorization parameters of a query string or a re-posted form.
struct Incoming {
    params: AuthorizeParams,
    repeat: Repeat,
}

impl Incoming {
    fn read(p: &Params) -> Self {
        let repeat = if p.is_repeated("client_id") || p.is_repeated("redirect_uri") {
            Repeat::Untrusted
        } else if p.first_repeated().is_some() {
            Repeat::Other
        } else {
            Repeat::None
        };
        let value = |name| p.field(name).value().map(str::to_owned);
        Incoming {
            params: AuthorizeParams {
                client_id: value("client_id"),
                redirect_uri: value("redirect_uri"),
                response_type: value("response_type"),
                scope: value("scope"),
                state: value("state"),
                code_challenge: value("code_challenge"),
                code_challenge_method: value("code_challenge_method"),
                nonce: value("nonce"),
                prompt: value("prompt"),
                max_age: value("max_age"),
                response_mode: value("response_mode"),
                request: value("request"),
                request_uri: value("request_uri"),
            },
            repeat,
        }
    }
}

/// The parameters present, by name, in a fixed order.
fn param_pairs(p: &AuthorizeParams) -> Vec<(&'static str, &str)> {
    [
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("scope", &p.scope),
        ("state", &p.state),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
        ("nonce", &p.nonce),
        ("prompt", &p.prompt),
        ("max_age", &p.max_age),
        ("response_mode", &p.response_mode),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
    .collect()
}

/// 302 answers a GET; after a POST it must be 303 so the browser does not re-post the
/// form (with the password) to the client (RFC 9700 §4.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answering {
    Get,
    Post,
}

fn redirect(answering: Answering, location: &str) -> Response {
    let status = match answering {
        Answering::Get => StatusCode::FOUND,
        Answering::Post => StatusCode::SEE_OTHER,
    };
    let Ok(location) = HeaderValue::from_str(location) else {
        // Registered URIs are ASCII; this would be a registration bug, not user input.
        tracing::error!("a redirect URI is not a valid Location header");
        return page(
            StatusCode::BAD_REQUEST,
            "Something is wrong with this application",
            "Its return address cannot be used. Please contact the application's developer.",
        );
    };
    let mut res = status.into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// Sends an error back to the client (RFC 6749 §4.1.2.1), naming the issuer (RFC 9207).
fn redirect_error(
    answering: Answering,
    issuer: &str,
    redirect_uri: &str,
    code: ErrorCode,
    description: &str,
    state: Option<&str>,
) -> Response {
    let mut pairs = vec![("error", code.as_str()), ("error_description", description)];
    pairs.extend(state.map(|s| ("state", s)));
    pairs.push(("iss", issuer));
    redirect(answering, &append_query(redirect_uri, &pairs))
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    html::response(status, html::message_page(title, message))
}

fn no_redirect(reason: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This request can't be completed",
        reason,
    )
}

fn undecodable() -> Response {
    no_redirect("The request is malformed. Go back to the application and try again.")
}

fn forbidden() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The form was not sent from this page or is too old. Go back to the application and start again.",
    )
}

fn unavailable(detail: &dyn std::fmt::Display) -> Response {
    tracing::warn!(%detail, "authorization failed: service unavailable");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "We can't complete your sign-in right now. Please try again in a moment.",
    )
}

/// Validates the parameters; any answer other than a valid request is the response.
async fn validate<S, R, C>(
    app: &AppState<S, R, C>,
    incoming: &Incoming,
    answering: Answering,
) -> Result<AuthorizationRequest, Response>
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    if incoming.repeat == Repeat::Untrusted {
        return Err(no_redirect(
            "The request names its application or return address more than once.",
        ));
    }
    let repeated = |redirect_uri: &str| {
        redirect_error(
            answering,
            &app.oauth.settings.issuer,
            redirect_uri,
            ErrorCode::InvalidRequest,
            "a parameter was repeated",
            incoming.params.state.as_deref(),
        )
    };
    match app.oauth.validate_authorization(&incoming.params).await {
        Err(AuthorizeRejection::NoRedirect { reason }) => Err(no_redirect(reason)),
        Err(AuthorizeRejection::Unavailable(detail)) => Err(unavailable(&detail)),
        Err(AuthorizeRejection::Redirect { redirect_uri, .. })
            if incoming.repeat == Repeat::Other =>
        {
            Err(repeated(&redirect_uri))
        }
        Err(AuthorizeRejection::Redirect {
            redirect_uri,
            code,
            description,
            state,
        }) => Err(redirect_error(
            answering,
            &app.oauth.settings.issuer,
            &redirect_uri,
            code,
            description,
            state.as_deref(),
        )),
        Ok(request) if incoming.repeat == Repeat::Other => {
            Err(repeated(request.redirect_uri.as_str()))
        }
        Ok(request) => Ok(request),
    }
}

fn hidden_fields<'a>(csrf: &'a str, params: &'a AuthorizeParams) -> Vec<Hidden<'a>> {
    std::iter::once(("csrf_token", csrf))
        .chain(param_pairs(params))
        .map(|(name, value)| Hidden { name, value })
        .collect()
}

fn login_form<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
    request: &AuthorizationRequest,
    params: &AuthorizeParams,
    username: &str,
    notice: LoginNotice,
) -> Response {
    let (csrf, set_cookie) = match csrf_cookie(app, headers) {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    let field = app.signer.csrf_field(&csrf);
    let body = html::login_page(&LoginView {
        action: "/authorize/login",
        client_name: &request.client_name,
        hidden: &hidden_fields(&field, params),
        username,
        notice,
    });
    let (status, retry_after) = match notice {
        LoginNotice::None => (StatusCode::OK, None),
        LoginNotice::WrongCredentials => (StatusCode::UNAUTHORIZED, None),
        LoginNotice::TooManyAttempts { retry_after_secs } => {
            (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs))
        }
    };
    let mut res = html::response(status, body);
    if let Some(secs) = retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    with_cookie(res, set_cookie)
}

fn consent_form<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
    request: &AuthorizationRequest,
    params: &AuthorizeParams,
    user: &AuthenticatedUser,
) -> Response {
    let (csrf, set_cookie) = match csrf_cookie(app, headers) {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    let field = app.signer.csrf_field(&csrf);
    let body = html::consent_page(&ConsentView {
        client_name: &request.client_name,
        username: user.username.as_str(),
        scopes: request.scope.iter().map(|s| s.as_str()).collect(),
        redirect_uri: request.redirect_uri.as_str(),
        hidden: &hidden_fields(&field, params),
    });
    with_cookie(html::response(StatusCode::OK, body), set_cookie)
}

/// The user approved (now or earlier): issue a code and send it to the client.
async fn issue_code<S, R, C>(
    app: &AppState<S, R, C>,
    ctx: &RequestContext,
    signed_in: &SignedIn,
    request: &AuthorizationRequest,
    answering: Answering,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let (user, session) = (&signed_in.user, &signed_in.cookie);
    let redirect_uri = request.redirect_uri.as_str();
    let state = request.state.as_deref();
    let issuer = app.oauth.settings.issuer.as_str();
    let sign_in = SignIn {
        session: session.session_id,
        at: Timestamp::from_unix_millis(session.authenticated_at.saturating_mul(1000)),
    };
    // The client joins the session (it will hear of its end); a session that ended a
    // moment ago issues nothing.
    let client = Some(&request.client_id);
    match app
        .oauth
        .use_session(&signed_in.session, client, user, &ctx.meta())
        .await
    {
        Ok(SessionUse::Recorded) => {}
        Ok(SessionUse::Ended) => {
            return page(
                StatusCode::FORBIDDEN,
                "You were signed out",
                "Your sign-in ended. Go back to the application and start again.",
            )
        }
        Err(e) => return unavailable(&e),
    }
    match app.oauth.approve(user, request, sign_in, &ctx.meta()).await {
        Ok(code) => {
            let mut pairs = vec![("code", code.as_str())];
            pairs.extend(state.map(|s| ("state", s)));
            pairs.push(("iss", issuer));
            redirect(answering, &append_query(redirect_uri, &pairs))
        }
        Err(OAuthError::Protocol { code, description }) => {
            redirect_error(answering, issuer, redirect_uri, code, description, state)
        }
        Err(OAuthError::Unavailable(detail)) => unavailable(&detail),
    }
}

/// `GET /authorize`.
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
    let Ok(query) = Params::parse(uri.query().unwrap_or_default().as_bytes()) else {
        return undecodable();
    };
    let incoming = Incoming::read(&query);
    let request = match validate(&app, &incoming, Answering::Get).await {
        Ok(request) => request,
        Err(res) => return res,
    };
    let params = &incoming.params;
    let sign_in = || login_form(&app, &headers, &request, params, "", LoginNotice::None);
    // A session that ended, lapsed or whose user was disabled is as good as none.
    let signed_in = match signed_in_user(&app, &headers).await {
        Ok(signed_in) => signed_in,
        Err(e) => return unavailable(&e),
    };
    let consent = match &signed_in {
        Some(s) => match app.oauth.consent_covers(&s.user, &request).await {
            Ok(true) => ConsentState::Covered,
            Ok(false) => ConsentState::Needed,
            Err(e) => return unavailable(&e),
        },
        None => ConsentState::Needed,
    };
    let signed_in_at = signed_in.as_ref().map(|s| s.cookie.signed_in_at());
    let step = request.step(signed_in_at, consent, app.oauth.clock.now());
    match (step, signed_in) {
        (Step::Refuse(code), _) => redirect_error(
            Answering::Get,
            &app.oauth.settings.issuer,
            request.redirect_uri.as_str(),
            code,
            match code {
                ErrorCode::LoginRequired => "the user must sign in",
                _ => "the user must consent",
            },
            request.state.as_deref(),
        ),
        (Step::IssueCode, Some(s)) => issue_code(&app, &ctx, &s, &request, Answering::Get).await,
        (Step::AskConsent, Some(SignedIn { user, .. })) => {
            consent_form(&app, &headers, &request, params, &user)
        }
        (Step::SignIn | Step::IssueCode | Step::AskConsent, _) => sign_in(),
    }
}

/// `POST /authorize/login`.
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
    let Ok(form) = read_form(&headers, &body) else {
        return undecodable();
    };
    if !csrf_matches(&app, &headers, &form) {
        return forbidden();
    }
    let incoming = Incoming::read(&form);
    let request = match validate(&app, &incoming, Answering::Post).await {
        Ok(request) => request,
        Err(res) => return res,
    };
    let username = form.field("username").value().unwrap_or_default();
    let password = form.field("password").value().unwrap_or_default();
    match sign_in(&app, &ctx, username, password).await {
        SignInResult::SignedIn { cookie, .. } => {
            // Signed in just now: `prompt=login` and `max_age` are satisfied, and must not
            // ask again (a second boundary would otherwise make `max_age=0` loop).
            let mut next = incoming.params.clone();
            next.prompt = next.prompt.as_deref().and_then(Prompt::after_sign_in);
            next.max_age = None;
            let location = format!("/authorize?{}", encode_pairs(param_pairs(&next)));
            with_cookie(redirect(Answering::Post, &location), cookie)
        }
        SignInResult::Refused(notice) => {
            login_form(&app, &headers, &request, &incoming.params, username, notice)
        }
        SignInResult::Unavailable(detail) => unavailable(&detail),
    }
}

/// What the user chose on the consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Approve,
    Deny,
}

/// `POST /authorize/consent`.
pub async fn consent<S, R, C>(
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
    let Ok(form) = read_form(&headers, &body) else {
        return undecodable();
    };
    if !csrf_matches(&app, &headers, &form) {
        return forbidden();
    }
    let incoming = Incoming::read(&form);
    let request = match validate(&app, &incoming, Answering::Post).await {
        Ok(request) => request,
        Err(res) => return res,
    };
    let decision = match form.field("decision").value() {
        Some("approve") => Decision::Approve,
        Some("deny") => Decision::Deny,
        _ => {
            return no_redirect("Choose Allow or Deny. Go back to the application and start again.")
        }
    };
    let signed_in = match signed_in_user(&app, &headers).await {
        Ok(Some(signed_in)) => signed_in,
        Ok(None) => return forbidden(),
        Err(e) => return unavailable(&e),
    };
    match decision {
        Decision::Approve => issue_code(&app, &ctx, &signed_in, &request, Answering::Post).await,
        Decision::Deny => redirect_error(
            Answering::Post,
            &app.oauth.settings.issuer,
            request.redirect_uri.as_str(),
            ErrorCode::AccessDenied,
            "the user denied the request",
            request.state.as_deref(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_client_or_redirect_uri_is_untrusted() {
        let read = |q: &str| Incoming::read(&Params::parse(q.as_bytes()).unwrap()).repeat;
        assert_eq!(read("client_id=a&client_id=b"), Repeat::Untrusted);
        assert_eq!(
            read("redirect_uri=a&redirect_uri=a&scope=x&scope=y"),
            Repeat::Untrusted
        );
        assert_eq!(read("client_id=a&scope=x&scope=y"), Repeat::Other);
        assert_eq!(read("client_id=a&foo=1&foo=2"), Repeat::Other);
        assert_eq!(read("client_id=a&state=s"), Repeat::None);
    }

    #[test]
    fn parameters_round_trip_through_the_login_redirect() {
        let q = "response_type=code&client_id=c&state=%26%23%2B%25+%C3%A9&scope=a+b&extra=1";
        let incoming = Incoming::read(&Params::parse(q.as_bytes()).unwrap());
        let again = encode_pairs(param_pairs(&incoming.params));
        let back = Incoming::read(&Params::parse(again.as_bytes()).unwrap());
        assert_eq!(back.params.state.as_deref(), Some("&#+% \u{e9}"));
        assert_eq!(back.params.scope.as_deref(), Some("a b"));
        assert_eq!(back.params.client_id.as_deref(), Some("c"));
    }
}
