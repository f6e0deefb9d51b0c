//! The markdown table and the JSON line of a run.

use std::io::Write as _;
use std::path::Path;

use crate::failover::Failover;
use crate::lag::Lag;
use crate::stats::{ms, thousands, verdict};
use crate::validation::{Local, Remote, REMOTE_IN_FLIGHT};
use crate::{Error, GOAL_LOCAL_PER_SEC, GOAL_P99_MS, GOAL_P99_NO_FAULTS_MS, GOAL_RATIO};

#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    out_dir: &Path,
    client_id: &str,
    samples: usize,
    background: usize,
    lag: &Lag,
    jwt: &Lag,
    local: &Local,
    remote: &Remote,
    failover: &Failover,
) -> Result<(), Error> {
    let measured = lag.dist.0.len();
    let p99_ms = ms(lag.dist.pct(0.99));
    let lag_ok = lag.timeouts == 0 && measured >= samples && p99_ms < GOAL_P99_MS;
    let quick = p99_ms < GOAL_P99_NO_FAULTS_MS;
    let local_ns = 1e9 / local.per_sec;
    let round_trip_ns = remote.latency.pct(0.50) as f64;
    let ratio = round_trip_ns / local_ns;
    let throughput_ratio = local.per_sec / remote.rps_concurrent;
    let poll_us = if lag.polls > 0 {
        lag.poll_ns as f64 / lag.polls as f64 / 1e3
    } else {
        0.0
    };
    let issue_rate = lag.background_issued as f64 / lag.seconds;

    let mut md = String::new();
    md.push_str("## Revocation propagation and SDK validation (`cargo bench -p valet-resource --bench propagation`)\n\n");
    md.push_str("| measurement | result | goal | |\n|---|---|---|---|\n");
    md.push_str(&format!(
        "| revocation propagation, /revoke 200 → SDK rejects ({measured} revocations, {} timed out) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | p99 < {GOAL_P99_MS} ms; < {GOAL_P99_NO_FAULTS_MS} ms without faults | {} |\n",
        lag.timeouts,
        ms(lag.dist.pct(0.50)),
        p99_ms,
        ms(lag.dist.max()),
        verdict(lag_ok && quick)
    ));
    md.push_str(&format!(
        "| of which /revoke 200 → `token.revoked` published on NATS ({} seen by a core subscriber) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | | |\n",
        lag.wire.0.len(),
        ms(lag.wire.pct(0.50)),
        ms(lag.wire.pct(0.99)),
        ms(lag.wire.max()),
    ));
    let jwt_p99_ms = ms(jwt.dist.pct(0.99));
    let jwt_ok = jwt.timeouts == 0 && !jwt.dist.0.is_empty() && jwt_p99_ms < GOAL_P99_MS;
    md.push_str(&format!(
        "| the same for JWT access tokens (ES256, verified offline by the SDK; {} revocations, {} timed out) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | p99 < {GOAL_P99_MS} ms | {} |\n",
        jwt.dist.0.len(),
        jwt.timeouts,
        ms(jwt.dist.pct(0.50)),
        jwt_p99_ms,
        ms(jwt.dist.max()),
        verdict(jwt_ok)
    ));
    md.push_str(&format!(
        "| the same while the relay leader is killed (`kill -9`) once a second, 3 replicas ({} revocations in {:.0} s, {} kills, {} never seen) | p50 {:.2} ms, p99 {:.2} ms, worst gap {:.0} ms | reported | |\n",
        failover.lag.0.len(),
        failover.seconds,
        failover.kills,
        failover.lost,
        ms(failover.lag.pct(0.50)),
        ms(failover.lag.pct(0.99)),
        ms(failover.lag.max()),
    ));
    md.push_str(&format!(
        "| background issuance during the revocations ({background} loop(s)) | {} tokens/s ({} tokens) | | |\n",
        thousands(issue_rate),
        lag.background_issued
    ));
    md.push_str(&format!(
        "| SDK local `check`, one thread ({} tokens in the store) | {} checks/s; p50 {} ns, p99 {} ns | ≥ {} checks/s per core | {} |\n",
        local.tokens,
        thousands(local.per_sec),
        local.latency.pct(0.50),
        local.latency.pct(0.99),
        thousands(GOAL_LOCAL_PER_SEC),
        verdict(local.per_sec >= GOAL_LOCAL_PER_SEC)
    ));
    md.push_str(&format!(
        "| POST /introspect, one client thread, 1 in flight | {} req/s; p50 {:.3} ms, p99 {:.3} ms | | |\n",
        thousands(remote.rps),
        ms(remote.latency.pct(0.50)),
        ms(remote.latency.pct(0.99))
    ));
    md.push_str(&format!(
        "| POST /introspect, one client thread, {REMOTE_IN_FLIGHT} in flight | {} req/s; p50 {:.3} ms, p99 {:.3} ms | | |\n",
        thousands(remote.rps_concurrent),
        ms(remote.concurrent_latency.pct(0.50)),
        ms(remote.concurrent_latency.pct(0.99))
    ));
    md.push_str(&format!(
        "| local check vs introspection round trip (p50 round trip ÷ mean local check) | {}× ({:.0} ns vs {:.1} µs) | ≥ {}× | {} |\n",
        thousands(ratio),
        local_ns,
        round_trip_ns / 1e3,
        thousands(GOAL_RATIO),
        verdict(ratio >= GOAL_RATIO)
    ));
    md.push_str(&format!(
        "| local checks/s ÷ introspections/s ({REMOTE_IN_FLIGHT} in flight) | {}× | | |\n",
        thousands(throughput_ratio)
    ));
    md.push_str(&format!(
        "\nLag is measured from the 200 of /revoke to the first `check` answering `Revoked`, polling every ~{poll_us:.0} µs (mean interval between polls; the 50 µs sleep plus scheduling); a revocation already applied when the 200 arrives counts as ~0. Server, PostgreSQL, NATS, the SDK and the load share the machine's {} cores.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    println!("{md}");
    std::fs::write(out_dir.join("propagation-report.md"), &md)?;
    let json = serde_json::json!({
        "bench": "valet_revocation_propagation",
        "client_id": client_id,
        "revocations": measured,
        "timeouts": lag.timeouts,
        "lag_ms": { "p50": ms(lag.dist.pct(0.50)), "p99": p99_ms, "max": ms(lag.dist.max()), "mean": lag.dist.mean() / 1e6 },
        "published_lag_ms": { "p50": ms(lag.wire.pct(0.50)), "p99": ms(lag.wire.pct(0.99)), "max": ms(lag.wire.max()) },
        "jwt_revocations": jwt.dist.0.len(),
        "jwt_timeouts": jwt.timeouts,
        "jwt_lag_ms": { "p50": ms(jwt.dist.pct(0.50)), "p99": jwt_p99_ms, "max": ms(jwt.dist.max()) },
        "under_leader_kills": {
            "revocations": failover.lag.0.len(),
            "never_seen": failover.lost,
            "kills": failover.kills,
            "seconds": failover.seconds,
            "lag_ms": { "p50": ms(failover.lag.pct(0.50)), "p99": ms(failover.lag.pct(0.99)), "max": ms(failover.lag.max()) },
        },
        "poll_interval_us": poll_us,
        "background_tokens_per_sec": issue_rate,
        "local_checks_per_sec": local.per_sec,
        "local_latency_ns": { "p50": local.latency.pct(0.50), "p99": local.latency.pct(0.99), "max": local.latency.max() },
        "introspect_rps_1": remote.rps,
        "introspect_latency_ms": { "p50": ms(remote.latency.pct(0.50)), "p99": ms(remote.latency.pct(0.99)) },
        "introspect_rps_16": remote.rps_concurrent,
        "introspect_latency_16_ms": { "p50": ms(remote.concurrent_latency.pct(0.50)), "p99": ms(remote.concurrent_latency.pct(0.99)) },
        "local_vs_round_trip": ratio,
        "goals": { "lag_p99_ms_lt": GOAL_P99_MS, "lag_p99_no_faults_ms_lt": GOAL_P99_NO_FAULTS_MS, "local_per_sec_ge": GOAL_LOCAL_PER_SEC, "ratio_ge": GOAL_RATIO },
        "pass": { "lag": lag_ok, "jwt_lag": jwt_ok, "lag_no_faults": quick, "local": local.per_sec >= GOAL_LOCAL_PER_SEC, "ratio": ratio >= GOAL_RATIO },
    });
    let mut results = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out_dir.join("propagation-results.jsonl"))?;
    writeln!(results, "{json}")?;
    if lag.timeouts > 0 || measured == 0 || failover.lost > 0 || jwt.timeouts > 0 {
        return Err(format!(
            "{} revocations never reached the SDK",
            lag.timeouts + failover.lost + jwt.timeouts
        )
        .into());
    }
    Ok(())
}
