//! Valet's pure domain core: validated newtypes, the OAuth rules, and the
//! event-sourced aggregates (`decide` / `evolve`).
//!
//! Nothing here performs IO, reads a clock or draws randomness: the current
//! time and digests of random values are passed in by the caller, so every
//! rule is deterministic and testable in microseconds.
#![forbid(unsafe_code)]

pub mod backchannel;
pub mod change;
pub mod client;
pub mod code;
pub mod common;
pub mod consent;
pub mod event;
pub mod few;
pub mod grant;
pub mod ids;
pub mod log_event;
pub mod oidc;
pub mod pkce;
pub mod redirect;
pub mod scope;
pub mod secret;
pub mod session;
pub mod signing_key;
pub mod time;
pub mod user;

#[cfg(test)]
pub(crate) mod testing;

pub use change::{changes, Change};
pub use common::{EventRef, GrantType, RevocationReason, UnsupportedGrantType};
pub use event::{fold, DecodeError, DomainEvent, Rejection};
pub use few::Few;
pub use ids::{ClientId, ClientName, GrantId, IdError, StreamId, UserId, Username};
pub use log_event::Event;
pub use pkce::{PkceChallenge, PkceError, PkceMethod, PkceVerifier};
pub use redirect::{LoopbackPortRule, RedirectUri, RedirectUriError};
pub use scope::{Scope, ScopeParseError, ScopeSet};
pub use secret::{constant_time_eq, TokenHash, TokenHashError};
pub use time::{
    AccessTokenTtl, CodeTtl, InitialAccessTokenTtl, RefreshTokenTtl, Timestamp, TtlError,
};
