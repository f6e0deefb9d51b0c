//! The JSON endpoints: /token (RFC 6749 §3.2), /revoke (RFC 7009), /introspect (RFC 7662).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use valet_app::attempts::AttemptKey;
use valet_app::oauth::{
    AuthenticatedClient, ClientAuth, ErrorCode, Introspection, OAuthError, TokenResponse,
    Unavailable,
};
use valet_app::read::ReadModels;
use valet_app::{Clock, EventStore, Readiness};

use crate::client_auth::{self, ClientAuthError};
use crate::limits;
use crate::observe::RequestContext;
use crate::params::{Field, Params};
use crate::{read_form, AppState, FormRejection};

/// A failed JSON-endpoint request. Descriptions are fixed: they never echo input.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}: {description}", code.as_str())]
    Protocol {
        code: ErrorCode,
        description: &'static str,
    },
    #[error("too many failed client authentications")]
    RateLimited { retry_after: Duration },
    #[error("temporarily unavailable: {0}")]
    Unavailable(Unavailable),
}

impl ApiError {
    const fn invalid_request(description: &'static str) -> Self {
        ApiError::Protocol {
            code: ErrorCode::InvalidRequest,
            description,
        }
    }

    const fn invalid_client() -> Self {
        ApiError::Protocol {
            code: ErrorCode::InvalidClient,
            description: "client authentication failed",
        }
    }
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> Self {
        match e {
            OAuthError::Protocol { code, description } => ApiError::Protocol { code, description },
            OAuthError::Unavailable(detail) => ApiError::Unavailable(detail),
        }
    }
}

impl From<FormRejection> for ApiError {
    fn from(e: FormRejection) -> Self {
        match e {
            FormRejection::ContentType => {
                ApiError::invalid_request("the body must be application/x-www-form-urlencoded")
            }
            FormRejection::Undecodable(_) => {
                ApiError::invalid_request("the body is not valid form data")
            }
            FormRejection::Repeated => ApiError::invalid_request("a parameter was repeated"),
        }
    }
}

impl From<ClientAuthError> for ApiError {
    fn from(e: ClientAuthError) -> Self {
        match e {
            ClientAuthError::Missing | ClientAuthError::Malformed => ApiError::invalid_client(),
            ClientAuthError::MultipleMethods => {
                ApiError::invalid_request("use exactly one client authentication method")
            }
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Protocol { code, description } => {
                let body = ErrorBody {
                    error: code.as_str(),
                    error_description: Some(description),
                };
                let mut res = Json(body).into_response();
                // RFC 6749 §5.2: 401 with a challenge for failed client authentication.
                if code == ErrorCode::InvalidClient {
                    *res.status_mut() = StatusCode::UNAUTHORIZED;
                    res.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"valet\""),
                    );
                } else {
                    *res.status_mut() = StatusCode::BAD_REQUEST;
                }
                res
            }
            ApiError::RateLimited { retry_after } => {
                let body = ErrorBody {
                    error: ErrorCode::InvalidClient.as_str(),
                    error_description: Some("too many failed attempts"),
                };
                let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                res.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs()),
                );
                res
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(%detail, "request failed: service unavailable");
                let body = ErrorBody {
                    error: "temporarily_unavailable",
                    error_description: None,
                };
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
        }
    }
}

/// RFC 6749 §5.1 / RFC 7009 §2 / RFC 7662 §2.2: responses with credentials or token
/// state are never cached. Layered on the three routes so 405 and 413 carry it too.
pub async fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

/// One /token request, by grant type.
#[derive(Debug, PartialEq, Eq)]
enum Grant<'a> {
    AuthorizationCode {
        code: &'a str,
        redirect_uri: Option<&'a str>,
        code_verifier: Option<&'a str>,
    },
    RefreshToken {
        refresh_token: &'a str,
        scope: Option<&'a str>,
    },
    ClientCredentials {
        scope: Option<&'a str>,
    },
}

fn grant(form: &Params) -> Result<Grant<'_>, ApiError> {
    let value = |name| form.field(name).value();
    let required = |name, description| value(name).ok_or(ApiError::invalid_request(description));
    match value("grant_type") {
        None => Err(ApiError::invalid_request("grant_type is required")),
        Some("authorization_code") => Ok(Grant::AuthorizationCode {
            code: required("code", "code is required")?,
            redirect_uri: value("redirect_uri"),
            code_verifier: value("code_verifier"),
        }),
        Some("refresh_token") => Ok(Grant::RefreshToken {
            refresh_token: required("refresh_token", "refresh_token is required")?,
            scope: value("scope"),
        }),
        Some("client_credentials") => Ok(Grant::ClientCredentials {
            scope: value("scope"),
        }),
        Some(_) => Err(ApiError::Protocol {
            code: ErrorCode::UnsupportedGrantType,
            description: "the grant type is not supported",
        }),
    }
}

/// Authenticates the client. Its right credentials are always accepted: what repeated
/// failures limit is the address they come from (10 a minute, then 429), never the
/// client they name, so a third party cannot lock a client out.
async fn authenticate<S, R, C>(
    app: &AppState<S, R, C>,
    ctx: &RequestContext,
    auth: &ClientAuth,
) -> Result<AuthenticatedClient, ApiError>
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    match app.oauth.authenticate(auth).await {
        Ok(client) => Ok(client),
        Err(OAuthError::Protocol {
            code: ErrorCode::InvalidClient,
            ..
        }) => {
            let source = AttemptKey::Source(ctx.ip());
            let now = app.oauth.clock.now();
            let policy = app.limits.source;
            let verdict = limits::verdict(app.attempts.as_ref(), &source, policy, now).await;
            if let Some(retry_after) = limits::retry_after(verdict) {
                app.metrics.record_rate_limited();
                return Err(ApiError::RateLimited { retry_after });
            }
            limits::record_failure(app.attempts.as_ref(), &source, policy, now).await;
            Err(ApiError::invalid_client())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_in: u32,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<&'a str>,
}

impl<'a> From<&'a TokenResponse> for TokenBody<'a> {
    fn from(t: &'a TokenResponse) -> Self {
        TokenBody {
            access_token: &t.access_token,
            token_type: t.token_type,
            expires_in: t.expires_in,
            scope: &t.scope,
            refresh_token: t.refresh_token.as_deref(),
            id_token: t.id_token.as_deref(),
        }
    }
}

/// `POST /token`.
pub async fn token<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    match issue(&app, &ctx, &headers, &body).await {
        Ok(tokens) => Json(TokenBody::from(&tokens)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn issue<S, R, C>(
    app: &AppState<S, R, C>,
    ctx: &RequestContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<TokenResponse, ApiError>
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let form = read_form(headers, body)?;
    let auth = client_auth::presented(headers, &form)?;
    let grant = grant(&form)?;
    let client = authenticate(app, ctx, &auth).await?;
    let meta = ctx.meta();
    let oauth = &app.oauth;
    let tokens = match grant {
        Grant::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            oauth
                .exchange_code(&client, code, redirect_uri, code_verifier, &meta)
                .await
        }
        Grant::RefreshToken {
            refresh_token,
            scope,
        } => oauth.refresh(&client, refresh_token, scope, &meta).await,
        Grant::ClientCredentials { scope } => oauth.client_credentials(&client, scope, &meta).await,
    };
    Ok(tokens?)
}

/// `POST /revoke`.
pub async fn revoke<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let result = async {
        let form = read_form(&headers, &body)?;
        let auth = client_auth::presented(&headers, &form)?;
        let token = required_token(&form)?;
        let client = authenticate(&app, &ctx, &auth).await?;
        let hint = form.field("token_type_hint").value();
        app.oauth.revoke(&client, token, hint, &ctx.meta()).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match result {
        // RFC 7009 §2.2: 200 whether or not there was anything to revoke.
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /introspect`.
pub async fn introspect<S, R, C>(
    State(app): State<Arc<AppState<S, R, C>>>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    S: EventStore + Readiness,
    R: ReadModels,
    C: Clock,
{
    let result = async {
        let form = read_form(&headers, &body)?;
        let auth = client_auth::presented(&headers, &form)?;
        // Only confidential callers (resource servers) may ask: a client id alone
        // proves nothing.
        if matches!(auth, ClientAuth::Public { .. }) {
            return Err(ApiError::invalid_client());
        }
        let token = required_token(&form)?;
        let caller = authenticate(&app, &ctx, &auth).await?;
        Ok(app.oauth.introspect(&caller, token).await?)
    }
    .await;
    match result {
        Ok(introspection) => Json(IntrospectionBody::from(&introspection)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn required_token(form: &Params) -> Result<&str, ApiError> {
    match form.field("token") {
        Field::Value(token) => Ok(token),
        Field::Absent | Field::Repeated => Err(ApiError::invalid_request("token is required")),
    }
}

/// RFC 7662 §2.2. Inactive tokens say nothing more than that.
#[derive(Serialize)]
#[serde(untagged)]
enum IntrospectionBody<'a> {
    Inactive {
        active: bool,
    },
    Active {
        active: bool,
        scope: &'a str,
        client_id: &'a str,
        token_type: &'a str,
        exp: i64,
        iat: i64,
        iss: &'a str,
        sub: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        username: Option<&'a str>,
    },
}

impl<'a> From<&'a Introspection> for IntrospectionBody<'a> {
    fn from(i: &'a Introspection) -> Self {
        match i {
            Introspection::Inactive => IntrospectionBody::Inactive { active: false },
            Introspection::Active {
                scope,
                client_id,
                token_type,
                exp,
                iat,
                iss,
                sub,
                username,
            } => IntrospectionBody::Active {
                active: true,
                scope,
                client_id,
                token_type,
                exp: *exp,
                iat: *iat,
                iss,
                sub,
                username: username.as_deref(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Params {
        Params::parse(s.as_bytes()).unwrap()
    }

    fn code_of(e: ApiError) -> &'static str {
        match e {
            ApiError::Protocol { code, .. } => code.as_str(),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn reads_each_grant_type() {
        assert_eq!(
            grant(&form("grant_type=authorization_code&code=c&redirect_uri=r")).unwrap(),
            Grant::AuthorizationCode {
                code: "c",
                redirect_uri: Some("r"),
                code_verifier: None
            }
        );
        assert_eq!(
            grant(&form("grant_type=refresh_token&refresh_token=t&scope=a+b")).unwrap(),
            Grant::RefreshToken {
                refresh_token: "t",
                scope: Some("a b")
            }
        );
        assert_eq!(
            grant(&form("grant_type=client_credentials")).unwrap(),
            Grant::ClientCredentials { scope: None }
        );
    }

    #[test]
    fn refuses_missing_and_unknown_grants() {
        assert_eq!(code_of(grant(&form("")).unwrap_err()), "invalid_request");
        assert_eq!(
            code_of(grant(&form("grant_type=")).unwrap_err()),
            "invalid_request"
        );
        for g in ["password", "implicit", "urn:x", "AUTHORIZATION_CODE"] {
            let e = grant(&form(&format!("grant_type={g}"))).unwrap_err();
            assert_eq!(code_of(e), "unsupported_grant_type", "{g}");
        }
        let e = grant(&form("grant_type=authorization_code")).unwrap_err();
        assert_eq!(code_of(e), "invalid_request");
        let e = grant(&form("grant_type=refresh_token")).unwrap_err();
        assert_eq!(code_of(e), "invalid_request");
    }

    #[test]
    fn inactive_introspection_is_only_active_false() {
        let body =
            serde_json::to_string(&IntrospectionBody::from(&Introspection::Inactive)).unwrap();
        assert_eq!(body, r#"{"active":false}"#);
    }
}
