//! The clients' administration: register, update, rotate a secret, disable, enable,
//! delete, list.

use valet_domain::client::{self, AccessTokenFormat, ClientKind};
use valet_domain::signing_key::Algorithm;
use valet_domain::{
    ClientId, ClientName, GrantType, RedirectUri, RevocationReason, ScopeSet, StreamId,
};

use crate::aggregate::{self as agg, execute, ExecuteError};
use crate::clock::Clock;
use crate::oauth::{OAuth, RequestMeta, Unavailable};
use crate::ports::EventStore;
use crate::read::{ClientSummary, ReadModels};
use crate::secrets::{self, SecretKind};

use super::{admin_actor, failed, AdminError};

/// Whether a new client can keep a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Confidential,
    Public,
}

#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    pub client_type: ClientType,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    /// `RS256` (the default), `ES256` or `EdDSA`.
    pub id_token_alg: Option<String>,
    /// Where RP-Initiated Logout may return the user (same rules as redirect URIs).
    pub post_logout_redirect_uris: Vec<String>,
    /// `opaque` (the default) or `jwt` (RFC 9068).
    pub access_token_format: Option<String>,
    /// How JWT access tokens are signed: `RS256` (the default), `ES256` or `EdDSA`.
    pub access_token_alg: Option<String>,
    /// Where logout tokens are POSTed (same rules as redirect URIs).
    pub backchannel_logout_uri: Option<String>,
    /// Whether those tokens must carry `sid` (`backchannel_logout_session_required`).
    pub backchannel_logout_sid: client::LogoutSid,
}

/// What `valet client update` changes: `None` and empty lists keep the current value.
#[derive(Debug, Clone, Default)]
pub struct ClientChanges {
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub id_token_alg: Option<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub access_token_format: Option<String>,
    pub access_token_alg: Option<String>,
    pub backchannel_logout_uri: Option<String>,
    pub backchannel_logout_sid: client::LogoutSid,
}

/// A client's new secret.
#[derive(Debug, Clone)]
pub struct RotatedSecret {
    /// Shown once; only its SHA-256 is kept.
    pub client_secret: String,
    /// Until when the secret before it still works.
    pub previous_valid_until: valet_domain::Timestamp,
}

#[derive(Debug, Clone)]
pub struct CreatedClient {
    pub client_id: String,
    /// Shown once; only its SHA-256 is kept.
    pub client_secret: Option<String>,
}

impl NewClient {
    /// A client of `client_type` called `name`, registering `settings` (whose `name` is
    /// ignored).
    pub fn new(name: String, client_type: ClientType, settings: ClientChanges) -> Self {
        NewClient {
            name,
            client_type,
            redirect_uris: settings.redirect_uris,
            grant_types: settings.grant_types,
            scopes: settings.scopes,
            id_token_alg: settings.id_token_alg,
            post_logout_redirect_uris: settings.post_logout_redirect_uris,
            access_token_format: settings.access_token_format,
            access_token_alg: settings.access_token_alg,
            backchannel_logout_uri: settings.backchannel_logout_uri,
            backchannel_logout_sid: settings.backchannel_logout_sid,
        }
    }
}

/// `--access-token-format` and `--access-token-signed-response-alg` as one choice.
fn access_token_format(
    format: Option<&str>,
    alg: Option<&str>,
) -> Result<AccessTokenFormat, AdminError> {
    let alg = alg
        .map(Algorithm::parse)
        .transpose()
        .map_err(|e| AdminError::Invalid(format!("--access-token-signed-response-alg: {e}")))?;
    match (format.unwrap_or("opaque"), alg) {
        ("opaque", None) => Ok(AccessTokenFormat::Opaque),
        ("opaque", Some(_)) => Err(AdminError::Invalid(
            "--access-token-signed-response-alg needs --access-token-format jwt".into(),
        )),
        ("jwt", alg) => Ok(AccessTokenFormat::Jwt {
            alg: alg.unwrap_or(Algorithm::RS256),
        }),
        (other, _) => Err(AdminError::Invalid(format!(
            "--access-token-format: {other:?} is neither opaque nor jwt"
        ))),
    }
}

fn invalid(what: &str, e: &dyn std::fmt::Display) -> AdminError {
    AdminError::Invalid(format!("{what}: {e}"))
}

fn uris(list: &[String], flag: &str) -> Result<Vec<RedirectUri>, AdminError> {
    list.iter()
        .map(|u| RedirectUri::parse(u).map_err(|e| invalid(flag, &e)))
        .collect()
}

fn grant_types(list: &[String]) -> Result<Vec<GrantType>, AdminError> {
    list.iter()
        .map(|g| GrantType::parse(g).map_err(|e| invalid("--grant-type", &e)))
        .collect()
}

fn scope_set(list: &[String]) -> Result<ScopeSet, AdminError> {
    if list.is_empty() {
        return Err(AdminError::Invalid(
            "at least one --scope is required: a client may only be granted the scopes it is registered with".into(),
        ));
    }
    ScopeSet::parse(&list.join(" ")).map_err(|e| invalid("--scope", &e))
}

fn algorithm(alg: Option<&str>) -> Result<Option<Algorithm>, AdminError> {
    alg.map(Algorithm::parse)
        .transpose()
        .map_err(|e| invalid("--id-token-signed-response-alg", &e))
}

fn backchannel_logout(
    uri: Option<&str>,
    sid: client::LogoutSid,
) -> Result<Option<client::BackchannelLogout>, AdminError> {
    uri.map(|u| {
        RedirectUri::parse(u)
            .map(|uri| client::BackchannelLogout { uri, sid })
            .map_err(|e| invalid("--backchannel-logout-uri", &e))
    })
    .transpose()
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// Changes what a client registered (`None` and empty lists keep the current
    /// value; a list given replaces the current one). The registration's rules hold.
    /// Scopes narrowed: the client's grants that hold a scope it may no longer ask for
    /// are revoked (reason `admin`), since a refresh would keep them alive. Returns
    /// whether anything changed.
    pub async fn update_client(
        &self,
        id: &str,
        changes: ClientChanges,
        meta: &RequestMeta,
    ) -> Result<bool, AdminError> {
        self.update_client_as(id, changes, meta, &admin_actor(meta))
            .await
    }

    /// [`Self::update_client`], recorded with `actor`.
    pub(crate) async fn update_client_as(
        &self,
        id: &str,
        changes: ClientChanges,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<bool, AdminError> {
        let nonempty = |list: Vec<String>| (!list.is_empty()).then_some(list);
        let update = client::ClientUpdate {
            name: changes
                .name
                .as_deref()
                .map(|n| ClientName::parse(n).map_err(|e| invalid("--name", &e)))
                .transpose()?,
            redirect_uris: nonempty(changes.redirect_uris)
                .map(|l| uris(&l, "--redirect-uri"))
                .transpose()?,
            grant_types: nonempty(changes.grant_types)
                .map(|l| grant_types(&l))
                .transpose()?,
            scopes: nonempty(changes.scopes)
                .map(|l| scope_set(&l))
                .transpose()?,
            id_token_alg: algorithm(changes.id_token_alg.as_deref())?,
            post_logout_redirect_uris: nonempty(changes.post_logout_redirect_uris)
                .map(|l| uris(&l, "--post-logout-redirect-uri"))
                .transpose()?,
            access_token_format: match (&changes.access_token_format, &changes.access_token_alg) {
                (None, None) => None,
                (format, alg) => Some(access_token_format(format.as_deref(), alg.as_deref())?),
            },
            backchannel_logout: backchannel_logout(
                changes.backchannel_logout_uri.as_deref(),
                changes.backchannel_logout_sid,
            )?,
        };
        let allowed = update.scopes.clone();
        let command = client::Command::Update {
            update,
            at: self.now(),
        };
        let (client_id, recorded) = self.execute_on_client(id, command, meta, actor).await?;
        if let Some(allowed) = allowed.filter(|_| recorded > 0) {
            let beyond = self
                .reads
                .active_grants_of_client_beyond(&client_id, &allowed)
                .await?;
            self.revoke_all_as(beyond, RevocationReason::Admin, meta, actor)
                .await?;
        }
        Ok(recorded > 0)
    }

    pub async fn create_client(
        &self,
        spec: NewClient,
        meta: &RequestMeta,
    ) -> Result<CreatedClient, AdminError> {
        self.create_client_as(spec, meta, &admin_actor(meta)).await
    }

    /// [`Self::create_client`], recorded with `actor`.
    pub(crate) async fn create_client_as(
        &self,
        spec: NewClient,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<CreatedClient, AdminError> {
        let name = ClientName::parse(&spec.name).map_err(|e| invalid("--name", &e))?;
        let redirect_uris = uris(&spec.redirect_uris, "--redirect-uri")?;
        let grant_types = grant_types(&spec.grant_types)?;
        let scopes = scope_set(&spec.scopes)?;
        let id_token_alg = algorithm(spec.id_token_alg.as_deref())?.unwrap_or(Algorithm::RS256);
        let post_logout_redirect_uris = uris(
            &spec.post_logout_redirect_uris,
            "--post-logout-redirect-uri",
        )?;
        let access_token_format = access_token_format(
            spec.access_token_format.as_deref(),
            spec.access_token_alg.as_deref(),
        )?;
        let backchannel_logout = backchannel_logout(
            spec.backchannel_logout_uri.as_deref(),
            spec.backchannel_logout_sid,
        )?;
        let random = self.randomness();
        let drawn = secrets::client_id(random).map_err(Unavailable::from)?;
        // 32 hex characters always make a valid client id.
        let client_id = ClientId::parse(&drawn).map_err(|e| invalid("client id", &e))?;
        let (kind, secret) = match spec.client_type {
            ClientType::Public => (ClientKind::Public, None),
            ClientType::Confidential => {
                let secret = secrets::generate(SecretKind::ClientSecret, random)
                    .map_err(Unavailable::from)?;
                (
                    ClientKind::Confidential {
                        secret_hash: secret.hash,
                    },
                    Some(secret.raw),
                )
            }
        };
        let command = client::Command::Register {
            client_id: client_id.clone(),
            name,
            kind,
            redirect_uris,
            grant_types,
            scopes,
            id_token_alg,
            post_logout_redirect_uris,
            access_token_format,
            backchannel_logout,
            at: self.now(),
        };
        execute::<agg::Client, S>(
            &self.store,
            self.ids(),
            &StreamId::client(&client_id),
            command,
            &meta.metadata(actor.to_owned()),
        )
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected {
                error: client::Error::AlreadyRegistered,
                ..
            } => AdminError::AlreadyExists(format!("client {client_id}")),
            other => failed(other),
        })?;
        Ok(CreatedClient {
            client_id: client_id.to_string(),
            client_secret: secret,
        })
    }

    /// One client as the log has it: every setting, its state, and until when the
    /// secret before the last rotation works.
    pub async fn show_client(&self, id: &str) -> Result<client::Client, AdminError> {
        let not_found = || AdminError::NotFound(format!("client {id}"));
        let client_id = ClientId::parse(id).map_err(|_| not_found())?;
        agg::load::<agg::Client, S>(&self.store, &StreamId::client(&client_id))
            .await
            .map_err(failed)?
            .state
            .client()
            .cloned()
            .ok_or_else(not_found)
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientSummary>, AdminError> {
        Ok(self.reads.clients().await?)
    }

    /// Disables the client and revokes every grant it holds. Returns how many grants.
    pub async fn disable_client(&self, id: &str, meta: &RequestMeta) -> Result<usize, AdminError> {
        let command = client::Command::Disable { at: self.now() };
        self.stop_client(id, command, meta, &admin_actor(meta))
            .await
    }

    /// Disables or deletes a client, then revokes every grant it holds (reason
    /// `client_disabled`, which resource services of every version know).
    async fn stop_client(
        &self,
        id: &str,
        command: client::Command,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<usize, AdminError> {
        if meta
            .admin
            .as_ref()
            .is_some_and(|caller| caller.client_id.as_str() == id)
        {
            return Err(AdminError::Conflict(
                "the calling client cannot disable or delete itself: call with another \
                 client's token, or use the CLI"
                    .into(),
            ));
        }
        let (client_id, _) = self.execute_on_client(id, command, meta, actor).await?;
        self.revoke_all_as(
            self.reads.active_grants_of_client(&client_id).await?,
            RevocationReason::ClientDisabled,
            meta,
            actor,
        )
        .await
    }

    /// Lets a disabled client authenticate again (its revoked grants stay revoked).
    pub async fn enable_client(&self, id: &str, meta: &RequestMeta) -> Result<(), AdminError> {
        let command = client::Command::Enable { at: self.now() };
        self.execute_on_client(id, command, meta, &admin_actor(meta))
            .await?;
        Ok(())
    }

    /// Deletes the client for good: it never authenticates again, its id is never
    /// registered again, and every grant it holds is revoked. Returns how many grants.
    pub async fn delete_client(&self, id: &str, meta: &RequestMeta) -> Result<usize, AdminError> {
        self.delete_client_as(id, meta, &admin_actor(meta)).await
    }

    /// [`Self::delete_client`], recorded with `actor`.
    pub(crate) async fn delete_client_as(
        &self,
        id: &str,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<usize, AdminError> {
        let command = client::Command::Delete { at: self.now() };
        self.stop_client(id, command, meta, actor).await
    }

    /// Gives a confidential client a new secret (shown once; only its SHA-256 is kept).
    /// The current secret keeps working for `overlap_seconds` (0: it stops at once), so
    /// the client's deployments can switch over.
    pub async fn rotate_client_secret(
        &self,
        id: &str,
        overlap_seconds: u32,
        meta: &RequestMeta,
    ) -> Result<RotatedSecret, AdminError> {
        let secret = secrets::generate(SecretKind::ClientSecret, self.randomness())
            .map_err(Unavailable::from)?;
        let now = self.now();
        let previous_valid_until = now.plus_seconds(overlap_seconds);
        let command = client::Command::RotateSecret {
            secret_hash: secret.hash,
            previous_valid_until,
            at: now,
        };
        self.execute_on_client(id, command, meta, &admin_actor(meta))
            .await?;
        Ok(RotatedSecret {
            client_secret: secret.raw,
            previous_valid_until,
        })
    }

    /// An administrator's command on a client's stream; the client's id and how many
    /// events it recorded.
    async fn execute_on_client(
        &self,
        id: &str,
        command: client::Command,
        meta: &RequestMeta,
        actor: &str,
    ) -> Result<(ClientId, usize), AdminError> {
        let not_found = || AdminError::NotFound(format!("client {id}"));
        let client_id = ClientId::parse(id).map_err(|_| not_found())?;
        let executed = execute::<agg::Client, S>(
            &self.store,
            self.ids(),
            &StreamId::client(&client_id),
            command,
            &meta.metadata(actor.to_owned()),
        )
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected {
                error: client::Error::NotFound,
                ..
            } => not_found(),
            other => failed(other),
        })?;
        Ok((client_id, executed.events.len()))
    }
}
