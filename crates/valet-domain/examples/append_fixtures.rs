//! Appends fixture lines for the (event type, current schema version) pairs that
//! `tests/fixtures/events.jsonl` lacks, from `samples()`; touches nothing else.
//!
//!     cargo run -p valet-domain --example append_fixtures [-- --check]
//!
//! With `--check` it only lists what it would append, and exits 1 if anything.

#[path = "../tests/fixture_samples/mod.rs"]
mod fixture_samples;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::ExitCode;

use fixture_samples::{fixtures_path, read_fixtures, samples};
use serde_json::json;

fn main() -> ExitCode {
    let check_only = std::env::args().skip(1).any(|a| a == "--check");
    let path = fixtures_path();
    let present: BTreeSet<(String, u32)> = if path.exists() {
        read_fixtures()
            .into_iter()
            .map(|f| (f.event_type, f.version))
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut out = String::new();
    let mut added = Vec::new();
    for (aggregate, event_type, version, payload) in samples() {
        if present.contains(&(event_type.to_owned(), version)) {
            continue;
        }
        let line = json!({
            "aggregate": aggregate,
            "event_type": event_type,
            "schema_version": version,
            "payload": payload,
        });
        out.push_str(&line.to_string());
        out.push('\n');
        added.push(format!("{event_type} v{version}"));
    }
    if added.is_empty() {
        println!(
            "{}: every event type and version has a line",
            path.display()
        );
        return ExitCode::SUCCESS;
    }
    if check_only {
        println!("missing in {}: {}", path.display(), added.join(", "));
        return ExitCode::FAILURE;
    }
    let appended = std::fs::create_dir_all(path.parent().expect("the fixtures live in a folder"))
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        })
        .and_then(|mut file| file.write_all(out.as_bytes()));
    match appended {
        Ok(()) => {
            println!("appended to {}: {}", path.display(), added.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot append to {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
