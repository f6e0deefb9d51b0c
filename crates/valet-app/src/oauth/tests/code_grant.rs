//! Redeeming an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.6).

use valet_domain::grant;
use valet_domain::{RevocationReason, StreamId};

use super::*;
use crate::oauth::Introspection;

#[tokio::test]
async fn a_code_becomes_a_grant_with_access_and_refresh_tokens() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let code = approved_code(&mut world, &alice, "web", "read").await;
    let client = world.authenticated(&web).await;
    let tokens = world
        .valet
        .exchange_code(&client, &code, Some(CALLBACK), Some(VERIFIER), &caller())
        .await
        .expect("tokens");
    assert_eq!(tokens.scope, "read");
    let refresh = tokens.refresh_token.as_deref().expect("a refresh token");
    assert!(refresh.starts_with("valet_rt_"));
    let recorded = world.recorded().await;
    let code_stream = StreamId::code(&TokenHash::of(&code));
    assert_eq!(recorded[0], (code_stream, "CodeRedeemed"));
    assert_eq!(recorded[1].1, "GrantIssued");
    assert_eq!(recorded.len(), 2);
    match world
        .valet
        .introspect(&client, &tokens.access_token)
        .await
        .unwrap()
    {
        Introspection::Active { sub, username, .. } => {
            assert_eq!(sub, alice.user_id.to_string());
            assert_eq!(username.as_deref(), Some("alice"));
        }
        inactive => panic!("{inactive:?}"),
    }
}

#[tokio::test]
async fn a_code_redeemed_twice_revokes_the_grant_it_made() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let code = approved_code(&mut world, &alice, "web", "read").await;
    let client = world.authenticated(&web).await;
    let first = world
        .valet
        .exchange_code(&client, &code, Some(CALLBACK), Some(VERIFIER), &caller())
        .await
        .unwrap();
    world.skip_recorded().await;
    let replay = world
        .valet
        .exchange_code(&client, &code, Some(CALLBACK), Some(VERIFIER), &caller())
        .await;
    assert_eq!(error_code(replay), ErrorCode::InvalidGrant);
    let recorded = world.recorded_events().await;
    let types: Vec<&str> = recorded.iter().map(|(_, e)| e.event_type()).collect();
    assert_eq!(types, ["CodeReplayed", "GrantRevoked"]);
    // The revocation names the replay as its cause.
    let Event::Grant(grant::Event::GrantRevoked { reason, cause, .. }) = &recorded[1].1 else {
        unreachable!()
    };
    assert_eq!(*reason, RevocationReason::CodeReplay);
    assert_eq!(
        cause.as_ref().map(|c| &c.stream_id),
        Some(&StreamId::code(&TokenHash::of(&code)))
    );
    assert!(!world.is_active(&client, &first.access_token).await);
}

#[tokio::test]
async fn a_code_is_bound_to_its_client_redirect_uri_verifier_and_lifetime() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let other = world
        .given_client("other", Kind::Confidential, WEB_APP, "read")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let code = approved_code(&mut world, &alice, "web", "read").await;
    let web = world.authenticated(&web).await;
    let other = world.authenticated(&other).await;
    let wrong_verifier = "another-verifier-of-at-least-forty-three-characters";
    let attempts = [
        (&other, Some(CALLBACK), Some(VERIFIER)),
        (&web, Some("https://app.test/other"), Some(VERIFIER)),
        (&web, Some(CALLBACK), Some(wrong_verifier)),
        (&web, Some(CALLBACK), None),
    ];
    for (client, redirect_uri, verifier) in attempts {
        let refused = world
            .valet
            .exchange_code(client, &code, redirect_uri, verifier, &caller())
            .await;
        assert_eq!(
            error_code(refused),
            ErrorCode::InvalidGrant,
            "{redirect_uri:?} {verifier:?}"
        );
    }
    assert_eq!(
        error_code(
            world
                .valet
                .exchange_code(&web, &code, Some(CALLBACK), Some("short"), &caller())
                .await
        ),
        ErrorCode::InvalidRequest
    );
    // Past its minute the code is spent for good.
    world.clock.advance_seconds(60);
    let late = world
        .valet
        .exchange_code(&web, &code, Some(CALLBACK), Some(VERIFIER), &caller())
        .await;
    assert_eq!(error_code(late), ErrorCode::InvalidGrant);
    assert!(
        world.recorded().await.is_empty(),
        "failed redemptions record nothing"
    );
}
