//! `GET` and `POST /userinfo` (OpenID Connect Core §5.3): the bearer token comes in the
//! `Authorization` header only (RFC 6750 §2.1), never the query string.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use valet_app::oauth::UserInfoError;
use valet_app::read::ReadModels;
use valet_app::{Clock, EventStore, Readiness};

use crate::AppState;

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// RFC 6750 §3: the error as a challenge and as JSON.
fn refused(status: StatusCode, error: &'static str, challenge: &'static str) -> Response {
    let mut res = (status, Json(json!({ "error": error }))).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    res
}

pub(crate) async fn userinfo<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    headers: HeaderMap,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let invalid = || {
        refused(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Bearer error=\"invalid_token\"",
        )
    };
    let Some(token) = bearer(&headers) else {
        return invalid();
    };
    match app.oauth.userinfo(token).await {
        Ok(info) => Json(info).into_response(),
        Err(UserInfoError::InvalidToken) => invalid(),
        Err(UserInfoError::InsufficientScope) => refused(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "Bearer error=\"insufficient_scope\", scope=\"openid\"",
        ),
        Err(UserInfoError::Unavailable(detail)) => {
            tracing::warn!(%detail, "userinfo failed: service unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "temporarily_unavailable" })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_authorization_header_carries_the_token() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
