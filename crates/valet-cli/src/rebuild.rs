//! `valet projections rebuild [--verify]`: replays the log into the read models, with
//! progress on stderr.

use std::io::IsTerminal;

use anyhow::{bail, Context};
use valet_projector::{RebuildMode, RebuildReport};

use crate::audit::store;

pub async fn rebuild(database_url: &str, verify: bool, batch: usize) -> anyhow::Result<()> {
    let store = store(database_url).await?;
    let tty = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let mut progress = move |done: u64, total: u64| {
        if tty {
            let width = 40usize;
            let filled = if total == 0 {
                width
            } else {
                (done as usize * width / total as usize).min(width)
            };
            eprint!(
                "\r[{}{}] {done}/{total} events",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            if done >= total {
                eprintln!();
            }
        } else if done >= total || last_line.elapsed().as_secs() >= 2 {
            eprintln!("rebuild: {done}/{total} events");
            last_line = std::time::Instant::now();
        }
    };
    let mode = if verify {
        RebuildMode::Verify
    } else {
        RebuildMode::Replace
    };
    let report: RebuildReport = valet_projector::rebuild(&store, mode, batch, &mut progress)
        .await
        .context("rebuild")?;
    let rate = (report.events - report.resumed_from) as f64 / report.seconds.max(1e-9);
    println!(
        "rebuilt read models from {} events in {:.2} s ({rate:.0} events/s){}",
        report.events,
        report.seconds,
        if report.resumed_from > 0 {
            format!(
                ", resuming after {} events of an interrupted run",
                report.resumed_from
            )
        } else {
            String::new()
        }
    );
    if !verify {
        println!("live read models replaced");
        return Ok(());
    }
    if report.differences.is_empty() {
        println!("verify: the live read models equal the rebuild");
        return Ok(());
    }
    for diff in &report.differences {
        println!(
            "verify: {} differs: {} row(s) only live, {} row(s) only rebuilt",
            diff.table, diff.only_live, diff.only_rebuilt
        );
        for sample in &diff.samples {
            println!("  {sample}");
        }
    }
    bail!("the live read models differ from a rebuild of the log");
}
