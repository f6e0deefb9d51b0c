//! `/admin/v1`: the administration use cases over HTTP, for CI and infrastructure code.
//! The caller presents an access token with scope `valet:admin` (RFC 6750 bearer); its
//! changes are recorded with `client:<its id>` as actor. Errors are JSON with a stable
//! `error` code and a description of what is wrong; nothing internal leaks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use valet_app::admin::AdminError;
use valet_app::admin_api::AdminAuthError;
use valet_app::oauth::RequestMeta;
use valet_app::read::ReadModels;
use valet_app::{Clock, EventStore, Readiness};

use crate::observe::RequestContext;
use crate::AppState;

/// A JSON error with a stable code (`invalid_request`, `not_found`, `conflict`,
/// `invalid_token`, `insufficient_scope`, `temporarily_unavailable`).
fn error(status: StatusCode, code: &'static str, description: &str) -> Response {
    let mut res = (
        status,
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn ok(body: serde_json::Value) -> Response {
    let mut res = (StatusCode::OK, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn failed(e: AdminError) -> Response {
    match e {
        AdminError::Invalid(what) => error(StatusCode::BAD_REQUEST, "invalid_request", &what),
        AdminError::NotFound(what) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("{what} not found"),
        ),
        AdminError::AlreadyExists(what) => error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("{what} already exists"),
        ),
        AdminError::Unavailable(detail) => {
            tracing::warn!(%detail, "admin API failed: service unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again in a moment",
            )
        }
    }
}

/// The request's metadata with the caller as administrator, or the refusal (RFC 6750 §3).
async fn authorized<S, R, C>(
    app: &AppState<S, R, C>,
    ctx: &RequestContext,
    headers: &HeaderMap,
) -> Result<RequestMeta, Response>
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let challenge = |res: Response, value: &'static str| {
        let mut res = res;
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        res
    };
    let invalid = || {
        challenge(
            error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "an active access token with scope valet:admin is required",
            ),
            "Bearer error=\"invalid_token\"",
        )
    };
    let Some(token) = crate::userinfo::bearer(headers) else {
        return Err(invalid());
    };
    match app.oauth.admin_caller(token).await {
        Ok(caller) => Ok(RequestMeta {
            admin: Some(caller.actor()),
            ..ctx.meta()
        }),
        Err(AdminAuthError::InvalidToken) => Err(invalid()),
        Err(AdminAuthError::InsufficientScope) => Err(challenge(
            error(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "the access token lacks scope valet:admin",
            ),
            "Bearer error=\"insufficient_scope\", scope=\"valet:admin\"",
        )),
        Err(AdminAuthError::Unavailable(detail)) => Err(failed(AdminError::Unavailable(detail))),
    }
}

macro_rules! admin_handler {
    ($(#[$doc:meta])* $name:ident ($($arg:ident : $ty:ty),*) |$app:ident, $meta:ident| $body:expr) => {
        $(#[$doc])*
        pub(crate) async fn $name<S, R, C>(
            State($app): State<Arc<AppState<S, R, C>>>,
            Extension(ctx): Extension<RequestContext>,
            headers: HeaderMap,
            $($arg: $ty),*
        ) -> Response
        where
            S: EventStore + Readiness,
            R: ReadModels,
            C: Clock,
        {
            let $meta = match authorized(&$app, &ctx, &headers).await {
                Ok(meta) => meta,
                Err(res) => return res,
            };
            $body
        }
    };
}

admin_handler!(
    /// `GET /admin/v1/clients`.
    list_clients() |app, _meta| match app.oauth.list_clients().await {
        Ok(clients) => ok(json!(clients
            .iter()
            .map(|c| json!({
                "client_id": c.client_id,
                "name": c.name,
                "type": c.kind,
                "redirect_uris": c.redirect_uris,
                "grant_types": c.grant_types,
                "scope": c.scopes,
                "active": c.active,
            }))
            .collect::<Vec<_>>())),
        Err(e) => failed(e),
    }
);

admin_handler!(
    /// `GET /admin/v1/users`.
    list_users() |app, _meta| match app.oauth.list_users().await {
        Ok(users) => ok(json!(users
            .iter()
            .map(|u| json!({
                "user_id": u.user_id.to_string(),
                "username": u.username.as_str(),
                "active": u.active,
            }))
            .collect::<Vec<_>>())),
        Err(e) => failed(e),
    }
);

admin_handler!(
    /// `POST /admin/v1/clients/{client_id}/disable`: revokes every grant it holds.
    disable_client(id: Path<String>) |app, meta| {
        match app.oauth.disable_client(&id, &meta).await {
            Ok(revoked) => ok(json!({ "client_id": id.as_str(), "revoked_grants": revoked })),
            Err(e) => failed(e),
        }
    }
);

admin_handler!(
    /// `POST /admin/v1/clients/{client_id}/enable`.
    enable_client(id: Path<String>) |app, meta| {
        match app.oauth.enable_client(&id, &meta).await {
            Ok(()) => ok(json!({ "client_id": id.as_str(), "active": true })),
            Err(e) => failed(e),
        }
    }
);

/// The body of `rotate-secret` (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotation {
    /// How long the current secret keeps working (default a day).
    overlap_seconds: Option<u32>,
}

admin_handler!(
    /// `POST /admin/v1/clients/{client_id}/rotate-secret` with an optional JSON body
    /// `{"overlap_seconds": N}`: the new secret, shown once.
    rotate_client_secret(id: Path<String>, body: Bytes) |app, meta| {
        let rotation: Rotation = if body.is_empty() {
            Rotation::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(rotation) => rotation,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the body is {\"overlap_seconds\": N} with N at most 2592000, or empty",
                    )
                }
            }
        };
        let overlap = rotation.overlap_seconds.unwrap_or(86_400);
        if overlap > 2_592_000 {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "overlap_seconds is at most 2592000 (30 days)",
            );
        }
        match app.oauth.rotate_client_secret(&id, overlap, &meta).await {
            Ok(rotated) => ok(json!({
                "client_id": id.as_str(),
                "client_secret": rotated.client_secret,
                "previous_valid_until": valet_wire::rfc3339_from_unix_millis(
                    rotated.previous_valid_until.as_unix_millis()
                ),
            })),
            Err(e) => failed(e),
        }
    }
);

admin_handler!(
    /// `POST /admin/v1/users/{username}/disable`: revokes every grant made on their behalf.
    disable_user(name: Path<String>) |app, meta| {
        match app.oauth.disable_user(&name, &meta).await {
            Ok(revoked) => ok(json!({ "username": name.as_str(), "revoked_grants": revoked })),
            Err(e) => failed(e),
        }
    }
);

admin_handler!(
    /// `POST /admin/v1/users/{username}/enable`.
    enable_user(name: Path<String>) |app, meta| {
        match app.oauth.enable_user(&name, &meta).await {
            Ok(()) => ok(json!({ "username": name.as_str(), "active": true })),
            Err(e) => failed(e),
        }
    }
);
