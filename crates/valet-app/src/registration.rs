//! Dynamic client registration (RFC 7591) and its management protocol (RFC 7592).
//!
//! Off unless the operator turns it on, open or gated by an initial access token: an
//! access token with scope `valet:register`, which the admin API issues. A registration
//! obeys the rules of `valet client create` (the same use case registers it); scopes of
//! Valet's own (`valet:*`) are never granted this way. Each client gets a registration
//! access token (only its SHA-256 is kept, in its stream) to read, replace and delete
//! its registration; every replacement issues a new one and ends the old.

use valet_domain::client::{self, ClientKind};
use valet_domain::{ClientId, RedirectUri, StreamId, TokenHash};

use crate::admin::{AdminError, ClientChanges, ClientType, NewClient};
use crate::aggregate::{self as agg, execute, load, ExecuteError};
use crate::clock::Clock;
use crate::oauth::{AuthenticatedClient, OAuth, OAuthError, RequestMeta, Unavailable};
use crate::ports::EventStore;
use crate::read::ReadModels;
use crate::secrets::{self, SecretKind};

/// The scope of an initial access token.
pub const REGISTER_SCOPE: &str = "valet:register";

/// Whether and how `/register` admits new clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegistrationPolicy {
    /// No dynamic registration (the default): `/register` is not there.
    #[default]
    Off,
    /// Anyone may register a client.
    Open,
    /// Only the bearer of an initial access token (scope `valet:register`).
    InitialAccessToken,
}

impl RegistrationPolicy {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Self::Off),
            "open" => Ok(Self::Open),
            "initial-access-token" => Ok(Self::InitialAccessToken),
            other => Err(format!(
                "{other:?} is none of off, open, initial-access-token"
            )),
        }
    }
}

/// Client metadata (RFC 7591 §2) as a registration or a replacement sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientMetadata {
    pub redirect_uris: Vec<String>,
    /// `client_secret_basic` (the default), `client_secret_post` or `none` (public).
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Vec<String>,
    /// Only `code`.
    pub response_types: Vec<String>,
    pub client_name: Option<String>,
    /// Space-separated (default `openid`).
    pub scope: Option<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub backchannel_logout_session_required: bool,
    pub id_token_signed_response_alg: Option<String>,
}

/// A client's registration as `/register` answers it.
#[derive(Debug, Clone)]
pub struct Registration {
    pub client: client::Client,
    /// Only when it was just registered (shown once).
    pub client_secret: Option<String>,
    /// Only when it was just issued (shown once).
    pub registration_access_token: Option<String>,
    /// `token_endpoint_auth_method` as registered.
    pub auth_method: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("dynamic client registration is off")]
    Off,
    /// No token, or not one that may do this (RFC 6750 §3.1 `invalid_token`).
    #[error("the access token is not valid for this")]
    InvalidToken,
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidClientMetadata(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl From<AdminError> for RegistrationError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Unavailable(e) => RegistrationError::Unavailable(e),
            AdminError::NotFound(_) => RegistrationError::InvalidToken,
            other => RegistrationError::InvalidClientMetadata(other.to_string()),
        }
    }
}

const DEFAULT_NAME: &str = "Dynamically registered client";

/// What a registration sends, checked, as the CLI's options.
fn settings(
    metadata: &ClientMetadata,
) -> Result<(ClientType, String, ClientChanges), RegistrationError> {
    let invalid = |what: String| RegistrationError::InvalidClientMetadata(what);
    for uri in &metadata.redirect_uris {
        RedirectUri::parse(uri).map_err(|e| {
            RegistrationError::InvalidRedirectUri(format!("redirect_uris: {uri}: {e}"))
        })?;
    }
    let (client_type, method) = match metadata.token_endpoint_auth_method.as_deref() {
        None | Some("client_secret_basic") => (ClientType::Confidential, "client_secret_basic"),
        Some("client_secret_post") => (ClientType::Confidential, "client_secret_post"),
        Some("none") => (ClientType::Public, "none"),
        Some(other) => {
            return Err(invalid(format!(
                "token_endpoint_auth_method {other:?} is none of client_secret_basic, \
                 client_secret_post, none"
            )))
        }
    };
    if let Some(other) = metadata.response_types.iter().find(|r| *r != "code") {
        return Err(invalid(format!(
            "response_types: only \"code\" is supported, not {other:?}"
        )));
    }
    let scope = metadata.scope.as_deref().unwrap_or("openid");
    let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
    if let Some(own) = scopes.iter().find(|s| s.starts_with("valet:")) {
        return Err(invalid(format!(
            "scope {own} is Valet's own and cannot be registered dynamically"
        )));
    }
    let name = metadata
        .client_name
        .clone()
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());
    let changes = ClientChanges {
        name: Some(name),
        redirect_uris: metadata.redirect_uris.clone(),
        grant_types: metadata.grant_types.clone(),
        scopes,
        id_token_alg: metadata.id_token_signed_response_alg.clone(),
        post_logout_redirect_uris: metadata.post_logout_redirect_uris.clone(),
        access_token_format: None,
        access_token_alg: None,
        backchannel_logout_uri: metadata.backchannel_logout_uri.clone(),
        backchannel_logout_sid: if metadata.backchannel_logout_session_required {
            client::LogoutSid::Required
        } else {
            client::LogoutSid::Optional
        },
    };
    Ok((client_type, method.to_owned(), changes))
}

fn auth_method(client: &client::Client, stated: Option<&str>) -> String {
    match (&client.kind, stated) {
        (ClientKind::Public, _) => "none".to_owned(),
        (ClientKind::Confidential { .. }, Some("client_secret_post")) => {
            "client_secret_post".to_owned()
        }
        (ClientKind::Confidential { .. }, _) => "client_secret_basic".to_owned(),
    }
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// RFC 7591 §3: registers a client from its metadata, if `policy` lets the bearer of
    /// `initial_token` (if any) do so.
    pub async fn register_dynamically(
        &self,
        policy: RegistrationPolicy,
        initial_token: Option<&str>,
        metadata: ClientMetadata,
        meta: &RequestMeta,
    ) -> Result<Registration, RegistrationError> {
        let actor = match policy {
            RegistrationPolicy::Off => return Err(RegistrationError::Off),
            RegistrationPolicy::Open => "registration".to_owned(),
            RegistrationPolicy::InitialAccessToken => {
                let token = initial_token.ok_or(RegistrationError::InvalidToken)?;
                let view = self
                    .reads
                    .access_token(&TokenHash::of(token))
                    .await
                    .map_err(Unavailable::from)?
                    .filter(|v| !v.revoked && self.now() < v.expires_at)
                    .filter(|v| v.scope.iter().any(|s| s.as_str() == REGISTER_SCOPE))
                    .ok_or(RegistrationError::InvalidToken)?;
                format!("client:{}", view.client_id)
            }
        };
        let (client_type, method, changes) = settings(&metadata)?;
        let name = changes.name.clone().unwrap_or_default();
        let as_registrar = RequestMeta {
            admin: None,
            ..meta.clone()
        };
        let created = self
            .create_client_as(
                NewClient::new(name, client_type, changes),
                &as_registrar,
                &actor,
            )
            .await?;
        let token = self
            .new_registration_token(&created.client_id, &actor, meta)
            .await?;
        let client = self.show_client(&created.client_id).await?;
        Ok(Registration {
            auth_method: auth_method(&client, Some(&method)),
            client,
            client_secret: created.client_secret,
            registration_access_token: Some(token),
        })
    }

    /// RFC 7592 §2.1: the registration, for the bearer of its registration access token.
    pub async fn read_registration(
        &self,
        client_id: &str,
        token: Option<&str>,
    ) -> Result<Registration, RegistrationError> {
        let client = self.managed(client_id, token).await?;
        Ok(Registration {
            auth_method: auth_method(&client, None),
            client,
            client_secret: None,
            registration_access_token: None,
        })
    }

    /// RFC 7592 §2.2: replaces the registration's metadata (its rules hold) and issues a
    /// new registration access token; the old one stops working.
    pub async fn update_registration(
        &self,
        client_id: &str,
        token: Option<&str>,
        metadata: ClientMetadata,
        meta: &RequestMeta,
    ) -> Result<Registration, RegistrationError> {
        let client = self.managed(client_id, token).await?;
        let (client_type, method, changes) = settings(&metadata)?;
        let registered_type = match client.kind {
            ClientKind::Public => ClientType::Public,
            ClientKind::Confidential { .. } => ClientType::Confidential,
        };
        if client_type != registered_type {
            return Err(RegistrationError::InvalidClientMetadata(
                "token_endpoint_auth_method cannot turn a confidential client into a public \
                 one or back: register a new client"
                    .into(),
            ));
        }
        let actor = format!("client:{client_id}");
        self.update_client_as(client_id, changes, meta, &actor)
            .await?;
        let token = self.new_registration_token(client_id, &actor, meta).await?;
        let client = self.show_client(client_id).await?;
        Ok(Registration {
            auth_method: auth_method(&client, Some(&method)),
            client,
            client_secret: None,
            registration_access_token: Some(token),
        })
    }

    /// RFC 7592 §2.3: deletes the client for good (as `valet client delete`).
    pub async fn delete_registration(
        &self,
        client_id: &str,
        token: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<(), RegistrationError> {
        self.managed(client_id, token).await?;
        self.delete_client_as(client_id, meta, &format!("client:{client_id}"))
            .await?;
        Ok(())
    }

    /// An initial access token for the admin API's caller: a one-token grant of scope
    /// `valet:register` to it, living `lifetime` (default: as long as access tokens).
    /// Whoever holds it may register clients while it is active.
    pub async fn issue_initial_access_token(
        &self,
        lifetime: Option<valet_domain::InitialAccessTokenTtl>,
        meta: &RequestMeta,
    ) -> Result<crate::oauth::TokenResponse, AdminError> {
        let caller = meta
            .admin
            .as_ref()
            .ok_or_else(|| AdminError::Invalid("only an admin API caller may do this".into()))?;
        let loaded = load::<agg::Client, S>(&self.store, &StreamId::client(&caller.client_id))
            .await
            .map_err(crate::admin::failed)?;
        let client = AuthenticatedClient {
            state: loaded.state,
            version: loaded.version,
        };
        let scope = valet_domain::ScopeSet::parse(REGISTER_SCOPE)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        let lifetime = lifetime.map_or(self.settings.access_ttl.seconds(), |ttl| ttl.seconds());
        self.issue_client_grant(&client, scope, lifetime, meta)
            .await
            .map_err(|e| match e {
                OAuthError::Unavailable(e) => AdminError::Unavailable(e),
                other => AdminError::Conflict(other.to_string()),
            })
    }

    /// The client whose registration access token `token` is; any other case is the
    /// same refusal, so that the answer tells nothing of which clients exist.
    async fn managed(
        &self,
        client_id: &str,
        token: Option<&str>,
    ) -> Result<client::Client, RegistrationError> {
        let token = token.ok_or(RegistrationError::InvalidToken)?;
        let id = ClientId::parse(client_id).map_err(|_| RegistrationError::InvalidToken)?;
        let loaded = load::<agg::Client, S>(&self.store, &StreamId::client(&id))
            .await
            .map_err(|e| RegistrationError::from(crate::admin::failed(e)))?;
        if !loaded
            .state
            .verify_registration_token(&TokenHash::of(token))
        {
            return Err(RegistrationError::InvalidToken);
        }
        loaded
            .state
            .client()
            .cloned()
            .ok_or(RegistrationError::InvalidToken)
    }

    /// Issues the client a new registration access token; the one before stops working.
    async fn new_registration_token(
        &self,
        client_id: &str,
        actor: &str,
        meta: &RequestMeta,
    ) -> Result<String, RegistrationError> {
        let secret = secrets::generate(SecretKind::RegistrationAccessToken, self.randomness())
            .map_err(Unavailable::from)?;
        let id = ClientId::parse(client_id).map_err(|_| RegistrationError::InvalidToken)?;
        let command = client::Command::SetRegistrationToken {
            hash: secret.hash,
            at: self.now(),
        };
        execute::<agg::Client, S>(
            &self.store,
            self.ids(),
            &StreamId::client(&id),
            command,
            &meta.metadata(actor.to_owned()),
        )
        .await
        .map_err(|e: ExecuteError<_>| RegistrationError::from(crate::admin::failed(e)))?;
        Ok(secret.raw)
    }
}
