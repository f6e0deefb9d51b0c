//! The user aggregate (stream `user-<uuid>`). Password hashes are kept out
//! of the log on purpose: the app stores argon2 hashes in a credentials table,
//! so a credential change never has to rewrite or leak history.

use serde::{Deserialize, Serialize};

use crate::event::domain_event;
use crate::ids::{UserId, Username};
use crate::time::Timestamp;

/// A person's name as shown to apps (the `name` claim): 1 to 200 characters, no control
/// characters, surrounding whitespace trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonName(String);

/// An email address (the `email` claim): one `@` with text on both sides, no whitespace
/// or control characters, at most 254 characters (RFC 5321 §4.5.3.1.3). Valet does not
/// deliver mail; whether an address is verified is the operator's statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("a name is 1 to 200 characters without control characters")]
    Name,
    #[error("an email address is local@domain, at most 254 characters, without spaces")]
    Email,
}

impl PersonName {
    pub fn parse(s: &str) -> Result<Self, ProfileError> {
        let s = s.trim();
        if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
            return Err(ProfileError::Name);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Email {
    pub fn parse(s: &str) -> Result<Self, ProfileError> {
        let ok = s.len() <= 254
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && !domain.is_empty() && !domain.contains('@')
            });
        if !ok {
            return Err(ProfileError::Email);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! profile_string {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = ProfileError;
            fn try_from(s: String) -> Result<Self, ProfileError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}
profile_string!(PersonName);
profile_string!(Email);

/// Whether the operator vouches for the email address (`email_verified`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailStatus {
    #[default]
    Unverified,
    Verified,
}

/// The claims a user's profile gives apps, beyond `sub` and `preferred_username`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Profile {
    pub name: Option<PersonName>,
    pub email: Option<Email>,
    pub email_status: EmailStatus,
}

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
    /// Let a disabled user sign in again (their ended sessions and revoked grants stay so).
    Enable {
        at: Timestamp,
    },
    /// Replace the profile; nothing is recorded when it is unchanged.
    SetProfile {
        profile: Profile,
        at: Timestamp,
    },
    /// End every sign-in session begun until now (sign out everywhere).
    SignOutEverywhere {
        at: Timestamp,
    },
    /// Record a new password (its hash is kept outside the log): every sign-in session
    /// begun until now ends.
    ChangePassword {
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
    UserProfileChanged {
        profile: Profile,
        at: Timestamp,
    },
    /// Every sign-in session begun at or before `at` is over.
    UserSignedOutEverywhere {
        at: Timestamp,
    },
    /// The password changed (never the password or its hash); sessions begun at or
    /// before `at` are over.
    UserPasswordChanged {
        at: Timestamp,
    },
    UserEnabled {
        at: Timestamp,
    },
}
domain_event!(Event {
    UserRegistered,
    UserDisabled,
    UserProfileChanged,
    UserSignedOutEverywhere,
    UserPasswordChanged,
    UserEnabled
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
    pub profile: Profile,
    /// Sessions begun at or before this are over (the last sign-out everywhere).
    pub signed_out_at: Option<Timestamp>,
}

impl User {
    /// Whether a sign-in session begun at `signed_in_at` may still act for the user.
    pub fn session_stands(&self, signed_in_at: Timestamp) -> bool {
        self.disabled_at.is_none() && self.signed_out_at.is_none_or(|out| signed_in_at > out)
    }
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
        Command::Enable { at } => match state.user() {
            None => Err(Error::NotFound),
            Some(u) if u.disabled_at.is_none() => Ok(vec![]),
            Some(_) => Ok(vec![Event::UserEnabled { at }]),
        },
        Command::SetProfile { profile, at } => match state.user() {
            None => Err(Error::NotFound),
            Some(u) if u.profile == profile => Ok(vec![]),
            Some(_) => Ok(vec![Event::UserProfileChanged { profile, at }]),
        },
        Command::SignOutEverywhere { at } => match state.user() {
            None => Err(Error::NotFound),
            Some(_) => Ok(vec![Event::UserSignedOutEverywhere { at }]),
        },
        Command::ChangePassword { at } => match state.user() {
            None => Err(Error::NotFound),
            Some(_) => Ok(vec![Event::UserPasswordChanged { at }]),
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
            profile: Profile::default(),
            signed_out_at: None,
        })),
        (Some(mut user), Event::UserDisabled { at }) => {
            user.disabled_at.get_or_insert(*at);
            State(Some(user))
        }
        (Some(mut user), Event::UserEnabled { at }) => {
            // No session from before comes back with the user.
            user.disabled_at = None;
            user.signed_out_at = Some(user.signed_out_at.map_or(*at, |out| out.max(*at)));
            State(Some(user))
        }
        (Some(mut user), Event::UserProfileChanged { profile, .. }) => {
            user.profile = profile.clone();
            State(Some(user))
        }
        (
            Some(mut user),
            Event::UserSignedOutEverywhere { at } | Event::UserPasswordChanged { at },
        ) => {
            user.signed_out_at = Some(user.signed_out_at.map_or(*at, |out| out.max(*at)));
            State(Some(user))
        }
        // decide never produces other sequences; replay stays total regardless.
        (other, _) => State(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use uuid::Uuid;

    crate::testing::test_aggregate!(UserAggregate);

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
    fn a_disabled_user_is_enabled_again_without_their_old_sessions() {
        let disabled = [registered(), Event::UserDisabled { at: T1 }];
        given(&disabled)
            .when(Command::Enable { at: T1 })
            .then_events(&[Event::UserEnabled { at: T1 }]);
        given(&[registered()])
            .when(Command::Enable { at: T1 })
            .then_nothing();
        let enabled = given(&[
            registered(),
            Event::UserDisabled { at: T1 },
            Event::UserEnabled { at: T1 },
        ])
        .state();
        assert!(enabled.is_active());
        // Active again, but no session begun before the enable stands.
        let user = enabled.user().unwrap();
        assert!(!user.session_stands(T1));
        assert!(user.session_stands(Timestamp::from_unix_millis(21)));
    }

    fn profile() -> Profile {
        Profile {
            name: Some(PersonName::parse("Alice Liddell").unwrap()),
            email: Some(Email::parse("alice@example.com").unwrap()),
            email_status: EmailStatus::Verified,
        }
    }

    #[test]
    fn a_profile_change_is_recorded_once_and_replaces_the_profile() {
        let set = Command::SetProfile {
            profile: profile(),
            at: T1,
        };
        given(&[]).when(set.clone()).then_error(Error::NotFound);
        let changed = Event::UserProfileChanged {
            profile: profile(),
            at: T1,
        };
        given(&[registered()])
            .when(set.clone())
            .then_events(std::slice::from_ref(&changed));
        given(&[registered(), changed.clone()])
            .when(set)
            .then_nothing();
        let state = State::from_events(&[registered(), changed]);
        assert_eq!(state.user().unwrap().profile, profile());
    }

    #[test]
    fn names_and_emails_are_checked() {
        assert_eq!(PersonName::parse("  Alice  ").unwrap().as_str(), "Alice");
        assert!(PersonName::parse("").is_err());
        assert!(PersonName::parse("a\nb").is_err());
        assert!(Email::parse("alice@example.com").is_ok());
        for bad in [
            "alice",
            "@example.com",
            "alice@",
            "a b@example.com",
            "a@b@c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
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
    fn signing_out_everywhere_ends_the_sessions_begun_until_then() {
        given(&[])
            .when(Command::SignOutEverywhere { at: T1 })
            .then_error(Error::NotFound);
        given(&[registered()])
            .when(Command::SignOutEverywhere { at: T1 })
            .then_events(&[Event::UserSignedOutEverywhere { at: T1 }]);
        let state = State::from_events(&[registered(), Event::UserSignedOutEverywhere { at: T1 }]);
        let user = state.user().expect("registered");
        assert!(!user.session_stands(T0), "begun before");
        assert!(!user.session_stands(T1), "begun at the same moment");
        assert!(
            user.session_stands(Timestamp::from_unix_millis(21)),
            "begun after"
        );
        let fresh = State::from_events(&[registered()]);
        assert!(fresh.user().expect("registered").session_stands(T0));
        let disabled = State::from_events(&[registered(), Event::UserDisabled { at: T1 }]);
        assert!(!disabled.user().expect("registered").session_stands(T1));
        // A new password ends them too.
        given(&[registered()])
            .when(Command::ChangePassword { at: T1 })
            .then_events(&[Event::UserPasswordChanged { at: T1 }]);
        let changed = State::from_events(&[registered(), Event::UserPasswordChanged { at: T1 }]);
        assert!(!changed.user().expect("registered").session_stands(T0));
    }

    #[test]
    fn events_round_trip_without_secrets() {
        use crate::event::DomainEvent;
        testing::assert_round_trips(
            &[
                registered(),
                Event::UserDisabled { at: T1 },
                Event::UserProfileChanged {
                    profile: profile(),
                    at: T1,
                },
                Event::UserSignedOutEverywhere { at: T1 },
                Event::UserPasswordChanged { at: T1 },
                Event::UserEnabled { at: T1 },
            ],
            Event::EVENT_TYPES,
        );
        let payload = registered().to_payload();
        let keys: Vec<&String> = payload.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["at", "user_id", "username"]);
    }
}
