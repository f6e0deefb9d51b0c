//! The local token store: the [`TokenStore`] trait and the in-memory default.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::Serialize;
use valet_wire::{EventType, TokenEvent};

use crate::{Source, TokenDetails, TokenDigest, TokenInfo};

/// How far the store has got in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// The JetStream stream sequence of the last message applied (or recognised as a
    /// duplicate): the consumer resumes after it. Strictly increasing along the stream.
    pub stream_sequence: u64,
    /// The Valet log position of that event (informational: positions follow commit
    /// order only approximately, see the crate docs).
    pub position: i64,
}

/// The outcome of [`TokenStore::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Already applied (same `event_id`): ignored.
    Duplicate,
}

/// An event the store cannot apply. The consumer treats it as fatal (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event {event_id} ({event_type}) has no {field}")]
    Missing {
        event_id: String,
        event_type: &'static str,
        field: &'static str,
    },
    #[error("event {event_id} carries a malformed token_sha256")]
    BadDigest { event_id: String },
}

/// What the store knows of a token digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Active(TokenInfo),
    Expired,
    Revoked,
    Unknown,
}

/// A local token store fed by the consumer. Keep your own (e.g. persistent) by
/// implementing this; [`MemoryTokenStore`] is the default.
///
/// Contract:
/// - `apply` is idempotent: applying an event twice, or an old issuance after a
///   revocation of its token or grant, must not make a revoked token valid again.
///   It is called by one task at a time, in stream order.
/// - `lookup` is called on every request, concurrently: make it fast and non-blocking.
/// - Times are Unix seconds; a token is expired from `expires_at` on.
pub trait TokenStore: Send + Sync + 'static {
    /// Applies one event delivered at `stream_sequence`.
    fn apply(
        &self,
        event: &TokenEvent,
        stream_sequence: u64,
        now: i64,
    ) -> Result<Applied, ApplyError>;

    /// Looks a token up by the SHA-256 of the token string.
    fn lookup(&self, digest: &TokenDigest, now: i64) -> Lookup;

    /// Drops expired tokens and tombstones that can no longer matter; returns how many.
    fn evict_expired(&self, now: i64) -> usize;

    /// The last applied event, if any. A persistent store returning `Some` makes the
    /// consumer resume after it instead of replaying the stream.
    fn last_applied(&self) -> Option<Cursor>;
}

/// Settings of [`MemoryTokenStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreOptions {
    /// The longest access-token lifetime of the authorization server (at least Valet's
    /// `--access-token-ttl`). Tombstones of revoked grants, and of revoked tokens whose
    /// issuance was never seen, live this long. Default: 24 h.
    pub max_token_lifetime: Duration,
    /// How many recent event ids are remembered to drop duplicates. Default: 65,536.
    pub recent_event_ids: usize,
}

impl Default for MemoryStoreOptions {
    fn default() -> Self {
        MemoryStoreOptions {
            max_token_lifetime: Duration::from_secs(24 * 3600),
            recent_event_ids: 65_536,
        }
    }
}

/// Counts of what a [`MemoryTokenStore`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Tokens issued and not revoked (some may be expired and not yet evicted).
    pub tokens: usize,
    /// Tombstones of revoked tokens.
    pub revoked_tokens: usize,
    /// Grants with at least one known live token.
    pub grants: usize,
    /// Tombstones of revoked grants.
    pub revoked_grants: usize,
}

const SHARDS: usize = 64;

/// A token digest as a map key: it is already uniformly distributed, so its first eight
/// bytes are the hash (no hashing work on the hot path, and digests cannot be chosen by
/// an attacker).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key(pub(crate) TokenDigest);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `Key` is hashed: fold the bytes in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TokenMap = HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>;

enum Entry {
    Active(TokenInfo),
    /// Revoked; the tombstone can go once `until` has passed.
    Revoked {
        until: i64,
    },
}

enum GrantEntry {
    /// The grant's known tokens with their expiry (pruned by eviction).
    Live {
        tokens: Vec<(Key, i64)>,
        max_expires: i64,
    },
    Revoked {
        until: i64,
    },
}

struct Writer {
    grants: HashMap<String, GrantEntry>,
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
    cursor: Option<Cursor>,
}

/// The default store: 64 shards of `RwLock<HashMap>` keyed by digest (reads from many
/// threads rarely meet), a grant → tokens index for grant revocations, tombstones for
/// revoked tokens and grants, and a bounded window of applied event ids.
pub struct MemoryTokenStore {
    shards: Box<[RwLock<TokenMap>]>,
    writer: Mutex<Writer>,
    options: MemoryStoreOptions,
}

impl Default for MemoryTokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTokenStore")
            .field("stats", &self.stats())
            .field("last_applied", &self.last_applied())
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryTokenStore {
    pub fn new() -> Self {
        Self::with_options(MemoryStoreOptions::default())
    }

    pub fn with_options(options: MemoryStoreOptions) -> Self {
        MemoryTokenStore {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(TokenMap::default()))
                .collect(),
            writer: Mutex::new(Writer {
                grants: HashMap::new(),
                recent: VecDeque::new(),
                recent_set: HashSet::new(),
                cursor: None,
            }),
            options,
        }
    }

    fn shard(&self, key: &Key) -> &RwLock<TokenMap> {
        // Byte 8 is independent of the bytes the map hashes on.
        &self.shards[usize::from(key.0[8]) % SHARDS]
    }

    fn max_lifetime(&self) -> i64 {
        i64::try_from(self.options.max_token_lifetime.as_secs()).unwrap_or(i64::MAX / 4)
    }

    pub fn stats(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        for shard in self.shards.iter() {
            for entry in read(shard).values() {
                match entry {
                    Entry::Active(_) => stats.tokens += 1,
                    Entry::Revoked { .. } => stats.revoked_tokens += 1,
                }
            }
        }
        for grant in lock(&self.writer).grants.values() {
            match grant {
                GrantEntry::Live { .. } => stats.grants += 1,
                GrantEntry::Revoked { .. } => stats.revoked_grants += 1,
            }
        }
        stats
    }
}

fn missing(event: &TokenEvent, field: &'static str) -> ApplyError {
    ApplyError::Missing {
        event_id: event.event_id.clone(),
        event_type: event.event_type.as_str(),
        field,
    }
}

fn digest_of(event: &TokenEvent) -> Result<Key, ApplyError> {
    let hex_digest = event
        .token_sha256
        .as_deref()
        .ok_or_else(|| missing(event, "token_sha256"))?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| ApplyError::BadDigest {
        event_id: event.event_id.clone(),
    })?;
    Ok(Key(digest))
}

impl TokenStore for MemoryTokenStore {
    fn apply(
        &self,
        event: &TokenEvent,
        stream_sequence: u64,
        now: i64,
    ) -> Result<Applied, ApplyError> {
        let mut writer = lock(&self.writer);
        if writer.recent_set.contains(&event.event_id) {
            // Read, not re-applied: a persistent store must not read it again either.
            writer.cursor = Some(Cursor {
                stream_sequence,
                position: event.position,
            });
            return Ok(Applied::Duplicate);
        }
        if event.grant_id.is_empty() {
            return Err(missing(event, "grant_id"));
        }
        match event.event_type {
            EventType::TokenIssued => {
                let key = digest_of(event)?;
                let expires_at = event
                    .expires_at
                    .ok_or_else(|| missing(event, "expires_at"))?;
                let grant_revoked = matches!(
                    writer.grants.get(&event.grant_id),
                    Some(GrantEntry::Revoked { .. })
                );
                // A token of a revoked grant (a late duplicate of its issuance) is kept
                // as revoked: a JWT access token must not look unknown, or its
                // signature alone would let it in.
                if grant_revoked && expires_at > now {
                    write(self.shard(&key)).insert(key, Entry::Revoked { until: expires_at });
                }
                // An old issuance (replay) of an expired token is not worth keeping.
                if !grant_revoked && expires_at > now {
                    let mut shard = write(self.shard(&key));
                    if !matches!(shard.get(&key), Some(Entry::Revoked { .. })) {
                        let info = TokenInfo::new(TokenDetails {
                            sub: event.sub.clone(),
                            username: event.username.clone(),
                            client_id: event.client_id.clone(),
                            scopes: TokenInfo::parse_scope(event.scope.as_deref().unwrap_or("")),
                            expires_at,
                            grant_id: Some(event.grant_id.clone()),
                            source: Source::Local,
                        });
                        shard.insert(key, Entry::Active(info));
                        drop(shard);
                        match writer
                            .grants
                            .entry(event.grant_id.clone())
                            .or_insert_with(|| GrantEntry::Live {
                                tokens: Vec::new(),
                                max_expires: expires_at,
                            }) {
                            GrantEntry::Live {
                                tokens,
                                max_expires,
                            } => {
                                if !tokens.iter().any(|(k, _)| *k == key) {
                                    tokens.push((key, expires_at));
                                }
                                *max_expires = (*max_expires).max(expires_at);
                            }
                            GrantEntry::Revoked { .. } => unreachable!("checked above"),
                        }
                    }
                }
            }
            EventType::TokenRevoked => {
                let key = digest_of(event)?;
                let mut shard = write(self.shard(&key));
                // Keep the tombstone until the token would have expired; a revocation of
                // a token never seen here keeps it for the longest lifetime.
                let until = match shard.get(&key) {
                    Some(Entry::Active(info)) => info.expires_at,
                    Some(Entry::Revoked { until }) => *until,
                    None => now.saturating_add(self.max_lifetime()),
                };
                shard.insert(key, Entry::Revoked { until });
            }
            EventType::GrantRevoked => {
                let until = now.saturating_add(self.max_lifetime());
                let previous = writer
                    .grants
                    .insert(event.grant_id.clone(), GrantEntry::Revoked { until });
                match previous {
                    Some(GrantEntry::Live { tokens, .. }) => {
                        for (key, _) in tokens {
                            let mut shard = write(self.shard(&key));
                            if let Some(Entry::Active(info)) = shard.get(&key) {
                                let until = info.expires_at;
                                shard.insert(key, Entry::Revoked { until });
                            }
                        }
                    }
                    Some(GrantEntry::Revoked { until: earlier }) => {
                        writer.grants.insert(
                            event.grant_id.clone(),
                            GrantEntry::Revoked {
                                until: earlier.max(until),
                            },
                        );
                    }
                    None => {}
                }
            }
        }
        if self.options.recent_event_ids > 0 {
            while writer.recent.len() >= self.options.recent_event_ids {
                if let Some(old) = writer.recent.pop_front() {
                    writer.recent_set.remove(&old);
                }
            }
            writer.recent.push_back(event.event_id.clone());
            writer.recent_set.insert(event.event_id.clone());
        }
        writer.cursor = Some(Cursor {
            stream_sequence,
            position: event.position,
        });
        Ok(Applied::Applied)
    }

    fn lookup(&self, digest: &TokenDigest, now: i64) -> Lookup {
        let key = Key(*digest);
        match read(self.shard(&key)).get(&key) {
            Some(Entry::Active(info)) if now < info.expires_at => Lookup::Active(info.clone()),
            Some(Entry::Active(_)) => Lookup::Expired,
            Some(Entry::Revoked { .. }) => Lookup::Revoked,
            None => Lookup::Unknown,
        }
    }

    fn evict_expired(&self, now: i64) -> usize {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut map = write(shard);
            let before = map.len();
            map.retain(|_, entry| match entry {
                Entry::Active(info) => info.expires_at > now,
                Entry::Revoked { until } => *until > now,
            });
            evicted += before - map.len();
        }
        let mut writer = lock(&self.writer);
        writer.grants.retain(|_, grant| match grant {
            GrantEntry::Live {
                tokens,
                max_expires,
            } => {
                tokens.retain(|(_, expires_at)| *expires_at > now);
                *max_expires > now
            }
            GrantEntry::Revoked { until } => *until > now,
        });
        evicted
    }

    fn last_applied(&self) -> Option<Cursor> {
        lock(&self.writer).cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_digest;
    use valet_wire::{RevocationReason, SCHEMA_VERSION};

    const NOW: i64 = 1_800_000_000;

    fn base(id: &str, position: i64, event_type: EventType, grant: &str) -> TokenEvent {
        TokenEvent {
            schema_version: SCHEMA_VERSION,
            event_id: id.into(),
            position,
            event_type,
            occurred_at: "2027-01-15T08:00:00.000Z".into(),
            client_id: "printer".into(),
            grant_id: grant.into(),
            token_sha256: None,
            token_type: None,
            sub: None,
            username: None,
            scope: None,
            expires_at: None,
            reason: None,
        }
    }

    fn issued(id: &str, position: i64, token: &str, grant: &str, expires_at: i64) -> TokenEvent {
        TokenEvent {
            token_sha256: Some(hex::encode(token_digest(token))),
            token_type: Some("access_token".into()),
            sub: Some("u-1".into()),
            username: Some("alice".into()),
            scope: Some("designs:read designs:write".into()),
            expires_at: Some(expires_at),
            ..base(id, position, EventType::TokenIssued, grant)
        }
    }

    fn revoked(id: &str, position: i64, token: &str, grant: &str) -> TokenEvent {
        TokenEvent {
            token_sha256: Some(hex::encode(token_digest(token))),
            token_type: Some("access_token".into()),
            reason: Some(RevocationReason::ClientRequest),
            ..base(id, position, EventType::TokenRevoked, grant)
        }
    }

    fn grant_revoked(id: &str, position: i64, grant: &str) -> TokenEvent {
        TokenEvent {
            reason: Some(RevocationReason::RefreshReuse),
            ..base(id, position, EventType::GrantRevoked, grant)
        }
    }

    fn look(store: &MemoryTokenStore, token: &str, now: i64) -> Lookup {
        store.lookup(&token_digest(token), now)
    }

    #[test]
    fn issue_lookup_and_details() {
        let store = MemoryTokenStore::new();
        store
            .apply(&issued("e1", 1, "tok-a", "g1", NOW + 60), 1, NOW)
            .unwrap();
        let Lookup::Active(info) = look(&store, "tok-a", NOW) else {
            panic!("active expected")
        };
        assert_eq!(info.subject(), Some("alice"));
        assert_eq!(info.client_id, "printer");
        assert!(info.has_scope("designs:read") && !info.has_scope("designs"));
        assert_eq!(info.scope(), "designs:read designs:write");
        assert_eq!(info.grant_id.as_deref(), Some("g1"));
        assert_eq!(look(&store, "tok-b", NOW), Lookup::Unknown);
        assert_eq!(
            store.last_applied(),
            Some(Cursor {
                stream_sequence: 1,
                position: 1
            })
        );
    }

    #[test]
    fn duplicates_by_event_id_are_ignored() {
        let store = MemoryTokenStore::new();
        let event = issued("e1", 1, "tok-a", "g1", NOW + 60);
        assert_eq!(store.apply(&event, 1, NOW).unwrap(), Applied::Applied);
        assert_eq!(
            store
                .apply(&revoked("e2", 2, "tok-a", "g1"), 2, NOW)
                .unwrap(),
            Applied::Applied
        );
        assert_eq!(store.apply(&event, 3, NOW).unwrap(), Applied::Duplicate);
        assert_eq!(look(&store, "tok-a", NOW), Lookup::Revoked);
    }

    #[test]
    fn revocations_are_convergent_even_beyond_the_id_window() {
        let store = MemoryTokenStore::with_options(MemoryStoreOptions {
            recent_event_ids: 0,
            ..Default::default()
        });
        let first = issued("e1", 1, "tok-a", "g1", NOW + 60);
        let second = issued("e2", 2, "tok-b", "g2", NOW + 60);
        store.apply(&first, 1, NOW).unwrap();
        store.apply(&second, 2, NOW).unwrap();
        store
            .apply(&revoked("e3", 3, "tok-a", "g1"), 3, NOW)
            .unwrap();
        store.apply(&grant_revoked("e4", 4, "g2"), 4, NOW).unwrap();
        // Late copies of both issuances (relay republish after the duplicate window).
        store.apply(&first, 5, NOW).unwrap();
        store.apply(&second, 6, NOW).unwrap();
        // A never-seen issuance of the revoked grant cannot resurrect it either: it is
        // known as revoked (a JWT must not pass as merely unknown).
        store
            .apply(&issued("e7", 7, "tok-c", "g2", NOW + 60), 7, NOW)
            .unwrap();
        assert_eq!(look(&store, "tok-a", NOW), Lookup::Revoked);
        assert_eq!(look(&store, "tok-b", NOW), Lookup::Revoked);
        assert_eq!(look(&store, "tok-c", NOW), Lookup::Revoked);
    }

    #[test]
    fn revocation_before_issuance_and_smaller_positions_still_apply() {
        // Commit order can put a revocation (smaller position) after a later event, or a
        // revocation before the issuance it revokes.
        let store = MemoryTokenStore::new();
        store
            .apply(&issued("e9", 9, "tok-x", "g9", NOW + 60), 1, NOW)
            .unwrap();
        store
            .apply(&revoked("e5", 5, "tok-a", "g1"), 2, NOW)
            .unwrap();
        store
            .apply(&issued("e4", 4, "tok-a", "g1", NOW + 60), 3, NOW)
            .unwrap();
        assert_eq!(look(&store, "tok-a", NOW), Lookup::Revoked);
        store.apply(&grant_revoked("e3", 3, "g9"), 4, NOW).unwrap();
        assert_eq!(look(&store, "tok-x", NOW), Lookup::Revoked);
    }

    #[test]
    fn grant_revocation_drops_every_token_of_the_grant() {
        let store = MemoryTokenStore::new();
        store
            .apply(&issued("e1", 1, "a1", "g1", NOW + 60), 1, NOW)
            .unwrap();
        store
            .apply(&issued("e2", 2, "a2", "g1", NOW + 120), 2, NOW)
            .unwrap();
        store
            .apply(&issued("e3", 3, "b1", "g2", NOW + 60), 3, NOW)
            .unwrap();
        store.apply(&grant_revoked("e4", 4, "g1"), 4, NOW).unwrap();
        assert_eq!(look(&store, "a1", NOW), Lookup::Revoked);
        assert_eq!(look(&store, "a2", NOW), Lookup::Revoked);
        assert!(matches!(look(&store, "b1", NOW), Lookup::Active(_)));
        let stats = store.stats();
        assert_eq!(
            (stats.tokens, stats.revoked_tokens, stats.revoked_grants),
            (1, 2, 1)
        );
    }

    #[test]
    fn expiry_and_eviction() {
        let store = MemoryTokenStore::with_options(MemoryStoreOptions {
            max_token_lifetime: Duration::from_secs(3600),
            ..Default::default()
        });
        store
            .apply(&issued("e1", 1, "a1", "g1", NOW + 10), 1, NOW)
            .unwrap();
        store
            .apply(&issued("e2", 2, "old", "g2", NOW - 1), 2, NOW)
            .unwrap();
        store
            .apply(&issued("e3", 3, "a3", "g3", NOW + 10), 3, NOW)
            .unwrap();
        store.apply(&revoked("e4", 4, "a3", "g3"), 4, NOW).unwrap();
        store.apply(&grant_revoked("e5", 5, "g4"), 5, NOW).unwrap();
        assert_eq!(
            look(&store, "old", NOW),
            Lookup::Unknown,
            "expired issuances are skipped"
        );
        assert_eq!(look(&store, "a1", NOW + 10), Lookup::Expired);
        assert_eq!(store.evict_expired(NOW + 9), 0);
        assert_eq!(
            store.evict_expired(NOW + 10),
            2,
            "the expired token and its tombstone"
        );
        assert_eq!(look(&store, "a1", NOW + 10), Lookup::Unknown);
        assert_eq!(store.stats().revoked_grants, 1);
        store.evict_expired(NOW + 3600);
        assert_eq!(store.stats(), StoreStats::default());
    }

    #[test]
    fn malformed_events_are_errors() {
        let store = MemoryTokenStore::new();
        let mut event = revoked("e1", 1, "a", "g1");
        event.token_sha256 = None;
        assert!(matches!(
            store.apply(&event, 1, NOW),
            Err(ApplyError::Missing { .. })
        ));
        event.token_sha256 = Some("zz".into());
        assert!(matches!(
            store.apply(&event, 1, NOW),
            Err(ApplyError::BadDigest { .. })
        ));
        let mut event = issued("e2", 2, "a", "g1", NOW + 5);
        event.expires_at = None;
        assert!(store.apply(&event, 2, NOW).is_err());
        assert_eq!(store.last_applied(), None);
    }
}
