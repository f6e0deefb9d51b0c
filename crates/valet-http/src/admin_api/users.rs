//! `/admin/v1/users`: register, list, show, change the profile and password of,
//! disable, enable and sign out users.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::Uri;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use valet_app::admin::{
    GrantsOnPasswordChange, ProfileUpdate, UserDetails, UserFilter, UserRow, UserStatus,
};
use valet_domain::user::EmailStatus;

use super::{admin_handler, body, created, ok, page_request, query, time};

/// A user as lists show them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct User {
    /// `sub` in their tokens.
    user_id: String,
    username: String,
    /// `active` or `disabled`.
    status: String,
    created_at: String,
}

impl From<UserRow> for User {
    fn from(u: UserRow) -> Self {
        User {
            user_id: u.user_id.to_string(),
            username: u.username,
            status: u.status.as_str().to_owned(),
            created_at: time(u.created_at.as_unix_millis()),
        }
    }
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserList {
    items: Vec<User>,
    next_cursor: Option<String>,
}

/// A standing sign-in session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Session {
    session_id: String,
    started_at: String,
    last_used_at: String,
    expires_at: String,
    /// The clients it signed in to.
    clients: Vec<String>,
}

/// An app holding grants of the user.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct App {
    client_id: String,
    name: String,
    scope: String,
    since: String,
    last_used: String,
}

/// A user as the log has them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserDetail {
    user_id: String,
    username: String,
    status: String,
    created_at: String,
    name: Option<String>,
    email: Option<String>,
    email_verified: bool,
    sessions: Vec<Session>,
    apps: Vec<App>,
}

impl From<UserDetails> for UserDetail {
    fn from(d: UserDetails) -> Self {
        let u = d.user;
        UserDetail {
            user_id: u.user_id.to_string(),
            username: u.username.to_string(),
            status: if u.disabled_at.is_some() {
                "disabled"
            } else {
                "active"
            }
            .to_owned(),
            created_at: time(u.registered_at.as_unix_millis()),
            name: u.profile.name.map(|n| n.as_str().to_owned()),
            email: u.profile.email.map(|e| e.as_str().to_owned()),
            email_verified: u.profile.email_status == EmailStatus::Verified,
            sessions: d
                .sessions
                .into_iter()
                .map(|s| Session {
                    session_id: s.session_id.to_string(),
                    started_at: time(s.started_at.as_unix_millis()),
                    last_used_at: time(s.last_used_at.as_unix_millis()),
                    expires_at: time(s.expires_at.as_unix_millis()),
                    clients: s.clients.iter().map(|c| c.to_string()).collect(),
                })
                .collect(),
            apps: d
                .apps
                .into_iter()
                .map(|a| App {
                    client_id: a.client_id.to_string(),
                    name: a.name,
                    scope: a.scope.to_string(),
                    since: time(a.since.as_unix_millis()),
                    last_used: time(a.last_used.as_unix_millis()),
                })
                .collect(),
        }
    }
}

/// Filters of `GET /admin/v1/users`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UserQuery {
    /// `active` or `disabled`.
    status: Option<String>,
    /// Usernames starting with this.
    username_prefix: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// The `next_cursor` of the page before.
    after: Option<String>,
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserCreate {
    username: String,
    /// Hashed with argon2id; never recorded.
    password: String,
}

/// A registered user.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserCreated {
    user_id: String,
    username: String,
}

/// A change to a user's profile claims: each field given replaces the current one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserPatch {
    name: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
}

/// A user's profile claims.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Profile {
    username: String,
    name: Option<String>,
    email: Option<String>,
    email_verified: bool,
}

/// A new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    password: String,
    /// Whether every grant made on the user's behalf is revoked (default true: a changed
    /// password often means a stolen one). Their sessions end either way.
    revoke_grants: Option<bool>,
}

/// What a change to a user ended.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserChanged {
    username: String,
    /// Whether the user may sign in, after a disable or an enable.
    active: Option<bool>,
    /// Grants revoked by the change.
    revoked_grants: u64,
    /// Sign-in sessions ended by the change, where it ends them.
    ended_sessions: Option<u64>,
}

admin_handler!(
    /// The users, by username.
    #[utoipa::path(get, path = "/admin/v1/users", tag = "users", params(UserQuery),
        responses((status = 200, body = UserList)))]
    list(uri: Uri) |app, _meta| {
        let q: UserQuery = query(&uri)?;
        let filter = UserFilter {
            status: q.status.as_deref().map(UserStatus::parse).transpose()?,
            username_prefix: q.username_prefix,
        };
        let page = page_request(q.limit, q.after.as_deref())?;
        let found = app.admin_reads.users(&filter, &page).await?;
        Ok(ok(UserList {
            items: found.items.into_iter().map(User::from).collect(),
            next_cursor: found.next.map(|c| c.as_str().to_owned()),
        }))
    }
);

admin_handler!(
    /// Registers a user.
    #[utoipa::path(post, path = "/admin/v1/users", tag = "users", request_body = UserCreate,
        responses((status = 201, body = UserCreated)))]
    create(bytes: Bytes) |app, meta| {
        let new: UserCreate = body(&bytes)?;
        let user_id = app.oauth.create_user(&new.username, &new.password, &meta).await?;
        Ok(created(UserCreated { user_id: user_id.to_string(), username: new.username }))
    }
);

admin_handler!(
    /// One user: profile, state, standing sessions and the apps holding their grants.
    #[utoipa::path(get, path = "/admin/v1/users/{username}", tag = "users",
        params(("username" = String, Path)),
        responses((status = 200, body = UserDetail)))]
    show(name: Path<String>) |app, _meta| {
        let details = app.oauth.show_user(&name).await?;
        Ok(ok(UserDetail::from(details)))
    }
);

admin_handler!(
    /// Changes a user's profile claims.
    #[utoipa::path(patch, path = "/admin/v1/users/{username}", tag = "users",
        params(("username" = String, Path)), request_body = UserPatch,
        responses((status = 200, body = Profile)))]
    update(name: Path<String>, bytes: Bytes) |app, meta| {
        let patch: UserPatch = body(&bytes)?;
        let update = ProfileUpdate {
            name: patch.name,
            email: patch.email,
            email_status: patch.email_verified.map(|v| if v { EmailStatus::Verified } else { EmailStatus::Unverified }),
        };
        let profile = app.oauth.update_user_profile(&name, update, &meta).await?;
        Ok(ok(Profile {
            username: name.0,
            name: profile.name.map(|n| n.as_str().to_owned()),
            email: profile.email.map(|e| e.as_str().to_owned()),
            email_verified: profile.email_status == EmailStatus::Verified,
        }))
    }
);

admin_handler!(
    /// Sets a user's password: their sessions end, and their grants are revoked unless
    /// `revoke_grants` is false.
    #[utoipa::path(put, path = "/admin/v1/users/{username}/password", tag = "users",
        params(("username" = String, Path)), request_body = PasswordChange,
        responses((status = 200, body = UserChanged)))]
    set_password(name: Path<String>, bytes: Bytes) |app, meta| {
        let change: PasswordChange = body(&bytes)?;
        let grants = match change.revoke_grants {
            Some(false) => GrantsOnPasswordChange::Keep,
            _ => GrantsOnPasswordChange::Revoke,
        };
        let revoked = app.oauth.change_password(&name, &change.password, grants, &meta).await?;
        Ok(ok(UserChanged { username: name.0, active: None, revoked_grants: revoked as u64, ended_sessions: None }))
    }
);

admin_handler!(
    /// Disables a user: their sessions end and every grant made on their behalf is
    /// revoked.
    #[utoipa::path(post, path = "/admin/v1/users/{username}/disable", tag = "users",
        params(("username" = String, Path)),
        responses((status = 200, body = UserChanged)))]
    disable(name: Path<String>) |app, meta| {
        let revoked = app.oauth.disable_user(&name, &meta).await?;
        Ok(ok(UserChanged { username: name.0, active: Some(false), revoked_grants: revoked as u64, ended_sessions: None }))
    }
);

admin_handler!(
    /// Lets a disabled user sign in again (no session from before comes back).
    #[utoipa::path(post, path = "/admin/v1/users/{username}/enable", tag = "users",
        params(("username" = String, Path)),
        responses((status = 200, body = UserChanged)))]
    enable(name: Path<String>) |app, meta| {
        app.oauth.enable_user(&name, &meta).await?;
        Ok(ok(UserChanged { username: name.0, active: Some(true), revoked_grants: 0, ended_sessions: None }))
    }
);

admin_handler!(
    /// Ends every sign-in session of the user; grants stay.
    #[utoipa::path(post, path = "/admin/v1/users/{username}/sign-out-everywhere", tag = "users",
        params(("username" = String, Path)),
        responses((status = 200, body = UserChanged)))]
    sign_out_everywhere(name: Path<String>) |app, meta| {
        let ended = app.oauth.sign_out_everywhere(&name, &meta).await?;
        Ok(ok(UserChanged {
            username: name.0,
            active: None,
            revoked_grants: 0,
            ended_sessions: Some(ended as u64),
        }))
    }
);
