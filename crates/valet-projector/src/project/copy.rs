//! A rebuild's grant and token rows into its scratch tables, by binary COPY: PostgreSQL
//! inserts them in bulk instead of unpacking parameter arrays row by row.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use uuid::Uuid;
use valet_app::StoreError;

use super::batch::{AccessRow, GrantRow, RefreshRow};
use crate::db_error;

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

pub(super) async fn copy_grants(
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

pub(super) async fn copy_access(
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

pub(super) async fn copy_refresh(
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
