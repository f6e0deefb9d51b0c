//! Answers from the log for incident responders and auditors: the timeline of events
//! (`timeline`), the lineage of one token (`lineage`), and who held which grants at a
//! moment in the past (`at`, a replay that renders the fold into live grants).
//!
//! Everything here reads; nothing writes. The log is streamed in pages (memory stays
//! bounded by the answer, not by the log).

mod at;
mod lineage;
mod timeline;

pub use at::{active_at, ActiveGrants, GrantAt, COMMIT_SLACK_MICROS};
pub use lineage::{lineage, Lineage, Revocation, TokenKind};
pub use timeline::{log, LogFilter, Timeline};
