//! The authorization code aggregate (stream `code-<sha256 of the code>`):
//! single use, short-lived, bound to client, redirect URI and PKCE challenge.

use serde::{Deserialize, Serialize};

use crate::event::{domain_event, Rejection};
use crate::ids::{ClientId, GrantId, UserId, Username};
use crate::oidc::{Nonce, SessionId};
use crate::pkce::{PkceChallenge, PkceVerifier};
use crate::redirect::RedirectUri;
use crate::scope::ScopeSet;
use crate::secret::TokenHash;
use crate::time::{CodeTtl, Timestamp};

/// Whether the authorization request carried `redirect_uri`; decides what the
/// token request must send (RFC 6749 §4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectUriPresence {
    Sent,
    Omitted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Issue {
        code_hash: TokenHash,
        client_id: ClientId,
        user_id: UserId,
        username: Username,
        /// As resolved by the client aggregate.
        redirect_uri: RedirectUri,
        redirect_uri_in_request: RedirectUriPresence,
        scope: ScopeSet,
        pkce: Option<PkceChallenge>,
        /// Pre-assigned so a replay can name the grant to revoke.
        grant_id: GrantId,
        /// OpenID Connect: the request's nonce, and when and in which session the user
        /// signed in.
        nonce: Option<Nonce>,
        auth_time: Timestamp,
        sid: SessionId,
        at: Timestamp,
        ttl: CodeTtl,
    },
    Redeem {
        client_id: ClientId,
        /// The raw value from the token request, compared byte for byte.
        redirect_uri: Option<String>,
        verifier: Option<PkceVerifier>,
        at: Timestamp,
    },
}

// A code stream holds one `CodeIssued` and at most a few small events; boxing the large
// variant would only add an allocation to every issue and replay.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    CodeIssued {
        code_hash: TokenHash,
        client_id: ClientId,
        user_id: UserId,
        username: Username,
        redirect_uri: RedirectUri,
        redirect_uri_in_request: RedirectUriPresence,
        scope: ScopeSet,
        pkce: Option<PkceChallenge>,
        grant_id: GrantId,
        /// Since schema version 2; `null` in upcast version-1 events.
        nonce: Option<Nonce>,
        /// When the user signed in; since schema version 2 (`null` in upcast ones).
        auth_time: Option<Timestamp>,
        /// The sign-in session; since schema version 3 (`null` in upcast ones).
        sid: Option<SessionId>,
        issued_at: Timestamp,
        expires_at: Timestamp,
    },
    CodeRedeemed {
        grant_id: GrantId,
        client_id: ClientId,
        at: Timestamp,
    },
    /// A second redemption by the issued client: the code leaked, so the app
    /// revokes the grant (RFC 6749 §4.1.2, §10.5).
    CodeReplayed {
        grant_id: GrantId,
        client_id: ClientId,
        at: Timestamp,
    },
}
domain_event!(Event {
    CodeIssued,
    CodeRedeemed,
    CodeReplayed
});

/// All of these map to `invalid_grant` on the wire; the detail is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGrant {
    #[error("unknown code")]
    UnknownCode,
    #[error("code was issued to another client")]
    ClientMismatch,
    #[error("code was already redeemed")]
    Replayed { grant_id: GrantId },
    #[error("code has expired")]
    Expired,
    #[error("redirect_uri does not match the authorization request")]
    RedirectMismatch,
    #[error("PKCE verification failed")]
    PkceFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("code already issued")]
    AlreadyIssued,
    #[error("a code needs at least one scope")]
    EmptyScope,
    #[error("invalid grant: {0}")]
    InvalidGrant(InvalidGrant),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCode {
    pub code_hash: TokenHash,
    pub client_id: ClientId,
    pub user_id: UserId,
    pub username: Username,
    pub redirect_uri: RedirectUri,
    pub redirect_uri_in_request: RedirectUriPresence,
    pub scope: ScopeSet,
    pub pkce: Option<PkceChallenge>,
    pub grant_id: GrantId,
    pub nonce: Option<Nonce>,
    pub auth_time: Option<Timestamp>,
    pub sid: Option<SessionId>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    issued: Option<IssuedCode>,
    redeemed_at: Option<Timestamp>,
    replays: u32,
}

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        crate::event::fold(events, evolve)
    }

    pub fn issued(&self) -> Option<&IssuedCode> {
        self.issued.as_ref()
    }

    pub fn grant_id(&self) -> Option<GrantId> {
        self.issued.as_ref().map(|c| c.grant_id)
    }

    pub fn is_redeemed(&self) -> bool {
        self.redeemed_at.is_some()
    }

    pub fn redeemed_at(&self) -> Option<Timestamp> {
        self.redeemed_at
    }

    /// How many replays have been recorded.
    pub fn replays(&self) -> u32 {
        self.replays
    }
}

pub fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Rejection<Event, Error>> {
    match cmd {
        Command::Issue {
            code_hash,
            client_id,
            user_id,
            username,
            redirect_uri,
            redirect_uri_in_request,
            scope,
            pkce,
            grant_id,
            nonce,
            auth_time,
            sid,
            at,
            ttl,
        } => {
            if state.issued.is_some() {
                return Err(Error::AlreadyIssued.into());
            }
            if scope.is_empty() {
                return Err(Error::EmptyScope.into());
            }
            Ok(vec![Event::CodeIssued {
                code_hash,
                client_id,
                user_id,
                username,
                redirect_uri,
                redirect_uri_in_request,
                scope,
                pkce,
                grant_id,
                nonce,
                auth_time: Some(auth_time),
                sid: Some(sid),
                issued_at: at,
                expires_at: at.plus_seconds(ttl.seconds()),
            }])
        }
        Command::Redeem {
            client_id,
            redirect_uri,
            verifier,
            at,
        } => redeem(
            state,
            client_id,
            redirect_uri.as_deref(),
            verifier.as_ref(),
            at,
        ),
    }
}

fn redeem(
    state: &State,
    client_id: ClientId,
    redirect_uri: Option<&str>,
    verifier: Option<&PkceVerifier>,
    at: Timestamp,
) -> Result<Vec<Event>, Rejection<Event, Error>> {
    let fail = |reason| Err(Error::InvalidGrant(reason).into());
    let Some(code) = &state.issued else {
        return fail(InvalidGrant::UnknownCode);
    };
    // Before the replay check: another client must not be able to trigger
    // the revocation cascade by presenting a stolen code (SECURITY 11, 13).
    if client_id != code.client_id {
        return fail(InvalidGrant::ClientMismatch);
    }
    if state.is_redeemed() {
        let grant_id = code.grant_id;
        return Err(Rejection {
            error: Error::InvalidGrant(InvalidGrant::Replayed { grant_id }),
            events: vec![Event::CodeReplayed {
                grant_id,
                client_id,
                at,
            }],
        });
    }
    if at >= code.expires_at {
        return fail(InvalidGrant::Expired);
    }
    let redirect_ok = match (code.redirect_uri_in_request, redirect_uri) {
        (_, Some(sent)) => sent == code.redirect_uri.as_str(),
        (RedirectUriPresence::Omitted, None) => true,
        (RedirectUriPresence::Sent, None) => false,
    };
    if !redirect_ok {
        return fail(InvalidGrant::RedirectMismatch);
    }
    let pkce_ok = match (&code.pkce, verifier) {
        (Some(challenge), Some(verifier)) => challenge.is_satisfied_by(verifier),
        (None, None) => true,
        // A verifier without a challenge is a downgrade attempt (RFC 9700 §2.1.1).
        (Some(_), None) | (None, Some(_)) => false,
    };
    if !pkce_ok {
        return fail(InvalidGrant::PkceFailed);
    }
    Ok(vec![Event::CodeRedeemed {
        grant_id: code.grant_id,
        client_id,
        at,
    }])
}

pub fn evolve(mut state: State, event: &Event) -> State {
    match event {
        Event::CodeIssued {
            code_hash,
            client_id,
            user_id,
            username,
            redirect_uri,
            redirect_uri_in_request,
            scope,
            pkce,
            grant_id,
            nonce,
            auth_time,
            sid,
            issued_at,
            expires_at,
        } => {
            state.issued.get_or_insert_with(|| IssuedCode {
                code_hash: *code_hash,
                client_id: client_id.clone(),
                user_id: *user_id,
                username: username.clone(),
                redirect_uri: redirect_uri.clone(),
                redirect_uri_in_request: *redirect_uri_in_request,
                scope: scope.clone(),
                pkce: pkce.clone(),
                grant_id: *grant_id,
                nonce: nonce.clone(),
                auth_time: *auth_time,
                sid: *sid,
                issued_at: *issued_at,
                expires_at: *expires_at,
            });
        }
        Event::CodeRedeemed { at, .. } => {
            state.redeemed_at.get_or_insert(*at);
        }
        Event::CodeReplayed { .. } => state.replays = state.replays.saturating_add(1),
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkce::{RFC_CHALLENGE, RFC_VERIFIER};
    use crate::redirect::uri;
    use crate::scope::scopes;
    use crate::testing;
    use uuid::Uuid;
    use InvalidGrant as IG;

    crate::testing::test_aggregate!(CodeAggregate, Rejection<Event, Error>);

    fn given(events: &[Event]) -> testing::Given<CodeAggregate> {
        testing::given(events)
    }

    const T0: Timestamp = Timestamp::from_unix_millis(1_000_000);
    const TTL_SECONDS: u32 = 60;
    const URI: &str = "https://app.example/cb";

    fn at(millis_after_issue: i64) -> Timestamp {
        Timestamp::from_unix_millis(T0.as_unix_millis() + millis_after_issue)
    }

    fn grant_id() -> GrantId {
        GrantId::new(Uuid::from_u128(42))
    }

    fn client(name: &str) -> ClientId {
        ClientId::parse(name).unwrap()
    }

    fn verifier(s: &str) -> Option<PkceVerifier> {
        Some(PkceVerifier::parse(s).unwrap())
    }

    fn issue_cmd(presence: RedirectUriPresence, pkce: Option<&str>) -> Command {
        Command::Issue {
            code_hash: TokenHash::of("the-code"),
            client_id: client("web"),
            user_id: UserId::new(Uuid::from_u128(1)),
            username: Username::parse("alice").unwrap(),
            redirect_uri: uri(URI),
            redirect_uri_in_request: presence,
            scope: scopes("read"),
            pkce: pkce.map(|c| PkceChallenge::parse(c).unwrap()),
            grant_id: grant_id(),
            nonce: Some(Nonce::parse("n-0S6_WzA2Mj").unwrap()),
            auth_time: at(-5_000),
            sid: SessionId::new(Uuid::from_u128(9)),
            at: T0,
            ttl: CodeTtl::new(TTL_SECONDS).unwrap(),
        }
    }

    fn issued_with(presence: RedirectUriPresence, pkce: Option<&str>) -> Event {
        let events = decide(&State::default(), issue_cmd(presence, pkce)).unwrap();
        events.into_iter().next().unwrap()
    }

    /// The usual case: redirect_uri sent, PKCE used.
    fn issued() -> Event {
        issued_with(RedirectUriPresence::Sent, Some(RFC_CHALLENGE))
    }

    fn redeem(
        client_id: &str,
        redirect_uri: Option<&str>,
        verifier: Option<PkceVerifier>,
        at: Timestamp,
    ) -> Command {
        Command::Redeem {
            client_id: client(client_id),
            redirect_uri: redirect_uri.map(str::to_owned),
            verifier,
            at,
        }
    }

    fn good_redeem(at: Timestamp) -> Command {
        redeem("web", Some(URI), verifier(RFC_VERIFIER), at)
    }

    fn redeemed(at: Timestamp) -> Event {
        Event::CodeRedeemed {
            grant_id: grant_id(),
            client_id: client("web"),
            at,
        }
    }

    #[test]
    fn issue_computes_expiry_once() {
        let Event::CodeIssued {
            issued_at,
            expires_at,
            ..
        } = issued()
        else {
            unreachable!()
        };
        assert_eq!(issued_at, T0);
        assert_eq!(expires_at, at(60_000));
        let state = State::from_events(&[issued()]);
        let code = state.issued().unwrap();
        assert_eq!(code.nonce.as_ref().map(Nonce::as_str), Some("n-0S6_WzA2Mj"));
        assert_eq!(code.auth_time, Some(at(-5_000)));
        given(&[issued()])
            .when(issue_cmd(RedirectUriPresence::Sent, None))
            .then_rejected(Error::AlreadyIssued, &[]);
    }

    #[test]
    fn issue_needs_a_scope() {
        let Command::Issue {
            code_hash,
            client_id,
            user_id,
            username,
            redirect_uri,
            pkce,
            at,
            ttl,
            ..
        } = issue_cmd(RedirectUriPresence::Sent, None)
        else {
            unreachable!()
        };
        given(&[])
            .when(Command::Issue {
                code_hash,
                client_id,
                user_id,
                username,
                redirect_uri,
                redirect_uri_in_request: RedirectUriPresence::Sent,
                scope: ScopeSet::default(),
                pkce,
                grant_id: grant_id(),
                nonce: None,
                auth_time: at,
                sid: SessionId::new(Uuid::from_u128(9)),
                at,
                ttl,
            })
            .then_rejected(Error::EmptyScope, &[]);
    }

    #[test]
    fn redeems_once() {
        given(&[issued()])
            .when(good_redeem(at(1)))
            .then_events(&[redeemed(at(1))]);
        let state = State::from_events(&[issued(), redeemed(at(1))]);
        assert!(state.is_redeemed());
        assert_eq!(state.grant_id(), Some(grant_id()));
        assert_eq!(state.issued().unwrap().scope, scopes("read"));
    }

    #[test]
    fn second_redemption_is_a_replay_that_is_recorded() {
        let replayed = Event::CodeReplayed {
            grant_id: grant_id(),
            client_id: client("web"),
            at: at(2),
        };
        given(&[issued(), redeemed(at(1))])
            .when(good_redeem(at(2)))
            .then_rejected(
                Error::InvalidGrant(IG::Replayed {
                    grant_id: grant_id(),
                }),
                std::slice::from_ref(&replayed),
            );
        // Detected however the replay is dressed up, and even after expiry.
        given(&[issued(), redeemed(at(1))])
            .when(redeem("web", None, None, at(120_000)))
            .then_rejected(
                Error::InvalidGrant(IG::Replayed {
                    grant_id: grant_id(),
                }),
                &[Event::CodeReplayed {
                    grant_id: grant_id(),
                    client_id: client("web"),
                    at: at(120_000),
                }],
            );
        // Every replay is recorded, not only the first.
        let state = given(&[issued(), redeemed(at(1)), replayed.clone()]).state();
        assert_eq!(state.replays(), 1);
        given(&[issued(), redeemed(at(1)), replayed])
            .when(good_redeem(at(3)))
            .then_rejected(
                Error::InvalidGrant(IG::Replayed {
                    grant_id: grant_id(),
                }),
                &[Event::CodeReplayed {
                    grant_id: grant_id(),
                    client_id: client("web"),
                    at: at(3),
                }],
            );
    }

    #[test]
    fn another_client_gets_invalid_grant_without_cascade() {
        for history in [vec![issued()], vec![issued(), redeemed(at(1))]] {
            given(&history)
                .when(redeem("evil", Some(URI), verifier(RFC_VERIFIER), at(2)))
                .then_rejected(Error::InvalidGrant(IG::ClientMismatch), &[]);
        }
    }

    #[test]
    fn unknown_code() {
        given(&[])
            .when(good_redeem(at(1)))
            .then_rejected(Error::InvalidGrant(IG::UnknownCode), &[]);
    }

    #[test]
    fn expiry_boundary() {
        given(&[issued()])
            .when(good_redeem(at(59_999)))
            .then_events(&[redeemed(at(59_999))]);
        for late in [60_000, 60_001, 3_600_000] {
            given(&[issued()])
                .when(good_redeem(at(late)))
                .then_rejected(Error::InvalidGrant(IG::Expired), &[]);
        }
    }

    #[test]
    fn redirect_uri_binding_table() {
        use RedirectUriPresence::{Omitted, Sent};
        let table: &[(RedirectUriPresence, Option<&str>, bool)] = &[
            (Sent, Some(URI), true),
            (Sent, None, false),
            (Sent, Some("https://app.example/cb/"), false),
            (Sent, Some("https://app.example/CB"), false),
            (Sent, Some("https://app.example/cb?x=1"), false),
            (Sent, Some(""), false),
            (Omitted, None, true),
            (Omitted, Some(URI), true),
            (Omitted, Some("https://app.example/other"), false),
            (Omitted, Some(""), false),
        ];
        for &(presence, sent, ok) in table {
            let then = given(&[issued_with(presence, None)]).when(redeem("web", sent, None, at(1)));
            if ok {
                then.then_events(&[redeemed(at(1))]);
            } else {
                then.then_rejected(Error::InvalidGrant(IG::RedirectMismatch), &[]);
            }
        }
    }

    #[test]
    fn pkce_table() {
        let wrong = "a".repeat(43);
        let table: &[(Option<&str>, Option<&str>, bool)] = &[
            (Some(RFC_CHALLENGE), Some(RFC_VERIFIER), true),
            (Some(RFC_CHALLENGE), None, false),
            (Some(RFC_CHALLENGE), Some(&wrong), false),
            // `plain`-style: verifier equal to the challenge.
            (Some(RFC_CHALLENGE), Some(RFC_CHALLENGE), false),
            // downgrade: verifier sent for a code issued without a challenge.
            (None, Some(RFC_VERIFIER), false),
            (None, None, true),
        ];
        for &(challenge, sent, ok) in table {
            let then = given(&[issued_with(RedirectUriPresence::Sent, challenge)]).when(redeem(
                "web",
                Some(URI),
                sent.and_then(verifier),
                at(1),
            ));
            if ok {
                then.then_events(&[redeemed(at(1))]);
            } else {
                then.then_rejected(Error::InvalidGrant(IG::PkceFailed), &[]);
            }
        }
    }

    #[test]
    fn failed_attempts_leave_the_code_redeemable() {
        let failures = [
            redeem("evil", Some(URI), verifier(RFC_VERIFIER), at(1)),
            redeem(
                "web",
                Some("https://app.example/x"),
                verifier(RFC_VERIFIER),
                at(1),
            ),
            redeem("web", Some(URI), None, at(1)),
            redeem("web", Some(URI), verifier(&"b".repeat(43)), at(1)),
        ];
        let mut state = State::from_events(&[issued()]);
        // As the app would: record whatever a rejection carries, then go on.
        for cmd in failures {
            let rejection = decide(&state, cmd).unwrap_err();
            assert!(rejection.events.is_empty());
            state = rejection.events.iter().fold(state, evolve);
        }
        assert!(!state.is_redeemed());
        assert_eq!(
            decide(&state, good_redeem(at(2))),
            Ok(vec![redeemed(at(2))])
        );
    }

    #[test]
    fn events_round_trip() {
        testing::assert_round_trips(
            &[
                issued(),
                issued_with(RedirectUriPresence::Omitted, None),
                redeemed(at(1)),
                Event::CodeReplayed {
                    grant_id: grant_id(),
                    client_id: client("web"),
                    at: at(2),
                },
            ],
            Event::EVENT_TYPES,
        );
    }
}
