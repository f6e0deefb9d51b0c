//! `/admin/v1/grants`: list grants per client or user, show one, revoke one.

use axum::extract::Path;
use axum::http::Uri;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use valet_app::admin::{AdminError, GrantFilter, GrantRow, GrantStatus};
use valet_domain::{ClientId, GrantId};

use super::{admin_handler, ok, page_request, query, time};

/// A grant: what a client may do, on whose behalf.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Grant {
    grant_id: String,
    client_id: String,
    /// `sub` of the user it acts for; absent for client_credentials.
    user_id: Option<String>,
    username: Option<String>,
    scope: String,
    /// How it was made: `authorization_code` or `client_credentials`.
    origin: String,
    created_at: String,
    /// `active` or `revoked`.
    status: String,
    revoked_at: Option<String>,
    revoked_reason: Option<String>,
}

impl From<GrantRow> for Grant {
    fn from(g: GrantRow) -> Self {
        let (revoked_at, revoked_reason) = match g.revoked {
            Some((at, reason)) => (Some(time(at.as_unix_millis())), Some(reason)),
            None => (None, None),
        };
        Grant {
            grant_id: g.grant_id.as_uuid().to_string(),
            client_id: g.client_id,
            user_id: g.user_id.map(|u| u.to_string()),
            username: g.username,
            scope: g.scope,
            origin: g.origin,
            created_at: time(g.created_at.as_unix_millis()),
            status: if revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .to_owned(),
            revoked_at,
            revoked_reason,
        }
    }
}

/// A page of grants, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantList {
    items: Vec<Grant>,
    next_cursor: Option<String>,
}

/// Filters of `GET /admin/v1/grants`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GrantQuery {
    /// Grants held by this client.
    client_id: Option<String>,
    /// Grants made on behalf of this user.
    username: Option<String>,
    /// `active` or `revoked`.
    status: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// The `next_cursor` of the page before.
    after: Option<String>,
}

/// The result of a revocation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantRevoked {
    grant_id: String,
    /// False when it was revoked already.
    revoked: bool,
}

fn grant_id(text: &str) -> Result<GrantId, AdminError> {
    uuid::Uuid::parse_str(text)
        .map(GrantId::new)
        .map_err(|_| AdminError::NotFound(format!("grant {text}")))
}

admin_handler!(
    /// Grants, oldest first, filtered by client, user and status.
    #[utoipa::path(get, path = "/admin/v1/grants", tag = "grants", params(GrantQuery),
        responses((status = 200, body = GrantList)))]
    list(uri: Uri) |app, _meta| {
        let q: GrantQuery = query(&uri)?;
        let page = page_request(q.limit, q.after.as_deref())?;
        let filter = GrantFilter {
            status: q.status.as_deref().map(GrantStatus::parse).transpose()?,
            client_id: match q.client_id.as_deref() {
                None => None,
                Some(id) => match ClientId::parse(id) {
                    Ok(id) => Some(id),
                    Err(_) => return Ok(ok(GrantList { items: Vec::new(), next_cursor: None })),
                },
            },
            username: q.username,
        };
        let found = app.admin_reads.grants(&filter, &page).await?;
        Ok(ok(GrantList {
            items: found.items.into_iter().map(Grant::from).collect(),
            next_cursor: found.next.map(|c| c.as_str().to_owned()),
        }))
    }
);

admin_handler!(
    /// One grant.
    #[utoipa::path(get, path = "/admin/v1/grants/{grant_id}", tag = "grants",
        params(("grant_id" = String, Path)),
        responses((status = 200, body = Grant)))]
    show(id: Path<String>) |app, _meta| {
        let grant = grant_id(&id)?;
        match app.admin_reads.grant(grant).await? {
            Some(row) => Ok(ok(Grant::from(row))),
            None => Err(AdminError::NotFound(format!("grant {}", id.0))),
        }
    }
);

admin_handler!(
    /// Revokes a grant (reason `admin`): its tokens stop working, and resource services
    /// hear `grant.revoked`.
    #[utoipa::path(post, path = "/admin/v1/grants/{grant_id}/revoke", tag = "grants",
        params(("grant_id" = String, Path)),
        responses((status = 200, body = GrantRevoked)))]
    revoke(id: Path<String>) |app, meta| {
        let grant = grant_id(&id)?;
        if app.admin_reads.grant(grant).await?.is_none() {
            return Err(AdminError::NotFound(format!("grant {}", id.0)));
        }
        let revoked = app.oauth.revoke_grant_as_admin(grant, &meta).await?;
        Ok(ok(GrantRevoked { grant_id: grant.as_uuid().to_string(), revoked }))
    }
);
