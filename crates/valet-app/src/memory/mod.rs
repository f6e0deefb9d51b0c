//! The ports in memory: an event store with the PostgreSQL store's contract and the
//! read models rendered from the same fold, so the use cases run in unit tests without
//! a database; and fakes of the clock, ids and randomness whose values a test knows.

mod attempts;
mod fakes;
mod read_models;
mod store;

pub use attempts::MemoryAttempts;
pub use fakes::{CountingRandom, FixedClock, SequentialIds};
pub use read_models::MemoryReadModels;
pub use store::MemoryEventStore;
