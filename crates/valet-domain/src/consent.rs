//! The consent aggregate (stream `consent-<user>-<client>`): which scopes a
//! user has approved for a client, so the consent page is shown only for more.

use serde::{Deserialize, Serialize};

use crate::event::domain_event;
use crate::ids::{ClientId, UserId};
use crate::scope::ScopeSet;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `user_id` and `client_id` name the stream; the events need not repeat them.
    Give {
        user_id: UserId,
        client_id: ClientId,
        scope: ScopeSet,
        at: Timestamp,
    },
    Revoke {
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    /// Records what was approved this time; the state keeps the union.
    ConsentGiven {
        scope: ScopeSet,
        at: Timestamp,
    },
    ConsentRevoked {
        at: Timestamp,
    },
}
domain_event!(Event {
    ConsentGiven,
    ConsentRevoked
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("consent needs at least one scope")]
    EmptyScope,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    scope: ScopeSet,
}

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        crate::event::fold(events, evolve)
    }

    /// The union of all scopes given since the last revocation.
    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }

    pub fn is_given(&self) -> bool {
        !self.scope.is_empty()
    }

    /// Nothing (not even the empty request) is covered without a live consent.
    pub fn covers(&self, requested: &ScopeSet) -> bool {
        self.is_given() && requested.is_subset(&self.scope)
    }
}

pub fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Error> {
    match cmd {
        Command::Give { scope, at, .. } => {
            if scope.is_empty() {
                Err(Error::EmptyScope)
            } else if state.covers(&scope) {
                Ok(vec![])
            } else {
                Ok(vec![Event::ConsentGiven { scope, at }])
            }
        }
        Command::Revoke { at } if state.is_given() => Ok(vec![Event::ConsentRevoked { at }]),
        Command::Revoke { .. } => Ok(vec![]),
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match event {
        Event::ConsentGiven { scope, .. } => State {
            scope: state.scope.union(scope),
        },
        Event::ConsentRevoked { .. } => State::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::scopes;
    use crate::testing;
    use uuid::Uuid;

    crate::testing::test_aggregate!(ConsentAggregate);

    fn given(events: &[Event]) -> testing::Given<ConsentAggregate> {
        testing::given(events)
    }

    const T0: Timestamp = Timestamp::from_unix_millis(1);
    const T1: Timestamp = Timestamp::from_unix_millis(2);

    fn give(scope: &str) -> Command {
        Command::Give {
            user_id: UserId::new(Uuid::from_u128(1)),
            client_id: ClientId::parse("web").unwrap(),
            scope: scopes(scope),
            at: T1,
        }
    }

    fn given_scope(scope: &str) -> Event {
        Event::ConsentGiven {
            scope: scopes(scope),
            at: T0,
        }
    }

    #[test]
    fn first_consent_is_recorded() {
        given(&[])
            .when(give("read"))
            .then_events(&[Event::ConsentGiven {
                scope: scopes("read"),
                at: T1,
            }]);
    }

    #[test]
    fn covered_consent_records_nothing() {
        given(&[given_scope("read write")])
            .when(give("read"))
            .then_nothing();
        given(&[given_scope("read"), given_scope("write")])
            .when(give("write read"))
            .then_nothing();
    }

    #[test]
    fn wider_consent_records_the_request() {
        given(&[given_scope("read")])
            .when(give("read admin"))
            .then_events(&[Event::ConsentGiven {
                scope: scopes("admin read"),
                at: T1,
            }]);
    }

    #[test]
    fn empty_scope_is_refused() {
        let cmd = Command::Give {
            user_id: UserId::new(Uuid::from_u128(1)),
            client_id: ClientId::parse("web").unwrap(),
            scope: ScopeSet::default(),
            at: T1,
        };
        given(&[]).when(cmd).then_error(Error::EmptyScope);
    }

    #[test]
    fn state_is_the_union_until_revoked() {
        let state = State::from_events(&[given_scope("read"), given_scope("write")]);
        assert_eq!(state.scope(), &scopes("read write"));
        let table = [
            ("read", true),
            ("write", true),
            ("read write", true),
            ("admin", false),
            ("read admin", false),
        ];
        for (requested, covered) in table {
            assert_eq!(state.covers(&scopes(requested)), covered, "{requested}");
        }
        let revoked = State::from_events(&[
            given_scope("read"),
            given_scope("write"),
            Event::ConsentRevoked { at: T1 },
        ]);
        for (requested, _) in table {
            assert!(!revoked.covers(&scopes(requested)), "{requested}");
        }
        assert!(!revoked.covers(&ScopeSet::default()));
        assert!(!State::default().covers(&scopes("read")));
    }

    #[test]
    fn revoke_only_when_given() {
        given(&[]).when(Command::Revoke { at: T1 }).then_nothing();
        given(&[given_scope("read")])
            .when(Command::Revoke { at: T1 })
            .then_events(&[Event::ConsentRevoked { at: T1 }]);
        given(&[given_scope("read"), Event::ConsentRevoked { at: T1 }])
            .when(Command::Revoke { at: T1 })
            .then_nothing();
        // After a revocation the same scope must be asked for again.
        given(&[given_scope("read"), Event::ConsentRevoked { at: T1 }])
            .when(give("read"))
            .then_events(&[Event::ConsentGiven {
                scope: scopes("read"),
                at: T1,
            }]);
    }

    #[test]
    fn events_round_trip() {
        testing::assert_round_trips(
            &[given_scope("read write"), Event::ConsentRevoked { at: T1 }],
            Event::EVENT_TYPES,
        );
    }
}
