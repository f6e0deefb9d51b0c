//! `/admin/v1/audit`: the log's answers for incident responders and auditors: the
//! timeline (`log`), the story of one token (`token`) and the grants active at a moment
//! (`at`), as `valet audit` gives them.

use axum::body::Bytes;
use axum::http::Uri;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use valet_app::admin::{AdminError, AuditFilter, Cursor, Page, PageRequest, TokenStory};
use valet_app::RecordedEvent;

use super::{admin_handler, body, ok, page_request, query, time};

/// An event as the log recorded it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEvent {
    position: i64,
    /// When the store recorded it (RFC 3339, microseconds).
    time: String,
    event_id: String,
    stream: String,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    /// Who did it: `admin:cli`, `client:<id>`, `user:<id>`, …
    actor: Option<String>,
    /// The event's fields (digests of tokens, never tokens).
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// Actor, client address, request and correlation ids.
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
}

fn micros_rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl From<&RecordedEvent> for AuditEvent {
    fn from(e: &RecordedEvent) -> Self {
        AuditEvent {
            position: e.position,
            time: micros_rfc3339(e.recorded_at_micros),
            event_id: e.event_id.to_string(),
            stream: e.stream.to_string(),
            event_type: e.event.event_type().to_owned(),
            schema_version: e.event.schema_version(),
            actor: e.metadata.actor.clone(),
            payload: e.event.to_payload(),
            metadata: serde_json::to_value(&e.metadata).unwrap_or_default(),
        }
    }
}

/// A page of the log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditLog {
    items: Vec<AuditEvent>,
    next_cursor: Option<String>,
}

/// Filters of `GET /admin/v1/audit/log`, combined with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// One stream, e.g. `client-<id>` or `grant-<id>`.
    stream: Option<String>,
    /// Events of this client, its grants, codes and consents.
    client_id: Option<String>,
    /// Events of this user, their grants, codes, consents and sessions.
    username: Option<String>,
    /// RFC 3339, inclusive.
    since: Option<String>,
    /// RFC 3339, inclusive.
    until: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// The `next_cursor` of the page before.
    after: Option<String>,
}

fn instant(text: &str, name: &str) -> Result<i64, AdminError> {
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        AdminError::Invalid(format!(
            "{name} is not an RFC 3339 time (e.g. 2026-12-07T09:30:00Z)"
        ))
    })?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000)
        .map_err(|_| AdminError::Invalid(format!("{name} is out of range")))
}

/// Which token: its value or its SHA-256 (hex). Sent in the body so that it never
/// appears in a URL.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenQuestion {
    token: Option<String>,
    token_sha256: Option<String>,
}

/// An event of a token's story, with what it is part of.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoryEvent {
    /// `client`, `consent`, `code` or `grant`.
    part: String,
    #[serde(flatten)]
    event: AuditEvent,
}

/// How a token stopped working.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RevocationStory {
    reason: String,
    event: AuditEvent,
    /// The event that caused it, when the log says.
    cause_event_id: Option<String>,
    cause_stream: Option<String>,
}

/// The story of one token, from the log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenReport {
    token_sha256: String,
    /// `access_token` or `refresh_token`.
    kind: String,
    grant_id: String,
    events: Vec<StoryEvent>,
    /// Absent while it was never revoked (it may have expired: see `at`).
    revocation: Option<RevocationStory>,
}

impl From<TokenStory> for TokenReport {
    fn from(story: TokenStory) -> Self {
        TokenReport {
            token_sha256: story.token_sha256,
            kind: story.kind.as_str().to_owned(),
            grant_id: story.grant_id,
            events: story
                .events
                .iter()
                .map(|(part, e)| StoryEvent {
                    part: (*part).to_owned(),
                    event: AuditEvent::from(e),
                })
                .collect(),
            revocation: story.revocation.map(|r| RevocationStory {
                reason: r.reason,
                event: AuditEvent::from(&r.event),
                cause_event_id: r.cause.as_ref().map(|(id, _)| id.to_string()),
                cause_stream: r.cause.map(|(_, stream)| stream),
            }),
        }
    }
}

/// Filters of `GET /admin/v1/audit/at`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AtQuery {
    /// The moment, RFC 3339.
    time: String,
    client_id: Option<String>,
    username: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// The `next_cursor` of the page before.
    after: Option<String>,
}

/// An access token live at the moment.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenAt {
    token_sha256: String,
    scope: String,
    expires_at: String,
}

/// A grant as it stood at the moment.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantAt {
    grant_id: String,
    client_id: String,
    user_id: Option<String>,
    username: Option<String>,
    scope: String,
    issued_at: String,
    access_tokens: Vec<TokenAt>,
    /// Whether a refresh token was redeemable then.
    refreshable: bool,
}

/// A page of the grants active at a moment, by grant id.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantsAt {
    at: String,
    items: Vec<GrantAt>,
    next_cursor: Option<String>,
}

admin_handler!(
    /// The events matching the filters, in log order.
    #[utoipa::path(get, path = "/admin/v1/audit/log", tag = "audit", params(LogQuery),
        responses((status = 200, body = AuditLog)))]
    log(uri: Uri) |app, _meta| {
        let q: LogQuery = query(&uri)?;
        let filter = AuditFilter {
            stream: q.stream,
            client_id: q.client_id,
            username: q.username,
            since_micros: q.since.as_deref().map(|t| instant(t, "since")).transpose()?,
            until_micros: q.until.as_deref().map(|t| instant(t, "until")).transpose()?,
        };
        let page = page_request(q.limit, q.after.as_deref())?;
        let found = app.admin_reads.audit_log(&filter, &page).await?;
        Ok(ok(AuditLog {
            items: found.items.iter().map(AuditEvent::from).collect(),
            next_cursor: found.next.map(|c| c.as_str().to_owned()),
        }))
    }
);

admin_handler!(
    /// The story of one token: its grant, the code and consent it came from, its
    /// client, and how it stopped working.
    #[utoipa::path(post, path = "/admin/v1/audit/token", tag = "audit", request_body = TokenQuestion,
        responses((status = 200, body = TokenReport)))]
    token(bytes: Bytes) |app, _meta| {
        let question: TokenQuestion = body(&bytes)?;
        let token = match (question.token, question.token_sha256) {
            (Some(token), None) if !token.is_empty() => token,
            (None, Some(hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => hex.to_ascii_lowercase(),
            _ => return Err(AdminError::Invalid(
                "give either token or token_sha256 (64 hex characters)".into(),
            )),
        };
        match app.admin_reads.audit_token(&token).await? {
            Some(story) => Ok(ok(TokenReport::from(story))),
            None => Err(AdminError::NotFound("a token with that value or SHA-256".into())),
        }
    }
);

admin_handler!(
    /// The grants active at a moment, with their live access tokens, by replaying the
    /// log up to it (costs a replay per request).
    #[utoipa::path(get, path = "/admin/v1/audit/at", tag = "audit", params(AtQuery),
        responses((status = 200, body = GrantsAt)))]
    at(uri: Uri) |app, _meta| {
        let q: AtQuery = query(&uri)?;
        let at = instant(&q.time, "time")?;
        let page = page_request(q.limit, q.after.as_deref())?;
        let grants = app.admin_reads.audit_at(at).await?;
        let found = page_of(grants, &page, |g| {
            q.client_id.as_deref().is_none_or(|c| g.client_id == c)
                && q.username.as_deref().is_none_or(|u| g.username.as_deref() == Some(u))
        });
        Ok(ok(GrantsAt {
            at: micros_rfc3339(at),
            items: found
                .items
                .into_iter()
                .map(|g| GrantAt {
                    access_tokens: g
                        .access_tokens
                        .into_iter()
                        .map(|(hash, scope, expires)| TokenAt { token_sha256: hash, scope, expires_at: time(expires) })
                        .collect(),
                    grant_id: g.grant_id,
                    client_id: g.client_id,
                    user_id: g.user_id,
                    username: g.username,
                    scope: g.scope,
                    issued_at: time(g.issued_at_millis),
                    refreshable: g.refreshable,
                })
                .collect(),
            next_cursor: found.next.map(|c| c.as_str().to_owned()),
        }))
    }
);

/// One page of `grants` (sorted by id) that `keep` keeps.
fn page_of(
    grants: Vec<valet_app::admin::GrantAt>,
    page: &PageRequest,
    keep: impl Fn(&valet_app::admin::GrantAt) -> bool,
) -> Page<valet_app::admin::GrantAt> {
    let after = page.after.as_ref().map(Cursor::key);
    let rows: Vec<_> = grants
        .into_iter()
        .filter(|g| after.as_deref().is_none_or(|a| g.grant_id.as_str() > a))
        .filter(keep)
        .take(page.size.get() as usize + 1)
        .collect();
    Page::of(rows, page.size, |g| g.grant_id.clone())
}
