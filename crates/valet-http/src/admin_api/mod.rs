//! `/admin/v1`: the administration use cases over HTTP, for CI and infrastructure code.
//! The caller presents an access token with scope `valet:admin` (RFC 6750 bearer); its
//! changes are recorded with `client:<its id>` as actor. Errors are JSON with a stable
//! `error` code and a description of what is wrong; nothing internal leaks. Every route
//! is described in the OpenAPI document served at `/admin/v1/openapi.json`
//! (`openapi.rs`), which is built from the handlers' annotations and types here.

mod audit;
mod clients;
mod grants;
mod keys;
pub(crate) mod openapi;
mod registration;
mod users;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;
use valet_app::admin::{AdminError, Cursor, PageRequest, PageSize};
use valet_app::admin_api::AdminAuthError;
use valet_app::oauth::RequestMeta;
use valet_app::read::ReadModels;
use valet_app::{Clock, EventStore, Readiness};

use crate::observe::RequestContext;
use crate::AppState;

/// An error: a stable code and what is wrong, for the operator.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiError {
    /// `invalid_request`, `not_found`, `conflict`, `invalid_token`,
    /// `insufficient_scope` or `temporarily_unavailable`.
    error: String,
    error_description: String,
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub(crate) fn error(status: StatusCode, code: &'static str, description: &str) -> Response {
    no_store(
        (
            status,
            Json(ApiError {
                error: code.to_owned(),
                error_description: description.to_owned(),
            }),
        )
            .into_response(),
    )
}

fn invalid(description: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

pub(crate) fn ok<T: Serialize>(body: T) -> Response {
    no_store((StatusCode::OK, Json(body)).into_response())
}

pub(crate) fn created<T: Serialize>(body: T) -> Response {
    no_store((StatusCode::CREATED, Json(body)).into_response())
}

pub(crate) fn failed(e: AdminError) -> Response {
    match e {
        AdminError::Invalid(what) => invalid(&what),
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
        AdminError::Conflict(what) => error(StatusCode::CONFLICT, "conflict", &what),
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

/// The query string as `T`, or a 400 that says what is wrong.
pub(crate) fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, AdminError> {
    // A NUL can only arrive percent-encoded; PostgreSQL stores none.
    if uri
        .query()
        .is_some_and(|q| q.to_ascii_lowercase().contains("%00"))
    {
        return Err(AdminError::Invalid(
            "query: NUL characters are not allowed".into(),
        ));
    }
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| AdminError::Invalid(format!("query: {}", e.body_text())))
}

/// A JSON object body as `T`, or a 400. (serde would also take an array for a struct.)
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, AdminError> {
    let bad = |e: serde_json::Error| AdminError::Invalid(format!("body: {e}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    if !value.is_object() {
        return Err(AdminError::Invalid(
            "body: a JSON object is expected".into(),
        ));
    }
    if crate::holds_nul(&value) {
        return Err(AdminError::Invalid(
            "body: NUL characters are not allowed".into(),
        ));
    }
    serde_json::from_value(value).map_err(bad)
}

/// The page a list asks for: `limit` (1 to 500, default 50) and `after`, the
/// `next_cursor` of the page before. (Each list's query type carries both: utoipa
/// cannot flatten one parameter struct into another.)
pub(crate) fn page_request(
    limit: Option<u64>,
    after: Option<&str>,
) -> Result<PageRequest, AdminError> {
    let size = match limit {
        None => PageSize::DEFAULT,
        Some(n) => PageSize::new(n)?,
    };
    let after = after.map(Cursor::parse).transpose()?;
    Ok(PageRequest { size, after })
}

/// Unix milliseconds as RFC 3339.
pub(crate) fn time(millis: i64) -> String {
    valet_wire::rfc3339_from_unix_millis(millis)
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
    let challenge = |mut res: Response, value: &'static str| {
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
            admin: Some(caller),
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

/// An admin route's handler: the caller is authorized before `$body` runs, with the
/// request's metadata as `$meta`. `$body` answers a response or an [`AdminError`].
macro_rules! admin_handler {
    ($(#[$attr:meta])* $name:ident ($($arg:ident : $ty:ty),*) |$app:ident, $meta:ident| $body:block) => {
        $(#[$attr])*
        pub(crate) async fn $name<S, R, C>(
            axum::extract::State($app): axum::extract::State<
                std::sync::Arc<crate::AppState<S, R, C>>,
            >,
            axum::extract::Extension(ctx): axum::extract::Extension<crate::RequestContext>,
            headers: axum::http::HeaderMap,
            $($arg: $ty),*
        ) -> axum::response::Response
        where
            S: valet_app::EventStore + valet_app::Readiness,
            R: valet_app::read::ReadModels,
            C: valet_app::Clock,
        {
            #[allow(unused_variables)]
            let $meta = match super::authorized(&$app, &ctx, &headers).await {
                Ok(meta) => meta,
                Err(res) => return res,
            };
            let answer: Result<axum::response::Response, valet_app::admin::AdminError> =
                async { $body }.await;
            answer.unwrap_or_else(super::failed)
        }
    };
}
pub(crate) use admin_handler;

/// The `/admin/v1` routes.
pub(crate) fn routes<S, R, C>() -> Router<Arc<AppState<S, R, C>>>
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi::document))
        .route(
            "/admin/v1/clients",
            get(clients::list::<S, R, C>).post(clients::create::<S, R, C>),
        )
        .route(
            "/admin/v1/clients/{client_id}",
            get(clients::show::<S, R, C>)
                .patch(clients::update::<S, R, C>)
                .delete(clients::delete::<S, R, C>),
        )
        .route(
            "/admin/v1/clients/{client_id}/disable",
            post(clients::disable::<S, R, C>),
        )
        .route(
            "/admin/v1/clients/{client_id}/enable",
            post(clients::enable::<S, R, C>),
        )
        .route(
            "/admin/v1/clients/{client_id}/rotate-secret",
            post(clients::rotate_secret::<S, R, C>),
        )
        .route(
            "/admin/v1/users",
            get(users::list::<S, R, C>).post(users::create::<S, R, C>),
        )
        .route(
            "/admin/v1/users/{username}",
            get(users::show::<S, R, C>).patch(users::update::<S, R, C>),
        )
        .route(
            "/admin/v1/users/{username}/password",
            axum::routing::put(users::set_password::<S, R, C>),
        )
        .route(
            "/admin/v1/users/{username}/disable",
            post(users::disable::<S, R, C>),
        )
        .route(
            "/admin/v1/users/{username}/enable",
            post(users::enable::<S, R, C>),
        )
        .route(
            "/admin/v1/users/{username}/sign-out-everywhere",
            post(users::sign_out_everywhere::<S, R, C>),
        )
        .route("/admin/v1/grants", get(grants::list::<S, R, C>))
        .route("/admin/v1/grants/{grant_id}", get(grants::show::<S, R, C>))
        .route(
            "/admin/v1/grants/{grant_id}/revoke",
            post(grants::revoke::<S, R, C>),
        )
        .route("/admin/v1/keys", get(keys::list::<S, R, C>))
        .route("/admin/v1/keys/rotate", post(keys::rotate::<S, R, C>))
        .route("/admin/v1/keys/{kid}/retire", post(keys::retire::<S, R, C>))
        .route(
            "/admin/v1/initial-access-tokens",
            post(registration::issue::<S, R, C>),
        )
        .route("/admin/v1/audit/log", get(audit::log::<S, R, C>))
        .route("/admin/v1/audit/token", post(audit::token::<S, R, C>))
        .route("/admin/v1/audit/at", get(audit::at::<S, R, C>))
}
