//! `valet audit log` and `valet audit at`: the timeline, and who held which grants at a
//! moment. (`valet audit token` is in `lineage`.)

use std::io::Write;

use anyhow::Context;
use serde_json::{json, Value};
use valet_app::RecordedEvent;
use valet_projector::audit::{self, LogFilter};
use valet_store::{PgEventStore, PgStoreConfig};

use crate::timefmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object per event.
    Jsonl,
}

pub async fn store(database_url: &str) -> anyhow::Result<PgEventStore> {
    let mut config = PgStoreConfig::new(database_url);
    config.pool_size = 4;
    PgEventStore::connect(config)
        .await
        .context("connect to PostgreSQL (is it running, and did `valet migrate` run?)")
}

fn summary(payload: &Value) -> String {
    let mut text = payload.to_string();
    if text.len() > 120 {
        let cut = text.char_indices().nth(117).map_or(text.len(), |(i, _)| i);
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn jsonl(entry: &RecordedEvent) -> Value {
    json!({
        "position": entry.position,
        "time": timefmt::format_micros(entry.recorded_at_micros),
        "event_id": entry.event_id.to_string(),
        "stream": entry.stream.to_string(),
        "type": entry.event.event_type(),
        "schema_version": entry.event.schema_version(),
        "actor": entry.metadata.actor,
        "payload": entry.event.to_payload(),
        "metadata": entry.metadata,
    })
}

pub struct LogArgs {
    pub stream: Option<String>,
    pub client: Option<String>,
    pub user: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub format: Format,
}

pub async fn log(database_url: &str, args: LogArgs) -> anyhow::Result<()> {
    let parse = |t: &Option<String>, flag: &str| {
        t.as_deref()
            .map(timefmt::parse)
            .transpose()
            .map_err(anyhow::Error::msg)
            .with_context(|| flag.to_owned())
    };
    let filter = LogFilter {
        stream: args.stream,
        client_id: args.client,
        username: args.user,
        since_micros: parse(&args.since, "--since")?,
        until_micros: parse(&args.until, "--until")?,
    };
    let store = store(database_url).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.format == Format::Table {
        writeln!(
            out,
            "{:>9}  {:<24}  {:<44}  {:<20}  {:<22}  PAYLOAD",
            "POSITION", "TIME", "STREAM", "TYPE", "ACTOR"
        )?;
    }
    let format = args.format;
    let mut sink = |entry: &RecordedEvent| -> std::io::Result<()> {
        match format {
            Format::Jsonl => writeln!(out, "{}", jsonl(entry)),
            Format::Table => writeln!(
                out,
                "{:>9}  {:<24}  {:<44}  {:<20}  {:<22}  {}",
                entry.position,
                timefmt::format_micros(entry.recorded_at_micros),
                entry.stream.to_string(),
                entry.event.event_type(),
                entry.metadata.actor.as_deref().unwrap_or("-"),
                summary(&entry.event.to_payload())
            ),
        }
    };
    audit::log(store.pool(), &filter, 1000, &mut sink).await?;
    out.flush()?;
    Ok(())
}

pub async fn at(
    database_url: &str,
    time: &str,
    client: Option<String>,
    user: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let at = timefmt::parse(time).map_err(anyhow::Error::msg)?;
    let store = store(database_url).await?;
    let started = std::time::Instant::now();
    let mut grants = audit::active_at(&store, at, 5000).await?;
    let read = grants.read;
    grants.retain(|client_id, username| {
        client.as_deref().is_none_or(|c| client_id == c)
            && user.as_deref().is_none_or(|u| username == Some(u))
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        Format::Jsonl => {
            // Written through structs, not `json!` values: hundreds of thousands of
            // lines. Fields in alphabetical order, as a JSON object map writes them.
            #[derive(serde::Serialize)]
            struct TokenLine<'a> {
                expires_at: String,
                scope: &'a str,
                token_sha256: &'a str,
            }
            #[derive(serde::Serialize)]
            struct GrantLine<'a> {
                access_tokens: Vec<TokenLine<'a>>,
                client_id: &'a str,
                grant_id: &'a str,
                issued_at: String,
                refreshable: bool,
                scope: &'a str,
                sub: Option<&'a str>,
                username: Option<&'a str>,
            }
            for g in grants.iter() {
                let line = GrantLine {
                    access_tokens: g
                        .access_tokens
                        .iter()
                        .map(|(hash, scope, expires)| TokenLine {
                            expires_at: timefmt::format_millis(*expires),
                            scope,
                            token_sha256: hash,
                        })
                        .collect(),
                    client_id: &g.client_id,
                    grant_id: &g.grant_id,
                    issued_at: timefmt::format_millis(g.issued_at_millis),
                    refreshable: g.refreshable,
                    scope: &g.scope,
                    sub: g.user_id.as_deref(),
                    username: g.username.as_deref(),
                };
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "active at {}: {} grant(s)",
                timefmt::format_micros(at),
                grants.len()
            )?;
            writeln!(
                out,
                "{:<36}  {:<32}  {:<16}  {:<24}  {:<7}  ACCESS TOKENS (sha256 prefix, expiry)",
                "GRANT", "CLIENT", "USER", "SCOPE", "REFRESH"
            )?;
            for g in grants.iter() {
                let tokens: Vec<String> = g
                    .access_tokens
                    .iter()
                    .map(|(hash, _, expires)| {
                        format!(
                            "{}… until {}",
                            &hash[..12],
                            timefmt::format_millis(*expires)
                        )
                    })
                    .collect();
                writeln!(
                    out,
                    "{:<36}  {:<32}  {:<16}  {:<24}  {:<7}  {}",
                    g.grant_id,
                    g.client_id,
                    g.username.as_deref().unwrap_or("-"),
                    g.scope,
                    if g.refreshable { "yes" } else { "no" },
                    tokens.join(", ")
                )?;
            }
        }
    }
    out.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "replayed {read} events in {seconds:.2} s ({:.0} events/s)",
        read as f64 / seconds.max(1e-9)
    );
    Ok(())
}
