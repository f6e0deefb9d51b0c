//! The [`Validator`]: local checks, readiness, the introspection fallback.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::https::{HttpsConfig, PlainHttp};
use crate::introspect::{IntrospectionConfig, Introspector};
use crate::jwt::{looks_like_jwt, JwtConfig, JwtVerifier};
use crate::keys::{KeyRing, SigningKey};
use crate::store::{Cursor, Lookup, MemoryTokenStore, TokenStore};
use crate::{token_digest, unix_now, Rejection, TokenInfo, Unavailable};

/// Settings of [`Validator::connect`].
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// One NATS URL, or a comma-separated list of a cluster's servers. Default:
    /// `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// Default: [`valet_wire::STREAM`].
    pub stream: String,
    /// The fallback for tokens unknown locally; `None` turns it off.
    pub introspection: Option<IntrospectionConfig>,
    /// How often expired tokens and tombstones are evicted. Default: 30 s.
    pub eviction_interval: Duration,
    /// Verify JWT access tokens offline; `None` treats them as opaque tokens.
    pub jwt: Option<JwtConfig>,
    /// How Valet's endpoints (introspection, JWKS) are reached: HTTPS with the system's
    /// roots by default; plain http only to loopback.
    pub https: HttpsConfig,
    /// TLS to NATS beyond a `tls://` URL: a private CA, a client certificate.
    pub nats_tls: valet_wire::NatsTls,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        ValidatorConfig::new("nats://127.0.0.1:4222")
    }
}

impl ValidatorConfig {
    pub fn new(nats_url: impl Into<String>) -> Self {
        ValidatorConfig {
            nats_url: nats_url.into(),
            stream: valet_wire::STREAM.to_owned(),
            introspection: None,
            eviction_interval: Duration::from_secs(30),
            jwt: None,
            https: HttpsConfig::default(),
            nats_tls: valet_wire::NatsTls::default(),
        }
    }

    /// TLS to NATS: trust `tls.ca_file` instead of the system's roots, present
    /// `tls.client_cert` to a server that verifies clients (TLS is then required).
    pub fn with_nats_tls(mut self, tls: valet_wire::NatsTls) -> Self {
        self.nats_tls = tls;
        self
    }

    /// Trust `pem` (one or more PEM certificates, e.g. a private CA) for Valet's HTTPS
    /// endpoints, instead of the system's roots.
    pub fn with_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.https.root_certificates_pem.push(pem.into());
        self
    }

    /// Allow plain `http://` to Valet off loopback (tokens and the client secret then
    /// cross the network in clear text).
    pub fn allow_plain_http(mut self) -> Self {
        self.https.plain_http = PlainHttp::Allowed;
        self
    }

    pub fn with_introspection(mut self, introspection: IntrospectionConfig) -> Self {
        self.introspection = Some(introspection);
        self
    }

    /// Accept JWT access tokens (RFC 9068) the store has not heard of yet, verified
    /// offline against Valet's keys.
    pub fn with_jwt(mut self, jwt: JwtConfig) -> Self {
        self.jwt = Some(jwt);
        self
    }
}

/// Where the validator is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Connecting to NATS / looking for the stream.
    Starting,
    /// Subscribed, replaying the stream.
    CatchingUp,
    /// Caught up at least once: local answers are trustworthy.
    Ready,
    /// Stopped on an event it cannot read: every request is refused (fail closed).
    Failed,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Starting,
            1 => State::CatchingUp,
            2 => State::Ready,
            _ => State::Failed,
        }
    }
}

/// A snapshot of the validator, e.g. for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    pub ready: bool,
    /// The NATS connection is up (always false for a detached validator).
    pub connected: bool,
    pub last_applied: Option<Cursor>,
    /// Messages the server reported still pending after the last one delivered.
    pub pending: u64,
    /// Events applied / dropped as duplicates since start.
    pub applied: u64,
    pub duplicates: u64,
    pub introspection_calls: u64,
    pub introspection_negative_hits: u64,
    /// Valet's signing keys heard of on the stream.
    pub signing_keys: usize,
    /// Why the validator failed, or what it is waiting for.
    pub detail: Option<String>,
}

/// Failed to build a validator.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot create the NATS client: {0}")]
    Nats(String),
    #[error("cannot create the introspection client: {0}")]
    Introspection(String),
    #[error("cannot create the JWKS client: {0}")]
    Jwks(String),
}

/// [`Validator::wait_ready`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("the validator failed: {0}")]
    Failed(String),
    #[error("the validator did not catch up in time")]
    Timeout,
}

const STARTING: u8 = 0;
const CATCHING_UP: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

/// State shared between the validator handles and its background tasks.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn TokenStore>,
    /// Valet's public signing keys, from the stream's key events.
    pub(crate) keys: KeyRing,
    state: AtomicU8,
    state_tx: watch::Sender<State>,
    pub(crate) connected: AtomicBool,
    pub(crate) ever_connected: AtomicBool,
    /// Signalled on every (re)connect: the consumer resubscribes, or retries, at once.
    pub(crate) reconnected: tokio::sync::Notify,
    pub(crate) pending: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    detail: Mutex<Option<String>>,
}

impl Shared {
    fn new(store: Arc<dyn TokenStore>, state: State) -> Self {
        Shared {
            store,
            keys: KeyRing::default(),
            state: AtomicU8::new(state as u8),
            state_tx: watch::channel(state).0,
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            reconnected: tokio::sync::Notify::new(),
            pending: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            detail: Mutex::new(None),
        }
    }

    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Release);
        self.state_tx.send_replace(state);
    }

    pub(crate) fn set_detail(&self, detail: Option<String>) {
        *self.detail.lock().unwrap_or_else(|e| e.into_inner()) = detail;
    }

    /// Subscribed: unless already caught up once, we are replaying.
    pub(crate) fn subscribed(&self) {
        if self
            .state
            .compare_exchange(STARTING, CATCHING_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.state_tx.send_replace(State::CatchingUp);
        }
    }

    pub(crate) fn caught_up(&self) {
        let current = self.state.load(Ordering::Acquire);
        if current == STARTING || current == CATCHING_UP {
            self.set_detail(None);
            self.set_state(State::Ready);
            tracing::info!(last_applied = ?self.store.last_applied(), "token store caught up: ready");
        }
    }

    pub(crate) fn fail(&self, reason: String) {
        tracing::error!(%reason, "token event consumer stopped; rejecting every token (fail closed)");
        self.set_detail(Some(reason));
        self.set_state(State::Failed);
    }
}

/// Stops the background tasks when the last [`Validator`] handle is dropped.
struct Inner {
    shared: Arc<Shared>,
    introspector: Option<Introspector>,
    jwt: Option<JwtVerifier>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Validates bearer tokens. Cheap to clone: every clone shares the store, the consumer
/// and the introspection client.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("status", &self.status())
            .finish()
    }
}

impl Validator {
    /// Starts syncing a fresh [`MemoryTokenStore`] from the stream. Returns at once
    /// (also when NATS is down: the client keeps trying); see [`Validator::ready`].
    /// Must be called inside a Tokio runtime.
    pub async fn connect(config: ValidatorConfig) -> Result<Validator, ConnectError> {
        Self::connect_with_store(config, Arc::new(MemoryTokenStore::new())).await
    }

    /// Like [`Validator::connect`] with a store of your own. If it reports a
    /// [`TokenStore::last_applied`] cursor, the consumer resumes after it.
    pub async fn connect_with_store(
        config: ValidatorConfig,
        store: Arc<dyn TokenStore>,
    ) -> Result<Validator, ConnectError> {
        let introspector = build_introspector(config.introspection.clone(), &config.https)?;
        let shared = Arc::new(Shared::new(store, State::Starting));
        let client = crate::consumer::connect(&config.nats_url, &config.nats_tls, shared.clone())
            .await
            .map_err(|e| ConnectError::Nats(e.to_string()))?;
        let consumer = tokio::spawn(crate::consumer::run(
            shared.clone(),
            client,
            config.stream.clone(),
        ));
        let evictor = tokio::spawn(evict_periodically(shared.clone(), config.eviction_interval));
        let mut tasks = vec![consumer.abort_handle(), evictor.abort_handle()];
        if let Some(uri) = config.jwt.as_ref().and_then(|j| j.jwks_uri.clone()) {
            crate::https::check_url(&uri, config.https.plain_http).map_err(ConnectError::Jwks)?;
            let http = crate::https::client(&config.https, Duration::from_secs(5))
                .map_err(ConnectError::Jwks)?;
            tasks.push(
                tokio::spawn(crate::jwks::fetch_once(shared.clone(), http, uri)).abort_handle(),
            );
        }
        Ok(Validator {
            inner: Arc::new(Inner {
                shared,
                introspector,
                jwt: config.jwt.map(JwtVerifier::new),
                tasks,
            }),
        })
    }

    /// A validator over a store that something else keeps in sync (your own consumer,
    /// tests, benchmarks): no NATS, always ready. Applying events is the caller's job.
    pub fn detached(
        store: Arc<dyn TokenStore>,
        introspection: Option<IntrospectionConfig>,
    ) -> Result<Validator, ConnectError> {
        Self::detached_with_jwt(store, introspection, None)
    }

    /// [`Validator::detached`] that also verifies JWT access tokens; announce keys with
    /// [`Validator::apply_key_event`].
    pub fn detached_with_jwt(
        store: Arc<dyn TokenStore>,
        introspection: Option<IntrospectionConfig>,
        jwt: Option<JwtConfig>,
    ) -> Result<Validator, ConnectError> {
        let introspector = build_introspector(introspection, &HttpsConfig::default())?;
        Ok(Validator {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared::new(store, State::Ready)),
                introspector,
                jwt: jwt.map(JwtVerifier::new),
                tasks: Vec::new(),
            }),
        })
    }

    /// Applies a signing-key event (done by the consumer for a connected validator).
    pub fn apply_key_event(&self, event: &valet_wire::KeyEvent) {
        self.inner.shared.keys.apply(event);
    }

    /// Checks a token against the local store only (no IO). Before the store has caught
    /// up, anything not definitely revoked or expired is `Unavailable`; a failed
    /// validator refuses everything. With [`ValidatorConfig::with_jwt`], a JWT access
    /// token the store has not heard of is verified offline (once; then answered from a
    /// cache until it expires).
    pub fn check(&self, token: &str) -> Result<TokenInfo, Rejection> {
        self.check_token(token, &token_digest(token))
    }

    fn check_token(
        &self,
        token: &str,
        digest: &crate::TokenDigest,
    ) -> Result<TokenInfo, Rejection> {
        let local = self.check_digest(digest);
        let Some(jwt) = self.inner.jwt.as_ref().filter(|_| looks_like_jwt(token)) else {
            return local;
        };
        let verify = || {
            jwt.verify(token, digest, &self.inner.shared.keys, unix_now())
                .map_err(Rejection::InvalidJwt)
        };
        match local {
            // Known from the stream, and still meant for this service (`aud`, `iss`).
            Ok(info) => verify().map(|_| info),
            Err(Rejection::Unknown) => verify(),
            refused => refused,
        }
    }

    /// [`Validator::check`] for a token already hashed with [`crate::token_digest`].
    pub fn check_digest(&self, digest: &crate::TokenDigest) -> Result<TokenInfo, Rejection> {
        let shared = &self.inner.shared;
        let state = shared.state.load(Ordering::Acquire);
        if state == FAILED {
            return Err(Rejection::Unavailable(Unavailable::Failed));
        }
        let ready = state == READY;
        match shared.store.lookup(digest, unix_now()) {
            Lookup::Active(info) if ready => Ok(info),
            Lookup::Unknown if ready => Err(Rejection::Unknown),
            Lookup::Revoked => Err(Rejection::Revoked),
            Lookup::Expired => Err(Rejection::Expired),
            Lookup::Active(_) | Lookup::Unknown => {
                Err(Rejection::Unavailable(Unavailable::CatchingUp))
            }
        }
    }

    /// [`Validator::check`], then for a token unknown locally (or anything not refused
    /// outright while catching up) the introspection fallback, if configured.
    pub async fn authenticate(&self, token: &str) -> Result<TokenInfo, Rejection> {
        let digest = token_digest(token);
        let local = self.check_token(token, &digest);
        match local {
            Err(Rejection::Unknown) | Err(Rejection::Unavailable(Unavailable::CatchingUp)) => {}
            _ => return local,
        }
        let Some(introspector) = &self.inner.introspector else {
            return local;
        };
        let info = introspector.introspect(token, &digest).await?;
        // A revocation may have arrived while we asked; the stream has the last word.
        match self.check_digest(&digest) {
            Err(rejection @ (Rejection::Revoked | Rejection::Expired)) => Err(rejection),
            Err(rejection @ Rejection::Unavailable(Unavailable::Failed)) => Err(rejection),
            _ => Ok(info),
        }
    }

    /// True once the store has caught up with the stream (and the consumer has not failed).
    pub fn ready(&self) -> bool {
        self.inner.shared.state() == State::Ready
    }

    pub fn state(&self) -> State {
        self.inner.shared.state()
    }

    pub fn status(&self) -> Status {
        let shared = &self.inner.shared;
        let state = shared.state();
        Status {
            state,
            ready: state == State::Ready,
            connected: shared.connected.load(Ordering::Relaxed),
            last_applied: shared.store.last_applied(),
            pending: shared.pending.load(Ordering::Relaxed),
            applied: shared.applied.load(Ordering::Relaxed),
            duplicates: shared.duplicates.load(Ordering::Relaxed),
            introspection_calls: self.inner.introspector.as_ref().map_or(0, |i| i.calls()),
            introspection_negative_hits: self
                .inner
                .introspector
                .as_ref()
                .map_or(0, |i| i.negative_hits()),
            signing_keys: shared.keys.len(),
            detail: shared
                .detail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Waits until ready (`Ok`), failed, or `timeout` (`None`: no limit).
    pub async fn wait_ready(&self, timeout: Option<Duration>) -> Result<(), WaitError> {
        let mut states = self.inner.shared.state_tx.subscribe();
        let wait = async {
            loop {
                let state = *states.borrow_and_update();
                match state {
                    State::Ready => return Ok(()),
                    State::Failed => {
                        return Err(WaitError::Failed(self.status().detail.unwrap_or_default()))
                    }
                    State::Starting | State::CatchingUp => {}
                }
                if states.changed().await.is_err() {
                    return Err(WaitError::Timeout);
                }
            }
        };
        match timeout {
            Some(limit) => tokio::time::timeout(limit, wait)
                .await
                .unwrap_or(Err(WaitError::Timeout)),
            None => wait.await,
        }
    }

    /// Valet's public signing keys announced on the stream (published, active, retired),
    /// by `kid`. Keys announced before the stream's `max_age` are not in it.
    pub fn signing_keys(&self) -> Vec<SigningKey> {
        self.inner.shared.keys.all()
    }

    /// The signing key named `kid`, if the stream announced it.
    pub fn signing_key(&self, kid: &str) -> Option<SigningKey> {
        self.inner.shared.keys.get(kid)
    }

    /// The store behind this validator.
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.inner.shared.store
    }

    /// Evicts expired tokens and tombstones now (also done every `eviction_interval`).
    pub fn evict_expired(&self) -> usize {
        let now = unix_now();
        let verified = self
            .inner
            .jwt
            .as_ref()
            .map_or(0, |jwt| jwt.evict_expired(now));
        self.inner.shared.store.evict_expired(now) + verified
    }
}

fn build_introspector(
    config: Option<IntrospectionConfig>,
    https: &HttpsConfig,
) -> Result<Option<Introspector>, ConnectError> {
    config
        .map(|c| Introspector::new(c, https))
        .transpose()
        .map_err(ConnectError::Introspection)
}

async fn evict_periodically(shared: Arc<Shared>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let evicted = shared.store.evict_expired(unix_now());
        if evicted > 0 {
            tracing::debug!(evicted, "evicted expired tokens and tombstones");
        }
    }
}
