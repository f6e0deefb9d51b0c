//! The client aggregate (stream `client-<id>`): registration and lifecycle.

use serde::{Deserialize, Serialize};

use crate::common::GrantType;
use crate::event::domain_event;
use crate::ids::{ClientId, ClientName};
use crate::redirect::{LoopbackPortRule, RedirectUri};
use crate::scope::{Scope, ScopeSet};
use crate::secret::TokenHash;
use crate::signing_key::Algorithm;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientKind {
    /// Authenticates with a secret; only its SHA-256 is kept.
    Confidential { secret_hash: TokenHash },
    /// Cannot keep a secret (native and browser apps); relies on PKCE.
    Public,
}

/// What a client's access tokens are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessTokenFormat {
    /// A random string: only Valet and the services on the stream can tell what it is.
    Opaque,
    /// An RFC 9068 JWT signed with the active key of `alg`, verifiable by anyone holding
    /// the JWKS.
    Jwt { alg: Algorithm },
}

/// Whether a client's logout tokens must name the session (`sid`) that ended
/// (`backchannel_logout_session_required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoutSid {
    Required,
    #[default]
    Optional,
}

/// Where a client hears that a user's session with it ended (OpenID Connect Back-Channel
/// Logout 1.0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackchannelLogout {
    pub uri: RedirectUri,
    pub sid: LogoutSid,
}

// A command lives for one decision: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Register {
        client_id: ClientId,
        name: ClientName,
        kind: ClientKind,
        redirect_uris: Vec<RedirectUri>,
        /// Empty means "the defaults for this shape of client".
        grant_types: Vec<GrantType>,
        scopes: ScopeSet,
        /// How its id_tokens are signed (`id_token_signed_response_alg`).
        id_token_alg: Algorithm,
        /// Where RP-Initiated Logout may send the user back to.
        post_logout_redirect_uris: Vec<RedirectUri>,
        access_token_format: AccessTokenFormat,
        backchannel_logout: Option<BackchannelLogout>,
        at: Timestamp,
    },
    Disable {
        at: Timestamp,
    },
    /// Serve again after a disable (never after a delete).
    Enable {
        at: Timestamp,
    },
    /// A new secret (its SHA-256); the current one keeps working until
    /// `previous_valid_until` (at `at` or earlier: not at all).
    RotateSecret {
        secret_hash: TokenHash,
        previous_valid_until: Timestamp,
        at: Timestamp,
    },
    /// For good: the client never authenticates again and its id is never reused.
    Delete {
        at: Timestamp,
    },
    /// Change what was registered; nothing is recorded for what stays the same.
    Update {
        update: ClientUpdate,
        at: Timestamp,
    },
    /// A new registration access token (RFC 7592; its SHA-256): the one before stops
    /// working.
    SetRegistrationToken {
        hash: TokenHash,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    ClientRegistered {
        client_id: ClientId,
        name: ClientName,
        kind: ClientKind,
        redirect_uris: Vec<RedirectUri>,
        /// Resolved: defaults applied, deduplicated, in canonical order.
        grant_types: Vec<GrantType>,
        scopes: ScopeSet,
        at: Timestamp,
    },
    ClientDisabled {
        at: Timestamp,
    },
    /// The client's id_tokens are signed with `algorithm` (RS256 until this event).
    ClientIdTokenAlgorithmSet {
        algorithm: Algorithm,
        at: Timestamp,
    },
    /// Where RP-Initiated Logout may send the user back to (none until this event).
    ClientPostLogoutRedirectUrisSet {
        uris: Vec<RedirectUri>,
        at: Timestamp,
    },
    /// The client's access tokens are `format` (opaque until this event).
    ClientAccessTokenFormatSet {
        format: AccessTokenFormat,
        at: Timestamp,
    },
    /// Where the client receives logout tokens (nowhere until this event).
    ClientBackchannelLogoutSet {
        logout: BackchannelLogout,
        at: Timestamp,
    },
    ClientEnabled {
        at: Timestamp,
    },
    /// The secret is now the one of `secret_hash`; the one before works until
    /// `previous_valid_until`.
    ClientSecretRotated {
        secret_hash: TokenHash,
        previous_valid_until: Timestamp,
        at: Timestamp,
    },
    ClientDeleted {
        at: Timestamp,
    },
    /// The registration's name, redirect URIs, grant types and scopes, as they are now.
    ClientUpdated {
        name: ClientName,
        redirect_uris: Vec<RedirectUri>,
        grant_types: Vec<GrantType>,
        scopes: ScopeSet,
        at: Timestamp,
    },
    /// The client manages its own registration (RFC 7592) with the token of `hash`;
    /// the one before, if any, stops working.
    ClientRegistrationTokenSet {
        hash: TokenHash,
        at: Timestamp,
    },
}
domain_event!(Event {
    ClientRegistered,
    ClientDisabled,
    ClientIdTokenAlgorithmSet,
    ClientPostLogoutRedirectUrisSet,
    ClientAccessTokenFormatSet,
    ClientBackchannelLogoutSet,
    ClientEnabled,
    ClientSecretRotated,
    ClientDeleted,
    ClientUpdated,
    ClientRegistrationTokenSet
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("client is already registered")]
    AlreadyRegistered,
    #[error("client not found")]
    NotFound,
    #[error("a client needs at least one scope")]
    EmptyScope,
    #[error("redirect URI registered twice: {0}")]
    DuplicateRedirectUri(RedirectUri),
    #[error("a public client needs a redirect URI")]
    PublicClientWithoutRedirectUri,
    #[error("a public client cannot use client_credentials")]
    PublicClientCredentials,
    #[error("authorization_code needs at least one redirect URI")]
    AuthorizationCodeWithoutRedirectUri,
    #[error("refresh_token needs authorization_code")]
    RefreshTokenWithoutAuthorizationCode,
    #[error("a public client has no secret")]
    PublicClientHasNoSecret,
    #[error("the client was deleted")]
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    #[error("client not found")]
    UnknownClient,
    #[error("client has no redirect URI")]
    NoneRegistered,
    #[error("redirect_uri is required when several are registered")]
    Ambiguous,
    #[error("redirect_uri does not match a registered URI")]
    NotRegistered,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("client not found")]
    UnknownClient,
    #[error("empty scope requested")]
    Empty,
    #[error("scope {0} is not allowed for this client")]
    NotAllowed(Scope),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client_id: ClientId,
    pub name: ClientName,
    pub kind: ClientKind,
    pub redirect_uris: Vec<RedirectUri>,
    pub grant_types: Vec<GrantType>,
    pub scopes: ScopeSet,
    pub registered_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
    /// Deleted clients are never active again.
    pub deleted_at: Option<Timestamp>,
    /// The secret before the last rotation, and until when it still works.
    pub previous_secret: Option<(TokenHash, Timestamp)>,
    pub id_token_alg: Algorithm,
    pub post_logout_redirect_uris: Vec<RedirectUri>,
    pub access_token_format: AccessTokenFormat,
    pub backchannel_logout: Option<BackchannelLogout>,
    /// The SHA-256 of its registration access token (dynamically registered clients).
    pub registration_token: Option<TokenHash>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State(Option<Client>);

impl Client {
    /// Where it receives logout tokens, if anywhere.
    pub fn backchannel_logout_uri(&self) -> Option<&str> {
        self.backchannel_logout.as_ref().map(|b| b.uri.as_str())
    }

    /// Whether its logout tokens must carry `sid`.
    pub fn backchannel_logout_session_required(&self) -> bool {
        self.backchannel_logout
            .as_ref()
            .is_some_and(|b| b.sid == LogoutSid::Required)
    }
}

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        crate::event::fold(events, evolve)
    }

    pub fn client(&self) -> Option<&Client> {
        self.0.as_ref()
    }

    pub fn is_registered(&self) -> bool {
        self.0.is_some()
    }

    pub fn is_active(&self) -> bool {
        self.active().is_some()
    }

    fn active(&self) -> Option<&Client> {
        self.0
            .as_ref()
            .filter(|c| c.disabled_at.is_none() && c.deleted_at.is_none())
    }

    pub fn kind(&self) -> Option<&ClientKind> {
        self.0.as_ref().map(|c| &c.kind)
    }

    /// False for unknown and disabled clients (fails closed).
    pub fn allows_grant(&self, grant_type: GrantType) -> bool {
        self.active()
            .is_some_and(|c| c.grant_types.contains(&grant_type))
    }

    /// RFC 6749 §3.1.2.3: with one registered URI the parameter may be
    /// omitted; otherwise the sent value must match a registered one. On a
    /// match the value as sent is returned (it may carry a loopback port).
    pub fn resolve_redirect_uri(
        &self,
        requested: Option<&str>,
    ) -> Result<RedirectUri, RedirectError> {
        let client = self.0.as_ref().ok_or(RedirectError::UnknownClient)?;
        let Some(requested) = requested else {
            return match client.redirect_uris.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(RedirectError::NoneRegistered),
                _ => Err(RedirectError::Ambiguous),
            };
        };
        let rule = match client.kind {
            ClientKind::Public => LoopbackPortRule::AnyPort,
            ClientKind::Confidential { .. } => LoopbackPortRule::Exact,
        };
        if client
            .redirect_uris
            .iter()
            .any(|r| r.matches_request(requested, rule))
        {
            RedirectUri::parse(requested).map_err(|_| RedirectError::NotRegistered)
        } else {
            Err(RedirectError::NotRegistered)
        }
    }

    /// The scope to grant: all registered scopes when none is requested,
    /// otherwise the request, which must be within the registered scopes.
    pub fn grantable_scope(&self, requested: Option<&ScopeSet>) -> Result<ScopeSet, ScopeError> {
        let client = self.0.as_ref().ok_or(ScopeError::UnknownClient)?;
        let Some(requested) = requested else {
            return Ok(client.scopes.clone());
        };
        if requested.is_empty() {
            return Err(ScopeError::Empty);
        }
        match requested.iter().find(|s| !client.scopes.contains(s)) {
            Some(scope) => Err(ScopeError::NotAllowed(scope.clone())),
            None => Ok(requested.clone()),
        }
    }

    /// Whether `presented` is the client's registration access token (constant-time;
    /// false for unknown, disabled and deleted clients and those without one).
    pub fn verify_registration_token(&self, presented: &TokenHash) -> bool {
        self.active()
            .and_then(|c| c.registration_token.as_ref())
            .is_some_and(|hash| hash.ct_eq(presented))
    }

    /// Constant-time; false for public, unknown, disabled and deleted clients. The
    /// secret before the last rotation passes until its deadline.
    pub fn verify_secret(&self, presented: &TokenHash, now: Timestamp) -> bool {
        let Some(client) = self.active() else {
            return false;
        };
        let ClientKind::Confidential { secret_hash } = &client.kind else {
            return false;
        };
        // Both compared whatever the first says: the time taken tells nothing.
        let current = secret_hash.ct_eq(presented);
        let previous = client
            .previous_secret
            .as_ref()
            .is_some_and(|(hash, until)| hash.ct_eq(presented) && now < *until);
        current | previous
    }
}

pub fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Error> {
    match cmd {
        Command::Register {
            client_id,
            name,
            kind,
            redirect_uris,
            grant_types,
            scopes,
            id_token_alg,
            post_logout_redirect_uris,
            access_token_format,
            backchannel_logout,
            at,
        } => {
            if state.is_registered() {
                return Err(Error::AlreadyRegistered);
            }
            let grant_types = checked_shape(&kind, &redirect_uris, grant_types, &scopes)?;
            let mut events = vec![Event::ClientRegistered {
                client_id,
                name,
                kind,
                redirect_uris,
                grant_types,
                scopes,
                at,
            }];
            // The default needs no event: logs written before this choice existed read
            // the same.
            if id_token_alg != Algorithm::RS256 {
                events.push(Event::ClientIdTokenAlgorithmSet {
                    algorithm: id_token_alg,
                    at,
                });
            }
            if !post_logout_redirect_uris.is_empty() {
                for (i, uri) in post_logout_redirect_uris.iter().enumerate() {
                    if post_logout_redirect_uris[..i].contains(uri) {
                        return Err(Error::DuplicateRedirectUri(uri.clone()));
                    }
                }
                events.push(Event::ClientPostLogoutRedirectUrisSet {
                    uris: post_logout_redirect_uris,
                    at,
                });
            }
            if access_token_format != AccessTokenFormat::Opaque {
                events.push(Event::ClientAccessTokenFormatSet {
                    format: access_token_format,
                    at,
                });
            }
            if let Some(logout) = backchannel_logout {
                events.push(Event::ClientBackchannelLogoutSet { logout, at });
            }
            Ok(events)
        }
        Command::Disable { at } => match state.client() {
            None => Err(Error::NotFound),
            Some(c) if c.disabled_at.is_some() || c.deleted_at.is_some() => Ok(vec![]),
            Some(_) => Ok(vec![Event::ClientDisabled { at }]),
        },
        Command::Enable { at } => match state.client() {
            None => Err(Error::NotFound),
            Some(c) if c.deleted_at.is_some() => Err(Error::Deleted),
            Some(c) if c.disabled_at.is_none() => Ok(vec![]),
            Some(_) => Ok(vec![Event::ClientEnabled { at }]),
        },
        Command::RotateSecret {
            secret_hash,
            previous_valid_until,
            at,
        } => match state.client() {
            None => Err(Error::NotFound),
            Some(c) if c.deleted_at.is_some() => Err(Error::Deleted),
            Some(c) if c.kind == ClientKind::Public => Err(Error::PublicClientHasNoSecret),
            Some(_) => Ok(vec![Event::ClientSecretRotated {
                secret_hash,
                previous_valid_until,
                at,
            }]),
        },
        Command::Delete { at } => match state.client() {
            None => Err(Error::NotFound),
            Some(c) if c.deleted_at.is_some() => Ok(vec![]),
            Some(_) => Ok(vec![Event::ClientDeleted { at }]),
        },
        Command::Update {
            update: changes,
            at,
        } => match state.client() {
            None => Err(Error::NotFound),
            Some(c) if c.deleted_at.is_some() => Err(Error::Deleted),
            Some(c) => update(c, changes, at),
        },
        Command::SetRegistrationToken { hash, at } => match state.client() {
            None => Err(Error::NotFound),
            Some(c) if c.deleted_at.is_some() => Err(Error::Deleted),
            Some(_) => Ok(vec![Event::ClientRegistrationTokenSet { hash, at }]),
        },
    }
}

/// The rules a client's registration obeys, at registration and at every update: the
/// grant types resolved (defaults applied, deduplicated, in canonical order).
fn checked_shape(
    kind: &ClientKind,
    redirect_uris: &[RedirectUri],
    grant_types: Vec<GrantType>,
    scopes: &ScopeSet,
) -> Result<Vec<GrantType>, Error> {
    if scopes.is_empty() {
        return Err(Error::EmptyScope);
    }
    for (i, uri) in redirect_uris.iter().enumerate() {
        if redirect_uris[..i].contains(uri) {
            return Err(Error::DuplicateRedirectUri(uri.clone()));
        }
    }
    let public = *kind == ClientKind::Public;
    if public && redirect_uris.is_empty() {
        return Err(Error::PublicClientWithoutRedirectUri);
    }
    let grant_types = resolve_grant_types(grant_types, redirect_uris);
    let has = |g| grant_types.contains(&g);
    if has(GrantType::AuthorizationCode) && redirect_uris.is_empty() {
        return Err(Error::AuthorizationCodeWithoutRedirectUri);
    }
    if has(GrantType::RefreshToken) && !has(GrantType::AuthorizationCode) {
        return Err(Error::RefreshTokenWithoutAuthorizationCode);
    }
    if public && has(GrantType::ClientCredentials) {
        return Err(Error::PublicClientCredentials);
    }
    Ok(grant_types)
}

/// What `valet client update` changes; `None` keeps the current value. Lists replace
/// the current list whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientUpdate {
    pub name: Option<ClientName>,
    pub redirect_uris: Option<Vec<RedirectUri>>,
    /// Empty means "the defaults for this shape of client", as at registration.
    pub grant_types: Option<Vec<GrantType>>,
    pub scopes: Option<ScopeSet>,
    pub id_token_alg: Option<Algorithm>,
    pub post_logout_redirect_uris: Option<Vec<RedirectUri>>,
    pub access_token_format: Option<AccessTokenFormat>,
    pub backchannel_logout: Option<BackchannelLogout>,
}

fn update(client: &Client, update: ClientUpdate, at: Timestamp) -> Result<Vec<Event>, Error> {
    let mut events = Vec::new();
    let shape_changed = update.name.is_some()
        || update.redirect_uris.is_some()
        || update.grant_types.is_some()
        || update.scopes.is_some();
    if shape_changed {
        let name = update.name.unwrap_or_else(|| client.name.clone());
        let redirect_uris = update
            .redirect_uris
            .unwrap_or_else(|| client.redirect_uris.clone());
        let scopes = update.scopes.unwrap_or_else(|| client.scopes.clone());
        let requested = update
            .grant_types
            .unwrap_or_else(|| client.grant_types.clone());
        let grant_types = checked_shape(&client.kind, &redirect_uris, requested, &scopes)?;
        let unchanged = name == client.name
            && redirect_uris == client.redirect_uris
            && grant_types == client.grant_types
            && scopes == client.scopes;
        if !unchanged {
            events.push(Event::ClientUpdated {
                name,
                redirect_uris,
                grant_types,
                scopes,
                at,
            });
        }
    }
    if let Some(algorithm) = update.id_token_alg.filter(|a| *a != client.id_token_alg) {
        events.push(Event::ClientIdTokenAlgorithmSet { algorithm, at });
    }
    if let Some(uris) = update.post_logout_redirect_uris {
        for (i, uri) in uris.iter().enumerate() {
            if uris[..i].contains(uri) {
                return Err(Error::DuplicateRedirectUri(uri.clone()));
            }
        }
        if uris != client.post_logout_redirect_uris {
            events.push(Event::ClientPostLogoutRedirectUrisSet { uris, at });
        }
    }
    if let Some(format) = update
        .access_token_format
        .filter(|f| *f != client.access_token_format)
    {
        events.push(Event::ClientAccessTokenFormatSet { format, at });
    }
    if let Some(logout) = update
        .backchannel_logout
        .filter(|l| client.backchannel_logout.as_ref() != Some(l))
    {
        events.push(Event::ClientBackchannelLogoutSet { logout, at });
    }
    Ok(events)
}

fn resolve_grant_types(
    mut requested: Vec<GrantType>,
    redirect_uris: &[RedirectUri],
) -> Vec<GrantType> {
    if requested.is_empty() {
        return if redirect_uris.is_empty() {
            vec![GrantType::ClientCredentials]
        } else {
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        };
    }
    requested.sort();
    requested.dedup();
    requested
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state.0, event) {
        (
            None,
            Event::ClientRegistered {
                client_id,
                name,
                kind,
                redirect_uris,
                grant_types,
                scopes,
                at,
            },
        ) => State(Some(Client {
            client_id: client_id.clone(),
            name: name.clone(),
            kind: kind.clone(),
            redirect_uris: redirect_uris.clone(),
            grant_types: grant_types.clone(),
            scopes: scopes.clone(),
            registered_at: *at,
            disabled_at: None,
            deleted_at: None,
            previous_secret: None,
            id_token_alg: Algorithm::RS256,
            post_logout_redirect_uris: Vec::new(),
            access_token_format: AccessTokenFormat::Opaque,
            backchannel_logout: None,
            registration_token: None,
        })),
        (Some(mut client), Event::ClientIdTokenAlgorithmSet { algorithm, .. }) => {
            client.id_token_alg = *algorithm;
            State(Some(client))
        }
        (Some(mut client), Event::ClientPostLogoutRedirectUrisSet { uris, .. }) => {
            client.post_logout_redirect_uris = uris.clone();
            State(Some(client))
        }
        (Some(mut client), Event::ClientAccessTokenFormatSet { format, .. }) => {
            client.access_token_format = *format;
            State(Some(client))
        }
        (Some(mut client), Event::ClientBackchannelLogoutSet { logout, .. }) => {
            client.backchannel_logout = Some(logout.clone());
            State(Some(client))
        }
        (Some(mut client), Event::ClientEnabled { .. }) => {
            client.disabled_at = None;
            State(Some(client))
        }
        (
            Some(mut client),
            Event::ClientSecretRotated {
                secret_hash,
                previous_valid_until,
                at,
            },
        ) => {
            if let ClientKind::Confidential { secret_hash: old } = &client.kind {
                // Only the secret just replaced overlaps: an older one ends now.
                client.previous_secret =
                    (previous_valid_until > at).then_some((*old, *previous_valid_until));
            }
            client.kind = ClientKind::Confidential {
                secret_hash: *secret_hash,
            };
            State(Some(client))
        }
        (
            Some(mut client),
            Event::ClientUpdated {
                name,
                redirect_uris,
                grant_types,
                scopes,
                ..
            },
        ) => {
            client.name = name.clone();
            client.redirect_uris = redirect_uris.clone();
            client.grant_types = grant_types.clone();
            client.scopes = scopes.clone();
            State(Some(client))
        }
        (Some(mut client), Event::ClientRegistrationTokenSet { hash, .. }) => {
            client.registration_token = Some(*hash);
            State(Some(client))
        }
        (Some(mut client), Event::ClientDeleted { at }) => {
            client.deleted_at.get_or_insert(*at);
            State(Some(client))
        }
        (Some(mut client), Event::ClientDisabled { at }) => {
            client.disabled_at.get_or_insert(*at);
            State(Some(client))
        }
        // decide never produces other sequences; replay stays total regardless.
        (other, _) => State(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirect::uri;
    use crate::scope::scopes;
    use crate::testing;
    use GrantType::{AuthorizationCode, ClientCredentials, RefreshToken};

    crate::testing::test_aggregate!(ClientAggregate);

    fn given(events: &[Event]) -> testing::Given<ClientAggregate> {
        testing::given(events)
    }

    const T0: Timestamp = Timestamp::from_unix_millis(1_000);
    const T1: Timestamp = Timestamp::from_unix_millis(2_000);

    fn id() -> ClientId {
        ClientId::parse("web").unwrap()
    }

    fn secret() -> ClientKind {
        ClientKind::Confidential {
            secret_hash: TokenHash::of("s3cret"),
        }
    }

    fn state_of(events: &[Event]) -> Client {
        State::from_events(events)
            .client()
            .cloned()
            .expect("registered")
    }

    fn register(kind: ClientKind, uris: &[&str], grant_types: &[GrantType]) -> Command {
        Command::Register {
            client_id: id(),
            name: ClientName::parse("Web").unwrap(),
            kind,
            redirect_uris: uris.iter().map(|u| uri(u)).collect(),
            grant_types: grant_types.to_vec(),
            scopes: scopes("read write"),
            id_token_alg: Algorithm::RS256,
            post_logout_redirect_uris: vec![],
            access_token_format: AccessTokenFormat::Opaque,
            backchannel_logout: None,
            at: T0,
        }
    }

    fn registered(kind: ClientKind, uris: &[&str], grant_types: &[GrantType]) -> Event {
        Event::ClientRegistered {
            client_id: id(),
            name: ClientName::parse("Web").unwrap(),
            kind,
            redirect_uris: uris.iter().map(|u| uri(u)).collect(),
            grant_types: grant_types.to_vec(),
            scopes: scopes("read write"),
            at: T0,
        }
    }

    fn web() -> Event {
        registered(
            secret(),
            &["https://app.example/cb"],
            &[AuthorizationCode, RefreshToken],
        )
    }

    #[test]
    fn registers_with_default_grant_types() {
        given(&[])
            .when(register(secret(), &["https://app.example/cb"], &[]))
            .then_events(&[web()]);
        given(&[])
            .when(register(secret(), &[], &[]))
            .then_events(&[registered(secret(), &[], &[ClientCredentials])]);
        given(&[])
            .when(register(ClientKind::Public, &["http://127.0.0.1/cb"], &[]))
            .then_events(&[registered(
                ClientKind::Public,
                &["http://127.0.0.1/cb"],
                &[AuthorizationCode, RefreshToken],
            )]);
    }

    #[test]
    fn explicit_grant_types_are_deduplicated_and_ordered() {
        given(&[])
            .when(register(
                secret(),
                &["https://app.example/cb"],
                &[
                    ClientCredentials,
                    RefreshToken,
                    AuthorizationCode,
                    ClientCredentials,
                ],
            ))
            .then_events(&[registered(
                secret(),
                &["https://app.example/cb"],
                &[AuthorizationCode, RefreshToken, ClientCredentials],
            )]);
    }

    #[test]
    fn registration_rules_table() {
        let cb = &["https://app.example/cb"][..];
        let table: &[(ClientKind, &[&str], &[GrantType], Error)] = &[
            (
                secret(),
                &[],
                &[AuthorizationCode],
                Error::AuthorizationCodeWithoutRedirectUri,
            ),
            (
                secret(),
                &[],
                &[AuthorizationCode, RefreshToken],
                Error::AuthorizationCodeWithoutRedirectUri,
            ),
            (
                secret(),
                cb,
                &[RefreshToken],
                Error::RefreshTokenWithoutAuthorizationCode,
            ),
            (
                secret(),
                &[],
                &[RefreshToken, ClientCredentials],
                Error::RefreshTokenWithoutAuthorizationCode,
            ),
            (
                ClientKind::Public,
                cb,
                &[ClientCredentials],
                Error::PublicClientCredentials,
            ),
            (
                ClientKind::Public,
                cb,
                &[AuthorizationCode, ClientCredentials],
                Error::PublicClientCredentials,
            ),
            (
                ClientKind::Public,
                &[],
                &[],
                Error::PublicClientWithoutRedirectUri,
            ),
            (
                ClientKind::Public,
                &[],
                &[ClientCredentials],
                Error::PublicClientWithoutRedirectUri,
            ),
            (
                secret(),
                &[
                    "https://app.example/cb",
                    "https://app.example/other",
                    "https://app.example/cb",
                ],
                &[],
                Error::DuplicateRedirectUri(uri("https://app.example/cb")),
            ),
        ];
        for (kind, uris, grants, error) in table {
            given(&[])
                .when(register(kind.clone(), uris, grants))
                .then_error(error.clone());
        }
        // Allowed shapes for comparison.
        for (kind, uris, grants) in [
            (secret(), cb, &[ClientCredentials][..]),
            (secret(), cb, &[AuthorizationCode][..]),
            (ClientKind::Public, cb, &[AuthorizationCode][..]),
        ] {
            assert!(decide(&State::default(), register(kind, uris, grants)).is_ok());
        }
    }

    #[test]
    fn an_id_token_algorithm_logout_uris_and_a_token_format_are_recorded_with_the_registration() {
        let Command::Register {
            client_id,
            name,
            kind,
            redirect_uris,
            grant_types,
            scopes,
            at,
            ..
        } = register(secret(), &["https://app.example/cb"], &[])
        else {
            unreachable!()
        };
        let events = decide(
            &State::default(),
            Command::Register {
                client_id,
                name,
                kind,
                redirect_uris,
                grant_types,
                scopes,
                id_token_alg: Algorithm::ES256,
                post_logout_redirect_uris: vec![uri("https://app.example/bye")],
                access_token_format: AccessTokenFormat::Jwt {
                    alg: Algorithm::EdDSA,
                },
                backchannel_logout: Some(BackchannelLogout {
                    uri: uri("https://app.example/logout"),
                    sid: LogoutSid::Required,
                }),
                at,
            },
        )
        .unwrap();
        assert_eq!(
            events[1..],
            [
                Event::ClientIdTokenAlgorithmSet {
                    algorithm: Algorithm::ES256,
                    at: T0
                },
                Event::ClientPostLogoutRedirectUrisSet {
                    uris: vec![uri("https://app.example/bye")],
                    at: T0
                },
                Event::ClientAccessTokenFormatSet {
                    format: AccessTokenFormat::Jwt {
                        alg: Algorithm::EdDSA
                    },
                    at: T0
                },
                Event::ClientBackchannelLogoutSet {
                    logout: BackchannelLogout {
                        uri: uri("https://app.example/logout"),
                        sid: LogoutSid::Required,
                    },
                    at: T0
                }
            ]
        );
        assert_eq!(
            state_of(&events).backchannel_logout.map(|l| l.sid),
            Some(LogoutSid::Required)
        );
        assert_eq!(
            state_of(&events).access_token_format,
            AccessTokenFormat::Jwt {
                alg: Algorithm::EdDSA
            }
        );
        let state = State::from_events(&events);
        assert_eq!(state.client().unwrap().id_token_alg, Algorithm::ES256);
        assert_eq!(
            state.client().unwrap().post_logout_redirect_uris,
            [uri("https://app.example/bye")]
        );
        let default = decide(
            &State::default(),
            register(secret(), &["https://app.example/cb"], &[]),
        )
        .unwrap();
        assert_eq!(default.len(), 1, "RS256 and opaque tokens need no event");
        assert_eq!(
            state_of(&default).access_token_format,
            AccessTokenFormat::Opaque
        );
        assert_eq!(
            State::from_events(&default).client().unwrap().id_token_alg,
            Algorithm::RS256
        );
    }

    #[test]
    fn registration_needs_scopes_and_happens_once() {
        let Command::Register {
            client_id,
            name,
            kind,
            redirect_uris,
            grant_types,
            at,
            ..
        } = register(secret(), &["https://app.example/cb"], &[])
        else {
            unreachable!()
        };
        given(&[])
            .when(Command::Register {
                client_id,
                name,
                kind,
                redirect_uris,
                grant_types,
                scopes: ScopeSet::default(),
                id_token_alg: Algorithm::RS256,
                post_logout_redirect_uris: vec![],
                access_token_format: AccessTokenFormat::Opaque,
                backchannel_logout: None,
                at,
            })
            .then_error(Error::EmptyScope);
        given(&[web()])
            .when(register(secret(), &["https://app.example/cb"], &[]))
            .then_error(Error::AlreadyRegistered);
    }

    #[test]
    fn disable_is_idempotent() {
        given(&[])
            .when(Command::Disable { at: T1 })
            .then_error(Error::NotFound);
        given(&[web()])
            .when(Command::Disable { at: T1 })
            .then_events(&[Event::ClientDisabled { at: T1 }]);
        given(&[web(), Event::ClientDisabled { at: T1 }])
            .when(Command::Disable { at: T1 })
            .then_nothing();
    }

    #[test]
    fn queries_fail_closed_when_disabled() {
        let active = given(&[web()]).state();
        assert!(active.is_active());
        assert!(active.allows_grant(AuthorizationCode));
        assert!(active.allows_grant(RefreshToken));
        assert!(!active.allows_grant(ClientCredentials));
        assert!(active.verify_secret(&TokenHash::of("s3cret"), T1));
        assert!(!active.verify_secret(&TokenHash::of("wrong"), T1));
        assert_eq!(active.kind(), Some(&secret()));

        let disabled = given(&[web(), Event::ClientDisabled { at: T1 }]).state();
        assert!(disabled.is_registered());
        assert!(!disabled.is_active());
        assert!(!disabled.allows_grant(AuthorizationCode));
        assert!(!disabled.verify_secret(&TokenHash::of("s3cret"), T1));
        assert_eq!(disabled.client().unwrap().disabled_at, Some(T1));

        let unknown = State::default();
        assert!(!unknown.is_active());
        assert!(!unknown.allows_grant(ClientCredentials));
        assert!(!unknown.verify_secret(&TokenHash::of("s3cret"), T1));
        assert_eq!(unknown.kind(), None);
    }

    #[test]
    fn public_clients_have_no_secret() {
        let public = given(&[registered(
            ClientKind::Public,
            &["http://127.0.0.1/cb"],
            &[AuthorizationCode],
        )])
        .state();
        assert!(!public.verify_secret(&TokenHash::of(""), T1));
        assert!(!public.verify_secret(&TokenHash::of("s3cret"), T1));
    }

    const T2: Timestamp = Timestamp::from_unix_millis(3_000);
    const T3: Timestamp = Timestamp::from_unix_millis(4_000);

    fn rotated(new: &str, until: Timestamp, at: Timestamp) -> Event {
        Event::ClientSecretRotated {
            secret_hash: TokenHash::of(new),
            previous_valid_until: until,
            at,
        }
    }

    #[test]
    fn a_rotated_out_secret_works_until_its_deadline() {
        given(&[web()])
            .when(Command::RotateSecret {
                secret_hash: TokenHash::of("new"),
                previous_valid_until: T3,
                at: T1,
            })
            .then_events(&[rotated("new", T3, T1)]);
        let state = given(&[web(), rotated("new", T3, T1)]).state();
        let ok = |s: &str, at| state.verify_secret(&TokenHash::of(s), at);
        assert!(ok("new", T2) && ok("s3cret", T2));
        assert!(ok("new", T3) && !ok("s3cret", T3));
        // A second rotation ends the first secret's overlap at once.
        let twice = given(&[web(), rotated("new", T3, T1), rotated("newer", T3, T2)]).state();
        assert!(!twice.verify_secret(&TokenHash::of("s3cret"), T2));
        assert!(twice.verify_secret(&TokenHash::of("new"), T2));
        assert!(twice.verify_secret(&TokenHash::of("newer"), T2));
        // No overlap asked: the old secret stops at once.
        let at_once = given(&[web(), rotated("new", T1, T1)]).state();
        assert!(!at_once.verify_secret(&TokenHash::of("s3cret"), T1));
        let public = registered(
            ClientKind::Public,
            &["http://127.0.0.1/cb"],
            &[AuthorizationCode],
        );
        given(&[public])
            .when(Command::RotateSecret {
                secret_hash: TokenHash::of("x"),
                previous_valid_until: T2,
                at: T1,
            })
            .then_error(Error::PublicClientHasNoSecret);
    }

    #[test]
    fn a_disabled_client_is_enabled_again_but_a_deleted_one_never() {
        let disabled = Event::ClientDisabled { at: T1 };
        given(&[web(), disabled.clone()])
            .when(Command::Enable { at: T2 })
            .then_events(&[Event::ClientEnabled { at: T2 }]);
        let enabled = given(&[web(), disabled.clone(), Event::ClientEnabled { at: T2 }]).state();
        assert!(enabled.is_active());
        given(&[web()])
            .when(Command::Enable { at: T2 })
            .then_nothing();
        given(&[web()])
            .when(Command::Delete { at: T2 })
            .then_events(&[Event::ClientDeleted { at: T2 }]);
        let deleted = [web(), Event::ClientDeleted { at: T2 }];
        given(&deleted)
            .when(Command::Enable { at: T3 })
            .then_error(Error::Deleted);
        given(&deleted)
            .when(Command::RotateSecret {
                secret_hash: TokenHash::of("x"),
                previous_valid_until: T3,
                at: T3,
            })
            .then_error(Error::Deleted);
        given(&deleted)
            .when(Command::Delete { at: T3 })
            .then_nothing();
        given(&deleted)
            .when(Command::Disable { at: T3 })
            .then_nothing();
        let state = given(&deleted).state();
        assert!(!state.is_active());
        assert!(!state.verify_secret(&TokenHash::of("s3cret"), T3));
        assert!(!state.allows_grant(AuthorizationCode));
    }

    #[test]
    fn an_update_changes_only_what_it_names_and_keeps_the_rules() {
        let rename = ClientUpdate {
            name: Some(ClientName::parse("Web 2").unwrap()),
            scopes: Some(scopes("read")),
            ..ClientUpdate::default()
        };
        given(&[web()])
            .when(Command::Update {
                update: rename.clone(),
                at: T1,
            })
            .then_events(&[Event::ClientUpdated {
                name: ClientName::parse("Web 2").unwrap(),
                redirect_uris: vec![uri("https://app.example/cb")],
                grant_types: vec![AuthorizationCode, RefreshToken],
                scopes: scopes("read"),
                at: T1,
            }]);
        let state = given(&[
            web(),
            Event::ClientUpdated {
                name: ClientName::parse("Web 2").unwrap(),
                redirect_uris: vec![uri("https://app.example/cb")],
                grant_types: vec![AuthorizationCode, RefreshToken],
                scopes: scopes("read"),
                at: T1,
            },
        ])
        .state();
        assert_eq!(state.grantable_scope(None), Ok(scopes("read")));
        // The same values again: nothing to record.
        given(&[web()])
            .when(Command::Update {
                update: ClientUpdate {
                    name: Some(ClientName::parse("Web").unwrap()),
                    ..ClientUpdate::default()
                },
                at: T1,
            })
            .then_nothing();
        // The registration's rules hold: no redirect URI left for a code flow.
        given(&[web()])
            .when(Command::Update {
                update: ClientUpdate {
                    redirect_uris: Some(vec![]),
                    ..ClientUpdate::default()
                },
                at: T1,
            })
            .then_error(Error::AuthorizationCodeWithoutRedirectUri);
        given(&[web(), Event::ClientDeleted { at: T1 }])
            .when(Command::Update {
                update: rename,
                at: T2,
            })
            .then_error(Error::Deleted);
    }

    #[test]
    fn redirect_resolution() {
        let one = given(&[web()]).state();
        assert_eq!(
            one.resolve_redirect_uri(None),
            Ok(uri("https://app.example/cb"))
        );
        assert_eq!(
            one.resolve_redirect_uri(Some("https://app.example/cb")),
            Ok(uri("https://app.example/cb"))
        );
        assert_eq!(
            one.resolve_redirect_uri(Some("https://app.example/cb/")),
            Err(RedirectError::NotRegistered)
        );
        assert_eq!(
            one.resolve_redirect_uri(Some("not a uri")),
            Err(RedirectError::NotRegistered)
        );

        let two = given(&[registered(
            secret(),
            &["https://app.example/cb", "https://app.example/other"],
            &[AuthorizationCode],
        )])
        .state();
        assert_eq!(
            two.resolve_redirect_uri(None),
            Err(RedirectError::Ambiguous)
        );
        assert_eq!(
            two.resolve_redirect_uri(Some("https://app.example/other")),
            Ok(uri("https://app.example/other"))
        );

        let none = given(&[registered(secret(), &[], &[ClientCredentials])]).state();
        assert_eq!(
            none.resolve_redirect_uri(None),
            Err(RedirectError::NoneRegistered)
        );
        assert_eq!(
            State::default().resolve_redirect_uri(None),
            Err(RedirectError::UnknownClient)
        );
    }

    #[test]
    fn loopback_port_freedom_only_for_public_clients() {
        let public = given(&[registered(
            ClientKind::Public,
            &["http://127.0.0.1/cb"],
            &[AuthorizationCode],
        )])
        .state();
        assert_eq!(
            public.resolve_redirect_uri(Some("http://127.0.0.1:49152/cb")),
            Ok(uri("http://127.0.0.1:49152/cb"))
        );
        assert_eq!(
            public.resolve_redirect_uri(Some("http://127.0.0.1:49152/x")),
            Err(RedirectError::NotRegistered)
        );

        let confidential = given(&[registered(
            secret(),
            &["http://127.0.0.1/cb"],
            &[AuthorizationCode],
        )])
        .state();
        assert_eq!(
            confidential.resolve_redirect_uri(Some("http://127.0.0.1:49152/cb")),
            Err(RedirectError::NotRegistered)
        );
    }

    #[test]
    fn scope_selection() {
        let state = given(&[web()]).state();
        assert_eq!(state.grantable_scope(None), Ok(scopes("read write")));
        assert_eq!(
            state.grantable_scope(Some(&scopes("read"))),
            Ok(scopes("read"))
        );
        assert_eq!(
            state.grantable_scope(Some(&scopes("write read"))),
            Ok(scopes("read write"))
        );
        assert_eq!(
            state.grantable_scope(Some(&scopes("read admin"))),
            Err(ScopeError::NotAllowed(Scope::parse("admin").unwrap()))
        );
        assert_eq!(
            state.grantable_scope(Some(&ScopeSet::default())),
            Err(ScopeError::Empty)
        );
        assert_eq!(
            State::default().grantable_scope(None),
            Err(ScopeError::UnknownClient)
        );
    }

    #[test]
    fn events_round_trip() {
        use crate::event::DomainEvent;
        testing::assert_round_trips(
            &[
                web(),
                registered(
                    ClientKind::Public,
                    &["http://[::1]/cb"],
                    &[AuthorizationCode],
                ),
                Event::ClientDisabled { at: T1 },
                Event::ClientIdTokenAlgorithmSet {
                    algorithm: Algorithm::EdDSA,
                    at: T1,
                },
                Event::ClientPostLogoutRedirectUrisSet {
                    uris: vec![uri("https://app.example/bye")],
                    at: T1,
                },
                Event::ClientAccessTokenFormatSet {
                    format: AccessTokenFormat::Jwt {
                        alg: Algorithm::ES256,
                    },
                    at: T1,
                },
                Event::ClientBackchannelLogoutSet {
                    logout: BackchannelLogout {
                        uri: uri("http://127.0.0.1:9/logout"),
                        sid: LogoutSid::Optional,
                    },
                    at: T1,
                },
                Event::ClientEnabled { at: T1 },
                rotated("rotated", T3, T1),
                Event::ClientDeleted { at: T1 },
                Event::ClientUpdated {
                    name: ClientName::parse("Renamed").unwrap(),
                    redirect_uris: vec![uri("https://app.example/cb")],
                    grant_types: vec![AuthorizationCode],
                    scopes: scopes("read"),
                    at: T1,
                },
                Event::ClientRegistrationTokenSet {
                    hash: TokenHash::of("registration"),
                    at: T1,
                },
            ],
            Event::EVENT_TYPES,
        );
        let payload = registered(ClientKind::Public, &[], &[ClientCredentials]).to_payload();
        assert_eq!(payload["kind"], serde_json::json!({"type": "public"}));
        assert_eq!(
            payload["grant_types"],
            serde_json::json!(["client_credentials"])
        );
        assert_eq!(payload["scopes"], "read write");
        assert_eq!(
            web().to_payload()["kind"]["secret_hash"],
            TokenHash::of("s3cret").to_string()
        );
    }

    #[test]
    fn a_registration_token_replaces_the_one_before_and_dies_with_the_client() {
        let registered = Event::ClientRegistered {
            client_id: id(),
            name: ClientName::parse("Web").unwrap(),
            kind: secret(),
            redirect_uris: vec![],
            grant_types: vec![ClientCredentials],
            scopes: scopes("read"),
            at: T0,
        };
        let first = TokenHash::of("first");
        let second = TokenHash::of("second");
        given(std::slice::from_ref(&registered))
            .when(Command::SetRegistrationToken {
                hash: first,
                at: T1,
            })
            .then_events(&[Event::ClientRegistrationTokenSet {
                hash: first,
                at: T1,
            }]);
        let state = State::from_events(&[
            registered.clone(),
            Event::ClientRegistrationTokenSet {
                hash: first,
                at: T0,
            },
            Event::ClientRegistrationTokenSet {
                hash: second,
                at: T1,
            },
        ]);
        assert!(state.verify_registration_token(&second));
        assert!(!state.verify_registration_token(&first));
        given(&[registered, Event::ClientDeleted { at: T1 }])
            .when(Command::SetRegistrationToken {
                hash: second,
                at: T1,
            })
            .then_error(Error::Deleted);
    }
}
