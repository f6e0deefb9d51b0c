//! Failed-authentication counts in memory: one process's view (tests, in-process use).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use valet_domain::Timestamp;

use crate::attempts::{after_failure, AttemptKey, Attempts, AttemptsFuture, Failures};

/// The most keys kept; beyond it the stalest are dropped (an attacker's many addresses
/// must not grow memory without bound).
const MAX_KEYS: usize = 10_000;

#[derive(Default)]
pub struct MemoryAttempts(Mutex<HashMap<AttemptKey, Failures>>);

impl MemoryAttempts {
    pub fn new() -> Self {
        Self::default()
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<AttemptKey, Failures>> {
        // Every change is one insert or remove: a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Attempts for MemoryAttempts {
    fn failures<'a>(&'a self, key: &'a AttemptKey) -> AttemptsFuture<'a, Option<Failures>> {
        let found = self.counts().get(key).copied();
        Box::pin(async move { Ok(found) })
    }

    fn record_failure<'a>(
        &'a self,
        key: &'a AttemptKey,
        now: Timestamp,
        forget_after_secs: u32,
    ) -> AttemptsFuture<'a, ()> {
        let mut counts = self.counts();
        if !counts.contains_key(key) && counts.len() >= MAX_KEYS {
            let stalest = counts
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone());
            if let Some(stalest) = stalest {
                counts.remove(&stalest);
            }
        }
        let next = after_failure(counts.get(key).copied(), now, forget_after_secs);
        counts.insert(key.clone(), next);
        Box::pin(async { Ok(()) })
    }

    fn clear<'a>(&'a self, key: &'a AttemptKey) -> AttemptsFuture<'a, ()> {
        self.counts().remove(key);
        Box::pin(async { Ok(()) })
    }
}
