//! Client authentication (RFC 6749 §2.3) and the cache of client states behind it, and
//! the guard every token-issuing write carries: the client is still as authenticated.

use std::collections::HashMap;
use std::sync::RwLock;

use valet_domain::client::{Client, ClientKind, State};
use valet_domain::{ClientId, StreamId, Timestamp, TokenHash};

use super::{OAuth, OAuthError, Unavailable};
use crate::aggregate::{self as agg, load};
use crate::clock::Clock;
use crate::ports::{AppendError, EventStore, ExpectedVersion, StreamVersion, StreamWrite};
use crate::read::ReadModels;

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
    pub state: State,
    /// The client stream's version when it was authenticated.
    pub version: StreamVersion,
}

impl AuthenticatedClient {
    pub fn client(&self) -> &Client {
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

/// How long a loaded client state is trusted for authentication.
pub const CLIENT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
const CLIENT_CACHE_LIMIT: usize = 10_000;

/// Client states recently loaded, so that every token and introspection request does
/// not replay the client's stream. Entries live for [`CLIENT_CACHE_TTL`]; issuing a token
/// also asserts the client stream's version in the same transaction, so a client
/// disabled meanwhile gets nothing new. Unknown ids are cached too: a hit must not tell
/// a registered client from an unknown one by its timing.
#[derive(Default)]
pub(super) struct ClientCache {
    entries: RwLock<HashMap<String, CachedClient>>,
}

#[derive(Clone)]
pub(super) struct CachedClient {
    loaded: Timestamp,
    pub(super) state: State,
    pub(super) version: StreamVersion,
}

impl CachedClient {
    /// Loaded less than the TTL ago by the clock (a clock set back counts as stale).
    fn fresh(&self, now: Timestamp) -> bool {
        let age = now.as_unix_millis() - self.loaded.as_unix_millis();
        (0..CLIENT_CACHE_TTL.as_millis() as i64).contains(&age)
    }
}

impl ClientCache {
    fn get(&self, id: &str, now: Timestamp) -> Option<CachedClient> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(id).filter(|c| c.fresh(now)).cloned()
    }

    fn put(&self, id: &str, entry: CachedClient, now: Timestamp) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CLIENT_CACHE_LIMIT {
            entries.retain(|_, c| c.fresh(now));
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

/// Why a write guarded by [`OAuth::client_unchanged`] did not land.
#[derive(Debug)]
pub(super) enum GuardedWriteError {
    /// Another writer moved one of the streams (the client's, while it is still active,
    /// or another): reload and decide again.
    Conflict,
    Failed(OAuthError),
}

impl From<OAuthError> for GuardedWriteError {
    fn from(e: OAuthError) -> Self {
        GuardedWriteError::Failed(e)
    }
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    pub(crate) async fn client_state(&self, client_id: &str) -> Result<State, Unavailable> {
        Ok(self.cached_client(client_id).await?.state)
    }

    pub(super) async fn cached_client(&self, client_id: &str) -> Result<CachedClient, Unavailable> {
        let now = self.now();
        if let Some(hit) = self.clients.get(client_id, now) {
            return Ok(hit);
        }
        let loaded = match ClientId::parse(client_id) {
            Ok(id) => {
                let loaded = load::<agg::Client, S>(&self.store, &StreamId::client(&id)).await?;
                CachedClient {
                    loaded: now,
                    state: loaded.state,
                    version: loaded.version,
                }
            }
            // Same work as for an unknown client: the answer must not tell them apart.
            Err(_) => CachedClient {
                loaded: now,
                state: Default::default(),
                version: StreamVersion::EMPTY,
            },
        };
        self.clients.put(client_id, loaded.clone(), now);
        Ok(loaded)
    }

    /// The client's state read afresh, not from the cache (a refresh extends a grant: a
    /// client disabled a moment ago must not renew its tokens).
    pub(super) async fn reloaded_client(&self, client_id: &ClientId) -> Result<State, Unavailable> {
        self.clients.forget(client_id.as_str());
        self.client_state(client_id.as_str()).await
    }

    /// RFC 6749 §2.3: the client's credentials, checked in constant time. Unknown client,
    /// wrong secret and disabled client all fail the same way.
    pub async fn authenticate(&self, auth: &ClientAuth) -> Result<AuthenticatedClient, OAuthError> {
        let (ClientAuth::Secret { client_id, .. } | ClientAuth::Public { client_id }) = auth;
        let CachedClient { state, version, .. } = self.cached_client(client_id).await?;
        let accepted = match auth {
            ClientAuth::Secret { secret, .. } => {
                state.verify_secret(&TokenHash::of(secret), self.now())
            }
            ClientAuth::Public { .. } => {
                state.is_active() && matches!(state.kind(), Some(ClientKind::Public))
            }
        };
        if accepted {
            Ok(AuthenticatedClient { state, version })
        } else {
            Err(OAuthError::invalid_client())
        }
    }

    /// A write that must not land if the client changed (e.g. was disabled) since it was
    /// authenticated: asserts the version the authentication saw.
    pub(super) fn client_unchanged(&self, client: &AuthenticatedClient) -> StreamWrite {
        StreamWrite {
            stream: StreamId::client(client.id()),
            expected: ExpectedVersion::from_loaded(client.version),
            events: Vec::new(),
        }
    }

    /// Appends writes that start with [`client_unchanged`](Self::client_unchanged). If the
    /// client changed since it was authenticated, the cached state is dropped and the
    /// request fails as a client authentication failure would when the client is no
    /// longer active (it is re-checked on the next request).
    pub(super) async fn append_for_client(
        &self,
        client: &AuthenticatedClient,
        writes: Vec<StreamWrite>,
    ) -> Result<(), GuardedWriteError> {
        let client_stream = StreamId::client(client.id());
        match self.store.append_all(writes).await {
            Ok(_) => Ok(()),
            Err(AppendError::Conflict { stream, .. }) if stream == client_stream => {
                let reloaded = self.reloaded_client(client.id()).await;
                if reloaded.map_err(OAuthError::from)?.is_active() {
                    // Changed but still active (nothing else can change today): a retry is
                    // safe, and rare.
                    Err(GuardedWriteError::Conflict)
                } else {
                    Err(OAuthError::invalid_client().into())
                }
            }
            Err(AppendError::Conflict { .. }) => Err(GuardedWriteError::Conflict),
            Err(e) => Err(OAuthError::from(e).into()),
        }
    }
}
