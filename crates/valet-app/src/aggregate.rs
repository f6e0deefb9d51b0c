//! The one use case every command goes through: load the stream, let the pure domain
//! decide, append with the loaded version as expectation, and on a conflict start over.

use uuid::Uuid;
use valet_domain::{Event, Rejection, StreamId};

use crate::entropy::Ids;
use crate::log::NewEvent;
use crate::ports::{
    AppendError, EventMetadata, EventStore, ExpectedVersion, StoreError, StreamVersion,
};

/// What `decide` returns: the events, or a rejection that may still carry events.
pub type Decision<A> = Result<
    Vec<<A as Aggregate>::Event>,
    Rejection<<A as Aggregate>::Event, <A as Aggregate>::Error>,
>;

/// Uniform access to the domain's aggregates, so one `execute` serves them all.
pub trait Aggregate {
    type State: Default + Send;
    type Command: Clone + Send;
    type Event: Into<Event> + TryFrom<Event, Error = Event> + Clone + Send + Sync;
    type Error: Send;

    fn decide(state: &Self::State, command: Self::Command) -> Decision<Self>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}

macro_rules! aggregate {
    ($name:ident, $module:ident, plain) => {
        aggregate!(@impl $name, $module, |s, c| valet_domain::$module::decide(s, c).map_err(Rejection::from));
    };
    ($name:ident, $module:ident, rejecting) => {
        aggregate!(@impl $name, $module, valet_domain::$module::decide);
    };
    (@impl $name:ident, $module:ident, $decide:expr) => {
        #[doc = concat!("The `", stringify!($module), "` aggregate of valet-domain.")]
        pub struct $name;

        impl Aggregate for $name {
            type State = valet_domain::$module::State;
            type Command = valet_domain::$module::Command;
            type Event = valet_domain::$module::Event;
            type Error = valet_domain::$module::Error;

            fn decide(state: &Self::State, command: Self::Command) -> Decision<Self> {
                ($decide)(state, command)
            }

            fn evolve(state: Self::State, event: &Self::Event) -> Self::State {
                valet_domain::$module::evolve(state, event)
            }
        }
    };
}

aggregate!(Client, client, plain);
aggregate!(User, user, plain);
aggregate!(Consent, consent, plain);
aggregate!(Code, code, rejecting);
aggregate!(Grant, grant, rejecting);
aggregate!(SigningKeys, signing_key, plain);
aggregate!(Session, session, plain);
aggregate!(Delivery, backchannel, plain);

/// A stream replayed into its aggregate's state.
pub struct Loaded<A: Aggregate> {
    pub state: A::State,
    pub version: StreamVersion,
}

pub async fn load<A: Aggregate, S: EventStore>(
    store: &S,
    stream: &StreamId,
) -> Result<Loaded<A>, ExecuteError<A::Error>> {
    let recorded = store.read_stream(stream).await?;
    let version = recorded
        .last()
        .map_or(StreamVersion::EMPTY, |e| e.stream_version);
    let mut state = A::State::default();
    for recorded in recorded {
        let event =
            A::Event::try_from(recorded.event).map_err(|other| StoreError::ForeignEvent {
                stream: stream.clone(),
                event_type: other.event_type(),
            })?;
        state = A::evolve(state, &event);
    }
    Ok(Loaded { state, version })
}

/// What an accepted command changed.
pub struct Executed<A: Aggregate> {
    /// The events appended, with the ids they were recorded under.
    pub events: Vec<(Uuid, A::Event)>,
    /// The state after them.
    pub state: A::State,
    pub version: StreamVersion,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The domain refused; `recorded` holds the ids of events appended anyway (a replay
    /// or reuse that must stay on the record).
    #[error("command rejected")]
    Rejected { error: E, recorded: Vec<Uuid> },
    #[error("gave up after {0} conflicting attempts")]
    Contention(usize),
    /// The store failed, or holds an event this build cannot read (never guessed at).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Attempts before a command gives up under contention on one stream.
pub const MAX_ATTEMPTS: usize = 16;

/// Runs `command` against the stream: load, decide, append; retried on conflict. The
/// events' ids come from `ids`.
pub async fn execute<A: Aggregate, S: EventStore>(
    store: &S,
    ids: &dyn Ids,
    stream: &StreamId,
    command: A::Command,
    metadata: &EventMetadata,
) -> Result<Executed<A>, ExecuteError<A::Error>> {
    for _ in 0..MAX_ATTEMPTS {
        let Loaded { state, version } = load::<A, S>(store, stream).await?;
        let (events, error) = match A::decide(&state, command.clone()) {
            Ok(events) => (events, None),
            Err(Rejection { error, events }) => (events, Some(error)),
        };
        if events.is_empty() {
            return match error {
                Some(error) => Err(ExecuteError::Rejected {
                    error,
                    recorded: Vec::new(),
                }),
                None => Ok(Executed {
                    events: Vec::new(),
                    state,
                    version,
                }),
            };
        }
        let identified: Vec<(Uuid, A::Event)> =
            events.into_iter().map(|e| (ids.new_id(), e)).collect();
        let new_events = identified
            .iter()
            .map(|(id, e)| NewEvent::new(*id, e.clone(), metadata.clone()))
            .collect();
        match store
            .append(stream, ExpectedVersion::from_loaded(version), new_events)
            .await
        {
            Ok(outcome) => {
                return match error {
                    Some(error) => Err(ExecuteError::Rejected {
                        error,
                        recorded: identified.iter().map(|(id, _)| *id).collect(),
                    }),
                    None => {
                        let state = identified
                            .iter()
                            .fold(state, |state, (_, e)| A::evolve(state, e));
                        Ok(Executed {
                            events: identified,
                            state,
                            version: outcome.version,
                        })
                    }
                };
            }
            Err(AppendError::Conflict { .. }) => continue,
            Err(AppendError::DuplicateEventId(id)) => {
                return Err(ExecuteError::Store(StoreError::Malformed(format!(
                    "event id {id} drawn twice"
                ))))
            }
            Err(AppendError::Store(e)) => return Err(e.into()),
        }
    }
    Err(ExecuteError::Contention(MAX_ATTEMPTS))
}
