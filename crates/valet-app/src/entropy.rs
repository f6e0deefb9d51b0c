//! New identifiers and random bytes as ports: use cases draw neither themselves, so a
//! test can give them known ones.

use uuid::Uuid;

/// Identifiers of new events, grants and users.
pub trait Ids: Send + Sync + 'static {
    fn new_id(&self) -> Uuid;
}

/// UUID v7: time-ordered, so ids drawn later sort later (the log's indexes like that).
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7;

impl Ids for UuidV7 {
    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessError(pub String);

/// Unpredictable bytes, for secrets (codes, tokens, client secrets, salts, keys).
pub trait Randomness: Send + Sync + 'static {
    fn fill(&self, bytes: &mut [u8]) -> Result<(), RandomnessError>;
}

/// The operating system's CSPRNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl Randomness for OsRandom {
    fn fill(&self, bytes: &mut [u8]) -> Result<(), RandomnessError> {
        getrandom::fill(bytes).map_err(|e| RandomnessError(e.to_string()))
    }
}

/// `N` bytes from `random`.
pub fn random_bytes<const N: usize>(random: &dyn Randomness) -> Result<[u8; N], RandomnessError> {
    let mut bytes = [0u8; N];
    random.fill(&mut bytes)?;
    Ok(bytes)
}
