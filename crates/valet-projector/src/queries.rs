//! The read-model queries of the use cases, on PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::Row;
use uuid::Uuid;
use valet_app::read::{
    AccessTokenView, ClientSummary, ConnectedApp, ReadModels, RefreshStatus, RefreshTokenView,
    SessionView, UserCredentials, UserSummary,
};
use valet_app::StoreError;
use valet_domain::oidc::SessionId;
use valet_domain::session::EndReason;
use valet_domain::{ClientId, GrantId, ScopeSet, Timestamp, TokenHash, UserId, Username};

use crate::db_error;

/// Cheap to clone: shares the store's connection pool.
#[derive(Clone)]
pub struct PgReadModels {
    pool: Pool,
    /// Access-token lookups, batched (started on first use, inside the runtime).
    lookups: Arc<OnceLock<mpsc::UnboundedSender<Lookup>>>,
}

/// One caller's access-token lookup, waiting for a batch.
struct Lookup {
    hash: Vec<u8>,
    reply: oneshot::Sender<Result<Option<AccessTokenView>, StoreError>>,
}

/// Lookups answered by one query, at most.
const LOOKUP_LIMIT: usize = 128;
/// Lookup queries in flight at once. One: lookups that arrive while a query runs wait
/// for the next, so batches are larger (PostgreSQL's cost per introspection fell from
/// ~15 to ~9 µs against two workers, and throughput and p99 improved at 32 connections).
const LOOKUP_WORKERS: usize = 1;

const ACCESS_TOKENS_SQL: &str =
    "SELECT grant_id, client_id, user_id, username, scope, issued_at, expires_at,
            revoked_at IS NOT NULL, token_sha256
     FROM access_tokens WHERE token_sha256 = ANY($1)";

impl PgReadModels {
    pub fn new(pool: Pool) -> Self {
        PgReadModels {
            pool,
            lookups: Arc::new(OnceLock::new()),
        }
    }

    /// Introspection is the hottest read: concurrent lookups share one query (`= ANY`),
    /// so under load PostgreSQL answers a batch per round trip instead of a token per
    /// round trip. A lookup sent after a commit still sees that commit (read-your-writes):
    /// the batch's query starts after every lookup in it was asked.
    async fn lookup_access_token(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<AccessTokenView>, StoreError> {
        let queue = self.lookups.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..LOOKUP_WORKERS {
                tokio::spawn(answer_lookups(rx.clone(), self.pool.clone()));
            }
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Lookup {
                hash: hash.as_bytes().to_vec(),
                reply,
            })
            .map_err(|_| StoreError::Unavailable("read models are shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the lookup was abandoned".into()))?
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error)?;
        client.query_opt(&statement, params).await.map_err(db_error)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error)?;
        client.query(&statement, params).await.map_err(db_error)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// A lookup worker: answers whatever lookups wait, one query per batch, until the read
/// models are dropped.
async fn answer_lookups(rx: Arc<Mutex<mpsc::UnboundedReceiver<Lookup>>>, pool: Pool) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < LOOKUP_LIMIT {
                match rx.try_recv() {
                    Ok(lookup) => batch.push(lookup),
                    Err(_) => break,
                }
            }
        }
        let hashes: Vec<&[u8]> = batch.iter().map(|l| l.hash.as_slice()).collect();
        let result = async {
            let client = pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let statement = client
                .prepare_cached(ACCESS_TOKENS_SQL)
                .await
                .map_err(db_error)?;
            client.query(&statement, &[&hashes]).await.map_err(db_error)
        }
        .await;
        match result {
            Ok(rows) => {
                // Several callers may ask for the same token.
                let found: HashMap<Vec<u8>, Result<AccessTokenView, StoreError>> = rows
                    .iter()
                    .map(|row| (row.get::<_, Vec<u8>>(8), access_token_view(row)))
                    .collect();
                for lookup in batch {
                    let _ = lookup
                        .reply
                        .send(found.get(&lookup.hash).cloned().transpose());
                }
            }
            Err(error) => {
                for lookup in batch {
                    let _ = lookup.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn access_token_view(row: &Row) -> Result<AccessTokenView, StoreError> {
    Ok(AccessTokenView {
        grant_id: GrantId::new(row.get(0)),
        client_id: client_id(row, 1)?,
        user_id: row.get::<_, Option<Uuid>>(2).map(UserId::new),
        username: username(row, 3)?,
        scope: scope(row, 4)?,
        issued_at: Timestamp::from_unix_millis(row.get(5)),
        expires_at: Timestamp::from_unix_millis(row.get(6)),
        revoked: row.get(7),
    })
}

fn malformed(what: &str) -> StoreError {
    StoreError::Malformed(format!("read model holds an invalid {what}"))
}

fn client_id(row: &Row, index: usize) -> Result<ClientId, StoreError> {
    ClientId::parse(row.get::<_, &str>(index)).map_err(|_| malformed("client id"))
}

fn scope(row: &Row, index: usize) -> Result<ScopeSet, StoreError> {
    ScopeSet::parse(row.get::<_, &str>(index)).map_err(|_| malformed("scope"))
}

fn username(row: &Row, index: usize) -> Result<Option<Username>, StoreError> {
    row.get::<_, Option<&str>>(index)
        .map(|u| Username::parse(u).map_err(|_| malformed("username")))
        .transpose()
}

impl ReadModels for PgReadModels {
    async fn access_token(&self, hash: &TokenHash) -> Result<Option<AccessTokenView>, StoreError> {
        self.lookup_access_token(hash).await
    }

    async fn refresh_token(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<RefreshTokenView>, StoreError> {
        let row = self
            .query_opt(
                "SELECT r.grant_id, r.client_id, g.user_id, g.username, g.scope, r.issued_at,
                        r.expires_at, r.status
                 FROM refresh_tokens r JOIN grants g ON g.grant_id = r.grant_id
                 WHERE r.token_sha256 = $1",
                &[&hash.as_bytes().as_slice()],
            )
            .await?;
        row.map(|row| {
            Ok(RefreshTokenView {
                grant_id: GrantId::new(row.get(0)),
                client_id: client_id(&row, 1)?,
                user_id: row.get::<_, Option<Uuid>>(2).map(UserId::new),
                username: username(&row, 3)?,
                scope: scope(&row, 4)?,
                issued_at: Timestamp::from_unix_millis(row.get(5)),
                expires_at: Timestamp::from_unix_millis(row.get(6)),
                status: match row.get::<_, &str>(7) {
                    "current" => RefreshStatus::Current,
                    "rotated" => RefreshStatus::Rotated,
                    _ => RefreshStatus::Revoked,
                },
            })
        })
        .transpose()
    }

    async fn user_by_name(&self, name: &Username) -> Result<Option<UserCredentials>, StoreError> {
        let row = self
            .query_opt(
                "SELECT u.user_id, u.username, u.disabled_at IS NULL, c.password_hash
                 FROM users u LEFT JOIN user_credentials c ON c.user_id = u.user_id
                 WHERE u.username = $1",
                &[&name.as_str()],
            )
            .await?;
        row.map(|row| {
            Ok(UserCredentials {
                user_id: UserId::new(row.get(0)),
                username: username(&row, 1)?.ok_or_else(|| malformed("username"))?,
                active: row.get(2),
                password_hash: row.get(3),
            })
        })
        .transpose()
    }

    async fn set_password(&self, user_id: UserId, password_hash: &str) -> Result<(), StoreError> {
        self.query(
            "INSERT INTO user_credentials (user_id, password_hash) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET password_hash = $2, updated_at = now()",
            &[&user_id.as_uuid(), &password_hash],
        )
        .await?;
        Ok(())
    }

    async fn active_grants_of_client(&self, client: &ClientId) -> Result<Vec<GrantId>, StoreError> {
        let rows = self
            .query(
                "SELECT grant_id FROM grants WHERE client_id = $1 AND revoked_at IS NULL ORDER BY grant_id",
                &[&client.as_str()],
            )
            .await?;
        Ok(rows.iter().map(|r| GrantId::new(r.get(0))).collect())
    }

    async fn active_grants_of_client_beyond(
        &self,
        client: &ClientId,
        allowed: &ScopeSet,
    ) -> Result<Vec<GrantId>, StoreError> {
        let rows = self
            .query(
                "SELECT grant_id, scope FROM grants WHERE client_id = $1 AND revoked_at IS NULL ORDER BY grant_id",
                &[&client.as_str()],
            )
            .await?;
        Ok(rows
            .iter()
            // A scope that does not parse is no subset of anything: revoked too.
            .filter(|r| !ScopeSet::parse(r.get(1)).is_ok_and(|scope| scope.is_subset(allowed)))
            .map(|r| GrantId::new(r.get(0)))
            .collect())
    }

    async fn active_grants_of_user_for_client(
        &self,
        user: UserId,
        client: &ClientId,
    ) -> Result<Vec<GrantId>, StoreError> {
        let rows = self
            .query(
                "SELECT grant_id FROM grants
                 WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL ORDER BY grant_id",
                &[&user.as_uuid(), &client.as_str()],
            )
            .await?;
        Ok(rows.iter().map(|r| GrantId::new(r.get(0))).collect())
    }

    async fn users(&self) -> Result<Vec<UserSummary>, StoreError> {
        let rows = self
            .query(
                "SELECT user_id, username, disabled_at IS NULL FROM users ORDER BY username",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UserSummary {
                    user_id: UserId::new(r.get(0)),
                    username: Username::parse(r.get(1)).map_err(|_| malformed("username"))?,
                    active: r.get(2),
                })
            })
            .collect()
    }

    async fn sessions_of_user(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<SessionView>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT session_id, started_at, expires_at, last_used_at, clients, ended_at, end_reason
                 FROM sessions WHERE user_id = $1
                 ORDER BY started_at DESC, session_id DESC LIMIT $2",
                &[&user.as_uuid(), &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let clients: Vec<String> = r.get(4);
                let clients = clients
                    .iter()
                    .map(|c| ClientId::parse(c).map_err(|_| malformed("sessions.clients")))
                    .collect::<Result<Vec<_>, _>>()?;
                let ended = match (r.get::<_, Option<i64>>(5), r.get::<_, Option<&str>>(6)) {
                    (Some(at), Some(reason)) => Some((
                        EndReason::parse(reason).ok_or_else(|| malformed("sessions.end_reason"))?,
                        Timestamp::from_unix_millis(at),
                    )),
                    _ => None,
                };
                Ok(SessionView {
                    session_id: SessionId::new(r.get(0)),
                    user_id: user,
                    started_at: Timestamp::from_unix_millis(r.get(1)),
                    expires_at: Timestamp::from_unix_millis(r.get(2)),
                    last_used_at: Timestamp::from_unix_millis(r.get(3)),
                    clients,
                    ended,
                })
            })
            .collect()
    }

    async fn connected_apps(&self, user: UserId) -> Result<Vec<ConnectedApp>, StoreError> {
        // One row per grant; the last use is its newest access token (indexed by grant).
        let rows = self
            .query(
                "SELECT g.client_id, coalesce(c.name, g.client_id), g.scope, g.created_at,
                        coalesce((SELECT max(a.issued_at) FROM access_tokens a
                                  WHERE a.grant_id = g.grant_id), g.created_at)
                 FROM grants g LEFT JOIN clients c ON c.client_id = g.client_id
                 WHERE g.user_id = $1 AND g.revoked_at IS NULL",
                &[&user.as_uuid()],
            )
            .await?;
        let mut apps: HashMap<String, ConnectedApp> = HashMap::new();
        for r in &rows {
            let client: String = r.get(0);
            let scope = ScopeSet::parse(r.get(2)).map_err(|_| malformed("grants.scope"))?;
            let (since, last) = (
                Timestamp::from_unix_millis(r.get(3)),
                Timestamp::from_unix_millis(r.get(4)),
            );
            match apps.get_mut(&client) {
                Some(app) => {
                    app.scope = app.scope.union(&scope);
                    app.since = app.since.min(since);
                    app.last_used = app.last_used.max(last);
                }
                None => {
                    let client_id =
                        ClientId::parse(&client).map_err(|_| malformed("grants.client_id"))?;
                    apps.insert(
                        client,
                        ConnectedApp {
                            client_id,
                            name: r.get(1),
                            scope,
                            since,
                            last_used: last,
                        },
                    );
                }
            }
        }
        let mut apps: Vec<ConnectedApp> = apps.into_values().collect();
        apps.sort_by(|a, b| (&a.name, &a.client_id).cmp(&(&b.name, &b.client_id)));
        Ok(apps)
    }

    async fn active_grants_of_user(&self, user: UserId) -> Result<Vec<GrantId>, StoreError> {
        let rows = self
            .query(
                "SELECT grant_id FROM grants WHERE user_id = $1 AND revoked_at IS NULL ORDER BY grant_id",
                &[&user.as_uuid()],
            )
            .await?;
        Ok(rows.iter().map(|r| GrantId::new(r.get(0))).collect())
    }

    async fn clients(&self) -> Result<Vec<ClientSummary>, StoreError> {
        let rows = self
            .query(
                "SELECT client_id, name, kind, redirect_uris, grant_types, scopes,
                        disabled_at IS NULL AND deleted_at IS NULL
                 FROM clients ORDER BY created_at, client_id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClientSummary {
                client_id: r.get(0),
                name: r.get(1),
                kind: r.get(2),
                redirect_uris: r.get(3),
                grant_types: r.get(4),
                scopes: r.get(5),
                active: r.get(6),
            })
            .collect())
    }
}
