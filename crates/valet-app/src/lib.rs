//! Use cases and ports of Valet.
//!
//! The application layer loads a stream, lets the pure domain decide, and appends the
//! resulting events with optimistic concurrency. Everything that touches the world
//! (the event store, the clock, randomness) is a port defined here and implemented in
//! the shell (valet-store, valet-cli).

pub mod admin;
pub mod admin_api;
pub mod aggregate;
pub mod attempts;
pub mod backchannel;
pub mod clock;
pub mod entropy;
pub mod follow;
pub mod keys;
pub mod log;
pub mod memory;
pub mod oauth;
pub mod outbox;
pub mod ports;
pub mod read;
pub mod registration;
pub mod secrets;
pub mod sessions;

pub use aggregate::{execute, load, Aggregate, ExecuteError, Executed, Loaded};
pub use clock::{Clock, SystemClock};
pub use entropy::{Ids, OsRandom, Randomness, RandomnessError, UuidV7};
pub use follow::{Followed, LogFollower};
pub use log::{LogCursor, NewEvent, RecordedEvent, ReplayEvent, Scanned};
pub use ports::{
    AppendError, AppendOutcome, EventMetadata, EventStore, ExpectedVersion, Readiness, StoreError,
    StreamVersion, StreamWrite,
};
