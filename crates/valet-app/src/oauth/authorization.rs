//! RFC 6749 §4.1.1–4.1.2 with RFC 7636: validating an authorization request, consent,
//! and issuing the code once the user approves.

use valet_domain::client::{ClientKind, ScopeError};
use valet_domain::code::{self, RedirectUriPresence};
use valet_domain::oidc::{Nonce, Prompt, SessionId};
use valet_domain::{
    consent, ClientId, GrantId, GrantType, PkceChallenge, PkceMethod, RedirectUri, ScopeSet,
    StreamId, Timestamp,
};

use super::{AuthenticatedUser, ErrorCode, OAuth, OAuthError, RequestMeta, Unavailable};
use crate::aggregate::{self as agg, execute, load, Aggregate};
use crate::clock::Clock;
use crate::ports::{EventStore, ExpectedVersion};
use crate::read::ReadModels;
use crate::secrets::{self, SecretKind};

/// The parameters of GET /authorize, as sent (each at most once: the HTTP layer refuses
/// repeated parameters before this point).
#[derive(Debug, Clone, Default)]
pub struct AuthorizeParams {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    /// OpenID Connect: copied into the id_token.
    pub nonce: Option<String>,
    /// OpenID Connect: which pages must or must not be shown.
    pub prompt: Option<String>,
    /// OpenID Connect: the oldest sign-in accepted, in seconds.
    pub max_age: Option<String>,
    /// Only `query` (the default for `code`) is supported.
    pub response_mode: Option<String>,
    /// Request objects (Core §6) are not supported.
    pub request: Option<String>,
    pub request_uri: Option<String>,
}

/// A sign-in session: which, and when the user signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignIn {
    pub session: SessionId,
    pub at: Timestamp,
}

/// What the authorization endpoint does next for a validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    SignIn,
    AskConsent,
    IssueCode,
    /// Answer the client with this error (`prompt=none` and a page would be needed).
    Refuse(ErrorCode),
}

/// Why an authorization request was refused, and where the answer goes.
#[derive(Debug)]
pub enum AuthorizeRejection {
    /// The client or redirect URI cannot be trusted: show an error page, never redirect.
    NoRedirect {
        reason: &'static str,
    },
    /// Tell the client through its (verified) redirect URI.
    Redirect {
        redirect_uri: String,
        code: ErrorCode,
        description: &'static str,
        state: Option<String>,
    },
    Unavailable(Unavailable),
}

/// A validated authorization request, ready for login and consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub client_id: ClientId,
    pub client_name: String,
    pub redirect_uri: RedirectUri,
    pub redirect_uri_in_request: RedirectUriPresence,
    pub scope: ScopeSet,
    pub state: Option<String>,
    pub pkce: Option<PkceChallenge>,
    pub nonce: Option<Nonce>,
    pub prompt: Prompt,
    pub max_age: Option<u32>,
}

impl AuthorizationRequest {
    /// The next step for a user signed in at `signed_in_at` (`None`: no session, or a
    /// disabled user) whose consent covers the request or not, at `now`. `prompt=login`
    /// and a sign-in older than `max_age` count as no session.
    pub fn step(
        &self,
        signed_in_at: Option<Timestamp>,
        consent: ConsentState,
        now: Timestamp,
    ) -> Step {
        let fresh = signed_in_at.filter(|at| {
            !self.prompt.login
                // In whole seconds, as `auth_time` is.
                && self.max_age.is_none_or(|max| {
                    now.as_unix_seconds() - at.as_unix_seconds() <= i64::from(max)
                })
        });
        match (fresh, consent) {
            (None, _) if self.prompt.none => Step::Refuse(ErrorCode::LoginRequired),
            (None, _) => Step::SignIn,
            (Some(_), _) if self.prompt.consent => Step::AskConsent,
            (Some(_), ConsentState::Covered) => Step::IssueCode,
            (Some(_), ConsentState::Needed) if self.prompt.none => {
                Step::Refuse(ErrorCode::ConsentRequired)
            }
            (Some(_), ConsentState::Needed) => Step::AskConsent,
        }
    }
}

/// Whether the user's earlier consent covers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    Covered,
    Needed,
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Checks the request in the order that decides where an error may be sent: client
    /// and redirect URI problems are never redirected.
    pub async fn validate_authorization(
        &self,
        params: &AuthorizeParams,
    ) -> Result<AuthorizationRequest, AuthorizeRejection> {
        let Some(client_id) = params.client_id.as_deref() else {
            return Err(AuthorizeRejection::NoRedirect {
                reason: "The request names no client.",
            });
        };
        let state = self
            .client_state(client_id)
            .await
            .map_err(AuthorizeRejection::Unavailable)?;
        let Some(client) = state.client().filter(|_| state.is_active()) else {
            return Err(AuthorizeRejection::NoRedirect {
                reason: "The application that sent you here is not registered or is disabled.",
            });
        };
        let redirect_uri = state
            .resolve_redirect_uri(params.redirect_uri.as_deref())
            .map_err(|_| AuthorizeRejection::NoRedirect {
                reason: "The application asked to send you to an address it did not register.",
            })?;
        let reject = |code: ErrorCode, description: &'static str| AuthorizeRejection::Redirect {
            redirect_uri: redirect_uri.as_str().to_owned(),
            code,
            description,
            state: params.state.clone(),
        };
        match params.response_type.as_deref() {
            None => {
                return Err(reject(
                    ErrorCode::InvalidRequest,
                    "response_type is required",
                ))
            }
            Some("code") => {}
            Some(_) => {
                return Err(reject(
                    ErrorCode::UnsupportedResponseType,
                    "only response_type=code is supported",
                ))
            }
        }
        if params.request.is_some() {
            return Err(reject(
                ErrorCode::RequestNotSupported,
                "request objects are not supported",
            ));
        }
        if params.request_uri.is_some() {
            return Err(reject(
                ErrorCode::RequestUriNotSupported,
                "request_uri is not supported",
            ));
        }
        if !matches!(params.response_mode.as_deref(), None | Some("query")) {
            return Err(reject(
                ErrorCode::InvalidRequest,
                "only response_mode=query is supported",
            ));
        }
        let prompt = params
            .prompt
            .as_deref()
            .map(Prompt::parse)
            .transpose()
            .map_err(|_| {
                reject(
                    ErrorCode::InvalidRequest,
                    "prompt=none stands alone; values: none, login, consent, select_account",
                )
            })?
            .unwrap_or_default();
        let max_age = params
            .max_age
            .as_deref()
            .map(str::parse::<u32>)
            .transpose()
            .map_err(|_| reject(ErrorCode::InvalidRequest, "max_age is a number of seconds"))?;
        if !state.allows_grant(GrantType::AuthorizationCode) {
            return Err(reject(
                ErrorCode::UnauthorizedClient,
                "the client is not allowed to use the authorization code grant",
            ));
        }
        let requested = params
            .scope
            .as_deref()
            .map(ScopeSet::parse)
            .transpose()
            .map_err(|_| reject(ErrorCode::InvalidScope, "the requested scope is malformed"))?;
        let scope = state
            .grantable_scope(requested.as_ref())
            .map_err(|e| match e {
                ScopeError::UnknownClient | ScopeError::Empty | ScopeError::NotAllowed(_) => {
                    reject(
                        ErrorCode::InvalidScope,
                        "the requested scope is not allowed",
                    )
                }
            })?;
        let pkce =
            match (
                params.code_challenge.as_deref(),
                params.code_challenge_method.as_deref(),
            ) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(reject(
                        ErrorCode::InvalidRequest,
                        "code_challenge_method without code_challenge",
                    ))
                }
                // RFC 7636 §4.3: an absent method means "plain", which is refused.
                (Some(challenge), method) => {
                    PkceMethod::parse(method.unwrap_or("plain")).map_err(|_| {
                        reject(
                            ErrorCode::InvalidRequest,
                            "code_challenge_method must be S256",
                        )
                    })?;
                    Some(PkceChallenge::parse(challenge).map_err(|_| {
                        reject(ErrorCode::InvalidRequest, "malformed code_challenge")
                    })?)
                }
            };
        let nonce = params
            .nonce
            .as_deref()
            .map(Nonce::parse)
            .transpose()
            .map_err(|_| reject(ErrorCode::InvalidRequest, "malformed nonce"))?;
        if pkce.is_none() && matches!(client.kind, ClientKind::Public) {
            return Err(reject(
                ErrorCode::InvalidRequest,
                "public clients must send a PKCE S256 code_challenge",
            ));
        }
        Ok(AuthorizationRequest {
            client_id: client.client_id.clone(),
            client_name: client.name.to_string(),
            redirect_uri,
            redirect_uri_in_request: if params.redirect_uri.is_some() {
                RedirectUriPresence::Sent
            } else {
                RedirectUriPresence::Omitted
            },
            scope,
            state: params.state.clone(),
            pkce,
            nonce,
            prompt,
            max_age,
        })
    }

    /// Whether the user already approved (a superset of) this request's scope.
    pub async fn consent_covers(
        &self,
        user: &AuthenticatedUser,
        request: &AuthorizationRequest,
    ) -> Result<bool, OAuthError> {
        let stream = StreamId::consent(&user.user_id, &request.client_id);
        let loaded = load::<agg::Consent, S>(&self.store, &stream).await?;
        Ok(loaded.state.covers(&request.scope))
    }

    /// The user approves: remember the consent and issue a single-use code. `sign_in`:
    /// the session the user signed in with (the id_token's `sid` and `auth_time`).
    pub async fn approve(
        &self,
        user: &AuthenticatedUser,
        request: &AuthorizationRequest,
        sign_in: SignIn,
        meta: &RequestMeta,
    ) -> Result<String, OAuthError> {
        let now = self.now();
        let metadata = meta.metadata(format!("user:{}", user.username));
        let consent = consent::Command::Give {
            user_id: user.user_id,
            client_id: request.client_id.clone(),
            scope: request.scope.clone(),
            at: now,
        };
        let stream = StreamId::consent(&user.user_id, &request.client_id);
        execute::<agg::Consent, S>(&self.store, self.ids.as_ref(), &stream, consent, &metadata)
            .await?;

        let code = secrets::generate(SecretKind::AuthorizationCode, self.random.as_ref())?;
        let command = code::Command::Issue {
            code_hash: code.hash,
            client_id: request.client_id.clone(),
            user_id: user.user_id,
            username: user.username.clone(),
            redirect_uri: request.redirect_uri.clone(),
            redirect_uri_in_request: request.redirect_uri_in_request,
            scope: request.scope.clone(),
            pkce: request.pkce.clone(),
            grant_id: GrantId::new(self.ids.new_id()),
            nonce: request.nonce.clone(),
            auth_time: sign_in.at,
            sid: sign_in.session,
            at: now,
            ttl: self.settings.code_ttl,
        };
        let events = agg::Code::decide(&Default::default(), command)
            .map_err(|r| Unavailable::Refused(r.error.into()))?;
        self.store
            .append(
                &StreamId::code(&code.hash),
                ExpectedVersion::NoStream,
                self.new_events(&events, &metadata),
            )
            .await?;
        Ok(code.raw)
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_unix_millis(1_000_000);

    fn request(prompt: &str, max_age: Option<u32>) -> AuthorizationRequest {
        AuthorizationRequest {
            client_id: ClientId::parse("app").unwrap(),
            client_name: "App".into(),
            redirect_uri: RedirectUri::parse("https://app.example/cb").unwrap(),
            redirect_uri_in_request: RedirectUriPresence::Sent,
            scope: ScopeSet::parse("openid").unwrap(),
            state: None,
            pkce: None,
            nonce: None,
            prompt: Prompt::parse(prompt).unwrap(),
            max_age,
        }
    }

    fn seconds_ago(s: i64) -> Option<Timestamp> {
        Some(Timestamp::from_unix_millis(NOW.as_unix_millis() - s * 1000))
    }

    use ConsentState::{Covered, Needed};

    #[test]
    fn without_prompt_a_session_and_consent_decide() {
        let r = request("", None);
        assert_eq!(r.step(None, Covered, NOW), Step::SignIn);
        assert_eq!(r.step(seconds_ago(5), Needed, NOW), Step::AskConsent);
        assert_eq!(r.step(seconds_ago(5), Covered, NOW), Step::IssueCode);
    }

    #[test]
    fn prompt_none_never_shows_a_page() {
        let r = request("none", None);
        assert_eq!(
            r.step(None, Covered, NOW),
            Step::Refuse(ErrorCode::LoginRequired)
        );
        assert_eq!(
            r.step(seconds_ago(5), Needed, NOW),
            Step::Refuse(ErrorCode::ConsentRequired)
        );
        assert_eq!(r.step(seconds_ago(5), Covered, NOW), Step::IssueCode);
    }

    #[test]
    fn prompt_login_and_consent_ask_again() {
        assert_eq!(
            request("login", None).step(seconds_ago(5), Covered, NOW),
            Step::SignIn
        );
        assert_eq!(
            request("consent", None).step(seconds_ago(5), Covered, NOW),
            Step::AskConsent
        );
    }

    #[test]
    fn a_sign_in_older_than_max_age_signs_in_again() {
        let r = request("", Some(60));
        assert_eq!(r.step(seconds_ago(60), Covered, NOW), Step::IssueCode);
        assert_eq!(r.step(seconds_ago(61), Covered, NOW), Step::SignIn);
        assert_eq!(
            request("none", Some(60)).step(seconds_ago(61), Covered, NOW),
            Step::Refuse(ErrorCode::LoginRequired)
        );
    }
}
