//! `valet audit at`: the grants active at a moment, by replaying the log up to it and
//! rendering the grant fold into live grants and tokens.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;
use valet_app::{ReplayEvent, StoreError};
use valet_domain::{changes, grant, Change, TokenHash};
use valet_store::PgEventStore;

pub use valet_app::admin::GrantAt;

/// One live grant during an `audit at` replay, kept small: the answer holds every
/// grant active at the moment, which on a busy server is most of them.
#[derive(Debug)]
struct GrantFold {
    client_id: Arc<str>,
    subject: Option<(Uuid, Arc<str>)>,
    scope: Arc<str>,
    issued_at: i64,
    /// (SHA-256, scope, expires_at): only tokens still valid at the moment asked about.
    access: Vec<([u8; 32], Arc<str>, i64)>,
    refresh_expires: Option<i64>,
}

/// Shares the few distinct client ids, usernames and scopes among all grants.
#[derive(Default)]
struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.0.insert(s.to_owned(), shared.clone());
        shared
    }
}

/// How far past `at` the replay reads: a transaction that started before `at` can commit
/// (and be ordered) after events recorded later, but never this much later.
pub const COMMIT_SLACK_MICROS: i64 = 10 * 60 * 1_000_000;

/// The grants active at a moment, kept compact until they are written out one by one
/// (a busy server has hundreds of thousands of them).
pub struct ActiveGrants {
    /// Sorted by (issued_at, grant id); only grants with something live.
    grants: Vec<(Uuid, GrantFold)>,
    at_millis: i64,
    /// Events read by the replay.
    pub read: u64,
}

impl ActiveGrants {
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Keeps the grants of which `keep(client_id, username)` holds.
    pub fn retain(&mut self, keep: impl Fn(&str, Option<&str>) -> bool) {
        self.grants
            .retain(|(_, g)| keep(&g.client_id, g.subject.as_ref().map(|(_, n)| &**n)));
    }

    /// The grants, in order of issue, spelled out.
    pub fn iter(&self) -> impl Iterator<Item = GrantAt> + '_ {
        self.grants.iter().map(|(grant_id, g)| GrantAt {
            grant_id: grant_id.to_string(),
            client_id: g.client_id.to_string(),
            user_id: g.subject.as_ref().map(|(id, _)| id.to_string()),
            username: g.subject.as_ref().map(|(_, name)| name.to_string()),
            scope: g.scope.to_string(),
            issued_at_millis: g.issued_at,
            access_tokens: g
                .access
                .iter()
                .map(|(hash, scope, expires)| {
                    (
                        TokenHash::from_bytes(*hash).to_string(),
                        scope.to_string(),
                        *expires,
                    )
                })
                .collect(),
            refreshable: g.refresh_expires.is_some_and(|e| e > self.at_millis),
        })
    }
}

/// Replays the log up to `at` (Unix microseconds) and returns the grants that were
/// active then, with their live access tokens, and the number of events read.
///
/// Three stages run at once: the store reads rows; decodes them and turns the grant
/// changes of each batch into map operations (interning strings); and this one applies
/// them in log order.
pub async fn active_at(
    store: &PgEventStore,
    at_micros: i64,
    batch: usize,
) -> Result<ActiveGrants, StoreError> {
    let at_millis = at_micros.div_euclid(1000);
    let mut grants: HashMap<Uuid, GrantFold> = HashMap::new();
    // One snapshot of the log: everything committed when the replay starts, whatever
    // other transactions are open (an audit must not wait for, or skip past, them).
    let mut strings = Interner::default();
    // Each batch becomes map operations where it is decoded (interning strings), and
    // whether the replay has passed the moment asked about.
    let to_ops = move |events: Vec<ReplayEvent>| {
        let mut ops = Vec::with_capacity(events.len());
        let mut read = 0u64;
        for event in events {
            read += 1;
            if event.recorded_at_micros > at_micros {
                if event.recorded_at_micros > at_micros + COMMIT_SLACK_MICROS {
                    return (ops, read, Past::Yes);
                }
                continue;
            }
            for change in changes(&event.stream, &event.event) {
                if let Change::Grant { grant_id, change } = change {
                    ops.extend(fold_op(&mut strings, at_millis, grant_id.as_uuid(), change));
                }
            }
        }
        (ops, read, Past::No)
    };
    let mut batches = store
        .read_snapshot(valet_store::SnapshotScope::All, batch, to_ops)
        .await?
        .batches;
    let mut read = 0;
    while let Some(batch) = batches.recv().await {
        let (ops, count, past) = batch?;
        read += count;
        for op in ops {
            fold(&mut grants, op);
        }
        if past == Past::Yes {
            break;
        }
    }
    let mut active: Vec<(Uuid, GrantFold)> = grants
        .into_iter()
        .filter(|(_, g)| !g.access.is_empty() || g.refresh_expires.is_some_and(|e| e > at_millis))
        .collect();
    active.sort_unstable_by_key(|(id, g)| (g.issued_at, *id));
    Ok(ActiveGrants {
        grants: active,
        at_millis,
        read,
    })
}

/// Whether a batch reached past the moment asked about (and the commit slack after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Past {
    Yes,
    No,
}

/// A live access token: (SHA-256, scope, expires_at millis).
type LiveToken = ([u8; 32], Arc<str>, i64);

/// What one grant change does to the replay's state, prepared by the change task
/// (interning, conversions) so that the folding loop only touches the map.
enum FoldOp {
    Open(Uuid, GrantFold),
    AddToken(Uuid, LiveToken),
    Refreshable(Uuid, i64),
    RevokeToken(Uuid, [u8; 32]),
    Forget(Uuid),
}

fn fold_op(
    strings: &mut Interner,
    at_millis: i64,
    grant_id: Uuid,
    change: grant::Change<'_>,
) -> Option<FoldOp> {
    Some(match change {
        grant::Change::Opened {
            client_id,
            subject,
            scope,
            at,
            ..
        } => FoldOp::Open(
            grant_id,
            GrantFold {
                client_id: strings.get(client_id.as_str()),
                subject: subject.map(|s| (s.user_id.as_uuid(), strings.get(s.username.as_str()))),
                scope: strings.get(&scope.to_string()),
                issued_at: at.as_unix_millis(),
                // Most grants hold one token: room for exactly one (the answer keeps
                // every live grant, so a Vec's default first growth, to four, adds up).
                access: Vec::with_capacity(1),
                refresh_expires: None,
            },
        ),
        // Tokens already expired at the moment asked about can never be in the answer.
        grant::Change::AccessIssued(issue) if issue.expires_at.as_unix_millis() > at_millis => {
            FoldOp::AddToken(
                grant_id,
                (
                    *issue.hash.as_bytes(),
                    strings.get(&issue.scope.to_string()),
                    issue.expires_at.as_unix_millis(),
                ),
            )
        }
        grant::Change::AccessIssued(_) => return None,
        grant::Change::RefreshIssued(issue) => {
            FoldOp::Refreshable(grant_id, issue.expires_at.as_unix_millis())
        }
        grant::Change::AccessRevoked { hash, .. } => {
            FoldOp::RevokeToken(grant_id, *hash.as_bytes())
        }
        grant::Change::Revoked { .. } => FoldOp::Forget(grant_id),
        // The new refresh token's issue replaces the rotated one's expiry; a reuse is
        // followed by the revocation that matters here.
        grant::Change::RefreshRotated(_) | grant::Change::RefreshReused { .. } => return None,
    })
}

fn fold(grants: &mut HashMap<Uuid, GrantFold>, op: FoldOp) {
    match op {
        FoldOp::Open(grant_id, g) => {
            grants.insert(grant_id, g);
        }
        FoldOp::AddToken(grant_id, token) => {
            if let Some(g) = grants.get_mut(&grant_id) {
                g.access.push(token);
            }
        }
        FoldOp::Refreshable(grant_id, expires) => {
            if let Some(g) = grants.get_mut(&grant_id) {
                g.refresh_expires = Some(expires);
            }
        }
        FoldOp::RevokeToken(grant_id, hash) => {
            if let Some(g) = grants.get_mut(&grant_id) {
                g.access.retain(|(h, _, _)| *h != hash);
            }
        }
        // A revoked grant is gone for good: forget it (keeps memory to the live set).
        FoldOp::Forget(grant_id) => {
            grants.remove(&grant_id);
        }
    }
}
