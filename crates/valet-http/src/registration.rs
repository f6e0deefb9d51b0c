//! `/register`: dynamic client registration (RFC 7591) and its management with the
//! registration access token (RFC 7592). Off unless `valet serve --registration` turns
//! it on; then every answer here is JSON with the RFCs' error codes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use valet_app::read::ReadModels;
use valet_app::registration::{
    ClientMetadata, Registration, RegistrationError, RegistrationPolicy,
};
use valet_app::{Clock, EventStore, Readiness};
use valet_domain::client::AccessTokenFormat;

use crate::observe::RequestContext;
use crate::AppState;

/// Client metadata as sent (RFC 7591 §2); unknown members are ignored (§3.1).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Metadata {
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Vec<String>,
    response_types: Vec<String>,
    client_name: Option<String>,
    scope: Option<String>,
    post_logout_redirect_uris: Vec<String>,
    backchannel_logout_uri: Option<String>,
    backchannel_logout_session_required: bool,
    id_token_signed_response_alg: Option<String>,
}

impl From<Metadata> for ClientMetadata {
    fn from(m: Metadata) -> Self {
        ClientMetadata {
            redirect_uris: m.redirect_uris,
            token_endpoint_auth_method: m.token_endpoint_auth_method,
            grant_types: m.grant_types,
            response_types: m.response_types,
            client_name: m.client_name,
            scope: m.scope,
            post_logout_redirect_uris: m.post_logout_redirect_uris,
            backchannel_logout_uri: m.backchannel_logout_uri,
            backchannel_logout_session_required: m.backchannel_logout_session_required,
            id_token_signed_response_alg: m.id_token_signed_response_alg,
        }
    }
}

/// The client information response (RFC 7591 §3.2.1, RFC 7592 §3).
#[derive(Debug, Serialize)]
struct Information {
    client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    client_id_issued_at: i64,
    /// 0: the secret does not expire (rotate it with the admin API).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret_expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_access_token: Option<String>,
    registration_client_uri: String,
    client_name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    response_types: Vec<&'static str>,
    token_endpoint_auth_method: String,
    scope: String,
    id_token_signed_response_alg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backchannel_logout_uri: Option<String>,
    backchannel_logout_session_required: bool,
    /// Valet's own: `opaque` or `jwt`.
    access_token_format: &'static str,
}

fn information(issuer: &str, r: Registration) -> Information {
    let c = r.client;
    let uris = |list: &[valet_domain::RedirectUri]| -> Vec<String> {
        list.iter().map(|u| u.as_str().to_owned()).collect()
    };
    let grant_types: Vec<String> = c
        .grant_types
        .iter()
        .map(|g| g.as_str().to_owned())
        .collect();
    let confidential = matches!(
        c.kind,
        valet_domain::client::ClientKind::Confidential { .. }
    );
    Information {
        client_id_issued_at: c.registered_at.as_unix_millis().div_euclid(1000),
        client_secret_expires_at: (confidential && r.client_secret.is_some()).then_some(0),
        client_secret: r.client_secret,
        registration_access_token: r.registration_access_token,
        registration_client_uri: format!(
            "{}/register/{}",
            issuer.trim_end_matches('/'),
            c.client_id
        ),
        client_name: c.name.to_string(),
        redirect_uris: uris(&c.redirect_uris),
        post_logout_redirect_uris: uris(&c.post_logout_redirect_uris),
        response_types: if grant_types.iter().any(|g| g == "authorization_code") {
            vec!["code"]
        } else {
            Vec::new()
        },
        grant_types,
        token_endpoint_auth_method: r.auth_method,
        scope: c.scopes.to_string(),
        id_token_signed_response_alg: c.id_token_alg.as_str().to_owned(),
        backchannel_logout_uri: c.backchannel_logout_uri().map(str::to_owned),
        backchannel_logout_session_required: c.backchannel_logout_session_required(),
        access_token_format: match c.access_token_format {
            AccessTokenFormat::Opaque => "opaque",
            AccessTokenFormat::Jwt { .. } => "jwt",
        },
        client_id: c.client_id.to_string(),
    }
}

fn no_store(mut res: Response) -> Response {
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

fn refused(e: RegistrationError) -> Response {
    let body = |code: &str, description: &str| {
        Json(json!({ "error": code, "error_description": description }))
    };
    let res = match &e {
        RegistrationError::Off => (
            StatusCode::NOT_FOUND,
            body("not_found", "dynamic client registration is off"),
        )
            .into_response(),
        RegistrationError::InvalidToken => {
            let mut res = (
                StatusCode::UNAUTHORIZED,
                body("invalid_token", "a valid access token for this is required"),
            )
                .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            res
        }
        RegistrationError::InvalidRedirectUri(what) => {
            (StatusCode::BAD_REQUEST, body("invalid_redirect_uri", what)).into_response()
        }
        RegistrationError::InvalidClientMetadata(what) => (
            StatusCode::BAD_REQUEST,
            body("invalid_client_metadata", what),
        )
            .into_response(),
        RegistrationError::Unavailable(detail) => {
            tracing::warn!(%detail, "registration failed: service unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                body("temporarily_unavailable", "try again in a moment"),
            )
                .into_response()
        }
    };
    no_store(res)
}

/// The metadata of a JSON object body, or `invalid_client_metadata`.
fn metadata(bytes: &Bytes) -> Result<ClientMetadata, RegistrationError> {
    let bad = |e: serde_json::Error| RegistrationError::InvalidClientMetadata(format!("body: {e}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    if !value.is_object() {
        return Err(RegistrationError::InvalidClientMetadata(
            "body: a JSON object of client metadata is expected".into(),
        ));
    }
    if crate::holds_nul(&value) {
        return Err(RegistrationError::InvalidClientMetadata(
            "body: NUL characters are not allowed".into(),
        ));
    }
    Ok(Metadata::into(serde_json::from_value(value).map_err(bad)?))
}

fn answer<S, R, C>(
    app: &AppState<S, R, C>,
    status: StatusCode,
    result: Result<Registration, RegistrationError>,
) -> Response {
    match result {
        Ok(r) => {
            no_store((status, Json(information(&app.oauth.settings.issuer, r))).into_response())
        }
        Err(e) => refused(e),
    }
}

/// `POST /register` (RFC 7591 §3.1).
pub(crate) async fn register<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    if app.registration == RegistrationPolicy::Off {
        return refused(RegistrationError::Off);
    }
    let metadata = match metadata(&bytes) {
        Ok(m) => m,
        Err(e) => return refused(e),
    };
    let token = crate::userinfo::bearer(&headers);
    let result = app
        .oauth
        .register_dynamically(app.registration, token, metadata, &ctx.meta())
        .await;
    answer(&app, StatusCode::CREATED, result)
}

/// `GET /register/{client_id}` (RFC 7592 §2.1).
pub(crate) async fn read<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    if app.registration == RegistrationPolicy::Off {
        return refused(RegistrationError::Off);
    }
    let token = crate::userinfo::bearer(&headers);
    let result = app.oauth.read_registration(&client_id, token).await;
    answer(&app, StatusCode::OK, result)
}

/// `PUT /register/{client_id}` (RFC 7592 §2.2): a new registration access token.
pub(crate) async fn update<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    bytes: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    if app.registration == RegistrationPolicy::Off {
        return refused(RegistrationError::Off);
    }
    let token = crate::userinfo::bearer(&headers);
    let result = match metadata(&bytes) {
        Ok(metadata) => {
            app.oauth
                .update_registration(&client_id, token, metadata, &ctx.meta())
                .await
        }
        Err(e) => Err(e),
    };
    answer(&app, StatusCode::OK, result)
}

/// `DELETE /register/{client_id}` (RFC 7592 §2.3): 204.
pub(crate) async fn delete<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    if app.registration == RegistrationPolicy::Off {
        return refused(RegistrationError::Off);
    }
    let token = crate::userinfo::bearer(&headers);
    match app
        .oauth
        .delete_registration(&client_id, token, &ctx.meta())
        .await
    {
        Ok(()) => no_store(StatusCode::NO_CONTENT.into_response()),
        Err(e) => refused(e),
    }
}
