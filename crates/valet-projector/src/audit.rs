//! Answers from the log for incident responders and auditors: the timeline of events,
//! the lineage of one token, and who held which grants at a moment in the past.
//!
//! Everything here reads; nothing writes. The log is streamed in pages (memory stays
//! bounded by the answer, not by the log).

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use uuid::Uuid;
use valet_app::{LogCursor, Replayable, StoreError};
use valet_domain::grant::{self, GrantOrigin};
use valet_domain::{DomainEvent, TokenHash};
use valet_store::PgEventStore;

use crate::db_error;

/// One event as the timeline shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub position: i64,
    pub xact: i64,
    pub event_id: String,
    pub recorded_at_micros: i64,
    pub stream_id: String,
    pub event_type: String,
    pub schema_version: i32,
    pub actor: Option<String>,
    pub payload: Value,
    pub metadata: Value,
}

/// Filters of `valet audit log`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub stream: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// Unix microseconds, inclusive.
    pub since_micros: Option<i64>,
    /// Unix microseconds, inclusive.
    pub until_micros: Option<i64>,
}

/// Streams the events matching `filter` in log order, `page` at a time, to `sink`.
pub async fn log(
    pool: &Pool,
    filter: &LogFilter,
    page: i64,
    sink: &mut (dyn FnMut(&LogEntry) -> std::io::Result<()> + Send),
) -> Result<u64, StoreError> {
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let user_id: Option<uuid::Uuid> = match &filter.username {
        Some(name) => {
            let row = client
                .query_opt("SELECT user_id FROM users WHERE username = $1", &[name])
                .await
                .map_err(db_error)?;
            match row {
                Some(row) => Some(row.get(0)),
                None => return Ok(0),
            }
        }
        None => None,
    };
    // A client's or user's events live in their own stream, in their grants' streams,
    // in codes issued to them and in consent streams (whose ids embed both).
    let sql = "SELECT e.position, e.xact, e.event_id::text,
                      (extract(epoch FROM e.recorded_at) * 1000000)::bigint,
                      e.stream_id, e.event_type, e.schema_version, e.metadata->>'actor',
                      e.payload, e.metadata
               FROM events e
               WHERE (e.xact, e.position) > ($1, $2)
                 AND ($3::text IS NULL OR e.stream_id = $3)
                 AND ($4::timestamptz IS NULL OR e.recorded_at >= $4)
                 AND ($5::timestamptz IS NULL OR e.recorded_at <= $5)
                 AND ($6::text IS NULL
                      OR e.stream_id = 'client-' || $6
                      OR e.payload->>'client_id' = $6
                      OR e.stream_id LIKE 'consent-%-' || $6
                      OR e.stream_id IN (SELECT 'grant-' || grant_id FROM grants WHERE client_id = $6))
                 AND ($7::uuid IS NULL
                      OR e.stream_id = 'user-' || $7::text
                      OR e.stream_id LIKE 'consent-' || $7::text || '-%'
                      OR e.stream_id IN (SELECT c.stream_id FROM events c
                                         WHERE c.event_type = 'CodeIssued' AND c.payload->>'user_id' = $7::text)
                      OR e.stream_id IN (SELECT 'grant-' || grant_id FROM grants WHERE user_id = $7))
               ORDER BY e.xact, e.position
               LIMIT $8";
    let statement = client.prepare(sql).await.map_err(db_error)?;
    let since = filter.since_micros.map(micros_to_system_time);
    let until = filter.until_micros.map(micros_to_system_time);
    let mut cursor = LogCursor::START;
    let mut count = 0u64;
    loop {
        let params: [&(dyn ToSql + Sync); 8] = [
            &cursor.xact,
            &cursor.position,
            &filter.stream,
            &since,
            &until,
            &filter.client_id,
            &user_id,
            &page,
        ];
        let rows = client.query(&statement, &params).await.map_err(db_error)?;
        for row in &rows {
            let entry = LogEntry {
                position: row.get(0),
                xact: row.get(1),
                event_id: row.get(2),
                recorded_at_micros: row.get(3),
                stream_id: row.get(4),
                event_type: row.get(5),
                schema_version: row.get(6),
                actor: row.get(7),
                payload: row.get(8),
                metadata: row.get(9),
            };
            sink(&entry).map_err(|e| StoreError::Unavailable(format!("output: {e}")))?;
            count += 1;
            cursor = LogCursor {
                xact: entry.xact,
                position: entry.position,
            };
        }
        if (rows.len() as i64) < page {
            return Ok(count);
        }
    }
}

fn micros_to_system_time(micros: i64) -> std::time::SystemTime {
    if micros >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_micros(micros.unsigned_abs())
    }
}

/// The story of one token: every event of its grant, of the code and consent it came
/// from, and the client's registration, in log order.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub token_sha256: String,
    /// `access_token` or `refresh_token`.
    pub token_type: &'static str,
    pub grant_id: String,
    pub client: Vec<LogEntry>,
    pub consent: Vec<LogEntry>,
    pub code: Vec<LogEntry>,
    pub grant: Vec<LogEntry>,
}

/// Finds the grant a token belongs to, by the token or its SHA-256 (64 hex characters).
pub async fn lineage(pool: &Pool, token_or_sha256: &str) -> Result<Option<Lineage>, StoreError> {
    let hash =
        TokenHash::from_hex(token_or_sha256).unwrap_or_else(|_| TokenHash::of(token_or_sha256));
    let hex = hash.to_string();
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    // The log is the authority (read models may be mid-rebuild): search grant events for
    // the digest in the places tokens appear.
    let found = client
        .query_opt(
            "SELECT stream_id,
                    CASE WHEN payload->'access'->>'hash' = $1 THEN 'access_token' ELSE 'refresh_token' END
             FROM events
             WHERE stream_id LIKE 'grant-%'
               AND event_type IN ('GrantIssued', 'TokensRefreshed')
               AND (payload->'access'->>'hash' = $1 OR payload->'refresh'->>'hash' = $1)
             LIMIT 1",
            &[&hex],
        )
        .await
        .map_err(db_error)?;
    let Some(found) = found else { return Ok(None) };
    let grant_stream: String = found.get(0);
    let token_type = if found.get::<_, &str>(1) == "access_token" {
        "access_token"
    } else {
        "refresh_token"
    };
    let grant = stream(&client, &grant_stream).await?;
    let issued = grant.first().and_then(|e| {
        grant::Event::from_payload(&e.event_type, e.schema_version as u32, e.payload.clone()).ok()
    });
    let (mut client_events, mut consent, mut code) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(grant::Event::GrantIssued {
        client_id,
        subject,
        origin,
        ..
    }) = issued
    {
        client_events = stream(&client, &format!("client-{client_id}")).await?;
        if let Some(subject) = subject {
            consent = stream(&client, &format!("consent-{}-{client_id}", subject.user_id)).await?;
        }
        if let GrantOrigin::AuthorizationCode { code_hash } = origin {
            code = stream(&client, &format!("code-{code_hash}")).await?;
        }
    }
    Ok(Some(Lineage {
        token_sha256: hex,
        token_type,
        grant_id: grant_stream.trim_start_matches("grant-").to_owned(),
        client: client_events,
        consent,
        code,
        grant,
    }))
}

async fn stream(
    client: &deadpool_postgres::Client,
    stream_id: &str,
) -> Result<Vec<LogEntry>, StoreError> {
    let rows = client
        .query(
            "SELECT position, xact, event_id::text, (extract(epoch FROM recorded_at) * 1000000)::bigint,
                    stream_id, event_type, schema_version, metadata->>'actor', payload, metadata
             FROM events WHERE stream_id = $1 ORDER BY stream_version",
            &[&stream_id],
        )
        .await
        .map_err(db_error)?;
    Ok(rows
        .iter()
        .map(|row| LogEntry {
            position: row.get(0),
            xact: row.get(1),
            event_id: row.get(2),
            recorded_at_micros: row.get(3),
            stream_id: row.get(4),
            event_type: row.get(5),
            schema_version: row.get(6),
            actor: row.get(7),
            payload: row.get(8),
            metadata: row.get(9),
        })
        .collect())
}

/// A grant as it stood at the moment asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantAt {
    pub grant_id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub scope: String,
    pub issued_at_millis: i64,
    /// Access tokens live at that moment: (SHA-256 hex, scope, expires_at millis).
    pub access_tokens: Vec<(String, String, i64)>,
    /// Whether a refresh token was redeemable at that moment.
    pub refreshable: bool,
}

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
/// Three stages run at once: the store reads rows, a task decodes the grant events of
/// each batch (JSON, most of the CPU) into map operations, and this one applies them in
/// log order.
pub async fn active_at(
    store: &PgEventStore,
    at_micros: i64,
    batch: usize,
) -> Result<ActiveGrants, StoreError> {
    let at_millis = at_micros.div_euclid(1000);
    let mut grants: HashMap<Uuid, GrantFold> = HashMap::new();
    // One snapshot of the log: everything committed when the replay starts, whatever
    // other transactions are open (an audit must not wait for, or skip past, them).
    let mut batches = store
        .read_snapshot(valet_store::SnapshotScope::All, batch)
        .await?
        .batches;
    let (decoded_tx, mut decoded) = tokio::sync::mpsc::channel(2);
    let decoder = tokio::spawn(async move {
        let mut strings = Interner::default();
        let mut read = 0u64;
        'replay: while let Some(events) = batches.recv().await {
            let events = match events {
                Ok(events) => events,
                Err(e) => {
                    let _ = decoded_tx.send(Err(e)).await;
                    return read;
                }
            };
            let mut out = Vec::with_capacity(events.len());
            let mut past = false;
            for mut event in events {
                read += 1;
                if event.recorded_at_micros > at_micros {
                    if event.recorded_at_micros > at_micros + COMMIT_SLACK_MICROS {
                        past = true;
                        break;
                    }
                    continue;
                }
                let Some(grant_id) = event
                    .stream_id
                    .strip_prefix("grant-")
                    .and_then(|id| Uuid::parse_str(id).ok())
                else {
                    continue;
                };
                match event.decode_as::<grant::Event>() {
                    Ok(decoded) => out.extend(fold_op(&mut strings, at_millis, grant_id, decoded)),
                    Err(e) => {
                        let error = StoreError::Malformed(format!("event {}: {e}", event.event_id));
                        let _ = decoded_tx.send(Err(error)).await;
                        return read;
                    }
                }
            }
            if decoded_tx.send(Ok(out)).await.is_err() || past {
                break 'replay;
            }
        }
        read
    });
    while let Some(events) = decoded.recv().await {
        for event in events? {
            fold(&mut grants, event);
        }
    }
    let read = decoder
        .await
        .map_err(|e| StoreError::Unavailable(format!("replay: {e}")))?;
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

/// A live access token: (SHA-256, scope, expires_at millis).
type LiveToken = ([u8; 32], Arc<str>, i64);

/// What one grant event does to the replay's state, prepared by the decoding task
/// (interning, conversions) so that the folding loop only touches the map.
enum FoldOp {
    Issue(Uuid, GrantFold),
    Refresh(Uuid, Option<LiveToken>, i64),
    RevokeToken(Uuid, [u8; 32]),
    Forget(Uuid),
}

fn fold_op(
    strings: &mut Interner,
    at_millis: i64,
    grant_id: Uuid,
    event: grant::Event,
) -> Option<FoldOp> {
    // Tokens already expired at the moment asked about can never be in the answer.
    let live = |a: &grant::AccessTokenIssue, strings: &mut Interner| {
        (a.expires_at.as_unix_millis() > at_millis).then(|| {
            (
                *a.hash.as_bytes(),
                strings.get(&a.scope.to_string()),
                a.expires_at.as_unix_millis(),
            )
        })
    };
    Some(match event {
        grant::Event::GrantIssued {
            client_id,
            subject,
            scope,
            access,
            refresh,
            at,
            ..
        } => FoldOp::Issue(
            grant_id,
            GrantFold {
                client_id: strings.get(client_id.as_str()),
                subject: subject.map(|s| (s.user_id.as_uuid(), strings.get(s.username.as_str()))),
                scope: strings.get(&scope.to_string()),
                issued_at: at.as_unix_millis(),
                access: live(&access, strings).into_iter().collect(),
                refresh_expires: refresh.map(|r| r.expires_at.as_unix_millis()),
            },
        ),
        grant::Event::TokensRefreshed {
            access, refresh, ..
        } => FoldOp::Refresh(
            grant_id,
            live(&access, strings),
            refresh.expires_at.as_unix_millis(),
        ),
        grant::Event::AccessTokenRevoked { hash, .. } => {
            FoldOp::RevokeToken(grant_id, *hash.as_bytes())
        }
        grant::Event::GrantRevoked { .. } => FoldOp::Forget(grant_id),
        grant::Event::RefreshTokenReused { .. } => return None,
    })
}

fn fold(grants: &mut HashMap<Uuid, GrantFold>, op: FoldOp) {
    match op {
        FoldOp::Issue(grant_id, g) => {
            grants.insert(grant_id, g);
        }
        FoldOp::Refresh(grant_id, token, refresh_expires) => {
            if let Some(g) = grants.get_mut(&grant_id) {
                g.access.extend(token);
                g.refresh_expires = Some(refresh_expires);
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
