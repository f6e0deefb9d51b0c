//! `valet audit …` and `valet projections rebuild`: answers from the log.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use valet_projector::audit::{self, LogEntry, LogFilter};
use valet_projector::{RebuildMode, RebuildReport};
use valet_store::{PgEventStore, PgStoreConfig};

use crate::timefmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object per event.
    Jsonl,
}

async fn store(database_url: &str) -> anyhow::Result<PgEventStore> {
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

fn jsonl(entry: &LogEntry) -> Value {
    json!({
        "position": entry.position,
        "time": timefmt::format_micros(entry.recorded_at_micros),
        "event_id": entry.event_id,
        "stream": entry.stream_id,
        "type": entry.event_type,
        "schema_version": entry.schema_version,
        "actor": entry.actor,
        "payload": entry.payload,
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
    let mut sink = |entry: &LogEntry| -> std::io::Result<()> {
        match format {
            Format::Jsonl => writeln!(out, "{}", jsonl(entry)),
            Format::Table => writeln!(
                out,
                "{:>9}  {:<24}  {:<44}  {:<20}  {:<22}  {}",
                entry.position,
                timefmt::format_micros(entry.recorded_at_micros),
                entry.stream_id,
                entry.event_type,
                entry.actor.as_deref().unwrap_or("-"),
                summary(&entry.payload)
            ),
        }
    };
    audit::log(store.pool(), &filter, 1000, &mut sink).await?;
    out.flush()?;
    Ok(())
}

fn describe(entry: &LogEntry) -> String {
    let p = &entry.payload;
    let reason = p.get("reason").and_then(Value::as_str).unwrap_or("");
    let short = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(|h| format!("sha256:{}…", &h[..h.len().min(12)]))
            .unwrap_or_default()
    };
    match entry.event_type.as_str() {
        "ClientRegistered" => format!(
            "client {} \"{}\" registered, scopes \"{}\"",
            p["client_id"].as_str().unwrap_or("?"),
            p["name"].as_str().unwrap_or("?"),
            p["scopes"].as_str().unwrap_or("")
        ),
        "ConsentGiven" => format!(
            "consent given for \"{}\"",
            p["scope"].as_str().unwrap_or("")
        ),
        "ConsentRevoked" => "consent revoked".to_owned(),
        "CodeIssued" => format!(
            "code {} issued to user {} for \"{}\"",
            short(p.get("code_hash")),
            p["username"].as_str().unwrap_or("?"),
            p["scope"].as_str().unwrap_or("")
        ),
        "CodeRedeemed" => "code redeemed".to_owned(),
        "CodeReplayed" => "code presented again (replay): its grant is revoked".to_owned(),
        "GrantIssued" => format!(
            "grant issued, scope \"{}\"; access {}{}",
            p["scope"].as_str().unwrap_or(""),
            short(p.pointer("/access/hash")),
            p.pointer("/refresh/hash")
                .map(|h| format!(", refresh {}", short(Some(h))))
                .unwrap_or_default()
        ),
        "TokensRefreshed" => format!(
            "refresh {} rotated → access {}, refresh {}",
            short(p.get("previous_refresh")),
            short(p.pointer("/access/hash")),
            short(p.pointer("/refresh/hash"))
        ),
        "RefreshTokenReused" => format!(
            "rotated refresh token {} presented again (reuse)",
            short(p.get("presented"))
        ),
        "AccessTokenRevoked" => format!("access {} revoked: {reason}", short(p.get("hash"))),
        "GrantRevoked" => format!("grant revoked: {reason}"),
        other => other.to_owned(),
    }
}

pub async fn token(database_url: &str, token: &str) -> anyhow::Result<()> {
    let store = store(database_url).await?;
    let Some(lineage) = audit::lineage(store.pool(), token).await? else {
        bail!("no token with that value or SHA-256 was ever issued");
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "token   sha256:{} ({})",
        lineage.token_sha256, lineage.token_type
    )?;
    writeln!(out, "grant   {}", lineage.grant_id)?;
    let line = |out: &mut std::io::StdoutLock, label: &str, e: &LogEntry| {
        writeln!(
            out,
            "  {:<8} {}  #{:<8} {:<20} by {:<26} {}",
            label,
            timefmt::format_micros(e.recorded_at_micros),
            e.position,
            e.event_type,
            e.actor.as_deref().unwrap_or("-"),
            describe(e)
        )
    };
    for (label, entries) in [
        ("client", &lineage.client),
        ("consent", &lineage.consent),
        ("code", &lineage.code),
        ("grant", &lineage.grant),
    ] {
        for entry in entries {
            line(&mut out, label, entry)?;
        }
    }
    // The verdict: when, why and by whom it stopped, and which event caused it.
    let mine = |e: &&LogEntry| match e.event_type.as_str() {
        "GrantRevoked" => true,
        "AccessTokenRevoked" => e.payload["hash"].as_str() == Some(lineage.token_sha256.as_str()),
        _ => false,
    };
    match lineage.grant.iter().find(mine) {
        None => writeln!(out, "status  not revoked (see `valet audit at` for expiry)")?,
        Some(revocation) => {
            let reason = revocation.payload["reason"].as_str().unwrap_or("?");
            writeln!(
                out,
                "status  revoked at {} by {}: {reason} (event {} at #{})",
                timefmt::format_micros(revocation.recorded_at_micros),
                revocation.actor.as_deref().unwrap_or("-"),
                revocation.event_id,
                revocation.position
            )?;
            let cause = revocation
                .payload
                .get("cause")
                .filter(|c| !c.is_null())
                .map(|c| {
                    format!(
                        "event {} in stream {}",
                        c["event_id"].as_str().unwrap_or("?"),
                        c["stream_id"].as_str().unwrap_or("?")
                    )
                })
                .or_else(|| {
                    // A reuse is recorded just before the revocation it causes.
                    lineage
                        .grant
                        .iter()
                        .rev()
                        .skip_while(|e| e.event_id != revocation.event_id)
                        .nth(1)
                        .filter(|e| e.event_type == "RefreshTokenReused")
                        .map(|e| {
                            format!(
                                "event {} (RefreshTokenReused at #{})",
                                e.event_id, e.position
                            )
                        })
                });
            if let Some(cause) = cause {
                writeln!(out, "cause   {cause}")?;
            }
        }
    }
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
