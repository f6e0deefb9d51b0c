//! Event → read-model rows. Every statement is keyed by the event's content only (no
//! clock, no positions), so replaying the log twice gives identical tables.

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::{GenericClient, Transaction};
use uuid::Uuid;
use valet_app::{RecordedEvent, StoreError};
use valet_domain::client::ClientKind;
use valet_domain::grant::GrantOrigin;
use valet_domain::{client, consent, grant, user, DomainEvent, ScopeSet};
use valet_store::InlineProjection;

use crate::db_error;

/// The projection of the whole log into clients, users, grants, tokens and consents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadModelProjection;

impl InlineProjection for ReadModelProjection {
    fn project<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        events: &'a [RecordedEvent],
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>> {
        Box::pin(async move {
            for event in events {
                apply(tx, event).await?;
            }
            Ok(())
        })
    }
}

fn decode<E: DomainEvent>(event: &RecordedEvent) -> Result<E, StoreError> {
    event
        .decode::<E>()
        .map_err(|e| StoreError::Malformed(format!("event {}: {e}", event.event_id)))
}

/// The id after a stream's prefix, e.g. the grant id of `grant-<uuid>`.
fn uuid_after(stream_id: &str, prefix: &str) -> Result<Uuid, StoreError> {
    stream_id
        .strip_prefix(prefix)
        .and_then(|rest| Uuid::parse_str(rest).ok())
        .ok_or_else(|| StoreError::Malformed(format!("stream id {stream_id}")))
}

/// Applies one event. Events of streams without a read model (codes) are skipped; an
/// event of a known stream that cannot be decoded fails the transaction: never guess.
pub async fn apply<C: GenericClient + Sync>(db: &C, event: &RecordedEvent) -> Result<(), StoreError> {
    let stream = event.stream_id.as_str();
    if stream.starts_with("grant-") {
        let grant_id = uuid_after(stream, "grant-")?;
        apply_grant(db, grant_id, decode(event)?).await
    } else if stream.starts_with("client-") {
        apply_client(db, stream, decode(event)?).await
    } else if stream.starts_with("user-") {
        let user_id = uuid_after(stream, "user-")?;
        apply_user(db, user_id, decode(event)?).await
    } else if let Some(rest) = stream.strip_prefix("consent-") {
        let user_id = rest
            .get(..36)
            .and_then(|u| Uuid::parse_str(u).ok())
            .ok_or_else(|| StoreError::Malformed(format!("stream id {stream}")))?;
        let client_id = rest.get(37..).unwrap_or_default();
        apply_consent(db, user_id, client_id, decode(event)?).await
    } else {
        Ok(())
    }
}

async fn exec<C: GenericClient + Sync>(
    db: &C,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = db.prepare_cached(sql).await.map_err(db_error)?;
    db.execute(&statement, params).await.map_err(db_error)
}

async fn apply_grant<C: GenericClient + Sync>(
    db: &C,
    grant_id: Uuid,
    event: grant::Event,
) -> Result<(), StoreError> {
    match event {
        grant::Event::GrantIssued {
            client_id,
            subject,
            scope,
            origin,
            access,
            refresh,
            at,
            ..
        } => {
            let user_id = subject.as_ref().map(|s| s.user_id.as_uuid());
            let username = subject.as_ref().map(|s| s.username.to_string());
            let origin = match origin {
                GrantOrigin::AuthorizationCode { .. } => "authorization_code",
                GrantOrigin::ClientCredentials => "client_credentials",
            };
            // One statement for the grant and its first access token: one round trip.
            exec(
                db,
                "WITH g AS (
                    INSERT INTO grants (grant_id, client_id, user_id, username, scope, origin, created_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                 )
                 INSERT INTO access_tokens
                    (token_sha256, grant_id, client_id, user_id, username, scope, issued_at, expires_at)
                 VALUES ($8, $1, $2, $3, $4, $9, $10, $11)",
                &[
                    &grant_id,
                    &client_id.as_str(),
                    &user_id,
                    &username,
                    &scope.to_string(),
                    &origin,
                    &at.as_unix_millis(),
                    &access.hash.as_bytes().as_slice(),
                    &access.scope.to_string(),
                    &access.issued_at.as_unix_millis(),
                    &access.expires_at.as_unix_millis(),
                ],
            )
            .await?;
            if let Some(refresh) = refresh {
                exec(
                    db,
                    "INSERT INTO refresh_tokens (token_sha256, grant_id, client_id, issued_at, expires_at, status)
                     VALUES ($1, $2, $3, $4, $5, 'current')",
                    &[
                        &refresh.hash.as_bytes().as_slice(),
                        &grant_id,
                        &client_id.as_str(),
                        &refresh.issued_at.as_unix_millis(),
                        &refresh.expires_at.as_unix_millis(),
                    ],
                )
                .await?;
            }
        }
        grant::Event::TokensRefreshed {
            previous_refresh,
            access,
            refresh,
            ..
        } => {
            exec(
                db,
                "UPDATE refresh_tokens SET status = 'rotated' WHERE token_sha256 = $1 AND status = 'current'",
                &[&previous_refresh.as_bytes().as_slice()],
            )
            .await?;
            exec(
                db,
                "INSERT INTO access_tokens
                    (token_sha256, grant_id, client_id, user_id, username, scope, issued_at, expires_at)
                 SELECT $1, grant_id, client_id, user_id, username, $3, $4, $5 FROM grants WHERE grant_id = $2",
                &[
                    &access.hash.as_bytes().as_slice(),
                    &grant_id,
                    &access.scope.to_string(),
                    &access.issued_at.as_unix_millis(),
                    &access.expires_at.as_unix_millis(),
                ],
            )
            .await?;
            exec(
                db,
                "INSERT INTO refresh_tokens (token_sha256, grant_id, client_id, issued_at, expires_at, status)
                 SELECT $1, grant_id, client_id, $3, $4, 'current' FROM grants WHERE grant_id = $2",
                &[
                    &refresh.hash.as_bytes().as_slice(),
                    &grant_id,
                    &refresh.issued_at.as_unix_millis(),
                    &refresh.expires_at.as_unix_millis(),
                ],
            )
            .await?;
        }
        grant::Event::RefreshTokenReused { .. } => {}
        grant::Event::AccessTokenRevoked { hash, reason, at } => {
            exec(
                db,
                "UPDATE access_tokens SET revoked_at = $2, revoked_reason = $3
                 WHERE token_sha256 = $1 AND revoked_at IS NULL",
                &[&hash.as_bytes().as_slice(), &at.as_unix_millis(), &reason.as_str()],
            )
            .await?;
        }
        grant::Event::GrantRevoked { reason, at, .. } => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&grant_id, &at.as_unix_millis(), &reason.as_str()];
            exec(
                db,
                "UPDATE grants SET revoked_at = $2, revoked_reason = $3
                 WHERE grant_id = $1 AND revoked_at IS NULL",
                &params,
            )
            .await?;
            exec(
                db,
                "UPDATE access_tokens SET revoked_at = $2, revoked_reason = $3
                 WHERE grant_id = $1 AND revoked_at IS NULL",
                &params,
            )
            .await?;
            exec(
                db,
                "UPDATE refresh_tokens SET status = 'revoked' WHERE grant_id = $1 AND status <> 'revoked'",
                &[&grant_id],
            )
            .await?;
        }
    }
    Ok(())
}

async fn apply_client<C: GenericClient + Sync>(
    db: &C,
    stream: &str,
    event: client::Event,
) -> Result<(), StoreError> {
    match event {
        client::Event::ClientRegistered {
            client_id,
            name,
            kind,
            redirect_uris,
            grant_types,
            scopes,
            at,
        } => {
            let (kind, secret) = match kind {
                ClientKind::Confidential { secret_hash } => {
                    ("confidential", Some(secret_hash.as_bytes().to_vec()))
                }
                ClientKind::Public => ("public", None),
            };
            let uris: Vec<&str> = redirect_uris.iter().map(|u| u.as_str()).collect();
            let grants: Vec<&str> = grant_types.iter().map(|g| g.as_str()).collect();
            exec(
                db,
                "INSERT INTO clients (client_id, name, kind, secret_sha256, redirect_uris, grant_types, scopes, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &client_id.as_str(),
                    &name.as_str(),
                    &kind,
                    &secret,
                    &uris,
                    &grants,
                    &scopes.to_string(),
                    &at.as_unix_millis(),
                ],
            )
            .await?;
        }
        client::Event::ClientDisabled { at } => {
            let client_id = stream.strip_prefix("client-").unwrap_or_default();
            exec(
                db,
                "UPDATE clients SET disabled_at = $2 WHERE client_id = $1 AND disabled_at IS NULL",
                &[&client_id, &at.as_unix_millis()],
            )
            .await?;
        }
    }
    Ok(())
}

async fn apply_user<C: GenericClient + Sync>(
    db: &C,
    user_id: Uuid,
    event: user::Event,
) -> Result<(), StoreError> {
    match event {
        user::Event::UserRegistered { username, at, .. } => {
            exec(
                db,
                "INSERT INTO users (user_id, username, created_at) VALUES ($1, $2, $3)",
                &[&user_id, &username.as_str(), &at.as_unix_millis()],
            )
            .await?;
        }
        user::Event::UserDisabled { at } => {
            exec(
                db,
                "UPDATE users SET disabled_at = $2 WHERE user_id = $1 AND disabled_at IS NULL",
                &[&user_id, &at.as_unix_millis()],
            )
            .await?;
        }
    }
    Ok(())
}

async fn apply_consent<C: GenericClient + Sync>(
    db: &C,
    user_id: Uuid,
    client_id: &str,
    event: consent::Event,
) -> Result<(), StoreError> {
    match event {
        consent::Event::ConsentGiven { scope, at } => {
            let current: Option<String> = {
                let statement = db
                    .prepare_cached(
                        "SELECT scope FROM consents WHERE user_id = $1 AND client_id = $2",
                    )
                    .await
                    .map_err(db_error)?;
                db.query_opt(&statement, &[&user_id, &client_id])
                    .await
                    .map_err(db_error)?
                    .map(|row| row.get(0))
            };
            let merged = match current.as_deref().map(ScopeSet::parse) {
                Some(Ok(existing)) => existing.union(&scope),
                _ => scope,
            };
            exec(
                db,
                "INSERT INTO consents (user_id, client_id, scope, given_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, client_id) DO UPDATE SET scope = $3, given_at = $4",
                &[&user_id, &client_id, &merged.to_string(), &at.as_unix_millis()],
            )
            .await?;
        }
        consent::Event::ConsentRevoked { .. } => {
            exec(
                db,
                "DELETE FROM consents WHERE user_id = $1 AND client_id = $2",
                &[&user_id, &client_id],
            )
            .await?;
        }
    }
    Ok(())
}
