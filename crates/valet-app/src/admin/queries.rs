//! The admin API's read side: clients, users and grants listed a page at a time, with
//! filters, and the audit questions (`log`, `token`, `at`). A port, so the HTTP layer
//! names no database; implemented with sea-orm and the projector's audit replays in
//! `valet-admin-read`.
//!
//! Paging is by key, never by offset: a page starts after the last key of the page
//! before, so a page deep in a list costs what the first one does.

use std::future::Future;
use std::pin::Pin;

use base64::Engine as _;
use valet_domain::{ClientId, GrantId, Timestamp, UserId};

use crate::log::RecordedEvent;
use crate::ports::StoreError;

use super::AdminError;

/// How many items one page holds: 1 to [`PageSize::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u16);

impl PageSize {
    pub const MAX: u16 = 500;
    pub const DEFAULT: PageSize = PageSize(50);

    pub fn new(n: u64) -> Result<Self, AdminError> {
        match u16::try_from(n) {
            Ok(n @ 1..=Self::MAX) => Ok(PageSize(n)),
            _ => Err(AdminError::Invalid(format!(
                "limit is from 1 to {} (got {n})",
                Self::MAX
            ))),
        }
    }

    pub fn get(self) -> u64 {
        u64::from(self.0)
    }
}

/// Where a page starts: the key of the last item of the page before, opaque to callers
/// (base64url), so the key's form may change without breaking them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    /// The cursor that starts after `key`.
    pub fn after(key: &str) -> Self {
        Cursor(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key))
    }

    /// A cursor as a caller sent it back.
    pub fn parse(text: &str) -> Result<Self, AdminError> {
        let bad = || AdminError::Invalid("cursor is not one this API returned".into());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad())?;
        String::from_utf8(bytes).map_err(|_| bad())?;
        Ok(Cursor(text.to_owned()))
    }

    /// The key it starts after.
    pub fn key(&self) -> String {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.0)
            .unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which page: its size and where it starts (`None`: the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: PageSize,
    pub after: Option<Cursor>,
}

/// One page of a list, and the cursor of the next when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// The page of `size` from `rows`, read with one row more than a page so that whether
    /// another page follows is known without a second query.
    pub fn of(mut rows: Vec<T>, size: PageSize, key: impl Fn(&T) -> String) -> Self {
        let more = rows.len() as u64 > size.get();
        rows.truncate(size.get() as usize);
        let next = more.then(|| rows.last().map(|last| Cursor::after(&key(last))));
        Page {
            items: rows,
            next: next.flatten(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStatus {
    Active,
    Disabled,
    Deleted,
}

impl ClientStatus {
    pub fn parse(text: &str) -> Result<Self, AdminError> {
        match text {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            "deleted" => Ok(Self::Deleted),
            other => Err(AdminError::Invalid(format!(
                "status {other:?} is none of active, disabled, deleted"
            ))),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn parse(text: &str) -> Result<Self, AdminError> {
        match text {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            other => Err(AdminError::Invalid(format!(
                "status {other:?} is neither active nor disabled"
            ))),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantStatus {
    Active,
    Revoked,
}

impl GrantStatus {
    pub fn parse(text: &str) -> Result<Self, AdminError> {
        match text {
            "active" => Ok(Self::Active),
            "revoked" => Ok(Self::Revoked),
            other => Err(AdminError::Invalid(format!(
                "status {other:?} is neither active nor revoked"
            ))),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }
}

/// Filters of the client list, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    pub status: Option<ClientStatus>,
}

/// Filters of the user list, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    pub status: Option<UserStatus>,
    /// Usernames starting with this.
    pub username_prefix: Option<String>,
}

/// Filters of the grant list, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantFilter {
    pub client_id: Option<ClientId>,
    pub username: Option<String>,
    pub status: Option<GrantStatus>,
}

/// A client as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub client_id: String,
    pub name: String,
    pub kind: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scope: String,
    pub created_at: Timestamp,
    pub status: ClientStatus,
}

/// A user as the admin API lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: UserId,
    pub username: String,
    pub created_at: Timestamp,
    pub status: UserStatus,
}

/// A grant as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub grant_id: GrantId,
    pub client_id: String,
    pub user_id: Option<UserId>,
    pub username: Option<String>,
    pub scope: String,
    /// How it was made: `authorization_code`, `client_credentials`, …
    pub origin: String,
    pub created_at: Timestamp,
    /// When and why it was revoked.
    pub revoked: Option<(Timestamp, String)>,
}

/// Filters of the audit log, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub stream: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// Unix microseconds, inclusive.
    pub since_micros: Option<i64>,
    /// Unix microseconds, inclusive.
    pub until_micros: Option<i64>,
}

/// Whether a token was an access or a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    AccessToken,
    RefreshToken,
}

impl TokenKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenKind::AccessToken => "access_token",
            TokenKind::RefreshToken => "refresh_token",
        }
    }
}

/// How a token stopped working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRevocation {
    pub event: RecordedEvent,
    pub reason: String,
    /// The event that caused it, when the log says: its id and stream.
    pub cause: Option<(uuid::Uuid, String)>,
}

/// `audit token`: the story of one token, from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStory {
    /// SHA-256 hex of the token.
    pub token_sha256: String,
    pub kind: TokenKind,
    pub grant_id: String,
    /// Each event with what it is part of: `client`, `consent`, `code` or `grant`.
    pub events: Vec<(&'static str, RecordedEvent)>,
    pub revocation: Option<TokenRevocation>,
}

/// A grant as it stood at a moment (`audit at`).
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

pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The admin read side. Object-safe, so the HTTP layer holds one without a type
/// parameter.
pub trait AdminReads: Send + Sync + 'static {
    /// Clients by id.
    fn clients<'a>(
        &'a self,
        filter: &'a ClientFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<ClientRow>>;

    /// Users by username.
    fn users<'a>(
        &'a self,
        filter: &'a UserFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<UserRow>>;

    /// Grants, oldest first.
    fn grants<'a>(
        &'a self,
        filter: &'a GrantFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<GrantRow>>;

    /// One grant.
    fn grant(&self, grant_id: GrantId) -> Answer<'_, Option<GrantRow>>;

    /// Events matching `filter` in log order, a page at a time.
    fn audit_log<'a>(
        &'a self,
        filter: &'a AuditFilter,
        page: &'a PageRequest,
    ) -> Answer<'a, Page<RecordedEvent>>;

    /// The story of the token whose value or SHA-256 (hex) is `token_or_sha256`.
    fn audit_token<'a>(&'a self, token_or_sha256: &'a str) -> Answer<'a, Option<TokenStory>>;

    /// The grants active at `at_micros`, with their live access tokens, by grant id.
    fn audit_at(&self, at_micros: i64) -> Answer<'_, Vec<GrantAt>>;
}

/// What [`AdminReads`] answers when the server was built without one (tests of the
/// HTTP layer over in-memory stores).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAdminReads;

impl NoAdminReads {
    fn none<'a, T: Send + 'a>() -> Answer<'a, T> {
        Box::pin(async {
            Err(StoreError::Unavailable(
                "this server has no admin read side".into(),
            ))
        })
    }
}

impl AdminReads for NoAdminReads {
    fn clients<'a>(
        &'a self,
        _: &'a ClientFilter,
        _: &'a PageRequest,
    ) -> Answer<'a, Page<ClientRow>> {
        Self::none()
    }
    fn users<'a>(&'a self, _: &'a UserFilter, _: &'a PageRequest) -> Answer<'a, Page<UserRow>> {
        Self::none()
    }
    fn grants<'a>(&'a self, _: &'a GrantFilter, _: &'a PageRequest) -> Answer<'a, Page<GrantRow>> {
        Self::none()
    }
    fn grant(&self, _: GrantId) -> Answer<'_, Option<GrantRow>> {
        Self::none()
    }
    fn audit_log<'a>(
        &'a self,
        _: &'a AuditFilter,
        _: &'a PageRequest,
    ) -> Answer<'a, Page<RecordedEvent>> {
        Self::none()
    }
    fn audit_token<'a>(&'a self, _: &'a str) -> Answer<'a, Option<TokenStory>> {
        Self::none()
    }
    fn audit_at(&self, _: i64) -> Answer<'_, Vec<GrantAt>> {
        Self::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_size_is_from_one_to_the_maximum() {
        assert!(PageSize::new(0).is_err());
        assert_eq!(PageSize::new(1).unwrap().get(), 1);
        assert_eq!(PageSize::new(500).unwrap().get(), 500);
        assert!(PageSize::new(501).is_err());
        assert!(PageSize::new(u64::MAX).is_err());
    }

    #[test]
    fn a_cursor_carries_its_key_and_refuses_what_it_did_not_make() {
        let cursor = Cursor::after("0191-grant");
        assert_eq!(Cursor::parse(cursor.as_str()).unwrap().key(), "0191-grant");
        assert!(Cursor::parse("not base64!").is_err());
        // Valid base64url that is not UTF-8.
        assert!(Cursor::parse("_w").is_err());
    }

    #[test]
    fn a_page_read_one_row_long_has_a_next_cursor_at_its_last_item() {
        let size = PageSize::new(2).unwrap();
        let page = Page::of(vec!["a", "b", "c"], size, |s| s.to_string());
        assert_eq!(page.items, vec!["a", "b"]);
        assert_eq!(page.next.unwrap().key(), "b");
        let last = Page::of(vec!["c"], size, |s| s.to_string());
        assert_eq!(last.items, vec!["c"]);
        assert!(last.next.is_none());
    }
}
