//! SECURITY.md 36 (+10): fifty parallel redemptions of one code.

use std::sync::Arc;

use valet_tests::server::{assert_token_error, sha256_hex, Fixture, Resp, Tokens, APP_CB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s36_fifty_parallel_redemptions_one_winner_and_the_replay_cascade() {
    let mut fx = Fixture::new().await;
    let (code, pkce) = fx.code(Some("read write")).await;
    let fx = Arc::new(fx);
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (fx, barrier, code, verifier) = (
            fx.clone(),
            barrier.clone(),
            code.clone(),
            pkce.verifier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            fx.server
                .redeem(&fx.client, &code, APP_CB, Some(&verifier))
                .await
        }));
    }
    let mut results: Vec<Resp> = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    let winners: Vec<&Resp> = results.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "{} of 50 redemptions succeeded; statuses: {:?}",
        winners.len(),
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for loser in results.iter().filter(|r| r.status != 200) {
        assert_token_error(loser, 400, "invalid_grant", "losing redemption");
    }
    let tokens = Tokens::from_resp(winners[0]);

    // One redemption in the log.
    let s = &fx.server;
    let code_stream = format!("code-{}", sha256_hex(&code));
    let events = s
        .events_until(|ev| {
            ev.iter()
                .any(|e| e.event_type == "GrantRevoked" && e.payload["reason"] == "code_replay")
        })
        .await;
    let redeemed = events
        .iter()
        .filter(|e| e.event_type == "CodeRedeemed")
        .collect::<Vec<_>>();
    assert_eq!(redeemed.len(), 1, "CodeRedeemed events: {redeemed:?}");
    assert_eq!(redeemed[0].stream_id, code_stream);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "GrantIssued")
            .count(),
        1,
        "exactly one grant issued"
    );
    assert!(
        events
            .iter()
            .any(|e| e.stream_id == code_stream && e.event_type == "CodeReplayed"),
        "the replays are recorded"
    );

    // The 49 replays by the same client revoke what the winner got (SECURITY 10).
    assert!(
        fx.eventually_inactive(&tokens.access_token).await,
        "the winner's access token survived the replays"
    );
    assert!(
        fx.eventually_inactive(tokens.refresh()).await,
        "the winner's refresh token survived the replays"
    );
    // NATS: asserted by the relay tests (issue 4)
    let grant_stream = events
        .iter()
        .find(|e| e.event_type == "GrantIssued")
        .map(|e| e.stream_id.clone())
        .expect("GrantIssued");
    let revocations: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "GrantRevoked")
        .collect();
    assert!(
        revocations
            .iter()
            .any(|e| e.stream_id == grant_stream && e.payload["reason"] == "code_replay"),
        "no GrantRevoked(code_replay) on {grant_stream}: {revocations:?}"
    );
    let resp = s.refresh(&fx.client, tokens.refresh(), None).await;
    assert_token_error(&resp, 400, "invalid_grant", "refresh after the cascade");
    match Arc::try_unwrap(fx) {
        Ok(fx) => fx.stop().await,
        Err(_) => panic!("fixture still shared"),
    }
}
