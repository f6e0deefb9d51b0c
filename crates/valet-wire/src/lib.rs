//! See ARCHITECTURE.md: filled by a later issue.
