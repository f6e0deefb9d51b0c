//! Revocation (RFC 7009).

use valet_domain::grant;
use valet_domain::RevocationReason;

use super::*;
use crate::oauth::Introspection;

#[tokio::test]
async fn revoking_an_access_token_ends_it_alone() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let tokens = code_grant_tokens(&mut world, &web, &alice).await;
    let client = world.authenticated(&web).await;
    world
        .valet
        .revoke(&client, &tokens.access_token, None, &caller())
        .await
        .unwrap();
    let recorded = world.recorded_events().await;
    assert!(matches!(
        recorded.as_slice(),
        [(
            _,
            Event::Grant(grant::Event::AccessTokenRevoked {
                reason: RevocationReason::ClientRequest,
                ..
            })
        )]
    ));
    assert_eq!(
        world
            .valet
            .introspect(&client, &tokens.access_token)
            .await
            .unwrap(),
        Introspection::Inactive
    );
    // The refresh token still works.
    assert!(world
        .valet
        .refresh(
            &client,
            tokens.refresh_token.as_deref().unwrap(),
            None,
            &caller()
        )
        .await
        .is_ok());
    // Revoking it again records nothing.
    world.skip_recorded().await;
    world
        .valet
        .revoke(&client, &tokens.access_token, None, &caller())
        .await
        .unwrap();
    assert!(world.recorded().await.is_empty());
}

#[tokio::test]
async fn revoking_a_refresh_token_takes_the_grant_with_it() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let tokens = code_grant_tokens(&mut world, &web, &alice).await;
    let client = world.authenticated(&web).await;
    // The hint only orders the lookups: a wrong one still finds the token.
    world
        .valet
        .revoke(
            &client,
            tokens.refresh_token.as_deref().unwrap(),
            Some("access_token"),
            &caller(),
        )
        .await
        .unwrap();
    assert_eq!(world.recorded().await.len(), 1);
    assert_eq!(
        world
            .valet
            .introspect(&client, &tokens.access_token)
            .await
            .unwrap(),
        Introspection::Inactive
    );
}

#[tokio::test]
async fn unknown_tokens_and_other_clients_tokens_are_answered_and_left_alone() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let other = world
        .given_client("other", Kind::Confidential, WEB_APP, "read")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let tokens = code_grant_tokens(&mut world, &web, &alice).await;
    let other = world.authenticated(&other).await;
    for token in [
        tokens.access_token.as_str(),
        tokens.refresh_token.as_deref().unwrap(),
        "valet_at_unknown",
    ] {
        for hint in [None, Some("refresh_token")] {
            world
                .valet
                .revoke(&other, token, hint, &caller())
                .await
                .unwrap();
        }
    }
    assert!(world.recorded().await.is_empty());
    let web = world.authenticated(&web).await;
    assert!(matches!(
        world
            .valet
            .introspect(&web, &tokens.access_token)
            .await
            .unwrap(),
        Introspection::Active { .. }
    ));
}

#[tokio::test]
async fn revoking_a_grant_is_idempotent() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let client = world.authenticated(&service).await;
    world
        .valet
        .client_credentials(&client, None, &caller())
        .await
        .unwrap();
    let grant_id = match world.recorded_events().await.as_slice() {
        [(_, Event::Grant(grant::Event::GrantIssued { grant_id, .. }))] => *grant_id,
        other => panic!("{other:?}"),
    };
    let meta = caller();
    let revoke = || {
        world
            .valet
            .revoke_grant(grant_id, RevocationReason::Admin, None, &meta, "admin:test")
    };
    assert!(revoke().await.unwrap());
    assert!(!revoke().await.unwrap());
    let unknown = world
        .valet
        .revoke_grant(
            valet_domain::GrantId::new(Uuid::from_u128(12345)),
            RevocationReason::Admin,
            None,
            &caller(),
            "admin:test",
        )
        .await;
    assert!(!unknown.unwrap());
}
