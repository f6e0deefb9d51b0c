//! The OAuth 2.0 use cases behind the HTTP endpoints. Each one loads what it needs,
//! lets the domain decide, and appends; the read models it queries are maintained in the
//! same transaction as the append, so a token handed out introspects active at once.

use std::collections::HashMap;
use std::sync::OnceLock;

use uuid::Uuid;
use valet_domain::client::{ClientKind, ScopeError};
use valet_domain::code::{self, RedirectUriPresence};
use valet_domain::grant::{self, AccessTokenIssue, GrantOrigin, RefreshTokenIssue, Subject};
use valet_domain::{
    consent, AccessTokenTtl, ClientId, CodeTtl, EventRef, GrantId, GrantType, PkceChallenge,
    PkceMethod, PkceVerifier, RedirectUri, RefreshTokenTtl, Rejection, RevocationReason, ScopeSet,
    StreamId, Timestamp, TokenHash, UserId, Username,
};

use crate::aggregate::{self as agg, execute, load, Aggregate, ExecuteError};
use crate::clock::Clock;
use crate::log::NewEvent;
use crate::ports::{
    AppendError, EventMetadata, EventStore, ExpectedVersion, StoreError, StreamVersion, StreamWrite,
};
use crate::read::{ReadModels, RefreshStatus};
use crate::secrets::{self, RandomnessError, SecretKind};

/// Server-wide settings of the OAuth use cases.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub access_ttl: AccessTokenTtl,
    pub refresh_ttl: RefreshTokenTtl,
    pub code_ttl: CodeTtl,
}

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
    /// The database (or the OS RNG) failed; the detail is for the log only.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl OAuthError {
    pub const fn protocol(code: ErrorCode, description: &'static str) -> Self {
        OAuthError::Protocol { code, description }
    }

    fn invalid_client() -> Self {
        Self::protocol(ErrorCode::InvalidClient, "client authentication failed")
    }

    fn invalid_grant() -> Self {
        Self::protocol(
            ErrorCode::InvalidGrant,
            "the grant is invalid, expired, revoked or was issued to another client",
        )
    }

    fn invalid_scope() -> Self {
        Self::protocol(
            ErrorCode::InvalidScope,
            "the requested scope is not allowed",
        )
    }

    fn unauthorized_client() -> Self {
        Self::protocol(
            ErrorCode::UnauthorizedClient,
            "the client is not allowed to use this grant type",
        )
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        OAuthError::Unavailable(e.to_string())
    }
}

impl From<RandomnessError> for OAuthError {
    fn from(e: RandomnessError) -> Self {
        OAuthError::Unavailable(e.to_string())
    }
}

impl From<AppendError> for OAuthError {
    fn from(e: AppendError) -> Self {
        OAuthError::Unavailable(e.to_string())
    }
}

/// Failures of `execute` other than a domain rejection.
fn infrastructure<E>(e: ExecuteError<E>) -> OAuthError {
    match e {
        ExecuteError::Rejected { .. } => OAuthError::Unavailable("unexpected rejection".into()),
        ExecuteError::Contention(n) => {
            OAuthError::Unavailable(format!("gave up after {n} conflicting attempts"))
        }
        ExecuteError::Store(e) => e.into(),
        ExecuteError::Decode(e) => {
            tracing::error!(error = %e, "an event in the log cannot be decoded");
            OAuthError::Unavailable(e.to_string())
        }
    }
}

/// Who is asking, recorded in every event's metadata.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
}

impl RequestMeta {
    pub fn metadata(&self, actor: String) -> EventMetadata {
        EventMetadata {
            actor: Some(actor),
            client_ip: self.client_ip.clone(),
            request_id: self.request_id.clone(),
            correlation_id: None,
        }
    }
}

/// How a client presented itself at the token, revocation or introspection endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    Secret {
        client_id: String,
        secret: String,
    },
    /// A public client: client_id only.
    Public {
        client_id: String,
    },
}

/// A client whose credentials checked out, with its current state.
#[derive(Debug, Clone)]
pub struct AuthenticatedClient {
    pub state: valet_domain::client::State,
    /// The client stream's version when it was authenticated.
    pub version: StreamVersion,
}

impl AuthenticatedClient {
    pub fn client(&self) -> &valet_domain::client::Client {
        self.state
            .client()
            .expect("an authenticated client is registered")
    }

    pub fn id(&self) -> &ClientId {
        &self.client().client_id
    }

    pub fn is_confidential(&self) -> bool {
        matches!(self.client().kind, ClientKind::Confidential { .. })
    }
}

/// The successful /token response (RFC 6749 §5.1).
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u32,
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// RFC 7662 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    Inactive,
    Active {
        scope: String,
        client_id: String,
        token_type: &'static str,
        exp: i64,
        iat: i64,
        iss: String,
        sub: Option<String>,
        username: Option<String>,
    },
}

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
}

/// Why an authorization request was refused, and where the answer goes.
#[derive(Debug, Clone)]
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
    Unavailable(String),
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    pub user_id: UserId,
    pub username: Username,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("unknown user or wrong password")]
    InvalidCredentials,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

/// The use cases, over an event store, the read models and a clock.
pub struct OAuth<S, R, C> {
    pub store: S,
    pub reads: R,
    pub clock: C,
    pub settings: Settings,
    clients: ClientCache,
}

/// Client states recently loaded, so that every token and introspection request does
/// not replay the client's stream. Entries live for `CLIENT_CACHE_TTL`; issuing a token
/// also asserts the client stream's version in the same transaction, so a client
/// disabled meanwhile gets nothing new. Unknown ids are cached too: a hit must not tell
/// a registered client from an unknown one by its timing.
#[derive(Default)]
struct ClientCache {
    entries: std::sync::RwLock<HashMap<String, CachedClient>>,
}

#[derive(Clone)]
struct CachedClient {
    loaded: std::time::Instant,
    state: valet_domain::client::State,
    version: StreamVersion,
}

/// How long a loaded client state is trusted for authentication.
pub const CLIENT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
const CLIENT_CACHE_LIMIT: usize = 10_000;

impl ClientCache {
    fn get(&self, id: &str) -> Option<CachedClient> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(id)
            .filter(|c| c.loaded.elapsed() < CLIENT_CACHE_TTL)
            .cloned()
    }

    fn put(&self, id: &str, entry: CachedClient) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CLIENT_CACHE_LIMIT {
            entries.retain(|_, c| c.loaded.elapsed() < CLIENT_CACHE_TTL);
            if entries.len() >= CLIENT_CACHE_LIMIT {
                entries.clear();
            }
        }
        entries.insert(id.to_owned(), entry);
    }

    fn forget(&self, id: &str) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Attempts at a multi-stream write before giving up under contention.
const MAX_ATTEMPTS: usize = 16;

/// Internal marker of a version conflict that the caller retries.
const CODE_CONFLICT: &str = "write conflict";

fn new_events<E: valet_domain::DomainEvent>(
    events: &[E],
    metadata: &EventMetadata,
) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent::from_domain(Uuid::now_v7(), e, metadata.clone()))
        .collect()
}

fn parse_scope(scope: Option<&str>) -> Result<Option<ScopeSet>, OAuthError> {
    scope
        .map(ScopeSet::parse)
        .transpose()
        .map_err(|_| OAuthError::invalid_scope())
}

fn client_actor(client: &ClientId) -> String {
    format!("client:{client}")
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    pub fn new(store: S, reads: R, clock: C, settings: Settings) -> Self {
        OAuth {
            store,
            reads,
            clock,
            settings,
            clients: ClientCache::default(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    async fn client_state(
        &self,
        client_id: &str,
    ) -> Result<valet_domain::client::State, OAuthError> {
        Ok(self.cached_client(client_id).await?.state)
    }

    async fn cached_client(&self, client_id: &str) -> Result<CachedClient, OAuthError> {
        if let Some(hit) = self.clients.get(client_id) {
            return Ok(hit);
        }
        let loaded = match ClientId::parse(client_id) {
            Ok(id) => {
                let loaded = load::<agg::Client, S>(&self.store, &StreamId::client(&id))
                    .await
                    .map_err(infrastructure)?;
                CachedClient {
                    loaded: std::time::Instant::now(),
                    state: loaded.state,
                    version: loaded.version,
                }
            }
            // Same work as for an unknown client: the answer must not tell them apart.
            Err(_) => CachedClient {
                loaded: std::time::Instant::now(),
                state: Default::default(),
                version: StreamVersion::EMPTY,
            },
        };
        self.clients.put(client_id, loaded.clone());
        Ok(loaded)
    }

    /// A write that must not land if the client changed (e.g. was disabled) since it was
    /// authenticated: asserts the version the authentication saw.
    fn client_unchanged(&self, client: &AuthenticatedClient) -> StreamWrite {
        StreamWrite {
            stream: StreamId::client(client.id()),
            expected: ExpectedVersion::from_loaded(client.version),
            events: Vec::new(),
        }
    }

    /// RFC 6749 §2.3: the client's credentials, checked in constant time. Unknown client,
    /// wrong secret and disabled client all fail the same way.
    pub async fn authenticate(&self, auth: &ClientAuth) -> Result<AuthenticatedClient, OAuthError> {
        match auth {
            ClientAuth::Secret { client_id, secret } => {
                let CachedClient { state, version, .. } = self.cached_client(client_id).await?;
                if state.verify_secret(&TokenHash::of(secret)) {
                    Ok(AuthenticatedClient { state, version })
                } else {
                    Err(OAuthError::invalid_client())
                }
            }
            ClientAuth::Public { client_id } => {
                let CachedClient { state, version, .. } = self.cached_client(client_id).await?;
                if state.is_active() && matches!(state.kind(), Some(ClientKind::Public)) {
                    Ok(AuthenticatedClient { state, version })
                } else {
                    Err(OAuthError::invalid_client())
                }
            }
        }
    }

    fn access_token(
        &self,
        scope: ScopeSet,
        now: Timestamp,
    ) -> Result<(String, AccessTokenIssue), OAuthError> {
        let secret = secrets::generate(SecretKind::AccessToken)?;
        Ok((
            secret.raw,
            AccessTokenIssue {
                hash: secret.hash,
                scope,
                issued_at: now,
                expires_at: now.plus_seconds(self.settings.access_ttl.seconds()),
            },
        ))
    }

    fn refresh_token(&self, now: Timestamp) -> Result<(String, RefreshTokenIssue), OAuthError> {
        let secret = secrets::generate(SecretKind::RefreshToken)?;
        Ok((
            secret.raw,
            RefreshTokenIssue {
                hash: secret.hash,
                issued_at: now,
                expires_at: now.plus_seconds(self.settings.refresh_ttl.seconds()),
            },
        ))
    }

    /// RFC 6749 §4.4: a token for the client itself, as a one-token grant.
    pub async fn client_credentials(
        &self,
        client: &AuthenticatedClient,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.state.allows_grant(GrantType::ClientCredentials) {
            return Err(OAuthError::unauthorized_client());
        }
        let requested = parse_scope(scope)?;
        let scope = client
            .state
            .grantable_scope(requested.as_ref())
            .map_err(|_| OAuthError::invalid_scope())?;
        let now = self.now();
        let (raw, access) = self.access_token(scope.clone(), now)?;
        let grant_id = GrantId::new(Uuid::now_v7());
        let command = grant::Command::Issue {
            grant_id,
            client_id: client.id().clone(),
            subject: None,
            scope: scope.clone(),
            origin: GrantOrigin::ClientCredentials,
            access,
            refresh: None,
            at: now,
        };
        // A fresh grant id: nothing to load, nothing to retry.
        let events = agg::Grant::decide(&Default::default(), command)
            .map_err(|r| OAuthError::Unavailable(format!("grant refused: {:?}", r.error)))?;
        let metadata = meta.metadata(client_actor(client.id()));
        let writes = vec![
            self.client_unchanged(client),
            StreamWrite {
                stream: StreamId::grant(&grant_id),
                expected: ExpectedVersion::NoStream,
                events: new_events(&events, &metadata),
            },
        ];
        self.append_for_client(client, writes).await?;
        Ok(TokenResponse {
            access_token: raw,
            token_type: "Bearer",
            expires_in: self.settings.access_ttl.seconds(),
            refresh_token: None,
            scope: scope.to_string(),
        })
    }

    /// RFC 6749 §4.1.3 with RFC 7636: redeem a code once. The redemption and the new
    /// grant are one atomic append; a second redemption revokes that grant (§10.5).
    pub async fn exchange_code(
        &self,
        client: &AuthenticatedClient,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.state.allows_grant(GrantType::AuthorizationCode) {
            return Err(OAuthError::unauthorized_client());
        }
        let verifier = code_verifier
            .map(PkceVerifier::parse)
            .transpose()
            .map_err(|_| {
                OAuthError::protocol(ErrorCode::InvalidRequest, "malformed code_verifier")
            })?;
        let code_hash = TokenHash::of(code);
        let code_stream = StreamId::code(&code_hash);
        let metadata = meta.metadata(client_actor(client.id()));
        let now = self.now();
        for _ in 0..MAX_ATTEMPTS {
            let loaded = load::<agg::Code, S>(&self.store, &code_stream)
                .await
                .map_err(infrastructure)?;
            let command = code::Command::Redeem {
                client_id: client.id().clone(),
                redirect_uri: redirect_uri.map(str::to_owned),
                verifier: verifier.clone(),
                at: now,
            };
            let redeemed = match agg::Code::decide(&loaded.state, command) {
                Ok(events) => events,
                Err(Rejection { events, .. }) => {
                    if !events.is_empty() {
                        self.record_code_replay(&code_stream, &loaded, &events, &metadata, meta)
                            .await?;
                    }
                    return Err(OAuthError::invalid_grant());
                }
            };
            let issued = loaded
                .state
                .issued()
                .ok_or_else(OAuthError::invalid_grant)?;
            let (access_raw, access) = self.access_token(issued.scope.clone(), now)?;
            let refresh = if client.state.allows_grant(GrantType::RefreshToken) {
                Some(self.refresh_token(now)?)
            } else {
                None
            };
            let grant_events = agg::Grant::decide(
                &Default::default(),
                grant::Command::Issue {
                    grant_id: issued.grant_id,
                    client_id: client.id().clone(),
                    subject: Some(Subject {
                        user_id: issued.user_id,
                        username: issued.username.clone(),
                    }),
                    scope: issued.scope.clone(),
                    origin: GrantOrigin::AuthorizationCode { code_hash },
                    access,
                    refresh: refresh.as_ref().map(|(_, r)| r.clone()),
                    at: now,
                },
            )
            .map_err(|r| OAuthError::Unavailable(format!("grant refused: {:?}", r.error)))?;
            let writes = vec![
                self.client_unchanged(client),
                StreamWrite {
                    stream: code_stream.clone(),
                    expected: ExpectedVersion::from_loaded(loaded.version),
                    events: new_events(&redeemed, &metadata),
                },
                StreamWrite {
                    stream: StreamId::grant(&issued.grant_id),
                    expected: ExpectedVersion::NoStream,
                    events: new_events(&grant_events, &metadata),
                },
            ];
            match self.append_for_client(client, writes).await {
                Ok(()) => {
                    return Ok(TokenResponse {
                        access_token: access_raw,
                        token_type: "Bearer",
                        expires_in: self.settings.access_ttl.seconds(),
                        refresh_token: refresh.map(|(raw, _)| raw),
                        scope: issued.scope.to_string(),
                    })
                }
                // Someone redeemed it meanwhile: reload, and this becomes a replay.
                Err(OAuthError::Unavailable(reason)) if reason == CODE_CONFLICT => continue,
                Err(e) => return Err(e),
            }
        }
        Err(OAuthError::Unavailable("code redemption contention".into()))
    }

    /// Appends writes that start with [`client_unchanged`](Self::client_unchanged). If the
    /// client changed since it was authenticated, the cached state is dropped and the
    /// request fails as a client authentication failure would (it is re-checked on the
    /// next request); any other conflict is reported as `CODE_CONFLICT` for the caller
    /// to retry.
    async fn append_for_client(
        &self,
        client: &AuthenticatedClient,
        writes: Vec<StreamWrite>,
    ) -> Result<(), OAuthError> {
        let client_stream = StreamId::client(client.id());
        match self.store.append_all(writes).await {
            Ok(_) => Ok(()),
            Err(AppendError::Conflict { stream, .. }) if stream == client_stream.as_str() => {
                self.clients.forget(client.id().as_str());
                let fresh = self.cached_client(client.id().as_str()).await?;
                if fresh.state.is_active() {
                    // Changed but still active (nothing else can change today): retry
                    // is safe, and rare.
                    Err(OAuthError::Unavailable(CODE_CONFLICT.into()))
                } else {
                    Err(OAuthError::invalid_client())
                }
            }
            Err(AppendError::Conflict { .. }) => Err(OAuthError::Unavailable(CODE_CONFLICT.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a replayed code and revokes the grant it produced. Under a burst of
    /// replays only one record may win the stream version; the revocation is idempotent.
    async fn record_code_replay(
        &self,
        code_stream: &StreamId,
        loaded: &agg::Loaded<agg::Code>,
        events: &[code::Event],
        metadata: &EventMetadata,
        meta: &RequestMeta,
    ) -> Result<(), OAuthError> {
        let cause = match self
            .store
            .append(
                code_stream,
                ExpectedVersion::from_loaded(loaded.version),
                new_events(events, metadata),
            )
            .await
        {
            Ok(outcome) => outcome.recorded.first().map(|e| EventRef {
                stream_id: e.stream_id.clone(),
                event_id: e.event_id,
            }),
            Err(AppendError::Conflict { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(grant_id) = loaded.state.grant_id() {
            self.revoke_grant(
                grant_id,
                RevocationReason::CodeReplay,
                cause,
                meta,
                "system",
            )
            .await?;
        }
        Ok(())
    }

    /// Revokes a whole grant (idempotent; unknown grants are ignored).
    pub async fn revoke_grant(
        &self,
        grant_id: GrantId,
        reason: RevocationReason,
        cause: Option<EventRef>,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<bool, OAuthError> {
        let command = grant::Command::RevokeGrant {
            reason,
            cause,
            at: self.now(),
        };
        match execute::<agg::Grant, S>(
            &self.store,
            &StreamId::grant(&grant_id),
            command,
            &meta.metadata(actor.to_owned()),
        )
        .await
        {
            Ok(executed) => Ok(!executed.events.is_empty()),
            Err(ExecuteError::Rejected { .. }) => Ok(false),
            Err(e) => Err(infrastructure(e)),
        }
    }

    /// RFC 6749 §6 with rotation: the presented refresh token is spent, a new pair is
    /// issued; a spent token coming back revokes the grant (RFC 9700 §4.14).
    pub async fn refresh(
        &self,
        client: &AuthenticatedClient,
        refresh_token: &str,
        scope: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<TokenResponse, OAuthError> {
        if !client.state.allows_grant(GrantType::RefreshToken) {
            return Err(OAuthError::unauthorized_client());
        }
        let requested = parse_scope(scope)?;
        // A refresh extends a grant: check the client afresh rather than from the cache
        // (a client disabled a moment ago must not renew its tokens).
        self.clients.forget(client.id().as_str());
        if !self
            .cached_client(client.id().as_str())
            .await?
            .state
            .is_active()
        {
            return Err(OAuthError::invalid_client());
        }
        let presented = TokenHash::of(refresh_token);
        let Some(view) = self.reads.refresh_token(&presented).await? else {
            return Err(OAuthError::invalid_grant());
        };
        if &view.client_id != client.id() {
            return Err(OAuthError::invalid_grant());
        }
        let now = self.now();
        let (access_raw, access) = self.access_token(view.scope.clone(), now)?;
        let (refresh_raw, refresh) = self.refresh_token(now)?;
        let command = grant::Command::Refresh {
            client_id: client.id().clone(),
            presented,
            requested_scope: requested,
            access,
            refresh,
            at: now,
        };
        let metadata = meta.metadata(client_actor(client.id()));
        match execute::<agg::Grant, S>(
            &self.store,
            &StreamId::grant(&view.grant_id),
            command,
            &metadata,
        )
        .await
        {
            Ok(executed) => {
                let scope = executed
                    .events
                    .iter()
                    .find_map(|(_, e)| match e {
                        grant::Event::TokensRefreshed { access, .. } => Some(access.scope.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| OAuthError::Unavailable("refresh produced no tokens".into()))?;
                Ok(TokenResponse {
                    access_token: access_raw,
                    token_type: "Bearer",
                    expires_in: self.settings.access_ttl.seconds(),
                    refresh_token: Some(refresh_raw),
                    scope: scope.to_string(),
                })
            }
            Err(ExecuteError::Rejected { error, .. }) => Err(match error {
                grant::Error::InvalidScope => OAuthError::invalid_scope(),
                _ => OAuthError::invalid_grant(),
            }),
            Err(e) => Err(infrastructure(e)),
        }
    }

    /// RFC 7009. Unknown tokens and other clients' tokens are answered with success and
    /// left alone; a refresh token takes its whole grant with it.
    pub async fn revoke(
        &self,
        client: &AuthenticatedClient,
        token: &str,
        token_type_hint: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<(), OAuthError> {
        let hash = TokenHash::of(token);
        let refresh_first = token_type_hint == Some("refresh_token");
        let actor = client_actor(client.id());
        for look_at_refresh in [refresh_first, !refresh_first] {
            if look_at_refresh {
                if let Some(view) = self.reads.refresh_token(&hash).await? {
                    if &view.client_id == client.id() {
                        self.revoke_grant(
                            view.grant_id,
                            RevocationReason::ClientRequest,
                            None,
                            meta,
                            &actor,
                        )
                        .await?;
                    }
                    return Ok(());
                }
            } else if let Some(view) = self.reads.access_token(&hash).await? {
                if &view.client_id == client.id() && !view.revoked {
                    let command = grant::Command::RevokeAccessToken {
                        hash,
                        reason: RevocationReason::ClientRequest,
                        at: self.now(),
                    };
                    match execute::<agg::Grant, S>(
                        &self.store,
                        &StreamId::grant(&view.grant_id),
                        command,
                        &meta.metadata(actor.clone()),
                    )
                    .await
                    {
                        Ok(_) | Err(ExecuteError::Rejected { .. }) => {}
                        Err(e) => return Err(infrastructure(e)),
                    }
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// RFC 7662, for confidential callers (resource servers).
    pub async fn introspect(
        &self,
        caller: &AuthenticatedClient,
        token: &str,
    ) -> Result<Introspection, OAuthError> {
        if !caller.is_confidential() {
            return Err(OAuthError::invalid_client());
        }
        let hash = TokenHash::of(token);
        let now = self.now();
        if let Some(view) = self.reads.access_token(&hash).await? {
            if view.revoked || now >= view.expires_at {
                return Ok(Introspection::Inactive);
            }
            return Ok(Introspection::Active {
                scope: view.scope.to_string(),
                client_id: view.client_id.to_string(),
                token_type: "access_token",
                exp: view.expires_at.as_unix_seconds(),
                iat: view.issued_at.as_unix_seconds(),
                iss: self.settings.issuer.clone(),
                sub: view.user_id.map(|u| u.to_string()),
                username: view.username.map(|u| u.to_string()),
            });
        }
        if let Some(view) = self.reads.refresh_token(&hash).await? {
            if view.status != RefreshStatus::Current || now >= view.expires_at {
                return Ok(Introspection::Inactive);
            }
            return Ok(Introspection::Active {
                scope: view.scope.to_string(),
                client_id: view.client_id.to_string(),
                token_type: "refresh_token",
                exp: view.expires_at.as_unix_seconds(),
                iat: view.issued_at.as_unix_seconds(),
                iss: self.settings.issuer.clone(),
                sub: view.user_id.map(|u| u.to_string()),
                username: view.username.map(|u| u.to_string()),
            });
        }
        Ok(Introspection::Inactive)
    }

    /// RFC 6749 §4.1.1 / §4.1.2.1 and RFC 7636 §4.4.1: checks the request in the order
    /// that decides where an error may be sent. Client and redirect URI problems are
    /// never redirected.
    pub async fn validate_authorization(
        &self,
        params: &AuthorizeParams,
    ) -> Result<AuthorizationRequest, AuthorizeRejection> {
        let unavailable = |e: OAuthError| AuthorizeRejection::Unavailable(e.to_string());
        let Some(client_id) = params.client_id.as_deref() else {
            return Err(AuthorizeRejection::NoRedirect {
                reason: "The request names no client.",
            });
        };
        let state = self.client_state(client_id).await.map_err(unavailable)?;
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
        })
    }

    /// Checks a username and password (argon2id on a blocking thread). Unknown users
    /// cost the same as wrong passwords.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<AuthenticatedUser, LoginError> {
        let unavailable = |e: StoreError| LoginError::Unavailable(e.to_string());
        let found = match Username::parse(username) {
            Ok(name) => self.reads.user_by_name(&name).await.map_err(unavailable)?,
            Err(_) => None,
        };
        let stored = found
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_password_hash().to_owned());
        let password = password.to_owned();
        let matches =
            tokio::task::spawn_blocking(move || secrets::verify_password(&password, &stored))
                .await
                .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        match found {
            Some(user) if matches && user.active && user.password_hash.is_some() => {
                Ok(AuthenticatedUser {
                    user_id: user.user_id,
                    username: user.username,
                })
            }
            _ => Err(LoginError::InvalidCredentials),
        }
    }

    /// The user behind a session, if still registered and active.
    pub async fn active_user(
        &self,
        user_id: UserId,
    ) -> Result<Option<AuthenticatedUser>, OAuthError> {
        let loaded = load::<agg::User, S>(&self.store, &StreamId::user(&user_id))
            .await
            .map_err(infrastructure)?;
        Ok(loaded
            .state
            .user()
            .filter(|_| loaded.state.is_active())
            .map(|u| AuthenticatedUser {
                user_id: u.user_id,
                username: u.username.clone(),
            }))
    }

    /// Whether the user already approved (a superset of) this request's scope.
    pub async fn consent_covers(
        &self,
        user: &AuthenticatedUser,
        request: &AuthorizationRequest,
    ) -> Result<bool, OAuthError> {
        let stream = StreamId::consent(&user.user_id, &request.client_id);
        let loaded = load::<agg::Consent, S>(&self.store, &stream)
            .await
            .map_err(infrastructure)?;
        Ok(loaded.state.covers(&request.scope))
    }

    /// The user approves: remember the consent and issue a single-use code.
    pub async fn approve(
        &self,
        user: &AuthenticatedUser,
        request: &AuthorizationRequest,
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
        execute::<agg::Consent, S>(
            &self.store,
            &StreamId::consent(&user.user_id, &request.client_id),
            consent,
            &metadata,
        )
        .await
        .map_err(infrastructure)?;

        let code = secrets::generate(SecretKind::AuthorizationCode)?;
        let command = code::Command::Issue {
            code_hash: code.hash,
            client_id: request.client_id.clone(),
            user_id: user.user_id,
            username: user.username.clone(),
            redirect_uri: request.redirect_uri.clone(),
            redirect_uri_in_request: request.redirect_uri_in_request,
            scope: request.scope.clone(),
            pkce: request.pkce.clone(),
            grant_id: GrantId::new(Uuid::now_v7()),
            at: now,
            ttl: self.settings.code_ttl,
        };
        let events = agg::Code::decide(&Default::default(), command)
            .map_err(|r| OAuthError::Unavailable(format!("code refused: {:?}", r.error)))?;
        self.store
            .append(
                &StreamId::code(&code.hash),
                ExpectedVersion::NoStream,
                new_events(&events, &metadata),
            )
            .await?;
        Ok(code.raw)
    }
}

/// A real argon2id hash of a random password, verified against when the user is
/// unknown so that both cases take the same time.
fn dummy_password_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        secrets::hash_password(&Uuid::now_v7().to_string()).unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$R3B4Y1RyaWVkVG9HdWVzc0l0QnV0Tm9wZQ"
                .to_owned()
        })
    })
}
