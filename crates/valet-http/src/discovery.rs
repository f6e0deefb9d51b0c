//! What relying parties fetch to learn about Valet: the JWK Set of its signing keys.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use valet_app::keys::JWKS_MAX_AGE_SECONDS;

use crate::AppState;

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
