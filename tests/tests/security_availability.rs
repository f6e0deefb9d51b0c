//! SECURITY.md 41: PostgreSQL restarted under load, black-box against `valet serve` on a
//! PostgreSQL cluster of the test's own (the other tests' server is not disturbed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use valet_tests::private_pg::PrivatePg;
use valet_tests::server::{ClientSpec, Resp, TestServer, Tokens};
use valet_tests::TestDb;

/// Words of the store's own errors that an answer must never carry.
const INTERNALS: [&str; 8] = [
    "postgres",
    "sqlstate",
    "db error",
    "connection",
    "pool",
    "tokio",
    "terminating",
    "shutdown",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s41_postgres_restarted_under_load_gives_503_and_no_token_that_introspects_unknown() {
    let pg = PrivatePg::start();
    let server = Arc::new(TestServer::start_on(TestDb::create_on(&pg.url()).await, &[]).await);
    let client = Arc::new(
        server
            .create_client(
                &ClientSpec::confidential("restart-load")
                    .grant("client_credentials")
                    .scopes("read"),
            )
            .await,
    );

    // Eight loops ask for tokens until told to stop; each keeps its answers in order.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..8)
        .map(|_| {
            let (server, client, stop) = (server.clone(), client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers: Vec<Resp> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(server.client_credentials(&client, Some("read")).await);
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .expect("restart PostgreSQL");
    // Wait for the server to issue tokens again, then let the loops run on a while, so
    // every pooled connection that died with the restart has been used and replaced.
    let started = std::time::Instant::now();
    while server
        .client_credentials(&client, Some("read"))
        .await
        .status
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no token issued within 30 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for load in loads {
        let mine = load.await.expect("load loop");
        let last = mine.last().expect("every loop asked at least once");
        assert_eq!(
            last.status,
            200,
            "tokens are issued again after the restart: {}",
            last.describe()
        );
        answers.extend(mine);
    }

    let (issued, refused): (Vec<Resp>, Vec<Resp>) =
        answers.into_iter().partition(|r| r.status == 200);
    eprintln!(
        "s41: {} tokens issued, {} requests refused",
        issued.len(),
        refused.len()
    );
    assert!(
        !refused.is_empty(),
        "the restart was not felt: {} tokens, no failure",
        issued.len()
    );
    for resp in &refused {
        assert_eq!(resp.status, 503, "a failure is a 503: {}", resp.describe());
        assert_eq!(
            resp.error().as_deref(),
            Some("temporarily_unavailable"),
            "{}",
            resp.describe()
        );
        let body = resp.text().to_lowercase();
        for word in INTERNALS {
            assert!(!body.contains(word), "a 503 leaks {word:?}: {body}");
        }
    }

    // Every token handed out was durably recorded: it introspects active.
    let tokens: Vec<String> = issued
        .iter()
        .map(|r| Tokens::from_resp(r).access_token)
        .collect();
    let checks: Vec<_> = tokens
        .chunks(tokens.len().div_ceil(8).max(1))
        .map(|chunk| {
            let (server, client, chunk) = (server.clone(), client.clone(), chunk.to_vec());
            tokio::spawn(async move {
                let mut unknown = Vec::new();
                for token in chunk {
                    if !server.is_active(&client, &token).await {
                        unknown.push(token);
                    }
                }
                unknown
            })
        })
        .collect();
    let mut unknown = 0;
    for check in checks {
        unknown += check.await.expect("introspection loop").len();
    }
    assert_eq!(
        unknown,
        0,
        "{unknown} of {} tokens handed out introspect inactive after the restart",
        tokens.len()
    );

    let server = Arc::into_inner(server).expect("the loops are done");
    server.stop().await;
    drop(pg);
}
