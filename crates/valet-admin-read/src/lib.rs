//! The admin API's read side ([`valet_app::admin::AdminReads`]): clients, users and
//! grants listed with sea-orm entities over the read-model tables, a page at a time by
//! key; and the audit answers from the projector's replays of the log.
//!
//! Invariant: nothing here writes. The read models are the projector's (written in the
//! store's append transaction with tokio-postgres); this crate only selects from them,
//! over its own small pool, so a slow admin listing never holds a connection the token
//! endpoints need.

mod entities;

use sea_orm::sqlx::postgres::PgSslMode as SqlxSslMode;
use sea_orm::{
    ColumnTrait, ConnectOptions, Database, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use valet_app::admin::{
    AdminReads, Answer, AuditFilter, ClientFilter, ClientRow, ClientStatus, Cursor, GrantAt,
    GrantFilter, GrantRow, GrantStatus, Page, PageRequest, TokenStory, UserFilter, UserRow,
    UserStatus,
};
use valet_app::{LogCursor, RecordedEvent, StoreError};
use valet_domain::{GrantId, Timestamp, UserId};
use valet_store::{PgEventStore, PgRoots, PgSslMode};

use entities::{clients, grants, users};

/// Connections of the admin read side's own pool.
const POOL_SIZE: u32 = 4;

/// Rows read per page of an `audit at` replay.
const REPLAY_BATCH: usize = 5000;

/// The admin read side over PostgreSQL.
#[derive(Clone)]
pub struct PgAdminReads {
    db: DatabaseConnection,
    store: PgEventStore,
}

fn unavailable(e: DbErr) -> StoreError {
    StoreError::Unavailable(format!("admin read side: {e}"))
}

impl PgAdminReads {
    /// Connects lazily: the server starts (and answers every other route) while
    /// PostgreSQL is away; a listing then answers 503 until it is back.
    /// TLS as the store's: sqlx is given the same mode and roots (a missing `sslmode`
    /// means no TLS here too, where sqlx alone would try it).
    pub async fn connect(store: PgEventStore) -> Result<Self, StoreError> {
        let endpoint = store.endpoint();
        let mut options = ConnectOptions::new(endpoint.url_without_tls().to_owned());
        let mode = match endpoint.ssl_mode() {
            PgSslMode::Disable => SqlxSslMode::Disable,
            PgSslMode::Prefer => SqlxSslMode::Prefer,
            PgSslMode::Require => SqlxSslMode::Require,
            PgSslMode::VerifyCa => SqlxSslMode::VerifyCa,
            PgSslMode::VerifyFull => SqlxSslMode::VerifyFull,
        };
        let root_file = match endpoint.roots() {
            Some(PgRoots::File(path)) => Some(path.clone()),
            // The system's roots are sqlx's own without a file.
            Some(PgRoots::System) | None => None,
        };
        options.map_sqlx_postgres_opts(move |pg| {
            let pg = pg.ssl_mode(mode);
            match &root_file {
                Some(path) => pg.ssl_root_cert(path),
                None => pg,
            }
        });
        options
            .max_connections(POOL_SIZE)
            .min_connections(0)
            .connect_timeout(std::time::Duration::from_secs(5))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy(true)
            .sqlx_logging(false);
        let db = Database::connect(options).await.map_err(unavailable)?;
        Ok(PgAdminReads { db, store })
    }

    async fn client_page(
        &self,
        filter: &ClientFilter,
        page: &PageRequest,
    ) -> Result<Page<ClientRow>, StoreError> {
        let mut select = clients::Entity::find()
            .order_by_asc(clients::Column::ClientId)
            .limit(page.size.get() + 1);
        if let Some(after) = &page.after {
            select = select.filter(clients::Column::ClientId.gt(after.key()));
        }
        select = match filter.status {
            None => select,
            Some(ClientStatus::Active) => select
                .filter(clients::Column::DisabledAt.is_null())
                .filter(clients::Column::DeletedAt.is_null()),
            Some(ClientStatus::Disabled) => select
                .filter(clients::Column::DisabledAt.is_not_null())
                .filter(clients::Column::DeletedAt.is_null()),
            Some(ClientStatus::Deleted) => select.filter(clients::Column::DeletedAt.is_not_null()),
        };
        let rows = select.all(&self.db).await.map_err(unavailable)?;
        let rows = rows
            .into_iter()
            .map(|c| ClientRow {
                status: match (c.deleted_at, c.disabled_at) {
                    (Some(_), _) => ClientStatus::Deleted,
                    (None, Some(_)) => ClientStatus::Disabled,
                    (None, None) => ClientStatus::Active,
                },
                client_id: c.client_id,
                name: c.name,
                kind: c.kind,
                redirect_uris: c.redirect_uris,
                grant_types: c.grant_types,
                scope: c.scopes,
                created_at: Timestamp::from_unix_millis(c.created_at),
            })
            .collect();
        Ok(Page::of(rows, page.size, |c: &ClientRow| {
            c.client_id.clone()
        }))
    }

    async fn user_page(
        &self,
        filter: &UserFilter,
        page: &PageRequest,
    ) -> Result<Page<UserRow>, StoreError> {
        let mut select = users::Entity::find()
            .order_by_asc(users::Column::Username)
            .limit(page.size.get() + 1);
        if let Some(after) = &page.after {
            select = select.filter(users::Column::Username.gt(after.key()));
        }
        if let Some(prefix) = &filter.username_prefix {
            select = select.filter(users::Column::Username.starts_with(prefix));
        }
        select = match filter.status {
            None => select,
            Some(UserStatus::Active) => select.filter(users::Column::DisabledAt.is_null()),
            Some(UserStatus::Disabled) => select.filter(users::Column::DisabledAt.is_not_null()),
        };
        let rows = select.all(&self.db).await.map_err(unavailable)?;
        let rows = rows
            .into_iter()
            .map(|u| UserRow {
                user_id: UserId::new(u.user_id),
                username: u.username,
                created_at: Timestamp::from_unix_millis(u.created_at),
                status: if u.disabled_at.is_some() {
                    UserStatus::Disabled
                } else {
                    UserStatus::Active
                },
            })
            .collect();
        Ok(Page::of(rows, page.size, |u: &UserRow| u.username.clone()))
    }

    async fn grant_page(
        &self,
        filter: &GrantFilter,
        page: &PageRequest,
    ) -> Result<Page<GrantRow>, StoreError> {
        let mut select = grants::Entity::find()
            .order_by_asc(grants::Column::GrantId)
            .limit(page.size.get() + 1);
        if let Some(after) = &page.after {
            let Ok(after) = uuid::Uuid::parse_str(&after.key()) else {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            };
            select = select.filter(grants::Column::GrantId.gt(after));
        }
        if let Some(client_id) = &filter.client_id {
            select = select.filter(grants::Column::ClientId.eq(client_id.as_str()));
        }
        if let Some(username) = &filter.username {
            let user = users::Entity::find()
                .filter(users::Column::Username.eq(username.as_str()))
                .one(&self.db)
                .await
                .map_err(unavailable)?;
            let Some(user) = user else {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            };
            select = select.filter(grants::Column::UserId.eq(user.user_id));
        }
        select = match filter.status {
            None => select,
            Some(GrantStatus::Active) => select.filter(grants::Column::RevokedAt.is_null()),
            Some(GrantStatus::Revoked) => select.filter(grants::Column::RevokedAt.is_not_null()),
        };
        let rows = select.all(&self.db).await.map_err(unavailable)?;
        let rows = rows.into_iter().map(grant_row).collect();
        Ok(Page::of(rows, page.size, |g: &GrantRow| {
            g.grant_id.as_uuid().to_string()
        }))
    }

    async fn one_grant(&self, grant_id: GrantId) -> Result<Option<GrantRow>, StoreError> {
        Ok(grants::Entity::find_by_id(grant_id.as_uuid())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(grant_row))
    }

    async fn log_page(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<RecordedEvent>, StoreError> {
        let after = match &page.after {
            None => LogCursor::START,
            Some(cursor) => match log_cursor(cursor) {
                Some(after) => after,
                None => {
                    return Ok(Page {
                        items: Vec::new(),
                        next: None,
                    })
                }
            },
        };
        let timeline = valet_projector::audit::Timeline::open(self.store.pool(), filter).await?;
        let events = timeline.page(after, page.size.get() as i64 + 1).await?;
        Ok(Page::of(events, page.size, |e: &RecordedEvent| {
            let cursor = e.cursor();
            format!("{}.{}", cursor.xact, cursor.position)
        }))
    }
}

fn log_cursor(cursor: &Cursor) -> Option<LogCursor> {
    let key = cursor.key();
    let (xact, position) = key.split_once('.')?;
    Some(LogCursor {
        xact: xact.parse().ok()?,
        position: position.parse().ok()?,
    })
}

fn grant_row(g: grants::Model) -> GrantRow {
    GrantRow {
        grant_id: GrantId::new(g.grant_id),
        client_id: g.client_id,
        user_id: g.user_id.map(UserId::new),
        username: g.username,
        scope: g.scope,
        origin: g.origin,
        created_at: Timestamp::from_unix_millis(g.created_at),
        revoked: g.revoked_at.map(|at| {
            (
                Timestamp::from_unix_millis(at),
                g.revoked_reason.unwrap_or_default(),
            )
        }),
    }
}

impl AdminReads for PgAdminReads {
    fn clients<'a>(
        &'a self,
        filter: &'a ClientFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<ClientRow>> {
        Box::pin(self.client_page(filter, page))
    }

    fn users<'a>(
        &'a self,
        filter: &'a UserFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<UserRow>> {
        Box::pin(self.user_page(filter, page))
    }

    fn grants<'a>(
        &'a self,
        filter: &'a GrantFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<GrantRow>> {
        Box::pin(self.grant_page(filter, page))
    }

    fn grant(&self, grant_id: GrantId) -> Answer<'_, Option<GrantRow>> {
        Box::pin(self.one_grant(grant_id))
    }

    fn audit_log<'a>(
        &'a self,
        filter: &'a AuditFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<RecordedEvent>> {
        Box::pin(self.log_page(filter, page))
    }

    fn audit_token<'a>(&'a self, token_or_sha256: &'a str) -> Answer<'a, Option<TokenStory>> {
        Box::pin(async move {
            Ok(
                valet_projector::audit::lineage(&self.store, token_or_sha256)
                    .await?
                    .map(|lineage| lineage.story()),
            )
        })
    }

    fn audit_at(&self, at_micros: i64) -> Answer<'_, Vec<GrantAt>> {
        Box::pin(async move {
            let active =
                valet_projector::audit::active_at(&self.store, at_micros, REPLAY_BATCH).await?;
            let mut grants: Vec<GrantAt> = active.iter().collect();
            grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
            Ok(grants)
        })
    }
}
