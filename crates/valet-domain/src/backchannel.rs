//! Back-channel logout deliveries (stream `logout-<delivery id>`): one logout token for
//! one client, its attempts and how it finished (OpenID Connect Back-Channel Logout 1.0).
//!
//! A delivery's id is derived from what caused it (the event that ended the session or
//! removed the app), the client and the session, so a dispatcher that reads the same
//! cause again finds the same stream and never delivers twice what was delivered.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::domain_event;
use crate::ids::{ClientId, UserId};
use crate::oidc::SessionId;
use crate::time::Timestamp;

/// Names a delivery's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(Uuid);

impl DeliveryId {
    pub const fn new(id: Uuid) -> Self {
        Self(id)
    }

    /// The delivery caused by event `cause` to `client` for `session` (if any).
    pub fn of(cause: Uuid, client: &ClientId, session: Option<SessionId>) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"valet-logout-delivery\0");
        digest.update(cause.as_bytes());
        digest.update(client.as_str().as_bytes());
        digest.update(b"\0");
        if let Some(session) = session {
            digest.update(session.to_string().as_bytes());
        }
        let bytes = digest.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[..16]);
        Self(uuid::Builder::from_custom_bytes(id).into_uuid())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// What one logout token says, and why it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub client_id: ClientId,
    /// The token's `sub`.
    pub user_id: UserId,
    /// The token's `sid`, when a session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// The event that caused it (a session's end, an app's removal).
    pub cause: Uuid,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The client answered 2xx.
    Delivered { status: u16 },
    /// The client answered something else.
    Refused { status: u16 },
    /// No answer: connection refused, timeout… (`error` says which, never a token).
    Unreachable { error: String },
}

impl Outcome {
    pub fn delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Record {
        delivery: Delivery,
        outcome: Outcome,
        at: Timestamp,
    },
    /// Stop trying (the retry window is over).
    Abandon { at: Timestamp },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    BackchannelLogoutAttempted {
        delivery: Delivery,
        attempt: u32,
        outcome: Outcome,
        at: Timestamp,
    },
    BackchannelLogoutAbandoned {
        attempts: u32,
        at: Timestamp,
    },
}
domain_event!(Event {
    BackchannelLogoutAttempted,
    BackchannelLogoutAbandoned
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the delivery is finished")]
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Delivered(Timestamp),
    Abandoned(Timestamp),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub attempts: u32,
    pub first_at: Option<Timestamp>,
    pub last_at: Option<Timestamp>,
    pub finished: Option<Finish>,
}

/// When to try again: `first` seconds after the first failure, doubling up to `cap`,
/// for at most `window` seconds after the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: u32,
    pub cap: u32,
    pub window: u32,
}

/// What a dispatcher does next with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Attempt it at (or after) this time.
    AttemptAt(Timestamp),
    GiveUp,
    Done,
}

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        crate::event::fold(events, evolve)
    }

    pub fn next(&self, policy: RetryPolicy, now: Timestamp) -> Next {
        if self.finished.is_some() {
            return Next::Done;
        }
        let (Some(first), Some(last)) = (self.first_at, self.last_at) else {
            return Next::AttemptAt(now);
        };
        let exponent = self.attempts.saturating_sub(1).min(30);
        let delay = policy
            .first
            .saturating_mul(1u32 << exponent.min(30))
            .min(policy.cap);
        let at = last.plus_seconds(delay);
        if at > first.plus_seconds(policy.window) {
            Next::GiveUp
        } else {
            Next::AttemptAt(at)
        }
    }
}

pub fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, Error> {
    if state.finished.is_some() {
        return Err(Error::Finished);
    }
    Ok(match cmd {
        Command::Record {
            delivery,
            outcome,
            at,
        } => vec![Event::BackchannelLogoutAttempted {
            delivery,
            attempt: state.attempts + 1,
            outcome,
            at,
        }],
        Command::Abandon { at } => vec![Event::BackchannelLogoutAbandoned {
            attempts: state.attempts,
            at,
        }],
    })
}

pub fn evolve(state: State, event: &Event) -> State {
    match event {
        Event::BackchannelLogoutAttempted {
            attempt,
            outcome,
            at,
            ..
        } => State {
            attempts: *attempt,
            first_at: state.first_at.or(Some(*at)),
            last_at: Some(*at),
            finished: match outcome {
                Outcome::Delivered { .. } => Some(Finish::Delivered(*at)),
                _ => state.finished,
            },
        },
        Event::BackchannelLogoutAbandoned { at, .. } => State {
            finished: state.finished.or(Some(Finish::Abandoned(*at))),
            ..state
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    crate::testing::test_aggregate!(DeliveryAggregate);

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_unix_millis(seconds * 1000)
    }

    fn delivery() -> Delivery {
        Delivery {
            client_id: ClientId::parse("web").unwrap(),
            user_id: UserId::new(Uuid::from_u128(1)),
            session_id: Some(SessionId::new(Uuid::from_u128(2))),
            cause: Uuid::from_u128(3),
        }
    }

    fn attempted(attempt: u32, outcome: Outcome, at: i64) -> Event {
        Event::BackchannelLogoutAttempted {
            delivery: delivery(),
            attempt,
            outcome,
            at: t(at),
        }
    }

    fn unreachable() -> Outcome {
        Outcome::Unreachable {
            error: "connection refused".into(),
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        first: 1,
        cap: 30,
        window: 3600,
    };

    #[test]
    fn attempts_are_numbered_until_one_is_delivered() {
        testing::given::<DeliveryAggregate>(&[attempted(1, unreachable(), 0)])
            .when(Command::Record {
                delivery: delivery(),
                outcome: Outcome::Delivered { status: 200 },
                at: t(1),
            })
            .then_events(&[attempted(2, Outcome::Delivered { status: 200 }, 1)]);
        testing::given::<DeliveryAggregate>(&[attempted(1, Outcome::Delivered { status: 204 }, 0)])
            .when(Command::Record {
                delivery: delivery(),
                outcome: Outcome::Delivered { status: 200 },
                at: t(1),
            })
            .then_error(Error::Finished);
    }

    #[test]
    fn retries_back_off_up_to_the_cap_and_give_up_after_the_window() {
        let mut events = vec![];
        let mut at = 0;
        let mut delays = vec![];
        for attempt in 1..=8 {
            events.push(attempted(attempt, Outcome::Refused { status: 500 }, at));
            match State::from_events(&events).next(POLICY, t(at)) {
                Next::AttemptAt(next) => {
                    delays.push((next.as_unix_millis() / 1000) - at);
                    at = next.as_unix_millis() / 1000;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        let late = State::from_events(&[
            attempted(1, unreachable(), 0),
            attempted(2, unreachable(), 3599),
        ]);
        assert_eq!(late.next(POLICY, t(3599)), Next::GiveUp);
        assert_eq!(State::default().next(POLICY, t(5)), Next::AttemptAt(t(5)));
        let abandoned = testing::given::<DeliveryAggregate>(&[attempted(1, unreachable(), 0)])
            .when(Command::Abandon { at: t(9) });
        abandoned.then_events(&[Event::BackchannelLogoutAbandoned {
            attempts: 1,
            at: t(9),
        }]);
    }

    #[test]
    fn events_round_trip() {
        testing::assert_round_trips(
            &[
                attempted(1, unreachable(), 0),
                attempted(2, Outcome::Refused { status: 500 }, 1),
                attempted(3, Outcome::Delivered { status: 200 }, 3),
                Event::BackchannelLogoutAbandoned {
                    attempts: 3,
                    at: t(4),
                },
            ],
            Event::EVENT_TYPES,
        );
    }

    #[test]
    fn the_same_cause_client_and_session_give_the_same_delivery() {
        let d = delivery();
        let id = DeliveryId::of(d.cause, &d.client_id, d.session_id);
        assert_eq!(id, DeliveryId::of(d.cause, &d.client_id, d.session_id));
        assert_ne!(id, DeliveryId::of(d.cause, &d.client_id, None));
        let other = ClientId::parse("app").unwrap();
        assert_ne!(id, DeliveryId::of(d.cause, &other, d.session_id));
        assert_ne!(
            id,
            DeliveryId::of(Uuid::from_u128(4), &d.client_id, d.session_id)
        );
    }
}
