//! Signing keys: the key ring's use cases (bootstrap, rotate, retire, activate when due),
//! the JWKS, and the signer's private keys, sealed in a [`KeyVault`] apart from the log.

pub mod material;
pub mod seal;
pub mod signer;

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use valet_domain::signing_key::{self, Algorithm, Key, KeyId, Stage};
use valet_domain::StreamId;

use crate::aggregate::{self as agg, execute, load, ExecuteError};
use crate::clock::Clock;
use crate::entropy::{Ids, UuidV7};
use crate::ports::{EventMetadata, EventStore, StoreError};

pub use material::{GenerateError, KeyPairMaterial};
pub use seal::{Kek, SealError};
pub use signer::{
    AccessTokenClaims, ActiveKeys, IdTokenClaims, JwtSigner, JwtType, LogoutTokenClaims, NoKeys,
    SignError, BACKCHANNEL_LOGOUT_EVENT,
};

/// Where sealed private keys are kept: never the event log.
pub trait KeyVault: Send + Sync + 'static {
    fn put_sealed(
        &self,
        key_id: KeyId,
        sealed: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn sealed(
        &self,
        key_id: KeyId,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
}

/// How keys come and go.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// How long a rotated-in key is published before it signs: at least as long as
    /// relying parties cache the JWKS.
    pub publish_lead_seconds: u32,
    /// How long a retired key stays published: at least the lifetime of what it signed.
    pub keep_for_seconds: u32,
}

/// How long relying parties may cache the JWKS (its `Cache-Control: max-age`).
pub const JWKS_MAX_AGE_SECONDS: u32 = 300;

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            publish_lead_seconds: JWKS_MAX_AGE_SECONDS,
            keep_for_seconds: 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{0}")]
    Refused(signing_key::Error),
    #[error("the key ring is busy; try again")]
    Contention,
    #[error("the private part of signing key {0} is missing from signing_key_material")]
    Missing(KeyId),
    #[error("key generation stopped: {0}")]
    Blocking(String),
}

fn failed(e: ExecuteError<signing_key::Error>) -> KeysError {
    match e {
        ExecuteError::Rejected { error, .. } => KeysError::Refused(error),
        ExecuteError::Contention(_) => KeysError::Contention,
        ExecuteError::Store(e) => KeysError::Store(e),
    }
}

/// One key of the JWKS (RFC 7517 §4): its public members, `kid`, `alg` and `use`.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedKey {
    pub kid: String,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    #[serde(flatten)]
    pub public: std::collections::BTreeMap<String, String>,
}

impl PublishedKey {
    pub fn of(key: &Key) -> Self {
        PublishedKey {
            kid: key.key_id.to_string(),
            alg: key.algorithm.as_str(),
            use_: "sig",
            public: key.public.members().clone(),
        }
    }

    /// Every member, as one JWK object.
    pub fn into_members(self) -> std::collections::BTreeMap<String, String> {
        let mut members = self.public;
        members.insert("kid".to_owned(), self.kid);
        members.insert("alg".to_owned(), self.alg.to_owned());
        members.insert("use".to_owned(), self.use_.to_owned());
        members
    }
}

/// The JWK Set document.
#[derive(Debug, Clone, Serialize)]
pub struct Jwks {
    pub keys: Vec<PublishedKey>,
}

/// The key ring's use cases.
pub struct SigningKeys<S, V, C> {
    store: S,
    vault: V,
    clock: C,
    kek: Kek,
    policy: KeyPolicy,
    ids: Arc<dyn Ids>,
}

/// Who changes the ring: the operator (CLI) or the server itself.
pub const ACTOR_OPERATOR: &str = "admin";
pub const ACTOR_SERVER: &str = "valet";

impl<S: EventStore, V: KeyVault, C: Clock> SigningKeys<S, V, C> {
    pub fn new(store: S, vault: V, clock: C, kek: Kek, policy: KeyPolicy) -> Self {
        SigningKeys {
            store,
            vault,
            clock,
            kek,
            policy,
            ids: Arc::new(UuidV7),
        }
    }

    /// The ring as the log has it now.
    pub async fn ring(&self) -> Result<signing_key::State, KeysError> {
        Ok(
            load::<agg::SigningKeys, S>(&self.store, &StreamId::SigningKeys)
                .await
                .map_err(failed)?
                .state,
        )
    }

    /// A new key pair of `algorithm`, its private part sealed into the vault before any
    /// event names it.
    async fn new_key(
        &self,
        algorithm: Algorithm,
    ) -> Result<(KeyId, signing_key::PublicJwk), KeysError> {
        let pair = tokio::task::spawn_blocking(move || material::generate(algorithm))
            .await
            .map_err(|e| KeysError::Blocking(e.to_string()))??;
        let key_id = KeyId::new(self.ids.new_id());
        let sealed = self.kek.seal(key_id, &pair.private_der)?;
        self.vault.put_sealed(key_id, sealed).await?;
        Ok((key_id, pair.public))
    }

    async fn run(
        &self,
        command: signing_key::Command,
        actor: &str,
    ) -> Result<signing_key::State, KeysError> {
        let metadata = EventMetadata {
            actor: Some(actor.to_owned()),
            ..EventMetadata::default()
        };
        let executed = execute::<agg::SigningKeys, S>(
            &self.store,
            self.ids.as_ref(),
            &StreamId::SigningKeys,
            command,
            &metadata,
        )
        .await
        .map_err(failed)?;
        Ok(executed.state)
    }

    /// Refuses a key-encryption key that does not open the ring's active keys (a KEK
    /// created afresh on another host, say): keys sealed with it could never sign.
    pub async fn check_kek(&self) -> Result<(), KeysError> {
        let ring = self.ring().await?;
        for algorithm in Algorithm::ALL {
            if let Some(key) = ring.active(algorithm) {
                match self.vault.sealed(key.key_id).await? {
                    Some(sealed) => {
                        self.kek.open(key.key_id, &sealed)?;
                    }
                    None => return Err(KeysError::Missing(key.key_id)),
                }
            }
        }
        Ok(())
    }

    /// Gives every algorithm an active key (first start). Safe to run on every replica
    /// at once: only one key per algorithm is bootstrapped.
    pub async fn ensure(&self) -> Result<(), KeysError> {
        let ring = self.ring().await?;
        for algorithm in Algorithm::ALL {
            if ring.active(algorithm).is_some() {
                continue;
            }
            let (key_id, public) = self.new_key(algorithm).await?;
            let state = self
                .run(
                    signing_key::Command::Bootstrap {
                        key_id,
                        algorithm,
                        public,
                        at: self.clock.now(),
                    },
                    ACTOR_SERVER,
                )
                .await?;
            if state.key(key_id).is_some() {
                tracing::info!(%key_id, %algorithm, "created the first signing key");
            }
        }
        Ok(())
    }

    /// Publishes a new key of `algorithm`, to sign from the end of the publication lead
    /// (the current key signs until then, and stays published while its tokens live).
    pub async fn rotate(&self, algorithm: Algorithm, actor: &str) -> Result<Key, KeysError> {
        let (key_id, public) = self.new_key(algorithm).await?;
        let at = self.clock.now();
        let state = self
            .run(
                signing_key::Command::Introduce {
                    key_id,
                    algorithm,
                    public,
                    at,
                    activates_at: at.plus_seconds(self.policy.publish_lead_seconds),
                },
                actor,
            )
            .await?;
        Ok(state.key(key_id).cloned().expect("the key just introduced"))
    }

    /// Stops signing with `key_id` (see [`signing_key::Command::Retire`]).
    pub async fn retire(&self, key_id: KeyId, actor: &str) -> Result<Key, KeysError> {
        let state = self
            .run(
                signing_key::Command::Retire {
                    key_id,
                    at: self.clock.now(),
                    keep_for_seconds: self.policy.keep_for_seconds,
                },
                actor,
            )
            .await?;
        Ok(state
            .key(key_id)
            .cloned()
            .expect("a retired key stays in the ring"))
    }

    /// Activates the keys whose publication lead has passed; how many changed.
    pub async fn activate_due(&self) -> Result<usize, KeysError> {
        let before = self.ring().await?;
        let now = self.clock.now();
        let due = Algorithm::ALL.into_iter().any(|algorithm| {
            before.keys().iter().any(|k| {
                k.algorithm == algorithm
                    && k.stage() == Stage::Published
                    && k.activates_at <= now
                    && k.is_published(now)
            })
        });
        if !due {
            return Ok(0);
        }
        let after = self
            .run(
                signing_key::Command::ActivateDue {
                    at: now,
                    keep_for_seconds: self.policy.keep_for_seconds,
                },
                ACTOR_SERVER,
            )
            .await?;
        let changed = after
            .keys()
            .iter()
            .filter(|k| before.key(k.key_id).map(Key::stage) != Some(k.stage()))
            .count();
        for key in after.keys().iter().filter(|k| k.stage() == Stage::Active) {
            if before.key(key.key_id).map(Key::stage) != Some(Stage::Active) {
                tracing::info!(key_id = %key.key_id, algorithm = %key.algorithm, "signing key now signs");
            }
        }
        Ok(changed)
    }

    /// The JWKS now: every published key, public members only.
    pub async fn jwks(&self) -> Result<Jwks, KeysError> {
        let ring = self.ring().await?;
        Ok(jwks_of(&ring, self.clock.now()))
    }

    /// The private key of `key_id`, unsealed (for the signer).
    pub async fn private_der(&self, key_id: KeyId) -> Result<Option<Vec<u8>>, KeysError> {
        match self.vault.sealed(key_id).await? {
            Some(sealed) => Ok(Some(self.kek.open(key_id, &sealed)?)),
            None => Ok(None),
        }
    }
}

/// The ring as the log of `store` has it now (no private key needed).
pub async fn ring<S: EventStore>(store: &S) -> Result<signing_key::State, KeysError> {
    Ok(load::<agg::SigningKeys, S>(store, &StreamId::SigningKeys)
        .await
        .map_err(failed)?
        .state)
}

/// The JWKS of `ring` at `now`.
pub fn jwks_of(ring: &signing_key::State, now: valet_domain::Timestamp) -> Jwks {
    Jwks {
        keys: ring.published(now).map(PublishedKey::of).collect(),
    }
}

/// What the admin API may do to the ring: rotate a key in and retire one. Object-safe,
/// so the HTTP layer holds one without naming the store, vault or clock.
pub trait KeyAdmin: Send + Sync + 'static {
    fn rotate_key(
        &self,
        algorithm: Algorithm,
        actor: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Key, KeysError>> + Send + '_>>;

    fn retire_key(
        &self,
        key_id: KeyId,
        actor: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Key, KeysError>> + Send + '_>>;
}

impl<S, V, C> KeyAdmin for SigningKeys<S, V, C>
where
    S: EventStore,
    V: KeyVault,
    C: Clock,
{
    fn rotate_key(
        &self,
        algorithm: Algorithm,
        actor: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Key, KeysError>> + Send + '_>> {
        Box::pin(async move { self.rotate(algorithm, &actor).await })
    }

    fn retire_key(
        &self,
        key_id: KeyId,
        actor: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Key, KeysError>> + Send + '_>> {
        Box::pin(async move { self.retire(key_id, &actor).await })
    }
}
