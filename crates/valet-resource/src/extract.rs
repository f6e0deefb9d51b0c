//! axum 0.8 integration: the [`Bearer`] extractor and RFC 6750 error responses.

use std::ops::Deref;

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::{Rejection, TokenInfo, Validator};

/// The realm named in every `WWW-Authenticate` challenge.
pub const REALM: &str = "valet";

/// Longest bearer token accepted; longer ones are a malformed request.
const MAX_TOKEN_LEN: usize = 4096;

/// An authenticated request: a valid Valet access token. Extract it in a handler whose
/// state gives a [`Validator`] (`Validator: FromRef<S>`); it derefs to [`TokenInfo`].
///
/// `Option<Bearer>` is `None` without an `Authorization` header and still refuses a bad
/// token.
#[derive(Debug, Clone)]
pub struct Bearer(pub TokenInfo);

impl Bearer {
    /// The user's name if known, else the user id; `None` for client_credentials tokens.
    pub fn subject(&self) -> Option<&str> {
        self.0.subject()
    }

    /// The token's `sub`: the user id, or the client id for client_credentials tokens.
    pub fn sub(&self) -> Option<&str> {
        self.0.sub.as_deref()
    }

    pub fn username(&self) -> Option<&str> {
        self.0.username.as_deref()
    }

    pub fn client_id(&self) -> &str {
        &self.0.client_id
    }

    pub fn info(&self) -> &TokenInfo {
        &self.0
    }

    pub fn into_info(self) -> TokenInfo {
        self.0
    }

    /// `Err` (403 insufficient_scope naming `scope`) unless the token carries `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), BearerRejection> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(BearerRejection::InsufficientScope(scope.to_owned()))
        }
    }

    /// Every scope of `scopes` is required; the 403 names them all.
    pub fn require_scopes(&self, scopes: &[&str]) -> Result<(), BearerRejection> {
        if scopes.iter().all(|scope| self.0.has_scope(scope)) {
            Ok(())
        } else {
            Err(BearerRejection::InsufficientScope(scopes.join(" ")))
        }
    }
}

impl Deref for Bearer {
    type Target = TokenInfo;

    fn deref(&self) -> &TokenInfo {
        &self.0
    }
}

/// Why a request was refused, as an RFC 6750 §3 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerRejection {
    /// No `Authorization: Bearer` credentials (also another scheme): 401, no error code.
    MissingCredentials,
    /// A malformed `Authorization` header: 400 invalid_request.
    InvalidRequest(&'static str),
    /// Unknown, expired, revoked or inactive: 401 invalid_token.
    InvalidToken,
    /// The token lacks this scope (space-separated if several): 403 insufficient_scope.
    InsufficientScope(String),
    /// The validator cannot answer (failed, catching up without fallback, introspection
    /// down): 503.
    Unavailable,
}

impl From<Rejection> for BearerRejection {
    fn from(rejection: Rejection) -> Self {
        if rejection.is_invalid_token() {
            BearerRejection::InvalidToken
        } else {
            BearerRejection::Unavailable
        }
    }
}

/// Scope tokens are NQCHAR (RFC 6749 §3.3), but never let a caller-supplied string break
/// the quoted-string.
fn quoted(value: &str) -> String {
    value
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

impl IntoResponse for BearerRejection {
    fn into_response(self) -> Response {
        let (status, challenge, body) = match &self {
            BearerRejection::MissingCredentials => (
                StatusCode::UNAUTHORIZED,
                Some(format!("Bearer realm=\"{REALM}\"")),
                serde_json::json!({
                    "error": "unauthorized",
                    "error_description": "A bearer token is required.",
                }),
            ),
            BearerRejection::InvalidRequest(why) => (
                StatusCode::BAD_REQUEST,
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_request\""
                )),
                serde_json::json!({ "error": "invalid_request", "error_description": why }),
            ),
            BearerRejection::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                Some(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")),
                serde_json::json!({
                    "error": "invalid_token",
                    "error_description": "The access token is invalid, expired or revoked.",
                }),
            ),
            BearerRejection::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
                    quoted(scope)
                )),
                serde_json::json!({ "error": "insufficient_scope", "scope": scope }),
            ),
            BearerRejection::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                serde_json::json!({
                    "error": "temporarily_unavailable",
                    "error_description": "Tokens cannot be validated right now.",
                }),
            ),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(WWW_AUTHENTICATE, value);
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// `Ok(None)` without an `Authorization` header.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, BearerRejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerRejection::InvalidRequest(
            "More than one Authorization header.",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| BearerRejection::InvalidRequest("Malformed Authorization header."))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another authentication method: RFC 6750 §3.1 says no error code.
        return Err(BearerRejection::MissingCredentials);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(BearerRejection::InvalidRequest("Empty bearer token."));
    }
    if token.len() > MAX_TOKEN_LEN || !is_b64token(token) {
        return Err(BearerRejection::InvalidRequest("Malformed bearer token."));
    }
    Ok(Some(token))
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

async fn authenticate(validator: Validator, token: &str) -> Result<Bearer, BearerRejection> {
    validator
        .authenticate(token)
        .await
        .map(Bearer)
        .map_err(BearerRejection::from)
}

impl<S> FromRequestParts<S> for Bearer
where
    S: Send + Sync,
    Validator: FromRef<S>,
{
    type Rejection = BearerRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?.ok_or(BearerRejection::MissingCredentials)?;
        authenticate(Validator::from_ref(state), token).await
    }
}

impl<S> OptionalFromRequestParts<S> for Bearer
where
    S: Send + Sync,
    Validator: FromRef<S>,
{
    type Rejection = BearerRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match bearer_token(&parts.headers)? {
            Some(token) => authenticate(Validator::from_ref(state), token)
                .await
                .map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn parses_the_authorization_header() {
        assert_eq!(bearer_token(&headers(&[])), Ok(None));
        assert_eq!(
            bearer_token(&headers(&["Bearer abc-._~+/=="])),
            Ok(Some("abc-._~+/=="))
        );
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok(Some("abc")));
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])),
            Err(BearerRejection::MissingCredentials)
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer ==",
            "Bearer a\"b",
        ] {
            assert!(
                matches!(
                    bearer_token(&headers(&[bad])),
                    Err(BearerRejection::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(BearerRejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let challenge = |r: BearerRejection| {
            let response = r.into_response();
            (
                response.status().as_u16(),
                response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap().to_owned()),
            )
        };
        assert_eq!(
            challenge(BearerRejection::MissingCredentials),
            (401, Some("Bearer realm=\"valet\"".into()))
        );
        assert_eq!(
            challenge(BearerRejection::InvalidToken),
            (
                401,
                Some("Bearer realm=\"valet\", error=\"invalid_token\"".into())
            )
        );
        assert_eq!(
            challenge(BearerRejection::InsufficientScope("designs:read".into())),
            (
                403,
                Some(
                    "Bearer realm=\"valet\", error=\"insufficient_scope\", scope=\"designs:read\""
                        .into()
                )
            )
        );
        assert_eq!(challenge(BearerRejection::Unavailable), (503, None));
    }
}
