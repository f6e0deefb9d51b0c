//! A folded batch as SQL: the read-model writes ([`RowWrite`]) that apply it. Each
//! statement is checked against the store's contract when this crate is compiled.
//!
//! Order, and why it equals applying the events one by one: UPDATEs touch only rows
//! that existed before the batch, INSERTs only rows created in it, so the two never
//! meet. Among UPDATEs, per-token changes (rotation, single-token revocation) come
//! before grant revocations: the domain never changes a token of a revoked grant, so in
//! the log they can only come in that order. (Parts of one statement do not see each
//! other's changes: the writes touch disjoint rows, which is what the order guarantees.)

use std::collections::HashSet;
use std::hash::Hash;

use valet_app::StoreError;
use valet_store::{Params, RowWrite, WriteSql};

use super::batch::{
    AccessRow, Batch, ClientChange, ConsentChange, Dated, SessionChange, UserChange,
};

const ROTATE_REFRESH: WriteSql = WriteSql::new(
    "UPDATE refresh_tokens SET status = 'rotated'
     WHERE token_sha256 = ANY($1) AND status = 'current'",
);
const REVOKE_ACCESS: WriteSql = WriteSql::new(
    "UPDATE access_tokens a SET revoked_at = r.at, revoked_reason = r.reason
     FROM unnest($1::bytea[], $2::int8[], $3::text[]) AS r(hash, at, reason)
     WHERE a.token_sha256 = r.hash AND a.revoked_at IS NULL",
);
const REVOKE_GRANTS: WriteSql = WriteSql::new(
    "UPDATE grants g SET revoked_at = r.at, revoked_reason = r.reason
     FROM unnest($1::uuid[], $2::int8[], $3::text[]) AS r(id, at, reason)
     WHERE g.grant_id = r.id AND g.revoked_at IS NULL",
);
const REVOKE_ACCESS_OF_GRANTS: WriteSql = WriteSql::new(
    "UPDATE access_tokens a SET revoked_at = r.at, revoked_reason = r.reason
     FROM unnest($1::uuid[], $2::int8[], $3::text[]) AS r(id, at, reason)
     WHERE a.grant_id = r.id AND a.revoked_at IS NULL",
);
const REVOKE_REFRESH_OF_GRANTS: WriteSql = WriteSql::new(
    "UPDATE refresh_tokens SET status = 'revoked'
     WHERE grant_id = ANY($1) AND status <> 'revoked'",
);
// A client's changes after its registration are rare: one statement each, in log order
// (a disable, an enable and a disable again must end disabled).
const DISABLE_CLIENT: WriteSql = WriteSql::new(
    "UPDATE clients SET disabled_at = $2 WHERE client_id = $1 AND disabled_at IS NULL",
);
const ENABLE_CLIENT: WriteSql =
    WriteSql::new("UPDATE clients SET disabled_at = NULL WHERE client_id = $1");
const ROTATE_CLIENT_SECRET: WriteSql =
    WriteSql::new("UPDATE clients SET secret_sha256 = $2 WHERE client_id = $1");
const UPDATE_CLIENT: WriteSql = WriteSql::new(
    "UPDATE clients SET name = $2, redirect_uris = $3, grant_types = $4, scopes = $5
     WHERE client_id = $1",
);
const DELETE_CLIENT: WriteSql =
    WriteSql::new("UPDATE clients SET deleted_at = $2 WHERE client_id = $1 AND deleted_at IS NULL");
const DISABLE_USER: WriteSql =
    WriteSql::new("UPDATE users SET disabled_at = $2 WHERE user_id = $1 AND disabled_at IS NULL");
const ENABLE_USER: WriteSql =
    WriteSql::new("UPDATE users SET disabled_at = NULL WHERE user_id = $1");
// Arrays of arrays are not rectangular here, so uris and grant types travel as
// newline-joined text and are split back in SQL.
const INSERT_CLIENTS: WriteSql = WriteSql::new(
    "INSERT INTO clients (client_id, name, kind, secret_sha256, redirect_uris, grant_types, scopes, created_at, disabled_at)
     SELECT id, name, kind, secret,
            CASE WHEN uris = '' THEN '{}'::text[] ELSE string_to_array(uris, E'\\n') END,
            string_to_array(grants, E'\\n'), scopes, created_at, disabled_at
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::int8[], $9::int8[])
          AS t(id, name, kind, secret, uris, grants, scopes, created_at, disabled_at)",
);
const INSERT_USERS: WriteSql = WriteSql::new(
    "INSERT INTO users (user_id, username, created_at, disabled_at)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[])",
);
const INSERT_GRANTS: WriteSql = WriteSql::new(
    "INSERT INTO grants (grant_id, client_id, user_id, username, scope, origin, created_at, revoked_at, revoked_reason)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::text[])",
);
const INSERT_ACCESS: WriteSql = WriteSql::new(
    "INSERT INTO access_tokens (token_sha256, grant_id, client_id, user_id, username, scope, issued_at, expires_at, revoked_at, revoked_reason)
     SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[])",
);
const INSERT_REFRESH: WriteSql = WriteSql::new(
    "INSERT INTO refresh_tokens (token_sha256, grant_id, client_id, issued_at, expires_at, status)
     SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::text[], $4::int8[], $5::int8[], $6::text[])",
);
/// Consent scopes merge in SQL (sorted in byte order, like `ScopeSet`), so applying a
/// consent needs no read first.
const UPSERT_CONSENT: WriteSql = WriteSql::new(
    "INSERT INTO consents (user_id, client_id, scope, given_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (user_id, client_id) DO UPDATE SET
        scope = (SELECT string_agg(s, ' ' ORDER BY s COLLATE \"C\")
                 FROM (SELECT DISTINCT unnest(string_to_array(consents.scope || ' ' || EXCLUDED.scope, ' ')) AS s) merged),
        given_at = EXCLUDED.given_at",
);
const DELETE_CONSENT: WriteSql =
    WriteSql::new("DELETE FROM consents WHERE user_id = $1 AND client_id = $2");

const INSERT_SESSION: WriteSql = WriteSql::new(
    "INSERT INTO sessions (session_id, user_id, started_at, expires_at, last_used_at)
     VALUES ($1, $2, $3, $4, $3) ON CONFLICT (session_id) DO NOTHING",
);
const USE_SESSION: WriteSql = WriteSql::new(
    "UPDATE sessions SET last_used_at = greatest(last_used_at, $3),
        clients = CASE WHEN $2::text IS NULL OR $2::text = ANY(clients) THEN clients
                       ELSE array_append(clients, $2::text) END
     WHERE session_id = $1",
);
const END_SESSION: WriteSql = WriteSql::new(
    "UPDATE sessions SET ended_at = $2, end_reason = $3
     WHERE session_id = $1 AND ended_at IS NULL",
);

/// Collects writes, each checked against its SQL's parameters.
#[derive(Default)]
pub(super) struct Writes(Vec<RowWrite>);

impl Writes {
    pub fn push(&mut self, sql: WriteSql, params: Params) -> Result<(), StoreError> {
        self.0.push(RowWrite::new(sql, params)?);
        Ok(())
    }

    pub fn into_inner(self) -> Vec<RowWrite> {
        self.0
    }
}

/// The writes that change rows of earlier batches (empty when they were deferred).
pub(super) fn updates(batch: &mut Batch, out: &mut Writes) -> Result<(), StoreError> {
    let rotations = std::mem::take(&mut batch.old_rotations);
    if !rotations.is_empty() {
        out.push(ROTATE_REFRESH, vec![Box::new(rotations)])?;
    }
    let revocations = std::mem::take(&mut batch.old_access_revocations);
    if !revocations.is_empty() {
        let (hashes, ats, reasons) = first_per_key(revocations);
        out.push(
            REVOKE_ACCESS,
            vec![Box::new(hashes), Box::new(ats), Box::new(reasons)],
        )?;
    }
    let revocations = std::mem::take(&mut batch.old_grant_revocations);
    if !revocations.is_empty() {
        let (ids, ats, reasons) = first_per_key(revocations);
        out.push(
            REVOKE_GRANTS,
            vec![
                Box::new(ids.clone()),
                Box::new(ats.clone()),
                Box::new(reasons.clone()),
            ],
        )?;
        out.push(
            REVOKE_ACCESS_OF_GRANTS,
            vec![Box::new(ids.clone()), Box::new(ats), Box::new(reasons)],
        )?;
        out.push(REVOKE_REFRESH_OF_GRANTS, vec![Box::new(ids)])?;
    }
    Ok(())
}

/// The writes that insert the rows the batch created (parents first), and its consent
/// changes. Token rows must have their owners (see `owners`).
pub(super) fn inserts(batch: &Batch, out: &mut Writes) -> Result<(), StoreError> {
    if !batch.clients.is_empty() {
        let c = &batch.clients;
        out.push(
            INSERT_CLIENTS,
            vec![
                Box::new(c.iter().map(|r| r.client_id.clone()).collect::<Vec<_>>()),
                Box::new(c.iter().map(|r| r.name.clone()).collect::<Vec<_>>()),
                Box::new(c.iter().map(|r| r.kind).collect::<Vec<_>>()),
                Box::new(c.iter().map(|r| r.secret.clone()).collect::<Vec<_>>()),
                Box::new(
                    c.iter()
                        .map(|r| r.redirect_uris.join("\n"))
                        .collect::<Vec<_>>(),
                ),
                Box::new(
                    c.iter()
                        .map(|r| r.grant_types.join("\n"))
                        .collect::<Vec<_>>(),
                ),
                Box::new(c.iter().map(|r| r.scopes.clone()).collect::<Vec<_>>()),
                Box::new(c.iter().map(|r| r.created_at).collect::<Vec<_>>()),
                Box::new(c.iter().map(|r| r.disabled_at).collect::<Vec<_>>()),
            ],
        )?;
    }
    if !batch.users.is_empty() {
        let u = &batch.users;
        out.push(
            INSERT_USERS,
            vec![
                Box::new(u.iter().map(|r| r.user_id).collect::<Vec<_>>()),
                Box::new(u.iter().map(|r| r.username.clone()).collect::<Vec<_>>()),
                Box::new(u.iter().map(|r| r.created_at).collect::<Vec<_>>()),
                Box::new(u.iter().map(|r| r.disabled_at).collect::<Vec<_>>()),
            ],
        )?;
    }
    if !batch.grants.is_empty() {
        let g = &batch.grants;
        out.push(
            INSERT_GRANTS,
            vec![
                Box::new(g.iter().map(|r| r.grant_id).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.client_id.clone()).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.user_id).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.username.clone()).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.scope.clone()).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.origin).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.created_at).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.revoked_at).collect::<Vec<_>>()),
                Box::new(g.iter().map(|r| r.revoked_reason).collect::<Vec<_>>()),
            ],
        )?;
    }
    if !batch.access.is_empty() {
        let a = &batch.access;
        let owners = a
            .iter()
            .map(|r| r.owner.as_ref().ok_or_else(|| unknown_grant(r)))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(
            INSERT_ACCESS,
            vec![
                Box::new(a.iter().map(|r| r.hash.clone()).collect::<Vec<_>>()),
                Box::new(a.iter().map(|r| r.grant_id).collect::<Vec<_>>()),
                Box::new(
                    owners
                        .iter()
                        .map(|o| o.client_id.clone())
                        .collect::<Vec<_>>(),
                ),
                Box::new(owners.iter().map(|o| o.user_id).collect::<Vec<_>>()),
                Box::new(
                    owners
                        .iter()
                        .map(|o| o.username.clone())
                        .collect::<Vec<_>>(),
                ),
                Box::new(a.iter().map(|r| r.scope.clone()).collect::<Vec<_>>()),
                Box::new(a.iter().map(|r| r.issued_at).collect::<Vec<_>>()),
                Box::new(a.iter().map(|r| r.expires_at).collect::<Vec<_>>()),
                Box::new(a.iter().map(|r| r.revoked_at).collect::<Vec<_>>()),
                Box::new(a.iter().map(|r| r.revoked_reason).collect::<Vec<_>>()),
            ],
        )?;
    }
    if !batch.refresh.is_empty() {
        let r = &batch.refresh;
        out.push(
            INSERT_REFRESH,
            vec![
                Box::new(r.iter().map(|x| x.hash.clone()).collect::<Vec<_>>()),
                Box::new(r.iter().map(|x| x.grant_id).collect::<Vec<_>>()),
                Box::new(r.iter().map(|x| x.client_id.clone()).collect::<Vec<_>>()),
                Box::new(r.iter().map(|x| x.issued_at).collect::<Vec<_>>()),
                Box::new(r.iter().map(|x| x.expires_at).collect::<Vec<_>>()),
                Box::new(r.iter().map(|x| x.status).collect::<Vec<_>>()),
            ],
        )?;
    }
    for change in &batch.consents {
        match change.clone() {
            ConsentChange::Given {
                user_id,
                client_id,
                scope,
                at,
            } => out.push(
                UPSERT_CONSENT,
                vec![
                    Box::new(user_id),
                    Box::new(client_id),
                    Box::new(scope),
                    Box::new(at),
                ],
            )?,
            ConsentChange::Revoked { user_id, client_id } => {
                out.push(DELETE_CONSENT, vec![Box::new(user_id), Box::new(client_id)])?
            }
        }
    }
    for change in &batch.client_changes {
        match change.clone() {
            ClientChange::Disabled { client_id, at } => {
                out.push(DISABLE_CLIENT, vec![Box::new(client_id), Box::new(at)])?
            }
            ClientChange::Enabled { client_id } => {
                out.push(ENABLE_CLIENT, vec![Box::new(client_id)])?
            }
            ClientChange::SecretRotated { client_id, secret } => out.push(
                ROTATE_CLIENT_SECRET,
                vec![Box::new(client_id), Box::new(secret)],
            )?,
            ClientChange::Deleted { client_id, at } => {
                out.push(DELETE_CLIENT, vec![Box::new(client_id), Box::new(at)])?
            }
            ClientChange::Updated {
                client_id,
                name,
                redirect_uris,
                grant_types,
                scopes,
            } => out.push(
                UPDATE_CLIENT,
                vec![
                    Box::new(client_id),
                    Box::new(name),
                    Box::new(redirect_uris),
                    Box::new(grant_types),
                    Box::new(scopes),
                ],
            )?,
        }
    }
    for change in &batch.user_changes {
        match *change {
            UserChange::Disabled { user_id, at } => {
                out.push(DISABLE_USER, vec![Box::new(user_id), Box::new(at)])?
            }
            UserChange::Enabled { user_id } => out.push(ENABLE_USER, vec![Box::new(user_id)])?,
        }
    }
    for change in &batch.sessions {
        match change.clone() {
            SessionChange::Started {
                session_id,
                user_id,
                started_at,
                expires_at,
            } => out.push(
                INSERT_SESSION,
                vec![
                    Box::new(session_id),
                    Box::new(user_id),
                    Box::new(started_at),
                    Box::new(expires_at),
                ],
            )?,
            SessionChange::Used {
                session_id,
                client_id,
                at,
            } => out.push(
                USE_SESSION,
                vec![Box::new(session_id), Box::new(client_id), Box::new(at)],
            )?,
            SessionChange::Ended {
                session_id,
                reason,
                at,
            } => out.push(
                END_SESSION,
                vec![Box::new(session_id), Box::new(at), Box::new(reason)],
            )?,
        }
    }
    Ok(())
}

fn unknown_grant(row: &AccessRow) -> StoreError {
    StoreError::Malformed(format!("tokens of unknown grant {}", row.grant_id))
}

/// Three parallel arrays of dated changes.
pub(super) fn unzip3<K>(changes: Vec<Dated<K>>) -> (Vec<K>, Vec<i64>, Vec<&'static str>) {
    let mut keys = Vec::with_capacity(changes.len());
    let mut ats = Vec::with_capacity(changes.len());
    let mut reasons = Vec::with_capacity(changes.len());
    for (key, at, reason) in changes {
        keys.push(key);
        ats.push(at);
        reasons.push(reason);
    }
    (keys, ats, reasons)
}

/// Keeps the first change per key (the earliest in the log wins, as applying one by one
/// with `... IS NULL` guards would), as three parallel arrays.
fn first_per_key<K: Clone + Eq + Hash>(
    changes: Vec<Dated<K>>,
) -> (Vec<K>, Vec<i64>, Vec<&'static str>) {
    let mut seen = HashSet::new();
    unzip3(
        changes
            .into_iter()
            .filter(|(key, _, _)| seen.insert(key.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_change_per_key_wins() {
        let changes = vec![(1, 10, "a"), (2, 11, "b"), (1, 12, "c")];
        assert_eq!(
            first_per_key(changes),
            (vec![1, 2], vec![10, 11], vec!["a", "b"])
        );
    }
}
