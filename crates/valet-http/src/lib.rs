//! The HTTP surface: axum routers, RFC 6749 error mapping, login and consent pages.
//!
//! Handlers are thin: extract, build a command, call one use case, map the result.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use valet_app::Readiness;

/// Request bodies above this size are refused with 413 before any parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything the handlers need, shared by all requests.
pub struct AppState<R> {
    pub readiness: R,
}

pub fn router<R: Readiness>(state: AppState<R>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<R>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(state))
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok\n")
}

async fn readyz<R: Readiness>(State(state): State<Arc<AppState<R>>>) -> Response {
    match state.readiness.ready().await {
        Ok(()) => plain(StatusCode::OK, "ready\n"),
        Err(error) => {
            // The detail goes to the log only: it may name hosts or database internals.
            tracing::warn!(%error, "readiness check failed");
            plain(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
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
