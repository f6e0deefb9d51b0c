//! A clock, ids and randomness that tests set and predict.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use uuid::Uuid;
use valet_domain::Timestamp;

use crate::clock::Clock;
use crate::entropy::{Ids, Randomness, RandomnessError};

/// A clock that stands still until moved. Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct FixedClock(Arc<AtomicI64>);

impl FixedClock {
    pub fn at(now: Timestamp) -> Self {
        FixedClock(Arc::new(AtomicI64::new(now.as_unix_millis())))
    }

    pub fn advance_seconds(&self, seconds: u32) {
        self.0
            .fetch_add(i64::from(seconds) * 1000, Ordering::SeqCst);
    }

    pub fn advance_millis(&self, millis: i64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.0.load(Ordering::SeqCst))
    }
}

/// Ids 1, 2, 3… (as UUIDs). Clones share the counter.
#[derive(Debug, Clone, Default)]
pub struct SequentialIds(Arc<AtomicU64>);

impl Ids for SequentialIds {
    fn new_id(&self) -> Uuid {
        Uuid::from_u128(u128::from(self.0.fetch_add(1, Ordering::SeqCst) + 1))
    }
}

/// Bytes that differ at every draw (a counter, repeated), known to the test; never for
/// real secrets.
#[derive(Debug, Clone, Default)]
pub struct CountingRandom(Arc<AtomicU64>);

impl Randomness for CountingRandom {
    fn fill(&self, bytes: &mut [u8]) -> Result<(), RandomnessError> {
        let draw = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let word = (draw << 8 | i as u64).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}
