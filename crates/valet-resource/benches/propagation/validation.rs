//! Local validation by the SDK against remote introspection.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use valet_resource::Validator;

use crate::http::{form, http, post};
use crate::processes::Client;
use crate::stats::Dist;
use crate::Error;

pub(crate) struct Local {
    pub(crate) per_sec: f64,
    pub(crate) latency: Dist,
    pub(crate) tokens: usize,
}

/// `check` on this thread: throughput over `secs`, then 200,000 timed single calls.
pub(crate) fn measure_local(validator: &Validator, tokens: &[String], secs: f64) -> Local {
    for token in tokens.iter().cycle().take(20_000) {
        black_box(validator.check(black_box(token)).is_ok());
    }
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let (mut checks, mut ok) = (0u64, 0u64);
    'outer: loop {
        for token in tokens {
            ok += u64::from(validator.check(black_box(token)).is_ok());
            checks += 1;
            if checks % 4096 == 0 && start.elapsed() >= limit {
                break 'outer;
            }
        }
    }
    let per_sec = checks as f64 / start.elapsed().as_secs_f64();
    assert_eq!(ok, checks, "every local check is a hit");
    let mut latencies = Vec::with_capacity(200_000);
    for i in 0..200_000 {
        let token = &tokens[(i * 7919) % tokens.len()];
        let t0 = Instant::now();
        let result = validator.check(black_box(token));
        let dt = t0.elapsed();
        black_box(result.is_ok());
        latencies.push(dt.as_nanos() as u64);
    }
    Local {
        per_sec,
        latency: Dist::new(latencies),
        tokens: tokens.len(),
    }
}

pub(crate) struct Remote {
    pub(crate) latency: Dist,
    pub(crate) rps: f64,
    pub(crate) rps_concurrent: f64,
    pub(crate) concurrent_latency: Dist,
}

pub(crate) const REMOTE_IN_FLIGHT: usize = 16;

/// POST /introspect from one thread (a current-thread runtime): one in flight for
/// `secs`, then `REMOTE_IN_FLIGHT` in flight for `secs`.
pub(crate) fn measure_remote(
    base: String,
    rs: Client,
    tokens: Vec<String>,
    secs: f64,
) -> Result<Remote, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let http = http();
        let url = format!("{base}/introspect");
        let tokens = Arc::new(tokens);
        let one = |i: usize| {
            let (http, url, auth, tokens) =
                (http.clone(), url.clone(), rs.basic.clone(), tokens.clone());
            async move {
                let token = &tokens[i % tokens.len()];
                let t0 = Instant::now();
                let (status, body) = post(&http, &url, &auth, form(token, "access_token")).await?;
                let json: serde_json::Value = serde_json::from_slice(&body)?;
                let dt = t0.elapsed().as_nanos() as u64;
                if status != 200 || json["active"] != true {
                    return Err::<u64, Error>(
                        format!("/introspect answered {status}: {json}").into(),
                    );
                }
                Ok(dt)
            }
        };
        for i in 0..200 {
            one(i).await?;
        }
        let limit = Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut latencies = Vec::new();
        let mut i = 0;
        while start.elapsed() < limit {
            latencies.push(one(i).await?);
            i += 1;
        }
        let rps = latencies.len() as f64 / start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut concurrent = Vec::new();
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut next = 0;
        loop {
            while in_flight.len() < REMOTE_IN_FLIGHT && start.elapsed() < limit {
                in_flight.push(one(next));
                next += 1;
            }
            match in_flight.next().await {
                Some(result) => concurrent.push(result?),
                None => break,
            }
        }
        let rps_concurrent = concurrent.len() as f64 / start.elapsed().as_secs_f64();
        Ok(Remote {
            latency: Dist::new(latencies),
            rps,
            rps_concurrent,
            concurrent_latency: Dist::new(concurrent),
        })
    })
}
