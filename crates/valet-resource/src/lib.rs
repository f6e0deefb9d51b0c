//! `valet-resource`: the SDK a resource service embeds to validate bearer tokens issued by
//! Valet from its **own** local store, kept in sync over NATS JetStream.
//!
//! The only Valet crate it needs is `valet-wire`, the versioned schema of the token events:
//! a resource service never links the authorization server's code.
//!
//! # Usage
//!
//! ```no_run
//! use axum::{routing::get, Json, Router};
//! use valet_resource::{Bearer, BearerRejection, IntrospectionConfig, Validator, ValidatorConfig};
//!
//! async fn designs(auth: Bearer) -> Result<Json<Vec<String>>, BearerRejection> {
//!     auth.require_scope("designs:read")?; // 403 insufficient_scope otherwise
//!     let owner = auth.subject().unwrap_or("nobody");
//!     Ok(Json(vec![format!("{owner}'s teapot.stl")]))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ValidatorConfig::new("nats://127.0.0.1:4222").with_introspection(
//!     // A confidential client of Valet; optional (without it, unknown tokens are refused).
//!     IntrospectionConfig::new("http://127.0.0.1:8080/introspect", "designs", "secret"),
//! );
//! let validator = Validator::connect(config).await?; // returns at once; syncs in the background
//! let app = Router::new()
//!     .route("/designs", get(designs))
//!     .with_state(validator.clone()); // the extractor finds the Validator via FromRef
//! validator.wait_ready(None).await?;  // caught up with the stream (or failed)
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Outside axum, call [`Validator::check`] (local store only, synchronous, about a
//! microsecond including the SHA-256 of the token) or [`Validator::authenticate`] (local
//! store, then the introspection fallback for tokens unknown locally).
//!
//! # Bootstrap: replay the stream
//!
//! [`Validator::connect`] creates an **ephemeral ordered consumer** on the `VALET_TOKENS`
//! stream with `DeliverPolicy::All` and applies every message to a [`MemoryTokenStore`]
//! that starts empty. There is no durable consumer and no durable state that could be lost,
//! go stale or be shared by mistake between services: each process rebuilds its store from
//! the stream on start. Replay time is bounded by the stream's `max_age`, which Valet sets
//! to at least the longest access-token lifetime, so every token that can still be valid
//! (and every revocation that matters) is in the stream. A [`TokenStore`] that persists
//! itself reports its [`Cursor`] and the consumer resumes after it instead.
//!
//! [`Validator::ready`] becomes true once the consumer has caught up: it applied the last
//! message that existed when it subscribed, or a message the server reported nothing
//! pending after, or the stream was empty. Before that, [`Validator::check`] answers
//! [`Rejection::Unavailable`] for anything it cannot refuse outright (a token revoked or
//! expired is refused at once; a token found valid may still be revoked further down the
//! stream), and [`Validator::authenticate`] asks the introspection endpoint instead.
//!
//! NATS disconnects are survived: the client reconnects, and on every reconnect (or
//! consumer error) the SDK subscribes again right after the last stream sequence it
//! applied; within a connection the ordered consumer recreates itself on gaps and missed
//! heartbeats. (async-nats 0.51 alone takes ~15 s to notice that a restarted server lost
//! the ephemeral consumer; resubscribing on reconnect makes it ~0.1 s.) Readiness stays
//! true while disconnected (the store is still the best local answer);
//! [`Status::connected`] says when it is not current.
//!
//! # Idempotency
//!
//! Delivery is at least once: a relay that crashed between publishing and checkpointing
//! republishes, and outside JetStream's duplicate window the copy lands in the stream with
//! a new sequence. The store ignores an event whose `event_id` it already applied (a
//! bounded window of recent ids), and its operations are convergent anyway: issuing is an
//! insert that a revocation tombstone blocks, revoking only adds tombstones. So the same
//! event applied twice, or a late duplicate issuance after a revocation, never
//! resurrects a token. Tombstones of revoked grants live for the longest token lifetime
//! ([`MemoryStoreOptions::max_token_lifetime`]); a revoked token's tombstone lives until
//! the token would have expired.
//!
//! The log `position` is **not** used to drop events: the relay publishes in commit order
//! `(xact, position)`, and a transaction that drew its position before a concurrent one
//! but committed (or got its transaction id) after it appears later in the stream with a
//! smaller position. Dropping "position ≤ last applied" would skip such an event, possibly
//! a revocation. The consumer's cursor is the JetStream stream sequence, which is strictly
//! increasing; the position is reported for information.
//!
//! # Signing keys
//!
//! The stream also announces Valet's signing keys (`valet.v1.key.published`, `.activated`,
//! `.retired`), each message carrying the whole public JWK. [`Validator::signing_keys`]
//! and [`Validator::signing_key`] answer from them: a new key is known before anything
//! is signed with it. A key announced before the stream's `max_age` is not replayed.
//!
//! # JWT access tokens
//!
//! With [`ValidatorConfig::with_jwt`], a JWT access token (RFC 9068) the store has not
//! heard of is verified offline: the key its `kid` names (from the stream's key events,
//! or `jwks_uri` read once at start), the algorithm pinned to the key's, `typ: at+jwt`,
//! `iss`, `aud`, `exp`, `nbf` (with [`JwtConfig::leeway`]), and no signature by a key
//! after its retirement. The store is asked first on every check, so a revocation pushed
//! over the stream refuses a JWT whose signature is still valid; a verified token is
//! answered from a cache keyed by its digest until it expires. While catching up, an
//! unknown JWT is `Unavailable` like any unknown token (a revocation may be further down
//! the stream).
//!
//! # Fail closed
//!
//! A payload with an unknown `schema_version` (a newer Valet speaking a format this SDK
//! does not know), one that does not decode, or an event missing what it needs (a
//! revocation without the token's digest) stops the consumer with a `tracing::error!` and
//! marks the validator [`State::Failed`]: every check is then rejected with
//! [`Rejection::Unavailable`] (HTTP 503), introspection included, and `ready()` stays
//! false until the process restarts with an SDK that understands the stream. Skipping the
//! message could skip a revocation.
//!
//! Raw tokens are never logged or stored: the store is keyed by SHA-256, and logs carry at
//! most the first 8 hex digits of a token's digest.
//!
//! # Introspection fallback
//!
//! A token unknown locally (e.g. issued a few milliseconds ago and not yet received) is
//! POSTed to Valet's RFC 7662 `/introspect`, authenticated with HTTP Basic (client id and
//! secret form-urlencoded first, RFC 6749 §2.3.1). Negative answers are cached for a few
//! seconds in a bounded map; concurrent calls are capped. Positive answers are not cached,
//! so a revocation is never hidden behind a cache. Only `token_type=access_token` is
//! accepted: a refresh token is not a bearer credential. Valet is reached over HTTPS
//! (rustls, the system's roots, or only those given with
//! [`ValidatorConfig::with_root_certificate`]); plain `http://` only to a loopback host
//! unless [`ValidatorConfig::allow_plain_http`] says otherwise.

mod consumer;
mod https;
mod introspect;
mod jwks;
mod jwt;
mod keys;
mod store;
mod validator;

#[cfg(feature = "axum")]
mod extract;

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub use https::{HttpsConfig, PlainHttp};
pub use introspect::IntrospectionConfig;
pub use jwt::{JwtConfig, JwtRejection};
pub use keys::{KeyStage, SigningKey};
pub use store::{
    Applied, ApplyError, Cursor, Lookup, MemoryStoreOptions, MemoryTokenStore, StoreStats,
    TokenStore,
};
pub use validator::{ConnectError, State, Status, Validator, ValidatorConfig, WaitError};

#[cfg(feature = "axum")]
pub use extract::{Bearer, BearerRejection, REALM};

/// Re-exported so a service can name the wire types without depending on `valet-wire`.
pub use valet_wire;

/// The SHA-256 of a token string: the key of every store.
pub type TokenDigest = [u8; 32];

/// SHA-256 of the token string, as Valet publishes it (`token_sha256`, in hex).
pub fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The first 8 hex digits of a digest: what logs may show of a token.
pub(crate) fn digest_prefix(digest: &TokenDigest) -> String {
    hex::encode(&digest[..4])
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where a [`TokenInfo`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The local store (a `token.issued` event).
    Local,
    /// The introspection fallback.
    Introspection,
    /// A JWT access token verified offline (its `token.issued` not received yet).
    Jwt,
}

/// What a valid token grants. Read it through [`TokenInfo`] (which derefs to this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenDetails {
    /// The token's subject: the user it acts for, or the client itself for
    /// client_credentials tokens (RFC 9068 §2.2). `None` only from a server that does not
    /// name it.
    pub sub: Option<String>,
    pub username: Option<String>,
    /// The client the token was issued to.
    pub client_id: String,
    pub scopes: BTreeSet<String>,
    /// Unix seconds; the token is invalid from this second on.
    pub expires_at: i64,
    /// The token family; unknown when the answer came from introspection.
    pub grant_id: Option<String>,
    pub source: Source,
}

/// A valid token's details; cheap to clone (shared, never copied per check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo(Arc<TokenDetails>);

impl Serialize for TokenInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(serializer)
    }
}

impl TokenInfo {
    pub fn new(details: TokenDetails) -> Self {
        TokenInfo(Arc::new(details))
    }

    /// Splits an OAuth scope string (space-separated) into a set.
    pub fn parse_scope(scope: &str) -> BTreeSet<String> {
        scope.split_ascii_whitespace().map(str::to_owned).collect()
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.contains(scope)
    }

    /// The user's name if known, else the user id; `None` for client_credentials tokens
    /// (whose `sub` is the client itself: no user).
    pub fn subject(&self) -> Option<&str> {
        self.0.username.as_deref().or(self.user_id())
    }

    /// The user id, `None` for client_credentials tokens.
    pub fn user_id(&self) -> Option<&str> {
        self.0
            .sub
            .as_deref()
            .filter(|sub| *sub != self.0.client_id.as_str())
    }

    /// The scopes as one space-separated string.
    pub fn scope(&self) -> String {
        let mut out = String::new();
        for (i, scope) in self.0.scopes.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(scope);
        }
        out
    }

    pub fn details(&self) -> &TokenDetails {
        &self.0
    }
}

impl Deref for TokenInfo {
    type Target = TokenDetails;

    fn deref(&self) -> &TokenDetails {
        &self.0
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not in the local store (and no introspection was done).
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    /// The introspection endpoint answered `active: false` (or not an access token).
    #[error("token inactive")]
    Inactive,
    /// No trustworthy answer right now: fail closed (HTTP 503).
    #[error("token validation unavailable: {0}")]
    Unavailable(Unavailable),
    /// A JWT access token that does not verify.
    #[error("invalid JWT access token: {0}")]
    InvalidJwt(JwtRejection),
}

impl Rejection {
    /// True for a token that is definitely not valid (HTTP 401 invalid_token).
    pub fn is_invalid_token(&self) -> bool {
        !matches!(self, Rejection::Unavailable(_))
    }
}

/// Why no answer could be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The consumer stopped on an event it cannot read (fail closed).
    #[error("the token event consumer has failed")]
    Failed,
    /// The store has not caught up with the stream yet and introspection is off.
    #[error("the token store is still catching up")]
    CatchingUp,
    /// The introspection endpoint could not be reached or answered an error.
    #[error("the introspection endpoint is unavailable")]
    Introspection,
    /// Too many introspection calls in flight.
    #[error("too many introspection calls in flight")]
    Busy,
}
