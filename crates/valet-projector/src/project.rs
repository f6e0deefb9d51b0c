//! Event → read-model rows, applied a batch at a time.
//!
//! The same code serves the inline projection (the events of one append) and rebuilds
//! (thousands of events per transaction). Within a batch, rows created by the batch are
//! assembled in memory and inserted with one multi-row statement per table; changes to
//! rows from earlier batches become set-based UPDATEs. Every value comes from the
//! events (no clock, no positions), so replaying the log twice gives identical tables.
//!
//! Order of the flush, and why it equals applying the events one by one:
//! UPDATEs touch only rows that existed before the batch, INSERTs only rows created in
//! it, so the two never meet. Among UPDATEs, per-token changes (rotation, single-token
//! revocation) run before grant revocations: the domain never changes a token of a
//! revoked grant, so in the log they can only come in that order.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use deadpool_postgres::GenericClient;
use futures_util::SinkExt;
use uuid::Uuid;
use valet_app::{RecordedEvent, Replayable, StoreError};
use valet_domain::client::ClientKind;
use valet_domain::grant::GrantOrigin;
use valet_domain::{client, consent, grant, user, DomainEvent};
use valet_store::{InlineProjection, Planned};

use crate::db_error;

/// The projection of the whole log into clients, users, grants, tokens and consents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadModelProjection;

impl InlineProjection for ReadModelProjection {
    fn plan<'a>(
        &'a self,
        db: &'a deadpool_postgres::Client,
        events: Vec<RecordedEvent>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Planned>, StoreError>> + Send + 'a>> {
        Box::pin(plan(db, events, EarlierRows::Update))
    }
}

/// What a batch does with changes to rows that earlier batches created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlierRows {
    /// UPDATE them now, by primary key or grant id (the live read models).
    Update,
    /// Record them in the deferred-change tables (see [`DEFERRED_TABLES`]), numbered
    /// from `seq` up, for [`apply_deferred`] to apply once at the end. A rebuild does
    /// this so that the big token tables need no index while the log streams in.
    Defer { seq: i64 },
}

/// A batch of events folded into the rows it creates and the changes it makes: the
/// CPU half of applying it, which needs no database (a rebuild folds the next batch
/// while the previous one is written).
pub struct Folded(Batch);

/// Folds `events` (in log order).
pub fn fold<R: Replayable>(events: Vec<R>) -> Result<Folded, StoreError> {
    let mut batch = Batch::with_capacity(events.len());
    for mut event in events {
        batch.add(&mut event)?;
    }
    Ok(Folded(batch))
}

impl Folded {
    /// The statements that apply this batch to the read models of `db`.
    pub async fn plan<C: GenericClient + Sync>(
        self,
        db: &C,
        earlier: EarlierRows,
    ) -> Result<Vec<Planned>, StoreError> {
        self.0.plan(db, earlier).await
    }

    /// Writes this batch into a rebuild's scratch tables (changes to earlier rows are
    /// deferred, numbered from `seq`). The grant and token rows, nearly all of a
    /// rebuild's rows, go in with binary COPY: PostgreSQL then inserts them in bulk
    /// instead of unpacking parameter arrays row by row.
    pub async fn write_scratch(
        self,
        tx: &deadpool_postgres::Transaction<'_>,
        seq: i64,
    ) -> Result<(), StoreError> {
        let mut batch = self.0;
        batch.fill_owners(tx).await?;
        let grants = std::mem::take(&mut batch.grants);
        let access = std::mem::take(&mut batch.access);
        let refresh = std::mem::take(&mut batch.refresh);
        let planned = batch.plan(tx, EarlierRows::Defer { seq }).await?;
        valet_store::execute_planned(tx, &planned).await?;
        copy_grants(tx, &grants).await?;
        copy_access(tx, &access).await?;
        copy_refresh(tx, &refresh).await
    }
}

/// Rows in PostgreSQL's binary COPY format, encoded by hand: the columns are a few
/// fixed types, and one buffer sent as one message costs far less than a writer that
/// encodes through `ToSql` and awaits per row.
struct CopyRows(BytesMut);

impl CopyRows {
    /// Room for `rows` rows of about `row_bytes` each.
    fn new(rows: usize, row_bytes: usize) -> Self {
        // 19 bytes of header, 2 of trailer.
        let mut buf = BytesMut::with_capacity(19 + rows * row_bytes + 2);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        CopyRows(buf)
    }

    fn row(&mut self, fields: i16) -> &mut Self {
        self.0.put_i16(fields);
        self
    }

    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.0.put_i32(value.len() as i32);
        self.0.put_slice(value);
        self
    }

    fn null(&mut self) -> &mut Self {
        self.0.put_i32(-1);
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    fn uuid(&mut self, value: &Uuid) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    fn opt_uuid(&mut self, value: Option<&Uuid>) -> &mut Self {
        match value {
            Some(v) => self.uuid(v),
            None => self.null(),
        }
    }

    fn int8(&mut self, value: i64) -> &mut Self {
        self.0.put_i32(8);
        self.0.put_i64(value);
        self
    }

    fn opt_int8(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    /// Sends the rows to `COPY target FROM STDIN BINARY`.
    async fn send(
        mut self,
        tx: &deadpool_postgres::Transaction<'_>,
        target: &str,
    ) -> Result<(), StoreError> {
        self.0.put_i16(-1); // trailer
        let sink = tx
            .copy_in::<_, Bytes>(&format!("COPY {target} FROM STDIN BINARY"))
            .await
            .map_err(db_error)?;
        futures_util::pin_mut!(sink);
        sink.as_mut()
            .send(self.0.freeze())
            .await
            .map_err(db_error)?;
        sink.finish().await.map_err(db_error).map(drop)
    }
}

/// Sends `rows` to `COPY target FROM STDIN BINARY` (nothing when there are none); each
/// row is `fields` values that `encode` writes.
async fn copy_rows<T>(
    tx: &deadpool_postgres::Transaction<'_>,
    target: &str,
    (fields, row_bytes): (i16, usize),
    rows: &[T],
    encode: impl Fn(&mut CopyRows, &T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut out = CopyRows::new(rows.len(), row_bytes);
    for row in rows {
        encode(out.row(fields), row)?;
    }
    out.send(tx, target).await
}

fn unknown_grant(grant_id: Uuid) -> StoreError {
    StoreError::Malformed(format!("tokens of unknown grant {grant_id}"))
}

async fn copy_grants(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[GrantRow],
) -> Result<(), StoreError> {
    let target = "grants (grant_id, client_id, user_id, username, scope, origin, created_at, revoked_at, revoked_reason)";
    copy_rows(tx, target, (9, 160), rows, |out, r| {
        out.uuid(&r.grant_id)
            .text(&r.client_id)
            .opt_uuid(r.user_id.as_ref())
            .opt_text(r.username.as_deref())
            .text(&r.scope)
            .text(r.origin)
            .int8(r.created_at)
            .opt_int8(r.revoked_at)
            .opt_text(r.revoked_reason);
        Ok(())
    })
    .await
}

async fn copy_access(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[AccessRow],
) -> Result<(), StoreError> {
    let target = "access_tokens (token_sha256, grant_id, client_id, user_id, username, scope, issued_at, expires_at, revoked_at, revoked_reason)";
    copy_rows(tx, target, (10, 200), rows, |out, r| {
        let owner = r.owner.as_ref().ok_or_else(|| unknown_grant(r.grant_id))?;
        out.bytes(&r.hash)
            .uuid(&r.grant_id)
            .text(&owner.client_id)
            .opt_uuid(owner.user_id.as_ref())
            .opt_text(owner.username.as_deref())
            .text(&r.scope)
            .int8(r.issued_at)
            .int8(r.expires_at)
            .opt_int8(r.revoked_at)
            .opt_text(r.revoked_reason);
        Ok(())
    })
    .await
}

async fn copy_refresh(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[RefreshRow],
) -> Result<(), StoreError> {
    let target =
        "refresh_tokens (token_sha256, grant_id, client_id, issued_at, expires_at, status)";
    copy_rows(tx, target, (6, 120), rows, |out, r| {
        let client_id = r
            .client_id
            .as_deref()
            .ok_or_else(|| unknown_grant(r.grant_id))?;
        out.bytes(&r.hash)
            .uuid(&r.grant_id)
            .text(client_id)
            .int8(r.issued_at)
            .int8(r.expires_at)
            .text(r.status);
        Ok(())
    })
    .await
}

/// The statements that apply `events` (in log order) to the read models of `db`.
pub async fn plan<C: GenericClient + Sync, R: Replayable>(
    db: &C,
    events: Vec<R>,
    earlier: EarlierRows,
) -> Result<Vec<Planned>, StoreError> {
    fold(events)?.plan(db, earlier).await
}

/// Applies `events` (in log order) to the read models reachable through `db`.
pub async fn apply_batch<C: GenericClient + Sync, R: Replayable>(
    db: &C,
    events: Vec<R>,
    earlier: EarlierRows,
) -> Result<(), StoreError> {
    let planned = plan(db, events, earlier).await?;
    valet_store::execute_planned(db, &planned).await
}

/// The tables of [`EarlierRows::Defer`], created unqualified (in the first schema of the
/// search path). `seq` orders the changes of one table in log order.
pub const DEFERRED_TABLES: &str = "
    CREATE UNLOGGED TABLE deferred_rotations (hash BYTEA NOT NULL);
    CREATE UNLOGGED TABLE deferred_access_revocations (
        hash BYTEA NOT NULL, at BIGINT NOT NULL, reason TEXT NOT NULL, seq BIGINT NOT NULL);
    CREATE UNLOGGED TABLE deferred_grant_revocations (
        grant_id UUID NOT NULL, at BIGINT NOT NULL, reason TEXT NOT NULL, seq BIGINT NOT NULL);
    CREATE UNLOGGED TABLE deferred_clients_disabled (
        client_id TEXT NOT NULL, at BIGINT NOT NULL, seq BIGINT NOT NULL);
    CREATE UNLOGGED TABLE deferred_users_disabled (
        user_id UUID NOT NULL, at BIGINT NOT NULL, seq BIGINT NOT NULL);";

/// Applies the deferred changes, set-based (hash joins, no index needed), and empties
/// the tables. The order is [`Batch::plan`]'s, and the earliest change per row wins, so
/// the result equals updating batch after batch.
pub async fn apply_deferred<C: GenericClient + Sync>(db: &C) -> Result<(), StoreError> {
    db.batch_execute(
        "UPDATE refresh_tokens r SET status = 'rotated'
         FROM (SELECT DISTINCT hash FROM deferred_rotations) d
         WHERE r.token_sha256 = d.hash AND r.status = 'current';
         UPDATE access_tokens a SET revoked_at = d.at, revoked_reason = d.reason
         FROM (SELECT DISTINCT ON (hash) hash, at, reason FROM deferred_access_revocations
               ORDER BY hash, seq) d
         WHERE a.token_sha256 = d.hash AND a.revoked_at IS NULL;
         CREATE TEMP TABLE deferred_grants AS
             SELECT DISTINCT ON (grant_id) grant_id, at, reason FROM deferred_grant_revocations
             ORDER BY grant_id, seq;
         UPDATE grants g SET revoked_at = d.at, revoked_reason = d.reason
         FROM deferred_grants d WHERE g.grant_id = d.grant_id AND g.revoked_at IS NULL;
         UPDATE access_tokens a SET revoked_at = d.at, revoked_reason = d.reason
         FROM deferred_grants d WHERE a.grant_id = d.grant_id AND a.revoked_at IS NULL;
         UPDATE refresh_tokens r SET status = 'revoked'
         FROM deferred_grants d WHERE r.grant_id = d.grant_id AND r.status <> 'revoked';
         UPDATE clients c SET disabled_at = d.at
         FROM (SELECT DISTINCT ON (client_id) client_id, at FROM deferred_clients_disabled
               ORDER BY client_id, seq) d
         WHERE c.client_id = d.client_id AND c.disabled_at IS NULL;
         UPDATE users u SET disabled_at = d.at
         FROM (SELECT DISTINCT ON (user_id) user_id, at FROM deferred_users_disabled
               ORDER BY user_id, seq) d
         WHERE u.user_id = d.user_id AND u.disabled_at IS NULL;
         DROP TABLE deferred_grants;
         TRUNCATE deferred_rotations, deferred_access_revocations, deferred_grant_revocations,
                  deferred_clients_disabled, deferred_users_disabled;",
    )
    .await
    .map_err(db_error)
}

fn decode<E: DomainEvent, R: Replayable>(event: &mut R) -> Result<E, StoreError> {
    event
        .decode_as::<E>()
        .map_err(|e| StoreError::Malformed(format!("event {}: {e}", event.event_id())))
}

/// The id after a stream's prefix, e.g. the grant id of `grant-<uuid>`.
fn uuid_after(stream_id: &str, prefix: &str) -> Result<Uuid, StoreError> {
    stream_id
        .strip_prefix(prefix)
        .and_then(|rest| Uuid::parse_str(rest).ok())
        .ok_or_else(|| StoreError::Malformed(format!("stream id {stream_id}")))
}

#[derive(Debug, Clone)]
struct GrantRow {
    grant_id: Uuid,
    client_id: String,
    user_id: Option<Uuid>,
    username: Option<String>,
    scope: String,
    origin: &'static str,
    created_at: i64,
    revoked_at: Option<i64>,
    revoked_reason: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct AccessRow {
    hash: Vec<u8>,
    grant_id: Uuid,
    /// Filled at flush time for grants created before the batch.
    owner: Option<Owner>,
    scope: String,
    issued_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    revoked_reason: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct RefreshRow {
    hash: Vec<u8>,
    grant_id: Uuid,
    client_id: Option<String>,
    issued_at: i64,
    expires_at: i64,
    status: &'static str,
}

#[derive(Debug, Clone)]
struct Owner {
    client_id: String,
    user_id: Option<Uuid>,
    username: Option<String>,
}

#[derive(Debug, Clone)]
struct ClientRow {
    client_id: String,
    name: String,
    kind: &'static str,
    secret: Option<Vec<u8>>,
    redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    scopes: String,
    created_at: i64,
    disabled_at: Option<i64>,
}

#[derive(Debug, Clone)]
struct UserRow {
    user_id: Uuid,
    username: String,
    created_at: i64,
    disabled_at: Option<i64>,
}

/// A consent change, applied in order at flush time (consents are rare).
#[derive(Debug, Clone)]
enum ConsentChange {
    Given {
        user_id: Uuid,
        client_id: String,
        scope: String,
        at: i64,
    },
    Revoked {
        user_id: Uuid,
        client_id: String,
    },
}

/// The batch's indexes are keyed by SHA-256 digests and random UUIDs from the log:
/// uniform already, and not chosen by a caller, so a multiply-rotate hash (FxHash's)
/// serves, at a fraction of SipHash's cost.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.add(word);
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Index<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
struct Batch {
    clients: Vec<ClientRow>,
    client_index: Index<String, usize>,
    users: Vec<UserRow>,
    user_index: Index<Uuid, usize>,
    grants: Vec<GrantRow>,
    grant_index: Index<Uuid, usize>,
    access: Vec<AccessRow>,
    access_index: Index<Vec<u8>, usize>,
    refresh: Vec<RefreshRow>,
    refresh_index: Index<Vec<u8>, usize>,
    /// The token rows of this batch per grant (a grant revocation touches only those).
    tokens_of_grant: Index<Uuid, (Vec<usize>, Vec<usize>)>,
    consents: Vec<ConsentChange>,
    // Changes to rows from earlier batches, in log order.
    old_rotations: Vec<Vec<u8>>,
    old_access_revocations: Vec<(Vec<u8>, i64, &'static str)>,
    old_grant_revocations: Vec<(Uuid, i64, &'static str)>,
    old_clients_disabled: Vec<(String, i64)>,
    old_users_disabled: Vec<(Uuid, i64)>,
}

impl Batch {
    /// Room for `events` events, nearly all of which add a grant or a token: sized once,
    /// the rows and indexes are not copied over and over as they grow.
    fn with_capacity(events: usize) -> Self {
        Batch {
            grants: Vec::with_capacity(events),
            grant_index: Index::with_capacity_and_hasher(events, Default::default()),
            access: Vec::with_capacity(events),
            access_index: Index::with_capacity_and_hasher(events, Default::default()),
            refresh: Vec::with_capacity(events),
            refresh_index: Index::with_capacity_and_hasher(events, Default::default()),
            tokens_of_grant: Index::with_capacity_and_hasher(events, Default::default()),
            ..Batch::default()
        }
    }

    fn add<R: Replayable>(&mut self, event: &mut R) -> Result<(), StoreError> {
        let stream_id = event.stream_id().to_owned();
        let stream = stream_id.as_str();
        if stream.starts_with("grant-") {
            let grant_id = uuid_after(stream, "grant-")?;
            self.grant(grant_id, decode(event)?);
        } else if let Some(client_id) = stream.strip_prefix("client-") {
            self.client(client_id, decode(event)?);
        } else if stream.starts_with("user-") {
            let user_id = uuid_after(stream, "user-")?;
            self.user(user_id, decode(event)?);
        } else if let Some(rest) = stream.strip_prefix("consent-") {
            let user_id = rest
                .get(..36)
                .and_then(|u| Uuid::parse_str(u).ok())
                .ok_or_else(|| StoreError::Malformed(format!("stream id {stream}")))?;
            let client_id = rest.get(37..).unwrap_or_default().to_owned();
            self.consents
                .push(match decode::<consent::Event, R>(event)? {
                    consent::Event::ConsentGiven { scope, at } => ConsentChange::Given {
                        user_id,
                        client_id,
                        scope: scope.to_string(),
                        at: at.as_unix_millis(),
                    },
                    consent::Event::ConsentRevoked { .. } => {
                        ConsentChange::Revoked { user_id, client_id }
                    }
                });
        }
        // Code streams have no read model: codes are read from their stream.
        Ok(())
    }

    fn new_access(&mut self, grant_id: Uuid, access: &grant::AccessTokenIssue) {
        let owner = self.grant_index.get(&grant_id).map(|&i| {
            let g = &self.grants[i];
            Owner {
                client_id: g.client_id.clone(),
                user_id: g.user_id,
                username: g.username.clone(),
            }
        });
        let hash = access.hash.as_bytes().to_vec();
        self.access_index.insert(hash.clone(), self.access.len());
        self.tokens_of_grant
            .entry(grant_id)
            .or_default()
            .0
            .push(self.access.len());
        self.access.push(AccessRow {
            hash,
            grant_id,
            owner,
            scope: access.scope.to_string(),
            issued_at: access.issued_at.as_unix_millis(),
            expires_at: access.expires_at.as_unix_millis(),
            revoked_at: None,
            revoked_reason: None,
        });
    }

    fn new_refresh(&mut self, grant_id: Uuid, refresh: &grant::RefreshTokenIssue) {
        let client_id = self
            .grant_index
            .get(&grant_id)
            .map(|&i| self.grants[i].client_id.clone());
        let hash = refresh.hash.as_bytes().to_vec();
        self.refresh_index.insert(hash.clone(), self.refresh.len());
        self.tokens_of_grant
            .entry(grant_id)
            .or_default()
            .1
            .push(self.refresh.len());
        self.refresh.push(RefreshRow {
            hash,
            grant_id,
            client_id,
            issued_at: refresh.issued_at.as_unix_millis(),
            expires_at: refresh.expires_at.as_unix_millis(),
            status: "current",
        });
    }

    fn grant(&mut self, grant_id: Uuid, event: grant::Event) {
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
                self.grant_index.insert(grant_id, self.grants.len());
                self.grants.push(GrantRow {
                    grant_id,
                    client_id: client_id.to_string(),
                    user_id: subject.as_ref().map(|s| s.user_id.as_uuid()),
                    username: subject.as_ref().map(|s| s.username.to_string()),
                    scope: scope.to_string(),
                    origin: match origin {
                        GrantOrigin::AuthorizationCode { .. } => "authorization_code",
                        GrantOrigin::ClientCredentials => "client_credentials",
                    },
                    created_at: at.as_unix_millis(),
                    revoked_at: None,
                    revoked_reason: None,
                });
                self.new_access(grant_id, &access);
                if let Some(refresh) = refresh {
                    self.new_refresh(grant_id, &refresh);
                }
            }
            grant::Event::TokensRefreshed {
                previous_refresh,
                access,
                refresh,
                ..
            } => {
                let previous = previous_refresh.as_bytes().to_vec();
                match self.refresh_index.get(&previous) {
                    Some(&i) if self.refresh[i].status == "current" => {
                        self.refresh[i].status = "rotated";
                    }
                    Some(_) => {}
                    None => self.old_rotations.push(previous),
                }
                self.new_access(grant_id, &access);
                self.new_refresh(grant_id, &refresh);
            }
            grant::Event::RefreshTokenReused { .. } => {}
            grant::Event::AccessTokenRevoked { hash, reason, at } => {
                let hash = hash.as_bytes().to_vec();
                match self.access_index.get(&hash) {
                    Some(&i) => {
                        let row = &mut self.access[i];
                        if row.revoked_at.is_none() {
                            row.revoked_at = Some(at.as_unix_millis());
                            row.revoked_reason = Some(reason.as_str());
                        }
                    }
                    None => self.old_access_revocations.push((
                        hash,
                        at.as_unix_millis(),
                        reason.as_str(),
                    )),
                }
            }
            grant::Event::GrantRevoked { reason, at, .. } => {
                let at = at.as_unix_millis();
                let reason = reason.as_str();
                let (access, refresh) = self
                    .tokens_of_grant
                    .get(&grant_id)
                    .map(|(a, r)| (a.as_slice(), r.as_slice()))
                    .unwrap_or_default();
                for &i in access {
                    let row = &mut self.access[i];
                    if row.revoked_at.is_none() {
                        row.revoked_at = Some(at);
                        row.revoked_reason = Some(reason);
                    }
                }
                for &i in refresh {
                    self.refresh[i].status = "revoked";
                }
                match self.grant_index.get(&grant_id) {
                    Some(&i) => {
                        let row = &mut self.grants[i];
                        if row.revoked_at.is_none() {
                            row.revoked_at = Some(at);
                            row.revoked_reason = Some(reason);
                        }
                    }
                    None => self.old_grant_revocations.push((grant_id, at, reason)),
                }
            }
        }
    }

    fn client(&mut self, client_id: &str, event: client::Event) {
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
                self.client_index
                    .insert(client_id.to_string(), self.clients.len());
                self.clients.push(ClientRow {
                    client_id: client_id.to_string(),
                    name: name.to_string(),
                    kind,
                    secret,
                    redirect_uris: redirect_uris
                        .iter()
                        .map(|u| u.as_str().to_owned())
                        .collect(),
                    grant_types: grant_types.iter().map(|g| g.as_str().to_owned()).collect(),
                    scopes: scopes.to_string(),
                    created_at: at.as_unix_millis(),
                    disabled_at: None,
                });
            }
            client::Event::ClientDisabled { at } => match self.client_index.get(client_id) {
                Some(&i) => {
                    let row = &mut self.clients[i];
                    row.disabled_at = row.disabled_at.or(Some(at.as_unix_millis()));
                }
                None => self
                    .old_clients_disabled
                    .push((client_id.to_owned(), at.as_unix_millis())),
            },
        }
    }

    fn user(&mut self, user_id: Uuid, event: user::Event) {
        match event {
            user::Event::UserRegistered { username, at, .. } => {
                self.user_index.insert(user_id, self.users.len());
                self.users.push(UserRow {
                    user_id,
                    username: username.to_string(),
                    created_at: at.as_unix_millis(),
                    disabled_at: None,
                });
            }
            user::Event::UserDisabled { at } => match self.user_index.get(&user_id) {
                Some(&i) => {
                    let row = &mut self.users[i];
                    row.disabled_at = row.disabled_at.or(Some(at.as_unix_millis()));
                }
                None => self.old_users_disabled.push((user_id, at.as_unix_millis())),
            },
        }
    }

    /// Looks up the owners of grants created before this batch that this batch adds
    /// tokens to.
    async fn fill_owners<C: GenericClient + Sync>(&mut self, db: &C) -> Result<(), StoreError> {
        let mut missing: Vec<Uuid> = self
            .access
            .iter()
            .filter(|r| r.owner.is_none())
            .map(|r| r.grant_id)
            .chain(
                self.refresh
                    .iter()
                    .filter(|r| r.client_id.is_none())
                    .map(|r| r.grant_id),
            )
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let statement = db
            .prepare_cached(
                "SELECT grant_id, client_id, user_id, username FROM grants WHERE grant_id = ANY($1)",
            )
            .await
            .map_err(db_error)?;
        let rows = db.query(&statement, &[&missing]).await.map_err(db_error)?;
        let owners: HashMap<Uuid, Owner> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Owner {
                        client_id: r.get(1),
                        user_id: r.get(2),
                        username: r.get(3),
                    },
                )
            })
            .collect();
        for row in &mut self.access {
            if row.owner.is_none() {
                row.owner = Some(
                    owners
                        .get(&row.grant_id)
                        .cloned()
                        .ok_or_else(|| unknown_grant(row.grant_id))?,
                );
            }
        }
        for row in &mut self.refresh {
            if row.client_id.is_none() {
                row.client_id = Some(
                    owners
                        .get(&row.grant_id)
                        .map(|o| o.client_id.clone())
                        .ok_or_else(|| unknown_grant(row.grant_id))?,
                );
            }
        }
        Ok(())
    }

    /// Turns the changes to earlier rows into deferred-change rows (see
    /// [`EarlierRows::Defer`]); what is left for the UPDATEs below is nothing.
    fn defer_earlier(&mut self, seq: i64, statements: &mut Vec<(&'static str, Params)>) {
        let numbered = |n: usize| (seq..seq + n as i64).collect::<Vec<i64>>();
        let rotations = std::mem::take(&mut self.old_rotations);
        if !rotations.is_empty() {
            statements.push((
                "INSERT INTO deferred_rotations (hash) SELECT * FROM unnest($1::bytea[])",
                vec![Box::new(rotations)],
            ));
        }
        let revocations = std::mem::take(&mut self.old_access_revocations);
        if !revocations.is_empty() {
            let seqs = numbered(revocations.len());
            let (hashes, ats, reasons) = unzip3(revocations);
            statements.push((
                "INSERT INTO deferred_access_revocations (hash, at, reason, seq)
                 SELECT * FROM unnest($1::bytea[], $2::int8[], $3::text[], $4::int8[])",
                vec![
                    Box::new(hashes),
                    Box::new(ats),
                    Box::new(reasons),
                    Box::new(seqs),
                ],
            ));
        }
        let revocations = std::mem::take(&mut self.old_grant_revocations);
        if !revocations.is_empty() {
            let seqs = numbered(revocations.len());
            let (ids, ats, reasons) = unzip3(revocations);
            statements.push((
                "INSERT INTO deferred_grant_revocations (grant_id, at, reason, seq)
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int8[])",
                vec![
                    Box::new(ids),
                    Box::new(ats),
                    Box::new(reasons),
                    Box::new(seqs),
                ],
            ));
        }
        let disabled = std::mem::take(&mut self.old_clients_disabled);
        if !disabled.is_empty() {
            let seqs = numbered(disabled.len());
            let (ids, ats): (Vec<String>, Vec<i64>) = disabled.into_iter().unzip();
            statements.push((
                "INSERT INTO deferred_clients_disabled (client_id, at, seq)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])",
                vec![Box::new(ids), Box::new(ats), Box::new(seqs)],
            ));
        }
        let disabled = std::mem::take(&mut self.old_users_disabled);
        if !disabled.is_empty() {
            let seqs = numbered(disabled.len());
            let (ids, ats): (Vec<Uuid>, Vec<i64>) = disabled.into_iter().unzip();
            statements.push((
                "INSERT INTO deferred_users_disabled (user_id, at, seq)
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int8[])",
                vec![Box::new(ids), Box::new(ats), Box::new(seqs)],
            ));
        }
    }

    async fn plan<C: GenericClient + Sync>(
        mut self,
        db: &C,
        earlier: EarlierRows,
    ) -> Result<Vec<Planned>, StoreError> {
        self.fill_owners(db).await?;
        let mut statements: Vec<(&'static str, Params)> = Vec::new();
        if let EarlierRows::Defer { seq } = earlier {
            self.defer_earlier(seq, &mut statements);
        }

        // Rows from earlier batches (see the module comment for the order).
        if !self.old_rotations.is_empty() {
            statements.push((
                "UPDATE refresh_tokens SET status = 'rotated'
                 WHERE token_sha256 = ANY($1) AND status = 'current'",
                vec![Box::new(self.old_rotations)],
            ));
        }
        if !self.old_access_revocations.is_empty() {
            let (hashes, ats, reasons) = first_per_key(self.old_access_revocations);
            statements.push((
                "UPDATE access_tokens a SET revoked_at = r.at, revoked_reason = r.reason
                 FROM unnest($1::bytea[], $2::int8[], $3::text[]) AS r(hash, at, reason)
                 WHERE a.token_sha256 = r.hash AND a.revoked_at IS NULL",
                vec![Box::new(hashes), Box::new(ats), Box::new(reasons)],
            ));
        }
        if !self.old_grant_revocations.is_empty() {
            let (ids, ats, reasons) = first_per_key(self.old_grant_revocations);
            statements.push((
                "UPDATE grants g SET revoked_at = r.at, revoked_reason = r.reason
                 FROM unnest($1::uuid[], $2::int8[], $3::text[]) AS r(id, at, reason)
                 WHERE g.grant_id = r.id AND g.revoked_at IS NULL",
                vec![
                    Box::new(ids.clone()),
                    Box::new(ats.clone()),
                    Box::new(reasons.clone()),
                ],
            ));
            statements.push((
                "UPDATE access_tokens a SET revoked_at = r.at, revoked_reason = r.reason
                 FROM unnest($1::uuid[], $2::int8[], $3::text[]) AS r(id, at, reason)
                 WHERE a.grant_id = r.id AND a.revoked_at IS NULL",
                vec![Box::new(ids.clone()), Box::new(ats), Box::new(reasons)],
            ));
            statements.push((
                "UPDATE refresh_tokens SET status = 'revoked'
                 WHERE grant_id = ANY($1) AND status <> 'revoked'",
                vec![Box::new(ids)],
            ));
        }
        if !self.old_clients_disabled.is_empty() {
            let (ids, ats): (Vec<String>, Vec<i64>) = self.old_clients_disabled.into_iter().unzip();
            statements.push((
                "UPDATE clients c SET disabled_at = d.at
                 FROM unnest($1::text[], $2::int8[]) AS d(id, at)
                 WHERE c.client_id = d.id AND c.disabled_at IS NULL",
                vec![Box::new(ids), Box::new(ats)],
            ));
        }
        if !self.old_users_disabled.is_empty() {
            let (ids, ats): (Vec<Uuid>, Vec<i64>) = self.old_users_disabled.into_iter().unzip();
            statements.push((
                "UPDATE users u SET disabled_at = d.at
                 FROM unnest($1::uuid[], $2::int8[]) AS d(id, at)
                 WHERE u.user_id = d.id AND u.disabled_at IS NULL",
                vec![Box::new(ids), Box::new(ats)],
            ));
        }

        // Rows created by this batch, parents first.
        if !self.clients.is_empty() {
            let c = &self.clients;
            // Arrays of arrays are not rectangular here, so uris and grant types travel
            // as newline-joined text and are split back in SQL.
            statements.push((
                "INSERT INTO clients (client_id, name, kind, secret_sha256, redirect_uris, grant_types, scopes, created_at, disabled_at)
                 SELECT id, name, kind, secret,
                        CASE WHEN uris = '' THEN '{}'::text[] ELSE string_to_array(uris, E'\\n') END,
                        string_to_array(grants, E'\\n'), scopes, created_at, disabled_at
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::int8[], $9::int8[])
                      AS t(id, name, kind, secret, uris, grants, scopes, created_at, disabled_at)",
                vec![
                    Box::new(c.iter().map(|r| r.client_id.clone()).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.name.clone()).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.kind).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.secret.clone()).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.redirect_uris.join("\n")).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.grant_types.join("\n")).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.scopes.clone()).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.created_at).collect::<Vec<_>>()),
                    Box::new(c.iter().map(|r| r.disabled_at).collect::<Vec<_>>()),
                ],
            ));
        }
        if !self.users.is_empty() {
            let u = &self.users;
            statements.push((
                "INSERT INTO users (user_id, username, created_at, disabled_at)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[])",
                vec![
                    Box::new(u.iter().map(|r| r.user_id).collect::<Vec<_>>()),
                    Box::new(u.iter().map(|r| r.username.clone()).collect::<Vec<_>>()),
                    Box::new(u.iter().map(|r| r.created_at).collect::<Vec<_>>()),
                    Box::new(u.iter().map(|r| r.disabled_at).collect::<Vec<_>>()),
                ],
            ));
        }
        if !self.grants.is_empty() {
            let g = &self.grants;
            statements.push((
                "INSERT INTO grants (grant_id, client_id, user_id, username, scope, origin, created_at, revoked_at, revoked_reason)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::text[])",
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
            ));
        }
        if !self.access.is_empty() {
            let a = &self.access;
            let owner = |r: &AccessRow| r.owner.clone().expect("owners filled above");
            statements.push((
                "INSERT INTO access_tokens (token_sha256, grant_id, client_id, user_id, username, scope, issued_at, expires_at, revoked_at, revoked_reason)
                 SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[])",
                vec![
                    Box::new(a.iter().map(|r| r.hash.clone()).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| r.grant_id).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| owner(r).client_id).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| owner(r).user_id).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| owner(r).username).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| r.scope.clone()).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| r.issued_at).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| r.expires_at).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| r.revoked_at).collect::<Vec<_>>()),
                    Box::new(a.iter().map(|r| r.revoked_reason).collect::<Vec<_>>()),
                ],
            ));
        }
        if !self.refresh.is_empty() {
            let r = &self.refresh;
            statements.push((
                "INSERT INTO refresh_tokens (token_sha256, grant_id, client_id, issued_at, expires_at, status)
                 SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::text[], $4::int8[], $5::int8[], $6::text[])",
                vec![
                    Box::new(r.iter().map(|x| x.hash.clone()).collect::<Vec<_>>()),
                    Box::new(r.iter().map(|x| x.grant_id).collect::<Vec<_>>()),
                    Box::new(r.iter().map(|x| x.client_id.clone()).collect::<Vec<_>>()),
                    Box::new(r.iter().map(|x| x.issued_at).collect::<Vec<_>>()),
                    Box::new(r.iter().map(|x| x.expires_at).collect::<Vec<_>>()),
                    Box::new(r.iter().map(|x| x.status).collect::<Vec<_>>()),
                ],
            ));
        }
        for change in self.consents {
            statements.push(match change {
                ConsentChange::Given {
                    user_id,
                    client_id,
                    scope,
                    at,
                } => (
                    UPSERT_CONSENT,
                    vec![
                        Box::new(user_id),
                        Box::new(client_id),
                        Box::new(scope),
                        Box::new(at),
                    ],
                ),
                ConsentChange::Revoked { user_id, client_id } => (
                    "DELETE FROM consents WHERE user_id = $1 AND client_id = $2",
                    vec![Box::new(user_id), Box::new(client_id)],
                ),
            });
        }
        Ok(statements
            .into_iter()
            .map(|(sql, params)| Planned { sql, params })
            .collect())
    }
}

type Params = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

fn unzip3<K>(changes: Vec<(K, i64, &'static str)>) -> (Vec<K>, Vec<i64>, Vec<&'static str>) {
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
fn first_per_key<K: Clone + Eq + std::hash::Hash>(
    changes: Vec<(K, i64, &'static str)>,
) -> (Vec<K>, Vec<i64>, Vec<&'static str>) {
    let mut seen = std::collections::HashSet::new();
    unzip3(
        changes
            .into_iter()
            .filter(|(key, _, _)| seen.insert(key.clone()))
            .collect(),
    )
}

/// Consent scopes merge in SQL (sorted in byte order, like `ScopeSet`), so applying a
/// consent needs no read first.
const UPSERT_CONSENT: &str = "INSERT INTO consents (user_id, client_id, scope, given_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (user_id, client_id) DO UPDATE SET
        scope = (SELECT string_agg(s, ' ' ORDER BY s COLLATE \"C\")
                 FROM (SELECT DISTINCT unnest(string_to_array(consents.scope || ' ' || EXCLUDED.scope, ' ')) AS s) merged),
        given_at = EXCLUDED.given_at";
