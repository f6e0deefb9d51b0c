//! The grant aggregate (stream `grant-<uuid>`): one token family, i.e. the
//! access and refresh tokens descending from one authorization.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::common::{EventRef, RevocationReason};
use crate::event::{domain_event, Rejection};
use crate::few::Few;
use crate::ids::{ClientId, GrantId, UserId, Username};
use crate::scope::ScopeSet;
use crate::secret::TokenHash;
use crate::time::Timestamp;

/// The `jti` of a JWT access token: how the log names it besides its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JwtId(uuid::Uuid);

impl JwtId {
    pub const fn new(id: uuid::Uuid) -> Self {
        Self(id)
    }
}

impl std::fmt::Display for JwtId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessTokenIssue {
    pub hash: TokenHash,
    /// A JWT access token's `jti` (opaque tokens have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<JwtId>,
    pub scope: ScopeSet,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenIssue {
    pub hash: TokenHash,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The resource owner; absent for client_credentials grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub user_id: UserId,
    pub username: Username,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GrantOrigin {
    AuthorizationCode { code_hash: TokenHash },
    ClientCredentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Issue {
        grant_id: GrantId,
        client_id: ClientId,
        subject: Option<Subject>,
        scope: ScopeSet,
        origin: GrantOrigin,
        access: AccessTokenIssue,
        refresh: Option<RefreshTokenIssue>,
        at: Timestamp,
    },
    Refresh {
        client_id: ClientId,
        presented: TokenHash,
        requested_scope: Option<ScopeSet>,
        /// Its `scope` is replaced by the decided scope.
        access: AccessTokenIssue,
        refresh: RefreshTokenIssue,
        at: Timestamp,
    },
    RevokeAccessToken {
        hash: TokenHash,
        reason: RevocationReason,
        at: Timestamp,
    },
    RevokeGrant {
        reason: RevocationReason,
        cause: Option<EventRef>,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    GrantIssued {
        grant_id: GrantId,
        client_id: ClientId,
        subject: Option<Subject>,
        scope: ScopeSet,
        origin: GrantOrigin,
        access: AccessTokenIssue,
        refresh: Option<RefreshTokenIssue>,
        at: Timestamp,
    },
    TokensRefreshed {
        previous_refresh: TokenHash,
        access: AccessTokenIssue,
        refresh: RefreshTokenIssue,
        at: Timestamp,
    },
    /// A rotated refresh token came back: it leaked (RFC 9700 §4.14).
    RefreshTokenReused { presented: TokenHash, at: Timestamp },
    AccessTokenRevoked {
        hash: TokenHash,
        reason: RevocationReason,
        at: Timestamp,
    },
    GrantRevoked {
        reason: RevocationReason,
        cause: Option<EventRef>,
        at: Timestamp,
    },
}
domain_event!(Event {
    GrantIssued,
    TokensRefreshed,
    RefreshTokenReused,
    AccessTokenRevoked,
    GrantRevoked
});

/// All of these map to `invalid_grant` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGrant {
    #[error("unknown grant")]
    UnknownGrant,
    #[error("refresh token was issued to another client")]
    ClientMismatch,
    #[error("grant is revoked")]
    Revoked,
    #[error("refresh token was already used; grant revoked")]
    RefreshReused,
    #[error("refresh token has expired")]
    Expired,
    #[error("unknown refresh token")]
    UnknownRefreshToken,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("grant already issued")]
    AlreadyIssued,
    #[error("grant not found")]
    NotFound,
    #[error("a grant needs at least one scope")]
    EmptyScope,
    #[error("access token scope exceeds the grant scope")]
    AccessScopeExceedsGrant,
    #[error("an authorization code grant needs a subject")]
    AuthorizationCodeWithoutSubject,
    #[error("a client_credentials grant has no subject")]
    ClientCredentialsWithSubject,
    #[error("a client_credentials grant gets no refresh token")]
    ClientCredentialsWithRefreshToken,
    #[error("invalid grant: {0}")]
    InvalidGrant(InvalidGrant),
    /// Maps to `invalid_scope`.
    #[error("requested scope exceeds the grant")]
    InvalidScope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub reason: RevocationReason,
    pub cause: Option<EventRef>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub scope: ScopeSet,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked: Option<RevocationReason>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub grant_id: GrantId,
    pub client_id: ClientId,
    pub subject: Option<Subject>,
    pub scope: ScopeSet,
    pub origin: GrantOrigin,
    pub issued_at: Timestamp,
    pub revoked: Option<Revocation>,
    pub current_refresh: Option<RefreshTokenIssue>,
    pub rotated_refresh: BTreeSet<TokenHash>,
    pub access_tokens: BTreeMap<TokenHash, AccessToken>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State(Option<Grant>);

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        crate::event::fold(events, evolve)
    }

    pub fn grant(&self) -> Option<&Grant> {
        self.0.as_ref()
    }

    pub fn is_revoked(&self) -> bool {
        self.0.as_ref().is_some_and(|g| g.revoked.is_some())
    }

    /// Known, not individually revoked, grant not revoked, and `now` before expiry.
    pub fn access_token_active(&self, hash: &TokenHash, now: Timestamp) -> bool {
        self.0.as_ref().is_some_and(|g| {
            g.revoked.is_none()
                && g.access_tokens
                    .get(hash)
                    .is_some_and(|t| t.revoked.is_none() && now < t.expires_at)
        })
    }

    /// Current or rotated: any refresh token this family ever handed out.
    pub fn owns_refresh(&self, hash: &TokenHash) -> bool {
        self.is_current_refresh(hash)
            || self
                .0
                .as_ref()
                .is_some_and(|g| g.rotated_refresh.contains(hash))
    }

    pub fn is_current_refresh(&self, hash: &TokenHash) -> bool {
        self.current_refresh().is_some_and(|r| r.hash.ct_eq(hash))
    }

    pub fn current_refresh(&self) -> Option<&RefreshTokenIssue> {
        self.0.as_ref().and_then(|g| g.current_refresh.as_ref())
    }
}

pub fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Rejection<Event, Error>> {
    match cmd {
        Command::Issue {
            grant_id,
            client_id,
            subject,
            scope,
            origin,
            access,
            refresh,
            at,
        } => {
            if state.0.is_some() {
                return Err(Error::AlreadyIssued.into());
            }
            if scope.is_empty() {
                return Err(Error::EmptyScope.into());
            }
            if !access.scope.is_subset(&scope) {
                return Err(Error::AccessScopeExceedsGrant.into());
            }
            match origin {
                GrantOrigin::AuthorizationCode { .. } if subject.is_none() => {
                    return Err(Error::AuthorizationCodeWithoutSubject.into())
                }
                GrantOrigin::ClientCredentials if subject.is_some() => {
                    return Err(Error::ClientCredentialsWithSubject.into())
                }
                // RFC 6749 §4.4.3: no refresh token for client credentials.
                GrantOrigin::ClientCredentials if refresh.is_some() => {
                    return Err(Error::ClientCredentialsWithRefreshToken.into())
                }
                _ => {}
            }
            Ok(vec![Event::GrantIssued {
                grant_id,
                client_id,
                subject,
                scope,
                origin,
                access,
                refresh,
                at,
            }])
        }
        Command::Refresh {
            client_id,
            presented,
            requested_scope,
            access,
            refresh,
            at,
        } => refresh_tokens(
            state,
            client_id,
            presented,
            requested_scope,
            access,
            refresh,
            at,
        ),
        Command::RevokeAccessToken { hash, reason, at } => {
            let revocable = state.0.as_ref().is_some_and(|g| {
                g.revoked.is_none()
                    && g.access_tokens
                        .get(&hash)
                        .is_some_and(|t| t.revoked.is_none())
            });
            Ok(if revocable {
                vec![Event::AccessTokenRevoked { hash, reason, at }]
            } else {
                vec![]
            })
        }
        Command::RevokeGrant { reason, cause, at } => match &state.0 {
            None => Err(Error::NotFound.into()),
            Some(g) if g.revoked.is_some() => Ok(vec![]),
            Some(_) => Ok(vec![Event::GrantRevoked { reason, cause, at }]),
        },
    }
}

fn refresh_tokens(
    state: &State,
    client_id: ClientId,
    presented: TokenHash,
    requested_scope: Option<ScopeSet>,
    mut access: AccessTokenIssue,
    refresh: RefreshTokenIssue,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection<Event, Error>> {
    let fail = |reason| Err(Error::InvalidGrant(reason).into());
    let Some(grant) = &state.0 else {
        return fail(InvalidGrant::UnknownGrant);
    };
    // Before reuse detection: another client must not be able to revoke
    // someone else's grant by presenting a stolen token (SECURITY 24).
    if client_id != grant.client_id {
        return fail(InvalidGrant::ClientMismatch);
    }
    if grant.revoked.is_some() {
        return fail(InvalidGrant::Revoked);
    }
    if grant.rotated_refresh.contains(&presented) {
        return Err(Rejection {
            error: Error::InvalidGrant(InvalidGrant::RefreshReused),
            events: vec![
                Event::RefreshTokenReused { presented, at },
                Event::GrantRevoked {
                    reason: RevocationReason::RefreshReuse,
                    cause: None,
                    at,
                },
            ],
        });
    }
    let Some(current) = grant
        .current_refresh
        .as_ref()
        .filter(|r| r.hash.ct_eq(&presented))
    else {
        return fail(InvalidGrant::UnknownRefreshToken);
    };
    if at >= current.expires_at {
        return fail(InvalidGrant::Expired);
    }
    // RFC 6749 §6: the new access token may be narrower, never wider.
    access.scope = match requested_scope {
        Some(requested) if requested.is_empty() || !requested.is_subset(&grant.scope) => {
            return Err(Error::InvalidScope.into())
        }
        Some(requested) => requested,
        None => grant.scope.clone(),
    };
    Ok(vec![Event::TokensRefreshed {
        previous_refresh: presented,
        access,
        refresh,
        at,
    }])
}

/// What one grant event changed, token by token: the one fold of the grant lifecycle.
/// [`evolve`] keeps its result in memory; the read models, the audit answers and the
/// wire messages of resource services each render it their own way, so a new event
/// type is taught here once (and to a renderer only if it brings a new kind of change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'e> {
    /// The grant exists: who holds it, for which scope, and how it began.
    Opened {
        grant_id: GrantId,
        client_id: &'e ClientId,
        subject: Option<&'e Subject>,
        scope: &'e ScopeSet,
        origin: &'e GrantOrigin,
        at: Timestamp,
    },
    /// An access token of the grant was handed out.
    AccessIssued(&'e AccessTokenIssue),
    /// A refresh token was handed out; it replaces the grant's current one.
    RefreshIssued(&'e RefreshTokenIssue),
    /// The refresh token was exchanged: presenting it again is reuse.
    RefreshRotated(&'e TokenHash),
    /// A rotated refresh token came back. Only a fact for the audit: the revocation it
    /// causes is a change of its own.
    RefreshReused {
        presented: &'e TokenHash,
        at: Timestamp,
    },
    /// One access token stopped working.
    AccessRevoked {
        hash: &'e TokenHash,
        reason: RevocationReason,
        at: Timestamp,
    },
    /// Every token of the grant, past and future, stopped working.
    Revoked {
        reason: RevocationReason,
        cause: Option<&'e EventRef>,
        at: Timestamp,
    },
}

/// The changes `event` makes, in the order they apply.
pub fn changes(event: &Event) -> Few<Change<'_>> {
    match event {
        Event::GrantIssued {
            grant_id,
            client_id,
            subject,
            scope,
            origin,
            access,
            refresh,
            at,
        } => Few::of([
            Some(Change::Opened {
                grant_id: *grant_id,
                client_id,
                subject: subject.as_ref(),
                scope,
                origin,
                at: *at,
            }),
            Some(Change::AccessIssued(access)),
            refresh.as_ref().map(Change::RefreshIssued),
        ]),
        Event::TokensRefreshed {
            previous_refresh,
            access,
            refresh,
            ..
        } => Few::of([
            Some(Change::RefreshRotated(previous_refresh)),
            Some(Change::AccessIssued(access)),
            Some(Change::RefreshIssued(refresh)),
        ]),
        Event::RefreshTokenReused { presented, at } => {
            Few::one(Change::RefreshReused { presented, at: *at })
        }
        Event::AccessTokenRevoked { hash, reason, at } => Few::one(Change::AccessRevoked {
            hash,
            reason: *reason,
            at: *at,
        }),
        Event::GrantRevoked { reason, cause, at } => Few::one(Change::Revoked {
            reason: *reason,
            cause: cause.as_ref(),
            at: *at,
        }),
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    changes(event).fold(state, apply)
}

/// The grant as [`evolve`] keeps it, after one change.
fn apply(State(grant): State, change: Change<'_>) -> State {
    State(match (grant, change) {
        (
            None,
            Change::Opened {
                grant_id,
                client_id,
                subject,
                scope,
                origin,
                at,
            },
        ) => Some(Grant {
            grant_id,
            client_id: client_id.clone(),
            subject: subject.cloned(),
            scope: scope.clone(),
            origin: origin.clone(),
            issued_at: at,
            revoked: None,
            current_refresh: None,
            rotated_refresh: BTreeSet::new(),
            access_tokens: BTreeMap::new(),
        }),
        (Some(mut g), Change::AccessIssued(issue)) => {
            let token = AccessToken {
                scope: issue.scope.clone(),
                issued_at: issue.issued_at,
                expires_at: issue.expires_at,
                revoked: None,
            };
            g.access_tokens.insert(issue.hash, token);
            Some(g)
        }
        (Some(mut g), Change::RefreshIssued(issue)) => {
            g.current_refresh = Some(issue.clone());
            Some(g)
        }
        (Some(mut g), Change::RefreshRotated(hash)) => {
            g.rotated_refresh.insert(*hash);
            Some(g)
        }
        (Some(mut g), Change::AccessRevoked { hash, reason, .. }) => {
            if let Some(token) = g.access_tokens.get_mut(hash) {
                token.revoked.get_or_insert(reason);
            }
            Some(g)
        }
        (Some(mut g), Change::Revoked { reason, cause, at }) => {
            g.revoked.get_or_insert_with(|| Revocation {
                reason,
                cause: cause.cloned(),
                at,
            });
            Some(g)
        }
        // The reuse is kept in the log for the audit; the revocation that follows changes
        // state. decide never produces other sequences; replay stays total regardless.
        (other, _) => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StreamId;
    use crate::scope::scopes;
    use crate::testing;
    use uuid::Uuid;
    use InvalidGrant as IG;

    crate::testing::test_aggregate!(GrantAggregate, Rejection<Event, Error>);

    fn given(events: &[Event]) -> testing::Given<GrantAggregate> {
        testing::given(events)
    }

    fn t(seconds: u32) -> Timestamp {
        Timestamp::from_unix_millis(0).plus_seconds(seconds)
    }

    fn web() -> ClientId {
        ClientId::parse("web").unwrap()
    }

    fn h(name: &str) -> TokenHash {
        TokenHash::of(name)
    }

    fn access(name: &str, scope: &str, issued: u32) -> AccessTokenIssue {
        AccessTokenIssue {
            jti: None,
            hash: h(name),
            scope: scopes(scope),
            issued_at: t(issued),
            expires_at: t(issued + 300),
        }
    }

    fn refresh(name: &str, issued: u32) -> RefreshTokenIssue {
        RefreshTokenIssue {
            hash: h(name),
            issued_at: t(issued),
            expires_at: t(issued + 3600),
        }
    }

    fn subject() -> Subject {
        Subject {
            user_id: UserId::new(Uuid::from_u128(1)),
            username: Username::parse("alice").unwrap(),
        }
    }

    fn code_origin() -> GrantOrigin {
        GrantOrigin::AuthorizationCode {
            code_hash: h("code"),
        }
    }

    fn issue_cmd(
        subject: Option<Subject>,
        origin: GrantOrigin,
        refresh_token: Option<RefreshTokenIssue>,
    ) -> Command {
        Command::Issue {
            grant_id: GrantId::new(Uuid::from_u128(9)),
            client_id: web(),
            subject,
            scope: scopes("read write"),
            origin,
            access: access("at1", "read write", 0),
            refresh: refresh_token,
            at: t(0),
        }
    }

    fn issued() -> Event {
        Event::GrantIssued {
            grant_id: GrantId::new(Uuid::from_u128(9)),
            client_id: web(),
            subject: Some(subject()),
            scope: scopes("read write"),
            origin: code_origin(),
            access: access("at1", "read write", 0),
            refresh: Some(refresh("rt1", 0)),
            at: t(0),
        }
    }

    fn refreshed(previous: &str, next_access: &str, next_refresh: &str, at: u32) -> Event {
        Event::TokensRefreshed {
            previous_refresh: h(previous),
            access: access(next_access, "read write", at),
            refresh: refresh(next_refresh, at),
            at: t(at),
        }
    }

    fn refresh_cmd(client: &str, presented: &str, scope: Option<&str>, at: u32) -> Command {
        Command::Refresh {
            client_id: ClientId::parse(client).unwrap(),
            presented: h(presented),
            requested_scope: scope.map(scopes),
            // Deliberately wrong scope: decide must overwrite it.
            access: access("at-new", "bogus", at),
            refresh: refresh("rt-new", at),
            at: t(at),
        }
    }

    fn revoked(reason: RevocationReason, at: u32) -> Event {
        Event::GrantRevoked {
            reason,
            cause: None,
            at: t(at),
        }
    }

    #[test]
    fn issues_authorization_code_grant() {
        given(&[])
            .when(issue_cmd(
                Some(subject()),
                code_origin(),
                Some(refresh("rt1", 0)),
            ))
            .then_events(&[issued()]);
        given(&[issued()])
            .when(issue_cmd(
                Some(subject()),
                code_origin(),
                Some(refresh("rt1", 0)),
            ))
            .then_rejected(Error::AlreadyIssued, &[]);
    }

    #[test]
    fn issue_shape_rules() {
        let cc = GrantOrigin::ClientCredentials;
        type Row = (
            Option<Subject>,
            GrantOrigin,
            Option<RefreshTokenIssue>,
            Option<Error>,
        );
        let table: &[Row] = &[
            (None, cc.clone(), None, None),
            (
                Some(subject()),
                cc.clone(),
                None,
                Some(Error::ClientCredentialsWithSubject),
            ),
            (
                None,
                cc.clone(),
                Some(refresh("rt", 0)),
                Some(Error::ClientCredentialsWithRefreshToken),
            ),
            (
                None,
                code_origin(),
                None,
                Some(Error::AuthorizationCodeWithoutSubject),
            ),
            (Some(subject()), code_origin(), None, None),
        ];
        for (subject, origin, refresh_token, error) in table {
            let result = decide(
                &State::default(),
                issue_cmd(subject.clone(), origin.clone(), refresh_token.clone()),
            );
            assert_eq!(
                result.err().map(|r| r.error),
                error.clone(),
                "{subject:?} {origin:?} {refresh_token:?}"
            );
        }
    }

    #[test]
    fn issue_scope_rules() {
        let with_scopes = |grant: ScopeSet, access_scope: &str| Command::Issue {
            grant_id: GrantId::new(Uuid::from_u128(9)),
            client_id: web(),
            subject: None,
            scope: grant,
            origin: GrantOrigin::ClientCredentials,
            access: access("at1", access_scope, 0),
            refresh: None,
            at: t(0),
        };
        given(&[])
            .when(with_scopes(ScopeSet::default(), "read"))
            .then_rejected(Error::EmptyScope, &[]);
        given(&[])
            .when(with_scopes(scopes("read"), "read write"))
            .then_rejected(Error::AccessScopeExceedsGrant, &[]);
        assert!(decide(&State::default(), with_scopes(scopes("read write"), "read")).is_ok());
    }

    #[test]
    fn refresh_rotates() {
        let expected = Event::TokensRefreshed {
            previous_refresh: h("rt1"),
            access: access("at-new", "read write", 10),
            refresh: refresh("rt-new", 10),
            at: t(10),
        };
        given(&[issued()])
            .when(refresh_cmd("web", "rt1", None, 10))
            .then_events(std::slice::from_ref(&expected));

        let state = State::from_events(&[issued(), expected]);
        assert!(state.is_current_refresh(&h("rt-new")));
        assert!(!state.is_current_refresh(&h("rt1")));
        assert!(state.owns_refresh(&h("rt1")));
        assert!(state.owns_refresh(&h("rt-new")));
        assert!(!state.owns_refresh(&h("other")));
        assert!(state.grant().unwrap().rotated_refresh.contains(&h("rt1")));
        assert_eq!(state.current_refresh().unwrap().expires_at, t(3610));
        // Rotation does not cut short the previous access token.
        assert!(state.access_token_active(&h("at1"), t(10)));
        assert!(state.access_token_active(&h("at-new"), t(10)));
    }

    #[test]
    fn reuse_of_a_rotated_token_revokes_the_grant() {
        let history = [issued(), refreshed("rt1", "at2", "rt2", 10)];
        given(&history)
            .when(refresh_cmd("web", "rt1", None, 20))
            .then_rejected(
                Error::InvalidGrant(IG::RefreshReused),
                &[
                    Event::RefreshTokenReused {
                        presented: h("rt1"),
                        at: t(20),
                    },
                    revoked(RevocationReason::RefreshReuse, 20),
                ],
            );
        // After the cascade every token of the family is dead, including the current one.
        let rejection = decide(
            &State::from_events(&history),
            refresh_cmd("web", "rt1", None, 20),
        )
        .unwrap_err();
        let state = rejection
            .events
            .iter()
            .fold(State::from_events(&history), evolve);
        assert!(state.is_revoked());
        assert_eq!(
            state.grant().unwrap().revoked.as_ref().unwrap().reason,
            RevocationReason::RefreshReuse
        );
        assert!(!state.access_token_active(&h("at1"), t(21)));
        assert!(!state.access_token_active(&h("at2"), t(21)));
        let mut after = history.to_vec();
        after.extend(rejection.events);
        given(&after)
            .when(refresh_cmd("web", "rt2", None, 21))
            .then_rejected(Error::InvalidGrant(IG::Revoked), &[]);
    }

    #[test]
    fn revoked_grant_refuses_refresh() {
        given(&[issued(), revoked(RevocationReason::ClientRequest, 5)])
            .when(refresh_cmd("web", "rt1", None, 10))
            .then_rejected(Error::InvalidGrant(IG::Revoked), &[]);
        // No second cascade for a rotated token once revoked.
        given(&[
            issued(),
            refreshed("rt1", "at2", "rt2", 5),
            revoked(RevocationReason::RefreshReuse, 6),
        ])
        .when(refresh_cmd("web", "rt1", None, 10))
        .then_rejected(Error::InvalidGrant(IG::Revoked), &[]);
    }

    #[test]
    fn another_client_cannot_refresh_or_trigger_revocation() {
        given(&[issued()])
            .when(refresh_cmd("evil", "rt1", None, 10))
            .then_rejected(Error::InvalidGrant(IG::ClientMismatch), &[]);
        given(&[issued(), refreshed("rt1", "at2", "rt2", 5)])
            .when(refresh_cmd("evil", "rt1", None, 10))
            .then_rejected(Error::InvalidGrant(IG::ClientMismatch), &[]);
    }

    #[test]
    fn unknown_grant_or_token() {
        given(&[])
            .when(refresh_cmd("web", "rt1", None, 10))
            .then_rejected(Error::InvalidGrant(IG::UnknownGrant), &[]);
        given(&[issued()])
            .when(refresh_cmd("web", "at1", None, 10))
            .then_rejected(Error::InvalidGrant(IG::UnknownRefreshToken), &[]);
        let cc = decide(
            &State::default(),
            issue_cmd(None, GrantOrigin::ClientCredentials, None),
        )
        .unwrap();
        given(&cc)
            .when(refresh_cmd("web", "rt1", None, 10))
            .then_rejected(Error::InvalidGrant(IG::UnknownRefreshToken), &[]);
    }

    #[test]
    fn refresh_expiry_boundary() {
        // rt1 expires at t(3600).
        assert!(decide(
            &State::from_events(&[issued()]),
            refresh_cmd("web", "rt1", None, 3599)
        )
        .is_ok());
        for late in [3600, 3601] {
            given(&[issued()])
                .when(refresh_cmd("web", "rt1", None, late))
                .then_rejected(Error::InvalidGrant(IG::Expired), &[]);
        }
    }

    #[test]
    fn refresh_scope_table() {
        let table: &[(Option<&str>, Option<&str>)] = &[
            (None, Some("read write")),
            (Some("read write"), Some("read write")),
            (Some("read"), Some("read")),
            (Some("write"), Some("write")),
            (Some("read admin"), None),
            (Some("admin"), None),
        ];
        for &(requested, granted) in table {
            let result = decide(
                &State::from_events(&[issued()]),
                refresh_cmd("web", "rt1", requested, 10),
            );
            match granted {
                Some(expected) => {
                    let Ok(events) = result else {
                        panic!("{requested:?}: {result:?}")
                    };
                    let [Event::TokensRefreshed { access, .. }] = events.as_slice() else {
                        panic!("{events:?}")
                    };
                    assert_eq!(access.scope, scopes(expected), "{requested:?}");
                }
                None => assert_eq!(result, Err(Error::InvalidScope.into()), "{requested:?}"),
            }
        }
        let empty = Command::Refresh {
            client_id: web(),
            presented: h("rt1"),
            requested_scope: Some(ScopeSet::default()),
            access: access("at-new", "read", 10),
            refresh: refresh("rt-new", 10),
            at: t(10),
        };
        given(&[issued()])
            .when(empty)
            .then_rejected(Error::InvalidScope, &[]);
    }

    #[test]
    fn narrower_refresh_keeps_the_grant_scope() {
        // A narrower access token does not shrink what later refreshes may ask for.
        let narrowed = Event::TokensRefreshed {
            previous_refresh: h("rt1"),
            access: access("at2", "read", 10),
            refresh: refresh("rt2", 10),
            at: t(10),
        };
        let result = decide(
            &State::from_events(&[issued(), narrowed]),
            refresh_cmd("web", "rt2", Some("write"), 20),
        );
        assert!(result.is_ok());
    }

    #[test]
    fn access_token_revocation() {
        let revoke = |name: &str| Command::RevokeAccessToken {
            hash: h(name),
            reason: RevocationReason::ClientRequest,
            at: t(5),
        };
        let event = Event::AccessTokenRevoked {
            hash: h("at1"),
            reason: RevocationReason::ClientRequest,
            at: t(5),
        };
        given(&[issued()])
            .when(revoke("at1"))
            .then_events(std::slice::from_ref(&event));
        given(&[issued(), event.clone()])
            .when(revoke("at1"))
            .then_nothing();
        given(&[issued()]).when(revoke("rt1")).then_nothing();
        given(&[issued()]).when(revoke("unknown")).then_nothing();
        given(&[]).when(revoke("at1")).then_nothing();
        given(&[issued(), revoked(RevocationReason::Admin, 1)])
            .when(revoke("at1"))
            .then_nothing();

        let state = State::from_events(&[issued(), refreshed("rt1", "at2", "rt2", 1), event]);
        assert!(!state.access_token_active(&h("at1"), t(6)));
        assert!(state.access_token_active(&h("at2"), t(6)));
        assert!(!state.is_revoked());
        assert_eq!(
            state.grant().unwrap().access_tokens[&h("at1")].revoked,
            Some(RevocationReason::ClientRequest)
        );
    }

    #[test]
    fn access_token_activity_table() {
        let live = State::from_events(&[issued()]);
        // at1: issued t(0), expires t(300)
        let table = [
            ("at1", 0, true),
            ("at1", 299, true),
            ("at1", 300, false),
            ("rt1", 1, false),
            ("x", 1, false),
        ];
        for (name, now, active) in table {
            assert_eq!(
                live.access_token_active(&h(name), t(now)),
                active,
                "{name} {now}"
            );
        }
        assert!(!State::default().access_token_active(&h("at1"), t(1)));
        let revoked_grant = State::from_events(&[issued(), revoked(RevocationReason::Admin, 1)]);
        assert!(!revoked_grant.access_token_active(&h("at1"), t(2)));
    }

    #[test]
    fn grant_revocation() {
        let cause = EventRef {
            stream_id: StreamId::code(&TokenHash::of("abc")),
            event_id: Uuid::from_u128(5),
        };
        let cmd = || Command::RevokeGrant {
            reason: RevocationReason::CodeReplay,
            cause: Some(cause.clone()),
            at: t(7),
        };
        let event = Event::GrantRevoked {
            reason: RevocationReason::CodeReplay,
            cause: Some(cause.clone()),
            at: t(7),
        };
        given(&[]).when(cmd()).then_rejected(Error::NotFound, &[]);
        given(&[issued()])
            .when(cmd())
            .then_events(std::slice::from_ref(&event));
        given(&[issued(), event.clone()]).when(cmd()).then_nothing();
        let state = State::from_events(&[issued(), event]);
        assert!(state.is_revoked());
        assert_eq!(
            state.grant().unwrap().revoked,
            Some(Revocation {
                reason: RevocationReason::CodeReplay,
                cause: Some(cause),
                at: t(7)
            })
        );
    }

    #[test]
    fn events_round_trip() {
        use crate::event::DomainEvent;
        let cc = decide(
            &State::default(),
            issue_cmd(None, GrantOrigin::ClientCredentials, None),
        )
        .unwrap();
        testing::assert_round_trips(
            &[
                issued(),
                cc[0].clone(),
                refreshed("rt1", "at2", "rt2", 10),
                Event::RefreshTokenReused {
                    presented: h("rt1"),
                    at: t(11),
                },
                Event::AccessTokenRevoked {
                    hash: h("at2"),
                    reason: RevocationReason::ClientRequest,
                    at: t(12),
                },
                revoked(RevocationReason::RefreshReuse, 13),
                Event::GrantRevoked {
                    reason: RevocationReason::CodeReplay,
                    cause: Some(EventRef {
                        stream_id: StreamId::code(&TokenHash::of("x")),
                        event_id: Uuid::from_u128(1),
                    }),
                    at: t(14),
                },
            ],
            Event::EVENT_TYPES,
        );
        // Pin the stored shape of one event.
        assert_eq!(
            revoked(RevocationReason::RefreshReuse, 13).to_payload(),
            serde_json::json!({"reason": "refresh_reuse", "cause": null, "at": 13_000})
        );
        assert_eq!(
            cc[0].to_payload()["origin"],
            serde_json::json!({"type": "client_credentials"})
        );
    }
}
