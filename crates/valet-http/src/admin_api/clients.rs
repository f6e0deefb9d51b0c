//! `/admin/v1/clients`: register, list, show, change, rotate the secret of, disable,
//! enable and delete clients.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::Uri;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use valet_app::admin::{
    ClientChanges, ClientFilter, ClientRow, ClientStatus, ClientType, NewClient,
};
use valet_domain::client::{self, AccessTokenFormat, ClientKind, LogoutSid};

use super::{admin_handler, body, created, ok, page_request, query, time};

/// A client as lists show it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Client {
    client_id: String,
    name: String,
    /// `confidential` or `public`.
    client_type: String,
    redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    /// Space-separated.
    scope: String,
    /// `active`, `disabled` or `deleted`.
    status: String,
    /// RFC 3339.
    created_at: String,
}

impl From<ClientRow> for Client {
    fn from(c: ClientRow) -> Self {
        Client {
            client_id: c.client_id,
            name: c.name,
            client_type: c.kind,
            redirect_uris: c.redirect_uris,
            grant_types: c.grant_types,
            scope: c.scope,
            status: c.status.as_str().to_owned(),
            created_at: time(c.created_at.as_unix_millis()),
        }
    }
}

/// A page of clients.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientList {
    items: Vec<Client>,
    /// Pass as `after` for the next page; absent on the last.
    next_cursor: Option<String>,
}

/// A client with every setting.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientDetail {
    client_id: String,
    name: String,
    client_type: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    scope: String,
    status: String,
    created_at: String,
    id_token_signed_response_alg: String,
    /// `opaque` or `jwt`.
    access_token_format: String,
    access_token_signed_response_alg: Option<String>,
    backchannel_logout_uri: Option<String>,
    backchannel_logout_session_required: bool,
    /// Until when the secret before the last rotation still works.
    previous_secret_valid_until: Option<String>,
}

impl From<client::Client> for ClientDetail {
    fn from(c: client::Client) -> Self {
        let strings = |list: &[valet_domain::RedirectUri]| {
            list.iter().map(|u| u.as_str().to_owned()).collect()
        };
        let (format, alg) = match c.access_token_format {
            AccessTokenFormat::Opaque => ("opaque", None),
            AccessTokenFormat::Jwt { alg } => ("jwt", Some(alg.as_str().to_owned())),
        };
        ClientDetail {
            client_id: c.client_id.to_string(),
            name: c.name.to_string(),
            client_type: match c.kind {
                ClientKind::Confidential { .. } => "confidential",
                ClientKind::Public => "public",
            }
            .to_owned(),
            redirect_uris: strings(&c.redirect_uris),
            post_logout_redirect_uris: strings(&c.post_logout_redirect_uris),
            grant_types: c
                .grant_types
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
            scope: c.scopes.to_string(),
            status: match (c.deleted_at, c.disabled_at) {
                (Some(_), _) => "deleted",
                (None, Some(_)) => "disabled",
                (None, None) => "active",
            }
            .to_owned(),
            created_at: time(c.registered_at.as_unix_millis()),
            id_token_signed_response_alg: c.id_token_alg.as_str().to_owned(),
            access_token_format: format.to_owned(),
            access_token_signed_response_alg: alg,
            backchannel_logout_uri: c.backchannel_logout_uri().map(str::to_owned),
            backchannel_logout_session_required: c.backchannel_logout_session_required(),
            previous_secret_valid_until: c
                .previous_secret
                .map(|(_, until)| time(until.as_unix_millis())),
        }
    }
}

/// Filters of `GET /admin/v1/clients`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ClientQuery {
    /// `active`, `disabled` or `deleted`.
    status: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// The `next_cursor` of the page before.
    after: Option<String>,
}

/// What a client registers (as `valet client create`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientCreate {
    name: String,
    /// `confidential` (the default) or `public`.
    client_type: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    /// Empty: the defaults for this shape of client.
    #[serde(default)]
    grant_types: Vec<String>,
    /// Space-separated; at least one scope.
    scope: String,
    /// `RS256` (the default), `ES256` or `EdDSA`.
    id_token_signed_response_alg: Option<String>,
    /// `opaque` (the default) or `jwt`.
    access_token_format: Option<String>,
    access_token_signed_response_alg: Option<String>,
    backchannel_logout_uri: Option<String>,
    backchannel_logout_session_required: Option<bool>,
}

/// A change to a client: each field given replaces the current value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientPatch {
    name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    post_logout_redirect_uris: Option<Vec<String>>,
    grant_types: Option<Vec<String>>,
    /// Space-separated.
    scope: Option<String>,
    id_token_signed_response_alg: Option<String>,
    access_token_format: Option<String>,
    access_token_signed_response_alg: Option<String>,
    backchannel_logout_uri: Option<String>,
    backchannel_logout_session_required: Option<bool>,
}

fn scopes(scope: &str) -> Vec<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

fn logout_sid(required: Option<bool>) -> LogoutSid {
    match required {
        Some(true) => LogoutSid::Required,
        _ => LogoutSid::Optional,
    }
}

/// A registered client: its secret is shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientCreated {
    client_id: String,
    /// Only for confidential clients; only its SHA-256 is kept.
    client_secret: Option<String>,
}

/// What a disable or delete revoked.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientStopped {
    client_id: String,
    revoked_grants: u64,
}

/// A client's state after an enable.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientEnabled {
    client_id: String,
    active: bool,
}

/// The body of `rotate-secret` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotation {
    /// How long the current secret keeps working (default a day, at most 30 days).
    #[schema(maximum = 2592000)]
    overlap_seconds: Option<u32>,
}

/// A client's new secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotatedSecret {
    client_id: String,
    client_secret: String,
    previous_valid_until: String,
}

admin_handler!(
    /// The clients, by id.
    #[utoipa::path(get, path = "/admin/v1/clients", tag = "clients", params(ClientQuery),
        responses((status = 200, body = ClientList)))]
    list(uri: Uri) |app, _meta| {
        let q: ClientQuery = query(&uri)?;
        let filter = ClientFilter {
            status: q.status.as_deref().map(ClientStatus::parse).transpose()?,
        };
        let page = page_request(q.limit, q.after.as_deref())?;
        let found = app.admin_reads.clients(&filter, &page).await?;
        Ok(ok(ClientList {
            items: found.items.into_iter().map(Client::from).collect(),
            next_cursor: found.next.map(|c| c.as_str().to_owned()),
        }))
    }
);

admin_handler!(
    /// Registers a client (the rules of `valet client create`).
    #[utoipa::path(post, path = "/admin/v1/clients", tag = "clients", request_body = ClientCreate,
        responses((status = 201, body = ClientCreated)))]
    create(bytes: Bytes) |app, meta| {
        let spec: ClientCreate = body(&bytes)?;
        let client_type = match spec.client_type.as_deref() {
            None | Some("confidential") => ClientType::Confidential,
            Some("public") => ClientType::Public,
            Some(other) => {
                return Err(valet_app::admin::AdminError::Invalid(format!(
                    "client_type {other:?} is neither confidential nor public"
                )))
            }
        };
        let settings = ClientChanges {
            name: None,
            redirect_uris: spec.redirect_uris,
            grant_types: spec.grant_types,
            scopes: scopes(&spec.scope),
            id_token_alg: spec.id_token_signed_response_alg,
            post_logout_redirect_uris: spec.post_logout_redirect_uris,
            access_token_format: spec.access_token_format,
            access_token_alg: spec.access_token_signed_response_alg,
            backchannel_logout_uri: spec.backchannel_logout_uri,
            backchannel_logout_sid: logout_sid(spec.backchannel_logout_session_required),
        };
        let new = NewClient::new(spec.name, client_type, settings);
        let made = app.oauth.create_client(new, &meta).await?;
        Ok(created(ClientCreated {
            client_id: made.client_id,
            client_secret: made.client_secret,
        }))
    }
);

admin_handler!(
    /// One client with every setting.
    #[utoipa::path(get, path = "/admin/v1/clients/{client_id}", tag = "clients",
        params(("client_id" = String, Path)),
        responses((status = 200, body = ClientDetail)))]
    show(id: Path<String>) |app, _meta| {
        let client = app.oauth.show_client(&id).await?;
        Ok(ok(ClientDetail::from(client)))
    }
);

admin_handler!(
    /// Changes what a client registered (as `valet client update`): each field given
    /// replaces the current value; the registration's rules hold.
    #[utoipa::path(patch, path = "/admin/v1/clients/{client_id}", tag = "clients",
        params(("client_id" = String, Path)), request_body = ClientPatch,
        responses((status = 200, body = ClientDetail)))]
    update(id: Path<String>, bytes: Bytes) |app, meta| {
        let patch: ClientPatch = body(&bytes)?;
        let changes = ClientChanges {
            name: patch.name,
            redirect_uris: patch.redirect_uris.unwrap_or_default(),
            grant_types: patch.grant_types.unwrap_or_default(),
            scopes: patch.scope.as_deref().map(scopes).unwrap_or_default(),
            id_token_alg: patch.id_token_signed_response_alg,
            post_logout_redirect_uris: patch.post_logout_redirect_uris.unwrap_or_default(),
            access_token_format: patch.access_token_format,
            access_token_alg: patch.access_token_signed_response_alg,
            backchannel_logout_uri: patch.backchannel_logout_uri,
            backchannel_logout_sid: logout_sid(patch.backchannel_logout_session_required),
        };
        app.oauth.update_client(&id, changes, &meta).await?;
        let client = app.oauth.show_client(&id).await?;
        Ok(ok(ClientDetail::from(client)))
    }
);

admin_handler!(
    /// Deletes a client for good: every grant it holds is revoked and its id is never
    /// registered again.
    #[utoipa::path(delete, path = "/admin/v1/clients/{client_id}", tag = "clients",
        params(("client_id" = String, Path)),
        responses((status = 200, body = ClientStopped)))]
    delete(id: Path<String>) |app, meta| {
        let revoked = app.oauth.delete_client(&id, &meta).await?;
        Ok(ok(ClientStopped { client_id: id.0, revoked_grants: revoked as u64 }))
    }
);

admin_handler!(
    /// Disables a client and revokes every grant it holds.
    #[utoipa::path(post, path = "/admin/v1/clients/{client_id}/disable", tag = "clients",
        params(("client_id" = String, Path)),
        responses((status = 200, body = ClientStopped)))]
    disable(id: Path<String>) |app, meta| {
        let revoked = app.oauth.disable_client(&id, &meta).await?;
        Ok(ok(ClientStopped { client_id: id.0, revoked_grants: revoked as u64 }))
    }
);

admin_handler!(
    /// Lets a disabled client authenticate again (its revoked grants stay revoked).
    #[utoipa::path(post, path = "/admin/v1/clients/{client_id}/enable", tag = "clients",
        params(("client_id" = String, Path)),
        responses((status = 200, body = ClientEnabled)))]
    enable(id: Path<String>) |app, meta| {
        app.oauth.enable_client(&id, &meta).await?;
        Ok(ok(ClientEnabled { client_id: id.0, active: true }))
    }
);

admin_handler!(
    /// A new secret for a confidential client; the current one keeps working for
    /// `overlap_seconds`.
    #[utoipa::path(post, path = "/admin/v1/clients/{client_id}/rotate-secret", tag = "clients",
        params(("client_id" = String, Path)), request_body(content = Option<Rotation>),
        responses((status = 200, body = RotatedSecret)))]
    rotate_secret(id: Path<String>, bytes: Bytes) |app, meta| {
        let rotation: Rotation = if bytes.is_empty() { Rotation::default() } else { body(&bytes)? };
        let overlap = rotation.overlap_seconds.unwrap_or(86_400);
        if overlap > 2_592_000 {
            return Err(valet_app::admin::AdminError::Invalid(
                "overlap_seconds is at most 2592000 (30 days)".into(),
            ));
        }
        let rotated = app.oauth.rotate_client_secret(&id, overlap, &meta).await?;
        Ok(ok(RotatedSecret {
            client_id: id.0,
            client_secret: rotated.client_secret,
            previous_valid_until: time(rotated.previous_valid_until.as_unix_millis()),
        }))
    }
);
