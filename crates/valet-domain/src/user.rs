//! The user aggregate (stream `user-<uuid>`). Password hashes are kept out
//! of the log on purpose: the app stores argon2 hashes in a credentials table,
//! so a credential change never has to rewrite or leak history.

use serde::{Deserialize, Serialize};

use crate::event::domain_event;
use crate::ids::{UserId, Username};
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Register {
        user_id: UserId,
        username: Username,
        at: Timestamp,
    },
    Disable {
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    UserRegistered {
        user_id: UserId,
        username: Username,
        at: Timestamp,
    },
    UserDisabled {
        at: Timestamp,
    },
}
domain_event!(Event {
    UserRegistered,
    UserDisabled
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("user is already registered")]
    AlreadyRegistered,
    #[error("user not found")]
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: UserId,
    pub username: Username,
    pub registered_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State(Option<User>);

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        crate::event::fold(events, evolve)
    }

    pub fn user(&self) -> Option<&User> {
        self.0.as_ref()
    }

    pub fn is_registered(&self) -> bool {
        self.0.is_some()
    }

    pub fn is_active(&self) -> bool {
        self.0.as_ref().is_some_and(|u| u.disabled_at.is_none())
    }
}

pub fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Error> {
    match cmd {
        Command::Register {
            user_id,
            username,
            at,
        } => match state.user() {
            Some(_) => Err(Error::AlreadyRegistered),
            None => Ok(vec![Event::UserRegistered {
                user_id,
                username,
                at,
            }]),
        },
        Command::Disable { at } => match state.user() {
            None => Err(Error::NotFound),
            Some(u) if u.disabled_at.is_some() => Ok(vec![]),
            Some(_) => Ok(vec![Event::UserDisabled { at }]),
        },
    }
}

pub fn evolve(state: State, event: &Event) -> State {
    match (state.0, event) {
        (
            None,
            Event::UserRegistered {
                user_id,
                username,
                at,
            },
        ) => State(Some(User {
            user_id: *user_id,
            username: username.clone(),
            registered_at: *at,
            disabled_at: None,
        })),
        (Some(mut user), Event::UserDisabled { at }) => {
            user.disabled_at.get_or_insert(*at);
            State(Some(user))
        }
        // decide never produces other sequences; replay stays total regardless.
        (other, _) => State(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Aggregate};
    use uuid::Uuid;

    struct UserAggregate;
    impl Aggregate for UserAggregate {
        type State = State;
        type Command = Command;
        type Event = Event;
        type Error = Error;
        fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Error> {
            decide(state, cmd)
        }
        fn evolve(state: State, event: &Event) -> State {
            evolve(state, event)
        }
    }

    fn given(events: &[Event]) -> testing::Given<UserAggregate> {
        testing::given(events)
    }

    const T0: Timestamp = Timestamp::from_unix_millis(10);
    const T1: Timestamp = Timestamp::from_unix_millis(20);

    fn registered() -> Event {
        Event::UserRegistered {
            user_id: UserId::new(Uuid::from_u128(1)),
            username: Username::parse("alice").unwrap(),
            at: T0,
        }
    }

    fn register() -> Command {
        Command::Register {
            user_id: UserId::new(Uuid::from_u128(1)),
            username: Username::parse("alice").unwrap(),
            at: T0,
        }
    }

    #[test]
    fn registers_once() {
        given(&[]).when(register()).then_events(&[registered()]);
        given(&[registered()])
            .when(register())
            .then_error(Error::AlreadyRegistered);
    }

    #[test]
    fn disable_is_idempotent() {
        given(&[])
            .when(Command::Disable { at: T1 })
            .then_error(Error::NotFound);
        given(&[registered()])
            .when(Command::Disable { at: T1 })
            .then_events(&[Event::UserDisabled { at: T1 }]);
        given(&[registered(), Event::UserDisabled { at: T1 }])
            .when(Command::Disable { at: T1 })
            .then_nothing();
    }

    #[test]
    fn state_queries() {
        assert!(!State::default().is_active());
        let active = given(&[registered()]).state();
        assert!(active.is_active());
        assert_eq!(active.user().unwrap().username.as_str(), "alice");
        let disabled = State::from_events(&[registered(), Event::UserDisabled { at: T1 }]);
        assert!(disabled.is_registered());
        assert!(!disabled.is_active());
    }

    #[test]
    fn events_round_trip_without_secrets() {
        use crate::event::DomainEvent;
        testing::assert_round_trips(
            &[registered(), Event::UserDisabled { at: T1 }],
            Event::EVENT_TYPES,
        );
        let payload = registered().to_payload();
        let keys: Vec<&String> = payload.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["at", "user_id", "username"]);
    }
}
