//! The HTTP surface: axum routers, RFC 6749 error mapping, login and consent pages.
//!
//! Handlers are thin: extract, build a command, call one use case, map the result.
//! Nothing here logs a token, code, secret, password, query string or body: the request
//! log names the matched route only.

mod account;
mod account_page;
mod admin_api;
mod authorize;
mod client_auth;
mod cookies;
mod discovery;
mod html;
mod limits;
mod logout;
mod observe;
mod params;
mod proxies;
mod registration;
mod signin;
mod signing;
mod token;
mod userinfo;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use valet_app::admin::{AdminReads, NoAdminReads};
use valet_app::attempts::Attempts;
use valet_app::entropy::{random_bytes, OsRandom, RandomnessError};
use valet_app::memory::MemoryAttempts;
use valet_app::oauth::OAuth;
use valet_app::outbox::RelayStatus;
use valet_app::read::ReadModels;
use valet_app::registration::RegistrationPolicy;
use valet_app::{Clock, EventStore, Readiness};

pub use cookies::{CookieTransport, CSRF_COOKIE, SESSION_COOKIE};
pub use observe::{Metrics, RequestContext, X_REQUEST_ID};

pub use crate::limits::FailureLimits;
use crate::observe::observe;
use crate::params::{FormError, Params};
pub use crate::proxies::TrustedProxies;
use crate::signing::Signer;

/// Request bodies above this size are refused with 413 before any parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything the handlers need, shared by all requests. The event store doubles as the
/// readiness probe (`/readyz` asks it).
pub struct AppState<S, R, C> {
    pub oauth: OAuth<S, R, C>,
    signer: Signer,
    cookie_transport: CookieTransport,
    /// Failed authentications (clients and sign-ins), counted where every replica sees
    /// them.
    attempts: Arc<dyn Attempts>,
    limits: FailureLimits,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` name the client's address.
    proxies: TrustedProxies,
    metrics: Arc<Metrics>,
    /// The NATS relay of this process, reported by `/readyz` and `/metrics`.
    relay: Option<Arc<RelayStatus>>,
    /// The back-channel logout dispatcher of this process, reported likewise.
    backchannel: Option<Arc<RelayStatus>>,
    /// The JWK Set, kept current by the key ring's loop.
    jwks: Option<tokio::sync::watch::Receiver<Arc<valet_app::keys::Jwks>>>,
    /// The admin API's lists and audit answers.
    admin_reads: Arc<dyn AdminReads>,
    /// Whether `/register` admits clients (RFC 7591).
    registration: RegistrationPolicy,
    /// Rotating and retiring signing keys through the admin API.
    key_admin: Option<Arc<dyn valet_app::keys::KeyAdmin>>,
}

impl<S, R, C> AppState<S, R, C> {
    /// `session_key` signs session and CSRF cookies. With a key generated at start-up
    /// ([`random_session_key`]) sessions end when the process restarts; pass a stored
    /// key to keep them, and the same key to every instance behind one issuer.
    pub fn new(oauth: OAuth<S, R, C>, session_key: [u8; 32]) -> Self {
        let cookie_transport = CookieTransport::for_issuer(&oauth.settings.issuer);
        AppState {
            oauth,
            signer: Signer::new(session_key),
            cookie_transport,
            attempts: Arc::new(MemoryAttempts::new()),
            limits: FailureLimits::default(),
            proxies: TrustedProxies::none(),
            metrics: Arc::default(),
            relay: None,
            backchannel: None,
            jwks: None,
            admin_reads: Arc::new(NoAdminReads),
            registration: RegistrationPolicy::Off,
            key_admin: None,
        }
    }

    /// Lets the admin API rotate and retire signing keys with `keys`.
    pub fn with_key_admin(mut self, keys: Arc<dyn valet_app::keys::KeyAdmin>) -> Self {
        self.key_admin = Some(keys);
        self
    }

    /// Turns dynamic client registration on (`/register`, RFC 7591 and 7592).
    pub fn with_registration(mut self, policy: RegistrationPolicy) -> Self {
        self.registration = policy;
        self
    }

    /// Answers the admin API's lists and audit questions from `reads`.
    pub fn with_admin_reads(mut self, reads: Arc<dyn AdminReads>) -> Self {
        self.admin_reads = reads;
        self
    }

    /// How long a sign-in lasts (default 8 hours; at least a second).
    pub fn with_session_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        let mut policy = self.oauth.session_policy();
        policy.lifetime_seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX).max(1);
        self.oauth.set_session_policy(policy);
        self
    }

    /// How long a sign-in lasts without use (default 30 minutes; `None`: no limit).
    pub fn with_session_idle_timeout(mut self, idle: Option<std::time::Duration>) -> Self {
        let mut policy = self.oauth.session_policy();
        policy.idle = valet_domain::session::IdleTimeout(
            idle.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1)),
        );
        self.oauth.set_session_policy(policy);
        self
    }

    /// Counts failed authentications in `attempts` (shared by every replica) instead of
    /// this process's memory.
    pub fn with_attempts(mut self, attempts: Arc<dyn Attempts>) -> Self {
        self.attempts = attempts;
        self
    }

    /// Applies `limits` instead of the defaults (10 failures a minute per address).
    pub fn with_failure_limits(mut self, limits: FailureLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Takes the client's address from `Forwarded` / `X-Forwarded-For` when the peer
    /// is one of `proxies`.
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// Serves `jwks` at `/jwks.json`.
    pub fn with_jwks(
        mut self,
        jwks: tokio::sync::watch::Receiver<Arc<valet_app::keys::Jwks>>,
    ) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Reports the relay's state (lease, NATS connection, backlog) in `/readyz` and
    /// `/metrics`.
    pub fn with_relay(mut self, status: Arc<RelayStatus>) -> Self {
        self.relay = Some(status);
        self
    }

    /// Reports the back-channel logout dispatcher's state (lease, deliveries) in
    /// `/readyz` and `/metrics`.
    pub fn with_backchannel(mut self, status: Arc<RelayStatus>) -> Self {
        self.backchannel = Some(status);
        self
    }
}

/// 256 bits from the OS CSPRNG, for [`AppState::new`].
pub fn random_session_key() -> Result<[u8; 32], RandomnessError> {
    random_bytes(&OsRandom)
}

pub fn router<S, R, C>(state: Arc<AppState<S, R, C>>) -> Router
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let observer = observe::Observer {
        metrics: state.metrics.clone(),
        proxies: state.proxies.clone(),
    };
    let no_store = || map_response(token::no_store);
    // HSTS on every answer of an https issuer (TLS here or at a trusted proxy): browsers
    // then never try plain HTTP for it again.
    let https = state.cookie_transport == CookieTransport::HttpsOnly;
    let router = Router::new()
        .route("/authorize", get(authorize::show::<S, R, C>))
        .route("/authorize/login", post(authorize::login::<S, R, C>))
        .route("/authorize/consent", post(authorize::consent::<S, R, C>))
        .route("/account", get(account::show::<S, R, C>))
        .route("/account/login", post(account::login::<S, R, C>))
        .route("/account/apps/remove", post(account::remove_app::<S, R, C>))
        .route("/account/sessions/end", post(account::end_one::<S, R, C>))
        .route(
            "/account/sessions/end-all",
            post(account::end_all::<S, R, C>),
        )
        .route("/token", post(token::token::<S, R, C>).layer(no_store()))
        .route("/revoke", post(token::revoke::<S, R, C>).layer(no_store()))
        .route(
            "/introspect",
            post(token::introspect::<S, R, C>).layer(no_store()),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(discovery::server_metadata::<S, R, C>),
        )
        .route(
            "/.well-known/openid-configuration",
            get(discovery::openid_configuration::<S, R, C>),
        )
        .route(
            "/userinfo",
            get(userinfo::userinfo::<S, R, C>)
                .post(userinfo::userinfo::<S, R, C>)
                .layer(no_store()),
        )
        .route(
            "/logout",
            get(logout::logout::<S, R, C>).post(logout::logout::<S, R, C>),
        )
        .route("/jwks.json", get(discovery::jwks::<S, R, C>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S, R, C>))
        .route("/metrics", get(metrics_text::<S, R, C>))
        .merge(admin_api::routes::<S, R, C>())
        .route("/register", post(registration::register::<S, R, C>))
        .route(
            "/register/{client_id}",
            get(registration::read::<S, R, C>)
                .put(registration::update::<S, R, C>)
                .delete(registration::delete::<S, R, C>),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn(observe::refuse_large_bodies))
        .layer(from_fn_with_state(observer, observe));
    let router = if https {
        router.layer(map_response(strict_transport_security))
    } else {
        router
    };
    router.with_state(state)
}

/// A year; not `includeSubDomains`: other hosts of the issuer's domain are not Valet's
/// to decide for.
async fn strict_transport_security(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    res
}

/// Whether a JSON value holds a NUL character anywhere: PostgreSQL stores none (in text
/// or jsonb), so such input is refused up front with a 400 rather than failing there.
pub(crate) fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Why a form body was refused (400 at every endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormRejection {
    #[error("the body is not application/x-www-form-urlencoded")]
    ContentType,
    #[error(transparent)]
    Undecodable(#[from] FormError),
    #[error("a parameter was repeated")]
    Repeated,
}

/// A form body, with repeated parameters refused (RFC 6749 §3.1, §3.2).
pub(crate) fn read_form(headers: &HeaderMap, body: &[u8]) -> Result<Params, FormRejection> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(FormRejection::ContentType);
    }
    let form = Params::parse(body)?;
    if form.first_repeated().is_some() {
        return Err(FormRejection::Repeated);
    }
    Ok(form)
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok\n")
}

/// `/readyz` body: whether the database answers, and what the relay is doing. A NATS
/// outage does not make the server unready (events wait in the log), it shows here.
#[derive(Serialize)]
struct ReadyBody {
    status: &'static str,
    database: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<RelayBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backchannel: Option<DispatcherBody>,
}

#[derive(Serialize)]
struct DispatcherBody {
    /// This process holds the back-channel logout dispatcher's lease.
    active: bool,
    /// Who holds it (`host:pid`), as last seen by this process.
    leader: Option<String>,
}

#[derive(Serialize)]
struct RelayBody {
    /// This process holds the relay lease (another process may be relaying instead).
    active: bool,
    /// Who holds the relay lease (`host:pid`), as last seen by this process.
    leader: Option<String>,
    nats_connected: bool,
    backlog: i64,
    last_position: i64,
}

async fn readyz<S, R, C>(State(app): State<Arc<AppState<S, R, C>>>) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let relay = app.relay.as_ref().map(|r| {
        let s = r.snapshot();
        RelayBody {
            active: s.active,
            leader: r.leader(),
            nats_connected: s.nats_connected,
            backlog: s.backlog,
            last_position: s.last_position,
        }
    });
    let backchannel = app.backchannel.as_ref().map(|d| DispatcherBody {
        active: d.snapshot().active,
        leader: d.leader(),
    });
    let (status, body) = match app.oauth.store.ready().await {
        Ok(()) => (
            StatusCode::OK,
            ReadyBody {
                status: "ready",
                database: "ok",
                relay,
                backchannel,
            },
        ),
        Err(error) => {
            // The detail goes to the log only: it may name hosts or database internals.
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                ReadyBody {
                    status: "unavailable",
                    database: "unreachable",
                    relay,
                    backchannel,
                },
            )
        }
    };
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn metrics_text<S, R, C>(State(app): State<Arc<AppState<S, R, C>>>) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let mut text = app.metrics.render();
    if let Some(relay) = &app.relay {
        observe::render_relay(&mut text, &relay.snapshot());
    }
    if let Some(dispatcher) = &app.backchannel {
        observe::render_backchannel(&mut text, &dispatcher.snapshot());
    }
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form_headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn forms_need_the_form_content_type() {
        let ok = form_headers("application/x-www-form-urlencoded; charset=UTF-8");
        assert!(read_form(&ok, b"a=1").is_ok());
        assert_eq!(
            read_form(&form_headers("application/json"), b"a=1"),
            Err(FormRejection::ContentType)
        );
        assert_eq!(
            read_form(&HeaderMap::new(), b""),
            Err(FormRejection::ContentType)
        );
    }

    #[test]
    fn forms_refuse_repeats_and_binary() {
        let h = form_headers("application/x-www-form-urlencoded");
        assert_eq!(read_form(&h, b"a=1&a=2"), Err(FormRejection::Repeated));
        assert!(matches!(
            read_form(&h, b"a=\xff\xfe"),
            Err(FormRejection::Undecodable(_))
        ));
    }
}
