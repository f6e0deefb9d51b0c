//! How the OAuth use cases fail: RFC 6749 error codes for the client, typed causes for
//! the operator's log.

use valet_domain::{code, consent, grant};

use crate::aggregate::ExecuteError;
use crate::entropy::RandomnessError;
use crate::ports::{AppendError, StoreError};
use crate::secrets::PasswordError;

/// RFC 6749 §4.1.2.1 / §5.2 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    AccessDenied,
    /// OpenID Connect Core §3.1.2.6.
    LoginRequired,
    ConsentRequired,
    RequestNotSupported,
    RequestUriNotSupported,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::LoginRequired => "login_required",
            ErrorCode::ConsentRequired => "consent_required",
            ErrorCode::RequestNotSupported => "request_not_supported",
            ErrorCode::RequestUriNotSupported => "request_uri_not_supported",
        }
    }
}

/// A failed OAuth request. Descriptions are fixed strings: they never echo input.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{}: {description}", code.as_str())]
    Protocol {
        code: ErrorCode,
        description: &'static str,
    },
    /// The request was fine, the service could not serve it: `temporarily_unavailable`.
    #[error("temporarily unavailable: {0}")]
    Unavailable(#[from] Unavailable),
}

/// Why a request could not be served. For the operator's log only: never shown to the
/// client, whatever the variant.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// A write that a retry of this request would not fix (a fresh stream that already
    /// exists, an event id drawn twice).
    #[error(transparent)]
    Append(AppendError),
    #[error("gave up after {0} conflicting attempts")]
    Contention(usize),
    /// The domain refused a command the use case had already checked: a bug.
    #[error("unexpected refusal: {0}")]
    Refused(#[from] Refusal),
    /// A command that must record events recorded none.
    #[error("the command recorded nothing")]
    NothingRecorded,
    /// An id_token could not be signed (no active key yet).
    #[error(transparent)]
    Signing(#[from] crate::keys::SignError),
    /// A blocking task (password hashing) panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Blocking(String),
}

/// A domain refusal that a use case should have made impossible.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("grant: {0}")]
    Grant(#[from] grant::Error),
    #[error("code: {0}")]
    Code(#[from] code::Error),
    #[error("consent: {0}")]
    Consent(#[from] consent::Error),
    #[error("user: {0}")]
    User(#[from] valet_domain::user::Error),
    #[error("client: {0}")]
    Client(#[from] valet_domain::client::Error),
    #[error("session: {0}")]
    Session(#[from] valet_domain::session::Error),
    #[error("logout delivery: {0}")]
    Delivery(#[from] valet_domain::backchannel::Error),
}

impl OAuthError {
    pub const fn protocol(code: ErrorCode, description: &'static str) -> Self {
        OAuthError::Protocol { code, description }
    }

    pub(crate) fn invalid_client() -> Self {
        Self::protocol(ErrorCode::InvalidClient, "client authentication failed")
    }

    pub(crate) fn invalid_grant() -> Self {
        Self::protocol(
            ErrorCode::InvalidGrant,
            "the grant is invalid, expired, revoked or was issued to another client",
        )
    }

    pub(crate) fn invalid_scope() -> Self {
        Self::protocol(
            ErrorCode::InvalidScope,
            "the requested scope is not allowed",
        )
    }

    pub(crate) fn unauthorized_client() -> Self {
        Self::protocol(
            ErrorCode::UnauthorizedClient,
            "the client is not allowed to use this grant type",
        )
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        OAuthError::Unavailable(e.into())
    }
}

impl From<RandomnessError> for OAuthError {
    fn from(e: RandomnessError) -> Self {
        OAuthError::Unavailable(e.into())
    }
}

impl From<AppendError> for Unavailable {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Store(e) => Unavailable::Store(e),
            other => Unavailable::Append(other),
        }
    }
}

impl From<AppendError> for OAuthError {
    fn from(e: AppendError) -> Self {
        OAuthError::Unavailable(e.into())
    }
}

/// Failures of `execute` when the domain was not expected to refuse.
impl<E: Into<Refusal>> From<ExecuteError<E>> for Unavailable {
    fn from(e: ExecuteError<E>) -> Self {
        match e {
            ExecuteError::Rejected { error, .. } => Unavailable::Refused(error.into()),
            ExecuteError::Contention(n) => Unavailable::Contention(n),
            ExecuteError::Store(e) => {
                if let StoreError::Undecodable { .. } = &e {
                    tracing::error!(error = %e, "an event in the log cannot be decoded");
                }
                Unavailable::Store(e)
            }
        }
    }
}

impl<E: Into<Refusal>> From<ExecuteError<E>> for OAuthError {
    fn from(e: ExecuteError<E>) -> Self {
        OAuthError::Unavailable(e.into())
    }
}

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("unknown user or wrong password")]
    InvalidCredentials,
    #[error("temporarily unavailable: {0}")]
    Unavailable(#[from] Unavailable),
}
