//! The OAuth 2.0 use cases behind the HTTP endpoints, one module per flow. Each loads
//! what it needs, lets the domain decide, and appends; the read models it queries are
//! maintained in the same transaction as the append, so a token handed out introspects
//! active at once.
//!
//! Time, new ids and random bytes come from ports ([`Clock`], [`Ids`], [`Randomness`]),
//! so every use case runs in unit tests over the in-memory store and read models.

mod authorization;
mod client_auth;
mod client_credentials;
mod code_grant;
mod error;
mod id_token;
mod introspection;
mod login;
mod logout;
mod refresh;
mod revocation;
mod tokens;
mod userinfo;

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use valet_domain::{AccessTokenTtl, ClientId, CodeTtl, RefreshTokenTtl, Timestamp};

use crate::clock::Clock;
use crate::entropy::{Ids, OsRandom, Randomness, UuidV7};
use crate::keys::{JwtSigner, NoKeys};
use crate::log::NewEvent;
use crate::ports::{EventMetadata, EventStore};
use crate::read::ReadModels;
use crate::secrets::PasswordHashing;

pub use authorization::{
    AuthorizationRequest, AuthorizeParams, AuthorizeRejection, ConsentState, SignIn, Step,
};
pub use client_auth::{AuthenticatedClient, ClientAuth, CLIENT_CACHE_TTL};
pub use error::{ErrorCode, LoginError, OAuthError, Refusal, Unavailable};
pub use introspection::Introspection;
pub use login::AuthenticatedUser;
pub use logout::{HintStatus, LogoutError, LogoutParams, LogoutPlan};
pub use userinfo::{UserInfo, UserInfoError};

use client_auth::ClientCache;

/// Server-wide settings of the OAuth use cases.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub access_ttl: AccessTokenTtl,
    pub refresh_ttl: RefreshTokenTtl,
    pub code_ttl: CodeTtl,
}

/// Who is asking, recorded in every event's metadata.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub client_ip: Option<String>,
    /// Who administers, for the admin use cases (a client through the admin API);
    /// `admin:cli` when unset.
    pub admin: Option<crate::admin_api::AdminCaller>,
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

/// The successful /token response (RFC 6749 §5.1).
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u32,
    pub refresh_token: Option<String>,
    pub scope: String,
    /// OpenID Connect: when the grant's scope holds `openid`.
    pub id_token: Option<String>,
}

/// The use cases, over an event store, the read models and a clock.
pub struct OAuth<S, R, C> {
    pub store: S,
    pub reads: R,
    pub clock: C,
    pub settings: Settings,
    ids: Arc<dyn Ids>,
    random: Arc<dyn Randomness>,
    passwords: PasswordHashing,
    /// See `login`: the hash checked when a user is unknown.
    dummy_password: OnceLock<String>,
    clients: ClientCache,
    /// Signs id_tokens and JWT access tokens with the ring's active keys.
    pub(crate) signer: Arc<dyn JwtSigner>,
    /// The `aud` of JWT access tokens; the issuer when unset.
    audience: Option<String>,
    sessions: crate::sessions::SessionPolicy,
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Use cases with UUID v7 ids, the OS CSPRNG and argon2id's recommended cost.
    pub fn new(store: S, reads: R, clock: C, settings: Settings) -> Self {
        OAuth {
            store,
            reads,
            clock,
            settings,
            ids: Arc::new(UuidV7),
            random: Arc::new(OsRandom),
            passwords: PasswordHashing::default(),
            dummy_password: OnceLock::new(),
            clients: ClientCache::default(),
            signer: Arc::new(NoKeys),
            audience: None,
            sessions: crate::sessions::SessionPolicy::default(),
        }
    }

    /// The `aud` of JWT access tokens (RFC 9068 §3: the default resource indicator).
    pub fn with_access_token_audience(mut self, audience: String) -> Self {
        self.audience = Some(audience);
        self
    }

    /// Signs id_tokens and JWT access tokens with `signer` (without one, a request for
    /// `openid` or by a client registered for JWT access tokens fails).
    pub fn with_jwt_signer(mut self, signer: Arc<dyn JwtSigner>) -> Self {
        self.signer = signer;
        self
    }

    pub fn with_ids(mut self, ids: impl Ids) -> Self {
        self.ids = Arc::new(ids);
        self
    }

    pub fn with_randomness(mut self, random: impl Randomness) -> Self {
        self.random = Arc::new(random);
        self
    }

    pub fn with_password_hashing(mut self, passwords: PasswordHashing) -> Self {
        self.passwords = passwords;
        self
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub(crate) fn ids(&self) -> &dyn Ids {
        self.ids.as_ref()
    }

    pub(crate) fn randomness(&self) -> &dyn Randomness {
        self.random.as_ref()
    }

    pub(crate) fn shared_randomness(&self) -> Arc<dyn Randomness> {
        self.random.clone()
    }

    pub(crate) fn password_hashing(&self) -> &PasswordHashing {
        &self.passwords
    }

    /// New events, each with a fresh id.
    fn new_events<E: Clone + Into<valet_domain::Event>>(
        &self,
        events: &[E],
        metadata: &EventMetadata,
    ) -> Vec<NewEvent> {
        events
            .iter()
            .map(|e| NewEvent::new(self.ids.new_id(), e.clone(), metadata.clone()))
            .collect()
    }
}

impl<S, R, C> OAuth<S, R, C> {
    /// How long login sessions last.
    pub fn with_session_policy(mut self, policy: crate::sessions::SessionPolicy) -> Self {
        self.sessions = policy;
        self
    }

    pub fn set_session_policy(&mut self, policy: crate::sessions::SessionPolicy) {
        self.sessions = policy;
    }

    pub fn session_policy(&self) -> crate::sessions::SessionPolicy {
        self.sessions
    }
}

/// The actor recorded for a client's requests.
fn client_actor(client: &ClientId) -> String {
    format!("client:{client}")
}
