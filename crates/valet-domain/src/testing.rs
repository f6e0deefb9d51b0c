//! Given/when/then over events, shared by the aggregate tests.

use std::fmt::Debug;

use crate::event::{DomainEvent, Rejection};

pub(crate) trait Aggregate {
    type State: Default;
    type Command;
    type Event: DomainEvent + Clone + Debug + PartialEq;
    type Error: Debug + PartialEq;
    fn decide(state: &Self::State, cmd: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}

/// The [`Aggregate`] of the calling module's `State`, `Command`, `Event`, `decide` and
/// `evolve`, named `$name`; `$error` when `decide` refuses with another type than `Error`.
macro_rules! test_aggregate {
    ($name:ident) => {
        crate::testing::test_aggregate!($name, Error);
    };
    ($name:ident, $error:ty) => {
        struct $name;
        impl crate::testing::Aggregate for $name {
            type State = State;
            type Command = Command;
            type Event = Event;
            type Error = $error;
            fn decide(state: &State, cmd: Command) -> Result<Vec<Event>, $error> {
                decide(state, cmd)
            }
            fn evolve(state: State, event: &Event) -> State {
                evolve(state, event)
            }
        }
    };
}
pub(crate) use test_aggregate;

pub(crate) struct Given<A: Aggregate>(A::State);

pub(crate) fn given<A: Aggregate>(events: &[A::Event]) -> Given<A> {
    Given(crate::event::fold(events, A::evolve))
}

impl<A: Aggregate> Given<A> {
    pub(crate) fn when(self, cmd: A::Command) -> Then<A> {
        Then(A::decide(&self.0, cmd))
    }

    pub(crate) fn state(self) -> A::State {
        self.0
    }
}

pub(crate) struct Then<A: Aggregate>(Result<Vec<A::Event>, A::Error>);

impl<A: Aggregate> Then<A> {
    #[track_caller]
    pub(crate) fn then_events(self, expected: &[A::Event]) {
        assert_eq!(self.0, Ok(expected.to_vec()));
    }

    #[track_caller]
    pub(crate) fn then_nothing(self) {
        self.then_events(&[]);
    }

    #[track_caller]
    pub(crate) fn then_error(self, expected: A::Error) {
        assert_eq!(self.0, Err(expected));
    }
}

impl<A, Ev: Clone, E> Then<A>
where
    A: Aggregate<Error = Rejection<Ev, E>>,
{
    /// A refusal that must still record `events` (empty for a plain refusal).
    #[track_caller]
    pub(crate) fn then_rejected(self, error: E, events: &[Ev]) {
        self.then_error(Rejection {
            error,
            events: events.to_vec(),
        });
    }
}

/// Every variant survives encode → decode, and `samples` covers every event type.
#[track_caller]
pub(crate) fn assert_round_trips<E: DomainEvent + Debug + PartialEq>(
    samples: &[E],
    all_types: &[&str],
) {
    let mut seen: Vec<&str> = samples.iter().map(DomainEvent::event_type).collect();
    seen.sort_unstable();
    seen.dedup();
    let mut all = all_types.to_vec();
    all.sort_unstable();
    assert_eq!(seen, all, "samples must cover every event type");
    for event in samples {
        assert_eq!(
            event.schema_version(),
            crate::event::current_version(event.event_type())
        );
        let payload = event.to_payload();
        assert!(payload.is_object(), "{payload}");
        // The text the store writes is the same payload.
        let written: serde_json::Value = serde_json::from_str(&event.payload_json()).unwrap();
        assert_eq!(written, payload);
        let text = payload.to_string();
        let back = E::from_payload(event.event_type(), event.schema_version(), payload).unwrap();
        assert_eq!(&back, event);
        // The replay path parses the JSON text straight into the event.
        let back = E::from_payload_json(event.event_type(), event.schema_version(), &text).unwrap();
        assert_eq!(&back, event);
    }
}
