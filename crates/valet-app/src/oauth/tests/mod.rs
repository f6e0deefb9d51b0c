//! The use cases, given/when/then, over the in-memory store and read models: given
//! events in the log, when a use case runs, then its answer and the events it recorded.
//! No database, no network; a fixed clock, known ids and known randomness.

mod admin;
mod authorization;
mod client_auth;
mod code_grant;
mod introspection;
mod refresh;
mod revocation;
mod sessions;
mod token;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;
use valet_domain::client::{self, ClientKind};
use valet_domain::{
    user, AccessTokenTtl, ClientId, ClientName, CodeTtl, Event, GrantType, RedirectUri,
    RefreshTokenTtl, ScopeSet, StreamId, Timestamp, TokenHash, UserId, Username,
};

use super::{
    AuthenticatedClient, AuthenticatedUser, AuthorizeParams, ClientAuth, ErrorCode, OAuth,
    OAuthError, RequestMeta, Settings, TokenResponse,
};
use crate::log::{LogCursor, NewEvent};
use crate::memory::{
    CountingRandom, FixedClock, MemoryEventStore, MemoryReadModels, SequentialIds,
};
use crate::ports::{EventMetadata, EventStore, ExpectedVersion, StreamVersion};
use crate::read::ReadModels;
use crate::secrets::PasswordHashing;

/// The moment every test starts at.
pub(super) const T0: i64 = 1_800_000_000_000;
pub(super) const ACCESS_TTL: u32 = 600;
pub(super) const ISSUER: &str = "https://valet.test";
pub(super) const CALLBACK: &str = "https://app.test/cb";

pub(super) type Valet = OAuth<MemoryEventStore, MemoryReadModels, FixedClock>;

/// One test's world: the use cases and what they wrote.
pub(super) struct World {
    pub valet: Valet,
    pub clock: FixedClock,
    /// The log as far as `recorded` has reported it.
    seen: LogCursor,
    /// Ids of given events count down from the top, far from the use cases' (1 up).
    given_ids: u128,
}

impl World {
    pub fn new() -> Self {
        let reads = MemoryReadModels::new();
        let store = MemoryEventStore::with_read_models(reads.clone());
        let clock = FixedClock::at(Timestamp::from_unix_millis(T0));
        let settings = Settings {
            issuer: ISSUER.to_owned(),
            access_ttl: AccessTokenTtl::new(ACCESS_TTL).unwrap(),
            refresh_ttl: RefreshTokenTtl::new(3600).unwrap(),
            code_ttl: CodeTtl::new(60).unwrap(),
        };
        let valet = OAuth::new(store, reads, clock.clone(), settings)
            .with_ids(SequentialIds::default())
            .with_randomness(CountingRandom::default())
            .with_password_hashing(PasswordHashing::minimal_for_tests());
        World {
            valet,
            clock,
            seen: LogCursor::START,
            given_ids: u128::MAX,
        }
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(T0)
    }

    /// Given: `events` appended to `stream` (which must be new).
    pub async fn given(&mut self, stream: StreamId, events: Vec<Event>) {
        let mut events_with_ids = Vec::with_capacity(events.len());
        for event in events {
            self.given_ids -= 1;
            events_with_ids.push(NewEvent::new(
                Uuid::from_u128(self.given_ids),
                event,
                meta(),
            ));
        }
        self.valet
            .store
            .append(&stream, ExpectedVersion::NoStream, events_with_ids)
            .await
            .expect("the given events are appended");
        // Givens are not what a test asserts on.
        self.skip_recorded().await;
    }

    /// Given: `event` happened to an existing stream, after what it holds.
    pub async fn given_later(&mut self, stream: StreamId, event: impl Into<Event>) {
        let version = self.valet.store.read_stream(&stream).await.unwrap().len() as u64;
        self.given_ids -= 1;
        let event = NewEvent::new(Uuid::from_u128(self.given_ids), event, meta());
        self.valet
            .store
            .append(
                &stream,
                ExpectedVersion::Exactly(StreamVersion(version)),
                vec![event],
            )
            .await
            .expect("the given event is appended");
        self.skip_recorded().await;
    }

    /// Given: an administrator disabled the client `name`.
    pub async fn given_disabled_client(&mut self, name: &str) {
        let stream = StreamId::client(&ClientId::parse(name).unwrap());
        let disabled = client::Event::ClientDisabled { at: self.now() };
        self.given_later(stream, disabled).await;
    }

    /// Given: a client registered with `kind`, grant types and scopes; its credentials.
    pub async fn given_client(
        &mut self,
        name: &str,
        kind: Kind,
        grant_types: &[GrantType],
        scopes: &str,
    ) -> ClientAuth {
        let client_id = ClientId::parse(name).unwrap();
        let secret = format!("secret-of-{name}");
        let registered = client::Event::ClientRegistered {
            client_id: client_id.clone(),
            name: ClientName::parse(name).unwrap(),
            kind: match kind {
                Kind::Confidential => ClientKind::Confidential {
                    secret_hash: TokenHash::of(&secret),
                },
                Kind::Public => ClientKind::Public,
            },
            redirect_uris: vec![RedirectUri::parse(CALLBACK).unwrap()],
            grant_types: grant_types.to_vec(),
            scopes: ScopeSet::parse(scopes).unwrap(),
            at: self.now(),
        };
        self.given(StreamId::client(&client_id), vec![registered.into()])
            .await;
        match kind {
            Kind::Confidential => ClientAuth::Secret {
                client_id: name.to_owned(),
                secret,
            },
            Kind::Public => ClientAuth::Public {
                client_id: name.to_owned(),
            },
        }
    }

    /// Given: a user with a password.
    pub async fn given_user(&mut self, name: &str, password: &str) -> AuthenticatedUser {
        let user_id = UserId::new(Uuid::from_u128(0xa11ce + name.len() as u128));
        let username = Username::parse(name).unwrap();
        let registered = user::Event::UserRegistered {
            user_id,
            username: username.clone(),
            at: self.now(),
        };
        self.given(StreamId::user(&user_id), vec![registered.into()])
            .await;
        let hash = PasswordHashing::minimal_for_tests()
            .hash(password, &CountingRandom::default())
            .unwrap();
        self.valet.reads.set_password(user_id, &hash).await.unwrap();
        AuthenticatedUser { user_id, username }
    }

    /// The client as authenticated now.
    pub async fn authenticated(&self, auth: &ClientAuth) -> AuthenticatedClient {
        self.valet
            .authenticate(auth)
            .await
            .expect("the client authenticates")
    }

    /// Then: whether introspection by `client` answers `token` active.
    pub async fn is_active(&self, client: &AuthenticatedClient, token: &str) -> bool {
        match self
            .valet
            .introspect(client, token)
            .await
            .expect("introspected")
        {
            super::Introspection::Active { .. } => true,
            super::Introspection::Inactive => false,
        }
    }

    /// Then: the events recorded since the last look, as (stream, event type).
    pub async fn recorded(&mut self) -> Vec<(StreamId, &'static str)> {
        self.recorded_events()
            .await
            .into_iter()
            .map(|(stream, event)| (stream, event.event_type()))
            .collect()
    }

    /// Then: the events recorded since the last look.
    pub async fn recorded_events(&mut self) -> Vec<(StreamId, Event)> {
        let events = self
            .valet
            .store
            .read_log(self.seen, usize::MAX)
            .await
            .unwrap();
        if let Some(last) = events.last() {
            self.seen = last.cursor();
        }
        events.into_iter().map(|e| (e.stream, e.event)).collect()
    }

    async fn skip_recorded(&mut self) {
        let _ = self.recorded_events().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Confidential,
    Public,
}

pub(super) fn meta() -> EventMetadata {
    EventMetadata::default()
}

pub(super) fn caller() -> RequestMeta {
    RequestMeta::default()
}

/// The RFC 6749 error code of a refusal; panics on success or on unavailability.
#[track_caller]
pub(super) fn error_code<T: std::fmt::Debug>(result: Result<T, OAuthError>) -> ErrorCode {
    match result {
        Err(OAuthError::Protocol { code, .. }) => code,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// The S256 challenge of a verifier (RFC 7636 §4.2).
pub(super) fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(TokenHash::of(verifier).as_bytes())
}

pub(super) const VERIFIER: &str = "a-verifier-of-at-least-forty-three-characters-long";

/// The sign-in session of the tests' approvals.
pub(super) fn test_sign_in() -> crate::oauth::SignIn {
    crate::oauth::SignIn {
        session: valet_domain::oidc::SessionId::new(Uuid::from_u128(7)),
        at: Timestamp::from_unix_millis(T0),
    }
}

/// An authorization request of `client_id` for `scope`, with PKCE.
pub(super) fn authorize_params(client_id: &str, scope: &str) -> AuthorizeParams {
    AuthorizeParams {
        client_id: Some(client_id.to_owned()),
        redirect_uri: Some(CALLBACK.to_owned()),
        response_type: Some("code".to_owned()),
        scope: Some(scope.to_owned()),
        state: Some("xyz".to_owned()),
        code_challenge: Some(challenge(VERIFIER)),
        code_challenge_method: Some("S256".to_owned()),
        ..AuthorizeParams::default()
    }
}

/// A code approved by `user` for `client_id`'s request of `scope`.
pub(super) async fn approved_code(
    world: &mut World,
    user: &AuthenticatedUser,
    client_id: &str,
    scope: &str,
) -> String {
    let request = world
        .valet
        .validate_authorization(&authorize_params(client_id, scope))
        .await
        .expect("a valid request");
    let code = world
        .valet
        .approve(user, &request, test_sign_in(), &caller())
        .await
        .expect("approved");
    world.skip_recorded().await;
    code
}

/// Tokens of a code grant for `user`, issued to the confidential `web` client.
pub(super) async fn code_grant_tokens(
    world: &mut World,
    web: &ClientAuth,
    user: &AuthenticatedUser,
) -> TokenResponse {
    let code = approved_code(world, user, "web", "read write").await;
    let client = world.authenticated(web).await;
    let tokens = world
        .valet
        .exchange_code(&client, &code, Some(CALLBACK), Some(VERIFIER), &caller())
        .await
        .expect("tokens");
    world.skip_recorded().await;
    tokens
}

/// A world where alice signed in at the confidential `web` app (scopes "read write"),
/// which holds her tokens.
pub(super) struct AliceAtWeb {
    pub world: World,
    pub client: AuthenticatedClient,
    pub tokens: TokenResponse,
}

impl AliceAtWeb {
    pub async fn new() -> Self {
        let mut world = World::new();
        let web = world
            .given_client("web", Kind::Confidential, WEB_APP, "read write")
            .await;
        let alice = world.given_user("alice", "a long passphrase").await;
        let tokens = code_grant_tokens(&mut world, &web, &alice).await;
        let client = world.authenticated(&web).await;
        AliceAtWeb {
            world,
            client,
            tokens,
        }
    }
}

/// The grant types of a client that signs users in.
pub(super) const WEB_APP: &[GrantType] = &[GrantType::AuthorizationCode, GrantType::RefreshToken];
/// The grant type of a service.
pub(super) const SERVICE: &[GrantType] = &[GrantType::ClientCredentials];
