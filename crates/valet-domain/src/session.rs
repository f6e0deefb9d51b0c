//! The login-session aggregate (stream `session-<sid>`): a person signed in on the
//! authorization pages, the clients that session signed in to, and how it ended.
//!
//! The session cookie names the session; it acts for the user only while this stream
//! says the session stands: not ended, not past its lifetime, not idle for longer than
//! the idle timeout. Use is recorded at most once a minute, or a quarter of the idle
//! timeout when that is shorter (plus the first use by each client): the idle timeout's
//! resolution.

use serde::{Deserialize, Serialize};

use crate::event::domain_event;
use crate::ids::{ClientId, UserId};
use crate::oidc::SessionId;
use crate::time::Timestamp;

/// Use of a session is recorded at most this often (unless a new client joins or the
/// idle timeout is shorter than four times this).
pub const USE_RECORDED_EVERY_SECONDS: u32 = 60;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The user signed out (RP-Initiated Logout, or "Sign out" on the account page).
    Logout,
    /// Past its lifetime or idle timeout, noticed when it was presented.
    Expired,
    PasswordChanged,
    /// "Sign out everywhere" on the account page.
    SignedOutEverywhere,
    /// An administrator ended it (`valet user logout`).
    Admin,
    UserDisabled,
}

impl EndReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Expired => "expired",
            Self::PasswordChanged => "password_changed",
            Self::SignedOutEverywhere => "signed_out_everywhere",
            Self::Admin => "admin",
            Self::UserDisabled => "user_disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Logout,
            Self::Expired,
            Self::PasswordChanged,
            Self::SignedOutEverywhere,
            Self::Admin,
            Self::UserDisabled,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// How long a session may go unused; `None`: no idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeout(pub Option<u32>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start {
        session_id: SessionId,
        user_id: UserId,
        expires_at: Timestamp,
        at: Timestamp,
    },
    /// The session acted for its user (for `client`, when it signed in to one).
    Use {
        client_id: Option<ClientId>,
        idle: IdleTimeout,
        at: Timestamp,
    },
    End {
        reason: EndReason,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    SessionStarted {
        session_id: SessionId,
        user_id: UserId,
        expires_at: Timestamp,
        at: Timestamp,
    },
    SessionUsed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<ClientId>,
        at: Timestamp,
    },
    SessionEnded {
        reason: EndReason,
        at: Timestamp,
    },
}
domain_event!(Event {
    SessionStarted,
    SessionUsed,
    SessionEnded
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the session was started already")]
    AlreadyStarted,
    #[error("no such session")]
    NotFound,
    #[error("the session has ended")]
    Ended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub started_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_used_at: Timestamp,
    /// The clients this session signed in to, in order: they hear of its end.
    pub clients: Vec<ClientId>,
    pub ended: Option<(EndReason, Timestamp)>,
}

/// Whether a session may act for its user at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Stands,
    Ended(EndReason),
    /// Past its lifetime or idle timeout, but not recorded as ended yet.
    Lapsed,
}

impl Session {
    /// Whether a use at `at` (by `client`) is worth recording: the client is new to the
    /// session, or the idle timeout's resolution has passed since the last recorded use.
    pub fn use_is_due(&self, client: Option<&ClientId>, at: Timestamp, idle: IdleTimeout) -> bool {
        let joins = client.is_some_and(|c| !self.clients.contains(c));
        let every_ms = idle
            .0
            .map_or(i64::from(USE_RECORDED_EVERY_SECONDS) * 1000, |idle| {
                (i64::from(idle) * 250).min(i64::from(USE_RECORDED_EVERY_SECONDS) * 1000)
            });
        joins || at.as_unix_millis() >= self.last_used_at.as_unix_millis() + every_ms
    }

    pub fn standing(&self, now: Timestamp, idle: IdleTimeout) -> Standing {
        if let Some((reason, _)) = self.ended {
            return Standing::Ended(reason);
        }
        let idle_until = idle
            .0
            .map(|seconds| self.last_used_at.plus_seconds(seconds));
        if now >= self.expires_at || idle_until.is_some_and(|until| now >= until) {
            return Standing::Lapsed;
        }
        Standing::Stands
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State(Option<Session>);

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        crate::event::fold(events, evolve)
    }

    pub fn session(&self) -> Option<&Session> {
        self.0.as_ref()
    }
}

pub fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Error> {
    match (cmd, &state.0) {
        (
            Command::Start {
                session_id,
                user_id,
                expires_at,
                at,
            },
            None,
        ) => Ok(vec![Event::SessionStarted {
            session_id,
            user_id,
            expires_at,
            at,
        }]),
        (Command::Start { .. }, Some(_)) => Err(Error::AlreadyStarted),
        (_, None) => Err(Error::NotFound),
        (Command::Use { .. }, Some(s)) if s.ended.is_some() => Err(Error::Ended),
        (
            Command::Use {
                client_id,
                idle,
                at,
            },
            Some(s),
        ) => {
            let joins = client_id.as_ref().is_some_and(|c| !s.clients.contains(c));
            Ok(match (joins, s.use_is_due(client_id.as_ref(), at, idle)) {
                (_, false) => vec![],
                (true, true) => vec![Event::SessionUsed { client_id, at }],
                (false, true) => vec![Event::SessionUsed {
                    client_id: None,
                    at,
                }],
            })
        }
        (Command::End { .. }, Some(s)) if s.ended.is_some() => Ok(vec![]),
        (Command::End { reason, at }, Some(_)) => Ok(vec![Event::SessionEnded { reason, at }]),
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match (event, state.0) {
        (
            Event::SessionStarted {
                session_id,
                user_id,
                expires_at,
                at,
            },
            _,
        ) => State(Some(Session {
            session_id: *session_id,
            user_id: *user_id,
            started_at: *at,
            expires_at: *expires_at,
            last_used_at: *at,
            clients: Vec::new(),
            ended: None,
        })),
        (Event::SessionUsed { client_id, at }, Some(mut s)) => {
            s.last_used_at = s.last_used_at.max(*at);
            if let Some(client) = client_id {
                if !s.clients.contains(client) {
                    s.clients.push(client.clone());
                }
            }
            State(Some(s))
        }
        (Event::SessionEnded { reason, at }, Some(mut s)) => {
            s.ended = s.ended.or(Some((*reason, *at)));
            State(Some(s))
        }
        (_, None) => State(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use uuid::Uuid;

    crate::testing::test_aggregate!(SessionAggregate);

    fn given(events: &[Event]) -> testing::Given<SessionAggregate> {
        testing::given(events)
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_unix_millis(seconds * 1000)
    }

    fn started() -> Event {
        Event::SessionStarted {
            session_id: SessionId::new(Uuid::from_u128(1)),
            user_id: UserId::new(Uuid::from_u128(2)),
            expires_at: t(3600),
            at: t(0),
        }
    }

    fn client(name: &str) -> ClientId {
        ClientId::parse(name).unwrap()
    }

    fn used(client_id: Option<&str>, at: i64) -> Command {
        Command::Use {
            client_id: client_id.map(client),
            idle: IdleTimeout(Some(1800)),
            at: t(at),
        }
    }

    #[test]
    fn a_session_starts_once() {
        given(&[])
            .when(Command::Start {
                session_id: SessionId::new(Uuid::from_u128(1)),
                user_id: UserId::new(Uuid::from_u128(2)),
                expires_at: t(3600),
                at: t(0),
            })
            .then_events(&[started()]);
        given(&[started()])
            .when(Command::Start {
                session_id: SessionId::new(Uuid::from_u128(1)),
                user_id: UserId::new(Uuid::from_u128(2)),
                expires_at: t(3600),
                at: t(0),
            })
            .then_error(Error::AlreadyStarted);
    }

    #[test]
    fn use_is_recorded_for_a_new_client_or_once_a_minute() {
        given(&[started()])
            .when(used(Some("web"), 5))
            .then_events(&[Event::SessionUsed {
                client_id: Some(client("web")),
                at: t(5),
            }]);
        let joined = Event::SessionUsed {
            client_id: Some(client("web")),
            at: t(5),
        };
        given(&[started(), joined.clone()])
            .when(used(Some("web"), 30))
            .then_nothing();
        given(&[started(), joined.clone()])
            .when(used(Some("web"), 65))
            .then_events(&[Event::SessionUsed {
                client_id: None,
                at: t(65),
            }]);
        given(&[started(), joined.clone()])
            .when(used(None, 64))
            .then_nothing();
        // A short idle timeout records use more often: four times per timeout.
        given(&[started(), joined])
            .when(Command::Use {
                client_id: None,
                idle: IdleTimeout(Some(8)),
                at: t(7),
            })
            .then_events(&[Event::SessionUsed {
                client_id: None,
                at: t(7),
            }]);
    }

    #[test]
    fn an_ended_session_is_not_used_and_ends_once() {
        let ended = Event::SessionEnded {
            reason: EndReason::Logout,
            at: t(9),
        };
        given(&[started(), ended.clone()])
            .when(used(Some("web"), 10))
            .then_error(Error::Ended);
        given(&[started(), ended])
            .when(Command::End {
                reason: EndReason::Admin,
                at: t(11),
            })
            .then_nothing();
        given(&[])
            .when(Command::End {
                reason: EndReason::Logout,
                at: t(1),
            })
            .then_error(Error::NotFound);
    }

    #[test]
    fn a_session_lapses_after_its_lifetime_or_idle_timeout() {
        let state = given(&[started()]).state();
        let s = state.session().unwrap();
        let idle = IdleTimeout(Some(600));
        assert_eq!(s.standing(t(599), idle), Standing::Stands);
        assert_eq!(s.standing(t(600), idle), Standing::Lapsed);
        assert_eq!(s.standing(t(3599), IdleTimeout(None)), Standing::Stands);
        assert_eq!(s.standing(t(3600), IdleTimeout(None)), Standing::Lapsed);
        let state = given(&[
            started(),
            Event::SessionUsed {
                client_id: Some(client("web")),
                at: t(500),
            },
        ])
        .state();
        let s = state.session().unwrap();
        assert_eq!(s.standing(t(1000), idle), Standing::Stands);
        assert_eq!(s.clients, vec![client("web")]);
        let state = given(&[
            started(),
            Event::SessionEnded {
                reason: EndReason::PasswordChanged,
                at: t(2),
            },
        ])
        .state();
        assert_eq!(
            state.session().unwrap().standing(t(3), idle),
            Standing::Ended(EndReason::PasswordChanged)
        );
    }

    #[test]
    fn events_round_trip() {
        testing::assert_round_trips(
            &[
                started(),
                Event::SessionUsed {
                    client_id: Some(client("web")),
                    at: t(1),
                },
                Event::SessionUsed {
                    client_id: None,
                    at: t(61),
                },
                Event::SessionEnded {
                    reason: EndReason::Expired,
                    at: t(90),
                },
            ],
            Event::EVENT_TYPES,
        );
    }

    #[test]
    fn end_reasons_round_trip() {
        for r in [
            EndReason::Logout,
            EndReason::Expired,
            EndReason::PasswordChanged,
            EndReason::SignedOutEverywhere,
            EndReason::Admin,
            EndReason::UserDisabled,
        ] {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(EndReason::parse("other"), None);
    }
}
