//! Printshop: the 3D printing service of the classic story. Alice signs in through Valet
//! (OpenID Connect: discovery, PKCE, nonce, the id_token checked against the JWKS, `iss`
//! on the redirect back), Printshop shows who she is and lists her designs from the
//! `designs` resource service with her access token, and signs her out of Valet too.
//!
//! ```text
//! PRINTSHOP_CLIENT_ID=… PRINTSHOP_CLIENT_SECRET=… cargo run -p printshop
//! ```
//!
//! Environment: `PRINTSHOP_ISSUER` (default `http://127.0.0.1:8080`),
//! `PRINTSHOP_CLIENT_ID`, `PRINTSHOP_CLIENT_SECRET` (a confidential client of Valet with
//! redirect URI `<base>/callback`, post-logout redirect URI `<base>/`, back-channel
//! logout URI `<base>/backchannel-logout` and scopes `openid profile email
//! designs:read`), `PRINTSHOP_LISTEN` (default `127.0.0.1:8082`; the base
//! URL is `http://` + it), `DESIGNS_URL` (default `http://127.0.0.1:8081`). Prints
//! `printshop listening on http://ADDR` once it serves.

mod backchannel;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use serde::Deserialize;

use pages::{Design, Page};

const COOKIE: &str = "printshop_session";

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A browser's session here: a sign-in under way, or a signed-in user.
#[derive(Default)]
struct Session {
    pending: Option<Pending>,
    user: Option<User>,
}

struct Pending {
    state: CsrfToken,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
}

#[derive(Clone)]
struct User {
    sub: String,
    /// The Valet session she signed in with (the id_token's `sid`).
    sid: Option<String>,
    name: Option<String>,
    email: Option<String>,
    access_token: AccessToken,
    refresh_token: Option<RefreshToken>,
    id_token: String,
}

/// Why the designs could not be listed.
enum DesignsError {
    /// The access token was refused (expired or revoked): refresh and try again.
    TokenRefused,
    Other(String),
}

struct App {
    client: Client,
    http: reqwest::Client,
    issuer: String,
    end_session: Option<String>,
    base: String,
    designs_url: String,
    sessions: Mutex<HashMap<String, Session>>,
    logout_tokens: backchannel::LogoutTokens,
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS CSPRNG");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_owned())
        })
}

fn see_other(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, value);
    }
    res
}

fn html(status: StatusCode, page: Page<'_>) -> Response {
    let mut res = (status, page.render()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl App {
    fn user(&self, headers: &HeaderMap) -> Option<User> {
        let id = session_id(headers)?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&id).and_then(|s| s.user.clone())
    }

    /// The user's designs, from the resource service, with their access token.
    async fn designs(&self, user: &User) -> Result<Vec<Design>, DesignsError> {
        let resp = self
            .http
            .get(format!("{}/designs", self.designs_url))
            .bearer_auth(user.access_token.secret())
            .send()
            .await
            .map_err(|e| DesignsError::Other(format!("the designs service is unreachable: {e}")))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(DesignsError::TokenRefused);
        }
        if !resp.status().is_success() {
            return Err(DesignsError::Other(format!(
                "the designs service answered {}",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|e| DesignsError::Other(format!("the designs service answered nonsense: {e}")))
    }

    /// New tokens for `user` from their refresh token (rotated by Valet: the new one
    /// replaces it).
    async fn refresh(&self, user: &User) -> anyhow::Result<User> {
        let refresh_token = user.refresh_token.as_ref().context("no refresh token")?;
        let tokens = self
            .client
            .exchange_refresh_token(refresh_token)?
            .request_async(&self.http)
            .await
            .context("refresh")?;
        Ok(User {
            access_token: tokens.access_token().clone(),
            refresh_token: tokens
                .refresh_token()
                .cloned()
                .or_else(|| user.refresh_token.clone()),
            ..user.clone()
        })
    }

    /// The designs, refreshing the tokens once if the access token was refused.
    async fn designs_refreshing(
        &self,
        headers: &HeaderMap,
        user: User,
    ) -> Result<Vec<Design>, String> {
        match self.designs(&user).await {
            Ok(designs) => Ok(designs),
            Err(DesignsError::Other(why)) => Err(why),
            Err(DesignsError::TokenRefused) => {
                let fresh = self
                    .refresh(&user)
                    .await
                    .map_err(|e| format!("your sign-in has expired ({e}); sign in again"))?;
                if let Some(id) = session_id(headers) {
                    if let Some(session) = self
                        .sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&id)
                    {
                        session.user = Some(fresh.clone());
                    }
                }
                self.designs(&fresh).await.map_err(|e| match e {
                    DesignsError::TokenRefused => {
                        "the designs service refused a fresh token".to_owned()
                    }
                    DesignsError::Other(why) => why,
                })
            }
        }
    }
}

async fn home(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(user) = app.user(&headers) else {
        return html(StatusCode::OK, Page::SignedOut);
    };
    let designs = app.designs_refreshing(&headers, user.clone()).await;
    html(
        StatusCode::OK,
        Page::SignedIn {
            name: user.name.as_deref().unwrap_or(&user.sub),
            email: user.email.as_deref(),
            designs: &designs,
        },
    )
}

async fn login(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = app
        .client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("designs:read".into()))
        .set_pkce_challenge(challenge)
        .url();
    let id = session_id(&headers).unwrap_or_else(random_id);
    app.sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id.clone())
        .or_default()
        .pending = Some(Pending {
        state,
        nonce,
        verifier,
    });
    let mut res = see_other(url.as_str());
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, value);
    }
    res
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(back): Query<Callback>,
) -> Response {
    let fail = |why: &str| {
        html(
            StatusCode::BAD_REQUEST,
            Page::Failed {
                why: why.to_owned(),
            },
        )
    };
    let Some(id) = session_id(&headers) else {
        return fail("Your browser did not keep Printshop's cookie.");
    };
    let pending = app
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&id)
        .and_then(|s| s.pending.take());
    let Some(pending) = pending else {
        return fail("No sign-in was under way.");
    };
    if back.state.as_deref() != Some(pending.state.secret().as_str()) {
        return fail("The answer does not belong to this sign-in (state).");
    }
    // RFC 9207: the answer names the issuer we sent the user to.
    if back.iss.as_deref() != Some(app.issuer.as_str()) {
        return fail("The answer does not come from the expected issuer (iss).");
    }
    if let Some(error) = back.error {
        return fail(&format!("Valet said: {error}"));
    }
    let Some(code) = back.code else {
        return fail("The answer carries no code.");
    };
    match sign_in(&app, code, pending).await {
        Ok(user) => {
            if let Some(session) = app
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&id)
            {
                session.user = Some(user);
            }
            see_other("/")
        }
        Err(e) => {
            tracing::warn!(error = %e, "sign-in failed");
            fail("The sign-in could not be completed.")
        }
    }
}

/// Redeems the code, checks the id_token (signature from the JWKS, issuer, audience,
/// expiry, nonce) and reads the user's claims from UserInfo.
async fn sign_in(app: &App, code: String, pending: Pending) -> anyhow::Result<User> {
    let tokens = app
        .client
        .exchange_code(AuthorizationCode::new(code))?
        .set_pkce_verifier(pending.verifier)
        .request_async(&app.http)
        .await
        .context("redeem the code")?;
    let id_token = tokens.id_token().context("no id_token")?;
    let claims = id_token
        .claims(&app.client.id_token_verifier(), &pending.nonce)
        .context("the id_token does not verify")?;
    let sub = claims.subject().to_string();
    let info: CoreUserInfoClaims = app
        .client
        .user_info(tokens.access_token().clone(), None)?
        .request_async(&app.http)
        .await
        .context("UserInfo")?;
    anyhow::ensure!(
        info.subject().as_str() == sub,
        "UserInfo names another user"
    );
    Ok(User {
        sub,
        sid: sid_of(&id_token.to_string()),
        name: info.name().and_then(|n| n.get(None)).map(|n| n.to_string()),
        email: info.email().map(|e| e.to_string()),
        access_token: tokens.access_token().clone(),
        refresh_token: tokens.refresh_token().cloned(),
        id_token: id_token.to_string(),
    })
}

/// Signs out here and, through RP-Initiated Logout, at Valet.
async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let user = session_id(&headers).and_then(|id| {
        app.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .and_then(|s| s.user)
    });
    match (user, &app.end_session) {
        (Some(user), Some(end_session)) => {
            let mut url = match url::Url::parse(end_session) {
                Ok(url) => url,
                Err(_) => return see_other("/"),
            };
            url.query_pairs_mut()
                .append_pair("id_token_hint", &user.id_token)
                .append_pair("post_logout_redirect_uri", &format!("{}/", app.base))
                .append_pair("state", &random_id());
            see_other(url.as_str())
        }
        _ => see_other("/"),
    }
}

/// The `sid` claim of an id_token the library has verified already.
fn sid_of(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["sid"].as_str().map(str::to_owned)
}

#[derive(Deserialize)]
struct LogoutTokenForm {
    logout_token: String,
}

/// `POST /backchannel-logout`: Valet says a session ended. A valid token signs out the
/// sessions here that came from it (by `sid`, or every one of `sub`'s).
async fn backchannel_logout(
    State(app): State<Arc<App>>,
    Form(form): Form<LogoutTokenForm>,
) -> Response {
    let answer = |status: StatusCode, body: &'static str| {
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    };
    match app.logout_tokens.verify(&form.logout_token).await {
        Ok(logout) => {
            let mut sessions = app.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let before = sessions.len();
            sessions.retain(|_, s| {
                !s.user
                    .as_ref()
                    .is_some_and(|u| match (&logout.sid, &logout.sub) {
                        (Some(sid), _) => u.sid.as_ref() == Some(sid),
                        (None, Some(sub)) => &u.sub == sub,
                        (None, None) => false,
                    })
            });
            tracing::info!(signed_out = before - sessions.len(), "back-channel logout");
            answer(StatusCode::OK, "")
        }
        Err(why) => {
            tracing::warn!(%why, "refused a logout token");
            answer(StatusCode::BAD_REQUEST, "{\"error\":\"invalid_request\"}")
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRINTSHOP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let issuer = env("PRINTSHOP_ISSUER", "http://127.0.0.1:8080");
    let listen: SocketAddr = env("PRINTSHOP_LISTEN", "127.0.0.1:8082")
        .parse()
        .context("PRINTSHOP_LISTEN")?;
    let client_id = std::env::var("PRINTSHOP_CLIENT_ID").context("PRINTSHOP_CLIENT_ID")?;
    let secret = std::env::var("PRINTSHOP_CLIENT_SECRET").context("PRINTSHOP_CLIENT_SECRET")?;
    let base = format!("http://{listen}");
    // Following redirects from the provider's endpoints would let them send us anywhere.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let metadata = CoreProviderMetadata::discover_async(IssuerUrl::new(issuer.clone())?, &http)
        .await
        .with_context(|| format!("discover {issuer}"))?;
    // RP-Initiated Logout's endpoint is not among the core metadata fields.
    let discovery: serde_json::Value = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await?
        .json()
        .await?;
    let end_session = discovery["end_session_endpoint"]
        .as_str()
        .map(str::to_owned);
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .context("the provider names no jwks_uri")?
        .to_owned();
    let logout_tokens =
        backchannel::LogoutTokens::new(issuer.clone(), client_id.clone(), jwks_uri, http.clone());
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id),
        Some(ClientSecret::new(secret)),
    )
    .set_redirect_uri(RedirectUrl::new(format!("{base}/callback"))?);
    let app = Arc::new(App {
        client,
        http,
        issuer,
        end_session,
        base,
        designs_url: env("DESIGNS_URL", "http://127.0.0.1:8081"),
        sessions: Mutex::default(),
        logout_tokens,
    });
    let router = Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/callback", get(callback))
        .route("/logout", get(logout))
        .route("/backchannel-logout", post(backchannel_logout))
        .route("/healthz", get(healthz))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    println!("printshop listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
