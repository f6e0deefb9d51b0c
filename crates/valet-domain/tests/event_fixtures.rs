//! Every schema version of every event type ever written must keep decoding: logs are
//! immutable, so an event written years ago is read by today's code (upcast first when
//! its version is older, see `src/event.rs`).
//!
//! The lines live in `tests/fixtures/events.jsonl` (see `fixture_samples`). After
//! bumping an event type's version (or adding a type), update `samples()` in
//! `tests/fixture_samples/mod.rs` and run
//!     cargo run -p valet-domain --example append_fixtures
//! which appends samples for the (type, current version) pairs the file lacks, and
//! touches nothing else.

mod fixture_samples;

use std::collections::BTreeSet;

use fixture_samples::{decode, read_fixtures, samples, AGGREGATES};
use valet_domain::event::{current_version, DecodeError};

#[test]
fn every_fixture_decodes() {
    let fixtures = read_fixtures();
    for f in &fixtures {
        let result = decode(&f.aggregate, &f.event_type, f.version, f.payload.clone());
        let (encoded, version) = result.unwrap_or_else(|e| {
            panic!(
                "line {}: {} v{} of {} no longer decodes: {e}",
                f.line, f.event_type, f.version, f.aggregate
            )
        });
        assert_eq!(version, current_version(&f.event_type));
        if f.version == version {
            // A current-version line is exactly what today's code writes.
            assert_eq!(
                encoded, f.payload,
                "line {}: {} v{} does not re-encode to itself",
                f.line, f.event_type, f.version
            );
        }
    }

    // Every version of every current event type has at least one line.
    let present: BTreeSet<(&str, u32)> = fixtures
        .iter()
        .map(|f| (f.event_type.as_str(), f.version))
        .collect();
    let mut missing = Vec::new();
    for (aggregate, types) in AGGREGATES {
        for event_type in types {
            for version in 1..=current_version(event_type) {
                if !present.contains(&(event_type, version)) {
                    missing.push(format!("{aggregate} {event_type} v{version}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no fixture for {missing:?}: run `cargo run -p valet-domain --example append_fixtures`"
    );

    // Old lines may describe versions no longer current, but never from the future.
    for f in &fixtures {
        assert!(
            f.version >= 1 && f.version <= current_version(&f.event_type),
            "line {}: {} v{}",
            f.line,
            f.event_type,
            f.version
        );
    }
}

#[test]
fn a_fixture_from_the_future_is_refused() {
    for f in read_fixtures() {
        let future = current_version(&f.event_type) + 1;
        assert_eq!(
            decode(&f.aggregate, &f.event_type, future, f.payload.clone()),
            Err(DecodeError::UnknownSchemaVersion {
                event_type: f.event_type.clone(),
                version: future
            }),
            "line {}",
            f.line
        );
    }
}

#[test]
fn the_samples_cover_every_event_type() {
    let sampled: BTreeSet<&str> = samples().iter().map(|(_, t, _, _)| *t).collect();
    let all: BTreeSet<&str> = AGGREGATES
        .iter()
        .flat_map(|(_, t)| t.iter().copied())
        .collect();
    assert_eq!(
        sampled, all,
        "add a sample for each new event type to `samples()`"
    );
}
