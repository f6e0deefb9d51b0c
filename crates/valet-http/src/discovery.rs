//! What clients and relying parties fetch to learn about Valet: the RFC 8414 metadata,
//! the OpenID Connect discovery document (the same fields and its own), and the JWK Set
//! of the signing keys. Only what is implemented is advertised.

use std::sync::Arc;
use valet_app::registration::RegistrationPolicy;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use valet_app::keys::JWKS_MAX_AGE_SECONDS;

use crate::AppState;

/// RFC 8414 §2: no implicit or password grant, S256 only.
#[derive(Serialize)]
struct ServerMetadata<'a> {
    issuer: &'a str,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    jwks_uri: String,
    response_types_supported: [&'static str; 1],
    grant_types_supported: [&'static str; 3],
    code_challenge_methods_supported: [&'static str; 1],
    token_endpoint_auth_methods_supported: [&'static str; 3],
    revocation_endpoint_auth_methods_supported: [&'static str; 2],
    introspection_endpoint_auth_methods_supported: [&'static str; 2],
    /// RFC 9207: every authorization response carries `iss`.
    authorization_response_iss_parameter_supported: bool,
    /// RFC 7591, when dynamic registration is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_endpoint: Option<String>,
}

impl<'a> ServerMetadata<'a> {
    fn of(issuer: &'a str, registration: RegistrationPolicy) -> Self {
        let base = issuer.trim_end_matches('/');
        let endpoint = |path: &str| format!("{base}{path}");
        let secret_methods = ["client_secret_basic", "client_secret_post"];
        ServerMetadata {
            issuer,
            authorization_endpoint: endpoint("/authorize"),
            token_endpoint: endpoint("/token"),
            revocation_endpoint: endpoint("/revoke"),
            introspection_endpoint: endpoint("/introspect"),
            jwks_uri: endpoint("/jwks.json"),
            response_types_supported: ["code"],
            grant_types_supported: ["authorization_code", "refresh_token", "client_credentials"],
            code_challenge_methods_supported: ["S256"],
            token_endpoint_auth_methods_supported: [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            revocation_endpoint_auth_methods_supported: secret_methods,
            introspection_endpoint_auth_methods_supported: secret_methods,
            authorization_response_iss_parameter_supported: true,
            registration_endpoint: (registration != RegistrationPolicy::Off)
                .then(|| endpoint("/register")),
        }
    }
}

/// OpenID Connect Discovery 1.0 §3: the RFC 8414 fields and the provider's own.
#[derive(Serialize)]
struct OpenIdConfiguration<'a> {
    #[serde(flatten)]
    server: ServerMetadata<'a>,
    userinfo_endpoint: String,
    end_session_endpoint: String,
    response_modes_supported: [&'static str; 1],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: [&'static str; 3],
    scopes_supported: [&'static str; 3],
    claims_supported: [&'static str; 12],
    /// Back-Channel Logout 1.0 §2.1: logout tokens, with `sid`.
    backchannel_logout_supported: bool,
    backchannel_logout_session_supported: bool,
}

pub(crate) async fn server_metadata<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
) -> Response {
    Json(ServerMetadata::of(
        &app.oauth.settings.issuer,
        app.registration,
    ))
    .into_response()
}

pub(crate) async fn openid_configuration<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
) -> Response {
    Json(OpenIdConfiguration {
        server: ServerMetadata::of(&app.oauth.settings.issuer, app.registration),
        userinfo_endpoint: format!(
            "{}/userinfo",
            app.oauth.settings.issuer.trim_end_matches('/')
        ),
        end_session_endpoint: format!("{}/logout", app.oauth.settings.issuer.trim_end_matches('/')),
        response_modes_supported: ["query"],
        // `sub` is the user's id, the same for every client.
        subject_types_supported: ["public"],
        // Per client (`id_token_signed_response_alg`), RS256 by default; never `none`.
        id_token_signing_alg_values_supported: ["RS256", "ES256", "EdDSA"],
        scopes_supported: ["openid", "profile", "email"],
        claims_supported: [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "name",
            "preferred_username",
            "email",
            "email_verified",
            "sid",
        ],
        backchannel_logout_supported: true,
        backchannel_logout_session_supported: true,
    })
    .into_response()
}

/// `GET /jwks.json` (RFC 7517 §5): the published keys, public members only, cacheable
/// for as long as a rotated-in key is published before it signs.
pub(crate) async fn jwks<S, R, C>(State(app): State<Arc<AppState<S, R, C>>>) -> Response {
    let Some(jwks) = &app.jwks else {
        return (StatusCode::NOT_FOUND, "no signing keys\n").into_response();
    };
    let current = jwks.borrow().clone();
    let mut response = Json(&*current).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE_SECONDS}"))
            .expect("a valid header value"),
    );
    response
}
